//! What a key's history is made of, as the API hands it out: version
//! ids (`EPOCH.REVISION`), listings and their pages, one version with its
//! document, what a restore goes back to and how it went.
//!
//! Owns: those value types. Must not: read or write (`store::history`
//! does), or import anything of the crate but `storage`.

use serde::Serialize;
use serde_json::Value;

pub use crate::storage::history::VersionId;
use crate::storage::{RecordHeader, RecordSummary};

/// The most versions one page of a listing holds.
pub const MAX_VERSIONS_PAGE: usize = 1000;

/// In which order a listing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionOrder {
    /// Oldest first (Roblox's `Enum.SortDirection.Ascending`).
    OldestFirst,
    /// Newest first (the default).
    #[default]
    NewestFirst,
}

/// Which versions a listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionQuery {
    /// The order.
    pub order: VersionOrder,
    /// Saved at or after this time (ms since the Unix epoch).
    pub from_ms: Option<u64>,
    /// Saved at or before this time.
    pub to_ms: Option<u64>,
    /// The cursor: versions after this one in the listing's order (the
    /// last id of the page before).
    pub after: Option<VersionId>,
    /// At most this many (1 to [`MAX_VERSIONS_PAGE`]).
    pub limit: usize,
}

impl Default for VersionQuery {
    fn default() -> Self {
        Self { order: VersionOrder::NewestFirst, from_ms: None, to_ms: None, after: None, limit: 100 }
    }
}

/// One version of a key, without its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// `EPOCH.REVISION`: the version's id (the record's ETag when it was current).
    pub version: String,
    /// The fencing epoch it was saved under.
    pub epoch: u64,
    /// Its revision.
    pub revision: u64,
    /// When it was saved (ms since the Unix epoch).
    pub saved_at_ms: u64,
    /// When the key was first created (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Bytes of its document's JSON (0 for a tombstone).
    pub size: usize,
    /// The data version (migrations applied) it was saved at.
    pub data_version: u32,
    /// Its user ids.
    pub user_ids: Vec<String>,
    /// Whether it records a delete.
    pub deleted: bool,
}

impl VersionInfo {
    pub(crate) fn of(summary: RecordSummary) -> Self {
        let h = summary.header;
        VersionInfo {
            version: version_id_text(h),
            epoch: h.epoch,
            revision: h.revision,
            saved_at_ms: summary.updated_at_ms,
            created_at_ms: summary.created_at_ms,
            size: summary.data_len,
            data_version: summary.data_version,
            deleted: summary.is_tombstone(),
            user_ids: summary.user_ids,
        }
    }

    /// What a listing shows of a decoded version.
    pub(crate) fn of_record(rec: &crate::storage::Record) -> Self {
        let h = rec.header;
        VersionInfo {
            version: version_id_text(h),
            epoch: h.epoch,
            revision: h.revision,
            saved_at_ms: rec.updated_at_ms,
            created_at_ms: rec.created_at_ms,
            size: rec.data.len(),
            data_version: rec.data_version,
            deleted: rec.is_tombstone(),
            user_ids: rec.user_ids.clone(),
        }
    }

    /// The version's id.
    pub fn id(&self) -> VersionId {
        RecordHeader { epoch: self.epoch, revision: self.revision }
    }
}

/// A page of versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionPage {
    /// The versions, in the order asked for.
    pub versions: Vec<VersionInfo>,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<String>,
}

/// One version with its content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    /// What a listing shows of it.
    #[serde(flatten)]
    pub info: VersionInfo,
    /// The document as it was saved (before any later migration); `None`
    /// for a tombstone.
    pub data: Option<Value>,
    /// Its metadata; `None` for a tombstone.
    pub metadata: Option<Value>,
}

/// The text form of a version id, `EPOCH.REVISION`.
pub fn version_id_text(id: VersionId) -> String {
    format!("{}.{}", id.epoch, id.revision)
}

/// Parses `EPOCH.REVISION`.
pub fn parse_version_id(text: &str) -> Option<VersionId> {
    let (e, r) = text.split_once('.')?;
    let all_digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(e) || !all_digits(r) {
        return None;
    }
    Some(RecordHeader { epoch: e.parse().ok()?, revision: r.parse().ok()? })
}

/// Which version a restore goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// This version.
    Version(VersionId),
    /// The version current at this time (ms since the Unix epoch).
    At(u64),
}

/// How a restore went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// The version restored.
    pub from: String,
    /// The new revision's id (`EPOCH.REVISION`, a new epoch), or `None`
    /// when the restored version was a tombstone and the key was deleted.
    pub version: Option<String>,
    /// What became of a holder: `none`, `released` (it saved its changes
    /// and handed the key over) or `fenced` (it did not answer in time;
    /// its unsaved changes, if any, are lost and it can no longer write).
    pub holder: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_read_back_and_refuse_what_is_not_one() {
        let id = RecordHeader { epoch: 3, revision: 17 };
        assert_eq!(parse_version_id(&version_id_text(id)), Some(id));
        for bad in ["", "3", "3.", ".17", "3.17.1", "a.b", "-1.2", "3.1 7", "999999999999999999999.1"] {
            assert_eq!(parse_version_id(bad), None, "{bad:?}");
        }
    }
}
