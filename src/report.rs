//! What `release_all_keys` and `shutdown` report back.
//!
//! Owns: the report types. Must not: hold behaviour beyond summarising.

use std::time::Duration;

use crate::error::Error;

/// Outcome of releasing many keys at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseReport {
    /// Keys saved and released.
    pub released: usize,
    /// Keys whose release failed, with the error (their data stays in memory
    /// and their sessions stay open, unless the lease was lost).
    pub failed: Vec<Error>,
    /// Keys that had not answered when the deadline passed.
    pub timed_out: usize,
}

/// Outcome of a shutdown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShutdownReport {
    /// The release of every key.
    pub release: ReleaseReport,
    /// Whether the queue drained before the deadline.
    pub queue_drained: bool,
    /// The final storage flush, if it failed.
    pub flush_error: Option<String>,
    /// How long the shutdown took.
    pub took: Duration,
}

impl ShutdownReport {
    /// True when every key was saved and released and storage flushed.
    pub fn is_clean(&self) -> bool {
        self.release.failed.is_empty()
            && self.release.timed_out == 0
            && self.queue_drained
            && self.flush_error.is_none()
    }
}
