//! Code nobody here wrote, unchanged, on datastorer: Lapis 0.3.8's own test
//! suite and ProfileStore 1.0.3 in scenario specs, on the Luau client's
//! DataStoreService facade and MessagingService shim over a real
//! `datastorer serve`. Their packages come from npm at pinned versions,
//! integrity-checked, installed by `clients/luau/tests/peers/fetch.sh`
//! (which `.ci/run` runs) into `target/roblox-peers`, or where
//! `DATASTORER_ROBLOX_PEERS` points. Without them these tests skip and say
//! so; `DATASTORER_REQUIRE_PEERS=1` (set by CI) makes that a failure.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::luau::run_spec;
use common::server::Server;

fn peers_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DATASTORER_ROBLOX_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/roblox-peers"));
    let complete = ["lapis/out/lapis/init.test.luau", "profile-store/src/init.luau", "roblox-ts/include/Promise.lua"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if complete {
        return dir.canonicalize().ok();
    }
    let message =
        format!("the peers' packages are not installed in {} (run clients/luau/tests/peers/fetch.sh)", dir.display());
    assert!(std::env::var_os("DATASTORER_REQUIRE_PEERS").is_none(), "{message}");
    eprintln!("SKIPPED: {message}");
    None
}

fn run(spec: &str, args: &[&str]) {
    let Some(peers) = peers_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut all = vec!["--access-log", "false"];
    all.extend_from_slice(args);
    let s = Server::process(tmp.path(), &all);
    let mut env = HashMap::from([("base_url", s.base.clone()), ("peers_dir", peers.display().to_string())]);
    if std::env::var_os("DATASTORER_PEERS_VERBOSE").is_some() {
        env.insert("verbose", "1".to_owned());
    }
    run_spec(spec, env);
}

#[test]
fn lapis_own_test_suite_on_the_data_store_service_facade() {
    run("specs/Lapis.spec", &[]);
}

#[test]
fn profilestore_on_the_facade_two_servers_autosave_messages_versions_and_shutdown() {
    run("specs/ProfileStore.spec", &[]);
}
