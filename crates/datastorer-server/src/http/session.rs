//! Client sessions over HTTP: open a key (`POST …/session`), read it,
//! change its document, metadata and user ids, save, renew, release and
//! close. Every route but the open takes [`Held`]: the lease token was
//! checked before the handler runs.
//!
//! Owns: the session routes' request and answer shapes. Must not: keep
//! state; client sessions live in `sessions`, documents in the engine.

use std::time::{Duration, Instant};

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fallback::resource;
use crate::access::AccessClient;
use crate::auth::Role;
use crate::error::{ApiError, ErrorCode};
use crate::extract::{
    check_client_id, check_key, parse, prefers_minimal, read_json, required_json, user_id, Held, PriorityParam,
    PriorityQuery,
};
use crate::json::merge_patch;
use crate::limits::MAX_GRACE_MS;
use crate::sessions::{Claimant, Ending, LeaseGrant};
use crate::state::{AppState, Target};
use datastorer::{AcquirePolicy, Session};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Registers the routes under `…/session` (inside the session scope).
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/data").route(web::patch().to(patch_data)).route(web::put().to(put_data)))
        .service(resource("/save").route(web::post().to(save)))
        .service(resource("/renew").route(web::post().to(renew)))
        .service(resource("/release").route(web::post().to(release)))
        .service(resource("/metadata").route(web::put().to(put_metadata)))
        .service(resource("/user_ids").route(web::post().to(add_user_id)))
        .service(resource("/user_ids/{user_id}").route(web::delete().to(remove_user_id)))
        .service(
            resource("")
                .route(web::post().to(open_session))
                .route(web::get().to(get_session))
                .route(web::delete().to(close)),
        );
}

/// Over HTTP a request should not hang unless the client asked it to: the
/// default policy answers 409 at once.
#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub(super) enum PolicyKind {
    #[default]
    Fail,
    Wait,
    RequestRelease,
    Steal,
}

/// `?policy=&timeout_ms=` on open: the same two settings as the body, for
/// clients that cannot send one. Giving one in both places with different
/// values is refused rather than silently preferring one.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OpenQuery {
    policy: Option<PolicyKind>,
    timeout_ms: Option<u64>,
    grace_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    client_id: Option<String>,
    #[serde(default)]
    user_ids: Vec<Value>,
    policy: Option<PolicyKind>,
    timeout_ms: Option<u64>,
    grace_ms: Option<u64>,
}

/// One setting given in the query, the body, or both (then they must agree).
fn one_of<T: PartialEq + std::fmt::Debug>(name: &str, query: Option<T>, body: Option<T>) -> Result<Option<T>> {
    match (query, body) {
        (Some(q), Some(b)) if q != b => Err(ApiError::new(
            ErrorCode::ConflictingParameters,
            format!("{name} is given in the query and in the body with different values"),
        )),
        (q, b) => Ok(q.or(b)),
    }
}

async fn session_view(session: &Session<Value>, grant: &LeaseGrant, with_token: bool) -> Result<Value> {
    let data = session.get().await?;
    let metadata = session.metadata().await?;
    let user_ids = session.user_ids().await?;
    let lease = session.lease().await?;
    let mut v = json!({
        "store": session.store(),
        "key": session.key(),
        "data": data,
        "metadata": metadata,
        "user_ids": user_ids,
        "revision": lease.revision,
        "epoch": grant.epoch,
        "expires_at_ms": grant.expires_at_ms,
    });
    if with_token {
        v["lease_token"] = Value::String(grant.token.clone());
    }
    if grant.resumed {
        v["resumed"] = Value::Bool(true);
    }
    add_notices(&mut v, grant);
    Ok(v)
}

/// A hand-off asked of this session's holder, in its answers.
pub(super) fn add_notices(answer: &mut Value, grant: &LeaseGrant) {
    if let Some(h) = &grant.handoff {
        answer["handoff"] = json!({ "by": h.by, "deadline_ms": h.deadline_ms });
    }
    if grant.messages_waiting {
        answer["messages_waiting"] = Value::Bool(true);
    }
}

