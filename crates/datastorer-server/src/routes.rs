//! HTTP handlers of API v1. Every handler authenticates first, validates
//! its input, and answers errors as `{code, message}`; nothing is written
//! for a refused request.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::auth::{authorize, Role};
use super::change_log::Filter;
use super::config::ServerConfig;
use super::error::ApiError;
use super::json::merge_patch;
use super::metrics::{Gauges, Metrics};
use super::sessions::{Claimant, ClientSessions, Ending, LeaseGrant};
use datastorer::{AcquirePolicy, Datastorer, Priority, Session, Store, StoreSpec};

/// Everything the handlers share.
pub struct AppState {
    /// The engine.
    pub ds: Datastorer,
    /// Resolved configuration.
    pub config: ServerConfig,
    /// Stores by name (declared ones registered at start).
    pub stores: Mutex<HashMap<String, Store<Value>>>,
    /// Client sessions.
    pub sessions: ClientSessions,
    /// Counters.
    pub metrics: Metrics,
    /// Flips to true when shutdown starts (ends change feeds).
    pub shutdown: watch::Receiver<bool>,
    /// Whether shutdown started (readiness; session requests get 503).
    pub shutting_down: AtomicBool,
    /// Requests being handled (the shutdown waits for them).
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// The PostgreSQL backend, when servers share one.
    pub postgres: Option<std::sync::Arc<datastorer::storage::postgres::PgBackend>>,
    /// Every feed event, numbered (the poll and SSE routes read it).
    pub changes: std::sync::Arc<super::change_log::ChangeLog>,
    /// Request budgets of the API keys that have one.
    pub budgets: super::budget::Budgets,
    /// Alert endpoints.
    pub webhooks: std::sync::Arc<super::webhooks::Webhooks>,
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The API key name of a request, for the access log (never the secret).
#[derive(Clone)]
pub struct AccessKey(pub String);

/// The client id a request acted for, for the access log.
#[derive(Clone)]
pub struct AccessClient(pub String);

/// Header carrying the lease token.
pub const LEASE_TOKEN: &str = "Lease-Token";
const MAX_LIST_LIMIT: usize = 1000;

impl AppState {
    /// Refuses session work once shutdown started: the engine is about to
    /// release every session, and a request admitted later would race it.
    pub(crate) fn admit(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
        Ok(())
    }

    /// For a sessionless write to `path` (store, key): admitted (not
    /// shutting down), authorized to write, the store and a valid key.
    pub(crate) fn sessionless_write(
        &self,
        req: &HttpRequest,
        path: web::Path<(String, String)>,
    ) -> Result<(Store<Value>, String, String)> {
        self.admit()?;
        self.auth(req, Role::Write)?;
        let (store_name, key) = path.into_inner();
        let store = self.store(&store_name)?;
        check_key(&key)?;
        Ok((store, store_name, key))
    }

    /// The store `name`: declared, or created on first use unless strict.
    pub fn store(&self, name: &str) -> Result<Store<Value>> {
        datastorer::validate_store_name(name).map_err(ApiError::from)?;
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(name) {
            return Ok(s.clone());
        }
        if self.config.strict_stores {
            return Err(undeclared(name));
        }
        let store = self.ds.store(name, StoreSpec::new(json!({})))?;
        stores.insert(name.to_owned(), store.clone());
        Ok(store)
    }

    /// Authenticates `req`, charges its key's request budget (429 with
    /// `Retry-After` when spent) and, for a route on a store, checks the
    /// key's store scope.
    pub(crate) fn auth(&self, req: &HttpRequest, role: Role) -> Result<super::auth::Identity> {
        let who = authorize(req, &self.config.api_keys, role, |name| {
            req.extensions_mut().insert(AccessKey(name.to_owned()));
        })?;
        if req.extensions().get::<AccessKey>().is_none() {
            req.extensions_mut().insert(AccessKey(who.name.clone()));
        }
        if let Err(seconds) = self.budgets.charge(&who.name) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("API key {:?} spent its request budget; retry in {seconds} s", who.name),
            );
            e.retry_after = Some(seconds);
            return Err(e);
        }
        if let Some(store) = req.match_info().get("store") {
            who.may_use(store)?;
        }
        Ok(who)
    }
}

