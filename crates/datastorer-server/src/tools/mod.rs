//! The offline tools: `inspect`, `history`, `export`, `import`, `check` and
//! `copy-sled-to-postgres`, (and `import-roblox`, which copies from Roblox's
//! Open Cloud into a running server over HTTP), on a stopped server's sled directory or on
//! PostgreSQL while servers run. The tools never create a data directory
//! except to import into it, and never rewrite a record they cannot decode.
//!
//! Owns: what the tools share (opening the storage, the export line, the
//! progress bar). Must not: run while a server holds the sled directory
//! (sled refuses a second opener) or write around a live lease.

mod check;
mod copy;
mod export;
mod history;
mod import;
mod import_roblox;
mod inspect;
mod restore_backup;
mod store_jobs;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use datastorer::storage::postgres::PgBackend;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::Backend;

/// Writes per batch of the import and the copy: one commit each.
const TOOL_BATCH: usize = 1000;

pub(crate) use check::check;
pub(crate) use copy::copy_sled_to_postgres;
pub(crate) use export::export;
pub(crate) use history::{history, Which};
pub(crate) use import::import;
pub(crate) use import_roblox::{import_roblox, RobloxImport};
pub(crate) use inspect::inspect;
pub(crate) use restore_backup::restore_backup;
pub(crate) use store_jobs::{migrate_store, restore_store};

/// Where records live, for the tools (the flags `serve` shares).
#[derive(Debug, clap::Args)]
pub(crate) struct DataDir {
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
pub(crate) enum Opened {
    Sled(Box<SledBackend>),
    Postgres(Box<PgBackend>),
}

impl Opened {
    /// The backend, shared, for a tool that runs an engine on it.
    fn into_backend(self) -> std::sync::Arc<dyn Backend> {
        match self {
            Opened::Sled(b) => std::sync::Arc::new(*b),
            Opened::Postgres(b) => std::sync::Arc::new(*b),
        }
    }

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
            Opened::Postgres(b) => b.scan_snapshot(prefix, f).map_err(|e| match e {
                datastorer::storage::postgres::SnapshotError::Storage(s) => s.to_string(),
                datastorer::storage::postgres::SnapshotError::Stopped(m) => m,
            }),
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

pub(crate) fn postgres_config(url: &str, schema: Option<&str>) -> datastorer::PostgresConfig {
    let mut pg = datastorer::PostgresConfig::new(url);
    if let Some(s) = schema {
        pg.schema = s.to_owned();
    }
    pg
}

impl DataDir {
    /// Opens what the flags name; `create` makes a missing sled directory.
    pub(crate) fn open(&self, create: bool) -> Result<Opened, String> {
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
/// One exported record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Line {
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
pub(crate) struct Progress {
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
