//! SIGTERM while thousands of keys are dirty and requests are in flight:
//! every dirty key is saved, every lease released, the server exits 0
//! within its deadline. `DATASTORER_LOAD_KEYS` sets the number of keys
//! (default 2000).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::Server;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const CONCURRENCY: usize = 32;

#[tokio::test]
async fn sigterm_with_thousands_of_dirty_keys_saves_and_releases_all() {
    let keys: usize = std::env::var("DATASTORER_LOAD_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::process(tmp.path(), &["--shutdown-deadline-secs", "20"]);
    let http = Client::builder().pool_max_idle_per_host(CONCURRENCY).build().unwrap();
    let base = server.base.clone();

    // Open every key and make it dirty (no save), CONCURRENCY at a time.
    let tokens: Vec<String> = {
        let mut handles = Vec::new();
        for shard in 0..CONCURRENCY {
            let (http, base) = (http.clone(), base.clone());
            handles.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (shard..keys).step_by(CONCURRENCY) {
                    let url = format!("{base}/v1/stores/load/keys/k{i}");
                    let v: Value = http
                        .post(format!("{url}/session"))
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let t = v["lease_token"].as_str().unwrap().to_owned();
                    let r = http
                        .patch(format!("{url}/session/data"))
                        .header("Lease-Token", &t)
                        .json(&json!({"i": i, "v": 1}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                    out.push((i, t));
                }
                out
            }));
        }
        let mut all = vec![String::new(); keys];
        for h in handles {
            for (i, t) in h.await.unwrap() {
                all[i] = t;
            }
        }
        all
    };

    // Keep requests in flight: updates (v = 2) and saves on the first keys.
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight_ok = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for shard in 0..8 {
        let (http, base, stop, ok) = (http.clone(), base.clone(), stop.clone(), in_flight_ok.clone());
        let tokens: Vec<(usize, String)> =
            tokens.iter().enumerate().filter(|(i, _)| i % 8 == shard).map(|(i, t)| (i, t.clone())).take(50).collect();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for (i, t) in &tokens {
                    let url = format!("{base}/v1/stores/load/keys/k{i}/session");
                    let patched =
                        http.patch(format!("{url}/data")).header("Lease-Token", t).json(&json!({"v": 2})).send().await;
                    let Ok(r) = patched else { return };
                    if r.status() == StatusCode::OK {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = http.post(format!("{url}/save")).header("Lease-Token", t).send().await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = server.stop();
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for l in load {
        let _ = l.await;
    }
    assert!(status.success(), "exit {status:?}; log:\n{}", server.log());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    println!(
        "shutdown under load: {keys} dirty keys, {} updates landed during the load, exit after {took:?}",
        in_flight_ok.load(Ordering::SeqCst)
    );

    let dir = server.dir.clone();
    drop(server);
    let mut server = Server::process(&dir, &[]);
    let mut handles = Vec::new();
    for shard in 0..CONCURRENCY {
        let (http, base) = (http.clone(), server.base.clone());
        handles.push(tokio::spawn(async move {
            for i in (shard..keys).step_by(CONCURRENCY) {
                let v: Value =
                    http.get(format!("{base}/v1/stores/load/keys/k{i}")).send().await.unwrap().json().await.unwrap();
                assert_eq!(v["data"]["i"], json!(i), "k{i}: {v}");
                assert!(v["data"]["v"] == json!(1) || v["data"]["v"] == json!(2), "k{i}: {v}");
                assert!(v["lease"].is_null(), "k{i} still leased");
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert!(server.stop().success());
}
