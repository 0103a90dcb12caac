//! The supervisor: drives the autosave tick, routes backend notices to key
//! actors, releases every key on request, and runs the shutdown sequence
//! (on `shutdown()` or SIGINT/SIGTERM).
//!
//! Owns: the registry's shutting-down flag, the autosave timer, the notice
//! listener, and the shutdown outcome (a second shutdown gets the first's
//! report). Must not: touch documents or storage bytes; it talks to key
//! actors through `Control` and to storage through the queue (except the
//! final `flush`, which is the backend's own durability barrier).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::actors::queue::QueueActor;
use crate::clock::Clock;
use crate::error::Error;
use crate::messages::key::{Control, Release};
#[cfg(feature = "harness")]
use crate::messages::queue::DropQueued;
use crate::messages::queue::NotifyWhenEmpty;
#[cfg(feature = "harness")]
use crate::messages::supervisor::Abort;
use crate::messages::supervisor::{AutosaveNow, HandlesGone, ReleaseAll, Shutdown};
use crate::registry::{NamedKey, Registry};
use crate::report::{ReleaseReport, ShutdownReport};
use crate::storage::{Backend, NoticeKind};
use crate::types::{CloseReason, Priority, SaveOutcome};

pub(crate) struct Supervisor {
    registry: Arc<Registry>,
    queue: Addr<QueueActor>,
    backend: Arc<dyn Backend>,
    owner: Arc<str>,
    /// The engine's clock: the tick tells each key the time once.
    clock: Clock,
    autosave_interval: Duration,
    shutdown_deadline: Duration,
    shutdown: ShutdownState,
    /// The last public handle is gone: stop once the shutdown is done.
    stop_when_shut_down: bool,
    /// The autosave tick and the notice listener: cancelled once shutdown
    /// is done, so the supervisor stops when the last `Datastorer` handle is
    /// dropped, and with it the engine and the backend (a PostgreSQL
    /// backend's connections and owner lock with them).
    tasks: Vec<SpawnHandle>,
}

enum ShutdownState {
    Running,
    InProgress(Vec<oneshot::Sender<ShutdownReport>>),
    Done(ShutdownReport),
}

impl Supervisor {
    pub(crate) fn new(
        registry: Arc<Registry>,
        queue: Addr<QueueActor>,
        backend: Arc<dyn Backend>,
        owner: Arc<str>,
        clock: Clock,
        autosave_interval: Duration,
        shutdown_deadline: Duration,
    ) -> Self {
        Self {
            registry,
            queue,
            backend,
            owner,
            clock,
            autosave_interval,
            shutdown_deadline,
            shutdown: ShutdownState::Running,
            stop_when_shut_down: false,
            tasks: Vec::new(),
        }
    }
}

/// Releases in flight at once: a hibernating key is woken to be released,
/// so sending a million releases at once would bring a million actors
/// back (the memory an idle instance was sized without); this many keep
/// the queue's group commits full.
const RELEASES_IN_FLIGHT: usize = 16_384;