/// The answer for a store that strict stores do not know.
fn undeclared(name: &str) -> ApiError {
    ApiError::not_found("unknown_store", format!("store {name:?} is not declared (strict stores)"))
}

/// Refuses a request whose path or query is not UTF-8 once
/// percent-decoded. Keys and store names are UTF-8 text; decoding lossily
/// (as the router does) would map different raw keys to one record.
pub fn strict_utf8(uri: &actix_web::http::Uri) -> Result<()> {
    let decodes = |raw: &str| percent_encoding::percent_decode_str(raw).decode_utf8().is_ok();
    if !decodes(uri.path()) {
        return Err(ApiError::bad_request("invalid_name", "the path is not valid UTF-8 once percent-decoded"));
    }
    if uri.query().is_some_and(|q| !decodes(q)) {
        return Err(ApiError::bad_request("bad_query", "the query is not valid UTF-8 once percent-decoded"));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<()> {
    datastorer::validate_key(key).map_err(ApiError::from)
}

fn token(req: &HttpRequest) -> Result<&str> {
    req.headers()
        .get(LEASE_TOKEN)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_lease_token", format!("send the session's {LEASE_TOKEN} header")))
}

/// Reads and parses a JSON body, enforcing the content type and the size
/// limit. `allow_empty` turns an empty body into `None`.
pub(crate) async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
    content_types: &[&str],
    allow_empty: bool,
) -> Result<Option<Value>> {
    let limit = state.config.max_body_bytes;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body is larger than {limit} bytes"))
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("bad_body", format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let body = decode_content(req, body, limit)?;
    if body.is_empty() && allow_empty {
        return Ok(None);
    }
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !content_types.contains(&content_type.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {content_type:?} is not accepted here; send {}", content_types.join(" or ")),
        ));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the body is not valid JSON: {e}")))
}

/// The body as sent, or decompressed under `Content-Encoding: gzip`
/// (HttpService can compress what a game server sends). The decompressed
/// body obeys the same limit as a plain one, so a small bomb cannot grow
/// past it; an encoding we do not speak is a 415 (RFC 9110 §15.5.16).
fn decode_content(req: &HttpRequest, body: web::BytesMut, limit: usize) -> Result<web::Bytes> {
    let Some(encoding) = req.headers().get(actix_web::http::header::CONTENT_ENCODING) else { return Ok(body.freeze()) };
    let encoding = encoding.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body.freeze()),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::bad_request("bad_body", format!("the gzip body does not decompress: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is larger than {limit} bytes once decompressed"),
                ));
            }
            Ok(web::Bytes::from(out))
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            format!("content encoding {other:?} is not accepted; send gzip or none"),
        )),
    }
}

/// A JSON object body into `T`. Anything but an object is refused (serde
/// would otherwise accept an array for a struct, field by position).
pub(crate) fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    if !v.is_object() {
        return Err(ApiError::bad_request("bad_request_body", "the body must be a JSON object"));
    }
    serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request("bad_request_body", super::error::humanize(&e.to_string())))
}

