//! Conditional requests in HTTP's own terms (RFC 9110 §13) on the stored
//! record: an `ETag` on every read of it (`"EPOCH.REVISION"`: every write
//! makes a new revision, and a record deleted and made again gets a higher
//! epoch, so the pair names one stored state), `If-None-Match` on reads
//! (`304`: a cached read costs a few bytes), and the one-shot update of a
//! key nobody holds (`PATCH`/`PUT /v1/stores/{store}/keys/{key}`) and its
//! delete with `If-Match` (`412` when the record changed, `409` while it is
//! leased) and `If-None-Match: *` (create only: `412` when a record exists).
//! Other condition headers on a write are refused (`400
//! unsupported_condition`), never ignored.
//!
//! Must not: write except through the engine's `update_unleased`, which
//! takes and gives back the lease like any session.

use actix_web::http::header::{
    HeaderName, HeaderValue, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::merge_patch;
use super::routes::{prefers_minimal, read_json, AppState};
use datastorer::storage::RecordHeader;
use datastorer::Expect;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The entity tag of a stored record.
pub fn etag(h: RecordHeader) -> String {
    format!("\"{}.{}\"", h.epoch, h.revision)
}

/// What an `If-Match` or `If-None-Match` header asks.
#[derive(Debug, PartialEq, Eq)]
pub enum Condition {
    /// `*`: any stored record.
    Any,
    /// One of these records (weak tags are kept but never match strongly).
    Tags(Vec<String>),
}

/// Parses a condition header (a list of entity tags, or `*`); `None` when
/// the request has none.
pub fn condition(req: &HttpRequest, name: actix_web::http::header::HeaderName) -> Result<Option<Condition>> {
    let values: Vec<&HeaderValue> = req.headers().get_all(&name).collect();
    if values.is_empty() {
        return Ok(None);
    }
    let bad =
        || ApiError::bad_request("bad_condition", format!("{name} must be * or a list of entity tags like \"3.17\""));
    let mut tags = Vec::new();
    for v in values {
        for part in v.to_str().map_err(|_| bad())?.split(',') {
            let part = part.trim();
            if part == "*" {
                return Ok(Some(Condition::Any));
            }
            let opaque = part.strip_prefix("W/").unwrap_or(part);
            if opaque.len() < 2
                || !opaque.starts_with('"')
                || !opaque.ends_with('"')
                || opaque[1..opaque.len() - 1].contains('"')
            {
                return Err(bad());
            }
            tags.push(part.to_owned());
        }
    }
    Ok(Some(Condition::Tags(tags)))
}

impl Condition {
    /// Strong comparison (If-Match): a weak tag never matches.
    fn matches_strong(&self, current: &str) -> bool {
        match self {
            Condition::Any => true,
            Condition::Tags(tags) => tags.iter().any(|t| t == current),
        }
    }

    /// Weak comparison (If-None-Match).
    pub fn matches_weak(&self, current: &str) -> bool {
        match self {
            Condition::Any => true,
            Condition::Tags(tags) => tags.iter().any(|t| t.strip_prefix("W/").unwrap_or(t) == current),
        }
    }
}

fn precondition_failed() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        "the record is not in the state the request's If-Match / If-None-Match asks for",
    )
}

/// Condition headers this API does not evaluate on writes: refused, never
/// ignored, so a client that relies on one is not told a write was
/// conditional when it was not.
const UNSUPPORTED_ON_WRITES: [HeaderName; 3] = [IF_UNMODIFIED_SINCE, IF_MODIFIED_SINCE, IF_RANGE];

/// Refuses every condition header: for writes that take none (message posts).
pub fn refuse_conditions(req: &HttpRequest) -> Result<()> {
    for name in [IF_MATCH, IF_NONE_MATCH].iter().chain(UNSUPPORTED_ON_WRITES.iter()) {
        if req.headers().contains_key(name) {
            return Err(ApiError::bad_request(
                "unsupported_condition",
                format!("{name} is not supported on this request; send it without the header"),
            ));
        }
    }
    Ok(())
}

