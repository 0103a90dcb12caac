//! The change feed across a fleet, where a poll may reach any server: its
//! cursor names the servers it was read from (`owner:seq,…`).
//!
//! - **A client's feed** (`client_id`) holds the notices for that client's
//!   sessions, which live on whichever servers hold them: the entry server
//!   polls every live server at once (itself locally, each other in one
//!   hop) and answers as soon as one has events, with the events of every
//!   server that answered by then and the cursor reached on each. A first
//!   poll (no cursor) answers at once with where each server is now, so no
//!   earlier session's notices are ever replayed; a server missing from a
//!   later cursor (it joined since) is read from its start.
//! - **A store's feed** (or the whole feed) is the same on every server
//!   (each hears every save by notice) but numbered by each: a poll is read
//!   on the server its cursor came from, in one hop; a cursor whose server
//!   is gone starts again here, from now, with `lagged` (re-read what you
//!   cache).
//!
//! Owns: what a fleet cursor means and the fan-out. Must not: number or
//! keep events (`change_log` does), or hop other than through `forward`
//! (which carries the fleet's secret).

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{web, HttpRequest};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use serde_json::{json, Value};

use crate::change_log::Filter;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// How long past the wait a hop for a long poll may take.
const HOP_SLACK: Duration = Duration::from_secs(5);
/// A server counts as live while its heartbeat is this recent.
const LIVE_WITHIN: Duration = Duration::from_secs(15);

/// What a poll asks for.
pub(crate) struct Poll<'a> {
    pub(crate) store: Option<&'a str>,
    pub(crate) client_id: Option<&'a str>,
    pub(crate) api_key: &'a str,
    pub(crate) wait: Duration,
    pub(crate) limit: usize,
}

/// One server's answer to its part of a poll.
struct Part {
    events: Vec<Value>,
    next: u64,
    lagged: bool,
}

/// Whether this server answers for the whole fleet: it is in one, and the
/// poll came from a client (not from another server's fan-out).
pub(crate) fn serves(state: &AppState, req: &HttpRequest) -> bool {
    state.postgres.is_some() && crate::forward::may_forward(state, req)
}

/// Answers a poll for the fleet: `{events, next, lagged}`, `next` a fleet cursor.
pub(crate) async fn poll(
    state: &AppState,
    req: &HttpRequest,
    p: Poll<'_>,
    cursor: Option<Cursor>,
) -> Result<Value, ApiError> {
    let me = state.ds.owner_id().to_owned();
    let peers = live_peers(state, &me).await;
    let known: Vec<(String, u64)> = match cursor.clone() {
        None => Vec::new(),
        Some(Cursor::Seq(n)) => vec![(me.clone(), n)],
        Some(Cursor::Fleet(parts)) => parts,
    };
    match p.client_id {
        Some(_) => client_feed(state, req, &p, &me, &peers, known, cursor.is_none()).await,
        None => store_feed(state, req, &p, &me, &peers, known).await,
    }
}

/// Every live server's (owner, advertised URL), this one always among them.
async fn live_peers(state: &AppState, me: &str) -> Vec<(String, String)> {
    let mut peers = match state.postgres.clone() {
        Some(pg) => web::block(move || pg.live_peers(LIVE_WITHIN)).await.ok().and_then(Result::ok).unwrap_or_default(),
        None => Vec::new(),
    };
    if !peers.iter().any(|(o, _)| o == me) {
        peers.push((me.to_owned(), String::new()));
    }
    peers
}

async fn client_feed(
    state: &AppState,
    req: &HttpRequest,
    p: &Poll<'_>,
    me: &str,
    peers: &[(String, String)],
    known: Vec<(String, u64)>,
    fresh: bool,
) -> Result<Value, ApiError> {
    // A first poll only finds where every server is now.
    let wait = if fresh { Duration::ZERO } else { p.wait };
    let from: HashMap<&str, u64> = known.iter().map(|(o, n)| (o.as_str(), *n)).collect();
    let mut pending: FuturesUnordered<_> = peers
        .iter()
        .map(|(owner, url)| {
            let after = from.get(owner.as_str()).copied().or(if fresh { None } else { Some(0) });
            async move { (owner.clone(), read_part(state, req, p, me, owner, url, after, wait).await) }
        })
        .collect();
    let mut answered: Vec<(String, Part)> = Vec::new();
    let mut take = |owner: String, got: Result<Option<Part>, ApiError>| -> Result<bool, ApiError> {
        match got? {
            Some(part) => {
                let any = !part.events.is_empty() || part.lagged;
                answered.push((owner, part));
                Ok(any)
            }
            None => Ok(false), // unreachable: its part of the cursor stays
        }
    };
    while let Some((owner, got)) = pending.next().await {
        if take(owner, got)? && !fresh {
            break;
        }
    }
    // What else is in already goes with it; the rest is read next time.
    while let Some(Some((owner, got))) = pending.next().now_or_never() {
        take(owner, got)?;
    }
    drop(pending);
    let mut parts = known;
    let (mut events, mut lagged) = (Vec::new(), false);
    for (owner, part) in answered {
        lagged |= part.lagged;
        for mut e in part.events {
            e["server"] = Value::String(owner.clone());
            events.push(e);
        }
        match parts.iter_mut().find(|(o, _)| *o == owner) {
            Some(slot) => slot.1 = part.next,
            None => parts.push((owner, part.next)),
        }
    }
    Ok(json!({ "events": events, "next": Cursor::render(&parts), "lagged": lagged }))
}

