//! The change log: every event the change feed shows, numbered by a
//! sequence that only grows, in a bounded ring buffer. The long-poll route
//! (`GET /v1/changes/poll`, for clients that cannot hold a stream open:
//! Roblox game servers) and the SSE stream (with `id:` and `Last-Event-ID`
//! resume) both read from it, so both see the same events with the same
//! numbers. Owns the buffer and its numbering; must not touch storage (it
//! only hears the engine's notices) and must not block a notice sender.
//!
//! Sequences belong to one server process and start again at 1 when it
//! restarts. A reader that asks for events older than the buffer holds,
//! whose range crosses a gap (the log itself fell behind the notice bus),
//! or whose cursor this log never handed out (a restart, another server),
//! is told `lagged`: it must re-read what it caches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use datastorer::storage::{EndKind, Notice, NoticeKind};

/// How many events the log keeps by default.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Position in the log: 1, 2, 3, … (never reused while the server runs).
    pub seq: u64,
    /// `saved`, `released`, `closed`, `stolen`, `expired`, `deleted`,
    /// `release_requested`, `resync` (drop every cache) or `lagged` (the
    /// log missed notices here).
    pub kind: &'static str,
    /// Store of the key (absent for `resync` and `lagged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The revision a save or release made durable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// `shutdown` on a release at shutdown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Event {
    fn matches(&self, store: Option<&str>) -> bool {
        match (store, &self.store) {
            (None, _) | (_, None) => true,
            (Some(want), Some(have)) => want == have,
        }
    }
}

/// The kind, revision and reason a notice shows as, or `None` for notices
/// the feed does not show. Each way a session ends has its own kind, so a
/// client can tell a steal from a release.
fn describe(kind: &NoticeKind) -> Option<(&'static str, Option<u64>, Option<&'static str>)> {
    Some(match kind {
        NoticeKind::Saved { revision } => ("saved", Some(*revision), None),
        // A shutdown's release is a release; its reason rides along.
        NoticeKind::Released { revision, how: EndKind::Shutdown } => ("released", Some(*revision), Some("shutdown")),
        NoticeKind::Released { revision, how } => (how.as_str(), Some(*revision), None),
        NoticeKind::Stolen { .. } => ("stolen", None, None),
        NoticeKind::Deleted => ("deleted", None, None),
        NoticeKind::ReleaseRequested { .. } => return None,
        NoticeKind::Resync => ("resync", None, None),
    })
}

/// What a read of the log answers (serialized as the poll's answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    /// Events after the cursor (matching the filter), oldest first.
    pub events: Vec<Event>,
    /// The cursor to pass next (`after`): the last sequence looked at.
    pub next: u64,
    /// Events after the cursor were lost (dropped from the buffer, or never
    /// heard): re-read whatever is cached.
    pub lagged: bool,
}

struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    /// Sequence of the newest event (0 before the first).
    last: u64,
}

/// The log (shared: the pump appends, readers read).
pub struct ChangeLog {
    ring: Mutex<Ring>,
    /// The newest sequence, for readers waiting for more.
    newest: watch::Sender<u64>,
}

impl ChangeLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Arc<ChangeLog> {
        let ring = Ring { events: VecDeque::with_capacity(capacity.min(1024)), capacity: capacity.max(1), last: 0 };
        Arc::new(ChangeLog { ring: Mutex::new(ring), newest: watch::channel(0).0 })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the event a notice shows as (if any); answers its sequence.
    pub fn record(&self, n: &Notice) -> Option<u64> {
        let (kind, revision, reason) = describe(&n.kind)?;
        let keyed = n.kind != NoticeKind::Resync;
        Some(self.push(kind, keyed.then(|| n.store.clone()), keyed.then(|| n.key.clone()), revision, reason))
    }

    /// Records that the log missed notices here.
    pub fn gap(&self) -> u64 {
        self.push("lagged", None, None, None, None)
    }

    fn push(
        &self,
        kind: &'static str,
        store: Option<String>,
        key: Option<String>,
        revision: Option<u64>,
        reason: Option<&'static str>,
    ) -> u64 {
        let seq = {
            let mut ring = self.ring();
            ring.last += 1;
            let seq = ring.last;
            if ring.events.len() == ring.capacity {
                ring.events.pop_front();
            }
            ring.events.push_back(Event { seq, kind, store, key, revision, reason });
            seq
        };
        self.newest.send_replace(seq);
        seq
    }

