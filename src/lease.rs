//! Taking a lease and loading a key: read the record, apply the acquire
//! policy, migrate and reconcile, then write the record back with the new
//! epoch as one compare-and-swap.
//!
//! Owns: the acquire loop and the untyped-to-typed load. Must not: keep
//! state between calls (the key actor owns the result).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::debug;

use crate::engine::Engine;
use crate::error::{Error, KeyId};
use crate::migration::{migrate, reconcile};
use crate::storage::{
    EndKind, LeaseHolder, Notice, NoticeKind, Precondition, Record, RecordHeader, StorageKey, WriteOp, WriteOutcome,
};
use crate::store_def::StoreDef;
use crate::types::Document;
use crate::types::{AcquirePolicy, Priority};

/// A key loaded under a fresh lease.
///
/// Kept compact (one per loaded key): metadata stays as the JSON bytes that
/// are written anyway, and user ids as a boxed slice (they rarely change).
pub(crate) struct Loaded<T> {
    pub data: T,
    pub metadata_json: Box<[u8]>,
    pub user_ids: Box<[String]>,
    pub data_version: u32,
    /// Bumped by every metadata or user-id change; compared with the value
    /// covered by the last durable write (equality only, so wrapping is fine).
    pub meta_generation: u32,
    pub saved_meta_generation: u32,
    /// Length of the last JSON encoding of `data`: the next one's capacity.
    pub encoded_len_hint: u32,
    /// The JSON encoding of `data` made when it last changed (the size
    /// check's), kept until the save that writes it, so a change is
    /// serialized once. `None` once saved or after any other change.
    /// Boxed: a clean key pays one pointer for it.
    pub encoded: Option<Box<Bytes>>,
    pub created_at_ms: u64,
    pub header: RecordHeader,
    pub expires_at_ms: u64,
    pub saved_checksum: u64,
    /// A write whose outcome is unknown (the queue gave up, but it may
    /// have applied): what it would have made the record. Boxed: rare.
    pub uncertain: Option<Box<Uncertain>>,
}

/// What a write of unknown outcome would have stored, so the next write
/// can recognise it as its own (see `KeyActor::write_done`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Uncertain {
    pub header: RecordHeader,
    pub checksum: u64,
    pub meta_generation: u32,
    pub expires_at_ms: u64,
}

struct Prepared<T> {
    data: T,
    user_ids: Vec<String>,
    data_version: u32,
    created_at_ms: u64,
    data_bytes: Vec<u8>,
    metadata_bytes: Vec<u8>,
}

impl<T> Prepared<T> {
    /// The typed document, and the record that takes the lease for `owner`
    /// under `header`.
    fn into_record(self, header: RecordHeader, owner: &str, expires_at_ms: u64, now_ms: u64) -> (T, Record) {
        let record = Record {
            header,
            data_version: self.data_version,
            data: self.data_bytes,
            metadata: self.metadata_bytes,
            user_ids: self.user_ids,
            lease: Some(LeaseHolder { owner: owner.to_owned(), expires_at_ms }),
            created_at_ms: self.created_at_ms,
            updated_at_ms: now_ms,
        };
        (self.data, record)
    }
}

impl<T> Loaded<T> {
    /// What a key actor holds after `record` (holding `data`) was written.
    fn written(data: T, record: Record, expires_at_ms: u64) -> Self {
        Loaded {
            data,
            saved_checksum: seahash::hash(&record.data),
            encoded_len_hint: u32::try_from(record.data.len()).unwrap_or(u32::MAX),
            metadata_json: record.metadata.into_boxed_slice(),
            user_ids: record.user_ids.into_boxed_slice(),
            data_version: record.data_version,
            meta_generation: 0,
            saved_meta_generation: 0,
            encoded: None,
            created_at_ms: record.created_at_ms,
            header: record.header,
            expires_at_ms,
            uncertain: None,
        }
    }
}

