//! Fault tolerance: under a high rate of transient errors every save lands
//! within the backoff bound; under permanent errors the failure is
//! reported, the data stays in memory, and a later save succeeds once the
//! fault is lifted.

use std::time::Duration;

use datastorer::testing::{Cluster, ErrorKind, OpKind};
use datastorer::{Error, Priority, RetryConfig, StoreSpec};
use serde_json::{json, Value};
use tokio::time::Instant;

fn spec() -> StoreSpec<Value> {
    StoreSpec::new(json!({"n": 0}))
}

#[actix_rt::test]
async fn every_save_lands_within_the_backoff_bound_despite_frequent_transient_errors() {
    tokio::time::pause();
    let retry = RetryConfig { base_delay: Duration::from_millis(10), max_exponent: 4, max_attempts: 30, jitter: 0.5 };
    let bound = retry.max_total_delay();
    let cluster = Cluster::start_with(1, |_, c| c.queue.retry = retry.clone()).await;
    let store = cluster.node(0).store("p", spec()).unwrap();
    let mut sessions = Vec::new();
    for i in 0..100u64 {
        let s = store.open(format!("k{i}")).await.unwrap();
        s.update(move |d| d["n"] = json!(i)).await.unwrap();
        sessions.push(s);
    }
    cluster.backend().fail_fraction(OpKind::Write, 0.6, ErrorKind::Transient, 42);
    cluster.backend().fail_fraction(OpKind::Flush, 0.3, ErrorKind::Throttled, 42);
    let started = Instant::now();
    let receipts: Vec<_> = sessions.iter().map(|s| s.save(Priority::Normal)).collect();
    for r in receipts {
        r.await.expect("every save lands");
    }
    let took = started.elapsed();
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    for i in 0..100u64 {
        cluster.assert_stored("p", &format!("k{i}"), &json!({"n": i}));
    }
    println!(
        "fault tolerance: 100 saves under 60 % write / 30 % flush faults: {} injected failures, {took:?} (bound {bound:?})",
        cluster.backend().stats().injected_failures
    );
}

#[actix_rt::test]
async fn permanent_errors_are_reported_and_nothing_is_lost_in_memory() {
    tokio::time::pause();
    let cluster = Cluster::start(1).await;
    let store = cluster.node(0).store("p", spec()).unwrap();
    let s = store.open("k").await.unwrap();
    cluster.backend().fail_fraction(OpKind::Write, 1.0, ErrorKind::Permanent, 1);
    for i in 1..=3u64 {
        s.update(move |d| d["n"] = json!(i)).await.unwrap();
        let err = s.save(Priority::Normal).await.unwrap_err();
        assert!(matches!(err, Error::Storage { attempts: 1, .. }), "{err:?}");
    }
    // Autosave and release fail the same way and keep the session.
    cluster.autosave_now().await;
    assert!(s.release(Priority::Normal).await.is_err());
    assert!(s.close_reason().is_none());
    assert_eq!(s.read(|d| d["n"].clone()).await.unwrap(), json!(3));
    cluster.assert_stored("p", "k", &json!({"n": 0}));

    cluster.backend().clear_faults();
    s.release(Priority::Normal).await.unwrap();
    cluster.assert_stored("p", "k", &json!({"n": 3}));
}
