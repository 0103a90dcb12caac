//! A key's history: listing its versions, reading one or the one current
//! at a time, and the fenced restore of a key to one of them.
//!
//! Every acknowledged save of a store that keeps versions left one, in the
//! same atomic write as the record (`storage::history`); a delete left a
//! tombstone. A restore never rewrites history: it writes the chosen
//! version as a new revision, under a new epoch, so a holder from before
//! it can never write over it.
//!
//! Must not: write a version itself (only the backend's atomic write
//! does), or touch a live session's document (the holder hands the key
//! over, or is fenced).

#[allow(unused_imports)]
use super::*;

use std::time::Duration;

use serde::Serialize;

pub use crate::history::*;
use crate::storage::history::{split_version_key, version_key, versions_of_key};
use crate::storage::{EndKind, RecordSummary};

/// Versions read from storage per scan.
const SCAN_PAGE: usize = 512;

impl<T: Document> Store<T> {
    /// Every kept version of `key`, oldest first, as summaries.
    async fn all_versions(&self, key: &str) -> Result<Vec<VersionInfo>, Error> {
        let shared = &self.shared;
        let key_arc: Arc<str> = Arc::from(key);
        let entries = shared.engine.scan_all(&shared.name, &key_arc, versions_of_key(&shared.name, key)).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in &entries {
            match RecordSummary::peek(v) {
                Some(s) => out.push(VersionInfo::of(s)),
                None => tracing::warn!(
                    target: "datastorer::history", store = %shared.name, key,
                    entry = ?split_version_key(k).map(|(_, _, id)| version_id_text(id)),
                    "a stored version does not decode; it is skipped and kept"
                ),
            }
        }
        Ok(out)
    }

