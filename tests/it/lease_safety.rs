//! Lease safety under contention: random schedules of opens (every policy,
//! and two nodes racing for one key at once), updates, saves, releases,
//! closes, steals, forced lease expiry, node crashes and restarts, with transient write faults, over three nodes and
//! three keys. A checker then reads the backend's history of applied writes:
//!
//! 1. per key, epochs never go down, and one epoch has one owner;
//! 2. every acknowledged save was applied with exactly its document, and
//!    the final record is at least as new as every acknowledged save (and
//!    equal to the last one when no later write happened);
//! 3. no session wrote after it closed (released, closed, stolen, lost,
//!    crashed).
//!
//! Seeds: `DATASTORER_LEASE_SEEDS` (count, default 4), steps per schedule:
//! `DATASTORER_LEASE_STEPS` (default 300). Seeds are printed.

use crate::common::{env_or, Rng};

use std::collections::HashMap;
use std::time::Duration;

use datastorer::storage::{split_storage_key, Record};
use datastorer::testing::{Cluster, ErrorKind, OpKind};
use datastorer::{AcquirePolicy, Priority, Session, StoreSpec};
use serde_json::{json, Value};

const NODES: usize = 3;
const KEYS: [&str; 3] = ["a", "b", "c"];

struct Held {
    session: Session<Value>,
    epoch: u64,
}

struct Ack {
    key: String,
    epoch: u64,
    revision: u64,
    doc: Value,
}

struct Ended {
    node: usize,
    key: String,
    epoch: u64,
    history_len: usize,
}

async fn run_schedule(seed: u64, steps: u64) -> (usize, usize) {
    let mut rng = Rng(seed | 1);
    let mut cluster = Cluster::start(NODES).await;
    cluster.backend().record_history(true);
    cluster.backend().fail_fraction(OpKind::Write, 0.05, ErrorKind::Transient, seed);
    let spec = || StoreSpec::new(json!({"ops": []}));
    let mut held: HashMap<(usize, &str), Held> = HashMap::new();
    let mut acks: Vec<Ack> = Vec::new();
    let mut ended: Vec<Ended> = Vec::new();
    let mut next_op = 0u64;

    for _ in 0..steps {
        let node = rng.below(NODES as u64) as usize;
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let store = cluster.node(node).store("s", spec()).unwrap();
        match rng.below(100) {
            0..=19 => {
                let policy = match rng.below(4) {
                    0 => AcquirePolicy::Fail,
                    1 => AcquirePolicy::Steal,
                    2 => AcquirePolicy::Wait { timeout: Duration::from_secs(2) },
                    _ => AcquirePolicy::RequestRelease { timeout: Duration::from_secs(2) },
                };
                if let Ok(s) = store.open(key).policy(policy).await {
                    if let Ok(lease) = s.lease().await {
                        held.insert((node, key), Held { session: s, epoch: lease.epoch });
                    }
                }
            }
            20..=49 => {
                if let Some(h) = held.get(&(node, key)) {
                    next_op += 1;
                    let op = next_op;
                    let _ = h.session.update(move |d| d["ops"].as_array_mut().unwrap().push(json!(op))).await;
                }
            }
            50..=69 => {
                if let Some(h) = held.get(&(node, key)) {
                    let doc = h.session.get().await;
                    if let (Ok(doc), Ok(outcome)) = (doc, h.session.save(Priority::Normal).await) {
                        acks.push(Ack { key: key.to_owned(), epoch: h.epoch, revision: outcome.revision, doc });
                    }
                }
            }
            70..=77 => {
                if let Some(h) = held.get(&(node, key)) {
                    let doc = h.session.get().await;
                    if let (Ok(doc), Ok(outcome)) = (doc, h.session.release(Priority::Normal).await) {
                        acks.push(Ack { key: key.to_owned(), epoch: h.epoch, revision: outcome.revision, doc });
                    }
                }
            }
            78..=82 => {
                if let Some(h) = held.get(&(node, key)) {
                    let _ = h.session.close().await;
                }
            }
            83..=89 => {
                // A holder goes silent long enough for its lease to lapse.
                cluster.expire_lease("s", key);
            }
            90..=96 => cluster.advance(Duration::from_secs(rng.below(60))).await,
            97..=98 => {
                // Two nodes race for the same key at once: both read the
                // same record and compute the same new header (the race a
                // sequential schedule never produces).
                let other = (node + 1) % NODES;
                let other_store = cluster.node(other).store("s", spec()).unwrap();
                let policy = |r: u64| match r {
                    0 => AcquirePolicy::Fail,
                    1 => AcquirePolicy::Steal,
                    _ => AcquirePolicy::Wait { timeout: Duration::from_millis(500) },
                };
                let (pa, pb) = (policy(rng.below(3)), policy(rng.below(3)));
                let (ra, rb) = tokio::join!(store.open(key).policy(pa), other_store.open(key).policy(pb));
                for (n, r) in [(node, ra), (other, rb)] {
                    if let Ok(s) = r {
                        if let Ok(lease) = s.lease().await {
                            held.insert((n, key), Held { session: s, epoch: lease.epoch });
                        }
                    }
                }
            }
            _ => {
                if rng.below(2) == 0 {
                    cluster.crash(node).await;
                    cluster.restart(node).await;
                }
            }
        }
        // Sessions that ended since the last step: remember where the history stood.
        let history_len = cluster.backend().history().len();
        held.retain(|(n, k), h| {
            if h.session.close_reason().is_some() {
                ended.push(Ended { node: *n, key: (*k).to_owned(), epoch: h.epoch, history_len });
                false
            } else {
                true
            }
        });
    }
    cluster.drain().await;
    check(&cluster, &acks, &ended, seed);
    (acks.len(), cluster.backend().history().len())
}