/// `POST /v1/stores/{store}/keys/{key}/session`
async fn open_session(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<OpenQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Write)?;
    let (store_name, key) = path.into_inner();
    let store = state.store(&store_name)?;
    check_key(&key)?;
    let body: OpenBody = match read_json(&req, payload, &state, &["application/json"], true).await? {
        Some(v) => parse(v)?,
        None => OpenBody::default(),
    };
    let query = query.into_inner();
    let args = OpenArgs {
        client_id: body.client_id,
        user_ids: body.user_ids,
        policy: one_of("policy", query.policy, body.policy)?.unwrap_or_default(),
        timeout_ms: one_of("timeout_ms", query.timeout_ms, body.timeout_ms)?,
        grace_ms: one_of("grace_ms", query.grace_ms, body.grace_ms)?,
    };
    let opened = open(&state, Some(&req), &who.name, &store, &store_name, &key, args).await;
    let target = Target { store: Some(&store_name), key: Some(&key) };
    let answer = state.audited_if_console(&req, "console_handover", target, opened).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// What an open asks (the route's body and query, or a batch's `open`).
pub(super) struct OpenArgs {
    pub(super) client_id: Option<String>,
    pub(super) user_ids: Vec<Value>,
    pub(super) policy: PolicyKind,
    pub(super) timeout_ms: Option<u64>,
    pub(super) grace_ms: Option<u64>,
}

/// Opens a session on `store_name`/`key` for the API key `api_key`:
/// answers the session view with its lease token (and waiting messages).
/// `req`, when given, learns the client for the access log.
pub(super) async fn open(
    state: &AppState,
    req: Option<&HttpRequest>,
    api_key: &str,
    store: &datastorer::Store<Value>,
    store_name: &str,
    key: &str,
    args: OpenArgs,
) -> Result<Value> {
    let OpenArgs { client_id, user_ids, policy, timeout_ms, grace_ms } = args;
    let timeout = Duration::from_millis(timeout_ms.unwrap_or(10_000)).min(state.config.max_wait);
    let max_ms = state.config.max_wait.as_millis() as u64;
    if timeout_ms.is_some_and(|t| t > max_ms) {
        return Err(ApiError::new(ErrorCode::BadTimeout, format!("timeout_ms must be at most {max_ms}")));
    }
    if grace_ms.is_some_and(|g| g > MAX_GRACE_MS) {
        return Err(ApiError::new(ErrorCode::BadGrace, format!("grace_ms must be at most {MAX_GRACE_MS}")));
    }
    if grace_ms.is_some() && policy != PolicyKind::RequestRelease {
        return Err(ApiError::new(ErrorCode::BadGrace, "grace_ms goes with policy=request_release only"));
    }
    let policy = match policy {
        PolicyKind::Fail => AcquirePolicy::Fail,
        PolicyKind::Wait => AcquirePolicy::Wait { timeout },
        PolicyKind::RequestRelease => AcquirePolicy::RequestRelease { timeout },
        PolicyKind::Steal => AcquirePolicy::Steal,
    };
    // Only a client that names itself can resume: clients without a
    // client_id share their API key's name and must not get each other's
    // sessions.
    let resumable = client_id.is_some();
    let holder = match client_id {
        Some(c) => {
            check_client_id(&c)?;
            c
        }
        None => api_key.to_owned(),
    };
    let user_ids = user_ids.iter().map(user_id).collect::<Result<Vec<_>>>()?;
    if let Some(req) = req {
        req.extensions_mut().insert(AccessClient(holder.clone()));
    }
    let grace = Duration::from_millis(grace_ms.unwrap_or(0));
    let claimant = Claimant { holder, api_key: api_key.to_owned(), resumable, grace };
    let stealing = matches!(policy, AcquirePolicy::Steal);
    let acquired = state.sessions.acquire(store, key, &claimant, user_ids, policy).await;
    // A steal ends another holder's session: it is audited like the
    // administrative writes.
    let acquired = match stealing {
        true => {
            let target = Target { store: Some(store_name), key: Some(key) };
            let details =
                |(g, _, _): &(crate::sessions::LeaseGrant, _, _)| json!({ "epoch": g.epoch, "holder": g.holder });
            state.audited(api_key, "forced_open", target, details, acquired).await
        }
        false => acquired,
    };
    let (grant, session, waited) = acquired.map_err(|e| where_it_is(state, e))?;
    if let Some(w) = waited {
        state.metrics.observe_lease_wait(w);
    }
    let mut answer = session_view(&session, &grant, true).await?;
    // Messages that waited for the key arrive with it; a failed read only
    // defers them (they stay in the inbox, and the holder is told).
    match store.messages(key).await {
        Ok(m) if m.is_empty() => {}
        Ok(m) => answer["messages"] = crate::inbox_watch::view(&m),
        Err(_) => {
            state.sessions.set_messages_waiting(store_name, key, true);
            answer["messages_waiting"] = Value::Bool(true);
        }
    }
    Ok(answer)
}

