//! An engine that is gone lets go of everything: when the last handle of a
//! `Datastorer` (the instance, its stores and sessions) is dropped, or once
//! it has shut down and its handles are gone, every actor and timer it
//! started stops and its backend is freed. Many start/stop cycles in one
//! process then cost the same each, and later clock advances drive nothing
//! of earlier engines.
//!
//! "Freed" is observed directly: each engine runs over its own memory
//! backend, and the test keeps only a `Weak` of it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use datastorer::storage::memory::MemoryBackend;
use datastorer::testing::Cluster;
use datastorer::{Datastorer, Priority, StoreSpec};
use serde_json::{json, Value};

use crate::common::{config, env_or};

/// Lets every task that is ready run, and the paused clock move on to
/// whatever falls due (a stopping engine saves through its queue).
async fn settle() {
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }
}

/// Resident memory of this process, in KiB (Linux; 0 elsewhere).
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4
}

/// One engine with `keys` open and changed (unsaved), over a backend only it holds.
async fn busy_engine(owner: &str, keys: usize) -> (Datastorer, Weak<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::new());
    let weak = Arc::downgrade(&backend);
    let ds = Datastorer::start(config(&backend, owner)).await.expect("engine starts");
    drop(backend);
    let store = ds.store("p", StoreSpec::new(json!({"n": 0}))).unwrap();
    for k in 0..keys {
        let s = store.open(k as u64).await.unwrap();
        s.update(move |d: &mut Value| d["n"] = json!(k)).await.unwrap();
    }
    (ds, weak)
}

#[actix_rt::test]
async fn dropping_the_last_handle_stops_the_engine_and_saves_what_changed() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = Datastorer::start(config(&backend, "a")).await.unwrap();
    let store = ds.store("p", StoreSpec::new(json!({"n": 0}))).unwrap();
    let session = store.open("k").await.unwrap();
    session.update(|d: &mut Value| d["n"] = json!(7)).await.unwrap();
    drop(ds);
    drop(store);
    settle().await;
    // The session is a handle too: the engine still serves it.
    assert_eq!(session.get().await.unwrap()["n"], 7);
    assert!(crate::common::stored(&backend, "p", "k").unwrap().lease.is_some(), "the key is still held");
    drop(session);
    settle().await;
    // Gone: the change was saved and the lease given back, as a shutdown does.
    let rec = crate::common::stored(&backend, "p", "k").unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&rec.data).unwrap()["n"], 7);
    assert!(rec.lease.is_none(), "the lease was released");
    assert_eq!(Arc::strong_count(&backend), 1, "the engine let go of its backend");
}

#[actix_rt::test]
async fn engines_started_and_stopped_in_one_process_are_all_freed_at_a_flat_cost() {
    tokio::time::pause();
    let cycles = env_or("DATASTORER_LIFETIME_CYCLES", 120) as usize;
    let mut gone = Vec::new();
    let mut per_quarter = Vec::new();
    let mut rss = vec![rss_kib()];
    let quarter = (cycles / 4).max(1);
    let mut started = Instant::now();
    for i in 0..cycles {
        let (ds, weak) = busy_engine(&format!("cycle-{i}"), 20).await;
        // Half shut down first, half are simply dropped.
        if i % 2 == 0 {
            let report = ds.shutdown().await;
            assert_eq!(report.release.released, 20, "{report}");
        }
        drop(ds);
        // Every clock advance would drive the timers of engines left running.
        tokio::time::advance(Duration::from_secs(31)).await;
        settle().await;
        gone.push(weak);
        if (i + 1) % quarter == 0 {
            per_quarter.push(started.elapsed());
            rss.push(rss_kib());
            started = Instant::now();
        }
    }
    let alive = gone.iter().filter(|w| w.upgrade().is_some()).count();
    println!(
        "engine lifetime: {cycles} cycles; time per quarter {:?}; RSS KiB at each quarter {:?}; engines left alive: {alive}",
        per_quarter, rss
    );
    assert_eq!(alive, 0, "every engine lets go of its backend once its last handle is gone");
}

#[actix_rt::test]
async fn dropped_clusters_and_restarted_nodes_are_freed() {
    tokio::time::pause();
    let mut backends = Vec::new();
    for round in 0..20 {
        let mut cluster = Cluster::start(3).await;
        backends.push(Arc::downgrade(cluster.backend()));
        let store = cluster.node(0).store("p", StoreSpec::new(json!({"n": 0}))).unwrap();
        let s = store.open("k").await.unwrap();
        s.update(move |d: &mut Value| d["n"] = json!(round)).await.unwrap();
        s.save(Priority::Normal).await.unwrap();
        // A crashed and restarted node: the crashed engine must go.
        cluster.crash(1).await;
        cluster.restart(1).await;
        drop((s, store, cluster));
        tokio::time::advance(Duration::from_secs(31)).await;
        settle().await;
    }
    let alive = backends.iter().filter(|w| w.upgrade().is_some()).count();
    assert_eq!(alive, 0, "{alive} of 20 dropped clusters still hold their backend");
}
