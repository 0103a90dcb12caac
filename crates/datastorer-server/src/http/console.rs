//! The console's files at `/console` (built from `console/` by `build.rs`
//! and embedded), with a Content-Security-Policy that allows only this
//! server's own script, styles and API, and no framing. Off with
//! `console = false`.
//!
//! Owns: serving those files and their headers. Must not: hold or check
//! any credential (the console calls the API with the signed-in key, and
//! the API checks it), or serve anything not embedded at build time.

use actix_web::{web, HttpRequest, HttpResponse};

use super::fallback::resource;
use crate::state::AppState;

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Only this origin's script, styles and API; nothing inline, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Registers the console's routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/console").route(web::get().to(file)))
        .service(resource("/console/").route(web::get().to(file)))
        .service(resource("/console/{file}").route(web::get().to(file)));
}

/// One embedded file (`index.html` for the console's own path).
async fn file(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let name = req.match_info().get("file").unwrap_or("index.html");
    let found = ASSETS.iter().find(|(n, _, _)| *n == name);
    let (Some((_, content_type, bytes)), true) = (found, state.config.console) else {
        return super::not_found().await;
    };
    HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cross-Origin-Opener-Policy", "same-origin"))
        .insert_header(("Cross-Origin-Resource-Policy", "same-origin"))
        // Small and rebuilt with the binary: revalidated, never stale.
        .insert_header(("Cache-Control", "no-cache"))
        .body(*bytes)
}
