//! Crash durability: clients update and save through the real server while
//! it is killed with SIGKILL at random moments, round after round. After
//! every kill the data directory must decode completely (`datastorer
//! check`) and, once restarted, hold every save whose response had arrived
//! — exactly that document, or one of the client's later documents whose
//! save was in flight.
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
                *acked.lock().unwrap() = seq;
                *count.lock().unwrap() += 1;
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
    let mut verified = 0u64;
    let http = Client::new();

    for round in 0..rounds {
        let mut server = Server::process(&dir, &[]);
        verified += verify(&http, &server, &next, &acked, round, seed).await;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client_loop(server.base.clone(), c, next[c].clone(), acked[c].clone(), count.clone()))
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
    verified += verify(&http, &server, &next, &acked, rounds, seed).await;
    drop(server);
    let acknowledged = *count.lock().unwrap();
    println!(
        "crash durability: {rounds} rounds, {acknowledged} saves acknowledged, {verified} key checks after restarts"
    );
    assert!(acknowledged > 0, "no save was acknowledged at all");
}