fn check(cluster: &Cluster, acks: &[Ack], ended: &[Ended], seed: u64) {
    let history = cluster.backend().history();
    let mut owner_of: HashMap<(String, u64), String> = HashMap::new();
    let mut last_epoch: HashMap<String, u64> = HashMap::new();
    let mut applied: HashMap<(String, u64, u64), Value> = HashMap::new();
    let mut writes_by: Vec<(usize, String, u64, Option<String>)> = Vec::new();
    for (i, w) in history.iter().enumerate() {
        let Some((_, key)) = split_storage_key(&w.key) else { continue };
        let Some(bytes) = &w.value else { continue };
        let rec = Record::decode(bytes).unwrap_or_else(|e| panic!("seed {seed}: write {i} undecodable: {e}"));
        let epoch = rec.header.epoch;
        let prev = last_epoch.insert(key.clone(), epoch).unwrap_or(0);
        assert!(epoch >= prev, "seed {seed}: {key}: epoch went from {prev} down to {epoch} at write {i}");
        let owner = rec.lease.as_ref().map(|l| l.owner.clone());
        if let Some(o) = &owner {
            let first = owner_of.entry((key.clone(), epoch)).or_insert_with(|| o.clone());
            assert_eq!(first, o, "seed {seed}: {key}: epoch {epoch} written by two owners ({first} and {o})");
        }
        let doc: Value = serde_json::from_slice(&rec.data).unwrap();
        applied.insert((key.clone(), epoch, rec.header.revision), doc);
        writes_by.push((i, key, epoch, owner));
    }
    for a in acks {
        let doc = applied.get(&(a.key.clone(), a.epoch, a.revision)).unwrap_or_else(|| {
            panic!("seed {seed}: acknowledged save {}@{}/{} never applied", a.key, a.epoch, a.revision)
        });
        assert_eq!(doc, &a.doc, "seed {seed}: acknowledged save {}@{} has other data", a.key, a.revision);
        let fin = cluster.stored("s", &a.key).unwrap();
        assert!(fin.header.revision >= a.revision, "seed {seed}: {} final revision older than an ack", a.key);
    }
    for key in KEYS {
        if let (Some(fin), Some(last)) =
            (cluster.stored("s", key), acks.iter().filter(|a| a.key == key).max_by_key(|a| a.revision))
        {
            if fin.header.revision == last.revision {
                let doc: Value = serde_json::from_slice(&fin.data).unwrap();
                assert_eq!(doc, last.doc, "seed {seed}: {key}: final record is not the last acknowledged save");
            }
        }
    }
    for e in ended {
        let node_owner = format!("node-{}", e.node);
        for (i, key, epoch, owner) in &writes_by {
            if *i >= e.history_len
                && *key == e.key
                && *epoch == e.epoch
                && owner.as_deref() == Some(node_owner.as_str())
            {
                panic!("seed {seed}: {node_owner} wrote {key}@{epoch} (write {i}) after its session ended");
            }
        }
    }
}

#[actix_rt::test]
async fn no_two_writers_share_an_epoch_and_no_acknowledged_save_is_lost() {
    tokio::time::pause();
    let seeds = env_or("DATASTORER_LEASE_SEEDS", 4);
    let steps = env_or("DATASTORER_LEASE_STEPS", 300);
    let base = env_or("DATASTORER_LEASE_SEED", 0x5eed_0000);
    let (mut acked, mut writes) = (0, 0);
    for i in 0..seeds {
        let seed = base + i;
        let (a, w) = run_schedule(seed, steps).await;
        acked += a;
        writes += w;
    }
    println!(
        "lease safety: {seeds} histories of {steps} steps (seeds {base}..{}), {writes} applied writes checked, {acked} acknowledged saves verified",
        base + seeds
    );
    assert!(acked > 0 && writes > 0);
}
