//! The `datastorer` command line: `serve`, and offline tools that open a
//! data directory directly (`inspect`, `export`, `import`, `check`). The
//! offline tools never create a data directory and never rewrite a record
//! they cannot decode.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::{Overrides, ServerConfig};
use crate::storage::sled_backend::SledBackend;
use crate::storage::{
    split_storage_key, storage_key, store_prefix, Backend, Precondition, Record, RecordHeader, WriteOp, WriteOutcome,
};

/// datastorer: per-key, session-locked JSON documents.
#[derive(Debug, Parser)]
#[command(name = "datastorer", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (defaults: 127.0.0.1:7070, sled in ./data, no authentication).
    Serve(ServeArgs),
    /// Print one record of an offline data directory, decoded.
    Inspect {
        #[command(flatten)]
        dir: DataDir,
        /// Store name.
        #[arg(long)]
        store: String,
        /// Key.
        #[arg(long)]
        key: String,
    },
    /// Write records as JSON lines (one object per record).
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// Only this store.
        #[arg(long)]
        store: Option<String>,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Read JSON lines (as written by export) into a data directory.
    Import {
        #[command(flatten)]
        dir: DataDir,
        /// Input file (default: standard input).
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Replace records that already exist (their epoch still grows).
        #[arg(long)]
        overwrite: bool,
    },
    /// Scan a data directory and report records that do not decode.
    Check {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Run the end-to-end benchmarks beside their baselines (build with --release).
    Bench {
        /// Small sizes, to check the suite runs (figures are not meaningful).
        #[arg(long)]
        quick: bool,
        /// Repetitions of each measurement (default 5, quick 2).
        #[arg(long)]
        repeat: Option<usize>,
        /// Only benchmarks whose tag contains this: update, throughput, latency, shutdown, scale, http, cold.
        #[arg(long)]
        only: Option<String>,
        /// Where results.json and results.svg go (scratch data too, removed after).
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Internal: one side of the memory benchmark, in a fresh process.
    #[command(hide = true)]
    BenchScaleChild {
        #[arg(long, value_enum)]
        side: super::bench::ScaleSide,
        #[arg(long, value_enum)]
        doc: super::bench::ScaleDoc,
        #[arg(long)]
        keys: usize,
    },
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// The sled data directory.
    #[arg(long, env = "DATASTORER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file (flags and environment variables override it).
    #[arg(long, env = "DATASTORER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7070; port 0 picks a free one).
    #[arg(long, env = "DATASTORER_LISTEN")]
    listen: Option<String>,
    /// sled data directory (default ./data).
    #[arg(long, env = "DATASTORER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Owner id in leases (default: one generated once and kept in the data directory).
    #[arg(long, env = "DATASTORER_OWNER_ID")]
    owner_id: Option<String>,
    /// Answer 404 for stores the config does not declare.
    #[arg(long, env = "DATASTORER_STRICT_STORES")]
    strict_stores: Option<bool>,
    /// Engine autosave interval, seconds (default 30).
    #[arg(long, env = "DATASTORER_AUTOSAVE_INTERVAL_SECS")]
    autosave_interval_secs: Option<u64>,
    /// Engine lease TTL between server processes, seconds (default 90).
    #[arg(long, env = "DATASTORER_LEASE_TTL_SECS")]
    lease_ttl_secs: Option<u64>,
    /// Client session lifetime without a request, seconds (default 60).
    #[arg(long, env = "DATASTORER_CLIENT_LEASE_TTL_SECS")]
    client_lease_ttl_secs: Option<u64>,
    /// Bound on graceful shutdown, seconds (default 25).
    #[arg(long, env = "DATASTORER_SHUTDOWN_DEADLINE_SECS")]
    shutdown_deadline_secs: Option<u64>,
    /// Longest wait a client may ask for when opening a held key, seconds (default 300).
    #[arg(long, env = "DATASTORER_MAX_WAIT_SECS")]
    max_wait_secs: Option<u64>,
    /// Largest request body, bytes (default 4 MiB).
    #[arg(long, env = "DATASTORER_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// HTTP worker threads (default: cores, at most 8).
    #[arg(long, env = "DATASTORER_WORKERS")]
    workers: Option<usize>,
    /// An API key as NAME:ROLE:SECRET (role: read, write, admin); repeatable.
    #[arg(long = "api-key", env = "DATASTORER_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
}

/// Entry point of the `datastorer` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Inspect { dir, store, key } => inspect(&dir.data_dir, &store, &key),
        Command::Export { dir, store, output } => export(&dir.data_dir, store.as_deref(), output.as_deref()),
        Command::Import { dir, input, overwrite } => import(&dir.data_dir, input.as_deref(), overwrite),
        Command::Check { dir } => check(&dir.data_dir),
        Command::Bench { quick, repeat, only, out } => bench(quick, repeat, only, out),
        Command::BenchScaleChild { side, doc, keys } => {
            actix_web::rt::System::new().block_on(super::bench::scale_child(side, doc, keys))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("datastorer: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let overrides = Overrides {
        config: args.config,
        listen: args.listen,
        data_dir: args.data_dir,
        owner_id: args.owner_id,
        strict_stores: args.strict_stores,
        autosave_interval_secs: args.autosave_interval_secs,
        lease_ttl_secs: args.lease_ttl_secs,
        client_lease_ttl_secs: args.client_lease_ttl_secs,
        shutdown_deadline_secs: args.shutdown_deadline_secs,
        max_wait_secs: args.max_wait_secs,
        max_body_bytes: args.max_body_bytes,
        workers: args.workers,
        api_keys: args.api_keys,
    };
    let config = ServerConfig::load(&overrides).map_err(|e| e.to_string())?;
    let system = actix_web::rt::System::new();
    let report = system.block_on(super::run(config))?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!(
            "shutdown incomplete: {} keys released, {} failed, {} timed out, queue drained: {}, flush error: {:?}",
            report.release.released,
            report.release.failed.len(),
            report.release.timed_out,
            report.queue_drained,
            report.flush_error
        ))
    }
}

