//! Wall-clock milliseconds for lease expiries, driven by tokio's clock.
//!
//! Leases are compared across processes, so they need wall time; tests need
//! time they can pause and advance. The clock anchors wall time once and then
//! advances with `tokio::time::Instant`, so `tokio::time::advance` moves lease
//! expiry exactly like autosave and backoff timers.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    anchor_ms: u64,
    anchor: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let anchor_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Self { anchor_ms, anchor: Instant::now() }
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as u64
    }
}
