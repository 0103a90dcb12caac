//! The Open Cloud-compatible data-store API (`/datastores/v1/…`,
//! `/cloud/v2/…`) driven by a real client: `rblx-open-cloud` 2.3.0 from
//! PyPI, unchanged but for a requests adapter that sends Roblox's host to
//! this server (tests/open_cloud/rblx_open_cloud_test.py). `.ci/run`
//! installs it into its virtualenv and sets `DATASTORER_OPEN_CLOUD_PYTHON`
//! (that virtualenv's python) and `DATASTORER_REQUIRE_OPEN_CLOUD=1`, which
//! turns a skip into a failure; elsewhere it says it skipped.
//!
//! Also here, without the client: what the client does not touch (v2
//! create, patch with an etag, the wildcard scope, page tokens bound to
//! their query, the error shapes), and the version a set answers while
//! another server writes the entry (two servers on PostgreSQL; skips,
//! saying so, without it, which `DATASTORER_REQUIRE_PG=1` makes a failure).

mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;
use reqwest::blocking::Client;
use serde_json::{json, Value};

const GAME_KEY: &str = "oc-game-secret-000000000001";
const TOOL_KEY: &str = "oc-tool-secret-000000000002";

/// The config file with the game's and the tool's API keys, in `dir`.
fn config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("datastorer.toml");
    std::fs::write(
        &config,
        format!(
            "[[api_keys]]\nname = \"game\"\nkey = \"{GAME_KEY}\"\nrole = \"write\"\n\n\
             [[api_keys]]\nname = \"tool\"\nkey = \"{TOOL_KEY}\"\nrole = \"write\"\n"
        ),
    )
    .unwrap();
    config
}

fn server(dir: &Path) -> Server {
    let config = config(dir);
    Server::process(dir, &["--access-log", "false", "--config", config.to_str().unwrap()])
}

/// A game server's session on `PlayerData/{key}`, through datastorer's own API.
fn hold(s: &Server, key: &str) {
    let r = Client::new()
        .post(s.url(&format!("/v1/stores/PlayerData/keys/{key}/session")))
        .bearer_auth(GAME_KEY)
        .json(&json!({ "client_id": "game-server-1" }))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "open: {}", r.text().unwrap());
}

