//! The sled backend (default): one sled database in a data directory, records
//! in its default tree under `d\0{store}\0{key}`.
//!
//! Owns: the `sled::Db` handle and the mapping of sled errors to
//! [`ErrorKind`]. Must not: retry (the queue does), or flush implicitly — a
//! write is durable only after [`Backend::flush`], which the queue calls once
//! per group commit.
//!
//! Conditional writes: sled lets one process open a directory, and every
//! writer in that process goes through this object, so checking every
//! precondition and then writing under `write_lock` is as atomic as a
//! compare-and-swap per key — and much cheaper. A small batch is written as
//! one `sled::Batch`; a large one (a burst of saves, a shutdown) as
//! single-key writes split over up to four threads, because `apply_batch`
//! holds a process-wide lock and so can use only one core.
//!
//! For the same reason the headers this object last wrote are exact, and a
//! bounded cache of them (kept under `write_lock`) answers most precondition
//! checks without a sled read. A key not in the cache is read from sled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    AllOrNothing, Backend, Capabilities, KeySizes, KeyValues, NoticeBus, Precondition, RecordHeader, StorageError,
    WriteOp, WriteOutcome,
};

/// How long `open` waits for a directory lock that this process is releasing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Batches with fewer writes than this are applied as one sled batch on the
/// calling thread; larger ones are split over threads. Starting and joining
/// a thread took ~55 µs on the 2-core bench machine, while 256 writes of
/// 1 KiB take ~0.8 ms there.
const PARALLEL_APPLY_MIN_OPS: usize = 256;

/// Headers cached at most; past this the cache starts over (about 90 bytes
/// per entry, so at most ~25 MB).
const HEADER_CACHE_ENTRIES: usize = 256 * 1024;

/// A [`Backend`] on an embedded sled database.
pub struct SledBackend {
    db: sled::Db,
    /// Held for the whole of `write_batch`; guards the header cache.
    write_lock: std::sync::Mutex<HeaderCache>,
    path: PathBuf,
    notices: NoticeBus,
    floors: super::FloorCache,
    /// Threads a large batch is written with (this machine's cores, at most 4).
    apply_threads: usize,
}

/// The header of the value this process last wrote under a key (`None`: a
/// value whose header is unreadable). Keys absent from the map are unknown,
/// not absent from the database.
#[derive(Default)]
struct HeaderCache {
    headers: HashMap<Box<[u8]>, Option<RecordHeader>, foldhash::fast::RandomState>,
    /// While a snapshot runs: every key written since it began (see
    /// `Backend::snapshot`).
    written_since_snapshot: Option<std::collections::HashSet<Vec<u8>>>,
}

impl HeaderCache {
    /// Notes the keys `op` writes (its own and its companions') for a
    /// snapshot under way.
    fn note_written(&mut self, op: &WriteOp) {
        if let Some(written) = self.written_since_snapshot.as_mut() {
            written.insert(op.key.to_vec());
            written.extend(super::history::companions(op).into_iter().map(|(k, _)| k));
        }
    }
}

impl HeaderCache {
    fn get(&self, key: &[u8]) -> Option<Option<RecordHeader>> {
        self.headers.get(key).copied()
    }

    fn set(&mut self, key: &[u8], value: Option<&[u8]>) {
        match value {
            Some(v) => {
                let header = RecordHeader::peek(v);
                // A key already cached (the usual save) is updated in place.
                if let Some(slot) = self.headers.get_mut(key) {
                    *slot = header;
                    return;
                }
                if self.headers.len() >= HEADER_CACHE_ENTRIES {
                    self.headers.clear();
                }
                self.headers.insert(key.into(), header);
            }
            None => {
                self.headers.remove(key);
            }
        }
    }
}

