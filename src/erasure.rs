//! Finding and erasing by user id, across stores: the user-id index (kept
//! by every write that carries user ids, in the same atomic step) leads to
//! the records and versions tagged with an id; a subject-access export
//! reads them; an erasure deletes them (or, in a store declared `Unlink`,
//! removes the id and keeps the data), ends live sessions with `erased`,
//! and answers a receipt that names no erased data.
//!
//! Owns: the lookup, the erasure and its receipt. Must not: decide who may
//! erase (the server's roles do) or keep a copy of what it erased.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, KeyId};
use crate::messages::key::{Close, Control};
use crate::retry::{Contention, CONTENTION_WINDOW};
use crate::storage::history::{split_user_index_key, user_index_key, user_index_prefix, versions_of_key};
use crate::storage::{
    EndKind, Notice, NoticeKind, Precondition, Record, RecordHeader, StorageKey, WriteOp, WriteOutcome,
};
use crate::types::{CloseReason, EraseMode, Priority};

/// One record tagged with a user id, as a subject-access export shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRecord {
    /// Its store.
    pub store: String,
    /// Its key.
    pub key: String,
    /// The record as stored now, when it carries the id.
    pub current: Option<serde_json::Value>,
    /// Its kept versions that carry the id, oldest first, with their documents.
    pub versions: Vec<crate::history::Version>,
}

/// What one store's part of an erasure did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErasedCounts {
    /// Records deleted.
    pub records_deleted: u64,
    /// Records kept with the id removed (`Unlink`).
    pub records_unlinked: u64,
    /// Versions deleted.
    pub versions_deleted: u64,
    /// Versions kept with the id removed (`Unlink`).
    pub versions_unlinked: u64,
    /// Inboxes deleted.
    pub inboxes_deleted: u64,
    /// Live sessions ended (or handed over, for `Unlink`).
    pub sessions_ended: u64,
}

/// The receipt of an erasure: what was done, never what was erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReceipt {
    /// This erasure's id.
    pub id: String,
    /// When it finished (ms since the Unix epoch).
    pub at_ms: u64,
    /// Counts by store.
    pub stores: BTreeMap<String, ErasedCounts>,
    /// Records found through the index, whatever became of them.
    pub keys: u64,
    /// Whether the storage made the deleted bytes unreadable in its files
    /// at once (PostgreSQL's `VACUUM`); `false` on sled, which reclaims a
    /// log segment when it rewrites it (see `docs/history.md`).
    pub storage_reclaimed: bool,
}

fn check_user_id(user_id: &str) -> Result<(), Error> {
    let bad = |reason| Error::InvalidName { what: "user id", value: user_id.chars().take(64).collect(), reason };
    if user_id.is_empty() || user_id.len() > 128 {
        return Err(bad("a user id is 1 to 128 bytes"));
    }
    if user_id.chars().any(char::is_control) {
        return Err(bad("a user id has no control characters"));
    }
    Ok(())
}

/// The keys the index names for `user_id`, as (store, key), in order.
async fn indexed_keys(engine: &Engine, user_id: &str) -> Result<Vec<(String, String)>, Error> {
    let label: Arc<str> = Arc::from("(users)");
    let entries = engine.scan_all(&label, &label, user_index_prefix(user_id)).await?;
    Ok(entries.iter().filter_map(|(k, _)| split_user_index_key(k)).map(|(_, store, key)| (store, key)).collect())
}