fn bench(quick: bool, repeat: Option<usize>, only: Option<String>, out: PathBuf) -> Result<(), String> {
    let mut cfg = if quick { super::bench::BenchConfig::quick() } else { super::bench::BenchConfig::full() };
    if let Some(r) = repeat {
        if r == 0 {
            return Err("--repeat must be at least 1".into());
        }
        cfg.repeat = r;
    }
    if cfg!(debug_assertions) && !quick {
        eprintln!("warning: this is a debug build; run `cargo run --release -- bench` for meaningful figures");
    }
    let system = actix_web::rt::System::new();
    system.block_on(super::bench::run(cfg, out, only)).map(|_| ())
}

fn open_existing(dir: &Path) -> Result<SledBackend, String> {
    if !dir.is_dir() {
        return Err(format!("no data directory at {}", dir.display()));
    }
    SledBackend::open(dir).map_err(|e| {
        let hint = if e.message.contains("lock") { " (is a server running on it? stop it first)" } else { "" };
        format!("{}{hint}", e.message)
    })
}

/// Every (storage key, value) under `prefix`, page by page.
fn for_each_record(
    backend: &SledBackend,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = backend.scan_prefix(prefix, after.as_deref(), 1000).map_err(|e| e.to_string())?;
        let Some((last, _)) = page.last() else { return Ok(()) };
        after = Some(last.clone());
        for (k, v) in &page {
            f(k, v)?;
        }
    }
}