fn map_err(context: &str, e: sled::Error) -> StorageError {
    match e {
        // I/O errors are often passing (EINTR, EAGAIN, a busy disk); the
        // queue's bounded retry turns a lasting one into a reported failure.
        sled::Error::Io(io) => StorageError::transient(format!("{context}: {io}")).caused_by(io),
        other => StorageError::permanent(format!("{context}: {other}")).caused_by(other),
    }
}

/// sled reports a directory locked by another process as an I/O error:
/// `could not acquire lock` (ErrorKind::Other) or the raw EAGAIN/EWOULDBLOCK
/// of `flock` (`Os { code: 11 }` on Linux).
/// Whether sled failed to open `path` because its directory lock is held:
/// sled formats the lock's own error into a message (kind `Other`), so the
/// lock is probed here the way sled takes it, and the answer read by kind.
fn is_lock_error(path: &Path, e: &std::io::Error) -> bool {
    use fs2::FileExt;
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return true;
    }
    if e.kind() != std::io::ErrorKind::Other {
        return false;
    }
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(path.join("db")) else { return false };
    match file.try_lock_exclusive() {
        Ok(()) => {
            let _ = FileExt::unlock(&file);
            false
        }
        Err(probe) => probe.kind() == fs2::lock_contended_error().kind(),
    }
}

