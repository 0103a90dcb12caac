//! The routes of API v1, one module per group, each registering its own
//! routes. The hot session routes are one scope, registered first: actix
//! matches dynamic paths with a regex per resource, tried in order, so a
//! `PATCH …/data` or `POST …/save` runs one regex for the scope and then
//! compares a static suffix (the regexes were ~10 % of the server's CPU).
//!
//! Owns: the route table. Must not: hold handler logic; each group's
//! handlers live in its module, and only `app` imports this one.

mod backup;
mod batch;
mod changes;
mod console;
mod fallback;
mod history;
mod messages;
mod open_cloud;
mod ops;
mod records;
mod session;
mod users;

use actix_web::web;

pub(crate) use fallback::not_found;

/// The path every session route hangs under.
const SESSION_SCOPE: &str = "/v1/stores/{store}/keys/{key}/session";

/// Registers every route.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope(SESSION_SCOPE).configure(session::configure).configure(messages::configure_session));
    records::configure(cfg);
    history::configure(cfg);
    users::configure(cfg);
    backup::configure(cfg);
    messages::configure(cfg);
    changes::configure(cfg);
    batch::configure(cfg);
    ops::configure(cfg);
    open_cloud::configure(cfg);
    console::configure(cfg);
}