pub(crate) async fn acquire<T: Document>(
    store: Arc<StoreDef<T>>,
    key: Arc<str>,
    storage_key: StorageKey,
    user_ids: Vec<String>,
    policy: AcquirePolicy,
    one_shot: bool,
) -> Result<Loaded<T>, Error> {
    let engine = store.engine.clone();
    let started = Instant::now();
    // Subscribe before the first read so a release between read and wait is not missed.
    let mut notices = engine.backend.notices().subscribe();
    // Whether the last release request is known to have been answered; a
    // request is sent again after every wait that ended without a release
    // (notices across processes are lossy).
    let mut ask = true;
    // Lost compare-and-swap races (another writer moved the record between
    // our read and our write) are retried at once: a lost race is another
    // writer's progress, and the re-read sees its result, so a wait adds
    // nothing (and a key actor asleep inside its open, holding its key's
    // one-shot turn, starved writers racing it in a busy loop: a measured
    // livelock in `one_shot::create_only_and_if_match_writers_racing…`).
    let mut races = 0;
    // The header of a record whose lease the backend refused to hand over
    // because, by its clock, the lease was still live. It counts as live
    // for one wait only, then the backend is asked again: its clock may
    // trail the engine's estimate by a few ms at the expiry, and a dead
    // holder sends no release notice to wake us.
    let mut refused_live: Option<RecordHeader> = None;
    loop {
        let bytes = engine.get(&store.name, &key, storage_key.clone(), Priority::Normal).await?;
        let current = bytes.as_deref().map(Record::decode).transpose().map_err(|source| Error::CorruptRecord {
            at: KeyId::new(store.name.to_string(), key.to_string()),
            source,
        })?;
        let now_ms = engine.clock.now_ms();
        let mut stolen_from = None;
        if let Some((holder, header)) = current.as_ref().and_then(|r| r.lease.as_ref().map(|l| (l, r.header))) {
            let refused_just_now = refused_live.take() == Some(header);
            let live = holder.expires_at_ms > now_ms || refused_just_now;
            if holder.owner != *engine.owner && live {
                match on_held(&policy, started, Instant::now()) {
                    OnHeld::GiveUp => {
                        return Err(Error::LeaseHeld {
                            at: KeyId::new(store.name.to_string(), key.to_string()),
                            holder: holder.owner.clone(),
                            expires_at_ms: Some(holder.expires_at_ms),
                        })
                    }
                    OnHeld::Steal => stolen_from = Some(holder.owner.clone()),
                    OnHeld::Wait { ask_holder, deadline } => {
                        if ask_holder && ask {
                            request_release(&engine, &store.name, &key, &holder.owner);
                        }
                        // By our clock the lease may already have lapsed while
                        // the backend's clock says it has not: look again soon.
                        let remaining = Duration::from_millis(holder.expires_at_ms.saturating_sub(now_ms))
                            .max(Duration::from_millis(50));
                        let wait = deadline
                            .saturating_duration_since(Instant::now())
                            .min(remaining)
                            .min(engine.config.lease_poll_interval);
                        ask = wait_for_release(&mut notices, &store.name, &key, wait).await != WaitEnd::Released;
                        continue;
                    }
                }
            }
        }

        let prepared = prepare(&store, &key, current.as_ref(), &user_ids, now_ms)?;
        // A new record starts above every epoch a deleted record of this
        // store reached: epochs of a key never go back, across deletes too.
        let base = match &current {
            Some(r) => r.header.epoch,
            None => crate::epoch_floor::read(&engine, &store.name, &key).await?,
        };
        let header = RecordHeader { epoch: base + 1, revision: current.as_ref().map_or(0, |r| r.header.revision) + 1 };
        let expires_at_ms = now_ms + engine.config.lease_ttl.as_millis() as u64;
        let (data, record) = prepared.into_record(header, &engine.owner, expires_at_ms, now_ms);
        // Unless stealing, the backend checks the lease too: one whose
        // clock decides expiry (PostgreSQL) refuses a lease that is still
        // live by that clock, whatever ours says.
        let precondition = match (&current, &stolen_from) {
            (None, _) => Precondition::Absent,
            (Some(r), Some(_)) => Precondition::Header(r.header),
            (Some(r), None) => Precondition::Acquire { expected: r.header, now_ms },
        };
        let acquiring = match precondition {
            Precondition::Acquire { expected, .. } => Some(expected),
            _ => None,
        };
        // A create, or an open whose migration or reconciliation changed
        // what is stored, is a save: it leaves a version.
        let changed = current
            .as_ref()
            .is_none_or(|c| c.data != record.data || c.metadata != record.metadata || c.user_ids != record.user_ids);
        let value: bytes::Bytes = record.encode().into();
        // A one-shot's create is versioned by its own write, which follows
        // at once with the value asked for.
        let deferred = one_shot && current.is_none();
        let version = (store.retention.enabled && changed && !deferred).then(|| value.clone());
        let op = WriteOp {
            key: storage_key.clone(),
            precondition,
            value: Some(value),
            index: Some(record.index()),
            version,
        };
        let written = engine.write(&store.name, &key, op, Priority::Normal);
        match written.await? {
            WriteOutcome::Applied => {
                if let Some(holder) = stolen_from {
                    engine.backend.notices().publish(Notice {
                        store: store.name.to_string(),
                        key: key.to_string(),
                        kind: NoticeKind::Stolen { holder, by: engine.owner.to_string() },
                    });
                }
                debug!(target: "datastorer::lease", store = %store.name, key = %key, epoch = header.epoch, "lease acquired");
                let mut loaded = Loaded::written(data, record, expires_at_ms);
                if deferred {
                    // Dirty from the start: the next write saves (and keeps
                    // a version) even when it leaves the template as it is.
                    loaded.saved_checksum = !loaded.saved_checksum;
                }
                return Ok(loaded);
            }
            WriteOutcome::Conflict { current: found } if acquiring.is_some() && found == acquiring => {
                // Not a lost race: the lease is live by the backend's clock.
                refused_live = found;
            }
            WriteOutcome::Conflict { .. } => {
                races += 1;
                if races >= MAX_RACES {
                    return Err(Error::LeaseLost { at: KeyId::new(store.name.to_string(), key.to_string()) });
                }
            }
        }
    }
}

