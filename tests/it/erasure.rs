//! Erasure by user id, by guarantee: the index finds every record and
//! version tagged with an id, current or past; an erasure leaves nothing
//! of it to find through any API (record, versions, inbox, index), ends
//! live sessions with `erased` (here and on another node), keeps the data
//! of records declared `Unlink` without the id, spares what others own now,
//! and is idempotent with a receipt that names no erased data.

use std::time::Duration;

use datastorer::storage::history::user_index_prefix;
use datastorer::storage::Backend;
use datastorer::testing::Cluster;
use datastorer::{CloseReason, EraseMode, Expect, Priority, StoreSpec, VersionQuery};
use serde_json::{json, Value};

fn spec() -> StoreSpec<Value> {
    StoreSpec::new(json!({"coins": 0}))
}

#[actix_rt::test]
async fn an_erasure_leaves_nothing_of_a_user_and_keeps_what_is_shared_or_owned_by_others() {
    tokio::time::pause();
    let cluster = Cluster::start(2).await;
    let profiles = cluster.node(0).store("profiles", spec()).unwrap();
    let guilds = cluster.node(0).store("guilds", spec().erase(EraseMode::Unlink)).unwrap();
    let guilds_elsewhere = cluster.node(1).store("guilds", spec().erase(EraseMode::Unlink)).unwrap();

    // p1: the user's own profile, open here with an unsaved change.
    let p1 = profiles.open("p1").user_ids(["42"]).await.unwrap();
    p1.update(|d| d["coins"] = json!(5)).await.unwrap();
    p1.save(Priority::Normal).await.unwrap();
    p1.update(|d| d["coins"] = json!(6)).await.unwrap();
    profiles.post_message("p1", json!({"gift": 1})).await.unwrap();
    // p2: once the user's, now someone else's.
    let p2 = profiles.open("p2").user_ids(["42"]).await.unwrap();
    p2.update(|d| d["coins"] = json!(1)).await.unwrap();
    p2.save(Priority::Normal).await.unwrap();
    p2.remove_user_id("42").await.unwrap();
    p2.add_user_id("43").await.unwrap();
    p2.update(|d| d["coins"] = json!(2)).await.unwrap();
    p2.release(Priority::Normal).await.unwrap();
    // g1: a guild shared with user 43, held on the other node.
    let g1 = guilds_elsewhere.open("g1").user_ids(["42", "43"]).await.unwrap();
    g1.update(|d| d["coins"] = json!(100)).await.unwrap();
    g1.save(Priority::Normal).await.unwrap();
    g1.update(|d| d["coins"] = json!(101)).await.unwrap(); // unsaved: handed over

    let found = cluster.node(0).user_records("42").await.unwrap();
    let keys: Vec<(String, String)> = found.iter().map(|r| (r.store.clone(), r.key.clone())).collect();
    assert_eq!(
        keys,
        vec![("guilds".into(), "g1".into()), ("profiles".into(), "p1".into()), ("profiles".into(), "p2".into())]
    );
    let p2_found = &found[2];
    assert!(p2_found.current.is_none(), "p2 carries the id no more");
    assert!(
        !p2_found.versions.is_empty() && p2_found.versions.iter().all(|v| v.info.user_ids.contains(&"42".to_owned()))
    );

    let receipt = cluster.node(0).erase_user("42", Duration::from_secs(5)).await.unwrap();
    assert_eq!(receipt.keys, 3);
    let p = &receipt.stores["profiles"];
    assert_eq!((p.records_deleted, p.inboxes_deleted, p.sessions_ended), (1, 1, 1));
    assert!(p.versions_deleted >= 3, "{p:?}");
    let g = &receipt.stores["guilds"];
    assert_eq!((g.records_unlinked, g.sessions_ended, g.records_deleted), (1, 1, 0));
    assert!(!serde_json::to_string(&receipt).unwrap().contains("coins"), "the receipt repeats no data");

    assert_eq!(p1.closed().await, CloseReason::Erased);
    assert_eq!(g1.closed().await, CloseReason::Erased);
    // Nothing of the user is left through any API.
    assert!(cluster.node(0).user_records("42").await.unwrap().is_empty());
    assert!(cluster.stored("profiles", "p1").is_none());
    assert!(profiles.versions("p1", &VersionQuery::default()).await.unwrap().versions.is_empty());
    assert!(cluster.stored("profiles:inbox", "p1").is_none(), "the inbox went too");
    assert!(cluster.backend().scan_prefix(&user_index_prefix("42"), None, 10).unwrap().is_empty());
    let everything = cluster.backend().scan_prefix(b"", None, usize::MAX).unwrap();
    for (k, v) in &everything {
        let as_text = String::from_utf8_lossy(v);
        assert!(
            !as_text.contains("\"42\"") && !as_text.contains("\u{2}42"),
            "{:?} still mentions the user",
            String::from_utf8_lossy(k)
        );
    }
    // p2 is user 43's now: its record stays, only the versions naming 42 went.
    let p2_now = cluster.stored("profiles", "p2").unwrap();
    assert_eq!(p2_now.user_ids, vec!["43".to_owned()]);
    assert_eq!(serde_json::from_slice::<Value>(&p2_now.data).unwrap()["coins"], json!(2));
    // The guild keeps its data (the holder's last change included) without the id.
    let guild = cluster.stored("guilds", "g1").unwrap();
    assert_eq!(guild.user_ids, vec!["43".to_owned()]);
    assert_eq!(serde_json::from_slice::<Value>(&guild.data).unwrap()["coins"], json!(101));
    let guild_versions = guilds.versions("g1", &VersionQuery::default()).await.unwrap().versions;
    assert!(guild_versions.iter().all(|v| v.user_ids == ["43"]), "{guild_versions:?}");

    // Idempotent.
    let again = cluster.node(0).erase_user("42", Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.keys, 0);
    assert_ne!(again.id, receipt.id);
    // And the key starts afresh above every epoch it had.
    let fresh = profiles.update_unleased("p1", Expect::Absent, |d| d["coins"] = json!(0)).await.unwrap();
    assert!(fresh.epoch > 1);
}

#[actix_rt::test]
async fn user_ids_are_checked_and_a_store_without_versions_is_still_indexed() {
    let cluster = Cluster::start(1).await;
    let plain = cluster.node(0).store("plain", spec().retention(datastorer::Retention::off())).unwrap();
    let s = plain.open("k").user_ids(["7"]).await.unwrap();
    s.update(|d| d["coins"] = json!(1)).await.unwrap();
    s.release(Priority::Normal).await.unwrap();
    let found = cluster.node(0).user_records("7").await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].current.is_some() && found[0].versions.is_empty());
    for bad in ["", "a\u{0}b", &"x".repeat(129)] {
        assert!(cluster.node(0).user_records(bad).await.is_err(), "{bad:?}");
        assert!(cluster.node(0).erase_user(bad, Duration::from_secs(1)).await.is_err());
    }
}
