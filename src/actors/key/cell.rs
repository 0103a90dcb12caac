//! A loaded key's cell: what its store's key table and every `Session`
//! handle point at, whether the key's actor is running or hibernating.
//!
//! Owns: the key's state between actors (awake: the actor's address and
//! how many counted messages were sent to it; asleep: the document, lease
//! and header the actor left, in one box; gone), the close signal, and the
//! wake-up: a message to a sleeping key starts a new actor from what it
//! left and delivers the message to it, under the cell's lock, so no
//! message can reach an actor that has gone to sleep.
//!
//! Why it is sound: every message a session (or the supervisor, other than
//! the autosave tick) sends is counted under the lock; the actor counts
//! those it handled; it goes to sleep only under the same lock and only
//! when the two counts agree, so its mailbox then holds no counted message
//! (an uncounted autosave left in it is dropped: a sleeping key is clean).
//!
//! Must not: touch the document while the actor is awake (the actor owns
//! it), or call the backend.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use actix::dev::ToEnvelope;
use actix::prelude::*;

use super::KeyActor;
use crate::lease::Loaded;
use crate::messages::key::Control;
use crate::registry::{CloseSignal, KeyControl};
use crate::storage::NoticeKind;
use crate::store_def::StoreDef;
use crate::types::{CloseReason, Document};

pub(crate) struct KeyCell<T: Document> {
    def: Arc<StoreDef<T>>,
    key: Arc<str>,
    signal: CloseSignal,
    state: Mutex<CellState<T>>,
    /// While asleep: when its lease wants renewing (ms, the engine's
    /// clock); 0 while awake. Read without the lock, so the autosave tick
    /// passes a sleeping key with one load.
    renew_at_ms: AtomicU64,
}

enum CellState<T: Document> {
    Awake {
        addr: Addr<KeyActor<T>>,
        /// Counted messages sent to this actor instance (wrapping).
        sent: u32,
    },
    /// The actor went to sleep clean: this is everything it held.
    Asleep(Box<Loaded<T>>),
    Gone,
}

/// How a sleeping key is woken: by a counted message (the session is in
/// use), or by the autosave tick for a lease renewal (it sleeps again as
/// soon as the renewal is written).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Waking {
    ForUse,
    ForRenewal,
}

impl<T: Document> KeyCell<T> {
    /// Registers nothing: the caller puts the cell in its store's table.
    /// Starts the key's actor (in `Opening`) on `home`.
    pub(crate) fn start(def: Arc<StoreDef<T>>, key: Arc<str>, one_shot: bool, home: &ArbiterHandle) -> Arc<Self> {
        let cell = Arc::new(Self {
            def,
            key,
            signal: CloseSignal::new(one_shot),
            state: Mutex::new(CellState::Gone),
            renew_at_ms: AtomicU64::new(0),
        });
        let actor = KeyActor::new(cell.clone());
        let addr = KeyActor::start_in_arbiter(home, move |_| actor);
        *cell.lock() = CellState::Awake { addr, sent: 0 };
        cell
    }

