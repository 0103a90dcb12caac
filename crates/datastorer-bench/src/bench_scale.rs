//! Figure 5: what a loaded key costs in memory, with every key awake (no
//! hibernation: each with its actor), every key idle (hibernating), and
//! one key in ten active beside nine idle; and 5c, how long the first
//! message to a hibernating key takes (the wake-up) beside the same
//! message to an awake one. Each memory figure is taken in a fresh child
//! process, so no side inherits another's freed memory.
//!
//! Must not: share an engine between the sides it compares.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use datastorer::storage::memory::MemoryBackend;
use datastorer::storage::{storage_key, Backend, Precondition, WriteOp};
use datastorer::{AcquirePolicy, Config, Datastorer, Store};

use super::bench::{median, spec, BenchConfig, Measurement};

fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A figure of /proc/self/status in bytes (`VmRSS:` now, `VmHWM:` the peak).
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Which side of the memory measurement a child process takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaleSide {
    /// The documents loaded as keys of the engine, each with its actor
    /// (hibernation off: what a loaded key cost before round 2).
    Awake,
    /// The documents loaded as keys of the engine, all idle: hibernating.
    Idle,
    /// One key in ten active (an engine without hibernation holds those),
    /// nine in ten idle (hibernating), on one backend.
    Active10,
    /// The same documents in a plain HashMap.
    Baseline,
    /// No engine: the memory backend holding what the engine stores for
    /// each key (the record and its first version), to tell the engine's
    /// own cost from its stored copy's.
    Stored,
}

/// Which document type the memory measurement loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaleDoc {
    /// A typed struct of two integers (`Store<Small>`): the usual embedded case.
    Typed,
    /// The same document as a `serde_json::Value` (what the HTTP server keeps).
    Json,
}

/// A small typed document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Small {
    coins: u64,
    level: u32,
}

/// What one child measured.
struct ChildFigures {
    rss: f64,
    load_secs: f64,
    /// Bytes of keys and values the memory backend stores (its own copy of
    /// every record and version, which sled or PostgreSQL keep on disk).
    stored: f64,
    hibernating: f64,
    /// One autosave tick's pass over every key, ms.
    tick_ms: f64,
    /// The shutdown that releases every key, s.
    shutdown_secs: f64,
    /// How far above the loaded keys' memory the shutdown's peak went, bytes.
    shutdown_peak: f64,
}

/// An engine on `backend`; `hibernate`: keys sleep after one idle tick
/// of 100 ms (so keys loaded in batches sleep batch by batch, as keys
/// loaded over time do).
fn engine_config(backend: &Arc<MemoryBackend>, owner: &str, hibernate: bool) -> Config {
    let mut c = Config::backend(backend.clone()).owner_id(owner);
    c.handle_signals = false;
    c.lease_ttl = Duration::from_secs(7200);
    if hibernate {
        c.autosave_interval = Duration::from_millis(100);
        c.hibernate_after = Some(Duration::ZERO);
    } else {
        c.autosave_interval = Duration::from_secs(3600);
        c.hibernate_after = None;
    }
    c
}

/// Child-process half of the memory measurement: prints
/// `<rss delta bytes> <load seconds> <stored bytes> <hibernating keys>`.
pub async fn scale_child(side: ScaleSide, doc: ScaleDoc, n: usize) -> Result<(), String> {
    let before = rss_bytes();
    let started = Instant::now();
    match doc {
        ScaleDoc::Typed => scale_side(side, Small { coins: 0, level: 1 }, n, before, started).await,
        ScaleDoc::Json => scale_side(side, json!({"coins": 0, "level": 1}), n, before, started).await,
    }
}

