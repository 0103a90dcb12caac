//! The standalone server, driven over HTTP: inside the test process on a
//! free loopback port, or as the real `datastorer serve` process where the
//! test is about the process (signals, THP, its log).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{call, event_data, key_url, open, read_feed_until, token_of, Server, BIN};

use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, Record};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn a_whole_session_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "42");

    let (st, v) = open(&c, &s, "profiles", "42", json!({"client_id": "game-1", "user_ids": [42, "steam:7"]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"], json!({}), "undeclared store: empty-object template");
    assert_eq!(v["epoch"], 1);
    assert_eq!(v["user_ids"], json!(["42", "steam:7"]));
    let t = token_of(&v);
    assert_eq!(t.len(), 48, "owner tag, boot and 128 random bits, in hex");

    let (st, v) =
        call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 1, "bag": {"a": 1}})))
            .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let resp = c
        .patch(s.url(&format!("{k}/session/data")))
        .header("Lease-Token", &t)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"coins": 5, "bag": {"a": null, "b": 2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["data"], json!({"coins": 5, "bag": {"b": 2}}));
    let (st, _) =
        call(&c, &s, Method::PUT, &format!("{k}/session/metadata"), Some(&t), Some(json!({"tier": "gold"}))).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) =
        call(&c, &s, Method::POST, &format!("{k}/session/user_ids"), Some(&t), Some(json!({"user_id": 99}))).await;
    assert_eq!((st, v["user_ids"].clone()), (StatusCode::OK, json!(["42", "steam:7", "99"])));

    // Not saved yet: the read-only view shows the stored (template) state.
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(view["data"], json!({}));
    let (st, v) = call(&c, &s, Method::POST, &format!("{k}/session/save?priority=emergency"), Some(&t), None).await;
    assert_eq!((st, v["durable"].clone()), (StatusCode::OK, json!(true)), "{v}");
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(view["data"], json!({"coins": 5, "bag": {"b": 2}}));
    assert_eq!(view["metadata"], json!({"tier": "gold"}));
    assert_eq!(view["revision"], v["revision"]);
    assert!(view["lease"].is_object());

    let (st, live) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(live.get("lease_token").is_none(), "the token is only handed out once");
    let (st, v) = call(&c, &s, Method::POST, &format!("{k}/session/renew"), Some(&t), None).await;
    assert_eq!((st, v["epoch"].clone()), (StatusCode::OK, json!(1)));

    let (st, _) = call(&c, &s, Method::POST, &format!("{k}/session/release"), Some(&t), None).await;
    assert_eq!(st, StatusCode::OK);
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert!(view["lease"].is_null(), "released: {view}");
    let (st, v) = call(&c, &s, Method::POST, &format!("{k}/session/save"), Some(&t), None).await;
    assert_eq!(
        (st, v["code"].clone(), v["reason"].clone()),
        (StatusCode::GONE, json!("session_ended"), json!("released"))
    );

    let (st, v) = call(&c, &s, Method::GET, "/v1/stores/profiles/keys?prefix=4&limit=10", None, None).await;
    assert_eq!((st, v["keys"].clone()), (StatusCode::OK, json!(["42"])));
    // The stores holding records, by prefix, paged by name.
    let (st, v) = call(&c, &s, Method::GET, "/v1/stores?prefix=pro&limit=5", None, None).await;
    assert_eq!((st, v.clone()), (StatusCode::OK, json!({ "stores": ["profiles"], "next_cursor": null })));
    let (st, v) = call(&c, &s, Method::GET, "/v1/stores?cursor=bad%20name", None, None).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_prefix")));
    assert!(s.stop().success());
}

/// A client session whose key is idle and saved hibernates (its actor
/// stops; the key stays loaded and leased); the client's next request
/// wakes it unseen, with the document it left.
#[tokio::test]
async fn an_idle_session_hibernates_and_its_next_request_wakes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &["--autosave-interval-secs", "1", "--hibernate-after-secs", "1"]);
    let c = Client::new();
    let k = key_url("profiles", "7");
    let (st, v) = open(&c, &s, "profiles", "7", json!({"client_id": "game-1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let t = token_of(&v);
    let (st, _) =
        call(&c, &s, Method::PUT, &format!("{k}/session/data?save=normal"), Some(&t), Some(json!({"coins": 1}))).await;
    assert_eq!(st, StatusCode::OK);
    // Waits for the signal (the engine says the key sleeps), bounded.
    let asleep = |v: &Value| v["hibernating_keys"] == json!(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stats = json!(null);
    while !asleep(&stats) {
        assert!(Instant::now() < deadline, "the idle key never hibernated: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = call(&c, &s, Method::GET, "/v1/stats", None, None).await.1;
    }
    assert_eq!(stats["loaded_keys"], json!(1), "still loaded: {stats}");
    let resp = c
        .patch(s.url(&format!("{k}/session/data?save=normal")))
        .header("Lease-Token", &t)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"level": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["data"], json!({"coins": 1, "level": 2}));
    let (_, stats) = call(&c, &s, Method::GET, "/v1/stats", None, None).await;
    assert!(stats["key_wakeups"].as_u64().unwrap_or(0) >= 1, "{stats}");
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!((view["data"].clone(), view["epoch"].clone()), (json!({"coins": 1, "level": 2}), json!(1)));
    let text = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("datastorer_hibernating_keys ") && text.contains("datastorer_key_wakeups_total "), "{text}");
    assert!(s.stop().success());
}

/// `?save=` on a data change writes through: the answer comes once the
/// change is durable and carries its revision.
#[tokio::test]
async fn a_data_change_with_save_answers_once_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("carts", "7");
    let (_, v) = open(&c, &s, "carts", "7", json!({})).await;
    let t = token_of(&v);

    let resp = c
        .patch(s.url(&format!("{k}/session/data?save=normal")))
        .header("Lease-Token", &t)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"items": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let patched: Value = resp.json().await.unwrap();
    assert_eq!(patched["data"], json!({"items": 3}));
    assert_eq!(patched["durable"], json!(true));
    let (_, stored) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(stored["data"], json!({"items": 3}), "durable before the answer");
    assert_eq!(stored["revision"], patched["revision"]);

    let (st, put) =
        call(&c, &s, Method::PUT, &format!("{k}/session/data?save=emergency"), Some(&t), Some(json!({"items": 4})))
            .await;
    assert_eq!(st, StatusCode::OK, "{put}");
    assert_eq!(put["revision"].as_u64(), patched["revision"].as_u64().map(|r| r + 1));
    let (_, stored) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(stored["data"], json!({"items": 4}));

    // Without `?save=` the change stays in the session only.
    let (st, plain) =
        call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"items": 5}))).await;
    assert_eq!(st, StatusCode::OK);
    assert!(plain.get("durable").is_none() && plain.get("revision").is_none(), "{plain}");
    let (_, stored) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(stored["data"], json!({"items": 4}));
    assert!(s.stop().success());
}