    fn lock(&self) -> MutexGuard<'_, CellState<T>> {
        // Critical sections swap the state or enqueue one message; a
        // poisoned lock holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn signal(&self) -> &CloseSignal {
        &self.signal
    }

    pub(crate) fn key(&self) -> &Arc<str> {
        &self.key
    }

    pub(crate) fn store_name(&self) -> &Arc<str> {
        &self.def.name
    }

    pub(super) fn def(&self) -> &Arc<StoreDef<T>> {
        &self.def
    }

    /// Sends `msg` to the key's actor, waking it if it sleeps; `None` once
    /// the session has ended.
    pub(crate) fn send<M>(self: &Arc<Self>, msg: M) -> Option<Request<KeyActor<T>, M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        KeyActor<T>: Handler<M>,
        <KeyActor<T> as Actor>::Context: ToEnvelope<KeyActor<T>, M>,
    {
        self.deliver(&mut self.lock(), Waking::ForUse, true, |addr| addr.send(msg))
    }

    /// `send` without waiting for the answer; whether it was delivered.
    pub(crate) fn do_send<M>(self: &Arc<Self>, msg: M) -> bool
    where
        M: Message + Send + 'static,
        M::Result: Send,
        KeyActor<T>: Handler<M>,
        <KeyActor<T> as Actor>::Context: ToEnvelope<KeyActor<T>, M>,
    {
        self.deliver(&mut self.lock(), Waking::ForUse, true, |addr| addr.do_send(msg)).is_some()
    }

    /// Hands the running actor (started from what the sleeping one left
    /// if need be) to `send`, counting the message when `counted`; `None`
    /// once the session has ended. `state` is the cell's, locked.
    fn deliver<R>(
        self: &Arc<Self>,
        state: &mut CellState<T>,
        waking: Waking,
        counted: bool,
        send: impl FnOnce(&Addr<KeyActor<T>>) -> R,
    ) -> Option<R> {
        let (addr, sent) = self.awake(state, waking)?;
        if counted {
            *sent = sent.wrapping_add(1);
        }
        Some(send(addr))
    }

    /// The running actor, started from what the sleeping one left if need be.
    fn awake<'a>(
        self: &Arc<Self>,
        state: &'a mut CellState<T>,
        waking: Waking,
    ) -> Option<(&'a Addr<KeyActor<T>>, &'a mut u32)> {
        if matches!(state, CellState::Asleep(_)) {
            // Taken out and replaced by the new actor's state below.
            let CellState::Asleep(loaded) = std::mem::replace(state, CellState::Gone) else { return None };
            let engine = &self.def.engine;
            let home = match engine.config.keys_on_caller_arbiter {
                true => Arbiter::try_current().unwrap_or_else(|| engine.arbiter.clone()),
                false => engine.arbiter.clone(),
            };
            engine.woken.fetch_add(1, Relaxed);
            engine.asleep.fetch_sub(1, Relaxed);
            self.renew_at_ms.store(0, Relaxed);
            let actor = KeyActor::woken(self.clone(), *loaded, waking);
            let addr = KeyActor::start_in_arbiter(&home, move |_| actor);
            *state = CellState::Awake { addr, sent: 0 };
        }
        match state {
            CellState::Awake { addr, sent } => Some((addr, sent)),
            CellState::Asleep(_) | CellState::Gone => None,
        }
    }

    /// Called by the actor: puts the key to sleep with `doc` if every
    /// counted message sent to it has been handled (`handled`); otherwise
    /// leaves `doc` where it is and answers `false`.
    pub(super) fn fall_asleep(&self, handled: u32, doc: &mut Option<Loaded<T>>) -> bool {
        let mut state = self.lock();
        match &*state {
            CellState::Awake { sent, .. } if *sent == handled => {}
            _ => return false,
        }
        let Some(loaded) = doc.take() else { return false };
        self.renew_at_ms.store(self.def.engine.renew_at_ms(loaded.expires_at_ms).max(1), Relaxed);
        *state = CellState::Asleep(Box::new(loaded));
        self.def.engine.asleep.fetch_add(1, Relaxed);
        true
    }

    /// Called by the actor as the session ends: later messages find nothing.
    pub(super) fn set_gone(&self) {
        *self.lock() = CellState::Gone;
    }
}

impl<T: Document> KeyControl for KeyCell<T> {
    fn control(self: Arc<Self>, msg: Control) -> bool {
        let mut state = self.lock();
        let wake = match (&*state, &msg) {
            (CellState::Gone, _) => return false,
            (CellState::Awake { .. }, _) => None,
            // A sleeping key is clean: the tick matters only for its lease.
            (CellState::Asleep(loaded), Control::Autosave) => {
                match self.def.engine.clock.now_ms() > self.def.engine.renew_at_ms(loaded.expires_at_ms) {
                    true => Some(Waking::ForRenewal),
                    false => return true,
                }
            }
            // Notices its actor would ignore do not wake it.
            (CellState::Asleep(_), Control::Notice(kind)) if !acts_on(kind) => return true,
            (CellState::Asleep(_), _) => Some(Waking::ForUse),
        };
        // The tick is not counted: an actor may sleep with one in its
        // mailbox (it is clean, so the tick has nothing to do).
        let counted = !matches!(msg, Control::Autosave);
        self.deliver(&mut state, wake.unwrap_or(Waking::ForUse), counted, |addr| addr.do_send(msg)).is_some()
    }

    fn tick(self: Arc<Self>, now_ms: u64) {
        let renew_at = self.renew_at_ms.load(Relaxed);
        // Asleep with its lease far from due: nothing to do, no lock taken.
        if renew_at != 0 && now_ms < renew_at {
            return;
        }
        self.control(Control::Autosave);
    }

    /// The instance stopped with this key asleep: its session ends here
    /// (an awake one ends as its actor stops).
    fn stop_if_asleep(&self) {
        let mut state = self.lock();
        if let CellState::Asleep(_) = &*state {
            *state = CellState::Gone;
            self.def.engine.asleep.fetch_sub(1, Relaxed);
            drop(state);
            self.signal.close(CloseReason::Stopped);
        }
    }
}

/// The notices a key actor acts on (see its `Control` handler).
fn acts_on(kind: &NoticeKind) -> bool {
    matches!(
        kind,
        NoticeKind::ReleaseRequested { .. }
            | NoticeKind::Restored
            | NoticeKind::Erased
            | NoticeKind::Stolen { .. }
            | NoticeKind::Deleted
    )
}
