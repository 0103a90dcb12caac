//! Storage: the record envelope (golden bytes, robustness against arbitrary
//! input), one conformance suite run against every backend, and corrupt
//! records reported with store and key and left untouched.

mod common;

use std::sync::Arc;

use common::*;
use datastorer::storage::memory::MemoryBackend;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{
    storage_key, store_prefix, Backend, DecodeError, LeaseHolder, Precondition, Record, RecordHeader, WriteOp,
    WriteOutcome,
};
use datastorer::{Config, Datastorer, Error};

fn sample() -> Record {
    Record {
        header: RecordHeader { epoch: 3, revision: 17 },
        data_version: 2,
        data: br#"{"coins":5}"#.to_vec(),
        metadata: br#"{"tier":"gold"}"#.to_vec(),
        user_ids: vec!["42".into()],
        lease: Some(LeaseHolder { owner: "srv-1".into(), expires_at_ms: 1_700_000_000_000 }),
        created_at_ms: 1_600_000_000_000,
        updated_at_ms: 1_650_000_000_000,
    }
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
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
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

fn op(key: &[u8], precondition: Precondition, value: Option<Vec<u8>>) -> WriteOp {
    WriteOp { key: key.to_vec(), precondition, value }
}

/// Every backend must pass this.
fn conformance(b: &dyn Backend) {
    let k = storage_key("s", "k");
    assert_eq!(b.get(&k).unwrap(), None);

    let v1 = sample().encode();
    let h1 = RecordHeader::peek(&v1).unwrap();
    assert_eq!(b.write_batch(&[op(&k, Precondition::Absent, Some(v1.clone()))]), vec![Ok(WriteOutcome::Applied)]);
    assert_eq!(b.get(&k).unwrap(), Some(v1.clone()));
    // Absent no longer holds; the conflict reports the stored header.
    assert_eq!(
        b.write_batch(&[op(&k, Precondition::Absent, Some(vec![1]))]),
        vec![Ok(WriteOutcome::Conflict { current: Some(h1) })]
    );
    // Fencing: a stale header is refused, the current one applies.
    let mut next = sample();
    next.header.revision += 1;
    let v2 = next.encode();
    let stale = RecordHeader { epoch: h1.epoch, revision: h1.revision - 1 };
    let results = b.write_batch(&[
        op(&k, Precondition::Header(stale), Some(vec![9])),
        op(&k, Precondition::Header(h1), Some(v2.clone())),
    ]);
    assert_eq!(results, vec![Ok(WriteOutcome::Conflict { current: Some(h1) }), Ok(WriteOutcome::Applied)]);
    assert_eq!(b.get(&k).unwrap(), Some(v2.clone()));

    // A corrupt stored value is overwritten by nothing but `Any`.
    let bad = storage_key("s", "bad");
    b.write_batch(&[op(&bad, Precondition::Any, Some(b"garbage".to_vec()))]);
    assert_eq!(
        b.write_batch(&[op(&bad, Precondition::Absent, Some(v1.clone()))]),
        vec![Ok(WriteOutcome::Conflict { current: None })]
    );
    assert_eq!(
        b.write_batch(&[op(&bad, Precondition::Header(h1), Some(v1.clone()))]),
        vec![Ok(WriteOutcome::Conflict { current: None })]
    );
    assert_eq!(b.get(&bad).unwrap(), Some(b"garbage".to_vec()));

    // Scans: prefix, order, cursor, limit; other stores invisible.
    for key in ["a", "b", "c"] {
        b.write_batch(&[op(&storage_key("scan", key), Precondition::Any, Some(key.as_bytes().to_vec()))]);
    }
    b.write_batch(&[op(&storage_key("scanx", "z"), Precondition::Any, Some(vec![0]))]);
    let p = store_prefix("scan");
    let all = b.scan_prefix(&p, None, 10).unwrap();
    assert_eq!(
        all.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    let page = b.scan_prefix(&p, Some(&storage_key("scan", "a")), 1).unwrap();
    assert_eq!(page, vec![(storage_key("scan", "b"), b"b".to_vec())]);

    // Delete.
    b.delete(&storage_key("scan", "b")).unwrap();
    assert_eq!(b.get(&storage_key("scan", "b")).unwrap(), None);

    acquire(b);
    many_reads(b);
    large_batches(b);
    b.flush().unwrap();
}

fn leased(owner: &str, expires_at_ms: u64, epoch: u64, revision: u64) -> Vec<u8> {
    let mut r = sample();
    r.header = RecordHeader { epoch, revision };
    r.lease = Some(LeaseHolder { owner: owner.into(), expires_at_ms });
    r.encode()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `Precondition::Acquire`: the backend itself refuses to hand over a live
/// lease of another owner (by its own clock where it has one), and grants a
/// lapsed one, the holder's own, and a key without a lease.
fn acquire(b: &dyn Backend) {
    let now = wall_ms();
    let hour = 3_600_000;
    let k = storage_key("acq", "live");
    let live = leased("a", now + hour, 1, 1);
    let h = RecordHeader::peek(&live).unwrap();
    b.write_batch(&[op(&k, Precondition::Any, Some(live.clone()))]);
    let by_b = leased("b", now + hour, 2, 2);
    let take = |value: &Vec<u8>| op(&k, Precondition::Acquire { expected: h, now_ms: now }, Some(value.clone()));
    assert_eq!(
        b.write_batch(&[take(&by_b)]),
        vec![Ok(WriteOutcome::Conflict { current: Some(h) })],
        "another owner's live lease is refused"
    );
    assert_eq!(b.get(&k).unwrap(), Some(live.clone()));
    // The holder itself may take its own lease again (a restart under the
    // same owner id).
    let by_a = leased("a", now + hour, 2, 2);
    assert_eq!(b.write_batch(&[take(&by_a)]), vec![Ok(WriteOutcome::Applied)]);

    // A lapsed lease, and a record with no lease, are granted.
    let lapsed_key = storage_key("acq", "lapsed");
    let lapsed = leased("a", 1, 1, 1);
    b.write_batch(&[op(&lapsed_key, Precondition::Any, Some(lapsed.clone()))]);
    let expected = RecordHeader::peek(&lapsed).unwrap();
    let results =
        b.write_batch(&[op(&lapsed_key, Precondition::Acquire { expected, now_ms: now }, Some(by_b.clone()))]);
    assert_eq!(results, vec![Ok(WriteOutcome::Applied)]);
    let free_key = storage_key("acq", "free");
    let free = sample().encode();
    let mut unleased = sample();
    unleased.lease = None;
    b.write_batch(&[op(&free_key, Precondition::Any, Some(unleased.encode()))]);
    let expected = RecordHeader::peek(&free).unwrap();
    let results = b.write_batch(&[op(&free_key, Precondition::Acquire { expected, now_ms: now }, Some(by_b.clone()))]);
    assert_eq!(results, vec![Ok(WriteOutcome::Applied)]);
    // A stale expected header is a plain conflict, whatever the lease.
    let stale = RecordHeader { epoch: 1, revision: 1 };
    let current = RecordHeader::peek(&by_b).unwrap();
    let results = b.write_batch(&[op(&free_key, Precondition::Acquire { expected: stale, now_ms: now }, Some(live))]);
    assert_eq!(results, vec![Ok(WriteOutcome::Conflict { current: Some(current) })]);
}

/// `get_many` answers every key in order, present or not.
fn many_reads(b: &dyn Backend) {
    let present = storage_key("many", "x");
    b.write_batch(&[op(&present, Precondition::Any, Some(vec![7, 7]))]);
    let absent = storage_key("many", "y");
    let got = b.get_many(&[&absent, &present, &absent]);
    assert_eq!(got, vec![Ok(None), Ok(Some(vec![7, 7])), Ok(None)]);
}

fn record_at(revision: u64) -> Vec<u8> {
    let mut r = sample();
    r.header.revision = revision;
    r.encode()
}

/// Batches as large as a burst of saves makes (sled writes these on several
/// threads): every op still gets its own outcome, in order, and a key
/// written twice in one batch ends with its second value.
fn large_batches(b: &dyn Backend) {
    const N: usize = 3000;
    let key = |i: usize| storage_key("big", &format!("k{i:05}"));
    let first: Vec<WriteOp> = (0..N).map(|i| op(&key(i), Precondition::Absent, Some(record_at(1)))).collect();
    assert!(b.write_batch(&first).iter().all(|r| *r == Ok(WriteOutcome::Applied)));

    // Every third op carries a stale header, every fifth (not third) deletes.
    let h1 = RecordHeader { epoch: 3, revision: 1 };
    let stale = RecordHeader { epoch: 2, revision: 1 };
    let second: Vec<WriteOp> = (0..N)
        .map(|i| match i {
            i if i % 3 == 0 => op(&key(i), Precondition::Header(stale), Some(record_at(9))),
            i if i % 5 == 0 => op(&key(i), Precondition::Header(h1), None),
            i => op(&key(i), Precondition::Header(h1), Some(record_at(2))),
        })
        .collect();
    let results = b.write_batch(&second);
    assert_eq!(results.len(), N);
    for (i, r) in results.iter().enumerate() {
        let expected = if i % 3 == 0 { WriteOutcome::Conflict { current: Some(h1) } } else { WriteOutcome::Applied };
        assert_eq!(*r, Ok(expected), "op {i}");
        let stored = b.get(&key(i)).unwrap();
        match i {
            i if i % 3 == 0 => assert_eq!(stored, Some(record_at(1)), "key {i} kept"),
            i if i % 5 == 0 => assert_eq!(stored, None, "key {i} deleted"),
            _ => assert_eq!(stored, Some(record_at(2)), "key {i} rewritten"),
        }
    }

    // One key twice among many: the second write is conditional on the first.
    let h2 = RecordHeader { epoch: 3, revision: 2 };
    let h3 = RecordHeader { epoch: 3, revision: 3 };
    let mut third: Vec<WriteOp> = (1..N)
        .filter(|i| i % 3 != 0 && i % 5 != 0)
        .map(|i| op(&key(i), Precondition::Header(h2), Some(record_at(3))))
        .collect();
    third.push(op(&key(1), Precondition::Header(h3), Some(record_at(4))));
    let results = b.write_batch(&third);
    assert!(results.iter().all(|r| *r == Ok(WriteOutcome::Applied)), "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(b.get(&key(1)).unwrap(), Some(record_at(4)));
    assert_eq!(b.get(&key(2)).unwrap(), Some(record_at(3)));
}

#[test]
fn memory_backend_conforms() {
    conformance(&MemoryBackend::new());
}

#[test]
fn sled_backend_conforms_and_persists_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = SledBackend::open(dir.path().join("db")).unwrap();
        conformance(&b);
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
    let Some(pg) = common::pg::PgSchema::new("postgres_backend_conforms_and_persists") else { return };
    {
        let b = pg.backend();
        conformance(&b);
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
        Err(Error::CorruptRecord { store, key, source }) => {
            assert_eq!((store.as_str(), key.as_str()), ("profiles", "broken"));
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
        matches!(err, Error::CorruptRecord { ref key, source: DecodeError::NotARecord, .. } if key == "k"),
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
    let request = NoticeKind::ReleaseRequested { holder: "a".into(), requester: "b".into() };
    datastorer::testing::publish(&bus, notice(request.clone()));
    assert_eq!(lease.try_recv().map(|n| n.kind), Ok(request), "the request is the only lease notice");
    assert!(lease.try_recv().is_err());
    // The all-notices channel lagged behind the burst, as it may.
    assert!(matches!(all.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))));
}