#[tokio::test]
async fn contention_between_two_clients_with_each_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "hot");
    let (_, a) = open(&c, &s, "profiles", "hot", json!({"client_id": "server-a"})).await;
    let ta = token_of(&a);
    call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&ta), Some(json!({"coins": 1}))).await;

    // fail: 409 naming the holder and expiry.
    let (st, v) = open(&c, &s, "profiles", "hot", json!({"client_id": "server-b", "policy": "fail"})).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!((v["code"].clone(), v["holder"].clone()), (json!("lease_held"), json!("server-a")));
    assert!(v["expires_at_ms"].as_u64().unwrap() > 0);

    // wait: B gets the key once A releases, with A's saved state and a new epoch.
    let waiter = {
        let (c, url) = (c.clone(), s.url(&format!("{k}/session")));
        tokio::spawn(async move {
            c.post(url)
                .json(&json!({"client_id": "server-b", "policy": "wait", "timeout_ms": 20000}))
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, _) = call(&c, &s, Method::POST, &format!("{k}/session/release"), Some(&ta), None).await;
    assert_eq!(st, StatusCode::OK);
    let b = waiter.await.unwrap();
    assert_eq!(b.status(), StatusCode::OK);
    let b: Value = b.json().await.unwrap();
    assert_eq!(b["data"], json!({"coins": 1}));
    assert_eq!(b["epoch"], 2);
    let tb = token_of(&b);

    // request_release: B's unsaved change is saved and B's session ends.
    call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&tb), Some(json!({"coins": 2}))).await;
    let (st, a2) = open(&c, &s, "profiles", "hot", json!({"client_id": "server-a", "policy": "request_release"})).await;
    assert_eq!(st, StatusCode::OK, "{a2}");
    assert_eq!(a2["data"], json!({"coins": 2}));
    assert_eq!(a2["epoch"], 3);
    let (st, v) = call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&tb), Some(json!({"coins": 666}))).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::GONE, json!("session_ended")));
    assert_eq!((v["reason"].clone(), v["taken_over_by"].clone()), (json!("release_requested"), json!("server-a")));

    // steal: A's unsaved change is dropped; A's stale token is refused and
    // writes nothing.
    let ta2 = token_of(&a2);
    call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&ta2), Some(json!({"coins": 3}))).await;
    let (st, b2) = open(&c, &s, "profiles", "hot", json!({"client_id": "server-b", "policy": "steal"})).await;
    assert_eq!(st, StatusCode::OK, "{b2}");
    assert_eq!(b2["data"], json!({"coins": 2}), "the stolen session's unsaved change is not kept");
    assert_eq!(b2["epoch"], 4);
    for (method, path) in
        [(Method::PUT, "/session/data"), (Method::POST, "/session/save"), (Method::POST, "/session/release")]
    {
        let (st, v) = call(&c, &s, method, &format!("{k}{path}"), Some(&ta2), Some(json!({"coins": 999}))).await;
        assert_eq!((st, v["code"].clone()), (StatusCode::GONE, json!("session_ended")), "{path}");
        assert_eq!((v["reason"].clone(), v["taken_over_by"].clone()), (json!("stolen"), json!("server-b")), "{path}");
    }
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(view["data"], json!({"coins": 2}));
    assert_eq!(view["epoch"], 4);
    assert!(s.stop().success());
}

