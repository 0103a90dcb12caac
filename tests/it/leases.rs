//! Leases with fencing between two `Datastorer` instances ("servers") that
//! share one backend: every acquire policy, hand-off, steal, expiry,
//! renewal, and a stale holder's write rejected.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::storage::{storage_key, LeaseHolder, Record, RecordHeader};
use datastorer::{AcquirePolicy, CloseReason, Error, Priority};

#[actix_rt::test]
async fn fail_policy_reports_holder_and_expiry() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "server-a").await, node(&backend, "server-b").await);
    let held = profiles(&a).open("k").await.unwrap();
    let expiry = held.lease().await.unwrap().expires_at_ms;

    match profiles(&b).open("k").policy(AcquirePolicy::Fail).await {
        Err(Error::LeaseHeld { holder, expires_at_ms, at, .. }) => {
            assert_eq!(holder, "server-a");
            assert_eq!(expires_at_ms, Some(expiry));
            assert_eq!(at, datastorer::KeyId::new("profiles", "k"));
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    assert!(!profiles(&b).is_loaded("k"));
    // The holder is untouched.
    assert_eq!(held.lease().await.unwrap().epoch, 1);
    assert!(held.close_reason().is_none());
}

#[actix_rt::test]
async fn wait_policy_takes_the_key_once_the_holder_releases() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "server-a").await, node(&backend, "server-b").await);
    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.coins = 41).await.unwrap();

    let store_b = profiles(&b);
    let waiter = actix_rt::spawn(async move {
        let started = tokio::time::Instant::now();
        let s = store_b.open("k").policy(AcquirePolicy::Wait { timeout: Duration::from_secs(60) }).await;
        (s, started.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    held.release(Priority::Normal).await.unwrap();
    let (s, waited) = waiter.await.unwrap();
    let s = s.unwrap();
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 41, "hand-off carries the released state");
    assert_eq!(s.lease().await.unwrap().epoch, 2);
    // The release notice woke the waiter: it did not wait for the lease to lapse.
    assert!(waited < Duration::from_secs(6), "waited {waited:?}");
}

#[actix_rt::test]
async fn wait_policy_gives_up_after_its_timeout() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "server-a").await, node(&backend, "server-b").await);
    let _held = profiles(&a).open("k").await.unwrap();
    let started = tokio::time::Instant::now();
    let r = profiles(&b).open("k").policy(AcquirePolicy::Wait { timeout: Duration::from_secs(3) }).await;
    assert!(matches!(r, Err(Error::LeaseHeld { .. })), "{r:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(5), "{waited:?}");
}

#[actix_rt::test]
async fn request_release_makes_the_holder_save_and_hand_over() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "server-a").await, node(&backend, "server-b").await);
    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.coins = 500).await.unwrap(); // unsaved on A

    let started = tokio::time::Instant::now();
    let s = profiles(&b)
        .open("k")
        .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(30) })
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "hand-off took {:?}", started.elapsed());
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 500, "the holder saved before releasing");
    assert_eq!(held.closed().await, CloseReason::ReleaseRequested);
    assert!(!profiles(&a).is_loaded("k"));
    assert_eq!(s.lease().await.unwrap().owner, "server-b");
}

#[actix_rt::test]
async fn steal_takes_a_live_lease_and_the_old_holder_closes_without_writing() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "server-a").await, node(&backend, "server-b").await);
    let old = profiles(&a).open("k").await.unwrap();
    old.update(|p| p.coins = 1).await.unwrap();
    old.save(Priority::Normal).await.unwrap();
    old.update(|p| p.coins = 666).await.unwrap(); // never to be written

    let new = profiles(&b).open("k").policy(AcquirePolicy::Steal).await.unwrap();
    assert_eq!(new.lease().await.unwrap().epoch, 2);
    assert_eq!(old.closed().await, CloseReason::Stolen);
    assert!(old.save(Priority::Emergency).await.is_err());
    new.update(|p| p.coins += 10).await.unwrap();
    new.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 11);
    assert_eq!(stored(&backend, "profiles", "k").unwrap().lease.unwrap().owner, "server-b");
}

