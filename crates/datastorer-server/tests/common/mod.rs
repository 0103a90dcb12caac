//! The engine's test helpers (`tests/common` at the repository root: the
//! document type, PostgreSQL schemas, the private `initdb` instance, the
//! TCP proxy), shared as they are, plus the real `datastorer serve`
//! process for the server's tests.
#![allow(dead_code, unused_imports)]

#[path = "../../../../tests/common/mod.rs"]
mod engine;
pub use engine::*;

pub mod luau;
pub mod server;
