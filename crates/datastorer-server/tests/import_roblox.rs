//! `datastorer import-roblox`, as real processes: a data store copied from
//! one `datastorer serve` (standing in for Roblox: its Open Cloud-compatible
//! API is the only one reachable from here) into another, in a slice, then
//! interrupted with `kill -9`, then finished from its state file; every key
//! arrives with its value, user ids and attributes, a key a game server's
//! session holds is left alone and reported, and nothing is copied twice
//! over (at most the one key in flight at the kill). Also ProfileStore's
//! envelope unwrapped with `--profilestore`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{Server, BIN};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const SOURCE_KEY: &str = "roblox-open-cloud-key-0000001";
const TARGET_KEY: &str = "datastorer-import-key-000002";

fn server(dir: &Path, key: &str) -> Server {
    let config = dir.join("datastorer.toml");
    std::fs::write(&config, format!("[[api_keys]]\nname = \"k\"\nkey = \"{key}\"\nrole = \"write\"\n")).unwrap();
    Server::process(dir, &["--access-log", "false", "--config", config.to_str().unwrap()])
}

/// Open Cloud v1 set on the source.
/// `at` is (data store, scope, key).
fn set(c: &Client, s: &Server, at: (&str, &str, &str), value: &Value, ids: &str, attrs: &Value) {
    let (store, scope, key) = at;
    let r = c
        .post(s.url("/datastores/v1/universes/99/standard-datastores/datastore/entries/entry"))
        .query(&[("datastoreName", store), ("scope", scope), ("entryKey", key)])
        .header("x-api-key", SOURCE_KEY)
        .header("roblox-entry-userids", ids)
        .header("roblox-entry-attributes", attrs.to_string())
        .body(value.to_string())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
}

fn record(c: &Client, s: &Server, store: &str, key: &str) -> Option<Value> {
    let r = c.get(s.url(&format!("/v1/stores/{store}/keys/{key}"))).bearer_auth(TARGET_KEY).send().unwrap();
    (r.status().as_u16() != 404).then(|| r.json().unwrap())
}

fn import(source: &Server, target: &Server, state: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["import-roblox", "--universe", "99", "--source-rate", "0"])
        .args(["--source", &source.base, "--target", &target.base, "--state"])
        .arg(state)
        .args(extra)
        .env("ROBLOX_API_KEY", SOURCE_KEY)
        .env("DATASTORER_API_KEY", TARGET_KEY);
    cmd
}

