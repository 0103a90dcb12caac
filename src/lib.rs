//! # datastorer
//!
//! Per-key, session-locked documents for actix/tokio applications: open a
//! key, get a session holding a lease (with a fencing epoch), read and
//! mutate the document through it, and let datastorer detect changes,
//! autosave, renew the lease and release it — with every storage request
//! going through one queue with an emergency lane, rate budgets, backoff and
//! group commit.
//!
//! Owns: the public surface (re-exports) and `Datastorer`. Must not: hold
//! engine logic of its own; the modules below do.
//!
//! ```no_run
//! use datastorer::{Config, Datastorer, Priority, StoreSpec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Profile { coins: u64 }
//!
//! #[actix::main]
//! async fn main() -> Result<(), datastorer::Error> {
//!     let ds = Datastorer::start(Config::sled("./data")).await?;
//!     let profiles = ds.store("profiles", StoreSpec::new(Profile { coins: 0 }))?;
//!     let session = profiles.open(42u64).user_ids([42]).await?;
//!     session.update(|p| p.coins += 10).await?;
//!     session.save(Priority::Normal).await?; // durable once this resolves
//!     session.release(Priority::Normal).await?;
//!     ds.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! ## Layout
//! - [`Datastorer`] (this file): starts the engine, hands out stores.
//! - `store`: [`Store`], [`StoreSpec`], the open flow and key registry.
//! - `session`: [`Session`] and its save receipt.
//! - `types`: the shared vocabulary (policies, close reasons, lease info).
//! - `actors/`: the key actor, the queue actor, the supervisor.
//! - `messages/`: each actor's protocol.
//! - `lease`: acquire policy and load (migrate, reconcile).
//! - `storage/`: the [`Backend`] trait, the record envelope, sled, memory and PostgreSQL backends.
//! - `retry`: backoff delays (the only user of the `backoff` crate).
//! - the server (`crates/datastorer-server`, binary `datastorer`) and the
//!   benchmarks (`crates/datastorer-bench`) are crates of their own that use
//!   only this public API.
//! - `testing` (feature `harness`): a cluster of nodes over one fault-injecting backend.
//!
//! Actors need a running actix `System` (`#[actix::main]`, `actix_rt::System`,
//! or an actix-web server); no actix type appears in the public API.

#![warn(missing_docs)]

mod actors;
mod audit;
pub mod backup;
mod clock;
mod config;
mod engine;
pub(crate) mod epoch_floor;
mod erasure;
mod error;
mod handoff;
mod history;
mod json_encode;
mod keepalive;
mod lease;
mod messages;
mod migration;
mod registry;
mod report;
mod retention;
mod retry;
mod save_failures;
mod session;
pub mod storage;
mod store;
mod store_def;
mod store_listing;
mod store_usage;
#[cfg(feature = "harness")]
pub mod testing;
mod types;

use std::sync::Arc;

/// Compiles the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Compiles the embedding guide's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/embedding.md")]
pub struct EmbeddingGuideDoctests;

use actix::{Actor, Addr, Arbiter, System, WeakAddr};
use tokio::sync::oneshot;
use tracing::info;

use crate::actors::queue::QueueActor;
use crate::actors::supervisor::Supervisor;
use crate::engine::Engine;
use crate::keepalive::Keepalive;
use crate::messages::queue::{DropQueued, GetBudgets, GetDepth, GetStats, NotifyWhenEmpty};
#[cfg(feature = "harness")]
use crate::messages::supervisor::Abort;
use crate::messages::supervisor::{AutosaveNow, ReleaseAll, Shutdown};
use crate::registry::Registry;

