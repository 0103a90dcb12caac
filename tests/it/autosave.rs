//! Change detection by checksum, periodic autosave, and save receipts that
//! resolve only after the write is durable.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use datastorer::storage::memory::{MemoryBackend, OpKind};
use datastorer::storage::storage_key;
use datastorer::{Error, ErrorKind, Priority};

#[actix_rt::test]
async fn autosave_writes_only_the_keys_that_changed() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    for i in 0..10 {
        sessions.push(store.open(format!("k{i}")).await.unwrap());
    }
    let after_open = backend.stats().writes_applied;
    assert_eq!(after_open, 10);

    for s in sessions.iter().take(3) {
        s.update(|p| p.coins += 1).await.unwrap();
    }
    // A change reverted before the tick is no change at all.
    sessions[5].update(|p| p.coins += 1).await.unwrap();
    sessions[5].update(|p| p.coins -= 1).await.unwrap();

    tokio::time::sleep(AUTOSAVE + Duration::from_millis(1)).await;
    ds.wait_for_empty_queue().await;
    let written: Vec<_> = backend.written_keys().split_off(after_open as usize);
    let mut expected: Vec<_> = (0..3).map(|i| storage_key("profiles", &format!("k{i}"))).collect();
    let mut got = written.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "only the three changed keys were written");
    for i in 0..3 {
        assert_eq!(stored_json(&backend, "profiles", &format!("k{i}"))["coins"], 1);
    }

    // Nothing changed since and no lease is half used: another pass writes nothing.
    let before = backend.stats().writes_applied;
    assert_eq!(ds.autosave_now().await, 10);
    ds.wait_for_empty_queue().await;
    assert_eq!(backend.stats().writes_applied, before);

    // A tick later, the seven untouched keys have used half their lease and
    // are renewed; the three saved at the first tick are not yet.
    tokio::time::sleep(AUTOSAVE).await;
    ds.wait_for_empty_queue().await;
    assert_eq!(backend.stats().writes_applied, before + 7);
}

#[actix_rt::test]
async fn a_receipt_resolves_only_after_the_flush_that_covers_the_write() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 9).await.unwrap();
    // The write applies but the flush fails twice (transiently).
    backend.fail_next(OpKind::Flush, None, 2, ErrorKind::Transient);
    let flushes_before = backend.stats().flushes;
    let outcome = s.save(Priority::Normal).await.unwrap();
    assert_eq!(outcome.revision, 2);
    assert_eq!(backend.stats().flushes, flushes_before + 3, "resolved after the third, successful flush");
    // The log shows the last operation before the receipt was a flush.
    assert_eq!(backend.log().last().unwrap().0, OpKind::Flush);
    // The retried write found its own header and was not taken for a conflict.
    assert!(s.close_reason().is_none());
}

#[actix_rt::test]
async fn a_write_that_never_becomes_durable_fails_its_receipt_and_stays_dirty() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 4).await.unwrap();
    backend.fail_next(OpKind::Flush, None, 1, ErrorKind::Permanent);
    match s.save(Priority::Normal).await {
        Err(Error::Storage { operation: "write", attempts: 1, .. }) => {}
        other => panic!("expected a storage error, got {other:?}"),
    }
    // Still dirty: the next save writes (and this time the flush succeeds).
    let ok = s.save(Priority::Normal).await.unwrap();
    assert!(ok.revision >= 2);
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 4);
}

#[actix_rt::test]
async fn receipts_from_a_sled_backend_survive_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let mut c = datastorer::Config::sled(&path).owner_id("a");
        c.handle_signals = false;
        let ds = datastorer::Datastorer::start(c).await.unwrap();
        let s = profiles(&ds).open("durable").await.unwrap();
        s.update(|p| p.coins = 123).await.unwrap();
        s.save(Priority::Normal).await.unwrap();
        // No release, no shutdown: only the receipt's durability counts.
    }
    // sled keeps the directory locked while its Db lives; read the files
    // through a second, independent open of a copy.
    let copy = dir.path().join("copy");
    copy_dir(&path, &copy);
    let db = sled::open(&copy).unwrap();
    let bytes = db.get(storage_key("profiles", "durable")).unwrap().expect("record on disk");
    let rec = datastorer::storage::Record::decode(&bytes).unwrap();
    let data: serde_json::Value = serde_json::from_slice(&rec.data).unwrap();
    assert_eq!(data["coins"], 123);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Regression (issue 22, write-path audit 3): a write that applied but
/// whose answer was an error (here: its flush kept failing until the
/// queue gave up) left the key actor with the old header, so the next
/// save was fenced off as `LeaseLost` and the session ended, dropping
/// every later change although it still held the lease. The next write
/// now recognises the stored record as its own and carries on.
#[actix_rt::test]
async fn a_write_of_unknown_outcome_that_applied_is_adopted_by_the_next_write() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 4).await.unwrap();
    backend.fail_next(OpKind::Flush, None, 1, ErrorKind::Permanent);
    assert!(matches!(s.save(Priority::Normal).await, Err(Error::Storage { .. })));
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 4, "the failed write did apply");
    // A later change, different bytes: not confirmable as a retry of the same write.
    s.update(|p| p.coins = 5).await.unwrap();
    let saved = s.save(Priority::Normal).await.unwrap_or_else(|e| panic!("the session fenced itself off: {e:?}"));
    assert_eq!(saved.revision, 3);
    assert!(s.close_reason().is_none());
    s.update(|p| p.coins = 6).await.unwrap();
    s.release(Priority::Normal).await.unwrap();
    let stored = stored(&backend, "profiles", "k").unwrap();
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 6);
    assert_eq!((stored.header.epoch, stored.header.revision), (1, 4));
}

/// The same for a release whose outcome was unknown: it applied (the
/// lease is cleared), the session stayed open, and the next release
/// completes instead of reporting a lost lease.
#[actix_rt::test]
async fn a_release_of_unknown_outcome_that_applied_is_completed_by_the_next_one() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 7).await.unwrap();
    backend.fail_next(OpKind::Flush, None, 1, ErrorKind::Permanent);
    assert!(matches!(s.release(Priority::Normal).await, Err(Error::Storage { .. })));
    assert!(s.close_reason().is_none(), "a failed release keeps the session");
    s.update(|p| p.coins = 8).await.unwrap();
    s.release(Priority::Normal).await.unwrap_or_else(|e| panic!("{e:?}"));
    let stored = stored(&backend, "profiles", "k").unwrap();
    assert!(stored.lease.is_none());
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 8);
}
