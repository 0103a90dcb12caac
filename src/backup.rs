//! Online backups and their restore: the backend's snapshot (one instant,
//! while writers go on) written as a self-checking file, and the restore of
//! such a file into an empty data directory or database, where every
//! record's epoch is raised above any epoch the backed-up system can have
//! reached since (so a holder from before the restore can never write).
//!
//! File format, version 1 (integers little endian):
//!
//! ```text
//! "DSBACKUP" (8)  version (1)  taken_at_ms (8)
//! entries:  1  key_len (4) key  value_len (4) value     a value stored
//!           2  key_len (4) key                          absent (overrides)
//! end:      0  entries (8)  seahash of every byte before the end tag (8)
//! ```
//!
//! Owns: the format, writing it from a snapshot, reading and checking it,
//! and the restore's rewriting of records. Must not: run while an engine
//! writes to the restore's target.

use std::hash::Hasher;
use std::io::{Read, Write};

use crate::storage::{
    Backend, Precondition, Record, RecordHeader, StorageError, WriteOp, EPOCH_FLOORS_PREFIX, OWNER_ID_KEY,
    RECORDS_PREFIX,
};

const MAGIC: &[u8; 8] = b"DSBACKUP";
const VERSION: u8 = 1;
const PUT: u8 = 1;
const ABSENT: u8 = 2;
const END: u8 = 0;
/// The largest key or value a backup entry may hold (a record is at most
/// a few MiB; this bounds what a damaged file can make us allocate).
const MAX_ENTRY: u32 = 256 * 1024 * 1024;

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackupReport {
    /// When the snapshot was taken (ms since the Unix epoch).
    pub taken_at_ms: u64,
    /// Entries written.
    pub entries: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading the file failed.
    #[error("reading the backup: {0}")]
    Io(#[from] std::io::Error),
    /// Not a backup, an unknown version, truncated or damaged.
    #[error("not a complete datastorer backup: {0}")]
    Invalid(String),
    /// The restore's target refused a write.
    #[error("restoring: {0}")]
    Storage(#[from] StorageError),
}

/// Counts bytes and hashes them on their way out.
struct Hashing<W> {
    out: W,
    hash: seahash::SeaHasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.write(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes a backup of `backend` (its snapshot as of one instant) to `out`.
/// Blocking; the caller runs it off the async runtime.
pub fn write_backup(backend: &dyn Backend, taken_at_ms: u64, out: impl Write) -> Result<BackupReport, StorageError> {
    let io = |e: std::io::Error| StorageError::permanent(format!("writing the backup: {e}"));
    let mut w = Hashing { out: std::io::BufWriter::new(out), hash: seahash::SeaHasher::new(), bytes: 0 };
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&[VERSION]).map_err(io)?;
    w.write_all(&taken_at_ms.to_le_bytes()).map_err(io)?;
    let mut entries = 0u64;
    let mut sink = |k: &[u8], v: Option<&[u8]>| -> Result<(), String> {
        let entry = |w: &mut Hashing<_>| -> std::io::Result<()> {
            w.write_all(&[if v.is_some() { PUT } else { ABSENT }])?;
            w.write_all(&(k.len() as u32).to_le_bytes())?;
            w.write_all(k)?;
            if let Some(v) = v {
                w.write_all(&(v.len() as u32).to_le_bytes())?;
                w.write_all(v)?;
            }
            Ok(())
        };
        entry(&mut w).map_err(|e| e.to_string())?;
        entries += 1;
        Ok(())
    };
    match backend.snapshot(&mut sink) {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Err(e),
        None => return Err(StorageError::permanent(format!("the {} backend cannot take a snapshot", backend.name()))),
    }
    let digest = w.hash.finish();
    let mut tail = vec![END];
    tail.extend_from_slice(&entries.to_le_bytes());
    tail.extend_from_slice(&digest.to_le_bytes());
    w.out.write_all(&tail).map_err(io)?;
    w.out.flush().map_err(io)?;
    Ok(BackupReport { taken_at_ms, entries, bytes: w.bytes + tail.len() as u64 })
}

/// Reads a backup, handing each entry to `f` in order, and checks it is
/// whole (the end marker, the count and the checksum). Answers when it was
/// taken and how many entries it holds. An error from `f` stops the read.
pub fn read_backup(
    input: impl Read,
    mut f: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), BackupError>,
) -> Result<(u64, u64), BackupError> {
    let mut r = std::io::BufReader::new(input);
    let mut hash = seahash::SeaHasher::new();
    let read = |r: &mut std::io::BufReader<_>, n: usize, hash: &mut seahash::SeaHasher, hashed: bool| {
        let mut buf = vec![0; n];
        r.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                BackupError::Invalid("the file ends early (a backup cut short)".into())
            }
            _ => BackupError::Io(e),
        })?;
        if hashed {
            hash.write(&buf);
        }
        Ok::<_, BackupError>(buf)
    };
    let head = read(&mut r, 17, &mut hash, true)?;
    if &head[..8] != MAGIC {
        return Err(BackupError::Invalid("it does not start with DSBACKUP".into()));
    }
    if head[8] != VERSION {
        return Err(BackupError::Invalid(format!(
            "format version {} is not one this build reads ({VERSION})",
            head[8]
        )));
    }
    let taken_at_ms = u64::from_le_bytes(head[9..17].try_into().unwrap_or_default());
    let mut entries = 0u64;
    loop {
        let tag = read(&mut r, 1, &mut hash, false)?[0];
        if tag == END {
            let tail = read(&mut r, 16, &mut hash, false)?;
            let count = u64::from_le_bytes(tail[..8].try_into().unwrap_or_default());
            let digest = u64::from_le_bytes(tail[8..].try_into().unwrap_or_default());
            if count != entries || digest != hash.finish() {
                return Err(BackupError::Invalid("the checksum or the entry count does not match (damaged)".into()));
            }
            return Ok((taken_at_ms, entries));
        }
        hash.write(&[tag]);
        let len = |b: Vec<u8>| -> Result<usize, BackupError> {
            let n = u32::from_le_bytes(b.try_into().unwrap_or_default());
            if n > MAX_ENTRY {
                return Err(BackupError::Invalid(format!("an entry claims {n} bytes")));
            }
            Ok(n as usize)
        };
        let klen = len(read(&mut r, 4, &mut hash, true)?)?;
        let key = read(&mut r, klen, &mut hash, true)?;
        let value = match tag {
            PUT => {
                let vlen = len(read(&mut r, 4, &mut hash, true)?)?;
                Some(read(&mut r, vlen, &mut hash, true)?)
            }
            ABSENT => None,
            other => return Err(BackupError::Invalid(format!("unknown entry tag {other}"))),
        };
        f(&key, value.as_deref())?;
        entries += 1;
    }
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// When the backup was taken.
    pub taken_at_ms: u64,
    /// Entries written to the target.
    pub written: u64,
    /// Records restored (each under a raised epoch, with no lease).
    pub records: u64,
    /// Records kept byte for byte because they do not decode.
    pub corrupt_records: u64,
    /// What every epoch was raised by.
    pub epoch_raise: u64,
}

