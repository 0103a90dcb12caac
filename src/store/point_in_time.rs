//! A whole store back to a point in time: every key whose version at T
//! differs from what is stored now gets that version as a new revision
//! (through the fenced `Store::restore`, so holders hand over or are
//! fenced), keys created after T (or deleted by T) are deleted leaving a
//! tombstone, keys with no history are reported and left alone. A dry run
//! lists what would change. Keys go in key order and a durable job record
//! notes how far it got: running the same restore again after a crash
//! resumes after the last key done, and a key done already is equal to its
//! version at T and is skipped, so nothing is done twice. Every change is a
//! new version saved after the restore began: restoring to just before it
//! (`undo_at_ms`) undoes it.
//!
//! Must not: write a record except through `restore` and `delete`.

#[allow(unused_imports)]
use super::*;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::history::{version_id_text, RestoreTarget, VersionId};
use crate::storage::history::{split_version_key, version_key, versions_of_store};
use crate::storage::{store_restore_key, EndKind, RecordSummary};

/// Changes listed in a report at most (the counts cover all of them).
pub const MAX_LISTED_CHANGES: usize = 10_000;

/// What a store restore does to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    /// The key.
    pub key: String,
    /// `restore` (to its version at T), `delete` (created after T, or
    /// deleted by then) or `unknown` (no version at or before T and
    /// nothing to say it did not exist: left alone).
    pub action: &'static str,
    /// Its version at T, for `restore`.
    pub to: Option<String>,
}

/// How a store restore went (or, dry, would go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct StoreRestoreReport {
    /// The point in time.
    pub at_ms: u64,
    /// Only listed, nothing written.
    pub dry_run: bool,
    /// Keys looked at.
    pub keys: u64,
    /// Keys restored to their version at T.
    pub restored: u64,
    /// Keys deleted (they did not exist at T).
    pub deleted: u64,
    /// Keys already as they were at T.
    pub unchanged: u64,
    /// Keys left alone: no history says what they were at T.
    pub unknown: u64,
    /// Holders that saved and handed their key over, or were fenced.
    pub holders_ended: u64,
    /// The changes, in key order (at most [`MAX_LISTED_CHANGES`]).
    pub changes: Vec<KeyChange>,
    /// The key an earlier, interrupted run of this restore had reached.
    pub resumed_after: Option<String>,
    /// Restore the store to this time to undo this restore.
    pub undo_at_ms: u64,
}

/// The job record of a restore under way: what `Store::restore_progress`
/// shows while it runs (from any process), and what a run again resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProgress {
    /// The point in time it restores to.
    pub at_ms: u64,
    /// When it began.
    pub started_at_ms: u64,
    /// The last key done (keys go in key order).
    pub done_through: Option<String>,
    /// Keys done so far by this run.
    #[serde(default)]
    pub keys_done: u64,
}

type Job = RestoreProgress;

