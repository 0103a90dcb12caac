//! A fleet: several `datastorer serve` processes on one PostgreSQL
//! database sharing a fleet secret. A session request that reaches a
//! server not holding the session is forwarded to the one that does (one
//! hop, authenticated with the fleet's secret, the entering key's role and
//! scope applied by the holder), `Datastorer-Route: direct` still gets the
//! `421`, a request claiming to be forwarded without the secret is refused,
//! and a holder that is gone is a quick `503` with `Retry-After`. Prints
//! the cost of a forwarded request against a direct one.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgSchema;
use common::server::{call, key_url, open, token_of, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::json;

const FLEET: &str = "fleet-secret-0123456789-0123456789-abcdef";

fn server(pg: &PgSchema, dir: &std::path::Path, name: &str) -> Server {
    server_with_ttl(pg, dir, name, "10")
}

fn server_with_ttl(pg: &PgSchema, dir: &std::path::Path, name: &str, ttl: &str) -> Server {
    let args = ["--owner-id", name, "--lease-ttl-secs", ttl, "--autosave-interval-secs", "2", "--fleet-secret", FLEET];
    Server::start_pg(&dir.join(name), &pg.url, &pg.schema, &args)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn any_server_answers_for_a_session_held_on_another() {
    let Some(pg) = PgSchema::new("any_server_answers_for_a_session_held_on_another") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut a = server(&pg, tmp.path(), "srv-a");
    let b = server(&pg, tmp.path(), "srv-b");
    let c = Client::new();
    let k = key_url("profiles", "p1");
    let (st, v) = open(&c, &a, "profiles", "p1", json!({"client_id": "game-1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let t = token_of(&v);

    // Through b: forwarded to a, answered as a answers.
    let r = c
        .patch(b.url(&format!("{k}/session/data?save=normal")))
        .header("Lease-Token", &t)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"coins": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("datastorer-forwarded"), "says it went through another server");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((v["durable"].clone(), v["data"]["coins"].clone()), (json!(true), json!(5)), "{v}");
    let (st, v) = call(&c, &b, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!((st, v["data"]["coins"].clone()), (StatusCode::OK, json!(5)), "{v}");
    let (_, stored) = call(&c, &b, Method::GET, &k, None, None).await;
    assert_eq!(stored["data"]["coins"], 5, "durable, as the answer said");

    // A client that asks for the 421 gets it.
    let r = c.get(b.url(&format!("{k}/session"))).header("Lease-Token", &t).header("Datastorer-Route", "direct");
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);

    // Another client's open through b: held on a, said as a 421 says it.
    let (st, v) = open(&c, &b, "profiles", "p1", json!({"client_id": "game-2", "policy": "fail"})).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::CONFLICT, json!("lease_held")), "{v}");
    assert_eq!(
        (v["holder_server"].as_str(), v["advertise_url"].as_str()),
        (Some("srv-a"), Some(a.base.as_str())),
        "{v}"
    );
    assert_eq!(v["message"], "the key is held by a session on another server (\"srv-a\")", "{v}");
    assert!(v["expires_at_ms"].as_u64().is_some_and(|e| e > 0), "{v}");

    // Claiming to be a server of the fleet takes its secret.
    let r = c
        .get(a.url(&format!("{k}/session")))
        .header("Lease-Token", &t)
        .header("Datastorer-Fleet-Key", "not-the-fleet-secret-0123456789-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The cost of a hop: the same small save, direct and forwarded.
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for i in 0..100 {
        for (server, times) in [(&a, &mut direct), (&b, &mut forwarded)] {
            let started = Instant::now();
            let r = c
                .patch(server.url(&format!("{k}/session/data")))
                .header("Lease-Token", &t)
                .header("content-type", "application/merge-patch+json")
                .body(format!(r#"{{"n": {i}}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            times.push(started.elapsed());
        }
    }
    let (d, f) = (median(direct), median(forwarded));
    println!(
        "a session change, median of 100 alternating: direct {:.2} ms, forwarded {:.2} ms (+{:.2} ms for the hop)",
        d.as_secs_f64() * 1000.0,
        f.as_secs_f64() * 1000.0,
        (f.as_secs_f64() - d.as_secs_f64()) * 1000.0
    );

    // A large document (1 MiB, beyond actix's default payload limit) goes
    // through the hop whole.
    let big = "x".repeat(1 << 20);
    let r = c
        .put(b.url(&format!("{k}/session/data?save=normal")))
        .header("Lease-Token", &t)
        .header("content-type", "application/json")
        .body(json!({ "coins": 5, "blob": big }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let (_, stored) = call(&c, &a, Method::GET, &k, None, None).await;
    assert_eq!(stored["data"]["blob"].as_str().map(str::len), Some(1 << 20));

    // The holder is gone: a quick 503 with Retry-After, never a hang.
    a.kill();
    let started = Instant::now();
    let r = c.get(b.url(&format!("{k}/session"))).header("Lease-Token", &t).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "holder_unreachable", "{v}");
    println!("a dead holder answered 503 in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
}

/// A batch sent to one server with operations on sessions held on two:
/// each holder's share goes to it in one hop, and the answers come back in
/// the order sent.
#[tokio::test]
async fn a_batch_spanning_two_holders_is_answered_in_the_order_sent() {
    let Some(pg) = PgSchema::new("a_batch_spanning_two_holders_is_answered_in_the_order_sent") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = server(&pg, tmp.path(), "srv-a");
    let b = server(&pg, tmp.path(), "srv-b");
    let c = Client::new();
    let (_, v) = open(&c, &a, "profiles", "on-a", json!({"client_id": "game-1"})).await;
    let ta = token_of(&v);
    let (_, v) = open(&c, &b, "profiles", "on-b", json!({"client_id": "game-1"})).await;
    let tb = token_of(&v);
    let ops = json!([
        {"op": "patch", "store": "profiles", "key": "on-a", "lease_token": ta, "data": {"coins": 1}},
        {"op": "patch", "store": "profiles", "key": "on-b", "lease_token": tb, "data": {"coins": 2}, "save": "normal"},
        {"op": "save", "store": "profiles", "key": "on-a", "lease_token": ta},
        {"op": "release", "store": "profiles", "key": "on-b", "lease_token": tb},
        {"op": "renew", "store": "profiles", "key": "on-a", "lease_token": "not-a-token-of-anyone-000000000000000000000000"},
    ]);
    let (st, v) = call(&c, &b, Method::POST, "/v1/batch", None, Some(json!({ "ops": ops }))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r[0]["status"], 200, "{v}");
    assert_eq!((r[1]["status"].clone(), r[1]["durable"].clone()), (json!(200), json!(true)), "{v}");
    assert_eq!((r[2]["status"].clone(), r[2]["durable"].clone()), (json!(200), json!(true)), "{v}");
    assert_eq!(r[3]["released"], true, "{v}");
    assert_eq!(r[4]["status"], 409, "a wrong token is wrong on its holder too: {v}");
    let (_, rec) = call(&c, &a, Method::GET, &key_url("profiles", "on-a"), None, None).await;
    assert_eq!(rec["data"]["coins"], 1, "saved by its holder a");
    // One renew, sent to either server, renews the client's sessions on both.
    let (_, v) = open(&c, &b, "profiles", "on-b-2", json!({"client_id": "game-1"})).await;
    assert!(v["lease_token"].is_string(), "{v}");
    for entry in [&a, &b] {
        let (st, v) = call(&c, entry, Method::POST, "/v1/clients/game-1/renew", None, None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let mut keys: Vec<&str> =
            v["sessions"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["on-a", "on-b-2"], "{v}");
        assert_eq!(v["renewed"], 2);
    }
    let (_, rec) = call(&c, &a, Method::GET, &key_url("profiles", "on-b"), None, None).await;
    assert_eq!(
        (rec["data"]["coins"].clone(), rec["lease"].clone()),
        (json!(2), json!(null)),
        "saved and released by b"
    );
}

#[test]
fn a_short_fleet_secret_is_refused_at_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::server::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--fleet-secret", "too-short", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fleet-secret") && err.contains("32"), "{err}");
}

/// Polls `/v1/changes/poll` at `s` with `query` and `after`; answers the page.
async fn poll(c: &Client, s: &Server, query: &str, after: Option<&str>) -> serde_json::Value {
    let mut url = s.url(&format!("/v1/changes/poll?{query}"));
    if let Some(after) = after {
        url.push_str(&format!("&after={}", after.replace('%', "%25").replace(',', "%2C").replace(':', "%3A")));
    }
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// A client's notices come from the servers holding its sessions, and its
/// feed may be polled through any server: the cursor names each server, a
/// first poll starts every one at now (nothing of an earlier session is
/// replayed), and each notice arrives once. A store's feed polled through
/// another server is read where its cursor was made; once that server is
/// gone it starts again with `lagged`.
#[tokio::test]
async fn feeds_are_read_through_any_server() {
    let Some(pg) = PgSchema::new("feeds_are_read_through_any_server") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut a = server(&pg, tmp.path(), "srv-a");
    let b = server(&pg, tmp.path(), "srv-b");
    let c = Client::new();
    let steal = json!({"client_id": "game-2", "policy": "steal"});
    // Before the client first polls: a session of it ends (not to be replayed).
    let (_, v) = open(&c, &a, "profiles", "old", json!({"client_id": "game-1"})).await;
    open(&c, &b, "profiles", "old", steal.clone()).await;
    // The steal reaches a by notice: wait until a's own feed (read there
    // alone, `Datastorer-Route: direct`) has the session's end.
    assert!(v["lease_token"].is_string(), "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .get(a.url("/v1/changes/poll?client_id=game-1&after=0&wait_ms=1000"))
            .header("Datastorer-Route", "direct")
            .send()
            .await
            .unwrap();
        let page: serde_json::Value = r.json().await.unwrap();
        if page["events"].as_array().is_some_and(|e| e.iter().any(|e| e["key"] == "old")) {
            break;
        }
        assert!(Instant::now() < deadline, "a hears of the steal: {page}");
    }
    let first = poll(&c, &a, "client_id=game-1&wait_ms=5000", None).await;
    assert_eq!(first["events"], json!([]), "a first poll only finds where every server is: {first}");
    let mut cursor = first["next"].as_str().expect("a fleet cursor").to_owned();
    assert!(cursor.contains("srv-a:") && cursor.contains("srv-b:"), "{cursor}");

    // Two sessions on two servers, each taken by another client.
    open(&c, &a, "profiles", "k-a", json!({"client_id": "game-1"})).await;
    open(&c, &b, "profiles", "k-b", json!({"client_id": "game-1"})).await;
    open(&c, &b, "profiles", "k-a", steal.clone()).await;
    open(&c, &a, "profiles", "k-b", steal).await;
    let mut seen = Vec::new();
    for entry in [&b, &a].into_iter().cycle() {
        if seen.len() >= 2 || Instant::now() > deadline {
            break;
        }
        let page = poll(&c, entry, "client_id=game-1&wait_ms=3000", Some(&cursor)).await;
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["kind"], "session_ended", "{e}");
            seen.push((e["key"].as_str().unwrap().to_owned(), e["server"].as_str().unwrap().to_owned()));
        }
        cursor = page["next"].as_str().unwrap().to_owned();
    }
    seen.sort();
    assert_eq!(
        seen,
        [("k-a".to_owned(), "srv-a".to_owned()), ("k-b".to_owned(), "srv-b".to_owned())],
        "each notice once, from the server that held the session"
    );
    for entry in [&a, &b] {
        let page = poll(&c, entry, "client_id=game-1&wait_ms=0", Some(&cursor)).await;
        assert_eq!(page["events"], json!([]), "nothing twice: {page}");
    }

    // A store's feed: made on a, read through b.
    let page = poll(&c, &a, "store=profiles&wait_ms=0", None).await;
    let store_cursor = page["next"].as_str().unwrap().to_owned();
    assert!(store_cursor.starts_with("srv-a:"), "{store_cursor}");
    let (_, v) = open(&c, &a, "profiles", "saved-on-a", json!({"client_id": "game-3"})).await;
    let r = c
        .patch(a.url(&format!("{}/session/data?save=normal", key_url("profiles", "saved-on-a"))))
        .header("Lease-Token", token_of(&v))
        .json(&json!({"coins": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut saved = false;
    let mut store_cursor = store_cursor;
    while !saved && Instant::now() < deadline {
        let page = poll(&c, &b, "store=profiles&wait_ms=3000", Some(&store_cursor)).await;
        assert_eq!(page["lagged"], false, "{page}");
        saved = page["events"].as_array().unwrap().iter().any(|e| e["kind"] == "saved" && e["key"] == "saved-on-a");
        store_cursor = page["next"].as_str().unwrap().to_owned();
        assert!(store_cursor.starts_with("srv-a:"), "still read on a: {store_cursor}");
    }
    assert!(saved, "the save reached the feed read through b");
    // Its server gone: the feed starts again on b and says events may be missed.
    a.kill();
    let page = poll(&c, &b, "store=profiles&wait_ms=0", Some(&store_cursor)).await;
    assert_eq!(page["lagged"], true, "{page}");
    assert!(page["next"].as_str().unwrap().starts_with("srv-b:"), "{page}");
}

/// Runs clients/luau/tests/specs/Fleet.spec.luau against `servers`
/// servers (`srv-a` first, the one that goes away) behind the shim's
/// round-robin front, with `mode` `kill` (SIGKILL, 5 s leases) or `stop`
/// (SIGTERM, a rolling upgrade).
fn luau_fleet(test: &str, servers: usize, mode: &str) {
    let Some(pg) = PgSchema::new(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let fleet: Vec<Server> =
        ["srv-a", "srv-b", "srv-c"][..servers].iter().map(|n| server_with_ttl(&pg, tmp.path(), n, "5")).collect();
    let env = std::collections::HashMap::from([
        ("base_url", fleet[1].base.clone()),
        ("base_urls", fleet.iter().map(|s| s.base.as_str()).collect::<Vec<_>>().join(",")),
        ("victim_pid", fleet[0].pid().to_string()),
        ("lease_ttl_secs", "5".to_owned()),
        ("mode", mode.to_owned()),
    ]);
    common::luau::run_spec("specs/Fleet.spec", env);
}

/// The Luau client behind a round-robin load balancer in front of two
/// servers, one of which is killed mid-play: its keys are re-opened
/// through the other once their leases lapse, with the changes it never
/// stored saved on top; a key someone else wrote meanwhile ends with
/// "lease lost".
#[test]
fn luau_a_dead_servers_players_stay_in_the_game() {
    luau_fleet("luau_a_dead_servers_players_stay_in_the_game", 2, "kill");
}

/// The same over three servers.
#[test]
fn luau_a_dead_servers_players_stay_in_the_game_of_three_servers() {
    luau_fleet("luau_a_dead_servers_players_stay_in_the_game_of_three_servers", 3, "kill");
}

/// A rolling upgrade: one server of the fleet is stopped (SIGTERM), saves
/// and releases its sessions, and the Luau client's players on it carry on
/// through the others at once, none closed.
#[test]
fn luau_a_rolling_upgrade_keeps_every_player() {
    luau_fleet("luau_a_rolling_upgrade_keeps_every_player", 3, "stop");
}