/// The notice of a steal can be lost (another process, a lagging bus): the
/// fencing check alone must stop the stale holder.
#[actix_rt::test]
async fn a_stale_holder_write_is_rejected_by_the_fencing_check() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let a = node(&backend, "server-a").await;
    let s = profiles(&a).open("k").await.unwrap();
    s.update(|p| p.coins = 5).await.unwrap();
    s.save(Priority::Normal).await.unwrap();

    // Another server steals without any notice reaching us: epoch 2.
    let skey = storage_key("profiles", "k");
    let mut rec = Record::decode(&backend.raw_get(&skey).unwrap()).unwrap();
    rec.header = RecordHeader { epoch: rec.header.epoch + 1, revision: rec.header.revision + 1 };
    rec.lease = Some(LeaseHolder { owner: "server-z".into(), expires_at_ms: u64::MAX });
    rec.data = br#"{"coins":12345,"name":"z","items":[]}"#.to_vec();
    let thief = rec.encode();
    backend.raw_put(&skey, &thief);

    s.update(|p| p.coins = 6).await.unwrap();
    match s.save(Priority::Normal).await {
        Err(Error::LeaseLost { at, .. }) => assert_eq!(at.key, "k"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert_eq!(s.closed().await, CloseReason::LeaseLost);
    assert_eq!(backend.raw_get(&skey).unwrap(), thief, "the newer holder's record is untouched");
    // Autosave and release of the dead session write nothing either.
    ds_quiet(&a).await;
    assert_eq!(backend.raw_get(&skey).unwrap(), thief);
}

async fn ds_quiet(ds: &datastorer::Datastorer) {
    ds.autosave_now().await;
    ds.wait_for_empty_queue().await;
}

fn dead_holder_record(coins: u64, expires_at_ms: u64) -> Record {
    Record {
        header: RecordHeader { epoch: 4, revision: 9 },
        data_version: 0,
        data: format!(r#"{{"coins":{coins},"name":"g"}}"#).into_bytes(),
        metadata: b"{}".to_vec(),
        user_ids: vec![],
        lease: Some(LeaseHolder { owner: "dead-server".into(), expires_at_ms }),
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

#[actix_rt::test]
async fn an_expired_lease_of_a_crashed_holder_can_be_taken() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let b = node(&backend, "server-b").await;
    // A server crashed while holding the key: its lease is on disk until it lapses.
    let expiry = now_ms() + TTL.as_millis() as u64;
    backend.raw_put(&storage_key("profiles", "k"), &dead_holder_record(8, expiry).encode());

    assert!(matches!(profiles(&b).open("k").policy(AcquirePolicy::Fail).await, Err(Error::LeaseHeld { .. })));
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    let s = profiles(&b).open("k").policy(AcquirePolicy::Fail).await.unwrap();
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 8);
    let lease = s.lease().await.unwrap();
    assert_eq!(lease.epoch, 5);
    assert!(lease.expires_at_ms > expiry);
}

#[actix_rt::test]
async fn wait_policy_takes_over_when_the_holder_lease_lapses() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let b = node(&backend, "server-b").await;
    // A holder that will never answer: a record leased to a dead server.
    let dead = dead_holder_record(3, now_ms() + 20_000);
    backend.raw_put(&storage_key("profiles", "ghost"), &dead.encode());
    let started = tokio::time::Instant::now();
    let s = profiles(&b)
        .open("ghost")
        .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(60) })
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(19) && waited <= Duration::from_secs(22), "{waited:?}");
    assert_eq!(s.lease().await.unwrap().epoch, 5);
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 3);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[actix_rt::test]
async fn autosave_renews_the_lease_so_it_never_lapses() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "server-a").await, node(&backend, "server-b").await);
    let s = profiles(&a).open("k").await.unwrap();
    let first = s.lease().await.unwrap().expires_at_ms;
    // Five lease lifetimes of idle time; only the autosave timer runs.
    for _ in 0..15 {
        tokio::time::sleep(AUTOSAVE).await;
    }
    let later = s.lease().await.unwrap();
    assert!(later.expires_at_ms > first + 4 * TTL.as_millis() as u64 / 2, "lease was renewed");
    assert_eq!(later.epoch, 1);
    assert!(matches!(profiles(&b).open("k").policy(AcquirePolicy::Fail).await, Err(Error::LeaseHeld { .. })));
    // Idle renewals are rare: one per half lease, not one per autosave tick.
    let writes = backend.stats().writes_applied;
    assert!(writes <= 1 + 15 * AUTOSAVE.as_secs() / (TTL.as_secs() / 2) + 1, "{writes} writes");
}

#[actix_rt::test]
async fn contention_on_one_key_never_yields_two_holders_at_one_epoch() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let a = node(&backend, "server-a").await;
    let b = node(&backend, "server-b").await;
    let mut epochs = Vec::new();
    for round in 0..6u64 {
        let (winner, loser) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let s = profiles(winner)
            .open("hot")
            .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(10) })
            .await
            .unwrap();
        assert!(!profiles(loser).is_loaded("hot"), "round {round}: both servers hold the key");
        let lease = s.lease().await.unwrap();
        epochs.push(lease.epoch);
        s.update(move |p| p.coins += round).await.unwrap();
    }
    assert_eq!(epochs, (1..=6).collect::<Vec<_>>(), "one acquisition, one new epoch");
    // Every hand-off saved: 0+1+2+3+4 reached the record before the last holder took over.
    let last = profiles(&b).get("hot").unwrap();
    assert_eq!(last.read(|p| p.coins).await.unwrap(), 15);
}

