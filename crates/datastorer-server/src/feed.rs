//! The change feed as Server-Sent Events, read from the change log (so an
//! SSE event's `id:` is the same sequence the long poll answers, and a
//! client reconnecting with `Last-Event-ID` resumes where it stopped).
//! Ends when the server shuts down.
//!
//! Owns: the SSE framing only. Must not: number or keep events.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use futures_util::Stream;
use serde_json::json;
use tokio::sync::watch;

use super::change_log::{ChangeLog, Filter};

struct FeedState {
    log: Arc<ChangeLog>,
    after: u64,
    store: Option<String>,
    shutdown: watch::Receiver<bool>,
    greeted: bool,
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);
const PAGE: usize = 256;

/// The SSE body for `store` (or every store), starting after sequence
/// `after` (a `Last-Event-ID`; `None`: from now).
pub(crate) fn stream(
    log: Arc<ChangeLog>,
    after: Option<u64>,
    store: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let after = after.unwrap_or_else(|| log.newest());
    let state = FeedState { log, after, store, shutdown, greeted: false };
    futures_util::stream::unfold(state, |mut st| async move {
        if !st.greeted {
            st.greeted = true;
            return Some((Ok(Bytes::from_static(b": connected\n\n")), st));
        }
        loop {
            if *st.shutdown.borrow() {
                return None;
            }
            let page = st.log.read(st.after, Filter { store: st.store.as_deref(), holder: None, api_key: None }, PAGE);
            let mut text = String::new();
            if page.lagged {
                let missed = json!({ "after": st.after });
                text.push_str(&format!("event: lagged\ndata: {missed}\n\n"));
            }
            for e in &page.events {
                let data = serde_json::to_string(e).unwrap_or_default();
                text.push_str(&format!("id: {}\nevent: {}\ndata: {data}\n\n", e.seq, e.kind));
            }
            let moved = page.next != st.after;
            st.after = page.next;
            if !text.is_empty() {
                return Some((Ok(Bytes::from(text)), st));
            }
            if moved {
                continue;
            }
            let log = st.log.clone();
            tokio::select! {
                _ = st.shutdown.changed() => return None,
                () = log.wait_after(st.after) => {}
                _ = tokio::time::sleep(KEEP_ALIVE) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st)),
            }
        }
    })
}
