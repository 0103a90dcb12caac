//! Stored records without a session: read one (`GET`, with `ETag` and
//! `If-None-Match`), list a store's keys, describe a store, the one-shot
//! update of a key nobody holds (`PATCH`/`PUT` with `If-Match` /
//! `If-None-Match: *`) and the delete (a forced one is admin).
//!
//! Owns: those routes. Must not: write except through the engine's
//! one-shot paths (`update_unleased`, `delete_if`), which take and give
//! back the lease like any session.

use actix_web::http::header::{ETAG, IF_NONE_MATCH};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fallback::resource;
use crate::auth::Role;
use crate::conditional::{condition, etag, write_expectation};
use crate::error::{ApiError, ErrorCode};
use crate::extract::{check_key, prefers_minimal, required_json};
use crate::json::merge_patch;
use crate::limits::MAX_LIST_LIMIT;
use crate::state::{undeclared, AppState, Target};
use datastorer::storage::RecordHeader;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Registers the record routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/stores/{store}/keys/{key}")
            .route(web::get().to(view_key))
            .route(web::delete().to(delete_key))
            .route(web::patch().to(patch_unleased))
            .route(web::put().to(put_unleased)),
    )
    .service(resource("/v1/stores").route(web::get().to(list_stores)))
    .service(resource("/v1/stores/{store}/keys").route(web::get().to(list_keys)))
    .service(resource("/v1/stores/{store}/usage").route(web::get().to(store_usage)))
    .service(resource("/v1/stores/{store}").route(web::get().to(describe_store)));
}

fn no_such_key(store: &str, key: &str) -> ApiError {
    ApiError::new(ErrorCode::NoSuchKey, format!("no record for key {key:?} in store {store:?}"))
}

fn json_or_raw(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `GET /v1/stores/{store}/keys/{key}`: the stored record, no lease needed.
async fn view_key(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let (store_name, key) = path.into_inner();
    let store = state.store(&store_name)?;
    check_key(&key)?;
    let if_none_match = condition(&req, IF_NONE_MATCH)?;
    let Some(rec) = store.inspect(key.as_str()).await? else { return Err(no_such_key(&store_name, &key)) };
    let tag = etag(rec.header);
    if if_none_match.is_some_and(|c| c.matches_weak(&tag)) {
        return Ok(HttpResponse::NotModified().insert_header((ETAG, tag)).finish());
    }
    // A raw read shows the record as stored: at an older data version its
    // data has not been through the store's migrations yet (the next open
    // or one-shot write migrates it), and the answer says so.
    let store_version = state.config.stores.get(&store_name).map_or(0, |d| d.migrations.len() as u64);
    let unmigrated = u64::from(rec.data_version) < store_version;
    Ok(HttpResponse::Ok().insert_header((ETAG, tag)).json(json!({
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
        // The client holding it through this server, if one does.
        "holder_client": state.sessions.holder(&store_name, &key).map(|(client, _)| client),
        "created_at_ms": rec.created_at_ms,
        "updated_at_ms": rec.updated_at_ms,
    })))
}

/// `?prefix=&cursor=&limit=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/stores/{store}/keys`
async fn list_keys(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let store = state.store(&path)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::new(ErrorCode::BadLimit, format!("limit must be 1 to {MAX_LIST_LIMIT}")));
    }
    if query.prefix.len() > datastorer::MAX_KEY_LEN
        || query.cursor.as_ref().is_some_and(|c| c.len() > datastorer::MAX_KEY_LEN)
    {
        return Err(ApiError::new(ErrorCode::BadPrefix, "prefix and cursor are at most 512 bytes"));
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

/// How long a store's counted size is answered again before it is counted
/// anew: a console's store list shown twice in a row counts once.
const USAGE_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Deserialize)]
struct UsageQuery {
    /// Count now, whatever was counted before.
    #[serde(default)]
    fresh: bool,
}

