//! Version history by guarantee: every acknowledged save is a version and
//! nothing else is; a delete leaves a tombstone; listings page and filter;
//! retention prunes what it no longer keeps and nothing it keeps; a restore
//! is a new revision under a new epoch that fences every earlier holder,
//! whose unsaved change is saved first where it can be.

use std::time::Duration;

use datastorer::testing::Cluster;
use datastorer::{
    AcquirePolicy, CloseReason, Error, Expect, Priority, RestoreTarget, Retention, StoreSpec, VersionOrder,
    VersionQuery,
};
use serde_json::{json, Value};

fn spec() -> StoreSpec<Value> {
    StoreSpec::new(json!({"coins": 0, "purchases": []}))
}

fn oldest_first(limit: usize) -> VersionQuery {
    VersionQuery { order: VersionOrder::OldestFirst, limit, ..VersionQuery::default() }
}

#[actix_rt::test]
async fn every_acknowledged_save_is_a_version_and_renewals_are_not() {
    tokio::time::pause();
    let cluster = Cluster::start(1).await;
    let store = cluster.node(0).store("p", spec()).unwrap();
    let s = store.open("k").await.unwrap();
    let mut revisions = vec![s.lease().await.unwrap().revision];
    for coins in 1..=5 {
        s.update(move |d| d["coins"] = json!(coins)).await.unwrap();
        revisions.push(s.save(Priority::Normal).await.unwrap().revision);
    }
    // A save with nothing changed and renewals leave no version.
    s.save(Priority::Normal).await.unwrap();
    cluster.advance(Duration::from_secs(60)).await;
    cluster.autosave_now().await;
    s.release(Priority::Normal).await.unwrap();

    let page = store.versions("k", &oldest_first(100)).await.unwrap();
    let listed: Vec<u64> = page.versions.iter().map(|v| v.revision).collect();
    assert_eq!(listed, revisions, "the create and each save, nothing else");
    assert!(page.next.is_none());
    for (i, v) in page.versions.iter().enumerate() {
        let full = store.version("k", v.id()).await.unwrap();
        assert_eq!(full.data.unwrap()["coins"], json!(i), "version {} holds what that save wrote", v.version);
        assert!(!v.deleted);
    }
    // Newest first, paged by the cursor.
    let first = store.versions("k", &VersionQuery { limit: 4, ..VersionQuery::default() }).await.unwrap();
    assert_eq!(first.versions.iter().map(|v| v.revision).collect::<Vec<_>>(), vec![6, 5, 4, 3]);
    let cursor = datastorer::parse_version_id(first.next.as_deref().unwrap()).unwrap();
    let rest =
        store.versions("k", &VersionQuery { limit: 4, after: Some(cursor), ..VersionQuery::default() }).await.unwrap();
    assert_eq!(rest.versions.iter().map(|v| v.revision).collect::<Vec<_>>(), vec![2, 1]);
    assert!(rest.next.is_none());
}

#[actix_rt::test]
async fn one_shot_updates_leave_versions_and_a_delete_leaves_a_tombstone_that_restores() {
    tokio::time::pause();
    let cluster = Cluster::start(1).await;
    let store = cluster.node(0).store("p", spec()).unwrap();
    store.update_unleased("k", Expect::Anything, |d| d["coins"] = json!(7)).await.unwrap();
    let before_delete = cluster.node(0).now_ms();
    cluster.advance(Duration::from_secs(1)).await;
    assert!(store.delete("k", false).await.unwrap());

    let page = store.versions("k", &VersionQuery::default()).await.unwrap();
    let newest = &page.versions[0];
    assert!(newest.deleted, "the newest version is the delete's tombstone: {newest:?}");
    assert_eq!(newest.size, 0);
    let at_delete = store.version_at("k", cluster.node(0).now_ms()).await.unwrap();
    assert!(at_delete.data.is_none(), "read as of now: deleted");
    let before = store.version_at("k", before_delete).await.unwrap();
    assert_eq!(before.data.unwrap()["coins"], json!(7));

    let restored = store.restore("k", RestoreTarget::At(before_delete), &[], Duration::from_secs(1)).await.unwrap();
    assert_eq!(restored.holder, "none");
    let rec = cluster.stored("p", "k").unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&rec.data).unwrap()["coins"], json!(7));
    assert!(rec.header.epoch > newest.epoch, "a restored key never reuses an epoch: {:?} vs {newest:?}", rec.header);
    assert!(rec.lease.is_none());
    // And the restore is itself a version; history was not rewritten.
    let after = store.versions("k", &VersionQuery::default()).await.unwrap();
    assert_eq!(after.versions.len(), page.versions.len() + 1);
    assert_eq!(after.versions[0].version, restored.version.unwrap());
}

