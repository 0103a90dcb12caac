//! The change log: every event the change feed shows, numbered by a
//! sequence that only grows, in a bounded ring buffer. The long-poll route
//! (`GET /v1/changes/poll`, for clients that cannot hold a stream open:
//! Roblox game servers) and the SSE stream (with `id:` and `Last-Event-ID`
//! resume) both read from it, so both see the same events with the same
//! numbers.
//!
//! The engine hands it every notice through a sink (`Datastorer::on_change`),
//! on the thread that made the change: it cannot fall behind the notice
//! bus, and appending wakes no task.
//!
//! Owns: the buffer and its numbering. Must not: touch storage (it only
//! hears the engine's notices) or hold its lock beyond an append or one
//! page's copy (a notice's sender, a key actor, waits for the append).
//!
//! Sequences belong to one server process and start again at 1 when it
//! restarts. A reader that asks for events older than the buffer holds,
//! or whose cursor this log never handed out (a restart, another server),
//! is told `lagged`: it must re-read what it caches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use datastorer::storage::{EndKind, Notice, NoticeKind};

/// How many events the log keeps by default.
pub(crate) const DEFAULT_CAPACITY: usize = 16_384;

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Event {
    /// Position in the log: 1, 2, 3, … (never reused while the server runs).
    pub(crate) seq: u64,
    /// `saved`, `released`, `closed`, `stolen`, `expired`, `deleted`,
    /// `release_requested`, `resync` (drop every cache), or a holder
    /// notice: `handoff_requested`, `messages`, `session_ended`.
    pub(crate) kind: &'static str,
    /// Store of the key (absent for `resync`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) store: Option<String>,
    /// The key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    /// The revision a save or release made durable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) revision: Option<u64>,
    /// `shutdown` on a release at shutdown; why a `session_ended` ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'static str>,
    /// The client (`client_id`) a holder notice is for: `handoff_requested`
    /// and `session_ended` name the session's holder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) holder: Option<String>,
    /// Who asked for the key (`handoff_requested`) or took it over
    /// (`session_ended`), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) by: Option<String>,
    /// `handoff_requested`: when the server saves and hands the key over
    /// unless the holder released it first (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deadline_ms: Option<u64>,
    /// The fencing epoch of the session a holder notice is about: a client
    /// that has opened the key again since (a new epoch) ignores it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<u64>,
    /// The API key the holder's session was opened under: a holder notice
    /// is read only under it (never sent).
    #[serde(skip)]
    pub(crate) api_key: Option<String>,
}

/// Which events a reader wants. An event that concerns every key
/// (`resync`) always matches.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Filter<'a> {
    /// Only this store's events.
    pub(crate) store: Option<&'a str>,
    /// Only holder notices for this client.
    pub(crate) holder: Option<&'a str>,
    /// The API key reading: holder notices of sessions opened under
    /// another key never match.
    pub(crate) api_key: Option<&'a str>,
}

impl Event {
    fn keyed(kind: &'static str, store: &str, key: &str) -> Event {
        Event {
            seq: 0,
            kind,
            store: Some(store.to_owned()),
            key: Some(key.to_owned()),
            revision: None,
            reason: None,
            holder: None,
            by: None,
            deadline_ms: None,
            epoch: None,
            api_key: None,
        }
    }

    fn matches(&self, f: Filter<'_>) -> bool {
        let Some(store) = &self.store else { return true };
        f.store.is_none_or(|want| want == store)
            && f.holder.is_none_or(|want| {
                self.holder.as_deref() == Some(want) && f.api_key.is_none_or(|k| self.api_key.as_deref() == Some(k))
            })
    }
}

/// A notice for the client holding a key, which it can poll for with
/// `client_id=` instead of polling every key it holds.
#[derive(Debug, Clone)]
pub(crate) enum HolderNotice {
    /// Another client asked for the key: release it before `deadline_ms`
    /// (with a final patch), or the server saves and hands it over then.
    HandoffRequested {
        /// Who asked.
        by: String,
        /// When the server hands over.
        deadline_ms: u64,
    },
    /// Messages wait in the key's inbox.
    Messages,
    /// The session ended without its holder ending it.
    SessionEnded {
        /// `stolen`, `release_requested`, `expired`, `deleted`, `shutdown`, …
        reason: &'static str,
        /// Who took over, where known.
        by: Option<String>,
    },
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
        NoticeKind::Restored => ("restored", None, None),
        NoticeKind::Erased => ("erased", None, None),
        NoticeKind::ReleaseRequested { .. } => return None,
        NoticeKind::Resync => ("resync", None, None),
    })
}

