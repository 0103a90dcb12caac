//! The library's error type. Every variant that concerns a key names it
//! (`at: KeyId`, its store and key), so a log line or an HTTP error is
//! enough to find the record.
//!
//! Owns: `Error` and its messages. Must not: depend on actors or handles
//! (only the vocabulary and storage errors).

use thiserror::Error;

use crate::storage::{DecodeError, StorageError};
use crate::types::CloseReason;

/// Errors returned by datastorer's public API. New variants may come in
/// minor releases: match with a wildcard arm.
#[derive(Debug, Clone, Error, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A store name or key is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// "store name" or "key".
        what: &'static str,
        /// The offending value (truncated).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// `store()` was called again with a different specification.
    #[error("store `{store}` is already open with a different specification ({difference})")]
    StoreConflict {
        /// Store name.
        store: String,
        /// What differs.
        difference: String,
    },

    /// The key is leased by another owner and the acquire policy gave up,
    /// or a session (or another one-shot) of this instance holds it.
    #[error("{at} is leased by `{holder}`{}", until(expires_at_ms))]
    LeaseHeld {
        /// The key.
        at: KeyId,
        /// Owner id of the holder (this instance's own for a session here).
        holder: String,
        /// When the holder's lease lapses unless renewed, in ms since the
        /// Unix epoch; `None` when it is held here, by a session or an
        /// update of this instance, whose lease lasts as long as it does.
        expires_at_ms: Option<u64>,
    },

    /// A conditional one-shot update found the stored record changed since
    /// the version it was conditioned on (`If-Match`), or absent.
    #[error("{at} changed since the version the update was conditioned on")]
    PreconditionFailed {
        /// The key.
        at: KeyId,
    },

    /// A key's inbox holds as many messages as it may.
    #[error("the inbox of {at} is full ({limit} messages wait); the holder must acknowledge some first")]
    InboxFull {
        /// The key.
        at: KeyId,
        /// Most messages an inbox holds.
        limit: usize,
    },

    /// A message larger than [`crate::MAX_MESSAGE_BYTES`] as JSON.
    #[error("message to {at} refused: it is {size} bytes as JSON, and a message may be at most {limit}")]
    MessageTooLarge {
        /// The key.
        at: KeyId,
        /// The message's size as JSON.
        size: usize,
        /// Most bytes a message may have.
        limit: usize,
    },

    /// A key's waiting messages would together exceed the largest
    /// document (`max_document_bytes`) with this one.
    #[error("the inbox of {at} is full: with this message its waiting messages would exceed {limit} bytes; the holder must acknowledge some first")]
    InboxTooLarge {
        /// The key.
        at: KeyId,
        /// Most bytes an inbox holds (`max_document_bytes`).
        limit: usize,
    },

    /// A write failed its fencing check: another owner took the lease.
    #[error("lease on {at} was lost to a newer holder")]
    LeaseLost {
        /// The key.
        at: KeyId,
    },

    /// The session's lease lapsed without a renewal reaching storage (it
    /// was unreachable): another process may hold the key now, so changes
    /// are refused until a renewal succeeds (the autosave pass retries it)
    /// or the session learns it lost the key.
    #[error("lease on {at} lapsed at {expired_at_ms} ms without a renewal reaching storage; changes are refused until one does")]
    LeaseExpired {
        /// The key.
        at: KeyId,
        /// When the last lease that reached storage lapsed (lease clock).
        expired_at_ms: u64,
    },

    /// The stored record does not decode. It is left untouched.
    #[error("record of {at} is corrupt and was left untouched: {source}")]
    CorruptRecord {
        /// The key.
        at: KeyId,
        /// What is wrong with it.
        source: DecodeError,
    },

    /// The stored data is not valid JSON, a migration failed, or the stored
    /// data version is newer than this build's migrations.
    #[error("cannot migrate {at} from data version {from_version}: {message}")]
    Migration {
        /// The key.
        at: KeyId,
        /// The stored data version.
        from_version: u32,
        /// What went wrong.
        message: String,
    },

    /// The migrated, reconciled document does not fit the application's type.
    #[error("document of {at} does not deserialize: {message}")]
    Deserialize {
        /// The key.
        at: KeyId,
        /// serde's message.
        message: String,
    },

    /// The document does not serialize to JSON (for example a map with non-string keys).
    #[error("document of {at} does not serialize: {message}")]
    Serialize {
        /// The key.
        at: KeyId,
        /// serde's message.
        message: String,
    },

    /// A change was refused because the document it produced would encode
    /// to more than `max_document_bytes`: it could never be saved. The
    /// document is as it was before the change.
    #[error("change to {at} refused: the document would be larger than max_document_bytes ({limit} bytes) and could never be saved; the document is unchanged")]
    DocumentTooLarge {
        /// The key.
        at: KeyId,
        /// The configured limit.
        limit: usize,
    },

    /// The backend failed (after retries, for transient failures).
    #[error("storage {operation} for {at} failed after {attempts} attempt(s): {source}")]
    Storage {
        /// The key.
        at: KeyId,
        /// "get", "write", "scan" or "flush".
        operation: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last backend error.
        source: StorageError,
    },

    /// Opening the backend failed.
    #[error("cannot open storage: {0}")]
    Open(StorageError),

    /// A closure or hook supplied by the application panicked.
    #[error("{what} for {at} panicked: {message}")]
    Panicked {
        /// The key.
        at: KeyId,
        /// Which callback ("update closure", "after-load hook", ...).
        what: &'static str,
        /// The panic payload, if it was a string.
        message: String,
    },

    /// The session is closed (or closing) and cannot do this.
    #[error("session of {at} is closed ({reason})")]
    SessionClosed {
        /// The key.
        at: KeyId,
        /// Why it closed.
        reason: CloseReason,
    },

    /// The queued request was dropped by `flush_queue`/`emergency_flush_queue`.
    #[error("queued request for {at} was cancelled")]
    Cancelled {
        /// The key.
        at: KeyId,
    },

    /// No version of the key matches (an id that was never saved or was
    /// pruned, a time before the key's oldest kept version, or a store
    /// that keeps no versions).
    #[error("{at} has no version {wanted}")]
    VersionNotFound {
        /// The key.
        at: KeyId,
        /// What was asked for: `EPOCH.REVISION`, or `at T ms`.
        wanted: String,
    },

    /// A restore cannot be done as asked (a part to keep that cannot be
    /// placed in the restored document, a document that is not an object
    /// where one is needed). Nothing was written.
    #[error("cannot restore {at}: {message}")]
    Restore {
        /// The key.
        at: KeyId,
        /// Why.
        message: String,
    },

    /// The engine is shutting down and accepts no new loads.
    #[error("datastorer is shutting down")]
    ShuttingDown,

    /// The engine's actors are gone (the actix System stopped).
    #[error("datastorer is not running")]
    NotRunning,
}

