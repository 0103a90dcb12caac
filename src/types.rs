//! The engine's shared vocabulary: the plain types every layer speaks
//! (lanes, policies, close reasons, lease and save outcomes, queue
//! figures). A leaf: it imports nothing from the crate but `storage`'s
//! plain types, so no module needs a higher one to name them, and the
//! engine's modules form no import cycle through them.
//!
//! Owns: these types and their small pure methods. Must not: hold
//! behaviour that needs an actor, a backend or a document.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::storage::EndKind;

/// What a document type must be: serde both ways, cloneable (the actor
/// keeps a copy while an `update` closure runs), sendable to the actor.
pub trait Document: Serialize + DeserializeOwned + Clone + Send + Unpin + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Unpin + 'static> Document for T {}

/// Which lane a request waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// The ordinary lane.
    Normal,
    /// Served first (shutdown, release); never starves the normal lane.
    Emergency,
}

impl Priority {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Emergency => "emergency",
        }
    }
}

/// What `open` does when another owner holds a live lease on the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquirePolicy {
    /// Fail at once with `Error::LeaseHeld` (holder and expiry).
    Fail,
    /// Re-check whenever the holder releases (notice) or every
    /// `lease_poll_interval`, and take the key once it is free or expired;
    /// fail with `LeaseHeld` after `timeout`.
    Wait {
        /// How long to wait at most.
        timeout: Duration,
    },
    /// Ask the holder to save and release (it does so at once when it is
    /// alive and shares the backend's notice bus), then wait as `Wait` does.
    RequestRelease {
        /// How long to wait at most.
        timeout: Duration,
    },
    /// Take the lease now. The old holder's next write fails its fencing
    /// check and its session closes with `Stolen` (notice) or `LeaseLost`.
    Steal,
}

impl Default for AcquirePolicy {
    fn default() -> Self {
        AcquirePolicy::RequestRelease { timeout: Duration::from_secs(15) }
    }
}

/// Why a session ended. New reasons may come in minor releases: match
/// with a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// `release()`: saved and lease cleared.
    Released,
    /// `close()`: unsaved changes dropped, lease cleared.
    Closed,
    /// A write failed its fencing check: another owner holds the lease.
    LeaseLost,
    /// Another owner stole the lease (announced by notice).
    Stolen,
    /// Another owner asked for the key; it was saved and released.
    ReleaseRequested,
    /// The engine shut down; the key was saved and released.
    Shutdown,
    /// An administrator deleted the record (`Store::delete` with `force`);
    /// unsaved changes were dropped.
    Deleted,
    /// The holder stopped renewing (a server's client vanished); the key
    /// was saved and released.
    Expired,
    /// An administrator restored the key to an earlier version
    /// (`Store::restore`): its unsaved changes were saved first where the
    /// holder could be reached, then the restore landed with a new epoch.
    Restored,
    /// The record was erased by user id (`Datastorer::erase_user`):
    /// unsaved changes were dropped with it.
    Erased,
    /// Opening failed (a corrupt record, a failed migration, a hook that
    /// panicked): the opener got the error itself; this is its message.
    OpenFailed(String),
    /// The key's actor stopped without closing the session: its engine
    /// stopped, or the actix System it ran on went down.
    Stopped,
    /// A simulated crash (the harness's `crash`): nothing was saved or
    /// released.
    Crashed,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Released => f.write_str("released"),
            CloseReason::Closed => f.write_str("closed"),
            CloseReason::LeaseLost => f.write_str("lease lost"),
            CloseReason::Stolen => f.write_str("stolen"),
            CloseReason::ReleaseRequested => f.write_str("released on request"),
            CloseReason::Shutdown => f.write_str("shutdown"),
            CloseReason::Deleted => f.write_str("deleted"),
            CloseReason::Expired => f.write_str("expired"),
            CloseReason::Restored => f.write_str("restored"),
            CloseReason::Erased => f.write_str("erased"),
            CloseReason::OpenFailed(m) => write!(f, "open failed: {m}"),
            CloseReason::Stopped => f.write_str("stopped"),
            CloseReason::Crashed => f.write_str("crashed"),
        }
    }
}

impl From<&CloseReason> for EndKind {
    /// How a session that ended for `reason` is reported in change notices.
    fn from(reason: &CloseReason) -> Self {
        match reason {
            CloseReason::Released => EndKind::Released,
            CloseReason::Stolen => EndKind::Stolen,
            CloseReason::ReleaseRequested => EndKind::ReleaseRequested,
            CloseReason::Expired => EndKind::Expired,
            CloseReason::Shutdown => EndKind::Shutdown,
            CloseReason::Restored => EndKind::Restored,
            CloseReason::Erased => EndKind::Erased,
            CloseReason::Closed
            | CloseReason::LeaseLost
            | CloseReason::Deleted
            | CloseReason::OpenFailed(_)
            | CloseReason::Stopped
            | CloseReason::Crashed => EndKind::Closed,
        }
    }
}

/// The lease a session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Owner id of this instance.
    pub owner: String,
    /// Fencing epoch of this session.
    pub epoch: u64,
    /// When the lease lapses unless renewed (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// Revision of the last durable write.
    pub revision: u64,
}

/// A durable write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOutcome {
    /// The record's revision after the write (unchanged if nothing needed writing).
    pub revision: u64,
}

/// How much work the queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Requests waiting in the emergency lane.
    pub emergency: usize,
    /// Requests waiting in the normal lane.
    pub normal: usize,
    /// Requests in the batch being executed.
    pub in_flight: usize,
    /// Requests waiting out a backoff delay.
    pub retrying: usize,
}

impl QueueDepth {
    /// Total requests the queue holds.
    pub fn total(&self) -> usize {
        self.emergency + self.normal + self.in_flight + self.retrying
    }
}

/// Tokens left in each budget (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetLevels {
    /// Reads.
    pub get: Option<f64>,
    /// Writes.
    pub write: Option<f64>,
    /// Scans.
    pub scan: Option<f64>,
}

/// Totals since the queue started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Batches executed.
    pub batches: u64,
    /// Durable flushes (one per batch that wrote something; with the queue on
    /// its own thread one flush can cover several batches).
    pub flushes: u64,
    /// Write operations sent to the backend (attempts included).
    pub writes: u64,
    /// Reads sent to the backend.
    pub gets: u64,
}

/// Loaded keys without an actor (see `Config::hibernate_after`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HibernationStats {
    /// Loaded keys hibernating now.
    pub hibernating: usize,
    /// Times a key fell asleep since the instance started.
    pub fell_asleep: u64,
    /// Times a message woke a hibernating key.
    pub woken: u64,
}

/// One message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Position in the key's inbox: 1, 2, 3, … (never reused while the key exists; a delete
    /// takes the inbox with it, and ids start again at 1).
    pub id: u64,
    /// When it was posted (ms since the Unix epoch, the poster's clock).
    pub sent_at_ms: u64,
    /// What was posted.
    pub body: serde_json::Value,
}

/// What an erasure does to a record tagged with the erased user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EraseMode {
    /// Delete the record, every version of it and its inbox (the default).
    #[default]
    Delete,
    /// Remove the user id from the record and its versions and keep the
    /// data: for records many users share (a guild, a trade).
    Unlink,
}
