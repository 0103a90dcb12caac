//! Sessions: open, read, update, metadata, user ids, save receipts, release,
//! close, close reasons, panics inside closures.

use std::sync::Arc;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::{CloseReason, Datastorer, Error, Priority, Session};
use serde_json::json;

#[actix_rt::test]
async fn open_creates_from_template_and_update_saves() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);

    let s = store.open("alice").user_ids([7u64]).await.unwrap();
    assert_eq!(s.get().await.unwrap(), template());
    // The lease write created the record with the template, epoch 1.
    let rec = stored(&backend, "profiles", "alice").unwrap();
    assert_eq!(rec.header.epoch, 1);
    assert_eq!(rec.user_ids, vec!["7".to_string()]);
    assert_eq!(rec.lease.as_ref().unwrap().owner, "a");

    let coins = s
        .update(|p| {
            p.coins += 5;
            p.coins
        })
        .await
        .unwrap();
    assert_eq!(coins, 5);
    let outcome = s.save(Priority::Normal).await.unwrap();
    assert_eq!(outcome.revision, 2);
    assert_eq!(stored_json(&backend, "profiles", "alice")["coins"], 5);

    // Nothing changed: the receipt resolves at once with the same revision.
    let again = s.save(Priority::Normal).await.unwrap();
    assert_eq!(again.revision, 2);
    assert_eq!(stored(&backend, "profiles", "alice").unwrap().header.revision, 2);
}

#[actix_rt::test]
async fn get_and_is_loaded_track_open_sessions_and_numeric_keys_are_strings() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    assert!(!store.is_loaded(42u64));
    assert!(store.get(42u64).is_none());

    let s = store.open(42u64).await.unwrap();
    assert!(store.is_loaded("42"));
    let again = store.get(42).unwrap();
    again.update(|p| p.coins = 9).await.unwrap();
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 9, "both handles reach one actor");
    // Opening a loaded key returns the same session.
    let third = store.open("42").await.unwrap();
    assert_eq!(third.read(|p| p.coins).await.unwrap(), 9);
    assert!(stored(&backend, "profiles", "42").is_some());

    s.release(Priority::Normal).await.unwrap();
    assert!(!store.is_loaded(42));
    assert_eq!(s.closed().await, CloseReason::Released);
    assert_eq!(ds.loaded_count(), 0);
}

#[actix_rt::test]
async fn metadata_and_user_ids_are_saved_beside_the_data() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds
        .store("meta", datastorer::StoreSpec::new(template()).metadata_template(json!({"region": "eu", "flags": 0})))
        .unwrap();
    let s = store.open("k").user_ids(["u1"]).await.unwrap();
    assert_eq!(s.metadata().await.unwrap(), json!({"region": "eu", "flags": 0}));
    s.set_metadata(json!({"region": "us", "flags": 1})).await.unwrap();
    s.add_user_id(99).await.unwrap();
    s.add_user_id(99).await.unwrap();
    assert_eq!(s.user_ids().await.unwrap(), vec!["u1".to_string(), "99".to_string()]);

    // Metadata changes alone make the key dirty.
    let rev = s.save(Priority::Normal).await.unwrap().revision;
    assert_eq!(rev, 2);
    let rec = stored(&backend, "meta", "k").unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&rec.metadata).unwrap()["region"], "us");
    assert_eq!(rec.user_ids, vec!["u1".to_string(), "99".to_string()]);
    // The data itself kept its shape.
    assert_eq!(stored_json(&backend, "meta", "k"), serde_json::to_value(template()).unwrap());

    // A removed user id alone makes the key dirty too; removing one that
    // is not there changes nothing.
    assert!(s.remove_user_id("u1").await.unwrap());
    assert!(!s.remove_user_id("u1").await.unwrap());
    assert_eq!(s.save(Priority::Normal).await.unwrap().revision, 3);
    assert_eq!(stored(&backend, "meta", "k").unwrap().user_ids, vec!["99".to_string()]);
    assert_eq!(s.save(Priority::Normal).await.unwrap().revision, 3, "nothing left to save");
}

