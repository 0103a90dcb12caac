//! Users across stores (admin role): every record and kept version tagged
//! with a user id (a subject-access export), the erasure of an id with its
//! receipt, and Roblox's signed `RightToErasureRequest` webhook, which
//! erases the id in the stores configured for the games it names.
//!
//! Owns: those routes. Must not: erase except through the engine's
//! `erase_user`, which ends sessions and leaves nothing to find.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fallback::resource;
use crate::auth::Role;
use crate::error::{ApiError, ErrorCode};
use crate::state::{AppState, Target};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// How long a holder of a shared (`unlink`) record has to hand it over.
const ERASURE_HANDOFF: Duration = Duration::from_secs(10);

/// Registers the user routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/users/{user_id}").route(web::get().to(user_records)).route(web::delete().to(erase_user)))
        .service(resource("/v1/webhooks/roblox").route(web::post().to(roblox_webhook)))
        .service(resource("/v1/audit").route(web::get().to(audit_trail)));
}

/// `?after=&limit=&action=&store=&key=&actor=`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<String>,
    limit: Option<usize>,
    action: Option<String>,
    store: Option<String>,
    key: Option<String>,
    actor: Option<String>,
}

/// `GET /v1/audit` (admin): the trail, oldest first, filtered and paged.
async fn audit_trail(
    req: HttpRequest,
    query: web::Query<AuditQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse> {
    state.auth(&req, Role::Admin)?;
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > crate::limits::MAX_LIST_LIMIT {
        return Err(ApiError::new(
            ErrorCode::BadLimit,
            format!("limit must be 1 to {}", crate::limits::MAX_LIST_LIMIT),
        ));
    }
    let keep = |e: &datastorer::AuditEntry| {
        q.action.as_ref().is_none_or(|a| *a == e.action)
            && q.actor.as_ref().is_none_or(|a| *a == e.actor)
            && q.store.as_ref().is_none_or(|s| Some(s) == e.store.as_ref())
            && q.key.as_ref().is_none_or(|k| Some(k) == e.key.as_ref())
    };
    let (entries, next) = state.ds.audit_entries(q.after.as_deref(), limit, keep).await.map_err(|e| match e {
        datastorer::Error::Config(m) => ApiError::new(ErrorCode::BadQuery, m),
        other => ApiError::from(other),
    })?;
    Ok(HttpResponse::Ok().json(json!({ "entries": entries, "next_cursor": next })))
}

fn checked_user_id(id: &str) -> Result<()> {
    crate::validate::user_id_text(id).map_err(|m| ApiError::new(ErrorCode::BadUserId, m))
}

/// `GET /v1/users/{user_id}` (admin): every record and version tagged with it.
async fn user_records(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, Role::Admin)?;
    let user_id = path.into_inner();
    checked_user_id(&user_id)?;
    let records = state.ds.user_records(&user_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "user_id": user_id, "records": records })))
}

/// `DELETE /v1/users/{user_id}` (admin): erases it everywhere; a receipt.
async fn erase_user(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Admin)?;
    let user_id = path.into_inner();
    checked_user_id(&user_id)?;
    let result = state.ds.erase_user(&user_id, ERASURE_HANDOFF).await.map_err(ApiError::from);
    let receipt =
        state.audited(&who.name, "erase", Target::default(), |r| erasure_details(&user_id, r), result).await?;
    Ok(HttpResponse::Ok().json(receipt))
}

/// What the audit trail keeps of an erasure: the receipt and the user id
/// hashed (SHA-256), so the trail can show an id was erased without
/// keeping the id itself.
fn erasure_details(user_id: &str, receipt: &datastorer::ErasureReceipt) -> Value {
    let digest = ring::digest::digest(&ring::digest::SHA256, user_id.as_bytes());
    let hashed: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    json!({ "receipt": receipt, "user_id_sha256": hashed })
}

/// The parts of Roblox's notification that matter here.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Notification {
    #[serde(default)]
    notification_id: Option<String>,
    event_type: String,
    #[serde(default)]
    event_payload: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErasurePayload {
    user_id: u64,
    #[serde(default)]
    game_ids: Vec<u64>,
}

/// `POST /v1/webhooks/roblox`: authenticated by Roblox's signature, not an
/// API key. A replay within the window erases nothing more (erasure is
/// idempotent); an event other than an erasure request is acknowledged and
/// ignored, so Roblox's "test response" works.
async fn roblox_webhook(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.admit()?;
    let Some(conf) = state.config.roblox_erasure.as_ref() else {
        return Err(ApiError::new(ErrorCode::NotConfigured, "no [roblox_erasure] is configured on this server"));
    };
    let header = req.headers().get("roblox-signature").and_then(|v| v.to_str().ok());
    let now = crate::ending::now_ms() / 1000;
    crate::roblox_signature::verify(&conf.secret, header, &body, now)
        .map_err(|e| ApiError::new(ErrorCode::BadSignature, e.to_string()))?;
    let note: Notification = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequestBody, format!("not a Roblox notification: {e}")))?;
    if note.event_type != "RightToErasureRequest" {
        tracing::info!(target: "datastorer::audit", action = "roblox_webhook", event = %note.event_type, "ignored");
        return Ok(HttpResponse::Ok().json(json!({ "ignored": note.event_type })));
    }
    let payload: ErasurePayload = serde_json::from_value(note.event_payload)
        .map_err(|e| ApiError::new(ErrorCode::BadRequestBody, format!("not an erasure request: {e}")))?;
    let user_id = payload.user_id.to_string();
    let result = if conf.games.is_empty() {
        state.ds.erase_user(&user_id, ERASURE_HANDOFF).await
    } else {
        let stores: Vec<String> = conf
            .games
            .iter()
            .filter(|g| payload.game_ids.contains(&g.game_id))
            .flat_map(|g| g.stores.iter().cloned())
            .collect();
        state.ds.erase_user_in(&user_id, &stores, ERASURE_HANDOFF).await
    };
    let notification = note.notification_id.unwrap_or_default();
    let details = |r: &datastorer::ErasureReceipt| {
        let mut d = erasure_details(&user_id, r);
        d["notification_id"] = json!(notification);
        d
    };
    let receipt =
        state.audited("roblox-webhook", "erase", Target::default(), details, result.map_err(ApiError::from)).await?;
    Ok(HttpResponse::Ok().json(receipt))
}
