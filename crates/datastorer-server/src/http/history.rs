//! A key's history over HTTP: its versions (read role), one version, the
//! version current at a time, and the fenced restore (admin role).
//!
//! Owns: those routes and their query and body shapes. Must not: write
//! except through the engine's `Store::restore`, which hands the key over
//! from its holder and lands under a new epoch.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::fallback::resource;
use crate::auth::Role;
use crate::error::{ApiError, ErrorCode};
use crate::extract::{check_key, parse, required_json};
use crate::state::{AppState, Target};
use datastorer::{parse_version_id, RestoreTarget, Store, VersionOrder, VersionQuery, MAX_VERSIONS_PAGE};
use serde_json::Value;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Longest hand-over a restore may ask for: a holder that has not handed
/// the key over by then is fenced.
const MAX_HANDOFF: Duration = Duration::from_secs(60);

/// Registers the history routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/stores/{store}/keys/{key}/versions").route(web::get().to(list_versions)))
        .service(resource("/v1/stores/{store}/keys/{key}/versions/at").route(web::get().to(version_at)))
        .service(resource("/v1/stores/{store}/keys/{key}/versions/{version}").route(web::get().to(one_version)))
        .service(resource("/v1/stores/{store}/keys/{key}/restore").route(web::post().to(restore)))
        .service(
            resource("/v1/stores/{store}/restore")
                .route(web::post().to(restore_store))
                .route(web::get().to(restore_store_progress)),
        )
        .service(resource("/v1/stores/{store}/migrate").route(web::post().to(migrate_store)));
}

/// `GET /v1/stores/{store}/restore` (admin): the store restore under way
/// (from any server), or one interrupted that waits to be run again:
/// `{"progress": {at_ms, started_at_ms, done_through, keys_done}}`, or
/// `{"progress": null}`.
async fn restore_store_progress(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Admin)?;
    let store = state.store(&path.into_inner())?;
    Ok(HttpResponse::Ok().json(json!({ "progress": store.restore_progress().await? })))
}

/// `POST /v1/stores/{store}/migrate` (admin): every record of the store
/// to its newest data version (keys held by a session are left to it);
/// run again, it does what is left.
async fn migrate_store(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Admin)?;
    let store_name = path.into_inner();
    let store = state.store(&store_name)?;
    let result = store.migrate_all().await.map_err(ApiError::from);
    let target = Target { store: Some(&store_name), key: None };
    let report = state.audited(&who.name, "bulk_migration", target, |r| json!(r), result).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// The body of a store restore.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreRestoreBody {
    at_ms: u64,
    #[serde(default)]
    dry_run: bool,
    handoff_ms: Option<u64>,
}

/// `POST /v1/stores/{store}/restore` (admin): the whole store back to
/// `at_ms`, or with `dry_run` the list of what would change. Run again
/// after an interruption, it resumes; restoring to its `undo_at_ms` undoes it.
async fn restore_store(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Admin)?;
    let store_name = path.into_inner();
    let store = state.store(&store_name)?;
    let body: StoreRestoreBody =
        parse(required_json(&req, payload, &state, &["application/json"], "a store restore (at_ms)").await?)?;
    let handoff = handoff_of(body.handoff_ms)?;
    let result = store.restore_to(body.at_ms, body.dry_run, handoff).await.map_err(ApiError::from);
    if body.dry_run {
        return Ok(HttpResponse::Ok().json(result?));
    }
    let target = Target { store: Some(&store_name), key: None };
    let details = |r: &datastorer::StoreRestoreReport| {
        json!({ "at_ms": r.at_ms, "restored": r.restored, "deleted": r.deleted, "unknown": r.unknown,
                "resumed_after": r.resumed_after, "undo_at_ms": r.undo_at_ms })
    };
    let report = state.audited(&who.name, "store_restore", target, details, result).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// The store of a route on one key, after the role check and the key check.
fn store_of(state: &AppState, req: &HttpRequest, role: Role, store: &str, key: &str) -> Result<Store<Value>> {
    state.auth(req, role)?;
    let resolved = state.store(store)?;
    check_key(key)?;
    Ok(resolved)
}

