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
//! Owns: the parsing and evaluation of condition headers; the routes that
//! use them are in `http/records`. Must not: write anything.

use actix_web::http::header::{
    HeaderName, HeaderValue, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
};
use actix_web::HttpRequest;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use datastorer::storage::RecordHeader;
use datastorer::Expect;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The entity tag of a stored record.
pub(crate) fn etag(h: RecordHeader) -> String {
    format!("\"{}.{}\"", h.epoch, h.revision)
}

/// What an `If-Match` or `If-None-Match` header asks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Condition {
    /// `*`: any stored record.
    Any,
    /// One of these records (weak tags are kept but never match strongly).
    Tags(Vec<String>),
}

/// Parses a condition header (a list of entity tags, or `*`); `None` when
/// the request has none.
pub(crate) fn condition(req: &HttpRequest, name: actix_web::http::header::HeaderName) -> Result<Option<Condition>> {
    let values: Vec<&HeaderValue> = req.headers().get_all(&name).collect();
    if values.is_empty() {
        return Ok(None);
    }
    let bad =
        || ApiError::new(ErrorCode::BadCondition, format!("{name} must be * or a list of entity tags like \"3.17\""));
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
    pub(crate) fn matches_weak(&self, current: &str) -> bool {
        match self {
            Condition::Any => true,
            Condition::Tags(tags) => tags.iter().any(|t| t.strip_prefix("W/").unwrap_or(t) == current),
        }
    }
}

fn precondition_failed() -> ApiError {
    ApiError::new(
        ErrorCode::PreconditionFailed,
        "the record is not in the state the request's If-Match / If-None-Match asks for",
    )
}

/// Condition headers this API does not evaluate on writes: refused, never
/// ignored, so a client that relies on one is not told a write was
/// conditional when it was not.
const UNSUPPORTED_ON_WRITES: [HeaderName; 3] = [IF_UNMODIFIED_SINCE, IF_MODIFIED_SINCE, IF_RANGE];

/// Refuses every condition header: for writes that take none (message posts).
pub(crate) fn refuse_conditions(req: &HttpRequest) -> Result<()> {
    for name in [IF_MATCH, IF_NONE_MATCH].iter().chain(UNSUPPORTED_ON_WRITES.iter()) {
        if req.headers().contains_key(name) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedCondition,
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
pub(crate) async fn write_expectation(
    req: &HttpRequest,
    store: &datastorer::Store<Value>,
    key: &str,
) -> Result<Expect> {
    for name in UNSUPPORTED_ON_WRITES {
        if req.headers().contains_key(&name) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedCondition,
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