#[actix_rt::test]
async fn release_saves_and_clears_the_lease_then_refuses_calls() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("bob").await.unwrap();
    s.update(|p| p.coins = 77).await.unwrap();
    s.release(Priority::Normal).await.unwrap();

    let rec = stored(&backend, "profiles", "bob").unwrap();
    assert!(rec.lease.is_none(), "release clears the lease");
    assert_eq!(stored_json(&backend, "profiles", "bob")["coins"], 77);
    assert_eq!(s.close_reason(), Some(CloseReason::Released));
    match s.update(|p| p.coins = 1).await {
        Err(Error::SessionClosed { reason: CloseReason::Released, .. }) => {}
        other => panic!("expected SessionClosed(Released), got {other:?}"),
    }
    assert!(s.save(Priority::Normal).await.is_err());
}

#[actix_rt::test]
async fn close_drops_unsaved_changes_and_clears_the_lease() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let s = store.open("carol").await.unwrap();
    s.update(|p| p.coins = 10).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    s.update(|p| p.coins = 999).await.unwrap();
    s.close().await.unwrap();
    assert_eq!(s.closed().await, CloseReason::Closed);

    let rec = stored(&backend, "profiles", "carol").unwrap();
    assert!(rec.lease.is_none());
    assert_eq!(stored_json(&backend, "profiles", "carol")["coins"], 10, "unsaved change dropped");

    // No late autosave writes after close.
    let writes = backend.stats().writes_applied;
    tokio::time::advance(AUTOSAVE * 3).await;
    ds.autosave_now().await;
    ds.wait_for_empty_queue().await;
    assert_eq!(backend.stats().writes_applied, writes);

    // Reopening loads the saved state.
    let s2 = store.open("carol").await.unwrap();
    assert_eq!(s2.read(|p| p.coins).await.unwrap(), 10);
    assert_eq!(s2.lease().await.unwrap().epoch, 2);
}

#[actix_rt::test]
async fn a_panicking_update_restores_the_document_and_the_actor_survives() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let s = store.open("dave").await.unwrap();
    let other = store.open("erin").await.unwrap();
    s.update(|p| p.coins = 3).await.unwrap();

    let err = s
        .update(|p| {
            p.coins = 1000;
            p.items.push("half-applied".into());
            panic!("boom in user code");
        })
        .await
        .unwrap_err();
    match err {
        Error::Panicked { ref at, ref message, .. } => {
            assert_eq!(at.key, "dave");
            assert!(message.contains("boom"));
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    // Restored, and the session still works.
    assert_eq!(s.get().await.unwrap().coins, 3);
    assert!(s.get().await.unwrap().items.is_empty());
    s.update(|p| p.coins += 1).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "dave")["coins"], 4);
    // A panicking read is reported too, and other keys are unaffected.
    assert!(matches!(s.read(|_| -> u64 { panic!("read boom") }).await, Err(Error::Panicked { .. })));
    other.update(|p| p.coins = 1).await.unwrap();
    assert_eq!(other.save(Priority::Normal).await.unwrap().revision, 2);
}

#[actix_rt::test]
async fn a_newer_save_waits_for_the_write_on_the_wire_and_carries_the_newest_state() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("frank").await.unwrap();
    // Make the first write fail twice transiently so it stays on the wire
    // while more saves arrive.
    backend.fail_next(datastorer::storage::memory::OpKind::Write, None, 2, datastorer::ErrorKind::Transient);
    s.update(|p| p.coins = 1).await.unwrap();
    let first = s.save(Priority::Normal);
    s.update(|p| p.coins = 2).await.unwrap();
    let second = s.save(Priority::Normal);
    s.update(|p| p.coins = 3).await.unwrap();
    let third = s.save(Priority::Normal);
    let (a, b, c) = (first.await.unwrap(), second.await.unwrap(), third.await.unwrap());
    assert_eq!(a.revision, 2);
    // The two later saves were folded into one write of the newest state.
    assert_eq!(b.revision, 3);
    assert_eq!(c.revision, 3);
    assert_eq!(stored_json(&backend, "profiles", "frank")["coins"], 3);
}

