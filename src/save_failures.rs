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

/// One failed save, as alerts name it: which key and why, never what the
/// document holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedSave {
    /// Position among the failures since start: 1, 2, 3, …
    pub seq: u64,
    /// Why.
    pub reason: SaveFailureReason,
    /// The store.
    pub store: String,
    /// The key.
    pub key: String,
}

/// How many recent failures are kept by name (the counters count all).
const RECENT: usize = 64;

/// Failed saves since start, by reason, and the last few by name.
#[derive(Debug, Default)]
pub(crate) struct SaveFailures {
    counts: [AtomicU64; 6],
    recent: std::sync::Mutex<std::collections::VecDeque<FailedSave>>,
    seq: AtomicU64,
}

impl SaveFailures {
    pub(crate) fn count(&self, reason: SaveFailureReason, store: &str, key: &str) {
        let i = SaveFailureReason::ALL.iter().position(|r| *r == reason).unwrap_or(5);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(FailedSave { seq, reason, store: store.to_owned(), key: key.to_owned() });
    }

    pub(crate) fn snapshot(&self) -> Vec<(SaveFailureReason, u64)> {
        SaveFailureReason::ALL.iter().zip(&self.counts).map(|(r, n)| (*r, n.load(Ordering::Relaxed))).collect()
    }

    /// The kept failures after `after` (a `seq`), oldest first.
    pub(crate) fn recent(&self, after: u64) -> Vec<FailedSave> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|f| f.seq > after).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_counts_under_its_reason() {
        let failures = SaveFailures::default();
        let too_large = Error::DocumentTooLarge { at: crate::error::KeyId::new("s", "k"), limit: 1 };
        let lost = Error::LeaseLost { at: crate::error::KeyId::new("s", "k") };
        for (i, e) in [&too_large, &too_large, &lost, &Error::NotRunning].into_iter().enumerate() {
            failures.count(SaveFailureReason::of(e), "s", &format!("k{i}"));
        }
        let counts: std::collections::HashMap<_, _> = failures.snapshot().into_iter().collect();
        assert_eq!(counts[&SaveFailureReason::TooLarge], 2);
        assert_eq!(counts[&SaveFailureReason::LeaseLost], 1);
        assert_eq!(counts[&SaveFailureReason::Other], 1);
        assert_eq!(counts[&SaveFailureReason::Storage], 0);
        let named: Vec<_> = failures.recent(2).into_iter().map(|f| (f.seq, f.reason, f.key)).collect();
        assert_eq!(named, [(3, SaveFailureReason::LeaseLost, "k2".into()), (4, SaveFailureReason::Other, "k3".into())]);
    }

    #[test]
    fn only_the_last_failures_are_kept_by_name() {
        let failures = SaveFailures::default();
        for i in 0..200 {
            failures.count(SaveFailureReason::Storage, "s", &i.to_string());
        }
        let kept = failures.recent(0);
        assert_eq!(kept.len(), RECENT);
        assert_eq!(kept[0].seq, 200 - RECENT as u64 + 1);
        assert_eq!(failures.snapshot().iter().find(|(r, _)| *r == SaveFailureReason::Storage).map(|c| c.1), Some(200));
    }
}
