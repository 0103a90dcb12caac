//! PostgreSQL's primary dies under save load and a failover manager
//! (pg_auto_failover) promotes its synchronous standby: the engine, given
//! both hosts and `target_session_attrs=read-write`, follows the new
//! primary with all its connections (the listener too), and nothing
//! acknowledged is lost, no epoch goes back, every session continues or
//! ends with a reason. Prints the window without writes and the save
//! latencies around the failover.
//!
//! The cluster is private (`crate::common::pg_ha`); the test skips where
//! pg_auto_failover is not installed, and fails then under
//! `DATASTORER_REQUIRE_PG_FAILOVER=1`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::pg_ha::PgHa;
use crate::common::{template, Profile};
use datastorer::storage::postgres::PgBackend;
use datastorer::storage::{storage_key, Backend, Record};
use datastorer::{AcquirePolicy, CloseReason, Config, Datastorer, Error, Priority, StoreSpec};

const KEYS: usize = 16;

fn engine(backend: Arc<PgBackend>, owner: &str) -> Config {
    let mut c = crate::common::pg::engine_config(backend, owner);
    // A game server's lease (docs/deploying.md): it outlasts this failover.
    c.lease_ttl = Duration::from_secs(10);
    c.autosave_interval = Duration::from_secs(1);
    c.queue.retry.base_delay = Duration::from_millis(20);
    c.queue.retry.max_attempts = 12;
    c
}

/// One acknowledged save: when its answer came, how long it took, the value.
#[derive(Clone, Copy)]
struct Ack {
    at: Instant,
    took: Duration,
    key: usize,
}

/// What one session's writer saw.
#[derive(Default)]
struct Writer {
    acked: Option<u64>,
    attempted: u64,
    failed: u64,
    closed: Option<CloseReason>,
}

