//! Version history and the fenced restore over HTTP: every acknowledged
//! save is listed, one version and the one at a time are read back, a
//! restore (admin only) ends a client's live session with `restored` (its
//! `410` and its feed say so) after saving its change, and a holder in
//! another process on PostgreSQL is handed off the same way.

mod common;

use common::pg::PgSchema;
use common::server::{call, key_url, open, token_of, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn versions_are_listed_read_and_restored_through_the_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let c = Client::new();
    let k = key_url("profiles", "p1");
    let (st, v) = open(&c, &s, "profiles", "p1", json!({"client_id": "game-1", "user_ids": [42]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let t = token_of(&v);
    let mut saved = Vec::new();
    for coins in [10, 20, 30] {
        let (st, v) = call(
            &c,
            &s,
            Method::PUT,
            &format!("{k}/session/data?save=normal"),
            Some(&t),
            Some(json!({"coins": coins, "purchases": []})),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        saved.push(v["revision"].as_u64().unwrap());
    }
    let (st, page) = call(&c, &s, Method::GET, &format!("{k}/versions?order=oldest"), None, None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    let listed: Vec<u64> =
        page["versions"].as_array().unwrap().iter().map(|v| v["revision"].as_u64().unwrap()).collect();
    assert_eq!(listed[1..], saved[..], "every acknowledged save, after the create");
    assert!(page["versions"].as_array().unwrap().iter().all(|v| v["user_ids"] == json!(["42"])));
    // Paging, newest first.
    let (_, first) = call(&c, &s, Method::GET, &format!("{k}/versions?limit=2"), None, None).await;
    assert_eq!(first["versions"][0]["revision"], json!(saved[2]));
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) = call(&c, &s, Method::GET, &format!("{k}/versions?limit=2&cursor={cursor}"), None, None).await;
    assert_eq!(second["versions"][0]["revision"], json!(saved[0]));

    let twenty = page["versions"][2].clone();
    let (st, one) =
        call(&c, &s, Method::GET, &format!("{k}/versions/{}", twenty["version"].as_str().unwrap()), None, None).await;
    assert_eq!((st, one["data"]["coins"].clone()), (StatusCode::OK, json!(20)), "{one}");
    let at = twenty["saved_at_ms"].as_u64().unwrap();
    let (st, then) = call(&c, &s, Method::GET, &format!("{k}/versions/at?time_ms={at}"), None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(then["revision"].as_u64().unwrap() >= twenty["revision"].as_u64().unwrap());
    let (st, e) = call(&c, &s, Method::GET, &format!("{k}/versions/9.9"), None, None).await;
    assert_eq!((st, e["code"].clone()), (StatusCode::NOT_FOUND, json!("no_such_version")));
    let (st, e) = call(&c, &s, Method::GET, &format!("{k}/versions/nine"), None, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");

    // A purchase the client has not saved yet, then the restore to 20 coins
    // that keeps purchases.
    let (st, _) = call(
        &c,
        &s,
        Method::PUT,
        &format!("{k}/session/data"),
        Some(&t),
        Some(json!({"coins": 31, "purchases": ["sword"]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let body = json!({"version": twenty["version"], "keep": ["/purchases"]});
    let (st, restored) = call(&c, &s, Method::POST, &format!("{k}/restore"), None, Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{restored}");
    assert_eq!(restored["holder"], "released");
    let (st, ended) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!((st, ended["reason"].clone()), (StatusCode::GONE, json!("restored")), "{ended}");
    let (_, view) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(view["data"], json!({"coins": 20, "purchases": ["sword"]}));
    assert_eq!(view["epoch"], json!(2), "a new epoch");
    // The client's own feed tells it why.
    let (st, feed) = call(&c, &s, Method::GET, "/v1/changes/poll?client_id=game-1&after=0", None, None).await;
    assert_eq!(st, StatusCode::OK, "{feed}");
    assert!(feed.to_string().contains("restored"), "{feed}");
    // Bad restores say why and change nothing.
    for (body, code) in [
        (json!({}), "bad_request_body"),
        (json!({"version": "1.1", "at_ms": 5}), "bad_request_body"),
        (json!({"version": "77.1"}), "no_such_version"),
        (json!({"version": twenty["version"], "keep": ["purchases"]}), "restore_refused"),
    ] {
        let (st, e) = call(&c, &s, Method::POST, &format!("{k}/restore"), None, Some(body.clone())).await;
        assert_eq!(e["code"], code, "{body}: {st} {e}");
    }
}

#[tokio::test]
async fn reading_history_takes_the_read_role_and_restoring_the_admin_role() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(
        tmp.path(),
        &["--api-key", "dash:read:read-secret-0123456789", "--api-key", "ops:admin:admin-secret-0123456789"],
    );
    let c = Client::new();
    let k = key_url("profiles", "p1");
    let put = c.put(s.url(&k)).bearer_auth("admin-secret-0123456789").json(&json!({"coins": 1})).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let list = c.get(s.url(&format!("{k}/versions"))).bearer_auth("read-secret-0123456789").send().await.unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    let versions: Value = list.json().await.unwrap();
    let v = versions["versions"][0]["version"].as_str().unwrap().to_owned();
    let body = json!({ "version": v });
    let as_reader =
        c.post(s.url(&format!("{k}/restore"))).bearer_auth("read-secret-0123456789").json(&body).send().await.unwrap();
    assert_eq!(as_reader.status(), StatusCode::FORBIDDEN);
    let as_admin =
        c.post(s.url(&format!("{k}/restore"))).bearer_auth("admin-secret-0123456789").json(&body).send().await.unwrap();
    assert_eq!(as_admin.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_restore_through_one_server_process_fences_a_holder_in_another_on_postgres() {
    let Some(pg) = PgSchema::new("a_restore_through_one_server_fences_a_holder_in_another") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let args = |name: &'static str| vec!["--owner-id", name, "--lease-ttl-secs", "4", "--autosave-interval-secs", "1"];
    let game = Server::start_pg(&tmp.path().join("game"), &pg.url, &pg.schema, &args("srv-game"));
    let admin = Server::start_pg(&tmp.path().join("admin"), &pg.url, &pg.schema, &args("srv-admin"));
    let c = Client::new();
    let k = key_url("profiles", "p1");
    let (st, v) = open(&c, &game, "profiles", "p1", json!({"client_id": "game-1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let t = token_of(&v);
    let (_, first) =
        call(&c, &game, Method::PUT, &format!("{k}/session/data?save=normal"), Some(&t), Some(json!({"coins": 5})))
            .await;
    let (_, _) =
        call(&c, &game, Method::PUT, &format!("{k}/session/data?save=normal"), Some(&t), Some(json!({"coins": 6})))
            .await;
    let (_, _) = call(&c, &game, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 7}))).await;
    let version = format!("{}.{}", first["epoch"].as_u64().unwrap_or(1), first["revision"].as_u64().unwrap());
    let (st, restored) =
        call(&c, &admin, Method::POST, &format!("{k}/restore"), None, Some(json!({"version": version}))).await;
    assert_eq!(st, StatusCode::OK, "{restored}");
    assert_eq!(restored["holder"], "released", "the other process saved and handed the key over");
    let (st, ended) = call(&c, &game, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!((st, ended["reason"].clone()), (StatusCode::GONE, json!("restored")), "{ended}");
    let (st, w) = call(&c, &game, Method::PUT, &format!("{k}/session/data"), Some(&t), Some(json!({"coins": 8}))).await;
    assert_eq!(st, StatusCode::GONE, "the old holder never writes again: {w}");
    let (_, view) = call(&c, &admin, Method::GET, &k, None, None).await;
    assert_eq!(view["data"], json!({"coins": 5}));
    let (_, page) = call(&c, &admin, Method::GET, &format!("{k}/versions"), None, None).await;
    assert_eq!(page["versions"][1]["size"], json!(br#"{"coins":7}"#.len()), "the holder's last change kept: {page}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A store restore killed with `kill -9` half-way and run again: it resumes
/// after the last key done, ends with every key as it was at T, and no key
/// is restored twice (each gets exactly one new version from it).
#[tokio::test]
async fn a_store_restore_killed_half_way_resumes_and_does_nothing_twice() {
    const KEYS: usize = 400;
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::process(tmp.path(), &["--access-log", "false"]);
    let c = Client::new();
    let put = |s: &Server, key: String, n: usize| {
        let req = c.put(s.url(&key_url("pit", &key))).json(&json!({ "n": n }));
        async move { assert_eq!(req.send().await.unwrap().status(), StatusCode::OK) }
    };
    for i in 0..KEYS {
        put(&s, format!("k{i:03}"), 1).await;
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    let t = now_ms();
    std::thread::sleep(std::time::Duration::from_millis(5));
    for i in 0..KEYS {
        put(&s, format!("k{i:03}"), 2).await;
    }
    let versions_before = |v: &Value| v["versions"].as_array().map_or(0, Vec::len);
    let (_, first) = call(&c, &s, Method::GET, &format!("{}/versions", key_url("pit", "k000")), None, None).await;
    let before = versions_before(&first);

    let url = s.url("/v1/stores/pit/restore");
    let running = tokio::spawn(c.post(url).json(&json!({ "at_ms": t })).send());
    // Killed once the restore is under way.
    loop {
        let (_, v) = call(&c, &s, Method::GET, &key_url("pit", "k002"), None, None).await;
        if v["data"]["n"] == json!(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    s.kill();
    assert!(running.await.unwrap().is_err(), "the request died with the server");

    let s = Server::process(tmp.path(), &["--access-log", "false"]);
    // The interrupted restore shows how far it got, from the restarted server.
    let (_, waiting) = call(&c, &s, Method::GET, "/v1/stores/pit/restore", None, None).await;
    assert_eq!(waiting["progress"]["at_ms"], json!(t), "{waiting}");
    assert!(waiting["progress"]["done_through"].is_string(), "{waiting}");
    let (st, report) = call(&c, &s, Method::POST, "/v1/stores/pit/restore", None, Some(json!({ "at_ms": t }))).await;
    assert_eq!(st, StatusCode::OK, "{report}");
    let resumed = report["resumed_after"].as_str().expect("resumed after the last key done").to_owned();
    assert!(report["restored"].as_u64().unwrap() < KEYS as u64, "{report}");
    for i in 0..KEYS {
        let key = format!("k{i:03}");
        let (_, v) = call(&c, &s, Method::GET, &key_url("pit", &key), None, None).await;
        assert_eq!(v["data"]["n"], json!(1), "{key} as at T");
        let (_, page) = call(&c, &s, Method::GET, &format!("{}/versions", key_url("pit", &key)), None, None).await;
        assert_eq!(versions_before(&page), before + 1, "{key} restored exactly once (resumed after {resumed})");
    }
    let (_, again) =
        call(&c, &s, Method::POST, "/v1/stores/pit/restore", None, Some(json!({ "at_ms": t, "dry_run": true }))).await;
    assert_eq!(again["changes"], json!([]), "nothing left to do");
    let (_, trail) = call(&c, &s, Method::GET, "/v1/audit?action=store_restore", None, None).await;
    assert_eq!(trail["entries"][0]["outcome"], "ok", "{trail}");
    let (_, done) = call(&c, &s, Method::GET, "/v1/stores/pit/restore", None, None).await;
    assert_eq!(done["progress"], Value::Null, "nothing under way once done");
}

#[tokio::test]
async fn the_cli_restores_a_stopped_servers_store_and_lists_it_dry() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::process(tmp.path(), &["--access-log", "false"]);
    let c = Client::new();
    let k = key_url("pit", "only");
    assert_eq!(c.put(s.url(&k)).json(&json!({"n": 1})).send().await.unwrap().status(), StatusCode::OK);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let t = now_ms();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(c.put(s.url(&k)).json(&json!({"n": 2})).send().await.unwrap().status(), StatusCode::OK);
    assert!(s.stop().success());
    let data = tmp.path().join("data");
    let run = |dry: bool| {
        let mut cmd = std::process::Command::new(common::server::BIN);
        cmd.args(["restore-store", "--data-dir", data.to_str().unwrap(), "--store", "pit", "--at-ms", &t.to_string()]);
        if dry {
            cmd.arg("--dry-run");
        }
        cmd.output().unwrap()
    };
    let dry = run(true);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let listed: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(listed["changes"], json!([{"key": "only", "action": "restore", "to": listed["changes"][0]["to"]}]));
    let done = run(false);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let s = Server::process(tmp.path(), &["--access-log", "false"]);
    let (_, v) = call(&c, &s, Method::GET, &k, None, None).await;
    assert_eq!(v["data"]["n"], json!(1));
}

/// A new migration deployed: `POST /v1/stores/{store}/migrate` brings the
/// records written before it to the new data version (the one a client
/// holds is left to it), and `datastorer migrate-store` does the rest on
/// the stopped server's directory.
#[tokio::test]
async fn a_bulk_migration_over_http_and_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::process(tmp.path(), &["--access-log", "false"]);
    let c = Client::new();
    for key in ["a", "b", "c"] {
        let r = c.put(s.url(&key_url("mig", key))).json(&json!({"gold": 5})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(s.stop().success());
    let config = tmp.path().join("datastorer.toml");
    std::fs::write(&config, "[stores.mig]\nmigrations = [{ op = \"rename\", from = \"gold\", to = \"coins\" }]\n")
        .unwrap();
    let mut s = Server::process(tmp.path(), &["--access-log", "false", "--config", config.to_str().unwrap()]);
    let (st, v) = open(&c, &s, "mig", "c", json!({"client_id": "game-1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, report) = call(&c, &s, Method::POST, "/v1/stores/mig/migrate", None, None).await;
    assert_eq!(st, StatusCode::OK, "{report}");
    assert_eq!(
        (report["to_version"].clone(), report["migrated"].clone(), report["current"].clone()),
        (json!(1), json!(2), json!(1)),
        "{report}"
    );
    let (_, a) = call(&c, &s, Method::GET, &key_url("mig", "a"), None, None).await;
    assert_eq!((a["data"].clone(), a["data_version"].clone()), (json!({"coins": 5}), json!(1)));
    let (_, again) = call(&c, &s, Method::POST, "/v1/stores/mig/migrate", None, None).await;
    assert_eq!((again["migrated"].clone(), again["current"].clone()), (json!(0), json!(3)), "idempotent: {again}");
    assert!(s.stop().success());
    let out = std::process::Command::new(common::server::BIN)
        .args(["migrate-store", "--data-dir", tmp.path().join("data").to_str().unwrap(), "--store", "mig"])
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((cli["examined"].clone(), cli["current"].clone()), (json!(3), json!(3)), "{cli}");
}
