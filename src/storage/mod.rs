//! Storage: the `Backend` trait every engine implements, the record envelope,
//! and the built-in backends (sled, the default; in-memory; PostgreSQL,
//! shared by several processes, feature `postgres`).
//!
//! Owns: byte-level persistence, compare-and-swap preconditions (including
//! the lease-aware `Acquire`), durability (`flush`), the backend's clock and
//! capabilities, and the per-backend notice bus that carries lease hand-off
//! and change notifications between `Datastorer` instances sharing a
//! backend (across processes through a `NoticeTransport`).
//!
//! Must not: know about actors, the queue, typed documents or lease policy.
//! A backend is called only by the queue actor (and offline tools).

pub mod history;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod record;
pub mod sled_backend;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use thiserror::Error;
use tokio::sync::broadcast;

pub use record::{DecodeError, LeaseHolder, Record, RecordHeader, RecordIndex, RecordSummary};

/// How a storage failure should be treated by the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Worth retrying with backoff (I/O hiccup, lock timeout, connection reset).
    Transient,
    /// The backend asked us to slow down; retried with backoff.
    Throttled,
    /// Retrying cannot help (corruption, unsupported operation, full disk policy).
    Permanent,
}

/// Key/value pairs returned by a prefix scan, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Keys with the byte length of their values, in key order.
pub type KeySizes = Vec<(Vec<u8>, u64)>;

/// A failure reported by a backend. Two are equal when their kind and
/// message are (the underlying error is context, not identity).
#[derive(Debug, Clone, Error)]
#[error("{kind:?} storage error: {message}")]
pub struct StorageError {
    /// How the queue treats it.
    pub kind: ErrorKind,
    /// What went wrong, for humans.
    pub message: String,
    /// The backend's own error, when there is one (`Error::source`).
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for StorageError {}

impl StorageError {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }
    /// A retryable failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// A throttling failure (retryable).
    pub fn throttled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Throttled, message)
    }
    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }
    /// The same failure, keeping the backend's own error as its source.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
    /// Whether the queue should retry it.
    pub fn is_retryable(&self) -> bool {
        self.kind != ErrorKind::Permanent
    }
}

/// What must be true of the stored value for a write to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally (administrative delete, import).
    Any,
    /// Only if no value is stored under the key.
    Absent,
    /// Only if the stored record's header is exactly this (fencing check).
    Header(RecordHeader),
    /// Taking a lease: the stored header is exactly `expected` **and** the
    /// stored lease is absent, held by the owner named in the new value, or
    /// expired. Expiry is decided by the backend's clock where it has one
    /// (PostgreSQL: database time, so a process with a wrong clock cannot
    /// take a live lease), else by `now_ms`. A refusal for a live lease is
    /// a `Conflict` whose `current` is `expected`.
    Acquire {
        /// The header the acquirer read.
        expected: RecordHeader,
        /// The acquirer's time, for backends without a clock of their own.
        now_ms: u64,
    },
}

impl Precondition {
    /// Whether `current` (the stored bytes, if any) lets `new_value` be
    /// written. A stored value whose header is unreadable satisfies only
    /// `Any`, so a corrupt record is never overwritten by a session.
    pub fn holds(&self, current: Option<&[u8]>, new_value: Option<&[u8]>) -> bool {
        if !self.holds_for_header(current.map(RecordHeader::peek)) {
            return false;
        }
        match self {
            Precondition::Acquire { now_ms, .. } => {
                lease_may_be_taken(current.and_then(RecordIndex::peek).as_ref(), new_value, *now_ms)
            }
            _ => true,
        }
    }

    /// The header part of [`Precondition::holds`]: `None` when nothing is
    /// stored, `Some(None)` when a value is stored whose header is
    /// unreadable. For `Acquire` the lease part still has to be checked
    /// (see [`Precondition::needs_stored_value`]).
    pub fn holds_for_header(&self, current: Option<Option<RecordHeader>>) -> bool {
        match (self, current) {
            (Precondition::Any, _) => true,
            (Precondition::Absent, None) => true,
            (Precondition::Absent, Some(_)) => false,
            (Precondition::Header(_) | Precondition::Acquire { .. }, None) => false,
            (Precondition::Header(h), Some(stored)) | (Precondition::Acquire { expected: h, .. }, Some(stored)) => {
                stored == Some(*h)
            }
        }
    }

