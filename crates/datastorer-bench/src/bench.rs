//! `datastorer bench`: the end-to-end benchmark suite. Every figure is
//! measured beside its baseline in the same run, repeated, and reported as
//! median with min and max, plus the ratio to the baseline. Results go to
//! `results.json` and `results.svg` in the output directory.
//!
//! Must not: assert anything about speed (it measures and reports).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, LeaseHolder, Precondition, Record, RecordHeader, WriteOp};
use datastorer::{Config, Datastorer, Priority, Session};

/// Set (by `--no-versions`) when the stores of a run keep no versions;
/// child processes inherit it.
pub const VERSIONS_OFF_VAR: &str = "DATASTORER_BENCH_NO_VERSIONS";

/// Whether the stores of this run keep versions.
pub fn versions_on() -> bool {
    std::env::var_os(VERSIONS_OFF_VAR).is_none()
}

/// A store spec for the benches: with versions, unless the run says not.
pub fn spec<T>(template: T) -> datastorer::StoreSpec<T> {
    let s = datastorer::StoreSpec::new(template);
    if versions_on() {
        s
    } else {
        s.retention(datastorer::Retention::off())
    }
}

/// Sizes of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// Repetitions of each measurement.
    pub repeat: usize,
    /// Updates per update measurement.
    pub updates: usize,
    /// Keys in the "across many keys" and durable-throughput measurements.
    pub keys: usize,
    /// Saves sampled for latency.
    pub latency_samples: usize,
    /// Dirty keys at shutdown.
    pub shutdown_keys: usize,
    /// Keys loaded for the memory measurement.
    pub scale_keys: usize,
    /// Document size for durable measurements, bytes.
    pub doc_bytes: usize,
}

impl BenchConfig {
    /// The sizes the issue asks for.
    pub fn full() -> Self {
        Self {
            repeat: 5,
            updates: 100_000,
            keys: 10_000,
            latency_samples: 300,
            shutdown_keys: 100_000,
            scale_keys: 1_000_000,
            doc_bytes: 1024,
        }
    }

    /// Small sizes: checks the suite runs, in seconds.
    pub fn quick() -> Self {
        Self {
            repeat: 2,
            updates: 2_000,
            keys: 500,
            latency_samples: 20,
            shutdown_keys: 1_000,
            scale_keys: 5_000,
            doc_bytes: 1024,
        }
    }
}

