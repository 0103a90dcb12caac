//! PostgreSQL: the backend that several processes share.
//!
//! Owns: its connections (writers for batches, a reader for reads and
//! NOTIFYs, a listener for LISTEN, owner locks and the heartbeat), the
//! runtime thread that drives them, the schema, the mapping of the
//! `Backend` contract onto SQL, and database time. Must not: know about
//! actors, sessions or lease policy beyond the `Precondition`s it enforces.
//!
//! How the contract maps:
//! - **Records** keep their exact bytes in one `bytea` (authoritative);
//!   epoch, revision, lease owner and expiry and user ids are columns the
//!   backend derives from the bytes it writes, so SQL can fence and guard
//!   leases. A value whose header does not decode gets NULL epoch and
//!   revision and satisfies only `Any`, as on sled.
//! - **`write_batch`** is one transaction per call (usually one statement
//!   in autocommit): every compare-and-swap is in the `WHERE` clause, so
//!   another process's commit can never be overwritten by a stale header.
//!   There is no header cache: another process may change any row.
//! - **Conflicts are re-read in a fresh statement.** Under READ COMMITTED a
//!   blocked `UPDATE` re-checks its `WHERE` on the newest row, but the rest
//!   of the statement sees its start snapshot, which can report a header
//!   older than the one that beat it. The queue treats a conflict that
//!   shows the op's own new header as applied (a lost COMMIT reply), so the
//!   header it gets must be the current one.
//! - **`flush`** is a barrier only: with `synchronous_commit` on, a batch is
//!   durable when its COMMIT returns. After a call whose outcome was lost
//!   with its connection, and after a write that finds its own new header
//!   already stored (the retry meeting that lost call), the next `flush`
//!   commits a transaction with an xid first, so a write the retry found
//!   applied is also replicated to synchronous standbys before it is
//!   acknowledged (with several writers, another writer's flush may have
//!   cleared the first mark before the retry came).
//! - **Leases**: `Precondition::Acquire` compares the stored expiry with
//!   the database's `statement_timestamp()`, and the engine's lease clock
//!   follows database time ([`clock::DbClock`]).
//! - **Notices** travel by LISTEN/NOTIFY ([`listener`]).
//!
//! The trait is blocking; the queue calls it from its own thread (an actix
//! arbiter, i.e. inside a tokio runtime, where `block_on` would panic). So
//! the connections live on a current-thread runtime of the backend's own
//! thread, and a call spawns its work there and waits on a channel.

mod clock;
mod conn;
mod errors;
mod listener;
mod read;
mod schema;
mod settings;
mod sql;
mod tls;
mod write;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex as AsyncMutex;
use tokio_postgres::{Client, Statement};
use tracing::debug;

pub use self::read::SnapshotError;
pub use self::settings::{PostgresConfig, PostgresTls, MAX_WRITER_CONNECTIONS};

use self::clock::DbClock;
use self::conn::describe_target;
use self::errors::{PgFailure, StartError};
use self::sql::{RowKey, ScanShape, Statements};
use self::tls::tls_connector;
use self::write::{write_all, write_batch};
use super::{
    AllOrNothing, Backend, BackendClock, Capabilities, KeySizes, KeyValues, NoticeBus, StorageError, WriteOp,
    WriteOutcome,
};

/// A PostgreSQL database as a [`Backend`]. Cheap to share (`Arc`); every
/// `Datastorer` instance in this process on the same database should use
/// one (it holds three connections).
pub struct PgBackend {
    inner: Arc<Inner>,
    bus: NoticeBus,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the runtime's tasks share.
pub(crate) struct Inner {
    cfg: PostgresConfig,
    pg: tokio_postgres::Config,
    /// `host:port/db` for messages (never the password).
    target: String,
    sql: Statements,
    /// Random per backend: tags the notices this process sends, so their
    /// echo is not delivered twice.
    instance: String,
    /// The writer connections (`PostgresConfig::writer_connections`), each
    /// opened on first use and again after it broke.
    writers: Vec<AsyncMutex<Option<Conn>>>,
    /// One permit for each writer connection not in use.
    writers_free: tokio::sync::Semaphore,
    reader: AsyncMutex<Option<Arc<Conn>>>,
    clock: Arc<DbClock>,
    /// A call's outcome was lost with its connection (see the module docs).
    needs_barrier: AtomicBool,
    /// Notices go through the polled `notices` table (no LISTEN/NOTIFY).
    polling: AtomicBool,
    /// The listener's connection and the owner ids claimed on it.
    listen: AsyncMutex<listener::ListenState>,
    /// Notices published here and not yet sent: waited for (briefly) when
    /// the backend closes, so the `Released` notices of a shutdown reach the
    /// processes waiting for those keys.
    unsent_notices: Arc<std::sync::atomic::AtomicUsize>,
    #[cfg(feature = "postgres-tls")]
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    #[cfg(not(feature = "postgres-tls"))]
    tls: Option<std::convert::Infallible>,
}

/// One connection and its prepared statements.
pub(crate) struct Conn {
    client: Client,
    st: Prepared,
}

struct Prepared {
    get: Statement,
    get_many: Statement,
    write_lean: Statement,
    write_one: Statement,
    write_general: Statement,
    reread: Statement,
    now: Statement,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend").field("target", &self.inner.target).field("schema", &self.inner.cfg.schema).finish()
    }
}

