//! Engine configuration and its validation.
//!
//! Owns: `Config`, its defaults and rules. Must not: start anything or touch
//! storage (`Datastorer::start` does).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::retry::RetryConfig;
use crate::storage::Backend;

/// Where records live.
#[derive(Clone)]
pub enum StorageConfig {
    /// An embedded sled database in this directory (created if missing).
    Sled {
        /// Data directory.
        path: PathBuf,
    },
    /// A fresh in-memory backend (lost when the process ends).
    Memory,
    /// A backend you built, possibly shared with other `Datastorer` instances.
    Backend(Arc<dyn Backend>),
    /// A PostgreSQL database shared by every process that uses it
    /// (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(crate::storage::postgres::PostgresConfig),
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::Sled { path } => f.debug_struct("Sled").field("path", path).finish(),
            StorageConfig::Memory => f.write_str("Memory"),
            StorageConfig::Backend(b) => write!(f, "Backend({})", b.name()),
            #[cfg(feature = "postgres")]
            StorageConfig::Postgres(pg) => f.debug_tuple("Postgres").field(pg).finish(),
        }
    }
}

/// A token bucket: `per_second` requests refill continuously, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may go at once after a quiet period.
    pub burst: f64,
}

impl Budget {
    /// The one rule of a budget, for every entry point that takes one:
    /// `per_second > 0` and `burst >= 1`, both finite. The error says what
    /// was given.
    pub fn check(&self) -> Result<(), Error> {
        let ok = self.per_second > 0.0 && self.per_second.is_finite() && self.burst >= 1.0 && self.burst.is_finite();
        if ok {
            return Ok(());
        }
        Err(Error::Config(format!("needs per_second > 0 and burst >= 1 (got {} and {})", self.per_second, self.burst)))
    }
}

/// Per-operation rate budgets. `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budgets {
    /// Reads (`get`).
    pub get: Option<Budget>,
    /// Writes and deletes (each operation of a group commit counts once).
    pub write: Option<Budget>,
    /// Prefix scans.
    pub scan: Option<Budget>,
}

/// The queue actor's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Most requests combined into one backend batch (one durable flush).
    pub max_batch: usize,
    /// Most bytes of written values in one batch; a single larger write
    /// still goes, alone. Bounds how long one batch holds the disk (and the
    /// emergency lane behind it) when documents are large.
    pub max_batch_bytes: usize,
    /// At least one slot in every `normal_share` of a batch goes to the
    /// normal lane when it has work, so emergency traffic cannot starve it.
    pub normal_share: usize,
    /// Run the queue on a thread of its own, with a flusher thread beside
    /// it that syncs one batch while the next is applied. `None`: only for
    /// the sled backend (blocking disk I/O); the memory backend and custom
    /// backends keep the queue on the starting arbiter (where a paused test
    /// clock reaches it).
    pub own_thread: Option<bool>,
    /// Rate budgets; the defaults do not throttle.
    pub budgets: Budgets,
    /// Backoff for transient failures.
    pub retry: RetryConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            // Every flush is an fsync and sled seals its log buffer on each:
            // a 100k-key shutdown took 1.46 s in batches of 1024 and 1.05 s
            // in batches of 4096 (bench figure 4).
            max_batch: 4096,
            // sled's log buffer is 8 MiB; one batch fills at most half of it.
            max_batch_bytes: 4 * 1024 * 1024,
            normal_share: 8,
            own_thread: None,
            budgets: Budgets::default(),
            retry: RetryConfig::default(),
        }
    }
}

