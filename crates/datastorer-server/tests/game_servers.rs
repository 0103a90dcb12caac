//! What a client that pays per request (a Roblox game server's 500 a
//! minute) relies on: batches of session operations, renewing all of one
//! client's sessions at once. The server runs inside the test process.

mod common;

use common::server::{call, key_url, open, token_of, Server};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

async fn batch(c: &Client, s: &Server, ops: Value) -> (StatusCode, Value) {
    call(c, s, Method::POST, "/v1/batch", None, Some(json!({ "ops": ops }))).await
}

/// Opens `n` players' sessions as `client`; answers (key, token) pairs.
async fn players(c: &Client, s: &Server, client: &str, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("{client}-p{i}");
        let (st, v) = open(c, s, "profiles", &key, json!({ "client_id": client })).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        out.push((key, token_of(&v)));
    }
    out
}

async fn stored(c: &Client, s: &Server, key: &str) -> Value {
    let (st, v) = call(c, s, Method::GET, &key_url("profiles", key), None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

/// A counter from the server's `/metrics`.
async fn counter(c: &Client, s: &Server, name: &str) -> u64 {
    let text = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn one_batch_autosaves_a_hundred_players_in_shared_flushes_and_another_releases_them() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let held = players(&c, &s, "game-1", 100).await;

    let flushes_before = counter(&c, &s, "datastorer_storage_flushes_total").await;
    let ops: Vec<Value> = held
        .iter()
        .enumerate()
        .map(|(i, (key, t))| {
            json!({"op": "patch", "store": "profiles", "key": key, "lease_token": t, "data": {"coins": i}, "save": "normal"})
        })
        .collect();
    let (st, v) = batch(&c, &s, json!(ops)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!((v["succeeded"].clone(), v["failed"].clone()), (json!(100), json!(0)), "{v}");
    for r in v["results"].as_array().unwrap() {
        assert_eq!((r["status"].clone(), r["durable"].clone()), (json!(200), json!(true)), "{r}");
        assert!(r["revision"].as_u64().is_some_and(|n| n >= 1), "{r}");
        assert!(r.get("data").is_none(), "a batch never echoes documents: {r}");
    }
    let flushes = counter(&c, &s, "datastorer_storage_flushes_total").await - flushes_before;
    println!("100 durable saves in one batch took {flushes} storage flushes");
    assert!((1..50).contains(&flushes), "100 saves in one batch share group commits, took {flushes} flushes");
    for (i, (key, _)) in held.iter().enumerate().step_by(17) {
        assert_eq!(stored(&c, &s, key).await["data"], json!({"coins": i}), "durable before the answer");
    }

    // Shutdown of the game server: every player released with a final
    // patch, one request.
    let ops: Vec<Value> = held
        .iter()
        .map(|(key, t)| json!({"op": "release", "store": "profiles", "key": key, "lease_token": t, "data": {"left": true}, "priority": "emergency"}))
        .collect();
    let (st, v) = batch(&c, &s, json!(ops)).await;
    assert_eq!((st, v["succeeded"].clone()), (StatusCode::OK, json!(100)), "{v}");
    assert!(v["results"].as_array().unwrap().iter().all(|r| r["released"] == json!(true)), "{v}");
    for (i, (key, _)) in held.iter().enumerate().step_by(13) {
        let view = stored(&c, &s, key).await;
        assert_eq!(view["data"], json!({"coins": i, "left": true}), "the final patch is saved with the release");
        assert!(view["lease"].is_null(), "released: {view}");
    }
}

#[tokio::test]
async fn operations_on_one_key_run_in_order_and_a_failure_skips_only_that_keys_later_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let held = players(&c, &s, "game-1", 2).await;
    let ((a, ta), (b, tb)) = (&held[0], &held[1]);

    let (st, v) = batch(
        &c,
        &s,
        json!([
            {"op": "replace", "store": "profiles", "key": a, "lease_token": ta, "data": {"level": 1, "bag": {"x": 1}}},
            {"op": "patch", "store": "profiles", "key": b, "lease_token": "0".repeat(48), "data": {"level": 9}},
            {"op": "patch", "store": "profiles", "key": a, "lease_token": ta, "data": {"level": 2, "bag": {"x": null}}},
            {"op": "release", "store": "profiles", "key": b, "lease_token": tb},
            {"op": "save", "store": "profiles", "key": a, "lease_token": ta, "priority": "emergency"},
            {"op": "renew", "store": "profiles", "key": a, "lease_token": ta},
        ]),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 6);
    let statuses: Vec<u64> = r.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 409, 200, 424, 200, 200], "{v}");
    assert_eq!(r[1]["code"], "invalid_lease_token");
    assert_eq!(r[3]["code"], "skipped");
    assert!(r[3]["message"].as_str().unwrap().contains("ops[1]"), "{}", r[3]);
    assert_eq!((v["succeeded"].clone(), v["failed"].clone()), (json!(4), json!(2)));
    assert_eq!(r[5]["epoch"], 1);
    assert!(r[5]["expires_at_ms"].as_u64().is_some());
    assert_eq!(stored(&c, &s, a).await["data"], json!({"level": 2, "bag": {}}), "replace, then patch, then save");

    // The skipped release did not run: b is still held, its session intact.
    let (st, _) = call(&c, &s, Method::GET, &format!("{}/session", key_url("profiles", b)), Some(tb), None).await;
    assert_eq!(st, StatusCode::OK, "b's session must survive a skipped release");

    // A closed session answers why on a later batch.
    let (_, v) = batch(&c, &s, json!([{"op": "close", "store": "profiles", "key": b, "lease_token": tb}])).await;
    assert_eq!(v["results"][0]["closed"], true, "{v}");
    let (_, v) = batch(&c, &s, json!([{"op": "save", "store": "profiles", "key": b, "lease_token": tb}])).await;
    assert_eq!((v["results"][0]["status"].clone(), v["results"][0]["reason"].clone()), (json!(410), json!("closed")));
}

