//! The open: the acquire (read, lease, migrate, reconcile) run inside the
//! actor, then the after-load hook; a failed open clears the lease it took.
//!
//! Must not: write the document afterwards; `writes.rs` does.

use super::*;

impl<T: Document> Handler<Open> for KeyActor<T> {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, msg: Open, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        match &self.phase {
            Phase::Open => return AtomicResponse::new(Box::pin(fut::ready(Ok(())))),
            Phase::Closing(_) | Phase::Closed | Phase::Asleep => {
                return AtomicResponse::new(Box::pin(fut::ready(Err(self.closed_error()))))
            }
            Phase::Opening => {}
        }
        let load =
            acquire(self.store.clone(), self.key.clone(), self.storage_key(), msg.user_ids, msg.policy, msg.one_shot);
        AtomicResponse::new(Box::pin(load.into_actor(self).then(|res, act, ctx| act.loaded(res, ctx))))
    }
}

type OpenFuture<T> = std::pin::Pin<Box<dyn ActorFuture<KeyActor<T>, Output = Result<(), Error>>>>;

impl<T: Document> KeyActor<T> {
    /// Installs a loaded document and runs the after-load hook. A panicking
    /// hook fails the open only after the lease it took has been cleared.
    fn loaded(&mut self, res: Result<Loaded<T>, Error>, ctx: &mut Context<Self>) -> OpenFuture<T> {
        let loaded = match res {
            Ok(l) => l,
            Err(err) => {
                self.finish(CloseReason::OpenFailed(err.to_string()), ctx);
                return Box::pin(fut::ready(Err(err)));
            }
        };
        let header = loaded.header;
        self.doc = Some(loaded);
        self.phase = Phase::Open;
        if let Some(hook) = self.store.hooks.after_load.clone() {
            let Some(doc) = self.doc.as_mut() else { return Box::pin(fut::ready(Err(Error::NotRunning))) };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| hook(&mut doc.data))) {
                let err = self.panicked("after-load hook", &*p);
                let reason = CloseReason::OpenFailed(err.to_string());
                self.phase = Phase::Closing(Box::new(reason.clone()));
                // Awaited inside the open (which holds the mailbox), not spawned.
                let clear = self.clear_lease(header, Priority::Emergency);
                return Box::pin(clear.into_actor(self).map(move |cleared, act, ctx| {
                    if let Ok(WriteOutcome::Applied) = cleared {
                        act.publish(NoticeKind::Released { revision: header.revision + 1, how: EndKind::Closed });
                    }
                    act.finish(reason, ctx);
                    Err(err)
                }));
            }
        }
        self.signal().mark_opened();
        Box::pin(fut::ready(Ok(())))
    }
}
