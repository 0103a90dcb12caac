//! The count of one instance's public handles (`Datastorer`, `Store`,
//! `Session`): each holds an `Arc<Keepalive>`, and when the last one goes
//! the supervisor is told, shuts the instance down as `shutdown()` would
//! (save, release, drain, flush) unless that already happened, and stops.
//! Everything the instance started then stops with it: key actors, the
//! queue and its thread, timers, the inbox watchers, and the backend is
//! freed.
//!
//! Owns: that one signal. Must not: be held by anything the engine itself
//! keeps (the registry, key actors, background tasks): a handle held by
//! the engine would keep it alive forever.

use actix::Recipient;

use crate::messages::supervisor::HandlesGone;

pub(crate) struct Keepalive {
    supervisor: Recipient<HandlesGone>,
}

impl Keepalive {
    pub(crate) fn new(supervisor: Recipient<HandlesGone>) -> Self {
        Self { supervisor }
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        // A supervisor already stopped (aborted, or its System gone) has
        // nothing left to stop.
        self.supervisor.do_send(HandlesGone);
    }
}
