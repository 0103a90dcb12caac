//! Open Cloud's v2 data-store routes (`/cloud/v2/universes/{u}/data-stores`):
//! `DataStoreEntry` resources (`path`, `revisionId`, `etag`, `users` as
//! `users/123`), entries with or without `/scopes/{scope}` (`-` lists every
//! scope), `@latest`, `@<revision>` and `@latest:<RFC 3339>` reads, `PATCH`
//! guarded by the body's `etag`, `:increment`, `:listRevisions`, and page
//! tokens bound to the query that made them.
//!
//! Owns: the v2 routes' parsing and answers. Must not: write but through
//! the shared compare-and-set writes of `open_cloud` (which keep to the
//! engine's one-shot paths).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_attributes, entry, increment, list_data_stores, list_entries, page_token, parse_page_token, parse_rfc3339,
    parse_user_ids, parse_version, prefix_of, read, rfc3339, starts_with_filter, store_name, version_text, write,
    Entry, Listing, OcError, OcResult, Write,
};
use crate::auth::Role;
use crate::http::fallback::resource;
use crate::state::AppState;
use datastorer::storage::Record;
use datastorer::{Expect, VersionOrder, VersionQuery};

const BASE: &str = "/cloud/v2/universes/{universe}/data-stores";

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(BASE).route(web::get().to(list_stores)));
    for entries in [format!("{BASE}/{{store}}/entries"), format!("{BASE}/{{store}}/scopes/{{scope}}/entries")] {
        cfg.service(resource(&entries).route(web::get().to(list)).route(web::post().to(create)));
        cfg.service(
            resource(&format!("{entries}/{{entry}}"))
                .route(web::get().to(get))
                .route(web::patch().to(patch))
                .route(web::delete().to(delete))
                .route(web::post().to(post_action)),
        );
    }
}

fn answer(result: OcResult) -> HttpResponse {
    result.unwrap_or_else(|e| e.v2())
}

/// The path parameters: universe, data store, scope (`global` when the
/// path has none) and, for an entry, its segment.
struct Where {
    universe: String,
    name: String,
    scope: String,
    segment: Option<String>,
}

fn place(req: &HttpRequest) -> Where {
    let m = req.match_info();
    Where {
        universe: m.get("universe").unwrap_or_default().to_owned(),
        name: m.get("store").unwrap_or_default().to_owned(),
        scope: m.get("scope").unwrap_or("global").to_owned(),
        segment: m.get("entry").map(str::to_owned),
    }
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> OcResult<T> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| OcError::invalid("InvalidArgument", format!("Invalid query: {e}")))
}

fn resolve(state: &AppState, req: &HttpRequest, w: &Where, key: &str, role: Role) -> OcResult<Entry> {
    if w.scope == "-" {
        return Err(OcError::invalid("InvalidScope", "The wildcard scope lists entries only."));
    }
    let prefix = prefix_of(state, &w.universe)?;
    let store = store_name(&prefix, &w.name, &w.scope)?;
    entry(state, req, role, store, key.to_owned())
}

/// A `DataStoreEntry` resource of a stored record.
fn entry_json(w: &Where, key: &str, rec: &Record) -> Value {
    let value: Value = serde_json::from_slice(&rec.data).unwrap_or(Value::Null);
    let attributes = super::attributes_of(rec);
    let version = version_text(rec.header);
    json!({
        "path": format!("universes/{}/data-stores/{}/scopes/{}/entries/{key}", w.universe, w.name, w.scope),
        "createTime": rfc3339(rec.created_at_ms),
        "revisionId": version,
        "revisionCreateTime": rfc3339(rec.updated_at_ms),
        "state": "ACTIVE",
        "etag": version,
        "value": value,
        "id": key,
        "users": rec.user_ids.iter().map(|u| format!("users/{u}")).collect::<Vec<_>>(),
        "attributes": attributes,
    })
}

/// The body of a create, a patch or an increment: `value` (or `amount`),
/// `users` (`users/123`), `attributes`, `etag`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryBody {
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    amount: Option<Value>,
    #[serde(default)]
    users: Option<Vec<String>>,
    #[serde(default)]
    attributes: Option<Value>,
    #[serde(default)]
    etag: Option<String>,
}

fn body_of(bytes: &[u8]) -> OcResult<EntryBody> {
    serde_json::from_slice(bytes).map_err(|e| OcError::invalid("InvalidArgument", format!("Invalid body: {e}")))
}

