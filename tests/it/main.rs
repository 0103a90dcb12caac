//! The engine's integration tests in one binary (one link instead of
//! fourteen): each module is one capability or one guarantee, as the files
//! were. Two stay binaries of their own: `tests/signals.rs` sends SIGTERM to
//! its own process, which any other engine in the same process would hear,
//! and `tests/observability.rs` installs a debug subscriber, which tracing's
//! process-wide callsite cache would not honour beside other tests.

#[path = "../common/mod.rs"]
mod common;

mod autosave;
mod engine_lifetime;
mod erasure;
mod fault_tolerance;
mod harness;
mod hibernation;
mod history;
mod leases;
mod messages;
mod migrations;
mod one_shot;
mod pg_failover;
mod pg_faults;
mod postgres;
mod queue;
mod sessions;
mod shutdown;
mod storage;
mod stores;
mod tidy;
mod write_paths;