#[tokio::test]
async fn bad_input_gets_a_4xx_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &["--max-body-bytes", "1024"]);
    let c = Client::new();
    let k = key_url("profiles", "k");
    let (_, v) = open(&c, &s, "profiles", "k", json!({})).await;
    let t = token_of(&v);
    call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 7}))).await;
    call(&c, &s, Method::POST, &format!("{k}/session/save"), Some(&t), None).await;
    let (_, other) = open(&c, &s, "profiles", "other", json!({})).await;
    let (_, before) = call(&c, &s, Method::GET, &k, None, None).await;

    let data = format!("{k}/session/data");
    let raw = |method: Method, path: String, ct: Option<&'static str>, body: String, token: Option<String>| {
        let mut r = c.request(method, s.url(&path)).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        if let Some(t) = token {
            r = r.header("Lease-Token", t);
        }
        r.send()
    };
    let cases: Vec<(&str, reqwest::Response, StatusCode, &str)> = vec![
        (
            "malformed json",
            raw(Method::PUT, data.clone(), Some("application/json"), "{\"coins\":".into(), Some(t.clone()))
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            "body over the limit",
            raw(
                Method::PUT,
                data.clone(),
                Some("application/json"),
                format!("{{\"x\":\"{}\"}}", "a".repeat(2000)),
                Some(t.clone()),
            )
            .await
            .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "wrong content type",
            raw(Method::PUT, data.clone(), Some("text/plain"), "{}".into(), Some(t.clone())).await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "no content type",
            raw(Method::PUT, data.clone(), None, "{}".into(), Some(t.clone())).await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "token for another key",
            raw(Method::PUT, data.clone(), Some("application/json"), "{}".into(), Some(token_of(&other)))
                .await
                .unwrap(),
            StatusCode::CONFLICT,
            "invalid_lease_token",
        ),
        (
            "missing token",
            raw(Method::PUT, data.clone(), Some("application/json"), "{}".into(), None).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "missing_lease_token",
        ),
        (
            "key too long",
            raw(Method::POST, format!("{}/session", key_url("profiles", &"k".repeat(513))), None, String::new(), None)
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "forbidden store name",
            raw(Method::POST, "/v1/stores/bad%20name/keys/k/session".into(), None, String::new(), None).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "control character in key",
            raw(Method::GET, "/v1/stores/profiles/keys/a%01b".into(), None, String::new(), None).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "unknown open field",
            raw(Method::POST, format!("{k}/session"), Some("application/json"), r#"{"polcy":"fail"}"#.into(), None)
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request_body",
        ),
        (
            "unknown policy",
            raw(Method::POST, format!("{k}/session"), Some("application/json"), r#"{"policy":"grab"}"#.into(), None)
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request_body",
        ),
        (
            "bad priority",
            raw(Method::POST, format!("{k}/session/save?priority=urgent"), None, String::new(), Some(t.clone()))
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_query",
        ),
        (
            "bad save priority on a patch",
            raw(
                Method::PATCH,
                format!("{k}/session/data?save=urgent"),
                Some("application/json"),
                "{}".into(),
                Some(t.clone()),
            )
            .await
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_query",
        ),
        (
            "unknown query parameter on a put",
            raw(
                Method::PUT,
                format!("{k}/session/data?sav=normal"),
                Some("application/json"),
                "{}".into(),
                Some(t.clone()),
            )
            .await
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_query",
        ),
        (
            "bad limit",
            raw(Method::GET, "/v1/stores/profiles/keys?limit=0".into(), None, String::new(), None).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_limit",
        ),
        (
            "metadata not an object",
            raw(Method::PUT, format!("{k}/session/metadata"), Some("application/json"), "[1]".into(), Some(t.clone()))
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_metadata",
        ),
        (
            "unknown route",
            raw(Method::GET, "/v2/nothing".into(), None, String::new(), None).await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "wrong method",
            raw(Method::PUT, format!("{k}/session/save"), None, String::new(), Some(t.clone())).await.unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "missing key",
            raw(Method::GET, key_url("profiles", "nobody"), None, String::new(), None).await.unwrap(),
            StatusCode::NOT_FOUND,
            "no_such_key",
        ),
        (
            "a key that is not UTF-8 once decoded (%FF%FE and %FE%FF would share a record)",
            raw(Method::POST, "/v1/stores/profiles/keys/%FF%FE/session".into(), None, String::new(), None)
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "a list prefix that is not UTF-8 once decoded",
            raw(Method::GET, "/v1/stores/profiles/keys?prefix=%FE".into(), None, String::new(), None).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_query",
        ),
        (
            "an array as the open body",
            raw(Method::POST, format!("{k}/session"), Some("application/json"), r#"[null, [], "steal"]"#.into(), None)
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request_body",
        ),
        (
            "a wrong type in the open body",
            raw(
                Method::POST,
                format!("{k}/session"),
                Some("application/json"),
                r#"{"timeout_ms":"soon"}"#.into(),
                None,
            )
            .await
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request_body",
        ),
        (
            "an unknown policy in the query",
            raw(Method::POST, format!("{k}/session?policy=grab"), None, String::new(), None).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_query",
        ),
        (
            "a policy in the query and another in the body",
            raw(
                Method::POST,
                format!("{k}/session?policy=steal"),
                Some("application/json"),
                r#"{"policy":"fail"}"#.into(),
                None,
            )
            .await
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "conflicting_parameters",
        ),
        (
            "a fractional user id",
            raw(
                Method::POST,
                format!("{k}/session/user_ids"),
                Some("application/json"),
                r#"{"user_id":1.5}"#.into(),
                Some(t.clone()),
            )
            .await
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_user_id",
        ),
    ];
    for (what, resp, status, code) in cases {
        assert_eq!(resp.status(), status, "{what}");
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert_eq!(body["code"], code, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}");
        // The API's language, not Rust's.
        for internal in ["struct ", "u64", "deserialize error", "`", "OpenBody"] {
            assert!(!message.contains(internal), "{what}: {internal:?} in {message:?}");
        }
    }
    // The session survived all of it and the record is unchanged.
    let (_, after) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(after, before);
    let (st, live) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!((st, live["data"].clone()), (StatusCode::OK, json!({"coins": 7})));
    assert!(s.stop().success());
}

#[tokio::test]
async fn strict_stores_answer_404_for_undeclared_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("datastorer.toml");
    std::fs::write(&config, "strict_stores = true\n[stores.players]\ntemplate = { coins = 0 }\n").unwrap();
    let mut s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    let c = Client::new();
    let (st, v) = open(&c, &s, "elsewhere", "k", json!({})).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::NOT_FOUND, json!("unknown_store")));
    let (st, v) = open(&c, &s, "players", "k", json!({})).await;
    assert_eq!((st, v["data"].clone()), (StatusCode::OK, json!({"coins": 0})));
    assert!(s.stop().success());
}