/// User ids and attributes of a body; omitted ones are cleared.
fn parts_of(b: &EntryBody) -> OcResult<(Vec<String>, Value)> {
    let mut ids = Vec::new();
    for u in b.users.iter().flatten() {
        let id = u.strip_prefix("users/").unwrap_or(u);
        ids.extend(parse_user_ids(id)?);
    }
    let attributes = match &b.attributes {
        Some(a) => check_attributes(a.clone())?,
        None => json!({}),
    };
    Ok((ids, attributes))
}

/// `GET …/entries/{id}[@latest|@<revision>|@latest:<time>]`, or
/// `…/entries/{id}:listRevisions`.
async fn get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let w = place(&req);
            let segment = w.segment.clone().unwrap_or_default();
            if let Some(key) = segment.strip_suffix(":listRevisions") {
                return list_revisions(&req, &state, &w, key).await;
            }
            let (key, at) = match segment.rsplit_once('@') {
                Some((k, at)) => (k.to_owned(), Some(at.to_owned())),
                None => (segment.clone(), None),
            };
            let e = resolve(&state, &req, &w, &key, Role::Read)?;
            let not_found = || OcError::not_found("KeyNotFound", "Entry not found.");
            match at.as_deref() {
                None | Some("latest") => {
                    let rec = read(&e).await?.ok_or_else(not_found)?;
                    Ok(HttpResponse::Ok().json(entry_json(&w, &key, &rec)))
                }
                Some(at) => {
                    let version = match at.strip_prefix("latest:") {
                        Some(t) => {
                            let ms = parse_rfc3339(t)
                                .ok_or_else(|| OcError::invalid("InvalidArgument", "Invalid time."))?;
                            e.store.version_at(key.as_str(), ms).await?
                        }
                        None => {
                            let id = datastorer::parse_version_id(at)
                                .ok_or_else(|| OcError::invalid("InvalidVersionId", "Invalid version id."))?;
                            e.store.version(key.as_str(), id).await?
                        }
                    };
                    let Some(data) = version.data else { return Err(not_found()) };
                    let info = &version.info;
                    Ok(HttpResponse::Ok().json(json!({
                        "path": format!("universes/{}/data-stores/{}/scopes/{}/entries/{key}@{}", w.universe, w.name, w.scope, info.version),
                        "createTime": rfc3339(info.created_at_ms),
                        "revisionId": info.version,
                        "revisionCreateTime": rfc3339(info.saved_at_ms),
                        "state": "ACTIVE",
                        "etag": info.version,
                        "value": data,
                        "id": key,
                        "users": info.user_ids.iter().map(|u| format!("users/{u}")).collect::<Vec<_>>(),
                        "attributes": version.metadata.unwrap_or_else(|| json!({})),
                    })))
                }
            }
        }
        .await,
    )
}

/// `POST …/entries?id=`: creates an entry that does not exist.
async fn create(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    answer(
        async {
            let w = place(&req);
            let Id { id } = query(&req)?;
            let b = body_of(&body)?;
            let value = b.value.clone().ok_or_else(|| OcError::invalid("InvalidValue", "value is required."))?;
            let (user_ids, attributes) = parts_of(&b)?;
            let e = resolve(&state, &req, &w, &id, Role::Write)?;
            match write(&state, &e, Expect::Absent, Write { value, user_ids, attributes }).await {
                Ok(rec) => Ok(HttpResponse::Ok().json(entry_json(&w, &id, &rec))),
                Err(err) if err.status == StatusCode::PRECONDITION_FAILED => {
                    Err(OcError::invalid("KeyAlreadyExists", "Entry already exists."))
                }
                Err(err) => Err(err),
            }
        }
        .await,
    )
}