/// Everything `Datastorer::start` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Backend selection.
    pub storage: StorageConfig,
    /// This instance's identity in leases. Must be unique among the
    /// instances sharing a backend; the default combines host, pid and time.
    pub owner_id: String,
    /// How often loaded keys are checked for changes and saved.
    pub autosave_interval: Duration,
    /// How long a lease lasts without renewal. Renewal happens on every
    /// write and on the autosave pass once less than half of it is left.
    pub lease_ttl: Duration,
    /// How often a waiting `open` re-reads a held key when no notice arrives.
    pub lease_poll_interval: Duration,
    /// Queue settings.
    pub queue: QueueConfig,
    /// How long `shutdown` may take before it gives up on unsaved keys.
    pub shutdown_deadline: Duration,
    /// Handle SIGINT/SIGTERM by shutting down and then stopping the actix System.
    pub handle_signals: bool,
    /// Largest encoded document (JSON bytes) a save accepts.
    pub max_document_bytes: usize,
    /// Start each key actor on the arbiter of the task that opens the key
    /// (when that task runs on one) instead of the arbiter `start` ran on.
    /// The server sets this: an HTTP worker then runs its keys' closures
    /// with no thread hop per request. Every such arbiter must outlive
    /// `shutdown()`; a key whose arbiter stops first closes with an error
    /// and loses its unsaved changes.
    pub keys_on_caller_arbiter: bool,
    /// How often each store that keeps versions prunes those its
    /// retention no longer keeps (a pass in bounded steps through the
    /// queue); `None`: never in the background (`Store::prune_versions`
    /// still does it on demand).
    pub prune_interval: Option<Duration>,
    /// How long a loaded key with nothing unsaved may go without a message
    /// before it hibernates: its actor stops and the cell keeps only the
    /// document, lease and header; the next message wakes it unseen.
    /// Checked on the autosave tick, so rounded up to whole
    /// `autosave_interval`s (at least one). `None`: never.
    pub hibernate_after: Option<Duration>,
}

fn default_owner_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

impl Config {
    /// Defaults with sled in `path`.
    pub fn sled(path: impl Into<PathBuf>) -> Self {
        Self::with_storage(StorageConfig::Sled { path: path.into() })
    }

    /// Defaults with PostgreSQL at `url` (a `postgres://` URL or a
    /// `host=… user=…` string), schema `datastorer`. Set the other fields
    /// of [`crate::PostgresConfig`] through `StorageConfig::Postgres`.
    #[cfg(feature = "postgres")]
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::with_storage(StorageConfig::Postgres(crate::storage::postgres::PostgresConfig::new(url)))
    }

    /// Defaults with a fresh in-memory backend.
    pub fn memory() -> Self {
        Self::with_storage(StorageConfig::Memory)
    }

    /// Defaults with a backend you built (share it to run several instances).
    pub fn backend(backend: Arc<dyn Backend>) -> Self {
        Self::with_storage(StorageConfig::Backend(backend))
    }

    fn with_storage(storage: StorageConfig) -> Self {
        Self {
            storage,
            owner_id: default_owner_id(),
            autosave_interval: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(90),
            lease_poll_interval: Duration::from_secs(1),
            queue: QueueConfig::default(),
            shutdown_deadline: Duration::from_secs(25),
            handle_signals: true,
            max_document_bytes: 4 * 1024 * 1024,
            keys_on_caller_arbiter: false,
            prune_interval: Some(Duration::from_secs(3600)),
            hibernate_after: Some(Duration::from_secs(60)),
        }
    }

    /// Sets the owner id.
    pub fn owner_id(mut self, owner: impl Into<String>) -> Self {
        self.owner_id = owner.into();
        self
    }

    /// Checks every field; the message names the field and the rule.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.owner_id.is_empty() || self.owner_id.len() > 128 || self.owner_id.chars().any(char::is_control) {
            return bad("owner_id must be 1 to 128 bytes of printable characters".into());
        }
        if self.autosave_interval.is_zero() {
            return bad("autosave_interval must be greater than zero".into());
        }
        if self.lease_ttl < self.autosave_interval * 2 {
            return bad(format!(
                "lease_ttl ({:?}) must be at least twice autosave_interval ({:?}) so leases are renewed before they lapse",
                self.lease_ttl, self.autosave_interval
            ));
        }
        if self.lease_poll_interval.is_zero() {
            return bad("lease_poll_interval must be greater than zero".into());
        }
        if self.queue.max_batch == 0 {
            return bad("queue.max_batch must be at least 1".into());
        }
        if self.queue.max_batch_bytes == 0 {
            return bad("queue.max_batch_bytes must be at least 1".into());
        }
        if self.queue.normal_share == 0 {
            return bad("queue.normal_share must be at least 1".into());
        }
        for (name, budget) in
            [("get", &self.queue.budgets.get), ("write", &self.queue.budgets.write), ("scan", &self.queue.budgets.scan)]
        {
            if let Some(Err(Error::Config(m))) = budget.as_ref().map(Budget::check) {
                return bad(format!("queue.budgets.{name} {m}"));
            }
        }
        self.queue.retry.validate().map_err(Error::Config)?;
        if self.max_document_bytes == 0 {
            return bad("max_document_bytes must be greater than zero".into());
        }
        #[cfg(feature = "postgres")]
        if let StorageConfig::Postgres(pg) = &self.storage {
            pg.validate()?;
        }
        Ok(())
    }
}
