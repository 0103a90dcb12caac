//! The test harness itself: clusters, crashes and restarts, frozen
//! requests, fractional faults, lost unflushed writes, the history log.

use std::time::Duration;

use datastorer::testing::{Cluster, ErrorKind, OpKind};
use datastorer::{AcquirePolicy, CloseReason, Error, Priority, StoreSpec};
use serde_json::{json, Value};

fn spec() -> StoreSpec<Value> {
    StoreSpec::new(json!({"coins": 0}))
}

#[actix_rt::test]
async fn a_crashed_node_keeps_its_leases_until_they_lapse_or_it_restarts() {
    tokio::time::pause();
    let mut cluster = Cluster::start(2).await;
    let a = cluster.node(0).store("p", spec()).unwrap();
    let s = a.open("k").await.unwrap();
    s.update(|d| d["coins"] = json!(5)).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    s.update(|d| d["coins"] = json!(6)).await.unwrap(); // unsaved: lost in the crash

    cluster.crash(0).await;
    assert_eq!(s.closed().await, CloseReason::Crashed);
    assert!(matches!(a.open("other").await, Err(Error::ShuttingDown)));
    assert_eq!(cluster.stored("p", "k").unwrap().lease.unwrap().owner, "node-0", "the lease outlives the crash");

    let b = cluster.node(1).store("p", spec()).unwrap();
    assert!(matches!(b.open("k").policy(AcquirePolicy::Fail).await, Err(Error::LeaseHeld { .. })));
    // A restarted node-0 (same owner id) reclaims its own stale lease at once.
    cluster.restart(0).await;
    let a2 = cluster.node(0).store("p", spec()).unwrap();
    let s2 = a2.open("k").policy(AcquirePolicy::Fail).await.unwrap();
    assert_eq!(s2.read(|d| d["coins"].clone()).await.unwrap(), json!(5));
    assert_eq!(s2.lease().await.unwrap().epoch, 2);
    cluster.crash(0).await;

    // Or the lease lapses and anyone may take it.
    assert!(cluster.expire_lease("p", "k"));
    let t = b.open("k").policy(AcquirePolicy::Fail).await.unwrap();
    assert_eq!(t.lease().await.unwrap().epoch, 3);
    cluster.assert_stored("p", "k", &json!({"coins": 5}));
}

/// Hold a save on the wire, steal the key from another node meanwhile, then
/// let the save go: its fencing check fails and the thief's record stands.
#[actix_rt::test]
async fn a_save_held_on_the_wire_loses_to_a_steal() {
    let cluster = Cluster::start(2).await;
    let a = cluster.node(0).store("p", spec()).unwrap();
    let b = cluster.node(1).store("p", spec()).unwrap();
    let s = a.open("k").await.unwrap();
    s.update(|d| d["coins"] = json!(1)).await.unwrap();

    cluster.backend().freeze(OpKind::Write, None, 1);
    let held = s.save(Priority::Normal);
    while cluster.backend().frozen() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let thief = b.open("k").policy(AcquirePolicy::Steal).await.unwrap();
    thief.update(|d| d["coins"] = json!(100)).await.unwrap();
    thief.save(Priority::Normal).await.unwrap();

    cluster.backend().unfreeze();
    match held.await {
        Err(Error::LeaseLost { .. }) | Err(Error::SessionClosed { reason: CloseReason::Stolen, .. }) => {}
        other => panic!("the held save must not succeed: {other:?}"),
    }
    cluster.assert_stored("p", "k", &json!({"coins": 100}));
    assert_eq!(cluster.stored_header("p", "k").unwrap().epoch, 2);
}

#[actix_rt::test]
async fn with_half_the_writes_failing_every_save_still_lands() {
    tokio::time::pause();
    let cluster = Cluster::start_with(1, |_, c| c.queue.retry.max_attempts = 40).await;
    cluster.backend().fail_fraction(OpKind::Write, 0.5, ErrorKind::Transient, 7);
    cluster.backend().fail_fraction(OpKind::Flush, 0.3, ErrorKind::Throttled, 7);
    // One key fails far more often than the rest.
    let hot = datastorer::storage::storage_key("p", "k0");
    cluster.backend().fail_fraction_of(OpKind::Write, Some(&hot), 0.9, ErrorKind::Transient, 9);
    let store = cluster.node(0).store("p", spec()).unwrap();
    let mut receipts = Vec::new();
    for i in 0..50u64 {
        let s = store.open(format!("k{i}")).await.unwrap();
        s.update(move |d| d["coins"] = json!(i)).await.unwrap();
        receipts.push(s.save(Priority::Normal));
    }
    for r in receipts {
        r.await.unwrap();
    }
    for i in 0..50u64 {
        cluster.assert_stored("p", &format!("k{i}"), &json!({"coins": i}));
    }
    assert!(cluster.backend().stats().injected_failures > 20);
}

#[actix_rt::test]
async fn unflushed_writes_are_lost_in_a_storage_crash_but_acknowledged_ones_are_not() {
    tokio::time::pause();
    let cluster = Cluster::start(1).await;
    let store = cluster.node(0).store("p", spec()).unwrap();
    let s = store.open("k").await.unwrap();
    s.update(|d| d["coins"] = json!(1)).await.unwrap();
    s.save(Priority::Normal).await.unwrap(); // acknowledged: flushed
    cluster.backend().fail_next(OpKind::Flush, None, 1, ErrorKind::Permanent);
    s.update(|d| d["coins"] = json!(2)).await.unwrap();
    assert!(s.save(Priority::Normal).await.is_err()); // applied, never flushed
    cluster.assert_stored("p", "k", &json!({"coins": 2}));
    // The record and the version written with it are lost together.
    assert_eq!(cluster.backend().lose_unflushed(), 2);
    cluster.assert_stored("p", "k", &json!({"coins": 1}));
    let versions = store.versions("k", &datastorer::VersionQuery::default()).await.unwrap().versions;
    assert_eq!(versions[0].id(), cluster.stored_header("p", "k").unwrap(), "no version of the lost write");
}

#[actix_rt::test]
async fn the_history_records_every_applied_write_in_order() {
    tokio::time::pause();
    let cluster = Cluster::start(1).await;
    cluster.backend().record_history(true);
    let store = cluster.node(0).store("p", spec()).unwrap();
    let s = store.open("k").await.unwrap();
    s.update(|d| d["coins"] = json!(3)).await.unwrap();
    s.release(Priority::Normal).await.unwrap();
    let revisions: Vec<u64> = cluster
        .backend()
        .history()
        .iter()
        .map(|w| datastorer::storage::Record::decode(w.value.as_ref().unwrap()).unwrap().header.revision)
        .collect();
    assert_eq!(revisions, vec![1, 2]);
    cluster.autosave_now().await;
    cluster.advance(Duration::from_secs(120)).await;
    assert_eq!(cluster.backend().history().len(), 2, "nothing written after release");
}