#[actix_rt::test]
async fn a_before_save_hook_that_grows_the_document_past_the_limit_fails_the_save_and_writes_nothing() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let mut c = config(&backend, "a");
    c.max_document_bytes = 200;
    let ds = datastorer::Datastorer::start(c).await.unwrap();
    let spec = datastorer::StoreSpec::new(template()).before_save(|p: &mut Profile| {
        if p.coins == 7 {
            p.items = vec!["x".repeat(300)];
        }
    });
    let s = ds.store("profiles", spec).unwrap().open("big").await.unwrap();
    let before = backend.raw_get(&datastorer::storage::storage_key("profiles", "big")).unwrap();
    s.update(|p| p.coins = 7).await.unwrap();
    match s.save(Priority::Normal).await {
        Err(Error::DocumentTooLarge { at, limit, .. }) => assert_eq!((at.key.as_str(), limit), ("big", 200)),
        other => panic!("expected DocumentTooLarge, got {other:?}"),
    }
    assert_eq!(backend.raw_get(&datastorer::storage::storage_key("profiles", "big")).unwrap(), before);
    let failures: std::collections::HashMap<_, _> = ds.save_failures().into_iter().collect();
    assert_eq!(failures[&datastorer::SaveFailureReason::TooLarge], 1, "counted for /metrics");
    // The session never closed: once the hook leaves the document alone, it saves.
    s.update(|p| {
        p.items.clear();
        p.coins = 1;
    })
    .await
    .unwrap();
    s.save(Priority::Normal).await.unwrap();
}

#[actix_rt::test]
async fn reopening_while_a_release_is_on_the_wire_waits_for_it() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let s = store.open("k").await.unwrap();
    s.update(|p| p.coins = 31).await.unwrap();
    // Slow the release down with two transient failures.
    backend.fail_next(datastorer::storage::memory::OpKind::Write, None, 2, datastorer::ErrorKind::Transient);
    let releasing = {
        let s = s.clone();
        actix_rt::spawn(async move { s.release(Priority::Normal).await })
    };
    tokio::task::yield_now().await;
    let again = store.open("k").await.unwrap();
    releasing.await.unwrap().unwrap();
    assert_eq!(s.close_reason(), Some(CloseReason::Released));
    assert_eq!(again.read(|p| p.coins).await.unwrap(), 31, "the new session sees the released state");
    assert_eq!(again.lease().await.unwrap().epoch, 2);
}

/// Opens `key` from a task on `arbiter`; answers the session and that thread.
async fn open_on(
    arbiter: &actix::Arbiter,
    store: &datastorer::Store<Profile>,
    key: &str,
) -> (Session<Profile>, std::thread::ThreadId) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (store, key) = (store.clone(), key.to_owned());
    arbiter.spawn(async move {
        let session = store.open(key).await.unwrap();
        let _ = tx.send((session, std::thread::current().id()));
    });
    rx.await.unwrap()
}

#[actix_rt::test]
async fn keys_run_on_the_engine_arbiter_or_with_keys_on_caller_arbiter_where_they_were_opened() {
    let here = std::thread::current().id();
    let worker = actix::Arbiter::new();
    for on_caller in [false, true] {
        let backend = Arc::new(MemoryBackend::new());
        let mut cfg = config(&backend, "a");
        cfg.keys_on_caller_arbiter = on_caller;
        let ds = Datastorer::start(cfg).await.unwrap();
        let store = profiles(&ds);
        let (session, worker_thread) = open_on(&worker, &store, "w").await;
        assert_ne!(worker_thread, here);
        let ran_on = session
            .update(|p| {
                p.coins = 3;
                std::thread::current().id()
            })
            .await
            .unwrap();
        assert_eq!(ran_on, if on_caller { worker_thread } else { here }, "keys_on_caller_arbiter = {on_caller}");
        // Shutdown reaches the key on the worker's arbiter like any other.
        let report = ds.shutdown().await;
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.release.released, 1);
        let rec = stored(&backend, "profiles", "w").unwrap();
        assert!(rec.lease.is_none());
        assert_eq!(stored_json(&backend, "profiles", "w")["coins"], 3);
    }
    worker.stop();
}

/// Regression: a forced delete of a key this instance holds left its
/// session open on a copy of a record that no longer existed; its next
/// write failed, and at shutdown it was reported as a key that could not
/// be saved (the server then exited 1). The session now ends at once, with
/// reason `Deleted`, and the shutdown is clean.
#[actix_rt::test]
async fn a_forced_delete_ends_the_local_session_at_once() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let s = store.open("gone").await.unwrap();
    s.update(|p| p.coins = 5).await.unwrap();
    assert!(matches!(store.delete("gone", false).await, Err(Error::LeaseHeld { .. })), "refused without force");
    assert!(store.delete("gone", true).await.unwrap(), "a record existed");
    assert_eq!(s.close_reason(), Some(CloseReason::Deleted));
    assert!(!store.is_loaded("gone"));
    assert!(stored(&backend, "profiles", "gone").is_none(), "nothing wrote it back");
    assert!(matches!(s.update(|p| p.coins = 6).await, Err(Error::SessionClosed { reason: CloseReason::Deleted, .. })));
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
}

