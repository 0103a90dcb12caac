//! The audit trail: every administrative action, successful or not, is
//! recorded durably with the API key's name, when, what and how it ended;
//! `GET /v1/audit` pages and filters it; an erasure's entry keeps the user
//! id only hashed; an offline import is recorded too, and the trail
//! survives a restart.

mod common;

use common::server::{key_url, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "ops-admin-secret-0123456789";
const GAME: &str = "game-write-secret-0123456789";

async fn as_key(
    c: &Client,
    s: &Server,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = c.request(method, s.url(path)).bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_admin_action_lands_in_the_trail_with_who_and_how_it_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let keys =
        ["--api-key", "ops:admin:ops-admin-secret-0123456789", "--api-key", "game:write:game-write-secret-0123456789"];
    let mut s = Server::start(tmp.path(), &keys);
    let c = Client::new();
    let k = key_url("profiles", "p1");
    let (st, _) = as_key(&c, &s, GAME, Method::PUT, &k, Some(json!({"coins": 1}))).await;
    assert_eq!(st, StatusCode::OK);
    let (_, page) = as_key(&c, &s, GAME, Method::GET, &format!("{k}/versions"), None).await;
    let v = page["versions"][0]["version"].clone();
    let (st, _) = as_key(&c, &s, ADMIN, Method::POST, &format!("{k}/restore"), Some(json!({"version": v}))).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = as_key(&c, &s, ADMIN, Method::POST, &format!("{k}/restore"), Some(json!({"version": "99.1"}))).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "a failed restore is audited too");
    // A steal by a game server.
    let (st, _) = c
        .post(s.url(&format!("{k}/session")))
        .bearer_auth(GAME)
        .json(&json!({"client_id": "game-b", "policy": "steal"}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    let (st, _) = as_key(&c, &s, ADMIN, Method::DELETE, &format!("{k}?force=true"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = as_key(&c, &s, ADMIN, Method::DELETE, "/v1/users/4242", None).await;
    assert_eq!(st, StatusCode::OK);

    let (st, trail) = as_key(&c, &s, ADMIN, Method::GET, "/v1/audit", None).await;
    assert_eq!(st, StatusCode::OK, "{trail}");
    let entries = trail["entries"].as_array().unwrap();
    let seen: Vec<(String, String, bool)> = entries
        .iter()
        .map(|e| (e["actor"].as_str().unwrap().into(), e["action"].as_str().unwrap().into(), e["outcome"] == "ok"))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ops".into(), "restore".into(), true),
            ("ops".into(), "restore".into(), false),
            ("game".into(), "forced_open".into(), true),
            ("ops".into(), "delete".into(), true),
            ("ops".into(), "erase".into(), true),
        ]
    );
    assert_eq!(entries[0]["store"], "profiles");
    assert_eq!(entries[0]["key"], "p1");
    assert!(entries[1]["outcome"].as_str().unwrap().contains("no version"), "{}", entries[1]);
    assert!(entries.windows(2).all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64()));
    let erase = entries[4].to_string();
    assert!(!erase.contains("4242") && erase.contains("user_id_sha256"), "the id is kept hashed only: {erase}");
    // Filters and paging.
    let (_, restores) = as_key(&c, &s, ADMIN, Method::GET, "/v1/audit?action=restore&key=p1", None).await;
    assert_eq!(restores["entries"].as_array().unwrap().len(), 2);
    let (_, first) = as_key(&c, &s, ADMIN, Method::GET, "/v1/audit?limit=2", None).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = as_key(&c, &s, ADMIN, Method::GET, &format!("/v1/audit?after={cursor}"), None).await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 3);
    assert_eq!(rest["entries"][0]["id"], entries[2]["id"]);
    let (st, _) = as_key(&c, &s, GAME, Method::GET, "/v1/audit", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "admin only");
    let (st, e) = as_key(&c, &s, ADMIN, Method::GET, "/v1/audit?after=nonsense", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");

    // An offline import is recorded, and the trail outlives a restart.
    assert!(s.stop().success());
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"store\":\"profiles\",\"key\":\"imported\",\"data\":{\"coins\":3}}\n").unwrap();
    let out = std::process::Command::new(common::server::BIN)
        .args(["import", "--data-dir", tmp.path().join("data").to_str().unwrap(), "--input", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = Server::start(tmp.path(), &keys);
    let (_, trail) = as_key(&c, &s, ADMIN, Method::GET, "/v1/audit?action=import", None).await;
    let imports = trail["entries"].as_array().unwrap();
    assert_eq!(imports.len(), 1, "{trail}");
    assert_eq!((imports[0]["actor"].clone(), imports[0]["details"]["records"].clone()), (json!("cli"), json!(1)));
    let (_, all) = as_key(&c, &s, ADMIN, Method::GET, "/v1/audit", None).await;
    assert_eq!(all["entries"].as_array().unwrap().len(), 6);
}
