//! The in-memory backend: a sorted map behind a mutex, with operation
//! counters and fault injection for tests: fail the next N calls or a
//! fraction of them (seeded), add latency, freeze calls until released,
//! record every applied write, and lose unflushed writes as a crash would.
//!
//! Owns: its map, its counters and its fault rules. Must not: know about
//! records beyond the header check every backend shares. It never blocks
//! unless latency or a freeze is configured (then it reports itself as
//! blocking so the queue calls it off the actor thread).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::{
    AllOrNothing, Backend, ErrorKind, KeyValues, NoticeBus, RecordHeader, StorageError, WriteOp, WriteOutcome,
};

/// Which backend call a fault rule or counter refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `get`
    Get,
    /// One operation of `write_batch`.
    Write,
    /// `scan_prefix`
    Scan,
    /// `flush`
    Flush,
}

#[derive(Debug, Clone)]
struct FaultRule {
    op: OpKind,
    key: Option<Vec<u8>>,
    remaining: u64,
    kind: ErrorKind,
}

#[derive(Debug, Clone)]
struct FractionRule {
    op: OpKind,
    key: Option<Vec<u8>>,
    probability: f64,
    kind: ErrorKind,
}

#[derive(Default)]
struct Freeze {
    /// (operation, key filter, calls still to hold)
    rules: Vec<(OpKind, Option<Vec<u8>>, u64)>,
    held: usize,
    generation: u64,
}

/// One call in the log: the operation and its key.
pub type LoggedCall = (OpKind, Vec<u8>);

/// One write that was applied, in order (see [`MemoryBackend::record_history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedWrite {
    /// Storage key.
    pub key: Vec<u8>,
    /// The value written (`None`: deleted).
    pub value: Option<Vec<u8>>,
}

/// Counters of calls a [`MemoryBackend`] received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// `get` calls.
    pub gets: u64,
    /// `write_batch` calls (one per group commit).
    pub write_batches: u64,
    /// Individual writes applied (precondition held).
    pub writes_applied: u64,
    /// Individual writes rejected by their precondition.
    pub write_conflicts: u64,
    /// `flush` calls.
    pub flushes: u64,
    /// `scan_prefix` calls.
    pub scans: u64,
    /// Calls failed by an injected fault.
    pub injected_failures: u64,
}

/// An in-memory [`Backend`]. Cheap, non-blocking, and shareable between
/// several `Datastorer` instances (wrap it in an `Arc`).
pub struct MemoryBackend {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// For keys written since the last flush: their value at that flush.
    unflushed: Mutex<HashMap<Vec<u8>, Option<Vec<u8>>>>,
    faults: Mutex<Vec<FaultRule>>,
    fractions: Mutex<(Vec<FractionRule>, u64)>,
    latency: Mutex<HashMap<OpKind, Duration>>,
    freeze: Mutex<Freeze>,
    thaw: Condvar,
    blocking: AtomicBool,
    history: Mutex<Option<Vec<AppliedWrite>>>,
    /// `None` when unlogged (see [`MemoryBackend::unlogged`]).
    log: Mutex<Option<Vec<LoggedCall>>>,
    notices: NoticeBus,
    floors: super::FloorCache,
    gets: AtomicU64,
    write_batches: AtomicU64,
    writes_applied: AtomicU64,
    write_conflicts: AtomicU64,
    flushes: AtomicU64,
    scans: AtomicU64,
    injected_failures: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map half-updated (every
    // critical section is a single insert/remove), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend that logs every call (see [`MemoryBackend::log`]):
    /// for tests.
    pub fn new() -> Self {
        Self::build(true)
    }

    /// An empty backend that keeps no call log, for long-running use
    /// (`Config::memory()`): the log would grow without bound.
    pub fn unlogged() -> Self {
        Self::build(false)
    }

    fn build(logged: bool) -> Self {
        Self {
            map: Mutex::default(),
            unflushed: Mutex::default(),
            faults: Mutex::default(),
            fractions: Mutex::default(),
            latency: Mutex::default(),
            freeze: Mutex::default(),
            thaw: Condvar::new(),
            blocking: AtomicBool::new(false),
            history: Mutex::default(),
            log: Mutex::new(logged.then(Vec::new)),
            notices: NoticeBus::default(),
            floors: Default::default(),
            gets: AtomicU64::new(0),
            write_batches: AtomicU64::new(0),
            writes_applied: AtomicU64::new(0),
            write_conflicts: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            scans: AtomicU64::new(0),
            injected_failures: AtomicU64::new(0),
        }
    }

    /// Makes the next `count` calls of `op` (on `key` only, if given) fail
    /// with an error of `kind`.
    #[cfg(any(test, feature = "harness"))]
    pub fn fail_next(&self, op: OpKind, key: Option<&[u8]>, count: u64, kind: ErrorKind) {
        lock(&self.faults).push(FaultRule { op, key: key.map(<[u8]>::to_vec), remaining: count, kind });
    }

    /// Makes a `probability` fraction of `op` calls fail with `kind`,
    /// drawn from a generator seeded with `seed` (reproducible runs).
    #[cfg(any(test, feature = "harness"))]
    pub fn fail_fraction(&self, op: OpKind, probability: f64, kind: ErrorKind, seed: u64) {
        self.fail_fraction_of(op, None, probability, kind, seed);
    }

    /// [`MemoryBackend::fail_fraction`] for the calls on one key only.
    #[cfg(any(test, feature = "harness"))]
    pub fn fail_fraction_of(&self, op: OpKind, key: Option<&[u8]>, probability: f64, kind: ErrorKind, seed: u64) {
        let mut f = lock(&self.fractions);
        f.0.push(FractionRule { op, key: key.map(<[u8]>::to_vec), probability: probability.clamp(0.0, 1.0), kind });
        f.1 = seed | 1;
    }

    /// Removes every fault rule (counted and fractional).
    #[cfg(any(test, feature = "harness"))]
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
        lock(&self.fractions).0.clear();
    }

