//! The sled backend (default): one sled database in a data directory, records
//! in its default tree under `d\0{store}\0{key}`.
//!
//! Owns: the `sled::Db` handle and the mapping of sled errors to
//! [`ErrorKind`]. Must not: retry (the queue does), or flush implicitly — a
//! write is durable only after [`Backend::flush`], which the queue calls once
//! per group commit.

use std::path::{Path, PathBuf};

use super::{Backend, KeyValues, NoticeBus, RecordHeader, StorageError, WriteOp, WriteOutcome};

/// A [`Backend`] on an embedded sled database.
pub struct SledBackend {
    db: sled::Db,
    path: PathBuf,
    notices: NoticeBus,
}

fn map_err(context: &str, e: sled::Error) -> StorageError {
    match e {
        // I/O errors are often passing (EINTR, EAGAIN, a busy disk); the
        // queue's bounded retry turns a lasting one into a reported failure.
        sled::Error::Io(io) => StorageError::transient(format!("{context}: {io}")),
        other => StorageError::permanent(format!("{context}: {other}")),
    }
}

impl SledBackend {
    /// Opens (or creates) the database in `path`. A database that sled cannot
    /// open (for example after a crash it cannot recover from) is reported
    /// with its path and left exactly as found; it is never reset.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|e| map_err(&format!("cannot open sled database at {}", path.display()), e))?;
        Ok(Self { db, path, notices: NoticeBus::default() })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_one(&self, op: &WriteOp) -> Result<WriteOutcome, StorageError> {
        // sled's compare_and_swap compares whole values; we read, check the
        // header precondition, then swap against exactly what we read. A
        // concurrent writer in between makes the swap fail and we re-check.
        loop {
            let current = self.db.get(&op.key).map_err(|e| map_err("get before write", e))?;
            if !op.precondition.holds(current.as_deref()) {
                return Ok(WriteOutcome::Conflict { current: current.as_deref().and_then(RecordHeader::peek) });
            }
            let swapped = self
                .db
                .compare_and_swap(&op.key, current, op.value.as_deref())
                .map_err(|e| map_err("compare_and_swap", e))?;
            match swapped {
                Ok(()) => return Ok(WriteOutcome::Applied),
                Err(_raced) => continue,
            }
        }
    }
}

impl Backend for SledBackend {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get(key).map(|v| v.map(|iv| iv.to_vec())).map_err(|e| map_err("get", e))
    }

    fn write_batch(&self, ops: &[WriteOp]) -> Vec<Result<WriteOutcome, StorageError>> {
        ops.iter().map(|op| self.write_one(op)).collect()
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

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(|e| map_err("flush", e))
    }

    fn notices(&self) -> &NoticeBus {
        &self.notices
    }
}
