//! Notices across processes: LISTEN/NOTIFY, owner locks, the heartbeat.
//!
//! Owns: the listener connection (never pooled, never in a transaction:
//! notifications arrive only between transactions, and a pool's driver
//! drops them), the wire format of notices, the notifier that sends this
//! process's notices in as few NOTIFYs as fit, and the session advisory
//! locks that keep two live processes from running under one owner id.
//! Must not: interpret notices (the engine does).
//!
//! Where the server has no LISTEN/NOTIFY (or `poll_notices` is set), the
//! same payloads go into the `notices` table and every listener polls it
//! every 250 ms, reading back over a 2 s overlap and delivering each row
//! once.
//!
//! NOTIFY is lossy: what is sent while a listener is disconnected never
//! reaches it. After every reconnect the listener commits its LISTEN first
//! and then publishes [`NoticeKind::Resync`] locally, so waiters re-read
//! the records they wait on and requesters ask again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::{debug, error, info, warn};

use super::errors::{PgFailure, StartError};
use super::Inner;
use crate::storage::{EndKind, Notice, NoticeBus, NoticeKind, NoticeTransport, StorageError};

/// How often the outbox is polled where LISTEN/NOTIFY is unavailable.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How far back each poll looks again: identity order is not commit order,
/// so a row with a smaller id can commit after a later one was read.
const POLL_OVERLAP_MS: i64 = 2_000;

/// Reads the `notices` outbox: every row newer than the last poll minus an
/// overlap window, each id delivered once.
struct Poller {
    since_ms: i64,
    seen: std::collections::HashMap<i64, i64>,
    polls: u64,
}

impl Poller {
    /// Starts at the database's now: notices from before this process are
    /// not replayed. `None` when the clock cannot be read.
    async fn new(inner: &Inner, client: &Client) -> Option<Poller> {
        let row = client.query_one(&inner.sql.now, &[]).await.ok()?;
        Some(Poller { since_ms: row.try_get(0).ok()?, seen: std::collections::HashMap::new(), polls: 0 })
    }

    async fn poll(&mut self, inner: &Inner, client: &Client, bus: &NoticeBus) -> Result<(), tokio_postgres::Error> {
        let rows = client.query(&inner.sql.outbox_read, &[&(self.since_ms - POLL_OVERLAP_MS)]).await?;
        for row in rows {
            let (id, at_ms, payload): (i64, i64, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            self.since_ms = self.since_ms.max(at_ms);
            if self.seen.insert(id, at_ms).is_some() {
                continue;
            }
            match decode(&payload) {
                Some((origin, _)) if origin == inner.instance => {}
                Some((_, notices)) => notices.into_iter().for_each(|n| bus.deliver_remote(n)),
                None => debug!(target: "datastorer::postgres", "a notice in an unknown format was ignored"),
            }
        }
        let horizon = self.since_ms - 2 * POLL_OVERLAP_MS;
        self.seen.retain(|_, at| *at >= horizon);
        self.polls += 1;
        if self.polls % 240 == 0 {
            client.execute(&inner.sql.outbox_prune, &[]).await?;
        }
        Ok(())
    }
}

/// NOTIFY payloads must stay below 8000 bytes (the server's default limit).
const MAX_PAYLOAD: usize = 7900;
/// How often the listener proves its connection and samples the clock.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    /// ReleaseRequested; `w` is why, when not a plain request (absent
    /// from older builds, which read a restore's request as a plain one).
    Rr {
        s: String,
        k: String,
        h: String,
        q: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        w: Option<String>,
    },
    /// Restored (a build that does not know it drops the payload's
    /// notices; holders there learn of the restore at their next write).
    Res { s: String, k: String },
    /// Erased (likewise).
    Era { s: String, k: String },
    /// Stolen.
    St { s: String, k: String, h: String, b: String },
    /// Released; `w` is how the session ended (absent from older builds).
    Rel {
        s: String,
        k: String,
        r: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        w: Option<String>,
    },
    /// Saved.
    Sav { s: String, k: String, r: u64 },
    /// Deleted.
    Del { s: String, k: String },
}

#[derive(Debug, Deserialize)]
struct Envelope {
    v: u32,
    o: String,
    n: Vec<Wire>,
}

fn to_wire(n: &Notice) -> Option<Wire> {
    let (s, k) = (n.store.clone(), n.key.clone());
    Some(match &n.kind {
        NoticeKind::ReleaseRequested { holder, requester, because } => Wire::Rr {
            s,
            k,
            h: holder.clone(),
            q: requester.clone(),
            w: (*because != EndKind::ReleaseRequested).then(|| because.as_str().to_owned()),
        },
        NoticeKind::Restored => Wire::Res { s, k },
        NoticeKind::Erased => Wire::Era { s, k },
        NoticeKind::Stolen { holder, by } => Wire::St { s, k, h: holder.clone(), b: by.clone() },
        NoticeKind::Released { revision, how } => {
            Wire::Rel { s, k, r: *revision, w: (*how != EndKind::Released).then(|| how.as_str().to_owned()) }
        }
        NoticeKind::Saved { revision } => Wire::Sav { s, k, r: *revision },
        NoticeKind::Deleted => Wire::Del { s, k },
        NoticeKind::Resync => return None,
    })
}