/// Lost compare-and-swap races an acquire retries before it gives up
/// (each one another writer's success).
const MAX_RACES: u32 = 16;

/// What the acquire does about a live lease another owner holds.
#[derive(Debug, PartialEq, Eq)]
enum OnHeld {
    /// Give up: `Fail`, or the wait's deadline passed.
    GiveUp,
    /// Take it without asking (`Steal`).
    Steal,
    /// Wait for a release until `deadline`, asking the holder to hand over
    /// first when `ask_holder` (`RequestRelease`).
    Wait { ask_holder: bool, deadline: Instant },
}

/// The policy's decision about a live lease, `now`, for an acquire that
/// started at `started`.
fn on_held(policy: &AcquirePolicy, started: Instant, now: Instant) -> OnHeld {
    let (timeout, ask_holder) = match *policy {
        AcquirePolicy::Fail => return OnHeld::GiveUp,
        AcquirePolicy::Steal => return OnHeld::Steal,
        AcquirePolicy::Wait { timeout } => (timeout, false),
        AcquirePolicy::RequestRelease { timeout } => (timeout, true),
    };
    let deadline = started + timeout;
    if now >= deadline {
        OnHeld::GiveUp
    } else {
        OnHeld::Wait { ask_holder, deadline }
    }
}

/// Asks `holder` to save and hand the key over (answered by its release).
fn request_release(engine: &Engine, store: &str, key: &str, holder: &str) {
    debug!(target: "datastorer::lease", store = %store, key = %key, holder = %holder, "requesting release");
    engine.backend.notices().publish(Notice {
        store: store.to_owned(),
        key: key.to_owned(),
        kind: NoticeKind::ReleaseRequested {
            holder: holder.to_owned(),
            requester: engine.owner.to_string(),
            because: EndKind::ReleaseRequested,
        },
    });
}

/// How a wait for a release ended.
#[derive(Debug, PartialEq, Eq)]
enum WaitEnd {
    /// The key was released.
    Released,
    /// Notices may have been missed (lagged, or a transport reconnected).
    Missed,
    /// Nothing arrived in time.
    TimedOut,
}