/// Sends every key a release (at most `RELEASES_IN_FLIGHT` unanswered at
/// once) and waits for all receipts until `deadline`.
async fn release_keys(
    keys: Vec<NamedKey>,
    reason: CloseReason,
    priority: Priority,
    deadline: Instant,
) -> ReleaseReport {
    let mut receipts = Vec::with_capacity(keys.len());
    let mut names = Vec::with_capacity(keys.len());
    let mut report = ReleaseReport::default();
    let mut tally = |receipt: Result<Result<SaveOutcome, Error>, oneshot::error::RecvError>| match receipt {
        Ok(Ok(_)) => report.released += 1,
        // Closed before our request reached it: nothing left to release.
        Ok(Err(Error::SessionClosed { .. })) | Err(_) => {}
        Ok(Err(e)) => report.failed.push(e),
    };
    // One timer for the whole pass, not one per key.
    let mut next = 0;
    let mut keys = keys.into_iter();
    let _ = tokio::time::timeout_at(deadline, async {
        for k in keys.by_ref() {
            while receipts.len() - next >= RELEASES_IN_FLIGHT {
                tally((&mut receipts[next]).await);
                next += 1;
            }
            let (tx, rx) = oneshot::channel();
            k.target.control(Control::Release(Release { reason: reason.clone(), priority, receipt: tx }));
            receipts.push(rx);
            names.push((k.store, k.key));
        }
        while let Some(rx) = receipts.get_mut(next) {
            tally(rx.await);
            next += 1;
        }
    })
    .await;
    // Past the deadline, keys that did finish still count as released;
    // keys not yet asked were not.
    let mut timed_out = Vec::new();
    for (rx, name) in receipts.iter_mut().zip(names).skip(next) {
        match rx.try_recv() {
            Ok(r) => tally(Ok(r)),
            Err(oneshot::error::TryRecvError::Empty) => timed_out.push((name.0.to_string(), name.1.to_string())),
            Err(oneshot::error::TryRecvError::Closed) => {}
        }
    }
    timed_out.extend(keys.map(|k| (k.store.to_string(), k.key.to_string())));
    report.timed_out += timed_out.len();
    report.timed_out_keys.extend(timed_out);
    report
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let tick = ctx.run_interval(self.autosave_interval, |act, _ctx| {
            if !act.registry.is_shutting_down() {
                let now_ms = act.clock.now_ms();
                for k in act.registry.all_keys() {
                    k.tick(now_ms);
                }
            }
        });
        // Route notices addressed to this owner to the key actor concerned.
        let mut notices = self.backend.notices().subscribe_lease_notices();
        let registry = self.registry.clone();
        let owner = self.owner.clone();
        let listener = ctx.spawn(
            async move {
                loop {
                    let n = match notices.recv().await {
                        Ok(n) if n.kind == NoticeKind::Resync => {
                            verify_all(&registry);
                            continue;
                        }
                        Ok(n) => n,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            warn!(target: "datastorer::supervisor", missed, "notice listener lagged");
                            // A Stolen notice may be among those missed.
                            verify_all(&registry);
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    let for_us = match &n.kind {
                        NoticeKind::ReleaseRequested { holder, .. } | NoticeKind::Stolen { holder, .. } => {
                            **holder == *owner
                        }
                        // Whoever holds the key checks the record itself.
                        NoticeKind::Restored | NoticeKind::Erased => true,
                        _ => false,
                    };
                    if for_us {
                        if let Some(k) = registry.find(&n.store, &n.key) {
                            k.clone().control(Control::Notice(n.kind));
                        }
                    }
                }
            }
            .into_actor(self),
        );
        self.tasks = vec![tick, listener];
    }
}

/// Asks every loaded key to check that its lease is still its own.
fn verify_all(registry: &Registry) {
    let keys = registry.all_keys();
    if !keys.is_empty() {
        warn!(target: "datastorer::supervisor", keys = keys.len(), "lease notices may have been missed: verifying leases");
    }
    for k in keys {
        k.clone().control(Control::VerifyLease);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.registry.stop();
    }
}

impl Handler<AutosaveNow> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _msg: AutosaveNow, _ctx: &mut Self::Context) -> usize {
        let keys = self.registry.all_keys();
        let (count, now_ms) = (keys.len(), self.clock.now_ms());
        for k in keys {
            k.tick(now_ms);
        }
        count
    }
}

#[cfg(feature = "harness")]
impl Handler<Abort> for Supervisor {
    type Result = ();

    fn handle(&mut self, _msg: Abort, ctx: &mut Self::Context) {
        warn!(target: "datastorer::supervisor", "aborting: no saves, no releases");
        self.registry.begin_shutdown();
        self.shutdown = ShutdownState::Done(ShutdownReport::default());
        for k in self.registry.all_keys() {
            k.clone().control(Control::Abort);
        }
        self.queue.do_send(DropQueued { emergency_too: true });
        ctx.stop();
    }
}