/// One figure and its baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Unit of `ours` and `baseline`.
    pub unit: String,
    /// Whether larger values are better (throughput) or worse (time).
    pub higher_is_better: bool,
    /// Our value per repetition.
    pub ours: Vec<f64>,
    /// What the baseline is.
    pub baseline_name: String,
    /// The baseline per repetition.
    pub baseline: Vec<f64>,
    /// The goal, as a ratio ours/baseline (a minimum when higher is better, else a maximum).
    pub goal_ratio: Option<f64>,
    /// Extra figures (for example keys per durable commit).
    pub notes: Vec<String>,
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 0 {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

pub(super) fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if samples.is_empty() {
        return f64::NAN;
    }
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

impl Measurement {
    /// The median of the per-repetition ratios: each repetition measures
    /// ours and the baseline back to back, so drift in the machine (disk
    /// writeback, a noisy neighbour) cancels within a pair instead of
    /// landing on one side. Without pairs, the ratio of the medians.
    fn ratio(&self) -> f64 {
        if self.ours.len() == self.baseline.len() && !self.ours.is_empty() {
            let per_run: Vec<f64> = self.ours.iter().zip(&self.baseline).map(|(o, b)| o / b).collect();
            return median(&per_run);
        }
        self.ratio_of_medians()
    }

    fn ratio_of_medians(&self) -> f64 {
        median(&self.ours) / median(&self.baseline)
    }

    fn verdict(&self) -> &'static str {
        match self.goal_ratio {
            None => "",
            Some(g)
                if (self.higher_is_better && self.ratio() >= g) || (!self.higher_is_better && self.ratio() <= g) =>
            {
                "goal met"
            }
            Some(_) => "GOAL MISSED",
        }
    }

    fn spread(v: &[f64]) -> (f64, f64) {
        (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
    }

    pub(super) fn print(&self) {
        let (omin, omax) = Self::spread(&self.ours);
        let (bmin, bmax) = Self::spread(&self.baseline);
        let goal = match self.goal_ratio {
            Some(g) if self.higher_is_better => format!("  goal ≥ {g:.2}×"),
            Some(g) => format!("  goal ≤ {g:.2}×"),
            None => String::new(),
        };
        println!("{}", self.name);
        println!(
            "  datastorer: {:>14.3} {} (min {:.3}, max {:.3}, n={})",
            median(&self.ours),
            self.unit,
            omin,
            omax,
            self.ours.len()
        );
        println!(
            "  {:<10}: {:>14.3} {} (min {:.3}, max {:.3}) [{}]",
            "baseline",
            median(&self.baseline),
            self.unit,
            bmin,
            bmax,
            self.baseline_name
        );
        println!(
            "  ratio      : {:>14.3}×{goal}  {} (median of per-run ratios; ratio of medians {:.3}×)",
            self.ratio(),
            self.verdict(),
            self.ratio_of_medians()
        );
        for n in &self.notes {
            println!("  note       : {n}");
        }
    }
}

/// A trivial actor: the baseline for a session round trip.
pub(super) struct Echo(pub(super) u64);
impl Actor for Echo {
    type Context = Context<Self>;
}
#[derive(Message)]
#[rtype(result = "u64")]
pub(super) struct Bump;
impl Handler<Bump> for Echo {
    type Result = u64;
    fn handle(&mut self, _: Bump, _: &mut Self::Context) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The floor under 1a and 1b: an actor doing the work a session update
/// promises beside the message itself. It keeps a copy of the document
/// to put back if the change panics (`Session::update`'s promise) and
/// encodes the changed document to check it is still saveable (the size
/// check at the change: nothing a user changed may become unsaveable
/// without them being told), as the engine does, with serde_json.
pub(super) struct Keeper {
    doc: Value,
    encoded: Vec<u8>,
}
impl Keeper {
    pub(super) fn new(doc: Value) -> Self {
        Keeper { doc, encoded: Vec::new() }
    }
}
impl Actor for Keeper {
    type Context = Context<Self>;
}
/// Answers the length of the encoding it keeps (the bytes a save writes).
impl Handler<Bump> for Keeper {
    type Result = u64;
    fn handle(&mut self, _: Bump, _: &mut Self::Context) -> u64 {
        let before = self.doc.clone();
        let changed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.doc["n"] = json!(self.doc["n"].as_u64().unwrap_or(0) + 1);
        }));
        match changed.map(|()| serde_json::to_vec(&self.doc)) {
            Ok(Ok(bytes)) => self.encoded = bytes,
            _ => self.doc = before,
        }
        self.encoded.len() as u64
    }
}

pub(super) fn memory_config(owner: &str) -> Config {
    let mut c = Config::memory().owner_id(owner);
    c.handle_signals = false;
    c.autosave_interval = Duration::from_secs(3600);
    c.lease_ttl = Duration::from_secs(7200);
    c
}

pub(super) fn sled_config(dir: &Path) -> Config {
    let mut c = Config::sled(dir).owner_id("bench");
    c.handle_signals = false;
    c.autosave_interval = Duration::from_secs(3600);
    c.lease_ttl = Duration::from_secs(7200);
    c.shutdown_deadline = Duration::from_secs(600);
    c
}

pub(super) fn doc(i: usize, bytes: usize) -> Value {
    json!({ "i": i, "pad": "x".repeat(bytes.saturating_sub(24)) })
}