/// A game server that restarts re-opens its players in one request: each
/// `open` answers as the open route does (token, epoch, data, waiting
/// messages), a key held elsewhere fails alone, and the tokens work.
#[tokio::test]
async fn one_batch_opens_a_hundred_players_and_a_held_one_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let other = players(&c, &s, "game-2", 1).await;
    let (st, _) =
        call(&c, &s, Method::POST, &format!("{}/messages", key_url("profiles", "p-7")), None, Some(json!({"gift": 1})))
            .await;
    assert_eq!(st, StatusCode::OK);
    let mut ops: Vec<Value> = (0..100)
        .map(|i| json!({"op": "open", "store": "profiles", "key": format!("p-{i}"), "client_id": "game-1", "user_ids": [i]}))
        .collect();
    ops.push(json!({"op": "open", "store": "profiles", "key": other[0].0, "client_id": "game-1"}));
    let (st, v) = batch(&c, &s, json!(ops)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!((v["succeeded"].clone(), v["failed"].clone()), (json!(100), json!(1)), "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[100]["code"], "lease_held", "the held key fails alone: {}", results[100]);
    assert_eq!(results[7]["messages"][0]["message"], json!({"gift": 1}), "waiting messages come with the open");
    // The tokens are live sessions: one batch patches and saves them all.
    let saves: Vec<Value> = results[..100]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["status"], 200, "{r}");
            json!({"op": "patch", "store": "profiles", "key": format!("p-{i}"), "lease_token": token_of(r), "data": {"coins": i}, "save": "normal"})
        })
        .collect();
    let (_, v) = batch(&c, &s, json!(saves)).await;
    assert_eq!(v["succeeded"], json!(100), "{v}");
    let rec = stored(&c, &s, "p-42").await;
    assert_eq!((rec["data"]["coins"].clone(), rec["user_ids"].clone()), (json!(42), json!(["42"])));
}

#[tokio::test]
async fn a_malformed_batch_is_refused_whole_and_nothing_in_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let held = players(&c, &s, "game-1", 1).await;
    let (key, t) = &held[0];
    let good = json!({"op": "patch", "store": "profiles", "key": key, "lease_token": t, "data": {"coins": 1}, "save": "normal"});

    let bad_ones = [
        (json!({"op": "explode", "store": "profiles", "key": key, "lease_token": t}), "bad_request_body"),
        (json!({"op": "patch", "store": "profiles", "key": key, "lease_token": t}), "bad_operation"),
        (json!({"op": "renew", "store": "profiles", "key": key, "lease_token": t, "data": {}}), "bad_operation"),
        (json!({"op": "save", "store": "profiles", "key": key, "lease_token": t, "save": "normal"}), "bad_operation"),
        (
            json!({"op": "renew", "store": "profiles", "key": key, "lease_token": t, "priority": "normal"}),
            "bad_operation",
        ),
        (json!({"op": "save", "store": "profiles", "key": key, "lease_token": ""}), "bad_operation"),
        (json!({"op": "save", "store": "bad store!", "key": key, "lease_token": t}), "invalid_name"),
        (json!({"op": "save", "store": "profiles", "key": "", "lease_token": t}), "invalid_name"),
        (json!({"op": "save", "store": "profiles", "key": key, "lease_token": t, "extra": 1}), "bad_request_body"),
        (
            json!({"op": "save", "store": "profiles", "key": key, "lease_token": t, "priority": "urgent"}),
            "bad_request_body",
        ),
        (json!(["save"]), "bad_request_body"),
        (json!({"op": "save", "store": "profiles", "key": key}), "bad_operation"),
        (json!({"op": "open", "store": "profiles", "key": key, "lease_token": t}), "bad_operation"),
        (json!({"op": "open", "store": "profiles", "key": key, "data": {}}), "bad_operation"),
        (json!({"op": "save", "store": "profiles", "key": key, "lease_token": t, "client_id": "c"}), "bad_operation"),
    ];
    for (bad, code) in bad_ones {
        let (st, v) = batch(&c, &s, json!([good, bad])).await;
        assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!(code)), "{bad}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with("ops[1]"), "the error names the operation: {v}");
    }
    for body in [json!({}), json!({"ops": {}}), json!([]), json!({"ops": [], "more": 1})] {
        let (st, v) = call(&c, &s, Method::POST, "/v1/batch", None, Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let text = c.post(s.url("/v1/batch")).header("content-type", "application/json").body("{").send().await.unwrap();
    assert_eq!(text.status(), StatusCode::BAD_REQUEST);
    let plain = c.post(s.url("/v1/batch")).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let too_many: Vec<Value> = (0..1001).map(|_| good.clone()).collect();
    let (st, v) = batch(&c, &s, json!(too_many)).await;
    assert_eq!(
        (st, v["code"].clone(), v["max_operations"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("too_many_operations"), json!(1000))
    );

    assert_eq!(stored(&c, &s, key).await["data"], json!({}), "no refused batch ran its valid first operation");
    let (_, v) = batch(&c, &s, json!([good])).await;
    assert_eq!(v["results"][0]["durable"], true, "{v}");
    assert_eq!(stored(&c, &s, key).await["data"], json!({"coins": 1}));
}

#[tokio::test]
async fn a_batch_larger_than_the_body_limit_is_413_and_empty_batches_answer_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &["--max-body-bytes", "2048"]);
    let c = Client::new();
    let big: Vec<Value> = (0..40)
        .map(|i| json!({"op": "renew", "store": "profiles", "key": format!("k{i}"), "lease_token": "t".repeat(48)}))
        .collect();
    let (st, v) = batch(&c, &s, json!(big)).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("body_too_large")), "{v}");
    let (st, v) = batch(&c, &s, json!([])).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"results": [], "succeeded": 0, "failed": 0})));
}

