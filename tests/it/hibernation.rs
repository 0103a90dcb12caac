//! Idle keys hibernate: a loaded key whose document is saved and which gets
//! no message for `hibernate_after` gives up its actor and keeps only its
//! document, lease and header; the next message wakes it with the same
//! guarantees (lease renewal, fencing, autosave, shutdown, notices).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use datastorer::storage::memory::{MemoryBackend, OpKind};
use datastorer::{AcquirePolicy, CloseReason, Datastorer, ErrorKind, Priority};

/// Lets the actors and the queue finish what the last tick started.
async fn settle(ds: &Datastorer) {
    for _ in 0..16 {
        ds.wait_for_empty_queue().await;
        tokio::task::yield_now().await;
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `n` autosave ticks of the paused clock.
async fn ticks(ds: &Datastorer, n: u32) {
    for _ in 0..n {
        tokio::time::sleep(AUTOSAVE).await;
        settle(ds).await;
    }
}

#[actix_rt::test]
async fn an_idle_saved_key_hibernates_and_its_session_wakes_it_unseen() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let s = store.open("k").await.unwrap();
    s.update(|p| p.coins = 5).await.unwrap();

    // The first tick saves the change; the key has been busy, so it stays.
    ticks(&ds, 1).await;
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 5);
    assert_eq!(ds.hibernation().hibernating, 0);
    // Two idle ticks (the default 60 s at 30 s a tick): asleep.
    ticks(&ds, 2).await;
    let slept = ds.hibernation();
    assert_eq!((slept.hibernating, slept.fell_asleep, slept.woken), (1, 1, 0));
    // Still loaded, still holding its lease in storage.
    assert!(store.is_loaded("k"));
    assert_eq!(ds.loaded_count(), 1);
    assert_eq!(stored(&backend, "profiles", "k").unwrap().lease.unwrap().owner, "a");
    let revision = stored(&backend, "profiles", "k").unwrap().header.revision;

    // A read wakes it with the document it left.
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 5);
    let woke = ds.hibernation();
    assert_eq!((woke.hibernating, woke.woken), (0, 1));
    // Writes go on from the header it left: same epoch, next revision.
    s.update(|p| p.coins += 1).await.unwrap();
    let saved = s.save(Priority::Normal).await.unwrap();
    assert_eq!(saved.revision, revision + 1);
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 6);

    // Asleep again, a release wakes it and ends the session.
    ticks(&ds, 3).await;
    assert_eq!(ds.hibernation().hibernating, 1);
    s.release(Priority::Normal).await.unwrap();
    assert_eq!(s.close_reason(), Some(CloseReason::Released));
    let record = stored(&backend, "profiles", "k").unwrap();
    assert!(record.lease.is_none());
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 6);
    assert_eq!(ds.loaded_count(), 0);
    assert_eq!(ds.hibernation().hibernating, 0);
}

#[actix_rt::test]
async fn a_key_with_unsaved_changes_never_hibernates() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 7).await.unwrap();
    // Every write fails for a while: the change stays in memory, unsaved.
    backend.fail_next(OpKind::Write, None, 1_000, ErrorKind::Permanent);
    ticks(&ds, 6).await;
    assert_eq!(ds.hibernation().fell_asleep, 0, "a dirty key keeps its actor");
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 0);
    // Once storage takes writes again, the change is saved, then the key sleeps.
    backend.clear_faults();
    ticks(&ds, 4).await;
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 7);
    assert_eq!(ds.hibernation().hibernating, 1);
}

#[actix_rt::test]
async fn a_hibernating_key_keeps_its_lease_renewed_and_sleeps_again() {
    tokio::time::pause();
    // The engine's clock is the wall clock at its start plus the paused
    // clock's advance since.
    let (wall_at_start, started) = (wall_ms(), tokio::time::Instant::now());
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k").await.unwrap();
    ticks(&ds, 3).await;
    assert_eq!(ds.hibernation().hibernating, 1);
    let writes_before = backend.stats().writes_applied;
    let woken_before = ds.hibernation().woken;
    // Ten minutes of ticks, far past the 90 s lease.
    for _ in 0..20 {
        ticks(&ds, 1).await;
        let lease = stored(&backend, "profiles", "k").unwrap().lease.unwrap();
        let engine_now = wall_at_start + started.elapsed().as_millis() as u64;
        assert_eq!(lease.owner, "a");
        // More than the half that triggers a renewal left, less a second
        // for the wall clock that ran meanwhile.
        assert!(lease.expires_at_ms > engine_now + TTL.as_millis() as u64 / 2 - 30_000 - 1_000, "lease lapsing");
        assert_eq!(ds.hibernation().hibernating, 1, "asleep again after each renewal");
    }
    let renewals = backend.stats().writes_applied - writes_before;
    let wakes = ds.hibernation().woken - woken_before;
    // Renewed when less than half the lease is left: every other tick.
    assert!((9..=11).contains(&renewals), "{renewals} renewals in 20 ticks");
    assert_eq!(wakes, renewals, "each renewal woke the key once; nothing else did");
    // The session is whole: no change was lost, the lease never lapsed.
    s.update(|p| p.coins = 1).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 1);
}

