//! The queue: group commit, backoff on transient errors, no retry on
//! permanent ones, emergency lane first without starving the normal lane,
//! rate budgets, flushing the queue, depth and draining.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use datastorer::storage::memory::{MemoryBackend, OpKind};
use datastorer::storage::storage_key;
use datastorer::{Budget, Datastorer, Error, ErrorKind, Priority, Session};
use tokio::time::Instant;

async fn open_many(ds: &Datastorer, keys: &[&str]) -> Vec<Session<Profile>> {
    let store = profiles(ds);
    let mut out = Vec::new();
    for k in keys {
        out.push(store.open(*k).await.unwrap());
    }
    out
}

/// Saves `n` dirty keys at once under the given batch bounds; answers the
/// write batches and flushes they took.
async fn batches_for_saves(n: usize, max_batch: usize, max_batch_bytes: usize) -> (u64, u64) {
    let backend = Arc::new(MemoryBackend::new());
    let mut cfg = config(&backend, "a");
    cfg.queue.max_batch = max_batch;
    cfg.queue.max_batch_bytes = max_batch_bytes;
    let ds = Datastorer::start(cfg).await.unwrap();
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sessions = open_many(&ds, &refs).await;
    for s in &sessions {
        s.update(|p| p.coins += 1).await.unwrap();
    }
    let before = backend.stats();
    let receipts: Vec<_> = sessions.iter().map(|s| s.save(Priority::Normal)).collect();
    for r in receipts {
        r.await.unwrap();
    }
    let after = backend.stats();
    assert_eq!(after.writes_applied - before.writes_applied, n as u64);
    (after.write_batches - before.write_batches, after.flushes - before.flushes)
}

async fn batches_for_ten_saves(max_batch: usize, max_batch_bytes: usize) -> u64 {
    batches_for_saves(10, max_batch, max_batch_bytes).await.0
}

#[actix_rt::test]
async fn saves_of_many_keys_share_one_batch_and_one_flush() {
    tokio::time::pause();
    let defaults = datastorer::QueueConfig::default();
    let (batches, flushes) = batches_for_saves(200, defaults.max_batch, defaults.max_batch_bytes).await;
    println!("group commit: 200 keys saved in {batches} batches, {flushes} flushes");
    assert!(batches <= 4, "{batches} batches for 200 keys");
    assert_eq!(flushes, batches);
}

#[actix_rt::test]
async fn batches_are_bounded_by_request_count_and_by_bytes() {
    tokio::time::pause();
    assert_eq!(batches_for_ten_saves(1024, 1 << 20).await, 1, "one batch when nothing bounds it");
    assert_eq!(batches_for_ten_saves(3, 1 << 20).await, 4, "max_batch 3: 3 + 3 + 3 + 1");
    // Every record is larger than one byte: each goes alone, none is refused.
    assert_eq!(batches_for_ten_saves(1024, 1).await, 10, "max_batch_bytes 1: one write per batch");
}

#[actix_rt::test]
async fn transient_errors_are_retried_with_capped_exponential_backoff() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await; // base delay 10 ms, jitter 0.5
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 1).await.unwrap();
    let skey = storage_key("profiles", "k");
    backend.fail_next(OpKind::Write, Some(&skey), 3, ErrorKind::Transient);
    let started = Instant::now();
    s.save(Priority::Normal).await.unwrap();
    let waited = started.elapsed();
    // Three retries: 10, 20, 40 ms before jitter (±50 %).
    assert!(waited >= Duration::from_millis(35) && waited <= Duration::from_millis(106), "{waited:?}");
    let attempts = backend.written_keys().iter().filter(|k| **k == skey).count();
    assert_eq!(attempts, 1 + 4, "lease write + 4 attempts of the save");
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 1);

    // Throttling errors are retried the same way.
    s.update(|p| p.coins = 2).await.unwrap();
    backend.fail_next(OpKind::Write, Some(&skey), 2, ErrorKind::Throttled);
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 2);
}

