//! Pipelined group commit: the flusher thread that syncs one batch while
//! the queue applies the next, the writer threads that each run a whole
//! batch beside another (a backend durable on write), and how a settled
//! batch is answered (results to requesters, retries back to the queue).
//!
//! Must not: choose what goes in a batch; `lanes` does.

use super::*;

/// A batch applied on the queue's thread, on its way through the flusher.
pub(super) struct Unflushed {
    pub(super) batch: Vec<Pending>,
    pub(super) results: Results,
    pub(super) took: Duration,
    /// Flushes made for this batch (0 when an earlier batch's covered it).
    pub(super) flushes: u64,
}

/// Flushed batches, back from the flusher (in the order they were applied).
pub(super) struct Flushed(pub(super) Vec<SettledBatch>);

impl Message for Flushed {
    type Result = ();
}

/// The flusher thread's end of the pipeline: flushes once for everything
/// that arrived while the last flush ran, then hands the batches back.
pub(super) fn run_flusher(
    backend: Arc<dyn Backend>,
    jobs: std::sync::mpsc::Receiver<Unflushed>,
    queue: actix::WeakAddr<QueueActor>,
    max_attempts: u32,
) {
    while let Ok(first) = jobs.recv() {
        let mut done = vec![first];
        done.extend(jobs.try_iter());
        let started = Instant::now();
        // A panicking backend must not take the pipeline down with it: the
        // batches would never be answered.
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.flush()))
            .unwrap_or_else(|_| Err(StorageError::permanent("flush panicked")));
        let took = started.elapsed();
        if let Some(first) = done.first_mut() {
            first.flushes = 1;
        }
        for job in &mut done {
            job.took += took;
            if let Err(e) = &flushed {
                fail_applied(&mut job.results, e);
            }
        }
        let mut settled = Vec::with_capacity(done.len());
        let mut answers = Vec::new();
        for job in done {
            let (s, a) = settle(job.batch, job.results, job.took, job.flushes, max_attempts, true);
            settled.push(s);
            answers.extend(a);
        }
        // The queue hears first, and answers go out from here (not through
        // the queue's thread, one hop less per save): a requester's next
        // write then finds its key unblocked.
        let Some(q) = queue.upgrade() else { return };
        q.do_send(Flushed(settled));
        answer(answers);
    }
}

/// A writer thread (a backend that is durable when a write returns and
/// writes several batches at once, PostgreSQL): runs each batch it takes,
/// then hands it back like the flusher does. The queue keeps no more
/// batches in flight than there are writers, and never one key in two.
pub(super) fn run_writer(
    backend: Arc<dyn Backend>,
    jobs: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Vec<Pending>>>>,
    queue: actix::WeakAddr<QueueActor>,
    max_attempts: u32,
) {
    loop {
        // Held only while waiting: the next writer waits behind it.
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(batch) = next else { return };
        let (settled, answers) = write_whole(&*backend, batch, max_attempts);
        // The queue hears first (the keys unblock), then the requesters.
        let Some(q) = queue.upgrade() else { return };
        q.do_send(Flushed(vec![settled]));
        answer(answers);
    }
}

/// Runs a whole batch (reads, writes, the flush a durable-on-write backend
/// makes a barrier at most) and settles it, on a writer thread or, with
/// the writers gone, inline on the queue's.
pub(super) fn write_whole(
    backend: &dyn Backend,
    mut batch: Vec<Pending>,
    max_attempts: u32,
) -> (SettledBatch, Answers) {
    let span = debug_span!(target: "datastorer::queue", "batch", size = batch.len());
    let _entered = span.enter();
    let started = Instant::now();
    let wrote = batch.iter().any(|p| p.req.op.writes());
    // A panicking backend must not take the writer down with it: the batch
    // would never be answered.
    let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(backend, &mut batch)))
        .unwrap_or_else(|_| {
            let e = StorageError::permanent("the backend panicked");
            batch.iter().map(|_| Err(e.clone())).collect()
        });
    settle(batch, results, started.elapsed(), u64::from(wrote), max_attempts, true)
}

