//! The server runs inside the test process (mini-redis's pattern): `run`
//! takes a listener bound to port 0 and a shutdown future, so an HTTP test
//! needs no child process and no signal; process tests remain only where
//! the test is about processes (signals, kill -9, THP, several servers).

use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, Record};
use datastorer_server::config::{ServerConfig, Settings};
use serde_json::{json, Value};

#[tokio::test]
async fn a_server_in_the_test_process_serves_and_stops_when_its_shutdown_future_resolves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let overrides = Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data.clone()),
        workers: Some(1),
        ..Default::default()
    };
    let config = ServerConfig::load(&overrides).unwrap();
    let listener = datastorer_server::bind(&config).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The server's own actix System on a thread of the test process: when
    // `run` returns and the System ends, the engine lets go of the data
    // directory, which the test then reads.
    let server = std::thread::spawn(move || {
        actix_rt::System::new().block_on(datastorer_server::run(config, listener, async move {
            let _ = stopped.await;
            "the test"
        }))
    });

    let c = reqwest::Client::new();
    let key = format!("{base}/v1/stores/profiles/keys/7");
    let opened: Value = c.post(format!("{key}/session")).json(&json!({})).send().await.unwrap().json().await.unwrap();
    let token = opened["lease_token"].as_str().unwrap().to_owned();
    let r = c.patch(format!("{key}/session/data")).header("Lease-Token", &token).json(&json!({"coins": 3})).send();
    assert_eq!(r.await.unwrap().status(), reqwest::StatusCode::OK);

    // Unsaved at shutdown: the shutdown saves and releases it.
    stop.send(()).unwrap();
    let report = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.release.released, 1);
    let stored = SledBackend::open(&data).unwrap().get(&storage_key("profiles", "7")).unwrap().unwrap();
    let record = Record::decode(&stored).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&record.data).unwrap(), json!({"coins": 3}));
    assert!(record.lease.is_none(), "released");
}