#[tokio::test]
async fn api_keys_and_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::process(
        tmp.path(),
        &[
            "--api-key",
            "dash:read:read-secret-0123456789",
            "--api-key",
            "game:write:write-secret-0123456789",
            "--api-key",
            "ops:admin:admin-secret-0123456789",
        ],
    );
    let c = Client::new();
    let k = key_url("profiles", "k");
    let send = |method: Method, path: String, key: Option<&'static str>| {
        let mut r = c.request(method, s.url(&path));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    assert_eq!(send(Method::GET, "/healthz".into(), None).await.unwrap().status(), StatusCode::OK);
    assert_eq!(send(Method::GET, "/readyz".into(), None).await.unwrap().status(), StatusCode::OK);
    let r = send(Method::GET, "/metrics".into(), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        send(Method::GET, k.clone(), Some("not-a-configured-key-at-all")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let r = send(Method::POST, format!("{k}/session"), Some("read-secret-0123456789")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "forbidden");
    let said = v["message"].as_str().unwrap();
    assert!(said.contains("the role read") && said.contains("the role write"), "no Rust in the message: {said}");

    let r = send(Method::POST, format!("{k}/session"), Some("write-secret-0123456789")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let opened: Value = r.json().await.unwrap();
    let r = c
        .post(s.url(&format!("{k}/session/release")))
        .bearer_auth("write-secret-0123456789")
        .header("Lease-Token", token_of(&opened))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The holder name is the key's name, never the secret.
    assert_eq!(send(Method::GET, k.clone(), Some("read-secret-0123456789")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send(Method::GET, "/metrics".into(), Some("read-secret-0123456789")).await.unwrap().status(),
        StatusCode::OK
    );
    // Ending a session is the admin's; a delete of a key nobody holds is a
    // write (a tombstone version), as a game server's RemoveAsync is.
    assert_eq!(
        send(Method::DELETE, format!("{k}?force=true"), Some("write-secret-0123456789")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(Method::DELETE, k.clone(), Some("read-secret-0123456789")).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(Method::DELETE, k.clone(), Some("write-secret-0123456789")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        send(Method::GET, k.clone(), Some("admin-secret-0123456789")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // The scheme is case-insensitive (RFC 9110).
    let r =
        c.get(s.url(&format!("{k}x"))).header("Authorization", "bearer read-secret-0123456789").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "authenticated, then no such key");
    // One access-log line per request: route template, status, key name,
    // client. (Read after the exit, which writes out every line.)
    assert!(s.stop().success());
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("datastorer::access") && l.contains("/session/release"))
        .unwrap_or_else(|| panic!("no access line for the release in {log}"));
    for part in [
        "method=POST",
        "route=/v1/stores/{store}/keys/{key}/session/release",
        "status=200",
        "api_key=\"game\"",
        "client=\"game\"",
    ] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
    assert!(!line.contains(&token_of(&opened)), "no lease token in the access log");
    let duration = line.split("duration_ms=").nth(1).and_then(|d| d.split(' ').next()).unwrap_or_default();
    assert!(duration.split('.').nth(1).is_some_and(|f| f.len() == 3), "duration in ms to the microsecond: {line}");
    // A request refused for its role still names the key that made it.
    let refused = log
        .lines()
        .find(|l| l.contains("datastorer::access") && l.contains("status=403") && l.contains("method=DELETE"))
        .unwrap_or_else(|| panic!("no access line for the refused delete in {log}"));
    assert!(refused.contains("api_key=\"game\""), "{refused}");
    assert!(!log.contains("secret-0123456789"), "secrets never reach the log");
}

#[test]
fn without_api_keys_the_server_refuses_non_loopback_addresses_and_bad_config_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback") && err.contains("listen"), "{err}");

    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nautosave_intervall_secs = 5\n").unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml") && err.contains("autosave_intervall_secs"), "{err}");

    std::fs::write(&config, "lease_ttl_secs = 10\nautosave_interval_secs = 30\n").unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("lease_ttl_secs"), "{err}");

    std::fs::write(&config, "[stores.p]\nmigrations = [{ op = \"rename\", from = \"a\", to = \"a\" }]\n").unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stores.p.migrations[0]"), "{err}");
    assert!(!tmp.path().join("data").exists(), "nothing created on a refused start");
}

#[test]
fn a_busy_port_or_a_data_directory_in_use_is_named_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("first"), &[]);
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(tmp.path().join("other"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot listen on") && err.contains(&port), "{err}");
    assert!(err.contains("already listening") && !err.contains("os error"), "a sentence, no OS code: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("first").join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("in use by another process"), "{err}");
    assert!(!err.contains("Os {") && !err.contains("panicked"), "{err}");
    let out = Command::new(BIN).args(["serve", "--workers", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workers / DATASTORER_WORKERS") && !err.contains("defaults"), "{err}");
}

#[tokio::test]
async fn the_change_feed_announces_saves_and_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let mut feed = c.get(s.url("/v1/changes?store=profiles")).send().await.unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    let first = feed.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("connected"));

    let k = key_url("profiles", "fed");
    let (_, v) = open(&c, &s, "profiles", "fed", json!({})).await;
    let t = token_of(&v);
    call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"n": 1}))).await;
    let (_, saved) = call(&c, &s, Method::POST, &format!("{k}/session/save"), Some(&t), None).await;
    call(&c, &s, Method::POST, &format!("{k}/session/release"), Some(&t), None).await;

    let text = read_feed_until(&mut feed, &["saved", "released"]).await;
    let save_line = event_data(&text, "saved");
    let seq = save_line["seq"].as_u64().expect("a sequence number");
    assert_eq!(
        save_line,
        json!({"seq": seq, "store": "profiles", "key": "fed", "revision": saved["revision"], "kind": "saved"})
    );
    assert!(text.contains(&format!("id: {seq}\nevent: saved\n")), "{text}");
    drop(feed);

    // A reconnect with Last-Event-ID resumes after it: the release is
    // replayed, the save is not.
    let mut feed = c.get(s.url("/v1/changes")).header("Last-Event-ID", seq.to_string()).send().await.unwrap();
    let text = read_feed_until(&mut feed, &["released"]).await;
    assert!(!text.contains("event: saved"), "{text}");
    assert_eq!(event_data(&text, "released")["seq"], json!(seq + 1));
    drop(feed);
    let r = c.get(s.url("/v1/changes")).header("Last-Event-ID", "yesterday").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(s.stop().success());
}

/// The pollable feed: answers at once when events wait, else when one
/// arrives (a long poll), else after `wait_ms`; resumes from `next`.
#[tokio::test]
async fn the_change_feed_can_be_long_polled_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let poll = |query: &str| c.get(s.url(&format!("/v1/changes/poll?{query}"))).send();
    // Nothing yet: an empty answer after the wait, with the cursor.
    let empty: Value = poll("wait_ms=50").await.unwrap().json().await.unwrap();
    assert_eq!(empty, json!({"events": [], "next": 0, "lagged": false}));

    let k = key_url("profiles", "polled");
    let (_, v) = open(&c, &s, "profiles", "polled", json!({})).await;
    let t = token_of(&v);
    // A long poll that is waiting when the save happens answers with it.
    let waiting = tokio::spawn(c.get(s.url("/v1/changes/poll?after=0&wait_ms=20000&store=profiles")).send());
    call(&c, &s, Method::PUT, &format!("{k}/session/data?save=normal"), Some(&t), Some(json!({"n": 1}))).await;
    let woke: Value = waiting.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(woke["events"][0]["kind"], json!("saved"), "{woke}");
    assert_eq!(woke["events"][0]["key"], json!("polled"));
    let next = woke["next"].as_u64().unwrap();

    call(&c, &s, Method::POST, &format!("{k}/session/release"), Some(&t), None).await;
    let (_, other) = open(&c, &s, "elsewhere", "x", json!({})).await;
    call(
        &c,
        &s,
        Method::POST,
        &format!("{}/session/release", key_url("elsewhere", "x")),
        Some(&token_of(&other)),
        None,
    )
    .await;
    // The log hears the engine's notices through a bus, a moment after the
    // answer: wait (by long polls, not sleeps) until both releases are in.
    let mut seen = next;
    while seen < next + 2 {
        let p: Value = poll(&format!("after={seen}&wait_ms=20000")).await.unwrap().json().await.unwrap();
        seen = p["next"].as_u64().unwrap();
    }
    // Events already waiting: answered at once, filtered by store.
    let page: Value = poll(&format!("after={next}&store=profiles")).await.unwrap().json().await.unwrap();
    let kinds: Vec<_> = page["events"].as_array().unwrap().iter().map(|e| e["kind"].clone()).collect();
    assert_eq!(kinds, vec![json!("released")], "{page}");
    // The cursor moves past the other store's events too.
    let all: Value = poll(&format!("after={next}")).await.unwrap().json().await.unwrap();
    assert_eq!(page["next"], all["next"], "{all}");
    let limited: Value = poll(&format!("after={next}&limit=1")).await.unwrap().json().await.unwrap();
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);
    assert_eq!(limited["next"], json!(next + 1));

    for bad in ["wait_ms=20001", "limit=0", "limit=1001", "store=bad%20name", "after=-1", "since=3"] {
        let r = poll(bad).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["code"].is_string() && body["message"].is_string(), "{bad}: {body}");
    }
    assert!(s.stop().success());
}

