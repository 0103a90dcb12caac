//! The one middleware every request passes: it refuses a path or query
//! that is not UTF-8 once decoded (before routing, which decodes lossily),
//! counts the request in flight for the shutdown, turns a session's news
//! into `Handoff-Requested` / `Messages-Waiting` headers, counts errors by
//! code and requests by route, and writes the access log.
//!
//! Owns: what is observed about every request. Must not: decide anything
//! about a request beyond the UTF-8 check; handlers and extractors do.

use std::sync::atomic::Ordering;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};

use crate::access::{AccessClient, AccessKey, SessionNotices};
use crate::error::ApiError;
use crate::error::ErrorCode;
use crate::state::AppState;

/// Wraps every request (installed by `app` with `from_fn`).
pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let in_flight = InFlight::enter(state.clone());
    let started = Instant::now();
    let method = req.method().clone();
    let res = match strict_utf8(req.uri()) {
        Ok(()) => next.call(req).await?.map_into_left_body(),
        Err(e) => req.into_response(e.error_response()).map_into_right_body(),
    };
    drop(in_flight);
    let mut res = res;
    add_session_notices(&mut res);
    let code = res.response().extensions().get::<ErrorCode>().copied();
    if let Some(code) = code {
        state.metrics.count_error(code.as_str());
    }
    // The route template, never the raw path: bounded labels, and no key
    // names in metrics.
    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let status = res.status().as_u16();
    let took = started.elapsed();
    if state.config.access_log {
        let ext = res.request().extensions();
        let key = ext.get::<AccessKey>().map(|k| k.0.as_str()).unwrap_or("-");
        let client = ext.get::<AccessClient>().map(|c| c.0.as_str()).unwrap_or("-");
        crate::access_log::log(&crate::access_log::Access {
            method: method.as_str(),
            route: &route,
            status,
            took,
            api_key: key,
            client,
            code: code.map_or("-", ErrorCode::as_str),
        });
    }
    state.metrics.observe_request(route, method.as_str(), status, took);
    Ok(res)
}

/// Refuses a request whose path or query is not UTF-8 once
/// percent-decoded. Keys and store names are UTF-8 text; decoding lossily
/// (as the router does) would map different raw keys to one record.
fn strict_utf8(uri: &actix_web::http::Uri) -> Result<(), ApiError> {
    let decodes = |raw: &str| percent_encoding::percent_decode_str(raw).decode_utf8().is_ok();
    if !decodes(uri.path()) {
        return Err(ApiError::new(ErrorCode::InvalidName, "the path is not valid UTF-8 once percent-decoded"));
    }
    if uri.query().is_some_and(|q| !decodes(q)) {
        return Err(ApiError::new(ErrorCode::BadQuery, "the query is not valid UTF-8 once percent-decoded"));
    }
    Ok(())
}

/// `Handoff-Requested: <deadline_ms>` and `Messages-Waiting: 1` on the
/// answer of a session route whose session has that news.
fn add_session_notices<B>(res: &mut ServiceResponse<B>) {
    let Some(n) = res.request().extensions().get::<SessionNotices>().copied() else { return };
    if let Some(deadline_ms) = n.handoff_deadline_ms {
        res.headers_mut().insert(HeaderName::from_static("handoff-requested"), HeaderValue::from(deadline_ms));
    }
    if n.messages_waiting {
        res.headers_mut().insert(HeaderName::from_static("messages-waiting"), HeaderValue::from_static("1"));
    }
}

/// Counts a request as in flight until dropped (also when the request's
/// future is dropped half-way).
struct InFlight(web::Data<AppState>);

impl InFlight {
    fn enter(state: web::Data<AppState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
