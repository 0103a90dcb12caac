//! The `datastorer` command line: `serve`, and tools that open the storage
//! directly (`inspect`, `export`, `import`, `check`, `copy-sled-to-postgres`):
//! a stopped server's sled directory, or PostgreSQL while servers run. The
//! tools never create a data directory except to import into it, and never
//! rewrite a record they cannot decode.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::{ServerConfig, Settings};
use datastorer::storage::postgres::PgBackend;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{
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
    Serve(Box<Settings>),
    /// Print one record, decoded (a stopped sled directory, or PostgreSQL online).
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
    /// Read JSON lines (as written by export) into a data directory or database.
    Import {
        #[command(flatten)]
        dir: DataDir,
        /// Input file (default: standard input).
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Replace records that already exist (their epoch still grows).
        #[arg(long)]
        overwrite: bool,
        /// Replace records even while a live lease holds them (the holder is
        /// fenced off and loses its unsaved changes).
        #[arg(long)]
        force: bool,
        /// The server's config file: each record's data_version is checked
        /// against its store's migrations (a record newer than them could
        /// never be opened).
        #[arg(long, env = "DATASTORER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Scan every record and report those that do not decode.
    Check {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Copy every record of a (stopped) sled directory into PostgreSQL byte
    /// for byte: epochs, revisions, leases and corrupt values as they are.
    CopySledToPostgres {
        /// The sled data directory to copy from.
        #[arg(long)]
        data_dir: PathBuf,
        /// The PostgreSQL to copy into.
        #[arg(long, env = "DATASTORER_DATABASE_URL")]
        database_url: String,
        /// Its schema (default datastorer).
        #[arg(long, env = "DATASTORER_POSTGRES_SCHEMA")]
        postgres_schema: Option<String>,
        /// Replace records that already exist in PostgreSQL with different bytes.
        #[arg(long)]
        overwrite: bool,
    },
}

/// Where records live, for the server and the tools alike.
#[derive(Debug, clap::Args)]
struct DataDir {
    /// sled data directory (default ./data; not with --database-url; tools need the server stopped).
    #[arg(long, env = "DATASTORER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL shared by several processes, e.g. postgres://user@127.0.0.1/db (instead of sled).
    #[arg(long, env = "DATASTORER_DATABASE_URL")]
    database_url: Option<String>,
    /// PostgreSQL schema for datastorer's tables (default datastorer).
    #[arg(long, env = "DATASTORER_POSTGRES_SCHEMA")]
    postgres_schema: Option<String>,
}

/// The backend an offline tool works on.
enum Opened {
    Sled(Box<SledBackend>),
    Postgres(Box<PgBackend>),
}

impl Opened {
    fn backend(&self) -> &dyn Backend {
        match self {
            Opened::Sled(b) => &**b,
            Opened::Postgres(b) => &**b,
        }
    }

    /// Every (storage key, value) under `prefix`, in key order; on
    /// PostgreSQL all from one snapshot.
    fn for_each_record(&self, prefix: &[u8], f: impl FnMut(&[u8], &[u8]) -> Result<(), String>) -> Result<(), String> {
        match self {
            Opened::Sled(b) => for_each_record(b, prefix, f),
            Opened::Postgres(b) => b.scan_snapshot(prefix, f),
        }
    }

    /// Now, by the clock leases are written in.
    fn now_ms(&self) -> u64 {
        match self.backend().clock() {
            Some(c) => c.now_ms(),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

fn postgres_config(url: &str, schema: Option<&str>) -> datastorer::PostgresConfig {
    let mut pg = datastorer::PostgresConfig::new(url);
    if let Some(s) = schema {
        pg.schema = s.to_owned();
    }
    pg
}

impl DataDir {
    /// Opens what the flags name; `create` makes a missing sled directory.
    fn open(&self, create: bool) -> Result<Opened, String> {
        match (&self.database_url, &self.data_dir) {
            (Some(_), Some(dir)) => {
                Err(format!("--data-dir {} and --database-url name two places; give one of them", dir.display()))
            }
            (Some(url), None) => PgBackend::connect(postgres_config(url, self.postgres_schema.as_deref()))
                .map(|b| Opened::Postgres(Box::new(b)))
                .map_err(|e| e.message),
            (None, dir) => {
                if self.postgres_schema.is_some() {
                    return Err("--postgres-schema applies only with --database-url".into());
                }
                let dir = dir.clone().unwrap_or_else(|| PathBuf::from("./data"));
                if create {
                    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                open_existing(&dir).map(|b| Opened::Sled(Box::new(b)))
            }
        }
    }
}

/// Entry point of the `datastorer` binary.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// The same, with the arguments given (the first is the program name): a
/// benchmark that runs the server in a child process of its own calls this.
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => match from_the_environment(&e, &args) {
            Some(message) => {
                eprintln!("datastorer: {message}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Inspect { dir, store, key } => dir.open(false).and_then(|b| inspect(&b, &store, &key)),
        Command::Export { dir, store, output } => {
            dir.open(false).and_then(|b| export(&b, store.as_deref(), output.as_deref()))
        }
        Command::Import { dir, input, overwrite, force, config } => {
            import(&dir, input.as_deref(), overwrite, force, config.as_deref())
        }
        Command::Check { dir } => dir.open(false).and_then(|b| check(&b)),
        Command::CopySledToPostgres { data_dir, database_url, postgres_schema, overwrite } => {
            copy_sled_to_postgres(&data_dir, &postgres_config(&database_url, postgres_schema.as_deref()), overwrite)
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

/// A bad value that came from an environment variable rather than a flag,
/// said with the variable's name (clap names only the flag, which the
/// user never typed): `DATASTORER_WORKERS=abc: invalid value 'abc' for
/// '--workers <WORKERS>': invalid digit found in string`.
fn from_the_environment(e: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let flag = format!("--{long}");
    let typed = args.iter().filter_map(|a| a.to_str()).any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if typed {
        return None;
    }
    fn find_env(cmd: &clap::Command, long: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|c| find_env(c, long)))
    }
    let var = find_env(&<Cli as clap::CommandFactory>::command(), long)?;
    let value = std::env::var_os(&var)?;
    let said = e.to_string();
    let first = said.lines().next().unwrap_or_default().trim_start_matches("error: ");
    Some(format!("{var}={}: {first}", value.to_string_lossy()))
}

fn serve(args: Box<Settings>) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(super::log_writer::LogWriter::start())
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = serve_logged(args);
    super::log_writer::LogWriter::flush_all();
    result
}

fn serve_logged(args: Box<Settings>) -> Result<(), String> {
    let config = ServerConfig::load(&args).map_err(|e| e.to_string())?;
    let system = actix_web::rt::System::new();
    let listener = super::bind(&config)?;
    let report = system.block_on(super::run(config, listener, super::wait_for_signal()))?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("shutdown incomplete: {report}"))
    }
}

fn open_existing(dir: &Path) -> Result<SledBackend, String> {
    if !dir.is_dir() {
        return Err(format!("no data directory at {}", dir.display()));
    }
    SledBackend::open(dir).map_err(|e| e.message)
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

fn inspect(opened: &Opened, store: &str, key: &str) -> Result<(), String> {
    let bytes = opened
        .backend()
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
    /// Strings or integers, as over HTTP (checked by `validate::user_id`).
    #[serde(default)]
    user_ids: Vec<Value>,
    /// Missing: the time of the import (never 0, which reads as 1970).
    #[serde(default)]
    created_at_ms: Option<u64>,
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

fn export(opened: &Opened, store: Option<&str>, output: Option<&Path>) -> Result<(), String> {
    let prefix = store.map(store_prefix).unwrap_or_else(|| b"d\0".to_vec());
    // Counted for the progress bar only; the export itself is one snapshot.
    let mut total = 0;
    opened.for_each_record(&prefix, |_, _| {
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
    opened.for_each_record(&prefix, |k, v| {
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
                    user_ids: rec.user_ids.into_iter().map(Value::String).collect(),
                    created_at_ms: Some(rec.created_at_ms),
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

/// The store of an import line, by the rule every entry point applies
/// (`validate_user_store_name`), with one exception: an inbox record
/// (`S:inbox`, as `export` writes them, so a backup restores waiting
/// messages) whose data has exactly the shape of an inbox.
fn import_store_name(line: &Line) -> Result<(), String> {
    let Some(base) = line.store.strip_suffix(datastorer::INBOX_SUFFIX) else {
        return datastorer::validate_user_store_name(&line.store).map_err(|e| e.to_string());
    };
    datastorer::validate_user_store_name(base).map_err(|e| e.to_string())?;
    let shaped = line.data.as_object().is_some_and(|o| o.keys().all(|k| k == "last_id" || k == "messages"))
        && serde_json::from_value::<datastorer::Inbox>(line.data.clone()).is_ok();
    if shaped {
        Ok(())
    } else {
        Err(format!(
            "store {:?} is reserved for messages, and this line's data is not an inbox ({{\"last_id\", \"messages\"}})",
            line.store
        ))
    }
}

/// Why `line`'s data_version could never be opened, if so: an inbox has
/// no migrations; with the server's config, a store's records are at most
/// at its migration count (an undeclared store has none).
fn too_new(
    line: &Line,
    versions: Option<&std::collections::BTreeMap<String, usize>>,
    config: Option<&Path>,
) -> Option<String> {
    let (known, source) = if line.store.ends_with(datastorer::INBOX_SUFFIX) {
        (0, "an inbox has no migrations".to_owned())
    } else {
        let versions = versions?;
        let config = config.map_or_else(String::new, |p| p.display().to_string());
        match versions.get(&line.store) {
            Some(&n) => (n, format!("its {n} migration(s) in {config}")),
            None => (0, format!("{config} does not declare it, so it has no migrations")),
        }
    };
    (line.data_version as usize > known).then(|| {
        format!(
            "{}/{}: data_version {} is newer than store {:?} knows ({source}); the server could never open it",
            line.store, line.key, line.data_version, line.store
        )
    })
}

/// Writes per batch of the import and the copy: one commit each.
const TOOL_BATCH: usize = 1000;

fn import(
    dir: &DataDir,
    input: Option<&Path>,
    overwrite: bool,
    force: bool,
    config: Option<&Path>,
) -> Result<(), String> {
    let versions = match config {
        Some(path) => Some(super::config::store_data_versions(path).map_err(|e| e.0)?),
        None => None,
    };
    let reader: Box<dyn BufRead> = match input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin().lock())),
    };
    // Validate everything before writing anything.
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    // A key twice would be written twice (the second write conflicting
    // with the first halfway through): refused up front like any bad line.
    let mut seen: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
    for (i, text) in reader.lines().enumerate() {
        let n = i + 1;
        let text = text.map_err(|e| format!("cannot read line {n}: {e}"))?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&text) {
            Ok(line) => {
                if let Err(e) = import_store_name(&line) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Err(e) = datastorer::validate_key(&line.key) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Err(e) = super::validate::metadata(&line.metadata) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Some(e) = line.user_ids.iter().find_map(|u| super::validate::user_id(u).err()) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Some(e) = too_new(&line, versions.as_ref(), config) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Some(first) = seen.insert((line.store.clone(), line.key.clone()), n) {
                    problems.push(format!("line {n}: {}/{} is also on line {first}", line.store, line.key));
                } else {
                    lines.push((n, line));
                }
            }
            Err(e) => problems.push(format!("line {n}: {e}")),
        }
    }
    let opened = dir.open(true)?;
    let backend = opened.backend();
    let now = opened.now_ms();
    let mut current = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(TOOL_BATCH) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|(_, l)| storage_key(&l.store, &l.key)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        for ((n, line), existing) in chunk.iter().zip(backend.get_many(&refs)) {
            let existing = existing.map_err(|e| e.to_string())?;
            let name = format!("{}/{}", line.store, line.key);
            let header = match existing.as_deref() {
                None => None,
                Some(bytes) => match Record::decode(bytes) {
                    Ok(_) if !overwrite => {
                        problems.push(format!("line {n}: {name} already exists (use --overwrite)"));
                        None
                    }
                    Ok(rec) => match rec.lease.filter(|l| l.expires_at_ms > now) {
                        Some(l) if !force => {
                            problems.push(format!(
                                "line {n}: {name} is held by {:?} for {} more ms (use --force to fence it off)",
                                l.owner,
                                l.expires_at_ms - now
                            ));
                            None
                        }
                        _ => Some(rec.header),
                    },
                    Err(_) => {
                        problems.push(format!("line {n}: {name} exists and is corrupt; not overwritten"));
                        None
                    }
                },
            };
            current.push(header);
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        return Err(format!("{} problem(s); nothing was imported", problems.len()));
    }
    if config.is_none() && lines.iter().any(|(_, l)| l.data_version > 0) {
        eprintln!(
            "note: data versions were not checked against the stores' migrations; pass --config (or set \
             DATASTORER_CONFIG) to check them"
        );
    }
    // A key created afresh starts above its store's epoch floor (the
    // highest epoch a deleted record of the store reached).
    let mut floors: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (_, line) in &lines {
        if !floors.contains_key(line.store.as_str()) {
            let raw = backend.get(&datastorer::storage::epoch_floor_key(&line.store)).map_err(|e| e.to_string())?;
            floors.insert(&line.store, raw.as_deref().and_then(RecordHeader::peek).map_or(0, |h| h.epoch));
        }
    }
    let mut progress = Progress::new("import", lines.len());
    let ops = lines.iter().zip(current).map(|((_, line), header)| -> Result<WriteOp, String> {
        let floor = floors.get(line.store.as_str()).copied().unwrap_or(0);
        let data = serde_json::to_vec(&line.data).map_err(|e| e.to_string())?;
        let metadata = serde_json::to_vec(&line.metadata).map_err(|e| e.to_string())?;
        let record = Record {
            // A higher epoch fences off any holder of the old record.
            header: RecordHeader {
                epoch: header.map_or(floor, |h| h.epoch) + 1,
                revision: header.map_or(0, |h| h.revision) + 1,
            },
            data_version: line.data_version,
            data,
            metadata,
            user_ids: line.user_ids.iter().filter_map(|u| super::validate::user_id(u).ok()).collect(),
            lease: None,
            created_at_ms: line.created_at_ms.unwrap_or(now),
            updated_at_ms: line.updated_at_ms,
        };
        Ok(WriteOp {
            key: storage_key(&line.store, &line.key),
            precondition: header.map_or(Precondition::Absent, Precondition::Header),
            value: Some(record.encode()),
        })
    });
    let ops: Vec<WriteOp> = ops.collect::<Result<_, _>>()?;
    let mut imported = 0;
    for batch in ops.chunks(TOOL_BATCH) {
        let mut written = Vec::with_capacity(batch.len());
        let mut stopped = None;
        for (op, outcome) in batch.iter().zip(backend.write_batch(batch)) {
            let name = split_storage_key(&op.key).map(|(s, k)| format!("{s}/{k}")).unwrap_or_default();
            match outcome {
                Ok(WriteOutcome::Applied) => {
                    progress.tick();
                    written.push(op);
                }
                Ok(WriteOutcome::Conflict { .. }) => {
                    stopped = stopped.or(Some(format!("{name} changed during the import")))
                }
                Err(e) => stopped = stopped.or(Some(format!("{name}: {e}"))),
            }
        }
        // Durable first, then announced: servers sharing the database
        // learn of the new contents (change feeds, caches, waiting opens)
        // only once they are there to read.
        backend.flush().map_err(|e| e.to_string())?;
        for op in &written {
            if let (Some((store, key)), Some(h)) =
                (split_storage_key(&op.key), op.value.as_deref().and_then(RecordHeader::peek))
            {
                backend.notices().publish_saved(store, key, h.revision);
            }
        }
        imported += written.len();
        if let Some(why) = stopped {
            return Err(format!("{why}; {imported} of {} records were imported before it", lines.len()));
        }
    }
    progress.finish();
    eprintln!("imported {} records", lines.len());
    Ok(())
}

fn copy_sled_to_postgres(dir: &Path, pg: &datastorer::PostgresConfig, overwrite: bool) -> Result<(), String> {
    let source = open_existing(dir)?;
    let target = PgBackend::connect(pg.clone()).map_err(|e| e.message)?;
    let mut total = 0;
    for_each_record(&source, b"d\0", |_, _| {
        total += 1;
        Ok(())
    })?;
    let mut progress = Progress::new("copy", total);
    let (mut copied, mut same, mut corrupt) = (0usize, 0usize, 0usize);
    let mut differing = Vec::new();
    let mut batch: Vec<WriteOp> = Vec::with_capacity(TOOL_BATCH);
    let mut flush = |batch: &mut Vec<WriteOp>, progress: &mut Progress| -> Result<(), String> {
        for (op, outcome) in batch.iter().zip(target.write_batch(batch)) {
            progress.tick();
            match outcome.map_err(|e| e.to_string())? {
                WriteOutcome::Applied => copied += 1,
                WriteOutcome::Conflict { .. } => {
                    // Already there: the same bytes (a copy run again) are fine.
                    let there = target.get(&op.key).map_err(|e| e.to_string())?;
                    if there.as_deref() == op.value.as_deref() {
                        same += 1;
                    } else {
                        differing.push(split_storage_key(&op.key).map(|(s, k)| format!("{s}/{k}")).unwrap_or_default());
                    }
                }
            }
        }
        batch.clear();
        Ok(())
    };
    for_each_record(&source, b"d\0", |k, v| {
        if Record::decode(v).is_err() {
            corrupt += 1;
        }
        let precondition = if overwrite { Precondition::Any } else { Precondition::Absent };
        batch.push(WriteOp { key: k.to_vec(), precondition, value: Some(v.to_vec()) });
        if batch.len() >= TOOL_BATCH {
            flush(&mut batch, &mut progress)?;
        }
        Ok(())
    })?;
    flush(&mut batch, &mut progress)?;
    progress.finish();
    // The epoch floors go too (never the owner id): a key deleted on sled
    // must not reuse its epochs on PostgreSQL. A floor only ever rises.
    let mut floors = 0;
    for_each_record(&source, b"m\0epoch_floor\0", |k, v| {
        let theirs = RecordHeader::peek(v).map_or(0, |h| h.epoch);
        let there = target.get(k).map_err(|e| e.to_string())?;
        let ours = there.as_deref().and_then(RecordHeader::peek);
        if ours.is_some_and(|h| h.epoch >= theirs) {
            return Ok(());
        }
        let precondition = match (&there, ours) {
            (None, _) => Precondition::Absent,
            (Some(_), Some(h)) => Precondition::Header(h),
            (Some(_), None) => Precondition::Any,
        };
        let op = WriteOp { key: k.to_vec(), precondition, value: Some(v.to_vec()) };
        match target.write_batch(std::slice::from_ref(&op)).pop() {
            Some(Ok(WriteOutcome::Applied)) => {
                floors += 1;
                Ok(())
            }
            Some(Ok(WriteOutcome::Conflict { .. })) => {
                Err("an epoch floor changed during the copy; run it again".into())
            }
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the database answered no outcome".into()),
        }
    })?;
    eprintln!(
        "copied {copied} records ({corrupt} of them corrupt, copied as they are); {same} were already there; {floors} epoch floors raised"
    );
    if !differing.is_empty() {
        for d in &differing {
            eprintln!("not copied: {d} exists in PostgreSQL with other contents (use --overwrite)");
        }
        return Err(format!("{} record(s) exist in PostgreSQL with other contents", differing.len()));
    }
    Ok(())
}

fn check(opened: &Opened) -> Result<(), String> {
    let (mut checked, mut bad) = (0usize, 0usize);
    opened.for_each_record(b"d\0", |k, v| {
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
