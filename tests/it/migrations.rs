//! Migrations over the untyped document and reconcile from the template.

use std::sync::Arc;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::storage::{storage_key, Record, RecordHeader};
use datastorer::{Error, Migration, Priority, StoreSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct V3 {
    gold: u64,
    display_name: String,
    inventory: Vec<String>,
    settings: Settings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    music: bool,
    volume: u8,
}

fn v3_template() -> V3 {
    V3 { gold: 0, display_name: "anon".into(), inventory: vec![], settings: Settings { music: true, volume: 50 } }
}

/// v0 `{coins, name}` → v1 renames coins→gold → v2 renames name→display_name
/// → v3 doubles gold. v0 records do not deserialize into `V3` at all.
fn spec() -> StoreSpec<V3> {
    StoreSpec::new(v3_template())
        .migration(Migration::new("rename coins to gold", |mut v: Value| {
            let o = v.as_object_mut().ok_or("not an object")?;
            let coins = o.remove("coins").unwrap_or(json!(0));
            o.insert("gold".into(), coins);
            Ok(v)
        }))
        .migration(Migration::new("rename name to display_name", |mut v: Value| {
            let o = v.as_object_mut().ok_or("not an object")?;
            if let Some(n) = o.remove("name") {
                o.insert("display_name".into(), n);
            }
            Ok(v)
        }))
        .migration(Migration::new("double gold", |mut v: Value| {
            let g = v["gold"].as_u64().ok_or("gold is not a number")?;
            v["gold"] = json!(g * 2);
            Ok(v)
        }))
}

fn plant(backend: &MemoryBackend, key: &str, data_version: u32, data: Value, metadata: Value) -> Vec<u8> {
    let rec = Record {
        header: RecordHeader { epoch: 3, revision: 7 },
        data_version,
        data: serde_json::to_vec(&data).unwrap(),
        metadata: serde_json::to_vec(&metadata).unwrap(),
        user_ids: vec!["1".into()],
        lease: None,
        created_at_ms: 1,
        updated_at_ms: 2,
    };
    let bytes = rec.encode();
    backend.raw_put(&storage_key("players", key), &bytes);
    bytes
}

#[actix_rt::test]
async fn an_old_record_is_migrated_step_by_step_and_reconciled() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds.store("players", spec().metadata_template(json!({"banned": false, "tier": "free"}))).unwrap();
    plant(&backend, "old", 0, json!({"coins": 21, "name": "Ada", "extra": "kept"}), json!({"tier": "gold"}));

    let s = store.open("old").await.unwrap();
    let doc = s.get().await.unwrap();
    assert_eq!(doc.gold, 42, "renamed then doubled");
    assert_eq!(doc.display_name, "Ada");
    assert_eq!(doc.inventory, Vec::<String>::new(), "filled from the template");
    assert_eq!(doc.settings, Settings { music: true, volume: 50 });
    assert_eq!(
        s.metadata().await.unwrap(),
        json!({"tier": "gold", "banned": false}),
        "metadata reconciled, values kept"
    );

    // The lease write stored the migrated document at the latest version.
    let rec = Record::decode(&backend.raw_get(&storage_key("players", "old")).unwrap()).unwrap();
    assert_eq!(rec.data_version, 3);
    assert_eq!(rec.header.epoch, 4);
    assert_eq!(rec.created_at_ms, 1, "creation time survives");
    assert_eq!(rec.user_ids, vec!["1".to_string()]);
}

#[actix_rt::test]
async fn a_record_midway_runs_only_the_remaining_steps_and_nested_fields_reconcile() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds.store("players", spec()).unwrap();
    plant(
        &backend,
        "mid",
        2,
        json!({"gold": 5, "display_name": "Bo", "inventory": ["axe"], "settings": {"music": false}}),
        json!({}),
    );
    let doc = store.open("mid").await.unwrap().get().await.unwrap();
    assert_eq!(doc.gold, 10, "only step 3 ran");
    assert_eq!(doc.inventory, vec!["axe".to_string()]);
    assert_eq!(doc.settings, Settings { music: false, volume: 50 }, "nested field filled, stored one kept");
}

#[actix_rt::test]
async fn new_records_start_at_the_latest_data_version() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds.store("players", spec()).unwrap();
    let s = store.open("fresh").await.unwrap();
    assert_eq!(s.get().await.unwrap(), v3_template(), "template untouched by migrations");
    s.release(Priority::Normal).await.unwrap();
    let rec = Record::decode(&backend.raw_get(&storage_key("players", "fresh")).unwrap()).unwrap();
    assert_eq!(rec.data_version, 3);
}

#[actix_rt::test]
async fn a_failing_or_panicking_migration_fails_the_open_and_leaves_the_record_untouched() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds.store("players", spec()).unwrap();
    let before = plant(&backend, "bad", 2, json!({"gold": "lots", "display_name": "x"}), json!({}));
    match store.open("bad").await {
        Err(Error::Migration { from_version, message, at, .. }) => {
            assert_eq!(from_version, 2);
            assert_eq!(at.key, "bad");
            assert!(message.contains("double gold") && message.contains("not a number"), "{message}");
        }
        other => panic!("expected Migration error, got {other:?}"),
    }
    assert_eq!(backend.raw_get(&storage_key("players", "bad")).unwrap(), before);
    assert!(!store.is_loaded("bad"));

    let panicky = ds
        .store("panicky", StoreSpec::new(v3_template()).migration(Migration::new("explodes", |_| panic!("kaboom"))))
        .unwrap();
    let rec = Record::decode(&before).unwrap();
    backend.raw_put(&storage_key("panicky", "p"), &Record { data_version: 0, ..rec }.encode());
    let err = panicky.open("p").await.unwrap_err();
    assert!(matches!(&err, Error::Migration { message, .. } if message.contains("kaboom")), "{err:?}");
}

