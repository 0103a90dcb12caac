//! The console (`/console`), in a real headless browser: Debian's
//! `chromium`, driven by playwright-core from the console's own lockfile
//! (installed by `build.rs`), against a real `datastorer serve` with API
//! keys: sign in (a wrong key refused), find a player by user id, look at
//! a record and at a held one, keys by prefix and paged, an empty store, a
//! 4 MiB document, a missing key, a narrow window, a read-only key, sign
//! out, the live health charts moving under load; no key in any URL or in the server's log, no script error or CSP
//! violation. The console's TypeScript is type-checked first. Screenshots
//! of each page go to `target/tmp/console-screenshots`.
//!
//! Skips (saying so) without chromium, Node.js or the console's build,
//! unless `DATASTORER_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs
//! chromium). Run twice: on sled, and on PostgreSQL (skipped without it,
//! unless `DATASTORER_REQUIRE_PG=1`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pg::PgSchema;
use common::server::{call, key_url, token_of, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::json;

const ADMIN: &str = "console-admin-secret-0123456789";
const READER: &str = "console-reader-secret-0123456789";
const GAME: &str = "console-game-secret-0123456789";

fn required() -> bool {
    std::env::var("DATASTORER_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// Chromium, Node.js and the console's build directory, or why not.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("DATASTORER_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists())
        })
        .ok_or("no chromium (apt-get install chromium)")?;
    Command::new("node").arg("--version").output().map_err(|_| "no Node.js".to_string())?;
    let build = PathBuf::from(env!("DATASTORER_CONSOLE_BUILD_DIR"));
    if !build.join("node_modules/playwright-core").is_dir() {
        return Err(format!("the console was not built with its dependencies ({})", build.display()));
    }
    Ok((chromium, build))
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// A game server holding `key` as `client`: answers its lease token.
async fn hold(c: &Client, s: &Server, key: &str, client: &str) -> String {
    let r = c
        .post(s.url(&format!("{}/session", key_url("profiles", key))))
        .bearer_auth(ADMIN)
        .json(&json!({"client_id": client}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    token_of(&r.json().await.unwrap())
}

/// A game server autosaving `key` (`{"xp": n}`, durable) every 50 ms until
/// its session ends; answers the last `n` acknowledged and how it ended.
async fn keep_saving(c: Client, url: String, token: String) -> (u64, serde_json::Value) {
    let mut acked = 0;
    for n in 1.. {
        let r = c
            .patch(format!("{url}/session/data?save=normal"))
            .bearer_auth(ADMIN)
            .header("Lease-Token", &token)
            .header("Content-Type", "application/merge-patch+json")
            .body(json!({ "xp": n }).to_string())
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            return (acked, r.json().await.unwrap_or_default());
        }
        acked = n;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    unreachable!()
}

async fn seed(c: &Client, s: &Server) {
    let admin = |m: Method, path: &str| c.request(m, s.url(path)).bearer_auth(ADMIN);
    // A player with a user id, saved and released.
    let r = admin(Method::POST, &format!("{}/session", key_url("profiles", "player-4242")))
        .json(&json!({"client_id": "game-1", "user_ids": [4242]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = token_of(&r.json().await.unwrap());
    let session = format!("{}/session", key_url("profiles", "player-4242"));
    let r = admin(Method::PUT, &format!("{session}/data"))
        .header("Lease-Token", &token)
        .json(&json!({"coins": 42, "name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = admin(Method::POST, &format!("{session}/release")).header("Lease-Token", &token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A player to erase.
    let r = admin(Method::POST, &format!("{}/session", key_url("profiles", "player-9001")))
        .json(&json!({"client_id": "game-1", "user_ids": [9001]}))
        .send()
        .await
        .unwrap();
    let token = token_of(&r.json().await.unwrap());
    let session = format!("{}/session", key_url("profiles", "player-9001"));
    let r = admin(Method::POST, &format!("{session}/release")).header("Lease-Token", &token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // 60 keys to page through, and a document near the 4 MiB limit.
    for i in 0..60 {
        let r = admin(Method::PUT, &key_url("profiles", &format!("bulk-{i:02}"))).json(&json!({"n": i})).send();
        assert_eq!(r.await.unwrap().status(), StatusCode::OK);
    }
    let big = json!({"blob": "x".repeat(4 * 1024 * 1024 - 4096)});
    let r = admin(Method::PUT, &key_url("profiles", "big")).json(&big).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    console_in_a_browser(None).await;
}

/// The same checks with the server on PostgreSQL.
#[tokio::test]
async fn the_console_works_in_a_real_browser_on_postgresql() {
    let Some(pg) = PgSchema::new("the_console_works_in_a_real_browser_on_postgresql") else { return };
    console_in_a_browser(Some(&pg)).await;
}

async fn console_in_a_browser(pg: Option<&PgSchema>) {
    let backend = if pg.is_some() { "postgresql" } else { "sled" };
    let (chromium, build) = match tools() {
        Ok(t) => t,
        Err(why) => {
            assert!(!required(), "a browser is required here (DATASTORER_REQUIRE_BROWSER=1): {why}");
            println!("SKIPPED the_console_works_in_a_real_browser: {why}");
            return;
        }
    };
    // The console's TypeScript, type-checked (esbuild only strips types).
    run(Command::new("npm").args(["run", "-s", "check"]).current_dir(&build));

    let tmp = tempfile::tempdir().unwrap();
    // An admin, a support desk's read-only key, and a game whose servers
    // share one key with a budget each (the health page's budget table).
    let keys = tmp.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[api_keys]]\nname = \"admin\"\nkey = \"{ADMIN}\"\nrole = \"admin\"\n\n\
             [[api_keys]]\nname = \"support\"\nkey = \"{READER}\"\nrole = \"read\"\n\n\
             [[api_keys]]\nname = \"game\"\nkey = \"{GAME}\"\nrole = \"write\"\n\
             requests_per_minute = 6000\nclient_requests_per_minute = 60\n"
        ),
    )
    .unwrap();
    let args = ["--config", keys.to_str().unwrap()];
    let mut s = match pg {
        None => Server::process(tmp.path(), &args),
        Some(pg) => Server::start_pg(&tmp.path().join("server"), &pg.url, &pg.schema, &args),
    };
    let c = Client::new();
    seed(&c, &s).await;
    // A store to restore to a point in time: two keys, then (after that
    // moment, a whole second so the page can name it) one changed and one added.
    let put =
        |key: &str, v: u64| c.put(s.url(&key_url("events", key))).bearer_auth(ADMIN).json(&json!({ "v": v })).send();
    for key in ["e1", "e2"] {
        assert_eq!(put(key, 1).await.unwrap().status(), StatusCode::OK);
    }
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let restore_at = (now() / 1000 + 1) * 1000;
    while now() <= restore_at + 10 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(put("e1", 2).await.unwrap().status(), StatusCode::OK);
    assert_eq!(put("e3", 1).await.unwrap().status(), StatusCode::OK);
    // Two keys game servers hold; the first keeps autosaving meanwhile.
    let held = s.url(&key_url("profiles", "held-1"));
    let game = tokio::spawn(keep_saving(c.clone(), held.clone(), hold(&c, &s, "held-1", "game-2").await));
    let messaged = hold(&c, &s, "held-2", "game-3").await;
    // One more held key and a free one, to delete.
    hold(&c, &s, "held-3", "game-4").await;
    let r = c.put(s.url(&key_url("profiles", "to-delete"))).bearer_auth(ADMIN).json(&json!({"n": 1})).send();
    assert_eq!(r.await.unwrap().status(), StatusCode::OK);

    // The page's headers: only this origin's script, no framing, no sniffing.
    let r = c.get(s.url("/console")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let page = r.text().await.unwrap();
    assert!(page.contains("/console/app.js") && !page.contains("<script>"), "no inline script: {page}");
    let (st, _) = call(&c, &s, Method::GET, "/console/not-a-file.js", None, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join(match pg {
        None => "console-screenshots".to_owned(),
        Some(_) => format!("console-screenshots-{backend}"),
    });
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    // A copy per test: the two backends' tests run at once.
    let script = build.join(format!("e2e-{backend}.mjs"));
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("console/tests/e2e.mjs"), &script).unwrap();
    // Off the test's thread, which keeps the autosaving game server going.
    let (base, dir, at) = (s.base.clone(), shots.clone(), build.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new("node")
            .arg(&script)
            .current_dir(&at)
            .env("BASE_URL", base)
            .env("ADMIN_KEY", ADMIN)
            .env("READ_KEY", READER)
            .env("GAME_KEY", GAME)
            .env("SCREENSHOTS", dir)
            .env("RESTORE_AT_MS", restore_at.to_string())
            .env("CHROMIUM", &chromium))
    })
    .await
    .unwrap();
    println!("{out}");
    for name in [
        "01-sign-in",
        "03-player",
        "07-history",
        "08-erased",
        "09-audit",
        "11-handed-over",
        "13-big-record",
        "16-health",
        "18-deleted",
    ] {
        assert!(shots.join(format!("{name}.png")).is_file(), "screenshot {name}");
    }
    // The autosaving holder handed over with every save it was told of,
    // heard why its session ended, and the console's edit went on top.
    let (acked, ended) = tokio::time::timeout(std::time::Duration::from_secs(10), game).await.unwrap().unwrap();
    assert_eq!(
        (ended["code"].as_str(), ended["reason"].as_str()),
        (Some("session_ended"), Some("release_requested")),
        "{ended}"
    );
    let (_, record) = call(&c, &s, Method::GET, &key_url("profiles", "held-1"), None, None).await;
    let record =
        c.get(&held).bearer_auth(ADMIN).send().await.unwrap().json::<serde_json::Value>().await.unwrap_or(record);
    assert_eq!(record["data"], json!({"xp": acked, "coins": 500}), "nothing the holder saved is lost: {record}");
    assert!(acked > 0, "the game server saved while the console worked");
    // The other holder has the console's change waiting as a message.
    let r = c
        .get(s.url(&format!("{}/session/messages", key_url("profiles", "held-2"))))
        .bearer_auth(ADMIN)
        .header("Lease-Token", &messaged)
        .send()
        .await
        .unwrap();
    let inbox: serde_json::Value = r.json().await.unwrap();
    assert_eq!(inbox["messages"][0]["message"]["console_edit"]["patch"], json!({"coins": 321}), "{inbox}");
    // The stale edit did not land, the restore did, and the read-only key
    // changed nothing.
    let record = c.get(s.url(&key_url("profiles", "player-4242"))).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(record.json::<serde_json::Value>().await.unwrap()["data"], json!({"coins": 100, "name": "Ada"}));
    // The store is as it was at that moment.
    let get = |key: &str| c.get(s.url(&key_url("events", key))).bearer_auth(ADMIN).send();
    let e1: serde_json::Value = get("e1").await.unwrap().json().await.unwrap();
    assert_eq!(e1["data"], json!({"v": 1}), "restored");
    assert_eq!(get("e3").await.unwrap().status(), StatusCode::NOT_FOUND, "created after the moment: deleted");
    // The erased player is gone, and the audit trail names who did it.
    let (st, _) = call(&c, &s, Method::GET, &key_url("profiles", "player-9001"), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "the API needs a key here");
    let r = c.get(s.url(&key_url("profiles", "player-9001"))).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "erased");
    let audit: serde_json::Value =
        c.get(s.url("/v1/audit?limit=100")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap_or("").to_owned(), e["action"].as_str().unwrap_or("").to_owned()))
        .collect();
    // Both deletes happened, each audited.
    for key in ["to-delete", "held-3"] {
        let r = c.get(s.url(&key_url("profiles", key))).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{key} deleted");
    }
    for action in ["restore", "erase", "store_restore", "console_edit", "console_handover", "console_message", "delete"]
    {
        assert!(actions.contains(&("admin".to_owned(), action.to_owned())), "{action} by admin in {actions:?}");
    }
    let assets: u64 = ["index.html", "app.js", "app.css"]
        .iter()
        .map(|f| std::fs::metadata(build.join("dist").join(f)).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!("embedded console: {assets} bytes; {backend}: screenshots in {}", shots.display());
    assert!(s.stop().success());
    let log = s.log();
    assert!(!log.contains(ADMIN) && !log.contains(READER) && !log.contains(GAME), "no key in the server's log");
}

/// `--console false` serves no console.
#[tokio::test]
async fn the_console_can_be_turned_off() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &["--console", "false"]);
    let (st, v) = call(&Client::new(), &s, Method::GET, "/console", None, None).await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{v}");
}
