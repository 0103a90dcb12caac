//! Getting a key out of its holder's hands for an administrative write (a
//! restore, an erasure that keeps the data): a session of this instance is
//! released (saving its changes) with the reason given; a holder in
//! another process is asked to do the same and waited for. One that does
//! not answer in time is left to the fencing of the write that follows
//! (a new epoch, or the record gone).
//!
//! Owns: the hand-over and its outcome. Must not: write the record itself.

use std::time::Duration;

use crate::engine::Engine;
use crate::error::Error;
use crate::messages::key::{Control, Release};
use crate::storage::{EndKind, Notice, NoticeKind};
use crate::types::{CloseReason, Priority};

/// What became of a key's holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handoff {
    /// Nobody held the key.
    Nobody,
    /// The holder saved its changes and let the key go.
    Released,
    /// The holder did not answer in time: the write that follows fences it.
    Fenced,
}

impl Handoff {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Handoff::Nobody => "none",
            Handoff::Released => "released",
            Handoff::Fenced => "fenced",
        }
    }
}

fn close_reason(because: EndKind) -> CloseReason {
    match because {
        EndKind::Restored => CloseReason::Restored,
        EndKind::Erased => CloseReason::Erased,
        _ => CloseReason::ReleaseRequested,
    }
}

async fn live_holder(engine: &Engine, store: &str, key: &str) -> Result<Option<String>, Error> {
    let record = engine.read_record(store, key).await?;
    Ok(record.and_then(|r| r.lease).filter(|l| l.expires_at_ms > engine.clock.now_ms()).map(|l| l.owner))
}

/// Hands `store/key` over from whoever holds it, within `handoff`.
pub(crate) async fn hand_over(
    engine: &Engine,
    store: &str,
    key: &str,
    because: EndKind,
    handoff: Duration,
) -> Result<Handoff, Error> {
    if let Some(actor) = engine.registry.find(store, key) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let release = Release { priority: Priority::Emergency, reason: close_reason(because), receipt: tx };
        if actor.control(Control::Release(release)) {
            return Ok(match tokio::time::timeout(handoff, rx).await {
                Ok(Ok(Ok(_))) => Handoff::Released,
                // Closed already, or its save failed: what it holds is fenced.
                Ok(_) => match live_holder(engine, store, key).await? {
                    Some(_) => Handoff::Fenced,
                    None => Handoff::Released,
                },
                Err(_) => Handoff::Fenced,
            });
        }
    }
    let Some(holder) = live_holder(engine, store, key).await? else { return Ok(Handoff::Nobody) };
    let mut notices = engine.backend.notices().subscribe();
    engine.backend.notices().publish(Notice {
        store: store.to_owned(),
        key: key.to_owned(),
        kind: NoticeKind::ReleaseRequested { holder, requester: engine.owner.to_string(), because },
    });
    let deadline = tokio::time::Instant::now() + handoff;
    loop {
        let until = (tokio::time::Instant::now() + engine.config.lease_poll_interval).min(deadline);
        let _ = tokio::time::timeout_at(until, async {
            loop {
                match notices.recv().await {
                    Ok(n) if n.store == store && n.key == key && matches!(n.kind, NoticeKind::Released { .. }) => {
                        return
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
        if live_holder(engine, store, key).await?.is_none() {
            return Ok(Handoff::Released);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Handoff::Fenced);
        }
    }
}