/// Over HTTP a request should not hang unless the client asked it to: the
/// default policy answers 409 at once.
#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum PolicyKind {
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
pub struct OpenQuery {
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

/// The longest hand-off grace a requester may grant a holder (ProfileStore
/// gives its holder one save; ten seconds is several round trips).
pub const MAX_GRACE_MS: u64 = 10_000;

/// One setting given in the query, the body, or both (then they must agree).
fn one_of<T: PartialEq + std::fmt::Debug>(name: &str, query: Option<T>, body: Option<T>) -> Result<Option<T>> {
    match (query, body) {
        (Some(q), Some(b)) if q != b => Err(ApiError::bad_request(
            "conflicting_parameters",
            format!("{name} is given in the query and in the body with different values"),
        )),
        (q, b) => Ok(q.or(b)),
    }
}

/// A `client_id` is 1 to 128 printable characters.
pub(crate) fn check_client_id(c: &str) -> Result<()> {
    if c.is_empty() || c.len() > 128 || c.chars().any(char::is_control) {
        return Err(ApiError::bad_request("bad_client_id", "client_id is 1 to 128 printable characters"));
    }
    Ok(())
}

fn user_id(v: &Value) -> Result<String> {
    super::validate::user_id(v).map_err(|e| ApiError::bad_request("bad_user_id", e))
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
pub(crate) fn add_notices(answer: &mut Value, grant: &LeaseGrant) {
    if let Some(h) = &grant.handoff {
        answer["handoff"] = json!({ "by": h.by, "deadline_ms": h.deadline_ms });
    }
    if grant.messages_waiting {
        answer["messages_waiting"] = Value::Bool(true);
    }
}

/// Set on a request whose session has news for its holder; the middleware
/// turns it into headers on the answer (`Handoff-Requested: <deadline_ms>`,
/// `Messages-Waiting: 1`), so every session route tells the holder.
#[derive(Clone, Copy)]
pub struct SessionNotices {
    /// Another client asked for the key; the hand-off deadline.
    pub handoff_deadline_ms: Option<u64>,
    /// Messages wait in the key's inbox.
    pub messages_waiting: bool,
}

/// `POST /v1/stores/{store}/keys/{key}/session`
pub async fn open_session(
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
    let timeout_ms = one_of("timeout_ms", query.timeout_ms, body.timeout_ms)?;
    let policy = one_of("policy", query.policy, body.policy)?.unwrap_or_default();
    let timeout = Duration::from_millis(timeout_ms.unwrap_or(10_000)).min(state.config.max_wait);
    let max_ms = state.config.max_wait.as_millis() as u64;
    if timeout_ms.is_some_and(|t| t > max_ms) {
        return Err(ApiError::bad_request("bad_timeout", format!("timeout_ms must be at most {max_ms}")));
    }
    let grace_ms = one_of("grace_ms", query.grace_ms, body.grace_ms)?;
    if grace_ms.is_some_and(|g| g > MAX_GRACE_MS) {
        return Err(ApiError::bad_request("bad_grace", format!("grace_ms must be at most {MAX_GRACE_MS}")));
    }
    if grace_ms.is_some() && policy != PolicyKind::RequestRelease {
        return Err(ApiError::bad_request("bad_grace", "grace_ms goes with policy=request_release only"));
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
    let resumable = body.client_id.is_some();
    let holder = match body.client_id {
        Some(c) => {
            check_client_id(&c)?;
            c
        }
        None => who.name.clone(),
    };
    let user_ids = body.user_ids.iter().map(user_id).collect::<Result<Vec<_>>>()?;
    req.extensions_mut().insert(AccessClient(holder.clone()));
    let grace = Duration::from_millis(grace_ms.unwrap_or(0));
    let claimant = Claimant { holder, api_key: who.name, resumable, grace };
    let (grant, session, waited) = state.sessions.acquire(&store, &key, &claimant, user_ids, policy).await?;
    if let Some(w) = waited {
        state.metrics.observe_lease_wait(w);
    }
    let mut answer = session_view(&session, &grant, true).await?;
    // Messages that waited for the key arrive with it; a failed read only
    // defers them (they stay in the inbox, and the holder is told).
    match store.messages(&key).await {
        Ok(m) if m.is_empty() => {}
        Ok(m) => answer["messages"] = super::messages::view(&m),
        Err(_) => {
            state.sessions.set_messages_waiting(&store_name, &key, true);
            answer["messages_waiting"] = Value::Bool(true);
        }
    }
    Ok(HttpResponse::Ok().json(answer))
}

pub(crate) async fn checked(
    req: &HttpRequest,
    state: &AppState,
    path: &(String, String),
) -> Result<(Session<Value>, LeaseGrant)> {
    state.admit()?;
    state.auth(req, Role::Write)?;
    let (session, grant) = session_of(state, path, token(req)?).await?;
    req.extensions_mut().insert(AccessClient(grant.holder.clone()));
    if grant.handoff.is_some() || grant.messages_waiting {
        req.extensions_mut().insert(SessionNotices {
            handoff_deadline_ms: grant.handoff.as_ref().map(|h| h.deadline_ms),
            messages_waiting: grant.messages_waiting,
        });
    }
    Ok((session, grant))
}

/// The session behind `token` on `path` (store, key), renewing its client
/// lease; a token this server does not know may be another server's.
pub(crate) async fn session_of(
    state: &AppState,
    path: &(String, String),
    token: &str,
) -> Result<(Session<Value>, LeaseGrant)> {
    datastorer::validate_store_name(&path.0).map_err(ApiError::from)?;
    check_key(&path.1)?;
    match state.sessions.check(&path.0, &path.1, token) {
        Err(e) if e.code == "invalid_lease_token" => Err(wrong_server(state, path).await.unwrap_or(e)),
        other => other,
    }
}

/// With servers sharing one database, a token this server does not know
/// may belong to a session on another server: if the key's live lease is
/// another owner's, the client is told where to go (`421 wrong_server`)
/// instead of being told its token is wrong.
async fn wrong_server(state: &AppState, path: &(String, String)) -> Option<ApiError> {
    let pg = state.postgres.as_ref()?;
    let store = state.store(&path.0).ok()?;
    let lease = store.inspect(path.1.as_str()).await.ok()??.lease?;
    let now = state.ds.now_ms();
    if lease.owner == state.ds.owner_id() || lease.expires_at_ms <= now {
        return None;
    }
    let url = pg.owner_url(&lease.owner).ok().flatten();
    let mut e = ApiError::new(
        actix_web::http::StatusCode::MISDIRECTED_REQUEST,
        "wrong_server",
        format!(
            "the session on this key lives on another server ({:?}{}); send its requests there",
            lease.owner,
            url.as_deref().map(|u| format!(" at {u}")).unwrap_or_default()
        ),
    );
    e.details = Some(json!({ "holder": lease.owner, "advertise_url": url, "expires_at_ms": lease.expires_at_ms }));
    Some(e)
}

/// `GET …/session`
pub async fn get_session(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (session, grant) = checked(&req, &state, &path).await?;
    Ok(HttpResponse::Ok().json(session_view(&session, &grant, false).await?))
}

/// The session behind the request's lease token and its required JSON body.
pub(crate) async fn session_and_body(
    req: &HttpRequest,
    path: &(String, String),
    payload: web::Payload,
    state: &AppState,
    content_types: &[&str],
    expected: &str,
) -> Result<(Session<Value>, Value)> {
    let (session, _) = checked(req, state, path).await?;
    match read_json(req, payload, state, content_types, false).await? {
        Some(body) => Ok((session, body)),
        None => Err(ApiError::bad_request("bad_json", format!("the body must be {expected}"))),
    }
}

/// `?save=normal|emergency` on `PUT`/`PATCH …/session/data`: write through,
/// answering once the change is durable.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuery {
    save: Option<PriorityParam>,
}

/// Whether the request asks `Prefer: return=minimal` (RFC 7240): the
/// answer then leaves out what the client sent (the document it just
/// changed), which a client paying per byte and per request has no use
/// for. Other preferences are ignored, as the RFC asks.
pub fn prefers_minimal(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| pref.split(';').next()?.split_once('='))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("return") && value.trim().trim_matches('"').eq_ignore_ascii_case("minimal")
        })
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
    path: web::Path<(String, String)>,
    query: ChangeQuery,
    payload: web::Payload,
    state: web::Data<AppState>,
    content_types: &[&str],
    change: fn(&mut Value, Value),
) -> Result<HttpResponse> {
    let minimal = prefers_minimal(&req);
    let (session, body) = session_and_body(&req, &path, payload, &state, content_types, "a JSON document").await?;
    // The response is written inside the key actor, from the document in
    // place: no copy of the document per request. Its closing brace waits
    // for the save's fields, if any.
    let mut response = session
        .update(move |d| {
            change(d, body);
            let mut out = Vec::with_capacity(if minimal { 64 } else { 256 });
            if minimal {
                out.push(b'{');
                return Ok(out);
            }
            out.extend_from_slice(b"{\"data\":");
            serde_json::to_writer(&mut out, d).map(|()| out)
        })
        .await?
        .map_err(|e| {
            ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the document does not serialize: {e}"),
            )
        })?;
    if let Some(priority) = query.save {
        // A failed save leaves the change in the session, unsaved, exactly
        // as a failed `POST …/save` would.
        let started = Instant::now();
        let outcome = session.save(priority.into()).await?;
        state.metrics.observe_save(started.elapsed());
        let comma = if minimal { "" } else { "," };
        response.extend_from_slice(format!("{comma}\"revision\":{},\"durable\":true", outcome.revision).as_bytes());
    }
    response.push(b'}');
    Ok(changed(minimal, response))
}