    /// Whether checking this precondition needs the stored value itself,
    /// not only its header (a backend answering from a header cache must
    /// read the value for these).
    pub fn needs_stored_value(&self) -> bool {
        matches!(self, Precondition::Acquire { .. })
    }
}

/// The lease rule of [`Precondition::Acquire`] for backends that decide it
/// with the acquirer's clock: the stored lease is absent (or unreadable),
/// held by the owner the new value names, or expired at `now_ms`.
fn lease_may_be_taken(stored: Option<&RecordIndex>, new_value: Option<&[u8]>, now_ms: u64) -> bool {
    let Some(stored) = stored else { return true };
    let Some(owner) = stored.lease_owner.as_deref() else { return true };
    if stored.lease_expires_ms <= now_ms {
        return true;
    }
    new_value.and_then(RecordIndex::peek).and_then(|n| n.lease_owner).as_deref() == Some(owner)
}

/// A storage key as bytes (`d\0{store}\0{key}` for a record, `m\0…` for
/// meta), with the record's store and key kept typed beside them, so a
/// backend that stores them apart (PostgreSQL's columns) never splits the
/// bytes back into strings.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct StorageKey {
    bytes: Vec<u8>,
    record: Option<(Arc<str>, Arc<str>)>,
}

impl StorageKey {
    /// The key of record `key` in `store`.
    pub fn record(store: &Arc<str>, key: &Arc<str>) -> Self {
        Self { bytes: storage_key(store, key), record: Some((store.clone(), key.clone())) }
    }

    /// The bytes, as sled and the memory backend index them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record's store and key; `None` for a meta or foreign key.
    pub fn record_parts(&self) -> Option<(&Arc<str>, &Arc<str>)> {
        self.record.as_ref().map(|(s, k)| (s, k))
    }
}

impl From<Vec<u8>> for StorageKey {
    fn from(bytes: Vec<u8>) -> Self {
        let record = split_storage_key(&bytes).map(|(s, k)| (Arc::from(s), Arc::from(k)));
        Self { bytes, record }
    }
}

impl From<&[u8]> for StorageKey {
    fn from(bytes: &[u8]) -> Self {
        bytes.to_vec().into()
    }
}

impl AsRef<[u8]> for StorageKey {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::ops::Deref for StorageKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.bytes))
    }
}

/// One conditional write (or delete, when `value` is `None`).
#[derive(Clone, PartialEq, Eq)]
pub struct WriteOp {
    /// The storage key.
    pub key: StorageKey,
    /// What must hold for the write to apply.
    pub precondition: Precondition,
    /// The new value; `None` deletes. Shared: cloning an op (a retry, a
    /// backend's own copy) does not copy the record.
    pub value: Option<Bytes>,
    /// What the writer knows of the record in `value` (header, lease, user
    /// ids): a backend that indexes them uses this instead of decoding the
    /// value. `None`: the backend reads them from the value. When given it
    /// must agree with the value (the conformance suite and debug builds
    /// check it).
    pub index: Option<RecordIndex>,
    /// Kept in the record's history in the same atomic step as the write
    /// (see [`history`]): for a save the same bytes as `value`, for a
    /// delete its tombstone. `None`: the write leaves no version (a lease
    /// renewal, a store without history).
    pub version: Option<Bytes>,
}

/// Whether `a` and `b` are the same bytes in memory (not merely equal):
/// a save's version is its value's own `Bytes`, which a backend may then
/// write or copy once for both.
pub(crate) fn same_buffer(a: &[u8], b: &[u8]) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

impl WriteOp {
    /// An op whose index, if the backend needs one, is read from the value.
    pub fn new(key: impl Into<StorageKey>, precondition: Precondition, value: Option<impl Into<Bytes>>) -> Self {
        Self { key: key.into(), precondition, value: value.map(Into::into), index: None, version: None }
    }

    /// The same op, keeping its value (a save) in the record's history.
    pub fn keeping_version(mut self) -> Self {
        self.version = self.value.clone();
        self
    }

    /// An empty op, standing in for one moved out of a request (no
    /// allocation).
    pub(crate) fn placeholder() -> Self {
        Self { key: StorageKey::default(), precondition: Precondition::Any, value: None, index: None, version: None }
    }

    /// The record index of the value: the one given, else read from it.
    pub fn value_index(&self) -> Option<std::borrow::Cow<'_, RecordIndex>> {
        match (&self.index, &self.value) {
            (Some(i), _) => Some(std::borrow::Cow::Borrowed(i)),
            (None, Some(v)) => RecordIndex::peek(v).map(std::borrow::Cow::Owned),
            (None, None) => None,
        }
    }
}

