//! The supervisor's protocol: release every key, shut down, run an
//! autosave pass now.
//!
//! Owns: the message types. Must not: contain behaviour (the supervisor does).

use actix::Message;

use crate::report::{ReleaseReport, ShutdownReport};
use crate::types::Priority;

/// Release every loaded key of every store.
#[derive(Message)]
#[rtype(result = "ReleaseReport")]
pub(crate) struct ReleaseAll {
    pub priority: Priority,
}

/// Stop new loads, save and release every key, drain the queue, flush.
#[derive(Message)]
#[rtype(result = "ShutdownReport")]
pub(crate) struct Shutdown;

/// Send every loaded key an autosave tick now; answers how many were ticked.
#[derive(Message)]
#[rtype(result = "usize")]
pub(crate) struct AutosaveNow;

#[cfg(feature = "harness")]
/// Stop every key actor without writing and drop every queued request, as
/// a crash would (test harness).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Abort;

/// The instance's last public handle was dropped: shut down (unless done)
/// and stop everything it started.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct HandlesGone;