#[tokio::test]
async fn sigterm_saves_unsaved_changes_and_releases_leases() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::process(tmp.path(), &[]);
    let c = Client::new();
    let mut tokens = Vec::new();
    for i in 0..20 {
        let (_, v) = open(&c, &s, "profiles", &format!("p{i}"), json!({})).await;
        let t = token_of(&v);
        let (st, _) = call(
            &c,
            &s,
            Method::PUT,
            &format!("{}/session/data", key_url("profiles", &format!("p{i}"))),
            Some(&t),
            Some(json!({"coins": i})),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        tokens.push(t);
    }
    let started = Instant::now();
    let status = s.stop();
    assert!(status.success(), "exit status {status:?}; log:\n{}", s.log());
    assert!(started.elapsed() < Duration::from_secs(25), "within the shutdown deadline");
    let dir = s.dir.clone();
    drop(s);

    let mut s = Server::start(&dir, &[]);
    for i in 0..20 {
        let (st, view) = call(&c, &s, Method::GET, &key_url("profiles", &format!("p{i}")), None, None).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(view["data"], json!({"coins": i}), "p{i}");
        assert!(view["lease"].is_null(), "p{i} still leased");
    }
    assert!(s.stop().success());
}

#[tokio::test]
async fn a_vanished_client_loses_its_session_and_its_last_state_is_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &["--client-lease-ttl-secs", "1"]);
    let c = Client::new();
    let k = key_url("profiles", "ghost");
    let (_, v) = open(&c, &s, "profiles", "ghost", json!({})).await;
    let t = token_of(&v);
    call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"last": "words"}))).await;
    // The client goes silent; poll the stored record until the sweeper saved it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
        if view["lease"].is_null() {
            assert_eq!(view["data"], json!({"last": "words"}));
            break;
        }
        assert!(Instant::now() < deadline, "never swept: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, v) = call(&c, &s, Method::POST, &format!("{k}/session/save"), Some(&t), None).await;
    assert_eq!((st, v["reason"].clone()), (StatusCode::GONE, json!("expired")), "{v}");
    let (st, v) = open(&c, &s, "profiles", "ghost", json!({"policy": "fail"})).await;
    assert_eq!((st, v["epoch"].clone()), (StatusCode::OK, json!(2)));
    assert!(s.stop().success());
}

#[tokio::test]
async fn declared_migrations_upgrade_old_records() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Client::new();
    // Version 0 of the application stored {"gold": 5, "legacy": true}.
    let mut s = Server::start(tmp.path(), &[]);
    let k = key_url("players", "p1");
    let (_, v) = open(&c, &s, "players", "p1", json!({})).await;
    let t = token_of(&v);
    call(&c, &s, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"gold": 5, "legacy": true}))).await;
    call(&c, &s, Method::POST, &format!("{k}/session/release"), Some(&t), None).await;
    let dir = s.dir.clone();
    assert!(s.stop().success());
    drop(s);

    let config = tmp.path().join("v3.toml");
    std::fs::write(
        &config,
        r#"
[stores.players]
template = { coins = 0, level = 1, settings = { music = true } }
metadata_template = { banned = false }
migrations = [
  { op = "rename", from = "gold", to = "coins" },
  { op = "remove", field = "legacy" },
  { op = "merge_patch", patch = { season = 2 } },
]
"#,
    )
    .unwrap();
    let mut s = Server::start(&dir, &["--config", config.to_str().unwrap()]);
    // A raw read before any open shows the record as stored, and says that
    // the store's migrations have not been applied to it yet.
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(
        (view["data_version"].clone(), view["store_data_version"].clone(), view["unmigrated"].clone()),
        (json!(0), json!(3), json!(true)),
        "{view}"
    );
    let (st, v) = open(&c, &s, "players", "p1", json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"], json!({"coins": 5, "season": 2, "level": 1, "settings": {"music": true}}));
    assert_eq!(v["metadata"], json!({"banned": false}));
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(view["data_version"], 3);
    assert_eq!(view["unmigrated"], false, "{view}");
    assert!(s.stop().success());
}

