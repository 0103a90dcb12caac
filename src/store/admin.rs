//! The administrative reads and writes that need no lease: listing keys,
//! reading a record as stored, deleting one (fenced by its header and
//! condition, with its inbox, through the queue like everything else).
//!
//! Must not: touch a loaded key's document; a forced delete ends its
//! session through the key actor.

#[allow(unused_imports)]
use super::*;

impl<T: Document> Store<T> {
    /// Keys stored in this store (loaded or not) that start with `prefix`,
    /// in byte order, after `start_after` (a cursor: the last key of the
    /// previous page), at most `limit`. Goes through the queue.
    pub async fn list_keys(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        let shared = &self.shared;
        let mut full_prefix = store_prefix(&shared.name);
        full_prefix.extend_from_slice(prefix.as_bytes());
        let label: Arc<str> = Arc::from(format!("{prefix}*"));
        let after = start_after.map(|k| storage_key(&shared.name, k));
        let rows = shared.engine.scan(&shared.name, &label, full_prefix, after, limit).await?;
        Ok(rows.into_iter().filter_map(|(k, _)| split_storage_key(&k).map(|(_, key)| key)).collect())
    }

    /// The stored record of `key` as it is on disk, without taking a lease
    /// (`None` if absent). A corrupt record is reported, not repaired.
    pub async fn inspect(&self, key: impl Into<Key>) -> Result<Option<Record>, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        self.shared.engine.read_record(&self.shared.name, &key).await
    }

    /// Deletes everything stored for `key` (administrative): its record and
    /// its inbox (`S:inbox`), the inbox first, so that no crash in between
    /// can leave messages for a key that no longer exists. Refused with
    /// `LeaseHeld` while this instance has the key loaded or another owner
    /// holds an unexpired lease, unless `force`. Answers whether a record existed.
    pub async fn delete(&self, key: impl Into<Key>, force: bool) -> Result<bool, Error> {
        self.delete_if(key, Expect::Anything, force).await
    }

    /// [`Store::delete`] on a condition (HTTP's `If-Match`): with
    /// `Expect::Version(h)` only while the stored record is at exactly `h`,
    /// checked by the backend in the same step as the delete; otherwise
    /// `PreconditionFailed` and nothing is deleted. With `Expect::Absent`
    /// it deletes nothing: `Ok(false)` when nothing is stored, else
    /// `PreconditionFailed`.
    pub async fn delete_if(&self, key: impl Into<Key>, expected: Expect, force: bool) -> Result<bool, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let shared = &self.shared;
        let engine = &shared.engine;
        let failed = || Error::PreconditionFailed { at: KeyId::new(shared.name.to_string(), key.clone()) };
        if expected == Expect::Absent {
            return match self.inspect(key.as_str()).await {
                Ok(None) => Ok(false),
                Ok(Some(_)) | Err(Error::CorruptRecord { .. }) => Err(failed()),
                Err(e) => Err(e),
            };
        }
        if let Some(session) = self.get(key.as_str()) {
            if !force {
                let expires_at_ms = session.lease().await.ok().map(|l| l.expires_at_ms);
                return Err(Error::LeaseHeld {
                    at: KeyId::new(shared.name.to_string(), key),
                    holder: engine.owner.to_string(),
                    expires_at_ms,
                });
            }
            // A condition that does not hold ends nothing: checked before
            // the session is told (the session is the record's one writer
            // here, so what it last wrote is what is stored).
            if let Expect::Version(want) = expected {
                let held = session.lease().await.map(|l| RecordHeader { epoch: l.epoch, revision: l.revision });
                if held.ok() != Some(want) {
                    return Err(failed());
                }
            }
            // A forced delete ends the live session here first: otherwise it
            // would go on changing a copy of a record that no longer exists,
            // and fail at its next write (at the latest at shutdown).
            let ending = shared.keys().get(key.as_str()).cloned();
            if let Some(cell) = &ending {
                cell.clone().control(crate::messages::key::Control::Notice(NoticeKind::Deleted));
            }
            // Its end is awaited, not polled (bounded: a stuck actor must
            // not hold the delete forever).
            if let Some(cell) = ending {
                let _ = tokio::time::timeout(CONTENTION_WINDOW, cell.signal().wait()).await;
            }
        }
        let current = self.inspect(key.as_str()).await;
        // A delete leaves a tombstone version (when the store keeps
        // versions), written in the same step as the delete.
        let tombstone = match (&current, self.def().retention.enabled) {
            (Ok(Some(rec)), true) => Some(bytes::Bytes::from(Record::tombstone(rec, engine.clock.now_ms()).encode())),
            _ => None,
        };
        let precondition = match current {
            Ok(None) if matches!(expected, Expect::Version(_)) => return Err(failed()),
            Ok(None) => {
                self.delete_inbox(&key).await?;
                return Ok(false);
            }
            Ok(Some(rec)) => {
                if let Expect::Version(want) = expected {
                    if rec.header != want {
                        return Err(failed());
                    }
                }
                if let Some(lease) = rec.lease.as_ref().filter(|l| l.expires_at_ms > engine.clock.now_ms()) {
                    if !force {
                        return Err(Error::LeaseHeld {
                            at: KeyId::new(shared.name.to_string(), key),
                            holder: lease.owner.clone(),
                            expires_at_ms: Some(lease.expires_at_ms),
                        });
                    }
                }
                Precondition::Header(rec.header)
            }
            // A corrupt record can be deleted only on purpose.
            Err(Error::CorruptRecord { .. }) if force && expected == Expect::Anything => Precondition::Any,
            Err(e) => return Err(e),
        };
        let key_arc: Arc<str> = Arc::from(key.as_str());
        // The epoch the record reached stays the floor of any record of this
        // store created later (for a corrupt one, the epoch its header shows).
        let reached = match precondition {
            Precondition::Header(h) => Some(h.epoch),
            _ => {
                let skey = StorageKey::record(&shared.name, &key_arc);
                let raw = engine.get(&shared.name, &key_arc, skey, Priority::Normal).await?;
                raw.as_deref().and_then(crate::storage::RecordHeader::peek).map(|h| h.epoch)
            }
        };
        if let Some(epoch) = reached {
            crate::epoch_floor::raise(engine, &shared.name, &key_arc, epoch).await?;
        }
        // Where the backend can, the record and its inbox go in one
        // all-or-nothing step: nothing of the key outlives its delete.
        if engine.backend.capabilities().writes_all_or_nothing && !shared.name.ends_with(INBOX_SUFFIX) {
            let deleted = self.delete_record_and_inbox(&key, precondition, expected, tombstone).await?;
            engine.backend.notices().publish(Notice { store: shared.name.to_string(), key, kind: NoticeKind::Deleted });
            return Ok(deleted);
        }
        let mut op = WriteOp::new(StorageKey::record(&shared.name, &key_arc), precondition, None::<bytes::Bytes>);
        op.version = tombstone;
        let outcome = engine.write(&shared.name, &key_arc, op, Priority::Normal).await?;
        let applied = match outcome {
            WriteOutcome::Applied => true,
            // Gone already: our own attempt whose answer was lost (the
            // queue retried it), or a delete racing ours. Either way what
            // was asked for holds; the record existed when we looked.
            WriteOutcome::Conflict { current: None } if self.inspect(key.as_str()).await?.is_none() => true,
            WriteOutcome::Conflict { .. } if matches!(expected, Expect::Version(_)) => return Err(failed()),
            WriteOutcome::Conflict { .. } => {
                return Err(Error::LeaseLost { at: KeyId::new(shared.name.to_string(), key) });
            }
        };
        // The record first, then its inbox: a delete refused by its
        // condition (or by a writer that got in first) then takes nothing
        // with it. A post racing us lands before the inbox goes (and goes
        // with it) or after (and waits for the key's next life). Should the
        // inbox delete fail, the error says so and a plain retry finishes
        // it: the record is absent then, and the inbox is deleted all the same.
        self.delete_inbox(&key).await?;
        if applied {
            engine.backend.notices().publish(Notice { store: shared.name.to_string(), key, kind: NoticeKind::Deleted });
        }
        Ok(true)
    }
}
