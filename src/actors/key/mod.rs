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
//! Layout: this file holds the actor's state and its helpers; `open.rs`
//! the open (the acquire, then the after-load hook); `document.rs` reads,
//! changes, metadata and user ids (what a session does to the document);
//! `writes.rs` every write (saves, renewals, release, close) and how its
//! answer is taken; `write_slot.rs` which write runs next (plain logic).
//!
//! Must not: call the backend directly (only through the queue), or block.

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

use self::write_slot::{OnWire, Requested, SlotKind, WriteSlot};
use crate::error::{Error, KeyId};
use crate::lease::{acquire, Loaded};
use crate::messages::key::{
    AddUserId, CheckLease, Close, Control, GetLease, GetMetadata, GetUserIds, Open, Read, ReceiptTx, Release,
    RemoveUserId, Save, SetMetadata, Update, UpdateEncoded,
};
use crate::migration::panic_message;
use crate::registry::CloseSignal;
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
    closed: Arc<CloseSignal>,
}

impl<T: Document> KeyActor<T> {
    pub(crate) fn new(store: Arc<StoreDef<T>>, key: Arc<str>, closed: Arc<CloseSignal>) -> Self {
        Self { store, key, phase: Phase::Opening, doc: None, writes: WriteSlot::default(), closed }
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
            Phase::Closed => self.closed.reason().unwrap_or(CloseReason::Stopped),
            Phase::Opening | Phase::Open => CloseReason::Stopped,
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
        if self.phase != Phase::Closed {
            self.store.remove(&self.key, &self.closed);
            self.closed.close(CloseReason::Stopped);
        }
    }
}

impl<T: Document> Drop for KeyActor<T> {
    // An actor dropped without stopping (its arbiter went away) must still
    // wake whoever waits for the close; a reason already given stands.
    fn drop(&mut self) {
        self.closed.close(CloseReason::Stopped);
    }
}
