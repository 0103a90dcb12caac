//! Bulk migration: every record of a store brought to the store's newest
//! data version, online. Each key nobody holds goes through the one-shot
//! update (take the lease, load, migrate and reconcile as any open does,
//! write, give the lease back), conditional on the record it looked at, so
//! a write racing it is never overwritten; a key held by a session is left
//! to its holder, whose open migrated it already and whose next save writes
//! it. Records already current are skipped: running it again (after an
//! interruption, or to pick up the held keys later) does what is left.
//!
//! Must not: write except through `update_unleased`.

#[allow(unused_imports)]
use super::*;

use serde::Serialize;

/// Keys named in a report's failures at most (the count covers all).
const MAX_LISTED_FAILURES: usize = 100;

/// One record a bulk migration could not migrate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationFailure {
    /// The key.
    pub key: String,
    /// Why (a migration step's error, a corrupt record, …).
    pub error: String,
}

/// What a bulk migration did.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct MigrationReport {
    /// The data version records were brought to.
    pub to_version: u32,
    /// Records looked at.
    pub examined: u64,
    /// Records migrated and written.
    pub migrated: u64,
    /// Records already at the newest version.
    pub current: u64,
    /// Records held by a session: migrated in its holder's memory, written
    /// by its next save; run again later to see them current.
    pub held: u64,
    /// Records that failed (kept as they are).
    pub failed: u64,
    /// The first failures.
    pub failures: Vec<MigrationFailure>,
}

impl<T: Document> Store<T> {
    /// Brings every record of the store to its newest data version (see
    /// the module docs): online, resumable by running it again, idempotent.
    pub async fn migrate_all(&self) -> Result<MigrationReport, Error> {
        let latest = self.def().migrations.len() as u32;
        let mut report = MigrationReport { to_version: latest, ..MigrationReport::default() };
        let mut after: Option<String> = None;
        loop {
            let page = self.list_keys("", after.as_deref(), 500).await?;
            let done = page.len() < 500;
            after = page.last().cloned();
            for key in page {
                report.examined += 1;
                if let Err(e) = self.migrate_one(&key, latest, &mut report).await {
                    report.failed += 1;
                    if report.failures.len() < MAX_LISTED_FAILURES {
                        report.failures.push(MigrationFailure { key, error: e.to_string() });
                    }
                }
                if report.examined % 1000 == 0 {
                    tracing::info!(
                        target: "datastorer::migration", store = %self.name(), examined = report.examined,
                        migrated = report.migrated, held = report.held, failed = report.failed,
                        "bulk migration under way"
                    );
                }
            }
            if done {
                break;
            }
        }
        tracing::info!(
            target: "datastorer::migration", store = %self.name(), examined = report.examined,
            migrated = report.migrated, current = report.current, held = report.held, failed = report.failed,
            "bulk migration done"
        );
        Ok(report)
    }

    async fn migrate_one(&self, key: &str, latest: u32, report: &mut MigrationReport) -> Result<(), Error> {
        // A write racing ours moves the record on: look again (bounded).
        for _ in 0..8 {
            let Some(rec) = self.inspect(key).await? else { return Ok(()) };
            if rec.data_version >= latest {
                report.current += 1;
                return Ok(());
            }
            let held = rec.lease.as_ref().is_some_and(|l| l.expires_at_ms > self.engine().clock.now_ms());
            if held || self.get(key).is_some() {
                report.held += 1;
                return Ok(());
            }
            match self.update_unleased(key, Expect::Version(rec.header), |_| ()).await {
                Ok(_) => {
                    report.migrated += 1;
                    return Ok(());
                }
                Err(Error::LeaseHeld { .. }) => {
                    report.held += 1;
                    return Ok(());
                }
                Err(Error::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::LeaseLost { at: KeyId::new(self.name(), key) })
    }
}
