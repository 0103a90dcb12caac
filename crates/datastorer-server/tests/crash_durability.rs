//! Crash durability: clients update and save through the real server while
//! it is killed with SIGKILL at random moments, round after round. After
//! every kill the data directory must decode completely (`datastorer
//! check`) and, once restarted, hold every save whose response had arrived
//! — exactly that document, or one of the client's later documents whose
//! save was in flight — and a version for every acknowledged save, written
//! in the same atomic step: the newest version is the stored record's
//! document, never torn from it.
//!
//! Rounds: `DATASTORER_CRASH_ROUNDS` (default 6). Seed:
//! `DATASTORER_CRASH_SEED` (default: time); it is printed, so a failing run
//! can be replayed.

mod common;

use common::{env_or, Rng};

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::{Server, BIN};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CLIENTS: usize = 8;

/// A client's acknowledged saves: (sequence number, revision).
type Revisions = Arc<Mutex<Vec<(u64, u64)>>>;

fn doc(client: usize, seq: u64) -> Value {
    // Large enough to span several sled pages' worth of writes per round.
    json!({ "client": client, "seq": seq, "pad": "x".repeat(200 + (seq as usize * 37) % 500) })
}

/// One client: keeps a session on its key and saves ever newer documents
/// until the server dies. Records the last acknowledged sequence number.
async fn client_loop(
    base: String,
    client: usize,
    next_seq: Arc<Mutex<u64>>,
    acked: Arc<Mutex<u64>>,
    count: Arc<Mutex<u64>>,
    revisions: Revisions,
) {
    let http = Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let url = format!("{base}/v1/stores/crash/keys/c{client}");
    let opened = http
        .post(format!("{url}/session"))
        .json(&json!({"client_id": format!("client-{client}"), "policy": "wait", "timeout_ms": 20000}))
        .send()
        .await;
    let Ok(resp) = opened else { return };
    if resp.status() != StatusCode::OK {
        return;
    }
    let Ok(v) = resp.json::<Value>().await else { return };
    let token = v["lease_token"].as_str().unwrap_or_default().to_owned();
    loop {
        let seq = {
            let mut n = next_seq.lock().unwrap();
            *n += 1;
            *n
        };
        let put =
            http.put(format!("{url}/session/data")).header("Lease-Token", &token).json(&doc(client, seq)).send().await;
        if !matches!(put, Ok(ref r) if r.status() == StatusCode::OK) {
            return;
        }
        let saved = http.post(format!("{url}/session/save")).header("Lease-Token", &token).send().await;
        match saved {
            Ok(r) if r.status() == StatusCode::OK => {
                let Ok(answer) = r.json::<Value>().await else { return };
                *acked.lock().unwrap() = seq;
                *count.lock().unwrap() += 1;
                if let Some(revision) = answer["revision"].as_u64() {
                    revisions.lock().unwrap().push((seq, revision));
                }
            }
            _ => return,
        }
    }
}

/// Every client's last acknowledged document (or a later one it sent) is
/// stored, exactly. Answers how many keys were checked.
async fn verify(
    http: &Client,
    server: &Server,
    next: &[Arc<Mutex<u64>>],
    acked: &[Arc<Mutex<u64>>],
    revisions: &[Revisions],
    round: u64,
    seed: u64,
) -> u64 {
    let mut checked = 0;
    for c in 0..CLIENTS {
        let want = *acked[c].lock().unwrap();
        if want == 0 {
            continue;
        }
        let resp = http.get(server.url(&format!("/v1/stores/crash/keys/c{c}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "round {round}: c{c} missing (seed {seed})");
        let view: Value = resp.json().await.unwrap();
        let got = view["data"]["seq"].as_u64().unwrap();
        let sent = *next[c].lock().unwrap();
        assert!(
            got >= want && got <= sent,
            "round {round}: c{c} has seq {got}, acknowledged {want}, sent {sent} (seed {seed})"
        );
        assert_eq!(view["data"], doc(c, got), "round {round}: c{c} document differs (seed {seed})");
        // Every acknowledged save left its version.
        let mut listed: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = server.url(&format!("/v1/stores/crash/keys/c{c}/versions?order=oldest&limit=1000"));
            if let Some(cur) = &cursor {
                url.push_str(&format!("&cursor={cur}"));
            }
            let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            listed.extend(page["versions"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let kept: std::collections::HashSet<u64> = listed.iter().filter_map(|v| v["revision"].as_u64()).collect();
        for (seq, revision) in revisions[c].lock().unwrap().iter() {
            assert!(
                kept.contains(revision),
                "round {round}: c{c} save {seq} (revision {revision}) acknowledged without its version (seed {seed})"
            );
        }
        // The newest version and the record were written together.
        let newest = listed.last().expect("versions");
        let url = server.url(&format!("/v1/stores/crash/keys/c{c}/versions/{}", newest["version"].as_str().unwrap()));
        let version: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            version["data"], view["data"],
            "round {round}: c{c}: the newest version is not the record (seed {seed})"
        );
        checked += 1;
    }
    checked
}

#[tokio::test]
async fn acknowledged_saves_survive_sigkill() {
    let rounds = env_or("DATASTORER_CRASH_ROUNDS", 6);
    let seed = env_or(
        "DATASTORER_CRASH_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    ) | 1;
    println!("crash durability: seed {seed} (DATASTORER_CRASH_SEED to replay), {rounds} rounds");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let next: Vec<_> = (0..CLIENTS).map(|_| Arc::new(Mutex::new(0u64))).collect();
    let acked: Vec<_> = (0..CLIENTS).map(|_| Arc::new(Mutex::new(0u64))).collect();
    let count = Arc::new(Mutex::new(0u64));
    let revisions: Vec<_> = (0..CLIENTS).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let mut verified = 0u64;
    let http = Client::new();

    for round in 0..rounds {
        let mut server = Server::process(&dir, &[]);
        verified += verify(&http, &server, &next, &acked, &revisions, round, seed).await;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client_loop(
                    server.base.clone(),
                    c,
                    next[c].clone(),
                    acked[c].clone(),
                    count.clone(),
                    revisions[c].clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + rng.next() % 600)).await;
        server.kill();
        for t in tasks {
            let _ = t.await;
        }
        // The directory must decode completely while no process holds it.
        let out = Command::new(BIN).args(["check", "--data-dir"]).arg(dir.join("data")).output().unwrap();
        assert!(
            out.status.success(),
            "round {round}: check failed (seed {seed}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And after the last kill.
    let server = Server::process(&dir, &[]);
    verified += verify(&http, &server, &next, &acked, &revisions, rounds, seed).await;
    drop(server);
    let acknowledged = *count.lock().unwrap();
    println!(
        "crash durability: {rounds} rounds, {acknowledged} saves acknowledged, {verified} key checks after restarts"
    );
    assert!(acknowledged > 0, "no save was acknowledged at all");
}