#[actix_rt::test]
async fn retries_stop_at_max_attempts_and_the_delay_is_capped() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let mut c = config(&backend, "a");
    c.queue.retry.max_attempts = 6;
    c.queue.retry.max_exponent = 2; // delays 10, 20, 40, 40, 40 ms before jitter
    let ds = Datastorer::start(c).await.unwrap();
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 1).await.unwrap();
    backend.fail_next(OpKind::Write, None, 100, ErrorKind::Transient);
    let started = Instant::now();
    match s.save(Priority::Normal).await {
        Err(Error::Storage { attempts, operation, at, .. }) => {
            assert_eq!(attempts, 6);
            assert_eq!(operation, "write");
            assert_eq!(at.key, "k");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited <= Duration::from_millis(150 * 3 / 2 + 1), "capped: {waited:?}");
    assert!(s.close_reason().is_none(), "session stays open, data kept in memory");
    backend.clear_faults();
    s.save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "k")["coins"], 1);
}

#[actix_rt::test]
async fn permanent_errors_fail_at_once_without_retry() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 1).await.unwrap();
    let writes_before = backend.written_keys().len();
    backend.fail_next(OpKind::Write, None, 1, ErrorKind::Permanent);
    let started = Instant::now();
    let err = s.save(Priority::Normal).await.unwrap_err();
    assert!(matches!(err, Error::Storage { attempts: 1, .. }), "{err:?}");
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff");
    assert_eq!(backend.written_keys().len(), writes_before + 1);
}

/// A config whose write budget lets one request through per second.
async fn throttled_node(backend: &Arc<MemoryBackend>, normal_share: usize) -> Datastorer {
    let mut c = config(backend, "a");
    c.queue.budgets.write = Some(Budget { per_second: 1.0, burst: 1.0 });
    c.queue.normal_share = normal_share;
    Datastorer::start(c).await.unwrap()
}

fn order_after(backend: &MemoryBackend, skip: usize) -> Vec<String> {
    backend
        .written_keys()
        .into_iter()
        .skip(skip)
        .map(|k| datastorer::storage::split_storage_key(&k).unwrap().1)
        .collect()
}

#[actix_rt::test]
async fn emergency_requests_go_first() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = throttled_node(&backend, 8).await;
    let s = open_many(&ds, &["n1", "n2", "n3", "e"]).await;
    for x in &s {
        x.update(|p| p.coins = 1).await.unwrap();
    }
    let skip = backend.written_keys().len();
    let r: Vec<_> = vec![
        s[0].save(Priority::Normal),
        s[1].save(Priority::Normal),
        s[2].save(Priority::Normal),
        s[3].save(Priority::Emergency),
    ];
    for x in r {
        x.await.unwrap();
    }
    assert_eq!(order_after(&backend, skip), vec!["e", "n1", "n2", "n3"]);
}

#[actix_rt::test]
async fn the_normal_lane_is_not_starved_by_emergency_traffic() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = throttled_node(&backend, 2).await;
    let s = open_many(&ds, &["n0", "e0", "e1", "e2", "e3"]).await;
    for x in &s {
        x.update(|p| p.coins = 1).await.unwrap();
    }
    let skip = backend.written_keys().len();
    let mut r = vec![s[0].save(Priority::Normal)];
    r.extend(s[1..].iter().map(|x| x.save(Priority::Emergency)));
    for x in r {
        x.await.unwrap();
    }
    // After two batches without it, the normal lane is served first.
    assert_eq!(order_after(&backend, skip), vec!["e0", "e1", "n0", "e2", "e3"]);
}

#[actix_rt::test]
async fn rate_budgets_pace_requests() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = throttled_node(&backend, 8).await;
    let s = open_many(&ds, &["a", "b", "c", "d", "e", "f"]).await;
    for x in &s {
        x.update(|p| p.coins = 1).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // bucket refills to its burst of 1
    let started = Instant::now();
    let r: Vec<_> = s.iter().map(|x| x.save(Priority::Normal)).collect();
    for x in r {
        x.await.unwrap();
    }
    let took = started.elapsed();
    // One at once (burst), five more at one per second.
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(6), "{took:?}");
}