/// `PATCH …/entries/{id}?allowMissing=`: replaces the value (and user ids
/// and attributes: omitted ones are cleared); the body's `etag` makes it
/// conditional.
async fn patch(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Allow {
        #[serde(default)]
        allow_missing: Option<String>,
    }
    answer(
        async {
            let w = place(&req);
            let key = w.segment.clone().unwrap_or_default();
            let allow: Allow = query(&req)?;
            let allow_missing =
                matches!(allow.allow_missing.as_deref().map(str::to_ascii_lowercase).as_deref(), Some("true"));
            let b = body_of(&body)?;
            let value = b.value.clone().ok_or_else(|| OcError::invalid("InvalidValue", "value is required."))?;
            let (user_ids, attributes) = parts_of(&b)?;
            let etag = match b.etag.as_deref().filter(|t| !t.is_empty()) {
                Some(t) => Some(
                    parse_version(t.trim_matches('"'))
                        .ok_or_else(|| OcError::invalid("InvalidArgument", "Invalid etag."))?,
                ),
                None => None,
            };
            let e = resolve(&state, &req, &w, &key, Role::Write)?;
            for _ in 0..16 {
                let expected = match (etag, allow_missing) {
                    (Some(h), _) => Expect::Version(h),
                    (None, true) => Expect::Anything,
                    // Not to create one: write over what is there now.
                    (None, false) => match read(&e).await? {
                        Some(rec) => Expect::Version(rec.header),
                        None => return Err(OcError::not_found("KeyNotFound", "Entry not found.")),
                    },
                };
                let w2 = Write { value: value.clone(), user_ids: user_ids.clone(), attributes: attributes.clone() };
                match write(&state, &e, expected, w2).await {
                    Ok(rec) => return Ok(HttpResponse::Ok().json(entry_json(&w, &key, &rec))),
                    Err(err) if err.status == StatusCode::PRECONDITION_FAILED && etag.is_none() => continue,
                    Err(err) if err.status == StatusCode::PRECONDITION_FAILED => {
                        return Err(OcError::new(
                            StatusCode::PRECONDITION_FAILED,
                            "FAILED_PRECONDITION",
                            "PreconditionFailed",
                            "The etag does not match the entry's current revision.",
                        ))
                    }
                    Err(err) => return Err(err),
                }
            }
            Err(OcError::new(StatusCode::CONFLICT, "ABORTED", "Conflict", "The entry kept changing; try again."))
        }
        .await,
    )
}

/// `DELETE …/entries/{id}`: 200, kept as a tombstone version; 404 if absent.
async fn delete(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let w = place(&req);
            let key = w.segment.clone().unwrap_or_default();
            let e = resolve(&state, &req, &w, &key, Role::Write)?;
            super::refuse_if_held(&state, &e)?;
            if e.store.delete_if(e.key.as_str(), Expect::Anything, false).await? {
                Ok(HttpResponse::Ok().json(json!({})))
            } else {
                Err(OcError::not_found("KeyNotFound", "Entry not found."))
            }
        }
        .await,
    )
}

/// `POST …/entries/{id}:increment` `{amount, users, attributes}`.
async fn post_action(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let w = place(&req);
            let segment = w.segment.clone().unwrap_or_default();
            let Some(key) = segment.strip_suffix(":increment") else {
                return Err(OcError::not_found("NotFound", "No such method (only :increment)."));
            };
            let b = body_of(&body)?;
            let amount = match &b.amount {
                None => 1,
                Some(v) => v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| OcError::invalid("InvalidIncrement", "amount is a whole number."))?,
            };
            let (user_ids, attributes) = parts_of(&b)?;
            let e = resolve(&state, &req, &w, key, Role::Write)?;
            let rec = increment(&state, &e, amount, user_ids, attributes).await?;
            Ok(HttpResponse::Ok().json(entry_json(&w, key, &rec)))
        }
        .await,
    )
}

/// Paging of the list routes (`nextPageToken` too: `rblx-open-cloud`
/// 2.3.0 sends its revisions cursor under that name).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Paging {
    max_page_size: Option<usize>,
    page_token: Option<String>,
    next_page_token: Option<String>,
    filter: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    show_deleted: Option<String>,
}

impl Paging {
    fn token(&self) -> Option<&str> {
        self.page_token.as_deref().or(self.next_page_token.as_deref()).filter(|t| !t.is_empty())
    }
}

/// `revision_create_time >= T && revision_create_time <= T` (either part).
fn revision_filter(filter: Option<&str>) -> OcResult<(Option<u64>, Option<u64>)> {
    let (mut from, mut to) = (None, None);
    let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) else { return Ok((None, None)) };
    for part in f.split("&&") {
        let part = part.trim();
        let bad = || OcError::invalid("InvalidFilter", format!("Invalid filter {part:?}."));
        let rest = part.strip_prefix("revision_create_time").ok_or_else(bad)?.trim();
        if let Some(t) = rest.strip_prefix(">=") {
            from = Some(parse_rfc3339(t.trim()).ok_or_else(bad)?);
        } else if let Some(t) = rest.strip_prefix("<=") {
            to = Some(parse_rfc3339(t.trim()).ok_or_else(bad)?);
        } else {
            return Err(bad());
        }
    }
    Ok((from, to))
}