/// `Prefer: return=minimal` leaves the document out of a change's answer
/// (a game server pays for every byte it reads back); the change is made
/// all the same, and `?save=` still answers the revision.
#[tokio::test]
async fn a_minimal_answer_leaves_the_document_out_but_not_the_change() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "m");
    let (_, v) = open(&c, &s, "profiles", "m", json!({})).await;
    let t = token_of(&v);
    let data = s.url(&format!("{k}/session/data"));
    let big = json!({"coins": 1, "inventory": vec!["sword"; 200]});
    let r = c.put(&data).header("Lease-Token", &t).header("Prefer", "return=minimal").json(&big).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["preference-applied"], "return=minimal");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));
    let r = c
        .patch(format!("{data}?save=normal"))
        .header("Lease-Token", &t)
        .header("Prefer", "respond-async, return=minimal")
        .json(&json!({"coins": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["durable"], json!(true), "{answer}");
    assert!(answer.get("data").is_none() && answer["revision"].is_u64(), "{answer}");
    // Without the preference (or with return=representation) the document comes back.
    let r =
        c.patch(&data).header("Lease-Token", &t).header("Prefer", "return=representation").json(&json!({"coins": 3}));
    let r = r.send().await.unwrap();
    assert!(r.headers().get("preference-applied").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["data"]["coins"], json!(3));
    let meta = s.url(&format!("{k}/session/metadata"));
    let r = c.put(&meta).header("Lease-Token", &t).header("Prefer", "return=minimal").json(&json!({"vip": true}));
    assert_eq!(r.send().await.unwrap().json::<Value>().await.unwrap(), json!({}));
    let (_, stored) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(stored["data"]["coins"], json!(2), "the minimal write-through saved");
    let (_, live) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!(live["data"]["coins"], json!(3), "{live}");
    assert_eq!(live["metadata"], json!({"vip": true}), "{live}");
    assert!(s.stop().success());
}

/// An open retried by the same `client_id` after a lost answer gets the
/// session it already holds (same token, its unsaved change kept), not a
/// 409 from a lock it holds itself; another client, or a client with no
/// `client_id`, is still refused.
#[tokio::test]
async fn a_retried_open_by_the_same_client_id_gets_its_own_session_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "r");
    let (st, first) = open(&c, &s, "profiles", "r", json!({"client_id": "job-1", "user_ids": [7]})).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert!(first.get("resumed").is_none());
    let t = token_of(&first);
    let (st, _) = call(&c, &s, Method::PATCH, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 4}))).await;
    assert_eq!(st, StatusCode::OK);

    let (st, again) = open(&c, &s, "profiles", "r", json!({"client_id": "job-1", "user_ids": [8]})).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["resumed"], json!(true));
    assert_eq!(token_of(&again), t, "the same session");
    assert_eq!((again["epoch"].clone(), again["data"]["coins"].clone()), (first["epoch"].clone(), json!(4)));
    assert_eq!(again["user_ids"], json!(["7", "8"]), "{again}");

    let (st, other) = open(&c, &s, "profiles", "r", json!({"client_id": "job-2"})).await;
    assert_eq!((st, other["code"].clone()), (StatusCode::CONFLICT, json!("lease_held")), "{other}");
    let (st, anonymous) = open(&c, &s, "profiles", "r", json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{anonymous}");
    let (st, _) = call(&c, &s, Method::POST, &format!("{k}/session/save"), Some(&t), None).await;
    assert_eq!(st, StatusCode::OK, "the resumed token still writes");
    // Removing a user id, and removing it again (a retried request).
    let (st, v) = call(&c, &s, Method::DELETE, &format!("{k}/session/user_ids/7"), Some(&t), None).await;
    assert_eq!((st, v.clone()), (StatusCode::OK, json!({"user_ids": ["8"], "removed": true})), "{v}");
    let (st, v) = call(&c, &s, Method::DELETE, &format!("{k}/session/user_ids/7"), Some(&t), None).await;
    assert_eq!((st, v["removed"].clone()), (StatusCode::OK, json!(false)), "{v}");
    let (st, v) = call(&c, &s, Method::DELETE, &format!("{k}/session/user_ids/%01"), Some(&t), None).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_user_id")), "{v}");
    let (st, _) = call(&c, &s, Method::DELETE, &format!("{k}/session/user_ids/8"), Some("not-a-token"), None).await;
    assert_eq!(st, StatusCode::CONFLICT, "a wrong token removes nothing");
    let (_, live) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!(live["user_ids"], json!(["8"]));
    assert!(s.stop().success());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A gzip body is decompressed under the same limit as a plain one; a body
/// that does not decompress, or an encoding the server does not speak, is
/// refused and changes nothing.
#[tokio::test]
async fn gzip_request_bodies_are_accepted_within_the_body_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &["--max-body-bytes", "4096"]);
    let c = Client::new();
    let k = key_url("profiles", "z");
    let (_, v) = open(&c, &s, "profiles", "z", json!({})).await;
    let t = token_of(&v);
    let data = s.url(&format!("{k}/session/data"));
    let send = |body: Vec<u8>, encoding: &'static str| {
        c.patch(&data)
            .header("Lease-Token", &t)
            .header("Content-Type", "application/merge-patch+json")
            .header("Content-Encoding", encoding)
            .body(body)
            .send()
    };
    let r = send(gzip(br#"{"coins": 7, "name": "zed"}"#), "gzip").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["data"], json!({"coins": 7, "name": "zed"}));
    // 40 KB of zeros compress to well under the 4 KB limit: refused whole.
    let bomb = gzip(format!(r#"{{"coins": 1, "pad": "{}"}}"#, "0".repeat(40_000)).as_bytes());
    assert!(bomb.len() < 4096);
    let r = send(bomb, "gzip").await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], json!("body_too_large"));
    let r = send(br#"{"coins": 2}"#.to_vec(), "gzip").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], json!("bad_body"));
    let r = send(br#"{"coins": 3}"#.to_vec(), "br").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], json!("unsupported_content_encoding"));
    let (_, live) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!(live["data"], json!({"coins": 7, "name": "zed"}), "the refused bodies changed nothing");
    assert!(s.stop().success());
}

#[tokio::test]
async fn a_store_describes_the_spec_a_client_reconciles_against() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("datastorer.toml");
    std::fs::write(
        &config,
        r#"
[stores.players]
template = { coins = 0, settings = { music = true } }
metadata_template = { banned = false }
migrations = [{ op = "rename", from = "gold", to = "coins" }, { op = "remove", field = "legacy" }]
"#,
    )
    .unwrap();
    let mut s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    let c = Client::new();
    let (st, v) = call(&c, &s, Method::GET, "/v1/stores/players", None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"store": "players", "declared": true, "template": {"coins": 0, "settings": {"music": true}},
            "metadata_template": {"banned": false}, "data_version": 2})
    );
    // An undeclared store is described as it would be created, and the
    // description does not create it.
    let (st, v) = call(&c, &s, Method::GET, "/v1/stores/guests", None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["declared"], json!(false));
    assert_eq!((v["template"].clone(), v["data_version"].clone()), (json!({}), json!(0)));
    let (st, v) = call(&c, &s, Method::GET, "/v1/stores/bad%20name", None, None).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_name")), "{v}");
    assert!(s.stop().success());

    std::fs::write(&config, "strict_stores = true\n[stores.players]\ntemplate = { coins = 0 }\n").unwrap();
    let mut s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    // A new client: the old one's pooled connection was to the stopped
    // server, and the new one may have been given the same port (a reset).
    let c = Client::new();
    let (st, v) = call(&c, &s, Method::GET, "/v1/stores/guests", None, None).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::NOT_FOUND, json!("unknown_store")), "{v}");
    assert!(s.stop().success());
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_each_is_routed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let (st, doc) = call(&c, &s, Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/stats", "get"),
        ("/v1/changes", "get"),
        ("/v1/changes/poll", "get"),
        ("/v1/batch", "post"),
        ("/v1/webhooks/test", "post"),
        ("/v1/clients/{client_id}/renew", "post"),
        ("/v1/stores", "get"),
        ("/v1/stores/{store}", "get"),
        ("/v1/stores/{store}/keys", "get"),
        ("/v1/stores/{store}/keys/{key}", "get"),
        ("/v1/stores/{store}/keys/{key}", "delete"),
        ("/v1/stores/{store}/keys/{key}", "patch"),
        ("/v1/stores/{store}/keys/{key}", "put"),
        ("/v1/stores/{store}/keys/{key}/session", "post"),
        ("/v1/stores/{store}/keys/{key}/session", "get"),
        ("/v1/stores/{store}/keys/{key}/session", "delete"),
        ("/v1/stores/{store}/keys/{key}/session/data", "put"),
        ("/v1/stores/{store}/keys/{key}/session/data", "patch"),
        ("/v1/stores/{store}/keys/{key}/session/metadata", "put"),
        ("/v1/stores/{store}/keys/{key}/session/user_ids", "post"),
        ("/v1/stores/{store}/keys/{key}/session/user_ids/{user_id}", "delete"),
        ("/v1/stores/{store}/keys/{key}/session/save", "post"),
        ("/v1/stores/{store}/keys/{key}/messages", "post"),
        ("/v1/stores/{store}/keys/{key}/messages", "get"),
        ("/v1/stores/{store}/keys/{key}/session/messages", "get"),
        ("/v1/stores/{store}/keys/{key}/session/messages/ack", "post"),
        ("/v1/stores/{store}/keys/{key}/session/renew", "post"),
        ("/v1/stores/{store}/keys/{key}/session/release", "post"),
        ("/v1/stores/{store}/keys/{key}/versions", "get"),
        ("/v1/stores/{store}/keys/{key}/versions/at", "get"),
        ("/v1/stores/{store}/keys/{key}/versions/{version}", "get"),
        ("/v1/stores/{store}/keys/{key}/restore", "post"),
        ("/v1/users/{user_id}", "get"),
        ("/v1/users/{user_id}", "delete"),
        ("/v1/webhooks/roblox", "post"),
        ("/v1/audit", "get"),
        ("/v1/backup", "get"),
        ("/v1/stores/{store}/restore", "post"),
        ("/v1/stores/{store}/restore", "get"),
        ("/v1/stores/{store}/migrate", "post"),
        ("/v1/stores/{store}/usage", "get"),
        ("/v1/whoami", "get"),
    ];
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.push((path.clone(), method.clone()));
            assert!(op["responses"]["200"].is_object(), "{method} {path} documents its success");
            for busy in ["503", "429"] {
                if let Some(answer) = op["responses"].get(busy) {
                    assert!(
                        answer["headers"]["Retry-After"].is_object(),
                        "{method} {path} {busy} documents Retry-After"
                    );
                }
            }
            // Routed: anything but the router's own 404/405.
            let url = path
                .replace("{store}", "s")
                .replace("{key}", "k")
                .replace("{user_id}", "u")
                .replace("{client_id}", "c")
                .replace("{version}", "1.1")
                .replace("{user_id}", "u");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = c.request(m, s.url(&url)).send().await.unwrap();
            let status = resp.status();
            if status == StatusCode::OK && url == "/v1/changes" {
                continue; // an endless stream
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(
                !matches!(body["code"].as_str(), Some("not_found" | "method_not_allowed")),
                "{method} {path} is documented but not routed ({status})"
            );
        }
    }
    documented.sort();
    let mut want: Vec<_> = expected.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    want.sort();
    assert_eq!(documented, want);
    assert!(s.stop().success());
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["serve", "inspect", "export", "import", "import-roblox", "check"] {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{sub}");
    }
}