#[actix_rt::test]
async fn shutdown_releases_hibernating_and_awake_keys_alike() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    for i in 0..40 {
        let s = store.open(format!("k{i}")).await.unwrap();
        let coins = i as u64;
        s.update(move |p| p.coins = coins).await.unwrap();
        sessions.push(s);
    }
    ticks(&ds, 3).await;
    assert_eq!(ds.hibernation().hibernating, 40);
    // Half of them change again: awake and dirty at shutdown.
    for s in sessions.iter().step_by(2) {
        s.update(|p| p.coins += 100).await.unwrap();
    }
    assert_eq!(ds.hibernation().hibernating, 20);
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.release.released, 40);
    for i in 0..40u64 {
        let key = format!("k{i}");
        let record = stored(&backend, "profiles", &key).unwrap();
        assert!(record.lease.is_none(), "{key} released");
        let want = if i % 2 == 0 { i + 100 } else { i };
        assert_eq!(stored_json(&backend, "profiles", &key)["coins"], want);
    }
    for s in &sessions {
        assert_eq!(s.close_reason(), Some(CloseReason::Shutdown));
    }
}

#[actix_rt::test]
async fn a_steal_ends_a_hibernating_session_with_the_reason() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let a = node(&backend, "a").await;
    let b = node(&backend, "b").await;
    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.coins = 3).await.unwrap();
    ticks(&a, 3).await;
    assert_eq!(a.hibernation().hibernating, 1);
    let taken = profiles(&b).open("k").policy(AcquirePolicy::Steal).await.unwrap();
    assert_eq!(taken.read(|p| p.coins).await.unwrap(), 3, "the saved change went with the key");
    let reason = tokio::time::timeout(Duration::from_secs(5), held.closed()).await.unwrap();
    assert_eq!(reason, CloseReason::Stolen);
    assert_eq!(a.loaded_count(), 0);
    assert!(held.update(|p| p.coins = 99).await.is_err(), "the old holder writes nothing");
    settle(&a).await;
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 3);
}

#[actix_rt::test]
async fn hibernation_off_keeps_every_key_awake() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let mut config = datastorer::testing::config(&backend, "a");
    config.hibernate_after = None;
    let ds = Datastorer::start(config).await.unwrap();
    let _s = profiles(&ds).open("k").await.unwrap();
    ticks(&ds, 10).await;
    assert_eq!(ds.hibernation(), datastorer::HibernationStats::default());
}

/// Updates from three other threads race the key falling asleep and
/// waking (it sleeps after one idle tick of 1 ms): every update lands, in
/// the order each thread sent it, and the key did sleep and wake under
/// them (each thread waits for it to fall asleep every 25 updates).
#[actix_rt::test]
async fn updates_racing_the_key_falling_asleep_are_all_kept() {
    let backend = Arc::new(MemoryBackend::new());
    let mut config = datastorer::testing::config(&backend, "a");
    config.autosave_interval = Duration::from_millis(1);
    config.hibernate_after = Some(Duration::ZERO);
    let ds = Datastorer::start(config).await.unwrap();
    let s = profiles(&ds).open("k").await.unwrap();
    const THREADS: usize = 3;
    const EACH: usize = 150;
    let mut done = Vec::new();
    let mut arbiters = Vec::new();
    for t in 0..THREADS {
        let arbiter = actix::Arbiter::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (s, ds) = (s.clone(), ds.clone());
        arbiter.spawn(async move {
            let mut rng = Rng(0x5eed ^ t as u64 | 1);
            for i in 0..EACH {
                let item = format!("{t}:{i}");
                s.update(move |p| {
                    p.coins += 1;
                    p.items.push(item);
                })
                .await
                .unwrap();
                if i % 25 == 24 {
                    // Waits for a signal (the key asleep), not for time.
                    while ds.hibernation().hibernating == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                } else if rng.below(3) == 0 {
                    tokio::time::sleep(Duration::from_micros(rng.below(1500))).await;
                }
            }
            let _ = tx.send(());
        });
        done.push(rx);
        arbiters.push(arbiter);
    }
    for rx in done {
        rx.await.unwrap();
    }
    let stats = ds.hibernation();
    eprintln!("racing updates: {stats:?}");
    assert!(stats.woken >= (EACH / 25) as u64, "{stats:?}");
    s.release(Priority::Normal).await.unwrap();
    let stored = stored_json(&backend, "profiles", "k");
    assert_eq!(stored["coins"], (THREADS * EACH) as u64);
    let items: Vec<String> = serde_json::from_value(stored["items"].clone()).unwrap();
    for t in 0..THREADS {
        let mine: Vec<&String> = items.iter().filter(|i| i.starts_with(&format!("{t}:"))).collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "thread {t}'s updates, each once, in order");
    }
    for a in arbiters {
        a.stop();
    }
}

/// Shutdown wakes sleeping keys to release them, a bounded number at a
/// time (more keys sleep here than it lets wake at once): every one is
/// released, none is left holding its lease.
#[actix_rt::test]
async fn shutdown_releases_more_sleeping_keys_than_it_wakes_at_once() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::unlogged());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    const KEYS: usize = 17_000;
    let mut pending = Vec::new();
    for i in 0..KEYS {
        pending.push(actix::spawn(store.open(format!("k{i}")).into_future()));
        if pending.len() == 1024 || i + 1 == KEYS {
            for p in pending.drain(..) {
                drop(p.await.unwrap().unwrap());
            }
        }
    }
    ticks(&ds, 3).await;
    assert_eq!(ds.hibernation().hibernating, KEYS);
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.release.released, KEYS);
    assert_eq!(ds.hibernation().woken, KEYS as u64);
    for i in (0..KEYS).step_by(997) {
        assert!(stored(&backend, "profiles", &format!("k{i}")).unwrap().lease.is_none());
    }
}
