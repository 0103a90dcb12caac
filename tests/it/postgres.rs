//! PostgreSQL as the backend several processes share: what the database
//! itself guarantees (fencing in the `WHERE` clause, leases by database
//! time, one live process per owner id, notices across connections), the
//! start-up refusals, and the engine running on it. Each test makes its
//! own schema and drops it; see `common/pg.rs` for when they skip.
//!
//! "Another process" is a second `PgBackend`: its own connections, own
//! listener and own advisory-lock session, exactly what a second OS
//! process has. `tests/pg_processes.rs` runs real processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::pg::{engine_config, PgSchema};
use crate::common::{template, Profile};
use datastorer::storage::postgres::PgBackend;
use datastorer::storage::{
    storage_key, store_prefix, Backend, ErrorKind, LeaseHolder, Notice, NoticeKind, Precondition, Record, RecordHeader,
    WriteOp, WriteOutcome,
};
use datastorer::{AcquirePolicy, CloseReason, Datastorer, Error, Priority, StorageConfig, StoreSpec};

fn record(owner: Option<&str>, expires_at_ms: u64, epoch: u64, revision: u64) -> Vec<u8> {
    Record {
        header: RecordHeader { epoch, revision },
        data_version: 0,
        data: br#"{"coins":1,"name":"x"}"#.to_vec(),
        metadata: b"{}".to_vec(),
        user_ids: vec!["u1".into()],
        lease: owner.map(|o| LeaseHolder { owner: o.into(), expires_at_ms }),
        created_at_ms: 1,
        updated_at_ms: 1,
    }
    .encode()
}

fn put(b: &dyn Backend, key: &[u8], value: Vec<u8>) {
    let r = b.write_batch(&[WriteOp::new(key.to_vec(), Precondition::Any, Some(value))]);
    assert_eq!(r, vec![Ok(WriteOutcome::Applied)]);
}