    /// A page of `key`'s versions (read role): every acknowledged save
    /// of a store that keeps versions, and a tombstone for each delete,
    /// within the store's retention.
    pub async fn versions(&self, key: impl Into<Key>, query: &VersionQuery) -> Result<VersionPage, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let limit = query.limit.clamp(1, MAX_VERSIONS_PAGE);
        let mut all = self.all_versions(&key).await?;
        if query.order == VersionOrder::NewestFirst {
            all.reverse();
        }
        let beyond = |v: &VersionInfo| match (query.after, query.order) {
            (None, _) => true,
            (Some(a), VersionOrder::OldestFirst) => (v.epoch, v.revision) > (a.epoch, a.revision),
            (Some(a), VersionOrder::NewestFirst) => (v.epoch, v.revision) < (a.epoch, a.revision),
        };
        let in_range = |v: &VersionInfo| {
            query.from_ms.is_none_or(|f| v.saved_at_ms >= f) && query.to_ms.is_none_or(|t| v.saved_at_ms <= t)
        };
        let mut matching = all.into_iter().filter(|v| beyond(v) && in_range(v));
        let versions: Vec<VersionInfo> = matching.by_ref().take(limit).collect();
        let next = match matching.next() {
            Some(_) => versions.last().map(|v| v.version.clone()),
            None => None,
        };
        Ok(VersionPage { versions, next })
    }

    /// The version of `key` at exactly `id` as it was stored, undecoded
    /// (`None` when no such version is kept): what a caller that wrote it
    /// answers about its own write, whatever was written after it.
    pub async fn inspect_version(&self, key: impl Into<Key>, id: VersionId) -> Result<Option<Record>, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let shared = &self.shared;
        let key_arc: Arc<str> = Arc::from(key.as_str());
        let skey: StorageKey = version_key(&shared.name, &key, id).into();
        let Some(bytes) = shared.engine.get(&shared.name, &key_arc, skey, Priority::Normal).await? else {
            return Ok(None);
        };
        Record::decode(&bytes)
            .map(Some)
            .map_err(|source| Error::CorruptRecord { at: KeyId::new(self.name(), key), source })
    }

    /// The version `id` of `key`, with its document as saved.
    pub async fn version(&self, key: impl Into<Key>, id: VersionId) -> Result<Version, Error> {
        let key = key.into().0;
        let Some(record) = self.inspect_version(key.as_str(), id).await? else {
            return Err(Error::VersionNotFound { at: KeyId::new(self.name(), key), wanted: version_id_text(id) });
        };
        self.decode_version(&key, record)
    }

    /// The version of `key` current at `at_ms` (the last saved at or
    /// before it); a tombstone when the key was deleted then.
    pub async fn version_at(&self, key: impl Into<Key>, at_ms: u64) -> Result<Version, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let all = self.all_versions(&key).await?;
        match all.iter().rev().find(|v| v.saved_at_ms <= at_ms) {
            Some(v) => self.version(key, v.id()).await,
            None => Err(Error::VersionNotFound { at: KeyId::new(self.name(), key), wanted: format!("at {at_ms} ms") }),
        }
    }

    fn decode_version(&self, key: &str, record: Record) -> Result<Version, Error> {
        let at = || KeyId::new(self.name(), key);
        let json = |b: &[u8], what: &str| {
            serde_json::from_slice::<Value>(b).map_err(|e| Error::Migration {
                at: at(),
                from_version: record.data_version,
                message: format!("stored {what} is not JSON: {e}"),
            })
        };
        let (data, metadata) = match record.is_tombstone() {
            true => (None, None),
            false => (Some(json(&record.data, "data")?), Some(json(&record.metadata, "metadata")?)),
        };
        Ok(Version { info: VersionInfo::of_record(&record), data, metadata })
    }

    /// Restores `key` to an earlier version (admin): a new revision with
    /// that version's document, metadata and user ids, migrated to the
    /// store's current data version, under a new epoch. The parts of the
    /// current document named by `keep` (JSON pointers, e.g. `/purchases`)
    /// are carried over unchanged.
    ///
    /// A holder of the key (a session here or in another process) is first
    /// asked to save and hand it over, and ends with `Restored`; one that
    /// does not answer within `handoff` is fenced (the restore takes a new
    /// epoch all the same) and its unsaved changes are lost. Restoring a
    /// tombstone deletes the key (fenced the same way).
    pub async fn restore(
        &self,
        key: impl Into<Key>,
        target: RestoreTarget,
        keep: &[String],
        handoff: Duration,
    ) -> Result<Restored, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let at = || KeyId::new(self.name(), key.clone());
        if let Some(bad) = keep.iter().find(|p| !(p.is_empty() || p.starts_with('/'))) {
            return Err(Error::Restore { at: at(), message: format!("{bad:?} is not a JSON pointer (RFC 6901)") });
        }
        let version = match target {
            RestoreTarget::Version(id) => self.version(key.as_str(), id).await?,
            RestoreTarget::At(ms) => self.version_at(key.as_str(), ms).await?,
        };
        let from = version.info.version.clone();
        let Some(old_data) = version.data.clone() else {
            // Back to "deleted": the key is deleted, fenced like any delete.
            let handed =
                crate::handoff::hand_over(self.engine(), self.name(), &key, EndKind::Restored, handoff).await?;
            self.delete(key.as_str(), true).await?;
            return Ok(Restored { from, version: None, holder: handed.as_str() });
        };
        let def = self.def();
        let engine = self.engine().clone();
        let mut restored = crate::migration::migrate(old_data, version.info.data_version, &def.migrations)
            .map_err(|message| Error::Migration { at: at(), from_version: version.info.data_version, message })?;
        crate::migration::reconcile(&mut restored, &def.template_json);
        // The restored document must be one the application can open.
        serde_json::from_value::<T>(restored.clone()).map_err(|e| Error::Deserialize {
            at: at(),
            message: format!("the restored version does not fit the store's type: {e}"),
        })?;
        let handed = crate::handoff::hand_over(self.engine(), self.name(), &key, EndKind::Restored, handoff).await?;
        let key_arc: Arc<str> = Arc::from(key.as_str());
        let skey = StorageKey::record(&self.shared.name, &key_arc);
        let mut contention = crate::retry::Contention::new(CONTENTION_WINDOW);
        loop {
            let current = self.inspect(key.as_str()).await?;
            let mut doc = restored.clone();
            if !keep.is_empty() {
                let now = match &current {
                    Some(r) => Some(crate::lease::current_document(def, &key, r)?),
                    None => None,
                };
                for pointer in keep {
                    keep_part(&mut doc, now.as_ref(), pointer)
                        .map_err(|message| Error::Restore { at: at(), message })?;
                }
            }
            let data = serde_json::to_vec(&doc).map_err(|e| Error::Serialize { at: at(), message: e.to_string() })?;
            if data.len() > engine.config.max_document_bytes {
                return Err(Error::DocumentTooLarge { at: at(), limit: engine.config.max_document_bytes });
            }
            let base = match &current {
                Some(r) => r.header,
                None => {
                    let floor = crate::epoch_floor::read(&engine, &self.shared.name, &key_arc).await?;
                    RecordHeader { epoch: floor.max(version.info.epoch), revision: version.info.revision }
                }
            };
            let now_ms = engine.clock.now_ms();
            let record = Record {
                // A new epoch: whoever held the key before can never write again.
                header: RecordHeader { epoch: base.epoch + 1, revision: base.revision + 1 },
                data_version: def.migrations.len() as u32,
                data,
                metadata: serde_json::to_vec(&version.metadata.clone().unwrap_or(Value::Object(Default::default())))
                    .map_err(|e| Error::Serialize { at: at(), message: e.to_string() })?,
                user_ids: version.info.user_ids.clone(),
                lease: None,
                created_at_ms: current.as_ref().map_or(version.info.created_at_ms, |r| r.created_at_ms),
                updated_at_ms: now_ms,
            };
            let precondition = match &current {
                Some(r) => Precondition::Header(r.header),
                None => Precondition::Absent,
            };
            let value: bytes::Bytes = record.encode().into();
            let op = WriteOp {
                key: skey.clone(),
                precondition,
                version: def.retention.enabled.then(|| value.clone()),
                value: Some(value),
                index: Some(record.index()),
            };
            match engine.write(&self.shared.name, &key_arc, op, Priority::Normal).await? {
                WriteOutcome::Applied => {
                    let notices = engine.backend.notices();
                    notices.publish(Notice {
                        store: self.name().to_owned(),
                        key: key.clone(),
                        kind: NoticeKind::Restored,
                    });
                    notices.publish(Notice {
                        store: self.name().to_owned(),
                        key: key.clone(),
                        kind: NoticeKind::Saved { revision: record.header.revision },
                    });
                    tracing::info!(
                        target: "datastorer::history", store = %self.shared.name, key = %key, from = %from,
                        to = %version_id_text(record.header), holder = handed.as_str(), "key restored"
                    );
                    return Ok(Restored {
                        from,
                        version: Some(version_id_text(record.header)),
                        holder: handed.as_str(),
                    });
                }
                // Someone wrote in between (a holder's last save, a
                // one-shot): look again, bounded.
                WriteOutcome::Conflict { .. } => match contention.next_wait() {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(Error::LeaseLost { at: at() }),
                },
            }
        }
    }
}