/// Changes and saves `s` in a loop until `stop`: every value it writes is
/// larger than the last, so the stored one shows which save landed last.
async fn write_until(
    i: usize,
    s: datastorer::Session<Profile>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> (datastorer::Session<Profile>, Writer) {
    let mut w = Writer::default();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some(reason) = s.close_reason() {
            w.closed = Some(reason);
            break;
        }
        n += 1;
        let v = n * 100 + i as u64;
        match s.update(move |p| p.coins = v).await {
            Ok(()) => w.attempted = v,
            // Unrenewed past its end while the database was away: the
            // holder refuses changes until a renewal gets through.
            Err(Error::LeaseExpired { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(Error::SessionClosed { .. }) => continue,
            Err(e) => panic!("k{i}: update: {e}"),
        }
        let started = Instant::now();
        match s.save(Priority::Normal).await {
            Ok(_) => {
                w.acked = Some(v);
                acks.lock().unwrap().push(Ack { at: Instant::now(), took: started.elapsed(), key: i });
            }
            Err(Error::Storage { .. }) => {
                w.failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) if s.close_reason().is_some() => w.closed = s.close_reason(),
            Err(e) => panic!("k{i}: save: {e}"),
        }
    }
    (s, w)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[actix_rt::test]
async fn the_primary_killed_under_save_load_fails_over_and_nothing_acknowledged_is_lost() {
    let Some(ha) = PgHa::start("the_primary_killed_under_save_load_fails_over") else { return };
    let config = ha.config();
    let ha = Arc::new(Mutex::new(ha));
    let backend = Arc::new(PgBackend::connect(config.clone()).expect("connect to the primary"));
    let ds = Datastorer::start(engine(backend.clone(), "a")).await.unwrap();
    let store = ds.store("profiles", StoreSpec::new(template())).unwrap();
    let mut epochs = Vec::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    let warm = Instant::now();
    for i in 0..KEYS {
        let s = store.open(format!("k{i}")).await.unwrap();
        epochs.push(s.lease().await.unwrap().epoch);
        writers.push(actix_rt::spawn(write_until(i, s, stop.clone(), acks.clone())));
    }

    // Some saves on the old primary, then it dies whole.
    while acks.lock().unwrap().len() < 20 * KEYS && warm.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked_before = acks.lock().unwrap().len();
    assert!(acked_before >= KEYS, "saves go through before the failover ({acked_before})");
    let killed = Instant::now();
    let promoted = {
        let ha = ha.clone();
        tokio::task::spawn_blocking(move || {
            let mut ha = ha.lock().unwrap();
            ha.kill("node1");
            ha.wait_promoted("node2", Duration::from_secs(120));
            Instant::now()
        })
        .await
        .unwrap()
    };

    // Every session saves again on the new primary, or has ended with a reason.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after: std::collections::HashSet<usize> =
            acks.lock().unwrap().iter().filter(|a| a.at > promoted).map(|a| a.key).collect();
        if after.len() == KEYS || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut sessions = Vec::new();
    let mut outcome = Vec::new();
    for w in writers {
        let (s, w) = w.await.unwrap();
        sessions.push(s);
        outcome.push(w);
    }
    let acks = acks.lock().unwrap().clone();
    for (i, w) in outcome.iter().enumerate() {
        let resumed = acks.iter().any(|a| a.key == i && a.at > promoted);
        assert!(
            resumed || w.closed.is_some(),
            "k{i} neither saves after the failover nor has ended with a reason ({} failed saves)",
            w.failed
        );
    }

    // The listener follows the new primary too: another process asks for a
    // key, and the holder hears it and hands it over with its last change.
    let b = Datastorer::start(engine(Arc::new(PgBackend::connect(config.clone()).unwrap()), "b")).await.unwrap();
    let asked = Instant::now();
    let taken = b
        .store("profiles", StoreSpec::new(template()))
        .unwrap()
        .open("k0")
        .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(30) })
        .await
        .expect("handed over after the failover");
    assert_eq!(sessions[0].close_reason(), Some(CloseReason::ReleaseRequested), "by notice, on the new primary");
    assert!(asked.elapsed() < Duration::from_secs(8), "by notice, not by the lease's end: {:?}", asked.elapsed());
    assert_eq!(taken.read(|p| p.coins).await.unwrap(), outcome[0].attempted, "with the holder's last change");
    assert!(taken.lease().await.unwrap().epoch > epochs[0], "the epoch only goes up");
    drop(taken);
    assert!(b.shutdown().await.is_clean());
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report:?}");

    // Read back from the new primary alone.
    let direct = PgBackend::connect(config).unwrap();
    for (i, w) in outcome.iter().enumerate() {
        let rec =
            Record::decode(&direct.get(&storage_key("profiles", &format!("k{i}"))).unwrap().expect("stored")).unwrap();
        let stored = serde_json::from_slice::<Profile>(&rec.data).unwrap().coins;
        let acked = w.acked.expect("saved at least once");
        assert!(stored >= acked, "k{i}: the acknowledged {acked} is lost (stored {stored})");
        assert!(stored <= w.attempted, "k{i}: stored {stored} was never written");
        assert!(rec.header.epoch >= epochs[i], "k{i}: epoch went back from {} to {}", epochs[i], rec.header.epoch);
    }

    // The figures.
    let mut times: Vec<Instant> = acks.iter().map(|a| a.at).collect();
    times.sort();
    let (window, resumed) = times.windows(2).map(|w| (w[1] - w[0], w[1])).max().unwrap_or((Duration::ZERO, killed));
    let latencies = |from: Instant, to: Instant| {
        acks.iter().filter(|a| a.at >= from && a.at <= to).map(|a| a.took).collect::<Vec<_>>()
    };
    let before = latencies(warm, killed);
    let around = latencies(killed - Duration::from_secs(1), resumed + Duration::from_secs(1));
    println!(
        "pg failover ({KEYS} sessions saving): killed → promoted {:.2} s, longest time without an acknowledged save {:.2} s \
         (writes resumed {:.2} s after the kill); save latency before ({} saves) p50 {:.1} ms p99 {:.1} ms; \
         from 1 s before the kill to 1 s after writes resumed ({} saves) p50 {:.1} ms p99 {:.0} ms max {:.0} ms; {} saves acknowledged in all",
        (promoted - killed).as_secs_f64(),
        window.as_secs_f64(),
        resumed.saturating_duration_since(killed).as_secs_f64(),
        before.len(),
        percentile(before.clone(), 0.5).as_secs_f64() * 1e3,
        percentile(before, 0.99).as_secs_f64() * 1e3,
        around.len(),
        percentile(around.clone(), 0.5).as_secs_f64() * 1e3,
        percentile(around.clone(), 0.99).as_secs_f64() * 1e3,
        percentile(around, 1.0).as_secs_f64() * 1e3,
        acks.len(),
    );
}