/// The binary opts out of transparent huge pages unless told to keep them
/// (the kernel reports the per-process switch as `THP_enabled` in
/// /proc/PID/status).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_binary_opts_out_of_transparent_huge_pages_unless_allowed() {
    let thp_line = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
    };
    let tmp = tempfile::tempdir().unwrap();
    // Any value but "1" is the default (this also overrides an inherited "1").
    let default = Server::process_with_env(&tmp.path().join("a"), &[], &[("DATASTORER_ALLOW_THP", "0")]);
    let Some(off) = thp_line(default.pid()) else {
        eprintln!("this kernel does not report THP_enabled; nothing to check");
        return;
    };
    assert_eq!(off, "0", "THP stays enabled by default");
    let allowed = Server::process_with_env(&tmp.path().join("b"), &[], &[("DATASTORER_ALLOW_THP", "1")]);
    assert_eq!(thp_line(allowed.pid()).as_deref(), Some("1"), "DATASTORER_ALLOW_THP=1 keeps THP");
}

#[tokio::test]
async fn every_metric_has_help_and_type_and_requests_are_counted_by_route() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let (_, v) = open(&c, &s, "profiles", "m", json!({})).await;
    let k = key_url("profiles", "m");
    call(&c, &s, Method::PATCH, &format!("{k}/session/data"), Some(&token_of(&v)), Some(json!({"n": 1}))).await;
    let text = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .map(|name| ["_bucket", "_sum", "_count"].iter().fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n)))
        .collect();
    for family in &families {
        assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {family}");
        assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {family}");
    }
    for needed in
        ["datastorer_save_failures_total", "datastorer_client_lease_lapses_total", "datastorer_http_requests_total"]
    {
        assert!(families.contains(needed), "{needed} missing");
    }
    let route = r#"datastorer_http_requests_total{route="/v1/stores/{store}/keys/{key}/session/data",method="PATCH",status="200"} 1"#;
    assert!(text.contains(route), "{text}");
    assert!(text
        .contains(r#"datastorer_http_request_duration_seconds_count{route="/v1/stores/{store}/keys/{key}/session"}"#));
    assert!(!text.contains("keys/m/"), "raw paths never become labels");
    assert!(s.stop().success());
}

/// A key that cannot be saved at SIGTERM is named: in the log (warn, with
/// its store and key) and in the exit message, never just "1 failed".
#[tokio::test]
async fn a_shutdown_names_every_key_it_could_not_save() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Client::new();
    let k = key_url("profiles", "too-big");
    let mut s = Server::process(tmp.path(), &["--max-body-bytes", "100000"]);
    let (_, v) = open(&c, &s, "profiles", "too-big", json!({})).await;
    let big = json!({"blob": "x".repeat(20_000)});
    let (st, _) =
        call(&c, &s, Method::PUT, &format!("{k}/session/data?save=normal"), Some(&token_of(&v)), Some(big)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(s.stop().success());
    // Served under a smaller limit, the stored document can be read but not saved.
    let mut s = Server::process(tmp.path(), &["--max-body-bytes", "10000"]);
    let (st, v) = open(&c, &s, "profiles", "too-big", json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let status = s.stop();
    assert!(!status.success(), "an incomplete shutdown exits non-zero");
    let log = s.log();
    assert!(log.contains("not saved: ") && log.contains("`too-big`"), "the exit message names the key: {log}");
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("not saved at shutdown") && l.contains("`too-big`")),
        "{log}"
    );
}