    /// The newest sequence (0 when nothing happened yet).
    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// At most `limit` events after `after` (for `store`, or all).
    pub fn read(&self, after: u64, store: Option<&str>, limit: usize) -> Page {
        let ring = self.ring();
        // A cursor this log never handed out (from before a restart, or
        // from another server): everything it cached may be stale.
        let foreign = after > ring.last;
        let after = if foreign { 0 } else { after };
        let oldest = ring.events.front().map_or(ring.last + 1, |e| e.seq);
        // Events after `after` that the buffer no longer holds.
        let mut lagged = foreign || after + 1 < oldest;
        let mut events = Vec::new();
        let mut next = after.max(oldest.saturating_sub(1));
        let start = ring.events.partition_point(|e| e.seq <= after);
        for e in ring.events.range(start..) {
            if events.len() == limit {
                break;
            }
            next = e.seq;
            if e.kind == "lagged" {
                lagged = true;
            }
            if e.matches(store) {
                events.push(e.clone());
            }
        }
        Page { events, next, lagged }
    }

    /// Waits until an event after `after` is in the log (or forever).
    pub async fn wait_after(&self, after: u64) {
        let mut rx = self.newest.subscribe();
        let _ = rx.wait_for(|newest| *newest > after).await;
    }

    /// Copies the engine's notices into the log until the bus closes; a
    /// lag of the bus becomes a `lagged` event, so no reader misses the
    /// fact that it missed something.
    pub async fn pump(self: Arc<Self>, mut notices: broadcast::Receiver<Notice>) {
        loop {
            match notices.recv().await {
                Ok(n) => {
                    self.record(&n);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.gap();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(log: &ChangeLog, store: &str, key: &str, revision: u64) -> u64 {
        let n = Notice { store: store.into(), key: key.into(), kind: NoticeKind::Saved { revision } };
        log.record(&n).expect("a save is shown")
    }

    #[test]
    fn sequences_grow_and_reads_resume_after_a_cursor() {
        let log = ChangeLog::new(8);
        assert_eq!((saved(&log, "s", "a", 1), saved(&log, "s", "b", 1), saved(&log, "t", "c", 1)), (1, 2, 3));
        let page = log.read(0, None, 10);
        assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!((page.next, page.lagged), (3, false));
        let page = log.read(1, None, 1);
        assert_eq!((page.events[0].seq, page.next), (2, 2), "limit");
        assert_eq!(log.read(3, None, 10), Page { events: vec![], next: 3, lagged: false });
        // A cursor this log never handed out (another server's, or from
        // before a restart) is told it lagged and reads from the start.
        let page = log.read(99, None, 10);
        assert!(page.lagged);
        assert_eq!((page.events.len(), page.next), (3, 3));
    }

    #[test]
    fn a_store_filter_skips_other_stores_but_the_cursor_moves_past_them() {
        let log = ChangeLog::new(8);
        saved(&log, "s", "a", 1);
        saved(&log, "t", "b", 1);
        saved(&log, "t", "c", 1);
        let page = log.read(0, Some("s"), 10);
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.next, 3, "a filtered poll does not see the same events again");
        log.record(&Notice { store: String::new(), key: String::new(), kind: NoticeKind::Resync });
        let page = log.read(3, Some("s"), 10);
        assert_eq!(page.events[0].kind, "resync", "a resync concerns every store");
    }

    #[test]
    fn a_reader_behind_the_buffer_or_across_a_gap_is_told_it_lagged() {
        let log = ChangeLog::new(3);
        for r in 1..=5 {
            saved(&log, "s", "a", r);
        }
        let page = log.read(0, None, 10);
        assert!(page.lagged, "events 1 and 2 were dropped");
        assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(!log.read(2, None, 10).lagged, "nothing after 2 was dropped");
        log.gap();
        let page = log.read(5, Some("other"), 10);
        assert!(page.lagged && page.next == 6);
    }

    #[test]
    fn kinds_are_distinct_and_a_shutdown_release_says_so() {
        let log = ChangeLog::new(8);
        let note = |kind| Notice { store: "s".into(), key: "k".into(), kind };
        log.record(&note(NoticeKind::Released { revision: 4, how: EndKind::Shutdown }));
        log.record(&note(NoticeKind::Deleted));
        let page = log.read(0, None, 10);
        assert_eq!((page.events[0].kind, page.events[0].reason), ("released", Some("shutdown")));
        assert_eq!(
            serde_json::to_value(&page.events[1]).unwrap(),
            serde_json::json!({"seq": 2, "kind": "deleted", "store": "s", "key": "k"})
        );
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_the_next_event() {
        let log = ChangeLog::new(8);
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_after(0).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        saved(&log, "s", "a", 1);
        waiter.await.expect("woken");
    }
}
