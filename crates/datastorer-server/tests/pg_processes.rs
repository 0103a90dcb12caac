//! Several OS processes on one PostgreSQL database: real `datastorer
//! serve` processes, driven over HTTP. What crosses processes here is what
//! a deployment relies on: a request that reaches the wrong server is told
//! where to go, hand-offs carry the holder's unsaved changes, every
//! server's change feed shows every server's saves, and a `kill -9` loses
//! no acknowledged save while its keys move on within the lease TTL.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgSchema;
use common::server::{call, event_data, key_url, open, read_feed_until, token_of, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

fn server(pg: &PgSchema, dir: &std::path::Path, name: &str, args: &[&str]) -> Server {
    let mut all = vec!["--owner-id", name, "--lease-ttl-secs", "4", "--autosave-interval-secs", "1"];
    all.extend_from_slice(args);
    Server::start_pg(&dir.join(name), &pg.url, &pg.schema, &all)
}

#[tokio::test]
async fn a_request_for_a_session_on_another_server_is_told_where_to_go() {
    let Some(pg) = PgSchema::new("a_request_for_a_session_on_another_server_is_told_where_to_go") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = server(&pg, tmp.path(), "srv-a", &["--advertise-url", "http://a.internal:7070"]);
    let b = server(&pg, tmp.path(), "srv-b", &[]);
    let c = Client::new();
    let k = key_url("profiles", "p1");
    let (st, v) = open(&c, &a, "profiles", "p1", json!({"client_id": "game-1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let t = token_of(&v);
    let (st, _) = call(&c, &a, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 5}))).await;
    assert_eq!(st, StatusCode::OK);

    // The same token at the other server: not "invalid", but "go there".
    for (method, path) in [(Method::GET, "/session"), (Method::PUT, "/session/data"), (Method::POST, "/session/save")] {
        let (st, v) = call(&c, &b, method, &format!("{k}{path}"), Some(&t), Some(json!({"coins": 6}))).await;
        assert_eq!(st, StatusCode::MISDIRECTED_REQUEST, "{path}: {v}");
        assert_eq!(v["code"], "wrong_server");
        assert_eq!(v["holder"], "srv-a");
        assert_eq!(v["advertise_url"], "http://a.internal:7070");
    }
    // A client that moved may take the key over on the other server: the
    // holder saves its unsaved change and lets go.
    let (st, v) = open(
        &c,
        &b,
        "profiles",
        "p1",
        json!({"client_id": "game-2", "policy": "request_release", "timeout_ms": 10000}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"], json!({"coins": 5}), "the holder's unsaved change travelled with the key");
    assert_eq!(v["epoch"], 2);
    let (st, _) = call(&c, &a, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 7}))).await;
    assert_ne!(st, StatusCode::OK, "the old session can no longer write");
}

#[tokio::test]
async fn every_server_change_feed_shows_saves_made_through_another() {
    let Some(pg) = PgSchema::new("every_server_change_feed_shows_saves_made_through_another") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = server(&pg, tmp.path(), "srv-a", &[]);
    let b = server(&pg, tmp.path(), "srv-b", &[]);
    let c = Client::new();
    let mut feed = c.get(b.url("/v1/changes?store=profiles")).send().await.unwrap();
    assert!(String::from_utf8_lossy(&feed.chunk().await.unwrap().unwrap()).contains("connected"));

    let k = key_url("profiles", "fed");
    let (_, v) = open(&c, &a, "profiles", "fed", json!({})).await;
    let t = token_of(&v);
    let (_, saved) =
        call(&c, &a, Method::PUT, &format!("{k}/session/data?save=normal"), Some(&t), Some(json!({"n": 1}))).await;
    call(&c, &a, Method::POST, &format!("{k}/session/release"), Some(&t), None).await;

    let text = read_feed_until(&mut feed, &["saved", "released"]).await;
    let mut save = event_data(&text, "saved");
    assert!(save["seq"].is_u64(), "{save}");
    save.as_object_mut().unwrap().remove("seq");
    assert_eq!(save, json!({"store": "profiles", "key": "fed", "revision": saved["revision"], "kind": "saved"}));
}

