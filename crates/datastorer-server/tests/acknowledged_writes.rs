//! Acknowledged means kept, over HTTP: every write the server answered as
//! done is in the stored record, whichever write path it took and whatever
//! raced it. Each test fires the racing requests at once over many keys
//! and compares the final records with every acknowledgement, on sled
//! (one server) and on PostgreSQL (two server processes on one database).

mod common;

use std::sync::Arc;

use common::pg::PgSchema;
use common::server::{call, key_url, open, token_of, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

/// One sessionless read-modify-write of a counter as a careful client
/// does it: read; create with `If-None-Match: *` when absent, else replace
/// with `If-Match`. Answers whether it was acknowledged.
async fn increment(c: &Client, s: &Server, key: &str) -> bool {
    let url = s.url(&key_url("counters", key));
    let r = c.get(&url).send().await.unwrap();
    let (n, condition) = match r.status() {
        StatusCode::NOT_FOUND => (0, ("If-None-Match", "*".to_owned())),
        StatusCode::OK => {
            let tag = r.headers()["etag"].to_str().unwrap().to_owned();
            let v: Value = r.json().await.unwrap();
            // A record a one-shot is creating right now holds the template
            // (`{}`) until that one-shot's save: its write then fails here.
            (v["data"]["n"].as_u64().unwrap_or(0), ("If-Match", tag))
        }
        other => panic!("read: {other}"),
    };
    let r = c.put(&url).header(condition.0, condition.1).json(&json!({ "n": n + 1 })).send().await.unwrap();
    match r.status() {
        StatusCode::OK => true,
        StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => false,
        other => panic!("write: {other} {}", r.text().await.unwrap()),
    }
}

/// Eight clients incrementing one counter that does not exist yet, spread
/// over `servers`: the final value is the number of acknowledged writes.
async fn create_race(servers: &[Arc<Server>], key: &str) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = servers[i % servers.len()].clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let c = Client::new();
                let mut acknowledged = 0u64;
                while acknowledged < 15 {
                    if increment(&c, &s, &key).await {
                        acknowledged += 1;
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await.unwrap();
    }
    let (st, v) = call(&Client::new(), &servers[0], Method::GET, &key_url("counters", key), None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["n"], acknowledged, "every acknowledged increment is stored");
}

#[tokio::test]
async fn create_only_writers_racing_on_a_new_key_lose_no_acknowledged_write_on_sled() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Arc::new(Server::start(tmp.path(), &[]));
    for round in 0..3 {
        create_race(std::slice::from_ref(&s), &format!("c{round}")).await;
    }
}

#[tokio::test]
async fn create_only_writers_racing_across_two_servers_on_postgres_lose_no_acknowledged_write() {
    let Some(pg) = PgSchema::new("create_only_writers_racing_across_two_servers") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = Arc::new(Server::start_pg(&tmp.path().join("a"), &pg.url, &pg.schema, &["--owner-id", "srv-a"]));
    let b = Arc::new(Server::start_pg(&tmp.path().join("b"), &pg.url, &pg.schema, &["--owner-id", "srv-b"]));
    for round in 0..2 {
        create_race(&[a.clone(), b.clone()], &format!("c{round}")).await;
    }
    // One server alone on PostgreSQL, too.
    create_race(std::slice::from_ref(&a), "solo").await;
}

