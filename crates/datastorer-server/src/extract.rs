//! What a handler takes from a request, checked once: the JSON body
//! (content type, encoding, size), the lease token, and [`Held`], the
//! session a session route acts on. A handler that takes `Held` runs only
//! for an admitted, authenticated request whose token names a live session
//! on the path's key.
//!
//! Owns: request parsing. Must not: change
//! anything; extraction reads and validates, the handlers act.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{AccessClient, SessionNotices};
use crate::auth::Role;
use crate::error::{ApiError, ErrorCode};
use crate::sessions::LeaseGrant;
use crate::state::AppState;
use datastorer::{Priority, Session};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Header carrying the lease token.
pub(crate) const LEASE_TOKEN: &str = "Lease-Token";

/// The session a session route acts on: the request was admitted (the
/// server is not shutting down), its API key may write to the store, and
/// its `Lease-Token` names the live client session on `{store}/{key}`,
/// whose client lease the lookup renewed.
pub(crate) struct Held {
    /// The engine session.
    pub(crate) session: Session<Value>,
    /// The client lease as renewed by this request.
    pub(crate) grant: LeaseGrant,
    /// The store's name, from the path.
    pub(crate) store: String,
    /// The key, from the path.
    pub(crate) key: String,
    /// The lease token the request sent.
    pub(crate) token: String,
}

impl FromRequest for Held {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = app_state(&req)?;
            state.admit()?;
            state.auth(&req, Role::Write)?;
            let store = req.match_info().get("store").unwrap_or_default().to_owned();
            let key = req.match_info().get("key").unwrap_or_default().to_owned();
            let token = token(&req)?.to_owned();
            let (session, grant) = session_of(&state, &store, &key, &token).await?;
            req.extensions_mut().insert(AccessClient(grant.holder.clone()));
            if grant.handoff.is_some() || grant.messages_waiting {
                req.extensions_mut().insert(SessionNotices {
                    handoff_deadline_ms: grant.handoff.as_ref().map(|h| h.deadline_ms),
                    messages_waiting: grant.messages_waiting,
                });
            }
            Ok(Held { session, grant, store, key, token })
        })
    }
}

fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the server's state is not installed"))
}

fn token(req: &HttpRequest) -> Result<&str> {
    req.headers()
        .get(LEASE_TOKEN)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::MissingLeaseToken, format!("send the session's {LEASE_TOKEN} header")))
}

/// The session behind `token` on `store`/`key`, renewing its client lease;
/// a token this server does not know may be another server's.
pub(crate) async fn session_of(
    state: &AppState,
    store: &str,
    key: &str,
    token: &str,
) -> Result<(Session<Value>, LeaseGrant)> {
    datastorer::validate_store_name(store).map_err(ApiError::from)?;
    check_key(key)?;
    match state.sessions.check(store, key, token) {
        Err(e) if e.code == ErrorCode::InvalidLeaseToken => Err(wrong_server(state, store, key).await.unwrap_or(e)),
        other => other,
    }
}

/// With servers sharing one database, a token this server does not know
/// may belong to a session on another server: if the key's live lease is
/// another owner's, the client is told where to go (`421 wrong_server`)
/// instead of being told its token is wrong.
async fn wrong_server(state: &AppState, store: &str, key: &str) -> Option<ApiError> {
    state.postgres.as_ref()?;
    let lease = state.store(store).ok()?.inspect(key).await.ok()??.lease?;
    let now = state.ds.now_ms();
    if lease.owner == state.ds.owner_id() || lease.expires_at_ms <= now {
        return None;
    }
    let url = state.advertised_url(&lease.owner);
    let message = format!(
        "the session on this key lives on another server ({:?}{}); send its requests there",
        lease.owner,
        url.as_deref().map(|u| format!(" at {u}")).unwrap_or_default()
    );
    Some(ApiError::new(ErrorCode::WrongServer, message).with(json!({
        "holder": lease.owner, "advertise_url": url, "expires_at_ms": lease.expires_at_ms,
    })))
}

/// A key by the engine's rules.
pub(crate) fn check_key(key: &str) -> Result<()> {
    datastorer::validate_key(key).map_err(ApiError::from)
}

/// A `client_id` is 1 to 128 printable characters.
pub(crate) fn check_client_id(c: &str) -> Result<()> {
    crate::validate::client_id(c).map_err(|e| ApiError::new(ErrorCode::BadClientId, e))
}

/// A user id as given in a body or a path.
pub(crate) fn user_id(v: &Value) -> Result<String> {
    crate::validate::user_id(v).map_err(|e| ApiError::new(ErrorCode::BadUserId, e))
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
    let too_large = || ApiError::new(ErrorCode::BodyTooLarge, format!("the body is larger than {limit} bytes"));
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::BadBody, format!("cannot read the body: {e}")))?;
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
            ErrorCode::UnsupportedMediaType,
            format!("content type {content_type:?} is not accepted here; send {}", content_types.join(" or ")),
        ));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("the body is not valid JSON: {e}")))
}

/// A required JSON body; `expected` says what it must be when missing.
pub(crate) async fn required_json(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    content_types: &[&str],
    expected: &str,
) -> Result<Value> {
    read_json(req, payload, state, content_types, false)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::BadJson, format!("the body must be {expected}")))
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
                .map_err(|e| ApiError::new(ErrorCode::BadBody, format!("the gzip body does not decompress: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::new(
                    ErrorCode::BodyTooLarge,
                    format!("the body is larger than {limit} bytes once decompressed"),
                ));
            }
            Ok(web::Bytes::from(out))
        }
        other => Err(ApiError::new(
            ErrorCode::UnsupportedContentEncoding,
            format!("content encoding {other:?} is not accepted; send gzip or none"),
        )),
    }
}

/// A JSON object body into `T`. Anything but an object is refused (serde
/// would otherwise accept an array for a struct, field by position).
pub(crate) fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    if !v.is_object() {
        return Err(ApiError::new(ErrorCode::BadRequestBody, "the body must be a JSON object"));
    }
    serde_json::from_value(v)
        .map_err(|e| ApiError::new(ErrorCode::BadRequestBody, crate::error::humanize(&e.to_string())))
}

/// Whether the request asks `Prefer: return=minimal` (RFC 7240): the
/// answer then leaves out what the client sent (the document it just
/// changed), which a client paying per byte and per request has no use
/// for. Other preferences are ignored, as the RFC asks.
pub(crate) fn prefers_minimal(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| pref.split(';').next()?.split_once('='))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("return") && value.trim().trim_matches('"').eq_ignore_ascii_case("minimal")
        })
}

/// A save lane as a request names it.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PriorityParam {
    #[default]
    Normal,
    Emergency,
}

impl From<PriorityParam> for Priority {
    fn from(p: PriorityParam) -> Self {
        match p {
            PriorityParam::Normal => Priority::Normal,
            PriorityParam::Emergency => Priority::Emergency,
        }
    }
}

/// `?priority=normal|emergency`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriorityQuery {
    #[serde(default)]
    priority: PriorityParam,
}

impl PriorityQuery {
    /// The lane asked for.
    pub(crate) fn get(&self) -> Priority {
        self.priority.into()
    }
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
