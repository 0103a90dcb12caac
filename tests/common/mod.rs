//! Shared helpers for the integration tests: a document type, configs over
//! a shared in-memory backend, and record inspection.
#![allow(dead_code, unused_imports)]

pub mod pg;
pub mod pg_instance;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use datastorer::storage::memory::MemoryBackend;
use datastorer::storage::{storage_key, Record};
use datastorer::{Config, Datastorer, Store, StoreSpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub coins: u64,
    pub name: String,
    #[serde(default)]
    pub items: Vec<String>,
}

pub fn template() -> Profile {
    Profile { coins: 0, name: "new player".into(), items: Vec::new() }
}

pub const AUTOSAVE: Duration = Duration::from_secs(30);
pub const TTL: Duration = Duration::from_secs(90);

/// A config over `backend` with signal handling off and fast retries.
pub fn config(backend: &Arc<MemoryBackend>, owner: &str) -> Config {
    let mut c = Config::backend(backend.clone()).owner_id(owner);
    c.handle_signals = false;
    c.autosave_interval = AUTOSAVE;
    c.lease_ttl = TTL;
    c.queue.retry.base_delay = Duration::from_millis(10);
    c
}

pub async fn node(backend: &Arc<MemoryBackend>, owner: &str) -> Datastorer {
    Datastorer::start(config(backend, owner)).await.expect("start")
}

pub fn profiles(ds: &Datastorer) -> Store<Profile> {
    ds.store("profiles", StoreSpec::new(template())).expect("store")
}

/// The decoded record of `key` in `store`, straight from the backend.
pub fn stored(backend: &MemoryBackend, store: &str, key: &str) -> Option<Record> {
    backend.raw_get(&storage_key(store, key)).map(|b| Record::decode(&b).expect("decodable record"))
}

pub fn stored_json(backend: &MemoryBackend, store: &str, key: &str) -> serde_json::Value {
    let r = stored(backend, store, key).expect("record present");
    serde_json::from_slice(&r.data).expect("json data")
}

/// The harness's seeded generator, under the name the suites use.
pub use datastorer::testing::Rng;

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
