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
    /// Those keys, as (store, key): their unsaved changes are lost with
    /// the process unless saved some other way.
    pub timed_out_keys: Vec<(String, String)>,
}

impl ReleaseReport {
    /// Every key not saved and released, as `store/key`, with why: the
    /// failed ones with their error, the timed-out ones. For logs and the
    /// exit message of a shutdown that could not save everything.
    pub fn unsaved(&self) -> Vec<String> {
        let failed = self.failed.iter().map(|e| match e.store_and_key() {
            Some((store, key)) => format!("{store}/{key} ({e})"),
            None => e.to_string(),
        });
        let timed_out =
            self.timed_out_keys.iter().map(|(store, key)| format!("{store}/{key} (not saved before the deadline)"));
        failed.chain(timed_out).collect()
    }
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

impl std::fmt::Display for ShutdownReport {
    /// One sentence an operator can act on, naming every key not saved.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unsaved = self.release.unsaved();
        write!(f, "{} keys saved and released, {} not saved", self.release.released, unsaved.len())?;
        if !self.queue_drained {
            f.write_str("; the storage queue did not drain")?;
        }
        if let Some(e) = &self.flush_error {
            write!(f, "; the final flush to storage failed: {e}")?;
        }
        for key in unsaved {
            write!(f, "\n  not saved: {key}")?;
        }
        Ok(())
    }
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
