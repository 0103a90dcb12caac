//! Forwarding within a fleet (several servers on one PostgreSQL database,
//! sharing `fleet_secret`): a session request that reaches a server not
//! holding the session, which would be answered `421 wrong_server`, is
//! sent on to the server that holds it (found through the key's lease and
//! the holder's advertised URL) and its answer handed back, so a client
//! may send anything to any server behind a plain load balancer.
//!
//! - One hop at most: a forwarded request carries `Datastorer-Forwarded`
//!   and is never forwarded again.
//! - Authentication is checked where the request enters; the hop carries
//!   the fleet's secret and the name of the key the request came in with,
//!   which the holder applies (role and store scope) without charging the
//!   key's budget again.
//! - A holder that cannot be reached is `503 holder_unreachable` with
//!   `Retry-After`, never a hang.
//! - `Datastorer-Route: direct` asks for the `421` instead.
//!
//! Owns: that middleware, the hop's headers and the forwarded identity.
//! Must not: forward anything but session requests (`…/session…`), or
//! forward without the fleet secret.

use std::time::Duration;

use actix_web::body::{to_bytes, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde_json::Value;

use crate::access::AccessKey;
use crate::auth::{FLEET_KEY, FORWARDED_KEY};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// On a forwarded request (and its answer): the server it came through.
pub(crate) const FORWARDED: &str = "Datastorer-Forwarded";
/// `direct`: answer `421 wrong_server` rather than forward.
pub(crate) const ROUTE: &str = "Datastorer-Route";

/// How long a hop may take: a session request is short; the wait a client
/// may ask of an open is not forwarded (opens carry no token).
const HOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The headers a hop carries on (the rest are the connection's or the
/// authentication's, replaced by the fleet's).
const CARRIED: [&str; 9] = [
    "content-type",
    "lease-token",
    "prefer",
    "if-match",
    "if-none-match",
    "accept",
    "datastorer-client-id",
    "user-agent",
    "traceparent",
];

fn payload_of(bytes: Bytes) -> Payload {
    let (_, mut payload) = actix_http::h1::Payload::create(true);
    payload.unread_data(bytes);
    Payload::from(payload)
}

/// Whether a request (already in a handler) may forward: in a fleet, not
/// itself forwarded, not asking for the 421.
pub(crate) fn may_forward(state: &AppState, req: &HttpRequest) -> bool {
    state.fleet.is_some()
        && !req.headers().contains_key(FORWARDED)
        && !req.headers().contains_key(FLEET_KEY)
        && req.headers().get(ROUTE).is_none_or(|v| v.as_bytes() != b"direct")
}

/// `GET path` (with its query) at `base`, in one hop that may take up to
/// `timeout` (a long poll's wait and then some): its status and body.
pub(crate) async fn get(
    state: &AppState,
    req: &HttpRequest,
    base: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), ApiError> {
    let (status, body, _) = hop_to(state, req, base, path, reqwest::Method::GET, Bytes::new(), timeout).await?;
    Ok((status, body))
}

/// Sends `ops` as one `/v1/batch` to the holder at `base`; answers its
/// results, in the order sent.
pub(crate) async fn batch_hop(
    state: &AppState,
    req: &HttpRequest,
    base: &str,
    ops: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let body = Bytes::from(serde_json::json!({ "ops": ops }).to_string());
    let answer = hop_to(state, req, base, "/v1/batch", reqwest::Method::POST, body, HOP_TIMEOUT).await?;
    let parsed: Value = serde_json::from_slice(&answer.1).unwrap_or(Value::Null);
    match parsed["results"].as_array() {
        Some(results) if answer.0 == 200 => Ok(results.clone()),
        _ => Err(ApiError::new(
            ErrorCode::HolderUnreachable,
            format!("the holder at {base} answered the batch {}: {}", answer.0, String::from_utf8_lossy(&answer.1)),
        )),
    }
}

/// The sessions `client` holds on the fleet's other live servers, each
/// renewed there (`POST /v1/clients/{client}/renew`, one hop each, at
/// once); a server that cannot be reached renews nothing (its sessions
/// lapse with it).
pub(crate) async fn renew_everywhere(state: &AppState, req: &HttpRequest, client: &str) -> Vec<Value> {
    let (Some(pg), true) = (state.postgres.clone(), may_forward(state, req)) else { return Vec::new() };
    let me = state.ds.owner_id().to_owned();
    let peers = pg.live_peers(Duration::from_secs(15)).unwrap_or_default();
    let path = format!("/v1/clients/{}/renew", crate::roblox_names::percent_encode(client));
    let hops = peers.into_iter().filter(|(owner, _)| *owner != me).map(|(_, url)| {
        let path = path.clone();
        async move { hop_to(state, req, &url, &path, reqwest::Method::POST, Bytes::new(), HOP_TIMEOUT).await }
    });
    let mut out = Vec::new();
    for answer in futures_util::future::join_all(hops).await.into_iter().flatten() {
        if answer.0 == 200 {
            let v: Value = serde_json::from_slice(&answer.1).unwrap_or(Value::Null);
            out.extend(v["sessions"].as_array().cloned().unwrap_or_default());
        }
    }
    out
}

/// Whether this request may be forwarded if it turns out misdirected.
fn forwardable(state: &AppState, req: &ServiceRequest) -> bool {
    state.fleet.is_some()
        && req.path().contains("/session")
        && !req.headers().contains_key(FORWARDED)
        && !req.headers().contains_key(FLEET_KEY)
        && req.headers().get(ROUTE).is_none_or(|v| v.as_bytes() != b"direct")
}

/// The middleware (installed inside `observe`, so a forwarded request is
/// logged and counted once, where it entered).
pub(crate) async fn forward(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next.call(req).await.map(|r| r.map_body(|_, b| EitherBody::left(b.boxed())));
    };
    // A body too large to keep for a hop is not buffered: the request is
    // answered here, 421 included.
    let small = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_none_or(|n| n <= state.config.max_body_bytes);
    if !forwardable(&state, &req) || !small {
        return next.call(req).await.map(|r| r.map_body(|_, b| EitherBody::left(b.boxed())));
    }
    // Kept whole (up to the server's body limit) to be sent on if need be.
    let mut payload = req.take_payload();
    let mut kept = web::BytesMut::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut payload).await {
        let chunk = chunk?;
        if kept.len() + chunk.len() > state.config.max_body_bytes {
            let e = ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("the body is larger than {} bytes", state.config.max_body_bytes),
            );
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
        kept.extend_from_slice(&chunk);
    }
    let body = kept.freeze();
    // A session whose last request was forwarded: straight to its holder
    // (authenticated and charged here, as the handler would have), without
    // reading the key's lease again. Its holder's 421 or a failed hop
    // forgets the shortcut; the 421 then takes the usual way.
    let token = req.headers().get("lease-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some((token, base)) = token.as_deref().and_then(|t| Some((t, state.holder_of_token(t)?))) {
        if let Err(e) = state.auth(req.request(), crate::auth::Role::Read) {
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
        match hop(&state, req.request(), &base, body.clone()).await {
            Ok(r) if r.status() != StatusCode::MISDIRECTED_REQUEST => {
                state.set_holder_of_token(token, Some(&base));
                return Ok(req.into_response(r).map_into_right_body());
            }
            Ok(_) => state.set_holder_of_token(token, None),
            Err(e) => {
                state.set_holder_of_token(token, None);
                return Ok(req.into_response(e.error_response()).map_into_right_body());
            }
        }
    }
    req.set_payload(payload_of(body.clone()));
    let res = next.call(req).await?;
    if res.status() != StatusCode::MISDIRECTED_REQUEST {
        return Ok(res.map_body(|_, b| EitherBody::left(b.boxed())));
    }
    let (http_req, response) = res.into_parts();
    let status = response.status();
    let headers = response.headers().clone();
    let answer = to_bytes(response.into_body()).await.unwrap_or_default();
    let target = serde_json::from_slice::<Value>(&answer)
        .ok()
        .filter(|v| v["code"] == "wrong_server")
        .and_then(|v| v["advertise_url"].as_str().map(str::to_owned));
    let Some(base) = target else {
        // No advertised URL: the 421 as it was.
        let mut back = HttpResponse::build(status);
        for (k, v) in &headers {
            back.insert_header((k.clone(), v.clone()));
        }
        return Ok(ServiceResponse::new(http_req, back.body(answer)).map_into_right_body());
    };
    let forwarded = hop(&state, &http_req, &base, body).await;
    let response = match forwarded {
        Ok(r) => {
            if let Some(token) = http_req.headers().get("lease-token").and_then(|v| v.to_str().ok()) {
                if r.status() != StatusCode::MISDIRECTED_REQUEST {
                    state.set_holder_of_token(token, Some(&base));
                }
            }
            r
        }
        Err(e) => e.error_response(),
    };
    Ok(ServiceResponse::new(http_req, response).map_into_right_body())
}

/// Sends the request on to `base` (the holder) and answers its response.
async fn hop(state: &AppState, req: &HttpRequest, base: &str, body: Bytes) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ApiError::new(ErrorCode::BadRequestBody, "method"))?;
    let (status, bytes, headers) = hop_to(state, req, base, &path, method, body, HOP_TIMEOUT).await?;
    let mut back = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (k, v) in &headers {
        if matches!(k.as_str(), "connection" | "transfer-encoding" | "content-length" | "keep-alive" | "date") {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(k.as_str().as_bytes()), HeaderValue::from_bytes(v.as_bytes()))
        {
            back.insert_header((name, value));
        }
    }
    back.insert_header((
        HeaderName::from_static("datastorer-forwarded"),
        HeaderValue::from_str(base).unwrap_or(HeaderValue::from_static("yes")),
    ));
    Ok(back.body(bytes))
}