#[tokio::test]
async fn renewing_by_client_id_renews_that_clients_sessions_under_that_api_key_only() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(
        tmp.path(),
        &["--api-key", "eu:write:eu-secret-0123456789", "--api-key", "us:write:us-secret-0123456789"],
    );
    let c = Client::new();
    let open_as = |secret: &'static str, client: &'static str, key: String| {
        let c = c.clone();
        let url = s.url(&format!("{}/session", key_url("profiles", &key)));
        async move {
            let r = c.post(url).bearer_auth(secret).json(&json!({"client_id": client})).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    for i in 0..3 {
        open_as("eu-secret-0123456789", "game-1", format!("a{i}")).await;
    }
    open_as("eu-secret-0123456789", "game-2", "b0".into()).await;
    // The same client id under another API key is another client.
    open_as("us-secret-0123456789", "game-1", "c0".into()).await;

    let renew = |secret: &'static str, client: &str| {
        let c = c.clone();
        let url = s.url(&format!("/v1/clients/{client}/renew"));
        async move {
            let r = c.post(url).bearer_auth(secret).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, v) = renew("eu-secret-0123456789", "game-1").await;
    assert_eq!((st, v["renewed"].clone()), (StatusCode::OK, json!(3)), "{v}");
    let keys: Vec<&str> = v["sessions"].as_array().unwrap().iter().map(|x| x["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a0", "a1", "a2"]);
    assert!(v["expires_at_ms"].as_u64().is_some());
    let (_, v) = renew("us-secret-0123456789", "game-1").await;
    assert_eq!(v["renewed"], 1, "{v}");
    let (_, v) = renew("eu-secret-0123456789", "nobody").await;
    assert_eq!((v["renewed"].clone(), v["expires_at_ms"].clone()), (json!(0), Value::Null));
    let (st, v) = renew("eu-secret-0123456789", &"x".repeat(129)).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_client_id")));
    let r = c.post(s.url("/v1/clients/game-1/renew")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// The feed's cursor now, for `client_id`.
async fn cursor(c: &Client, s: &Server, client: &str) -> u64 {
    let (_, v) = call(c, s, Method::GET, &format!("/v1/changes/poll?client_id={client}"), None, None).await;
    v["next"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

async fn poll(c: &Client, s: &Server, client: &str, after: u64, wait_ms: u64) -> Value {
    let url = format!("/v1/changes/poll?client_id={client}&after={after}&wait_ms={wait_ms}");
    let (st, v) = call(c, s, Method::GET, &url, None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn a_holder_asked_for_its_key_learns_it_and_hands_over_with_its_last_change() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "7");
    let (_, v) = open(&c, &s, "profiles", "7", json!({"client_id": "game-1"})).await;
    let t = token_of(&v);
    let (st, _) = call(&c, &s, Method::PATCH, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 1}))).await;
    assert_eq!(st, StatusCode::OK);
    let after = cursor(&c, &s, "game-1").await;

    // game-2 asks, granting ten seconds; its open waits for the hand-off.
    let teleport = {
        let (c, url) = (c.clone(), s.url(&format!("{k}/session")));
        tokio::spawn(async move {
            let body =
                json!({"client_id": "game-2", "policy": "request_release", "grace_ms": 10000, "timeout_ms": 15000});
            let r = c.post(url).json(&body).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        })
    };

    // game-1 hears it without polling its key: in its own feed...
    let page = poll(&c, &s, "game-1", after, 10_000).await;
    let ev = &page["events"][0];
    assert_eq!(
        (ev["kind"].clone(), ev["key"].clone(), ev["holder"].clone(), ev["by"].clone()),
        (json!("handoff_requested"), json!("7"), json!("game-1"), json!("game-2")),
        "{page}"
    );
    let deadline = ev["deadline_ms"].as_u64().unwrap();
    assert!(poll(&c, &s, "game-2", after, 0).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["holder"] != "game-1"));
    // ...and on the answer to any request on the session.
    let r = c.post(s.url(&format!("{k}/session/renew"))).header("Lease-Token", &t).send().await.unwrap();
    let notice = r.headers().get("handoff-requested").map(|h| h.to_str().unwrap().to_owned());
    assert_eq!(notice, Some(deadline.to_string()), "the renew's answer carries the notice");
    let (_, v) = batch(&c, &s, json!([{"op": "renew", "store": "profiles", "key": "7", "lease_token": t}])).await;
    assert_eq!(v["results"][0]["handoff"], json!({"by": "game-2", "deadline_ms": deadline}), "{v}");
    assert!(!teleport.is_finished(), "the key is not handed over while the holder has its grace");

    // Its last change goes with the release, and game-2 gets it.
    let (_, v) = batch(
        &c,
        &s,
        json!([{"op": "release", "store": "profiles", "key": "7", "lease_token": t, "data": {"coins": 2, "left": "teleport"}}]),
    )
    .await;
    assert_eq!(v["results"][0]["released"], true, "{v}");
    let (st, v) = teleport.await.unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!((v["data"].clone(), v["epoch"].clone()), (json!({"coins": 2, "left": "teleport"}), json!(2)));
    assert!(v.get("handoff").is_none(), "the new holder's session has no hand-off pending");
}

#[tokio::test]
async fn a_holder_that_lets_the_grace_pass_is_saved_handed_over_and_told_why() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "8");
    let (_, v) = open(&c, &s, "profiles", "8", json!({"client_id": "game-1"})).await;
    let t = token_of(&v);
    call(&c, &s, Method::PATCH, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 1}))).await;
    let after = cursor(&c, &s, "game-1").await;

    let body = json!({"client_id": "game-2", "policy": "request_release", "grace_ms": 200, "timeout_ms": 5000});
    let (st, v) = open(&c, &s, "profiles", "8", body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"], json!({"coins": 1}), "the silent holder's change was saved at the deadline");

    let (st, v) = call(&c, &s, Method::POST, &format!("{k}/session/save"), Some(&t), None).await;
    assert_eq!(
        (st, v["reason"].clone(), v["taken_over_by"].clone()),
        (StatusCode::GONE, json!("release_requested"), json!("game-2"))
    );
    let page = poll(&c, &s, "game-1", after, 10_000).await;
    let kinds: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["handoff_requested", "session_ended"], "{page}");
    assert_eq!(
        (page["events"][1]["reason"].clone(), page["events"][1]["by"].clone()),
        (json!("release_requested"), json!("game-2"))
    );
}

#[tokio::test]
async fn hand_off_and_holder_feed_inputs_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    for (body, code) in [
        (json!({"policy": "request_release", "grace_ms": 10001}), "bad_grace"),
        (json!({"policy": "fail", "grace_ms": 10}), "bad_grace"),
        (json!({"grace_ms": 10}), "bad_grace"),
        (json!({"policy": "request_release", "grace_ms": -1}), "bad_request_body"),
    ] {
        let (st, v) = open(&c, &s, "profiles", "9", body.clone()).await;
        assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!(code)), "{body}: {v}");
    }
    let url = format!("{}/session?policy=request_release&grace_ms=5", key_url("profiles", "9"));
    let (st, v) = call(&c, &s, Method::POST, &url, None, Some(json!({"grace_ms": 6}))).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("conflicting_parameters")));
    let (_, view) = call(&c, &s, Method::GET, &key_url("profiles", "9"), None, None).await;
    assert_eq!(view["code"], "no_such_key", "no refused open created the key: {view}");
    let long = "x".repeat(129);
    let (st, v) = call(&c, &s, Method::GET, &format!("/v1/changes/poll?client_id={long}"), None, None).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_client_id")));
}