    /// Adds `delay` to every `op` call (real time: the call sleeps on the
    /// blocking pool, so use it with a running clock).
    #[cfg(any(test, feature = "harness"))]
    pub fn set_latency(&self, op: OpKind, delay: Duration) {
        lock(&self.latency).insert(op, delay);
        self.blocking.store(true, Ordering::SeqCst);
    }

    /// Holds the next `count` calls of `op` (on `key` only, if given) until
    /// [`MemoryBackend::unfreeze`]; later calls pass. Lets a test keep a
    /// request on the wire and race something against it.
    #[cfg(any(test, feature = "harness"))]
    pub fn freeze(&self, op: OpKind, key: Option<&[u8]>, count: u64) {
        lock(&self.freeze).rules.push((op, key.map(<[u8]>::to_vec), count));
        self.blocking.store(true, Ordering::SeqCst);
    }

    /// Lets every held call go on and removes the freeze rules.
    #[cfg(any(test, feature = "harness"))]
    pub fn unfreeze(&self) {
        let mut f = lock(&self.freeze);
        f.rules.clear();
        f.generation += 1;
        self.thaw.notify_all();
    }

    /// How many calls are being held by a freeze right now.
    #[cfg(any(test, feature = "harness"))]
    pub fn frozen(&self) -> usize {
        lock(&self.freeze).held
    }

    /// Starts (or stops) recording every applied write, in order.
    #[cfg(any(test, feature = "harness"))]
    pub fn record_history(&self, on: bool) {
        *lock(&self.history) = on.then(Vec::new);
    }

    /// The applied writes recorded so far.
    #[cfg(any(test, feature = "harness"))]
    pub fn history(&self) -> Vec<AppliedWrite> {
        lock(&self.history).clone().unwrap_or_default()
    }