/// What a read of the log answers (serialized as the poll's answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Page {
    /// Events after the cursor (matching the filter), oldest first.
    pub(crate) events: Vec<Event>,
    /// The cursor to pass next (`after`): the last sequence looked at.
    pub(crate) next: u64,
    /// Events after the cursor were lost (dropped from the buffer, or never
    /// heard): re-read whatever is cached.
    pub(crate) lagged: bool,
}

struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    /// Sequence of the newest event (0 before the first).
    last: u64,
}

/// The log (shared: the engine's sink appends, readers read).
pub(crate) struct ChangeLog {
    ring: Mutex<Ring>,
    /// The newest sequence, for readers waiting for more.
    newest: watch::Sender<u64>,
}

impl ChangeLog {
    /// An empty log keeping at most `capacity` events.
    pub(crate) fn new(capacity: usize) -> Arc<ChangeLog> {
        let ring = Ring { events: VecDeque::with_capacity(capacity.min(1024)), capacity: capacity.max(1), last: 0 };
        Arc::new(ChangeLog { ring: Mutex::new(ring), newest: watch::channel(0).0 })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the event a notice shows as (if any); answers its sequence.
    pub(crate) fn record(&self, n: &Notice) -> Option<u64> {
        let (kind, revision, reason) = describe(&n.kind)?;
        let mut e = Event::keyed(kind, &n.store, &n.key);
        if n.kind == NoticeKind::Resync {
            (e.store, e.key) = (None, None);
        }
        (e.revision, e.reason) = (revision, reason);
        Some(self.push(e))
    }

    /// Appends a notice for `holder`, the client holding `store`/`key` in
    /// the session of `epoch`.
    pub(crate) fn notify_holder(
        &self,
        store: &str,
        key: &str,
        holder: &str,
        api_key: &str,
        epoch: u64,
        notice: HolderNotice,
    ) -> u64 {
        let mut e = match notice {
            HolderNotice::HandoffRequested { by, deadline_ms } => {
                let mut e = Event::keyed("handoff_requested", store, key);
                (e.by, e.deadline_ms) = (Some(by), Some(deadline_ms));
                e
            }
            HolderNotice::Messages => Event::keyed("messages", store, key),
            HolderNotice::SessionEnded { reason, by } => {
                let mut e = Event::keyed("session_ended", store, key);
                (e.reason, e.by) = (Some(reason), by);
                e
            }
        };
        e.holder = Some(holder.to_owned());
        e.api_key = Some(api_key.to_owned());
        e.epoch = Some(epoch);
        self.push(e)
    }

    fn push(&self, mut event: Event) -> u64 {
        let seq = {
            let mut ring = self.ring();
            ring.last += 1;
            let seq = ring.last;
            if ring.events.len() == ring.capacity {
                ring.events.pop_front();
            }
            event.seq = seq;
            ring.events.push_back(event);
            seq
        };
        self.newest.send_replace(seq);
        seq
    }

    /// The newest sequence (0 when nothing happened yet).
    pub(crate) fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// At most `limit` events after `after` that match `filter`.
    pub(crate) fn read(&self, after: u64, filter: Filter<'_>, limit: usize) -> Page {
        let ring = self.ring();
        // A cursor this log never handed out (from before a restart, or
        // from another server): everything it cached may be stale.
        let foreign = after > ring.last;
        let after = if foreign { 0 } else { after };
        let oldest = ring.events.front().map_or(ring.last + 1, |e| e.seq);
        // Events after `after` that the buffer no longer holds.
        let lagged = foreign || after + 1 < oldest;
        let mut events = Vec::new();
        let mut next = after.max(oldest.saturating_sub(1));
        let start = ring.events.partition_point(|e| e.seq <= after);
        for e in ring.events.range(start..) {
            if events.len() == limit {
                break;
            }
            next = e.seq;
            if e.matches(filter) {
                events.push(e.clone());
            }
        }
        Page { events, next, lagged }
    }

    /// Waits until an event after `after` is in the log (or forever).
    pub(crate) async fn wait_after(&self, after: u64) {
        let mut rx = self.newest.subscribe();
        let _ = rx.wait_for(|newest| *newest > after).await;
    }

    /// Reads after `after` (from now without it), waiting up to `wait` for
    /// a matching event; answers early when the server shuts down.
    pub(crate) async fn poll(
        &self,
        filter: Filter<'_>,
        after: Option<u64>,
        wait: std::time::Duration,
        limit: usize,
        mut shutdown: watch::Receiver<bool>,
    ) -> Page {
        let mut after = after.unwrap_or_else(|| self.newest());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let page = self.read(after, filter, limit);
            after = page.next;
            if !page.events.is_empty() || page.lagged || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
                return page;
            }
            if self.newest() > after {
                continue; // a full page of other stores' events: read on
            }
            tokio::select! {
                () = self.wait_after(after) => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
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
        let page = log.read(0, Filter::default(), 10);
        assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!((page.next, page.lagged), (3, false));
        let page = log.read(1, Filter::default(), 1);
        assert_eq!((page.events[0].seq, page.next), (2, 2), "limit");
        assert_eq!(log.read(3, Filter::default(), 10), Page { events: vec![], next: 3, lagged: false });
        // A cursor this log never handed out (another server's, or from
        // before a restart) is told it lagged and reads from the start.
        let page = log.read(99, Filter::default(), 10);
        assert!(page.lagged);
        assert_eq!((page.events.len(), page.next), (3, 3));
    }

    #[test]
    fn a_store_filter_skips_other_stores_but_the_cursor_moves_past_them() {
        let log = ChangeLog::new(8);
        saved(&log, "s", "a", 1);
        saved(&log, "t", "b", 1);
        saved(&log, "t", "c", 1);
        let page = log.read(0, Filter { store: Some("s"), holder: None, api_key: None }, 10);
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.next, 3, "a filtered poll does not see the same events again");
        log.record(&Notice { store: String::new(), key: String::new(), kind: NoticeKind::Resync });
        let page = log.read(3, Filter { store: Some("s"), holder: None, api_key: None }, 10);
        assert_eq!(page.events[0].kind, "resync", "a resync concerns every store");
    }