#[test]
fn rblx_open_cloud_client_against_the_open_cloud_api() {
    let python = std::env::var("DATASTORER_OPEN_CLOUD_PYTHON").unwrap_or_else(|_| "python3".into());
    let required = std::env::var("DATASTORER_REQUIRE_OPEN_CLOUD").is_ok_and(|v| v == "1");
    let has_client = Command::new(&python)
        .args(["-c", "import rblxopencloud, sys; sys.exit(0 if rblxopencloud.VERSION == '2.3.0' else 1)"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(!required, "rblx-open-cloud 2.3.0 is required here but {python:?} cannot import it");
        println!("SKIPPED: rblx-open-cloud 2.3.0 not importable by {python:?} (pip install rblx-open-cloud==2.3.0)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut s = server(tmp.path());
    hold(&s, "Held_1");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/open_cloud/rblx_open_cloud_test.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("DATASTORER_URL", &s.base)
        .env("DATASTORER_KEY", TOOL_KEY)
        .env("DATASTORER_HELD_KEY", "Held_1")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "the client's checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("checks passed"));
    assert!(s.stop().success(), "server log:\n{}", s.log());
}

fn call(c: &Client, s: &Server, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = c.request(method, s.url(path)).header("x-api-key", TOOL_KEY);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[test]
fn v2_entries_create_patch_scopes_tokens_and_errors() {
    use reqwest::Method;
    let tmp = tempfile::tempdir().unwrap();
    let mut s = server(tmp.path());
    let c = Client::new();
    let base = "/cloud/v2/universes/7/data-stores/Inventory";
    // Create: only where nothing is.
    let (st, v) = call(
        &c,
        &s,
        Method::POST,
        &format!("{base}/entries?id=p1"),
        Some(json!({
            "value": {"Sword": 1}, "users": ["users/11"], "attributes": {"a": 1}
        })),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["path"], "universes/7/data-stores/Inventory/scopes/global/entries/p1");
    assert_eq!((v["users"].clone(), v["attributes"].clone()), (json!(["users/11"]), json!({"a": 1})));
    let etag = v["etag"].as_str().unwrap().to_owned();
    let (st, v) = call(&c, &s, Method::POST, &format!("{base}/entries?id=p1"), Some(json!({ "value": 2 })));
    assert_eq!((st, v["message"].clone()), (400, json!("Entry already exists.")), "{v}");
    // Patch guarded by the etag; a stale one is refused and writes nothing.
    let (st, v) = call(
        &c,
        &s,
        Method::PATCH,
        &format!("{base}/entries/p1"),
        Some(json!({ "value": {"Sword": 2}, "etag": etag })),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["users"], json!([]), "omitted users are cleared");
    let (st, v) = call(
        &c,
        &s,
        Method::PATCH,
        &format!("{base}/entries/p1"),
        Some(json!({ "value": {"Sword": 3}, "etag": etag })),
    );
    assert_eq!((st, v["code"].clone()), (412, json!("FAILED_PRECONDITION")), "{v}");
    let (_, v) = call(&c, &s, Method::GET, &format!("{base}/entries/p1@latest"), None);
    assert_eq!(v["value"], json!({"Sword": 2}));
    // Patch of a missing entry: 404 unless allowMissing.
    let (st, _) = call(&c, &s, Method::PATCH, &format!("{base}/entries/nope"), Some(json!({ "value": 1 })));
    assert_eq!(st, 404);
    let (st, _) =
        call(&c, &s, Method::PATCH, &format!("{base}/entries/nope?allowMissing=true"), Some(json!({ "value": 1 })));
    assert_eq!(st, 200);
    // Increment and the wildcard scope.
    let (st, v) =
        call(&c, &s, Method::POST, &format!("{base}/scopes/beta/entries/n:increment"), Some(json!({ "amount": 4 })));
    assert_eq!((st, v["value"].clone()), (200, json!(4)), "{v}");
    let (_, v) = call(&c, &s, Method::GET, &format!("{base}/scopes/-/entries?maxPageSize=2"), None);
    let ids: Vec<&str> = v["dataStoreEntries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["n", "nope"], "{v}");
    let token = v["nextPageToken"].as_str().unwrap().to_owned();
    let (_, v) = call(&c, &s, Method::GET, &format!("{base}/scopes/-/entries?maxPageSize=2&pageToken={token}"), None);
    assert_eq!(v["dataStoreEntries"][0]["path"], "universes/7/data-stores/Inventory/scopes/global/entries/p1", "{v}");
    // A page token belongs to its query.
    let (st, v) = call(
        &c,
        &s,
        Method::GET,
        &format!("{base}/scopes/-/entries?maxPageSize=2&pageToken={token}&filter=id.startsWith(%22p%22)"),
        None,
    );
    assert_eq!((st, v["code"].clone()), (400, json!("INVALID_ARGUMENT")), "{v}");
    // Revisions, newest first, and one read back.
    let (_, v) = call(&c, &s, Method::GET, &format!("{base}/entries/p1:listRevisions"), None);
    let revs = v["dataStoreEntries"].as_array().unwrap();
    assert_eq!(revs.len(), 2, "{v}");
    let (_, old) =
        call(&c, &s, Method::GET, &format!("{base}/entries/p1@{}", revs[1]["revisionId"].as_str().unwrap()), None);
    assert_eq!(old["value"], json!({"Sword": 1}));
    // Delete, then 404; the v1 error shape names Roblox's error code.
    let (st, _) = call(&c, &s, Method::DELETE, &format!("{base}/entries/p1"), None);
    assert_eq!(st, 200);
    let (st, v) = call(&c, &s, Method::DELETE, &format!("{base}/entries/p1"), None);
    assert_eq!((st, v["code"].clone()), (404, json!("NOT_FOUND")));
    let (st, v) = call(
        &c,
        &s,
        Method::GET,
        "/datastores/v1/universes/7/standard-datastores/datastore/entries/entry?datastoreName=Inventory&entryKey=p1",
        None,
    );
    assert_eq!(st, 404);
    assert_eq!(v["errorDetails"][0]["datastoreErrorCode"], "KeyNotFound", "{v}");
    let (st, v) = call(
        &c,
        &s,
        Method::POST,
        "/datastores/v1/universes/7/standard-datastores/datastore/entries/entry?datastoreName=Inventory&entryKey=x&exclusiveCreate=true&matchVersion=1.1",
        Some(json!(1)),
    );
    assert_eq!(
        (st, v["errorDetails"][0]["datastoreErrorCode"].clone()),
        (400, json!("ExclusiveCreateAndMatchVersionCannotBeSet"))
    );
    // content-md5 is checked.
    let r = c
        .post(s.url(
            "/datastores/v1/universes/7/standard-datastores/datastore/entries/entry?datastoreName=Inventory&entryKey=x",
        ))
        .header("x-api-key", TOOL_KEY)
        .header("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")
        .body("1")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().unwrap()["errorDetails"][0]["datastoreErrorCode"], "ChecksumMismatch");
    // The gateway's shape for a bad key.
    let r = c.get(s.url(&format!("{base}/entries/p1"))).header("x-api-key", "wrong-key-0000000000").send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().unwrap(), json!({"errors": [{"code": 0, "message": "Invalid API Key"}]}));
    assert!(s.stop().success(), "server log:\n{}", s.log());
}

/// A set answers the version it wrote, never one written after it: a
/// client takes that version as the base of its next `matchVersion`, so an
/// answer naming a later write would let it overwrite a change it never
/// saw. Tools set one entry at once through two servers on one PostgreSQL
/// database (within one server, sets of a key take turns and the window is
/// all but closed; across servers it is not): every answer names a
/// distinct version, and that version holds the value of the set it
/// answered. Skips, saying so, without PostgreSQL.
#[test]
fn a_set_answers_the_version_it_wrote_while_another_server_writes_the_entry() {
    let Some(pg) = common::pg::PgSchema::new("a_set_answers_the_version_it_wrote") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let start = |name: &str| {
        let args = ["--owner-id", name, "--access-log", "false", "--config", config.to_str().unwrap()];
        Server::start_pg(&tmp.path().join(name), &pg.url, &pg.schema, &args)
    };
    let mut servers = [start("oc-a"), start("oc-b")];
    let entry = "/datastores/v1/universes/7/standard-datastores/datastore/entries/entry?datastoreName=Race&entryKey=k";
    let urls: Vec<String> = servers.iter().map(|s| s.url(entry)).collect();
    let (writers, sets) = (8, 20);
    let answers: Vec<(String, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let url = urls[w % urls.len()].clone();
                scope.spawn(move || {
                    let c = Client::new();
                    let mut mine = Vec::new();
                    for n in 0..sets {
                        let value = json!({ "writer": w, "n": n });
                        let r = c.post(&url).header("x-api-key", TOOL_KEY).json(&value).send().unwrap();
                        let status = r.status().as_u16();
                        let body: Value = r.json().unwrap();
                        // A set refused under contention (409) wrote nothing.
                        if status == 200 {
                            mine.push((body["version"].as_str().unwrap().to_owned(), value));
                        } else {
                            assert_eq!(status, 409, "{body}");
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.len() >= writers * sets / 4, "most sets go through: {} of {}", answers.len(), writers * sets);
    let distinct: std::collections::BTreeSet<&str> = answers.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(distinct.len(), answers.len(), "two sets were answered with one version");
    let c = Client::new();
    for (version, value) in &answers {
        let at = servers[0].url(&format!(
            "/datastores/v1/universes/7/standard-datastores/datastore/entries/entry/versions/version?datastoreName=Race&entryKey=k&versionId={version}"
        ));
        let r = c.get(at).header("x-api-key", TOOL_KEY).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "version {version}");
        let stored: Value = r.json().unwrap();
        assert_eq!(&stored, value, "version {version} answered a set that did not write it");
    }
    for s in &mut servers {
        s.stop();
    }
}
