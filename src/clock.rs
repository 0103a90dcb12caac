//! Wall-clock milliseconds for lease expiries.
//!
//! Leases are compared across processes, so they need wall time; tests need
//! time they can pause and advance. Without a backend clock the clock
//! anchors wall time once and then advances with `tokio::time::Instant`, so
//! `tokio::time::advance` moves lease expiry exactly like autosave and
//! backoff timers. A backend shared across processes (PostgreSQL) brings a
//! clock of its own (the database's time), and every expiry then follows it.
//!
//! Owns: the time base of lease expiries. Must not: decide lease policy.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::storage::BackendClock;

#[derive(Clone)]
pub(crate) struct Clock {
    anchor_ms: u64,
    anchor: Instant,
    backend: Option<Arc<dyn BackendClock>>,
}

impl Clock {
    /// The local clock, or the backend's when it has one.
    pub(crate) fn new(backend: Option<Arc<dyn BackendClock>>) -> Self {
        let anchor_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Self { anchor_ms, anchor: Instant::now(), backend }
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        match &self.backend {
            Some(b) => b.now_ms(),
            None => self.anchor_ms + self.anchor.elapsed().as_millis() as u64,
        }
    }
}
