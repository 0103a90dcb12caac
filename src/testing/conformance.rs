//! The backend conformance suite: the properties every [`Backend`] must
//! have for the engine to be correct on it — compare-and-swap on the record
//! header (a stale header refused, a corrupt value overwritten by nothing
//! but `Any`), scans in key order with a cursor, the lease-aware acquire,
//! `get_many`, and large batches with per-op outcomes in order. memory,
//! sled and PostgreSQL run it in this crate's tests; run it on your own
//! backend the same way: `datastorer::testing::conformance::backend(&mine)`.
//!
//! Must not: depend on a particular backend.

use crate::storage::{
    storage_key, store_prefix, Backend, LeaseHolder, Precondition, Record, RecordHeader, RecordIndex, WriteOp,
    WriteOutcome,
};

/// A record with every field set (lease, user ids, metadata).
pub fn sample_record() -> Record {
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

/// An op as the engine's key actors send it: with the writer's index of a
/// record value (a backend that keeps columns of its own uses it instead of
/// decoding). `plain_op` sends none, as the offline tools do.
fn op(key: &[u8], precondition: Precondition, value: Option<Vec<u8>>) -> WriteOp {
    let index = value.as_deref().and_then(RecordIndex::peek);
    WriteOp { index, ..plain_op(key, precondition, value) }
}

fn plain_op(key: &[u8], precondition: Precondition, value: Option<Vec<u8>>) -> WriteOp {
    WriteOp::new(key, precondition, value)
}

/// Runs the suite against `b`, panicking (like `assert!`) at the first
/// property that does not hold. `b` should be empty; the suite leaves its
/// records behind (under the stores `s`, `scan`, `scanx`, `acq`, `many`,
/// `big`) so a caller can check they persist.
pub fn backend(b: &dyn Backend) {
    let k = storage_key("s", "k");
    assert_eq!(b.get(&k).unwrap(), None);

    let v1 = sample_record().encode();
    let h1 = RecordHeader::peek(&v1).unwrap();
    assert_eq!(b.write_batch(&[op(&k, Precondition::Absent, Some(v1.clone()))]), vec![Ok(WriteOutcome::Applied)]);
    assert_eq!(b.get(&k).unwrap(), Some(v1.clone()));
    // Absent no longer holds; the conflict reports the stored header.
    assert_eq!(
        b.write_batch(&[op(&k, Precondition::Absent, Some(vec![1]))]),
        vec![Ok(WriteOutcome::Conflict { current: Some(h1) })]
    );
    // Fencing: a stale header is refused, the current one applies.
    let mut next = sample_record();
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
    all_or_nothing(b);
    large_batches(b);
    history(b);
    b.flush().unwrap();
}

/// Versions and the user-id index: a write that carries a version stores
/// it in the same step (a refused one stores none), keyed so a key's
/// versions scan oldest first; a delete's tombstone; the index entries of
/// each version's user ids; unconditional deletes of versions (pruning)
/// and index entries (erasure).
fn history(b: &dyn Backend) {
    use crate::storage::history::{user_index_key, user_index_prefix, version_key, versions_of_key, versions_of_store};
    let k = storage_key("hist", "k");
    let at = |epoch, revision, users: &[&str]| {
        let mut r = sample_record();
        r.header = RecordHeader { epoch, revision };
        r.updated_at_ms = 1_700_000_000_000 + revision;
        r.user_ids = users.iter().map(|u| (*u).to_owned()).collect();
        r
    };
    let saved = |r: &Record, pre| op(&k, pre, Some(r.encode())).keeping_version();
    let (r1, r2) = (at(1, 1, &["7"]), at(1, 2, &["7", "8"]));
    let (h1, h2) = (r1.header, r2.header);
    assert_eq!(b.write_batch(&[saved(&r1, Precondition::Absent)]), vec![Ok(WriteOutcome::Applied)]);
    // A refused write keeps no version.
    let refused = saved(&at(1, 9, &["9"]), Precondition::Header(RecordHeader { epoch: 1, revision: 5 }));
    assert!(matches!(b.write_batch(&[refused])[0], Ok(WriteOutcome::Conflict { .. })));
    // In one batch with a renewal of another key, which keeps none.
    let other = storage_key("hist", "other");
    let renewal = op(&other, Precondition::Absent, Some(at(1, 1, &[]).encode()));
    assert_eq!(
        b.write_batch(&[saved(&r2, Precondition::Header(h1)), renewal]),
        vec![Ok(WriteOutcome::Applied), Ok(WriteOutcome::Applied)]
    );
    // A version that is not the written value is kept as its own bytes (a
    // backend may send a save's version once, as the value, only when the
    // two are the same).
    let apart = storage_key("hist", "apart");
    let (value, kept) = (at(1, 1, &[]), at(1, 1, &["5"]));
    let mut differing = op(&apart, Precondition::Absent, Some(value.encode()));
    differing.version = Some(kept.encode().into());
    assert_eq!(b.write_batch(&[differing]), vec![Ok(WriteOutcome::Applied)]);
    assert_eq!(b.get(&version_key("hist", "apart", kept.header)).unwrap(), Some(kept.encode()));
    assert_eq!(b.get(&apart).unwrap(), Some(value.encode()));
    // The delete leaves its tombstone, through write_all where there is one.
    let tomb = Record::tombstone(&r2, 1_800_000_000_000);
    let mut delete = op(&k, Precondition::Header(h2), None);
    delete.version = Some(tomb.encode().into());
    match b.write_all(std::slice::from_ref(&delete)) {
        Some(outcome) => assert_eq!(outcome.unwrap(), crate::storage::AllOrNothing::Applied),
        None => assert_eq!(b.write_batch(&[delete]), vec![Ok(WriteOutcome::Applied)]),
    }
    assert_eq!(b.get(&k).unwrap(), None);
    let listed = b.scan_prefix(&versions_of_key("hist", "k"), None, 100).unwrap();
    let keys: Vec<Vec<u8>> = listed.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        vec![version_key("hist", "k", h1), version_key("hist", "k", h2), version_key("hist", "k", tomb.header)]
    );
    assert_eq!(listed[0].1, r1.encode(), "a version is the record's bytes as saved");
    assert!(Record::decode(&listed[2].1).unwrap().is_tombstone());
    assert_eq!(b.get(&version_key("hist", "k", h2)).unwrap(), Some(r2.encode()));
    assert!(b.scan_prefix(&versions_of_key("hist", "other"), None, 10).unwrap().is_empty());
    // Paging over a store's versions.
    let page = b.scan_prefix(&versions_of_store("hist"), Some(&keys[0]), 1).unwrap();
    assert_eq!(page.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![keys[1].clone()]);
    // The user-id index: every id any version carried, across keys.
    let users = |u: &str| -> Vec<Vec<u8>> {
        b.scan_prefix(&user_index_prefix(u), None, 100).unwrap().into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(users("7"), vec![user_index_key("7", "hist", "k")]);
    assert_eq!(users("8"), vec![user_index_key("8", "hist", "k")]);
    assert!(users("9").is_empty(), "a refused write indexes nothing");
    // Pruning and erasure delete rows unconditionally.
    let prune = plain_op(&keys[0], Precondition::Any, None);
    let erase = plain_op(&user_index_key("7", "hist", "k"), Precondition::Any, None);
    assert_eq!(b.write_batch(&[prune, erase]), vec![Ok(WriteOutcome::Applied), Ok(WriteOutcome::Applied)]);
    assert_eq!(b.scan_prefix(&versions_of_key("hist", "k"), None, 100).unwrap().len(), 2);
    assert!(users("7").is_empty());
}

fn leased(owner: &str, expires_at_ms: u64, epoch: u64, revision: u64) -> Vec<u8> {
    let mut r = sample_record();
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
    // Written without an index: the backend reads the lease from the bytes.
    b.write_batch(&[plain_op(&k, Precondition::Any, Some(live.clone()))]);
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
    let free = sample_record().encode();
    let mut unleased = sample_record();
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

/// `write_all`, where the backend says it has it: a key and its
/// neighbour deleted in one step only when both preconditions hold; one
/// that does not hold leaves both as they were.
fn all_or_nothing(b: &dyn Backend) {
    if !b.capabilities().writes_all_or_nothing {
        assert!(b.write_all(&[]).is_none(), "a backend without write_all says so");
        return;
    }
    let (rec, inbox) = (storage_key("pair", "k"), storage_key("pair:inbox", "k"));
    let (v_rec, v_inbox) = (record_at(4), record_at(9));
    b.write_batch(&[
        op(&rec, Precondition::Any, Some(v_rec.clone())),
        op(&inbox, Precondition::Any, Some(v_inbox.clone())),
    ]);
    let (h_rec, h_inbox) = (RecordHeader::peek(&v_rec).unwrap(), RecordHeader::peek(&v_inbox).unwrap());
    let stale = RecordHeader { epoch: h_inbox.epoch, revision: h_inbox.revision - 1 };
    let refused =
        b.write_all(&[op(&rec, Precondition::Header(h_rec), None), op(&inbox, Precondition::Header(stale), None)]);
    assert_eq!(refused.unwrap().unwrap(), crate::storage::AllOrNothing::Refused(vec![(1, Some(h_inbox))]));
    assert_eq!(b.get(&rec).unwrap(), Some(v_rec), "a refusal leaves the key that held as it was");
    assert_eq!(b.get(&inbox).unwrap(), Some(v_inbox));
    let applied =
        b.write_all(&[op(&rec, Precondition::Header(h_rec), None), op(&inbox, Precondition::Header(h_inbox), None)]);
    assert_eq!(applied.unwrap().unwrap(), crate::storage::AllOrNothing::Applied);
    assert_eq!(b.get_many(&[&rec, &inbox]), vec![Ok(None), Ok(None)]);
    // Absent holds for what is gone (a retried delete of the pair).
    let again = b.write_all(&[op(&rec, Precondition::Absent, None), op(&inbox, Precondition::Absent, None)]);
    assert_eq!(again.unwrap().unwrap(), crate::storage::AllOrNothing::Applied);
}

/// `get_many` answers every key in order, present or not.
fn many_reads(b: &dyn Backend) {
    let present = storage_key("many", "x");
    b.write_batch(&[op(&present, Precondition::Any, Some(vec![7, 7]))]);
    let absent = storage_key("many", "y");
    let got = b.get_many(&[&absent, &present, &absent]);
    assert_eq!(got, vec![Ok(None), Ok(Some(vec![7, 7])), Ok(None)]);
}

/// The suite's sample record at `revision` (what `big/k…` keys hold).
pub fn record_at(revision: u64) -> Vec<u8> {
    let mut r = sample_record();
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