#[actix_rt::test]
async fn a_record_from_a_newer_build_is_refused_not_downgraded() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds.store("players", spec()).unwrap();
    let before = plant(&backend, "future", 9, json!({"gold": 1}), json!({}));
    let err = store.open("future").await.unwrap_err();
    assert!(matches!(&err, Error::Migration { message, .. } if message.contains("newer")), "{err:?}");
    assert_eq!(backend.raw_get(&storage_key("players", "future")).unwrap(), before);
}

#[actix_rt::test]
async fn a_document_that_does_not_fit_the_type_is_a_typed_error_and_kept() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds.store("players", spec()).unwrap();
    let before = plant(&backend, "odd", 3, json!({"gold": -4, "display_name": "x"}), json!({}));
    let err = store.open("odd").await.unwrap_err();
    assert!(matches!(err, Error::Deserialize { ref at, .. } if at.key == "odd"), "{err:?}");
    assert_eq!(backend.raw_get(&storage_key("players", "odd")).unwrap(), before);
}

#[actix_rt::test]
async fn after_load_runs_once_loaded_and_its_changes_are_saved() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = ds
        .store(
            "hooked",
            StoreSpec::new(template())
                .after_load(|p: &mut Profile| p.items.push("daily-bonus".into()))
                .before_save(|p: &mut Profile| p.name = p.name.to_uppercase()),
        )
        .unwrap();
    let s = store.open("h").await.unwrap();
    assert_eq!(s.read(|p| p.items.clone()).await.unwrap(), vec!["daily-bonus".to_string()]);
    s.release(Priority::Normal).await.unwrap();
    let saved = stored_json(&backend, "hooked", "h");
    assert_eq!(saved["items"], json!(["daily-bonus"]));
    assert_eq!(saved["name"], "NEW PLAYER", "before-save ran");

    // A panicking after-load hook fails the open and clears the lease.
    let bad =
        ds.store("bad-hook", StoreSpec::new(template()).after_load(|_p: &mut Profile| panic!("hook bug"))).unwrap();
    let err = bad.open("x").await.unwrap_err();
    assert!(matches!(err, Error::Panicked { what: "after-load hook", .. }), "{err:?}");
    // The open fails only once the lease it took is cleared again.
    let rec = stored(&backend, "bad-hook", "x").unwrap();
    assert!(rec.lease.is_none(), "lease cleared before the failed open returned");
    assert!(!bad.is_loaded("x"));
}

/// Bulk migration: every record nobody holds is brought to the newest
/// data version (conditional on what it read), a held one is left to its
/// holder, a record whose migration fails is reported and kept, and a
/// second run does only what is left.
#[actix_rt::test]
async fn a_bulk_migration_brings_every_record_to_the_newest_version_and_runs_again_idempotently() {
    use datastorer::testing::Cluster;
    let cluster = Cluster::start(2).await;
    let old = cluster.node(0).store("bulk", StoreSpec::new(json!({"coins": 0}))).unwrap();
    for (i, coins) in [1, 2, 3, -1].iter().enumerate() {
        old.update_unleased(format!("k{i}"), datastorer::Expect::Anything, move |d| d["coins"] = json!(coins))
            .await
            .unwrap();
    }
    let step = Migration::new("coins to gold", |mut d: Value| {
        let coins = d["coins"].as_i64().ok_or("no coins")?;
        if coins < 0 {
            return Err("negative coins cannot become gold".to_owned());
        }
        d["gold"] = json!(coins * 10);
        Ok(d)
    });
    let new = cluster.node(1).store("bulk", StoreSpec::new(json!({"coins": 0, "gold": 0})).migration(step)).unwrap();
    // k1 is held by a server still on the old code: left to it.
    let held = old.open("k1").await.unwrap();
    // k0 was opened once on the new code: its open wrote it migrated.
    new.open("k0").await.unwrap().release(Priority::Normal).await.unwrap();

    let report = new.migrate_all().await.unwrap();
    assert_eq!(report.to_version, 1);
    assert_eq!(
        (report.examined, report.migrated, report.current, report.held, report.failed),
        (4, 1, 1, 1, 1),
        "{report:?}"
    );
    assert_eq!(report.failures[0].key, "k3");
    assert!(report.failures[0].error.contains("negative"), "{:?}", report.failures);
    for (key, gold) in [("k0", 10), ("k2", 30)] {
        let rec = cluster.stored("bulk", key).unwrap();
        assert_eq!(rec.data_version, 1, "{key} migrated");
        assert_eq!(serde_json::from_slice::<Value>(&rec.data).unwrap()["gold"], json!(gold));
        assert!(rec.lease.is_none(), "{key}: the lease given back");
    }
    assert_eq!(cluster.stored("bulk", "k3").unwrap().data_version, 0, "a failed record is kept as it is");

    // Again, after the holder let go: only what is left.
    held.release(Priority::Normal).await.unwrap();
    let again = new.migrate_all().await.unwrap();
    assert_eq!((again.migrated, again.current, again.held, again.failed), (1, 2, 0, 1), "{again:?}");
    let third = new.migrate_all().await.unwrap();
    assert_eq!((third.migrated, third.current), (0, 3), "idempotent");
}