/// Opens `keys` keys with up to `parallel` opens in flight (each open is a
/// task, so their reads and lease writes share batches).
async fn open_many(
    store: &datastorer::Store<Value>,
    keys: impl Iterator<Item = String>,
    parallel: usize,
) -> Result<Vec<Session<Value>>, String> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for k in keys {
        pending.push(actix::spawn(store.open(k).policy(datastorer::AcquirePolicy::Fail).into_future()));
        if pending.len() >= parallel {
            for f in pending.drain(..) {
                out.push(f.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?);
            }
        }
    }
    for f in pending {
        out.push(f.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

use std::future::IntoFuture;

/// The note that sets an update figure beside its floor (`Keeper`).
fn floor_note(floor: &[f64], ratio_floor: &[f64]) -> String {
    format!(
        "floor, an actor that keeps a copy for a panic and encodes the changed document (what an update promises): {:.0} updates/s (median); ours is {:.3}x of that (median of per-run ratios)",
        median(floor),
        median(ratio_floor)
    )
}

async fn bench_update_one_key(cfg: &BenchConfig) -> Result<Measurement, String> {
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let (mut floor, mut ratio_floor) = (Vec::new(), Vec::new());
    for _ in 0..cfg.repeat {
        let ds = Datastorer::start(memory_config("bench")).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(json!({"n": 0}))).map_err(|e| e.to_string())?;
        let s = store.open("k").await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        for _ in 0..cfg.updates {
            s.update(|d| d["n"] = json!(d["n"].as_u64().unwrap_or(0) + 1)).await.map_err(|e| e.to_string())?;
        }
        ours.push(cfg.updates as f64 / started.elapsed().as_secs_f64());
        ds.shutdown().await;

        let echo = Echo(0).start();
        let started = Instant::now();
        for _ in 0..cfg.updates {
            echo.send(Bump).await.map_err(|e| e.to_string())?;
        }
        base.push(cfg.updates as f64 / started.elapsed().as_secs_f64());

        let keeper = Keeper::new(json!({"n": 0})).start();
        let started = Instant::now();
        for _ in 0..cfg.updates {
            keeper.send(Bump).await.map_err(|e| e.to_string())?;
        }
        floor.push(cfg.updates as f64 / started.elapsed().as_secs_f64());
        ratio_floor.push(ours[ours.len() - 1] / floor[floor.len() - 1]);
    }
    Ok(Measurement {
        name: "1a. in-memory update, one key (sequential round trips)".into(),
        unit: "updates/s".into(),
        higher_is_better: true,
        ours,
        baseline_name: "bare actix send to a trivial actor".into(),
        baseline: base,
        goal_ratio: Some(0.8),
        notes: vec![floor_note(&floor, &ratio_floor)],
    })
}

async fn bench_update_many_keys(cfg: &BenchConfig) -> Result<Measurement, String> {
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let (mut floor, mut ratio_floor) = (Vec::new(), Vec::new());
    for _ in 0..cfg.repeat {
        let ds = Datastorer::start(memory_config("bench")).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(json!({"n": 0}))).map_err(|e| e.to_string())?;
        let sessions = open_many(&store, (0..cfg.keys).map(|i| format!("k{i}")), 256).await?;
        let started = Instant::now();
        for i in 0..cfg.updates {
            sessions[i % sessions.len()]
                .update(|d| d["n"] = json!(d["n"].as_u64().unwrap_or(0) + 1))
                .await
                .map_err(|e| e.to_string())?;
        }
        ours.push(cfg.updates as f64 / started.elapsed().as_secs_f64());
        ds.shutdown().await;

        let actors: Vec<_> = (0..cfg.keys).map(|_| Echo(0).start()).collect();
        let started = Instant::now();
        for i in 0..cfg.updates {
            actors[i % actors.len()].send(Bump).await.map_err(|e| e.to_string())?;
        }
        base.push(cfg.updates as f64 / started.elapsed().as_secs_f64());
        drop(actors);

        let keepers: Vec<_> = (0..cfg.keys).map(|_| Keeper::new(json!({"n": 0})).start()).collect();
        let started = Instant::now();
        for i in 0..cfg.updates {
            keepers[i % keepers.len()].send(Bump).await.map_err(|e| e.to_string())?;
        }
        floor.push(cfg.updates as f64 / started.elapsed().as_secs_f64());
        ratio_floor.push(ours[ours.len() - 1] / floor[floor.len() - 1]);
    }
    Ok(Measurement {
        name: format!("1b. in-memory update across {} keys (round robin)", cfg.keys),
        unit: "updates/s".into(),
        higher_is_better: true,
        ours,
        baseline_name: format!("bare actix send to {} trivial actors", cfg.keys),
        baseline: base,
        goal_ratio: Some(0.75),
        notes: vec![floor_note(&floor, &ratio_floor)],
    })
}

fn raw_record(i: usize, bytes: usize) -> Vec<u8> {
    raw_record_of(doc(i, bytes), 2)
}

fn raw_record_of(data: Value, revision: u64) -> Vec<u8> {
    Record {
        header: RecordHeader { epoch: 1, revision },
        data_version: 0,
        data: serde_json::to_vec(&data).unwrap_or_default(),
        metadata: b"{}".to_vec(),
        user_ids: vec![],
        lease: Some(LeaseHolder { owner: "bench".into(), expires_at_ms: u64::MAX }),
        created_at_ms: 0,
        updated_at_ms: 0,
    }
    .encode()
}

