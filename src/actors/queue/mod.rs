//! The queue actor: the single path from the engine to the backend.
//!
//! Owns: the emergency and normal lanes, the token buckets, the retry timers,
//! the batch executing and, on its own thread, the flusher thread (sled) or
//! the writer threads (PostgreSQL's writer connections).
//! Every batch is one `Backend::write_batch` followed by a `Backend::flush`
//! (group commit): while a batch is on the disk, new requests gather and go
//! together in the next. On its own thread the queue pipelines: it hands
//! the flush of an applied batch to the flusher and, when what waits fills
//! a whole batch, applies the next one while the disk syncs (up to
//! `MAX_UNFLUSHED` batches; one flush covers every batch applied before
//! it); smaller writes wait for the flush and gather, reads go meanwhile.
//! A backend durable on write that writes
//! several batches at once gets a writer thread per connection instead:
//! up to that many batches are out at once, on disjoint keys.
//!
//! Invariants:
//! - per-key FIFO: a key with a request executing, waiting out a backoff, or
//!   skipped for budget blocks that key's later requests; an emergency
//!   request pulls the same key's queued normal requests ahead of it;
//! - a batch holds at most one request per key;
//! - a write is reported `Applied` only after the flush that covers it;
//! - reads see only durable data: a key with an unflushed write is blocked,
//!   and scans wait until nothing is unflushed;
//! - with writer threads, a batch holding a scan or an all-or-nothing step
//!   (several keys, of which the queue tracks the first) goes out alone,
//!   and while one waits for what is out, nothing new goes out.
//!
//! Layout: this file holds the actor (scheduling, retries, its messages);
//! `lanes.rs` what goes in a batch (plain logic); `exec.rs` running a batch
//! against the backend (plain functions of `&dyn Backend`); `pipeline.rs`
//! the flusher and writer threads and how a settled batch is answered.
//!
//! Must not: know about documents or leases (it moves bytes). One
//! exception, on purpose: it peeks at a written value's `RecordHeader` to
//! recognise its own retried write already applied (a lost flush or COMMIT
//! answer), and then compares the stored bytes with its own.

mod exec;
mod lanes;
mod pipeline;

use self::exec::{apply, execute, fail_applied};
use self::pipeline::{answer, run_flusher, run_writer, settle, write_whole, Flushed, KeyPart, SettledBatch, Unflushed};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{debug, debug_span, warn};

use self::lanes::{BatchLimits, BudgetClass, KeyCounts, KeyHashSet, Lanes, Queued};
use crate::config::QueueConfig;
use crate::messages::queue::{
    DropQueued, GetBudgets, GetDepth, GetStats, NotifyWhenEmpty, Operation, QueueFailure, Reply, Submit,
};
use crate::retry::RetryState;
use crate::storage::{AllOrNothing, Backend, Precondition, RecordHeader, StorageError, WriteOp, WriteOutcome};
use crate::types::{Priority, QueueDepth, QueueStats};

/// Batches applied and waiting for their flush, at most. Enough to keep
/// the disk busy while the next batch is applied; bounds what waits.
const MAX_UNFLUSHED: usize = 4;

type Results = Vec<Result<Reply, StorageError>>;

/// Requests with their final results, to be answered.
type Answers = Vec<(Pending, Result<Reply, StorageError>)>;

pub(crate) struct Pending {
    req: Submit,
    /// seahash of the storage key: the per-key bookkeeping below is keyed
    /// by it, which costs no key copies. Two keys with one hash would only
    /// be ordered as if they were one key.
    key_hash: u64,
    attempt: u32,
    retry: Option<RetryState>,
    enqueued: Instant,
}

impl Queued for Pending {
    fn key_hash(&self) -> u64 {
        self.key_hash
    }
    fn lane(&self) -> Priority {
        self.req.lane
    }
    fn set_lane(&mut self, lane: Priority) {
        self.req.lane = lane;
    }
    fn bytes(&self) -> usize {
        self.req.op.value_len()
    }
    fn class(&self) -> BudgetClass {
        match self.req.op {
            Operation::Get(_) => BudgetClass::Get,
            Operation::Write(_) | Operation::WriteAll { .. } => BudgetClass::Write,
            Operation::Scan { .. } | Operation::ScanSizes { .. } => BudgetClass::Scan,
        }
    }
}