    /// What a crash of the storage process would do: every write applied
    /// since the last successful flush is undone.
    #[cfg(any(test, feature = "harness"))]
    pub fn lose_unflushed(&self) -> usize {
        let lost: Vec<_> = lock(&self.unflushed).drain().collect();
        let mut map = lock(&self.map);
        for (k, before) in &lost {
            match before {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
        lost.len()
    }

    fn delay_and_freeze(&self, op: OpKind, key: Option<&[u8]>) {
        if !self.blocking.load(Ordering::SeqCst) {
            return;
        }
        if let Some(d) = lock(&self.latency).get(&op).copied() {
            std::thread::sleep(d);
        }
        let mut f = lock(&self.freeze);
        let rule = f
            .rules
            .iter_mut()
            .find(|(o, k, left)| *o == op && *left > 0 && k.as_deref().is_none_or(|k| Some(k) == key));
        if let Some(rule) = rule {
            rule.2 -= 1;
            let generation = f.generation;
            f.held += 1;
            while f.generation == generation {
                f = self.thaw.wait(f).unwrap_or_else(|p| p.into_inner());
            }
            f.held -= 1;
        }
    }

    fn fraction_fault(&self, op: OpKind, key: Option<&[u8]>) -> Option<StorageError> {
        let mut f = lock(&self.fractions);
        let (rules, state) = &mut *f;
        let rule = rules.iter().find(|r| r.op == op && r.key.as_deref().is_none_or(|k| Some(k) == key))?.clone();
        // Reproducible from the seed, good enough to spread faults.
        let draw = (super::xorshift64(state) >> 11) as f64 / (1u64 << 53) as f64;
        if draw < rule.probability {
            self.injected_failures.fetch_add(1, Ordering::Relaxed);
            Some(StorageError::new(rule.kind, format!("injected {op:?} fault (fraction)")))
        } else {
            None
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            gets: self.gets.load(Ordering::Relaxed),
            write_batches: self.write_batches.load(Ordering::Relaxed),
            writes_applied: self.writes_applied.load(Ordering::Relaxed),
            write_conflicts: self.write_conflicts.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            scans: self.scans.load(Ordering::Relaxed),
            injected_failures: self.injected_failures.load(Ordering::Relaxed),
        }
    }

    /// Every call received so far, in order: the operation and its key
    /// (empty for flush; the prefix for scans).
    #[cfg(any(test, feature = "harness"))]
    pub fn log(&self) -> Vec<LoggedCall> {
        lock(&self.log).clone().unwrap_or_default()
    }

    /// Only the keys written (applied or not), in the order the writes arrived.
    #[cfg(any(test, feature = "harness"))]
    pub fn written_keys(&self) -> Vec<Vec<u8>> {
        lock(&self.log).iter().flatten().filter(|(op, _)| *op == OpKind::Write).map(|(_, k)| k.clone()).collect()
    }

    fn record(&self, op: OpKind, key: &[u8]) {
        if let Some(log) = lock(&self.log).as_mut() {
            log.push((op, key.to_vec()));
        }
    }

    /// The raw stored bytes of a storage key (for assertions).
    #[cfg(any(test, feature = "harness"))]
    pub fn raw_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.map).get(key).cloned()
    }

    /// Stores raw bytes, bypassing preconditions (to plant old or corrupt records).
    #[cfg(any(test, feature = "harness"))]
    pub fn raw_put(&self, key: &[u8], value: &[u8]) {
        lock(&self.map).insert(key.to_vec(), value.to_vec());
    }

    fn injected(&self, op: OpKind, key: Option<&[u8]>) -> Option<StorageError> {
        self.delay_and_freeze(op, key);
        if let Some(e) = self.fraction_fault(op, key) {
            return Some(e);
        }
        let mut faults = lock(&self.faults);
        let rule = faults.iter_mut().find(|r| {
            r.op == op
                && r.remaining > 0
                && match (&r.key, key) {
                    (None, _) => true,
                    (Some(want), Some(k)) => want.as_slice() == k,
                    (Some(_), None) => false,
                }
        })?;
        rule.remaining -= 1;
        let kind = rule.kind;
        faults.retain(|r| r.remaining > 0);
        self.injected_failures.fetch_add(1, Ordering::Relaxed);
        let message = format!("injected {op:?} fault");
        Some(StorageError::new(kind, message))
    }
}