#[tokio::test]
async fn reads_carry_an_etag_and_a_cached_read_is_a_304() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let url = s.url(&key_url("profiles", "gift"));
    let r = c.patch(&url).json(&json!({"coins": 1})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let written = r.headers()["etag"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["durable"].clone(), v["data"].clone()), (json!(true), json!({"coins": 1})));
    assert_eq!(written, format!("\"{}.{}\"", v["epoch"], v["revision"]));

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["etag"].to_str().unwrap(), written, "the read names the version the write made");
    let r = c.get(&url).header("If-None-Match", &written).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), written);
    assert!(r.bytes().await.unwrap().is_empty(), "a cached read costs no body");
    let r = c.get(&url).header("If-None-Match", format!("\"0.0\", W/{written}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "If-None-Match compares weakly, in a list");
    let r = c.get(&url).header("If-None-Match", "\"0.0\"").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(&url).header("If-None-Match", "nonsense").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_sessionless_update_is_conditional_and_refused_while_the_key_is_held() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let url = s.url(&key_url("profiles", "p"));
    let r = c.put(&url).json(&json!({"coins": 1, "bag": {"a": 1}})).send().await.unwrap();
    let first = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = c
        .patch(&url)
        .header("If-Match", &first)
        .header("content-type", "application/merge-patch+json")
        .header("Prefer", "return=minimal")
        .body(r#"{"bag": {"a": null, "b": 2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let second = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(r.json::<Value>().await.unwrap().get("data").is_none(), "return=minimal");

    // A writer that read the first version loses, and changes nothing.
    let r = c.patch(&url).header("If-Match", &first).json(&json!({"coins": 99})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "precondition_failed");
    let r =
        c.patch(s.url(&key_url("profiles", "absent"))).header("If-Match", "*").json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "If-Match: * needs a stored record");
    let (_, v) = call(&c, &s, Method::GET, &key_url("profiles", "absent"), None, None).await;
    assert_eq!(v["code"], "no_such_key");
    for (header, body, ctype, want) in [
        ("If-Match", "1.2", "application/json", StatusCode::BAD_REQUEST),
        ("X-None", "", "application/json", StatusCode::BAD_REQUEST),
        ("X-None", "[1", "application/json", StatusCode::BAD_REQUEST),
        ("X-None", "{}", "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let r = c.patch(&url).header(header, "1.2").header("content-type", ctype).body(body).send().await.unwrap();
        assert_eq!(r.status(), want, "{header} {body:?} {ctype}");
    }

    // Held by a client: 409 naming it, the session untouched.
    let (_, v) = open(&c, &s, "profiles", "p", json!({"client_id": "game-1"})).await;
    assert_eq!(v["data"], json!({"coins": 1, "bag": {"b": 2}}));
    let r = c.patch(&url).json(&json!({"coins": 5})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["code"].clone(), v["holder"].clone()), (json!("lease_held"), json!("game-1")));
    let r = c.get(&url).header("If-None-Match", &second).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "taking the lease is a write: a new version");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"], json!({"coins": 1, "bag": {"b": 2}}), "no refused write changed the document");
}

#[tokio::test]
async fn a_message_reaches_its_holder_through_the_feed_and_its_answers_until_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "p");
    let (_, v) = open(&c, &s, "profiles", "p", json!({"client_id": "game-1"})).await;
    let t = token_of(&v);
    assert!(v.get("messages").is_none(), "{v}");
    let after = cursor(&c, &s, "game-1").await;

    let (st, v) = call(&c, &s, Method::POST, &format!("{k}/messages"), None, Some(json!({"gift": "sword"}))).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"id": 1, "durable": true})));
    let page = poll(&c, &s, "game-1", after, 10_000).await;
    assert_eq!(page["events"][0]["kind"], "messages", "{page}");
    let r = c.post(s.url(&format!("{k}/session/renew"))).header("Lease-Token", &t).send().await.unwrap();
    assert_eq!(r.headers().get("messages-waiting").map(|h| h.to_str().unwrap().to_owned()).as_deref(), Some("1"));
    let (_, v) = batch(&c, &s, json!([{"op": "renew", "store": "profiles", "key": "p", "lease_token": t}])).await;
    assert_eq!(v["results"][0]["messages_waiting"], true, "{v}");

    let (st, v) = call(&c, &s, Method::GET, &format!("{k}/session/messages"), Some(&t), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["messages"][0]["message"], json!({"gift": "sword"}));
    assert_eq!(v["messages"][0]["id"], 1);
    let (st, v) =
        call(&c, &s, Method::POST, &format!("{k}/session/messages/ack"), Some(&t), Some(json!({"up_to": 1}))).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"removed": 1, "pending": 0, "durable": true})));
    let (_, v) =
        call(&c, &s, Method::POST, &format!("{k}/session/messages/ack"), Some(&t), Some(json!({"up_to": 1}))).await;
    assert_eq!(v["removed"], 0, "a retried ack is no error");
    let r = c.post(s.url(&format!("{k}/session/renew"))).header("Lease-Token", &t).send().await.unwrap();
    assert!(r.headers().get("messages-waiting").is_none(), "nothing waits after the ack");
}

#[tokio::test]
async fn a_gift_to_an_offline_player_arrives_with_their_next_join() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "offline");
    for gift in ["sword", "shield"] {
        let (st, _) = call(&c, &s, Method::POST, &format!("{k}/messages"), None, Some(json!({"gift": gift}))).await;
        assert_eq!(st, StatusCode::OK);
    }
    let (_, v) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(v["code"], "no_such_key", "a message does not create the player's record");
    let (_, v) = open(&c, &s, "profiles", "offline", json!({"client_id": "game-1"})).await;
    let gifts: Vec<&Value> = v["messages"].as_array().unwrap().iter().map(|m| &m["message"]["gift"]).collect();
    assert_eq!(gifts, [&json!("sword"), &json!("shield")], "in the order sent: {v}");
    let t = token_of(&v);
    let (_, v) = batch(&c, &s, json!([{"op": "patch", "store": "profiles", "key": "offline", "lease_token": t, "data": {"items": ["sword", "shield"]}, "save": "normal"}])).await;
    assert_eq!(v["results"][0]["durable"], true);
    call(&c, &s, Method::POST, &format!("{k}/session/messages/ack"), Some(&t), Some(json!({"up_to": 2}))).await;
    call(&c, &s, Method::POST, &format!("{k}/session/release"), Some(&t), None).await;
    let (_, v) = open(&c, &s, "profiles", "offline", json!({"client_id": "game-2"})).await;
    assert!(v.get("messages").is_none(), "acknowledged messages are gone for good: {v}");
    assert_eq!(v["data"], json!({"items": ["sword", "shield"]}));
}