/// The queue actor. Started by `Datastorer::start`; see the module docs.
pub(crate) struct QueueActor {
    backend: Arc<dyn Backend>,
    config: QueueConfig,
    /// What waits, and how the next batch is picked.
    lanes: Lanes<Pending>,
    retrying: HashMap<u64, Pending>,
    retrying_keys: KeyCounts,
    next_retry_id: u64,
    executing: usize,
    /// The queue has a thread to itself (sled): batches run inline on it,
    /// saving the hop to tokio's blocking pool and back on every batch.
    own_thread: bool,
    /// Where applied batches go to be flushed (own thread only).
    flusher: Option<std::sync::mpsc::Sender<Unflushed>>,
    /// Where batches go to be written, and how many writer threads take
    /// them (own thread, a backend durable on write with several writers).
    writers: Option<(std::sync::mpsc::Sender<Vec<Pending>>, usize)>,
    /// A batch with a scan or an all-or-nothing step is with the writers:
    /// nothing else goes out until it is back.
    exclusive_in_flight: bool,
    /// The last batch composed passed over a scan or an all-or-nothing step
    /// because something was in flight: the writers get nothing more until
    /// what is out is back, so it cannot wait forever under load.
    exclusive_held: bool,
    /// Batches handed to the flusher or the writers and not back yet, and
    /// their requests.
    unflushed: usize,
    unflushed_requests: usize,
    /// Keys with a request in an unflushed batch.
    unflushed_keys: KeyCounts,
    /// The keys a batch being composed may not take (scratch space).
    blocked: KeyHashSet,
    /// A pump is scheduled for after the mailbox drains.
    pump_scheduled: bool,
    wake_at: Option<Instant>,
    stats: QueueStats,
    empty_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl QueueActor {
    /// Marks the queue as running on a thread of its own, where blocking
    /// backend calls may run inline (messages wait in the mailbox meanwhile,
    /// which is group commit).
    pub(crate) fn on_own_thread(mut self) -> Self {
        self.own_thread = true;
        self
    }

    pub(crate) fn new(backend: Arc<dyn Backend>, config: QueueConfig) -> Self {
        let limits = BatchLimits {
            max_batch: config.max_batch,
            max_batch_bytes: config.max_batch_bytes,
            normal_share: config.normal_share,
        };
        Self {
            lanes: Lanes::new(limits, &config.budgets),
            backend,
            config,
            retrying: HashMap::new(),
            retrying_keys: KeyCounts::default(),
            next_retry_id: 0,
            executing: 0,
            own_thread: false,
            flusher: None,
            writers: None,
            exclusive_in_flight: false,
            exclusive_held: false,
            unflushed: 0,
            unflushed_requests: 0,
            unflushed_keys: KeyCounts::default(),
            blocked: KeyHashSet::default(),
            pump_scheduled: false,
            wake_at: None,
            stats: QueueStats::default(),
            empty_waiters: Vec::new(),
        }
    }

    fn depth(&self) -> QueueDepth {
        let (emergency, normal) = self.lanes.len();
        QueueDepth {
            emergency,
            normal,
            in_flight: self.executing + self.unflushed_requests,
            retrying: self.retrying.len(),
        }
    }

    fn enqueue(&mut self, pending: Pending, front: bool) {
        self.lanes.enqueue(pending, front);
    }

    /// The next batch: what `Lanes` picks, with retrying and unflushed keys
    /// blocked, and scans held while anything applied is not yet durable.
    fn compose(&mut self, hold_writes: bool) -> Vec<Pending> {
        // Kept between batches (cleared, its room kept): composing runs
        // for every batch, most of them of one request.
        let blocked = &mut self.blocked;
        // ...unless a burst grew it (a shutdown's batches of thousands).
        if blocked.capacity() > 4096 {
            *blocked = KeyHashSet::default();
        }
        blocked.clear();
        blocked.extend(self.retrying_keys.keys().chain(self.unflushed_keys.keys()));
        let parallel = self.writers.is_some();
        let held = std::cell::Cell::new(false);
        // Asked only of requests held back because something is in flight.
        let batch = self.lanes.compose(blocked, self.unflushed > 0, |p| {
            let exclusive = exclusive(p, parallel);
            held.set(held.get() || exclusive);
            exclusive || (hold_writes && p.req.op.writes())
        });
        self.exclusive_held = held.get();
        batch
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.executing > 0 {
            return;
        }
        if self.flusher.is_some() {
            return self.pump_pipelined(ctx);
        }
        if self.writers.is_some() {
            return self.pump_parallel(ctx);
        }
        loop {
            let mut batch = self.compose(false);
            if batch.is_empty() {
                self.schedule_budget_wake(ctx);
                self.notify_if_empty();
                return;
            }
            self.executing = batch.len();
            if self.backend.is_blocking() && !self.own_thread {
                let backend = self.backend.clone();
                let span = debug_span!(target: "datastorer::queue", "batch", size = batch.len());
                let work = tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    let started = Instant::now();
                    let results = execute(&*backend, &mut batch);
                    (batch, results, started.elapsed())
                });
                ctx.spawn(work.into_actor(self).map(|joined, act, ctx| {
                    act.executing = 0;
                    match joined {
                        Ok((batch, results, took)) => act.finish(batch, results, took, ctx),
                        // The blocking task panicked or was cancelled: the
                        // batch is lost with it; nothing is acknowledged.
                        Err(e) => warn!(target: "datastorer::queue", error = %e, "storage batch task failed"),
                    }
                    act.pump(ctx);
                }));
                return;
            }
            let span = debug_span!(target: "datastorer::queue", "batch", size = batch.len());
            let _entered = span.enter();
            let started = Instant::now();
            let results = execute(&*self.backend, &mut batch);
            self.executing = 0;
            self.finish(batch, results, started.elapsed(), ctx);
        }
    }

    /// On the queue's own thread: applies batches inline and hands each to
    /// the flusher, up to `MAX_UNFLUSHED` at a time.
    fn pump_pipelined(&mut self, ctx: &mut Context<Self>) {
        while self.unflushed < MAX_UNFLUSHED {
            // Group commit by flush: while a flush is out, writes that would
            // not fill a batch wait for it and gather what arrives meanwhile,
            // to be applied and synced together; reads need no flush and go.
            // A batch applied beside a running sync only pays off when it is
            // full (a backlog): a small one costs sled a log write of its own
            // for the few microseconds it saves.
            let hold_writes = self.unflushed > 0 && !self.lanes.would_fill_batch();
            // Nothing but held writes (scans wait for every flush anyway):
            // no batch to compose, and no walk over what waits. The flush's
            // return pumps again, so no timer either (and the queue is not
            // empty while a flush is out).
            if hold_writes && self.lanes.waiting(BudgetClass::Get) == 0 {
                return;
            }
            let mut batch = self.compose(hold_writes);
            if batch.is_empty() {
                if !hold_writes {
                    self.schedule_budget_wake(ctx);
                    self.notify_if_empty();
                }
                return;
            }
            let span = debug_span!(target: "datastorer::queue", "batch", size = batch.len());
            let _entered = span.enter();
            let started = Instant::now();
            let (results, needs_flush) = apply(&*self.backend, &mut batch);
            let took = started.elapsed();
            if !needs_flush {
                self.finish(batch, results, took, ctx);
                continue;
            }
            for p in &batch {
                self.unflushed_keys.add(p.key_hash, 1);
            }
            self.unflushed += 1;
            self.unflushed_requests += batch.len();
            let job = Unflushed { batch, results, took, flushes: 0 };
            let sent = match &self.flusher {
                Some(f) => f.send(job).map_err(|e| e.0),
                None => Err(job),
            };
            if let Err(mut job) = sent {
                // The flusher ends only with the queue; should it be gone
                // anyway, flushing continues inline, unpipelined.
                warn!(target: "datastorer::queue", "flusher thread gone; flushing inline");
                self.flusher = None;
                if let Err(e) = self.backend.flush() {
                    fail_applied(&mut job.results, &e);
                }
                // One flush, just made; still counted as unflushed above,
                // so `flushed` books it.
                let (done, answers) = settle(job.batch, job.results, job.took, 1, self.config.retry.max_attempts, true);
                self.flushed(vec![done], ctx);
                answer(answers);
                return self.pump(ctx);
            }
        }
    }

    /// With writer threads: hands batches to them, up to one per writer,
    /// on keys no batch in flight has; a scan or an all-or-nothing step
    /// goes out only when nothing else is out, and alone (`exclusive`).
    fn pump_parallel(&mut self, ctx: &mut Context<Self>) {
        let Some((_, writer_count)) = self.writers else { return };
        while self.unflushed < writer_count && !self.exclusive_in_flight {
            if self.exclusive_held && self.unflushed > 0 {
                return;
            }
            let batch = self.compose(false);
            if batch.is_empty() {
                self.schedule_budget_wake(ctx);
                self.notify_if_empty();
                return;
            }
            self.exclusive_in_flight = batch.iter().any(|p| exclusive(p, true));
            for p in &batch {
                self.unflushed_keys.add(p.key_hash, 1);
            }
            self.unflushed += 1;
            self.unflushed_requests += batch.len();
            let sent = match &self.writers {
                Some((tx, _)) => tx.send(batch).map_err(|e| e.0),
                None => Err(batch),
            };
            if let Err(batch) = sent {
                // The writers end only with the queue; should they be gone
                // anyway, batches run inline, one at a time.
                warn!(target: "datastorer::queue", "writer threads gone; writing inline");
                self.writers = None;
                let (done, answers) = write_whole(&*self.backend, batch, self.config.retry.max_attempts);
                self.flushed(vec![done], ctx);
                answer(answers);
                return self.pump(ctx);
            }
        }
    }

    /// Batches back from the flusher or the writers, answered but for
    /// their retries.
    fn flushed(&mut self, settled: Vec<SettledBatch>, ctx: &mut Context<Self>) {
        for done in settled {
            self.unflushed -= 1;
            self.unflushed_requests -= done.requests;
            for key in &done.keys {
                self.unflushed_keys.remove_one(*key);
            }
            self.done(done, ctx);
        }
        // An exclusive batch went out alone.
        if self.unflushed == 0 {
            self.exclusive_in_flight = false;
        }
    }

    fn schedule_budget_wake(&mut self, ctx: &mut Context<Self>) {
        if self.lanes.is_empty() {
            return;
        }
        let wait = self.lanes.time_to_token().unwrap_or(Duration::from_millis(1)).max(Duration::from_millis(1));
        let at = Instant::now() + wait;
        if self.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        self.wake_at = Some(at);
        ctx.run_later(wait, |act, ctx| {
            act.wake_at = None;
            act.pump(ctx);
        });
    }

    /// A batch is done (flushed, if it wrote): answers what is final,
    /// schedules retries for the rest.
    fn finish(&mut self, batch: Vec<Pending>, results: Results, took: Duration, ctx: &mut Context<Self>) {
        let wrote = batch.iter().any(|p| p.req.op.writes());
        let (done, answers) = settle(batch, results, took, u64::from(wrote), self.config.retry.max_attempts, false);
        answer(answers);
        self.done(done, ctx);
    }

    /// Books a settled batch: stats, and a retry timer for each retry.
    fn done(&mut self, done: SettledBatch, ctx: &mut Context<Self>) {
        debug!(target: "datastorer::queue", size = done.requests, duration_us = done.took.as_micros() as u64, "batch done");
        self.stats.batches += 1;
        self.stats.writes += done.writes;
        self.stats.gets += done.gets;
        self.stats.flushes += done.flushes;
        for (mut p, error) in done.retry {
            let delay = p.retry.get_or_insert_with(|| RetryState::new(&self.config.retry)).next_delay();
            warn!(
                target: "datastorer::queue",
                store = %KeyPart::Store(p.req.op.key()), key = %KeyPart::Key(p.req.op.key()), op = p.req.op.name(), lane = p.req.lane.as_str(),
                attempt = p.attempt, outcome = "retry", delay_ms = delay.as_millis() as u64,
                error = %error, "request failed, retrying"
            );
            let id = self.next_retry_id;
            self.next_retry_id += 1;
            self.retrying_keys.add(p.key_hash, 1);
            self.retrying.insert(id, p);
            ctx.run_later(delay, move |act, ctx| act.retry_due(id, ctx));
        }
    }

    fn retry_due(&mut self, id: u64, ctx: &mut Context<Self>) {
        if let Some(p) = self.retrying.remove(&id) {
            self.release_retry_key(p.key_hash);
            self.enqueue(p, true);
        }
        self.pump(ctx);
    }

    fn release_retry_key(&mut self, key: u64) {
        self.retrying_keys.remove_one(key);
    }

    fn notify_if_empty(&mut self) {
        if self.depth().total() == 0 {
            for w in self.empty_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if !self.own_thread {
            return;
        }
        // A backend whose writes are durable when they return (PostgreSQL
        // commits in `write_batch`) has no flush to overlap: a flusher
        // thread would only add a thread hop to every save. One that can
        // write several batches at once gets a writer thread for each.
        let capabilities = self.backend.capabilities();
        if capabilities.durable_on_write {
            if capabilities.parallel_writers > 1 {
                self.start_writers(capabilities.parallel_writers, ctx);
            }
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let backend = self.backend.clone();
        let queue = ctx.address().downgrade();
        let max_attempts = self.config.retry.max_attempts;
        let spawned = std::thread::Builder::new()
            .name("datastorer-flush".into())
            .spawn(move || run_flusher(backend, rx, queue, max_attempts));
        match spawned {
            Ok(_) => self.flusher = Some(tx),
            // Without a thread to spare, batches flush inline as before.
            Err(e) => warn!(target: "datastorer::queue", error = %e, "no flusher thread; flushing inline"),
        }
    }
}

impl QueueActor {
    fn start_writers(&mut self, count: usize, ctx: &mut Context<Self>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        for i in 0..count {
            let (backend, jobs, queue) = (self.backend.clone(), rx.clone(), ctx.address().downgrade());
            let max_attempts = self.config.retry.max_attempts;
            let spawned = std::thread::Builder::new()
                .name(format!("datastorer-write-{i}"))
                .spawn(move || run_writer(backend, jobs, queue, max_attempts));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => warn!(target: "datastorer::queue", error = %e, "no writer thread"),
            }
        }
        // Without threads to spare, batches run inline as before.
        if started > 0 {
            self.writers = Some((tx, started));
        }
    }
}