/// `GET /v1/stores/{store}/usage[?fresh=true]`: how many records and kept
/// versions the store holds and their bytes, with when they were counted.
async fn store_usage(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<UsageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let name = path.into_inner();
    datastorer::validate_store_name(&name).map_err(ApiError::from)?;
    let cached = state.usage.lock().unwrap_or_else(|p| p.into_inner()).get(&name).copied();
    let (usage, at_ms) = match cached {
        Some((usage, at_ms, at)) if !query.fresh && at.elapsed() < USAGE_FRESH_FOR => (usage, at_ms),
        _ => {
            let usage = state.ds.store_usage(&name).await?;
            let at_ms = crate::ending::now_ms();
            let mut cache = state.usage.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: stores named by requests that were never created
            // would otherwise each keep an entry.
            if cache.len() >= 10_000 {
                cache.retain(|_, (_, _, at)| at.elapsed() < USAGE_FRESH_FOR);
            }
            cache.insert(name.clone(), (usage, at_ms, std::time::Instant::now()));
            (usage, at_ms)
        }
    };
    Ok(HttpResponse::Ok().json(json!({
        "store": name,
        "keys": usage.keys,
        "bytes": usage.bytes,
        "versions": usage.versions,
        "version_bytes": usage.version_bytes,
        "measured_at_ms": at_ms,
    })))
}

/// `GET /v1/stores?prefix=&cursor=&limit=`: the stores holding records
/// (declared or not), by name, paged like keys.
async fn list_stores(
    req: HttpRequest,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let who = state.auth(&req, Role::Read)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::new(ErrorCode::BadLimit, format!("limit must be 1 to {MAX_LIST_LIMIT}")));
    }
    if query.prefix.len() > datastorer::MAX_STORE_NAME_LEN
        || query.cursor.as_ref().is_some_and(|c| datastorer::validate_store_name(c).is_err())
    {
        return Err(ApiError::new(ErrorCode::BadPrefix, "prefix is at most 128 bytes; cursor is a store name"));
    }
    let mut stores = match &who.stores {
        // A key reaches only its own stores: it is told of no other.
        Some(scope) => scoped_store_names(&state, scope, &query.prefix, query.cursor.as_deref(), limit + 1).await?,
        None => state.ds.store_names(&query.prefix, query.cursor.as_deref(), limit + 1).await?,
    };
    let next = if stores.len() > limit {
        stores.truncate(limit);
        stores.last().cloned()
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "stores": stores, "next_cursor": next })))
}

