//! Open Cloud's v1 data-store routes: names in the query
//! (`datastoreName`, `scope`, `entryKey`), the value as the whole body,
//! its metadata in `roblox-entry-*` headers, `matchVersion` and
//! `exclusiveCreate` as compare-and-set, and a `412` that carries the
//! current value and headers (which `rblx-open-cloud` reads).
//!
//! Owns: the v1 routes' parsing and answers. Must not: write but through
//! the shared compare-and-set writes of `open_cloud` (which keep to the
//! engine's one-shot paths).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_attributes, entry, entry_headers, increment, list_data_stores, list_entries, md5_base64, parse_rfc3339,
    parse_user_ids, parse_version, prefix_of, read, rfc3339, store_name, version_text, write, Entry, Listing, OcError,
    OcResult, Write,
};
use crate::auth::Role;
use crate::http::fallback::resource;
use crate::state::AppState;
use datastorer::{Expect, VersionOrder, VersionQuery};

const BASE: &str = "/datastores/v1/universes/{universe}/standard-datastores";

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(BASE).route(web::get().to(list_stores)))
        .service(resource(&format!("{BASE}/datastore/entries")).route(web::get().to(list_keys)))
        .service(
            resource(&format!("{BASE}/datastore/entries/entry"))
                .route(web::get().to(get_entry))
                .route(web::post().to(set_entry))
                .route(web::delete().to(delete_entry)),
        )
        .service(resource(&format!("{BASE}/datastore/entries/entry/increment")).route(web::post().to(increment_entry)))
        .service(resource(&format!("{BASE}/datastore/entries/entry/versions")).route(web::get().to(list_versions)))
        .service(
            resource(&format!("{BASE}/datastore/entries/entry/versions/version")).route(web::get().to(get_version)),
        );
}

fn answer(result: OcResult) -> HttpResponse {
    result.unwrap_or_else(|e| e.v1())
}

/// The entry routes' query.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryQuery {
    datastore_name: String,
    entry_key: String,
    #[serde(default)]
    scope: Option<String>,
    match_version: Option<String>,
    exclusive_create: Option<String>,
    increment_by: Option<String>,
    version_id: Option<String>,
    cursor: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    sort_order: Option<String>,
    limit: Option<usize>,
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> OcResult<T> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| OcError::invalid("InvalidArgument", format!("Invalid query: {e}")))
}

/// Python's requests sends booleans as `True`/`False`.
fn flag(v: Option<&str>) -> OcResult<bool> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(OcError::invalid("InvalidArgument", format!("Invalid boolean {other:?}."))),
    }
}

fn resolve(state: &AppState, req: &HttpRequest, universe: &str, q: &EntryQuery, role: Role) -> OcResult<Entry> {
    let prefix = prefix_of(state, universe)?;
    let store = store_name(&prefix, &q.datastore_name, q.scope.as_deref().unwrap_or("global"))?;
    entry(state, req, role, store, q.entry_key.clone())
}

fn header_text<'a>(req: &'a HttpRequest, name: &str) -> OcResult<Option<&'a str>> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => {
            v.to_str().map(Some).map_err(|_| OcError::invalid("InvalidArgument", format!("{name} is not text.")))
        }
    }
}

/// What a write sets besides the value, from the headers: omitted ones
/// are cleared, as Roblox does.
fn record_parts(req: &HttpRequest) -> OcResult<(Vec<String>, Value)> {
    let ids = match header_text(req, "roblox-entry-userids")? {
        Some(t) => parse_user_ids(t)?,
        None => Vec::new(),
    };
    let attributes = match header_text(req, "roblox-entry-attributes")? {
        Some(t) if !t.trim().is_empty() => check_attributes(
            serde_json::from_str(t).map_err(|_| OcError::invalid("InvalidAttributes", "Invalid attributes."))?,
        )?,
        _ => json!({}),
    };
    Ok((ids, attributes))
}

/// The `EntryVersion` a write or a listing answers.
fn entry_version(version: &str, deleted: bool, size: usize, saved_ms: u64, created_ms: u64) -> Value {
    json!({
        "version": version,
        "deleted": deleted,
        "contentLength": size,
        "createdTime": rfc3339(saved_ms),
        "objectCreatedTime": rfc3339(created_ms),
    })
}

/// `GET …/datastore/entries/entry`: the value as the body, its metadata in headers.
async fn get_entry(req: HttpRequest, universe: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let q: EntryQuery = query(&req)?;
            let e = resolve(&state, &req, &universe, &q, Role::Read)?;
            let rec = read(&e)
                .await?
                .ok_or_else(|| OcError::not_found("KeyNotFound", "Entry not found in the datastore."))?;
            let mut response = HttpResponse::Ok();
            entry_headers(&mut response, &rec);
            Ok(response.content_type("application/json").body(rec.data.clone()))
        }
        .await,
    )
}