async fn recv(rx: &mut tokio::sync::broadcast::Receiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a notice in time").unwrap()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Polls `cond` until it holds or `limit` passes (real time: PostgreSQL
/// has no paused clock).
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until one writer connection of `b` waits on a row lock.
fn wait_for_a_writer_on_a_row_lock(pg: &PgSchema, b: &PgBackend, what: &str) {
    let writer_name = format!("datastorer-writer-{}", b.connection_id());
    eventually(Duration::from_secs(10), what, || {
        pg.sql(&format!(
            "SELECT count(*)::text FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = '{writer_name}'"
        )) == vec![Some("1".to_owned())]
    });
}

/// Why the re-read exists: a batch whose compare-and-swap waited on a row
/// lock re-checks its `WHERE` on the newest row, but the rest of its
/// statement sees the snapshot from before the wait. A header taken from
/// there would be the old one, and the queue would mistake a lost race for
/// its own applied write (or the reverse after a lost COMMIT reply). The
/// conflict must report the header that actually won.
#[test]
fn a_conflict_reports_the_header_that_won_not_the_statement_snapshot() {
    let Some(pg) = PgSchema::new("a_conflict_reports_the_header_that_won") else { return };
    let b = Arc::new(pg.backend());
    let k = storage_key("s", "k");
    put(&*b, &k, record(None, 0, 3, 18));
    let winner = record(None, 0, 3, 19);
    let hex: String = winner.iter().map(|x| format!("{x:02x}")).collect();

    // Another session takes the row lock and holds it until told to commit.
    let other = crate::common::pg::OpenTransaction::begin(
        &pg.url,
        &format!(
            "UPDATE \"{}\".records SET value = '\\x{hex}', revision = 19 WHERE store = 's' AND key = 'k'",
            pg.schema
        ),
    );
    let writer = {
        let b = b.clone();
        let k = k.clone();
        std::thread::spawn(move || {
            let op = WriteOp::new(
                k,
                Precondition::Header(RecordHeader { epoch: 3, revision: 18 }),
                Some(record(None, 0, 3, 19)),
            );
            b.write_batch(&[op])
        })
    };
    // Commit only once our batch is really waiting for the lock.
    wait_for_a_writer_on_a_row_lock(&pg, &b, "the batch waits on the row lock");
    other.commit();
    let outcome = writer.join().unwrap();
    assert_eq!(outcome, vec![Ok(WriteOutcome::Conflict { current: Some(RecordHeader { epoch: 3, revision: 19 }) })]);
    assert_eq!(b.get(&k).unwrap(), Some(winner));
}

/// Two writer connections (the default): a batch waiting on a row lock
/// holds one writer only, and a batch on other keys goes out on the second
/// meanwhile, committed while the first still waits. With one writer the
/// second batch waits behind the first.
#[test]
fn a_second_batch_commits_on_the_other_writer_while_the_first_waits() {
    let Some(pg) = PgSchema::new("a_second_batch_commits_on_the_other_writer") else { return };
    let b = Arc::new(pg.backend());
    assert_eq!(datastorer::storage::Backend::capabilities(&*b).parallel_writers, 2);
    let (held, free) = (storage_key("s", "held"), storage_key("s", "free"));
    put(&*b, &held, record(None, 0, 1, 1));
    let other = crate::common::pg::OpenTransaction::begin(
        &pg.url,
        &format!("UPDATE \"{}\".records SET revision = 1 WHERE store = 's' AND key = 'held'", pg.schema),
    );
    let waiting = {
        let (b, held) = (b.clone(), held.clone());
        std::thread::spawn(move || {
            let op = WriteOp::new(
                held,
                Precondition::Header(RecordHeader { epoch: 1, revision: 1 }),
                Some(record(None, 0, 1, 2)),
            );
            b.write_batch(&[op])
        })
    };
    wait_for_a_writer_on_a_row_lock(&pg, &b, "the first batch waits on the row lock");
    let beside = b.write_batch(&[WriteOp::new(free.clone(), Precondition::Absent, Some(record(None, 0, 1, 1)))]);
    assert_eq!(beside, vec![Ok(WriteOutcome::Applied)], "the batch beside the waiting one committed");
    assert!(!waiting.is_finished(), "the first batch still waits on its row lock");
    other.commit();
    assert_eq!(waiting.join().unwrap(), vec![Ok(WriteOutcome::Applied)]);
    assert_eq!(b.get(&free).unwrap(), Some(record(None, 0, 1, 1)));
    assert_eq!(b.get(&held).unwrap(), Some(record(None, 0, 1, 2)));
}

#[test]
fn epochs_beyond_bigint_are_refused_never_wrapped() {
    let Some(pg) = PgSchema::new("epochs_beyond_bigint_are_refused_never_wrapped") else { return };
    let b = pg.backend();
    let edge = storage_key("s", "edge");
    let max = i64::MAX as u64;
    // The largest epoch that fits is stored and compared exactly.
    put(&b, &edge, record(None, 0, max, max));
    let same = WriteOp::new(
        edge.clone(),
        Precondition::Header(RecordHeader { epoch: max, revision: max }),
        Some(record(None, 0, max, max)),
    );
    assert_eq!(b.write_batch(&[same]), vec![Ok(WriteOutcome::Applied)]);
    let over = WriteOp::new(storage_key("s", "over"), Precondition::Absent, Some(record(None, 0, max + 1, 1)));
    let fine = WriteOp::new(storage_key("s", "fine"), Precondition::Absent, Some(record(None, 0, 1, 1)));
    let results = b.write_batch(&[over, fine]);
    match &results[0] {
        Err(e) => assert!(e.kind == ErrorKind::Permanent && e.message.contains("bigint"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(results[1], Ok(WriteOutcome::Applied), "the other op of the batch is unaffected");
    assert_eq!(b.get(&storage_key("s", "over")).unwrap(), None);
}

#[test]
fn only_record_and_meta_keys_are_stored() {
    let Some(pg) = PgSchema::new("only_record_and_meta_keys_are_stored") else { return };
    let b = pg.backend();
    let odd = WriteOp::new(b"x\0y".to_vec(), Precondition::Any, Some(vec![1]));
    let meta = WriteOp::new(b"m\0name".to_vec(), Precondition::Absent, Some(vec![2]));
    let results = b.write_batch(&[odd, meta]);
    assert!(matches!(&results[0], Err(e) if e.kind == ErrorKind::Permanent), "{results:?}");
    assert_eq!(results[1], Ok(WriteOutcome::Applied));
    assert_eq!(b.get(b"m\0name").unwrap(), Some(vec![2]));
    assert!(b.get(b"x\0y").is_err());
}

/// Scans page through keys in byte order exactly as the memory backend
/// does, for keys with shared prefixes, non-ASCII characters and several
/// stores (the SQL range bounds are computed, not `LIKE`).
#[test]
fn scans_page_in_the_same_order_as_the_memory_backend() {
    let Some(pg) = PgSchema::new("scans_page_in_the_same_order_as_the_memory_backend") else { return };
    let b = pg.backend();
    let mem = datastorer::storage::memory::MemoryBackend::new();
    let alphabet = ["a", "b", "ab", "é", "日", "\u{10FFFF}", "z", "A", "_", "~"];
    let mut rng = crate::common::Rng(0x9e37_79b9_7f4a_7c15);
    let mut ops = Vec::new();
    for _ in 0..400 {
        let store = ["s", "s2", "t"][rng.below(3) as usize];
        let len = 1 + rng.below(4) as usize;
        let key: String = (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
        ops.push(WriteOp::new(storage_key(store, &key), Precondition::Any, Some(key.into_bytes())));
    }
    assert!(b.write_batch(&ops).iter().all(|r| r.is_ok()));
    assert!(mem.write_batch(&ops).iter().all(|r| r.is_ok()));
    let mut prefixes = vec![b"d\0".to_vec(), store_prefix("s"), store_prefix("t")];
    for p in ["a", "é", "日", "\u{10FFFF}", "ab"] {
        prefixes.push(storage_key("s", p));
    }
    for prefix in prefixes {
        for page in [1usize, 7, 1000] {
            let (mut after, mut got, mut want): (Option<Vec<u8>>, Vec<_>, Vec<_>) = (None, vec![], vec![]);
            loop {
                let p = b.scan_prefix(&prefix, after.as_deref(), page).unwrap();
                let m = mem.scan_prefix(&prefix, after.as_deref(), page).unwrap();
                assert_eq!(p, m, "prefix {prefix:?}, page {page}, after {after:?}");
                let Some((last, _)) = p.last() else { break };
                after = Some(last.clone());
                got.extend(p);
                want.extend(m);
            }
            assert_eq!(got, want);
        }
    }
}

/// A record whose lease is live by the database's clock is not handed to
/// another owner, whatever time the acquirer believes it is (here: ten
/// minutes ahead, as a host with a broken clock would).
#[test]
fn a_skewed_clock_cannot_take_a_live_lease() {
    let Some(pg) = PgSchema::new("a_skewed_clock_cannot_take_a_live_lease") else { return };
    let b = pg.backend();
    let k = storage_key("s", "k");
    let db_now = b.clock().expect("PostgreSQL has a clock").now_ms();
    let held = record(Some("a"), db_now + 60_000, 1, 1);
    put(&b, &k, held.clone());
    let skewed_now = wall_ms() + 600_000;
    let expected = RecordHeader { epoch: 1, revision: 1 };
    let take = WriteOp::new(
        k.clone(),
        Precondition::Acquire { expected, now_ms: skewed_now },
        Some(record(Some("b"), skewed_now + 90_000, 2, 2)),
    );
    assert_eq!(
        b.write_batch(std::slice::from_ref(&take)),
        vec![Ok(WriteOutcome::Conflict { current: Some(expected) })]
    );
    assert_eq!(b.get(&k).unwrap(), Some(held));
    // Once lapsed by the database's clock, the same acquisition applies.
    pg.sql("UPDATE $S.records SET lease_expires_ms = 0");
    assert_eq!(b.write_batch(&[take]), vec![Ok(WriteOutcome::Applied)]);
}

#[test]
fn an_owner_id_runs_in_one_live_process_at_a_time() {
    let Some(pg) = PgSchema::new("an_owner_id_runs_in_one_live_process_at_a_time") else { return };
    let a = pg.backend();
    let b = pg.backend();
    a.claim_owner("node-1").unwrap();
    let err = b.claim_owner("node-1").unwrap_err();
    assert!(err.kind == ErrorKind::Permanent && err.message.contains("in use by a live process"), "{err}");
    b.claim_owner("node-2").unwrap();
    // The claim ends with the process (its connections): then it is free.
    drop(a);
    eventually(Duration::from_secs(10), "the claim is free once its process is gone", || {
        b.claim_owner("node-1").is_ok()
    });
    let owners = pg.sql("SELECT string_agg(owner_id, ',' ORDER BY owner_id) FROM $S.owners");
    assert_eq!(owners, vec![Some("node-1,node-2".to_owned())]);
}

#[test]
fn notices_cross_processes_and_arrive_once() {
    let Some(pg) = PgSchema::new("notices_cross_processes_and_arrive_once") else { return };
    let a = pg.backend();
    let b = pg.backend();
    let mut at_a = a.notices().subscribe();
    let mut at_b = b.notices().subscribe();
    let n = |kind| Notice { store: "s".into(), key: "k".into(), kind };
    datastorer::testing::publish(
        a.notices(),
        n(NoticeKind::ReleaseRequested {
            holder: "x".into(),
            requester: "y".into(),
            because: datastorer::storage::EndKind::ReleaseRequested,
        }),
    );
    datastorer::testing::publish(a.notices(), n(NoticeKind::Saved { revision: 4 }));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        assert!(matches!(recv(&mut at_b).await.kind, NoticeKind::ReleaseRequested { .. }));
        assert_eq!(recv(&mut at_b).await.kind, NoticeKind::Saved { revision: 4 });
        // Locally: each once, in order; the echo from the database is not
        // delivered again.
        assert!(matches!(recv(&mut at_a).await.kind, NoticeKind::ReleaseRequested { .. }));
        assert_eq!(recv(&mut at_a).await.kind, NoticeKind::Saved { revision: 4 });
        datastorer::testing::publish(b.notices(), n(NoticeKind::Deleted));
        assert_eq!(recv(&mut at_a).await.kind, NoticeKind::Deleted, "no duplicate came before it");
    });
}

mod start_refusals {
    use super::*;

    fn refused(cfg: datastorer::PostgresConfig) -> String {
        let started = Instant::now();
        let err = PgBackend::connect(cfg).expect_err("must refuse");
        assert!(started.elapsed() < Duration::from_secs(30), "refused promptly, not after a hang");
        assert_eq!(err.kind, ErrorKind::Permanent);
        err.message
    }

    #[test]
    fn an_unreachable_server_is_named() {
        let Some(pg) = PgSchema::new("an_unreachable_server_is_named") else { return };
        let mut cfg = datastorer::PostgresConfig::new("host=127.0.0.1 port=1 user=postgres dbname=test");
        cfg.connect_timeout = Duration::from_secs(2);
        let m = refused(cfg);
        assert!(m.contains("cannot connect to PostgreSQL at 127.0.0.1:1"), "{m}");
        drop(pg);
    }

    #[test]
    fn wrong_credentials_are_named() {
        let Some(pg) = PgSchema::new("wrong_credentials_are_named") else { return };
        let m = refused(
            datastorer::PostgresConfig::new("host=127.0.0.1 user=no_such_role_ds dbname=test")
                .schema(pg.schema.clone()),
        );
        assert!(m.contains("no_such_role_ds"), "{m}");
    }

    #[test]
    fn a_database_that_is_not_utf8_is_refused() {
        let Some(pg) = PgSchema::new("a_database_that_is_not_utf8_is_refused") else { return };
        let db = format!("{}_ascii", pg.schema);
        pg.sql(&format!("CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"));
        let m = refused(datastorer::PostgresConfig::new(format!("host=127.0.0.1 user=postgres dbname={db}")));
        pg.sql(&format!("DROP DATABASE {db}"));
        assert!(m.contains("not UTF8"), "{m}");
    }

    #[test]
    fn asynchronous_commit_is_refused() {
        let Some(pg) = PgSchema::new("asynchronous_commit_is_refused") else { return };
        let role = format!("{}_async", pg.schema);
        pg.sql(&format!(
            "CREATE ROLE {role} LOGIN; ALTER ROLE {role} SET synchronous_commit = off; GRANT CREATE ON DATABASE test TO {role}"
        ));
        let url = format!("host=127.0.0.1 user={role} dbname=test");
        let m = refused(datastorer::PostgresConfig::new(url.clone()).schema(pg.schema.clone()));
        // Explicitly allowed (a throwaway database), it starts.
        let mut allowed = datastorer::PostgresConfig::new(url).schema(pg.schema.clone());
        allowed.allow_async_commit = true;
        let started = PgBackend::connect(allowed).map(drop);
        pg.sql(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE; REVOKE CREATE ON DATABASE test FROM {role}; DROP ROLE {role}",
            pg.schema
        ));
        assert!(m.contains("synchronous_commit is off"), "{m}");
        started.unwrap();
    }

    #[test]
    fn a_schema_from_a_newer_build_is_refused() {
        let Some(pg) = PgSchema::new("a_schema_from_a_newer_build_is_refused") else { return };
        drop(pg.backend());
        pg.sql("INSERT INTO $S.schema_version (version) VALUES (99)");
        let m = refused(pg.config());
        assert!(m.contains("version 99") && m.contains("newer"), "{m}");
    }

    #[test]
    fn starting_twice_on_one_schema_migrates_once() {
        let Some(pg) = PgSchema::new("starting_twice_on_one_schema_migrates_once") else { return };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = pg.config();
                std::thread::spawn(move || PgBackend::connect(c).map(drop))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(
            pg.sql("SELECT version::text FROM $S.schema_version ORDER BY version"),
            vec![Some("1".to_owned()), Some("2".to_owned()), Some("3".to_owned())],
            "each step recorded once"
        );
    }

    #[test]
    fn a_version_1_schema_is_migrated_keeping_its_records() {
        let Some(pg) = PgSchema::new("a_version_1_schema_is_migrated_keeping_its_records") else { return };
        let b = pg.backend();
        put(&b, &storage_key("profiles", "k"), record(None, 0, 3, 7));
        drop(b);
        // Put the schema back as version 1 left it.
        pg.sql("DELETE FROM $S.schema_version WHERE version >= 2");
        pg.sql("CREATE INDEX records_lease_owner ON $S.records (lease_owner) WHERE lease_owner IS NOT NULL");
        pg.sql("DROP TABLE $S.versions");
        pg.sql("DROP TABLE $S.user_keys");
        let b = pg.backend();
        let index = "SELECT (to_regclass('$S.records_lease_owner') IS NULL)::text";
        assert_eq!(pg.sql(index), vec![Some("true".to_owned())], "version 2 drops the unread index");
        let history =
            "SELECT (to_regclass('$S.versions') IS NOT NULL AND to_regclass('$S.user_keys') IS NOT NULL)::text";
        assert_eq!(pg.sql(history), vec![Some("true".to_owned())], "version 3 adds history");
        assert_eq!(pg.sql("SELECT max(version)::text FROM $S.schema_version"), vec![Some("3".to_owned())]);
        let got = b.get(&storage_key("profiles", "k")).unwrap().expect("record kept");
        assert_eq!(got, record(None, 0, 3, 7));
    }
}

// ---- The engine on PostgreSQL -------------------------------------------

async fn pg_node(pg: &PgSchema, owner: &str) -> (Datastorer, Arc<PgBackend>) {
    let backend = Arc::new(pg.backend());
    (Datastorer::start(engine_config(backend.clone(), owner)).await.expect("start"), backend)
}

fn profiles(ds: &Datastorer) -> datastorer::Store<Profile> {
    ds.store("profiles", StoreSpec::new(template())).expect("store")
}

fn stored(b: &dyn Backend, key: &str) -> Option<Record> {
    b.get(&storage_key("profiles", key)).unwrap().map(|v| Record::decode(&v).unwrap())
}

#[actix_rt::test]
async fn sessions_save_and_release_durably_on_postgres() {
    let Some(pg) = PgSchema::new("sessions_save_and_release_durably_on_postgres") else { return };
    let mut cfg = engine_config(Arc::new(pg.backend()), "unused");
    // Through Config's own PostgreSQL selection, as an embedder would.
    cfg.storage = StorageConfig::Postgres(pg.config());
    cfg.owner_id = "app-1".into();
    let ds = Datastorer::start(cfg).await.unwrap();
    let store = profiles(&ds);
    let s = store.open("p1").user_ids(["42"]).await.unwrap();
    s.update(|p| p.coins = 7).await.unwrap();
    let outcome = s.save(Priority::Normal).await.unwrap();
    let other = pg.backend();
    let rec = stored(&other, "p1").expect("durable on the database");
    assert_eq!(rec.header.revision, outcome.revision);
    assert_eq!(serde_json::from_slice::<Profile>(&rec.data).unwrap().coins, 7);
    assert_eq!(rec.lease.as_ref().map(|l| l.owner.as_str()), Some("app-1"));
    assert_eq!(pg.sql("SELECT array_to_string(user_ids, ',') FROM $S.records"), vec![Some("42".to_owned())]);
    s.update(|p| p.coins = 8).await.unwrap();
    s.release(Priority::Normal).await.unwrap();
    let rec = stored(&other, "p1").unwrap();
    assert_eq!(serde_json::from_slice::<Profile>(&rec.data).unwrap().coins, 8);
    assert!(rec.lease.is_none());
    assert_eq!(pg.sql("SELECT coalesce(lease_owner, 'none') FROM $S.records"), vec![Some("none".to_owned())]);
    ds.shutdown().await;
}

#[actix_rt::test]
async fn a_second_instance_under_a_live_owner_id_is_refused() {
    let Some(pg) = PgSchema::new("a_second_instance_under_a_live_owner_id_is_refused") else { return };
    let (_a, _) = pg_node(&pg, "same").await;
    let err = Datastorer::start(engine_config(Arc::new(pg.backend()), "same")).await.unwrap_err();
    assert!(matches!(&err, Error::Open(e) if e.message.contains("in use")), "{err}");
}

#[actix_rt::test]
async fn a_release_request_hands_the_holders_unsaved_update_across_processes() {
    let Some(pg) = PgSchema::new("a_release_request_hands_the_holders_unsaved_update") else { return };
    let (a, _) = pg_node(&pg, "a").await;
    let (b, _) = pg_node(&pg, "b").await;
    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.items.push("sword".into())).await.unwrap();
    let started = Instant::now();
    let taken = profiles(&b)
        .open("k")
        .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(10) })
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(taken.read(|p| p.items.clone()).await.unwrap(), vec!["sword".to_owned()]);
    assert_eq!(held.close_reason(), Some(CloseReason::ReleaseRequested));
    assert!(took < Duration::from_secs(3), "handed over by notice, not by lease expiry ({took:?})");
    assert!(taken.lease().await.unwrap().epoch > 1);
}

