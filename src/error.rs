//! The library's error type. Every variant that concerns a key names its
//! store and key, so a log line or an HTTP error is enough to find the record.
//!
//! Owns: `Error` and its messages. Must not: depend on actors or handles
//! (only the vocabulary and storage errors).

use thiserror::Error;

use crate::storage::{DecodeError, StorageError};
use crate::types::CloseReason;

/// Errors returned by datastorer's public API.
#[derive(Debug, Clone, Error, PartialEq)]
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

    /// The key is leased by another owner and the acquire policy gave up.
    #[error("key `{key}` in store `{store}` is leased by `{holder}` until {expires_at_ms} ms since the Unix epoch")]
    LeaseHeld {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// Owner id of the holder.
        holder: String,
        /// When the holder's lease lapses unless renewed.
        expires_at_ms: u64,
    },

    /// A conditional one-shot update found the stored record changed since
    /// the version it was conditioned on (`If-Match`), or absent.
    #[error("key `{key}` in store `{store}` changed since the version the update was conditioned on")]
    PreconditionFailed {
        /// Store name.
        store: String,
        /// Key.
        key: String,
    },

    /// A key's inbox holds as many messages as it may.
    #[error("the inbox of key `{key}` in store `{store}` is full ({limit} messages wait); the holder must acknowledge some first")]
    InboxFull {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// Most messages an inbox holds.
        limit: usize,
    },

    /// A message larger than [`crate::MAX_MESSAGE_BYTES`] as JSON.
    #[error("message to key `{key}` in store `{store}` refused: it is {size} bytes as JSON, and a message may be at most {limit}")]
    MessageTooLarge {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// The message's size as JSON.
        size: usize,
        /// Most bytes a message may have.
        limit: usize,
    },

    /// A key's waiting messages would together exceed the largest
    /// document (`max_document_bytes`) with this one.
    #[error("the inbox of key `{key}` in store `{store}` is full: with this message its waiting messages would exceed {limit} bytes; the holder must acknowledge some first")]
    InboxTooLarge {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// Most bytes an inbox holds (`max_document_bytes`).
        limit: usize,
    },

    /// A write failed its fencing check: another owner took the lease.
    #[error("lease on key `{key}` in store `{store}` was lost to a newer holder")]
    LeaseLost {
        /// Store name.
        store: String,
        /// Key.
        key: String,
    },

    /// The session's lease lapsed without a renewal reaching storage (it
    /// was unreachable): another process may hold the key now, so changes
    /// are refused until a renewal succeeds (the autosave pass retries it)
    /// or the session learns it lost the key.
    #[error("lease on key `{key}` in store `{store}` lapsed at {expired_at_ms} ms without a renewal reaching storage; changes are refused until one does")]
    LeaseExpired {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// When the last lease that reached storage lapsed (lease clock).
        expired_at_ms: u64,
    },

    /// The stored record does not decode. It is left untouched.
    #[error("record of key `{key}` in store `{store}` is corrupt and was left untouched: {source}")]
    CorruptRecord {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// What is wrong with it.
        source: DecodeError,
    },

    /// The stored data is not valid JSON, a migration failed, or the stored
    /// data version is newer than this build's migrations.
    #[error("cannot migrate key `{key}` in store `{store}` from data version {from_version}: {message}")]
    Migration {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// The stored data version.
        from_version: u32,
        /// What went wrong.
        message: String,
    },

    /// The migrated, reconciled document does not fit the application's type.
    #[error("document of key `{key}` in store `{store}` does not deserialize: {message}")]
    Deserialize {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// serde's message.
        message: String,
    },

    /// The document does not serialize to JSON (for example a map with non-string keys).
    #[error("document of key `{key}` in store `{store}` does not serialize: {message}")]
    Serialize {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// serde's message.
        message: String,
    },

    /// A change was refused because the document it produced would encode
    /// to more than `max_document_bytes`: it could never be saved. The
    /// document is as it was before the change.
    #[error("change to key `{key}` in store `{store}` refused: the document would be larger than max_document_bytes ({limit} bytes) and could never be saved; the document is unchanged")]
    DocumentTooLarge {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// The configured limit.
        limit: usize,
    },

    /// The backend failed (after retries, for transient failures).
    #[error("storage {operation} for key `{key}` in store `{store}` failed after {attempts} attempt(s): {source}")]
    Storage {
        /// Store name.
        store: String,
        /// Key.
        key: String,
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
    #[error("{what} for key `{key}` in store `{store}` panicked: {message}")]
    Panicked {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// Which callback ("update closure", "after-load hook", ...).
        what: &'static str,
        /// The panic payload, if it was a string.
        message: String,
    },

    /// The session is closed (or closing) and cannot do this.
    #[error("session of key `{key}` in store `{store}` is closed ({reason})")]
    SessionClosed {
        /// Store name.
        store: String,
        /// Key.
        key: String,
        /// Why it closed.
        reason: CloseReason,
    },

    /// The queued request was dropped by `flush_queue`/`emergency_flush_queue`.
    #[error("queued request for key `{key}` in store `{store}` was cancelled")]
    Cancelled {
        /// Store name.
        store: String,
        /// Key.
        key: String,
    },

    /// The engine is shutting down and accepts no new loads.
    #[error("datastorer is shutting down")]
    ShuttingDown,

    /// The engine's actors are gone (the actix System stopped).
    #[error("datastorer is not running")]
    NotRunning,
}

impl Error {
    /// The store and key the error is about, if it is about one.
    pub fn store_and_key(&self) -> Option<(&str, &str)> {
        match self {
            Error::LeaseHeld { store, key, .. }
            | Error::PreconditionFailed { store, key }
            | Error::InboxFull { store, key, .. }
            | Error::MessageTooLarge { store, key, .. }
            | Error::InboxTooLarge { store, key, .. }
            | Error::LeaseLost { store, key }
            | Error::LeaseExpired { store, key, .. }
            | Error::CorruptRecord { store, key, .. }
            | Error::Migration { store, key, .. }
            | Error::Deserialize { store, key, .. }
            | Error::Serialize { store, key, .. }
            | Error::DocumentTooLarge { store, key, .. }
            | Error::Storage { store, key, .. }
            | Error::Panicked { store, key, .. }
            | Error::SessionClosed { store, key, .. }
            | Error::Cancelled { store, key, .. } => Some((store, key)),
            _ => None,
        }
    }

    /// The store name the error carries, to say it in the caller's terms
    /// (an inbox's errors name the store whose key it is, never the
    /// internal `S:inbox`).
    pub(crate) fn store_mut(&mut self) -> Option<&mut String> {
        match self {
            Error::LeaseHeld { store, .. }
            | Error::PreconditionFailed { store, .. }
            | Error::InboxFull { store, .. }
            | Error::MessageTooLarge { store, .. }
            | Error::InboxTooLarge { store, .. }
            | Error::LeaseLost { store, .. }
            | Error::LeaseExpired { store, .. }
            | Error::CorruptRecord { store, .. }
            | Error::Migration { store, .. }
            | Error::Deserialize { store, .. }
            | Error::Serialize { store, .. }
            | Error::DocumentTooLarge { store, .. }
            | Error::Storage { store, .. }
            | Error::Panicked { store, .. }
            | Error::SessionClosed { store, .. }
            | Error::Cancelled { store, .. } => Some(store),
            _ => None,
        }
    }
}
