//! Storage: the record envelope (golden bytes, robustness against arbitrary
//! input), one conformance suite run against every backend, and corrupt
//! records reported with store and key and left untouched.

use std::sync::Arc;

use crate::common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{storage_key, Backend, DecodeError, Precondition, Record, RecordHeader, WriteOp};
use datastorer::testing::conformance;
use datastorer::{Config, Datastorer, Error};

/// The conformance suite's sample record (every field set); the golden
/// bytes below pin its encoding.
fn sample() -> Record {
    conformance::sample_record()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Format stability: records written by this build must decode in every
/// later build. If this test fails, the on-disk format changed: add a new
/// format version instead of changing version 1.
#[test]
fn format_version_1_bytes_are_stable() {
    let bytes = sample().encode();
    assert_eq!(
        hex(&bytes),
        "445301030000000000000011000000000000004300000\
         053906f4fd6cae714020b7b22636f696e73223a357d0f7b2274696572223a22676f6c64227d0102343201057372762d31fd0068\
         e5cf8b010000fd00806e8774010000fd00f4a92b80010000"
    );
    assert_eq!(Record::decode(&bytes).unwrap(), sample());
    assert_eq!(RecordHeader::peek(&bytes), Some(RecordHeader { epoch: 3, revision: 17 }));
    // seahash output is part of the format: pin one vector.
    assert_eq!(seahash::hash(b"datastorer"), 0x74ec_39d8_3d67_020c);
}

#[test]
fn damaged_records_are_typed_errors_never_panics() {
    let good = sample().encode();
    assert_eq!(Record::decode(b""), Err(DecodeError::NotARecord));
    assert_eq!(Record::decode(&good[..10]), Err(DecodeError::NotARecord));
    assert!(matches!(Record::decode(&good[..good.len() - 1]), Err(DecodeError::Corrupt(_))), "torn write");
    let mut epoch_flipped = good.clone();
    epoch_flipped[4] ^= 0x01;
    assert!(matches!(Record::decode(&epoch_flipped), Err(DecodeError::Corrupt(_))), "bit flip in the epoch");
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    assert!(matches!(Record::decode(&flipped), Err(DecodeError::Corrupt(_))), "bit flip in the body");
    let mut future = good.clone();
    future[2] = 9;
    assert_eq!(Record::decode(&future), Err(DecodeError::UnknownFormat(9)));

    // Seeded pseudo-random inputs: truncations, mutations and garbage.
    let mut rng = datastorer::testing::Rng(0x2545_f491_4f6c_dd1d);
    let mut next = || rng.next();
    for _ in 0..20_000 {
        let mut bytes = good.clone();
        match next() % 3 {
            0 => bytes.truncate((next() as usize) % good.len()),
            1 => {
                for _ in 0..(1 + next() % 4) {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            _ => bytes = (0..(next() % 200)).map(|_| next() as u8).collect(),
        }
        let _ = Record::decode(&bytes); // must return, not panic
    }
}

fn record_at(revision: u64) -> Vec<u8> {
    conformance::record_at(revision)
}

fn op(key: &[u8], precondition: Precondition, value: Option<Vec<u8>>) -> WriteOp {
    WriteOp::new(key, precondition, value)
}

#[test]
fn memory_backend_conforms() {
    conformance::backend(&MemoryBackend::new());
}

#[test]
fn sled_backend_conforms_and_persists_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = SledBackend::open(dir.path().join("db")).unwrap();
        conformance::backend(&b);
    }
    let b = SledBackend::open(dir.path().join("db")).unwrap();
    let rec = Record::decode(&b.get(&storage_key("s", "k")).unwrap().unwrap()).unwrap();
    assert_eq!(rec.header.revision, 18);
    // The large batches, written on several threads, are durable too.
    assert_eq!(b.get(&storage_key("big", "k00001")).unwrap(), Some(record_at(4)));
    assert_eq!(b.get(&storage_key("big", "k02998")).unwrap(), Some(record_at(3)));
    assert_eq!(b.get(&storage_key("big", "k02995")).unwrap(), None);
}

#[test]
fn postgres_backend_conforms_and_persists() {
    let Some(pg) = crate::common::pg::PgSchema::new("postgres_backend_conforms_and_persists") else { return };
    {
        let b = pg.backend();
        conformance::backend(&b);
    }
    // A second connection (as another process would make) sees it all.
    let b = pg.backend();
    let rec = Record::decode(&b.get(&storage_key("s", "k")).unwrap().unwrap()).unwrap();
    assert_eq!(rec.header.revision, 18);
    assert_eq!(b.get(&storage_key("big", "k00001")).unwrap(), Some(record_at(4)));
    assert_eq!(b.get(&storage_key("big", "k02995")).unwrap(), None);
    // Non-record bytes are kept byte-exact, with no derived header.
    assert_eq!(b.get(&storage_key("s", "bad")).unwrap(), Some(b"garbage".to_vec()));
    let derived = pg.sql("SELECT coalesce(epoch::text, 'null') FROM $S.records WHERE store = 's' AND key = 'bad'");
    assert_eq!(derived, vec![Some("null".to_owned())]);
    // Derived columns follow the bytes written.
    let cols = pg.sql(
        "SELECT epoch || '/' || revision || '/' || lease_owner || '/' || array_to_string(user_ids, ',') \
         FROM $S.records WHERE store = 's' AND key = 'k'",
    );
    assert_eq!(cols, vec![Some("3/18/srv-1/42".to_owned())]);
}

#[test]
fn a_sled_directory_that_cannot_be_opened_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = SledBackend::open(&file).err().expect("opening a file as a database fails");
    assert!(err.message.contains("not-a-dir"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x", "left as found");
}

#[actix_rt::test]
async fn a_corrupt_record_is_reported_with_store_and_key_and_kept() {
    let backend = Arc::new(MemoryBackend::new());
    let ds = node(&backend, "a").await;
    let store = profiles(&ds);
    let skey = storage_key("profiles", "broken");
    let mut torn = sample().encode();
    torn.truncate(torn.len() - 5);
    backend.raw_put(&skey, &torn);

    match store.open("broken").await {
        Err(Error::CorruptRecord { at, source, .. }) => {
            assert_eq!(at, datastorer::KeyId::new("profiles", "broken"));
            assert!(matches!(source, DecodeError::Corrupt(_)));
        }
        other => panic!("expected CorruptRecord, got {other:?}"),
    }
    assert_eq!(backend.raw_get(&skey).unwrap(), torn, "kept byte for byte");
    assert!(matches!(store.inspect("broken").await, Err(Error::CorruptRecord { .. })));
    // Steal cannot overwrite it either.
    let r = store.open("broken").policy(datastorer::AcquirePolicy::Steal).await;
    assert!(matches!(r, Err(Error::CorruptRecord { .. })));
    assert_eq!(backend.raw_get(&skey).unwrap(), torn);
    // Other keys are unaffected.
    store.open("fine").await.unwrap();
}

#[actix_rt::test]
async fn a_corrupt_record_on_sled_is_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let skey = storage_key("profiles", "k");
    {
        let b = SledBackend::open(&path).unwrap();
        b.write_batch(&[op(&skey, Precondition::Any, Some(b"\x00\x01not a record".to_vec()))]);
        b.flush().unwrap();
    }
    let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(&path).unwrap());
    let mut c = Config::backend(backend.clone()).owner_id("a");
    c.handle_signals = false;
    let ds = Datastorer::start(c).await.unwrap();
    let err = profiles(&ds).open("k").await.unwrap_err();
    assert!(
        matches!(err, Error::CorruptRecord { ref at, source: DecodeError::NotARecord, .. } if at.key == "k"),
        "{err:?}"
    );
    assert_eq!(backend.get(&skey).unwrap().unwrap(), b"\x00\x01not a record");
}

