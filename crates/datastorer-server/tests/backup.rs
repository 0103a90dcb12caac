//! The restore drill, with real processes: a backup taken from a running
//! server under save load, restored with one command into a fresh data
//! directory (and, on PostgreSQL, a fresh schema), holds every save
//! acknowledged before the backup began, with its versions; every epoch is
//! raised so no holder from before can write; a cut or damaged file is
//! refused whole.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::PgSchema;
use common::server::{key_url, Server, BIN};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// Saves `n` as the counter of `key` (a one-shot write, durable when answered).
async fn save(c: &Client, base: &str, key: &str, n: u64) -> bool {
    let r = c.put(format!("{base}{}", key_url("drill", key))).json(&json!({ "n": n })).send().await;
    matches!(r, Ok(r) if r.status() == StatusCode::OK)
}

/// The acknowledged counters of each key, with when each was acknowledged.
type Acks = Arc<Mutex<HashMap<String, Vec<(u64, Instant)>>>>;

/// Writers saving rising counters on `keys` keys until `stop`; the highest
/// acknowledged counter per key and when it was acknowledged.
fn load(base: String, keys: usize, stop: Arc<Mutex<bool>>) -> (tokio::task::JoinHandle<()>, Acks) {
    let acks: Acks = Arc::default();
    let recorded = acks.clone();
    let task = tokio::spawn(async move {
        let c = Client::new();
        let mut n = 0;
        while !*stop.lock().unwrap() {
            n += 1;
            let mut writes = Vec::new();
            for k in 0..keys {
                let (c, base, key) = (c.clone(), base.as_str(), format!("k{k}"));
                writes.push(async move { (save(&c, base, &key, n).await, key) });
            }
            for (ok, key) in futures_util::future::join_all(writes).await {
                if ok {
                    recorded.lock().unwrap().entry(key).or_default().push((n, Instant::now()));
                }
            }
        }
    });
    (task, acks)
}

async fn take_backup(c: &Client, s: &Server, file: &std::path::Path) -> Instant {
    let began = Instant::now();
    let resp = c.get(s.url("/v1/backup")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    std::fs::write(file, resp.bytes().await.unwrap()).unwrap();
    began
}

fn restore(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN).arg("restore-backup").args(args).output().unwrap()
}

async fn check_restored(c: &Client, s: &Server, acks: &HashMap<String, Vec<(u64, Instant)>>, began: Instant) {
    let mut checked = 0;
    for (key, saves) in acks {
        let Some(&(before, _)) = saves.iter().rev().find(|(_, at)| *at < began) else { continue };
        let rec: Value = c.get(s.url(&key_url("drill", key))).send().await.unwrap().json().await.unwrap();
        let n = rec["data"]["n"].as_u64().unwrap_or(0);
        assert!(n >= before, "{key}: restored {n}, but {before} was acknowledged before the backup began");
        assert!(rec["epoch"].as_u64().unwrap() > 1_000_000_000_000, "the epoch was raised: {rec}");
        assert!(rec["lease"].is_null());
        let versions: Value = c
            .get(s.url(&format!("{}/versions?limit=1000", key_url("drill", key))))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kept = versions["versions"].as_array().unwrap().len();
        assert!(kept >= before as usize, "{key}: {kept} versions for {before} acknowledged saves");
        checked += 1;
    }
    assert!(checked > 0, "the load acknowledged saves before the backup");
}

#[tokio::test]
async fn a_backup_under_load_restores_every_save_acknowledged_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Server::process(&tmp.path().join("source"), &["--access-log", "false"]);
    let c = Client::new();
    let stop = Arc::new(Mutex::new(false));
    let (writers, acks) = load(source.base.clone(), 8, stop.clone());
    while acks.lock().unwrap().values().map(Vec::len).sum::<usize>() < 40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = tmp.path().join("backup.dsbk");
    let began = take_backup(&c, &source, &file).await;
    // Saves went on during the backup.
    let during = acks.lock().unwrap().values().flatten().filter(|(_, at)| *at > began).count();
    *stop.lock().unwrap() = true;
    writers.await.unwrap();
    assert!(during > 0 || acks.lock().unwrap().len() == 8, "writers kept writing");

    // A cut or damaged backup is refused whole.
    let bytes = std::fs::read(&file).unwrap();
    let cut = tmp.path().join("cut.dsbk");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let fresh = tmp.path().join("fresh");
    let out = restore(&["--data-dir", fresh.join("data").to_str().unwrap(), "--input", cut.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing was restored"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = restore(&["--data-dir", fresh.join("data").to_str().unwrap(), "--input", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Not twice into the same place.
    let again = restore(&["--data-dir", fresh.join("data").to_str().unwrap(), "--input", file.to_str().unwrap()]);
    assert!(!again.status.success());

    let restored = Server::process(&fresh, &["--access-log", "false"]);
    let acknowledged = acks.lock().unwrap().clone();
    check_restored(&c, &restored, &acknowledged, began).await;
    let trail: Value =
        c.get(restored.url("/v1/audit?action=restore_backup")).send().await.unwrap().json().await.unwrap();
    assert_eq!(trail["entries"].as_array().unwrap().len(), 1, "{trail}");
    let source_trail: Value = c.get(source.url("/v1/audit?action=backup")).send().await.unwrap().json().await.unwrap();
    assert_eq!(source_trail["entries"][0]["outcome"], "ok", "{source_trail}");
}

#[tokio::test]
async fn a_postgres_backup_restores_into_a_fresh_schema() {
    let Some(pg) = PgSchema::new("a_postgres_backup_restores_into_a_fresh_schema") else { return };
    let Some(target) = PgSchema::new("a_postgres_backup_restores_into_a_fresh_schema_target") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let source = Server::start_pg(&tmp.path().join("source"), &pg.url, &pg.schema, &["--access-log", "false"]);
    let c = Client::new();
    let stop = Arc::new(Mutex::new(false));
    let (writers, acks) = load(source.base.clone(), 4, stop.clone());
    while acks.lock().unwrap().values().map(Vec::len).sum::<usize>() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = tmp.path().join("backup.dsbk");
    let began = take_backup(&c, &source, &file).await;
    *stop.lock().unwrap() = true;
    writers.await.unwrap();
    // The target schema exists (migrated) and is empty.
    drop(target.backend());
    let out = restore(&[
        "--database-url",
        &target.url,
        "--postgres-schema",
        &target.schema,
        "--input",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored =
        Server::start_pg(&tmp.path().join("restored"), &target.url, &target.schema, &["--access-log", "false"]);
    let acknowledged = acks.lock().unwrap().clone();
    check_restored(&c, &restored, &acknowledged, began).await;
}