#[actix_rt::test]
async fn a_store_without_versions_keeps_none() {
    let cluster = Cluster::start(1).await;
    let store = cluster.node(0).store("p", spec().retention(Retention::off())).unwrap();
    store.update_unleased("k", Expect::Anything, |d| d["coins"] = json!(1)).await.unwrap();
    assert!(store.versions("k", &VersionQuery::default()).await.unwrap().versions.is_empty());
    let restore = store.restore("k", RestoreTarget::At(u64::MAX), &[], Duration::from_secs(1)).await;
    assert!(matches!(restore, Err(Error::VersionNotFound { .. })), "{restore:?}");
}

#[actix_rt::test]
async fn a_restore_saves_the_local_holders_change_then_fences_it_and_keeps_chosen_parts() {
    let cluster = Cluster::start(1).await;
    let store = cluster.node(0).store("p", spec()).unwrap();
    let s = store.open("k").await.unwrap();
    s.update(|d| d["coins"] = json!(100)).await.unwrap();
    let good = s.save(Priority::Normal).await.unwrap().revision;
    let epoch = s.lease().await.unwrap().epoch;
    // An exploit wrecks the coins; a purchase happens after it.
    s.update(|d| d["coins"] = json!(999_999)).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    s.update(|d| d["purchases"] = json!(["sword"])).await.unwrap(); // unsaved

    let target = datastorer::storage::RecordHeader { epoch, revision: good };
    let restored = store
        .restore("k", RestoreTarget::Version(target), &["/purchases".into()], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(restored.holder, "released");
    assert_eq!(s.closed().await, CloseReason::Restored);
    assert!(matches!(s.update(|d| d["coins"] = json!(0)).await, Err(Error::SessionClosed { .. })));

    cluster.assert_stored("p", "k", &json!({"coins": 100, "purchases": ["sword"]}));
    let rec = cluster.stored("p", "k").unwrap();
    assert_eq!(rec.header.epoch, epoch + 1, "the restore lands under a new epoch");
    // The holder's unsaved purchase was saved as a version before the restore.
    let versions = store.versions("k", &VersionQuery::default()).await.unwrap().versions;
    let holders_last = store.version("k", versions[1].id()).await.unwrap();
    assert_eq!(holders_last.data.unwrap(), json!({"coins": 999_999, "purchases": ["sword"]}));
}

#[actix_rt::test]
async fn a_restore_hands_over_from_a_holder_on_another_node() {
    tokio::time::pause();
    let cluster = Cluster::start(2).await;
    let admin = cluster.node(0).store("p", spec()).unwrap();
    let game = cluster.node(1).store("p", spec()).unwrap();
    let s = game.open("k").await.unwrap();
    s.update(|d| d["coins"] = json!(5)).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    let t = cluster.node(1).now_ms();
    cluster.advance(Duration::from_secs(1)).await;
    s.update(|d| d["coins"] = json!(6)).await.unwrap(); // unsaved: saved by the hand-over

    let restored = admin.restore("k", RestoreTarget::At(t), &[], Duration::from_secs(5)).await.unwrap();
    assert_eq!(restored.holder, "released");
    assert_eq!(s.closed().await, CloseReason::Restored);
    cluster.assert_stored("p", "k", &json!({"coins": 5, "purchases": []}));
    let newest_first = admin.versions("k", &VersionQuery::default()).await.unwrap().versions;
    assert_eq!(admin.version("k", newest_first[1].id()).await.unwrap().data.unwrap()["coins"], json!(6));
    // The key opens again normally after it.
    let again = game.open("k").policy(AcquirePolicy::Fail).await.unwrap();
    assert_eq!(again.read(|d| d["coins"].clone()).await.unwrap(), json!(5));
}

#[actix_rt::test]
async fn a_holder_that_does_not_answer_is_fenced_and_can_never_write_over_the_restore() {
    tokio::time::pause();
    let mut cluster = Cluster::start(2).await;
    let admin = cluster.node(0).store("p", spec()).unwrap();
    let game = cluster.node(1).store("p", spec()).unwrap();
    let s = game.open("k").await.unwrap();
    s.update(|d| d["coins"] = json!(5)).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    let t = cluster.node(1).now_ms();
    cluster.advance(Duration::from_secs(1)).await;
    s.update(|d| d["coins"] = json!(6)).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    // The game server is gone, its lease still live.
    cluster.crash(1).await;
    let restored = admin.restore("k", RestoreTarget::At(t), &[], Duration::from_secs(2)).await.unwrap();
    assert_eq!(restored.holder, "fenced");
    cluster.assert_stored("p", "k", &json!({"coins": 5, "purchases": []}));
    assert!(cluster.stored("p", "k").unwrap().lease.is_none());
    // The old holder, back under its owner id, gets the restored record.
    cluster.restart(1).await;
    let game = cluster.node(1).store("p", spec()).unwrap();
    let again = game.open("k").policy(AcquirePolicy::Fail).await.unwrap();
    assert_eq!(again.read(|d| d["coins"].clone()).await.unwrap(), json!(5));
}

#[actix_rt::test]
async fn pruning_keeps_the_window_the_last_of_each_hour_and_the_newest_n() {
    tokio::time::pause();
    let cluster = Cluster::start_with(1, |_, c| c.prune_interval = None).await;
    let retention = Retention {
        keep_all_for: Duration::from_secs(3600),
        horizon: Duration::from_secs(10 * 3600),
        keep_newest: 2,
        ..Retention::default()
    };
    let store = cluster.node(0).store("p", spec().retention(retention)).unwrap();
    // Twelve hours of saves, four per hour, on two keys.
    for _ in 0..12 * 4 {
        for key in ["a", "b"] {
            store
                .update_unleased(key, Expect::Anything, |d| d["coins"] = json!(d["coins"].as_i64().unwrap() + 1))
                .await
                .unwrap();
        }
        cluster.advance(Duration::from_secs(15 * 60)).await;
    }
    let before = store.versions("a", &oldest_first(1000)).await.unwrap().versions;
    // A one-shot create keeps one version, with the value it wrote (not
    // also the template it created the record with).
    assert_eq!(before.len(), 48, "48 writes, the first of them the create");
    assert_eq!(before[0].revision, 2, "the create's version is its write's");
    let report = store.prune_versions().await.unwrap();
    assert_eq!(report.keys, 2);
    assert_eq!(report.examined, 96);
    let after = store.versions("a", &oldest_first(1000)).await.unwrap().versions;
    let now = cluster.node(0).now_ms();
    let hour = 3_600_000;
    for v in &before {
        let age = now - v.saved_at_ms;
        let kept = after.iter().any(|a| a.version == v.version);
        let last_of_hour =
            !before.iter().any(|o| o.saved_at_ms > v.saved_at_ms && o.saved_at_ms / hour == v.saved_at_ms / hour);
        let newest = before.iter().rev().take(2).any(|o| o.version == v.version);
        let expected = newest || age <= hour || (age <= 10 * hour && last_of_hour);
        assert_eq!(kept, expected, "version {} saved {age} ms ago", v.version);
    }
    assert_eq!(report.pruned as usize, 2 * (before.len() - after.len()));
    // A second pass finds nothing more to do.
    assert_eq!(store.prune_versions().await.unwrap().pruned, 0);
    // The newest version is still the current record.
    assert_eq!(after.last().unwrap().id(), cluster.stored_header("p", "a").unwrap());
}

fn coins(cluster: &Cluster, key: &str) -> Option<Value> {
    cluster.stored("p", key).map(|r| serde_json::from_slice::<Value>(&r.data).unwrap()["coins"].clone())
}

#[actix_rt::test]
async fn a_store_goes_back_to_a_point_in_time_lists_it_dry_resumes_and_undoes() {
    use datastorer::storage::storage_key;
    use datastorer::testing::{ErrorKind, OpKind};
    tokio::time::pause();
    let cluster = Cluster::start(1).await;
    let store = cluster.node(0).store("p", spec()).unwrap();
    for (key, n) in [("a", 1), ("b", 2), ("c", 3), ("e", 5)] {
        store.update_unleased(key, Expect::Anything, move |d| d["coins"] = json!(n)).await.unwrap();
    }
    cluster.advance(Duration::from_secs(60)).await;
    let t = cluster.node(0).now_ms();
    cluster.advance(Duration::from_secs(60)).await;
    // After T: a changes (and is held, with an unsaved change), b is
    // deleted, d is created, e changes; c stays.
    let held = store.open("a").await.unwrap();
    held.update(|d| d["coins"] = json!(10)).await.unwrap();
    held.save(Priority::Normal).await.unwrap();
    held.update(|d| d["coins"] = json!(11)).await.unwrap();
    store.delete("b", false).await.unwrap();
    store.update_unleased("d", Expect::Anything, |d| d["coins"] = json!(4)).await.unwrap();
    store.update_unleased("e", Expect::Anything, |d| d["coins"] = json!(50)).await.unwrap();
    cluster.advance(Duration::from_secs(60)).await;

    let dry = store.restore_to(t, true, Duration::from_secs(5)).await.unwrap();
    let listed: Vec<(&str, &str)> = dry.changes.iter().map(|c| (c.key.as_str(), c.action)).collect();
    assert_eq!(listed, vec![("a", "restore"), ("b", "restore"), ("d", "delete"), ("e", "restore")]);
    assert_eq!((dry.unchanged, dry.keys), (1, 5));
    assert_eq!(coins(&cluster, "d"), Some(json!(4)), "a dry run writes nothing");
    assert!(held.read(|d| d["coins"].clone()).await.is_ok(), "the holder is untouched by a dry run");

    // Interrupted half-way (e's write fails for good), then run again.
    let e_key = storage_key("p", "e");
    cluster.backend().fail_next(OpKind::Write, Some(&e_key), 100, ErrorKind::Permanent);
    assert!(store.restore_to(t, false, Duration::from_secs(5)).await.is_err());
    cluster.backend().clear_faults();
    assert_eq!(held.closed().await, CloseReason::Restored);
    let a_versions = store.versions("a", &VersionQuery::default()).await.unwrap().versions.len();
    let done = store.restore_to(t, false, Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.resumed_after.as_deref(), Some("d"), "resumed after the last key done");
    assert_eq!((done.restored, done.deleted), (1, 0), "only e was left: {done:?}");
    assert_eq!(
        store.versions("a", &VersionQuery::default()).await.unwrap().versions.len(),
        a_versions,
        "a was not done twice"
    );
    for (key, n) in [("a", 1), ("b", 2), ("c", 3), ("e", 5)] {
        assert_eq!(coins(&cluster, key), Some(json!(n)), "{key} as at T");
    }
    assert!(cluster.stored("p", "d").is_none(), "created after T: deleted (a tombstone kept)");
    // Nothing left to do.
    let again = store.restore_to(t, false, Duration::from_secs(5)).await.unwrap();
    assert_eq!((again.restored, again.deleted, again.resumed_after.clone()), (0, 0, None));

    // Undone by restoring to just before it began.
    cluster.advance(Duration::from_secs(60)).await;
    assert_eq!(done.undo_at_ms, dry.undo_at_ms, "the resumed run is the same restore");
    let undo = store.restore_to(done.undo_at_ms, false, Duration::from_secs(5)).await.unwrap();
    assert!(undo.restored >= 3, "{undo:?}");
    // The holder's unsaved 11 was saved by its hand-over, after the
    // restore began: what stood before it is its last save.
    assert_eq!(coins(&cluster, "a"), Some(json!(10)));
    assert_eq!(coins(&cluster, "d"), Some(json!(4)));
    assert_eq!(coins(&cluster, "e"), Some(json!(50)));
    assert!(cluster.stored("p", "b").is_none());
}