/// A batch after its flush, as the queue books it: counts, and the requests
/// to retry (everything else has been answered).
pub(super) struct SettledBatch {
    pub(super) requests: usize,
    pub(super) writes: u64,
    pub(super) gets: u64,
    pub(super) flushes: u64,
    pub(super) took: Duration,
    /// The key of every request of the batch, to unblock.
    pub(super) keys: Vec<u64>,
    pub(super) retry: Vec<(Pending, StorageError)>,
}

/// Splits a finished batch into final answers and retries; counts attempts.
pub(super) fn settle(
    batch: Vec<Pending>,
    results: Results,
    took: Duration,
    flushes: u64,
    max_attempts: u32,
    // Only a pipelined batch has keys to unblock.
    with_keys: bool,
) -> (SettledBatch, Answers) {
    let mut done = SettledBatch {
        requests: batch.len(),
        writes: batch.iter().filter(|p| p.req.op.writes()).count() as u64,
        gets: batch.iter().filter(|p| matches!(p.req.op, Operation::Get(_))).count() as u64,
        flushes,
        took,
        keys: if with_keys { batch.iter().map(|p| p.key_hash).collect() } else { Vec::new() },
        retry: Vec::new(),
    };
    let mut answers = Vec::with_capacity(batch.len());
    for (mut p, result) in batch.into_iter().zip(results) {
        p.attempt += 1;
        match result {
            Err(error) if error.is_retryable() && p.attempt < max_attempts => done.retry.push((p, error)),
            other => answers.push((p, other)),
        }
    }
    (done, answers)
}

/// A storage key in a log line, as its `store=` or its `key=` field: a
/// record's store and key, or `-` and the raw bytes for anything else.
/// Shown without allocating (and only when the line is logged at all).
pub(super) enum KeyPart<'a> {
    Store(&'a [u8]),
    Key(&'a [u8]),
}

impl std::fmt::Display for KeyPart<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (bytes, want_store) = match self {
            KeyPart::Store(b) => (*b, true),
            KeyPart::Key(b) => (*b, false),
        };
        let record = bytes.strip_prefix(crate::storage::RECORDS_PREFIX).and_then(|rest| {
            let nul = rest.iter().position(|b| *b == 0)?;
            Some((&rest[..nul], &rest[nul + 1..]))
        });
        match (record, want_store) {
            (Some((store, _)), true) => write!(f, "{}", String::from_utf8_lossy(store)),
            (Some((_, key)), false) => write!(f, "{}", String::from_utf8_lossy(key)),
            (None, true) => write!(f, "-"),
            (None, false) => write!(f, "{}", String::from_utf8_lossy(bytes)),
        }
    }
}

/// Sends final answers to their requesters.
pub(super) fn answer(answers: Answers) {
    for (p, result) in answers {
        let op = p.req.op.name();
        let waited = p.enqueued.elapsed().as_micros() as u64;
        match result {
            Ok(reply) => {
                debug!(
                    target: "datastorer::queue",
                    store = %KeyPart::Store(p.req.op.key()), key = %KeyPart::Key(p.req.op.key()), op, lane = p.req.lane.as_str(),
                    attempt = p.attempt, outcome = reply_outcome(&reply), duration_us = waited,
                    "request done"
                );
                let _ = p.req.reply.send(Ok(reply));
            }
            Err(error) => {
                warn!(
                    target: "datastorer::queue",
                    store = %KeyPart::Store(p.req.op.key()), key = %KeyPart::Key(p.req.op.key()), op, lane = p.req.lane.as_str(),
                    attempt = p.attempt, outcome = "failed", duration_us = waited,
                    error = %error, "request failed"
                );
                let failure = QueueFailure::Storage { error, attempts: p.attempt, operation: op };
                let _ = p.req.reply.send(Err(failure));
            }
        }
    }
}

pub(super) fn reply_outcome(reply: &Reply) -> &'static str {
    match reply {
        Reply::Value(Some(_)) => "found",
        Reply::Value(None) => "missing",
        Reply::Written(WriteOutcome::Applied) => "applied",
        Reply::Written(WriteOutcome::Conflict { .. }) => "conflict",
        Reply::Scanned(_) | Reply::Sized(_) => "scanned",
        Reply::AllOrNothing(AllOrNothing::Applied) => "applied",
        Reply::AllOrNothing(AllOrNothing::Refused(_)) => "conflict",
    }
}
