//! `datastorer bench --only pg`: datastorer on PostgreSQL beside
//! hand-written SQL on the same database, in the same run.
//!
//! Baselines: (a) each save as one conditional single-row `UPDATE` in
//! autocommit from its own connection (the shape an application without
//! group commit has: bounded by the WAL flush rate); (b) one connection
//! running a hand-written batched `UPDATE … FROM unnest(…)` at the batch
//! size datastorer actually used (the best SQL for the same work: what the
//! engine costs on top). Beside each figure: WAL flushes per second and
//! rows per flush from `pg_stat_wal`.
//!
//! Must not: assert anything about speed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bench::{median, BenchConfig, Measurement};
use datastorer::storage::postgres::PgBackend;
use datastorer::storage::{Record, RecordHeader};
use datastorer::{AcquirePolicy, Config, Datastorer, PostgresConfig, Priority, Session};

fn url() -> String {
    std::env::var("DATASTORER_PG_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

async fn connect() -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL unreachable ({}): {e}", url()))?;
    actix::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A schema for one run, dropped at the end.
struct Scratch {
    schema: String,
    admin: tokio_postgres::Client,
}

impl Scratch {
    async fn new() -> Result<Scratch, String> {
        let admin = connect().await?;
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let schema = format!("ds_bench_{}_{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.map_err(|e| e.to_string())?;
        Ok(Scratch { schema, admin })
    }

    fn config(&self) -> PostgresConfig {
        PostgresConfig::new(url()).schema(self.schema.clone())
    }

    /// Brings the tables to the same state before each side of P2 times
    /// its writes: dead row versions reclaimed (`VACUUM`) and a checkpoint
    /// taken, so every side pays the full-page images of the pages it
    /// touches first (PostgreSQL writes a page whole to the WAL the first
    /// time it changes after a checkpoint). Without it each side ran on
    /// the table as the one before left it: the later a side ran, the more
    /// dead versions it stepped over, and a checkpoint falling inside one
    /// side's run charged it alone. A server that refuses `CHECKPOINT` (no
    /// `pg_checkpoint` role) skips that half and says so once.
    async fn settle_tables(&self) -> Result<(), String> {
        let s = &self.schema;
        self.admin
            .batch_execute(&format!("VACUUM \"{s}\".records, \"{s}\".versions"))
            .await
            .map_err(|e| format!("VACUUM before a timed section: {e}"))?;
        if let Err(e) = self.admin.batch_execute("CHECKPOINT").await {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| eprintln!("note: CHECKPOINT refused ({e}); P2's sides run without one"));
        }
        Ok(())
    }

    async fn drop_schema(self) {
        let _ = self.admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)).await;
    }

    /// WAL flushes (syncs) and records so far. Backends publish their WAL
    /// statistics at most once a second and when they exit, so read this
    /// before the engine connects and after its connections closed.
    async fn wal(&self) -> (f64, f64) {
        match self.admin.query_one("SELECT wal_sync::float8, wal_records::float8 FROM pg_stat_wal", &[]).await {
            Ok(r) => (r.try_get(0).unwrap_or(f64::NAN), r.try_get(1).unwrap_or(f64::NAN)),
            Err(_) => (f64::NAN, f64::NAN),
        }
    }
}

/// The WAL counters once the engine's connections have exited and
/// published their statistics: no datastorer connection left and the
/// counters steady for 300 ms (at most 5 s).
async fn settled_wal(scratch: &Scratch) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = scratch.wal().await;
    let mut steady_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let busy = scratch
            .admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'datastorer-%' AND datname = current_database()",
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.try_get::<_, i64>(0).ok())
            .unwrap_or(0);
        let now = scratch.wal().await;
        if now != last || busy > 0 {
            steady_since = Instant::now();
            last = now;
        } else if steady_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    last
}

fn engine(backend: Arc<PgBackend>, owner: &str) -> Config {
    let mut c = Config::backend(backend).owner_id(owner);
    c.handle_signals = false;
    c.autosave_interval = Duration::from_secs(3600);
    c.lease_ttl = Duration::from_secs(7200);
    c.shutdown_deadline = Duration::from_secs(600);
    c
}

fn doc(i: usize, n: u64, bytes: usize) -> Value {
    json!({ "i": i, "n": n, "pad": "x".repeat(bytes.saturating_sub(40)) })
}

fn seconds(cfg: &BenchConfig) -> Duration {
    if cfg.updates < 10_000 {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    }
}