async fn list_revisions(req: &HttpRequest, state: &AppState, w: &Where, key: &str) -> OcResult {
    let p: Paging = query(req)?;
    let e = resolve(state, req, w, key, Role::Read)?;
    let (from_ms, to_ms) = revision_filter(p.filter.as_deref())?;
    let bound = format!("revisions\0{}\0{}\0{key}\0{}", w.name, w.scope, p.filter.as_deref().unwrap_or(""));
    let after = match p.token() {
        Some(t) => Some(
            datastorer::parse_version_id(&parse_page_token(&bound, t)?)
                .ok_or_else(|| OcError::invalid("InvalidCursor", "Invalid cursor."))?,
        ),
        None => None,
    };
    let query = VersionQuery {
        order: VersionOrder::NewestFirst,
        from_ms,
        to_ms,
        after,
        limit: p.max_page_size.unwrap_or(10).clamp(1, 100),
    };
    let page = e.store.versions(key, &query).await?;
    let entries: Vec<Value> = page
        .versions
        .iter()
        .map(|v| {
            json!({
                "path": format!("universes/{}/data-stores/{}/scopes/{}/entries/{key}@{}", w.universe, w.name, w.scope, v.version),
                "createTime": rfc3339(v.created_at_ms),
                "revisionId": v.version,
                "revisionCreateTime": rfc3339(v.saved_at_ms),
                "state": if v.deleted { "DELETED" } else { "ACTIVE" },
                "etag": v.version,
                "id": key,
            })
        })
        .collect();
    let next = page.next.as_deref().map(|c| page_token(&bound, c));
    Ok(HttpResponse::Ok().json(json!({ "dataStoreEntries": entries, "nextPageToken": next })))
}

/// `GET …/entries` (scope `-`: every scope): `{dataStoreEntries: [{path, id}], nextPageToken}`.
async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let w = place(&req);
            let p: Paging = query(&req)?;
            let prefix = prefix_of(&state, &w.universe)?;
            let key_prefix = starts_with_filter(p.filter.as_deref())?;
            let bound = format!("entries\0{}\0{}\0{key_prefix}", w.name, w.scope);
            let after = p.token().map(|t| parse_page_token(&bound, t)).transpose()?;
            let scope = (w.scope != "-").then_some(w.scope.as_str());
            let limit = p.max_page_size.unwrap_or(10).clamp(1, 256);
            let listing =
                Listing { prefix: &prefix, name: &w.name, scope, key_prefix: &key_prefix, after: after.as_deref(), limit };
            let (keys, next) = list_entries(&state, &req, listing).await?;
            let entries: Vec<Value> = keys
                .iter()
                .map(|(s, k)| {
                    json!({ "path": format!("universes/{}/data-stores/{}/scopes/{s}/entries/{k}", w.universe, w.name), "id": k })
                })
                .collect();
            let next = next.map(|c| page_token(&bound, &c));
            Ok(HttpResponse::Ok().json(json!({ "dataStoreEntries": entries, "nextPageToken": next })))
        }
        .await,
    )
}

/// `GET /cloud/v2/universes/{u}/data-stores`: `{dataStores: [{path, id}], nextPageToken}`.
async fn list_stores(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    answer(
        async {
            let w = place(&req);
            let p: Paging = query(&req)?;
            state.auth(&req, Role::Read)?;
            let prefix = prefix_of(&state, &w.universe)?;
            let name_prefix = starts_with_filter(p.filter.as_deref())?;
            let bound = format!("stores\0{name_prefix}");
            let after = p.token().map(|t| parse_page_token(&bound, t)).transpose()?;
            let limit = p.max_page_size.unwrap_or(10).clamp(1, 100);
            let (names, next) = list_data_stores(&state, &prefix, &name_prefix, after.as_deref(), limit).await?;
            let stores: Vec<Value> = names
                .iter()
                .map(|n| json!({ "path": format!("universes/{}/data-stores/{n}", w.universe), "id": n, "state": "ACTIVE" }))
                .collect();
            let next = next.map(|c| page_token(&bound, &c));
            Ok(HttpResponse::Ok().json(json!({ "dataStores": stores, "nextPageToken": next })))
        }
        .await,
    )
}