#[actix_rt::test]
async fn a_change_that_could_never_be_saved_is_refused_and_the_document_restored() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let mut c = config(&backend, "a");
    c.max_document_bytes = 200;
    let ds = Datastorer::start(c).await.unwrap();
    let s = profiles(&ds).open("big").await.unwrap();
    s.update(|p| p.coins = 3).await.unwrap();

    let r = s.update(|p| p.items = vec!["x".repeat(300)]).await;
    match r {
        Err(Error::DocumentTooLarge { limit, at, .. }) => assert_eq!((limit, at.key.as_str()), (200, "big")),
        other => panic!("expected DocumentTooLarge, got {other:?}"),
    }
    // The refused change is gone; the one before it is still there and saves.
    let doc = s.get().await.unwrap();
    assert_eq!((doc.coins, doc.items.len()), (3, 0));
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "big")["coins"], 3);
    assert!(ds.save_failures().iter().all(|(_, n)| *n == 0), "nothing failed to save");
}

#[actix_rt::test]
async fn a_save_that_fails_before_reaching_storage_is_counted_by_reason() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let spec = datastorer::StoreSpec::new(template()).before_save(|p: &mut Profile| {
        if p.coins == 13 {
            panic!("unlucky");
        }
    });
    let s = ds.store("hooked", spec).unwrap().open("k").await.unwrap();
    s.update(|p| p.coins = 13).await.unwrap();
    assert!(matches!(s.save(Priority::Normal).await, Err(Error::Panicked { .. })));
    let failures: std::collections::HashMap<_, _> = ds.save_failures().into_iter().collect();
    assert_eq!(failures[&datastorer::SaveFailureReason::BeforeSaveHook], 1);
    // The change is still in memory, and saves once the hook lets it.
    s.update(|p| p.coins = 14).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "hooked", "k")["coins"], 14);
}

#[actix_rt::test]
async fn epochs_of_a_key_never_go_back_across_a_delete() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    for _ in 0..3 {
        store.open("k").await.unwrap().release(Priority::Normal).await.unwrap();
    }
    let before = stored(&backend, "profiles", "k").unwrap().header.epoch;
    assert_eq!(before, 3);
    assert!(store.delete("k", false).await.unwrap());
    let again = store.open("k").await.unwrap();
    let after = again.lease().await.unwrap().epoch;
    assert!(after > before, "a recreated record starts above the deleted one's epoch: {after} after {before}");
    // Another key of the store created later starts above the floor too.
    let other = store.open("fresh").await.unwrap();
    assert!(other.lease().await.unwrap().epoch > before);
}

#[actix_rt::test]
async fn on_a_backend_no_other_process_writes_the_epoch_floor_is_read_once_per_store() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    for key in ["a", "b", "c"] {
        store.open(key).await.unwrap().release(Priority::Normal).await.unwrap();
    }
    let floor_key = datastorer::storage::epoch_floor_key("profiles");
    let reads = |b: &MemoryBackend| {
        b.log().iter().filter(|(op, k)| *op == datastorer::storage::memory::OpKind::Get && *k == floor_key).count()
    };
    assert_eq!(reads(&backend), 1, "three keys created, the floor read once");
    // A delete raises the kept floor too: the next key starts above it.
    assert!(store.delete("c", false).await.unwrap());
    let d = store.open("d").await.unwrap();
    assert!(d.lease().await.unwrap().epoch > 1);
    assert_eq!(reads(&backend), 2, "read again only by the delete's compare-and-swap");
}

/// Regression (issue 22, write-path audit 1): a release that reached a key
/// actor while a close (which drops unsaved changes) was under way joined
/// the close and was answered as saved. It is refused now.
#[actix_rt::test]
async fn a_release_arriving_during_a_close_is_not_answered_as_saved() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let s = store.open("k").await.unwrap();
    s.update(|p| p.coins = 99).await.unwrap();
    let (closed, released) = tokio::join!(s.close(), s.release(Priority::Normal));
    closed.unwrap();
    assert!(matches!(released, Err(Error::SessionClosed { .. })), "{released:?}");
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 0, "the close dropped the change, as a close does");
}