/// `PUT …/session/data`: replace the document.
pub async fn put_data(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ChangeQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    change_data(req, path, query.into_inner(), payload, state, &["application/json"], |d, body| *d = body).await
}

/// `PATCH …/session/data`: RFC 7396 merge patch.
pub async fn patch_data(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ChangeQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let types = ["application/merge-patch+json", "application/json"];
    change_data(req, path, query.into_inner(), payload, state, &types, |d, patch| merge_patch(d, &patch)).await
}

/// `PUT …/session/metadata`
pub async fn put_metadata(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (session, metadata) =
        session_and_body(&req, &path, payload, &state, &["application/json"], "a JSON object").await?;
    super::validate::metadata(&metadata).map_err(|e| ApiError::bad_request("bad_metadata", e))?;
    let minimal = prefers_minimal(&req);
    let answer = if minimal { b"{}".to_vec() } else { json!({ "metadata": &metadata }).to_string().into_bytes() };
    session.set_metadata(metadata).await?;
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
pub async fn remove_user_id(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (store, key, id) = path.into_inner();
    let (session, _) = checked(&req, &state, &(store, key)).await?;
    let id = user_id(&Value::String(id))?;
    let removed = session.remove_user_id(id).await?;
    Ok(HttpResponse::Ok().json(json!({ "user_ids": session.user_ids().await?, "removed": removed })))
}

/// `POST …/session/user_ids`
pub async fn add_user_id(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (session, body) =
        session_and_body(&req, &path, payload, &state, &["application/json"], r#"{"user_id": ...}"#).await?;
    let body: UserIdBody = parse(body)?;
    session.add_user_id(user_id(&body.user_id)?).await?;
    Ok(HttpResponse::Ok().json(json!({ "user_ids": session.user_ids().await? })))
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PriorityParam {
    #[default]
    Normal,
    Emergency,
}

/// `?priority=normal|emergency`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PriorityQuery {
    #[serde(default)]
    priority: PriorityParam,
}

impl From<PriorityParam> for Priority {
    fn from(p: PriorityParam) -> Self {
        match p {
            PriorityParam::Normal => Priority::Normal,
            PriorityParam::Emergency => Priority::Emergency,
        }
    }
}

impl PriorityQuery {
    fn get(&self) -> Priority {
        self.priority.into()
    }
}

/// `POST …/session/save`: answers once durable.
pub async fn save(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PriorityQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (session, _) = checked(&req, &state, &path).await?;
    let started = Instant::now();
    let outcome = session.save(query.get()).await?;
    state.metrics.observe_save(started.elapsed());
    Ok(HttpResponse::Ok().json(json!({ "revision": outcome.revision, "durable": true })))
}

/// `POST …/session/renew`
pub async fn renew(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (_, grant) = checked(&req, &state, &path).await?;
    Ok(HttpResponse::Ok().json(json!({ "epoch": grant.epoch, "expires_at_ms": grant.expires_at_ms })))
}

/// `POST …/session/release`: save and end.
pub async fn release(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<PriorityQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    checked(&req, &state, &path).await?;
    let started = Instant::now();
    let revision = state.sessions.end(&path.0, &path.1, token(&req)?, Ending::Release(query.get())).await?;
    state.metrics.observe_save(started.elapsed());
    Ok(HttpResponse::Ok().json(json!({ "revision": revision, "released": true })))
}

/// `DELETE …/session`: end without saving.
pub async fn close(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    checked(&req, &state, &path).await?;
    let revision = state.sessions.end(&path.0, &path.1, token(&req)?, Ending::Close).await?;
    Ok(HttpResponse::Ok().json(json!({ "revision": revision, "closed": true })))
}

fn json_or_raw(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `GET /v1/stores/{store}/keys/{key}`: the stored record, no lease needed.
pub async fn view_key(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let (store_name, key) = path.into_inner();
    let store = state.store(&store_name)?;
    check_key(&key)?;
    let if_none_match = super::conditional::condition(&req, actix_web::http::header::IF_NONE_MATCH)?;
    let Some(rec) = store.inspect(key.as_str()).await? else {
        return Err(ApiError::not_found("no_such_key", format!("no record for key {key:?} in store {store_name:?}")));
    };
    let tag = super::conditional::etag(rec.header);
    if if_none_match.is_some_and(|c| c.matches_weak(&tag)) {
        return Ok(HttpResponse::NotModified().insert_header((actix_web::http::header::ETAG, tag)).finish());
    }
    // A raw read shows the record as stored: at an older data version its
    // data has not been through the store's migrations yet (the next open
    // or one-shot write migrates it), and the answer says so.
    let store_version = state.config.stores.get(&store_name).map_or(0, |d| d.migrations.len() as u64);
    let unmigrated = u64::from(rec.data_version) < store_version;
    Ok(HttpResponse::Ok().insert_header((actix_web::http::header::ETAG, tag)).json(json!({
        "store": store_name,
        "unmigrated": unmigrated,
        "store_data_version": store_version,
        "key": key,
        "data": json_or_raw(&rec.data),
        "metadata": json_or_raw(&rec.metadata),
        "user_ids": rec.user_ids,
        "data_version": rec.data_version,
        "revision": rec.header.revision,
        "epoch": rec.header.epoch,
        "lease": rec.lease.map(|l| json!({ "owner": l.owner, "expires_at_ms": l.expires_at_ms })),
        "created_at_ms": rec.created_at_ms,
        "updated_at_ms": rec.updated_at_ms,
    })))
}

/// `?prefix=&cursor=&limit=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/stores/{store}/keys`
pub async fn list_keys(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let store = state.store(&path)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request("bad_limit", format!("limit must be 1 to {MAX_LIST_LIMIT}")));
    }
    if query.prefix.len() > datastorer::MAX_KEY_LEN
        || query.cursor.as_ref().is_some_and(|c| c.len() > datastorer::MAX_KEY_LEN)
    {
        return Err(ApiError::bad_request("bad_prefix", "prefix and cursor are at most 512 bytes"));
    }
    // One more than asked says whether another page exists, so a full last
    // page does not hand out a cursor to an empty one.
    let mut keys = store.list_keys(&query.prefix, query.cursor.as_deref(), limit + 1).await?;
    let next = if keys.len() > limit {
        keys.truncate(limit);
        keys.last().cloned()
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "keys": keys, "next_cursor": next })))
}

