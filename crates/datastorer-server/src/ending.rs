//! Why a client session ended, in the words its holder is told (`410
//! session_ended`, the feed's `session_ended` event), and the wall clock
//! those answers are stamped with.
//!
//! Owns: `EndReason`. Must not: import anything of the crate; the session
//! table, the error answers and the change log all read it.

use std::time::{SystemTime, UNIX_EPOCH};

use datastorer::CloseReason;

/// Why a client session ended, as its holder is told (`410 session_ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The client released it.
    Released,
    /// The client closed it.
    Closed,
    /// Another client (or server) took it with `steal`.
    Stolen,
    /// Another client asked for it; it was saved and handed over.
    ReleaseRequested,
    /// The client stopped renewing; it was saved and released.
    Expired,
    /// An administrator deleted the record.
    Deleted,
    /// An administrator restored the key to an earlier version.
    Restored,
    /// The record was erased by user id.
    Erased,
    /// The server shut down.
    Shutdown,
    /// The token is from before this server process started: the process
    /// that opened the session stopped (shut down or crashed), and its
    /// sessions ended with it; when is not known here.
    ServerRestarted,
    /// A write was fenced off: another process holds the key now.
    LeaseLost,
    /// The engine ended it after an error.
    Error,
}

impl EndReason {
    /// The name clients see.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Closed => "closed",
            EndReason::Stolen => "stolen",
            EndReason::ReleaseRequested => "release_requested",
            EndReason::Expired => "expired",
            EndReason::Deleted => "deleted",
            EndReason::Restored => "restored",
            EndReason::Erased => "erased",
            EndReason::Shutdown => "shutdown",
            EndReason::ServerRestarted => "server_restarted",
            EndReason::LeaseLost => "lease_lost",
            EndReason::Error => "error",
        }
    }

    /// How an engine close reason is told to the client.
    pub(crate) fn of(reason: &CloseReason) -> Self {
        match reason {
            CloseReason::Released => EndReason::Released,
            CloseReason::Closed => EndReason::Closed,
            CloseReason::LeaseLost => EndReason::LeaseLost,
            CloseReason::Stolen => EndReason::Stolen,
            CloseReason::ReleaseRequested => EndReason::ReleaseRequested,
            CloseReason::Shutdown => EndReason::Shutdown,
            CloseReason::Deleted => EndReason::Deleted,
            CloseReason::Restored => EndReason::Restored,
            CloseReason::Erased => EndReason::Erased,
            CloseReason::Expired => EndReason::Expired,
            CloseReason::OpenFailed(_) | CloseReason::Stopped | CloseReason::Crashed => EndReason::Error,
            // A reason this build does not know yet is told as an error.
            _ => EndReason::Error,
        }
    }
}

/// Now, in milliseconds since the Unix epoch (0 on a clock before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
