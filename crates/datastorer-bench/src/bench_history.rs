//! What history costs beyond the save path: the bytes a version takes on
//! disk (sled, versions on against off, in the same run), and the time to
//! prune a day of versions (against a raw scan of the same versions).
//! `--only history`.

use std::path::Path;
use std::time::{Duration, Instant};

use datastorer::storage::history::version_key;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{Backend, Precondition, Record, RecordHeader, WriteOp};
use datastorer::{Config, Datastorer, Priority, Retention, StoreSpec};
use serde_json::json;

use super::bench::{median, BenchConfig, Measurement};

fn sled_config(dir: &Path) -> Config {
    let mut c = Config::sled(dir).owner_id("bench");
    c.handle_signals = false;
    c.prune_interval = None;
    c.autosave_interval = Duration::from_secs(3600);
    c.lease_ttl = Duration::from_secs(7200);
    c
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// `keys` keys saved `saves` times each with `doc_bytes` documents; the
/// data directory's size after a clean shutdown.
async fn saved_bytes(dir: &Path, keys: usize, saves: usize, doc_bytes: usize, versions: bool) -> Result<u64, String> {
    let ds = Datastorer::start(sled_config(dir)).await.map_err(|e| e.to_string())?;
    let retention = if versions { Retention::default() } else { Retention::off() };
    let store = ds.store("b", StoreSpec::new(json!({})).retention(retention)).map_err(|e| e.to_string())?;
    let mut sessions = Vec::new();
    for k in 0..keys {
        sessions.push(store.open(format!("k{k}")).await.map_err(|e| e.to_string())?);
    }
    for round in 0..saves {
        let mut receipts = Vec::new();
        for (k, s) in sessions.iter().enumerate() {
            let d = json!({ "k": k, "round": round, "pad": "x".repeat(doc_bytes.saturating_sub(40)) });
            s.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
            receipts.push(s.save(Priority::Normal));
        }
        for r in receipts {
            r.await.map_err(|e| e.to_string())?;
        }
    }
    ds.shutdown().await;
    drop(sessions);
    drop(store);
    drop(ds);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(dir_bytes(dir))
}

/// Writes a day of versions (one per 30 s autosave, 24 to 48 hours old) of
/// `keys` keys straight into a sled directory; answers how many.
fn write_a_day(dir: &Path, keys: usize, doc_bytes: usize) -> Result<u64, String> {
    let b = SledBackend::open(dir).map_err(|e| e.message)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
    let start = now.as_millis() as u64 - 48 * 3600 * 1000;
    let per_key = 24 * 3600 / 30;
    let mut written = 0;
    for k in 0..keys {
        let key = format!("k{k}");
        let mut batch = Vec::with_capacity(per_key);
        for i in 0..per_key {
            let rec = Record {
                header: RecordHeader { epoch: 1, revision: i as u64 + 1 },
                data_version: 0,
                data: json!({ "i": i, "pad": "x".repeat(doc_bytes.saturating_sub(24)) }).to_string().into_bytes(),
                metadata: b"{}".to_vec(),
                user_ids: vec![],
                lease: None,
                created_at_ms: start,
                updated_at_ms: start + i as u64 * 30_000,
            };
            batch.push(WriteOp::new(version_key("b", &key, rec.header), Precondition::Any, Some(rec.encode())));
        }
        for r in b.write_batch(&batch) {
            r.map_err(|e| e.to_string())?;
        }
        written += per_key as u64;
    }
    b.flush().map_err(|e| e.to_string())?;
    Ok(written)
}

/// Raw sled, no engine: `n` records of `bytes` written with (`versions`) or
/// without a second key holding the same bytes, as a history keeps them;
/// `atomic`: each record and its version in one `apply_batch` (grouped by
/// `group`), else single-key inserts on `threads` threads. Seconds, flush
/// included: the floor of what keeping versions costs on sled.
fn raw_sled_with_versions(
    dir: &Path,
    n: usize,
    bytes: usize,
    versions: bool,
    atomic: bool,
    threads: usize,
) -> Result<f64, String> {
    let db = sled::open(dir).map_err(|e| e.to_string())?;
    let value = vec![b'x'; bytes];
    let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            let rec = datastorer::storage::storage_key("b", &format!("k{i}"));
            let ver = version_key("b", &format!("k{i}"), RecordHeader { epoch: 1, revision: 2 });
            (rec, ver)
        })
        .collect();
    let per_thread = n.div_ceil(threads.max(1)).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .chunks(per_thread)
            .map(|chunk| {
                let (db, value) = (&db, &value);
                scope.spawn(move || -> Result<(), String> {
                    if atomic && versions {
                        for group in chunk.chunks(256) {
                            let mut batch = sled::Batch::default();
                            for (rec, ver) in group {
                                batch.insert(rec.as_slice(), value.as_slice());
                                batch.insert(ver.as_slice(), value.as_slice());
                            }
                            db.apply_batch(batch).map_err(|e| e.to_string())?;
                        }
                        return Ok(());
                    }
                    for (rec, ver) in chunk {
                        db.insert(rec.as_slice(), value.as_slice()).map_err(|e| e.to_string())?;
                        if versions {
                            db.insert(ver.as_slice(), value.as_slice()).map_err(|e| e.to_string())?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().map_err(|_| "thread panicked".to_string())?)
    })?;
    db.flush().map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64())
}

pub async fn bench_history(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let (mut atomic, mut plain, mut torn) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..cfg.repeat {
        let n = cfg.keys;
        plain.push(
            n as f64
                / raw_sled_with_versions(
                    &scratch.join(format!("raw-plain-{r}")),
                    n,
                    cfg.doc_bytes,
                    false,
                    false,
                    threads,
                )?,
        );
        atomic.push(
            n as f64
                / raw_sled_with_versions(
                    &scratch.join(format!("raw-atomic-{r}")),
                    n,
                    cfg.doc_bytes,
                    true,
                    true,
                    threads,
                )?,
        );
        torn.push(
            n as f64
                / raw_sled_with_versions(
                    &scratch.join(format!("raw-torn-{r}")),
                    n,
                    cfg.doc_bytes,
                    true,
                    false,
                    threads,
                )?,
        );
    }
    let floor = Measurement {
        name: format!(
            "H0. the floor on sled: {} records of {} B each with its version in one apply_batch, raw sled, no engine",
            cfg.keys, cfg.doc_bytes
        ),
        unit: "records/s".into(),
        higher_is_better: true,
        ours: atomic,
        baseline_name: format!(
            "raw sled single-key inserts of the records alone on {threads} threads (figure 2's ceiling)"
        ),
        baseline: plain,
        goal_ratio: Some(0.85),
        notes: vec![format!(
            "raw sled single-key inserts of each record and its version, not atomic: {:.0} records/s (median)",
            median(&torn)
        )],
    };
    let mut out = vec![floor];
    out.extend(bench_history_costs(cfg, scratch).await?);
    Ok(out)
}

async fn bench_history_costs(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let keys = (cfg.keys / 5).max(100);
    let saves = 10;
    let (mut with, mut without, mut per_version) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..cfg.repeat {
        let on = saved_bytes(&scratch.join(format!("hist-on-{r}")), keys, saves, cfg.doc_bytes, true).await?;
        let off = saved_bytes(&scratch.join(format!("hist-off-{r}")), keys, saves, cfg.doc_bytes, false).await?;
        with.push(on as f64);
        without.push(off as f64);
        per_version.push((on as f64 - off as f64) / (keys * saves) as f64);
    }
    let storage = Measurement {
        name: format!("H1. data directory after {saves} saves of {keys} keys of {} B, versions on", cfg.doc_bytes),
        unit: "bytes".into(),
        higher_is_better: false,
        ours: with,
        baseline_name: "the same, versions off".into(),
        baseline: without,
        goal_ratio: None,
        notes: vec![format!(
            "bytes a version adds on disk (median): {:.0} for a {} B document",
            median(&per_version),
            cfg.doc_bytes
        )],
    };

    let prune_keys = (cfg.keys / 100).max(10);
    let (mut prune, mut scan, mut pruned_counts) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..cfg.repeat {
        let dir = scratch.join(format!("prune-{r}"));
        let total = write_a_day(&dir, prune_keys, cfg.doc_bytes)?;
        let started = Instant::now();
        {
            let b = SledBackend::open(&dir).map_err(|e| e.message)?;
            let mut after: Option<Vec<u8>> = None;
            let mut seen = 0u64;
            loop {
                let page = b.scan_prefix(b"h\0b\0", after.as_deref(), 512).map_err(|e| e.to_string())?;
                seen += page.len() as u64;
                match page.last() {
                    Some((k, _)) if page.len() == 512 => after = Some(k.clone()),
                    _ => break,
                }
            }
            if seen != total {
                return Err(format!("scanned {seen} of {total} versions"));
            }
        }
        scan.push(started.elapsed().as_secs_f64());
        let ds = Datastorer::start(sled_config(&dir)).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", StoreSpec::new(json!({}))).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let report = store.prune_versions().await.map_err(|e| e.to_string())?;
        prune.push(started.elapsed().as_secs_f64());
        pruned_counts.push(report.pruned as f64);
        ds.shutdown().await;
    }
    let per_key = 24 * 3600 / 30;
    let pruning = Measurement {
        name: format!(
            "H2. pruning a day of versions: {prune_keys} keys x {per_key} versions (30 s autosave), 24-48 h old, to one per hour"
        ),
        unit: "s".into(),
        higher_is_better: false,
        ours: prune,
        baseline_name: "a raw sled scan of the same versions".into(),
        baseline: scan,
        goal_ratio: None,
        notes: vec![format!("versions pruned per pass (median): {:.0}", median(&pruned_counts))],
    };
    Ok(vec![storage, pruning])
}