impl fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOp")
            .field("key", &self.key)
            .field("precondition", &self.precondition)
            .field("value_len", &self.value.as_ref().map(Bytes::len))
            .field("version_len", &self.version.as_ref().map(Bytes::len))
            .finish()
    }
}

/// The result of one conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The precondition held and the value was written (durable once
    /// [`Backend::flush`] returns; some backends make it durable earlier).
    Applied,
    /// The precondition failed; the header of what is stored, if readable.
    Conflict {
        /// Header of the stored value (`None` when absent or unreadable).
        current: Option<RecordHeader>,
    },
}

/// A notification between instances sharing a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Store name.
    pub store: String,
    /// Key within the store.
    pub key: String,
    /// What happened.
    pub kind: NoticeKind,
}

/// How a session that cleared its lease ended, as change notices and
/// feeds report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// Saved and released by its holder.
    Released,
    /// Closed by its holder without saving.
    Closed,
    /// Taken by another holder while live.
    Stolen,
    /// Saved and released because another holder asked for it.
    ReleaseRequested,
    /// Saved and released because its holder stopped renewing.
    Expired,
    /// Saved and released by a shutdown.
    Shutdown,
    /// Saved and released (or fenced) because an administrator restored
    /// the key to an earlier version.
    Restored,
    /// Released (keeping the data, without the erased user id) or ended
    /// (the data deleted) by an erasure by user id.
    Erased,
}

impl EndKind {
    /// Its name in feeds and on the wire between processes.
    pub fn as_str(self) -> &'static str {
        match self {
            EndKind::Released => "released",
            EndKind::Closed => "closed",
            EndKind::Stolen => "stolen",
            EndKind::ReleaseRequested => "release_requested",
            EndKind::Expired => "expired",
            EndKind::Shutdown => "shutdown",
            EndKind::Restored => "restored",
            EndKind::Erased => "erased",
        }
    }

    /// The kind named `name`; unknown names (a newer process) read as a release.
    pub fn from_name(name: &str) -> Self {
        [
            EndKind::Closed,
            EndKind::Stolen,
            EndKind::ReleaseRequested,
            EndKind::Expired,
            EndKind::Shutdown,
            EndKind::Restored,
            EndKind::Erased,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
        .unwrap_or(EndKind::Released)
    }
}

/// What a [`Notice`] announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind {
    /// `requester` asks `holder` to save and release the key.
    ReleaseRequested {
        /// Owner id of the current holder.
        holder: String,
        /// Owner id of the instance that wants the key.
        requester: String,
        /// Why: `ReleaseRequested` (another holder wants the key) or
        /// `Restored` (a restore of the key waits for it); the holder's
        /// session ends with the matching close reason.
        because: EndKind,
    },
    /// An administrator restored the record to an earlier version with a
    /// new epoch: a holder checks the record and, fenced, ends with
    /// `Restored`.
    Restored,
    /// The record was erased by user id: a holder checks the record and,
    /// finding it gone or fenced, ends with `Erased`.
    Erased,
    /// `by` took the lease from `holder` while it was live.
    Stolen {
        /// Owner id of the previous holder.
        holder: String,
        /// Owner id of the new holder.
        by: String,
    },
    /// The lease was cleared (release or close); waiters may retry now.
    Released {
        /// Revision of the record after the release.
        revision: u64,
        /// Why the session ended.
        how: EndKind,
    },
    /// A durable save (revision).
    Saved {
        /// Revision written.
        revision: u64,
    },
    /// The record was deleted (administrative).
    Deleted,
    /// Notices may have been lost (a cross-process transport reconnected):
    /// whoever waits for one re-reads what it waits on. `store` and `key`
    /// are empty.
    Resync,
}

/// Carries notices to the other processes sharing a backend (PostgreSQL:
/// NOTIFY). What it receives from them it hands to
/// [`NoticeBus::deliver_remote`].
pub trait NoticeTransport: Send + Sync + 'static {
    /// Sends a notice published in this process to every other process.
    /// Fire and forget: transports are lossy, consumers also poll.
    fn send(&self, notice: &Notice);
}

