//! Storage: the `Backend` trait every engine implements, the record envelope,
//! and the two built-in backends (sled, the default, and in-memory).
//!
//! Owns: byte-level persistence, compare-and-swap preconditions, durability
//! (`flush`), and the per-backend notice bus that carries lease hand-off and
//! change notifications between `Datastorer` instances sharing a backend.
//!
//! Must not: know about actors, the queue, typed documents or lease policy.
//! A backend is called only by the queue actor (and offline tools).

pub mod memory;
pub mod record;
pub mod sled_backend;

use std::fmt;

use thiserror::Error;
use tokio::sync::broadcast;

pub use record::{DecodeError, LeaseHolder, Record, RecordHeader};

/// How a storage failure should be treated by the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Worth retrying with backoff (I/O hiccup, lock timeout, connection reset).
    Transient,
    /// The backend asked us to slow down; retried with backoff.
    Throttled,
    /// Retrying cannot help (corruption, unsupported operation, full disk policy).
    Permanent,
}

/// Key/value pairs returned by a prefix scan, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// A failure reported by a backend.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{kind:?} storage error: {message}")]
pub struct StorageError {
    /// How the queue treats it.
    pub kind: ErrorKind,
    /// What went wrong, for humans.
    pub message: String,
}

impl StorageError {
    /// A retryable failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Transient, message: message.into() }
    }
    /// A throttling failure (retryable).
    pub fn throttled(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Throttled, message: message.into() }
    }
    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Permanent, message: message.into() }
    }
    /// Whether the queue should retry it.
    pub fn is_retryable(&self) -> bool {
        self.kind != ErrorKind::Permanent
    }
}

/// What must be true of the stored value for a write to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally (administrative delete, import).
    Any,
    /// Only if no value is stored under the key.
    Absent,
    /// Only if the stored record's header is exactly this (fencing check).
    Header(RecordHeader),
}

impl Precondition {
    /// Whether `current` (the stored bytes, if any) satisfies the precondition.
    /// A stored value whose header is unreadable satisfies only `Any`, so a
    /// corrupt record is never overwritten by a session.
    pub fn holds(&self, current: Option<&[u8]>) -> bool {
        self.holds_for_header(current.map(RecordHeader::peek))
    }

    /// [`Precondition::holds`] from the stored record's header alone:
    /// `None` when nothing is stored, `Some(None)` when a value is stored
    /// whose header is unreadable.
    pub fn holds_for_header(&self, current: Option<Option<RecordHeader>>) -> bool {
        match (self, current) {
            (Precondition::Any, _) => true,
            (Precondition::Absent, None) => true,
            (Precondition::Absent, Some(_)) => false,
            (Precondition::Header(_), None) => false,
            (Precondition::Header(h), Some(stored)) => stored == Some(*h),
        }
    }
}

/// One conditional write (or delete, when `value` is `None`).
#[derive(Clone, PartialEq, Eq)]
pub struct WriteOp {
    /// The storage key.
    pub key: Vec<u8>,
    /// What must hold for the write to apply.
    pub precondition: Precondition,
    /// The new value; `None` deletes.
    pub value: Option<Vec<u8>>,
}

impl fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOp")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("precondition", &self.precondition)
            .field("value_len", &self.value.as_ref().map(Vec::len))
            .finish()
    }
}

/// The result of one conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The precondition held and the value was written (not yet flushed).
    Applied,
    /// The precondition failed; the header of what is stored, if readable.
    Conflict {
        /// Header of the stored value (`None` when absent or unreadable).
        current: Option<RecordHeader>,
    },
}

/// A notification between instances sharing a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Store name.
    pub store: String,
    /// Key within the store.
    pub key: String,
    /// What happened.
    pub kind: NoticeKind,
}

/// What a [`Notice`] announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind {
    /// `requester` asks `holder` to save and release the key.
    ReleaseRequested {
        /// Owner id of the current holder.
        holder: String,
        /// Owner id of the instance that wants the key.
        requester: String,
    },
    /// `by` took the lease from `holder` while it was live.
    Stolen {
        /// Owner id of the previous holder.
        holder: String,
        /// Owner id of the new holder.
        by: String,
    },
    /// The lease was cleared (release or close); waiters may retry now.
    Released {
        /// Revision of the record after the release.
        revision: u64,
    },
    /// A durable save (revision).
    Saved {
        /// Revision written.
        revision: u64,
    },
    /// The record was deleted (administrative).
    Deleted,
}