/// A request that must see, or write, more than its own key: a scan, or an
/// all-or-nothing step over several keys. It waits while anything applied
/// is not yet durable; with several writers (`parallel`) an all-or-nothing
/// step waits too, and the batch holding either goes out alone.
fn exclusive(p: &Pending, parallel: bool) -> bool {
    match p.req.op {
        Operation::Scan { .. } | Operation::ScanSizes { .. } => true,
        Operation::WriteAll { .. } => parallel,
        Operation::Get(_) | Operation::Write(_) => false,
    }
}

impl Handler<Flushed> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Flushed, ctx: &mut Self::Context) {
        self.flushed(msg.0, ctx);
        self.pump(ctx);
    }
}

impl Handler<Submit> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        let key_hash = seahash::hash(msg.op.key());
        let pending = Pending { req: msg, key_hash, attempt: 0, retry: None, enqueued: Instant::now() };
        self.enqueue(pending, false);
        // Let the requests already in the mailbox join before composing a
        // batch: group commit without waiting on a timer.
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            ctx.spawn(tokio::task::yield_now().into_actor(self).map(|_, act, ctx| {
                act.pump_scheduled = false;
                act.pump(ctx);
            }));
        }
    }
}

impl Handler<DropQueued> for QueueActor {
    type Result = usize;