#[actix_rt::test]
async fn flush_queue_cancels_normal_requests_and_emergency_flush_cancels_all() {
    tokio::time::pause();
    let backend = Arc::new(MemoryBackend::new());
    let ds = throttled_node(&backend, 8).await;
    let s = open_many(&ds, &["a", "b", "c"]).await;
    for x in &s {
        x.update(|p| p.coins = 1).await.unwrap();
    }
    // The bucket is empty after the opens: these wait in the queue.
    let normal_a = s[0].save(Priority::Normal);
    let normal_b = s[1].save(Priority::Normal);
    let urgent = s[2].save(Priority::Emergency);
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let depth = ds.queue_depth().await;
    assert_eq!((depth.normal, depth.emergency), (2, 1), "{depth:?}");

    assert_eq!(ds.flush_queue().await, 2);
    assert!(matches!(normal_a.await, Err(Error::Cancelled { ref at, .. }) if at.key == "a"));
    assert!(matches!(normal_b.await, Err(Error::Cancelled { .. })));
    urgent.await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "c")["coins"], 1);
    // Cancelled saves leave their keys dirty: a later save writes them.
    s[0].save(Priority::Normal).await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "a")["coins"], 1);

    let b_again = s[1].save(Priority::Emergency);
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(ds.emergency_flush_queue().await, 1);
    assert!(matches!(b_again.await, Err(Error::Cancelled { .. })));
    ds.wait_for_empty_queue().await;
    assert_eq!(ds.queue_depth().await.total(), 0);
}

/// A node whose queue runs on its own thread with the pipelined flusher
/// (what the sled backend gets), over an in-memory backend.
async fn pipelined_node(backend: &Arc<MemoryBackend>) -> Datastorer {
    pipelined_node_with_max_batch(backend, datastorer::QueueConfig::default().max_batch).await
}

async fn pipelined_node_with_max_batch(backend: &Arc<MemoryBackend>, max_batch: usize) -> Datastorer {
    let mut cfg = config(backend, "a");
    cfg.queue.own_thread = Some(true);
    cfg.queue.max_batch = max_batch;
    Datastorer::start(cfg).await.unwrap()
}

/// Waits for a condition another thread brings about (real time: the queue
/// runs on its own thread, out of reach of a paused clock).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_until_async(what, || std::future::ready(cond())).await
}

/// `wait_until` for a condition that has to be awaited.
async fn wait_until_async<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `fut` is still pending after one poll.
async fn pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    tokio::select! {
        biased;
        _ = fut => false,
        _ = std::future::ready(()) => true,
    }
}

/// Sets `key`'s coins and saves it with its flush held: answers the session
/// and the save's receipt once the flush is being held.
async fn save_with_held_flush(
    backend: &MemoryBackend,
    store: &datastorer::Store<Profile>,
    key: &str,
    coins: u64,
) -> (Session<Profile>, datastorer::SaveReceipt) {
    let session = store.open(key).await.unwrap();
    session.update(move |p| p.coins = coins).await.unwrap();
    backend.freeze(OpKind::Flush, None, 1);
    let receipt = session.save(Priority::Normal);
    wait_until("the flush to be held", || backend.frozen() == 1).await;
    (session, receipt)
}

/// A full batch (here one request is one) is worth applying beside a sync.
#[actix_rt::test]
async fn pipelined_a_full_batch_applies_while_a_flush_runs_and_receipts_wait_for_their_flush() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = pipelined_node_with_max_batch(&backend, 1).await;
    let store = profiles(&ds);
    let b = store.open("b").await.unwrap();
    let (_a, mut save_a) = save_with_held_flush(&backend, &store, "a", 1).await;
    assert_eq!(stored_json(&backend, "profiles", "a")["coins"], 1, "a's write is applied");
    assert!(pending(&mut save_a).await, "a's receipt resolved before its flush");

    b.update(|p| p.coins = 2).await.unwrap();
    let mut save_b = b.save(Priority::Normal);
    wait_until("b's write to be applied during a's flush", || stored_json(&backend, "profiles", "b")["coins"] == 2)
        .await;
    assert!(pending(&mut save_b).await, "b's receipt resolved before any flush covered it");
    let flushes_before = backend.stats().flushes;

    backend.unfreeze();
    assert!(save_a.await.unwrap().revision > 0);
    assert!(save_b.await.unwrap().revision > 0);
    assert!(backend.stats().flushes > flushes_before, "b was acknowledged without a flush after its write");
    let depth = ds.queue_depth().await;
    assert_eq!(depth.total(), 0, "{depth:?}");
}

