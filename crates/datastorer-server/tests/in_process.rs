//! The server runs inside the test process (mini-redis's pattern): `run`
//! takes a listener bound to port 0 and a shutdown future, so an HTTP test
//! needs no child process and no signal. `common::server::Server::start`
//! does this for every HTTP test; process tests remain only where the test
//! is about processes (signals, kill -9, THP, the binary's log).

mod common;

use common::server::{key_url, open, token_of, Server};
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, Record};
use serde_json::{json, Value};

#[tokio::test]
async fn a_server_in_the_test_process_stops_when_its_shutdown_future_resolves_and_reports_what_it_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start(tmp.path(), &["--workers", "1"]);
    let c = reqwest::Client::new();
    let (_, opened) = open(&c, &s, "profiles", "7", json!({})).await;
    let r = c
        .patch(s.url(&format!("{}/session/data", key_url("profiles", "7"))))
        .header("Lease-Token", token_of(&opened))
        .json(&json!({"coins": 3}))
        .send();
    assert_eq!(r.await.unwrap().status(), reqwest::StatusCode::OK);

    // Unsaved at shutdown: the shutdown saves and releases it, and once
    // `run` has returned the engine has let go of the data directory.
    let exit = s.stop();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(exit.report().release.released, 1);
    let stored = SledBackend::open(s.dir.join("data")).unwrap().get(&storage_key("profiles", "7")).unwrap().unwrap();
    let record = Record::decode(&stored).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&record.data).unwrap(), json!({"coins": 3}));
    assert!(record.lease.is_none(), "released");
}