fn from_wire(w: Wire) -> Notice {
    let (store, key, kind) = match w {
        Wire::Rr { s, k, h, q, w } => (
            s,
            k,
            NoticeKind::ReleaseRequested {
                holder: h,
                requester: q,
                because: w.as_deref().map_or(EndKind::ReleaseRequested, EndKind::from_name),
            },
        ),
        Wire::Res { s, k } => (s, k, NoticeKind::Restored),
        Wire::Era { s, k } => (s, k, NoticeKind::Erased),
        Wire::St { s, k, h, b } => (s, k, NoticeKind::Stolen { holder: h, by: b }),
        Wire::Rel { s, k, r, w } => (
            s,
            k,
            NoticeKind::Released { revision: r, how: w.as_deref().map_or(EndKind::Released, EndKind::from_name) },
        ),
        Wire::Sav { s, k, r } => (s, k, NoticeKind::Saved { revision: r }),
        Wire::Del { s, k } => (s, k, NoticeKind::Deleted),
    };
    Notice { store, key, kind }
}

/// Packs notices into payloads of at most [`MAX_PAYLOAD`] bytes each.
fn encode(instance: &str, notices: &[Notice]) -> Vec<String> {
    let head = format!("{{\"v\":1,\"o\":{},\"n\":[", serde_json::Value::String(instance.to_owned()));
    let mut payloads = Vec::new();
    let mut current = head.clone();
    for n in notices {
        let Some(w) = to_wire(n) else { continue };
        let Ok(entry) = serde_json::to_string(&w) else { continue };
        let fresh = current.len() == head.len();
        if !fresh && current.len() + 1 + entry.len() + 2 > MAX_PAYLOAD {
            current.push_str("]}");
            payloads.push(std::mem::replace(&mut current, head.clone()));
        }
        if current.len() > head.len() {
            current.push(',');
        }
        current.push_str(&entry);
    }
    if current.len() > head.len() {
        current.push_str("]}");
        payloads.push(current);
    }
    payloads
}

fn decode(payload: &str) -> Option<(String, Vec<Notice>)> {
    let env: Envelope = serde_json::from_str(payload).ok()?;
    if env.v != 1 {
        return None;
    }
    Some((env.o, env.n.into_iter().map(from_wire).collect()))
}

/// The bus's way out of this process.
pub(super) struct Transport {
    tx: mpsc::UnboundedSender<Notice>,
    saves: bool,
    /// Notices handed over and not yet sent (or dropped).
    unsent: Arc<std::sync::atomic::AtomicUsize>,
}

/// Notices waiting for the notifier.
pub(super) type Outbox = mpsc::UnboundedReceiver<Notice>;

impl Transport {
    /// `saves`: whether `Saved` notices leave the process (the others
    /// always do: hand-offs and steals depend on them).
    pub(super) fn new(saves: bool, unsent: Arc<std::sync::atomic::AtomicUsize>) -> (Transport, Outbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Transport { tx, saves, unsent }, rx)
    }
}