/// Group commit by flush: a write that would not fill a batch waits for the
/// flush in flight and goes with what gathers meanwhile; a read needs no
/// flush and does not wait.
#[actix_rt::test]
async fn pipelined_a_small_write_waits_for_the_flush_in_flight_and_a_read_does_not() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = pipelined_node(&backend).await;
    let store = profiles(&ds);
    let c = store.open("c").await.unwrap();
    c.update(|p| p.coins = 3).await.unwrap();
    c.save(Priority::Normal).await.unwrap();
    let b = store.open("b").await.unwrap();
    let (_a, save_a) = save_with_held_flush(&backend, &store, "a", 1).await;

    b.update(|p| p.coins = 2).await.unwrap();
    let mut save_b = b.save(Priority::Normal);
    wait_until_async("b's write to reach the queue", || async { ds.queue_depth().await.normal == 1 }).await;
    let read = tokio::time::timeout(Duration::from_secs(20), store.inspect("c")).await;
    let record = read.expect("a read waited for the flush in flight").unwrap().expect("c is stored");
    let data: serde_json::Value = serde_json::from_slice(&record.data).unwrap();
    assert_eq!(data["coins"], 3);
    // More round trips through the queue's mailbox: b's write stays queued.
    for _ in 0..10 {
        assert_eq!(ds.queue_depth().await.normal, 1, "b's write left the lane while a's flush was out");
        assert_ne!(stored_json(&backend, "profiles", "b")["coins"], 2, "b's write was applied beside a's flush");
        assert!(pending(&mut save_b).await);
    }

    let flushes_before = backend.stats().flushes;
    backend.unfreeze();
    save_a.await.unwrap();
    save_b.await.unwrap();
    assert_eq!(stored_json(&backend, "profiles", "b")["coins"], 2);
    assert_eq!(backend.stats().flushes - flushes_before, 2, "a's flush, then b's own");
    let depth = ds.queue_depth().await;
    assert_eq!(depth.total(), 0, "{depth:?}");
}

/// Group commit by flush under races: sixteen sessions save at once, round
/// after round, on the pipelined queue with batches of four (so full
/// batches go beside a sync and small ones wait for it) while flushes are
/// held and some fail; every acknowledged save is what storage holds at
/// the end, and every refused one is retried by the next round's save.
#[actix_rt::test]
async fn pipelined_every_acknowledged_save_is_stored_while_flushes_are_held_and_fail() {
    let backend = Arc::new(MemoryBackend::new());
    let mut cfg = config(&backend, "a");
    cfg.queue.own_thread = Some(true);
    cfg.queue.max_batch = 4;
    cfg.queue.retry.base_delay = Duration::from_millis(1);
    let ds = Datastorer::start(cfg).await.unwrap();
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    for i in 0..16 {
        sessions.push(store.open(format!("k{i}").as_str()).await.unwrap());
    }
    let mut acknowledged = vec![None; sessions.len()];
    for round in 0..24u64 {
        let held = round % 4 == 1;
        if round % 3 == 0 {
            backend.fail_next(OpKind::Flush, None, 1, ErrorKind::Transient);
        }
        if held {
            backend.freeze(OpKind::Flush, None, 1);
        }
        let mut receipts = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            let coins = round * 100 + i as u64;
            s.update(move |p| p.coins = coins).await.unwrap();
            receipts.push((i, coins, s.save(Priority::Normal)));
        }
        if held {
            wait_until("a flush to be held", || backend.frozen() == 1).await;
            backend.unfreeze();
        }
        for (i, coins, receipt) in receipts {
            if receipt.await.is_ok() {
                acknowledged[i] = Some(coins);
            }
        }
    }
    // A storage crash now keeps only what was flushed: every acknowledged
    // save must be among it.
    backend.lose_unflushed();
    for (i, coins) in acknowledged.iter().enumerate() {
        let coins = coins.unwrap_or_else(|| panic!("k{i}: no save acknowledged in 24 rounds"));
        assert_eq!(stored_json(&backend, "profiles", &format!("k{i}"))["coins"], coins, "k{i}");
    }
    let depth = ds.queue_depth().await;
    assert_eq!(depth.total(), 0, "{depth:?}");
}

