//! One checker for every write path of the engine: random histories over
//! three nodes, three keys and one fault-injecting memory backend (5 % of
//! writes fail transiently) that mix
//!
//! - sessions: opens with every policy (`Fail`, `Steal`, `Wait`,
//!   `RequestRelease`), updates, saves, releases, closes, lease checks;
//! - one-shot writes (`update_unleased`) under each condition (`Anything`,
//!   `Absent`, `Version` of what was just read);
//! - deletes, plain, conditional and forced;
//! - messages: posts and their acknowledgements;
//! - lapsed leases, clock jumps, node crashes and restarts;
//! - idle keys hibernating and waking (every other history, its nodes put
//!   a key to sleep after one idle autosave tick);
//! - a way back: restores of a key to one of its versions, restores of the
//!   whole store to an earlier time, erasures of a user id some sessions
//!   carry, bulk migrations;
//! - and races: two of the above fired at once on one key (two opens, an
//!   open and a one-shot, two create-only one-shots, a delete and a
//!   one-shot, a post and a delete).
//!
//! Each history is then checked against the backend's record of applied
//! writes and against every acknowledgement the calls gave:
//!
//! 1. per key, epochs never go down (not across a delete either), one epoch
//!    has one owner, and no header is written twice;
//! 2. every acknowledged write (a session's save or release, a one-shot) was
//!    applied at the epoch and revision it named with exactly its document,
//!    and a one-shot's condition held: create-only found no record, a
//!    version condition found that version;
//! 3. nothing acknowledged is lost: every later write of the key carries
//!    every change of every acknowledged write before it, until a delete
//!    or a restore (a restore is the one write that may go back: it lands
//!    under a new epoch with no lease, and starts the count again from
//!    what it restored); and nothing deleted comes back but through a
//!    restore: no other write after an applied delete carries a change
//!    written before it;
//! 4. no session wrote after it ended, a session told its lease was lost
//!    (or stolen, or deleted) was really overtaken in storage, and an
//!    update is refused only to a session that ended or whose lease lapsed
//!    without a renewal reaching storage (refused by design);
//! 5. every acknowledged message waits in the inbox until acknowledged or
//!    deleted, and no message appears that was never posted.
//!
//! Sizes: `DATASTORER_CHECK_HISTORIES` (default 4), steps per history
//! `DATASTORER_CHECK_STEPS` (default 300), first seed `DATASTORER_CHECK_SEED`.
//! Seeds are printed; a failure names its seed.

use crate::common::{env_or, Rng};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use datastorer::storage::{split_storage_key, Record, RecordHeader};
use datastorer::testing::{Cluster, ErrorKind, OpKind};
use datastorer::{AcquirePolicy, CloseReason, Error, Expect, Priority, Session, Store, StoreSpec};
use serde_json::{json, Value};

const NODES: usize = 3;
const KEYS: [&str; 3] = ["a", "b", "c"];
const STORE: &str = "s";

struct Held {
    session: Session<Value>,
    epoch: u64,
}

/// An acknowledged write: what the caller was told is durable.
struct Ack {
    key: String,
    epoch: u64,
    revision: u64,
    doc: Value,
    path: &'static str,
    /// A one-shot's condition.
    expected: Option<Expect>,
}

struct Ended {
    node: usize,
    key: String,
    epoch: u64,
    history_len: usize,
    reason: CloseReason,
}

/// What one key's inbox must hold: messages acknowledged as posted (by
/// their body number, with the id they were given) and messages that may
/// or may not be there (a post or a delete whose outcome is unknown, or
/// two that raced).
#[derive(Default)]
struct InboxModel {
    required: HashMap<u64, u64>,
    maybe: HashSet<u64>,
}

impl InboxModel {
    fn posted(&mut self, n: u64, outcome: &Result<u64, Error>) {
        match outcome {
            Ok(id) => {
                self.required.insert(n, *id);
            }
            Err(_) => {
                self.maybe.insert(n);
            }
        }
    }