/// What a sessionless write (one-shot update or delete) requires of the
/// stored record, from `If-Match` and `If-None-Match` (RFC 9110 §13.2.2:
/// If-Match first). The engine then checks the answer in the same step as
/// the write, so a record that changes between this look and the write
/// fails the write instead of being overwritten.
pub async fn write_expectation(req: &HttpRequest, store: &datastorer::Store<Value>, key: &str) -> Result<Expect> {
    for name in UNSUPPORTED_ON_WRITES {
        if req.headers().contains_key(&name) {
            return Err(ApiError::bad_request(
                "unsupported_condition",
                format!("{name} is not supported on writes; use If-Match or If-None-Match with an ETag"),
            ));
        }
    }
    let if_match = condition(req, IF_MATCH)?;
    let if_none_match = condition(req, IF_NONE_MATCH)?;
    if if_match.is_none() && if_none_match.is_none() {
        return Ok(Expect::Anything);
    }
    // `If-None-Match: *` alone is create-only: decided by the engine
    // atomically (across processes on PostgreSQL), not by this look.
    if if_match.is_none() && if_none_match == Some(Condition::Any) {
        return Ok(Expect::Absent);
    }
    let current = store.inspect(key).await?.map(|r| r.header);
    let tag = current.map(etag);
    if let Some(c) = &if_match {
        if !tag.as_deref().is_some_and(|t| c.matches_strong(t)) {
            return Err(precondition_failed());
        }
    }
    if let Some(c) = &if_none_match {
        if tag.as_deref().is_some_and(|t| c.matches_weak(t)) {
            return Err(precondition_failed());
        }
    }
    Ok(current.map_or(Expect::Absent, Expect::Version))
}

async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
    content_types: &[&str],
    change: fn(&mut Value, &Value),
) -> Result<HttpResponse> {
    let (store, store_name, key) = state.sessionless_write(&req, path)?;
    let expected = write_expectation(&req, &store, &key).await?;
    let Some(body) = read_json(&req, payload, &state, content_types, false).await? else {
        return Err(ApiError::bad_request("bad_json", "the body must be a JSON document"));
    };
    // A client of this server holding the key is named, as an open would.
    if let Some((holder, expires_at_ms)) = state.sessions.holder(&store_name, &key) {
        let mut e = ApiError::conflict("lease_held", format!("the key is held by {holder:?}"));
        e.details = Some(json!({ "holder": holder, "expires_at_ms": expires_at_ms }));
        return Err(e);
    }
    let minimal = prefers_minimal(&req);
    let updated = store
        .update_unleased(key.as_str(), expected, move |doc| {
            change(doc, &body);
            (!minimal).then(|| doc.clone())
        })
        .await?;
    let header = RecordHeader { epoch: updated.epoch, revision: updated.revision };
    let mut answer = json!({ "revision": updated.revision, "epoch": updated.epoch, "durable": true });
    if let Some(doc) = updated.value {
        answer["data"] = doc;
    }
    let mut response = HttpResponse::Ok();
    response.insert_header((ETAG, etag(header)));
    if minimal {
        response.insert_header(("Preference-Applied", "return=minimal"));
    }
    Ok(response.json(answer))
}

/// `PATCH /v1/stores/{store}/keys/{key}`: merge patch of a key nobody holds.
pub async fn patch_unleased(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let types = ["application/merge-patch+json", "application/json"];
    update(req, path, payload, state, &types, merge_patch).await
}

/// `PUT /v1/stores/{store}/keys/{key}`: replace the document of a key
/// nobody holds.
pub async fn put_unleased(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    update(req, path, payload, state, &["application/json"], |doc, body| *doc = body.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn parsed(value: &str) -> Result<Option<Condition>> {
        condition(&TestRequest::default().insert_header((IF_MATCH, value)).to_http_request(), IF_MATCH)
    }

    #[test]
    fn conditions_parse_lists_stars_and_refuse_what_is_not_an_entity_tag() {
        assert_eq!(parsed("*").unwrap(), Some(Condition::Any));
        assert_eq!(
            parsed(r#""1.2", W/"1.3""#).unwrap(),
            Some(Condition::Tags(vec![r#""1.2""#.into(), r#"W/"1.3""#.into()]))
        );
        for bad in ["1.2", r#""1.2"#, r#"""#, r#""a"b""#, ""] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
        assert_eq!(condition(&TestRequest::default().to_http_request(), IF_MATCH).unwrap(), None);
    }

    #[test]
    fn if_match_compares_strongly_and_if_none_match_weakly() {
        let tags = Condition::Tags(vec![r#"W/"1.2""#.into()]);
        assert!(!tags.matches_strong(r#""1.2""#), "a weak tag never satisfies If-Match");
        assert!(tags.matches_weak(r#""1.2""#));
        assert!(Condition::Any.matches_strong(r#""9.9""#));
        assert_eq!(etag(RecordHeader { epoch: 3, revision: 17 }), r#""3.17""#);
    }
}