#[tokio::test]
async fn message_inputs_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "p");
    let r = c
        .post(s.url(&format!("{k}/messages")))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r =
        c.post(s.url(&format!("{k}/messages"))).header("content-type", "text/plain").body("hi").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = c.post(s.url(&format!("{k}/messages"))).header("content-type", "application/json").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "an empty body is no message");
    let (st, _) = call(&c, &s, Method::POST, "/v1/stores/profiles/keys/bad%09key/messages", None, Some(json!(1))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    for path in ["/v1/stores/profiles:inbox/keys/p", "/v1/stores/profiles:inbox/keys"] {
        let (st, v) = call(&c, &s, Method::GET, path, None, None).await;
        assert_eq!((st, v["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_name")), "{path}: reserved: {v}");
    }
    let (_, v) = open(&c, &s, "profiles", "p", json!({})).await;
    let t = token_of(&v);
    for body in [json!({"up_to": -1}), json!({}), json!({"up_to": 1, "x": 2}), json!([1])] {
        let (st, v) =
            call(&c, &s, Method::POST, &format!("{k}/session/messages/ack"), Some(&t), Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (st, _) = call(&c, &s, Method::GET, &format!("{k}/session/messages"), None, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "the holder's own route needs its token");
    let (st, _) = call(&c, &s, Method::GET, &format!("{k}/session/messages"), Some(&"0".repeat(48)), None).await;
    assert_eq!(st, StatusCode::CONFLICT);
}

const KEYS: &str = r#"
[[api_keys]]
name = "eu"
key = "eu-secret-0123456789"
role = "write"
stores = ["profiles"]
requests_per_minute = 6

[[api_keys]]
name = "ops"
key = "ops-secret-0123456789"
role = "admin"
"#;

#[tokio::test]
async fn an_api_key_reaches_only_its_stores_and_spends_only_its_own_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("keys.toml");
    std::fs::write(&config, KEYS).unwrap();
    let s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    let c = Client::new();
    let send = |secret: &'static str, method: Method, path: &str, body: Option<Value>| {
        let mut r = c.request(method, s.url(path)).bearer_auth(secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (r.status(), retry, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let eu = "eu-secret-0123456789";
    let (st, _, _) = send(eu, Method::GET, "/v1/stores/profiles", None).await;
    assert_eq!(st, StatusCode::OK);
    for (method, path, body) in [
        (Method::GET, "/v1/stores/guilds/keys/g", None),
        (Method::POST, "/v1/stores/guilds/keys/g/messages", Some(json!(1))),
        (Method::GET, "/v1/changes/poll", None),
        (Method::GET, "/v1/changes/poll?store=guilds", None),
        (
            Method::POST,
            "/v1/batch",
            Some(json!({"ops": [{"op": "renew", "store": "guilds", "key": "g", "lease_token": "t"}]})),
        ),
    ] {
        let (st, _, v) = send(eu, method.clone(), path, body).await;
        assert_eq!((st, v["code"].clone()), (StatusCode::FORBIDDEN, json!("store_forbidden")), "{method} {path}: {v}");
    }
    // Six requests a minute: the seventh within the minute is refused...
    let (st, retry, v) = send(eu, Method::GET, "/v1/stores/profiles", None).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::TOO_MANY_REQUESTS, json!("rate_limited")), "{v}");
    assert!(retry.is_some_and(|s| (1..=10).contains(&s)), "Retry-After says when a request fits again: {retry:?}");
    // ...and costs nothing to the other keys.
    for _ in 0..20 {
        let (st, _, _) = send("ops-secret-0123456789", Method::GET, "/v1/stores/guilds", None).await;
        assert_eq!(st, StatusCode::OK);
    }
}

/// Every server of a Roblox game shares one API key (one Secret): with
/// `client_requests_per_minute`, each server (`Datastorer-Client-Id`) has
/// a budget of its own, so one in a retry loop cannot starve the others.
#[tokio::test]
async fn each_game_server_under_one_api_key_spends_only_its_own_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("keys.toml");
    std::fs::write(
        &config,
        "[[api_keys]]\nname = \"game\"\nkey = \"game-secret-0123456789\"\nrole = \"write\"\n\
         client_requests_per_minute = 5\nrequests_per_minute = 100\n",
    )
    .unwrap();
    let s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    let c = Client::new();
    let get = |client: Option<&'static str>| {
        let mut r = c.get(s.url("/v1/stores/profiles")).bearer_auth("game-secret-0123456789");
        if let Some(id) = client {
            r = r.header("Datastorer-Client-Id", id);
        }
        async move {
            let r = r.send().await.unwrap();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (r.status(), retry, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Server a spins in a loop and spends its five...
    for _ in 0..5 {
        assert_eq!(get(Some("roblox-1-job-a")).await.0, StatusCode::OK);
    }
    let (st, retry, v) = get(Some("roblox-1-job-a")).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::TOO_MANY_REQUESTS, json!("rate_limited")), "{v}");
    assert!(retry.is_some(), "with Retry-After");
    let said = v["message"].as_str().unwrap();
    assert!(said.contains("roblox-1-job-a") && said.contains("\"game\""), "names the client and the key: {said}");
    // ...and server b, on the same key, still has all of its own.
    for _ in 0..5 {
        assert_eq!(get(Some("roblox-1-job-b")).await.0, StatusCode::OK);
    }
    // Requests naming no client share one bucket of their own.
    assert_eq!(get(None).await.0, StatusCode::OK);
    // A bad client id is refused, never silently charged elsewhere.
    let r = c
        .get(s.url("/v1/stores/profiles"))
        .bearer_auth("game-secret-0123456789")
        .header("Datastorer-Client-Id", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// `GET /v1/stores/{store}/usage` counts a store's records and versions
/// (reusing a count younger than 30 s unless `fresh=true`) within the key's
/// stores; `GET /v1/whoami` says what the key is.
#[tokio::test]
async fn a_store_is_counted_and_a_key_says_what_it_may_do() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("keys.toml");
    std::fs::write(&config, KEYS.replace("requests_per_minute = 6", "requests_per_minute = 600")).unwrap();
    let s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    let c = Client::new();
    let get = |secret: &'static str, path: &str| {
        let r = c.get(s.url(path)).bearer_auth(secret).send();
        async move {
            let r = r.await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (eu, ops) = ("eu-secret-0123456789", "ops-secret-0123456789");
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        let r = c.put(s.url(&format!("/v1/stores/profiles/keys/{key}"))).bearer_auth(eu).json(&json!({ "n": i }));
        assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);
    }
    let (st, first) = get(eu, "/v1/stores/profiles/usage").await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert_eq!(
        (first["store"].as_str(), first["keys"].as_u64(), first["versions"].as_u64()),
        (Some("profiles"), Some(3), Some(3))
    );
    assert!(first["bytes"].as_u64().unwrap() > 3 * 7 && first["version_bytes"].as_u64().unwrap() > 0, "{first}");
    // A fourth key: the count of a moment ago is answered again, until asked fresh.
    let r = c.put(s.url("/v1/stores/profiles/keys/d")).bearer_auth(eu).json(&json!({ "n": 4 }));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);
    let (_, again) = get(eu, "/v1/stores/profiles/usage").await;
    assert_eq!(again, first, "reused within 30 s");
    let (_, fresh) = get(eu, "/v1/stores/profiles/usage?fresh=true").await;
    assert_eq!(fresh["keys"], 4, "{fresh}");
    assert!(fresh["measured_at_ms"].as_u64() >= first["measured_at_ms"].as_u64());
    // Outside the key's stores, or not a store name.
    let (st, v) = get(eu, "/v1/stores/guilds/usage").await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("store_forbidden")), "{v}");
    let (st, v) = get(ops, &format!("/v1/stores/{}/usage", "x".repeat(200))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = get(ops, "/v1/stores/guilds/usage").await;
    assert_eq!((st, v["keys"].as_u64()), (StatusCode::OK, Some(0)), "a store without records counts nothing: {v}");
    // A key is told only of its own stores.
    let r = c.put(s.url("/v1/stores/guilds/keys/g")).bearer_auth(ops).json(&json!({ "n": 1 }));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);
    let (_, v) = get(ops, "/v1/stores").await;
    assert_eq!(v["stores"], json!(["guilds", "profiles"]), "{v}");
    let (_, v) = get(eu, "/v1/stores").await;
    assert_eq!(v["stores"], json!(["profiles"]), "{v}");
    let (_, v) = get(eu, "/v1/stores?prefix=g").await;
    assert_eq!(v["stores"], json!([]), "{v}");
    // Who each key is.
    let (_, v) = get(eu, "/v1/whoami").await;
    assert_eq!(v, json!({"name": "eu", "role": "write", "stores": ["profiles"]}));
    let (_, v) = get(ops, "/v1/whoami").await;
    assert_eq!(v, json!({"name": "ops", "role": "admin", "stores": null}));
    let (st, _) = get("not-a-key-0123456789", "/v1/whoami").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