pub use crate::audit::AuditEntry;
pub use crate::config::{Budget, Budgets, Config, QueueConfig, StorageConfig};
pub use crate::erasure::{ErasedCounts, ErasureReceipt, UserRecord};
pub use crate::error::{Error, KeyId};
pub use crate::migration::{Migration, StepRefused};
pub use crate::report::{ReleaseReport, ShutdownReport};
pub use crate::retention::Retention;
pub use crate::retry::RetryConfig;
pub use crate::save_failures::{FailedSave, SaveFailureReason};
pub use crate::session::{SaveReceipt, Session};
#[cfg(feature = "postgres")]
pub use crate::storage::postgres::{PostgresConfig, PostgresTls};
pub use crate::storage::{Backend, ErrorKind, StorageError};
pub use crate::store::inbox::{inbox_store_name, Inbox, INBOX_SUFFIX, MAX_INBOX_MESSAGES, MAX_MESSAGE_BYTES};
pub use crate::store::read_cache::ReadCache;
pub use crate::store::{
    parse_version_id, validate_key, validate_store_name, validate_user_store_name, version_id_text, Document, Expect,
    Hooks, Key, KeyChange, MigrationFailure, MigrationReport, OpenRequest, RecordParts, RestoreProgress, RestoreTarget,
    Restored, Store, StoreRestoreReport, StoreSpec, Updated, Version, VersionInfo, VersionOrder, VersionPage,
    VersionQuery, MAX_KEY_LEN, MAX_LISTED_CHANGES, MAX_STORE_NAME_LEN, MAX_VERSIONS_PAGE,
};
pub use crate::store_usage::StoreUsage;
pub use crate::types::EraseMode;
pub use crate::types::Message;
pub use crate::types::{AcquirePolicy, CloseReason, LeaseInfo, SaveOutcome};
pub use crate::types::{BudgetLevels, HibernationStats, Priority, QueueDepth, QueueStats};

/// One running engine: a backend, a queue, a supervisor and the stores.
/// Cheap to clone; every clone is the same instance.
#[derive(Clone)]
pub struct Datastorer {
    engine: Arc<Engine>,
    supervisor: Addr<Supervisor>,
    /// With every `Store` and `Session` handed out: when the last goes,
    /// the instance shuts down and stops (`keepalive`).
    keepalive: Arc<Keepalive>,
}

impl std::fmt::Debug for Datastorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datastorer")
            .field("owner", &self.engine.owner)
            .field("backend", &self.engine.backend.name())
            .finish()
    }
}

impl Datastorer {
    /// Validates `config`, opens the backend and starts the actors on the
    /// current actix arbiter. With `handle_signals`, SIGINT/SIGTERM run
    /// [`Datastorer::shutdown`] and then stop the actix `System`.
    pub async fn start(config: Config) -> Result<Datastorer, Error> {
        config.validate()?;
        let arbiter = Arbiter::try_current().ok_or(Error::NotRunning)?;
        let backend: Arc<dyn storage::Backend> = match &config.storage {
            StorageConfig::Sled { path } => {
                let path = path.clone();
                let opened = tokio::task::spawn_blocking(move || storage::sled_backend::SledBackend::open(path))
                    .await
                    .map_err(|e| Error::Open(StorageError::permanent(e.to_string())))?;
                Arc::new(opened.map_err(Error::Open)?)
            }
            StorageConfig::Memory => Arc::new(storage::memory::MemoryBackend::unlogged()),
            StorageConfig::Backend(b) => b.clone(),
            #[cfg(feature = "postgres")]
            StorageConfig::Postgres(pg) => {
                let pg = pg.clone();
                let opened = tokio::task::spawn_blocking(move || storage::postgres::PgBackend::connect(pg))
                    .await
                    .map_err(|e| Error::Open(StorageError::permanent(e.to_string())))?;
                Arc::new(opened.map_err(Error::Open)?)
            }
        };
        // Refused when a live instance, here or in another process sharing
        // the backend, runs under this owner id: two of them would each
        // take the other's keys as their own.
        backend.claim_owner(&config.owner_id).map_err(Error::Open)?;
        let queue_actor = QueueActor::new(backend.clone(), config.queue.clone());
        // With a blocking backend the queue gets a thread of its own: a burst
        // of saves (autosave, shutdown) wakes every key actor at once, and a
        // queue sharing their thread would be polled only after all of them,
        // so the disk would sit idle while they encode. On its own thread it
        // sends the first batch at once, encoding overlaps the writes, and
        // batches run inline there (no hop through the blocking pool).
        // The memory backend keeps it here, where a paused test clock reaches it.
        // Chosen from what the backend is, not from how the config named it:
        // `Config::backend(sled)` (the server's way) gets the same as `Config::sled`.
        let own_thread = config.queue.own_thread.unwrap_or_else(|| backend.capabilities().prefers_own_thread);
        let (queue, queue_thread) = if own_thread {
            let thread = Arbiter::new();
            let addr = QueueActor::start_in_arbiter(&thread.handle(), move |_| queue_actor.on_own_thread());
            (addr, Some(thread))
        } else {
            (queue_actor.start(), None)
        };
        let registry = Arc::new(Registry::default());
        let owner: Arc<str> = Arc::from(config.owner_id.as_str());
        let clock = clock::Clock::new(backend.clock());
        let supervisor = Supervisor::new(
            registry.clone(),
            queue.clone(),
            backend.clone(),
            owner,
            clock.clone(),
            config.autosave_interval,
            config.shutdown_deadline,
        )
        .start();
        if config.handle_signals {
            install_signal_handler(supervisor.downgrade(), registry.clone())?;
        }
        info!(target: "datastorer", owner = %config.owner_id, backend = backend.name(), "datastorer started");
        let engine = Arc::new(Engine::new(config, backend, queue, queue_thread, registry, clock, arbiter));
        let keepalive = Arc::new(Keepalive::new(supervisor.clone().recipient()));
        Ok(Datastorer { engine, supervisor, keepalive })
    }

