//! The key actor: sole owner of one loaded key's document, metadata, user
//! ids and lease.
//!
//! Owns: running application closures (one at a time, panics caught),
//! change detection (seahash of the document's JSON), the write slot (at
//! most one write in flight, one pending that newer saves fold into),
//! lease renewal on autosave, release/close, and the close reason.
//!
//! Invariants:
//! - every write is a compare-and-swap on the (epoch, revision) this actor
//!   last wrote; a failed check closes the session with `LeaseLost`;
//! - once closing starts, `update` is refused, so the release writes the
//!   final state; once closed the actor stops, so no late autosave can
//!   write or re-lock the key.
//!
//! Hibernation: a key whose session is open, whose document is saved and
//! which got no message for `Config::hibernate_after` gives up its actor
//! (mailbox, context, task) and leaves what it holds in its `KeyCell`
//! (`cell.rs`, which owns that hand-over and the wake-up); the next message
//! starts a new actor from it. The autosave tick checks a sleeping key's
//! lease itself and wakes it only to renew it; it sleeps again as soon as
//! the renewal is written.
//!
//! Layout: this file holds the actor's state and its helpers; `open.rs`
//! the open (the acquire, then the after-load hook); `document.rs` reads,
//! changes, metadata and user ids (what a session does to the document);
//! `writes.rs` every write (saves, renewals, release, close) and how its
//! answer is taken; `write_slot.rs` which write runs next (plain logic).
//!
//! Must not: call the backend directly (only through the queue), or block.

mod cell;
mod document;
mod open;
mod write_slot;
mod writes;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;
use tracing::{debug, warn};

pub(crate) use self::cell::KeyCell;
use self::cell::Waking;
use self::write_slot::{OnWire, Requested, SlotKind, WriteSlot};
use crate::error::{Error, KeyId};
use crate::lease::{acquire, Loaded};
use crate::messages::key::{
    AddUserId, CheckLease, Close, Control, GetLease, GetMetadata, GetUserIds, Open, Read, ReceiptTx, Release,
    RemoveUserId, Save, SetMetadata, Update, UpdateEncoded,
};
use crate::migration::panic_message;
use crate::storage::record::{LeaseRef, RecordRef};
use crate::storage::{
    EndKind, Notice, NoticeKind, Precondition, Record, RecordHeader, RecordIndex, StorageKey, WriteOp, WriteOutcome,
};
use crate::store_def::StoreDef;
use crate::types::Document;
use crate::types::{CloseReason, LeaseInfo, Priority, SaveOutcome};

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Opening,
    Open,
    /// Boxed to keep the actor small; the reason is rarely looked at.
    Closing(Box<CloseReason>),
    /// The reason is in the close signal.
    Closed,
    /// Gone to sleep: what it held is in its cell, and the session goes on.
    Asleep,
}

#[derive(Debug, Clone, PartialEq)]
enum WriteKind {
    /// Lease renewal with unchanged data.
    Renew,
    Save,
    /// Save and clear the lease.
    Release(CloseReason),
    /// Clear the lease, keep the stored data.
    Close(CloseReason),
}

impl SlotKind for WriteKind {
    /// A close outranks a release: both end the session, and a close asked
    /// for after a release means the caller no longer wants the data saved.
    fn rank(&self) -> u8 {
        match self {
            WriteKind::Renew => 0,
            WriteKind::Save => 1,
            WriteKind::Release(_) => 2,
            WriteKind::Close(_) => 3,
        }
    }
    fn drops_data(&self) -> bool {
        matches!(self, WriteKind::Close(_))
    }
}

impl WriteKind {
    fn name(&self) -> &'static str {
        match self {
            WriteKind::Renew => "renew",
            WriteKind::Save => "save",
            WriteKind::Release(_) => "release",
            WriteKind::Close(_) => "close",
        }
    }
}

/// What a completed write changes in the loaded state.
#[derive(Debug)]
struct Written {
    priority: Priority,
    checksum: u64,
    meta_generation: u32,
    header: RecordHeader,
    expires_at_ms: u64,
}