/// Rewrites one entry for the restore: records and epoch floors get their
/// epoch raised by `raise` (and records lose their lease); the source's
/// owner id is not carried over; everything else is kept as it is.
fn restored_entry(key: &[u8], value: &[u8], raise: u64, report: &mut RestoreReport) -> Option<Vec<u8>> {
    if key == OWNER_ID_KEY {
        return None;
    }
    let is_record = key.starts_with(RECORDS_PREFIX);
    if !is_record && !key.starts_with(EPOCH_FLOORS_PREFIX) {
        return Some(value.to_vec());
    }
    match Record::decode(value) {
        Ok(mut rec) => {
            rec.header = RecordHeader { epoch: rec.header.epoch.saturating_add(raise), revision: rec.header.revision };
            rec.lease = None;
            report.records += u64::from(is_record);
            Some(rec.encode())
        }
        Err(_) => {
            // Kept as found, never dropped: `datastorer check` reports it.
            report.corrupt_records += u64::from(is_record);
            Some(value.to_vec())
        }
    }
}

/// Restores the backup read from `input` into `target`, which must hold no
/// record. Every epoch is raised by `raise` (the restore's time in ms:
/// above any epoch a system could reach by then, one lease at a time), so
/// no holder from before the restore can match a restored record.
/// Checks the whole file before writing anything (`reopen` reads it again).
pub fn restore_backup(
    target: &dyn Backend,
    mut reopen: impl FnMut() -> std::io::Result<Box<dyn Read>>,
    raise: u64,
) -> Result<RestoreReport, BackupError> {
    let (taken_at_ms, _) = read_backup(reopen()?, |_, _| Ok(()))?;
    if !target.scan_prefix(RECORDS_PREFIX, None, 1)?.is_empty() {
        return Err(BackupError::Invalid(
            "the target already holds records: restore into an empty data directory or database".into(),
        ));
    }
    let mut report = RestoreReport { taken_at_ms, epoch_raise: raise, ..RestoreReport::default() };
    let mut batch: Vec<WriteOp> = Vec::new();
    let flush_batch = |batch: &mut Vec<WriteOp>| -> Result<(), BackupError> {
        for outcome in target.write_batch(batch) {
            outcome?;
        }
        batch.clear();
        Ok(())
    };
    read_backup(reopen()?, |key, value| {
        let value = match value {
            Some(v) => match restored_entry(key, v, raise, &mut report) {
                Some(v) => Some(v),
                None => return Ok(()),
            },
            None => None,
        };
        // A later entry for a key overrides an earlier one: written in order,
        // never two for one key in one batch.
        if batch.iter().any(|op| op.key.as_bytes() == key) {
            flush_batch(&mut batch)?;
        }
        batch.push(WriteOp::new(key, Precondition::Any, value));
        report.written += 1;
        if batch.len() >= 1000 {
            flush_batch(&mut batch)?;
        }
        Ok(())
    })?;
    flush_batch(&mut batch)?;
    target.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryBackend;
    use crate::storage::storage_key;

    #[test]
    fn a_backup_reads_back_and_a_damaged_or_cut_one_is_refused() {
        let source = MemoryBackend::new();
        let rec = Record {
            header: RecordHeader { epoch: 3, revision: 17 },
            data_version: 0,
            data: br#"{"coins":5}"#.to_vec(),
            metadata: b"{}".to_vec(),
            user_ids: vec!["42".into()],
            lease: Some(crate::storage::LeaseHolder { owner: "srv".into(), expires_at_ms: u64::MAX }),
            created_at_ms: 1,
            updated_at_ms: 2,
        };
        source.write_batch(&[WriteOp::new(storage_key("s", "k"), Precondition::Any, Some(rec.encode()))]);
        source.write_batch(&[WriteOp::new(b"m\0other".to_vec(), Precondition::Any, Some(b"x".to_vec()))]);
        let mut file = Vec::new();
        let report = write_backup(&source, 77, &mut file).unwrap();
        assert_eq!((report.entries, report.bytes), (2, file.len() as u64));
        let mut seen = Vec::new();
        let read = read_backup(&file[..], |k, v| {
            seen.push((k.to_vec(), v.map(<[u8]>::to_vec)));
            Ok(())
        });
        assert_eq!(read.unwrap(), (77, 2));
        assert_eq!(seen.len(), 2);
        for cut in [file.len() - 1, file.len() - 17, 20, 3] {
            assert!(matches!(read_backup(&file[..cut], |_, _| Ok(())), Err(BackupError::Invalid(_))), "cut at {cut}");
        }
        let mut flipped = file.clone();
        flipped[30] ^= 1;
        assert!(read_backup(&flipped[..], |_, _| Ok(())).is_err(), "a flipped bit is found");

        let target = MemoryBackend::new();
        let restored = restore_backup(&target, || Ok(Box::new(std::io::Cursor::new(file.clone()))), 1000).unwrap();
        assert_eq!((restored.records, restored.written), (1, 2));
        let back = Record::decode(&target.get(&storage_key("s", "k")).unwrap().unwrap()).unwrap();
        assert_eq!(back.header.epoch, rec.header.epoch + 1000);
        assert!(back.lease.is_none());
        assert_eq!(back.data, rec.data);
        // Not into a database that has records.
        assert!(restore_backup(&target, || Ok(Box::new(std::io::Cursor::new(file.clone()))), 1).is_err());
    }
}