    fn acknowledged(&mut self, up_to: u64, ok: bool) {
        let gone: Vec<u64> = self.required.iter().filter(|(_, id)| **id <= up_to).map(|(n, _)| *n).collect();
        for n in gone {
            self.required.remove(&n);
            if !ok {
                self.maybe.insert(n);
            }
        }
    }

    fn deleted(&mut self, ok: bool) {
        if ok {
            self.required.clear();
            self.maybe.clear();
        } else {
            self.maybe.extend(self.required.drain().map(|(n, _)| n));
        }
    }
}

/// Everything one history observed.
#[derive(Default)]
struct Observed {
    held: HashMap<(usize, &'static str), Held>,
    acks: Vec<Ack>,
    ended: Vec<Ended>,
    /// Acknowledged deletes: key and the history length when it was asked.
    deletes: Vec<(String, usize)>,
    inboxes: HashMap<&'static str, InboxModel>,
    /// Updates refused to a session that stayed open.
    refused: Vec<String>,
    /// Sessions that refused an update as closed while still closing.
    closing: Vec<Session<Value>>,
    next_op: u64,
    next_message: u64,
}

/// Whether `DATASTORER_CHECK_TRACE` asks for a history's story.
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("DATASTORER_CHECK_TRACE").is_some())
}

fn spec() -> StoreSpec<Value> {
    StoreSpec::new(json!({"ops": []}))
}

fn push_op(d: &mut Value, op: u64) {
    if let Some(ops) = d["ops"].as_array_mut() {
        ops.push(json!(op));
    }
}