#[actix_rt::test]
async fn pipelined_scans_wait_until_every_applied_write_is_durable() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = pipelined_node(&backend).await;
    let store = profiles(&ds);
    let (_a, save_a) = save_with_held_flush(&backend, &store, "a", 5).await;

    let lister = store.clone();
    let mut list = Box::pin(async move { lister.list_keys("", None, 10).await });
    assert!(pending(&mut list).await);
    // The scan reaches the queue and waits there, behind the unflushed write.
    let mut queued = false;
    for _ in 0..20_000 {
        if ds.queue_depth().await.normal == 1 {
            queued = true;
            break;
        }
        assert!(pending(&mut list).await, "the scan ran while a write was not durable");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(queued, "the scan never reached the queue");
    // Several more round trips through the queue's mailbox: had the scan not
    // been held, the queue would have run it by now.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(ds.queue_depth().await.normal, 1, "the scan left the lane while a write was not durable");
        assert!(pending(&mut list).await, "the scan ran while a write was not durable");
    }

    backend.unfreeze();
    save_a.await.unwrap();
    assert_eq!(list.await.unwrap(), vec!["a"]);
}

#[actix_rt::test]
async fn pipelined_a_failed_flush_fails_no_save_it_can_retry() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = pipelined_node(&backend).await;
    let store = profiles(&ds);
    let a = store.open("a").await.unwrap();
    a.update(|p| p.coins = 9).await.unwrap();
    backend.fail_next(OpKind::Flush, None, 1, ErrorKind::Transient);
    let writes_before = backend.written_keys().len();
    let flushes_before = backend.stats().flushes;
    a.save(Priority::Normal).await.unwrap();
    // Written once, flush failed, written again (finding its own header), flushed.
    assert_eq!(backend.written_keys().len() - writes_before, 2);
    assert_eq!(backend.stats().flushes - flushes_before, 2);
    assert_eq!(stored_json(&backend, "profiles", "a")["coins"], 9);
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    assert!(stored(&backend, "profiles", "a").unwrap().lease.is_none());
}

/// The queue's thread follows from what the backend is: `Config::backend`
/// (how `datastorer serve` starts on sled) gets the same own thread as
/// `Config::sled`, because sled says it prefers one.
#[actix_rt::test]
async fn the_queue_gets_its_own_thread_from_the_backend_capability_not_the_config_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let sled = datastorer::storage::sled_backend::SledBackend::open(tmp.path()).unwrap();
    assert!(datastorer::storage::Backend::capabilities(&sled).prefers_own_thread);
    drop(sled);

    // The memory backend claiming a blocking disk backend's capabilities,
    // recording the thread every write runs on.
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = threads.clone();
    let backend = datastorer::testing::Intercepted::new(Arc::new(MemoryBackend::new()), move |_| {
        recorded.lock().unwrap().push(std::thread::current().id());
    })
    .claiming(datastorer::storage::Capabilities { prefers_own_thread: true, ..Default::default() });
    let mut cfg = datastorer::Config::backend(Arc::new(backend)).owner_id("a");
    cfg.handle_signals = false;
    let ds = Datastorer::start(cfg).await.unwrap();
    let s = profiles(&ds).open("k").await.unwrap();
    s.update(|p| p.coins = 1).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    let here = std::thread::current().id();
    let threads = threads.lock().unwrap().clone();
    assert!(!threads.is_empty() && threads.iter().all(|t| *t != here), "writes ran on the caller's thread");
    ds.shutdown().await;
}