    #[test]
    fn a_reader_behind_the_buffer_or_across_a_gap_is_told_it_lagged() {
        let log = ChangeLog::new(3);
        for r in 1..=5 {
            saved(&log, "s", "a", r);
        }
        let page = log.read(0, Filter::default(), 10);
        assert!(page.lagged, "events 1 and 2 were dropped");
        assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(!log.read(2, Filter::default(), 10).lagged, "nothing after 2 was dropped");
    }

    #[test]
    fn a_holder_filter_answers_only_that_clients_notices_and_what_concerns_everyone() {
        let log = ChangeLog::new(8);
        saved(&log, "s", "a", 1);
        let ask = |by: &str| HolderNotice::HandoffRequested { by: by.into(), deadline_ms: 7 };
        log.notify_holder("s", "a", "game-1", "k", 3, ask("game-2"));
        log.notify_holder("s", "b", "game-3", "k", 1, ask("game-2"));
        log.notify_holder(
            "s",
            "c",
            "game-1",
            "k",
            9,
            HolderNotice::SessionEnded { reason: "stolen", by: Some("x".into()) },
        );
        log.record(&Notice { store: String::new(), key: String::new(), kind: NoticeKind::Resync });
        let mine = Filter { store: None, holder: Some("game-1"), api_key: None };
        let page = log.read(0, mine, 10);
        let kinds: Vec<_> = page.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["handoff_requested", "session_ended", "resync"]);
        assert_eq!(
            serde_json::to_value(&page.events[0]).unwrap(),
            serde_json::json!({"seq": 2, "kind": "handoff_requested", "store": "s", "key": "a",
                "holder": "game-1", "by": "game-2", "deadline_ms": 7, "epoch": 3})
        );
        assert_eq!((page.events[1].reason, page.events[1].by.as_deref()), (Some("stolen"), Some("x")));
        assert_eq!(page.events[1].epoch, Some(9), "a notice names the session it is about");
        assert_eq!(page.next, 5);
        assert_eq!(
            log.read(0, Filter { store: Some("t"), holder: Some("game-1"), api_key: None }, 10).events.len(),
            1,
            "the resync only"
        );
    }

    #[test]
    fn kinds_are_distinct_and_a_shutdown_release_says_so() {
        let log = ChangeLog::new(8);
        let note = |kind| Notice { store: "s".into(), key: "k".into(), kind };
        log.record(&note(NoticeKind::Released { revision: 4, how: EndKind::Shutdown }));
        log.record(&note(NoticeKind::Deleted));
        let page = log.read(0, Filter::default(), 10);
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
