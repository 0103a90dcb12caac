//! Stores: identity, conflicting specifications, name and key validation,
//! listing keys.

use std::sync::Arc;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::{Config, Datastorer, Error, Migration, Priority, StoreSpec};
use serde_json::json;

#[actix_rt::test]
async fn the_same_name_returns_the_same_store() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let first = profiles(&ds);
    let s = first.open("k").await.unwrap();
    s.update(|p| p.coins = 3).await.unwrap();
    let second = profiles(&ds);
    assert!(second.is_loaded("k"), "second handle sees the first's keys");
    assert_eq!(second.get("k").unwrap().read(|p| p.coins).await.unwrap(), 3);
}

#[actix_rt::test]
async fn a_conflicting_spec_is_an_error() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    profiles(&ds);
    let other_template = Profile { coins: 1, ..template() };
    let e = ds.store("profiles", StoreSpec::new(other_template)).unwrap_err();
    assert!(matches!(e, Error::StoreConflict { ref difference, .. } if difference.contains("template")), "{e:?}");
    let e = ds.store("profiles", StoreSpec::new(template()).migration(Migration::new("m", Ok))).unwrap_err();
    assert!(matches!(e, Error::StoreConflict { ref difference, .. } if difference.contains("migrations")), "{e:?}");
    let e = ds.store("profiles", StoreSpec::new(template()).metadata_template(json!({"x": 1}))).unwrap_err();
    assert!(matches!(e, Error::StoreConflict { .. }));
    let e = ds.store("profiles", StoreSpec::new(json!({"coins": 0}))).unwrap_err();
    assert!(matches!(e, Error::StoreConflict { ref difference, .. } if difference.contains("type")), "{e:?}");
}

#[actix_rt::test]
async fn bad_store_names_and_keys_are_refused_with_a_reason() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    for bad in ["", "has space", "slash/name", "nul\0", &"x".repeat(129)] {
        let e = ds.store(bad, StoreSpec::new(template())).unwrap_err();
        assert!(matches!(e, Error::InvalidName { what: "store name", .. }), "{bad:?}: {e:?}");
    }
    let store = profiles(&ds);
    for bad in [String::new(), "tab\there".into(), "nul\0".into(), "k".repeat(513)] {
        let e = store.open(bad.clone()).await.unwrap_err();
        assert!(matches!(e, Error::InvalidName { what: "key", .. }), "{bad:?}: {e:?}");
    }
    assert_eq!(backend.stats().writes_applied, 0, "nothing written for bad input");
    // Unicode and punctuation are fine in keys.
    store.open("joueur/é:1").await.unwrap();
}

#[actix_rt::test]
async fn list_keys_pages_by_prefix_with_a_cursor() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    for k in ["p:1", "p:2", "p:3", "q:1"] {
        store.open(k).await.unwrap().release(Priority::Normal).await.unwrap();
    }
    let other = ds.store("other", StoreSpec::new(template())).unwrap();
    other.open("p:9").await.unwrap();
    assert_eq!(store.list_keys("p:", None, 2).await.unwrap(), vec!["p:1", "p:2"]);
    assert_eq!(store.list_keys("p:", Some("p:2"), 10).await.unwrap(), vec!["p:3"]);
    assert_eq!(store.list_keys("", None, 10).await.unwrap(), vec!["p:1", "p:2", "p:3", "q:1"]);
    assert_eq!(other.list_keys("", None, 10).await.unwrap(), vec!["p:9"]);
    let rec = store.inspect("p:1").await.unwrap().unwrap();
    assert!(rec.lease.is_none());
    assert!(store.inspect("nope").await.unwrap().is_none());
}

#[actix_rt::test]
async fn invalid_configuration_names_the_field() {
    let mut c = Config::memory();
    c.handle_signals = false;
    c.lease_ttl = c.autosave_interval;
    let e = Datastorer::start(c).await.unwrap_err();
    assert!(matches!(e, Error::Config(ref m) if m.contains("lease_ttl")), "{e:?}");
    let mut c = Config::memory();
    c.queue.retry.max_attempts = 0;
    let e = Datastorer::start(c).await.unwrap_err();
    assert!(matches!(e, Error::Config(ref m) if m.contains("max_attempts")), "{e:?}");
    let mut c = Config::memory();
    c.queue.budgets.write = Some(datastorer::Budget { per_second: 0.0, burst: 1.0 });
    let e = Datastorer::start(c).await.unwrap_err();
    assert!(matches!(e, Error::Config(ref m) if m.contains("budgets.write")), "{e:?}");
    let mut c = Config::memory();
    c.queue.max_batch_bytes = 0;
    let e = Datastorer::start(c).await.unwrap_err();
    assert!(matches!(e, Error::Config(ref m) if m.contains("max_batch_bytes")), "{e:?}");
}

