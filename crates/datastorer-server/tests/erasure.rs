//! Erasure by user id over HTTP: the subject-access export finds every
//! record and version tagged with an id; `DELETE /v1/users/{id}` ends the
//! holder's session with `erased`, leaves nothing through any route, the
//! offline export or history, answers an idempotent receipt; Roblox's
//! signed webhook erases only with a good, fresh signature, and a replay
//! erases nothing more.

mod common;

use base64::Engine as _;
use common::server::{call, key_url, open, token_of, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "roblox-webhook-secret-0123456789";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("datastorer.toml");
    std::fs::write(
        &path,
        format!(
            "[stores.guilds]\nerase = \"unlink\"\n\n\
             [roblox_erasure]\nsecret = \"{SECRET}\"\n\n\
             [[roblox_erasure.games]]\ngame_id = 1001\nstores = [\"profiles\", \"guilds\"]\n"
        ),
    )
    .unwrap();
    path
}

/// Signed as Roblox signs: HMAC-SHA256 of "{t}.{body}", base64, made here
/// with ring directly (not the server's own code).
fn roblox_signature(secret: &str, t: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mac = ring::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", base64::engine::general_purpose::STANDARD.encode(mac.as_ref()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn put_user(c: &Client, s: &Server, store: &str, key: &str, users: Value, data: Value) -> String {
    let (st, v) = open(c, s, store, key, json!({"client_id": format!("game-{key}"), "user_ids": users})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let t = token_of(&v);
    let (st, v) =
        call(c, s, Method::PUT, &format!("{}/session/data?save=normal", key_url(store, key)), Some(&t), Some(data))
            .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    t
}

#[tokio::test]
async fn delete_users_erases_everywhere_and_ends_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let mut s = Server::start(tmp.path(), &["--config", cfg.to_str().unwrap()]);
    let c = Client::new();
    let t = put_user(&c, &s, "profiles", "p42", json!([42]), json!({"secret_name": "Zorblax"})).await;
    let g = put_user(&c, &s, "guilds", "g1", json!([42, 43]), json!({"banner": "shared"})).await;
    let (st, _) =
        call(&c, &s, Method::POST, &format!("{}/messages", key_url("profiles", "p42")), None, Some(json!({"hi": 1})))
            .await;
    assert_eq!(st, StatusCode::OK);

    let (st, found) = call(&c, &s, Method::GET, "/v1/users/42", None, None).await;
    assert_eq!(st, StatusCode::OK, "{found}");
    let stores: Vec<&str> = found["records"].as_array().unwrap().iter().map(|r| r["store"].as_str().unwrap()).collect();
    assert_eq!(stores, ["guilds", "profiles"]);
    assert!(found.to_string().contains("Zorblax"), "the export carries the data");

    let (st, receipt) = call(&c, &s, Method::DELETE, "/v1/users/42", None, None).await;
    assert_eq!(st, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["keys"], 2);
    assert_eq!(receipt["stores"]["profiles"]["records_deleted"], 1);
    assert_eq!(receipt["stores"]["guilds"]["records_unlinked"], 1);
    assert!(!receipt.to_string().contains("Zorblax"), "the receipt repeats no data");

    let (st, ended) =
        call(&c, &s, Method::GET, &format!("{}/session", key_url("profiles", "p42")), Some(&t), None).await;
    assert_eq!((st, ended["reason"].clone()), (StatusCode::GONE, json!("erased")), "{ended}");
    let (st, _) = call(&c, &s, Method::GET, &key_url("profiles", "p42"), None, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, versions) =
        call(&c, &s, Method::GET, &format!("{}/versions", key_url("profiles", "p42")), None, None).await;
    assert_eq!(versions["versions"], json!([]));
    let (_, guild) = call(&c, &s, Method::GET, &key_url("guilds", "g1"), None, None).await;
    assert_eq!((guild["data"]["banner"].clone(), guild["user_ids"].clone()), (json!("shared"), json!(["43"])));
    let (st, g_end) = call(&c, &s, Method::GET, &format!("{}/session", key_url("guilds", "g1")), Some(&g), None).await;
    assert_eq!((st, g_end["reason"].clone()), (StatusCode::GONE, json!("erased")), "the guild's holder handed it over");
    let (_, again) = call(&c, &s, Method::GET, "/v1/users/42", None, None).await;
    assert_eq!(again["records"], json!([]));
    let (st, second) = call(&c, &s, Method::DELETE, "/v1/users/42", None, None).await;
    assert_eq!((st, second["keys"].clone()), (StatusCode::OK, json!(0)), "idempotent");
    let (st, e) = call(&c, &s, Method::DELETE, "/v1/users/%01", None, None).await;
    assert_eq!((st, e["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_user_id")));

    // Nor in a backup taken after it.
    let backup = c.get(s.url("/v1/backup")).send().await.unwrap().bytes().await.unwrap();
    assert!(backup.windows(b"shared".len()).any(|w| w == b"shared"), "the backup holds the guild");
    assert!(!backup.windows(b"Zorblax".len()).any(|w| w == b"Zorblax"), "a backup after the erasure holds none of it");
    // Nothing of it in the offline export of the stopped server either.
    assert!(s.stop().success());
    let out = std::process::Command::new(common::server::BIN)
        .args(["export", "--data-dir", tmp.path().join("data").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = String::from_utf8_lossy(&out.stdout);
    assert!(exported.contains("shared") && !exported.contains("Zorblax"), "{exported}");
    let raw = std::process::Command::new(common::server::BIN)
        .args(["history", "--data-dir", tmp.path().join("data").to_str().unwrap(), "--store", "guilds", "--key", "g1"])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.status.success() && !history.is_empty() && !history.contains("\"42\""), "{history}");
}

#[tokio::test]
async fn the_roblox_webhook_erases_only_with_a_good_fresh_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let s = Server::start(tmp.path(), &["--config", cfg.to_str().unwrap()]);
    let c = Client::new();
    put_user(&c, &s, "profiles", "p7", json!([7]), json!({"coins": 1})).await;
    put_user(&c, &s, "other", "o7", json!([7]), json!({"coins": 2})).await;
    let body = json!({
        "NotificationId": "5d7f0a1e-0000-4000-8000-000000000001",
        "EventType": "RightToErasureRequest",
        "EventTime": "2026-12-06T10:00:00Z",
        "EventPayload": { "UserId": 7, "GameIds": [1001, 2002] }
    })
    .to_string();
    let send = |signature: Option<String>, body: String| {
        let mut r = c.post(s.url("/v1/webhooks/roblox")).header("content-type", "application/json").body(body);
        if let Some(sig) = signature {
            r = r.header("roblox-signature", sig);
        }
        r.send()
    };
    for (sig, why) in [
        (None, "no signature"),
        (Some(roblox_signature("not-the-secret-0000000000", now_secs(), &body)), "wrong secret"),
        (Some(roblox_signature(SECRET, now_secs() - 3600, &body)), "an hour old"),
        (Some(roblox_signature(SECRET, now_secs(), "{}")), "another body"),
    ] {
        let r = send(sig, body.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{why}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "bad_signature", "{why}");
    }
    assert!(
        call(&c, &s, Method::GET, &key_url("profiles", "p7"), None, None).await.0.is_success(),
        "nothing erased yet"
    );

    let good = roblox_signature(SECRET, now_secs(), &body);
    let r = send(Some(good.clone()), body.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let receipt: Value = r.json().await.unwrap();
    assert_eq!(receipt["keys"], 1, "only the stores of game 1001: {receipt}");
    assert_eq!(call(&c, &s, Method::GET, &key_url("profiles", "p7"), None, None).await.0, StatusCode::NOT_FOUND);
    assert!(
        call(&c, &s, Method::GET, &key_url("other", "o7"), None, None).await.0.is_success(),
        "not this game's store"
    );
    // Roblox retries: a replay erases nothing more and still succeeds.
    let replay = send(Some(good), body.clone()).await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.json::<Value>().await.unwrap()["keys"], 0);
    // The dashboard's test event is acknowledged and ignored.
    let test = json!({"NotificationId": "x", "EventType": "SampleNotification", "EventPayload": {}}).to_string();
    let r = send(Some(roblox_signature(SECRET, now_secs(), &test)), test).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