/// A version as pruning sees it: its storage key, when it was saved,
/// whether it is a tombstone.
type Kept = (Vec<u8>, u64, bool);

/// What one pruning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Versions looked at.
    pub examined: u64,
    /// Versions pruned.
    pub pruned: u64,
    /// Keys whose versions were looked at.
    pub keys: u64,
}

impl<T: Document> Store<T> {
    /// Prunes the versions the store's retention no longer keeps, in one
    /// pass over its history: bounded steps of at most [`SCAN_PAGE`]
    /// versions, each a scan and a group of deletes through the queue, so
    /// sessions' saves interleave with it. The background task (every
    /// `Config::prune_interval`) runs this.
    pub async fn prune_versions(&self) -> Result<PruneReport, Error> {
        let shared = &self.shared;
        let retention = shared.def.retention;
        let engine = shared.engine.clone();
        let label: Arc<str> = Arc::from("(history)");
        let prefix = crate::storage::history::versions_of_store(&shared.name);
        let mut report = PruneReport::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = engine.scan(&shared.name, &label, prefix.clone(), after.clone(), SCAN_PAGE).await?;
            if page.is_empty() {
                return Ok(report);
            }
            let full = page.len() == SCAN_PAGE;
            // Entries grouped by key, in order.
            let mut groups: Vec<(String, Vec<Kept>)> = Vec::new();
            for (k, v) in page {
                let Some((_, key, _)) = split_version_key(&k) else { continue };
                let Some(summary) = RecordSummary::peek(&v) else { continue };
                let entry = (k, summary.updated_at_ms, summary.is_tombstone());
                match groups.last_mut() {
                    Some((last, entries)) if *last == key => entries.push(entry),
                    _ => groups.push((key, vec![entry])),
                }
            }
            // A full page may end inside a key: that key is done by the
            // next step, unless it is the page's only key (then it is read
            // to its end here).
            if full && groups.len() > 1 {
                groups.pop();
            } else if full {
                if let Some((key, entries)) = groups.first_mut() {
                    let key_arc: Arc<str> = Arc::from(key.as_str());
                    let key_prefix = versions_of_key(&shared.name, key);
                    loop {
                        let from = entries.last().map(|e| e.0.clone());
                        let more = engine.scan(&shared.name, &key_arc, key_prefix.clone(), from, SCAN_PAGE).await?;
                        let done = more.len() < SCAN_PAGE;
                        for (k, v) in more {
                            if let Some(s) = RecordSummary::peek(&v) {
                                entries.push((k, s.updated_at_ms, s.is_tombstone()));
                            }
                        }
                        if done {
                            break;
                        }
                    }
                }
            }
            let now_ms = engine.clock.now_ms();
            // Sent together, so the queue commits them as one group.
            let mut deletes = tokio::task::JoinSet::new();
            for (key, entries) in &groups {
                report.keys += 1;
                report.examined += entries.len() as u64;
                let saved: Vec<u64> = entries.iter().map(|e| e.1).collect();
                let deleted = entries.last().is_some_and(|e| e.2);
                let key_arc: Arc<str> = Arc::from(key.as_str());
                for i in retention.prune(&saved, deleted, now_ms) {
                    let op = WriteOp::new(entries[i].0.clone(), Precondition::Any, None::<bytes::Bytes>);
                    deletes.spawn(engine.write(&shared.name, &key_arc, op, Priority::Normal));
                }
            }
            while let Some(outcome) = deletes.join_next().await {
                if let Ok(written) = outcome {
                    written?;
                    report.pruned += 1;
                }
            }
            after = groups.last().and_then(|(_, entries)| entries.last()).map(|e| e.0.clone());
            if after.is_none() || !full {
                return Ok(report);
            }
        }
    }

    /// Prunes every `interval` until the instance stops (the background
    /// task a store that keeps versions starts when it is registered).
    pub(crate) async fn prune_every(self, interval: Duration) {
        let engine = self.engine().clone();
        loop {
            tokio::select! {
                _ = engine.registry.stopped() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if engine.registry.is_shutting_down() {
                return;
            }
            match self.prune_versions().await {
                Ok(r) => tracing::info!(
                    target: "datastorer::history", store = %self.name(), examined = r.examined,
                    pruned = r.pruned, keys = r.keys, "versions pruned"
                ),
                Err(e) => {
                    tracing::warn!(target: "datastorer::history", store = %self.name(), error = %e, "pruning failed; tried again next time")
                }
            }
        }
    }
}