/// `GET /v1/stores/{store}`: the spec a client reconciles against (the
/// template, the metadata template and the data version new records get),
/// so a game server's copy of the template cannot drift from the server's.
/// Does not create the store: an undeclared one is described as the server
/// would create it.
pub async fn describe_store(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let name = path.into_inner();
    datastorer::validate_store_name(&name).map_err(ApiError::from)?;
    let answer = match state.config.stores.get(&name) {
        Some(decl) => json!({
            "store": name, "declared": true, "template": decl.template,
            "metadata_template": decl.metadata_template, "data_version": decl.migrations.len(),
        }),
        None if state.config.strict_stores => return Err(undeclared(&name)),
        None => json!({
            "store": name, "declared": false, "template": {}, "metadata_template": {}, "data_version": 0,
        }),
    };
    Ok(HttpResponse::Ok().json(answer))
}

/// `?force=true`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ForceQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/stores/{store}/keys/{key}` (admin)
pub async fn delete_key(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ForceQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Admin)?;
    let (store_name, key) = path.into_inner();
    let store = state.store(&store_name)?;
    check_key(&key)?;
    // The holder that matters to the caller is the client, with its own
    // lease's expiry, not this server's owner id.
    if !query.force {
        if let Some((holder, expires_at_ms)) = state.sessions.holder(&store_name, &key) {
            let mut e = ApiError::conflict(
                "lease_held",
                format!("the key is held by client {holder:?}; delete with ?force=true to end its session"),
            );
            e.details = Some(json!({ "holder": holder, "expires_at_ms": expires_at_ms }));
            return Err(e);
        }
    }
    let expected = super::conditional::write_expectation(&req, &store, &key).await?;
    let deleted = store.delete_if(key.as_str(), expected, query.force).await?;
    if !deleted
        && expected == datastorer::Expect::Absent
        && req.headers().contains_key(actix_web::http::header::IF_NONE_MATCH)
    {
        // `If-None-Match: *` on a key with no record: nothing to delete, as asked.
        return Ok(HttpResponse::Ok().json(json!({ "deleted": false })));
    }
    if !deleted {
        return Err(ApiError::not_found("no_such_key", format!("no record for key {key:?} in store {store_name:?}")));
    }
    Ok(HttpResponse::Ok().json(json!({ "deleted": true })))
}

