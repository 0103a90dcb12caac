//! What the integration tests share beyond `datastorer::testing` (which
//! owns node configs, clusters, crashes, record inspection and the seeded
//! generator): the test document type, PostgreSQL schemas and a private
//! PostgreSQL instance, and a fault-injecting TCP proxy.
#![allow(dead_code, unused_imports)]

pub mod pg;
pub mod pg_ha;
pub mod pg_instance;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

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

/// The engine's default intervals, which [`config`] keeps.
pub const AUTOSAVE: Duration = Duration::from_secs(30);
pub const TTL: Duration = Duration::from_secs(90);

/// The harness's node config, node start and record inspection: the
/// engine's tests use the same fixtures an application's tests do.
pub use datastorer::testing::{config, node, stored, stored_json};

pub fn profiles(ds: &Datastorer) -> Store<Profile> {
    ds.store("profiles", StoreSpec::new(template())).expect("store")
}

/// The harness's seeded generator, under the name the suites use.
pub use datastorer::testing::Rng;

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