fn json_or_string(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn inspect(dir: &Path, store: &str, key: &str) -> Result<(), String> {
    let backend = open_existing(dir)?;
    let bytes = backend
        .get(&storage_key(store, key))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no record for key {key:?} in store {store:?}"))?;
    let rec =
        Record::decode(&bytes).map_err(|e| format!("record {store}/{key} is corrupt ({} bytes): {e}", bytes.len()))?;
    let out = json!({
        "store": store,
        "key": key,
        "epoch": rec.header.epoch,
        "revision": rec.header.revision,
        "data_version": rec.data_version,
        "data": json_or_string(&rec.data),
        "metadata": json_or_string(&rec.metadata),
        "user_ids": rec.user_ids,
        "lease": rec.lease.map(|l| json!({ "owner": l.owner, "expires_at_ms": l.expires_at_ms })),
        "created_at_ms": rec.created_at_ms,
        "updated_at_ms": rec.updated_at_ms,
        "size_bytes": bytes.len(),
    });
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}

/// One exported record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    store: String,
    key: String,
    #[serde(default)]
    data_version: u32,
    data: Value,
    #[serde(default = "empty_object")]
    metadata: Value,
    #[serde(default)]
    user_ids: Vec<String>,
    #[serde(default)]
    created_at_ms: u64,
    #[serde(default)]
    updated_at_ms: u64,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A progress bar on standard error, drawn only when it is a terminal.
struct Progress {
    what: &'static str,
    total: usize,
    done: usize,
    drawn: usize,
    enabled: bool,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Self {
        Self { what, total, done: 0, drawn: usize::MAX, enabled: std::io::stderr().is_terminal() && total > 0 }
    }
    fn tick(&mut self) {
        self.done += 1;
        if !self.enabled {
            return;
        }
        let filled = self.done * 40 / self.total.max(1);
        if filled != self.drawn || self.done == self.total {
            self.drawn = filled;
            eprint!(
                "\r{} [{}{}] {}/{}",
                self.what,
                "#".repeat(filled),
                ".".repeat(40 - filled.min(40)),
                self.done,
                self.total
            );
        }
    }
    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

fn export(dir: &Path, store: Option<&str>, output: Option<&Path>) -> Result<(), String> {
    let backend = open_existing(dir)?;
    let prefix = store.map(store_prefix).unwrap_or_else(|| b"d\0".to_vec());
    let mut total = 0;
    for_each_record(&backend, &prefix, |_, _| {
        total += 1;
        Ok(())
    })?;
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut progress = Progress::new("export", total);
    let (mut exported, mut corrupt) = (0usize, 0usize);
    for_each_record(&backend, &prefix, |k, v| {
        progress.tick();
        let (store, key) = split_storage_key(k).ok_or_else(|| format!("unexpected storage key {k:?}"))?;
        match Record::decode(v) {
            Ok(rec) => {
                let line = Line {
                    store,
                    key,
                    data_version: rec.data_version,
                    data: json_or_string(&rec.data),
                    metadata: json_or_string(&rec.metadata),
                    user_ids: rec.user_ids,
                    created_at_ms: rec.created_at_ms,
                    updated_at_ms: rec.updated_at_ms,
                };
                let text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
                writeln!(out, "{text}").map_err(|e| format!("write failed: {e}"))?;
                exported += 1;
            }
            Err(e) => {
                corrupt += 1;
                eprintln!("skipped corrupt record {store}/{key}: {e}");
            }
        }
        Ok(())
    })?;
    out.flush().map_err(|e| format!("write failed: {e}"))?;
    progress.finish();
    eprintln!("exported {exported} records ({corrupt} corrupt, skipped and left untouched)");
    if corrupt > 0 {
        return Err(format!("{corrupt} corrupt records were not exported (see `datastorer check`)"));
    }
    Ok(())
}

fn import(dir: &Path, input: Option<&Path>, overwrite: bool) -> Result<(), String> {
    let reader: Box<dyn BufRead> = match input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin().lock())),
    };
    // Validate everything before writing anything.
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (i, text) in reader.lines().enumerate() {
        let n = i + 1;
        let text = text.map_err(|e| format!("cannot read line {n}: {e}"))?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&text) {
            Ok(line) => {
                if let Err(e) = crate::store::validate_store_name(&line.store) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Err(e) = crate::store::validate_key(&line.key) {
                    problems.push(format!("line {n}: {e}"));
                } else {
                    lines.push((n, line));
                }
            }
            Err(e) => problems.push(format!("line {n}: {e}")),
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let backend = SledBackend::open(dir).map_err(|e| e.to_string())?;
    let mut current = Vec::with_capacity(lines.len());
    for (n, line) in &lines {
        let existing = backend.get(&storage_key(&line.store, &line.key)).map_err(|e| e.to_string())?;
        let header = match &existing {
            None => None,
            Some(bytes) => match RecordHeader::peek(bytes) {
                Some(h) if overwrite => Some(h),
                Some(_) => {
                    problems.push(format!("line {n}: {}/{} already exists (use --overwrite)", line.store, line.key));
                    None
                }
                None => {
                    problems
                        .push(format!("line {n}: {}/{} exists and is corrupt; not overwritten", line.store, line.key));
                    None
                }
            },
        };
        current.push((existing.is_some(), header));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        return Err(format!("{} problem(s); nothing was imported", problems.len()));
    }
    let mut progress = Progress::new("import", lines.len());
    for ((_, line), (_, header)) in lines.iter().zip(current) {
        let data = serde_json::to_vec(&line.data).map_err(|e| e.to_string())?;
        let metadata = serde_json::to_vec(&line.metadata).map_err(|e| e.to_string())?;
        let record = Record {
            // A higher epoch fences off any holder of the old record.
            header: RecordHeader {
                epoch: header.map_or(0, |h| h.epoch) + 1,
                revision: header.map_or(0, |h| h.revision) + 1,
            },
            data_version: line.data_version,
            data,
            metadata,
            user_ids: line.user_ids.clone(),
            lease: None,
            created_at_ms: line.created_at_ms,
            updated_at_ms: line.updated_at_ms,
        };
        let op = WriteOp {
            key: storage_key(&line.store, &line.key),
            precondition: header.map_or(Precondition::Absent, Precondition::Header),
            value: Some(record.encode()),
        };
        match backend.write_batch(std::slice::from_ref(&op)).pop() {
            Some(Ok(WriteOutcome::Applied)) => {}
            Some(Ok(WriteOutcome::Conflict { .. })) => {
                return Err(format!("{}/{} changed during the import", line.store, line.key))
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the backend returned no result".into()),
        }
        progress.tick();
    }
    backend.flush().map_err(|e| e.to_string())?;
    progress.finish();
    eprintln!("imported {} records", lines.len());
    Ok(())
}

fn check(dir: &Path) -> Result<(), String> {
    let backend = open_existing(dir)?;
    let (mut checked, mut bad) = (0usize, 0usize);
    for_each_record(&backend, b"d\0", |k, v| {
        checked += 1;
        let name = split_storage_key(k).map(|(s, k)| format!("{s}/{k}")).unwrap_or_else(|| format!("{k:?}"));
        let problem = match Record::decode(v) {
            Err(e) => Some(e.to_string()),
            Ok(rec) if serde_json::from_slice::<Value>(&rec.data).is_err() => Some("data is not JSON".into()),
            Ok(rec) if serde_json::from_slice::<Value>(&rec.metadata).is_err() => Some("metadata is not JSON".into()),
            Ok(_) => None,
        };
        if let Some(p) = problem {
            bad += 1;
            println!("corrupt {name}: {p}");
        }
        Ok(())
    })?;
    println!("checked {checked} records: {bad} corrupt");
    if bad > 0 {
        Err(format!("{bad} corrupt record(s); they were left untouched"))
    } else {
        Ok(())
    }
}