/// `?store=`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    store: Option<String>,
}

/// A feed's `?store=` filter, checked by the rules of store names.
fn store_filter(store: Option<&str>) -> Result<()> {
    store.map_or(Ok(()), |s| datastorer::validate_store_name(s).map_err(ApiError::from))
}

/// `GET /v1/changes`: Server-Sent Events; each carries its sequence as
/// `id:`, and a reconnect with `Last-Event-ID` resumes after it.
pub async fn changes(
    req: HttpRequest,
    query: web::Query<ChangesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let who = state.auth(&req, Role::Read)?;
    store_filter(query.store.as_deref())?;
    scoped_feed(&who, query.store.as_deref())?;
    let resume = match req.headers().get("Last-Event-ID") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad_request("bad_last_event_id", "Last-Event-ID must be a sequence number from this feed")
        })?),
    };
    let body = super::feed::stream(state.changes.clone(), resume, query.store.clone(), state.shutdown.clone());
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .streaming(body))
}

/// A key limited to some stores reads the feed of one of them only: the
/// feed of every store would show it the others' keys.
fn scoped_feed(who: &super::auth::Identity, store: Option<&str>) -> Result<()> {
    match store {
        Some(s) => who.may_use(s),
        None if who.is_scoped() => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "store_forbidden",
            format!("API key {:?} is limited to some stores: pass store=", who.name),
        )),
        None => Ok(()),
    }
}