async fn wait_for_release(
    notices: &mut broadcast::Receiver<Notice>,
    store: &str,
    key: &str,
    wait: Duration,
) -> WaitEnd {
    let released = async {
        loop {
            match notices.recv().await {
                Ok(n) if n.store == store && n.key == key && matches!(n.kind, NoticeKind::Released { .. }) => {
                    return WaitEnd::Released
                }
                // Missed notices: re-read the record now.
                Ok(n) if n.kind == NoticeKind::Resync => return WaitEnd::Missed,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return WaitEnd::Missed,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::time::timeout(wait, released).await.unwrap_or(WaitEnd::TimedOut)
}

/// The stored document of `r` as the store's current version sees it:
/// migrated and reconciled with the template (what an open loads).
pub(crate) fn current_document<T: Document>(store: &StoreDef<T>, key: &str, r: &Record) -> Result<Value, Error> {
    let fail = |message: String| Error::Migration {
        at: KeyId::new(store.name.to_string(), key.to_owned()),
        from_version: r.data_version,
        message,
    };
    let doc: Value = serde_json::from_slice(&r.data).map_err(|e| fail(format!("stored data is not JSON: {e}")))?;
    let mut doc = migrate(doc, r.data_version, &store.migrations).map_err(fail)?;
    reconcile(&mut doc, &store.template_json);
    Ok(doc)
}

fn prepare<T: Document>(
    store: &StoreDef<T>,
    key: &str,
    current: Option<&Record>,
    user_ids: &[String],
    now_ms: u64,
) -> Result<Prepared<T>, Error> {
    let latest = store.migrations.len() as u32;
    let (doc, metadata, mut ids, created_at_ms) = match current {
        None => (store.template_json.clone(), store.metadata_template.clone(), Vec::new(), now_ms),
        Some(r) => {
            let fail = |message: String| Error::Migration {
                at: KeyId::new(store.name.to_string(), key.to_owned()),
                from_version: r.data_version,
                message,
            };
            let doc = current_document(store, key, r)?;
            let mut metadata: Value = if r.metadata.is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_slice(&r.metadata).map_err(|e| fail(format!("stored metadata is not JSON: {e}")))?
            };
            reconcile(&mut metadata, &store.metadata_template);
            (doc, metadata, r.user_ids.clone(), r.created_at_ms)
        }
    };
    for u in user_ids {
        if !ids.contains(u) {
            ids.push(u.clone());
        }
    }
    let data: T = serde_json::from_value(doc).map_err(|e| Error::Deserialize {
        at: KeyId::new(store.name.to_string(), key.to_owned()),
        message: e.to_string(),
    })?;
    let serialize_err = |e: serde_json::Error| Error::Serialize {
        at: KeyId::new(store.name.to_string(), key.to_owned()),
        message: e.to_string(),
    };
    let data_bytes = serde_json::to_vec(&data).map_err(serialize_err)?;
    let metadata_bytes = serde_json::to_vec(&metadata).map_err(serialize_err)?;
    Ok(Prepared { data, user_ids: ids, data_version: latest, created_at_ms, data_bytes, metadata_bytes })
}

#[cfg(test)]
mod tests {
    use super::{on_held, OnHeld};
    use crate::types::AcquirePolicy;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn each_policy_decides_about_a_live_lease_and_every_wait_ends_at_its_deadline() {
        let started = Instant::now();
        let t = Duration::from_secs(10);
        assert_eq!(on_held(&AcquirePolicy::Fail, started, started), OnHeld::GiveUp);
        assert_eq!(on_held(&AcquirePolicy::Steal, started, started + t * 2), OnHeld::Steal);
        let deadline = started + t;
        let waits = [(AcquirePolicy::Wait { timeout: t }, false), (AcquirePolicy::RequestRelease { timeout: t }, true)];
        for (policy, ask_holder) in waits {
            assert_eq!(on_held(&policy, started, started), OnHeld::Wait { ask_holder, deadline });
            assert_eq!(
                on_held(&policy, started, deadline - Duration::from_millis(1)),
                OnHeld::Wait { ask_holder, deadline }
            );
            assert_eq!(on_held(&policy, started, deadline), OnHeld::GiveUp, "{policy:?} at its deadline");
        }
    }
}