impl SledBackend {
    /// Opens (or creates) the database in `path`. A database that sled cannot
    /// open (for example after a crash it cannot recover from) is reported
    /// with its path and left exactly as found; it is never reset.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        // sled 0.34 releases the directory lock from its own threads a
        // moment after the last handle in this process is dropped; a reopen
        // right after that would fail. Lock errors are retried briefly; a
        // directory held by another process still fails, after LOCK_WAIT.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            // No background flusher: the queue flushes after every batch.
            match sled::Config::new().path(&path).flush_every_ms(None).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_error(&path, &e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                // Held by another process: say so in words, not as an
                // `Os { code: 11 }` I/O error (which would read as transient).
                Err(sled::Error::Io(e)) if is_lock_error(&path, &e) => {
                    return Err(StorageError::permanent(format!(
                        "the data directory {} is in use by another process or another handle in this one; \
                         stop it first, or use another directory",
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(map_err(&format!("cannot open sled database at {}", path.display()), e));
                }
            }
        };
        // Capped at 4: only two cores were ever measured, and every extra
        // thread is started afresh for each large batch.
        let apply_threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Ok(Self {
            db,
            write_lock: std::sync::Mutex::default(),
            path,
            notices: NoticeBus::default(),
            floors: Default::default(),
            apply_threads,
        })
    }

    /// The owner id this directory runs under: the one stored in it, or
    /// `make()`'s, stored and flushed before it is answered. sled lets one
    /// process at a time open a directory, so a process restarted on it is
    /// the same owner and takes back the leases its crashed predecessor
    /// left at once, instead of waiting for them to lapse. The id is only
    /// answered once durable: a process that ran under an unsaved id would
    /// come back a stranger to its own leases.
    pub fn owner_id_or_insert_with(&self, make: impl FnOnce() -> String) -> Result<String, StorageError> {
        if let Some(bytes) = self.get(super::OWNER_ID_KEY)? {
            return String::from_utf8(bytes)
                .map_err(|_| StorageError::permanent("the owner id stored in the data directory is not UTF-8"));
        }
        let owner = make();
        let op = WriteOp::new(super::OWNER_ID_KEY, Precondition::Absent, Some(owner.clone().into_bytes()));
        match self.write_batch(std::slice::from_ref(&op)).pop() {
            Some(Ok(WriteOutcome::Applied)) => {}
            Some(Ok(WriteOutcome::Conflict { .. })) => {
                return Err(StorageError::transient("another owner id was stored in the data directory meanwhile"))
            }
            Some(Err(e)) => return Err(e),
            None => return Err(StorageError::permanent("the backend answered nothing for the owner id")),
        }
        self.flush()?;
        Ok(owner)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `op`'s precondition holds, and the header stored (or staged
    /// by an earlier op of the same batch): from the header cache where it
    /// can, from sled where it must (an acquisition reads the lease).
    #[allow(clippy::type_complexity)]
    fn check(
        &self,
        cache: &HeaderCache,
        op: &WriteOp,
        staged_header: Option<Option<Option<RecordHeader>>>,
    ) -> Result<(bool, Option<Option<RecordHeader>>), StorageError> {
        if op.precondition.needs_stored_value() && staged_header.is_none() {
            // An acquisition checks the stored lease, which the header
            // cache does not know: read the value (acquisitions are rare).
            match self.db.get(&op.key) {
                Ok(v) => {
                    let current = v.as_deref();
                    Ok((op.precondition.holds(current, op.value.as_deref()), current.map(RecordHeader::peek)))
                }
                Err(e) => Err(map_err("get before write", e)),
            }
        } else {
            let current = match staged_header {
                Some(h) => Ok(h),
                None => match cache.get(&op.key) {
                    Some(h) => Ok(Some(h)),
                    None => self.db.get(&op.key).map(|v| v.as_deref().map(RecordHeader::peek)),
                },
            };
            current.map(|c| (op.precondition.holds_for_header(c), c)).map_err(|e| map_err("get before write", e))
        }
    }

    /// Applies `ops[i]` for every `i` in `applied` as one sled batch;
    /// answers the ops that failed (all of them, or none).
    fn apply_as_one_batch(&self, ops: &[WriteOp], applied: &[usize]) -> Vec<(usize, StorageError)> {
        if applied.is_empty() {
            return Vec::new();
        }
        let mut batch = sled::Batch::default();
        for &i in applied {
            self.add_to_batch(&mut batch, &ops[i]);
        }
        match self.db.apply_batch(batch) {
            Ok(()) => Vec::new(),
            Err(e) => {
                let e = map_err("apply_batch", e);
                applied.iter().map(|&i| (i, e.clone())).collect()
            }
        }
    }

    /// Applies `ops[i]` for every `i` in `applied` as single-key writes,
    /// split over `apply_threads` threads; answers the ops that failed.
    ///
    /// sled's `apply_batch` holds a process-wide write lock, so one batch
    /// uses one core however large it is, while single-key writes run in
    /// parallel. The backend promises no cross-key atomicity, and the
    /// caller guarantees each key occurs once, so splitting reorders nothing
    /// that anyone may observe: nothing is read until the flush.
    fn insert_in_parallel(&self, ops: &[WriteOp], applied: &[usize]) -> Vec<(usize, StorageError)> {
        let per_thread = applied.len().div_ceil(self.apply_threads);
        let mut chunks = applied.chunks(per_thread);
        let Some(own) = chunks.next() else { return Vec::new() };
        // A panic inside sled leaves unknown which of a chunk's writes
        // landed: all of them are reported failed (and leave the header
        // cache); a retry that finds its own header succeeds.
        let panicked = |chunk: &[usize]| -> Vec<(usize, StorageError)> {
            chunk.iter().map(|&i| (i, StorageError::transient("sled write panicked"))).collect()
        };
        let guarded = |chunk: &[usize]| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.insert_each(ops, chunk)))
                .unwrap_or_else(|_| panicked(chunk))
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = chunks
                .map(|chunk| {
                    let spawned = std::thread::Builder::new()
                        .name("datastorer-apply".into())
                        .spawn_scoped(scope, || self.insert_each(ops, chunk));
                    (chunk, spawned)
                })
                .collect();
            let mut failed = guarded(own);
            for (chunk, spawned) in helpers {
                match spawned {
                    Ok(handle) => failed.extend(handle.join().unwrap_or_else(|_| panicked(chunk))),
                    // No thread to spare: this chunk is written here.
                    Err(_) => failed.extend(guarded(chunk)),
                }
            }
            failed
        })
    }

    /// `op` and what it stores beside its record (its version, user-index
    /// entries) as writes of one sled batch.
    fn add_to_batch(&self, batch: &mut sled::Batch, op: &WriteOp) {
        // Copied into sled's buffer once: a save's version is the same
        // bytes as its value, and an `IVec` clone shares them.
        let value = op.value.as_ref().map(|v| (v, sled::IVec::from(&v[..])));
        match &value {
            Some((_, v)) => batch.insert(op.key.as_bytes(), v.clone()),
            None => batch.remove(op.key.as_bytes()),
        }
        for (key, companion) in super::history::companions(op) {
            // An index entry already there is not written again.
            if companion.is_empty() && key.starts_with(super::history::USER_INDEX_PREFIX) {
                if let Ok(true) = self.db.contains_key(&key) {
                    continue;
                }
            }
            match &value {
                Some((bytes, shared)) if super::same_buffer(bytes, &companion) => batch.insert(key, shared.clone()),
                _ => batch.insert(key, &companion[..]),
            }
        }
    }

    fn insert_each(&self, ops: &[WriteOp], indices: &[usize]) -> Vec<(usize, StorageError)> {
        let mut failed = Vec::new();
        for &i in indices {
            let op = &ops[i];
            let written = match (&op.value, &op.version) {
                // A write with a version lands with it, all or nothing.
                (_, Some(_)) => {
                    let mut batch = sled::Batch::default();
                    self.add_to_batch(&mut batch, op);
                    self.db.apply_batch(batch).map(|_| None)
                }
                (Some(v), None) => self.db.insert(op.key.as_bytes(), &v[..]),
                (None, None) => self.db.remove(op.key.as_bytes()),
            };
            if let Err(e) = written {
                failed.push((i, map_err("insert", e)));
            }
        }
        failed
    }
}