/// Raw sled: one batch of `n` records and one flush; answers seconds. The
/// keys are first stored with a small record and flushed, as the engine's
/// opens leave them, so both sides overwrite the same tree shape.
fn raw_sled_batch(dir: &Path, n: usize, bytes: usize) -> Result<f64, String> {
    raw_sled_commits(dir, n, bytes, 1)
}

/// A seeded raw sled database, its keys and the records to write.
type SeededSled = (sled::Db, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// A raw sled database in `dir` holding `n` keys with small records, as the
/// engine's opens leave them, so both sides overwrite the same tree shape;
/// answers it with the keys and the full-size records to write, after
/// `sync`.
fn seeded_raw_sled(dir: &Path, n: usize, bytes: usize) -> Result<SeededSled, String> {
    let db = sled::open(dir).map_err(|e| e.to_string())?;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| storage_key("b", &format!("k{i}"))).collect();
    let mut seed = sled::Batch::default();
    for k in &keys {
        seed.insert(k.as_slice(), raw_record_of(json!({}), 0));
    }
    db.apply_batch(seed).map_err(|e| e.to_string())?;
    db.flush().map_err(|e| e.to_string())?;
    let values: Vec<Vec<u8>> = (0..n).map(|i| raw_record(i, bytes)).collect();
    settle_disk();
    Ok((db, keys, values))
}

