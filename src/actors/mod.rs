//! The actors: one per loaded key, one queue, one supervisor per
//! `Datastorer` instance. See ARCHITECTURE.md for how they talk.
//!
//! Must not: be visible in the public API (no actix type leaks out of the crate).

pub(crate) mod key;
pub(crate) mod queue;
pub(crate) mod supervisor;