#[test]
fn lease_notices_have_a_channel_that_saves_cannot_flood() {
    use datastorer::storage::{Notice, NoticeBus, NoticeKind};
    let bus = NoticeBus::default();
    assert!(!bus.has_subscribers(), "no subscriber yet");
    let mut lease = bus.subscribe_lease_notices();
    assert!(!bus.has_subscribers(), "the lease channel alone does not ask for change notices");
    let mut all = bus.subscribe();
    assert!(bus.has_subscribers());
    let notice = |kind| Notice { store: "s".into(), key: "k".into(), kind };
    // Far more saves than either channel holds, then one release request.
    for revision in 0..10_000 {
        datastorer::testing::publish(&bus, notice(NoticeKind::Saved { revision }));
    }
    let request = NoticeKind::ReleaseRequested {
        holder: "a".into(),
        requester: "b".into(),
        because: datastorer::storage::EndKind::ReleaseRequested,
    };
    datastorer::testing::publish(&bus, notice(request.clone()));
    assert_eq!(lease.try_recv().map(|n| n.kind), Ok(request), "the request is the only lease notice");
    assert!(lease.try_recv().is_err());
    // The all-notices channel lagged behind the burst, as it may.
    assert!(matches!(all.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))));
}

#[test]
fn a_notice_sink_hears_every_notice_cannot_lag_and_survives_its_own_panic() {
    use datastorer::storage::{Notice, NoticeBus, NoticeKind};
    use std::sync::Mutex;
    let bus = NoticeBus::default();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    bus.add_sink(Arc::new(move |n: &Notice| sink.lock().unwrap().push(n.kind.clone())));
    assert!(bus.has_subscribers(), "a sink asks for change notices");
    // A second sink that panics on one notice: the others still hear it.
    bus.add_sink(Arc::new(|n: &Notice| assert_ne!(n.kind, NoticeKind::Saved { revision: 7 }, "a faulty sink")));
    let notice = |kind| Notice { store: "s".into(), key: "k".into(), kind };
    // More than the broadcast channel holds: a sink misses none of them.
    for revision in 0..10_000 {
        datastorer::testing::publish(&bus, notice(NoticeKind::Saved { revision }));
    }
    // A notice from another process reaches the sinks too.
    bus.deliver_remote(notice(NoticeKind::Deleted));
    let heard = heard.lock().unwrap();
    assert_eq!(heard.len(), 10_001);
    assert!(heard[..10_000].iter().enumerate().all(|(i, k)| *k == NoticeKind::Saved { revision: i as u64 }));
    assert_eq!(heard[10_000], NoticeKind::Deleted);
}