/// What `Datastorer::store_names` must answer on any backend: stores with
/// records, by prefix, paged by the last name, without `S:inbox` stores and
/// without stores whose every record was deleted.
pub(crate) async fn store_names_list_stores_with_records(ds: &Datastorer) {
    for (store, keys) in [("alpha", 3), ("alpha-2", 1), ("beta", 600), ("gamma", 1), ("empty", 1)] {
        let s = ds.store(store, StoreSpec::new(template())).unwrap();
        for i in 0..keys {
            s.update_unleased(format!("k{i}"), datastorer::Expect::Anything, move |p: &mut Profile| p.coins = i)
                .await
                .unwrap();
        }
    }
    let s = ds.store("gamma", StoreSpec::new(template())).unwrap();
    s.post_message("k0", json!({"gift": 1})).await.unwrap();
    let empty = ds.store("empty", StoreSpec::new(template())).unwrap();
    assert!(empty.delete("k0", false).await.unwrap());
    assert_eq!(ds.store_names("", None, 10).await.unwrap(), ["alpha", "alpha-2", "beta", "gamma"]);
    assert_eq!(ds.store_names("", None, 2).await.unwrap(), ["alpha", "alpha-2"]);
    assert_eq!(ds.store_names("", Some("alpha-2"), 10).await.unwrap(), ["beta", "gamma"]);
    assert_eq!(ds.store_names("alpha", None, 10).await.unwrap(), ["alpha", "alpha-2"]);
    assert_eq!(ds.store_names("b", None, 10).await.unwrap(), ["beta"]);
    assert_eq!(ds.store_names("be", Some("beta"), 10).await.unwrap(), Vec::<String>::new());
    assert_eq!(ds.store_names("zzz", None, 10).await.unwrap(), Vec::<String>::new());
}

/// What `Datastorer::store_usage` must answer on any backend: the store's
/// records and kept versions, counted over more than one page, their bytes
/// those of the values as stored (read here through the backend's own
/// scan, values and all); other stores (one whose name extends this one's),
/// inboxes and deleted keys not counted.
pub(crate) async fn store_usage_counts_records_and_versions(ds: &Datastorer, backend: &dyn datastorer::Backend) {
    use datastorer::storage::history::versions_of_store;
    use datastorer::storage::store_prefix;
    let s = ds.store("sized", StoreSpec::new(template())).unwrap();
    let longer = ds.store("sized-2", StoreSpec::new(template())).unwrap();
    longer.update_unleased("x", datastorer::Expect::Anything, |p: &mut Profile| p.coins = 1).await.unwrap();
    // More than one page (4,096 keys), written 256 at a time.
    const KEYS: u64 = 4200;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(256) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let s = s.clone();
                actix_rt::spawn(async move {
                    s.update_unleased(format!("k{i:05}"), datastorer::Expect::Anything, move |p: &mut Profile| {
                        p.coins = i;
                        p.name = "x".repeat((i % 300) as usize);
                    })
                    .await
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
    }
    s.update_unleased("k00001", datastorer::Expect::Anything, |p: &mut Profile| p.coins += 1).await.unwrap();
    assert!(s.delete("k00002", false).await.unwrap());
    s.post_message("k00003", json!({"gift": 1})).await.unwrap();

    let usage = ds.store_usage("sized").await.unwrap();
    let records = backend.scan_prefix(&store_prefix("sized"), None, usize::MAX).unwrap();
    let versions = backend.scan_prefix(&versions_of_store("sized"), None, usize::MAX).unwrap();
    assert_eq!(usage.keys, KEYS - 1, "the deleted key is not counted");
    assert_eq!(usage.keys, records.len() as u64);
    assert_eq!(usage.bytes, records.iter().map(|(_, v)| v.len() as u64).sum::<u64>());
    // Every save kept a version, the delete a tombstone (a slow one-shot
    // create may keep one more: the template, autosaved before the update).
    assert!(usage.versions >= KEYS + 2, "{usage:?}");
    assert_eq!(usage.versions, versions.len() as u64);
    assert_eq!(usage.version_bytes, versions.iter().map(|(_, v)| v.len() as u64).sum::<u64>());
    assert!(usage.bytes > KEYS * 150, "the documents' bytes are in it: {usage:?}");

    let other = ds.store_usage("sized-2").await.unwrap();
    assert_eq!((other.keys, other.versions), (1, 1));
    assert_eq!(ds.store_usage("never-written").await.unwrap(), datastorer::StoreUsage::default());
    assert!(matches!(ds.store_usage("").await, Err(Error::InvalidName { .. })));
}

#[actix_rt::test]
async fn store_usage_on_memory() {
    let backend = Arc::new(MemoryBackend::new());
    store_usage_counts_records_and_versions(&node(&backend, "a").await, &*backend).await;
}

#[actix_rt::test]
async fn store_usage_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(datastorer::storage::sled_backend::SledBackend::open(dir.path()).unwrap());
    let mut config = Config::backend(backend.clone());
    config.handle_signals = false;
    store_usage_counts_records_and_versions(&Datastorer::start(config).await.unwrap(), &*backend).await;
}

#[actix_rt::test]
async fn store_names_on_memory() {
    let backend = Arc::new(MemoryBackend::new());
    store_names_list_stores_with_records(&node(&backend, "a").await).await;
}

#[actix_rt::test]
async fn store_names_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(datastorer::storage::sled_backend::SledBackend::open(dir.path()).unwrap());
    let mut config = Config::backend(backend);
    config.handle_signals = false;
    store_names_list_stores_with_records(&Datastorer::start(config).await.unwrap()).await;
}