/// Broadcast bus for [`Notice`]s. Lossy by design: a lagging receiver misses
/// notices, so every consumer also polls (waiters re-read the record).
///
/// Lease notices (`ReleaseRequested`, `Stolen`) also go out on a control
/// channel of their own, so the supervisor that routes them is not woken by
/// every save, and a burst of saves cannot make it lag past one of them.
#[derive(Clone)]
pub struct NoticeBus {
    all: broadcast::Sender<Notice>,
    control: broadcast::Sender<Notice>,
}

impl Default for NoticeBus {
    fn default() -> Self {
        let (all, _) = broadcast::channel(4096);
        let (control, _) = broadcast::channel(1024);
        Self { all, control }
    }
}

impl NoticeBus {
    /// Publishes to every current subscriber (no-op without subscribers).
    pub fn publish(&self, notice: Notice) {
        if matches!(notice.kind, NoticeKind::ReleaseRequested { .. } | NoticeKind::Stolen { .. }) {
            let _ = self.control.send(notice.clone());
        }
        let _ = self.all.send(notice);
    }

    /// Subscribes to all notices published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.all.subscribe()
    }

    /// Subscribes to lease notices only (`ReleaseRequested`, `Stolen`).
    pub fn subscribe_lease_notices(&self) -> broadcast::Receiver<Notice> {
        self.control.subscribe()
    }

    /// Whether anyone subscribes to all notices: publishers of change notices
    /// (`Saved`, `Released`) skip building one nobody would receive.
    pub fn has_subscribers(&self) -> bool {
        self.all.receiver_count() > 0
    }
}

/// A storage engine. Calls may block (the queue runs sled on a thread of
/// its own, other blocking backends on tokio's blocking pool) and must be
/// safe to call from several threads.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs ("sled", "memory").
    fn name(&self) -> &'static str;

    /// Reads one value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies each operation atomically on its own key (no cross-key
    /// atomicity is promised), checking its precondition first. The result
    /// has one entry per operation, in order. Nothing is durable until
    /// [`Backend::flush`] returns `Ok`.
    fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, StorageError>>;

    /// Deletes one key unconditionally (not durable until flushed).
    fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
        let op = WriteOp { key: key.to_vec(), precondition: Precondition::Any, value: None };
        match self.write_batch(std::slice::from_ref(&op)).pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(StorageError::permanent("backend returned no result for a delete")),
        }
    }

    /// Key/value pairs whose key starts with `prefix` and sorts after
    /// `start_after` (exclusive), in key order, at most `limit`.
    fn scan_prefix(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeyValues, StorageError>;

    /// Makes every applied write durable.
    fn flush(&self) -> Result<(), StorageError>;

    /// Whether calls may block the calling thread (disk or network I/O).
    /// Non-blocking backends are called inline by the queue actor, which
    /// keeps tests with a paused clock deterministic.
    fn is_blocking(&self) -> bool {
        true
    }

    /// The notice bus shared by every instance using this backend.
    fn notices(&self) -> &NoticeBus;
}

/// The storage key of `key` in `store`: `d\0{store}\0{key}`. Store names and
/// keys are validated to contain no NUL, so the mapping is injective and a
/// store's keys share a prefix.
pub fn storage_key(store: &str, key: &str) -> Vec<u8> {
    let mut out = store_prefix(store);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The common prefix of every storage key of `store`.
pub fn store_prefix(store: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(store.len() + 3);
    out.extend_from_slice(b"d\0");
    out.extend_from_slice(store.as_bytes());
    out.push(0);
    out
}

/// Splits a storage key back into (store, key).
pub fn split_storage_key(bytes: &[u8]) -> Option<(String, String)> {
    let rest = bytes.strip_prefix(b"d\0")?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let store = std::str::from_utf8(&rest[..nul]).ok()?;
    let key = std::str::from_utf8(&rest[nul + 1..]).ok()?;
    Some((store.to_owned(), key.to_owned()))
}
