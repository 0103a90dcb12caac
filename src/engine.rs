//! State shared by every handle of one `Datastorer` instance: configuration,
//! owner id, backend, queue address, registry of stores, clock.
//!
//! Must not: hold per-key state (key actors own it) or call the backend
//! directly (everything goes through the queue).

use std::sync::Arc;

use actix::{Addr, Arbiter, ArbiterHandle};
use tokio::sync::oneshot;

use crate::actors::queue::QueueActor;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, KeyId};
use crate::messages::queue::{Operation, QueueFailure, Reply, Submit};
use crate::registry::Registry;
use crate::storage::{AllOrNothing, Backend, KeyValues, StorageError, StorageKey, WriteOp, WriteOutcome};
use crate::types::Priority;

pub(crate) struct Engine {
    pub config: Config,
    pub owner: Arc<str>,
    pub backend: Arc<dyn Backend>,
    pub queue: Addr<QueueActor>,
    /// The queue's own thread, when it has one; stopped with the engine.
    queue_thread: Option<Arbiter>,
    pub registry: Arc<Registry>,
    pub clock: Clock,
    pub arbiter: ArbiterHandle,
    /// Failed saves by reason, for metrics.
    pub save_failures: crate::save_failures::SaveFailures,
    /// Keys fallen asleep and woken since start (`Datastorer::hibernation`).
    pub fell_asleep: std::sync::atomic::AtomicU64,
    pub woken: std::sync::atomic::AtomicU64,
    /// Keys asleep now (changed under each key's cell lock), so counting
    /// them does not visit a million cells.
    pub asleep: std::sync::atomic::AtomicUsize,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(thread) = &self.queue_thread {
            thread.stop();
        }
    }
}

impl Engine {
    pub(crate) fn new(
        config: Config,
        backend: Arc<dyn Backend>,
        queue: Addr<QueueActor>,
        queue_thread: Option<Arbiter>,
        registry: Arc<Registry>,
        clock: Clock,
        arbiter: ArbiterHandle,
    ) -> Self {
        let owner = Arc::from(config.owner_id.as_str());
        Self {
            config,
            owner,
            backend,
            queue,
            queue_thread,
            registry,
            clock,
            arbiter,
            save_failures: Default::default(),
            fell_asleep: Default::default(),
            woken: Default::default(),
            asleep: Default::default(),
        }
    }

    /// After when a lease expiring at `expires_at_ms` wants renewing: once
    /// less than half of it is left (the autosave tick's rule, awake or
    /// asleep).
    pub(crate) fn renew_at_ms(&self, expires_at_ms: u64) -> u64 {
        expires_at_ms.saturating_sub(self.config.lease_ttl.as_millis() as u64 / 2)
    }