    fn handle(&mut self, msg: DropQueued, _ctx: &mut Self::Context) -> usize {
        let mut dropped = self.lanes.drain(msg.emergency_too);
        let ids: Vec<u64> = self
            .retrying
            .iter()
            .filter(|(_, p)| msg.emergency_too || p.req.lane == Priority::Normal)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(p) = self.retrying.remove(&id) {
                self.release_retry_key(p.key_hash);
                dropped.push(p);
            }
        }
        let count = dropped.len();
        for p in dropped {
            debug!(
                target: "datastorer::queue",
                store = %KeyPart::Store(p.req.op.key()), key = %KeyPart::Key(p.req.op.key()), op = p.req.op.name(),
                lane = p.req.lane.as_str(), outcome = "cancelled", "request dropped"
            );
            let _ = p.req.reply.send(Err(QueueFailure::Cancelled));
        }
        self.notify_if_empty();
        count
    }
}

impl Handler<NotifyWhenEmpty> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: NotifyWhenEmpty, _ctx: &mut Self::Context) {
        self.empty_waiters.push(msg.done);
        self.notify_if_empty();
    }
}

impl Handler<GetBudgets> for QueueActor {
    type Result = MessageResult<GetBudgets>;

    fn handle(&mut self, _msg: GetBudgets, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.lanes.budget_levels())
    }
}