/// A session that another process deleted by force learns it at its next
/// write, or at once when asked (`check_lease`: one read), as a client's
/// resume asks.
#[actix_rt::test]
async fn a_lease_check_ends_a_session_whose_record_another_process_deleted() {
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "a").await, node(&backend, "b").await);
    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.coins = 3).await.unwrap();
    held.save(Priority::Normal).await.unwrap();
    held.check_lease().await.expect("still ours: nothing ends");
    assert!(held.close_reason().is_none());
    assert!(profiles(&b).delete("k", true).await.unwrap());
    assert!(held.close_reason().is_none(), "another process's delete is not heard by itself");
    let e = held.check_lease().await.unwrap_err();
    assert!(matches!(e, Error::SessionClosed { reason: CloseReason::Deleted, .. }), "{e:?}");
    assert_eq!(held.close_reason(), Some(CloseReason::Deleted));
    assert!(stored(&backend, "profiles", "k").is_none(), "the check wrote nothing back");
}

/// Serializations of [`Counted`] documents, process-wide (only the test
/// below serializes one).
static SERIALIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A document that counts how often it is serialized.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
struct Counted {
    coins: u64,
}

impl serde::Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        SERIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut st = s.serialize_struct("Counted", 1)?;
        st.serialize_field("coins", &self.coins)?;
        st.end()
    }
}

#[actix_rt::test]
async fn a_change_is_serialized_once_for_its_size_check_its_answer_and_its_save() {
    use std::sync::atomic::Ordering::SeqCst;
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds.store("counted", datastorer::StoreSpec::new(Counted { coins: 0 })).unwrap();
    let s = store.open("k").await.unwrap();

    let before = SERIALIZED.load(SeqCst);
    let ((), encoded) = s.update_encoded(|d| d.coins = 7).await.unwrap();
    assert_eq!(&encoded[..], br#"{"coins":7}"#, "the answer is the document after the change");
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(SERIALIZED.load(SeqCst) - before, 1, "check, answer and save share one encoding");
    assert_eq!(
        stored(&backend, "counted", "k").unwrap().data,
        encoded.to_vec(),
        "the bytes saved are the bytes answered"
    );

    // Each change is checked when made; the save writes the last one's bytes.
    let before = SERIALIZED.load(SeqCst);
    s.update(|d| d.coins = 8).await.unwrap();
    s.update(|d| d.coins = 9).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(SERIALIZED.load(SeqCst) - before, 2);
    assert_eq!(stored_json(&backend, "counted", "k")["coins"], 9);

    // A change that panics half-way leaves no stale encoding behind: the
    // next save encodes the document as it is.
    let failed = s
        .update(|d| {
            d.coins = 1000;
            panic!("half-way");
        })
        .await;
    assert!(matches!(failed, Err(Error::Panicked { .. })), "{failed:?}");
    s.update(|d| d.coins += 1).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "counted", "k")["coins"], 10);
}

#[actix_rt::test]
async fn a_change_sink_hears_each_durable_save_of_a_key_in_order() {
    use datastorer::storage::NoticeKind;
    use std::sync::Mutex;
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    // The only listener: saves must still announce themselves.
    ds.on_change(move |n| {
        if n.store == "profiles" && n.key == "alice" {
            sink.lock().unwrap().push(n.kind.clone());
        }
    });
    let s = profiles(&ds).open("alice").await.unwrap();
    let mut revisions = Vec::new();
    for coins in 1..=3 {
        s.update(move |p| p.coins = coins).await.unwrap();
        revisions.push(s.save(Priority::Normal).await.unwrap().revision);
    }
    let released = s.release(Priority::Normal).await.unwrap().revision;
    let heard = heard.lock().unwrap().clone();
    let saved: Vec<u64> = heard
        .iter()
        .filter_map(|k| match k {
            NoticeKind::Saved { revision } => Some(*revision),
            _ => None,
        })
        .collect();
    // Every durable save was heard by the time its receipt resolved, in order.
    assert!(revisions.iter().all(|r| saved.contains(r)), "saves {revisions:?}, heard {heard:?}");
    assert!(saved.windows(2).all(|w| w[0] < w[1]), "in order: {saved:?}");
    assert!(
        matches!(heard.last(), Some(NoticeKind::Released { revision, .. }) if *revision == released),
        "the release comes last: {heard:?}"
    );
}
