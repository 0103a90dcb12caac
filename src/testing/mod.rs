//! A test harness for applications built on datastorer (feature `harness`):
//! several nodes with distinct owner ids over one fault-injecting in-memory
//! backend, crashes and restarts, and helpers to drive autosave, lease
//! expiry and the queue from a test — under tokio's paused clock, so time
//! moves only when the test says so.
//!
//! ```no_run
//! # use datastorer::testing::Cluster;
//! # use datastorer::StoreSpec;
//! #[actix_rt::test]
//! async fn the_profile_survives_a_crash() {
//!     tokio::time::pause();
//!     let mut cluster = Cluster::start(2).await;
//!     let store = cluster.node(0).store("p", StoreSpec::new(serde_json::json!({"coins": 0}))).unwrap();
//!     // ... open, update, save, then:
//!     cluster.crash(0).await;
//!     cluster.expire_lease("p", "k");
//!     // node 1 can take the key now.
//! }
//! ```
//!
//! Must not: be used by the engine itself.

pub mod conformance;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::storage::memory::MemoryBackend;
use crate::storage::{storage_key, Record, RecordHeader};
use crate::{Config, Datastorer};

pub use crate::storage::memory::{AppliedWrite, MemoryStats, OpKind};
pub use crate::ErrorKind;

/// Several `Datastorer` nodes sharing one [`MemoryBackend`].
pub struct Cluster {
    backend: Arc<MemoryBackend>,
    nodes: Vec<Datastorer>,
    configs: Vec<Config>,
}

/// The config a test node starts from: owner id `owner`, signal handling
/// off, 10 ms base backoff, default intervals (30 s autosave, 90 s lease).
pub fn config(backend: &Arc<MemoryBackend>, owner: impl Into<String>) -> Config {
    let mut c = Config::backend(backend.clone()).owner_id(owner);
    c.handle_signals = false;
    c.queue.retry.base_delay = Duration::from_millis(10);
    c
}

/// The config of cluster node `i`: [`config`] with owner id `node-{i}`.
pub fn node_config(backend: &Arc<MemoryBackend>, i: usize) -> Config {
    config(backend, format!("node-{i}"))
}

/// One node over `backend` with [`config`]. Panics if it cannot start (a
/// test setup error).
pub async fn node(backend: &Arc<MemoryBackend>, owner: impl Into<String>) -> Datastorer {
    Datastorer::start(config(backend, owner)).await.expect("test node starts")
}

/// The stored record of `key` in `store`, straight from the backend (no
/// queue, no cache): `None` when absent. Panics on a record that does not
/// decode, so a test that expects absence cannot pass on corruption; read
/// [`MemoryBackend::raw_get`] to look at corrupt bytes.
#[track_caller]
pub fn stored(backend: &MemoryBackend, store: &str, key: &str) -> Option<Record> {
    backend
        .raw_get(&storage_key(store, key))
        .map(|b| Record::decode(&b).unwrap_or_else(|e| panic!("stored record of {store}/{key} does not decode: {e}")))
}

/// The stored document of `key` as JSON. Panics when absent or not JSON.
#[track_caller]
pub fn stored_json(backend: &MemoryBackend, store: &str, key: &str) -> serde_json::Value {
    let r = stored(backend, store, key).unwrap_or_else(|| panic!("no stored record of {store}/{key}"));
    serde_json::from_slice(&r.data).unwrap_or_else(|e| panic!("stored data of {store}/{key} is not JSON: {e}"))
}