impl Handler<ReleaseAll> for Supervisor {
    type Result = ResponseFuture<ReleaseReport>;

    fn handle(&mut self, msg: ReleaseAll, _ctx: &mut Self::Context) -> Self::Result {
        let keys = self.registry.all_keys_sorted();
        let deadline = Instant::now() + self.shutdown_deadline;
        Box::pin(release_keys(keys, CloseReason::Released, msg.priority, deadline))
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<ShutdownReport>;

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        if let ShutdownState::Done(report) = &self.shutdown {
            return Box::pin(std::future::ready(report.clone()));
        }
        let (tx, rx) = oneshot::channel();
        if let ShutdownState::InProgress(waiters) = &mut self.shutdown {
            waiters.push(tx);
        } else {
            self.shutdown = ShutdownState::InProgress(vec![tx]);
            self.start_shutdown(ctx);
        }
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

impl Handler<HandlesGone> for Supervisor {
    type Result = ();

    fn handle(&mut self, _msg: HandlesGone, ctx: &mut Self::Context) {
        self.stop_when_shut_down = true;
        match self.shutdown {
            ShutdownState::Done(_) => ctx.stop(),
            ShutdownState::InProgress(_) => {}
            ShutdownState::Running => {
                info!(
                    target: "datastorer::supervisor", keys = self.registry.loaded_count(),
                    "the last handle was dropped without shutdown(): shutting down"
                );
                self.shutdown = ShutdownState::InProgress(Vec::new());
                self.start_shutdown(ctx);
            }
        }
    }
}

impl Supervisor {
    /// Runs the shutdown sequence in the background; its report goes to
    /// every waiter and answers every later `Shutdown`.
    fn start_shutdown(&mut self, ctx: &mut Context<Self>) {
        info!(target: "datastorer::supervisor", keys = self.registry.loaded_count(), "shutting down");
        self.registry.begin_shutdown();
        let started = Instant::now();
        let deadline = started + self.shutdown_deadline;
        let keys = self.registry.all_keys_sorted();
        let queue = self.queue.clone();
        let backend = self.backend.clone();
        let work = async move {
            let release = release_keys(keys, CloseReason::Shutdown, Priority::Emergency, deadline).await;
            let (done_tx, done_rx) = oneshot::channel();
            queue.do_send(NotifyWhenEmpty { done: done_tx });
            let queue_drained = matches!(tokio::time::timeout_at(deadline, done_rx).await, Ok(Ok(())));
            let flush = if backend.is_blocking() {
                tokio::task::spawn_blocking(move || backend.flush())
                    .await
                    .unwrap_or_else(|e| Err(crate::storage::StorageError::permanent(e.to_string())))
            } else {
                backend.flush()
            };
            ShutdownReport {
                release,
                queue_drained,
                flush_error: flush.err().map(|e| e.to_string()),
                took: started.elapsed(),
            }
        };
        ctx.spawn(work.into_actor(self).map(|report, act, ctx| {
            for task in act.tasks.drain(..) {
                ctx.cancel_future(task);
            }
            for key in report.release.unsaved() {
                warn!(target: "datastorer::supervisor", key = %key, "not saved at shutdown: the change is lost with this process");
            }
            info!(
                target: "datastorer::supervisor",
                released = report.release.released, failed = report.release.failed.len(),
                timed_out = report.release.timed_out, drained = report.queue_drained,
                took_ms = report.took.as_millis() as u64, "shutdown complete"
            );
            if let ShutdownState::InProgress(waiters) =
                std::mem::replace(&mut act.shutdown, ShutdownState::Done(report.clone()))
            {
                for w in waiters {
                    let _ = w.send(report.clone());
                }
            }
            if act.stop_when_shut_down {
                ctx.stop();
            }
        }));
    }
}