fn ops_of(doc: &Value) -> BTreeSet<u64> {
    doc["ops"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

impl Observed {
    fn op(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }
}

/// Keeps `opened` as node `node`'s session of `key`, with its epoch.
async fn hold(obs: &mut Observed, node: usize, key: &'static str, opened: Result<Session<Value>, Error>) {
    if let Ok(session) = opened {
        if let Ok(lease) = session.lease().await {
            if tracing() {
                eprintln!("node {node} holds {key}@{}", lease.epoch);
            }
            obs.held.insert((node, key), Held { session, epoch: lease.epoch });
        }
    }
}

fn random_policy(rng: &mut Rng, wait: Duration) -> AcquirePolicy {
    match rng.below(4) {
        0 => AcquirePolicy::Fail,
        1 => AcquirePolicy::Steal,
        2 => AcquirePolicy::Wait { timeout: wait },
        _ => AcquirePolicy::RequestRelease { timeout: wait },
    }
}

/// A condition for a one-shot write or a delete, as a client would send it:
/// nothing, create-only, or the version it just read.
async fn random_expect(rng: &mut Rng, store: &Store<Value>, key: &str, absent_allowed: bool) -> Expect {
    match rng.below(3) {
        0 => Expect::Anything,
        1 if absent_allowed => Expect::Absent,
        _ => match store.inspect(key).await {
            Ok(Some(r)) => Expect::Version(r.header),
            _ if absent_allowed => Expect::Absent,
            _ => Expect::Anything,
        },
    }
}

async fn one_shot(obs: &mut Observed, store: &Store<Value>, key: &'static str, expected: Expect) {
    let op = obs.op();
    let r = store
        .update_unleased(key, expected, move |d: &mut Value| {
            push_op(d, op);
            d.clone()
        })
        .await;
    record_one_shot(obs, key, expected, r);
}

fn record_one_shot(
    obs: &mut Observed,
    key: &'static str,
    expected: Expect,
    r: Result<datastorer::Updated<Value>, Error>,
) {
    if let Ok(u) = r {
        obs.acks.push(Ack {
            key: key.to_owned(),
            epoch: u.epoch,
            revision: u.revision,
            doc: u.value,
            path: "one-shot",
            expected: Some(expected),
        });
    }
}

fn record_delete(obs: &mut Observed, key: &'static str, asked_at: usize, r: &Result<bool, Error>) {
    match r {
        Ok(deleted) => {
            if *deleted {
                obs.deletes.push((key.to_owned(), asked_at));
            }
            // The inbox goes with the key even when no record was stored.
            obs.inboxes.entry(key).or_default().deleted(true);
        }
        // Refused before anything was touched.
        Err(Error::PreconditionFailed { .. } | Error::LeaseHeld { .. }) => {}
        Err(_) => obs.inboxes.entry(key).or_default().deleted(false),
    }
}

async fn run_history(
    seed: u64,
    steps: u64,
) -> (usize, usize, u64, std::sync::Weak<datastorer::storage::memory::MemoryBackend>) {
    let mut rng = Rng(seed | 1);
    let mut cluster = Cluster::start_with(NODES, |_, c| {
        if seed % 2 == 0 {
            c.hibernate_after = Some(Duration::ZERO);
        }
    })
    .await;
    // Wake-ups of nodes that crashed since, added to the live nodes' count at the end.
    let mut woken = 0;
    cluster.backend().record_history(true);
    cluster.backend().fail_fraction(OpKind::Write, 0.05, ErrorKind::Transient, seed);
    let mut obs = Observed::default();

    for _ in 0..steps {
        let node = rng.below(NODES as u64) as usize;
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let store = cluster.node(node).store(STORE, spec()).unwrap();
        let history_len = cluster.backend().history().len();
        let step = rng.below(110);
        if tracing() {
            eprintln!("at {history_len}: node {node} {key} step {step}");
        }
        match step {
            0..=13 => {
                let policy = random_policy(&mut rng, Duration::from_secs(2));
                hold(&mut obs, node, key, store.open(key).policy(policy).await).await;
            }
            14..=31 => {
                if let Some(h) = obs.held.get(&(node, key)) {
                    let op = {
                        obs.next_op += 1;
                        obs.next_op
                    };
                    let r = h.session.update(move |d| push_op(d, op)).await;
                    // A lease that lapsed unrenewed (the clock jumps here by
                    // up to a minute at once) refuses changes by design; a
                    // session being handed over refuses them as closed, and
                    // must then end (checked once the history is over).
                    match r {
                        Ok(()) | Err(Error::LeaseExpired { .. }) => {}
                        Err(_) if h.session.close_reason().is_some() => {}
                        Err(Error::SessionClosed { .. }) => obs.closing.push(h.session.clone()),
                        Err(e) => obs.refused.push(format!("update of {key} on node {node}: {e}")),
                    }
                }
            }
            32..=48 => {
                // Saves more often than releases, which end the session.
                let release = rng.below(17) >= 12;
                if let Some(h) = obs.held.get(&(node, key)) {
                    let doc = h.session.get().await;
                    let outcome = if release {
                        h.session.release(Priority::Normal).await
                    } else {
                        h.session.save(Priority::Normal).await
                    };
                    if let (Ok(doc), Ok(outcome)) = (doc, outcome) {
                        let path = if release { "release" } else { "save" };
                        let (epoch, revision) = (h.epoch, outcome.revision);
                        obs.acks.push(Ack { key: key.to_owned(), epoch, revision, doc, path, expected: None });
                    }
                }
            }
            49..=50 => {
                if let Some(h) = obs.held.get(&(node, key)) {
                    let _ = h.session.close().await;
                }
            }
            51 => {
                // A check against storage (as a client's resume asks) may
                // end a session only when another writer really took or
                // deleted its key (check 4 holds it to that).
                if let Some(h) = obs.held.get(&(node, key)) {
                    let _ = h.session.check_lease().await;
                }
            }
            52..=61 => {
                let expected = random_expect(&mut rng, &store, key, true).await;
                one_shot(&mut obs, &store, key, expected).await;
            }
            62..=65 => {
                let expected = random_expect(&mut rng, &store, key, false).await;
                let force = rng.below(3) == 0;
                let r = store.delete_if(key, expected, force).await;
                if tracing() {
                    eprintln!("at {history_len}: node {node} delete {key} {expected:?} force={force}: {r:?}");
                }
                record_delete(&mut obs, key, history_len, &r);
            }
            66..=70 => {
                obs.next_message += 1;
                let n = obs.next_message;
                let r = store.post_message(key, json!({ "n": n })).await;
                if tracing() {
                    eprintln!("at {history_len}: node {node} post {n} to {key}: {r:?}");
                }
                obs.inboxes.entry(key).or_default().posted(n, &r);
            }
            71..=73 => {
                if let Ok(waiting) = store.messages(key).await {
                    if !waiting.is_empty() {
                        let up_to = waiting[rng.below(waiting.len() as u64) as usize].id;
                        let ok = store.ack_messages(key, up_to).await.is_ok();
                        if tracing() {
                            eprintln!("at {history_len}: node {node} ack {key} up to {up_to}: {ok}");
                        }
                        obs.inboxes.entry(key).or_default().acknowledged(up_to, ok);
                    }
                }
            }
            74..=78 => {
                // A holder goes silent long enough for its lease to lapse.
                cluster.expire_lease(STORE, key);
            }
            79..=85 => cluster.advance(Duration::from_secs(rng.below(60))).await,
            86..=95 => race(&mut rng, &mut obs, &cluster, node, key, history_len).await,
            96..=99 => {
                if rng.below(2) == 0 {
                    woken += cluster.node(node).hibernation().woken;
                    cluster.crash(node).await;
                    cluster.restart(node).await;
                }
            }
            100..=103 => restore_a_version(&mut rng, &mut obs, &store, key).await,
            104 => {
                // The whole store back to a moment of the last few minutes.
                let at = cluster.node(node).now_ms().saturating_sub(rng.below(300_000));
                let r = store.restore_to(at, rng.below(3) == 0, Duration::from_millis(500)).await;
                if tracing() {
                    eprintln!(
                        "at {history_len}: node {node} store restore to {at}: {:?}",
                        r.as_ref().map(|r| (r.restored, r.deleted))
                    );
                }
                // Keys it deleted took their inboxes with them.
                for k in KEYS {
                    obs.inboxes.entry(k).or_default().deleted(false);
                }
            }
            105..=106 => {
                let r = cluster.node(node).erase_user("u1", Duration::from_millis(500)).await;
                if tracing() {
                    eprintln!("at {history_len}: node {node} erase u1: {:?}", r.as_ref().map(|r| r.keys));
                }
                for k in KEYS {
                    obs.inboxes.entry(k).or_default().deleted(false);
                }
            }
            107 => {
                let r = store.migrate_all().await;
                if let Ok(report) = r {
                    assert_eq!(report.failed, 0, "seed {seed}: a bulk migration failed: {:?}", report.failures);
                }
            }
            _ => {
                // Sessions that carry a user id, for the erasures to find.
                let policy = random_policy(&mut rng, Duration::from_secs(2));
                hold(&mut obs, node, key, store.open(key).user_ids(["u1"]).policy(policy).await).await;
            }
        }
        // Sessions that ended since the last step: remember where the history stood.
        let history_len = cluster.backend().history().len();
        let ended = &mut obs.ended;
        obs.held.retain(|(n, k), h| match h.session.close_reason() {
            Some(reason) => {
                if tracing() {
                    eprintln!("at {history_len}: node {n} {k}@{} ended: {reason:?}", h.epoch);
                }
                ended.push(Ended { node: *n, key: (*k).to_owned(), epoch: h.epoch, history_len, reason });
                false
            }
            None => true,
        });
    }
    cluster.drain().await;
    for s in &obs.closing {
        if s.close_reason().is_none() {
            obs.refused.push(format!("update of {} refused as closed, but the session never ended", s.key()));
        }
    }
    check(&cluster, &obs, seed);
    woken += (0..NODES).map(|n| cluster.node(n).hibernation().woken).sum::<u64>();
    (obs.acks.len(), cluster.backend().history().len(), woken, std::sync::Arc::downgrade(cluster.backend()))
}

/// Restores `key` to one of its versions, chosen at random; an
/// acknowledged restore is an acknowledged write of what it restored.
async fn restore_a_version(rng: &mut Rng, obs: &mut Observed, store: &Store<Value>, key: &'static str) {
    let Ok(page) = store.versions(key, &datastorer::VersionQuery::default()).await else { return };
    let live: Vec<_> = page.versions.iter().filter(|v| !v.deleted).collect();
    if live.is_empty() {
        return;
    }
    let target = live[rng.below(live.len() as u64) as usize].id();
    let Ok(version) = store.version(key, target).await else { return };
    let r = store.restore(key, datastorer::RestoreTarget::Version(target), &[], Duration::from_millis(500)).await;
    if tracing() {
        eprintln!("restore {key} to {target:?}: {r:?}");
    }
    if let (Ok(restored), Some(doc)) = (r, version.data) {
        if let Some(id) = restored.version.as_deref().and_then(datastorer::parse_version_id) {
            obs.acks.push(Ack {
                key: key.to_owned(),
                epoch: id.epoch,
                revision: id.revision,
                doc,
                path: "restore",
                expected: None,
            });
        }
    }
}

/// Two requests on one key fired at once, from two nodes (or one).
async fn race(rng: &mut Rng, obs: &mut Observed, cluster: &Cluster, node: usize, key: &'static str, at: usize) {
    let other = (node + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
    // An open and a one-shot may come from the same node as well.
    let same_node = rng.below(4) == 0;
    let store = cluster.node(node).store(STORE, spec()).unwrap();
    let other_store = cluster.node(if same_node { node } else { other }).store(STORE, spec()).unwrap();
    let wait = Duration::from_millis(500);
    match rng.below(5) {
        0 => {
            // Both read the same record and compute the same new header.
            let (pa, pb) = (random_policy(rng, wait), random_policy(rng, wait));
            let other_store = cluster.node(other).store(STORE, spec()).unwrap();
            let (ra, rb) = tokio::join!(store.open(key).policy(pa), other_store.open(key).policy(pb));
            hold(obs, node, key, ra).await;
            hold(obs, other, key, rb).await;
        }
        1 => {
            let policy = random_policy(rng, wait);
            let expected = if rng.below(2) == 0 { Expect::Anything } else { Expect::Absent };
            let op = obs.op();
            let write = other_store.update_unleased(key, expected, move |d: &mut Value| {
                push_op(d, op);
                d.clone()
            });
            let (opened, written) = tokio::join!(store.open(key).policy(policy), write);
            hold(obs, node, key, opened).await;
            record_one_shot(obs, key, expected, written);
        }
        2 => {
            let other_store = cluster.node(other).store(STORE, spec()).unwrap();
            let (a, b) = (obs.op(), obs.op());
            let first = store.update_unleased(key, Expect::Absent, move |d: &mut Value| {
                push_op(d, a);
                d.clone()
            });
            let second = other_store.update_unleased(key, Expect::Absent, move |d: &mut Value| {
                push_op(d, b);
                d.clone()
            });
            let (ra, rb) = tokio::join!(first, second);
            record_one_shot(obs, key, Expect::Absent, ra);
            record_one_shot(obs, key, Expect::Absent, rb);
        }
        3 => {
            let force = rng.below(2) == 0;
            let op = obs.op();
            let write = other_store.update_unleased(key, Expect::Anything, move |d: &mut Value| {
                push_op(d, op);
                d.clone()
            });
            let (deleted, written) = tokio::join!(store.delete_if(key, Expect::Anything, force), write);
            if tracing() {
                eprintln!(
                    "at {at}: node {node} delete {key} force={force} racing a one-shot: {deleted:?} / {:?}",
                    written.as_ref().map(|u| (u.epoch, u.revision))
                );
            }
            record_delete(obs, key, at, &deleted);
            record_one_shot(obs, key, Expect::Anything, written);
        }
        _ => {
            obs.next_message += 1;
            let n = obs.next_message;
            let (deleted, posted) = tokio::join!(
                store.delete_if(key, Expect::Anything, true),
                other_store.post_message(key, json!({ "n": n }))
            );
            if tracing() {
                eprintln!("at {at}: node {node} delete {key} racing a post: {deleted:?} / {posted:?}");
            }
            record_delete(obs, key, at, &deleted);
            // Either order is right: the post lands before the delete (and
            // goes with it) or after (and waits); a failed post may have landed.
            let _ = posted;
            obs.inboxes.entry(key).or_default().maybe.insert(n);
        }
    }
}

/// One applied write of `STORE`, decoded.
struct Applied {
    index: usize,
    key: String,
    record: Option<Record>,
    ops: BTreeSet<u64>,
}

fn check(cluster: &Cluster, obs: &Observed, seed: u64) {
    let history = cluster.backend().history();
    let applied: Vec<Applied> = history
        .iter()
        .enumerate()
        .filter_map(|(index, w)| {
            let (store, key) = split_storage_key(&w.key)?;
            if store != STORE {
                return None;
            }
            let record = w.value.as_ref().map(|bytes| {
                Record::decode(bytes).unwrap_or_else(|e| panic!("seed {seed}: write {index} undecodable: {e}"))
            });
            let ops = record
                .as_ref()
                .map(|r| ops_of(&serde_json::from_slice(&r.data).expect("stored JSON")))
                .unwrap_or_default();
            Some(Applied { index, key, record, ops })
        })
        .collect();

    if tracing() {
        for (i, w) in history.iter().enumerate() {
            if let Some((store, key)) = split_storage_key(&w.key).filter(|(s, _)| s.ends_with(":inbox")) {
                let doc = w.value.as_ref().and_then(|b| Record::decode(b).ok()).map(|r| {
                    let v: Value = serde_json::from_slice(&r.data).unwrap_or_default();
                    (r.header.epoch, r.header.revision, v)
                });
                eprintln!("{i:>4} {store}/{key} {doc:?}");
            }
        }
        for w in &applied {
            let r = w.record.as_ref();
            eprintln!(
                "{:>4} {} {:?} owner={:?} ops={:?}",
                w.index,
                w.key,
                r.map(|r| (r.header.epoch, r.header.revision)),
                r.and_then(|r| r.lease.as_ref()).map(|l| (&l.owner, l.expires_at_ms)),
                w.ops
            );
        }
    }

    // 1. Epochs, owners, headers.
    let mut owner_of: HashMap<(String, u64), String> = HashMap::new();
    let mut last_epoch: HashMap<String, u64> = HashMap::new();
    let mut written: HashMap<(String, u64, u64), &Applied> = HashMap::new();
    for w in &applied {
        let Some(rec) = &w.record else { continue };
        let (key, epoch) = (w.key.clone(), rec.header.epoch);
        let prev = last_epoch.insert(key.clone(), epoch).unwrap_or(0);
        assert!(epoch >= prev, "seed {seed}: {key}: epoch went from {prev} down to {epoch} at write {}", w.index);
        if let Some(o) = rec.lease.as_ref().map(|l| l.owner.clone()) {
            let first = owner_of.entry((key.clone(), epoch)).or_insert_with(|| o.clone());
            assert_eq!(first, &o, "seed {seed}: {key}: epoch {epoch} written by two owners");
        }
        let header = (key.clone(), epoch, rec.header.revision);
        assert!(written.insert(header.clone(), w).is_none(), "seed {seed}: header {header:?} written twice");
    }

    // 2. Every acknowledged write applied as acknowledged, its condition held.
    let previous_of = |target: &Applied| -> Option<&Applied> {
        applied.iter().rev().find(|w| w.index < target.index && w.key == target.key)
    };
    let mut acked_at: HashSet<usize> = HashSet::new();
    for a in &obs.acks {
        let w = written.get(&(a.key.clone(), a.epoch, a.revision)).unwrap_or_else(|| {
            panic!("seed {seed}: acknowledged {} {}@{}/{} never applied", a.path, a.key, a.epoch, a.revision)
        });
        let doc: Value = serde_json::from_slice(&w.record.as_ref().expect("a write").data).expect("JSON");
        assert_eq!(
            doc, a.doc,
            "seed {seed}: acknowledged {} {}@{}/{} has other data",
            a.path, a.key, a.epoch, a.revision
        );
        acked_at.insert(w.index);
        // The condition is about the record the one-shot's acquire found:
        // the write before the first one of its epoch.
        if let Some(expected) = a.expected {
            let acquire = applied
                .iter()
                .find(|x| x.key == a.key && x.record.as_ref().is_some_and(|r| r.header.epoch == a.epoch))
                .expect("the acquire is in the history");
            let found: Option<RecordHeader> = previous_of(acquire).and_then(|p| p.record.as_ref()).map(|r| r.header);
            match expected {
                Expect::Absent => assert!(
                    found.is_none(),
                    "seed {seed}: create-only one-shot {}@{} acknowledged over an existing record {found:?}",
                    a.key,
                    a.epoch
                ),
                Expect::Version(want) => assert_eq!(
                    found,
                    Some(want),
                    "seed {seed}: one-shot {}@{} on version {want:?} acknowledged over another",
                    a.key,
                    a.epoch
                ),
                Expect::Anything => {}
            }
        }
    }
    for (key, asked_at) in &obs.deletes {
        assert!(
            applied.iter().any(|w| w.index >= *asked_at && w.key == *key && w.record.is_none()),
            "seed {seed}: acknowledged delete of {key} never applied"
        );
    }

    // 3. Nothing acknowledged lost, nothing deleted back.
    for key in KEYS {
        let mut must: BTreeSet<u64> = BTreeSet::new();
        let mut since_delete: BTreeSet<u64> = BTreeSet::new();
        let mut deleted: BTreeSet<u64> = BTreeSet::new();
        let mut last_epoch: Option<u64> = None;
        for w in applied.iter().filter(|w| w.key == key) {
            let Some(rec) = &w.record else {
                deleted.append(&mut since_delete);
                must.clear();
                last_epoch = None;
                continue;
            };
            // A restore (or an erasure's unlink): a new epoch with no lease.
            if rec.lease.is_none() && last_epoch != Some(rec.header.epoch) {
                must.clear();
                deleted.retain(|op| !w.ops.contains(op));
            }
            last_epoch = Some(rec.header.epoch);
            let lost: Vec<_> = must.difference(&w.ops).collect();
            assert!(lost.is_empty(), "seed {seed}: {key}: write {} lost acknowledged changes {lost:?}", w.index);
            let back: Vec<_> = deleted.intersection(&w.ops).collect();
            assert!(back.is_empty(), "seed {seed}: {key}: write {} brought back deleted changes {back:?}", w.index);
            since_delete.extend(w.ops.iter().copied());
            if acked_at.contains(&w.index) {
                must.extend(w.ops.iter().copied());
            }
        }
    }

    // 4. Sessions: no write after the end; an end by another's hand is real.
    for e in &obs.ended {
        let node_owner = format!("node-{}", e.node);
        let mine = |w: &&Applied| {
            w.key == e.key
                && w.record.as_ref().is_some_and(|r| {
                    r.header.epoch == e.epoch && r.lease.as_ref().is_some_and(|l| l.owner == node_owner)
                })
        };
        if let Some(w) = applied.iter().filter(mine).find(|w| w.index >= e.history_len) {
            panic!("seed {seed}: {node_owner} wrote {}@{} (write {}) after its session ended", e.key, e.epoch, w.index);
        }
        let overtaken = |start: usize| {
            applied.iter().any(|w| {
                w.index > start && w.key == e.key && w.record.as_ref().is_none_or(|r| r.header.epoch != e.epoch)
            })
        };
        match &e.reason {
            CloseReason::LeaseLost
            | CloseReason::Stolen
            | CloseReason::Deleted
            | CloseReason::Restored
            | CloseReason::Erased => {
                let start = applied.iter().find(mine).map_or(0, |w| w.index);
                assert!(
                    overtaken(start),
                    "seed {seed}: {node_owner}'s session of {}@{} was told {:?}, but nobody else wrote the key",
                    e.key,
                    e.epoch,
                    e.reason
                );
            }
            CloseReason::Crashed => {}
            CloseReason::OpenFailed(m) => {
                panic!("seed {seed}: {node_owner}'s session of {} ended in error: {m}", e.key)
            }
            CloseReason::Stopped => panic!("seed {seed}: {node_owner}'s session of {} stopped without closing", e.key),
            _ => {}
        }
    }
    assert!(obs.refused.is_empty(), "seed {seed}: valid requests refused: {:?}", obs.refused);

    // 5. Messages.
    for key in KEYS {
        let model = obs.inboxes.get(key);
        let stored: BTreeSet<u64> = cluster
            .stored(&format!("{STORE}:inbox"), key)
            .map(|r| {
                let inbox: Value = serde_json::from_slice(&r.data).expect("inbox JSON");
                inbox["messages"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|m| m["body"]["n"].as_u64()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let required: BTreeSet<u64> = model.map(|m| m.required.keys().copied().collect()).unwrap_or_default();
        let missing: Vec<_> = required.difference(&stored).collect();
        assert!(missing.is_empty(), "seed {seed}: {key}: acknowledged messages {missing:?} are gone");
        let unknown: Vec<_> =
            stored.iter().filter(|n| !required.contains(n) && !model.is_some_and(|m| m.maybe.contains(n))).collect();
        assert!(unknown.is_empty(), "seed {seed}: {key}: messages {unknown:?} should not be there");
    }
}

#[actix_rt::test]
async fn every_write_path_keeps_what_it_acknowledged_and_one_writer_holds_a_key() {
    tokio::time::pause();
    let histories = env_or("DATASTORER_CHECK_HISTORIES", 4);
    let steps = env_or("DATASTORER_CHECK_STEPS", 300);
    let base = env_or("DATASTORER_CHECK_SEED", 0x5eed_0000);
    let started = std::time::Instant::now();
    let (mut acked, mut writes, mut woken) = (0, 0, 0);
    let mut gone = Vec::new();
    for i in 0..histories {
        let seed = base + i;
        let (a, w, k, backend) = run_history(seed, steps).await;
        gone.push((seed, backend));
        acked += a;
        writes += w;
        woken += k;
    }
    println!(
        "write paths: {histories} histories of {steps} steps (seeds {base}..{}), {writes} applied writes checked, \
         {acked} acknowledged writes verified, {woken} hibernating keys woken, in {:.1} s",
        base + histories,
        started.elapsed().as_secs_f64()
    );
    assert!(acked > 0 && writes > 0);
    // Every history's cluster, dropped, lets go of everything it started
    // (a history's leftovers would drive every later one's timers).
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
    }
    let alive: Vec<u64> = gone.iter().filter(|(_, b)| b.strong_count() > 0).map(|(seed, _)| *seed).collect();
    assert!(alive.is_empty(), "{} of {histories} histories' engines still run: seeds {alive:?}", alive.len());
}