fn report(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_data_store_copies_across_a_slice_a_kill_and_a_resume_leaving_held_keys_alone() {
    let (src_dir, dst_dir, work) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = server(src_dir.path(), SOURCE_KEY);
    let mut target = server(dst_dir.path(), TARGET_KEY);
    let c = Client::new();
    let n = 230;
    for i in 0..n {
        let key = format!("k-{i:03}");
        set(
            &c,
            &source,
            ("PlayerData", "global", &key),
            &json!({ "Coins": i }),
            &format!("[{}]", 1000 + i),
            &json!({ "n": i }),
        );
    }
    for i in 0..3 {
        set(&c, &source, ("PlayerData", "beta", &format!("b-{i}")), &json!(i), "[]", &json!({}));
    }
    // A game server on the target holds one key, with data of its own.
    let r = c
        .post(target.url("/v1/stores/PlayerData/keys/k-007/session"))
        .bearer_auth(TARGET_KEY)
        .json(&json!({ "client_id": "game-1" }))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let state = work.path().join("state.json");

    // A slice of 100 keys.
    let first =
        report(&mut import(&source, &target, &state, &["--datastore", "PlayerData", "--all-scopes", "--limit", "100"]));
    assert_eq!((first["complete"].clone(), first["imported"].clone()), (json!(false), json!(99)), "{first}");
    assert_eq!(first["held"], json!(["global/k-007"]));

    // Then killed part-way (or finished first, on a fast machine: either
    // way the state file is whole).
    let mut child = import(&source, &target, &state, &["--datastore", "PlayerData", "--all-scopes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progressed = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|s| s["imported"].as_u64().unwrap_or(0) > 150 || s["done"] == true);
        if progressed || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();

    // Run again: it resumes and completes.
    let last = report(&mut import(&source, &target, &state, &["--datastore", "PlayerData", "--all-scopes"]));
    assert_eq!(last["complete"], json!(true), "{last}");
    assert_eq!(last["failed"], json!([]));
    assert_eq!(last["held"], json!(["global/k-007"]));
    // Every key, its value, user ids and attributes.
    let mut versions = 0;
    for i in 0..n {
        let key = format!("k-{i:03}");
        let rec = record(&c, &target, "PlayerData", &key).unwrap_or_else(|| panic!("{key} missing"));
        if i == 7 {
            assert_eq!(rec["data"], json!({}), "the held key keeps its own data");
            continue;
        }
        assert_eq!(rec["data"], json!({ "Coins": i }), "{key}");
        assert_eq!(rec["user_ids"], json!([(1000 + i).to_string()]), "{key}");
        assert_eq!(rec["metadata"], json!({ "n": i }), "{key}");
        let page: Value = c
            .get(target.url(&format!("/v1/stores/PlayerData/keys/{key}/versions")))
            .bearer_auth(TARGET_KEY)
            .send()
            .unwrap()
            .json()
            .unwrap();
        versions += page["versions"].as_array().unwrap().len();
    }
    // One version per key; a key in flight at the kill may be written twice.
    assert!((n - 1..=n + 1).contains(&versions), "{versions} versions for {} keys", n - 1);
    for i in 0..3 {
        assert_eq!(record(&c, &target, "PlayerData:beta", &format!("b-{i}")).unwrap()["data"], json!(i));
    }
    // Complete: running again changes nothing and says so.
    let again = report(&mut import(&source, &target, &state, &["--datastore", "PlayerData", "--all-scopes"]));
    assert_eq!(again["imported"], last["imported"]);
    // What was imported is what the target's own Open Cloud API shows.
    let v: Value = c
        .get(target.url("/cloud/v2/universes/5/data-stores/PlayerData/entries/k-042"))
        .header("x-api-key", TARGET_KEY)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!((v["value"].clone(), v["users"].clone()), (json!({ "Coins": 42 }), json!(["users/1042"])));
    assert!(target.stop().success(), "{}", target.log());
}

#[test]
fn profilestore_profiles_unwrap_into_data_and_metadata() {
    let (src_dir, dst_dir, work) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = server(src_dir.path(), SOURCE_KEY);
    let mut target = server(dst_dir.path(), TARGET_KEY);
    let c = Client::new();
    let envelope = json!({
        "Data": { "Coins": 12, "Items": ["Sword"] },
        "MetaData": { "ProfileCreateTime": 1700000000, "SessionLoadCount": 4, "ActiveSession": [4242, "job-1"] },
        "GlobalUpdates": [0, []],
        "UserIds": [55],
        "RobloxMetaData": {},
    });
    set(&c, &source, ("PlayerStore", "global", "Player_55"), &envelope, "[55]", &json!({}));
    set(&c, &source, ("PlayerStore", "global", "Broken"), &json!("not a profile"), "[]", &json!({}));
    let state = work.path().join("state.json");
    let mut refused =
        import(&source, &target, &work.path().join("s2.json"), &["--datastore", "PlayerStore", "--profilestore"]);
    let refused = refused.output().unwrap();
    assert!(!refused.status.success(), "--profilestore without --into is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--into"));
    let r = report(&mut import(
        &source,
        &target,
        &state,
        &["--datastore", "PlayerStore", "--profilestore", "--into", "Players"],
    ));
    assert_eq!(r["imported"], json!(1), "{r}");
    assert_eq!(r["failed"][0]["key"], "global/Broken");
    let rec = record(&c, &target, "Players", "Player_55").unwrap();
    assert_eq!(rec["data"], json!({ "Coins": 12, "Items": ["Sword"] }));
    assert_eq!(rec["metadata"]["ProfileStore"], json!({ "ProfileCreateTime": 1700000000, "SessionLoadCount": 4 }));
    assert_eq!(rec["user_ids"], json!(["55"]));
    assert!(target.stop().success());
}