/// A key held on another server of the fleet: where that server is, as a
/// `421 wrong_server` says it.
fn where_it_is(state: &AppState, mut e: ApiError) -> ApiError {
    if e.code != ErrorCode::LeaseHeld {
        return e;
    }
    if let Some(details) = e.details.as_mut().and_then(Value::as_object_mut) {
        if let Some(server) = details.get("holder_server").and_then(Value::as_str).map(str::to_owned) {
            details.insert("advertise_url".into(), state.advertised_url(&server).map_or(Value::Null, Value::String));
        }
    }
    e
}

/// `GET …/session`
async fn get_session(held: Held) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(session_view(&held.session, &held.grant, false).await?))
}

/// `?save=normal|emergency` on `PUT`/`PATCH …/session/data`: write through,
/// answering once the change is durable.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChangeQuery {
    save: Option<PriorityParam>,
}

/// A 200 with `body`, saying when `Prefer: return=minimal` was applied.
fn changed(minimal: bool, body: Vec<u8>) -> HttpResponse {
    let mut answer = HttpResponse::Ok();
    if minimal {
        answer.insert_header(("Preference-Applied", "return=minimal"));
    }
    answer.content_type("application/json").body(body)
}

/// Reads a JSON body under the session's token and applies `change` to
/// the document; answers the document after the change (unless the client
/// prefers a minimal answer) and, with `?save=`, the revision once saved
/// (the save covers this change and any made before it).
async fn change_data(
    req: HttpRequest,
    held: Held,
    query: ChangeQuery,
    payload: web::Payload,
    state: web::Data<AppState>,
    content_types: &[&str],
    change: fn(&mut Value, Value),
) -> Result<HttpResponse> {
    let minimal = prefers_minimal(&req);
    let body = required_json(&req, payload, &state, content_types, "a JSON document").await?;
    // The answer carries the document as the engine encoded it for its size
    // check: the same bytes the save writes, so the change is serialized
    // once (not again here, and not again for the save).
    let ((), encoded) = held.session.update_encoded(move |d| change(d, body)).await?;
    let mut response = Vec::with_capacity(if minimal { 64 } else { encoded.len() + 64 });
    if minimal {
        response.push(b'{');
    } else {
        response.extend_from_slice(b"{\"data\":");
        response.extend_from_slice(&encoded);
    }
    drop(encoded);
    if let Some(priority) = query.save {
        // A failed save leaves the change in the session, unsaved, exactly
        // as a failed `POST …/save` would.
        let started = Instant::now();
        let outcome = held.session.save(priority.into()).await?;
        state.metrics.observe_save(started.elapsed());
        let comma = if minimal { "" } else { "," };
        response.extend_from_slice(format!("{comma}\"revision\":{},\"durable\":true", outcome.revision).as_bytes());
    }
    response.push(b'}');
    Ok(changed(minimal, response))
}