impl Backend for SledBackend {
    /// Blocking disk I/O with an explicit flush: the queue runs on its own
    /// thread and overlaps the flush of one batch with applying the next.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            shared_across_processes: false,
            prefers_own_thread: true,
            durable_on_write: false,
            parallel_writers: 1,
            writes_all_or_nothing: true,
            indexes_records: false,
        }
    }

    fn floor_cache(&self) -> Option<&super::FloorCache> {
        Some(&self.floors)
    }

    fn name(&self) -> &'static str {
        "sled"
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get(key).map(|v| v.map(|iv| iv.to_vec())).map_err(|e| map_err("get", e))
    }

    fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, StorageError>> {
        let mut cache = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        // What this batch has already decided for a key, so that two ops on
        // one key in one batch see each other: the header it will store.
        let mut staged: HashMap<&[u8], Option<Option<RecordHeader>>, _> =
            HashMap::with_capacity_and_hasher(ops.len(), foldhash::fast::RandomState::default());
        let mut results = Vec::with_capacity(ops.len());
        // Indices of the ops whose precondition holds.
        let mut applied: Vec<usize> = Vec::with_capacity(ops.len());
        let mut repeated_key = false;
        for (i, op) in ops.iter().enumerate() {
            let staged_header = staged.get(op.key.as_bytes()).copied();
            repeated_key |= staged_header.is_some();
            let holds = self.check(&cache, op, staged_header);
            match holds {
                Ok((true, _)) => {}
                Ok((false, current)) => {
                    results.push(Ok(WriteOutcome::Conflict { current: current.flatten() }));
                    continue;
                }
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            }
            staged.insert(&op.key, op.value.as_deref().map(RecordHeader::peek));
            results.push(Ok(WriteOutcome::Applied));
            applied.push(i);
        }
        // A write with a version must land with it, all or nothing. sled's
        // `apply_batch` costs a log reservation under its global lock each
        // time: one per op was 12x slower than a single batch, and batches
        // of 32 to 2048 ops spread over threads gained nothing on it
        // (measured, bench figure 2): a batch with versions is one sled batch.
        let with_versions = applied.iter().any(|&i| ops[i].version.is_some());
        let failed =
            if applied.len() >= PARALLEL_APPLY_MIN_OPS && self.apply_threads > 1 && !repeated_key && !with_versions {
                self.insert_in_parallel(ops, &applied)
            } else {
                self.apply_as_one_batch(ops, &applied)
            };
        for &i in &applied {
            cache.set(&ops[i].key, ops[i].value.as_deref());
            cache.note_written(&ops[i]);
        }
        for (i, e) in failed {
            // Forgotten, so that if sled did apply the write after all, the
            // next check reads what sled holds.
            cache.headers.remove(ops[i].key.as_bytes());
            cache.note_written(&ops[i]);
            results[i] = Err(e);
        }
        results
    }

    fn write_all(&self, ops: &[WriteOp]) -> Option<Result<AllOrNothing, StorageError>> {
        let mut cache = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut refused = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match self.check(&cache, op, None) {
                Ok((true, _)) => {}
                Ok((false, current)) => refused.push((i, current.flatten())),
                Err(e) => return Some(Err(e)),
            }
        }
        if !refused.is_empty() {
            return Some(Ok(AllOrNothing::Refused(refused)));
        }
        // One sled batch: all of it lands, or none.
        let all: Vec<usize> = (0..ops.len()).collect();
        if let Some((_, e)) = self.apply_as_one_batch(ops, &all).into_iter().next() {
            for op in ops {
                cache.headers.remove(op.key.as_bytes());
                cache.note_written(op);
            }
            return Some(Err(e));
        }
        for op in ops {
            cache.set(&op.key, op.value.as_deref());
            cache.note_written(op);
        }
        Some(Ok(AllOrNothing::Applied))
    }

    fn scan_prefix(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeyValues, StorageError> {
        let mut out = Vec::new();
        let iter = match start_after {
            Some(s) => {
                let mut from = s.to_vec();
                from.push(0);
                self.db.range(from..)
            }
            None => self.db.range(prefix.to_vec()..),
        };
        for item in iter {
            let (k, v) = item.map_err(|e| map_err("scan", e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Without copying a value out of sled's pages.
    fn scan_sizes(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> Result<KeySizes, StorageError> {
        let mut out = Vec::new();
        let from = match start_after {
            Some(s) => {
                let mut from = s.to_vec();
                from.push(0);
                from
            }
            None => prefix.to_vec(),
        };
        for item in self.db.range(from..) {
            let (k, v) = item.map_err(|e| map_err("scan", e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.len() as u64));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(|e| map_err("flush", e))
    }

    /// Writers are held only at the two ends: every write goes through
    /// `write_lock`, so the keys written while the database is walked are
    /// noted, and at the end (under the lock, writes held for the time of
    /// reading those keys) their values are handed out again. Applied in
    /// order, the entries give the database as of that end.
    fn snapshot(&self, sink: &mut crate::storage::SnapshotSink<'_>) -> Option<Result<u64, StorageError>> {
        let lock = || self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut cache = lock();
            if cache.written_since_snapshot.is_some() {
                return Some(Err(StorageError::transient("another snapshot of this database is under way")));
            }
            cache.written_since_snapshot = Some(Default::default());
        }
        let mut count = 0;
        let walked = (|| {
            for item in self.db.iter() {
                let (k, v) = item.map_err(|e| map_err("snapshot", e))?;
                sink(&k, Some(&v)).map_err(StorageError::permanent)?;
                count += 1;
            }
            let mut cache = lock();
            let written = cache.written_since_snapshot.take().unwrap_or_default();
            for k in written {
                let now = self.db.get(&k).map_err(|e| map_err("snapshot", e))?;
                sink(&k, now.as_deref()).map_err(StorageError::permanent)?;
                count += 1;
            }
            Ok(count)
        })();
        if walked.is_err() {
            lock().written_since_snapshot = None;
        }
        Some(walked)
    }

    fn notices(&self) -> &NoticeBus {
        &self.notices
    }
}
