//! Running one batch against the backend: its reads in one `get_many`,
//! its writes in one `write_batch`, each all-or-nothing write on its own,
//! and a retried write recognised as already applied. Plain functions of
//! `&dyn Backend`, testable on the memory backend.
//!
//! Must not: flush, schedule or answer; the actor and `pipeline` do.

use super::*;

/// Runs one batch against the backend: reads, then all writes in one
/// `write_batch`, then one flush if anything was written.
pub(super) fn execute(backend: &dyn Backend, batch: &mut [Pending]) -> Results {
    let (mut results, needs_flush) = apply(backend, batch);
    if needs_flush {
        if let Err(e) = backend.flush() {
            fail_applied(&mut results, &e);
        }
    }
    results
}

/// A failed flush fails every write it was to make durable (they are
/// retried; a retry that finds its own header reports success).
pub(super) fn fail_applied(results: &mut Results, error: &StorageError) {
    for r in results.iter_mut() {
        if matches!(r, Ok(Reply::Written(WriteOutcome::Applied) | Reply::AllOrNothing(AllOrNothing::Applied))) {
            *r = Err(error.clone());
        }
    }
}

/// Reads, then all writes in one `write_batch`, without the flush; answers
/// the results and whether anything was written (and needs a flush before
/// any `Applied` may be reported).
pub(super) fn apply(backend: &dyn Backend, batch: &mut [Pending]) -> (Results, bool) {
    let mut results: Vec<Option<Result<Reply, StorageError>>> = Vec::with_capacity(batch.len());
    let mut write_idx = Vec::new();
    let mut writes = Vec::new();
    let mut any_applied = false;
    let mut get_idx = Vec::new();
    let mut all_idx = Vec::new();
    for (i, p) in batch.iter_mut().enumerate() {
        match &mut p.req.op {
            Operation::WriteAll { .. } => {
                all_idx.push(i);
                results.push(None);
            }
            Operation::Get(_) => {
                get_idx.push(i);
                results.push(None);
            }
            Operation::Scan { prefix, start_after, limit } => {
                results.push(Some(backend.scan_prefix(prefix, start_after.as_deref(), *limit).map(Reply::Scanned)))
            }
            Operation::ScanSizes { prefix, start_after, limit } => {
                results.push(Some(backend.scan_sizes(prefix, start_after.as_deref(), *limit).map(Reply::Sized)))
            }
            Operation::Write(op) => {
                // Moved out for the backend call and back after it, so a
                // retry finds its request whole (and nothing is copied).
                write_idx.push(i);
                writes.push(std::mem::replace(op, WriteOp::placeholder()));
                results.push(None);
            }
        }
    }
    if !get_idx.is_empty() {
        // One call for every read of the batch: a network backend answers
        // them in one round trip (a burst of opens would otherwise pay one
        // each, in series).
        let keys: Vec<&[u8]> = get_idx.iter().map(|&i| batch[i].req.op.key()).collect();
        for (&i, value) in get_idx.iter().zip(backend.get_many(&keys)) {
            results[i] = Some(value.map(Reply::Value));
        }
    }
    if !writes.is_empty() {
        let mut outcomes = backend.write_batch(&writes);
        confirm_own_writes(backend, &writes, &mut outcomes);
        for (&i, outcome) in write_idx.iter().zip(outcomes) {
            any_applied |= matches!(outcome, Ok(WriteOutcome::Applied));
            results[i] = Some(outcome.map(Reply::Written));
        }
        for (&i, op) in write_idx.iter().zip(writes) {
            batch[i].req.op = Operation::Write(op);
        }
    }
    // After the batch's own writes, each all-or-nothing step on its own
    // (the ops stay with the request, whole for a retry).
    for i in all_idx {
        let Operation::WriteAll { ops } = &batch[i].req.op else { continue };
        let outcome = backend.write_all(ops).unwrap_or_else(|| {
            Err(StorageError::permanent(format!(
                "the {} backend cannot write several keys in one step",
                backend.name()
            )))
        });
        any_applied |= matches!(outcome, Ok(AllOrNothing::Applied));
        results[i] = Some(outcome.map(Reply::AllOrNothing));
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StorageError::permanent("request produced no result"))))
        .collect();
    (results, any_applied)
}

/// A retry of a write whose first attempt applied (but whose flush or
/// COMMIT answer was lost) finds its own new header and conflicts: that is
/// success. The header alone does not prove it, though: two instances that
/// read the same record and race to take its lease compute the same new
/// header (epoch + 1, revision + 1), and the loser would believe it won
/// and write under the winner's epoch. So a conflict that shows the op's
/// own header counts as applied only if the stored bytes are the op's
/// bytes (which name the owner and its expiry).
pub(super) fn confirm_own_writes(
    backend: &dyn Backend,
    writes: &[WriteOp],
    outcomes: &mut [Result<WriteOutcome, StorageError>],
) {
    let suspects: Vec<usize> = writes
        .iter()
        .zip(outcomes.iter())
        .enumerate()
        .filter(|(_, (op, outcome))| match outcome {
            Ok(WriteOutcome::Conflict { current: Some(cur) }) => {
                op.precondition != Precondition::Any && op.value.as_deref().and_then(RecordHeader::peek) == Some(*cur)
            }
            _ => false,
        })
        .map(|(i, _)| i)
        .collect();
    if suspects.is_empty() {
        return;
    }
    let keys: Vec<&[u8]> = suspects.iter().map(|&i| writes[i].key.as_bytes()).collect();
    for (&i, stored) in suspects.iter().zip(backend.get_many(&keys)) {
        match stored {
            Ok(stored) if stored.as_deref() == writes[i].value.as_deref() => outcomes[i] = Ok(WriteOutcome::Applied),
            Ok(_) => {}
            // Unknown: retried like any transient failure, which asks again.
            Err(e) => outcomes[i] = Err(e),
        }
    }
}

// Key actors submit with `do_send`, which ignores the mailbox capacity: the
// queue is bounded by design instead (at most one outstanding write per key).
