//! The supervisor: release_all_keys, shutdown saving every dirty key and
//! releasing every lease, the deadline, and failure isolation.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use datastorer::storage::memory::{MemoryBackend, OpKind};
use datastorer::{CloseReason, Datastorer, Error, ErrorKind, Priority};

/// Like a checkpoint writing dirty pages in page order: releases reach the
/// storage in key order, so each group commit touches neighbouring keys.
#[actix_rt::test]
async fn shutdown_writes_keys_in_key_order() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    // Opened in an order that is neither sorted nor the registry's.
    for i in [7u64, 3, 11, 0, 9, 42, 5, 1, 30, 18, 2, 25] {
        let s = store.open(format!("p{i}")).await.unwrap();
        s.update(move |p| p.coins = i + 1).await.unwrap();
        sessions.push(s);
    }
    let before = backend.written_keys().len();
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    let written = backend.written_keys().split_off(before);
    assert_eq!(written.len(), sessions.len());
    let mut sorted = written.clone();
    sorted.sort();
    assert_eq!(written, sorted, "releases were not written in key order");
}

#[actix_rt::test]
async fn shutdown_saves_every_dirty_key_and_releases_every_lease() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let other = ds.store("other", datastorer::StoreSpec::new(serde_json::json!({"n": 0}))).unwrap();
    let mut sessions = Vec::new();
    for i in 0..300u64 {
        let s = store.open(format!("p{i}")).await.unwrap();
        if i % 3 != 0 {
            s.update(move |p| p.coins = i).await.unwrap(); // dirty, never saved
        }
        sessions.push(s);
    }
    let o = other.open("x").await.unwrap();
    o.update(|v| v["n"] = 7.into()).await.unwrap();

    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.release.released, 301);
    for i in 0..300u64 {
        let rec = stored(&backend, "profiles", &format!("p{i}")).unwrap();
        assert!(rec.lease.is_none(), "p{i} still leased");
        let coins = serde_json::from_slice::<serde_json::Value>(&rec.data).unwrap()["coins"].as_u64().unwrap();
        assert_eq!(coins, if i % 3 != 0 { i } else { 0 });
    }
    assert_eq!(stored_json(&backend, "other", "x")["n"], 7);
    assert_eq!(sessions[1].closed().await, CloseReason::Shutdown);
    assert_eq!(ds.loaded_count(), 0);

    // No new loads; a second shutdown returns the first report.
    assert!(matches!(store.open("late").await, Err(Error::ShuttingDown)));
    assert_eq!(ds.shutdown().await, report);
}

#[actix_rt::test]
async fn release_all_keys_releases_without_stopping_the_engine() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let a = store.open("a").await.unwrap();
    let b = store.open("b").await.unwrap();
    a.update(|p| p.coins = 1).await.unwrap();
    let report = ds.release_all_keys(Priority::Normal).await;
    assert_eq!(report.released, 2);
    assert_eq!(a.closed().await, CloseReason::Released);
    assert_eq!(b.closed().await, CloseReason::Released);
    assert_eq!(stored_json(&backend, "profiles", "a")["coins"], 1);
    // Still running: keys can be opened again.
    let again = store.open("a").await.unwrap();
    assert_eq!(again.read(|p| p.coins).await.unwrap(), 1);
}

#[actix_rt::test]
async fn shutdown_reports_keys_it_could_not_save_and_respects_the_deadline() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let mut c = config(&backend, "a");
    c.shutdown_deadline = Duration::from_secs(5);
    c.queue.retry.max_attempts = 1000; // retry far beyond the deadline
    let ds = Datastorer::start(c).await.unwrap();
    let store = profiles(&ds);
    let good = store.open("good").await.unwrap();
    let stuck = store.open("stuck").await.unwrap();
    let broken = store.open("broken").await.unwrap();
    for s in [&good, &stuck, &broken] {
        s.update(|p| p.coins = 5).await.unwrap();
    }
    let stuck_key = datastorer::storage::storage_key("profiles", "stuck");
    let broken_key = datastorer::storage::storage_key("profiles", "broken");
    backend.fail_next(OpKind::Write, Some(&stuck_key), u64::MAX, ErrorKind::Transient);
    backend.fail_next(OpKind::Write, Some(&broken_key), 1, ErrorKind::Permanent);

    let started = tokio::time::Instant::now();
    let report = ds.shutdown().await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(7), "{took:?}");
    assert_eq!(report.release.released, 1);
    assert_eq!(report.release.timed_out, 1);
    assert_eq!(report.release.failed.len(), 1);
    assert!(matches!(&report.release.failed[0], Error::Storage { at, .. } if at.key == "broken"));
    assert!(!report.is_clean());
    // Regression (issue 22, F3): the report names every key it could not
    // save, timed-out ones included, so an operator knows whose progress is lost.
    assert_eq!(report.release.timed_out_keys, [("profiles".to_owned(), "stuck".to_owned())]);
    let unsaved = report.release.unsaved();
    assert_eq!(unsaved.len(), 2, "{unsaved:?}");
    assert!(unsaved[0].starts_with("profiles/broken (") && unsaved[1].starts_with("profiles/stuck ("), "{unsaved:?}");
    let said = report.to_string();
    assert!(said.contains("not saved: profiles/stuck") && said.contains("not saved: profiles/broken"), "{said}");
    assert!(!said.contains("None") && !said.contains("Storage {"), "no Rust in the sentence: {said}");
    assert_eq!(stored_json(&backend, "profiles", "good")["coins"], 5);
    // The failed key's data is still in memory.
    assert_eq!(broken.read(|p| p.coins).await.unwrap(), 5);
}

#[actix_rt::test]
async fn a_failing_key_does_not_take_the_others_down() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let bad = store.open("bad").await.unwrap();
    let good = store.open("good").await.unwrap();
    for _ in 0..3 {
        let _ = bad.update(|_| panic!("user bug")).await;
    }
    let skey = datastorer::storage::storage_key("profiles", "bad");
    backend.fail_next(OpKind::Write, Some(&skey), 1, ErrorKind::Permanent);
    bad.update(|p| p.coins = 1).await.unwrap();
    assert!(bad.save(Priority::Normal).await.is_err());
    good.update(|p| p.coins = 2).await.unwrap();
    good.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "good")["coins"], 2);
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(stored_json(&backend, "profiles", "bad")["coins"], 1);
}

#[actix_rt::test]
async fn a_waiting_open_that_completes_after_shutdown_began_gets_the_shutdown_answer() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "a").await, node(&backend, "b").await);
    let held = profiles(&a).open("k").await.unwrap();
    let store_b = profiles(&b);
    let waiter = actix_rt::spawn(async move {
        store_b.open("k").policy(datastorer::AcquirePolicy::Wait { timeout: Duration::from_secs(60) }).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b2 = b.clone();
    let shutdown = actix_rt::spawn(async move { b2.shutdown().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    held.release(Priority::Normal).await.unwrap();
    let opened = waiter.await.unwrap();
    assert!(matches!(opened, Err(Error::ShuttingDown)), "{opened:?}");
    shutdown.await.unwrap();
    // The key was given back: no lease of b's is left behind.
    assert!(stored(&backend, "profiles", "k").unwrap().lease.is_none());
}