#[tokio::test]
async fn a_message_posted_through_one_server_reaches_the_holder_on_another() {
    let Some(pg) = PgSchema::new("a_message_posted_through_one_server_reaches_the_holder_on_another") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = server(&pg, tmp.path(), "srv-a", &[]);
    let b = server(&pg, tmp.path(), "srv-b", &[]);
    let c = Client::new();
    let k = key_url("profiles", "gifted");
    let (_, v) = open(&c, &a, "profiles", "gifted", json!({"client_id": "game-1"})).await;
    let t = token_of(&v);
    let (_, page) = call(&c, &a, Method::GET, "/v1/changes/poll?client_id=game-1", None, None).await;
    let after = page["next"].as_u64().unwrap();

    let (st, v) = call(&c, &b, Method::POST, &format!("{k}/messages"), None, Some(json!({"gift": "sword"}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let poll = format!("/v1/changes/poll?client_id=game-1&after={after}&wait_ms=15000");
    let (_, page) = call(&c, &a, Method::GET, &poll, None, None).await;
    assert_eq!(page["events"][0]["kind"], "messages", "the holder's server heard the other's post: {page}");
    let (_, v) = call(&c, &a, Method::GET, &format!("{k}/session/messages"), Some(&t), None).await;
    assert_eq!(v["messages"][0]["message"], json!({"gift": "sword"}));
}

/// A process holding 1,000 keys, every one with an acknowledged save, is
/// killed with SIGKILL. Restarted under its owner id, it takes back the
/// half it wants at once (the leases are its own); another server takes the
/// other half as soon as the leases lapse, within TTL + one poll. Every
/// key holds exactly its last acknowledged save.
#[tokio::test]
async fn kill_9_loses_no_acknowledged_save_and_the_keys_move_on_within_the_ttl() {
    let Some(pg) = PgSchema::new("kill_9_loses_no_acknowledged_save") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut a = server(&pg, tmp.path(), "srv-a", &[]);
    let c = Client::new();
    const KEYS: usize = 1000;
    for i in 0..KEYS {
        let key = format!("k{i}");
        let (st, v) = open(&c, &a, "profiles", &key, json!({"client_id": "game-a"})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let path = format!("{}/session/data?save=normal", key_url("profiles", &key));
        let (st, v) = call(&c, &a, Method::PUT, &path, Some(&token_of(&v)), Some(json!({"n": i}))).await;
        assert_eq!((st, v["durable"].clone()), (StatusCode::OK, json!(true)), "{v}");
    }
    a.kill();
    let killed_at = Instant::now();
    let a2 = server(&pg, tmp.path(), "srv-a", &[]);
    let b = server(&pg, tmp.path(), "srv-b", &[]);

    for i in KEYS / 2..KEYS {
        let (st, v) =
            open(&c, &a2, "profiles", &format!("k{i}"), json!({"client_id": "game-a", "policy": "fail"})).await;
        assert_eq!(st, StatusCode::OK, "k{i}: the restarted owner takes its own lease back at once: {v}");
        assert_eq!(v["data"], json!({"n": i}));
    }
    let mut last_taken = Duration::ZERO;
    for i in 0..KEYS / 2 {
        let (st, v) = open(
            &c,
            &b,
            "profiles",
            &format!("k{i}"),
            json!({"client_id": "game-b", "policy": "wait", "timeout_ms": 20000}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "k{i}: {v}");
        assert_eq!(v["data"], json!({"n": i}), "k{i} holds its last acknowledged save");
        last_taken = killed_at.elapsed();
    }
    // TTL 4 s + one poll (1 s) + slack for a loaded machine.
    assert!(last_taken < Duration::from_secs(12), "took {last_taken:?}");
    eprintln!("takeover of {} keys after kill -9: {last_taken:?}", KEYS / 2);
}

/// Two servers contend for the same keys with every policy. The database
/// history (a trigger logs every committed row version, in commit order
/// per key) shows epochs never going back, one owner per epoch, and no
/// write by an owner after its epoch was superseded.
#[tokio::test]
async fn contention_across_servers_keeps_one_owner_per_epoch() {
    let Some(pg) = PgSchema::new("contention_across_servers_keeps_one_owner_per_epoch") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = server(&pg, tmp.path(), "srv-a", &[]);
    let b = server(&pg, tmp.path(), "srv-b", &[]);
    pg.sql(
        "CREATE TABLE $S.history (seq bigserial PRIMARY KEY, key text, epoch bigint, revision bigint, owner text);
         CREATE FUNCTION $S.log_history() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO $S.history (key, epoch, revision, owner) VALUES (NEW.key, NEW.epoch, NEW.revision, NEW.lease_owner);
         RETURN NULL; END $$;
         CREATE TRIGGER log_history AFTER INSERT OR UPDATE ON $S.records FOR EACH ROW EXECUTE FUNCTION $S.log_history();",
    );
    let policies = ["fail", "wait", "request_release", "steal"];
    let mut tasks = Vec::new();
    for (side, srv) in [("a", a.base.clone()), ("b", b.base.clone())] {
        tasks.push(tokio::spawn(async move {
            let c = Client::new();
            let mut rng = common::Rng(if side == "a" { 7 } else { 11 });
            let mut acknowledged: Vec<(String, i64)> = Vec::new();
            for step in 0..120 {
                let key = format!("hot{}", rng.below(5));
                let policy = policies[rng.below(4) as usize];
                let url = format!("{srv}{}/session", key_url("profiles", &key));
                let r = c
                    .post(&url)
                    .json(&json!({"client_id": side, "policy": policy, "timeout_ms": 2000}))
                    .send()
                    .await
                    .unwrap();
                if r.status() != StatusCode::OK {
                    continue;
                }
                let v: Value = r.json().await.unwrap();
                let t = token_of(&v);
                let value = step as i64;
                let r = c
                    .put(format!("{srv}{}/session/data?save=normal", key_url("profiles", &key)))
                    .header("Lease-Token", &t)
                    .json(&json!({"by": side, "step": value}))
                    .send()
                    .await
                    .unwrap();
                if r.status() == StatusCode::OK {
                    acknowledged.push((key.clone(), value));
                }
                let end = if rng.below(2) == 0 { "release" } else { "save" };
                let _ = c
                    .post(format!("{srv}{}/session/{end}", key_url("profiles", &key)))
                    .header("Lease-Token", &t)
                    .send()
                    .await;
            }
            acknowledged
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap().len();
    }
    assert!(acked > 0, "some saves went through");
    // Epochs never go back per key, and each epoch has one owner.
    let bad_order = pg.sql(
        "SELECT count(*)::text FROM (SELECT key, epoch, lag(epoch) OVER (PARTITION BY key ORDER BY seq) AS prev FROM $S.history) h
          WHERE epoch < prev",
    );
    assert_eq!(bad_order, vec![Some("0".to_owned())], "an epoch went back");
    let two_owners = pg.sql(
        "SELECT count(*)::text FROM (SELECT key, epoch FROM $S.history WHERE owner IS NOT NULL
          GROUP BY key, epoch HAVING count(DISTINCT owner) > 1) x",
    );
    let detail = pg.sql(
        "SELECT string_agg(seq || ':' || key || ':' || epoch || ':' || revision || ':' || coalesce(owner, '-'), ' ' ORDER BY seq) FROM $S.history",
    );
    assert_eq!(two_owners, vec![Some("0".to_owned())], "two owners wrote under one epoch: {detail:?}");
    // Revisions grow by one per committed write of a key: no write was
    // lost or reordered.
    let gaps = pg.sql(
        "SELECT count(*)::text FROM (SELECT revision, lag(revision) OVER (PARTITION BY key ORDER BY seq) AS prev FROM $S.history) h
          WHERE prev IS NOT NULL AND revision <> prev + 1",
    );
    assert_eq!(gaps, vec![Some("0".to_owned())]);
}
