//! PostgreSQL failing under the engine: restarts (crash and fast) under
//! save load, an outage longer than the lease TTL, a lost COMMIT reply, a
//! read-only primary, a row lock held elsewhere, the listener killed just
//! before a release request. Each: no acknowledged save lost, no panic,
//! queues drain, sessions continue or close with a reason.
//!
//! Tests that stop or reconfigure the server use a private one
//! (`crate::common::pg_instance`), never the shared one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::pg::PgSchema;
use crate::common::pg_instance::PrivatePg;
use crate::common::proxy::Proxy;
use crate::common::{template, Profile};
use datastorer::storage::postgres::PgBackend;
use datastorer::storage::{storage_key, Backend, Record};
use datastorer::{AcquirePolicy, CloseReason, Config, Datastorer, Error, PostgresConfig, Priority, StoreSpec};

/// The shared test engine, with retries that outlast a restart of the
/// server and a slower autosave.
fn engine(backend: Arc<PgBackend>, owner: &str) -> Config {
    let mut c = crate::common::pg::engine_config(backend, owner);
    c.autosave_interval = Duration::from_secs(1);
    c.queue.retry.base_delay = Duration::from_millis(20);
    c.queue.retry.max_attempts = 30;
    c
}

fn profiles(ds: &Datastorer) -> datastorer::Store<Profile> {
    ds.store("profiles", StoreSpec::new(template())).expect("store")
}

fn coins(b: &dyn Backend, key: &str) -> u64 {
    let rec = Record::decode(&b.get(&storage_key("profiles", key)).unwrap().expect("stored")).unwrap();
    serde_json::from_slice::<Profile>(&rec.data).unwrap().coins
}

/// Saves `rounds` times on every session; `during(round)` runs between
/// rounds. Answers the last acknowledged value per key.
async fn save_rounds(
    sessions: &[datastorer::Session<Profile>],
    rounds: u64,
    mut during: impl FnMut(u64),
) -> Vec<Option<u64>> {
    let mut acked = vec![None; sessions.len()];
    for round in 1..=rounds {
        during(round);
        let mut receipts = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            let v = round * 1000 + i as u64;
            match s.update(move |p| p.coins = v).await {
                Ok(()) => receipts.push((i, v, s.save(Priority::Normal))),
                // Storage was out past the lease's end: the holder refuses
                // changes until a renewal gets through (another process
                // could own the key by now).
                Err(Error::LeaseExpired { .. }) => {}
                Err(e) => panic!("update: {e}"),
            }
        }
        for (i, v, r) in receipts {
            match r.await {
                Ok(_) => acked[i] = Some(v),
                Err(e) => assert!(matches!(e, Error::Storage { .. }), "only storage failures: {e}"),
            }
        }
    }
    acked
}

async fn restart_under_load(mode: &'static str) {
    let test = format!("postgres_restarted_{mode}");
    let Some(pg) = PrivatePg::start(&test, "") else { return };
    let backend = Arc::new(PgBackend::connect(pg.config()).expect("connect"));
    let ds = Datastorer::start(engine(backend.clone(), "a")).await.unwrap();
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    for i in 0..10 {
        sessions.push(store.open(format!("k{i}")).await.unwrap());
    }
    let pg = Arc::new(pg);
    let mut restarter = None;
    let acked = save_rounds(&sessions, 8, |round| {
        if round == 3 {
            let pg = pg.clone();
            restarter = Some(std::thread::spawn(move || {
                pg.stop(mode);
                pg.start_again();
            }));
        }
    })
    .await;
    restarter.take().unwrap().join().unwrap();
    // After the outage every session works again (the autosave pass renews
    // a lapsed lease: nobody else took the key): a change and a save go through.
    for (i, s) in sessions.iter().enumerate() {
        assert_eq!(s.close_reason(), None, "k{i} still open: nobody else took it");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match s.update(|p| p.name = "after".into()).await {
                Ok(()) => break,
                Err(Error::LeaseExpired { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("k{i} accepts changes after the outage: {e}"),
            }
        }
        s.save(Priority::Normal).await.unwrap_or_else(|e| panic!("k{i} saves after the outage: {e}"));
    }
    let direct = PgBackend::connect(pg.config()).unwrap();
    for (i, a) in acked.iter().enumerate() {
        let a = a.expect("the last round was acknowledged");
        assert_eq!(coins(&direct, &format!("k{i}")), a, "k{i}");
    }
    assert!(ds.shutdown().await.is_clean());
}

#[actix_rt::test]
async fn a_crash_restart_of_postgres_under_save_load_loses_no_acknowledged_save() {
    restart_under_load("immediate").await;
}

#[actix_rt::test]
async fn a_fast_restart_of_postgres_under_save_load_loses_no_acknowledged_save() {
    restart_under_load("fast").await;
}

/// Down for longer than the lease TTL: no other process can take a key
/// meanwhile (the database is down), but the holder cannot know that, so
/// it refuses changes once its lease lapsed unrenewed; when the database is
/// back, the autosave pass renews (the epochs are still the holders'), and
/// the sessions resume with nothing acknowledged lost.
#[actix_rt::test]
async fn postgres_down_longer_than_the_lease_ttl_then_everything_converges() {
    let Some(pg) = PrivatePg::start("postgres_down_longer_than_the_lease_ttl", "") else { return };
    let backend = Arc::new(PgBackend::connect(pg.config()).expect("connect"));
    let ds = Datastorer::start(engine(backend.clone(), "a")).await.unwrap();
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    for i in 0..5u64 {
        let s = store.open(format!("k{i}")).await.unwrap();
        s.update(move |p| p.coins = i).await.unwrap();
        s.save(Priority::Normal).await.unwrap();
        sessions.push(s);
    }
    pg.stop("fast");
    // The lease (3 s) lapses while nothing can reach storage.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for s in &sessions {
        match s.update(|p| p.coins += 100).await {
            Err(Error::LeaseExpired { .. }) => {}
            other => panic!("expected LeaseExpired while storage is down past the lease, got {other:?}"),
        }
    }
    pg.start_again();
    for (i, s) in sessions.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match s.update(|p| p.name = "after".into()).await {
                Ok(()) => break,
                Err(Error::LeaseExpired { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("k{i} accepts changes once renewed: {e}"),
            }
        }
        assert_eq!(s.close_reason(), None, "k{i} still open: nobody else took it");
        s.save(Priority::Normal).await.unwrap_or_else(|e| panic!("k{i} saves after the outage: {e}"));
    }
    let direct = PgBackend::connect(pg.config()).unwrap();
    for i in 0..5u64 {
        assert_eq!(coins(&direct, &format!("k{i}")), i, "the refused change never happened; the saved one stayed");
    }
    assert!(ds.shutdown().await.is_clean());
}

