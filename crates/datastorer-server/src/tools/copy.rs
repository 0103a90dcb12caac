//! `datastorer copy-sled-to-postgres`: every record of a stopped sled
//! directory into PostgreSQL byte for byte.
//!
//! Must not: rewrite a record it cannot decode.

use std::path::Path;

use super::{for_each_record, open_existing, Progress, TOOL_BATCH};
use datastorer::storage::postgres::PgBackend;
use datastorer::storage::{
    split_storage_key, Backend, Precondition, Record, RecordHeader, WriteOp, WriteOutcome, EPOCH_FLOORS_PREFIX,
    RECORDS_PREFIX,
};

pub(crate) fn copy_sled_to_postgres(
    dir: &Path,
    pg: &datastorer::PostgresConfig,
    overwrite: bool,
) -> Result<(), String> {
    let source = open_existing(dir)?;
    let target = PgBackend::connect(pg.clone()).map_err(|e| e.message)?;
    let mut total = 0;
    for_each_record(&source, RECORDS_PREFIX, |_, _| {
        total += 1;
        Ok(())
    })?;
    let mut progress = Progress::new("copy", total);
    let (mut copied, mut same, mut corrupt) = (0usize, 0usize, 0usize);
    let mut differing = Vec::new();
    let mut batch: Vec<WriteOp> = Vec::with_capacity(TOOL_BATCH);
    let mut flush = |batch: &mut Vec<WriteOp>, progress: &mut Progress| -> Result<(), String> {
        for (op, outcome) in batch.iter().zip(target.write_batch(batch)) {
            progress.tick();
            match outcome.map_err(|e| e.to_string())? {
                WriteOutcome::Applied => copied += 1,
                WriteOutcome::Conflict { .. } => {
                    // Already there: the same bytes (a copy run again) are fine.
                    let there = target.get(&op.key).map_err(|e| e.to_string())?;
                    if there.as_deref() == op.value.as_deref() {
                        same += 1;
                    } else {
                        differing.push(split_storage_key(&op.key).map(|(s, k)| format!("{s}/{k}")).unwrap_or_default());
                    }
                }
            }
        }
        batch.clear();
        Ok(())
    };
    for_each_record(&source, RECORDS_PREFIX, |k, v| {
        if Record::decode(v).is_err() {
            corrupt += 1;
        }
        let precondition = if overwrite { Precondition::Any } else { Precondition::Absent };
        batch.push(WriteOp::new(k, precondition, Some(v.to_vec())));
        if batch.len() >= TOOL_BATCH {
            flush(&mut batch, &mut progress)?;
        }
        Ok(())
    })?;
    flush(&mut batch, &mut progress)?;
    progress.finish();
    // The epoch floors go too (never the owner id): a key deleted on sled
    // must not reuse its epochs on PostgreSQL. A floor only ever rises.
    let mut floors = 0;
    for_each_record(&source, EPOCH_FLOORS_PREFIX, |k, v| {
        let theirs = RecordHeader::peek(v).map_or(0, |h| h.epoch);
        let there = target.get(k).map_err(|e| e.to_string())?;
        let ours = there.as_deref().and_then(RecordHeader::peek);
        if ours.is_some_and(|h| h.epoch >= theirs) {
            return Ok(());
        }
        let precondition = match (&there, ours) {
            (None, _) => Precondition::Absent,
            (Some(_), Some(h)) => Precondition::Header(h),
            (Some(_), None) => Precondition::Any,
        };
        let op = WriteOp::new(k, precondition, Some(v.to_vec()));
        match target.write_batch(std::slice::from_ref(&op)).pop() {
            Some(Ok(WriteOutcome::Applied)) => {
                floors += 1;
                Ok(())
            }
            Some(Ok(WriteOutcome::Conflict { .. })) => {
                Err("an epoch floor changed during the copy; run it again".into())
            }
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the database answered no outcome".into()),
        }
    })?;
    eprintln!(
        "copied {copied} records ({corrupt} of them corrupt, copied as they are); {same} were already there; {floors} epoch floors raised"
    );
    if !differing.is_empty() {
        for d in &differing {
            eprintln!("not copied: {d} exists in PostgreSQL with other contents (use --overwrite)");
        }
        return Err(format!("{} record(s) exist in PostgreSQL with other contents", differing.len()));
    }
    Ok(())
}