/// A sled snapshot while writers go on: its entries, applied in order,
/// are the database as of one instant (the end), so a record and the
/// version written with it are never torn apart in a backup.
#[test]
fn a_sled_snapshot_taken_while_writing_is_the_database_of_one_instant() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(SledBackend::open(dir.path().join("db")).unwrap());
    let put = |b: &SledBackend, k: usize, n: u64| {
        let mut rec = record_with(n);
        rec.header = RecordHeader { epoch: 1, revision: n };
        let op = WriteOp::new(storage_key("snap", &format!("k{k:03}")), Precondition::Any, Some(rec.encode()));
        assert!(b.write_batch(&[op.keeping_version()])[0].is_ok());
    };
    for k in 0..300 {
        put(&b, k, 1);
    }
    let mut applied = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut calls = 0;
    let writer = b.clone();
    let report = b
        .snapshot(&mut |k, v| {
            calls += 1;
            // Writes land while the walk is under way: new values for keys
            // behind it and ahead of it, and deletes.
            if calls == 100 {
                for k in 0..300 {
                    put(&writer, k, 2);
                }
                writer.delete(&storage_key("snap", "k007")).unwrap();
            }
            match v {
                Some(v) => applied.insert(k.to_vec(), v.to_vec()),
                None => applied.remove(k),
            };
            Ok(())
        })
        .unwrap()
        .unwrap();
    assert!(report >= 600);
    let now: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
        b.scan_prefix(b"", None, usize::MAX).unwrap().into_iter().collect();
    assert_eq!(applied, now, "the snapshot is the database as it stood at its end");
}

fn record_with(n: u64) -> Record {
    Record {
        header: RecordHeader { epoch: 1, revision: n },
        data_version: 0,
        data: format!("{{\"n\":{n}}}").into_bytes(),
        metadata: b"{}".to_vec(),
        user_ids: vec!["u".into()],
        lease: None,
        created_at_ms: 0,
        updated_at_ms: n,
    }
}