async fn store_feed(
    state: &AppState,
    req: &HttpRequest,
    p: &Poll<'_>,
    me: &str,
    peers: &[(String, String)],
    known: Vec<(String, u64)>,
) -> Result<Value, ApiError> {
    // The server the cursor was made on, if it is still there.
    let home = known.iter().find_map(|(owner, n)| peers.iter().find(|(o, _)| o == owner).map(|(o, url)| (o, url, *n)));
    let (owner, part) = match home {
        None if known.is_empty() => (me.to_owned(), read_part(state, req, p, me, me, "", None, p.wait).await?),
        Some((owner, url, n)) => (owner.clone(), read_part(state, req, p, me, owner, url, Some(n), p.wait).await?),
        None => (me.to_owned(), None),
    };
    let (owner, part) = match part {
        Some(part) => (owner, part),
        // Its server is gone: start here, from now, and say events may be missed.
        None => {
            let here = read_part(state, req, p, me, me, "", None, Duration::ZERO).await?;
            let here = here.unwrap_or(Part { events: Vec::new(), next: 0, lagged: true });
            (me.to_owned(), Part { lagged: true, ..here })
        }
    };
    Ok(json!({ "events": part.events, "next": Cursor::render(&[(owner, part.next)]), "lagged": part.lagged }))
}

/// One server's part: read here for this server, else in one hop.
/// `Ok(None)`: that server cannot be reached (or answered nonsense).
#[allow(clippy::too_many_arguments)]
async fn read_part(
    state: &AppState,
    req: &HttpRequest,
    p: &Poll<'_>,
    me: &str,
    owner: &str,
    url: &str,
    after: Option<u64>,
    wait: Duration,
) -> Result<Option<Part>, ApiError> {
    if owner == me {
        let filter = Filter { store: p.store, holder: p.client_id, api_key: Some(p.api_key) };
        let page = state.changes.poll(filter, after, wait, p.limit, state.shutdown.clone()).await;
        let events = page.events.iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
        return Ok(Some(Part { events, next: page.next, lagged: page.lagged }));
    }
    let enc = crate::roblox_names::percent_encode;
    let mut path = format!("/v1/changes/poll?limit={}&wait_ms={}", p.limit, wait.as_millis());
    if let Some(c) = p.client_id {
        path.push_str(&format!("&client_id={}", enc(c)));
    }
    if let Some(s) = p.store {
        path.push_str(&format!("&store={}", enc(s)));
    }
    if let Some(n) = after {
        path.push_str(&format!("&after={n}"));
    }
    let (status, body) = match crate::forward::get(state, req, url, &path, wait + HOP_SLACK).await {
        Ok(answer) => answer,
        Err(_) => return Ok(None),
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match status {
        200 => Ok(v["next"].as_u64().map(|next| Part {
            events: v["events"].as_array().cloned().unwrap_or_default(),
            next,
            lagged: v["lagged"].as_bool().unwrap_or(false),
        })),
        // The reader may not read this feed: say so as that server did.
        403 => Err(ApiError::new(
            ErrorCode::ClientForbidden,
            v["message"].as_str().unwrap_or("this feed is read with another API key").to_owned(),
        )),
        _ => Ok(None),
    }
}

/// A poll's `after`: one server's sequence number, or in a fleet the
/// sequence reached on each server (`owner:seq,…`, owners percent-encoded).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cursor {
    Seq(u64),
    Fleet(Vec<(String, u64)>),
}

impl Cursor {
    pub(crate) fn parse(s: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::new(ErrorCode::BadCursor, "after must be a `next` this feed answered");
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Cursor::Seq(n));
        }
        let mut parts = Vec::new();
        for part in s.split(',') {
            let (owner, seq) = part.rsplit_once(':').ok_or_else(bad)?;
            let owner = percent_encoding::percent_decode_str(owner).decode_utf8().map_err(|_| bad())?;
            if owner.is_empty() || parts.iter().any(|(o, _)| *o == owner) {
                return Err(bad());
            }
            parts.push((owner.into_owned(), seq.parse::<u64>().map_err(|_| bad())?));
        }
        Ok(Cursor::Fleet(parts))
    }

    pub(crate) fn render(parts: &[(String, u64)]) -> String {
        let mut out = String::new();
        for (i, (owner, seq)) in parts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&crate::roblox_names::percent_encode(owner));
            out.push(':');
            out.push_str(&seq.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn cursors_come_back_as_they_went_and_bad_ones_are_refused() {
        assert_eq!(Cursor::parse("42").unwrap(), Cursor::Seq(42));
        let parts = vec![("srv-a".to_owned(), 7), ("odd:owner,1".to_owned(), 0)];
        let text = Cursor::render(&parts);
        assert_eq!(text, "srv-a:7,odd%3Aowner%2C1:0");
        assert_eq!(Cursor::parse(&text).unwrap(), Cursor::Fleet(parts));
        for bad in ["", "a", "a:", "a:x", ":1", "a:1,a:2", "-1", "a:1,"] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }
}