/// The longest a poll may wait: under HttpService's 30 s request timeout,
/// with room for the answer.
pub const MAX_POLL_WAIT_MS: u64 = 20_000;
const MAX_POLL_LIMIT: usize = 1000;

/// `?after=&wait_ms=&store=&limit=`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
    store: Option<String>,
    limit: Option<usize>,
    client_id: Option<String>,
}

/// `GET /v1/changes/poll`: the feed for clients that cannot hold a stream
/// open (Roblox game servers). Answers at once when events after `after`
/// are waiting, else when one arrives or `wait_ms` passes; `next` is the
/// cursor for the following poll. Without `after`, starts from now.
pub async fn poll_changes(
    req: HttpRequest,
    query: web::Query<PollQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let who = state.auth(&req, Role::Read)?;
    let q = query.into_inner();
    store_filter(q.store.as_deref())?;
    scoped_feed(&who, q.store.as_deref())?;
    if let Some(c) = &q.client_id {
        check_client_id(c)?;
        // A client's notices are its own: readable only under the API key
        // it holds its sessions with (and filtered by that key in any case).
        let owners = state.sessions.client_api_keys(c);
        if !owners.is_empty() && !owners.contains(&who.name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "client_forbidden",
                format!("client {c:?} holds its sessions under another API key; its feed is read with that key"),
            ));
        }
    }
    let filter = Filter { store: q.store.as_deref(), holder: q.client_id.as_deref(), api_key: Some(&who.name) };
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > MAX_POLL_WAIT_MS {
        return Err(ApiError::bad_request("bad_wait", format!("wait_ms must be at most {MAX_POLL_WAIT_MS}")));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_POLL_LIMIT {
        return Err(ApiError::bad_request("bad_limit", format!("limit must be 1 to {MAX_POLL_LIMIT}")));
    }
    let log = &state.changes;
    let mut after = q.after.unwrap_or_else(|| log.newest());
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut shutdown = state.shutdown.clone();
    loop {
        let page = log.read(after, filter, limit);
        after = page.next;
        if !page.events.is_empty() || page.lagged || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            return Ok(HttpResponse::Ok().json(&page));
        }
        if log.newest() > after {
            continue; // a full page of other stores' events: read on
        }
        tokio::select! {
            () = log.wait_after(after) => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// `POST /v1/webhooks/test` (admin): sends a test alert to every webhook,
/// to check the configuration end to end.
pub async fn test_webhooks(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, Role::Admin)?;
    state.webhooks.alert(super::webhooks::Alert {
        kind: super::webhooks::AlertKind::Test,
        count: 1,
        message: "a test alert, sent on request".into(),
    });
    Ok(HttpResponse::Ok().json(json!({ "webhooks": state.webhooks.len() })))
}

/// `GET /v1/openapi.json`
pub async fn openapi(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    Ok(HttpResponse::Ok().json(super::openapi::document(state.config.max_wait)))
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: ready unless shutting down.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.shutting_down.load(Ordering::SeqCst) {
        // Every 503 says when to come back (README), this one too.
        actix_web::ResponseError::error_response(&ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down",
        ))
    } else {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let gauges = Gauges {
        depth: state.ds.queue_depth().await,
        budgets: state.ds.budget_levels().await,
        loaded_keys: state.ds.loaded_count(),
        client_sessions: state.sessions.len(),
        client_lease_lapses: state.sessions.lapses(),
        save_failures: state.ds.save_failures(),
        queue: state.ds.queue_stats().await,
    };
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render(&gauges)))
}

