//! The standalone server (`datastorer serve`): the engine behind a
//! versioned JSON HTTP API, plus the offline CLI tools. A crate of its own
//! that sees only the engine's public API: the crate edge enforces what the
//! architecture states (the server is one more embedder).
//!
//! Layout (ARCHITECTURE.md has the per-file table): `app` starts and stops
//! the server; `state` is what handlers share; `extract` checks a request
//! once (`Held`: admitted, authenticated, the session behind the token);
//! `middleware` observes every request; `http/` holds the routes, one
//! module per group; `tools/` the offline tools; the rest are the domain
//! modules the handlers call (sessions, change log, webhooks, metrics).
//!
//! Owns: HTTP, authentication, client sessions and their lease tokens,
//! the change feed, metrics, configuration files. Must not: reach into the
//! engine's internals — it uses the public library API like any embedder
//! (the offline tools open the sled backend directly, never while a server
//! holds it).

#![deny(unreachable_pub)]

mod access;
mod access_log;
mod app;
mod auth;
mod budget;
mod change_log;
pub mod cli;
mod conditional;
pub mod config;
mod ending;
mod error;
mod extract;
mod feed;
mod fleet_feed;
mod forward;
mod http;
mod inbox_watch;
mod json;
mod limits;
mod log_writer;
mod metrics;
mod middleware;
mod openapi;
pub mod process_memory;
mod roblox_names;
mod roblox_signature;
mod sessions;
mod state;
mod tools;
mod validate;
mod webhooks;

pub use app::{bind, run};
pub use json::MigrationStep;
pub use webhooks::signature as webhook_signature;

/// Where this build of the console was made, with its npm dependencies
/// (playwright-core among them): the benchmarks drive it from there.
pub const CONSOLE_BUILD_DIR: &str = env!("DATASTORER_CONSOLE_BUILD_DIR");
/// The console's sources (its scripts under `tests/`).
pub const CONSOLE_SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/console");
