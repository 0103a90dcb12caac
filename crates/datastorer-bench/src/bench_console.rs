//! The console on a large store (`--only console`): how long its pages take
//! to paint in a real headless Chromium, and what counting a store costs,
//! on a store of 100,000 keys beside the same on a store of 10 keys in the
//! same run and the same server. The stores are written straight into
//! sled before the server starts (the figures are about reading them).
//! Skipped, saying why, without Node.js, chromium or the console's build.
//!
//! Must not: write through the server (the figures are of reads), or
//! leave the server running (it is killed with its handle).

use std::path::{Path, PathBuf};
use std::time::Instant;

use datastorer::storage::history::version_key;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, Precondition, Record, RecordHeader, WriteOp};

use super::bench::{BenchConfig, Measurement};
use super::bench_http::spawn_server;

const BIG: usize = 100_000;
const SMALL: usize = 10;
const SECRET: &str = "bench-console-secret-0123456789";

/// `keys` records of about 1 KiB in `store`, each with one kept version.
fn fill(backend: &SledBackend, store: &str, keys: usize) -> Result<(), String> {
    let now = 1_796_000_000_000;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for &i in chunk {
            let key = format!("player-{i:06}");
            let header = RecordHeader { epoch: 1, revision: 1 };
            let data = serde_json::json!({ "coins": i, "level": i % 90, "bio": "x".repeat(1000) });
            let record = Record {
                header,
                data_version: 0,
                data: serde_json::to_vec(&data).map_err(|e| e.to_string())?,
                metadata: b"{}".to_vec(),
                user_ids: vec![],
                lease: None,
                created_at_ms: now,
                updated_at_ms: now,
            };
            let bytes = record.encode();
            ops.push(WriteOp::new(storage_key(store, &key), Precondition::Any, Some(bytes.clone())));
            ops.push(WriteOp::new(version_key(store, &key, header), Precondition::Any, Some(bytes)));
        }
        for r in backend.write_batch(&ops) {
            r.map_err(|e| e.to_string())?;
        }
    }
    backend.flush().map_err(|e| e.to_string())
}

fn skipped(why: &str) -> Vec<Measurement> {
    println!("console: skipped ({why})");
    Vec::new()
}

/// Chromium, or why not.
fn chromium() -> Result<PathBuf, String> {
    std::env::var_os("DATASTORER_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists())
        })
        .ok_or_else(|| "no chromium".to_string())
}

pub async fn bench_console(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let build = PathBuf::from(datastorer_server::CONSOLE_BUILD_DIR);
    if !build.join("node_modules/playwright-core").is_dir() {
        return Ok(skipped(&format!("the console was not built with its dependencies in {}", build.display())));
    }
    let chromium = match chromium() {
        Ok(c) => c,
        Err(why) => return Ok(skipped(&why)),
    };
    let dir = scratch.join("console");
    {
        let backend = SledBackend::open(&dir).map_err(|e| e.to_string())?;
        fill(&backend, "players", BIG)?;
        fill(&backend, "small", SMALL)?;
    }
    let key = format!("bench:admin:{SECRET}");
    let server = spawn_server(&["--data-dir".into(), dir.clone().into(), "--api-key".into(), key.into()])?;
    let http = reqwest::Client::new();

    // Counting a store, fresh each time, alternating the two stores.
    let (mut count_big, mut count_small) = (Vec::new(), Vec::new());
    for _ in 0..cfg.repeat {
        for (store, into) in [("players", &mut count_big), ("small", &mut count_small)] {
            let started = Instant::now();
            let r = http
                .get(format!("{}/v1/stores/{store}/usage?fresh=true", server.base))
                .bearer_auth(SECRET)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value =
                serde_json::from_slice(&r.bytes().await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            into.push(started.elapsed().as_secs_f64() * 1000.0);
            let want = if store == "players" { BIG } else { SMALL };
            if v["keys"].as_u64() != Some(want as u64) {
                return Err(format!("the usage of {store} counted {v}, not {want} keys"));
            }
        }
    }

    // The pages, in the browser.
    let script = build.join("paint.mjs");
    std::fs::copy(Path::new(datastorer_server::CONSOLE_SOURCE_DIR).join("tests/paint.mjs"), &script)
        .map_err(|e| e.to_string())?;
    let pages = serde_json::json!([
        { "name": "keys-big", "hash": "#/keys/players", "selector": "#keys li", "count": 50 },
        { "name": "keys-small", "hash": "#/keys/small", "selector": "#keys li", "count": SMALL },
        { "name": "key-big", "hash": "#/key/players/player-050000", "selector": "#data", "count": 1, "heading": "player-050000" },
        { "name": "key-small", "hash": "#/key/small/player-000005", "selector": "#data", "count": 1, "heading": "player-000005" },
    ]);
    let out = std::process::Command::new("node")
        .arg(&script)
        .current_dir(&build)
        .env("BASE_URL", &server.base)
        .env("API_KEY", SECRET)
        .env("CHROMIUM", &chromium)
        .env("REPEAT", cfg.repeat.max(3).to_string())
        .env("PAGES", pages.to_string())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return Err(format!("paint.mjs failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => return Ok(skipped(&format!("cannot run node: {e}"))),
    };
    let times = |name: &str| -> Vec<f64> {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["name"] == name)
            .filter_map(|v| v["ms"].as_f64())
            .collect()
    };
    let page = |name: &str, what: &str, big: &str, small: &str| Measurement {
        name: format!("{name}. {what}, first paint in Chromium, store of {BIG} keys"),
        unit: "ms".into(),
        higher_is_better: false,
        ours: times(big),
        baseline_name: format!("the same page, store of {SMALL} keys"),
        baseline: times(small),
        goal_ratio: None,
        notes: vec![],
    };
    Ok(vec![
        page("C1", "the key list (first page of 50)", "keys-big", "keys-small"),
        page("C2", "a key's page (record, lease, waiting messages, editor)", "key-big", "key-small"),
        Measurement {
            name: format!("C3. counting a store of {BIG} keys and their {BIG} versions (GET …/usage?fresh=true)"),
            unit: "ms".into(),
            higher_is_better: false,
            ours: count_big,
            baseline_name: format!("the same, store of {SMALL} keys"),
            baseline: count_small,
            goal_ratio: None,
            notes: vec![],
        },
    ])
}