/// The tail of a `LeaseHeld` message.
fn until(expires_at_ms: &Option<u64>) -> String {
    match expires_at_ms {
        Some(ms) => format!(" until {ms} ms since the Unix epoch"),
        None => " (a session or update of this instance, as long as it lasts)".to_owned(),
    }
}

/// `Some(<the variant's KeyId>)` for every variant about a key, `None`
/// otherwise: one list of those variants, for `&` and `&mut` alike.
macro_rules! key_of {
    ($error:expr) => {
        match $error {
            Error::LeaseHeld { at, .. }
            | Error::PreconditionFailed { at }
            | Error::InboxFull { at, .. }
            | Error::MessageTooLarge { at, .. }
            | Error::InboxTooLarge { at, .. }
            | Error::LeaseLost { at }
            | Error::LeaseExpired { at, .. }
            | Error::CorruptRecord { at, .. }
            | Error::Migration { at, .. }
            | Error::Deserialize { at, .. }
            | Error::Serialize { at, .. }
            | Error::DocumentTooLarge { at, .. }
            | Error::Storage { at, .. }
            | Error::Panicked { at, .. }
            | Error::SessionClosed { at, .. }
            | Error::Cancelled { at }
            | Error::VersionNotFound { at, .. }
            | Error::Restore { at, .. } => Some(at),
            _ => None,
        }
    };
}

impl Error {
    /// The key the error is about, if it is about one.
    pub fn key_id(&self) -> Option<&KeyId> {
        key_of!(self)
    }

    /// The store and key the error is about, if it is about one.
    pub fn store_and_key(&self) -> Option<(&str, &str)> {
        self.key_id().map(|at| (at.store.as_str(), at.key.as_str()))
    }

    /// The store name the error carries, to say it in the caller's terms
    /// (an inbox's errors name the store whose key it is, never the
    /// internal `S:inbox`).
    pub(crate) fn store_mut(&mut self) -> Option<&mut String> {
        key_of!(self).map(|at: &mut KeyId| &mut at.store)
    }
}

/// The key an error is about: its store and key, shown as
/// ``key `K` in store `S` `` in every message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    /// Store name.
    pub store: String,
    /// Key.
    pub key: String,
}

impl KeyId {
    /// The key `key` of `store`.
    pub fn new(store: impl Into<String>, key: impl Into<String>) -> Self {
        Self { store: store.into(), key: key.into() }
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key `{}` in store `{}`", self.key, self.store)
    }
}