/// Every kept version of `store/key`: (storage key, record), oldest first.
/// A version that does not decode is an error naming the key (kept, never dropped).
async fn versions_of(engine: &Engine, store: &str, key: &str) -> Result<Vec<(Vec<u8>, Record)>, Error> {
    let (s, k): (Arc<str>, Arc<str>) = (Arc::from(store), Arc::from(key));
    let entries = engine.scan_all(&s, &k, versions_of_key(store, key)).await?;
    entries
        .into_iter()
        .map(|(sk, v)| {
            Record::decode(&v)
                .map(|rec| (sk, rec))
                .map_err(|source| Error::CorruptRecord { at: KeyId::new(store, key), source })
        })
        .collect()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn version_of(rec: &Record) -> crate::history::Version {
    let (data, metadata) = match rec.is_tombstone() {
        true => (None, None),
        false => (Some(json(&rec.data)), Some(json(&rec.metadata))),
    };
    crate::history::Version { info: crate::history::VersionInfo::of_record(rec), data, metadata }
}

/// Every record and version tagged with `user_id`, across stores.
pub(crate) async fn find(engine: &Engine, user_id: &str) -> Result<Vec<UserRecord>, Error> {
    check_user_id(user_id)?;
    let tagged = |r: &Record| r.user_ids.iter().any(|u| u == user_id);
    let mut out = Vec::new();
    for (store, key) in indexed_keys(engine, user_id).await? {
        let current = engine.read_record(&store, &key).await?.filter(tagged).map(|r| {
            serde_json::json!({
                "data": json(&r.data), "metadata": json(&r.metadata), "user_ids": r.user_ids,
                "epoch": r.header.epoch, "revision": r.header.revision, "data_version": r.data_version,
                "created_at_ms": r.created_at_ms, "updated_at_ms": r.updated_at_ms,
            })
        });
        let versions: Vec<_> = versions_of(engine, &store, &key)
            .await?
            .iter()
            .filter(|(_, r)| tagged(r))
            .map(|(_, r)| version_of(r))
            .collect();
        if current.is_some() || !versions.is_empty() {
            out.push(UserRecord { store, key, current, versions });
        }
    }
    Ok(out)
}

/// Deletes `store/key`'s record unconditionally but fenced (the header it
/// read), leaving no tombstone; answers whether one existed.
async fn delete_record(engine: &Engine, store: &str, key: &str) -> Result<bool, Error> {
    let (s, k): (Arc<str>, Arc<str>) = (Arc::from(store), Arc::from(key));
    let mut contention = Contention::new(CONTENTION_WINDOW);
    loop {
        let Some(bytes) = engine.get(&s, &k, StorageKey::record(&s, &k), Priority::Normal).await? else {
            return Ok(false);
        };
        let precondition = match RecordHeader::peek(&bytes) {
            Some(h) => {
                crate::epoch_floor::raise(engine, &s, &k, h.epoch).await?;
                Precondition::Header(h)
            }
            // A corrupt record tagged with the id is erased all the same.
            None => Precondition::Any,
        };
        let op = WriteOp::new(StorageKey::record(&s, &k), precondition, None::<bytes::Bytes>);
        match engine.write(&s, &k, op, Priority::Normal).await? {
            WriteOutcome::Applied => return Ok(true),
            WriteOutcome::Conflict { .. } => match contention.next_wait() {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(Error::LeaseLost { at: KeyId::new(store, key) }),
            },
        }
    }
}

async fn write_any(
    engine: &Engine,
    store: &str,
    key: &str,
    storage_key: Vec<u8>,
    value: Option<Vec<u8>>,
) -> Result<(), Error> {
    let (s, k): (Arc<str>, Arc<str>) = (Arc::from(store), Arc::from(key));
    engine.write(&s, &k, WriteOp::new(storage_key, Precondition::Any, value), Priority::Normal).await.map(|_| ())
}

/// Ends a session of this instance on `store/key` without saving (its data
/// is about to go); answers whether there was one.
async fn end_local_session(engine: &Engine, store: &str, key: &str) -> bool {
    let Some(actor) = engine.registry.find(store, key) else { return false };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !actor.control(Control::Close(Close { reason: CloseReason::Erased, receipt: tx })) {
        return false;
    }
    let _ = tokio::time::timeout(CONTENTION_WINDOW, rx).await;
    true
}

/// Erases `user_id` everywhere the index leads, store by store as each
/// declares (`EraseMode`). Idempotent: erasing again finds nothing.
pub(crate) async fn erase(
    engine: &Engine,
    user_id: &str,
    only: Option<&[String]>,
    handoff: Duration,
) -> Result<ErasureReceipt, Error> {
    check_user_id(user_id)?;
    let mut keys = indexed_keys(engine, user_id).await?;
    if let Some(stores) = only {
        keys.retain(|(store, _)| stores.iter().any(|s| s == store));
    }
    let mut stores: BTreeMap<String, ErasedCounts> = BTreeMap::new();
    for (store, key) in &keys {
        let counts = stores.entry(store.clone()).or_default();
        match engine.registry.erase_mode(store) {
            EraseMode::Delete => {
                // The record goes, with its inbox and its whole history,
                // when it carries the id now; a record that only carried
                // it once (someone else's now) keeps its own data, and
                // only the versions that carried the id go.
                let tagged_now = match engine.read_record(store, key).await {
                    Ok(Some(r)) => r.user_ids.iter().any(|u| u == user_id),
                    Ok(None) => false,
                    Err(Error::CorruptRecord { .. }) => false,
                    Err(e) => return Err(e),
                };
                if tagged_now {
                    if end_local_session(engine, store, key).await {
                        counts.sessions_ended += 1;
                    }
                    counts.records_deleted += u64::from(delete_record(engine, store, key).await?);
                    let inbox = crate::inbox_store_name(store);
                    counts.inboxes_deleted += u64::from(delete_record(engine, &inbox, key).await?);
                }
                for (sk, rec) in versions_of(engine, store, key).await? {
                    if tagged_now || rec.user_ids.iter().any(|u| u == user_id) {
                        write_any(engine, store, key, sk, None).await?;
                        counts.versions_deleted += 1;
                    }
                }
            }
            EraseMode::Unlink => {
                let handed = crate::handoff::hand_over(engine, store, key, EndKind::Erased, handoff).await?;
                if handed != crate::handoff::Handoff::Nobody {
                    counts.sessions_ended += 1;
                }
                counts.records_unlinked += u64::from(unlink_record(engine, store, key, user_id).await?);
                for (sk, mut rec) in versions_of(engine, store, key).await? {
                    if rec.user_ids.iter().any(|u| u == user_id) {
                        rec.user_ids.retain(|u| u != user_id);
                        write_any(engine, store, key, sk, Some(rec.encode())).await?;
                        counts.versions_unlinked += 1;
                    }
                }
            }
        }
        write_any(engine, store, key, user_index_key(user_id, store, key), None).await?;
        // Holders elsewhere check the record and end with `erased`.
        engine.backend.notices().publish(Notice { store: store.clone(), key: key.clone(), kind: NoticeKind::Erased });
    }
    // The deleted bytes out of the storage files, where the backend can
    // (outside the queue: a long maintenance statement, not a write).
    let backend = engine.backend.clone();
    let reclaimed = match tokio::task::spawn_blocking(move || backend.reclaim_deleted()).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::warn!(target: "datastorer::audit", error = %e, "erased, but the storage could not reclaim the deleted bytes yet");
            false
        }
        Err(_) => false,
    };
    let at_ms = engine.clock.now_ms();
    // Distinct per erasure, even two in one millisecond (a replayed request).
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!(
        "erasure-{at_ms}-{:016x}",
        seahash::hash(format!("{}\0{user_id}\0{at_ms}\0{n}", engine.owner).as_bytes())
    );
    let receipt = ErasureReceipt { id, at_ms, stores, keys: keys.len() as u64, storage_reclaimed: reclaimed };
    tracing::info!(target: "datastorer::audit", action = "erase", receipt = %receipt.id, keys = receipt.keys, "user id erased");
    Ok(receipt)
}