impl Handler<GetStats> for QueueActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _msg: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats)
    }
}

impl Handler<GetDepth> for QueueActor {
    type Result = MessageResult<GetDepth>;

    fn handle(&mut self, _msg: GetDepth, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.depth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Budget;
    use crate::storage::memory::MemoryBackend;
    use crate::storage::Record;
    use tokio::sync::oneshot;

    fn record(revision: u64) -> Vec<u8> {
        Record {
            header: RecordHeader { epoch: 1, revision },
            data_version: 0,
            data: b"{}".to_vec(),
            metadata: b"{}".to_vec(),
            user_ids: vec![],
            lease: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
        .encode()
    }

    fn submit(
        q: &Addr<QueueActor>,
        key: &[u8],
        precondition: Precondition,
        value: Vec<u8>,
        lane: Priority,
    ) -> oneshot::Receiver<Result<Reply, QueueFailure>> {
        let (reply, rx) = oneshot::channel();
        q.do_send(Submit { op: Operation::Write(WriteOp::new(key, precondition, Some(value))), lane, reply });
        rx
    }

    /// An emergency request must not overtake an older normal request for the
    /// same key: the second write here is conditional on the first.
    #[actix_rt::test]
    async fn per_key_order_holds_across_lanes() {
        tokio::time::pause();
        let backend = Arc::new(MemoryBackend::new());
        let mut config = QueueConfig::default();
        config.budgets.write = Some(Budget { per_second: 1.0, burst: 1.0 });
        let q = QueueActor::new(backend.clone(), config).start();
        let (v1, v2) = (record(1), record(2));
        let first = submit(&q, b"k", Precondition::Absent, v1.clone(), Priority::Normal);
        let other = submit(&q, b"j", Precondition::Any, record(9), Priority::Normal);
        let second = submit(
            &q,
            b"k",
            Precondition::Header(RecordHeader { epoch: 1, revision: 1 }),
            v2.clone(),
            Priority::Emergency,
        );
        for rx in [first, second, other] {
            assert!(matches!(rx.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
        }
        assert_eq!(backend.written_keys(), vec![b"k".to_vec(), b"k".to_vec(), b"j".to_vec()]);
        assert_eq!(backend.raw_get(b"k").unwrap(), v2);
    }

    /// What the writers of a two-writer backend are doing, seen by its
    /// write hook: the keys of each batch in flight, the most batches in
    /// flight at once, and any key found in two of them.
    #[derive(Default)]
    struct InFlight {
        batches: Vec<Vec<Vec<u8>>>,
        most: usize,
        overlaps: Vec<Vec<u8>>,
        /// Batches in flight met by each all-or-nothing step on its way in.
        beside_all_or_nothing: Vec<usize>,
        /// A batch holding this key waits in the hook until `open`.
        gate: Option<Vec<u8>>,
        open: bool,
    }

    type Watched = Arc<(std::sync::Mutex<InFlight>, std::sync::Condvar)>;

    /// A memory backend claiming two writer connections, durable on write,
    /// whose hook books `InFlight`, says which keys entered on `entered`,
    /// and holds a gated batch until the gate opens (10 s at most, so a
    /// broken queue fails instead of hanging).
    fn two_writers() -> (Arc<crate::testing::Intercepted>, Watched, tokio::sync::mpsc::UnboundedReceiver<Vec<Vec<u8>>>)
    {
        let state: Watched = Arc::default();
        let (entered, entries) = tokio::sync::mpsc::unbounded_channel();
        let seen = state.clone();
        let hook = move |ops: &mut [WriteOp]| {
            let (lock, wake) = &*seen;
            let keys: Vec<Vec<u8>> = ops.iter().map(|o| o.key.to_vec()).collect();
            let mut s = lock.lock().unwrap();
            if keys.iter().any(|k| k.starts_with(b"all-")) {
                let beside = s.batches.len();
                s.beside_all_or_nothing.push(beside);
            }
            for k in &keys {
                if s.batches.iter().any(|b| b.contains(k)) {
                    s.overlaps.push(k.clone());
                }
            }
            s.batches.push(keys.clone());
            s.most = s.most.max(s.batches.len());
            let _ = entered.send(keys.clone());
            if s.gate.as_ref().is_some_and(|g| keys.contains(g)) {
                s = wake.wait_timeout_while(s, Duration::from_secs(10), |s| !s.open).unwrap().0;
            }
            if let Some(at) = s.batches.iter().position(|b| *b == keys) {
                s.batches.remove(at);
            }
        };
        let backend = crate::testing::Intercepted::new(Arc::new(MemoryBackend::new()), hook).claiming(
            crate::storage::Capabilities {
                prefers_own_thread: true,
                durable_on_write: true,
                parallel_writers: 2,
                writes_all_or_nothing: true,
                ..Default::default()
            },
        );
        (Arc::new(backend), state, entries)
    }

    /// A queue on `two_writers` whose first write, of `a`, is held on the
    /// database by the gate.
    struct Held {
        backend: Arc<crate::testing::Intercepted>,
        state: Watched,
        entries: tokio::sync::mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
        q: Addr<QueueActor>,
        a1: oneshot::Receiver<Result<Reply, QueueFailure>>,
    }

    async fn a_held_on_two_writers() -> Held {
        let (backend, state, mut entries) = two_writers();
        state.0.lock().unwrap().gate = Some(b"a".to_vec());
        let q = QueueActor::new(backend.clone(), QueueConfig::default()).on_own_thread().start();
        let a1 = submit(&q, b"a", Precondition::Absent, record(1), Priority::Normal);
        assert_eq!(entries.recv().await.unwrap(), vec![b"a".to_vec()]);
        Held { backend, state, entries, q, a1 }
    }

    fn open_gate(state: &Watched) {
        state.0.lock().unwrap().open = true;
        state.1.notify_all();
    }

    /// With two writers a batch goes out while another is on the database,
    /// on other keys only: the same key's next write waits for the first.
    #[actix_rt::test]
    async fn two_writers_run_two_batches_at_once_never_one_key_in_both() {
        let Held { backend, state, mut entries, q, a1 } = a_held_on_two_writers().await;
        // `a` is held on the database: its next write must wait, `b` need not.
        let a2 =
            submit(&q, b"a", Precondition::Header(RecordHeader { epoch: 1, revision: 1 }), record(2), Priority::Normal);
        let b1 = submit(&q, b"b", Precondition::Absent, record(1), Priority::Normal);
        assert_eq!(entries.recv().await.unwrap(), vec![b"b".to_vec()], "b went out beside the held batch");
        assert!(matches!(b1.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
        open_gate(&state);
        for rx in [a1, a2] {
            assert!(matches!(rx.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
        }
        assert_eq!(entries.recv().await.unwrap(), vec![b"a".to_vec()]);
        let s = state.0.lock().unwrap();
        assert_eq!(s.most, 2, "two batches were in flight at once");
        assert!(s.overlaps.is_empty(), "keys in two batches at once: {:?}", s.overlaps);
        assert_eq!(backend.get(b"a").unwrap(), Some(record(2)));
    }

    /// An all-or-nothing step over several keys goes out only when no other
    /// batch is in flight (its first key alone is what the queue blocks on).
    #[actix_rt::test]
    async fn two_writers_send_an_all_or_nothing_step_alone() {
        let Held { backend, state, mut entries, q, a1 } = a_held_on_two_writers().await;
        let (reply, all) = oneshot::channel();
        let ops = vec![
            WriteOp::new(&b"all-1"[..], Precondition::Absent, Some(record(1))),
            WriteOp::new(&b"all-2"[..], Precondition::Absent, Some(record(1))),
        ];
        q.do_send(Submit { op: Operation::WriteAll { ops }, lane: Priority::Normal, reply });
        let b1 = submit(&q, b"b", Precondition::Absent, record(1), Priority::Normal);
        // `b` overtakes the waiting step; the step waits for `a` to be back.
        assert_eq!(entries.recv().await.unwrap(), vec![b"b".to_vec()]);
        assert!(matches!(b1.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
        open_gate(&state);
        assert!(matches!(a1.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
        assert!(matches!(all.await.unwrap(), Ok(Reply::AllOrNothing(AllOrNothing::Applied))));
        let s = state.0.lock().unwrap();
        assert_eq!(s.beside_all_or_nothing, vec![0], "the step went out alone");
        assert_eq!(backend.get(b"all-2").unwrap(), Some(record(1)));
    }

    /// A scan held back while a batch is out stops the writers from taking
    /// more: under a steady stream of writes it would otherwise wait for a
    /// moment when nothing is out, which may never come.
    #[actix_rt::test]
    async fn two_writers_drain_for_a_waiting_scan() {
        let Held { state, mut entries, q, a1, .. } = a_held_on_two_writers().await;
        let (reply, scanned) = oneshot::channel();
        let scan = Operation::Scan { prefix: b"".to_vec().into(), start_after: None, limit: 10 };
        q.do_send(Submit { op: scan, lane: Priority::Normal, reply });
        // Composed beside the held batch, past the waiting scan.
        let b1 = submit(&q, b"b", Precondition::Absent, record(1), Priority::Normal);
        assert_eq!(entries.recv().await.unwrap(), vec![b"b".to_vec()]);
        assert!(matches!(b1.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
        // Now a writer is free, but the scan waits: nothing more goes out.
        let c1 = submit(&q, b"c", Precondition::Absent, record(1), Priority::Normal);
        for _ in 0..3 {
            q.send(GetDepth).await.unwrap();
        }
        let depth = q.send(GetDepth).await.unwrap();
        assert_eq!((depth.normal, depth.in_flight), (2, 1), "the scan and c wait; only a is out: {depth:?}");
        open_gate(&state);
        assert!(matches!(a1.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
        assert!(matches!(scanned.await.unwrap(), Ok(Reply::Scanned(_))));
        assert!(matches!(c1.await.unwrap(), Ok(Reply::Written(WriteOutcome::Applied))));
    }
}
