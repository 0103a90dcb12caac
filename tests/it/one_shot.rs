//! One-shot updates of a key nobody holds (`Store::update_unleased`):
//! fenced like a session, conditional on a stored version, serialized
//! against each other, refused while a session holds the key.

use std::sync::Arc;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::Error;

#[actix_rt::test]
async fn a_one_shot_update_creates_or_changes_the_record_and_leaves_no_session_or_lease() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let first = store
        .update_unleased("gift", None, |p| {
            p.items.push("sword".into());
            p.coins
        })
        .await
        .unwrap();
    assert_eq!(first.value, 0, "an absent key starts from the template");
    let rec = stored(&backend, "profiles", "gift").expect("durable when answered");
    assert_eq!((rec.header.epoch, rec.header.revision), (first.epoch, first.revision));
    assert!(rec.lease.is_none(), "the lease is given back");
    assert!(!store.is_loaded("gift"), "no session is left open");
    let second = store.update_unleased("gift", None, |p| p.coins += 5).await.unwrap();
    assert!(second.revision > first.revision && second.epoch > first.epoch);
    let doc = stored_json(&backend, "profiles", "gift");
    assert_eq!((doc["coins"].clone(), doc["items"].clone()), (5.into(), serde_json::json!(["sword"])));
}

#[actix_rt::test]
async fn a_conditional_update_applies_only_to_the_version_it_read() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    store.update_unleased("k", None, |p| p.coins = 1).await.unwrap();
    let read = stored(&backend, "profiles", "k").unwrap().header;
    store.update_unleased("k", Some(read), |p| p.coins = 2).await.unwrap();
    let e = store.update_unleased("k", Some(read), |p| p.coins = 99).await.unwrap_err();
    assert!(matches!(e, Error::PreconditionFailed { .. }), "{e:?}");
    let e = store.update_unleased("absent", Some(read), |p| p.coins = 99).await.unwrap_err();
    assert!(matches!(e, Error::PreconditionFailed { .. }), "{e:?}");
    assert!(stored(&backend, "profiles", "absent").is_none(), "a refused update writes nothing");
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 2);
}

#[actix_rt::test]
async fn a_held_key_is_refused_here_and_in_another_process() {
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "a").await, node(&backend, "b").await);
    let session = profiles(&a).open("k").await.unwrap();
    session.update(|p| p.coins = 7).await.unwrap();
    for ds in [&a, &b] {
        let e = profiles(ds).update_unleased("k", None, |p| p.coins = 0).await.unwrap_err();
        assert!(matches!(e, Error::LeaseHeld { .. }), "{e:?}");
    }
    assert_eq!(session.read(|p| p.coins).await.unwrap(), 7, "the holder's session is untouched");
    session.release(datastorer::Priority::Normal).await.unwrap();
    profiles(&b).update_unleased("k", None, |p| p.coins += 1).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 8);
}

#[actix_rt::test]
async fn concurrent_one_shot_updates_of_one_key_all_apply() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            actix_rt::spawn(async move { store.update_unleased("counter", None, |p| p.coins += 1).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(stored_json(&backend, "profiles", "counter")["coins"], 10);
}

#[actix_rt::test]
async fn a_read_loads_the_stored_document_without_a_lease() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    assert!(store.read("k").await.unwrap().is_none());
    store.update_unleased("k", None, |p| p.coins = 4).await.unwrap();
    let writes = backend.stats().writes_applied;
    assert_eq!(store.read("k").await.unwrap().map(|p| p.coins), Some(4));
    assert_eq!(backend.stats().writes_applied, writes, "a read writes nothing");
    assert!(!store.is_loaded("k") && stored(&backend, "profiles", "k").unwrap().lease.is_none());
}

#[actix_rt::test]
async fn the_read_cache_answers_from_memory_until_a_change_notice_or_its_ttl() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "a").await, node(&backend, "b").await);
    profiles(&a).update_unleased("k", None, |p| p.coins = 1).await.unwrap();
    let cache = profiles(&a).read_cache(std::time::Duration::from_secs(60));
    assert_eq!(cache.get("k").await.unwrap().map(|p| p.coins), Some(1));
    let gets = backend.stats().gets;
    assert_eq!(cache.get("k").await.unwrap().map(|p| p.coins), Some(1));
    assert_eq!(backend.stats().gets, gets, "a fresh entry costs no read");

    // Another process changes the key: its notice drops the entry.
    profiles(&b).update_unleased("k", None, |p| p.coins = 2).await.unwrap();
    for _ in 0..1000 {
        if cache.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(cache.is_empty(), "the change notice invalidated the entry");
    assert_eq!(cache.get("k").await.unwrap().map(|p| p.coins), Some(2));

    // Without a notice, the TTL bounds how old an answer may be.
    let gets = backend.stats().gets;
    tokio::time::advance(std::time::Duration::from_secs(61)).await;
    assert_eq!(cache.get("k").await.unwrap().map(|p| p.coins), Some(2));
    assert!(backend.stats().gets > gets, "an expired entry is read again");
}