/// `POST …/datastore/entries/entry`: set, or compare-and-set with
/// `matchVersion` / `exclusiveCreate`.
async fn set_entry(
    req: HttpRequest,
    universe: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    answer(
        async {
            let q: EntryQuery = query(&req)?;
            let exclusive = flag(q.exclusive_create.as_deref())?;
            let expected = match (&q.match_version, exclusive) {
                (Some(_), true) => {
                    return Err(OcError::invalid(
                        "ExclusiveCreateAndMatchVersionCannotBeSet",
                        "Cannot set both exclusiveCreate and matchVersion.",
                    ))
                }
                (Some(v), false) => Expect::Version(
                    parse_version(v).ok_or_else(|| OcError::invalid("InvalidVersionId", "Invalid version id."))?,
                ),
                (None, true) => Expect::Absent,
                (None, false) => Expect::Anything,
            };
            if let Some(sent) = header_text(&req, "content-md5")? {
                if sent.trim() != md5_base64(&body) {
                    return Err(OcError::invalid("ChecksumMismatch", "Content-MD5 does not match the body."));
                }
            }
            let value: Value = serde_json::from_slice(&body)
                .map_err(|_| OcError::invalid("InvalidValue", "The value is not JSON."))?;
            let (user_ids, attributes) = record_parts(&req)?;
            let e = resolve(&state, &req, &universe, &q, Role::Write)?;
            match write(&state, &e, expected, Write { value, user_ids, attributes }).await {
                Ok(rec) => Ok(HttpResponse::Ok().json(entry_version(
                    &version_text(rec.header),
                    false,
                    rec.data.len(),
                    rec.updated_at_ms,
                    rec.created_at_ms,
                ))),
                Err(err) if err.status == StatusCode::PRECONDITION_FAILED => {
                    // Roblox answers a failed condition with the current
                    // value and its headers.
                    let mut response = HttpResponse::PreconditionFailed();
                    match read(&e).await? {
                        Some(rec) => {
                            entry_headers(&mut response, &rec);
                            Ok(response.content_type("application/json").body(rec.data.clone()))
                        }
                        None => Ok(response.json(json!({
                            "error": "FAILED_PRECONDITION",
                            "message": "The entry does not exist.",
                        }))),
                    }
                }
                Err(err) => Err(err),
            }
        }
        .await,
    )
}

/// `DELETE …/datastore/entries/entry`: 204, kept as a tombstone version.
async fn delete_entry(req: HttpRequest, universe: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let q: EntryQuery = query(&req)?;
            let e = resolve(&state, &req, &universe, &q, Role::Write)?;
            super::refuse_if_held(&state, &e)?;
            if e.store.delete_if(e.key.as_str(), Expect::Anything, false).await? {
                Ok(HttpResponse::NoContent().finish())
            } else {
                Err(OcError::not_found("KeyNotFound", "Entry not found in the datastore."))
            }
        }
        .await,
    )
}

/// `POST …/datastore/entries/entry/increment?incrementBy=`.
async fn increment_entry(req: HttpRequest, universe: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let q: EntryQuery = query(&req)?;
            let by: i64 = match q.increment_by.as_deref() {
                None => 1,
                Some(t) => {
                    t.parse().map_err(|_| OcError::invalid("InvalidIncrement", "incrementBy is a whole number."))?
                }
            };
            let (user_ids, attributes) = record_parts(&req)?;
            let e = resolve(&state, &req, &universe, &q, Role::Write)?;
            let rec = increment(&state, &e, by, user_ids, attributes).await?;
            let mut response = HttpResponse::Ok();
            entry_headers(&mut response, &rec);
            Ok(response.content_type("application/json").body(rec.data.clone()))
        }
        .await,
    )
}