/// A hand-over time asked for (default 10 s), within the ceiling.
fn handoff_of(ms: Option<u64>) -> Result<Duration> {
    let handoff = Duration::from_millis(ms.unwrap_or(10_000));
    if handoff > MAX_HANDOFF {
        return Err(ApiError::new(
            ErrorCode::BadRequestBody,
            format!("handoff_ms is at most {}", MAX_HANDOFF.as_millis()),
        ));
    }
    Ok(handoff)
}

fn bad_version(text: &str) -> ApiError {
    ApiError::new(ErrorCode::BadPath, format!("{text:?} is not a version id (EPOCH.REVISION, as listed)"))
}

/// `?order=newest|oldest&from_ms=&to_ms=&cursor=&limit=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    order: Option<Order>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Order {
    Newest,
    Oldest,
}

/// `GET /v1/stores/{store}/keys/{key}/versions`
async fn list_versions(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (store_name, key) = path.into_inner();
    let store = store_of(&state, &req, Role::Read, &store_name, &key)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_VERSIONS_PAGE {
        return Err(ApiError::new(ErrorCode::BadLimit, format!("limit must be 1 to {MAX_VERSIONS_PAGE}")));
    }
    let after = match query.cursor.as_deref() {
        Some(c) => Some(parse_version_id(c).ok_or_else(|| {
            ApiError::new(ErrorCode::BadQuery, format!("cursor {c:?} is not one a listing handed out"))
        })?),
        None => None,
    };
    let order = match query.order.unwrap_or(Order::Newest) {
        Order::Newest => VersionOrder::NewestFirst,
        Order::Oldest => VersionOrder::OldestFirst,
    };
    let q = VersionQuery { order, from_ms: query.from_ms, to_ms: query.to_ms, after, limit };
    let page = store.versions(key.as_str(), &q).await?;
    Ok(HttpResponse::Ok().json(json!({ "versions": page.versions, "next_cursor": page.next })))
}

/// `GET /v1/stores/{store}/keys/{key}/versions/{version}`
async fn one_version(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (store_name, key, version) = path.into_inner();
    let store = store_of(&state, &req, Role::Read, &store_name, &key)?;
    let id = parse_version_id(&version).ok_or_else(|| bad_version(&version))?;
    Ok(HttpResponse::Ok().json(store.version(key.as_str(), id).await?))
}

/// `?time_ms=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AtQuery {
    time_ms: u64,
}

/// `GET /v1/stores/{store}/keys/{key}/versions/at?time_ms=T`: the version
/// current at T (a tombstone, `deleted: true`, when the key was deleted then).
async fn version_at(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<AtQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    let (store_name, key) = path.into_inner();
    let store = store_of(&state, &req, Role::Read, &store_name, &key)?;
    Ok(HttpResponse::Ok().json(store.version_at(key.as_str(), query.time_ms).await?))
}

/// The body of a restore: exactly one of `version` and `at_ms`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    version: Option<String>,
    at_ms: Option<u64>,
    /// JSON pointers of parts of the current document to keep.
    #[serde(default)]
    keep: Vec<String>,
    /// How long a holder has to save and hand the key over (default 10 s).
    handoff_ms: Option<u64>,
}

/// `POST /v1/stores/{store}/keys/{key}/restore` (admin)
async fn restore(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Admin)?;
    let (store_name, key) = path.into_inner();
    let store = state.store(&store_name)?;
    check_key(&key)?;
    let body: RestoreBody =
        parse(required_json(&req, payload, &state, &["application/json"], "a restore (version or at_ms)").await?)?;
    let target = match (&body.version, body.at_ms) {
        (Some(v), None) => RestoreTarget::Version(parse_version_id(v).ok_or_else(|| bad_version(v))?),
        (None, Some(t)) => RestoreTarget::At(t),
        _ => {
            return Err(ApiError::new(ErrorCode::BadRequestBody, "give exactly one of \"version\" and \"at_ms\""));
        }
    };
    let handoff = handoff_of(body.handoff_ms)?;
    let result = store.restore(key.as_str(), target, &body.keep, handoff).await.map_err(ApiError::from);
    let audit_target = Target { store: Some(&store_name), key: Some(&key) };
    let keep = body.keep.clone();
    let restored =
        state.audited(&who.name, "restore", audit_target, |r| json!({ "restored": r, "keep": keep }), result).await?;
    Ok(HttpResponse::Ok().json(restored))
}