#[actix_rt::test]
async fn a_steal_closes_the_other_process_session_at_once() {
    let Some(pg) = PgSchema::new("a_steal_closes_the_other_process_session_at_once") else { return };
    let (a, _) = pg_node(&pg, "a").await;
    let (b, _) = pg_node(&pg, "b").await;
    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.coins = 1).await.unwrap();
    let thief = profiles(&b).open("k").policy(AcquirePolicy::Steal).await.unwrap();
    eventually_async(Duration::from_secs(5), "the holder learns of the steal", || {
        let r = held.close_reason();
        async move { r == Some(CloseReason::Stolen) }
    })
    .await;
    // The fenced-off holder can never write again.
    assert!(held.save(Priority::Normal).await.is_err());
    thief.update(|p| p.coins = 2).await.unwrap();
    thief.save(Priority::Normal).await.unwrap();
}

#[actix_rt::test]
async fn waiting_and_failing_opens_respect_a_live_lease_in_another_process() {
    let Some(pg) = PgSchema::new("waiting_and_failing_opens_respect_a_live_lease") else { return };
    let (a, _) = pg_node(&pg, "a").await;
    let (b, _) = pg_node(&pg, "b").await;
    let held = profiles(&a).open("k").await.unwrap();
    match profiles(&b).open("k").policy(AcquirePolicy::Fail).await {
        Err(Error::LeaseHeld { holder, .. }) => assert_eq!(holder, "a"),
        other => panic!("expected LeaseHeld, got {:?}", other.map(|_| ())),
    }
    let waiting = {
        let store = profiles(&b);
        actix::spawn(
            async move { store.open("k").policy(AcquirePolicy::Wait { timeout: Duration::from_secs(10) }).await },
        )
    };
    held.release(Priority::Normal).await.unwrap();
    let s = waiting.await.unwrap().expect("opened once released");
    assert_eq!(s.lease().await.unwrap().epoch, 2);
}