/// 404 for unknown routes.
pub async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::not_found("not_found", "no such route (see /v1/openapi.json)"))
}

/// 405 for a known route with another method.
pub async fn method_not_allowed() -> HttpResponse {
    let e = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method");
    actix_web::ResponseError::error_response(&e)
}

/// Registers every route.
///
/// Session routes are one scope, registered first: actix matches dynamic
/// paths with a regex per resource, tried in order, so a hot request
/// (`PATCH …/data`, `POST …/save`) runs one regex for the scope and then
/// compares a static suffix (the regexes were ~10 % of the server's CPU).
pub fn configure(cfg: &mut web::ServiceConfig) {
    let r = |path: &str| web::resource(path.to_owned()).default_service(web::to(method_not_allowed));
    cfg.service(
        web::scope("/v1/stores/{store}/keys/{key}/session")
            .service(r("/data").route(web::patch().to(patch_data)).route(web::put().to(put_data)))
            .service(r("/save").route(web::post().to(save)))
            .service(r("/renew").route(web::post().to(renew)))
            .service(r("/release").route(web::post().to(release)))
            .service(r("/metadata").route(web::put().to(put_metadata)))
            .service(r("/user_ids").route(web::post().to(add_user_id)))
            .service(r("/user_ids/{user_id}").route(web::delete().to(remove_user_id)))
            .service(r("/messages").route(web::get().to(super::messages::list)))
            .service(r("/messages/ack").route(web::post().to(super::messages::ack)))
            .service(
                r("")
                    .route(web::post().to(open_session))
                    .route(web::get().to(get_session))
                    .route(web::delete().to(close)),
            ),
    )
    .service(
        r("/v1/stores/{store}/keys/{key}")
            .route(web::get().to(view_key))
            .route(web::delete().to(delete_key))
            .route(web::patch().to(super::conditional::patch_unleased))
            .route(web::put().to(super::conditional::put_unleased)),
    )
    .service(r("/v1/stores/{store}/keys/{key}/messages").route(web::post().to(super::messages::post)))
    .service(r("/v1/stores/{store}/keys").route(web::get().to(list_keys)))
    .service(r("/v1/stores/{store}").route(web::get().to(describe_store)))
    .service(r("/healthz").route(web::get().to(healthz)))
    .service(r("/readyz").route(web::get().to(readyz)))
    .service(r("/metrics").route(web::get().to(metrics)))
    .service(r("/v1/openapi.json").route(web::get().to(openapi)))
    .service(r("/v1/changes").route(web::get().to(changes)))
    .service(r("/v1/changes/poll").route(web::get().to(poll_changes)))
    .service(r("/v1/batch").route(web::post().to(super::batch::batch)))
    .service(r("/v1/webhooks/test").route(web::post().to(test_webhooks)))
    .service(r("/v1/clients/{client_id}/renew").route(web::post().to(super::batch::renew_client)));
}

#[cfg(test)]
mod tests {
    use super::prefers_minimal;

    #[test]
    fn return_minimal_is_recognised_among_other_preferences_and_nothing_else_is() {
        let cases: &[(&[&str], bool)] = &[
            (&["return=minimal"], true),
            (&["Return = \"MINIMAL\""], true),
            (&["respond-async, return=minimal; foo=bar"], true),
            (&["wait=5", "return=minimal"], true),
            (&["return=representation"], false),
            (&["minimal"], false),
            (&["return-minimal"], false),
            (&[], false),
        ];
        for (headers, want) in cases {
            let mut req = actix_web::test::TestRequest::default();
            for h in *headers {
                req = req.append_header(("Prefer", *h));
            }
            assert_eq!(prefers_minimal(&req.to_http_request()), *want, "{headers:?}");
        }
    }
}