/// One loaded key. Created by `Store::open`, stopped when its session closes.
///
/// A million of these may be loaded at once, so the struct stays small: the
/// write slots are boxed (empty most of the time) and the storage key is
/// built per write rather than kept.
pub(crate) struct KeyActor<T: Document> {
    store: Arc<StoreDef<T>>,
    key: Arc<str>,
    phase: Phase,
    doc: Option<Loaded<T>>,
    writes: WriteSlot<WriteKind, ReceiptTx, Written>,
    cell: Arc<KeyCell<T>>,
    /// Counted messages handled (see `cell.rs`): equal to the cell's count
    /// of those sent, the mailbox holds none.
    handled: u32,
    /// `handled` at the last autosave tick.
    handled_at_tick: u32,
    /// Autosave ticks in a row with no counted message.
    idle_ticks: u8,
    /// Reads of the record under way (a lease check): the actor does not
    /// sleep with one pending.
    reads: u8,
}

impl<T: Document> KeyActor<T> {
    fn new(cell: Arc<KeyCell<T>>) -> Self {
        Self::with(cell, Phase::Opening, None, 0)
    }

    /// A sleeping key's new actor, holding what the last one left.
    fn woken(cell: Arc<KeyCell<T>>, loaded: Loaded<T>, waking: Waking) -> Self {
        // Woken for a renewal, it is as idle as when it fell asleep, and
        // sleeps again once the renewal is written.
        let idle = match waking {
            Waking::ForRenewal => u8::MAX,
            Waking::ForUse => 0,
        };
        Self::with(cell, Phase::Open, Some(loaded), idle)
    }

    fn with(cell: Arc<KeyCell<T>>, phase: Phase, doc: Option<Loaded<T>>, idle_ticks: u8) -> Self {
        Self {
            store: cell.def().clone(),
            key: cell.key().clone(),
            phase,
            doc,
            writes: WriteSlot::default(),
            cell,
            handled: 0,
            handled_at_tick: 0,
            idle_ticks,
            reads: 0,
        }
    }

    /// Counts a message the cell counted on its way in.
    fn counted(&mut self) {
        self.handled = self.handled.wrapping_add(1);
    }

    fn signal(&self) -> &crate::registry::CloseSignal {
        self.cell.signal()
    }

    fn storage_key(&self) -> StorageKey {
        StorageKey::record(&self.store.name, &self.key)
    }

    fn key_id(&self) -> KeyId {
        KeyId::new(&*self.store.name, &*self.key)
    }

    fn closed_error(&self) -> Error {
        let reason = match &self.phase {
            Phase::Closing(r) => (**r).clone(),
            // No reason recorded, or asked before the open finished (the
            // open holds the mailbox, so only a stopping actor gets here).
            Phase::Closed => self.signal().reason().unwrap_or(CloseReason::Stopped),
            Phase::Opening | Phase::Open | Phase::Asleep => CloseReason::Stopped,
        };
        Error::SessionClosed { at: self.key_id(), reason }
    }

    fn panicked(&self, what: &'static str, payload: &(dyn std::any::Any + Send)) -> Error {
        Error::Panicked { at: self.key_id(), what, message: panic_message(payload) }
    }

    fn publish(&self, kind: NoticeKind) {
        let bus = self.store.engine.backend.notices();
        if !bus.has_subscribers() {
            return;
        }
        bus.publish(Notice { store: self.store.name.to_string(), key: self.key.to_string(), kind });
    }
}

impl<T: Document> Actor for KeyActor<T> {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if !matches!(self.phase, Phase::Closed | Phase::Asleep) {
            self.cell.set_gone();
            self.store.remove(&self.key, self.cell.signal());
            self.cell.signal().close(CloseReason::Stopped);
        }
    }
}

impl<T: Document> Drop for KeyActor<T> {
    // An actor dropped without stopping (its arbiter went away) must still
    // wake whoever waits for the close; a reason already given stands. One
    // that fell asleep handed its session to its cell.
    fn drop(&mut self) {
        if self.phase != Phase::Asleep {
            self.cell.set_gone();
            self.cell.signal().close(CloseReason::Stopped);
        }
    }
}