/// `GET /v1/stats` reads the budgets out (the console's health page): each
/// budgeted key's bucket and its most drawn clients, served and refused;
/// an admin sees every key, any other key its own only.
#[tokio::test]
async fn stats_show_the_budgets_of_each_key_and_client_to_whom_may_see_them() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("keys.toml");
    std::fs::write(
        &config,
        "[[api_keys]]\nname = \"game\"\nkey = \"game-secret-0123456789\"\nrole = \"write\"\n\
         client_requests_per_minute = 3\nrequests_per_minute = 100\n\n\
         [[api_keys]]\nname = \"tools\"\nkey = \"tools-secret-0123456789\"\nrole = \"write\"\nrequests_per_minute = 50\n\n\
         [[api_keys]]\nname = \"ops\"\nkey = \"ops-secret-0123456789\"\nrole = \"admin\"\n",
    )
    .unwrap();
    let s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    let c = Client::new();
    let get = |secret: &'static str, client: &'static str| {
        c.get(s.url("/v1/stores/profiles")).bearer_auth(secret).header("Datastorer-Client-Id", client).send()
    };
    for _ in 0..5 {
        get("game-secret-0123456789", "job-a").await.unwrap();
    }
    get("game-secret-0123456789", "job-b").await.unwrap();
    let stats = |secret: &'static str| {
        let r = c.get(s.url("/v1/stats")).bearer_auth(secret).send();
        async move { r.await.unwrap().json::<Value>().await.unwrap() }
    };
    let seen = stats("ops-secret-0123456789").await;
    let keys: Vec<&str> = seen["api_budgets"].as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["game", "tools"], "an admin sees every budgeted key: {seen}");
    let game = &seen["api_budgets"][0];
    assert_eq!(
        (game["requests_per_minute"].as_u64(), game["client_requests_per_minute"].as_u64()),
        (Some(100), Some(3))
    );
    assert_eq!(game["client_count"], 2);
    let a = &game["clients"][0];
    assert_eq!(
        (a["client"].as_str(), a["served"].as_u64(), a["refused"].as_u64()),
        (Some("job-a"), Some(3), Some(2)),
        "{game}"
    );
    assert!(a["used"].as_f64().unwrap() > 0.9, "job-a spent its burst: {a}");
    assert_eq!(game["total"]["served"], 4, "the refused never reached the key's bucket: {game}");
    assert_eq!(game["clients"][1]["client"], "job-b");
    // The game's own key sees its own budget, not the tools key's.
    let own = stats("game-secret-0123456789").await;
    let keys: Vec<&str> = own["api_budgets"].as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["game"], "{own}");
    assert_eq!(own["storage_budgets"]["write"], Value::Null, "no storage budget configured: unlimited");
}