impl PgBackend {
    /// Connects, checks the server (encoding, durability settings), creates
    /// or migrates the schema under an advisory lock, and starts listening
    /// for notices. Every failure is a permanent error whose message names
    /// the server and the problem; nothing waits longer than
    /// `connect_timeout` per connection.
    pub fn connect(cfg: PostgresConfig) -> Result<PgBackend, StorageError> {
        cfg.validate().map_err(|e| StorageError::permanent(e.to_string()))?;
        let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e| StorageError::permanent(format!("{e}")))?;
        pg.connect_timeout(cfg.connect_timeout)
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(10))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3)
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
            .options(format!(
                "-c lock_timeout={}ms -c idle_in_transaction_session_timeout=30s -c default_transaction_isolation=read\\ committed",
                cfg.lock_timeout.as_millis()
            ));
        #[cfg(target_os = "linux")]
        pg.tcp_user_timeout(std::time::Duration::from_secs(30));
        let target = describe_target(&pg);
        let tls = tls_connector(&cfg)?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| StorageError::permanent(format!("no randomness: {e}")))?;
        let instance: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let cfg_poll = cfg.poll_notices;
        let writer_count = cfg.writer_connections.max(1);
        let inner = Arc::new(Inner {
            sql: Statements::new(&cfg.schema),
            cfg,
            pg,
            target,
            instance,
            writers: (0..writer_count).map(|_| AsyncMutex::new(None)).collect(),
            writers_free: tokio::sync::Semaphore::new(writer_count),
            reader: AsyncMutex::new(None),
            clock: Arc::new(DbClock::new()),
            needs_barrier: AtomicBool::new(false),
            polling: AtomicBool::new(cfg_poll),
            listen: AsyncMutex::new(listener::ListenState::default()),
            unsent_notices: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            tls,
        });

        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("datastorer-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                let _ = rt.block_on(stopped);
            })
            .map_err(|e| StorageError::permanent(format!("cannot start the PostgreSQL thread: {e}")))?;
        let runtime = handle_rx
            .recv()
            .map_err(|_| StorageError::permanent("the PostgreSQL thread died at start"))?
            .map_err(|e| StorageError::permanent(format!("cannot build the PostgreSQL runtime: {e}")))?;

        let (transport, outbox) = listener::Transport::new(inner.cfg.notify_saves, inner.unsent_notices.clone());
        let bus = NoticeBus::with_transport(Arc::new(transport));
        let backend = PgBackend { inner, bus, runtime, stop: Some(stop), thread: Some(thread) };

        // Start-up: the writer connection checks the server and migrates.
        let inner = backend.inner.clone();
        let started = backend.block_on_runtime(async move {
            let mut client = inner.open_client("writer").await?;
            schema::check_server(&client, &inner.cfg).await?;
            schema::migrate(&mut client, &inner.cfg.schema).await?;
            let conn = inner.prepare(client).await.map_err(StartError::Query)?;
            inner.sample_clock(&conn).await.map_err(StartError::Query)?;
            *inner.writers[0].lock().await = Some(conn);
            let reader = inner.open_client("reader").await?;
            let reader = inner.prepare(reader).await.map_err(StartError::Query)?;
            *inner.reader.lock().await = Some(Arc::new(reader));
            Ok::<(), StartError>(())
        });
        match started {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.into_storage(&backend.inner.target)),
            None => return Err(StorageError::permanent("the PostgreSQL thread stopped during start")),
        }
        let listening = listener::start(&backend.runtime, backend.inner.clone(), backend.bus.clone(), outbox);
        match listening.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into_storage(&backend.inner.target)),
            Err(_) => return Err(StorageError::permanent("the PostgreSQL listener stopped during start")),
        }
        debug!(target: "datastorer::postgres", target = %backend.inner.target, schema = %backend.inner.cfg.schema,
            "PostgreSQL backend ready");
        Ok(backend)
    }

    /// The schema this backend uses.
    pub fn schema(&self) -> &str {
        &self.inner.cfg.schema
    }

    /// The random id in this backend's connection names: its connections
    /// show in `pg_stat_activity` as `datastorer-writer-ID`,
    /// `datastorer-reader-ID` and `datastorer-listen-ID`.
    pub fn connection_id(&self) -> &str {
        &self.inner.instance
    }

    /// The address the process running under `owner` advertised
    /// (`PostgresConfig::advertise_url`), if any.
    pub fn advertised_url(&self, owner: &str) -> Result<Option<String>, StorageError> {
        let inner = self.inner.clone();
        let owner = owner.to_owned();
        self.call("owner lookup", async move {
            let conn = inner.reader().await?;
            let q = format!("SELECT advertise_url FROM \"{}\".owners WHERE owner_id = $1", inner.cfg.schema);
            let rows = conn.client.query(&q, &[&owner]).await?;
            Ok(match rows.first() {
                Some(r) => r.try_get(0)?,
                None => None,
            })
        })
    }

    /// The other processes of the fleet that are alive (their heartbeat
    /// within the last `within`) and advertise a URL: (owner id, URL).
    pub fn live_peers(&self, within: std::time::Duration) -> Result<Vec<(String, String)>, StorageError> {
        let inner = self.inner.clone();
        let secs = within.as_secs_f64();
        self.call("fleet lookup", async move {
            let conn = inner.reader().await?;
            let q = format!(
                "SELECT owner_id, advertise_url FROM \"{}\".owners
                 WHERE advertise_url IS NOT NULL AND heartbeat_at > now() - make_interval(secs => $1)
                 ORDER BY owner_id",
                inner.cfg.schema
            );
            let rows = conn.client.query(&q, &[&secs]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push((r.try_get(0)?, r.try_get(1)?));
            }
            Ok(out)
        })
    }

    /// Runs `fut` on the backend's runtime and waits for it (from any
    /// thread that is not the runtime's own). `None`: the runtime stopped.
    fn block_on_runtime<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }

    /// Runs a write on the runtime within the request timeout. A write
    /// that times out has an unknown fate: the next flush becomes a
    /// barrier, its writer connection is replaced, and `timed_out` turns
    /// the error into the write's answer. `None`: the runtime is gone.
    fn write_within_timeout<T: Send + 'static>(
        &self,
        write: impl Future<Output = T> + Send + 'static,
        timed_out: impl FnOnce(StorageError) -> T + Send + 'static,
    ) -> Option<T> {
        let inner = self.inner.clone();
        let timeout = self.inner.cfg.request_timeout;
        self.block_on_runtime(async move {
            match tokio::time::timeout(timeout, write).await {
                Ok(r) => r,
                // The write's connection was dropped with it (`WriterSlot`).
                Err(_) => {
                    inner.needs_barrier.store(true, Ordering::SeqCst);
                    timed_out(StorageError::transient(format!("a write took longer than {timeout:?}")))
                }
            }
        })
    }

    /// Runs one backend call with the request timeout.
    fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, PgFailure>> + Send + 'static,
    ) -> Result<T, StorageError> {
        let timeout = self.inner.cfg.request_timeout;
        let outcome = self.block_on_runtime(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(PgFailure::transient_reconnect(format!("{what} took longer than {timeout:?}"))),
            }
        });
        match outcome {
            Some(Ok(v)) => Ok(v),
            Some(Err(f)) => {
                if f.reconnect {
                    // The next call reconnects.
                    let inner = self.inner.clone();
                    let _ = self.block_on_runtime(async move { *inner.reader.lock().await = None });
                }
                Err(f.error)
            }
            None => Err(StorageError::transient("the PostgreSQL backend is shutting down")),
        }
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while self.inner.unsent_notices.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Dropping the runtime closes every connection (and so releases
            // the owner advisory locks) before this returns.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let row_key = RowKey::parse(key).ok_or_else(|| unsupported_key(key))?;
        let inner = self.inner.clone();
        self.call("get", async move { inner.get(row_key).await })
    }

    fn get_many(&self, keys: &[&[u8]]) -> Vec<Result<Option<Vec<u8>>, StorageError>> {
        let mut records = Vec::new();
        let mut results: Vec<Option<Result<Option<Vec<u8>>, StorageError>>> = vec![None; keys.len()];
        let mut positions = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match RowKey::parse(k) {
                Some(RowKey::Record { store, key }) => {
                    records.push((store, key));
                    positions.push(i);
                }
                Some(RowKey::Meta(_) | RowKey::Version { .. } | RowKey::UserKey { .. }) => {
                    results[i] = Some(self.get(k))
                }
                None => results[i] = Some(Err(unsupported_key(k))),
            }
        }
        if !records.is_empty() {
            let inner = self.inner.clone();
            match self.call("get_many", async move { inner.get_many(records).await }) {
                Ok(values) => {
                    for (&i, v) in positions.iter().zip(values) {
                        results[i] = Some(Ok(v));
                    }
                }
                Err(e) => {
                    for &i in &positions {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(StorageError::permanent("no result")))).collect()
    }

    fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, StorageError>> {
        if ops.is_empty() {
            return Vec::new();
        }
        let inner = self.inner.clone();
        let (owned, n) = (ops.to_vec(), ops.len());
        let outcome =
            self.write_within_timeout(async move { write_batch(&inner, owned).await }, move |e| vec![Err(e); n]);
        outcome.unwrap_or_else(|| vec![Err(StorageError::transient("the PostgreSQL backend is shutting down")); n])
    }

    fn write_all(&self, ops: &[WriteOp]) -> Option<Result<AllOrNothing, StorageError>> {
        let inner = self.inner.clone();
        let owned = ops.to_vec();
        let outcome = self.write_within_timeout(async move { write_all(&inner, owned).await }, Err);
        Some(outcome.unwrap_or_else(|| Err(StorageError::transient("the PostgreSQL backend is shutting down"))))
    }

    fn scan_prefix(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeyValues, StorageError> {
        let shape = ScanShape::parse(prefix).ok_or_else(|| {
            StorageError::permanent(format!(
                "scan prefix {:?} is not a store, key-prefix or meta prefix",
                String::from_utf8_lossy(prefix)
            ))
        })?;
        let inner = self.inner.clone();
        let start_after = start_after.map(<[u8]>::to_vec);
        self.call("scan", async move { inner.scan(shape, start_after, limit).await })
    }

    fn scan_sizes(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeySizes, StorageError> {
        if let Some(shape) =
            ScanShape::parse(prefix).filter(|s| matches!(s, ScanShape::Store(_) | ScanShape::StoreVersions(_)))
        {
            let inner = self.inner.clone();
            let start_after = start_after.map(<[u8]>::to_vec);
            let sized = self.call("scan", async move {
                match inner.scan_sizes(&shape, start_after.as_deref(), limit).await {
                    Some(r) => r,
                    None => Ok(Vec::new()),
                }
            })?;
            return Ok(sized);
        }
        Ok(self.scan_prefix(prefix, start_after, limit)?.into_iter().map(|(k, v)| (k, v.len() as u64)).collect())
    }

    /// `VACUUM` of the tables that hold documents and user ids: PostgreSQL
    /// then prunes the dead tuples out of their heap pages (measured: a
    /// deleted document's bytes were gone from the table's file after it).
    /// The write-ahead log keeps them until its segments are recycled.
    fn reclaim_deleted(&self) -> Result<bool, StorageError> {
        let inner = self.inner.clone();
        self.call("vacuum", async move {
            let conn = inner.reader().await?;
            let s = format!("\"{}\"", inner.cfg.schema);
            conn.client.batch_execute(&format!("VACUUM {s}.records, {s}.versions, {s}.user_keys, {s}.meta")).await?;
            Ok(true)
        })
    }

    /// One `REPEATABLE READ` transaction over records, meta values,
    /// versions and the user-id index: consistent across every process
    /// writing meanwhile.
    fn snapshot(&self, sink: &mut crate::storage::SnapshotSink<'_>) -> Option<Result<u64, StorageError>> {
        use crate::storage::history::{USER_INDEX_PREFIX, VERSIONS_PREFIX};
        let mut count = 0u64;
        let prefixes: [&[u8]; 4] = [crate::storage::RECORDS_PREFIX, b"m\0", VERSIONS_PREFIX, USER_INDEX_PREFIX];
        let done = self.scan_snapshot_of(&prefixes, |k, v| {
            count += 1;
            // The index rows are keys only.
            sink(k, Some(v))
        });
        Some(match done {
            Ok(()) => Ok(count),
            Err(read::SnapshotError::Storage(e)) => Err(e),
            Err(read::SnapshotError::Stopped(m)) => Err(StorageError::permanent(m)),
        })
    }

    fn flush(&self) -> Result<(), StorageError> {
        if !self.inner.needs_barrier.load(Ordering::SeqCst) {
            return Ok(());
        }
        let inner = self.inner.clone();
        self.call("flush barrier", async move { inner.barrier().await })
    }

    fn notices(&self) -> &NoticeBus {
        &self.bus
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            shared_across_processes: true,
            prefers_own_thread: true,
            durable_on_write: true,
            parallel_writers: self.inner.writers.len(),
            writes_all_or_nothing: true,
            indexes_records: true,
        }
    }

    fn clock(&self) -> Option<Arc<dyn BackendClock>> {
        Some(self.inner.clock.clone())
    }

    fn claim_owner(&self, owner: &str) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let owner = owner.to_owned();
        match self.block_on_runtime(listener::claim(inner, owner)) {
            Some(r) => r,
            None => Err(StorageError::permanent("the PostgreSQL backend is shutting down")),
        }
    }
}

fn unsupported_key(key: &[u8]) -> StorageError {
    StorageError::permanent(format!(
        "storage key {:?} is not a record or meta key; PostgreSQL stores only those",
        String::from_utf8_lossy(key)
    ))
}