impl<T: Document> Store<T> {
    async fn job(&self) -> Result<Option<Job>, Error> {
        let label: Arc<str> = Arc::from("(store restore)");
        let raw = self
            .engine()
            .get(&self.shared.name, &label, store_restore_key(self.name()).into(), Priority::Normal)
            .await?;
        Ok(raw.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn set_job(&self, job: Option<&Job>) -> Result<(), Error> {
        let label: Arc<str> = Arc::from("(store restore)");
        let value = job.map(|j| serde_json::to_vec(j).unwrap_or_default());
        let op = WriteOp::new(store_restore_key(self.name()), Precondition::Any, value);
        self.engine().write(&self.shared.name, &label, op, Priority::Normal).await.map(|_| ())
    }

    /// The store restore under way, if one is (or one was interrupted and
    /// waits to be run again): its target time and how far it got.
    pub async fn restore_progress(&self) -> Result<Option<RestoreProgress>, Error> {
        self.job().await
    }

    /// Every key's version at `at_ms` (`None`: a tombstone, or nothing at
    /// or before it), from one pass over the store's history.
    async fn versions_at(&self, at_ms: u64) -> Result<BTreeMap<String, Option<(VersionId, bool)>>, Error> {
        let label: Arc<str> = Arc::from("(store restore)");
        let prefix = versions_of_store(self.name());
        let mut at: BTreeMap<String, Option<(VersionId, bool)>> = BTreeMap::new();
        let mut after = None;
        loop {
            let page = self.engine().scan(&self.shared.name, &label, prefix.clone(), after.take(), 512).await?;
            let full = page.len() == 512;
            for (k, v) in &page {
                let (Some((_, key, id)), Some(summary)) = (split_version_key(k), RecordSummary::peek(v)) else {
                    continue;
                };
                let slot = at.entry(key).or_insert(None);
                // Oldest first within a key: the last at or before T wins.
                if summary.updated_at_ms <= at_ms {
                    *slot = Some((id, summary.is_tombstone()));
                }
            }
            match page.last() {
                Some((k, _)) if full => after = Some(k.clone()),
                _ => return Ok(at),
            }
        }
    }

    /// Restores the whole store to `at_ms` (admin), or with `dry_run` only
    /// lists what would change. See the module docs for what is restored,
    /// deleted and left alone, and how an interrupted run resumes.
    pub async fn restore_to(&self, at_ms: u64, dry_run: bool, handoff: Duration) -> Result<StoreRestoreReport, Error> {
        let engine = self.engine().clone();
        let at_versions = self.versions_at(at_ms).await?;
        let now_ms = engine.clock.now_ms();
        let job = match self.job().await? {
            Some(j) if j.at_ms == at_ms && !dry_run => j,
            _ => Job { at_ms, started_at_ms: now_ms, done_through: None, keys_done: 0 },
        };
        let mut report = StoreRestoreReport {
            at_ms,
            dry_run,
            resumed_after: job.done_through.clone(),
            undo_at_ms: job.started_at_ms.saturating_sub(1),
            ..StoreRestoreReport::default()
        };
        if !dry_run {
            self.set_job(Some(&job)).await?;
        }
        // Every key with a record now or a version ever, in key order.
        let mut keys: std::collections::BTreeSet<String> = at_versions.keys().cloned().collect();
        let mut after: Option<String> = None;
        loop {
            let page = self.list_keys("", after.as_deref(), 1000).await?;
            let done = page.len() < 1000;
            after = page.last().cloned();
            keys.extend(page);
            if done {
                break;
            }
        }
        let mut job = job;
        for key in keys {
            if job.done_through.as_ref().is_some_and(|d| key <= *d) {
                continue;
            }
            report.keys += 1;
            let current = match self.inspect(key.as_str()).await {
                Ok(c) => c,
                // A corrupt record is left as found (and counted unknown).
                Err(Error::CorruptRecord { .. }) => {
                    report.unknown += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let change = match (at_versions.get(&key).copied().flatten(), &current) {
                (Some((id, false)), Some(cur)) => {
                    let then = self.stored_version(&key, id).await?;
                    let same = then.as_ref().is_some_and(|t| {
                        t.data == cur.data && t.metadata == cur.metadata && t.user_ids == cur.user_ids
                    });
                    (!same).then_some(("restore", Some(id)))
                }
                (Some((id, false)), None) => Some(("restore", Some(id))),
                // Deleted by T, or created after it.
                (Some((_, true)), Some(_)) => Some(("delete", None)),
                (None, Some(cur)) if at_versions.contains_key(&key) || cur.created_at_ms > at_ms => {
                    Some(("delete", None))
                }
                (None, Some(_)) => Some(("unknown", None)),
                (_, None) => None,
            };
            let Some((action, to)) = change else {
                report.unchanged += 1;
                continue;
            };
            if report.changes.len() < MAX_LISTED_CHANGES {
                report.changes.push(KeyChange { key: key.clone(), action, to: to.map(version_id_text) });
            }
            match action {
                "restore" => report.restored += 1,
                "delete" => report.deleted += 1,
                _ => report.unknown += 1,
            }
            if dry_run || action == "unknown" {
                continue;
            }
            match (action, to) {
                ("restore", Some(id)) => {
                    let r = self.restore(key.as_str(), RestoreTarget::Version(id), &[], handoff).await?;
                    report.holders_ended += u64::from(r.holder != "none");
                }
                _ => {
                    let handed =
                        crate::handoff::hand_over(&engine, self.name(), &key, EndKind::Restored, handoff).await?;
                    report.holders_ended += u64::from(handed != crate::handoff::Handoff::Nobody);
                    self.delete(key.as_str(), true).await?;
                }
            }
            job.done_through = Some(key.clone());
            job.keys_done = report.keys;
            self.set_job(Some(&job)).await?;
            if report.keys % 1000 == 0 {
                tracing::info!(
                    target: "datastorer::history", store = %self.name(), at_ms, keys = report.keys,
                    restored = report.restored, deleted = report.deleted, "store restore under way"
                );
            }
        }
        if !dry_run {
            self.set_job(None).await?;
        }
        tracing::info!(
            target: "datastorer::history", store = %self.name(), at_ms, dry_run, keys = report.keys,
            restored = report.restored, deleted = report.deleted, unknown = report.unknown, "store restore done"
        );
        Ok(report)
    }

    /// The record of `key` as version `id` saved it, if kept.
    async fn stored_version(&self, key: &str, id: VersionId) -> Result<Option<Record>, Error> {
        let key_arc: Arc<str> = Arc::from(key);
        let skey: StorageKey = version_key(self.name(), key, id).into();
        match self.engine().get(&self.shared.name, &key_arc, skey, Priority::Normal).await? {
            None => Ok(None),
            Some(b) => Record::decode(&b)
                .map(Some)
                .map_err(|source| Error::CorruptRecord { at: KeyId::new(self.name(), key), source }),
        }
    }
}