/// `PUT …/session/data`: replace the document.
async fn put_data(
    req: HttpRequest,
    query: web::Query<ChangeQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
    held: Held,
) -> Result<HttpResponse> {
    change_data(req, held, query.into_inner(), payload, state, &["application/json"], |d, body| *d = body).await
}

/// `PATCH …/session/data`: RFC 7396 merge patch.
async fn patch_data(
    req: HttpRequest,
    query: web::Query<ChangeQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
    held: Held,
) -> Result<HttpResponse> {
    let types = ["application/merge-patch+json", "application/json"];
    change_data(req, held, query.into_inner(), payload, state, &types, |d, patch| merge_patch(d, &patch)).await
}

/// `PUT …/session/metadata`
async fn put_metadata(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    held: Held,
) -> Result<HttpResponse> {
    let metadata = required_json(&req, payload, &state, &["application/json"], "a JSON object").await?;
    crate::validate::metadata(&metadata).map_err(|e| ApiError::new(ErrorCode::BadMetadata, e))?;
    let minimal = prefers_minimal(&req);
    let answer = if minimal { b"{}".to_vec() } else { json!({ "metadata": &metadata }).to_string().into_bytes() };
    held.session.set_metadata(metadata).await?;
    Ok(changed(minimal, answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserIdBody {
    user_id: Value,
}

/// `DELETE …/session/user_ids/{user_id}`: dissociates a user id (saved
/// with the next write). Idempotent: a retried delete answers
/// `"removed": false` rather than an error.
async fn remove_user_id(path: web::Path<(String, String, String)>, held: Held) -> Result<HttpResponse> {
    let id = user_id(&Value::String(path.into_inner().2))?;
    let removed = held.session.remove_user_id(id).await?;
    Ok(HttpResponse::Ok().json(json!({ "user_ids": held.session.user_ids().await?, "removed": removed })))
}

/// `POST …/session/user_ids`
async fn add_user_id(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    held: Held,
) -> Result<HttpResponse> {
    let body = required_json(&req, payload, &state, &["application/json"], r#"{"user_id": ...}"#).await?;
    let body: UserIdBody = parse(body)?;
    held.session.add_user_id(user_id(&body.user_id)?).await?;
    Ok(HttpResponse::Ok().json(json!({ "user_ids": held.session.user_ids().await? })))
}

/// `POST …/session/save`: answers once durable.
async fn save(query: web::Query<PriorityQuery>, state: web::Data<AppState>, held: Held) -> Result<HttpResponse> {
    let started = Instant::now();
    let outcome = held.session.save(query.get()).await?;
    state.metrics.observe_save(started.elapsed());
    Ok(HttpResponse::Ok().json(json!({ "revision": outcome.revision, "durable": true })))
}

/// `POST …/session/renew`
async fn renew(held: Held) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({ "epoch": held.grant.epoch, "expires_at_ms": held.grant.expires_at_ms })))
}

/// `POST …/session/release`: save and end.
async fn release(query: web::Query<PriorityQuery>, state: web::Data<AppState>, held: Held) -> Result<HttpResponse> {
    let started = Instant::now();
    let revision = state.sessions.end(&held.store, &held.key, &held.token, Ending::Release(query.get())).await?;
    state.metrics.observe_save(started.elapsed());
    Ok(HttpResponse::Ok().json(json!({ "revision": revision, "released": true })))
}

/// `DELETE …/session`: end without saving.
async fn close(state: web::Data<AppState>, held: Held) -> Result<HttpResponse> {
    let revision = state.sessions.end(&held.store, &held.key, &held.token, Ending::Close).await?;
    Ok(HttpResponse::Ok().json(json!({ "revision": revision, "closed": true })))
}
