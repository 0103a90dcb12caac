//! The in-memory backend: a sorted map behind a mutex, with operation
//! counters and simple fault injection for tests.
//!
//! Owns: its map, its counters and its fault rules. Must not: block, sleep or
//! know about records beyond the header check every backend shares.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Backend, ErrorKind, KeyValues, NoticeBus, RecordHeader, StorageError, WriteOp, WriteOutcome};

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
#[derive(Default)]
pub struct MemoryBackend {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    faults: Mutex<Vec<FaultRule>>,
    log: Mutex<Vec<(OpKind, Vec<u8>)>>,
    notices: NoticeBus,
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

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `count` calls of `op` (on `key` only, if given) fail
    /// with an error of `kind`.
    pub fn fail_next(&self, op: OpKind, key: Option<&[u8]>, count: u64, kind: ErrorKind) {
        lock(&self.faults).push(FaultRule { op, key: key.map(<[u8]>::to_vec), remaining: count, kind });
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
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
    pub fn log(&self) -> Vec<(OpKind, Vec<u8>)> {
        lock(&self.log).clone()
    }

    /// Only the keys written (applied or not), in the order the writes arrived.
    pub fn written_keys(&self) -> Vec<Vec<u8>> {
        lock(&self.log).iter().filter(|(op, _)| *op == OpKind::Write).map(|(_, k)| k.clone()).collect()
    }

    fn record(&self, op: OpKind, key: &[u8]) {
        lock(&self.log).push((op, key.to_vec()));
    }

    /// The raw stored bytes of a storage key (for assertions).
    pub fn raw_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.map).get(key).cloned()
    }

    /// Stores raw bytes, bypassing preconditions (to plant old or corrupt records).
    pub fn raw_put(&self, key: &[u8], value: &[u8]) {
        lock(&self.map).insert(key.to_vec(), value.to_vec());
    }

    fn injected(&self, op: OpKind, key: Option<&[u8]>) -> Option<StorageError> {
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
        Some(StorageError { kind, message })
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
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
                let current = map.get(&op.key).map(Vec::as_slice);
                if !op.precondition.holds(current) {
                    self.write_conflicts.fetch_add(1, Ordering::Relaxed);
                    return Ok(WriteOutcome::Conflict { current: current.and_then(RecordHeader::peek) });
                }
                match &op.value {
                    Some(v) => map.insert(op.key.clone(), v.clone()),
                    None => map.remove(&op.key),
                };
                self.writes_applied.fetch_add(1, Ordering::Relaxed);
                Ok(WriteOutcome::Applied)
            })
            .collect()
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

    fn flush(&self) -> Result<(), StorageError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.record(OpKind::Flush, &[]);
        if let Some(e) = self.injected(OpKind::Flush, None) {
            return Err(e);
        }
        Ok(())
    }

    fn is_blocking(&self) -> bool {
        false
    }

    fn notices(&self) -> &NoticeBus {
        &self.notices
    }
}
