//! One-shot updates of a key nobody holds (`Store::update_unleased`):
//! fenced like a session, conditional on a stored version, serialized
//! against each other, refused while a session holds the key.

use std::sync::Arc;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::{Error, Expect, StoreSpec};
use serde_json::{json, Value};

#[actix_rt::test]
async fn a_one_shot_update_creates_or_changes_the_record_and_leaves_no_session_or_lease() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let first = store
        .update_unleased("gift", Expect::Anything, |p| {
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
    let second = store.update_unleased("gift", Expect::Anything, |p| p.coins += 5).await.unwrap();
    assert!(second.revision > first.revision && second.epoch > first.epoch);
    let doc = stored_json(&backend, "profiles", "gift");
    assert_eq!((doc["coins"].clone(), doc["items"].clone()), (5.into(), serde_json::json!(["sword"])));
}

#[actix_rt::test]
async fn a_conditional_update_applies_only_to_the_version_it_read() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    store.update_unleased("k", Expect::Anything, |p| p.coins = 1).await.unwrap();
    let read = stored(&backend, "profiles", "k").unwrap().header;
    store.update_unleased("k", Expect::Version(read), |p| p.coins = 2).await.unwrap();
    let e = store.update_unleased("k", Expect::Version(read), |p| p.coins = 99).await.unwrap_err();
    assert!(matches!(e, Error::PreconditionFailed { .. }), "{e:?}");
    let e = store.update_unleased("absent", Expect::Version(read), |p| p.coins = 99).await.unwrap_err();
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
        let e = profiles(ds).update_unleased("k", Expect::Anything, |p| p.coins = 0).await.unwrap_err();
        assert!(matches!(e, Error::LeaseHeld { .. }), "{e:?}");
    }
    assert_eq!(session.read(|p| p.coins).await.unwrap(), 7, "the holder's session is untouched");
    session.release(datastorer::Priority::Normal).await.unwrap();
    profiles(&b).update_unleased("k", Expect::Anything, |p| p.coins += 1).await.unwrap();
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
            actix_rt::spawn(async move { store.update_unleased("counter", Expect::Anything, |p| p.coins += 1).await })
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
    store.update_unleased("k", Expect::Anything, |p| p.coins = 4).await.unwrap();
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
    profiles(&a).update_unleased("k", Expect::Anything, |p| p.coins = 1).await.unwrap();
    let cache = profiles(&a).read_cache(std::time::Duration::from_secs(60));
    assert_eq!(cache.get("k").await.unwrap().map(|p| p.coins), Some(1));
    let gets = backend.stats().gets;
    assert_eq!(cache.get("k").await.unwrap().map(|p| p.coins), Some(1));
    assert_eq!(backend.stats().gets, gets, "a fresh entry costs no read");

    // Another process changes the key: its notice drops the entry.
    profiles(&b).update_unleased("k", Expect::Anything, |p| p.coins = 2).await.unwrap();
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

/// Regression (issue 22, create race): a one-shot write conditioned on
/// the key not existing yet (`Expect::Absent`, HTTP's `If-None-Match: *`)
/// used to be a plain write, so two writers that both saw "absent" both
/// wrote, and the first acknowledged increment was overwritten. Eight
/// writers read-modify-write one counter that does not exist yet; the
/// final count equals the acknowledged writes.
#[actix_rt::test]
async fn create_only_and_if_match_writers_racing_on_a_new_key_lose_no_acknowledged_write() {
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "a").await, node(&backend, "b").await);
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = profiles(if i % 2 == 0 { &a } else { &b });
            actix_rt::spawn(async move {
                let mut acknowledged = 0u32;
                while acknowledged < 15 {
                    let expect = match store.inspect("counter").await.unwrap() {
                        None => Expect::Absent,
                        Some(r) => Expect::Version(r.header),
                    };
                    match store.update_unleased("counter", expect, |p| p.coins += 1).await {
                        Ok(_) => acknowledged += 1,
                        Err(Error::PreconditionFailed { .. } | Error::LeaseHeld { .. }) => {
                            tokio::task::yield_now().await
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = 0;
    for w in writers {
        acknowledged += w.await.unwrap();
    }
    assert_eq!(stored_json(&backend, "profiles", "counter")["coins"], acknowledged);
}

#[actix_rt::test]
async fn create_only_refuses_an_existing_record_and_changes_nothing() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let made = store.update_unleased("k", Expect::Absent, |p| p.coins = 5).await.unwrap();
    assert_eq!((made.epoch, made.revision), (1, 2), "created at epoch 1, released at revision 2");
    let before = stored(&backend, "profiles", "k").unwrap().header;
    let e = store.update_unleased("k", Expect::Absent, |p| p.coins = 1_000).await.unwrap_err();
    assert!(matches!(e, Error::PreconditionFailed { .. }), "{e:?}");
    assert_eq!(stored(&backend, "profiles", "k").unwrap().header, before, "a refused create writes nothing");
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 5);
}

#[actix_rt::test]
async fn a_conditional_delete_deletes_only_the_version_it_names() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    store.update_unleased("k", Expect::Anything, |p| p.coins = 1).await.unwrap();
    let old = stored(&backend, "profiles", "k").unwrap().header;
    store.update_unleased("k", Expect::Anything, |p| p.coins = 2).await.unwrap();
    let e = store.delete_if("k", Expect::Version(old), false).await.unwrap_err();
    assert!(matches!(e, Error::PreconditionFailed { .. }), "{e:?}");
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 2, "a refused delete keeps the record");
    let e = store.delete_if("k", Expect::Absent, false).await.unwrap_err();
    assert!(matches!(e, Error::PreconditionFailed { .. }), "{e:?}");
    let now = stored(&backend, "profiles", "k").unwrap().header;
    assert!(store.delete_if("k", Expect::Version(now), false).await.unwrap());
    assert!(stored(&backend, "profiles", "k").is_none());
    assert!(!store.delete_if("k", Expect::Absent, false).await.unwrap(), "nothing stored, nothing deleted");
}