#[test]
fn bad_scopes_and_budgets_are_refused_at_start_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("keys.toml");
    for (bad, field) in [
        (KEYS.replace(r#"stores = ["profiles"]"#, "stores = []"), "api_keys[0].stores"),
        (KEYS.replace(r#"stores = ["profiles"]"#, r#"stores = ["bad name"]"#), "api_keys[0].stores"),
        (KEYS.replace("requests_per_minute = 6", "requests_per_minute = 0"), "api_keys[0].requests_per_minute"),
        (KEYS.replace("requests_per_minute = 6", "requests_per_minute = -1"), "requests_per_minute"),
        (
            KEYS.replace("requests_per_minute = 6", "requests_per_minute = 6\nclient_requests_per_minute = 0"),
            "api_keys[0].client_requests_per_minute",
        ),
    ] {
        std::fs::write(&config, &bad).unwrap();
        let out = std::process::Command::new(common::server::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field}: {err}");
    }
}

/// A game server's view of the API: every request it sends is counted in
/// the minute of play it was sent in (the hour is played as fast as the
/// server answers; the minutes are the game's clock).
struct GameServer {
    c: Client,
    base: String,
    name: &'static str,
    minute: usize,
    per_minute: Vec<usize>,
}

impl GameServer {
    fn new(s: &Server, name: &'static str) -> GameServer {
        GameServer { c: Client::new(), base: s.base.clone(), name, minute: 0, per_minute: vec![0; 61] }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.per_minute[self.minute] += 1;
        let mut r = self.c.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.header("Lease-Token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    async fn join(&mut self, key: &str, policy: Value) -> Value {
        let mut body = json!({"client_id": self.name});
        body.as_object_mut().unwrap().extend(policy.as_object().unwrap().clone());
        let (st, v) = self.send(Method::POST, &format!("{}/session", key_url("profiles", key)), None, Some(body)).await;
        assert_eq!(st, StatusCode::OK, "{} joins {key}: {v}", self.name);
        v
    }

    async fn batch(&mut self, ops: Vec<Value>) -> Value {
        let (st, v) = self.send(Method::POST, "/v1/batch", None, Some(json!({ "ops": ops }))).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["failed"], 0, "{v}");
        v
    }

    async fn poll(&mut self, after: &mut u64) -> Vec<Value> {
        let path = format!("/v1/changes/poll?client_id={}&after={after}", self.name);
        let (_, v) = self.send(Method::GET, &path, None, None).await;
        *after = v["next"].as_u64().unwrap();
        v["events"].as_array().unwrap().clone()
    }
}

#[tokio::test]
async fn a_game_servers_hour_with_a_hundred_players_fits_the_request_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let mut game = GameServer::new(&s, "game-1");
    let mut other = GameServer::new(&s, "game-2");
    let mut admin = GameServer::new(&s, "admin");
    // Nothing happened yet: the feed starts at 0.
    let mut after = 0u64;

    // Minute 0: a hundred players join.
    let mut players: std::collections::BTreeMap<String, (String, u64)> = Default::default();
    for i in 0..100 {
        let key = format!("player-{i}");
        let v = game.join(&key, json!({})).await;
        players.insert(key, (token_of(&v), 0));
    }
    let mut gift_delivered = false;
    let mut teleported = Vec::new();
    for minute in 0..60 {
        for g in [&mut game, &mut other, &mut admin] {
            g.minute = minute;
        }
        for half in 0..2 {
            // Play: every player earns a coin; autosave every 30 s sends
            // what changed, saved, in one request (which also renews).
            let ops: Vec<Value> = players
                .iter_mut()
                .map(|(key, (t, coins))| {
                    *coins += 1;
                    json!({"op": "patch", "store": "profiles", "key": key, "lease_token": t, "data": {"coins": *coins}, "save": "normal"})
                })
                .collect();
            game.batch(ops).await;
            // The feed, long-polled (three 20 s polls a minute on Roblox).
            for _ in 0..(1 + half) {
                for e in game.poll(&mut after).await {
                    assert_ne!(e["kind"], "session_ended", "no player is lost: {e}");
                    if e["kind"] == "messages" {
                        let key = e["key"].as_str().unwrap().to_owned();
                        let t = players[&key].0.clone();
                        let (_, v) = game
                            .send(
                                Method::GET,
                                &format!("{}/session/messages", key_url("profiles", &key)),
                                Some(&t),
                                None,
                            )
                            .await;
                        assert!(!v["messages"].as_array().unwrap().is_empty());
                    }
                }
            }
        }
        match minute {
            // Two players teleport to game-2, which asks for them with a
            // grace; game-1 hears it in its feed and hands them over with
            // their last change.
            10 | 25 => {
                let key = format!("player-{minute}");
                let url = s.url(&format!("{}/session", key_url("profiles", &key)));
                other.per_minute[minute] += 1;
                let asked = tokio::spawn(async move {
                    let body = json!({"client_id": "game-2", "policy": "request_release", "grace_ms": 10000, "timeout_ms": 15000});
                    let r = Client::new().post(url).json(&body).send().await.unwrap();
                    r.json::<Value>().await.unwrap()
                });
                let notice = loop {
                    let events = game.poll(&mut after).await;
                    if let Some(e) = events.into_iter().find(|e| e["kind"] == "handoff_requested") {
                        break e;
                    }
                };
                assert_eq!(notice["key"], key.as_str());
                let (t, coins) = players.remove(&key).unwrap();
                let last = json!({"coins": coins + 1, "left_for": "game-2"});
                game.batch(vec![
                    json!({"op": "release", "store": "profiles", "key": key, "lease_token": t, "data": last}),
                ])
                .await;
                let v = asked.await.unwrap();
                assert_eq!(
                    v["data"],
                    json!({"coins": coins + 1, "left_for": "game-2"}),
                    "the holder's last change travels"
                );
                teleported.push(token_of(&v));
            }
            // A player logs off; an admin sends them a gift while they are
            // away; they come back and get it with their join.
            20 => {
                let (t, _) = players.remove("player-50").unwrap();
                game.batch(vec![json!({"op": "release", "store": "profiles", "key": "player-50", "lease_token": t})])
                    .await;
            }
            30 => {
                let path = format!("{}/messages", key_url("profiles", "player-50"));
                let (st, _) = admin.send(Method::POST, &path, None, Some(json!({"gift": "sword"}))).await;
                assert_eq!(st, StatusCode::OK);
            }
            40 => {
                let v = game.join("player-50", json!({})).await;
                assert_eq!(v["messages"][0]["message"], json!({"gift": "sword"}), "the gift waits for the join: {v}");
                let coins = v["data"]["coins"].as_u64().unwrap();
                let t = token_of(&v);
                let path = format!("{}/session/messages/ack", key_url("profiles", "player-50"));
                game.send(Method::POST, &path, Some(&t), Some(json!({"up_to": v["messages"][0]["id"]}))).await;
                players.insert("player-50".into(), (t, coins));
                gift_delivered = true;
            }
            _ => {}
        }
    }

    // Shutdown (BindToClose): every player saved and released, one request.
    game.minute = 60;
    let ops: Vec<Value> = players
        .iter()
        .map(|(key, (t, _))| json!({"op": "release", "store": "profiles", "key": key, "lease_token": t, "priority": "emergency"}))
        .collect();
    let v = game.batch(ops).await;
    assert_eq!(v["succeeded"], players.len());
    assert!(gift_delivered && teleported.len() == 2);
    for (key, (_, coins)) in players.iter().step_by(9) {
        let (_, view) = call(&game.c, &s, Method::GET, &key_url("profiles", key), None, None).await;
        assert_eq!(view["data"]["coins"], *coins, "every acknowledged save is there: {view}");
        assert!(view["lease"].is_null());
    }

    let most = *game.per_minute.iter().max().unwrap();
    let total: usize = game.per_minute.iter().sum();
    println!(
        "requests per minute of game-1 (minute: count): {:?}",
        game.per_minute.iter().enumerate().collect::<Vec<_>>()
    );
    println!("game-1: {total} requests in the hour, at most {most} in one minute (HttpService allows 500); game-2: {}; admin: {}",
        other.per_minute.iter().sum::<usize>(), admin.per_minute.iter().sum::<usize>());
    assert!(most <= 500, "a minute needed {most} requests");
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// One HTTP/1.1 request over TLS to `addr`, trusting only the test's
/// certificate; answers the response's text.
async fn https_get(addr: &str, path: &str) -> Result<String, String> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn with_a_certificate_the_server_speaks_https_and_only_https() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (fixture("cert.pem"), fixture("key.pem"));
    let s = Server::start(tmp.path(), &["--tls-cert", &cert, "--tls-key", &key]);
    let addr = s.base.trim_start_matches("http://").to_owned();
    let answer = https_get(&addr, "/v1/stores/profiles").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"template\""), "{answer}");
    // Plain HTTP to the TLS port gets no API answer.
    let plain = Client::new().get(s.url("/healthz")).send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != StatusCode::OK), "plain HTTP must not be served");
}