/// A forwarded answer: status, body and headers.
type Hopped = (u16, Bytes, reqwest::header::HeaderMap);

/// One hop: `method` `path` at `base`, with the request's carried headers
/// and the fleet's; `503 holder_unreachable` when it cannot be made.
async fn hop_to(
    state: &AppState,
    req: &HttpRequest,
    base: &str,
    path: &str,
    method: reqwest::Method,
    body: Bytes,
    timeout: Duration,
) -> Result<Hopped, ApiError> {
    let Some(client) = state.fleet.as_ref() else {
        return Err(ApiError::new(ErrorCode::WrongServer, "forwarding is off"));
    };
    let secret = state.config.fleet_secret.clone().unwrap_or_default();
    let key = req.extensions().get::<AccessKey>().map(|k| k.0.clone()).unwrap_or_else(|| "anonymous".into());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut out = client
        .request(method, &url)
        .timeout(timeout)
        .header(FLEET_KEY, secret)
        .header(FORWARDED_KEY, key)
        .header(FORWARDED, state.ds.owner_id());
    for name in CARRIED {
        if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
            out = out.header(name, v);
        }
    }
    let unreachable = |why: String| {
        let mut e = ApiError::new(
            ErrorCode::HolderUnreachable,
            format!("the session lives on another server ({base}), which cannot be reached now: {why}"),
        );
        e.retry_after = Some(1);
        e
    };
    let answer = match out.body(body).send().await {
        Ok(a) => a,
        Err(e) => {
            // The holder may have restarted elsewhere: read its URL afresh
            // next time (the client retries after Retry-After).
            state.forget_advertised(base);
            return Err(unreachable(e.to_string()));
        }
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(|e| unreachable(e.to_string()))?;
    Ok((status, bytes, headers))
}
