//! The epoch floor of a store: the highest epoch any deleted record of the
//! store reached. A record created afresh starts above it, so a key that is
//! deleted and created again never reuses an epoch — a stale holder of the
//! old record can never match the new one (on a shared database fencing
//! compares epoch and revision, nothing else).
//!
//! Owns: the floor's storage key and encoding, raising it, reading it.
//! Must not: delete or create records itself (`Store::delete` and the
//! lease acquire do, calling in here first).
//!
//! The floor is one meta value per store (bounded, unlike a tombstone per
//! deleted key), stored as a record whose header epoch is the floor, so
//! every backend's header compare-and-swap guards raising it.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::{Error, KeyId};
use crate::retry::{Contention, CONTENTION_WINDOW};
use crate::storage::{Precondition, Record, RecordHeader, StorageKey, WriteOp, WriteOutcome};
use crate::types::Priority;

/// The meta key of `store`'s floor.
pub fn floor_key(store: &str) -> Vec<u8> {
    crate::storage::epoch_floor_key(store)
}

fn encode(header: RecordHeader) -> Vec<u8> {
    Record {
        header,
        data_version: 0,
        data: b"null".to_vec(),
        metadata: b"{}".to_vec(),
        user_ids: Vec::new(),
        lease: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
    .encode()
}

/// The floor's header in stored bytes (`None`: unreadable, treated as no floor
/// only by readers; raising refuses to overwrite it blindly).
pub fn decode(bytes: &[u8]) -> Option<RecordHeader> {
    RecordHeader::peek(bytes)
}

/// The floor of `store` (0 when no record of it was ever deleted).
///
/// On a backend no other process writes (sled, memory) the floor is read
/// once per store and then kept in the backend's `FloorCache`, raised by
/// `raise` of any engine on that backend: creating a key costs no extra
/// read. On a shared backend another process may have raised it, so it is
/// read every time.
pub(crate) async fn read(engine: &Engine, store: &Arc<str>, key: &Arc<str>) -> Result<u64, Error> {
    let cache = engine.backend.floor_cache();
    if let Some(floor) = cache.and_then(|c| c.get(store)) {
        return Ok(floor);
    }
    let v = engine.get(store, key, floor_key(store).into(), Priority::Normal).await?;
    let floor = v.as_deref().and_then(decode).map_or(0, |h| h.epoch);
    // A raise may have landed meanwhile: the higher one holds.
    Ok(cache.map_or(floor, |c| c.raise(store, floor)))
}

/// Raises the floor of `store` to at least `epoch`, before the record that
/// reached it is deleted (so a crash in between leaves the floor high,
/// which is harmless, never low).
pub(crate) async fn raise(engine: &Engine, store: &Arc<str>, key: &Arc<str>, epoch: u64) -> Result<(), Error> {
    let fkey: StorageKey = floor_key(store).into();
    // Concurrent deletes in other processes may race us; each round
    // re-reads, and a lost round waits a little (see `Contention`).
    let mut contention = Contention::new(CONTENTION_WINDOW);
    loop {
        let current = engine.get(store, key, fkey.clone(), Priority::Normal).await?;
        let header = current.as_deref().and_then(decode);
        if header.is_some_and(|h| h.epoch >= epoch) {
            return Ok(());
        }
        let (precondition, revision) = match (&current, header) {
            (None, _) => (Precondition::Absent, 1),
            (Some(_), Some(h)) => (Precondition::Header(h), h.revision + 1),
            // Unreadable floor bytes: replacing them is the only way on,
            // and a floor can only be raised by this, never lowered.
            (Some(_), None) => (Precondition::Any, 1),
        };
        let op = WriteOp::new(fkey.clone(), precondition, Some(encode(RecordHeader { epoch, revision })));
        match engine.write(store, key, op, Priority::Normal).await? {
            WriteOutcome::Applied => {
                if let Some(cache) = engine.backend.floor_cache() {
                    cache.raise(store, epoch);
                }
                return Ok(());
            }
            WriteOutcome::Conflict { .. } => match contention.next_wait() {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Err(Error::LeaseLost { at: KeyId::new(store.to_string(), key.to_string()) }),
            },
        }
    }
}