/// Removes `user_id` from `store/key`'s record under a new epoch (so a
/// holder from before, which still has the id in memory, can never write
/// it back); answers whether the record carried it.
async fn unlink_record(engine: &Engine, store: &str, key: &str, user_id: &str) -> Result<bool, Error> {
    let (s, k): (Arc<str>, Arc<str>) = (Arc::from(store), Arc::from(key));
    let mut contention = Contention::new(CONTENTION_WINDOW);
    loop {
        let Some(mut rec) = engine.read_record(store, key).await? else { return Ok(false) };
        if !rec.user_ids.iter().any(|u| u == user_id) {
            return Ok(false);
        }
        let expected = rec.header;
        rec.user_ids.retain(|u| u != user_id);
        rec.header = RecordHeader { epoch: expected.epoch + 1, revision: expected.revision + 1 };
        rec.lease = None;
        rec.updated_at_ms = engine.clock.now_ms();
        let value: bytes::Bytes = rec.encode().into();
        let keeps = engine.registry.keeps_versions(store);
        let op = WriteOp {
            key: StorageKey::record(&s, &k),
            precondition: Precondition::Header(expected),
            version: keeps.then(|| value.clone()),
            value: Some(value),
            index: Some(rec.index()),
        };
        match engine.write(&s, &k, op, Priority::Normal).await? {
            WriteOutcome::Applied => return Ok(true),
            WriteOutcome::Conflict { .. } => match contention.next_wait() {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(Error::LeaseLost { at: KeyId::new(store, key) }),
            },
        }
    }
}