/// `url` (key=value form) with its host and port replaced by the proxy's:
/// a second `host=` would make a list of hosts, and the first would bypass
/// the proxy.
fn through(url: &str, port: u16) -> String {
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|kv| !(kv.starts_with("host=") || kv.starts_with("hostaddr=") || kv.starts_with("port=")))
        .collect();
    format!("{} host=127.0.0.1 port={port}", kept.join(" "))
}

/// The reply to a batch is lost with its connection after PostgreSQL
/// committed it. The retry finds the record already holding exactly its
/// bytes and reports the save as applied — not as a lost lease.
#[actix_rt::test]
async fn a_lost_commit_reply_is_resolved_as_applied() {
    let Some(pg) = PgSchema::new("a_lost_commit_reply_is_resolved_as_applied") else { return };
    let port: u16 = crate::common::pg::url()
        .split_whitespace()
        .find_map(|p| p.strip_prefix("port=").and_then(|v| v.parse().ok()))
        .unwrap_or(5432);
    let proxy = Proxy::start(port);
    let mut cfg = pg.config();
    cfg.url = through(&crate::common::pg::url(), proxy.port);
    let backend = Arc::new(PgBackend::connect(cfg).expect("connect through the proxy"));
    let ds = Datastorer::start(engine(backend, "a")).await.unwrap();
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 1).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    // Connection 0 is the writer (opened first, at start).
    proxy.lose_next_reply_on(0);
    s.update(|p| p.coins = 2).await.unwrap();
    let outcome = s.save(Priority::Normal).await.expect("resolved as applied");
    assert_eq!(proxy.lost(), 1, "the reply really was lost");
    assert_eq!(s.close_reason(), None, "not mistaken for a lost lease");
    let direct = pg.backend();
    assert_eq!(coins(&direct, "k"), 2);
    let rec = Record::decode(&direct.get(&storage_key("profiles", "k")).unwrap().unwrap()).unwrap();
    assert_eq!(rec.header.revision, outcome.revision);
    s.update(|p| p.coins = 3).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(coins(&direct, "k"), 3);
}