/// Regression: two instances that read the same record and race to take
/// its lease compute the same new header (epoch + 1, revision + 1). The
/// queue treats a conflict that shows a write's own new header as that
/// write having applied (a commit whose answer was lost), so the loser
/// believed it had won, and both held the key under one epoch: the loser's
/// next save overwrote the winner's lease. Ownership is now proven by the
/// stored bytes, which name the owner, not by the header alone.
#[actix_rt::test]
async fn two_instances_racing_for_one_key_never_both_win() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let (a, b) = (node(&backend, "server-a").await, node(&backend, "server-b").await);
    for round in 0..20 {
        let key = format!("race{round}");
        let (sa, sb) = (profiles(&a), profiles(&b));
        let (ra, rb) = tokio::join!(
            sa.open(key.clone()).policy(AcquirePolicy::Fail),
            sb.open(key.clone()).policy(AcquirePolicy::Fail)
        );
        let winners = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            winners,
            1,
            "round {round}: exactly one instance holds the key ({:?} / {:?})",
            ra.is_ok(),
            rb.is_ok()
        );
        let loser = if ra.is_ok() { &rb } else { &ra };
        assert!(matches!(loser, Err(Error::LeaseHeld { .. })), "{:?}", loser.as_ref().err());
        let stored = stored(&backend, "profiles", &key).unwrap();
        let winner = if ra.is_ok() { "server-a" } else { "server-b" };
        assert_eq!(stored.lease.map(|l| l.owner), Some(winner.to_owned()));
    }
}

/// A holder whose lease lapsed without a renewal reaching storage refuses
/// changes (another instance may own the key by now) until a renewal gets
/// through; then it carries on as before.
#[actix_rt::test]
async fn a_lease_that_lapsed_unrenewed_refuses_changes_until_renewed() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let a = node(&backend, "server-a").await;
    let s = profiles(&a).open("k").await.unwrap();
    s.update(|p| p.coins = 1).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    // Storage refuses every write for longer than the lease lasts.
    backend.fail_next(datastorer::storage::memory::OpKind::Write, None, u64::MAX, datastorer::ErrorKind::Permanent);
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    match s.update(|p| p.coins = 2).await {
        Err(Error::LeaseExpired { at, .. }) => assert_eq!(at.key, "k"),
        other => panic!("expected LeaseExpired, got {other:?}"),
    }
    assert_eq!(s.read(|p| p.coins).await.unwrap(), 1, "the refused change was not applied");
    assert_eq!(s.close_reason(), None, "still open: nobody else took the key");
    // Storage is back: the autosave pass renews, and changes are accepted.
    backend.clear_faults();
    a.autosave_now().await;
    a.wait_for_empty_queue().await;
    s.update(|p| p.coins = 3).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 3);
}

#[actix_rt::test]
async fn a_forged_steal_notice_does_not_close_a_live_session() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let a = node(&backend, "server-a").await;
    let held = profiles(&a).open("k").await.unwrap();
    let forged = datastorer::storage::Notice {
        store: "profiles".into(),
        key: "k".into(),
        kind: datastorer::storage::NoticeKind::Stolen { holder: "server-a".into(), by: "mallory".into() },
    };
    datastorer::testing::publish(datastorer::storage::Backend::notices(&*backend), forged);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(held.close_reason().is_none(), "checked against the record: still ours");
    held.update(|p| p.coins = 1).await.unwrap();
    held.save(Priority::Normal).await.unwrap();
}

/// A backend whose clock (which decides whether a lease may be taken)
/// trails the engine's by `lag_ms`, as PostgreSQL's can at the instant of
/// expiry.
fn lagging_clock(inner: Arc<MemoryBackend>, lag_ms: u64) -> datastorer::testing::Intercepted {
    datastorer::testing::Intercepted::new(inner, move |ops| {
        for op in ops {
            if let datastorer::storage::Precondition::Acquire { now_ms, .. } = &mut op.precondition {
                *now_ms = now_ms.saturating_sub(lag_ms);
            }
        }
    })
}

/// Regression (issue 22): when the backend refused an acquire because by
/// its clock the lease was still live (its clock a few ms behind the
/// engine's at the expiry), the waiter marked that record live for the
/// rest of the call and never asked again: a crashed holder's key stayed
/// locked for the waiter's whole timeout. Now the takeover comes within a
/// moment of the backend's clock passing the expiry.
#[actix_rt::test]
async fn a_waiting_open_takes_a_lapsed_lease_once_the_backend_clock_passes_its_expiry() {
    tokio::time::pause();
    let memory = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn datastorer::Backend> = Arc::new(lagging_clock(memory.clone(), 5));
    let mut config = datastorer::Config::backend(backend).owner_id("server-b");
    config.handle_signals = false;
    let b = datastorer::Datastorer::start(config).await.unwrap();
    for (i, policy) in [
        AcquirePolicy::Wait { timeout: Duration::from_secs(30) },
        AcquirePolicy::RequestRelease { timeout: Duration::from_secs(30) },
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("ghost-{i}");
        memory.raw_put(&storage_key("profiles", &key), &dead_holder_record(3, now_ms() + 2_000).encode());
        let started = tokio::time::Instant::now();
        let s = profiles(&b).open(key.as_str()).policy(policy).await.unwrap_or_else(|e| panic!("{policy:?}: {e:?}"));
        let waited = started.elapsed();
        assert!(waited <= Duration::from_millis(2_000 + 5 + 1_000), "{policy:?} waited {waited:?}");
        assert_eq!(s.read(|p| p.coins).await.unwrap(), 3);
        assert_eq!(s.lease().await.unwrap().epoch, 5);
    }
}