/// Raw sled: the same records in `commits` batches (in key-creation order,
/// as the sessions save them), each applied and flushed; answers seconds.
fn raw_sled_commits(dir: &Path, n: usize, bytes: usize, commits: usize) -> Result<f64, String> {
    let (db, keys, values) = seeded_raw_sled(dir, n, bytes)?;
    let per_commit = n.div_ceil(commits.max(1)).max(1);
    let started = Instant::now();
    let mut pairs = keys.into_iter().zip(values).peekable();
    while pairs.peek().is_some() {
        let mut batch = sled::Batch::default();
        for (k, v) in pairs.by_ref().take(per_commit) {
            batch.insert(k, v);
        }
        db.apply_batch(batch).map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Raw sled: the same records, each with a version of it beside (the
/// entry history keeps for every save, under its own key), in one batch
/// and one flush; answers seconds. With versions on, the fair floor.
fn raw_sled_batch_with_versions(dir: &Path, n: usize, bytes: usize) -> Result<f64, String> {
    let (db, keys, values) = seeded_raw_sled(dir, n, bytes)?;
    let started = Instant::now();
    let mut batch = sled::Batch::default();
    for (i, (k, v)) in keys.into_iter().zip(values).enumerate() {
        let id = RecordHeader { epoch: 1, revision: 2 };
        batch.insert(datastorer::storage::history::version_key("b", &format!("k{i}"), id), v.clone());
        batch.insert(k, v);
    }
    db.apply_batch(batch).map_err(|e| e.to_string())?;
    db.flush().map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64())
}

/// Raw sled: the same records as single-key inserts split over `threads`
/// threads, then one flush; answers seconds. This is how the sled backend
/// writes a large batch, so it is the ceiling for figure 2 on this machine.
fn raw_sled_parallel_inserts(dir: &Path, n: usize, bytes: usize, threads: usize) -> Result<f64, String> {
    let (db, keys, values) = seeded_raw_sled(dir, n, bytes)?;
    let per_thread = n.div_ceil(threads.max(1)).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .chunks(per_thread)
            .zip(values.chunks(per_thread))
            .map(|(ks, vs)| {
                let db = &db;
                scope.spawn(move || {
                    ks.iter().zip(vs).try_for_each(|(k, v)| db.insert(k.as_slice(), v.as_slice()).map(|_| ()))
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| "insert thread panicked".to_string())?.map_err(|e| e.to_string()))
    })?;
    db.flush().map_err(|e| e.to_string())?;
    Ok(started.elapsed().as_secs_f64())
}

/// Writes back dirty pages left by the previous step, so that each timed
/// section starts from a quiet disk (on this class of machine leftover
/// writeback otherwise moves figures by up to 2x between runs).
fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
}

async fn bench_durable_throughput(cfg: &BenchConfig, scratch: &Path) -> Result<Measurement, String> {
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut per_commit = Vec::new();
    let (mut same_commits, mut ratio_same_commits) = (Vec::new(), Vec::new());
    let (mut parallel, mut ratio_parallel) = (Vec::new(), Vec::new());
    let (mut with_versions, mut ratio_with_versions) = (Vec::new(), Vec::new());
    // As many threads as the sled backend writes a large batch with.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    // One repetition times ~0.1 s on each side, where this disk's drift is
    // largest: three times the pairs, for a median worth reading.
    for r in 0..cfg.repeat * 3 {
        let dir = scratch.join(format!("tput-{r}"));
        let ds = Datastorer::start(sled_config(&dir)).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(json!({}))).map_err(|e| e.to_string())?;
        let sessions = open_many(&store, (0..cfg.keys).map(|i| format!("k{i}")), 1024).await?;
        for (i, s) in sessions.iter().enumerate() {
            let d = doc(i, cfg.doc_bytes);
            s.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
        }
        let before = ds.queue_stats().await;
        settle_disk();
        let started = Instant::now();
        let receipts: Vec<_> = sessions.iter().map(|s| s.save(Priority::Normal)).collect();
        for r in receipts {
            r.await.map_err(|e| e.to_string())?;
        }
        let took = started.elapsed().as_secs_f64();
        let after = ds.queue_stats().await;
        ours.push(cfg.keys as f64 / took);
        per_commit.push(cfg.keys as f64 / (after.flushes - before.flushes).max(1) as f64);
        ds.shutdown().await;
        drop(sessions);
        drop(ds);

        let bt = raw_sled_batch(&scratch.join(format!("tput-raw-{r}")), cfg.keys, cfg.doc_bytes)?;
        base.push(cfg.keys as f64 / bt);
        // Context for the ratio: raw sled committing the same records in as
        // many flushes as the engine's group commit made.
        let commits = (after.flushes - before.flushes).max(1) as usize;
        let bc = raw_sled_commits(&scratch.join(format!("tput-rawc-{r}")), cfg.keys, cfg.doc_bytes, commits)?;
        same_commits.push(cfg.keys as f64 / bc);
        ratio_same_commits.push(ours[ours.len() - 1] / (cfg.keys as f64 / bc));
        if versions_on() {
            let bv = raw_sled_batch_with_versions(&scratch.join(format!("tput-rawv-{r}")), cfg.keys, cfg.doc_bytes)?;
            with_versions.push(cfg.keys as f64 / bv);
            ratio_with_versions.push(ours[ours.len() - 1] / (cfg.keys as f64 / bv));
        }
        let bp = raw_sled_parallel_inserts(&scratch.join(format!("tput-rawp-{r}")), cfg.keys, cfg.doc_bytes, threads)?;
        parallel.push(cfg.keys as f64 / bp);
        ratio_parallel.push(ours[ours.len() - 1] / (cfg.keys as f64 / bp));
    }
    Ok(Measurement {
        name: format!(
            "2. durable save throughput, {} dirty keys of {} B, save all, await every receipt",
            cfg.keys, cfg.doc_bytes
        ),
        unit: "keys/s".into(),
        higher_is_better: true,
        ours,
        baseline_name: "raw sled apply_batch + flush of the same records".into(),
        baseline: base,
        goal_ratio: Some(0.8),
        notes: vec![
            format!("keys per durable commit (median): {:.0}", median(&per_commit)),
            format!(
                "raw sled in as many commits as ours made: {:.0} keys/s (median); ours is {:.3}x of that (median of per-run ratios)",
                median(&same_commits),
                median(&ratio_same_commits)
            ),
            format!(
                "raw sled single-key inserts on {threads} threads (how the engine writes a large batch): {:.0} keys/s (median); ours is {:.3}x of that",
                median(&parallel),
                median(&ratio_parallel)
            ),
            if versions_on() {
                format!(
                    "raw sled batch + flush of each record and a version of it (what history writes): {:.0} keys/s (median); ours is {:.3}x of that",
                    median(&with_versions),
                    median(&ratio_with_versions)
                )
            } else {
                "versions off (--no-versions): the raw baselines write what the engine writes".into()
            },
        ],
    })
}

fn fsync_samples(dir: &Path, n: usize) -> Result<Vec<f64>, String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(dir.join("fsync.bin")).map_err(|e| e.to_string())?;
    let block = vec![7u8; 4096];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f.write_all(&block).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Raw sled saving one record the way a save with history does, once per