/// The stores of a key's scope that hold records, start with `prefix` and
/// sort after `after`, in byte order, at most `limit` (a scope is a short
/// list: one look per store).
async fn scoped_store_names(
    state: &AppState,
    scope: &[String],
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    let mut names: Vec<&String> =
        scope.iter().filter(|s| s.starts_with(prefix) && after.is_none_or(|a| s.as_str() > a)).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        if out.len() >= limit {
            break;
        }
        // The first store at or after `name` is `name` itself when it holds records.
        if state.ds.store_names(name, None, 1).await?.first() == Some(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// `GET /v1/stores/{store}`: the spec a client reconciles against (the
/// template, the metadata template and the data version new records get),
/// so a game server's copy of the template cannot drift from the server's.
/// Does not create the store: an undeclared one is described as the server
/// would create it.
async fn describe_store(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
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
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

/// The answer for a key a client of this server holds, naming the client
/// with its own lease's expiry (not this server's owner id).
fn held_by_client(state: &AppState, store: &str, key: &str, message: fn(&str) -> String) -> Result<()> {
    match state.sessions.holder(store, key) {
        Some((holder, expires_at_ms)) => Err(ApiError::new(ErrorCode::LeaseHeld, message(&holder))
            .with(json!({ "holder": holder, "expires_at_ms": expires_at_ms }))),
        None => Ok(()),
    }
}

/// `DELETE /v1/stores/{store}/keys/{key}`: write role for a key nobody
/// holds (a game server's `RemoveAsync`: the delete is a tombstone version,
/// restorable from history); admin with `?force=true`, which ends a session.
async fn delete_key(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ForceQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let force = query.force;
    let who = state.auth(&req, if force { Role::Admin } else { Role::Write })?;
    let (store_name, key) = path.into_inner();
    let store = state.store(&store_name)?;
    check_key(&key)?;
    let result = delete(&req, &state, &store, &store_name, &key, force).await;
    let target = Target { store: Some(&store_name), key: Some(&key) };
    let answer =
        state.audited(&who.name, "delete", target, |v: &Value| json!({ "force": force, "answer": v }), result).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// The delete itself, answered as its JSON.
async fn delete(
    req: &HttpRequest,
    state: &AppState,
    store: &datastorer::Store<Value>,
    store_name: &str,
    key: &str,
    force: bool,
) -> Result<Value> {
    if !force {
        held_by_client(state, store_name, key, |holder| {
            format!("the key is held by client {holder:?}; delete with ?force=true to end its session")
        })?;
    }
    let expected = write_expectation(req, store, key).await?;
    let deleted = store.delete_if(key, expected, force).await?;
    if !deleted && expected == datastorer::Expect::Absent && req.headers().contains_key(IF_NONE_MATCH) {
        // `If-None-Match: *` on a key with no record: nothing to delete, as asked.
        return Ok(json!({ "deleted": false }));
    }
    if !deleted {
        return Err(no_such_key(store_name, key));
    }
    Ok(json!({ "deleted": true }))
}

/// The record parts a one-shot write may set beside the document (Roblox's
/// `SetAsync` user ids and `SetMetadata`): `Datastorer-Metadata`, a JSON
/// object, and `Datastorer-User-Ids`, a JSON array of user ids; each,
/// when given, replaces what is stored.
fn record_parts_headers(req: &HttpRequest) -> Result<(Option<Value>, Option<Vec<String>>)> {
    let header = |name: &str| -> Result<Option<Value>> {
        match req.headers().get(name) {
            None => Ok(None),
            Some(v) => {
                let text =
                    v.to_str().map_err(|_| ApiError::new(ErrorCode::BadRequestBody, format!("{name} is not text")))?;
                serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| ApiError::new(ErrorCode::BadRequestBody, format!("{name} is not JSON: {e}")))
            }
        }
    };
    let metadata = match header("Datastorer-Metadata")? {
        Some(m) => {
            crate::validate::metadata(&m).map_err(|e| ApiError::new(ErrorCode::BadMetadata, e))?;
            Some(m)
        }
        None => None,
    };
    let user_ids = match header("Datastorer-User-Ids")? {
        Some(Value::Array(ids)) => Some(
            ids.iter()
                .map(|id| crate::validate::user_id(id).map_err(|e| ApiError::new(ErrorCode::BadUserId, e)))
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(_) => return Err(ApiError::new(ErrorCode::BadUserId, "Datastorer-User-Ids is a JSON array of user ids")),
        None => None,
    };
    Ok((metadata, user_ids))
}

/// A one-shot update of a key nobody holds, under the request's conditions.
async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
    content_types: &[&str],
    change: fn(&mut Value, &Value),
) -> Result<HttpResponse> {
    let (store_name, key) = path.into_inner();
    let store = state.sessionless_write(&req, &store_name, &key)?;
    let expected = write_expectation(&req, &store, &key).await?;
    let (metadata, user_ids) = record_parts_headers(&req)?;
    let body = required_json(&req, payload, &state, content_types, "a JSON document").await?;
    // A client of this server holding the key is named, as an open would.
    held_by_client(&state, &store_name, &key, |holder| format!("the key is held by {holder:?}"))?;
    let minimal = prefers_minimal(&req);
    let updated = if metadata.is_none() && user_ids.is_none() {
        store
            .update_unleased(key.as_str(), expected, move |doc| {
                change(doc, &body);
                (!minimal).then(|| doc.clone())
            })
            .await?
    } else {
        store
            .update_unleased_record(key.as_str(), expected, move |doc, parts| {
                change(doc, &body);
                if let Some(m) = metadata {
                    parts.metadata = m;
                }
                if let Some(ids) = user_ids {
                    parts.user_ids = ids;
                }
                (!minimal).then(|| doc.clone())
            })
            .await?
    };
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
async fn patch_unleased(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let types = ["application/merge-patch+json", "application/json"];
    let (at, (store, key)) = (req.clone(), path.clone());
    let result = update(req, path, payload, state.clone(), &types, merge_patch).await;
    let target = Target { store: Some(&store), key: Some(&key) };
    state.audited_if_console(&at, "console_edit", target, result).await
}

/// `PUT /v1/stores/{store}/keys/{key}`: replace the document of a key
/// nobody holds.
async fn put_unleased(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (at, (store, key)) = (req.clone(), path.clone());
    let result =
        update(req, path, payload, state.clone(), &["application/json"], |doc, body| *doc = body.clone()).await;
    let target = Target { store: Some(&store), key: Some(&key) };
    state.audited_if_console(&at, "console_edit", target, result).await
}