#[actix_rt::test]
async fn autosave_and_shutdown_leave_every_change_durable_and_every_lease_released() {
    let Some(pg) = PgSchema::new("autosave_and_shutdown_leave_every_change_durable") else { return };
    let (ds, backend) = pg_node(&pg, "a").await;
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    for i in 0..50 {
        let s = store.open(format!("k{i}")).await.unwrap();
        s.update(move |p| p.coins = i).await.unwrap();
        sessions.push(s);
    }
    // Autosave writes the changes without being asked.
    eventually_async(Duration::from_secs(10), "autosave writes every change", || {
        let b = backend.clone();
        async move {
            (0..50u64).all(|i| {
                stored(&*b, &format!("k{i}"))
                    .is_some_and(|r| serde_json::from_slice::<Profile>(&r.data).unwrap().coins == i)
            })
        }
    })
    .await;
    for (i, s) in sessions.iter().enumerate() {
        s.update(move |p| p.name = format!("final-{i}")).await.unwrap();
    }
    let report = ds.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    let other = pg.backend();
    for i in 0..50 {
        let r = stored(&other, &format!("k{i}")).unwrap();
        assert_eq!(serde_json::from_slice::<Profile>(&r.data).unwrap().name, format!("final-{i}"));
        assert!(r.lease.is_none(), "k{i} released");
    }
}