    /// The store `name`, registered on first use. Asking again with the same
    /// specification returns the same store; a different one is an error.
    pub fn store<T: Document>(&self, name: &str, spec: StoreSpec<T>) -> Result<Store<T>, Error> {
        // `S:inbox` holds store S's messages (see `Store::post_message`).
        validate_user_store_name(name)?;
        Store::register(&self.engine, name, spec, Some(self.keepalive.clone()))
    }

    /// Names of the stores holding records that start with `prefix`, in
    /// byte order, after the store `after` (the last name of the previous
    /// page), at most `limit`; the internal `S:inbox` stores are left out.
    /// One short scan per store, through the queue.
    pub async fn store_names(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        crate::store_listing::names(&self.engine, prefix, after, limit).await
    }

    /// How many records and kept versions `store` holds and their bytes,
    /// counted now (pages of keys with their value lengths, through the
    /// queue; no document is read out).
    pub async fn store_usage(&self, store: &str) -> Result<StoreUsage, Error> {
        crate::store_usage::measure(&self.engine, store).await
    }

    /// Every record and kept version tagged with `user_id`, across stores
    /// (a subject-access export), found through the user-id index.
    pub async fn user_records(&self, user_id: &str) -> Result<Vec<UserRecord>, Error> {
        crate::erasure::find(&self.engine, user_id).await
    }

    /// Erases `user_id` in every store (right to erasure): in a store that
    /// deletes (the default) every record tagged with it goes, with all its
    /// versions and its inbox, and live sessions end with `Erased`; in a
    /// store declared `EraseMode::Unlink` the id is removed from the
    /// record and its versions and the data stays (a holder hands the key
    /// over first, within `handoff`). Idempotent; answers a receipt that
    /// names no erased data.
    pub async fn erase_user(&self, user_id: &str, handoff: std::time::Duration) -> Result<ErasureReceipt, Error> {
        crate::erasure::erase(&self.engine, user_id, None, handoff).await
    }

    /// [`Datastorer::erase_user`] in the named stores only (a game's own,
    /// for a Roblox erasure request naming that game).
    pub async fn erase_user_in(
        &self,
        user_id: &str,
        stores: &[String],
        handoff: std::time::Duration,
    ) -> Result<ErasureReceipt, Error> {
        crate::erasure::erase(&self.engine, user_id, Some(stores), handoff).await
    }

