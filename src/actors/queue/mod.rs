//! The queue actor: the single path from the engine to the backend.
//!
//! Owns: the emergency and normal lanes, the token buckets, the retry timers,
//! the batch executing and, on its own thread (sled), the flusher thread.
//! Every batch is one `Backend::write_batch` followed by a `Backend::flush`
//! (group commit): while a batch is on the disk, new requests gather and go
//! together in the next. On its own thread the queue pipelines: it hands
//! the flush of an applied batch to the flusher and applies the next batch
//! while the disk syncs (up to `MAX_UNFLUSHED` batches; one flush covers
//! every batch applied before it).
//!
//! Invariants:
//! - per-key FIFO: a key with a request executing, waiting out a backoff, or
//!   skipped for budget blocks that key's later requests; an emergency
//!   request pulls the same key's queued normal requests ahead of it;
//! - a batch holds at most one request per key;
//! - a write is reported `Applied` only after the flush that covers it;
//! - reads see only durable data: a key with an unflushed write is blocked,
//!   and scans wait until nothing is unflushed.
//!
//! Layout: this file holds the actor (scheduling, retries, its messages);
//! `lanes.rs` what goes in a batch (plain logic); `exec.rs` running a batch
//! against the backend (plain functions of `&dyn Backend`); `pipeline.rs`
//! the flusher thread and how a settled batch is answered.
//!
//! Must not: know about documents or leases (it moves bytes). One
//! exception, on purpose: it peeks at a written value's `RecordHeader` to
//! recognise its own retried write already applied (a lost flush or COMMIT
//! answer), and then compares the stored bytes with its own.

mod exec;
mod lanes;
mod pipeline;

use self::exec::{apply, execute, fail_applied};
use self::pipeline::{answer, run_flusher, settle, Flushed, KeyPart, SettledBatch, Unflushed};

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
    /// Batches handed to the flusher and not back yet, and their requests.
    unflushed: usize,
    unflushed_requests: usize,
    /// Keys with a request in an unflushed batch.
    unflushed_keys: KeyCounts,
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
            unflushed: 0,
            unflushed_requests: 0,
            unflushed_keys: KeyCounts::default(),
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
    fn compose(&mut self) -> Vec<Pending> {
        let blocked: KeyHashSet = self.retrying_keys.keys().chain(self.unflushed_keys.keys()).collect();
        self.lanes.compose(blocked, self.unflushed > 0, |p| {
            matches!(p.req.op, Operation::Scan { .. } | Operation::ScanSizes { .. })
        })
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.executing > 0 {
            return;
        }
        if self.flusher.is_some() {
            return self.pump_pipelined(ctx);
        }
        loop {
            let mut batch = self.compose();
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
            let mut batch = self.compose();
            if batch.is_empty() {
                self.schedule_budget_wake(ctx);
                self.notify_if_empty();
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

    /// Batches back from the flusher, answered but for their retries.
    fn flushed(&mut self, settled: Vec<SettledBatch>, ctx: &mut Context<Self>) {
        for done in settled {
            self.unflushed -= 1;
            self.unflushed_requests -= done.requests;
            for key in &done.keys {
                self.unflushed_keys.remove_one(*key);
            }
            self.done(done, ctx);
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
        // A backend whose writes are durable when they return (PostgreSQL
        // commits in `write_batch`) has nothing to overlap: a flusher thread
        // would only add a thread hop to every save.
        if !self.own_thread || self.backend.capabilities().durable_on_write {
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
}
