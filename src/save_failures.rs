//! Counts of saves that failed, by reason: what `/metrics` shows so an
//! operator sees a key that cannot be saved before the shutdown does.
//!
//! Owns: the counters and the mapping from an error to its reason.
//! Must not: decide anything; the key actor reports, readers only read.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// Why a save (or release) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaveFailureReason {
    /// The document encodes to more than `max_document_bytes`.
    TooLarge,
    /// The document does not encode to JSON.
    Unserializable,
    /// The store's before-save hook panicked.
    BeforeSaveHook,
    /// The backend failed (after the queue's retries).
    Storage,
    /// Another owner took the lease: the write was fenced off.
    LeaseLost,
    /// Anything else (the engine stopping, a corrupt stored record).
    Other,
}

impl SaveFailureReason {
    /// Every reason, in a stable order.
    pub const ALL: [SaveFailureReason; 6] = [
        SaveFailureReason::TooLarge,
        SaveFailureReason::Unserializable,
        SaveFailureReason::BeforeSaveHook,
        SaveFailureReason::Storage,
        SaveFailureReason::LeaseLost,
        SaveFailureReason::Other,
    ];

    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SaveFailureReason::TooLarge => "too_large",
            SaveFailureReason::Unserializable => "unserializable",
            SaveFailureReason::BeforeSaveHook => "before_save_hook",
            SaveFailureReason::Storage => "storage",
            SaveFailureReason::LeaseLost => "lease_lost",
            SaveFailureReason::Other => "other",
        }
    }

    /// The reason behind `error`.
    pub fn of(error: &Error) -> Self {
        match error {
            Error::DocumentTooLarge { .. } => SaveFailureReason::TooLarge,
            Error::Serialize { .. } => SaveFailureReason::Unserializable,
            Error::Panicked { what, .. } if *what == "before-save hook" => SaveFailureReason::BeforeSaveHook,
            Error::Storage { .. } | Error::Cancelled { .. } => SaveFailureReason::Storage,
            Error::LeaseLost { .. } => SaveFailureReason::LeaseLost,
            _ => SaveFailureReason::Other,
        }
    }
}

/// Failed saves since start, by reason.
#[derive(Debug, Default)]
pub(crate) struct SaveFailures([AtomicU64; 6]);

impl SaveFailures {
    pub(crate) fn count(&self, reason: SaveFailureReason) {
        let i = SaveFailureReason::ALL.iter().position(|r| *r == reason).unwrap_or(5);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Vec<(SaveFailureReason, u64)> {
        SaveFailureReason::ALL.iter().zip(&self.0).map(|(r, n)| (*r, n.load(Ordering::Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_counts_under_its_reason() {
        let failures = SaveFailures::default();
        let too_large = Error::DocumentTooLarge { store: "s".into(), key: "k".into(), limit: 1 };
        let lost = Error::LeaseLost { store: "s".into(), key: "k".into() };
        for e in [&too_large, &too_large, &lost, &Error::NotRunning] {
            failures.count(SaveFailureReason::of(e));
        }
        let counts: std::collections::HashMap<_, _> = failures.snapshot().into_iter().collect();
        assert_eq!(counts[&SaveFailureReason::TooLarge], 2);
        assert_eq!(counts[&SaveFailureReason::LeaseLost], 1);
        assert_eq!(counts[&SaveFailureReason::Other], 1);
        assert_eq!(counts[&SaveFailureReason::Storage], 0);
    }
}