/// `run` takes a listener bound to port 0 and a shutdown future
/// (mini-redis's pattern), so an HTTP test needs no child process and no
/// signal; what the shutdown did comes back as its report.
#[tokio::test]
async fn a_server_in_the_test_process_stops_when_its_shutdown_future_resolves_and_reports_what_it_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &["--workers", "1"]);
    let c = Client::new();
    let (_, opened) = open(&c, &s, "profiles", "7", json!({})).await;
    let r = c
        .patch(s.url(&format!("{}/session/data", key_url("profiles", "7"))))
        .header("Lease-Token", token_of(&opened))
        .json(&json!({"coins": 3}))
        .send();
    assert_eq!(r.await.unwrap().status(), StatusCode::OK);

    // Unsaved at shutdown: the shutdown saves and releases it, and once
    // `run` has returned the engine has let go of the data directory.
    let exit = s.stop();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(exit.report().release.released, 1);
    let sled = SledBackend::open(s.dir.join("data")).unwrap();
    let record = Record::decode(&sled.get(&storage_key("profiles", "7")).unwrap().unwrap()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&record.data).unwrap(), json!({"coins": 3}));
    assert!(record.lease.is_none(), "released");
}

#[tokio::test]
async fn a_client_feed_is_read_only_under_the_api_key_that_holds_its_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(
        tmp.path(),
        &["--api-key", "game:write:game-secret-0123456789", "--api-key", "rival:write:rival-secret-0123456789"],
    );
    let c = Client::new();
    let (game, rival) = ("game-secret-0123456789", "rival-secret-0123456789");
    let k = key_url("profiles", "k");
    let r = c
        .post(s.url(&format!("{k}/session")))
        .bearer_auth(game)
        .json(&json!({"client_id": "victim"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let poll = |key: &'static str| {
        let c = c.clone();
        let url = s.url("/v1/changes/poll?client_id=victim&after=0");
        async move {
            let r = c.get(url).bearer_auth(key).send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // While the victim holds a session under "game", "rival" may not read its feed.
    let (status, v) = poll(rival).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("client_forbidden")), "{v}");
    assert!(!v.to_string().contains("handoff") && !v.to_string().contains("session_ended"), "{v}");
    // "rival" takes the key: the victim's session ends, and only "game" sees why.
    let r = c
        .post(s.url(&format!("{k}/session")))
        .bearer_auth(rival)
        .json(&json!({"client_id": "thief", "policy": "steal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, v) = poll(game).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["events"].as_array().unwrap().iter().any(|e| e["kind"] == "session_ended"), "{v}");
    let (status, v) = poll(rival).await;
    assert_eq!(status, StatusCode::OK, "no live session of the victim now: {v}");
    let events = v["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["holder"].is_null()), "another key's holder notices stay hidden: {v}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_without_internal_store_names() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let path = format!("{}/messages", key_url("profiles", "p"));
    let big = json!({"note": "x".repeat(datastorer::MAX_MESSAGE_BYTES)});
    let (st, v) = call(&c, &s, Method::POST, &path, None, Some(big)).await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("message_too_large")), "{v}");
    assert_eq!(v["max_message_bytes"], json!(datastorer::MAX_MESSAGE_BYTES), "{v}");
    assert!(!v.to_string().contains(":inbox"), "{v}");
    let (st, v) = call(&c, &s, Method::POST, &path, None, Some(json!({"gift": 1}))).await;
    assert_eq!((st, v["id"].clone()), (StatusCode::OK, json!(1)), "the refused one took no id: {v}");
}

/// A one-shot `PUT` may set the record's metadata and user ids in the same
/// write (`Datastorer-Metadata`, `Datastorer-User-Ids`): what a Roblox
/// `SetAsync` with user ids and metadata needs; bad values are refused
/// before anything is written.
#[tokio::test]
async fn a_one_shot_write_sets_metadata_and_user_ids_with_the_document() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "p77");
    let put = |body: Value, meta: Option<&str>, ids: Option<&str>| {
        let mut r = c.put(s.url(&k)).json(&body);
        if let Some(m) = meta {
            r = r.header("Datastorer-Metadata", m);
        }
        if let Some(u) = ids {
            r = r.header("Datastorer-User-Ids", u);
        }
        r.send()
    };
    let r = put(json!({"coins": 1}), Some(r#"{"tier":"gold"}"#), Some("[77, \"steam:9\"]")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(view["metadata"], json!({"tier": "gold"}));
    assert_eq!(view["user_ids"], json!(["77", "steam:9"]));
    let (_, page) = call(&c, &s, Method::GET, &format!("{k}/versions"), None, None).await;
    assert_eq!(page["versions"][0]["user_ids"], json!(["77", "steam:9"]), "the version carries them");
    // Without the headers, a write keeps them.
    put(json!({"coins": 2}), None, None).await.unwrap();
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(
        (view["metadata"].clone(), view["user_ids"].clone()),
        (json!({"tier": "gold"}), json!(["77", "steam:9"]))
    );
    for (meta, ids, code) in [
        (Some("[1]"), None, "bad_metadata"),
        (Some("not json"), None, "bad_request_body"),
        (None, Some("{\"a\":1}"), "bad_user_id"),
        (None, Some("[1.5]"), "bad_user_id"),
    ] {
        let r = put(json!({"coins": 3}), meta, ids).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], code, "{meta:?} {ids:?}");
    }
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(view["data"], json!({"coins": 2}), "nothing written by a refused request");
}
