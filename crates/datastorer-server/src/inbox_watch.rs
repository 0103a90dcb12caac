//! Tells a client of this server that messages wait for a key it holds:
//! a watcher of the engine's notices for changed inboxes, which sets the
//! session's `messages_waiting` flag (`Messages-Waiting: 1` on its answers)
//! and puts a `messages` event in the holder's feed. Also the one shape
//! messages have in answers.
//!
//! Must not: store anything itself; the engine's inbox owns the messages.

use actix_web::web;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::change_log::HolderNotice;
use crate::state::AppState;
use datastorer::storage::{Notice, NoticeKind};
use datastorer::{Message, INBOX_SUFFIX};

/// The waiting messages as clients see them.
pub(crate) fn view(messages: &[Message]) -> Value {
    Value::Array(
        messages.iter().map(|m| json!({ "id": m.id, "sent_at_ms": m.sent_at_ms, "message": m.body })).collect(),
    )
}

/// Picks the notices of changed inboxes out of every notice, as they are
/// delivered (an engine sink: no lag can drop one, and the saves of other
/// stores wake nothing), and hands them to [`watch`].
pub(crate) fn forward(ds: &datastorer::Datastorer) -> mpsc::UnboundedReceiver<Notice> {
    ds.changes_matching(|n| {
        n.store.ends_with(INBOX_SUFFIX) && matches!(n.kind, NoticeKind::Released { .. } | NoticeKind::Saved { .. })
    })
}

/// Tells the client of this server that holds a key whose inbox changed
/// (once per batch of news) that messages wait. Runs until the engine
/// stops.
pub(crate) async fn watch(state: web::Data<AppState>, mut notices: mpsc::UnboundedReceiver<Notice>) {
    while let Some(n) = notices.recv().await {
        let Some(base) = n.store.strip_suffix(INBOX_SUFFIX) else { continue };
        if state.sessions.holder(base, &n.key).is_none() {
            continue;
        }
        let Ok(store) = state.store(base) else { continue };
        let waiting = store.messages(&n.key).await.is_ok_and(|m| !m.is_empty());
        if let Some((holder, api_key, epoch)) = state.sessions.set_messages_waiting(base, &n.key, waiting) {
            state.changes.notify_holder(base, &n.key, &holder, &api_key, epoch, HolderNotice::Messages);
        }
    }
}