impl MemoryBackend {
    /// Applies `op`, whose precondition held: the map, the value to restore
    /// on `lose_unflushed`, the history, the counter.
    fn apply(&self, map: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: &WriteOp) {
        let before = match &op.value {
            Some(v) => map.insert(op.key.to_vec(), v.to_vec()),
            None => map.remove(op.key.as_bytes()),
        };
        let mut unflushed = lock(&self.unflushed);
        unflushed.entry(op.key.to_vec()).or_insert(before);
        // What the op stores beside its record lands under the same lock,
        // and is lost with it by `lose_unflushed`.
        for (key, value) in super::history::companions(op) {
            let before = map.insert(key.clone(), value.to_vec());
            unflushed.entry(key).or_insert(before);
        }
        drop(unflushed);
        if let Some(h) = lock(&self.history).as_mut() {
            h.push(AppliedWrite { key: op.key.to_vec(), value: op.value.as_ref().map(|v| v.to_vec()) });
        }
        self.writes_applied.fetch_add(1, Ordering::Relaxed);
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn floor_cache(&self) -> Option<&super::FloorCache> {
        Some(&self.floors)
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities { writes_all_or_nothing: true, ..Default::default() }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.record(OpKind::Get, key);
        if let Some(e) = self.injected(OpKind::Get, Some(key)) {
            return Err(e);
        }
        Ok(lock(&self.map).get(key).cloned())
    }

    fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, StorageError>> {
        self.write_batches.fetch_add(1, Ordering::Relaxed);
        ops.iter()
            .map(|op| {
                self.record(OpKind::Write, &op.key);
                if let Some(e) = self.injected(OpKind::Write, Some(&op.key)) {
                    return Err(e);
                }
                let mut map = lock(&self.map);
                let current = map.get(op.key.as_bytes()).map(Vec::as_slice);
                if !op.precondition.holds(current, op.value.as_deref()) {
                    self.write_conflicts.fetch_add(1, Ordering::Relaxed);
                    return Ok(WriteOutcome::Conflict { current: current.and_then(RecordHeader::peek) });
                }
                self.apply(&mut map, op);
                Ok(WriteOutcome::Applied)
            })
            .collect()
    }

    fn write_all(&self, ops: &[WriteOp]) -> Option<Result<AllOrNothing, StorageError>> {
        self.write_batches.fetch_add(1, Ordering::Relaxed);
        for op in ops {
            self.record(OpKind::Write, &op.key);
            if let Some(e) = self.injected(OpKind::Write, Some(&op.key)) {
                return Some(Err(e));
            }
        }
        let mut map = lock(&self.map);
        let refused: Vec<(usize, Option<RecordHeader>)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| {
                let current = map.get(op.key.as_bytes()).map(Vec::as_slice);
                (!op.precondition.holds(current, op.value.as_deref()))
                    .then(|| (i, current.and_then(RecordHeader::peek)))
            })
            .collect();
        if !refused.is_empty() {
            self.write_conflicts.fetch_add(1, Ordering::Relaxed);
            return Some(Ok(AllOrNothing::Refused(refused)));
        }
        for op in ops {
            self.apply(&mut map, op);
        }
        Some(Ok(AllOrNothing::Applied))
    }

    fn scan_prefix(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeyValues, StorageError> {
        self.scans.fetch_add(1, Ordering::Relaxed);
        self.record(OpKind::Scan, prefix);
        if let Some(e) = self.injected(OpKind::Scan, None) {
            return Err(e);
        }
        let map = lock(&self.map);
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|s| k.as_slice() > s))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// The map as of one instant: copied under its lock, handed out after.
    fn snapshot(&self, sink: &mut crate::storage::SnapshotSink<'_>) -> Option<Result<u64, StorageError>> {
        let copy: Vec<(Vec<u8>, Vec<u8>)> = lock(&self.map).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in &copy {
            if let Err(e) = sink(k, Some(v)) {
                return Some(Err(StorageError::permanent(e)));
            }
        }
        Some(Ok(copy.len() as u64))
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.delay_and_freeze(OpKind::Flush, None);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.record(OpKind::Flush, &[]);
        if let Some(e) = self.injected(OpKind::Flush, None) {
            return Err(e);
        }
        lock(&self.unflushed).clear();
        Ok(())
    }

    fn is_blocking(&self) -> bool {
        self.blocking.load(Ordering::SeqCst)
    }

    fn notices(&self) -> &NoticeBus {
        &self.notices
    }
}
