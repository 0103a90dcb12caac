//! SIGTERM/SIGINT: the supervisor saves every dirty key and releases every
//! lease, then stops the actix System. Runs in its own test binary because
//! it signals its own process.

mod common;

use std::time::Duration;

use common::*;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, Record};
use datastorer::{Config, Datastorer};

fn signal_self(signal: &str) {
    let status =
        std::process::Command::new("kill").args([signal, &std::process::id().to_string()]).status().expect("run kill");
    assert!(status.success());
}

fn run_until_signal(path: &std::path::Path, signal: &'static str) {
    let path = path.to_path_buf();
    let system = actix::System::new();
    system.block_on(async move {
        let mut c = Config::sled(&path).owner_id("signalled");
        c.autosave_interval = Duration::from_secs(3600);
        c.lease_ttl = Duration::from_secs(7200);
        let ds = Datastorer::start(c).await.unwrap();
        let store = profiles(&ds);
        for i in 0..50u64 {
            let s = store.open(format!("k{i}")).await.unwrap();
            s.update(move |p| p.coins = 1000 + i).await.unwrap(); // never saved explicitly
        }
        signal_self(signal);
    });
    // Returns once the supervisor has shut down and stopped the System.
    system.run().expect("system stopped cleanly");
}

fn check(path: &std::path::Path) {
    let b = SledBackend::open(path).expect("reopen");
    for i in 0..50u64 {
        let rec = Record::decode(&b.get(&storage_key("profiles", &format!("k{i}"))).unwrap().unwrap()).unwrap();
        assert!(rec.lease.is_none(), "k{i} still leased");
        let v: serde_json::Value = serde_json::from_slice(&rec.data).unwrap();
        assert_eq!(v["coins"], 1000 + i);
    }
}

#[test]
fn sigterm_and_sigint_save_and_release_everything_before_the_system_stops() {
    let dir = tempfile::tempdir().unwrap();
    let term = dir.path().join("term");
    run_until_signal(&term, "-TERM");
    check(&term);
    let int = dir.path().join("int");
    run_until_signal(&int, "-INT");
    check(&int);
}
