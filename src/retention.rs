//! Which versions of a key a store keeps: every version for a recent
//! window, then the last one of each hour up to a horizon, and always the
//! newest few. Plain arithmetic with unit tests; the pruning task
//! (`history::prune`) applies it.
//!
//! Owns: the `Retention` policy and the decision. Must not: read or write.

use std::time::Duration;

/// How long a store keeps the versions of its keys. Every acknowledged
/// save is a version; a delete leaves a tombstone version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Whether the store keeps versions at all (`versions = false` in the
    /// server's config turns it off).
    pub enabled: bool,
    /// Every version younger than this is kept (default 24 h).
    pub keep_all_for: Duration,
    /// Past the window, the last version of each UTC hour is kept up to
    /// this age (default 30 days); older ones are pruned.
    pub horizon: Duration,
    /// The newest this many versions of a key are kept whatever their age
    /// (default 10).
    pub keep_newest: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            enabled: true,
            keep_all_for: Duration::from_secs(24 * 3600),
            horizon: Duration::from_secs(30 * 24 * 3600),
            keep_newest: 10,
        }
    }
}

impl Retention {
    /// A store that keeps no history.
    pub fn off() -> Self {
        Self { enabled: false, ..Self::default() }
    }

    /// The policy's own consistency: the window inside the horizon.
    pub fn check(&self) -> Result<(), String> {
        if self.keep_all_for > self.horizon {
            return Err(format!(
                "the window that keeps every version ({:?}) is longer than the horizon ({:?})",
                self.keep_all_for, self.horizon
            ));
        }
        Ok(())
    }

    /// Which of a key's versions to prune, given their save times (ms since
    /// the Unix epoch) **oldest first**, at `now_ms`: indices into `saved`.
    /// `deleted`: the newest version is a tombstone; once it is past the
    /// horizon the key's whole history goes (a deleted key is restorable
    /// within the horizon, not forever).
    pub fn prune(&self, saved: &[u64], deleted: bool, now_ms: u64) -> Vec<usize> {
        const HOUR_MS: u64 = 3600 * 1000;
        let window = self.keep_all_for.as_millis() as u64;
        let horizon = self.horizon.as_millis() as u64;
        if deleted && saved.last().is_some_and(|&t| now_ms.saturating_sub(t) > horizon) {
            return (0..saved.len()).collect();
        }
        let newest_from = saved.len().saturating_sub(self.keep_newest);
        let mut out = Vec::new();
        for (i, &at) in saved.iter().enumerate() {
            if i >= newest_from {
                break;
            }
            let age = now_ms.saturating_sub(at);
            if age <= window {
                continue;
            }
            if age > horizon {
                out.push(i);
                continue;
            }
            // Between the window and the horizon: the last of its hour.
            let last_of_hour = saved.get(i + 1).is_none_or(|next| next / HOUR_MS != at / HOUR_MS);
            if !last_of_hour {
                out.push(i);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600 * 1000;
    const DAY: u64 = 24 * H;

    fn policy(newest: usize) -> Retention {
        Retention { keep_newest: newest, ..Retention::default() }
    }

    #[test]
    fn every_version_of_the_recent_window_is_kept() {
        let now = 100 * DAY;
        let saved: Vec<u64> = (0..50).map(|i| now - 23 * H + i * 1000).collect();
        assert!(policy(0).prune(&saved, false, now).is_empty());
    }

    #[test]
    fn past_the_window_only_the_last_version_of_each_hour_is_kept() {
        let now = 100 * DAY;
        let hour = (now - 3 * DAY) / H * H;
        // Three saves in one hour, two in the next.
        let saved = [hour + 10, hour + 20, hour + 30, hour + H + 5, hour + H + 6];
        assert_eq!(policy(0).prune(&saved, false, now), vec![0, 1, 3]);
    }

    #[test]
    fn past_the_horizon_nothing_is_kept_but_the_newest_n() {
        let now = 100 * DAY;
        let saved: Vec<u64> = (0..5).map(|i| now - 40 * DAY + i * H).collect();
        assert_eq!(policy(0).prune(&saved, false, now), vec![0, 1, 2, 3, 4]);
        assert_eq!(policy(2).prune(&saved, false, now), vec![0, 1, 2], "the newest two stay whatever their age");
        assert_eq!(
            policy(2).prune(&saved, true, now),
            vec![0, 1, 2, 3, 4],
            "a key deleted past the horizon goes whole"
        );
        let recent: Vec<u64> = saved.iter().map(|t| t + 20 * DAY).collect();
        assert!(policy(2).prune(&recent, true, now).is_empty(), "deleted within the horizon: restorable");
    }

    #[test]
    fn a_window_longer_than_the_horizon_is_refused() {
        let bad = Retention {
            keep_all_for: Duration::from_secs(10),
            horizon: Duration::from_secs(5),
            ..Retention::default()
        };
        assert!(bad.check().is_err());
        assert!(Retention::default().check().is_ok());
    }
}