/// Broadcast bus for [`Notice`]s. Lossy by design: a lagging receiver misses
/// notices, so every consumer also polls (waiters re-read the record).
///
/// Lease notices (`ReleaseRequested`, `Stolen`) also go out on a control
/// channel of their own, so the supervisor that routes them is not woken by
/// every save, and a burst of saves cannot make it lag past one of them.
///
/// With a [`NoticeTransport`] (a backend shared across processes), every
/// notice published here is also sent to the other processes, and theirs
/// arrive through [`NoticeBus::deliver_remote`]. Local subscribers get local
/// notices at once, never through the network, so instances in one process
/// see each other even while the transport is down.
#[derive(Clone)]
pub struct NoticeBus {
    all: broadcast::Sender<Notice>,
    control: broadcast::Sender<Notice>,
    transport: Option<Arc<dyn NoticeTransport>>,
    /// Called with every notice on the thread that delivers it (see
    /// [`NoticeBus::add_sink`]); shared by the bus's clones, as the
    /// channels are.
    sinks: Arc<Sinks>,
}

#[derive(Default)]
struct Sinks {
    list: std::sync::RwLock<Vec<NoticeSink>>,
    /// `list` is not empty (read on every publish without the lock).
    any: std::sync::atomic::AtomicBool,
}

/// A function that hears every notice as it is delivered: see
/// [`NoticeBus::add_sink`].
pub type NoticeSink = Arc<dyn Fn(&Notice) + Send + Sync>;

impl Default for NoticeBus {
    fn default() -> Self {
        let (all, _) = broadcast::channel(4096);
        let (control, _) = broadcast::channel(1024);
        Self { all, control, transport: None, sinks: Default::default() }
    }
}

impl NoticeBus {
    /// A bus whose notices also travel to other processes.
    pub fn with_transport(transport: Arc<dyn NoticeTransport>) -> Self {
        Self { transport: Some(transport), ..Self::default() }
    }

    /// Publishes to every current subscriber (no-op without subscribers),
    /// and to other processes when the bus has a transport. Only the
    /// engine publishes (tests: `testing::publish`); a holder checks a
    /// notice against storage before acting on it.
    pub(crate) fn publish(&self, notice: Notice) {
        self.publish_unchecked(notice);
    }

    /// Announces a durable save of `key` at `revision` made outside the
    /// engine (an import tool writing records directly), so change feeds,
    /// caches and waiting opens in every process learn of it. Only `Saved`:
    /// it can wake readers, never end a session.
    pub fn publish_saved(&self, store: String, key: String, revision: u64) {
        self.publish_unchecked(Notice { store, key, kind: NoticeKind::Saved { revision } });
    }

    fn publish_unchecked(&self, notice: Notice) {
        if let Some(t) = &self.transport {
            t.send(&notice);
        }
        self.deliver_local(notice);
    }

    /// Hands a notice that came from another process to local subscribers.
    pub fn deliver_remote(&self, notice: Notice) {
        self.deliver_local(notice);
    }

    fn deliver_local(&self, notice: Notice) {
        if self.sinks.any.load(std::sync::atomic::Ordering::Acquire) {
            let sinks = self.sinks.list.read().unwrap_or_else(|p| p.into_inner());
            for sink in sinks.iter() {
                // A sink's panic must not take the publisher (a key actor,
                // the queue's answer) down with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(&notice))).is_err() {
                    tracing::error!(target: "datastorer::notices", store = %notice.store, key = %notice.key, "a notice sink panicked");
                }
            }
        }
        if matches!(
            notice.kind,
            NoticeKind::ReleaseRequested { .. }
                | NoticeKind::Stolen { .. }
                | NoticeKind::Restored
                | NoticeKind::Erased
                | NoticeKind::Resync
        ) {
            let _ = self.control.send(notice.clone());
        }
        let _ = self.all.send(notice);
    }

    /// Subscribes to all notices published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.all.subscribe()
    }

    /// Calls `sink` with every notice delivered from now on, on the thread
    /// that delivers it (a key actor's, for its own saves), before any
    /// subscriber hears it. Unlike a subscriber a sink cannot lag, and
    /// hearing a notice wakes no other thread; in exchange it must be
    /// quick and never block or wait (append to a buffer, forward through
    /// a channel). It stays for the life of the bus.
    pub fn add_sink(&self, sink: NoticeSink) {
        self.sinks.list.write().unwrap_or_else(|p| p.into_inner()).push(sink);
        self.sinks.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The notices `wanted` picks, from now on, through a sink into a
    /// channel of their own: a task hears every one of them (no lag can
    /// drop one), and the notices it does not want wake it not at all.
    pub fn forward(
        &self,
        wanted: impl Fn(&Notice) -> bool + Send + Sync + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.add_sink(Arc::new(move |n: &Notice| {
            // A sink stays for the bus's life; once its task has gone it
            // neither filters nor copies another notice.
            if !tx.is_closed() && wanted(n) {
                let _ = tx.send(n.clone());
            }
        }));
        rx
    }

    /// Subscribes to lease notices only (`ReleaseRequested`, `Stolen`).
    pub fn subscribe_lease_notices(&self) -> broadcast::Receiver<Notice> {
        self.control.subscribe()
    }

    /// Whether anyone may want change notices (`Saved`, `Released`): a
    /// local subscriber to all notices, or any process on the other side of
    /// the transport. Publishers skip building one nobody would receive.
    pub fn has_subscribers(&self) -> bool {
        self.transport.is_some()
            || self.sinks.any.load(std::sync::atomic::Ordering::Acquire)
            || self.all.receiver_count() > 0
    }
}

