//! Conditional requests in HTTP's own terms (RFC 9110 §13) on the stored
//! record: an `ETag` on every read of it (`"EPOCH.REVISION"`: every write
//! makes a new revision, and a record deleted and made again gets a higher
//! epoch, so the pair names one stored state), `If-None-Match` on reads
//! (`304`: a cached read costs a few bytes), and the one-shot update of a
//! key nobody holds (`PATCH`/`PUT /v1/stores/{store}/keys/{key}`) with
//! `If-Match` (`412` when the record changed, `409` while it is leased).
//!
//! Must not: write except through the engine's `update_unleased`, which
//! takes and gives back the lease like any session.

use actix_web::http::header::{HeaderValue, ETAG, IF_MATCH};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::merge_patch;
use super::routes::{prefers_minimal, read_json, AppState};
use datastorer::storage::RecordHeader;

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

/// The stored header a conditional update must find, from `If-Match`.
async fn expected(store: &datastorer::Store<Value>, key: &str, cond: Condition) -> Result<RecordHeader> {
    let failed = || {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the record changed since that version (or does not exist)",
        )
    };
    let rec = store.inspect(key).await?.ok_or_else(failed)?;
    if !cond.matches_strong(&etag(rec.header)) {
        return Err(failed());
    }
    Ok(rec.header)
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
    let cond = condition(&req, IF_MATCH)?;
    let Some(body) = read_json(&req, payload, &state, content_types, false).await? else {
        return Err(ApiError::bad_request("bad_json", "the body must be a JSON document"));
    };
    // A client of this server holding the key is named, as an open would.
    if let Some((holder, expires_at_ms)) = state.sessions.holder(&store_name, &key) {
        let mut e = ApiError::conflict("lease_held", format!("the key is held by {holder:?}"));
        e.details = Some(json!({ "holder": holder, "expires_at_ms": expires_at_ms }));
        return Err(e);
    }
    let expected = match cond {
        Some(c) => Some(expected(&store, &key, c).await?),
        None => None,
    };
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
