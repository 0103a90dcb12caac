//! What operators and tooling call: health and readiness, Prometheus
//! metrics, the OpenAPI document, and the webhook test.
//!
//! Owns: those routes. Must not: touch a record.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::fallback::resource;
use crate::auth::Role;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Gauges;
use crate::state::AppState;
use crate::webhooks::{Alert, AlertKind};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Registers the operator routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/readyz").route(web::get().to(readyz)))
        .service(resource("/v1/stats").route(web::get().to(stats)))
        .service(resource("/v1/whoami").route(web::get().to(whoami)))
        .service(resource("/metrics").route(web::get().to(metrics)))
        .service(resource("/v1/openapi.json").route(web::get().to(openapi)))
        .service(resource("/v1/webhooks/test").route(web::post().to(test_webhooks)));
}

/// `POST /v1/webhooks/test` (admin): sends a test alert to every webhook,
/// to check the configuration end to end.
async fn test_webhooks(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, Role::Admin)?;
    state.webhooks.alert(Alert { kind: AlertKind::Test, count: 1, message: "a test alert, sent on request".into() });
    Ok(HttpResponse::Ok().json(json!({ "webhooks": state.webhooks.len() })))
}

/// `GET /v1/openapi.json`
async fn openapi(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    Ok(HttpResponse::Ok().json(crate::openapi::document(state.config.max_wait)))
}

/// `GET /healthz`: the process answers.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: ready unless shutting down (the 503 says when to come
/// back, as every 503 does).
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.shutting_down.load(Ordering::SeqCst) {
        ApiError::new(ErrorCode::ShuttingDown, "shutting down").error_response()
    } else {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    }
}

/// `GET /v1/stats`: the metrics' counters as JSON (the console's charts).
async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let who = state.auth(&req, Role::Read)?;
    let gauges = gauges(&state).await;
    let delivered = state.webhooks.delivered.load(Ordering::Relaxed);
    let mut snapshot = state.metrics.snapshot(&gauges, delivered);
    snapshot["at_ms"] = json!(state.ds.now_ms());
    // Other keys' names and their clients (game servers' job ids) are for
    // an admin; any other key sees its own budget only.
    let mut budgets = state.budgets.readings();
    if who.role != Role::Admin {
        budgets.retain(|b| b.key == who.name);
    }
    snapshot["api_budgets"] = json!(budgets);
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(snapshot))
}

async fn gauges(state: &AppState) -> Gauges {
    Gauges {
        depth: state.ds.queue_depth().await,
        budgets: state.ds.budget_levels().await,
        loaded_keys: state.ds.loaded_count(),
        hibernation: state.ds.hibernation(),
        client_sessions: state.sessions.len(),
        client_lease_lapses: state.sessions.lapses(),
        save_failures: state.ds.save_failures(),
        queue: state.ds.queue_stats().await,
    }
}

/// `GET /v1/whoami`: the name, role and store scope of the key the
/// request came with (what the console shows and offers follows them; the
/// server checks every request all the same).
async fn whoami(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    let who = state.auth(&req, Role::Read)?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(json!({
        "name": who.name,
        "role": who.role.as_str(),
        "stores": who.stores,
    })))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.auth(&req, Role::Read)?;
    let gauges = gauges(&state).await;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render(&gauges)))
}
