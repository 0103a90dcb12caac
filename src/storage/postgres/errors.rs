//! How PostgreSQL's failures become the queue's `ErrorKind`s.
//!
//! Owns: the SQLSTATE table (which failures are retried, which throttle,
//! which are permanent) and the start-up errors. Must not: retry anything
//! itself (the queue does, with backoff).

use tokio_postgres::error::SqlState;

use crate::storage::{ErrorKind, StorageError};

/// A failure with what the connection it happened on is worth afterwards.
#[derive(Debug, Clone)]
pub(super) struct PgFailure {
    pub error: StorageError,
    /// The connection is broken (or in doubt) and must be replaced.
    pub reconnect: bool,
}

/// Why the backend could not start.
#[derive(Debug, Clone)]
pub(super) enum StartError {
    /// Connecting failed (unreachable, refused, authentication, timeout).
    Connect(String),
    /// A start-up statement failed.
    Query(PgFailure),
    /// The server is reachable but unfit (encoding, durability, version).
    Refused(String),
}

impl StartError {
    pub(super) fn into_storage(self, target: &str) -> StorageError {
        match self {
            StartError::Connect(m) => StorageError::permanent(format!("cannot connect to PostgreSQL at {target}: {m}")),
            StartError::Query(f) => {
                StorageError::permanent(format!("PostgreSQL at {target} failed while starting: {}", f.error.message))
            }
            StartError::Refused(m) => StorageError::permanent(format!("PostgreSQL at {target} refused: {m}")),
        }
    }
}

/// The kind of a SQLSTATE, and whether the session is worth keeping.
pub(super) fn classify(code: &SqlState) -> (ErrorKind, bool) {
    let c = code.code();
    match c {
        // Serialization failure, deadlock, lock timeout, cancel, a unique
        // violation racing ON CONFLICT: the retry re-evaluates.
        "40001" | "40P01" | "55P03" | "57014" | "23505" => (ErrorKind::Transient, false),
        // Admin/crash shutdown, cannot connect now, read-only transaction
        // (a standby after failover): reconnect, then retry.
        "57P01" | "57P02" | "57P03" | "25006" => (ErrorKind::Transient, true),
        _ if c.starts_with("08") => (ErrorKind::Transient, true),
        // Out of connections, memory or disk: back off.
        _ if c.starts_with("53") => (ErrorKind::Throttled, false),
        // Everything else (missing table, data exceptions, cardinality,
        // syntax) is a bug or a schema mismatch that retrying cannot fix.
        _ => (ErrorKind::Permanent, false),
    }
}

/// Maps a driver error.
pub(super) fn from_pg(e: tokio_postgres::Error) -> PgFailure {
    match e.code() {
        Some(code) => {
            let (kind, reconnect) = classify(code);
            let message = match e.as_db_error() {
                Some(db) => format!("{} ({})", db.message(), code.code()),
                None => e.to_string(),
            };
            PgFailure { error: StorageError::new(kind, message).caused_by(e), reconnect }
        }
        // A value this build could not encode or decode: a bug, not
        // something a retry can fix.
        None if is_codec_error(&e) => PgFailure {
            error: StorageError::permanent(format!("PostgreSQL value: {e}")).caused_by(e),
            reconnect: false,
        },
        // No SQLSTATE: I/O, a closed connection, a protocol error. The
        // outcome of anything in flight is unknown; a new connection and a
        // retry resolve it.
        None => PgFailure {
            error: StorageError::transient(format!("PostgreSQL connection: {e}")).caused_by(e),
            reconnect: true,
        },
    }
}

/// The driver's own encode/decode failures (its error kinds are private;
/// their messages are stable).
fn is_codec_error(e: &tokio_postgres::Error) -> bool {
    let m = e.to_string();
    m.starts_with("error serializing") || m.starts_with("error deserializing") || m.starts_with("invalid column")
}

impl From<tokio_postgres::Error> for PgFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        from_pg(e)
    }
}

impl PgFailure {
    pub(super) fn permanent(message: impl Into<String>) -> Self {
        PgFailure { error: StorageError::permanent(message), reconnect: false }
    }
    pub(super) fn transient_reconnect(message: impl Into<String>) -> Self {
        PgFailure { error: StorageError::transient(message), reconnect: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_retried_throttled_or_final_by_sqlstate() {
        let kind = |c: &str| classify(&SqlState::from_code(c));
        assert_eq!(kind("40P01"), (ErrorKind::Transient, false), "deadlock");
        assert_eq!(kind("40001"), (ErrorKind::Transient, false), "serialization failure");
        assert_eq!(kind("55P03"), (ErrorKind::Transient, false), "lock timeout");
        assert_eq!(kind("25006"), (ErrorKind::Transient, true), "read-only primary");
        assert_eq!(kind("57P01"), (ErrorKind::Transient, true), "admin shutdown");
        assert_eq!(kind("08006"), (ErrorKind::Transient, true), "connection failure");
        assert_eq!(kind("53300"), (ErrorKind::Throttled, false), "too many connections");
        assert_eq!(kind("42P01"), (ErrorKind::Permanent, false), "missing table");
        assert_eq!(kind("22P02"), (ErrorKind::Permanent, false), "bad input");
    }
}