/// The epoch floors by store name that the engines of this process read
/// or raised on one backend (see [`Backend::floor_cache`]). A floor only
/// ever rises.
#[derive(Debug, Default)]
pub struct FloorCache(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl FloorCache {
    /// The kept floor of `store`, if it was read or raised before.
    pub fn get(&self, store: &str) -> Option<u64> {
        self.lock().get(store).copied()
    }

    /// Keeps `floor` for `store` unless a higher one is kept; answers the kept one.
    pub fn raise(&self, store: &str, floor: u64) -> u64 {
        let mut floors = self.lock();
        let kept = floors.entry(store.to_owned()).or_insert(floor);
        *kept = (*kept).max(floor);
        *kept
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        // Each critical section is one map operation: a poisoned map is whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a backend is, for the engine's choices about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Other processes may read and write the same records at any time
    /// (PostgreSQL). The engine then never stores process identity in the
    /// backend, and the backend enforces leases itself.
    pub shared_across_processes: bool,
    /// The queue should run on a thread of its own and call the backend
    /// inline there (blocking disk or network I/O with group commit).
    pub prefers_own_thread: bool,
    /// An applied write is durable when `write_batch` returns; `flush` is at
    /// most a barrier. The queue then flushes inline instead of on a
    /// flusher thread that would have nothing to overlap.
    pub durable_on_write: bool,
    /// How many `write_batch` calls the backend runs at once, each on a
    /// connection of its own (PostgreSQL's writer connections); 0 or 1:
    /// one. With more, and `durable_on_write` and `prefers_own_thread`, the
    /// queue keeps that many batches in flight on disjoint keys.
    pub parallel_writers: usize,
    /// [`Backend::write_all`] is implemented: several keys written in one
    /// atomic, all-or-nothing step.
    pub writes_all_or_nothing: bool,
    /// The backend stores a record's header, lease and user ids beside its
    /// bytes (PostgreSQL's columns): writers that know them send them as
    /// [`WriteOp::index`], so it need not decode every value it writes.
    pub indexes_records: bool,
}

/// Where [`Backend::snapshot`] hands each entry: `(key, Some(value))` for
/// what is stored, `(key, None)` for a key absent at the snapshot's instant.
pub type SnapshotSink<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<(), String> + 'a;

/// What [`Backend::write_all`] did: every op, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllOrNothing {
    /// Every precondition held and every op was applied, in one atomic
    /// step (durable once [`Backend::flush`] returns, as for `write_batch`).
    Applied,
    /// Nothing was applied: the ops (by index) whose precondition did not
    /// hold, each with the header of what is stored (`None`: absent or
    /// unreadable).
    Refused(Vec<(usize, Option<RecordHeader>)>),
}

/// Time as a backend sees it, in milliseconds since the Unix epoch. Lease
/// expiries are written and compared in this time when the backend has one
/// (PostgreSQL: the database server's clock), so processes on hosts whose
/// clocks disagree still agree on when a lease lapses.
pub trait BackendClock: Send + Sync + 'static {
    /// The backend's current time.
    fn now_ms(&self) -> u64;
}

