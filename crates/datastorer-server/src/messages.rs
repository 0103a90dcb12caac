//! Messages to keys over HTTP: `POST /v1/stores/{store}/keys/{key}/messages`
//! posts to any key, held or not; the holder reads them with
//! `GET …/session/messages` (and gets them on open) and removes them with
//! `POST …/session/messages/ack`. A watcher of the engine's notices tells
//! the holder, when it is a client of this server, that messages wait: a
//! `messages` event in its feed and `Messages-Waiting: 1` on its answers.
//!
//! Must not: store anything itself; the engine's inbox owns the messages.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::change_log::HolderNotice;
use super::error::ApiError;
use super::routes::{checked, parse, read_json, session_and_body, AppState};
use datastorer::storage::{Notice, NoticeKind};
use datastorer::{Message, INBOX_SUFFIX};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The waiting messages as clients see them.
pub fn view(messages: &[Message]) -> Value {
    Value::Array(
        messages.iter().map(|m| json!({ "id": m.id, "sent_at_ms": m.sent_at_ms, "message": m.body })).collect(),
    )
}

/// `POST /v1/stores/{store}/keys/{key}/messages`: the body (any JSON) is
/// the message; answers its id once durable.
pub async fn post(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (store, _, key) = state.sessionless_write(&req, path)?;
    super::conditional::refuse_conditions(&req)?;
    let Some(body) = read_json(&req, payload, &state, &["application/json"], false).await? else {
        return Err(ApiError::bad_request("bad_json", "the body must be the message, as JSON"));
    };
    let id = store.post_message(&key, body).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "durable": true })))
}

/// `GET …/session/messages`: what waits for the holder, oldest first.
pub async fn list(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    checked(&req, &state, &path).await?;
    let store = state.store(&path.0)?;
    let messages = store.messages(&path.1).await?;
    state.sessions.set_messages_waiting(&path.0, &path.1, !messages.is_empty());
    Ok(HttpResponse::Ok().json(json!({ "messages": view(&messages) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    up_to: u64,
}

/// `POST …/session/messages/ack` `{"up_to": ID}`: removes the messages up
/// to that id durably (idempotent).
pub async fn ack(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (_, body) = session_and_body(&req, &path, payload, &state, &["application/json"], r#"{"up_to": ID}"#).await?;
    let body: AckBody = parse(body)?;
    let store = state.store(&path.0)?;
    let (removed, pending) = store.ack_messages(&path.1, body.up_to).await?;
    state.sessions.set_messages_waiting(&path.0, &path.1, pending > 0);
    Ok(HttpResponse::Ok().json(json!({ "removed": removed, "pending": pending, "durable": true })))
}

/// Watches the engine's notices for changed inboxes of keys a client of
/// this server holds, and tells that client (once per batch of news) that
/// messages wait. Runs until the notice bus closes.
pub async fn watch(state: web::Data<AppState>, mut notices: broadcast::Receiver<Notice>) {
    loop {
        let n = match notices.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(base) = n.store.strip_suffix(INBOX_SUFFIX) else { continue };
        if !matches!(n.kind, NoticeKind::Released { .. } | NoticeKind::Saved { .. }) {
            continue;
        }
        if state.sessions.holder(base, &n.key).is_none() {
            continue;
        }
        let Ok(store) = state.store(base) else { continue };
        let waiting = store.messages(&n.key).await.is_ok_and(|m| !m.is_empty());
        if let Some((holder, api_key)) = state.sessions.set_messages_waiting(base, &n.key, waiting) {
            state.changes.notify_holder(base, &n.key, &holder, &api_key, HolderNotice::Messages);
        }
    }
}
