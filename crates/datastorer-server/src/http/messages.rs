//! Messages to keys over HTTP: `POST /v1/stores/{store}/keys/{key}/messages`
//! posts to any key, held or not; the holder reads them with
//! `GET …/session/messages` (and gets them on open) and removes them with
//! `POST …/session/messages/ack`.
//!
//! Must not: store anything itself; the engine's inbox owns the messages.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::fallback::resource;
use crate::conditional::refuse_conditions;
use crate::error::ApiError;
use crate::extract::{parse, required_json, Held};
use crate::inbox_watch::view;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Registers the post route, and the look at what waits.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/stores/{store}/keys/{key}/messages").route(web::post().to(post)).route(web::get().to(peek)),
    );
}

/// `GET /v1/stores/{store}/keys/{key}/messages` (read): the messages waiting
/// for the key, oldest first, without a session and without taking them.
async fn peek(req: HttpRequest, path: web::Path<(String, String)>, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, crate::auth::Role::Read)?;
    let (store_name, key) = path.into_inner();
    let store = state.store(&store_name)?;
    crate::extract::check_key(&key)?;
    let messages = store.messages(&key).await?;
    Ok(HttpResponse::Ok().json(json!({ "messages": view(&messages) })))
}

/// Registers the holder's routes (inside the session scope).
pub(super) fn configure_session(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/messages").route(web::get().to(list)))
        .service(resource("/messages/ack").route(web::post().to(ack)));
}

/// `POST /v1/stores/{store}/keys/{key}/messages`: the body (any JSON) is
/// the message; answers its id once durable.
async fn post(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (store_name, key) = path.into_inner();
    let store = state.sessionless_write(&req, &store_name, &key)?;
    refuse_conditions(&req)?;
    let body = required_json(&req, payload, &state, &["application/json"], "the message, as JSON").await?;
    let posted = store.post_message(&key, body).await.map_err(ApiError::from);
    let target = crate::state::Target { store: Some(&store_name), key: Some(&key) };
    let id = state.audited_if_console(&req, "console_message", target, posted).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "durable": true })))
}

/// `GET …/session/messages`: what waits for the holder, oldest first.
async fn list(state: web::Data<AppState>, held: Held) -> Result<HttpResponse> {
    let store = state.store(&held.store)?;
    let messages = store.messages(&held.key).await?;
    state.sessions.set_messages_waiting(&held.store, &held.key, !messages.is_empty());
    Ok(HttpResponse::Ok().json(json!({ "messages": view(&messages) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    up_to: u64,
}

/// `POST …/session/messages/ack` `{"up_to": ID}`: removes the messages up
/// to that id durably (idempotent).
async fn ack(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>, held: Held) -> Result<HttpResponse> {
    let body = required_json(&req, payload, &state, &["application/json"], r#"{"up_to": ID}"#).await?;
    let body: AckBody = parse(body)?;
    let store = state.store(&held.store)?;
    let (removed, pending) = store.ack_messages(&held.key, body.up_to).await?;
    state.sessions.set_messages_waiting(&held.store, &held.key, pending > 0);
    Ok(HttpResponse::Ok().json(json!({ "removed": removed, "pending": pending, "durable": true })))
}