async fn scale_side<T: datastorer::Document>(
    side: ScaleSide,
    template: T,
    n: usize,
    before: u64,
    started: Instant,
) -> Result<(), String> {
    let backend = Arc::new(MemoryBackend::unlogged());
    let engines = match side {
        ScaleSide::Baseline => {
            let map: HashMap<String, T> = (0..n).map(|i| (format!("k{i}"), template.clone())).collect();
            println!("{} {} 0 0 0 0 0", rss_bytes().saturating_sub(before), started.elapsed().as_secs_f64());
            std::hint::black_box(&map);
            return Ok(());
        }
        ScaleSide::Stored => return stored_side(template, n).await,
        ScaleSide::Awake => vec![(engine_config(&backend, "awake", false), 0..n)],
        ScaleSide::Idle => vec![(engine_config(&backend, "idle", true), 0..n)],
        ScaleSide::Active10 => {
            vec![
                (engine_config(&backend, "idle", true), 0..n - n / 10),
                (engine_config(&backend, "awake", false), n - n / 10..n),
            ]
        }
    };
    let mut running = Vec::new();
    for (config, keys) in engines {
        let hibernates = config.hibernate_after.is_some();
        let ds = Datastorer::start(config).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(template.clone())).map_err(|e| e.to_string())?;
        load(&ds, &store, keys, hibernates).await?;
        running.push((ds, store));
    }
    let took = started.elapsed().as_secs_f64();
    let loaded: usize = running.iter().map(|(ds, _)| ds.loaded_count()).sum();
    if loaded != n {
        return Err(format!("{loaded} keys loaded, expected {n}"));
    }
    let rss = rss_bytes().saturating_sub(before);
    let hibernating: usize = running.iter().map(|(ds, _)| ds.hibernation().hibernating).sum();
    // One autosave tick over every key (the supervisor's pass, answered
    // when it has visited them all), as the engine runs it every 30 s.
    let t = Instant::now();
    for (ds, _) in &running {
        ds.autosave_now().await;
    }
    let tick_ms = t.elapsed().as_secs_f64() * 1e3;
    let stored = stored_bytes(&backend)?;
    // Then the shutdown, which releases every key (a sleeping one is woken
    // for it, so many at a time): how long, and the peak it reaches
    // beyond what the loaded keys held.
    let t = Instant::now();
    for (ds, _) in &running {
        let report = ds.shutdown().await;
        if !report.is_clean() {
            return Err(format!("shutdown was not clean: {report}"));
        }
    }
    let shutdown_secs = t.elapsed().as_secs_f64();
    let peak_beyond = status_bytes("VmHWM:").saturating_sub(before).saturating_sub(rss);
    println!("{rss} {took} {stored} {hibernating} {tick_ms} {shutdown_secs} {peak_beyond}");
    Ok(())
}

/// The memory backend alone with `n` records as an engine's open leaves
/// them (learnt from one key opened by an engine on another backend).
async fn stored_side<T: datastorer::Document>(template: T, n: usize) -> Result<(), String> {
    let probe = Arc::new(MemoryBackend::unlogged());
    let record = {
        let ds = Datastorer::start(engine_config(&probe, "probe", false)).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(template)).map_err(|e| e.to_string())?;
        store.open("k0").policy(AcquirePolicy::Fail).await.map_err(|e| e.to_string())?;
        ds.shutdown().await;
        probe.get(&storage_key("b", "k0")).map_err(|e| e.to_string())?.ok_or("the probe stored nothing")?
    };
    let before = rss_bytes();
    let started = Instant::now();
    let backend = MemoryBackend::unlogged();
    let mut ops = Vec::with_capacity(4096);
    for i in 0..n {
        let op = WriteOp::new(storage_key("b", &format!("k{i}")), Precondition::Any, Some(record.clone()));
        ops.push(if super::bench::versions_on() { op.keeping_version() } else { op });
        if ops.len() == 4096 || i + 1 == n {
            for r in backend.write_batch(&ops) {
                r.map_err(|e| e.to_string())?;
            }
            // As the queue does after each batch: the backend keeps what
            // it would lose on a crash only until the flush.
            backend.flush().map_err(|e| e.to_string())?;
            ops.clear();
        }
    }
    let rss = rss_bytes().saturating_sub(before);
    println!("{rss} {} {} 0 0 0 0", started.elapsed().as_secs_f64(), stored_bytes(&backend)?);
    Ok(())
}

/// Opens `keys` in batches (the handles are dropped: the keys stay loaded,
/// and the application's handles are not the engine's cost); where keys
/// hibernate, each batch of 16 384 is left to fall asleep before the next
/// opens (the memory of the last batch's actors, freed, stays in the
/// process: about 28 bytes a key at a million).
async fn load<T: datastorer::Document>(
    ds: &Datastorer,
    store: &Store<T>,
    keys: std::ops::Range<usize>,
    hibernates: bool,
) -> Result<(), String> {
    let first = keys.start;
    let mut pending = Vec::new();
    for i in keys.clone() {
        pending.push(actix::spawn(store.open(format!("k{i}")).policy(AcquirePolicy::Fail).into_future()));
        if pending.len() >= if hibernates { 16_384 } else { 4096 } || i + 1 == keys.end {
            for f in pending.drain(..) {
                f.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            }
            if hibernates {
                wait_until_asleep(ds, i + 1 - first).await?;
            }
        }
    }
    Ok(())
}