/// A record of about `bytes` for the SQL baselines.
fn raw(i: usize, revision: u64, bytes: usize) -> Vec<u8> {
    Record {
        header: RecordHeader { epoch: 1, revision },
        data_version: 0,
        data: serde_json::to_vec(&doc(i, revision, bytes)).unwrap_or_default(),
        metadata: b"{}".to_vec(),
        user_ids: Vec::new(),
        lease: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
    .encode()
}

/// Runs `tasks` loops of `op` for `duration`; answers operations per
/// second (shared with the HTTP benchmark).
pub(super) async fn drive<F, Fut>(tasks: usize, duration: Duration, op: F) -> f64
where
    F: Fn(usize, Arc<AtomicBool>, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks).map(|i| actix::spawn(op(i, stop.clone(), count.clone()))).collect();
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let done = count.load(Ordering::SeqCst);
    let took = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.await;
    }
    done as f64 / took
}

/// Every session in a closed loop of update + durable save for
/// `duration`; answers saves per second.
async fn save_loops(sessions: Arc<Vec<Session<Value>>>, duration: Duration, bytes: usize) -> f64 {
    drive(sessions.len(), duration, move |i, stop, count| {
        let s = sessions[i].clone();
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let d = doc(i, n, bytes);
                if s.update(move |x| *x = d).await.is_err() || s.save(Priority::Normal).await.is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await
}

/// (a): each of `conns` connections updates its own rows, one conditional
/// single-row UPDATE per save, autocommit.
async fn single_row_updates(
    schema: &str,
    store: &str,
    conns: usize,
    rows: usize,
    duration: Duration,
    bytes: usize,
) -> f64 {
    let schema = schema.to_owned();
    let store = store.to_owned();
    drive(conns, duration, move |c, stop, count| {
        let (schema, store) = (schema.clone(), store.clone());
        async move {
            let Ok(client) = connect().await else { return };
            let sql = format!(
                "UPDATE \"{schema}\".records SET value = $3, revision = $4, updated_at = now() \
                 WHERE store = $1 AND key = $2 AND epoch = 1 AND revision = $5"
            );
            let Ok(st) = client.prepare(&sql).await else { return };
            let mine: Vec<usize> = (c..rows).step_by(conns).collect();
            let mut revs: Vec<i64> = vec![0; mine.len()];
            // Read current revisions once.
            for (j, &i) in mine.iter().enumerate() {
                let q = format!("SELECT revision FROM \"{schema}\".records WHERE store = $1 AND key = $2");
                if let Ok(r) = client.query_one(&q, &[&store, &format!("k{i}")]).await {
                    revs[j] = r.try_get(0).unwrap_or(0);
                }
            }
            let mut j = 0;
            while !stop.load(Ordering::SeqCst) && !mine.is_empty() {
                let i = mine[j];
                let next = revs[j] + 1;
                let value = raw(i, next as u64, bytes);
                match client.execute(&st, &[&store, &format!("k{i}"), &value, &next, &revs[j]]).await {
                    Ok(1) => {
                        revs[j] = next;
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return,
                }
                j = (j + 1) % mine.len();
            }
        }
    })
    .await
}

/// (b): one connection, batched `UPDATE … FROM unnest(…)` of `batch` rows
/// per statement; answers rows per second.
async fn batched_updates(
    schema: &str,
    store: &str,
    rows: usize,
    batch: usize,
    duration: Duration,
    bytes: usize,
    versions: bool,
) -> Result<f64, String> {
    let client = connect().await?;
    let update = format!(
        "UPDATE \"{schema}\".records r SET value = u.value, revision = u.rev, updated_at = now()
           FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int8[]) AS u(key, exp_rev, value, rev)
          WHERE r.store = $5 AND r.key = u.key AND r.epoch = 1 AND r.revision = u.exp_rev"
    );
    let sql = if versions { keeping_versions(schema, &update) } else { update };
    let st = client.prepare(&sql).await.map_err(|e| e.to_string())?;
    let q = format!("SELECT key, revision FROM \"{schema}\".records WHERE store = $1");
    let mut revs = std::collections::HashMap::new();
    for r in client.query(&q, &[&store]).await.map_err(|e| e.to_string())? {
        let k: String = r.try_get(0).map_err(|e| e.to_string())?;
        let v: i64 = r.try_get(1).map_err(|e| e.to_string())?;
        revs.insert(k, v);
    }
    let batch = batch.clamp(1, rows.max(1));
    let started = Instant::now();
    let mut done = 0usize;
    let mut offset = 0usize;
    while started.elapsed() < duration {
        let idx: Vec<usize> = (0..batch).map(|j| (offset + j) % rows).collect();
        offset = (offset + batch) % rows;
        let mut keys: Vec<String> = idx.iter().map(|i| format!("k{i}")).collect();
        keys.sort();
        keys.dedup();
        let exp: Vec<i64> = keys.iter().map(|k| revs.get(k).copied().unwrap_or(0)).collect();
        let next: Vec<i64> = exp.iter().map(|r| r + 1).collect();
        let values: Vec<Vec<u8>> =
            keys.iter().zip(&next).map(|(k, r)| raw(k[1..].parse().unwrap_or(0), *r as u64, bytes)).collect();
        let n = client.execute(&st, &[&keys, &exp, &values, &next, &store]).await.map_err(|e| e.to_string())?;
        for (k, r) in keys.iter().zip(next) {
            revs.insert(k.clone(), r);
        }
        done += n as usize;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// (b+v): a hand-written `update` that also keeps each row's new value as
/// a version, in the same statement, the way the engine's stores do by
/// default: the value is sent once and taken back from the updated row.
fn keeping_versions(schema: &str, update: &str) -> String {
    format!(
        "WITH upd AS ({update} RETURNING r.store, r.key, r.epoch, r.revision, r.value)
         INSERT INTO \"{schema}\".versions (store, key, epoch, revision, saved_ms, value)
         SELECT store, key, epoch, revision, 0, value FROM upd ON CONFLICT DO NOTHING"
    )
}

/// (b) for a fixed amount of work, in seconds: `rows` records of `bytes` updated
/// `batch` rows a statement (keeping a version of each with `versions`),
/// the statements dealt round-robin over `connections` connections at once.
async fn batched_on(
    schema: &str,
    store: &str,
    rows: usize,
    batch: usize,
    bytes: usize,
    versions: bool,
    connections: usize,
) -> Result<f64, String> {
    let update = format!(
        "UPDATE \"{schema}\".records r SET value = u.value, revision = r.revision + 1, updated_at = now()
           FROM unnest($1::text[], $2::bytea[]) AS u(key, value)
          WHERE r.store = $3 AND r.key = u.key"
    );
    let sql = if versions { keeping_versions(schema, &update) } else { update };
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let client = connect().await?;
        let st = client.prepare(&sql).await.map_err(|e| e.to_string())?;
        clients.push((client, st));
    }
    let mut keys: Vec<String> = (0..rows).map(|i| format!("k{i}")).collect();
    keys.sort();
    let values: Vec<Vec<u8>> = keys.iter().map(|k| raw(k[1..].parse().unwrap_or(0), 9, bytes)).collect();
    // One statement's keys and values.
    type Chunk = (Vec<String>, Vec<Vec<u8>>);
    let chunks: Vec<Chunk> =
        keys.chunks(batch).zip(values.chunks(batch)).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    let count = clients.len();
    let mut dealt: Vec<Vec<Chunk>> = (0..count).map(|_| Vec::new()).collect();
    for (i, chunk) in chunks.into_iter().enumerate() {
        dealt[i % count].push(chunk);
    }
    let store = store.to_owned();
    let started = Instant::now();
    let runs: Vec<_> = clients
        .into_iter()
        .zip(dealt)
        .map(|((client, st), mine)| {
            let store = store.clone();
            actix::spawn(async move {
                for (ks, vs) in mine {
                    client.execute(&st, &[&ks, &vs, &store]).await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for run in runs {
        run.await.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn open_all(store: &datastorer::Store<Value>, n: usize) -> Result<Vec<Session<Value>>, String> {
    let mut out = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n {
        let s = store.clone();
        pending.push(actix::spawn(async move { s.open(format!("k{i}")).policy(AcquirePolicy::Fail).await }));
        if pending.len() >= 1024 {
            for p in pending.drain(..) {
                out.push(p.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?);
            }
        }
    }
    for p in pending {
        out.push(p.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// P1 and P7: durable saves/s at `c` sessions, beside (a) and (b).
///
/// With versions on (the default), also beside (b+v): the hand-written
/// batch keeping a version of each row as the engine does, which is the
/// same work; (b) alone is the figure as the issue defined it.
async fn saves_at(cfg: &BenchConfig, c: usize, notify_saves: bool) -> Result<Vec<Measurement>, String> {
    let duration = seconds(cfg);
    let versions = super::bench::versions_on();
    let (mut ours, mut a, mut b, mut bv, mut notes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut batch_sizes = Vec::new();
    for r in 0..cfg.repeat {
        let scratch = Scratch::new().await?;
        let mut pgc = scratch.config();
        pgc.notify_saves = notify_saves;
        let (w0, rows0) = scratch.wal().await;
        let backend = Arc::new(PgBackend::connect(pgc).map_err(|e| e.message)?);
        let ds = Datastorer::start(engine(backend.clone(), &format!("bench-{r}"))).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", super::bench::spec(json!({}))).map_err(|e| e.to_string())?;
        let sessions = Arc::new(open_all(&store, c).await?);
        let before = ds.queue_stats().await;
        let bytes = cfg.doc_bytes;
        let started = Instant::now();
        let rate = save_loops(sessions.clone(), duration, bytes).await;
        let took = started.elapsed().as_secs_f64();
        let after = ds.queue_stats().await;
        let batches = (after.batches - before.batches).max(1);
        let per_batch = ((after.writes - before.writes) as f64 / batches as f64).max(1.0);
        batch_sizes.push(per_batch);
        ours.push(rate);
        ds.shutdown().await;
        drop(sessions);
        drop(ds);
        drop(backend);
        let (w1, rows1) = settled_wal(&scratch).await;
        notes.push(format!(
            "run {r}: {:.0} WAL flushes/s, {:.1} WAL records per flush, {per_batch:.1} saves per batch",
            (w1 - w0) / took,
            (rows1 - rows0) / (w1 - w0).max(1.0)
        ));
        // The baselines on the same rows, right after.
        a.push(single_row_updates(&scratch.schema, "b", c.min(64), c, duration, bytes).await);
        let batch = per_batch.round() as usize;
        b.push(batched_updates(&scratch.schema, "b", c, batch, duration, bytes, false).await?);
        if versions {
            bv.push(batched_updates(&scratch.schema, "b", c, batch, duration, bytes, true).await?);
        }
        scratch.drop_schema().await;
    }
    if c > 64 {
        notes.push("baseline (a) uses 64 connections (each updating its share of the rows): PostgreSQL's default max_connections is 100".into());
    }
    notes.push(format!("baseline (b) batch size = datastorer's median saves per batch: {:.1}", median(&batch_sizes)));
    let name = |what: &str| {
        format!(
            "P1. durable saves/s, {c} sessions, {} B documents{}{what}",
            cfg.doc_bytes,
            if notify_saves { "" } else { ", notify_saves off" }
        )
    };
    let vs_a = Measurement {
        name: name(", vs single-row UPDATEs"),
        unit: "saves/s".into(),
        higher_is_better: true,
        ours: ours.clone(),
        baseline_name: format!("(a) conditional single-row UPDATE, autocommit, {} connections", c.min(64)),
        baseline: a,
        goal_ratio: (c == 64).then_some(5.0),
        notes: notes.clone(),
    };
    let vs_b = Measurement {
        name: name(", vs hand-written batched UPDATE"),
        unit: "saves/s".into(),
        higher_is_better: true,
        ours: ours.clone(),
        baseline_name: "(b) UPDATE … FROM unnest(…) at datastorer's batch size, 1 connection".into(),
        baseline: b,
        goal_ratio: (c == 64).then_some(0.95),
        notes: notes.clone(),
    };
    let mut out = vec![vs_a, vs_b];
    if versions {
        out.push(Measurement {
            name: name(", vs hand-written batched UPDATE keeping versions"),
            unit: "saves/s".into(),
            higher_is_better: true,
            ours,
            baseline_name: "(b+v) (b) and an INSERT of each updated row into versions, one statement".into(),
            baseline: bv,
            goal_ratio: (c == 64).then_some(0.95),
            notes,
        });
    }
    Ok(out)
}

/// Context for P2: the same records written straight through the backend
/// (pre-encoded, as the queue would batch them), to split the engine's cost
/// from the statement's. Seconds.
async fn backend_only(backend: &Arc<PgBackend>, n: usize, bytes: usize, keep_versions: bool) -> Result<f64, String> {
    use datastorer::storage::{storage_key, Backend, Precondition, WriteOp, WriteOutcome};
    let b = backend.clone();
    tokio::task::spawn_blocking(move || {
        let keys: Vec<Vec<u8>> = (0..n).map(|i| storage_key("b", &format!("k{i}"))).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut ops = Vec::with_capacity(n);
        for (i, (k, v)) in keys.iter().zip(b.get_many(&refs)).enumerate() {
            let current = v.map_err(|e| e.to_string())?.ok_or("a bench record is missing")?;
            let header = RecordHeader::peek(&current).ok_or("a bench record does not decode")?;
            let next = RecordHeader { epoch: header.epoch, revision: header.revision + 1 };
            let mut rec = Record::decode(&current).map_err(|e| e.to_string())?;
            rec.header = next;
            rec.data = serde_json::to_vec(&doc(i, 3, bytes)).map_err(|e| e.to_string())?;
            let mut op = WriteOp::new(k.clone(), Precondition::Header(header), Some(rec.encode()));
            if keep_versions {
                op.version = op.value.clone();
            }
            ops.push(op);
        }
        let started = Instant::now();
        for chunk in ops.chunks(4096) {
            for r in b.write_batch(chunk) {
                if r.map_err(|e| e.to_string())? != WriteOutcome::Applied {
                    return Err("a bench write conflicted".to_owned());
                }
            }
        }
        Ok(started.elapsed().as_secs_f64())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Autosaves every dirty key of `ds` and waits until `n` more writes have
/// been through the queue. The tick reaches the key actors by message, so
/// the queue being empty once is not enough.
async fn save_all_dirty(ds: &Datastorer, n: usize) {
    let before = ds.queue_stats().await;
    ds.autosave_now().await;
    loop {
        ds.wait_for_empty_queue().await;
        if ds.queue_stats().await.writes - before.writes >= n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// P2: a save burst of `n` dirty keys (autosave) or a shutdown of `n`,
/// beside (b) at 1,024 rows per statement and, with versions on, beside
/// (b+v) keeping a version of each row as the engine does.
async fn burst(cfg: &BenchConfig, n: usize, shutdown: bool) -> Result<Vec<Measurement>, String> {
    let versions = super::bench::versions_on();
    let (mut ours, mut base, mut base_v, mut notes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..cfg.repeat {
        let scratch = Scratch::new().await?;
        let backend = Arc::new(PgBackend::connect(scratch.config()).map_err(|e| e.message)?);
        let ds = Datastorer::start(engine(backend.clone(), &format!("bench-{r}"))).await.map_err(|e| e.to_string())?;
        let store = ds.store("b", super::bench::spec(json!({}))).map_err(|e| e.to_string())?;
        let sessions = open_all(&store, n).await?;
        // The rows at their full size first, as after any earlier save: an
        // open creates each row from the (empty) template, so without this
        // the timed burst alone would grow every row and extend the table,
        // work no baseline repeats (they run after it, on full-size rows).
        for (i, s) in sessions.iter().enumerate() {
            let d = doc(i, 1, cfg.doc_bytes);
            s.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
        }
        save_all_dirty(&ds, n).await;
        for (i, s) in sessions.iter().enumerate() {
            let d = doc(i, 2, cfg.doc_bytes);
            s.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
        }
        scratch.settle_tables().await?;
        let before = ds.queue_stats().await;
        let started = Instant::now();
        if shutdown {
            let report = ds.shutdown().await;
            if !report.is_clean() {
                return Err(format!("shutdown was not clean: {report:?}"));
            }
        } else {
            save_all_dirty(&ds, n).await;
        }
        ours.push(started.elapsed().as_secs_f64());
        let after = ds.queue_stats().await;
        notes.push(format!("run {r}: {} batches", after.batches - before.batches));
        if !shutdown {
            ds.shutdown().await;
        }
        drop(sessions);
        drop(ds);
        scratch.settle_tables().await?;
        let raw = backend_only(&backend, n, cfg.doc_bytes, versions).await?;
        notes.push(format!(
            "run {r}: the backend alone (PgBackend::write_batch of the same records{}, pre-encoded, 4,096 per batch): {raw:.3} s",
            if versions { " and their versions" } else { "" }
        ));
        drop(backend);
        scratch.settle_tables().await?;
        base.push(batched_on(&scratch.schema, "b", n, 1024, cfg.doc_bytes, false, 1).await?);
        if versions {
            scratch.settle_tables().await?;
            base_v.push(batched_on(&scratch.schema, "b", n, 1024, cfg.doc_bytes, true, 1).await?);
        }
        // The engine writes on `writer_connections` (2) at once; the
        // hand-written batch given the same: context for the ratio.
        let writers = scratch.config().writer_connections;
        scratch.settle_tables().await?;
        let wide = batched_on(&scratch.schema, "b", n, 1024, cfg.doc_bytes, versions, writers).await?;
        notes.push(format!(
            "run {r}: (b{}) on {writers} connections at once, statements dealt round-robin: {wide:.3} s",
            if versions { "+v" } else { "" }
        ));
        scratch.drop_schema().await;
    }
    let name = if shutdown {
        format!("P2b. shutdown: save and release {n} dirty keys")
    } else {
        format!("P2a. save burst: autosave of {n} dirty keys")
    };
    let mut out = vec![Measurement {
        name: name.clone(),
        unit: "s".into(),
        higher_is_better: false,
        ours: ours.clone(),
        baseline_name: "(b) UPDATE … FROM unnest(…) of the same rows, 1,024 per statement".into(),
        baseline: base,
        goal_ratio: Some(1.2),
        notes: notes.clone(),
    }];
    if versions {
        out.push(Measurement {
            name: format!("{name}, vs the batch keeping versions"),
            unit: "s".into(),
            higher_is_better: false,
            ours,
            baseline_name: "(b+v) (b) and an INSERT of each updated row into versions, one statement".into(),
            baseline: base_v,
            goal_ratio: Some(1.2),
            notes,
        });
    }
    Ok(out)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A session's save latency: p50 and p99 of `samples` saves, in ms.
async fn session_latency(
    scratch: &Scratch,
    cfg: &BenchConfig,
    owner: &str,
    fast_path: bool,
) -> Result<(f64, f64), String> {
    let mut pgc = scratch.config();
    pgc.single_op_fast_path = fast_path;
    let backend = Arc::new(PgBackend::connect(pgc).map_err(|e| e.message)?);
    let ds = Datastorer::start(engine(backend, owner)).await.map_err(|e| e.to_string())?;
    let store = ds.store("b", super::bench::spec(json!({}))).map_err(|e| e.to_string())?;
    let s = store.open("k0").await.map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    for i in 0..cfg.latency_samples {
        let d = doc(0, i as u64, cfg.doc_bytes);
        s.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
        let t = Instant::now();
        s.save(Priority::Normal).await.map_err(|e| e.to_string())?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ds.shutdown().await;
    Ok((percentile(&mut samples, 0.5), percentile(&mut samples, 0.99)))
}

/// P4: one session's save latency, beside (a) at one connection; and the
/// same without the single-row fast path, to show what it is worth.
async fn latency(cfg: &BenchConfig) -> Result<Vec<Measurement>, String> {
    let (mut p50, mut p99, mut slow50, mut b50, mut b99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..cfg.repeat {
        let scratch = Scratch::new().await?;
        let (a50, a99) = session_latency(&scratch, cfg, &format!("fast-{r}"), true).await?;
        let (s50, _) = session_latency(&scratch, cfg, &format!("slow-{r}"), false).await?;
        p50.push(a50);
        p99.push(a99);
        slow50.push(s50);
        let client = connect().await?;
        let sql = format!(
            "UPDATE \"{}\".records SET value = $2, revision = revision + 1, updated_at = now() WHERE store = 'b' AND key = $1",
            scratch.schema
        );
        let st = client.prepare(&sql).await.map_err(|e| e.to_string())?;
        let mut base = Vec::new();
        for i in 0..cfg.latency_samples {
            let v = raw(0, i as u64, cfg.doc_bytes);
            let t = Instant::now();
            client.execute(&st, &[&"k0", &v]).await.map_err(|e| e.to_string())?;
            base.push(t.elapsed().as_secs_f64() * 1e3);
        }
        b50.push(percentile(&mut base, 0.5));
        b99.push(percentile(&mut base, 0.99));
        scratch.drop_schema().await;
    }
    let m = |name: &str, ours, baseline: &Vec<f64>, goal| Measurement {
        name: name.into(),
        unit: "ms".into(),
        higher_is_better: false,
        ours,
        baseline_name: "(a) one single-row UPDATE, autocommit, one connection".into(),
        baseline: baseline.clone(),
        goal_ratio: goal,
        notes: vec![],
    };
    Ok(vec![
        m("P4a. single save latency p50", p50, &b50, Some(1.5)),
        m("P4b. single save latency p99", p99, &b99, None),
        m("P4c. single save latency p50, without the single-row fast path", slow50, &b50, None),
    ])
}

/// P6: hand-off between two processes' backends (`RequestRelease`), beside one save round trip.
async fn handoff(cfg: &BenchConfig) -> Result<Vec<Measurement>, String> {
    let (mut p50, mut p99, mut b50, mut b99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let rounds = (cfg.latency_samples / 3).max(10);
    for r in 0..cfg.repeat {
        let scratch = Scratch::new().await?;
        let ba = Arc::new(PgBackend::connect(scratch.config()).map_err(|e| e.message)?);
        let bb = Arc::new(PgBackend::connect(scratch.config()).map_err(|e| e.message)?);
        let a = Datastorer::start(engine(ba, &format!("a-{r}"))).await.map_err(|e| e.to_string())?;
        let b = Datastorer::start(engine(bb, &format!("b-{r}"))).await.map_err(|e| e.to_string())?;
        let (sa, sb) = (
            a.store("b", super::bench::spec(json!({}))).map_err(|e| e.to_string())?,
            b.store("b", super::bench::spec(json!({}))).map_err(|e| e.to_string())?,
        );
        let mut holder = sa.open("h").await.map_err(|e| e.to_string())?;
        let mut samples = Vec::new();
        let mut saves = Vec::new();
        let policy = AcquirePolicy::RequestRelease { timeout: Duration::from_secs(30) };
        for i in 0..rounds {
            let d = doc(0, 2 * i as u64, cfg.doc_bytes);
            holder.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            holder.save(Priority::Normal).await.map_err(|e| e.to_string())?;
            saves.push(t.elapsed().as_secs_f64() * 1e3);
            let d = doc(0, 2 * i as u64 + 1, cfg.doc_bytes);
            holder.update(move |x| *x = d).await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            let to = if i % 2 == 0 { &sb } else { &sa };
            let next = to.open("h").policy(policy).await.map_err(|e| e.to_string())?;
            samples.push(t.elapsed().as_secs_f64() * 1e3);
            holder = next;
        }
        p50.push(percentile(&mut samples, 0.5));
        p99.push(percentile(&mut samples, 0.99));
        b50.push(percentile(&mut saves, 0.5));
        b99.push(percentile(&mut saves, 0.99));
        drop(holder);
        a.shutdown().await;
        b.shutdown().await;
        scratch.drop_schema().await;
    }
    let m = |name: &str, ours, baseline, goal| Measurement {
        name: name.into(),
        unit: "ms".into(),
        higher_is_better: false,
        ours,
        baseline_name: "one durable save of the same document".into(),
        baseline,
        goal_ratio: goal,
        notes: vec!["goal: hand-off p50 under 10 ms (absolute)".into()],
    };
    Ok(vec![
        m("P6a. hand-off across processes (RequestRelease), p50", p50, b50, None),
        m("P6b. hand-off across processes (RequestRelease), p99", p99, b99, None),
    ])
}

/// `sessions` closed-loop sessions of update + durable save in `store` for
/// `duration`; prints `saves_per_sec N` once done (one process of P3).
pub async fn child(schema: &str, store: &str, sessions: usize, duration: Duration, bytes: usize) -> Result<(), String> {
    let backend =
        Arc::new(PgBackend::connect(PostgresConfig::new(url()).schema(schema.to_owned())).map_err(|e| e.message)?);
    let ds = Datastorer::start(engine(backend, &format!("child-{store}"))).await.map_err(|e| e.to_string())?;
    let st = ds.store(store, super::bench::spec(json!({}))).map_err(|e| e.to_string())?;
    let all = Arc::new(open_all(&st, sessions).await?);
    // Start together: wait for the parent's go on standard input.
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let rate = save_loops(all, duration, bytes).await;
    ds.shutdown().await;
    println!("saves_per_sec {rate}");
    Ok(())
}

/// P3: 1, 2 and 4 processes of 64 sessions on disjoint keys, beside (b)
/// from as many connections at once.
async fn processes(cfg: &BenchConfig) -> Result<Vec<Measurement>, String> {
    use std::io::{BufRead, Write};
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let duration = seconds(cfg);
    let mut out = Vec::new();
    for n in [1usize, 2, 4] {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..cfg.repeat {
            let scratch = Scratch::new().await?;
            // The schema exists before the children race to create it.
            drop(PgBackend::connect(scratch.config()).map_err(|e| e.message)?);
            let mut children = Vec::new();
            for j in 0..n {
                let mut child = std::process::Command::new(&exe)
                    .args(["bench-pg-child", "--schema", &scratch.schema, "--store", &format!("p{j}")])
                    .args(["--sessions", "64", "--millis", &duration.as_millis().to_string()])
                    .args(["--doc-bytes", &cfg.doc_bytes.to_string()])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| e.to_string())?;
                let mut reader = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
                let mut line = String::new();
                reader.read_line(&mut line).map_err(|e| e.to_string())?;
                if line.trim() != "ready" {
                    return Err(format!("bench child did not start: {line:?}"));
                }
                children.push((child, reader));
            }
            for (c, _) in &mut children {
                let _ = c.stdin.as_mut().map(|i| i.write_all(b"go\n"));
            }
            let mut total = 0.0;
            for (mut c, mut reader) in children {
                let mut line = String::new();
                while reader.read_line(&mut line).map_err(|e| e.to_string())? > 0 {
                    if let Some(v) = line.trim().strip_prefix("saves_per_sec ") {
                        total += v.parse::<f64>().map_err(|e| e.to_string())?;
                    }
                    line.clear();
                }
                let _ = c.wait();
            }
            ours.push(total);
            // (b): as many connections at once, each on its own store's rows.
            let tasks: Vec<_> = (0..n)
                .map(|j| {
                    let schema = scratch.schema.clone();
                    let bytes = cfg.doc_bytes;
                    actix::spawn(async move {
                        batched_updates(&schema, &format!("p{j}"), 64, 22, duration, bytes, false).await
                    })
                })
                .collect();
            let mut sum = 0.0;
            for t in tasks {
                sum += t.await.map_err(|e| e.to_string())??;
            }
            base.push(sum);
            scratch.drop_schema().await;
        }
        let m = Measurement {
            name: format!("P3. {n} process(es) × 64 sessions on disjoint keys, aggregate durable saves/s"),
            unit: "saves/s".into(),
            higher_is_better: true,
            ours,
            baseline_name: format!("(b) batched UPDATE of 22 rows, {n} connection(s) at once"),
            baseline: base,
            goal_ratio: Some(0.8),
            notes: vec![],
        };
        m.print();
        out.push(m);
    }
    Ok(out)
}

/// The PostgreSQL figures; `part` ("" for all, or saves, notify, burst,
/// latency, handoff, processes) picks some.
pub async fn bench_pg(cfg: &BenchConfig, part: &str) -> Result<Vec<Measurement>, String> {
    let wanted = |p: &str| part.is_empty() || part == p;
    let mut out = Vec::new();
    let mut add = |m: Measurement| {
        m.print();
        out.push(m);
    };
    if wanted("saves") {
        for c in [1usize, 16, 64, 256] {
            saves_at(cfg, c, true).await?.into_iter().for_each(&mut add);
        }
    }
    if wanted("notify") {
        if let Some(quiet) = saves_at(cfg, 64, false).await?.into_iter().next() {
            add(quiet);
        }
    }
    if wanted("burst") {
        burst(cfg, cfg.keys, false).await?.into_iter().for_each(&mut add);
        burst(cfg, cfg.shutdown_keys, true).await?.into_iter().for_each(&mut add);
    }
    if wanted("latency") {
        latency(cfg).await?.into_iter().for_each(&mut add);
    }
    if wanted("handoff") {
        handoff(cfg).await?.into_iter().for_each(&mut add);
    }
    if wanted("fleet") {
        let scratch = Scratch::new().await?;
        let figures = super::bench_http::bench_fleet(cfg, &url(), &scratch.schema).await;
        scratch.drop_schema().await;
        figures?.into_iter().for_each(&mut add);
        let scratch = Scratch::new().await?;
        let schema = scratch.schema.clone();
        let (duration, bytes) = (seconds(cfg), cfg.doc_bytes);
        let batched = move |n: usize| {
            let schema = schema.clone();
            let run: std::pin::Pin<Box<dyn std::future::Future<Output = Result<f64, String>>>> = Box::pin(async move {
                let tasks: Vec<_> = (0..n)
                    .map(|j| {
                        let (schema, store) = (schema.clone(), format!("b{n}-{j}"));
                        actix::spawn(
                            async move { batched_updates(&schema, &store, 64, 22, duration, bytes, false).await },
                        )
                    })
                    .collect();
                let mut sum = 0.0;
                for t in tasks {
                    sum += t.await.map_err(|e| e.to_string())??;
                }
                Ok(sum)
            });
            run
        };
        let figures = super::bench_http::bench_fleet_scaling(cfg, &url(), &scratch.schema, batched).await;
        scratch.drop_schema().await;
        figures?.into_iter().for_each(&mut add);
    }
    if wanted("processes") {
        // Printed as each figure completes.
        out.extend(processes(cfg).await?);
    }
    Ok(out)
}
