//! The change feed: Server-Sent Events, one per durable save, release and
//! delete, read from the backend's notice bus. Ends when the server shuts down.

use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use datastorer::storage::{EndKind, Notice, NoticeKind};

struct FeedState {
    notices: broadcast::Receiver<Notice>,
    store: Option<String>,
    shutdown: watch::Receiver<bool>,
    greeted: bool,
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The SSE text of a notice; `None` for notices the feed does not show.
/// Each end of a session has its own kind, so a client can tell a steal
/// from a release.
fn event(n: &Notice) -> Option<String> {
    let (kind, revision) = match &n.kind {
        NoticeKind::Saved { revision } => ("saved", Some(*revision)),
        // A shutdown's release is a release; its reason rides along.
        NoticeKind::Released { revision, how: EndKind::Shutdown } => ("released", Some(*revision)),
        NoticeKind::Released { revision, how } => (how.as_str(), Some(*revision)),
        // A steal in another process: its old holder writes nothing.
        NoticeKind::Stolen { .. } => ("stolen", None),
        NoticeKind::Deleted => ("deleted", None),
        NoticeKind::ReleaseRequested { .. } => return None,
        NoticeKind::Resync => return Some("event: resync\ndata: {}\n\n".to_owned()),
    };
    let mut data = json!({ "store": n.store, "key": n.key, "revision": revision, "kind": kind });
    if let NoticeKind::Released { how: EndKind::Shutdown, .. } = n.kind {
        data["reason"] = json!("shutdown");
    }
    Some(format!("event: {kind}\ndata: {data}\n\n"))
}

/// The SSE body for `store` (or every store).
pub fn stream(
    notices: broadcast::Receiver<Notice>,
    store: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let state = FeedState { notices, store, shutdown, greeted: false };
    futures_util::stream::unfold(state, |mut st| async move {
        if !st.greeted {
            st.greeted = true;
            return Some((Ok(Bytes::from_static(b": connected\n\n")), st));
        }
        loop {
            if *st.shutdown.borrow() {
                return None;
            }
            tokio::select! {
                _ = st.shutdown.changed() => return None,
                received = st.notices.recv() => match received {
                    Ok(n) => {
                        if st.store.as_ref().is_some_and(|s| *s != n.store) && n.kind != NoticeKind::Resync {
                            continue;
                        }
                        if let Some(text) = event(&n) {
                            return Some((Ok(Bytes::from(text)), st));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let text = format!("event: lagged\ndata: {}\n\n", json!({ "missed": missed }));
                        return Some((Ok(Bytes::from(text)), st));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(KEEP_ALIVE) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st)),
            }
        }
    })
}