/// Regression (issue 22, write-path audit 1): a one-shot write arriving
/// while a session of the same key was still opening joined that
/// session's key actor: both wrote under one epoch, the one-shot's release
/// ended the session, and the session's later save overwrote the
/// acknowledged one-shot. Now neither joins the other's actor. Over many
/// keys: every acknowledged one-shot is in the final record (or a session
/// that opened after it saw it), the two never share an epoch, and a
/// session that opened is alive for its first write.
#[actix_rt::test]
async fn a_one_shot_and_a_session_opening_at_once_never_share_an_actor_or_an_epoch() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    for i in 0..100 {
        let key = format!("k{i}");
        let (s1, s2) = (store.clone(), store.clone());
        let (k1, k2) = (key.clone(), key.clone());
        let session = actix_rt::spawn(async move {
            let session = s1
                .open(k1)
                .policy(datastorer::AcquirePolicy::Wait { timeout: std::time::Duration::from_secs(10) })
                .await?;
            let epoch = session.lease().await?.epoch;
            let saw = session.read(|p| p.coins).await?;
            session.update(|p| p.items.push("session".into())).await?;
            let saved = session.release(datastorer::Priority::Normal).await?;
            Ok::<_, Error>((epoch, saw, saved.revision))
        });
        let one_shot = actix_rt::spawn(async move { s2.update_unleased(k2, Expect::Anything, |p| p.coins += 1).await });
        let session = session.await.unwrap();
        let one_shot = one_shot.await.unwrap();
        let (epoch, saw, _) = session.unwrap_or_else(|e| panic!("{key}: an opened session must stay usable: {e:?}"));
        let doc = stored_json(&backend, "profiles", &key);
        assert_eq!(doc["items"], serde_json::json!(["session"]), "{key}: the session's release is stored");
        match one_shot {
            Ok(u) => {
                assert_ne!(u.epoch, epoch, "{key}: a one-shot and a session shared epoch {epoch}");
                assert_eq!(doc["coins"], 1, "{key}: the acknowledged one-shot is stored");
                if u.epoch < epoch {
                    assert_eq!(saw, 1, "{key}: a session opened after the one-shot sees it");
                }
            }
            Err(Error::LeaseHeld { .. }) => assert_eq!(doc["coins"], 0, "{key}: a refused one-shot wrote nothing"),
            Err(e) => panic!("{key}: {e:?}"),
        }
    }
}

/// A one-shot that also sets the record's metadata and user ids (Roblox's
/// `SetAsync` with user ids and metadata): all three land in the one write
/// (and its version), the user-id index finds the key, and ids taken away
/// leave the record.
#[actix_rt::test]
async fn a_one_shot_sets_metadata_and_user_ids_with_the_document_in_one_write() {
    let cluster = datastorer::testing::Cluster::start(1).await;
    let store = cluster.node(0).store("rec", StoreSpec::new(json!({"coins": 0}))).unwrap();
    let first = store
        .update_unleased_record("k", Expect::Absent, |doc, parts| {
            doc["coins"] = json!(5);
            parts.metadata = json!({"tier": "gold"});
            parts.user_ids = vec!["7".into(), "8".into()];
        })
        .await
        .unwrap();
    let rec = cluster.stored("rec", "k").unwrap();
    assert_eq!(rec.header.revision, first.revision);
    assert_eq!(serde_json::from_slice::<Value>(&rec.metadata).unwrap(), json!({"tier": "gold"}));
    assert_eq!(rec.user_ids, vec!["7".to_owned(), "8".to_owned()]);
    let found = cluster.node(0).user_records("8").await.unwrap();
    assert_eq!(found.len(), 1, "the index knows the key");
    let newest = store.versions("k", &datastorer::VersionQuery::default()).await.unwrap().versions;
    assert_eq!(newest[0].user_ids, vec!["7".to_owned(), "8".to_owned()], "the version carries them too");
    // The transform sees what is stored, and what it drops goes.
    let seen = store
        .update_unleased_record("k", Expect::Version(rec.header), |_, parts| {
            let seen = parts.clone();
            parts.user_ids.retain(|u| u != "7");
            seen
        })
        .await
        .unwrap();
    assert_eq!(seen.value.metadata, json!({"tier": "gold"}));
    assert_eq!(cluster.stored("rec", "k").unwrap().user_ids, vec!["8".to_owned()]);
    // Held by a session: refused, nothing written.
    let s = store.open("k").await.unwrap();
    let refused = store.update_unleased_record("k", Expect::Anything, |_, p| p.user_ids.clear()).await;
    assert!(matches!(refused, Err(Error::LeaseHeld { .. })), "{refused:?}");
    s.release(datastorer::Priority::Normal).await.unwrap();
    assert_eq!(cluster.stored("rec", "k").unwrap().user_ids, vec!["8".to_owned()]);
}