/// sample: the record and a version of it in one batch, then a flush;
/// each sample in ms. The floor under figure 3a on this disk.
fn raw_sled_save_samples(dir: &Path, n: usize) -> Result<Vec<f64>, String> {
    let db = sled::open(dir).map_err(|e| e.to_string())?;
    let key = storage_key("b", "k");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let value = raw_record_of(json!({ "n": i }), i as u64 + 2);
        let mut batch = sled::Batch::default();
        if versions_on() {
            let id = RecordHeader { epoch: 1, revision: i as u64 + 2 };
            batch.insert(datastorer::storage::history::version_key("b", "k", id), value.clone());
        }
        batch.insert(key.as_slice(), value);
        let started = Instant::now();
        db.apply_batch(batch).map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

async fn bench_save_latency(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let (mut p50, mut p99, mut b50, mut b99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut floor50, mut ours_floor, mut floor_fsync) = (Vec::new(), Vec::new(), Vec::new());
    let mut over_floor_us = Vec::new();
    for r in 0..cfg.repeat {
        let ds = Datastorer::start(sled_config(&scratch.join(format!("lat-{r}")))).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(json!({"n": 0}))).map_err(|e| e.to_string())?;
        let s = store.open("k").await.map_err(|e| e.to_string())?;
        let mut samples = Vec::new();
        for i in 0..cfg.latency_samples {
            s.update(move |d| d["n"] = json!(i)).await.map_err(|e| e.to_string())?;
            let started = Instant::now();
            s.save(Priority::Normal).await.map_err(|e| e.to_string())?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        p50.push(percentile(&mut samples, 0.5));
        p99.push(percentile(&mut samples, 0.99));
        ds.shutdown().await;
        let mut base = fsync_samples(&scratch.join(format!("lat-fsync-{r}")), cfg.latency_samples)?;
        b50.push(percentile(&mut base, 0.5));
        b99.push(percentile(&mut base, 0.99));
        let mut floor = raw_sled_save_samples(&scratch.join(format!("lat-sled-{r}")), cfg.latency_samples)?;
        let f50 = percentile(&mut floor, 0.5);
        floor50.push(f50);
        ours_floor.push(p50[p50.len() - 1] / f50);
        over_floor_us.push((p50[p50.len() - 1] - f50) * 1e3);
        floor_fsync.push(f50 / b50[b50.len() - 1]);
    }
    // The engine's own part is a time, not a share: the same microseconds
    // weigh twice as much in the ratio on a disk that syncs twice as fast.
    let floor_note = format!(
        "floor, raw sled writing the record{} in one batch and flushing: p50 {:.3} ms (median); ours is {:.3}x of it ({:.0} µs more), and it is {:.3}x the fdatasync baseline (medians of per-run figures)",
        if versions_on() { " and its version" } else { "" },
        median(&floor50),
        median(&ours_floor),
        median(&over_floor_us),
        median(&floor_fsync)
    );
    let m = |name: &str, ours, baseline, goal| Measurement {
        name: name.into(),
        unit: "ms".into(),
        higher_is_better: false,
        ours,
        baseline_name: "write 4 KiB + fdatasync on the same disk".into(),
        baseline,
        goal_ratio: goal,
        notes: vec![],
    };
    let mut p50_measurement = m("3a. single-key durable save latency, p50", p50, b50, Some(1.2));
    p50_measurement.notes.push(floor_note);
    Ok(vec![p50_measurement, m("3b. single-key durable save latency, p99", p99, b99, None)])
}

async fn bench_shutdown(cfg: &BenchConfig, scratch: &Path) -> Result<Measurement, String> {
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let reps = cfg.repeat;
    for r in 0..reps {
        let ds = Datastorer::start(sled_config(&scratch.join(format!("shut-{r}")))).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", spec(json!({}))).map_err(|e| e.to_string())?;
        let sessions = open_many(&store, (0..cfg.shutdown_keys).map(|i| format!("k{i}")), 4096).await?;
        for (i, s) in sessions.iter().enumerate() {
            let d = doc(i, 128);
            s.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
        }
        settle_disk();
        let started = Instant::now();
        let report = ds.shutdown().await;
        ours.push(started.elapsed().as_secs_f64());
        if !report.is_clean() {
            return Err(format!("shutdown was not clean: {report:?}"));
        }
        drop(sessions);
        drop(ds);
        base.push(raw_sled_batch(&scratch.join(format!("shut-raw-{r}")), cfg.shutdown_keys, 128)?);
    }
    Ok(Measurement {
        name: format!("4. shutdown: save and release {} dirty keys", cfg.shutdown_keys),
        unit: "s".into(),
        higher_is_better: false,
        ours,
        baseline_name: "raw sled batch write + flush of the same records".into(),
        baseline: base,
        goal_ratio: Some(1.3),
        notes: vec![],
    })
}

async fn bench_cold_load(cfg: &BenchConfig, scratch: &Path) -> Result<Vec<Measurement>, String> {
    let (mut p50, mut p99, mut b50, mut b99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..cfg.repeat {
        let dir = scratch.join(format!("cold-{r}"));
        {
            let b = SledBackend::open(&dir).map_err(|e| e.to_string())?;
            let ops: Vec<WriteOp> = (0..cfg.latency_samples)
                .map(|i| {
                    WriteOp::new(
                        storage_key("b", &format!("k{i}")),
                        Precondition::Any,
                        Some(raw_record(i, cfg.doc_bytes)),
                    )
                })
                .collect();
            for res in b.write_batch(&ops) {
                res.map_err(|e| e.to_string())?;
            }
            b.flush().map_err(|e| e.to_string())?;
        }
        let mut cfg_sled = sled_config(&dir);
        cfg_sled.owner_id = "bench-2".into();
        let mut samples = Vec::new();
        let mut base = Vec::new();
        {
            // The baseline reads the same backend directly: the bench opens
            // it itself and hands the engine a share.
            let backend = std::sync::Arc::new(SledBackend::open(&dir).map_err(|e| e.to_string())?);
            let mut cfg_shared = Config::backend(backend.clone()).owner_id(cfg_sled.owner_id.clone());
            cfg_shared.handle_signals = cfg_sled.handle_signals;
            cfg_shared.autosave_interval = cfg_sled.autosave_interval;
            cfg_shared.lease_ttl = cfg_sled.lease_ttl;
            cfg_shared.shutdown_deadline = cfg_sled.shutdown_deadline;
            let ds = Datastorer::start(cfg_shared).await.map_err(|e| e.to_string())?;
            let store = ds.store("b", spec(json!({}))).map_err(|e| e.to_string())?;
            for i in 0..cfg.latency_samples {
                let k = format!("k{i}");
                let started = Instant::now();
                let s =
                    store.open(k.as_str()).policy(datastorer::AcquirePolicy::Steal).await.map_err(|e| e.to_string())?;
                s.read(|d| d["i"].as_u64()).await.map_err(|e| e.to_string())?;
                samples.push(started.elapsed().as_secs_f64() * 1e3);
                let skey = storage_key("b", &k);
                let started = Instant::now();
                let got = backend.get(&skey).map_err(|e| e.to_string())?;
                base.push(started.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(got);
            }
            ds.shutdown().await;
        }
        p50.push(percentile(&mut samples, 0.5));
        p99.push(percentile(&mut samples, 0.99));
        b50.push(percentile(&mut base, 0.5));
        b99.push(percentile(&mut base, 0.99));
    }
    let m = |name: &str, ours, baseline| Measurement {
        name: name.into(),
        unit: "ms".into(),
        higher_is_better: false,
        ours,
        baseline_name: "raw sled get of the same record".into(),
        baseline,
        goal_ratio: None,
        notes: vec!["open = read + migrate + a durable lease write (one flush): the flush dominates".into()],
    };
    Ok(vec![m("7a. cold load (open + lease + read), p50", p50, b50), m("7b. cold load, p99", p99, b99)])
}

/// Writes results.json and results.svg.
fn write_outputs(out: &Path, cfg: &BenchConfig, results: &[Measurement]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let rows: Vec<Value> = results
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "unit": m.unit, "higher_is_better": m.higher_is_better,
                "ours": m.ours, "ours_median": median(&m.ours),
                "baseline_name": m.baseline_name, "baseline": m.baseline, "baseline_median": median(&m.baseline),
                "ratio": m.ratio(), "goal_ratio": m.goal_ratio, "verdict": m.verdict(), "notes": m.notes,
            })
        })
        .collect();
    let doc = json!({ "config": cfg, "results": rows });
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.svg"), svg(results)).map_err(|e| e.to_string())?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A bar per figure: ours relative to its baseline (1.0 = the baseline),
/// oriented so that longer is better, with the goal marked.
fn svg(results: &[Measurement]) -> String {
    let (w, row, left, scale_max) = (960.0, 46.0, 430.0, 2.0);
    let h = 60.0 + row * results.len() as f64;
    let x = |r: f64| left + (r.min(scale_max) / scale_max) * (w - left - 40.0);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n\
         <rect width='100%' height='100%' fill='white'/>\n\
         <text x='10' y='20' font-size='14' font-weight='bold'>datastorer vs baseline (same run): performance relative to the baseline, longer is better</text>\n\
         <line x1='{b}' y1='30' x2='{b}' y2='{bottom}' stroke='#555' stroke-dasharray='4'/>\n\
         <text x='{b}' y='{label}' text-anchor='middle'>baseline = 1.0</text>\n",
        b = x(1.0),
        bottom = h - 20.0,
        label = h - 6.0,
    );
    for (i, m) in results.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        let perf = if m.higher_is_better { m.ratio() } else { 1.0 / m.ratio() };
        let color = match m.verdict() {
            "GOAL MISSED" => "#d9534f",
            "goal met" => "#5cb85c",
            _ => "#5bc0de",
        };
        let goal_x = m.goal_ratio.map(|g| x(if m.higher_is_better { g } else { 1.0 / g }));
        // The figure's label goes past a goal tick it would otherwise cross.
        let tx = match goal_x {
            Some(gx) if gx > x(perf) - 2.0 && gx < x(perf) + 34.0 => gx + 4.0,
            _ => x(perf) + 4.0,
        };
        s.push_str(&format!(
            "<text x='10' y='{ty}'>{}</text>\n<rect x='{left}' y='{y}' width='{bw:.1}' height='22' fill='{color}'/>\n\
             <text x='{tx:.1}' y='{ty}'>{perf:.2}</text>\n",
            escape(&m.name.chars().take(62).collect::<String>()),
            ty = y + 15.0,
            bw = (x(perf) - left).max(1.0),
        ));
        if let Some(gx) = goal_x {
            s.push_str(&format!(
                "<line x1='{gx:.1}' y1='{y}' x2='{gx:.1}' y2='{y2}' stroke='black' stroke-width='2'/>\n",
                y2 = y + 22.0
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Runs the suite (or the benchmarks whose name contains `only`).
pub async fn run(cfg: BenchConfig, out: PathBuf, only: Option<String>) -> Result<Vec<Measurement>, String> {
    let scratch = tempdir_in(&out)?;
    let wanted = |tag: &str| only.as_deref().is_none_or(|o| tag.contains(o));
    let mut results = Vec::new();
    let mut add = |m: Measurement| {
        m.print();
        results.push(m);
    };
    println!("datastorer bench: {} repetitions; figures are medians, with min and max\n", cfg.repeat);
    if wanted("update") {
        add(bench_update_one_key(&cfg).await?);
        add(bench_update_many_keys(&cfg).await?);
    }
    if wanted("throughput") {
        add(bench_durable_throughput(&cfg, &scratch).await?);
    }
    if wanted("latency") {
        for m in bench_save_latency(&cfg, &scratch).await? {
            add(m);
        }
    }
    if wanted("shutdown") {
        add(bench_shutdown(&cfg, &scratch).await?);
    }
    if wanted("scale") {
        for m in super::bench_scale::bench_scale(&cfg).await? {
            add(m);
        }
    }
    if wanted("http") {
        for m in super::bench_http::bench_http(&cfg, &scratch).await? {
            add(m);
        }
    }
    if wanted("history") {
        for m in super::bench_history::bench_history(&cfg, &scratch).await? {
            add(m);
        }
    }
    if wanted("console") {
        for m in super::bench_console::bench_console(&cfg, &scratch).await? {
            add(m);
        }
    }
    if wanted("cold") {
        for m in bench_cold_load(&cfg, &scratch).await? {
            add(m);
        }
    }
    // Instruction counts only when asked for: they need valgrind and take minutes.
    if only.as_deref().is_some_and(|o| o.contains("instructions")) {
        for m in super::bench_instructions::bench_instructions(&cfg, &scratch).await? {
            add(m);
        }
    }
    // PostgreSQL only when asked for: it needs a server and takes minutes.
    if let Some(part) = only.as_deref().and_then(|o| o.strip_prefix("pg")) {
        results.extend(super::bench_pg::bench_pg(&cfg, part.trim_start_matches('-')).await?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    write_outputs(&out, &cfg, &results)?;
    println!("\nwrote {} and {}", out.join("results.json").display(), out.join("results.svg").display());
    Ok(results)
}

fn tempdir_in(out: &Path) -> Result<PathBuf, String> {
    let dir = out.join(format!("scratch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