/// Carries the part of `now` (the current document) at `pointer` into
/// `doc` (the restored one): replaced where both have it, added where only
/// the current one does (its parent must exist in `doc`), removed where
/// the current document lacks it.
fn keep_part(doc: &mut Value, now: Option<&Value>, pointer: &str) -> Result<(), String> {
    let current = now.and_then(|n| n.pointer(pointer)).cloned();
    if pointer.is_empty() {
        if let Some(c) = current {
            *doc = c;
        }
        return Ok(());
    }
    let (parent_ptr, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let last = last.replace("~1", "/").replace("~0", "~");
    let Some(parent) = doc.pointer_mut(parent_ptr) else {
        return match current {
            None => Ok(()),
            Some(_) => Err(format!("cannot keep {pointer}: {parent_ptr:?} does not exist in the restored version")),
        };
    };
    match (parent, current) {
        (Value::Object(map), Some(c)) => {
            map.insert(last, c);
        }
        (Value::Object(map), None) => {
            map.remove(&last);
        }
        (Value::Array(items), c) => {
            let i: usize =
                last.parse().map_err(|_| format!("cannot keep {pointer}: {last:?} is not an array index"))?;
            match c {
                Some(c) if i < items.len() => items[i] = c,
                Some(c) if i == items.len() => items.push(c),
                Some(_) => return Err(format!("cannot keep {pointer}: index {i} is past the restored array's end")),
                None if i < items.len() => {
                    items.remove(i);
                }
                None => {}
            }
        }
        (_, None) => {}
        (_, Some(_)) => return Err(format!("cannot keep {pointer}: {parent_ptr:?} is not an object or array")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kept_parts_come_from_the_current_document() {
        let mut doc = json!({"coins": 10, "purchases": ["a"], "deep": {"x": 1}});
        let now = json!({"coins": 99, "purchases": ["a", "b"], "deep": {"x": 2, "y": 3}});
        keep_part(&mut doc, Some(&now), "/purchases").unwrap();
        keep_part(&mut doc, Some(&now), "/deep/y").unwrap();
        assert_eq!(doc, json!({"coins": 10, "purchases": ["a", "b"], "deep": {"x": 1, "y": 3}}));
        keep_part(&mut doc, Some(&json!({"coins": 1})), "/purchases").unwrap();
        assert_eq!(doc, json!({"coins": 10, "deep": {"x": 1, "y": 3}}), "absent now: absent after");
        let err = keep_part(&mut doc, Some(&json!({"a": {"b": {"c": 1}}})), "/a/b/c").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