    /// Records an administrative action in the audit trail, durably
    /// (beside the records, in the same backend), and logs it at info under
    /// `datastorer::audit`; answers the entry with its id and time.
    pub async fn audit(&self, entry: AuditEntry) -> Result<AuditEntry, Error> {
        crate::audit::record(&self.engine, entry).await
    }

    /// The audit trail, oldest first: entries after the id `after` that
    /// `keep` accepts, at most `limit`, and the id to continue from.
    pub async fn audit_entries(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&AuditEntry) -> bool,
    ) -> Result<(Vec<AuditEntry>, Option<String>), Error> {
        crate::audit::entries(&self.engine, after, limit, keep).await
    }

    /// Writes an online backup to `out`: every record, version, index entry
    /// and meta value as of one instant (the backend's snapshot; writers
    /// go on meanwhile), in the self-checking format of
    /// [`backup`](crate::backup), restored with `backup::restore_backup`.
    pub async fn backup(&self, out: impl std::io::Write + Send + 'static) -> Result<backup::BackupReport, Error> {
        let backend = self.engine.backend.clone();
        let taken_at_ms = self.engine.clock.now_ms();
        let written = tokio::task::spawn_blocking(move || backup::write_backup(&*backend, taken_at_ms, out)).await;
        let at = || KeyId::new("(backup)", "");
        match written {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(source)) => Err(Error::Storage { at: at(), operation: "backup", attempts: 1, source }),
            Err(e) => Err(Error::Storage {
                at: at(),
                operation: "backup",
                attempts: 1,
                source: StorageError::permanent(format!("the backup thread failed: {e}")),
            }),
        }
    }

    /// This instance's owner id (as written in leases).
    pub fn owner_id(&self) -> &str {
        &self.engine.owner
    }

    /// Every change notice from now on (saves, releases and how sessions
    /// ended, deletes; on a backend shared across processes, theirs too):
    /// the way to watch the store without going around the queue. A slow
    /// reader gets `Lagged` rather than slowing anyone down.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<crate::storage::Notice> {
        self.engine.backend.notices().subscribe()
    }

    /// Calls `sink` with every change notice from now on (what
    /// [`changes`](Self::changes) carries), on the thread that delivers it:
    /// for a save, the key actor's, once the save is durable. It cannot lag
    /// and wakes no other thread, so it suits a consumer that must see
    /// every notice and does little with each (a server's change log
    /// appends it to a buffer); it must be quick and must not block. It
    /// stays for the life of the engine. A panic in it is logged and the
    /// notice goes on to the others.
    pub fn on_change(&self, sink: impl Fn(&crate::storage::Notice) + Send + Sync + 'static) {
        self.engine.backend.notices().add_sink(std::sync::Arc::new(sink));
    }

    /// The change notices `wanted` picks, from now on, each one (no lag can
    /// drop one): [`on_change`](Self::on_change) forwarding into a channel,
    /// for a task that acts on a few kinds of notice among many.
    pub fn changes_matching(
        &self,
        wanted: impl Fn(&crate::storage::Notice) -> bool + Send + Sync + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<crate::storage::Notice> {
        self.engine.backend.notices().forward(wanted)
    }

    /// Now, by the clock leases are written in (the database's on
    /// PostgreSQL), in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.engine.clock.now_ms()
    }

    /// Number of keys loaded and open, over all stores (hibernating ones
    /// included: their sessions are open).
    pub fn loaded_count(&self) -> usize {
        self.engine.registry.loaded_count()
    }

    /// How many of the loaded keys hibernate right now (no actor; see
    /// `Config::hibernate_after`), and how often keys fell asleep and woke.
    pub fn hibernation(&self) -> HibernationStats {
        use std::sync::atomic::Ordering::Relaxed;
        HibernationStats {
            hibernating: self.engine.asleep.load(Relaxed),
            fell_asleep: self.engine.fell_asleep.load(Relaxed),
            woken: self.engine.woken.load(Relaxed),
        }
    }

    /// Saves and releases every loaded key (reason `Released`).
    pub async fn release_all_keys(&self, priority: Priority) -> ReleaseReport {
        self.supervisor.send(ReleaseAll { priority }).await.unwrap_or_default()
    }

    /// Stops new loads, saves and releases every key on the emergency lane,
    /// drains the queue and flushes storage, within `shutdown_deadline`.
    /// Calling it again returns the first call's report.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.supervisor.send(Shutdown).await.unwrap_or_default()
    }

    /// Runs the autosave pass now (saves changed keys, renews half-used
    /// leases). Answers how many keys were ticked; the writes are queued, not
    /// awaited (use [`Datastorer::wait_for_empty_queue`]).
    pub async fn autosave_now(&self) -> usize {
        self.supervisor.send(AutosaveNow).await.unwrap_or(0)
    }

    /// Drops queued normal-lane requests; their callers get `Error::Cancelled`
    /// (a cancelled save leaves the key dirty, so the next autosave retries).
    pub async fn flush_queue(&self) -> usize {
        self.engine.queue.send(DropQueued { emergency_too: false }).await.unwrap_or(0)
    }

    /// Drops every queued request, emergency lane included.
    pub async fn emergency_flush_queue(&self) -> usize {
        self.engine.queue.send(DropQueued { emergency_too: true }).await.unwrap_or(0)
    }

    /// Resolves once nothing is queued, retrying or executing.
    pub async fn wait_for_empty_queue(&self) {
        let (done, rx) = oneshot::channel();
        self.engine.queue.do_send(NotifyWhenEmpty { done });
        let _ = rx.await;
    }

    /// The harness's crash (`testing::crash`).
    #[cfg(feature = "harness")]
    pub(crate) async fn abort(&self) {
        let _ = self.supervisor.send(Abort).await;
    }

    /// Tokens left in each rate budget.
    pub async fn budget_levels(&self) -> BudgetLevels {
        self.engine.queue.send(GetBudgets).await.unwrap_or_default()
    }

    /// Totals since start: batches, flushes, writes, reads.
    pub async fn queue_stats(&self) -> QueueStats {
        self.engine.queue.send(GetStats).await.unwrap_or_default()
    }

    /// Saves and releases that failed since start, by reason (every one is
    /// also logged at warn with its store, key and error).
    pub fn save_failures(&self) -> Vec<(SaveFailureReason, u64)> {
        self.engine.save_failures.snapshot()
    }

    /// The last failed saves (up to 64) after `after` (a [`FailedSave::seq`];
    /// 0 for all kept), oldest first: which key failed and why, for alerts.
    pub fn recent_save_failures(&self, after: u64) -> Vec<FailedSave> {
        self.engine.save_failures.recent(after)
    }

    /// Current queue depth per lane.
    pub async fn queue_depth(&self) -> QueueDepth {
        self.engine.queue.send(GetDepth).await.unwrap_or_default()
    }
}

#[cfg(unix)]
fn install_signal_handler(supervisor: WeakAddr<Supervisor>, registry: Arc<Registry>) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Error::Config(format!("cannot install the {name} handler: {e}")))
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    actix::spawn(async move {
        // Ends with the instance: a stopped engine leaves no listener behind.
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = registry.stopped() => return,
        };
        let Some(supervisor) = supervisor.upgrade() else { return };
        info!(target: "datastorer", signal = which, "signal received: saving and releasing every key");
        let report = supervisor.send(Shutdown).await.unwrap_or_default();
        info!(target: "datastorer", clean = report.is_clean(), "stopping the actix system");
        if let Some(system) = System::try_current() {
            system.stop();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn install_signal_handler(supervisor: WeakAddr<Supervisor>, registry: Arc<Registry>) -> Result<(), Error> {
    actix::spawn(async move {
        let signalled = tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            () = registry.stopped() => false,
        };
        if let (true, Some(supervisor)) = (signalled, supervisor.upgrade()) {
            let _ = supervisor.send(Shutdown).await;
            if let Some(system) = System::try_current() {
                system.stop();
            }
        }
    });
    Ok(())
}