impl NoticeTransport for Transport {
    fn send(&self, notice: &Notice) {
        match notice.kind {
            NoticeKind::Resync => {}
            NoticeKind::Saved { .. } if !self.saves => {}
            _ => {
                self.unsent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if self.tx.send(notice.clone()).is_err() {
                    self.unsent.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }
}

/// What the listener and owner claims share.
#[derive(Default)]
pub(crate) struct ListenState {
    client: Option<Arc<Client>>,
    owners: Vec<String>,
}

fn lock_key(inner: &Inner, owner: &str) -> String {
    format!("datastorer:{}:owner:{owner}", inner.cfg.schema)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Takes the owner's advisory lock on the listener's session and records
/// the owner; refused when another live session holds it.
async fn take_owner(inner: &Inner, client: &Client, owner: &str) -> Result<bool, PgFailure> {
    let row =
        client.query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&lock_key(inner, owner)]).await?;
    let taken: bool = row.try_get(0)?;
    if taken {
        let pid = std::process::id() as i32;
        client
            .execute(
                &format!(
                    "INSERT INTO \"{}\".owners (owner_id, host, pid, advertise_url) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (owner_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                       advertise_url = EXCLUDED.advertise_url, started_at = now(), heartbeat_at = now()",
                    inner.cfg.schema
                ),
                &[&owner, &hostname(), &pid, &inner.cfg.advertise_url],
            )
            .await?;
    }
    Ok(taken)
}

/// [`crate::storage::Backend::claim_owner`] on PostgreSQL.
pub(super) async fn claim(inner: Arc<Inner>, owner: String) -> Result<(), StorageError> {
    let mut state = inner.listen.lock().await;
    let Some(client) = state.client.clone() else {
        return Err(StorageError::transient("the PostgreSQL listener is reconnecting; try again"));
    };
    match take_owner(&inner, &client, &owner).await {
        Ok(true) => {
            state.owners.push(owner);
            Ok(())
        }
        Ok(false) => Err(StorageError::permanent(format!(
            "owner id {owner:?} is in use by a live process on PostgreSQL at {} (schema {}): \
             give every process its own owner id",
            inner.target, inner.cfg.schema
        ))),
        Err(f) => Err(f.error),
    }
}

/// Starts the notifier and the listener; the receiver answers once the
/// first LISTEN is committed (or why it could not be).
pub(super) fn start(
    runtime: &tokio::runtime::Handle,
    inner: Arc<Inner>,
    bus: NoticeBus,
    outbox: Outbox,
) -> std::sync::mpsc::Receiver<Result<(), StartError>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(notifier(inner.clone(), outbox));
    runtime.spawn(listen_forever(inner, bus, ready_tx));
    ready_rx
}

/// Sends this process's notices: everything queued at once goes out in as
/// few NOTIFYs as fit, each its own tiny autocommit transaction (a NOTIFY
/// takes a cluster-wide lock at commit, so fewer is cheaper for everyone).
async fn notifier(inner: Arc<Inner>, mut outbox: Outbox) {
    let mut pending = Vec::new();
    while let Some(first) = outbox.recv().await {
        pending.push(first);
        while pending.len() < 4096 {
            match outbox.try_recv() {
                Ok(n) => pending.push(n),
                Err(_) => break,
            }
        }
        let payloads = encode(&inner.instance, &pending);
        match inner.reader().await {
            Ok(conn) => {
                let polling = inner.polling.load(Ordering::SeqCst);
                for p in payloads {
                    let sent = if polling {
                        conn.client.execute(&inner.sql.outbox_write, &[&p]).await
                    } else {
                        conn.client.execute(&inner.sql.notify, &[&inner.sql.channel, &p]).await
                    };
                    if let Err(e) = sent {
                        debug!(target: "datastorer::postgres", error = %e, "a notice was dropped");
                    }
                }
            }
            Err(f) => {
                debug!(target: "datastorer::postgres", error = %f.error.message, "notices dropped: no connection")
            }
        }
        inner.unsent_notices.fetch_sub(pending.len(), std::sync::atomic::Ordering::SeqCst);
        pending.clear();
    }
}

async fn listen_forever(inner: Arc<Inner>, bus: NoticeBus, ready: std::sync::mpsc::SyncSender<Result<(), StartError>>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&inner, &bus, &mut ready).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
            }
        }
        inner.listen.lock().await.client = None;
        // Whatever was sent meanwhile is lost: everyone who waits re-reads.
        bus.deliver_remote(Notice { store: String::new(), key: String::new(), kind: NoticeKind::Resync });
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One listener connection, from connect to loss. `Err` only for failures
/// before the first successful LISTEN of the backend's life.
async fn listen_once(
    inner: &Arc<Inner>,
    bus: &NoticeBus,
    ready: &mut Option<std::sync::mpsc::SyncSender<Result<(), StartError>>>,
) -> Result<(), StartError> {
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let (client, driver) = match inner.connect_raw("listen", Some(notes_tx)).await {
        Ok(c) => c,
        Err(e) => {
            warn!(target: "datastorer::postgres", error = %e, "listener cannot connect");
            return if ready.is_some() { Err(StartError::Connect(e.to_string())) } else { Ok(()) };
        }
    };
    let client = Arc::new(client);
    // LISTEN is committed (autocommit) before anything is re-read. An
    // engine without LISTEN/NOTIFY (CockroachDB answers 0A000) gets the
    // polled outbox instead.
    if !inner.polling.load(Ordering::SeqCst) {
        if let Err(e) = client.batch_execute(&format!("LISTEN \"{}\"", inner.sql.channel)).await {
            if e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) {
                warn!(target: "datastorer::postgres", "this server has no LISTEN/NOTIFY: polling the notices table instead");
                inner.polling.store(true, Ordering::SeqCst);
            } else {
                driver.abort();
                warn!(target: "datastorer::postgres", error = %e, "LISTEN failed");
                return if ready.is_some() { Err(StartError::Query(e.into())) } else { Ok(()) };
            }
        }
    }
    let mut poller = Poller::new(inner, &client).await;
    {
        let mut state = inner.listen.lock().await;
        for owner in state.owners.clone() {
            match take_owner(inner, &client, &owner).await {
                Ok(true) => {}
                Ok(false) => error!(target: "datastorer::postgres", owner = %owner,
                    "another process took this owner id while the listener was disconnected: \
                     two processes now run under one owner id"),
                Err(f) => warn!(target: "datastorer::postgres", owner = %owner, error = %f.error.message,
                    "cannot re-take the owner lock"),
            }
        }
        state.client = Some(client.clone());
    }
    match ready.take() {
        Some(r) => {
            let _ = r.send(Ok(()));
        }
        None => {
            info!(target: "datastorer::postgres", "listener reconnected");
            bus.deliver_remote(Notice { store: String::new(), key: String::new(), kind: NoticeKind::Resync });
        }
    }
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick(), if inner.polling.load(Ordering::SeqCst) => {
                match poller.as_mut() {
                    Some(p) => {
                        if let Err(e) = p.poll(inner, &client, bus).await {
                            warn!(target: "datastorer::postgres", error = %e, "polling notices failed; reconnecting");
                            break;
                        }
                    }
                    None => break,
                }
            }
            n = notes.recv() => match n {
                Some(n) => {
                    if n.channel() != inner.sql.channel {
                        continue;
                    }
                    match decode(n.payload()) {
                        Some((origin, _)) if origin == inner.instance => {}
                        Some((_, notices)) => notices.into_iter().for_each(|n| bus.deliver_remote(n)),
                        None => debug!(target: "datastorer::postgres", "a notice in an unknown format was ignored"),
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !heartbeat(inner, &client).await {
                    break;
                }
            }
        }
    }
    driver.abort();
    Ok(())
}