/// Killing the data connections under a save load loses no acknowledged
/// save: each failed batch is retried on a new connection, and a retry
/// that finds its own header (its COMMIT had landed) counts as applied.
#[actix_rt::test]
async fn connections_killed_under_load_lose_no_acknowledged_save() {
    let Some(pg) = PgSchema::new("connections_killed_under_load_lose_no_acknowledged_save") else { return };
    let (ds, backend) = pg_node(&pg, "a").await;
    let id = backend.connection_id().to_owned();
    let store = profiles(&ds);
    let mut sessions = Vec::new();
    for i in 0..20 {
        sessions.push(store.open(format!("k{i}")).await.unwrap());
    }
    let mut acknowledged = [0u64; 20];
    for round in 1..=15u64 {
        if round % 4 == 0 {
            pg.sql(&format!(
                "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
                 WHERE application_name IN ('datastorer-writer-{id}', 'datastorer-reader-{id}')"
            ));
        }
        let mut receipts = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            s.update(move |p| p.coins = round * 100 + i as u64).await.unwrap();
            receipts.push((i, s.save(Priority::Normal)));
        }
        for (i, r) in receipts {
            if r.await.is_ok() {
                acknowledged[i] = round * 100 + i as u64;
            }
        }
    }
    let other = pg.backend();
    for (i, want) in acknowledged.iter().enumerate() {
        assert!(*want >= 1500, "k{i}: the last round was acknowledged ({want})");
        let r = stored(&other, &format!("k{i}")).unwrap();
        assert_eq!(serde_json::from_slice::<Profile>(&r.data).unwrap().coins, *want);
    }
    assert!(ds.shutdown().await.is_clean());
}

