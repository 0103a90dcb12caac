//! The change feed: `GET /v1/changes` as Server-Sent Events, and
//! `GET /v1/changes/poll` for clients that cannot hold a stream open
//! (Roblox game servers), optionally with one client's holder notices.
//!
//! Owns: the feed routes and who may read which feed. Must not: produce
//! events; `change_log` numbers and keeps them.

use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::fallback::resource;
use crate::auth::{Identity, Role};
use crate::change_log::Filter;
use crate::error::{ApiError, ErrorCode};
use crate::extract::check_client_id;
use crate::fleet_feed::Cursor;
use crate::limits::{MAX_POLL_LIMIT, MAX_POLL_WAIT_MS};
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Registers the feed routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/changes").route(web::get().to(changes)))
        .service(resource("/v1/changes/poll").route(web::get().to(poll_changes)));
}

/// `?store=`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    store: Option<String>,
}

/// A feed's `?store=` filter, checked by the rules of store names.
fn store_filter(store: Option<&str>) -> Result<()> {
    store.map_or(Ok(()), |s| datastorer::validate_store_name(s).map_err(ApiError::from))
}

/// `GET /v1/changes`: Server-Sent Events; each carries its sequence as
/// `id:`, and a reconnect with `Last-Event-ID` resumes after it.
async fn changes(
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
            ApiError::new(ErrorCode::BadLastEventId, "Last-Event-ID must be a sequence number from this feed")
        })?),
    };
    let body = crate::feed::stream(state.changes.clone(), resume, query.store.clone(), state.shutdown.clone());
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .streaming(body))
}

/// A key limited to some stores reads the feed of one of them only: the
/// feed of every store would show it the others' keys.
fn scoped_feed(who: &Identity, store: Option<&str>) -> Result<()> {
    match store {
        Some(s) => who.may_use(s),
        None if who.is_scoped() => Err(ApiError::new(
            ErrorCode::StoreForbidden,
            format!("API key {:?} is limited to some stores: pass store=", who.name),
        )),
        None => Ok(()),
    }
}

/// `?after=&wait_ms=&store=&limit=&client_id=`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PollQuery {
    after: Option<String>,
    wait_ms: Option<u64>,
    store: Option<String>,
    limit: Option<usize>,
    client_id: Option<String>,
}

/// `GET /v1/changes/poll`: answers at once when events after `after` are
/// waiting, else when one arrives or `wait_ms` passes; `next` is the cursor
/// for the following poll. Without `after`, starts from now. In a fleet the
/// cursor names the servers it was read from ([`crate::fleet_feed`]).
async fn poll_changes(
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
                ErrorCode::ClientForbidden,
                format!("client {c:?} holds its sessions under another API key; its feed is read with that key"),
            ));
        }
    }
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > MAX_POLL_WAIT_MS {
        return Err(ApiError::new(ErrorCode::BadWait, format!("wait_ms must be at most {MAX_POLL_WAIT_MS}")));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_POLL_LIMIT {
        return Err(ApiError::new(ErrorCode::BadLimit, format!("limit must be 1 to {MAX_POLL_LIMIT}")));
    }
    let cursor = q.after.as_deref().map(Cursor::parse).transpose()?;
    let wait = Duration::from_millis(wait_ms);
    if crate::fleet_feed::serves(&state, &req) {
        let poll = crate::fleet_feed::Poll {
            store: q.store.as_deref(),
            client_id: q.client_id.as_deref(),
            api_key: &who.name,
            wait,
            limit,
        };
        return Ok(HttpResponse::Ok().json(crate::fleet_feed::poll(&state, &req, poll, cursor).await?));
    }
    let after = match cursor {
        None => None,
        Some(Cursor::Seq(n)) => Some(n),
        // A fleet cursor reaching a server outside the fleet's forwarding
        // (or a forwarded poll): its own part, if it has one.
        Some(Cursor::Fleet(parts)) => match parts.into_iter().find(|(o, _)| o == state.ds.owner_id()) {
            Some((_, n)) => Some(n),
            None => return Err(ApiError::new(ErrorCode::BadCursor, "after names none of this server's events")),
        },
    };
    let filter = Filter { store: q.store.as_deref(), holder: q.client_id.as_deref(), api_key: Some(&who.name) };
    Ok(HttpResponse::Ok().json(&state.changes.poll(filter, after, wait, limit, state.shutdown.clone()).await))
}