impl Cluster {
    /// `n` nodes with [`node_config`].
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, |_, _| {}).await
    }

    /// `n` nodes, each config adjusted by `tune(index, &mut config)`.
    /// Panics if a node cannot start (a test setup error).
    pub async fn start_with(n: usize, tune: impl Fn(usize, &mut Config)) -> Cluster {
        let backend = Arc::new(MemoryBackend::new());
        let mut nodes = Vec::new();
        let mut configs = Vec::new();
        for i in 0..n {
            let mut c = node_config(&backend, i);
            tune(i, &mut c);
            nodes.push(Datastorer::start(c.clone()).await.expect("cluster node starts"));
            configs.push(c);
        }
        Cluster { backend, nodes, configs }
    }

    /// The shared backend (fault injection, counters, history).
    pub fn backend(&self) -> &Arc<MemoryBackend> {
        &self.backend
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Datastorer {
        &self.nodes[i]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Kills node `i` as `kill -9` would: no save, no release; its leases
    /// stay in storage. Writes the backend accepted but never flushed are
    /// lost only if you also call [`MemoryBackend::lose_unflushed`].
    pub async fn crash(&mut self, i: usize) {
        crash(&self.nodes[i]).await;
    }

    /// Starts node `i` again with the same config (and owner id, so it
    /// reclaims its own stale leases at once).
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i] = Datastorer::start(self.configs[i].clone()).await.expect("cluster node restarts");
    }

    /// Moves the paused clock forward and lets every timer that fell due run.
    pub async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    /// Runs the autosave pass on every node now and waits until every queue
    /// has drained.
    pub async fn autosave_now(&self) {
        for n in &self.nodes {
            n.autosave_now().await;
        }
        self.drain().await;
    }

    /// Waits until every node's queue is empty.
    pub async fn drain(&self) {
        for _ in 0..4 {
            for n in &self.nodes {
                n.wait_for_empty_queue().await;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Makes the stored lease of `key` lapse now (as if its holder had been
    /// silent for a whole lease TTL). The epoch and data are kept.
    pub fn expire_lease(&self, store: &str, key: &str) -> bool {
        let k = storage_key(store, key);
        let Some(bytes) = self.backend.raw_get(&k) else { return false };
        let Ok(mut rec) = Record::decode(&bytes) else { return false };
        let Some(lease) = rec.lease.as_mut() else { return false };
        lease.expires_at_ms = 0;
        self.backend.raw_put(&k, &rec.encode());
        true
    }

    /// The stored record of `key` (see [`stored`]: `None` when absent,
    /// a panic when corrupt).
    #[track_caller]
    pub fn stored(&self, store: &str, key: &str) -> Option<Record> {
        stored(&self.backend, store, key)
    }

    /// The stored document of `key` as `T`.
    pub fn stored_doc<T: DeserializeOwned>(&self, store: &str, key: &str) -> Option<T> {
        self.stored(store, key).and_then(|r| serde_json::from_slice(&r.data).ok())
    }

    /// The stored (epoch, revision) of `key`.
    pub fn stored_header(&self, store: &str, key: &str) -> Option<RecordHeader> {
        self.stored(store, key).map(|r| r.header)
    }

    /// Asserts the stored document of `key` equals `expected`.
    #[track_caller]
    pub fn assert_stored<T: DeserializeOwned + PartialEq + std::fmt::Debug>(
        &self,
        store: &str,
        key: &str,
        expected: &T,
    ) {
        let got: Option<T> = self.stored_doc(store, key);
        assert_eq!(got.as_ref(), Some(expected), "stored document of {store}/{key}");
    }
}

/// A [`MemoryBackend`] seen through a hook on every write batch, claiming
/// the capabilities a test gives it: a backend whose clock trails the
/// engine's (rewrite `Precondition::Acquire`'s `now_ms`), one that records
/// which thread writes, or one that claims to be a disk. Everything else is
/// the inner backend's, shared with whoever else holds it.
pub struct Intercepted {
    inner: Arc<MemoryBackend>,
    on_write: OnWrite,
    capabilities: Option<crate::storage::Capabilities>,
}

type OnWrite = Box<dyn Fn(&mut [crate::storage::WriteOp]) + Send + Sync>;

impl Intercepted {
    /// `inner`, with `on_write` seeing (and free to change) every batch
    /// before it reaches `inner`.
    pub fn new(
        inner: Arc<MemoryBackend>,
        on_write: impl Fn(&mut [crate::storage::WriteOp]) + Send + Sync + 'static,
    ) -> Self {
        Self { inner, on_write: Box::new(on_write), capabilities: None }
    }

    /// Claims `capabilities` instead of the memory backend's.
    pub fn claiming(mut self, capabilities: crate::storage::Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }
}

impl crate::storage::Backend for Intercepted {
    fn name(&self) -> &'static str {
        "intercepted-memory"
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, crate::StorageError> {
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[&[u8]]) -> Vec<Result<Option<Vec<u8>>, crate::StorageError>> {
        self.inner.get_many(keys)
    }
    fn write_batch(
        &self,
        ops: &[crate::storage::WriteOp],
    ) -> Vec<Result<crate::storage::WriteOutcome, crate::StorageError>> {
        let mut ops = ops.to_vec();
        (self.on_write)(&mut ops);
        self.inner.write_batch(&ops)
    }
    fn write_all(
        &self,
        ops: &[crate::storage::WriteOp],
    ) -> Option<Result<crate::storage::AllOrNothing, crate::StorageError>> {
        let mut ops = ops.to_vec();
        (self.on_write)(&mut ops);
        self.inner.write_all(&ops)
    }
    fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<crate::storage::KeyValues, crate::StorageError> {
        self.inner.scan_prefix(prefix, start_after, limit)
    }
    fn flush(&self) -> Result<(), crate::StorageError> {
        self.inner.flush()
    }
    fn is_blocking(&self) -> bool {
        self.inner.is_blocking()
    }
    fn notices(&self) -> &crate::storage::NoticeBus {
        self.inner.notices()
    }
    fn capabilities(&self) -> crate::storage::Capabilities {
        self.capabilities.unwrap_or_else(|| self.inner.capabilities())
    }
    fn floor_cache(&self) -> Option<&crate::storage::FloorCache> {
        self.inner.floor_cache()
    }
    fn clock(&self) -> Option<Arc<dyn crate::storage::BackendClock>> {
        self.inner.clock()
    }
    fn claim_owner(&self, owner: &str) -> Result<(), crate::StorageError> {
        self.inner.claim_owner(owner)
    }
}

/// Publishes `notice` on `bus` as the engine would (the bus's `publish` is
/// the engine's own), for tests of notice routing and transports.
pub fn publish(bus: &crate::storage::NoticeBus, notice: crate::storage::Notice) {
    bus.publish(notice);
}

/// Simulates a crash of `ds`: every key actor stops without saving or
/// releasing, queued requests are dropped (a batch already on the disk
/// finishes, as it would in a real crash). Leases stay in storage until
/// they lapse or the same owner id opens the keys again. A test hook, so it
/// lives here and not on `Datastorer`.
pub async fn crash(ds: &crate::Datastorer) {
    ds.abort().await;
}

/// Seeded, reproducible randomness for randomized tests (xorshift64, the
/// generator the memory backend's fault fractions use too). Give it an odd
/// seed: a seed of 0 stays 0.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        crate::storage::xorshift64(&mut self.0)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