/// A primary that turned read-only (`25006`, as a standby after failover
/// until it is promoted) is retried on new connections until writable.
#[actix_rt::test]
async fn a_read_only_primary_is_retried_until_it_is_writable() {
    let Some(pg) = PrivatePg::start("a_read_only_primary_is_retried", "") else { return };
    let backend = Arc::new(PgBackend::connect(pg.config()).expect("connect"));
    let ds = Datastorer::start(engine(backend.clone(), "a")).await.unwrap();
    let s = profiles(&ds).open("k").await.unwrap();
    // ALTER SYSTEM cannot share a transaction: one statement per call.
    pg.sql("ALTER SYSTEM SET default_transaction_read_only = on");
    pg.sql("SELECT pg_reload_conf()");
    s.update(|p| p.coins = 9).await.unwrap();
    let receipt = s.save(Priority::Normal);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ds.queue_depth().await.retrying == 0 {
        assert!(Instant::now() < deadline, "the save was refused and is being retried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pg.sql("ALTER SYSTEM RESET default_transaction_read_only");
    pg.sql("SELECT pg_reload_conf()");
    receipt.await.expect("saved once the primary is writable");
    assert_eq!(coins(&*backend, "k"), 9);
    assert_eq!(s.close_reason(), None);
}

/// A row lock held elsewhere makes each attempt time out (`55P03`); once
/// the attempts are spent the receipt fails, the change stays in the
/// session, and the next save writes it.
#[actix_rt::test]
async fn a_row_lock_held_elsewhere_fails_the_receipt_but_keeps_the_change() {
    let Some(pg) = PgSchema::new("a_row_lock_held_elsewhere_fails_the_receipt") else { return };
    let mut cfg = pg.config();
    cfg.lock_timeout = Duration::from_millis(200);
    let backend = Arc::new(PgBackend::connect(cfg).unwrap());
    let mut ec = engine(backend.clone(), "a");
    ec.queue.retry.max_attempts = 3;
    let ds = Datastorer::start(ec).await.unwrap();
    let s = profiles(&ds).open("k").await.unwrap();
    let holder = crate::common::pg::OpenTransaction::begin(
        &pg.url,
        &format!("SELECT 1 FROM \"{}\".records WHERE key = 'k' FOR UPDATE", pg.schema),
    );
    s.update(|p| p.coins = 5).await.unwrap();
    match s.save(Priority::Normal).await {
        Err(Error::Storage { attempts, source, .. }) => {
            assert_eq!(attempts, 3);
            assert!(source.message.contains("55P03"), "{source}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    assert_eq!(s.close_reason(), None, "the session stays open");
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 5, "the change is kept in memory");
    holder.rollback();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(coins(&*backend, "k"), 5);
}

/// NOTIFY is lost while a listener is down. The holder's listener is
/// killed just before another process asks for the key: the requester asks
/// again on every poll round, the holder's listener reconnects, and the
/// hand-off completes — well before the lease would have lapsed.
#[actix_rt::test]
async fn a_release_request_survives_the_holders_listener_being_killed() {
    let Some(pg) = PgSchema::new("a_release_request_survives_the_holders_listener_being_killed") else { return };
    let ba = Arc::new(pg.backend());
    let id = ba.connection_id().to_owned();
    let mut ca = engine(ba, "a");
    ca.lease_ttl = Duration::from_secs(60);
    ca.autosave_interval = Duration::from_secs(20);
    let a = Datastorer::start(ca).await.unwrap();
    let b = Datastorer::start(engine(Arc::new(pg.backend()), "b")).await.unwrap();
    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.coins = 77).await.unwrap();
    pg.sql(&format!(
        "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE application_name = 'datastorer-listen-{id}'"
    ));
    let started = Instant::now();
    let taken = profiles(&b)
        .open("k")
        .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(30) })
        .await
        .expect("handed over");
    assert_eq!(taken.read(|p| p.coins).await.unwrap(), 77, "with the holder's unsaved change");
    assert_eq!(held.close_reason(), Some(CloseReason::ReleaseRequested));
    assert!(started.elapsed() < Duration::from_secs(20), "by notice after the reconnect, not by the 60 s lease");
}

#[test]
fn tls_is_required_for_a_remote_host() {
    let err = PgBackend::connect(PostgresConfig::new("postgres://app@db.example.com/game")).unwrap_err();
    assert!(err.message.contains("not on this machine and TLS is off"), "{err}");
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A certificate authority `NAME-ca.crt` in `dir`; with `server`, also a
/// server certificate it signed for localhost and 127.0.0.1
/// (`server.crt`, `server.key`).
fn authority(dir: &std::path::Path, name: &str, server: bool) -> std::path::PathBuf {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let (ca_crt, ca_key) = (p(&format!("{name}-ca.crt")), p(&format!("{name}-ca.key")));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
    ]);
    if server {
        let ext = p("server.ext");
        std::fs::write(&ext, "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &p("server.crt"),
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::path::PathBuf::from(ca_crt)
}

/// TLS with rustls: every connection (writer, reader, listener) is
/// encrypted, and a server whose certificate the configured roots do not
/// vouch for is refused at start.
#[actix_rt::test]
async fn tls_connections_verify_the_server_certificate() {
    let mut cert = None;
    let mut stranger = None;
    let Some(pg) = PrivatePg::start_with("tls_connections_verify_the_server_certificate", |dir| {
        cert = Some(authority(dir, "ours", true));
        stranger = Some(authority(dir, "stranger", false));
        format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        )
    }) else {
        return;
    };
    let tls = |root: &std::path::Path| {
        let mut c = PostgresConfig::new(format!("host=localhost port={} user=postgres dbname=postgres", pg.port));
        c.tls = datastorer::PostgresTls::Require;
        c.root_cert_path = Some(root.to_path_buf());
        c
    };
    let backend = Arc::new(PgBackend::connect(tls(cert.as_ref().unwrap())).expect("TLS connect"));
    let ds = Datastorer::start(engine(backend.clone(), "tls")).await.unwrap();
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 3).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    let encrypted = pg.sql(&format!(
        "SELECT count(*)::text FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND application_name LIKE 'datastorer-%-{}'",
        backend.connection_id()
    ));
    assert_eq!(encrypted, vec![Some("3".to_owned())], "writer, reader and listener all use TLS");
    let err = PgBackend::connect(tls(stranger.as_ref().unwrap())).unwrap_err();
    assert!(err.message.contains("cannot connect") && err.message.to_lowercase().contains("certificate"), "{err}");
}