/// A storage engine. Calls may block (the queue runs sled on a thread of
/// its own, other blocking backends on tokio's blocking pool) and must be
/// safe to call from several threads.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs ("sled", "memory").
    fn name(&self) -> &'static str;

    /// Reads one value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Reads several values, one result per key, in order. Backends with a
    /// round trip per call answer them together.
    fn get_many(&self, keys: &[&[u8]]) -> Vec<Result<Option<Vec<u8>>, StorageError>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Applies each operation atomically on its own key, checking its
    /// precondition first. The result has one entry per operation, in
    /// order. No cross-key atomicity is promised (PostgreSQL applies a
    /// batch in one transaction, sled splits large ones). An applied write
    /// is durable once [`Backend::flush`] returns `Ok`, possibly earlier.
    fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, StorageError>>;

    /// Applies every op of `ops` (distinct keys) in one atomic step if
    /// every precondition holds, and none otherwise: a key and what is
    /// stored beside it (its inbox) deleted together. `None`: this backend
    /// cannot (the default; [`Capabilities::writes_all_or_nothing`] says
    /// which answer to expect).
    fn write_all(&self, ops: &[WriteOp]) -> Option<Result<AllOrNothing, StorageError>> {
        let _ = ops;
        None
    }

    /// Deletes one key unconditionally (not durable until flushed).
    fn delete(&self, key: &[u8]) -> Result<(), StorageError> {
        let op = WriteOp::new(key, Precondition::Any, None::<Bytes>);
        match self.write_batch(std::slice::from_ref(&op)).pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Err(StorageError::permanent("backend returned no result for a delete")),
        }
    }

    /// Key/value pairs whose key starts with `prefix` and sorts after
    /// `start_after` (exclusive), in key order, at most `limit`.
    fn scan_prefix(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeyValues, StorageError>;

    /// Like [`Backend::scan_prefix`], but each key comes with the length of
    /// its value instead of the value (a store's size, counted without
    /// handing its documents out). The default reads the values.
    fn scan_sizes(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeySizes, StorageError> {
        Ok(self.scan_prefix(prefix, start_after, limit)?.into_iter().map(|(k, v)| (k, v.len() as u64)).collect())
    }

    /// Makes every applied write durable.
    fn flush(&self) -> Result<(), StorageError>;

    /// Whether calls may block the calling thread (disk or network I/O).
    /// Non-blocking backends are called inline by the queue actor, which
    /// keeps tests with a paused clock deterministic.
    fn is_blocking(&self) -> bool {
        true
    }

    /// The notice bus shared by every instance using this backend.
    fn notices(&self) -> &NoticeBus;

    /// What kind of backend this is.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Where every engine of this process using this backend keeps the
    /// epoch floors it read or raised, for a backend no other process
    /// writes (sled, memory). `None` (the default, and PostgreSQL's): the
    /// floor is read from storage every time, since a writer elsewhere may
    /// have raised it. Kept with the backend, not with one engine, because
    /// several engines may share one backend (the harness's nodes do).
    fn floor_cache(&self) -> Option<&FloorCache> {
        None
    }

    /// The backend's clock, when it has one that every process sharing it
    /// agrees on. `None`: the engine uses the local wall clock.
    fn clock(&self) -> Option<Arc<dyn BackendClock>> {
        None
    }

    /// Hands every key and value to `sink` as of one instant, while writers
    /// go on (an online backup): `(key, Some(value))` for what is stored;
    /// a backend may follow up with later entries for the same key (`None`:
    /// absent) that override earlier ones, as long as applying them in
    /// order gives the state of one instant. Answers how many it handed
    /// out. `None` (the default): this backend cannot.
    fn snapshot(&self, sink: &mut SnapshotSink<'_>) -> Option<Result<u64, StorageError>> {
        let _ = sink;
        None
    }

    /// Makes the bytes of deleted values unreadable in the storage files
    /// where the backend can (after an erasure). Answers whether it could;
    /// the default cannot (sled reclaims a log segment only when it
    /// rewrites it: `docs/history.md` has the measured bound).
    fn reclaim_deleted(&self) -> Result<bool, StorageError> {
        Ok(false)
    }

    /// Claims `owner` for an engine instance starting on this backend.
    /// Backends shared across processes refuse an owner id that a live
    /// instance (in any process) already runs under; the claim lasts until
    /// the backend is dropped.
    fn claim_owner(&self, owner: &str) -> Result<(), StorageError> {
        let _ = owner;
        Ok(())
    }
}

/// xorshift64: the one seeded generator (fault fractions here, and
/// `testing::Rng` for randomized tests). Reproducible from its seed; a seed
/// of 0 stays 0, so seeds are made odd where they come from.
pub(crate) fn xorshift64(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The prefix every record's storage key starts with (`d\0{store}\0{key}`).
pub const RECORDS_PREFIX: &[u8] = b"d\0";

/// The prefix of every epoch floor's meta key.
pub const EPOCH_FLOORS_PREFIX: &[u8] = b"m\0epoch_floor\0";

/// The prefix of every audit entry's meta key (`m\0audit\0`, then the
/// entry's time and a sequence, big-endian, so entries scan oldest first).
pub const AUDIT_PREFIX: &[u8] = b"m\0audit\0";

/// The meta key of the audit entry written at `at_ms` with `sequence`
/// (unique within the writer) and `writer` (its owner id's hash).
pub fn audit_key(at_ms: u64, writer: u64, sequence: u64) -> Vec<u8> {
    let mut k = AUDIT_PREFIX.to_vec();
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&writer.to_be_bytes());
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

/// The meta key of `store`'s point-in-time restore under way (its target
/// time and how far it got), so that running it again resumes it.
pub fn store_restore_key(store: &str) -> Vec<u8> {
    let mut k = b"m\0store_restore\0".to_vec();
    k.extend_from_slice(store.as_bytes());
    k
}

/// Where a process keeps the owner id it runs under, beside the records
/// (sled only: a restarted server on the same directory is the same owner).
pub const OWNER_ID_KEY: &[u8] = b"m\0owner_id";

/// The meta key of `store`'s epoch floor: the highest epoch any deleted
/// record of the store reached (a record created afresh starts above it).
/// Outside every store's `d\0` prefix.
pub fn epoch_floor_key(store: &str) -> Vec<u8> {
    let mut k = EPOCH_FLOORS_PREFIX.to_vec();
    k.extend_from_slice(store.as_bytes());
    k
}

/// The storage key of `key` in `store`: `d\0{store}\0{key}`. Store names and
/// keys are validated to contain no NUL, so the mapping is injective and a
/// store's keys share a prefix.
pub fn storage_key(store: &str, key: &str) -> Vec<u8> {
    let mut out = store_prefix(store);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The common prefix of every storage key of `store`.
pub fn store_prefix(store: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(store.len() + 3);
    out.extend_from_slice(RECORDS_PREFIX);
    out.extend_from_slice(store.as_bytes());
    out.push(0);
    out
}

/// Splits a storage key back into (store, key).
pub fn split_storage_key(bytes: &[u8]) -> Option<(String, String)> {
    let rest = bytes.strip_prefix(RECORDS_PREFIX)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let store = std::str::from_utf8(&rest[..nul]).ok()?;
    let key = std::str::from_utf8(&rest[nul + 1..]).ok()?;
    Some((store.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_error_keeps_the_backends_own_error_as_its_source() {
        let disk = std::io::Error::other("the disk said no");
        let e = StorageError::transient("sled flush: the disk said no").caused_by(disk);
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("the disk said no"));
        // The chain reaches it through the engine's error as well.
        let engine = crate::Error::Storage {
            at: crate::KeyId::new("s", "k"),
            operation: "write",
            attempts: 3,
            source: e.clone(),
        };
        let mut chain = Vec::new();
        let mut next: Option<&dyn std::error::Error> = Some(&engine);
        while let Some(err) = next {
            chain.push(err.to_string());
            next = err.source();
        }
        assert_eq!(chain.len(), 3, "{chain:?}");
        assert_eq!(chain[2], "the disk said no");
        // Equality is by kind and message: the source is context.
        assert_eq!(e, StorageError::transient("sled flush: the disk said no"));
    }

    #[test]
    fn a_storage_key_keeps_a_records_store_and_key_beside_its_bytes() {
        let (store, key): (Arc<str>, Arc<str>) = (Arc::from("profiles"), Arc::from("42"));
        let typed = StorageKey::record(&store, &key);
        assert_eq!(typed.as_bytes(), storage_key("profiles", "42").as_slice());
        assert_eq!(typed, StorageKey::from(storage_key("profiles", "42")), "built or parsed, one key");
        assert_eq!(typed.record_parts().map(|(s, k)| (&**s, &**k)), Some(("profiles", "42")));
        assert_eq!(StorageKey::from(OWNER_ID_KEY).record_parts(), None);
    }
}
