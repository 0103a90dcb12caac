//! The audit trail: every administrative action (a delete, a restore, an
//! erasure, an import, a forced open, …) recorded durably with who did it,
//! when, to what, and how it ended, beside the records (a meta value per
//! entry, so it lives in the same backend and backup as the data), and
//! logged at info under the target `datastorer::audit`.
//!
//! Owns: the entry's shape, its id and storage. Must not: decide what is
//! audited (the callers do) or hold personal data an erasure removes
//! (callers pass user ids hashed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::Error;
use crate::storage::{audit_key, Precondition, StorageKey, WriteOp, WriteOutcome, AUDIT_PREFIX};
use crate::types::Priority;

/// One administrative action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The entry's id (also the cursor of `audit_entries`), set when recorded.
    #[serde(default)]
    pub id: String,
    /// When it was recorded (ms since the Unix epoch), set when recorded.
    #[serde(default)]
    pub at_ms: u64,
    /// Who: the API key's name, `cli`, `roblox-webhook`, …
    pub actor: String,
    /// What: `delete`, `restore`, `erase`, `import`, `forced_open`, …
    pub action: String,
    /// The store acted on, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The key acted on, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `ok`, or the error it ended with.
    pub outcome: String,
    /// What else there is to know (a receipt id, counts, a version).
    #[serde(default)]
    pub details: serde_json::Value,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn id_of(key: &[u8]) -> String {
    key.strip_prefix(AUDIT_PREFIX).map(|rest| rest.iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default()
}

fn key_of(id: &str) -> Option<Vec<u8>> {
    if id.len() != 48 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = AUDIT_PREFIX.to_vec();
    for i in (0..48).step_by(2) {
        key.push(u8::from_str_radix(&id[i..i + 2], 16).ok()?);
    }
    Some(key)
}

/// Records `entry` durably; answers it with its id and time.
pub(crate) async fn record(engine: &Engine, mut entry: AuditEntry) -> Result<AuditEntry, Error> {
    let at_ms = engine.clock.now_ms();
    let key = audit_key(at_ms, seahash::hash(engine.owner.as_bytes()), SEQUENCE.fetch_add(1, Ordering::Relaxed));
    entry.id = id_of(&key);
    entry.at_ms = at_ms;
    let value = serde_json::to_vec(&entry).map_err(|e| Error::Config(format!("audit entry: {e}")))?;
    let label: Arc<str> = Arc::from("(audit)");
    let op = WriteOp::new(StorageKey::from(key), Precondition::Absent, Some(value));
    match engine.write(&label, &label, op, Priority::Normal).await? {
        WriteOutcome::Applied => {}
        // Our own write whose answer was lost, retried by the queue.
        WriteOutcome::Conflict { .. } => {}
    }
    tracing::info!(
        target: "datastorer::audit", id = %entry.id, actor = %entry.actor, action = %entry.action,
        store = entry.store.as_deref().unwrap_or(""), key = entry.key.as_deref().unwrap_or(""),
        outcome = %entry.outcome, details = %entry.details, "audit"
    );
    Ok(entry)
}

impl AuditEntry {
    /// This entry, recorded at `at_ms`, as the write that stores it: for an
    /// offline tool (an import), which writes with no engine running.
    pub fn into_write(mut self, at_ms: u64) -> (AuditEntry, WriteOp) {
        let key = audit_key(at_ms, seahash::hash(self.actor.as_bytes()), SEQUENCE.fetch_add(1, Ordering::Relaxed));
        self.id = id_of(&key);
        self.at_ms = at_ms;
        // A struct of strings, a number and a JSON value always serializes.
        let value = serde_json::to_vec(&self).unwrap_or_default();
        (self, WriteOp::new(StorageKey::from(key), Precondition::Absent, Some(value)))
    }
}

/// Entries after the one with id `after` (oldest first), at most `limit`,
/// and the id to continue from when more may follow.
pub(crate) async fn entries(
    engine: &Engine,
    after: Option<&str>,
    limit: usize,
    keep: impl Fn(&AuditEntry) -> bool,
) -> Result<(Vec<AuditEntry>, Option<String>), Error> {
    let label: Arc<str> = Arc::from("(audit)");
    let mut cursor = match after {
        Some(id) => Some(key_of(id).ok_or_else(|| Error::Config(format!("{id:?} is not an audit cursor")))?),
        None => None,
    };
    let mut out = Vec::new();
    // Filters may skip many: scan on in pages until the page is full or
    // the trail ends.
    loop {
        let page = engine.scan(&label, &label, AUDIT_PREFIX.to_vec(), cursor.take(), 500).await?;
        let full = page.len() == 500;
        for (k, v) in &page {
            let Ok(mut entry) = serde_json::from_slice::<AuditEntry>(v) else { continue };
            entry.id = id_of(k);
            if keep(&entry) {
                out.push(entry);
                if out.len() == limit {
                    return Ok((out, Some(id_of(k))));
                }
            }
        }
        match page.last() {
            Some((k, _)) if full => cursor = Some(k.clone()),
            _ => return Ok((out, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_key_in_hex_and_read_back() {
        let key = audit_key(1_700_000_000_000, 7, 3);
        let id = id_of(&key);
        assert_eq!(id.len(), 48);
        assert_eq!(key_of(&id), Some(key));
        assert_eq!(key_of("zz"), None);
        assert!(audit_key(1, 9, 9) < audit_key(2, 0, 0), "entries sort by time first");
    }
}