/// An engine that shut down and was dropped closes its backend: its owner
/// id is free again for an engine on a new connection (an application that
/// restarts its engine in-process, a test suite).
#[actix_rt::test]
async fn an_engine_that_shut_down_frees_its_owner_id() {
    let Some(pg) = PgSchema::new("an_engine_that_shut_down_frees_its_owner_id") else { return };
    let (ds, backend) = pg_node(&pg, "again").await;
    let s = profiles(&ds).open("k").await.unwrap();
    assert!(ds.shutdown().await.is_clean());
    drop((s, ds, backend));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Datastorer::start(engine_config(Arc::new(pg.backend()), "again")).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the owner id stays taken after shutdown: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the server has no LISTEN/NOTIFY (CockroachDB), notices go through
/// the polled `notices` table: a release request still reaches the holder
/// in another process (well before its lease would lapse), a steal still
/// closes the old session at once, and saves reach the other change feed.
#[actix_rt::test]
async fn without_listen_notify_notices_travel_through_the_polled_outbox() {
    let Some(pg) = PgSchema::new("without_listen_notify_notices_travel_through_the_polled_outbox") else { return };
    let polled = || {
        let mut c = pg.config();
        c.poll_notices = true;
        Arc::new(PgBackend::connect(c).expect("connect"))
    };
    let mut ca = engine_config(polled(), "a");
    ca.lease_ttl = Duration::from_secs(60);
    ca.autosave_interval = Duration::from_secs(20);
    let a = Datastorer::start(ca).await.unwrap();
    let bb = polled();
    let mut feed = bb.notices().subscribe();
    let b = Datastorer::start(engine_config(bb, "b")).await.unwrap();

    let held = profiles(&a).open("k").await.unwrap();
    held.update(|p| p.coins = 41).await.unwrap();
    held.save(Priority::Normal).await.unwrap();
    let started = Instant::now();
    let taken = profiles(&b)
        .open("k")
        .policy(AcquirePolicy::RequestRelease { timeout: Duration::from_secs(30) })
        .await
        .expect("handed over");
    assert!(started.elapsed() < Duration::from_secs(10), "by the outbox, not by the 60 s lease");
    assert_eq!(taken.read(|p| p.coins).await.unwrap(), 41);
    assert_eq!(held.close_reason(), Some(CloseReason::ReleaseRequested));
    // B's feed saw A's save (and then its release) through the outbox.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), feed.recv()).await.expect("a change").unwrap();
        if n.key == "k" && matches!(n.kind, NoticeKind::Saved { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "no save from the other process in B's feed");
    }

    let again = profiles(&a).open("j").await.unwrap();
    let _thief = profiles(&b).open("j").policy(AcquirePolicy::Steal).await.unwrap();
    eventually_async(Duration::from_secs(10), "the holder learns of the steal through the outbox", || {
        let r = again.close_reason();
        async move { r == Some(CloseReason::Stolen) }
    })
    .await;
    assert!(pg.sql("SELECT count(*)::text FROM $S.notices")[0].as_deref() != Some("0"), "the outbox was used");
}

#[actix_rt::test]
async fn versions_and_a_fenced_restore_work_across_processes_on_postgres() {
    let Some(pg) = PgSchema::new("versions_and_a_fenced_restore_across_processes") else { return };
    let (admin, _) = pg_node(&pg, "admin").await;
    let (game, _) = pg_node(&pg, "game").await;
    let s = profiles(&game).open("p1").user_ids(["42"]).await.unwrap();
    s.update(|p| p.coins = 10).await.unwrap();
    let good = s.save(Priority::Normal).await.unwrap().revision;
    let epoch = s.lease().await.unwrap().epoch;
    s.update(|p| p.coins = 1_000_000).await.unwrap();
    s.save(Priority::Normal).await.unwrap();
    s.update(|p| p.coins = 1_000_001).await.unwrap(); // unsaved: the hand-over saves it

    let store = profiles(&admin);
    let listed = store.versions("p1", &datastorer::VersionQuery::default()).await.unwrap().versions;
    assert_eq!(listed.iter().map(|v| v.revision).collect::<Vec<_>>(), vec![good + 1, good, good - 1]);
    assert!(listed.iter().all(|v| v.user_ids == ["42"]));
    let target = RecordHeader { epoch, revision: good };
    let restored =
        store.restore("p1", datastorer::RestoreTarget::Version(target), &[], Duration::from_secs(10)).await.unwrap();
    assert_eq!(restored.holder, "released", "the other process handed the key over");
    assert_eq!(s.closed().await, CloseReason::Restored);
    let rec = stored(&pg.backend(), "p1").unwrap();
    assert_eq!(serde_json::from_slice::<Profile>(&rec.data).unwrap().coins, 10);
    assert_eq!(rec.header.epoch, epoch + 1);
    let newest = store.versions("p1", &datastorer::VersionQuery::default()).await.unwrap().versions;
    let handed = store.version("p1", newest[1].id()).await.unwrap();
    assert_eq!(handed.data.unwrap()["coins"], serde_json::json!(1_000_001), "the holder's change kept as a version");
    let indexed = pg.sql("SELECT store || '/' || key FROM $S.user_keys WHERE user_id = '42'");
    assert_eq!(indexed, vec![Some("profiles/p1".to_owned())]);
    admin.shutdown().await;
    game.shutdown().await;
}

/// An erased document's bytes are gone from PostgreSQL's table files, not
/// only from its queries: the erasure's `VACUUM` prunes the dead tuples
/// out of their pages (read raw with `pageinspect`). The WAL keeps them
/// until its segments are recycled (`docs/history.md`).
#[actix_rt::test]
async fn an_erased_documents_bytes_leave_the_postgres_table_pages() {
    let Some(pg) = PgSchema::new("an_erased_documents_bytes_leave_the_table_pages") else { return };
    pg.sql("CREATE EXTENSION IF NOT EXISTS pageinspect");
    let (ds, _) = pg_node(&pg, "eraser").await;
    let store = profiles(&ds);
    let marker = "QX-ERASE-ME-0451";
    let s = store.open("p9").user_ids(["9"]).await.unwrap();
    s.update(move |p| p.name = marker.to_owned()).await.unwrap();
    s.release(Priority::Normal).await.unwrap();
    let raw = |table: &str| {
        pg.sql(&format!(
            "SELECT count(*)::text FROM generate_series(0, pg_relation_size('$S.{table}') / 8192 - 1) AS b,
                    heap_page_items(get_raw_page('$S.{table}', b::int)) AS t
              WHERE position(convert_to('{marker}', 'UTF8') IN coalesce(t.t_data, ''::bytea)) > 0"
        ))
    };
    assert_ne!(raw("records"), vec![Some("0".to_owned())], "the control: the bytes are in the page");
    let receipt = ds.erase_user("9", Duration::from_secs(5)).await.unwrap();
    assert!(receipt.storage_reclaimed);
    // VACUUM cannot prune a tuple an older transaction of the database may
    // still see: another test's open transaction, here, makes the
    // erasure's own pass leave it; the next pass after that transaction
    // ends removes it (as autovacuum would). Bounded, never slept blindly.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for table in ["records", "versions"] {
        while raw(table) != vec![Some("0".to_owned())] {
            assert!(std::time::Instant::now() < deadline, "{table} still holds the erased bytes");
            pg.sql(&format!("VACUUM $S.{table}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ds.shutdown().await;
}

/// Pruning on PostgreSQL: a day of versions written 24 to 48 hours ago
/// (straight into the table, as a day of 30 s autosaves would have left
/// them) is pruned to the last of each hour, through the engine's pass.
#[actix_rt::test]
async fn pruning_keeps_one_version_per_hour_past_the_window_on_postgres() {
    use datastorer::storage::history::{version_key, versions_of_key};
    let Some(pg) = PgSchema::new("pruning_keeps_one_version_per_hour_on_postgres") else { return };
    let raw = pg.backend();
    let start = wall_ms() - 48 * 3600 * 1000;
    let ops: Vec<WriteOp> = (0..2880u64)
        .map(|i| {
            let rec = Record {
                header: RecordHeader { epoch: 1, revision: i + 1 },
                data_version: 0,
                data: format!("{{\"coins\":{i},\"name\":\"x\"}}").into_bytes(),
                metadata: b"{}".to_vec(),
                user_ids: vec![],
                lease: None,
                created_at_ms: start,
                updated_at_ms: start + i * 30_000,
            };
            WriteOp::new(version_key("profiles", "p1", rec.header), Precondition::Any, Some(rec.encode()))
        })
        .collect();
    for r in raw.write_batch(&ops) {
        r.unwrap();
    }
    let (ds, _) = pg_node(&pg, "pruner").await;
    let report = profiles(&ds).prune_versions().await.unwrap();
    assert_eq!(report.examined, 2880);
    let kept = raw.scan_prefix(&versions_of_key("profiles", "p1"), None, 10_000).unwrap();
    // The last of each of the 24 or 25 hours touched, and the newest ten
    // (the newest is the last of its hour already): 33 or 34.
    assert!((33..=34).contains(&kept.len()), "kept {}", kept.len());
    assert_eq!(report.pruned as usize, 2880 - kept.len());
    ds.shutdown().await;
}

#[actix_rt::test]
async fn store_names_on_postgres() {
    let Some(pg) = PgSchema::new("store_names_on_postgres") else { return };
    let (ds, _) = pg_node(&pg, "app-1").await;
    crate::stores::store_names_list_stores_with_records(&ds).await;
}

#[actix_rt::test]
async fn store_usage_on_postgres() {
    let Some(pg) = PgSchema::new("store_usage_on_postgres") else { return };
    let (ds, backend) = pg_node(&pg, "app-1").await;
    crate::stores::store_usage_counts_records_and_versions(&ds, &*backend).await;
}