#[test]
fn tls_settings_are_checked_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let (cert, key) = (fixture("cert.pem"), fixture("key.pem"));
    let junk = junk.to_str().unwrap();
    for (args, says) in [
        (vec!["--tls-cert", cert.as_str()], "--tls-key"),
        (vec!["--tls-key", key.as_str()], "--tls-cert"),
        (vec!["--tls-cert", junk, "--tls-key", key.as_str()], "no PEM certificate"),
        (vec!["--tls-cert", cert.as_str(), "--tls-key", junk], "private key"),
        (vec!["--tls-cert", "/nonexistent.pem", "--tls-key", key.as_str()], "cannot read the certificate"),
        // TLS alone does not open a non-loopback address: that needs API keys.
        (vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str(), "--listen", "0.0.0.0:0"], "loopback"),
    ] {
        let out = std::process::Command::new(common::server::BIN)
            .args(["serve", "--data-dir"])
            .arg(tmp.path().join("data"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// One request a webhook receiver got.
struct Delivery {
    path: String,
    /// Header names lowercased.
    headers: std::collections::HashMap<String, String>,
    raw: Vec<u8>,
}

/// A local webhook receiver: answers the first request to `/flaky` with
/// 503 and everything else with 204; every request arrives on the channel.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut flaky_seen = false;
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut length = 0;
            let mut headers = std::collections::HashMap::new();
            loop {
                line.clear();
                stream.read_line(&mut line).await.unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await.unwrap();
            let fail = path == "/flaky" && !flaky_seen;
            flaky_seen |= path == "/flaky";
            let status = if fail { "503 Service Unavailable" } else { "204 No Content" };
            let _ =
                stream.get_mut().write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            let _ = tx.send(Delivery { path, headers, raw: body });
        }
    });
    (base, rx)
}

#[tokio::test]
async fn webhooks_receive_alerts_in_their_format_and_a_failed_delivery_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook, mut received) = receiver().await;
    let config = tmp.path().join("hooks.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nurl = \"{hook}/flaky\"\n\n[[webhooks]]\nurl = \"{hook}/discord\"\nformat = \"discord\"\n\n\
             [[webhooks]]\nurl = \"{hook}/slack\"\nformat = \"slack\"\n\n[[webhooks]]\nurl = \"{hook}/critical-only\"\nevents = [\"critical\"]\n\n\
             [[webhooks]]\nurl = \"{hook}/signed\"\nsecret = \"a-shared-secret-0123\"\n"
        ),
    )
    .unwrap();
    let s = Server::start(tmp.path(), &["--config", config.to_str().unwrap()]);
    let c = Client::new();
    let (st, v) = call(&c, &s, Method::POST, "/v1/webhooks/test", None, None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"webhooks": 5})));

    let mut got: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    let mut signed = None;
    while got.get("/flaky").map_or(0, Vec::len) < 2
        || !got.contains_key("/discord")
        || !got.contains_key("/slack")
        || signed.is_none()
    {
        let d = tokio::time::timeout(std::time::Duration::from_secs(20), received.recv()).await.unwrap().unwrap();
        // Host carries the port the URL named (not the scheme's default).
        assert_eq!(d.headers["host"], hook.trim_start_matches("http://"), "{:?}", d.headers);
        got.entry(d.path.clone()).or_default().push(serde_json::from_slice(&d.raw).unwrap_or(Value::Null));
        if d.path == "/signed" {
            signed = Some(d);
        } else {
            assert!(!d.headers.contains_key("x-datastorer-signature"), "only a hook with a secret is signed");
        }
    }
    // The receiver's check: HMAC-SHA256 of TIMESTAMP.BODY under the secret.
    let signed = signed.unwrap();
    let timestamp: u64 = signed.headers["x-datastorer-timestamp"].parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(timestamp) < 60, "a current timestamp: {timestamp}");
    let expected = datastorer_server::webhook_signature("a-shared-secret-0123", timestamp, &signed.raw);
    assert_eq!(signed.headers["x-datastorer-signature"], expected);
    let flaky = &got["/flaky"];
    assert_eq!(flaky[0], flaky[1], "the same alert again after the 503");
    assert_eq!(flaky[0]["alerts"][0]["kind"], "test");
    assert_eq!(flaky[0]["source"], "datastorer");
    assert!(got["/discord"][0]["content"].as_str().unwrap().contains("1× test"), "{:?}", got["/discord"]);
    assert!(got["/slack"][0]["text"].as_str().unwrap().contains("1× test"));
    assert!(!got.contains_key("/critical-only"), "an endpoint gets only the alerts it asked for");
}

#[test]
fn a_bad_webhook_url_is_refused_at_start_without_repeating_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("hooks.toml");
    std::fs::write(&config, "[[webhooks]]\nurl = \"ftp://hooks.example/SECRET-TOKEN\"\n").unwrap();
    let out = std::process::Command::new(common::server::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("webhooks[0].url") && !err.contains("SECRET-TOKEN"), "{err}");
    std::fs::write(&config, "[[webhooks]]\nurl = \"http://h/\"\nformat = \"teams\"\n").unwrap();
    let out =
        std::process::Command::new(common::server::BIN).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("teams"));
    std::fs::write(&config, "[[webhooks]]\nurl = \"http://h/\"\nsecret = \"SHORT\"\n").unwrap();
    let out =
        std::process::Command::new(common::server::BIN).args(["serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("webhooks[0].secret") && !err.contains("SHORT"), "{err}");
}

/// What the Luau client relies on to start a new key at the newest data
/// version without running migrations: the open that creates a record
/// answers revision 1, and every later open more.
#[tokio::test]
async fn an_open_that_creates_the_record_answers_revision_1_and_only_that_one() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let (st, first) = open(&c, &s, "profiles", "fresh", json!({ "client_id": "game-1" })).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert_eq!(first["revision"], json!(1), "{first}");
    let (st, again) = open(&c, &s, "profiles", "fresh", json!({ "client_id": "game-1" })).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(
        (again["resumed"].clone(), again["revision"].clone()),
        (json!(true), json!(1)),
        "a resumed open is the same session: {again}"
    );
    let path = format!("{}/session/release", key_url("profiles", "fresh"));
    let (st, v) = call(&c, &s, Method::POST, &path, Some(&token_of(&first)), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, later) = open(&c, &s, "profiles", "fresh", json!({ "client_id": "game-2" })).await;
    assert_eq!(st, StatusCode::OK, "{later}");
    assert!(later["revision"].as_u64().unwrap() >= 2, "{later}");
}