    /// Sends one request through the queue; answers its reply.
    fn request(
        &self,
        op: Operation,
        lane: Priority,
    ) -> impl std::future::Future<Output = Result<Reply, QueueFailure>> + 'static {
        let (reply, rx) = oneshot::channel();
        self.queue.do_send(Submit { op, lane, reply });
        async move { rx.await.unwrap_or(Err(QueueFailure::Stopped)) }
    }

    /// Sends `op` and answers what `pick` takes from its reply: `asked`
    /// names the operation should the queue answer with another kind.
    fn typed<T: 'static>(
        &self,
        store: &Arc<str>,
        key: &Arc<str>,
        op: Operation,
        lane: Priority,
        asked: &'static str,
        pick: fn(Reply) -> Result<T, Reply>,
    ) -> impl std::future::Future<Output = Result<T, Error>> + 'static {
        let request = self.request(op, lane);
        let (store, key) = (store.clone(), key.clone());
        async move {
            match request.await {
                Ok(reply) => pick(reply).map_err(|other| mismatch(&store, &key, asked, &other)),
                Err(f) => Err(queue_error(&store, &key, f)),
            }
        }
    }

    // The typed ways to the queue: each operation answers its own result,
    // with queue failures already turned into the public error of
    // `store`/`key` (the record a request is for, which for a meta key such
    // as an epoch floor is the record that needed it). Only the queue can
    // pair an answer with the wrong operation, and it never does;
    // `mismatch` names that bug plainly instead of passing it off as "not
    // running".

    /// Reads `storage_key` through the queue.
    pub(crate) fn get(
        &self,
        store: &Arc<str>,
        key: &Arc<str>,
        storage_key: StorageKey,
        lane: Priority,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, Error>> + 'static {
        self.typed(store, key, Operation::Get(storage_key), lane, "get", |r| match r {
            Reply::Value(v) => Ok(v),
            other => Err(other),
        })
    }

    /// Applies `op` (a conditional write, or a delete) through the queue.
    pub(crate) fn write(
        &self,
        store: &Arc<str>,
        key: &Arc<str>,
        op: WriteOp,
        lane: Priority,
    ) -> impl std::future::Future<Output = Result<WriteOutcome, Error>> + 'static {
        self.typed(store, key, Operation::Write(op), lane, "write", |r| match r {
            Reply::Written(outcome) => Ok(outcome),
            other => Err(other),
        })
    }

    /// Writes every op of `ops` in one all-or-nothing step, through the
    /// queue (the request is the first op's key's). Only for a backend
    /// whose capabilities say it can.
    pub(crate) fn write_all(
        &self,
        store: &Arc<str>,
        key: &Arc<str>,
        ops: Vec<WriteOp>,
        lane: Priority,
    ) -> impl std::future::Future<Output = Result<AllOrNothing, Error>> + 'static {
        self.typed(store, key, Operation::WriteAll { ops }, lane, "write_all", |r| match r {
            Reply::AllOrNothing(outcome) => Ok(outcome),
            other => Err(other),
        })
    }

    /// Every key and value under `prefix`, read page by page (for a prefix
    /// known to be small: one key's history, one user's index entries).
    pub(crate) async fn scan_all(
        &self,
        store: &Arc<str>,
        label: &Arc<str>,
        prefix: Vec<u8>,
    ) -> Result<KeyValues, Error> {
        const PAGE: usize = 512;
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(store, label, prefix.clone(), after.take(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|(k, _)| k.clone());
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// The record of `key` in `store`, decoded (`None`: absent; a corrupt
    /// one is an error that names it, and is left as it is).
    pub(crate) async fn read_record(&self, store: &str, key: &str) -> Result<Option<crate::storage::Record>, Error> {
        let (s, k): (Arc<str>, Arc<str>) = (Arc::from(store), Arc::from(key));
        match self.get(&s, &k, StorageKey::record(&s, &k), Priority::Normal).await? {
            None => Ok(None),
            Some(bytes) => crate::storage::Record::decode(&bytes)
                .map(Some)
                .map_err(|source| Error::CorruptRecord { at: crate::error::KeyId::new(store, key), source }),
        }
    }

    /// Scans keys under `prefix` after `start_after`, at most `limit`;
    /// `label` names the scan in errors (as the key does elsewhere).
    pub(crate) fn scan(
        &self,
        store: &Arc<str>,
        label: &Arc<str>,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<KeyValues, Error>> + 'static {
        let op = Operation::Scan { prefix: prefix.into(), start_after, limit };
        self.typed(store, label, op, Priority::Normal, "scan", |r| match r {
            Reply::Scanned(rows) => Ok(rows),
            other => Err(other),
        })
    }

    /// Keys under `prefix` after `start_after` with their value lengths,
    /// at most `limit`, through the queue like a scan.
    pub(crate) fn scan_sizes(
        &self,
        store: &Arc<str>,
        label: &Arc<str>,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<crate::storage::KeySizes, Error>> + 'static {
        let op = Operation::ScanSizes { prefix: prefix.into(), start_after, limit };
        self.typed(store, label, op, Priority::Normal, "scan_sizes", |r| match r {
            Reply::Sized(rows) => Ok(rows),
            other => Err(other),
        })
    }
}

/// A queue answer of the wrong kind: a bug in the queue, reported as such.
fn mismatch(store: &str, key: &str, asked: &'static str, got: &Reply) -> Error {
    let got = match got {
        Reply::Value(_) => "a value",
        Reply::Written(_) => "a write outcome",
        Reply::Scanned(_) => "scanned rows",
        Reply::Sized(_) => "scanned sizes",
        Reply::AllOrNothing(_) => "an all-or-nothing outcome",
    };
    Error::Storage {
        at: KeyId::new(store.to_owned(), key.to_owned()),
        operation: asked,
        attempts: 1,
        source: StorageError::permanent(format!("internal error: the queue answered a {asked} with {got}")),
    }
}

/// Turns a queue failure into the public error for `store`/`key`.
fn queue_error(store: &str, key: &str, failure: QueueFailure) -> Error {
    match failure {
        QueueFailure::Storage { error, attempts, operation } => {
            Error::Storage { at: KeyId::new(store.to_owned(), key.to_owned()), operation, attempts, source: error }
        }
        QueueFailure::Cancelled => Error::Cancelled { at: KeyId::new(store.to_owned(), key.to_owned()) },
        QueueFailure::Stopped => Error::NotRunning,
    }
}