/// Samples the clock and refreshes the owners' heartbeat; `false` when the
/// connection is dead.
async fn heartbeat(inner: &Inner, client: &Client) -> bool {
    let sent = Instant::now();
    let beat = async {
        let row = client.query_one(&inner.sql.now, &[]).await?;
        let db_ms: i64 = row.try_get(0)?;
        inner.clock.sample(sent, db_ms, Instant::now());
        let owners = inner.listen.lock().await.owners.clone();
        if !owners.is_empty() {
            client
                .execute(
                    &format!(
                        "UPDATE \"{}\".owners SET heartbeat_at = now() WHERE owner_id = ANY($1)",
                        inner.cfg.schema
                    ),
                    &[&owners],
                )
                .await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    match tokio::time::timeout(HEARTBEAT * 2, beat).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            warn!(target: "datastorer::postgres", error = %e, "listener heartbeat failed; reconnecting");
            false
        }
        Err(_) => {
            warn!(target: "datastorer::postgres", "listener heartbeat timed out; reconnecting");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(kind: NoticeKind) -> Notice {
        Notice { store: "s".into(), key: "k".into(), kind }
    }

    #[test]
    fn notices_survive_the_wire() {
        let all = vec![
            n(NoticeKind::ReleaseRequested {
                holder: "a".into(),
                requester: "b".into(),
                because: EndKind::ReleaseRequested,
            }),
            n(NoticeKind::ReleaseRequested { holder: "a".into(), requester: "b".into(), because: EndKind::Restored }),
            n(NoticeKind::Restored),
            n(NoticeKind::Erased),
            n(NoticeKind::Stolen { holder: "a".into(), by: "b".into() }),
            n(NoticeKind::Released { revision: 7, how: EndKind::Released }),
            n(NoticeKind::Released { revision: 8, how: EndKind::Stolen }),
            n(NoticeKind::Saved { revision: u64::MAX }),
            n(NoticeKind::Deleted),
            n(NoticeKind::Resync),
        ];
        let payloads = encode("me", &all);
        assert_eq!(payloads.len(), 1);
        let (origin, back) = decode(&payloads[0]).unwrap();
        assert_eq!(origin, "me");
        assert_eq!(back, all[..all.len() - 1].to_vec(), "Resync never leaves the process");
    }

    #[test]
    fn payloads_stay_under_the_notify_limit_with_worst_case_keys() {
        // 512-byte keys made of characters JSON must escape.
        let key: String = "\"\\".repeat(256);
        let many: Vec<Notice> = (0..100)
            .map(|r| Notice { store: "s".into(), key: key.clone(), kind: NoticeKind::Saved { revision: r } })
            .collect();
        let payloads = encode("me", &many);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
            back.extend(decode(p).unwrap().1);
        }
        assert_eq!(back, many, "nothing lost or reordered across chunks");
    }

    #[test]
    fn unknown_payloads_are_ignored() {
        assert!(decode("not json").is_none());
        assert!(decode(r#"{"v":2,"o":"x","n":[]}"#).is_none());
    }
}