/// Waits (for a signal, with a generous bound) until `n` keys hibernate.
async fn wait_until_asleep(ds: &Datastorer, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ds.hibernation().hibernating < n {
        if Instant::now() > deadline {
            return Err(format!("{} of {n} keys asleep after 120 s", ds.hibernation().hibernating));
        }
        actix::clock::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Bytes of keys and values in the memory backend.
fn stored_bytes(backend: &MemoryBackend) -> Result<u64, String> {
    let mut total = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = backend.scan_sizes(b"", after.as_deref(), 65_536).map_err(|e| e.to_string())?;
        let Some((last, _)) = page.last() else { return Ok(total) };
        total += page.iter().map(|(k, len)| k.len() as u64 + len).sum::<u64>();
        after = Some(last.clone());
    }
}

fn run_scale_child(side: ScaleSide, doc: ScaleDoc, n: usize) -> Result<ChildFigures, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let side = match side {
        ScaleSide::Awake => "awake",
        ScaleSide::Idle => "idle",
        ScaleSide::Active10 => "active10",
        ScaleSide::Baseline => "baseline",
        ScaleSide::Stored => "stored",
    };
    let doc = match doc {
        ScaleDoc::Typed => "typed",
        ScaleDoc::Json => "json",
    };
    let out = std::process::Command::new(exe)
        .args(["bench-scale-child", "--side", side, "--doc", doc, "--keys", &n.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("scale child failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<f64> = text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    match parts[..] {
        [rss, load_secs, stored, hibernating, tick_ms, shutdown_secs, shutdown_peak] => {
            Ok(ChildFigures { rss, load_secs, stored, hibernating, tick_ms, shutdown_secs, shutdown_peak })
        }
        _ => Err(format!("scale child printed {text:?}")),
    }
}

pub(super) async fn bench_scale(cfg: &BenchConfig) -> Result<Vec<Measurement>, String> {
    let n = cfg.scale_keys;
    let mib = |b: f64| b / (1 << 20) as f64;
    let mut out = Vec::new();
    for (doc, label, kind, baseline_name) in [
        (
            ScaleDoc::Typed,
            "5a",
            "typed struct {coins: u64, level: u32}",
            "the same documents in a HashMap<String, Small>",
        ),
        (
            ScaleDoc::Json,
            "5b",
            "the same document as serde_json::Value",
            "the same documents in a HashMap<String, serde_json::Value>",
        ),
    ] {
        let sides = [
            (ScaleSide::Idle, "all idle (hibernating)"),
            (ScaleSide::Active10, "one in ten active, the rest idle"),
            (ScaleSide::Awake, "all awake (hibernation off: before round 2)"),
        ];
        let mut figures: Vec<Vec<(ChildFigures, f64)>> = sides.iter().map(|_| Vec::new()).collect();
        let mut stored_rss = Vec::new();
        // Memory figures barely vary; two runs show that they do not.
        for _ in 0..cfg.repeat.min(2) {
            let base = run_scale_child(ScaleSide::Baseline, doc, n)?.rss;
            stored_rss.push(run_scale_child(ScaleSide::Stored, doc, n)?.rss);
            for (i, (side, _)) in sides.iter().enumerate() {
                figures[i].push((run_scale_child(*side, doc, n)?, base));
            }
        }
        for (i, (side, how)) in sides.iter().enumerate() {
            let f = &figures[i];
            let ours: Vec<f64> = f.iter().map(|(c, _)| c.rss).collect();
            let base: Vec<f64> = f.iter().map(|(_, b)| *b).collect();
            let per_key = (median(&ours) - median(&base)) / n as f64;
            let stored_per_key = median(&f.iter().map(|(c, _)| c.stored).collect::<Vec<_>>()) / n as f64;
            let asleep = median(&f.iter().map(|(c, _)| c.hibernating).collect::<Vec<_>>());
            let mut notes = vec![
                format!("{n} keys loaded in {:.1} s, {asleep:.0} hibernating", median(&f.iter().map(|(c, _)| c.load_secs).collect::<Vec<_>>())),
                format!("overhead per key beyond the document: {per_key:.0} bytes"),
                format!(
                    "of which the memory backend's stored copy (record and version, {stored_per_key:.0} bytes of keys and values): {:.0} bytes a key (the backend alone holding the same records), which sled and PostgreSQL keep on disk",
                    median(&stored_rss) / n as f64
                ),
                format!("the engine's own cost per key: {:.0} bytes", per_key - median(&stored_rss) / n as f64),
                format!(
                    "one autosave tick's pass over the {n} keys: {:.0} ms",
                    median(&f.iter().map(|(c, _)| c.tick_ms).collect::<Vec<_>>())
                ),
                format!(
                    "shutdown (every key released): {:.2} s, its peak {:.0} MiB above the loaded keys' memory",
                    median(&f.iter().map(|(c, _)| c.shutdown_secs).collect::<Vec<_>>()),
                    mib(median(&f.iter().map(|(c, _)| c.shutdown_peak).collect::<Vec<_>>()))
                ),
            ];
            if *side == ScaleSide::Idle {
                let own = per_key - median(&stored_rss) / n as f64;
                let total_mib = mib(median(&ours) - median(&base)) * 1e6 / n as f64;
                notes.push(format!(
                    "goal: at most 600 bytes per key beyond the document: the engine's own {own:.0} bytes, {}; \
                     with the memory backend's copy {per_key:.0} bytes, {}; a million keys beyond their documents: \
                     {total_mib:.0} MiB, {} 1 GiB",
                    if own <= 600.0 { "met" } else { "missed" },
                    if per_key <= 600.0 { "met" } else { "missed" },
                    if total_mib < 1024.0 { "under" } else { "over" }
                ));
            }
            let suffix = match side {
                ScaleSide::Idle => "",
                ScaleSide::Active10 => "-10%",
                _ => "-awake",
            };
            out.push(Measurement {
                name: format!(
                    "{label}{suffix}. resident memory, {n} loaded keys, {kind}, {how} (memory backend: its stored copy is included)"
                ),
                unit: "MiB".into(),
                higher_is_better: false,
                ours: ours.iter().map(|b| mib(*b)).collect(),
                baseline_name: baseline_name.into(),
                baseline: base.iter().map(|b| mib(*b)).collect(),
                goal_ratio: None,
                notes,
            });
        }
    }
    out.push(bench_wake_up(cfg).await?);
    Ok(out)
}

/// 5c: a read of a hibernating key (the wake-up: a new actor started from
/// what the cell kept, then the message) beside the same read of the key
/// once awake, one key after another.
async fn bench_wake_up(cfg: &BenchConfig) -> Result<Measurement, String> {
    let keys = (cfg.scale_keys / 100).clamp(500, 10_000);
    let (mut woken_p50, mut awake_p50, mut woken_p99, mut awake_p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.repeat {
        let backend = Arc::new(MemoryBackend::unlogged());
        let ds = Datastorer::start(engine_config(&backend, "wake", true)).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(json!({"n": 0}))).map_err(|e| e.to_string())?;
        load(&ds, &store, 0..keys, true).await?;
        let (mut woken, mut awake) = (Vec::with_capacity(keys), Vec::with_capacity(keys));
        for i in 0..keys {
            let key = format!("k{i}");
            let session = store.get(key.as_str()).ok_or_else(|| format!("{key} not loaded"))?;
            let t = Instant::now();
            session.read(|d: &Value| d["n"].as_u64()).await.map_err(|e| e.to_string())?;
            woken.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            session.read(|d: &Value| d["n"].as_u64()).await.map_err(|e| e.to_string())?;
            awake.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let stats = ds.hibernation();
        if stats.woken < keys as u64 {
            return Err(format!("{} wake-ups for {keys} reads of sleeping keys", stats.woken));
        }
        ds.shutdown().await;
        woken_p50.push(super::bench::percentile(&mut woken, 0.5));
        woken_p99.push(super::bench::percentile(&mut woken, 0.99));
        awake_p50.push(super::bench::percentile(&mut awake, 0.5));
        awake_p99.push(super::bench::percentile(&mut awake, 0.99));
    }
    Ok(Measurement {
        name: format!("5c. wake-up: a read of a hibernating key, p50 ({keys} keys, one after another)"),
        unit: "µs".into(),
        higher_is_better: false,
        ours: woken_p50,
        baseline_name: "the same read of the key once awake".into(),
        baseline: awake_p50,
        goal_ratio: None,
        notes: vec![format!("p99: {:.1} µs woken, {:.1} µs awake", median(&woken_p99), median(&awake_p99))],
    })
}