#[tokio::test]
async fn write_conditions_are_honoured_and_unsupported_ones_refused_never_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let url = s.url(&key_url("profiles", "cnt"));
    let r = c.put(&url).header("If-None-Match", "*").json(&json!({"n": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "create-only on an absent key creates");
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    for method in [Method::PUT, Method::PATCH] {
        let r = c.request(method.clone(), &url).header("If-None-Match", "*").json(&json!({"n": -1})).send().await;
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "{method}: create-only on an existing record");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "precondition_failed");
    }
    let r = c.put(&url).header("If-None-Match", tag.as_str()).json(&json!({"n": -1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "If-None-Match naming the current version");
    for header in ["If-Unmodified-Since", "If-Modified-Since", "If-Range"] {
        let r =
            c.put(&url).header(header, "Sun, 06 Dec 2026 00:00:00 GMT").json(&json!({"n": -1})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{header} on a write");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unsupported_condition");
        let r = c.delete(&url).header(header, "Sun, 06 Dec 2026 00:00:00 GMT").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{header} on a delete");
    }
    let r = c.post(format!("{url}/messages")).header("If-Match", tag.as_str()).json(&json!("hi")).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::BAD_REQUEST, "a message post takes no condition");
    let (_, v) = call(&c, &s, Method::GET, &key_url("profiles", "cnt"), None, None).await;
    assert_eq!(v["data"], json!({"n": 1}), "no refused write changed the record");

    // A conditional delete: a stale version is refused, the current one deletes.
    let r = c.put(&url).json(&json!({"n": 2})).send().await.unwrap();
    let current = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = c.delete(&url).header("If-Match", tag.as_str()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "a delete of a version that is gone");
    let r = c.delete(&url).header("If-Match", current.as_str()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Regression (issue 22, write-path audit 1): a session open and a
/// sessionless PATCH of the same fresh key, fired at once, used to share
/// one engine session: the PATCH was acknowledged and then overwritten,
/// and most such opens answered 200 with a session that was already dead.
/// Now the PATCH is either refused (the session holds the key) or
/// acknowledged and seen by the session; the session lives to write.
async fn session_and_one_shot_race(s: &Arc<Server>, keys: usize) {
    let c = Client::new();
    let tasks: Vec<_> = (0..keys)
        .map(|i| {
            let (s, c) = (s.clone(), c.clone());
            tokio::spawn(async move {
                let key = format!("fresh{i}");
                let body = json!({"policy": "wait", "timeout_ms": 10000, "client_id": "c1"});
                let url = s.url(&key_url("players", &key));
                let (opened, patched) = tokio::join!(
                    open(&c, &s, "players", &key, body),
                    c.patch(&url).json(&json!({"oneshot": i})).send()
                );
                let patched = patched.unwrap().status();
                let (st, v) = opened;
                assert_eq!(st, StatusCode::OK, "{key}: a waiting open must wait, not fail: {v}");
                let t = token_of(&v);
                let mut doc = v["data"].clone();
                doc["session"] = json!(true);
                let path = format!("{}/session/data?save=normal", key_url("players", &key));
                let (st, w) = call(&c, &s, Method::PUT, &path, Some(&t), Some(doc)).await;
                assert_eq!(st, StatusCode::OK, "{key}: an opened session must be alive at its first write: {w}");
                let (st, _) =
                    call(&c, &s, Method::DELETE, &format!("{}/session", key_url("players", &key)), Some(&t), None)
                        .await;
                assert_eq!(st, StatusCode::OK);
                let (_, stored) = call(&c, &s, Method::GET, &key_url("players", &key), None, None).await;
                assert_eq!(stored["data"]["session"], true, "{key}: the session's save is stored");
                match patched {
                    StatusCode::OK => {
                        assert_eq!(stored["data"]["oneshot"], i, "{key}: the acknowledged PATCH is stored")
                    }
                    StatusCode::CONFLICT => {}
                    other => panic!("{key}: PATCH answered {other}"),
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_session_and_a_one_shot_of_one_key_never_share_an_engine_session_on_sled() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Arc::new(Server::start(tmp.path(), &["--workers", "4"]));
    session_and_one_shot_race(&s, 100).await;
}

#[tokio::test]
async fn a_session_and_a_one_shot_of_one_key_never_share_an_engine_session_on_postgres() {
    let Some(pg) = PgSchema::new("a_session_and_a_one_shot_of_one_key_never_share") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = Arc::new(Server::start_pg(&tmp.path().join("a"), &pg.url, &pg.schema, &["--owner-id", "srv-a"]));
    session_and_one_shot_race(&s, 60).await;
}

/// Regression (issue 22, write-path audit 2): while another open of a
/// held key was being decided (the same client resuming, or another
/// client refused), the holder's session was taken out of the table and
/// its valid requests were answered `409 invalid_lease_token`, which a
/// client takes for a lost session. The holder is served throughout.
#[tokio::test]
async fn a_holders_requests_are_served_while_other_opens_of_its_key_are_decided() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Arc::new(Server::start(tmp.path(), &["--workers", "4"]));
    let c = Client::new();
    let (st, v) = open(&c, &s, "players", "held", json!({"client_id": "holder"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let token = token_of(&v);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let contenders: Vec<_> = [json!({"client_id": "holder", "user_ids": ["u1"]}), json!({"client_id": "other"})]
        .into_iter()
        .map(|body| {
            let (s, c, stop) = (s.clone(), c.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (st, v) = open(&c, &s, "players", "held", body.clone()).await;
                    assert!(st == StatusCode::OK || v["code"] == "lease_held", "{st} {v}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let path = format!("{}/session/data", key_url("players", "held"));
    for i in 0..1500 {
        let (st, v) = call(&c, &s, Method::PATCH, &path, Some(&token), Some(json!({ "i": i }))).await;
        assert_eq!(st, StatusCode::OK, "request {i} of the holder: {v}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in contenders {
        assert!(t.await.unwrap() > 0, "the contending opens ran");
    }
}

/// A client resuming its session (its open's answer was lost) after
/// another server deleted the key by force: the server it asks has not
/// heard yet, so it reads the record back before answering. The client
/// gets a fresh session on the new record, never a dead one that fails
/// at its first write.
#[tokio::test]
async fn a_resume_after_another_server_deleted_the_key_opens_afresh() {
    let Some(pg) = PgSchema::new("a_resume_after_another_server_deleted_the_key") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = Server::start_pg(&tmp.path().join("a"), &pg.url, &pg.schema, &["--owner-id", "srv-a"]);
    let b = Server::start_pg(&tmp.path().join("b"), &pg.url, &pg.schema, &["--owner-id", "srv-b"]);
    let c = Client::new();
    let body = json!({"client_id": "game-1"});
    let (st, first) = open(&c, &a, "profiles", "k", body.clone()).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    let token = first["lease_token"].as_str().unwrap().to_owned();
    let data = format!("{}/session/data?save=normal", key_url("profiles", "k"));
    let (st, v) = call(&c, &a, Method::PUT, &data, Some(&token), Some(json!({"coins": 7}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = call(&c, &b, Method::DELETE, &format!("{}?force=true", key_url("profiles", "k")), None, None).await;
    assert_eq!((st, v["deleted"].clone()), (StatusCode::OK, json!(true)), "{v}");
    let (st, again) = open(&c, &a, "profiles", "k", body).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_ne!(again["resumed"], json!(true), "the deleted session is not handed back: {again}");
    assert!(again["epoch"].as_u64() > first["epoch"].as_u64(), "a new session: {again}");
    assert_eq!(again["data"], json!({}), "the record was deleted: {again}");
    let token = again["lease_token"].as_str().unwrap().to_owned();
    let (st, v) = call(&c, &a, Method::PUT, &data, Some(&token), Some(json!({"coins": 1}))).await;
    assert_eq!(st, StatusCode::OK, "the new session writes: {v}");
}