/// `GET …/datastore/entries/entry/versions`: `{versions, nextPageCursor}`.
async fn list_versions(req: HttpRequest, universe: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let q: EntryQuery = query(&req)?;
            let e = resolve(&state, &req, &universe, &q, Role::Read)?;
            let time = |t: &Option<String>| -> OcResult<Option<u64>> {
                t.as_deref()
                    .map(|t| parse_rfc3339(t).ok_or_else(|| OcError::invalid("InvalidArgument", "Invalid time.")))
                    .transpose()
            };
            let order = match q.sort_order.as_deref() {
                None | Some("Ascending") => VersionOrder::OldestFirst,
                Some("Descending") => VersionOrder::NewestFirst,
                Some(_) => return Err(OcError::invalid("InvalidArgument", "sortOrder is Ascending or Descending.")),
            };
            let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
                Some(c) => Some(
                    datastorer::parse_version_id(c)
                        .ok_or_else(|| OcError::invalid("InvalidCursor", "Invalid cursor."))?,
                ),
                None => None,
            };
            let query = VersionQuery {
                order,
                from_ms: time(&q.start_time)?,
                to_ms: time(&q.end_time)?,
                after,
                limit: q.limit.unwrap_or(16).clamp(1, 100),
            };
            let page = e.store.versions(e.key.as_str(), &query).await?;
            let versions: Vec<Value> = page
                .versions
                .iter()
                .map(|v| entry_version(&v.version, v.deleted, v.size, v.saved_at_ms, v.created_at_ms))
                .collect();
            Ok(HttpResponse::Ok().json(json!({ "versions": versions, "nextPageCursor": page.next })))
        }
        .await,
    )
}

/// `GET …/datastore/entries/entry/versions/version?versionId=`.
async fn get_version(req: HttpRequest, universe: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let q: EntryQuery = query(&req)?;
            let id = q
                .version_id
                .as_deref()
                .and_then(datastorer::parse_version_id)
                .ok_or_else(|| OcError::invalid("InvalidVersionId", "Invalid version id."))?;
            let e = resolve(&state, &req, &universe, &q, Role::Read)?;
            let version = e.store.version(e.key.as_str(), id).await?;
            let Some(data) = version.data else {
                return Err(OcError::not_found("VersionNotFound", "The version is a deletion."));
            };
            let body = serde_json::to_vec(&data).unwrap_or_default();
            let info = &version.info;
            Ok(HttpResponse::Ok()
                .insert_header(("content-md5", md5_base64(&body)))
                .insert_header(("roblox-entry-version", info.version.clone()))
                .insert_header(("roblox-entry-created-time", rfc3339(info.created_at_ms)))
                .insert_header(("roblox-entry-version-created-time", rfc3339(info.saved_at_ms)))
                .insert_header(("roblox-entry-attributes", version.metadata.unwrap_or_else(|| json!({})).to_string()))
                .insert_header(("roblox-entry-userids", super::user_ids_json(&info.user_ids).to_string()))
                .content_type("application/json")
                .body(body))
        }
        .await,
    )
}

/// `?prefix=&cursor=&limit=` of the list routes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    #[serde(default)]
    datastore_name: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    all_scopes: Option<String>,
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET …/standard-datastores`: `{datastores: [{name, createdTime}], nextPageCursor}`.
async fn list_stores(req: HttpRequest, universe: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let q: ListQuery = query(&req)?;
            state.auth(&req, Role::Read)?;
            let prefix = prefix_of(&state, &universe)?;
            let limit = q.limit.unwrap_or(32).clamp(1, 100);
            let after = q.cursor.as_deref().filter(|c| !c.is_empty());
            let (names, next) = list_data_stores(&state, &prefix, &q.prefix, after, limit).await?;
            let stores: Vec<Value> = names.iter().map(|n| json!({ "name": n })).collect();
            Ok(HttpResponse::Ok().json(json!({ "datastores": stores, "nextPageCursor": next })))
        }
        .await,
    )
}

/// `GET …/datastore/entries`: `{keys: [{scope, key}], nextPageCursor}`
/// (key objects, as clients parse them, not the spec's strings).
async fn list_keys(req: HttpRequest, universe: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let q: ListQuery = query(&req)?;
            let prefix = prefix_of(&state, &universe)?;
            let name = q
                .datastore_name
                .as_deref()
                .ok_or_else(|| OcError::invalid("InvalidDataStoreName", "datastoreName is required."))?;
            let all = flag(q.all_scopes.as_deref())?;
            let scope = if all { None } else { Some(q.scope.as_deref().unwrap_or("global")) };
            let limit = q.limit.unwrap_or(16).clamp(1, 1000);
            let after = q.cursor.as_deref().filter(|c| !c.is_empty());
            let listing = Listing { prefix: &prefix, name, scope, key_prefix: &q.prefix, after, limit };
            let (keys, next) = list_entries(&state, &req, listing).await?;
            let keys: Vec<Value> = keys.iter().map(|(s, k)| json!({ "scope": s, "key": k })).collect();
            Ok(HttpResponse::Ok().json(json!({ "keys": keys, "nextPageCursor": next })))
        }
        .await,
    )
}
