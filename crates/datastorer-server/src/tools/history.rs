//! `datastorer history`: a key's kept versions, newest first, as JSON
//! lines; or one version (`--version`) or the one current at a time
//! (`--at-ms`) with its document.
//!
//! Must not: write anything.

use serde_json::json;

use super::{json_or_string, Opened};
use datastorer::storage::history::{split_version_key, version_key, versions_of_key};
use datastorer::storage::{Record, RecordSummary};
use datastorer::version_id_text;

/// Which versions to show.
pub(crate) enum Which {
    /// Every kept version, newest first.
    All,
    /// One version, `EPOCH.REVISION`.
    Version(String),
    /// The version current at this time (ms since the Unix epoch).
    At(u64),
}

pub(crate) fn history(opened: &Opened, store: &str, key: &str, which: Which) -> Result<(), String> {
    datastorer::validate_store_name(store).map_err(|e| e.to_string())?;
    datastorer::validate_key(key).map_err(|e| e.to_string())?;
    let backend = opened.backend();
    let mut summaries = Vec::new();
    let prefix = versions_of_key(store, key);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = backend.scan_prefix(&prefix, after.as_deref(), 1000).map_err(|e| e.to_string())?;
        for (k, v) in &page {
            match RecordSummary::peek(v) {
                Some(s) => summaries.push(s),
                None => eprintln!(
                    "version {:?} of {store}/{key} does not decode ({} bytes); skipped",
                    split_version_key(k).map(|(_, _, id)| version_id_text(id)),
                    v.len()
                ),
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == 1000 => after = Some(k.clone()),
            _ => break,
        }
    }
    let show_one = |id: datastorer::storage::RecordHeader| -> Result<(), String> {
        let bytes = backend
            .get(&version_key(store, key, id))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{store}/{key} has no version {}", version_id_text(id)))?;
        let rec = Record::decode(&bytes).map_err(|e| format!("version {} is corrupt: {e}", version_id_text(id)))?;
        let out = json!({
            "version": version_id_text(rec.header), "epoch": rec.header.epoch, "revision": rec.header.revision,
            "saved_at_ms": rec.updated_at_ms, "deleted": rec.is_tombstone(), "data_version": rec.data_version,
            "user_ids": rec.user_ids,
            "data": (!rec.is_tombstone()).then(|| json_or_string(&rec.data)),
            "metadata": (!rec.is_tombstone()).then(|| json_or_string(&rec.metadata)),
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        Ok(())
    };
    match which {
        Which::All => {
            for s in summaries.iter().rev() {
                let line = json!({
                    "version": version_id_text(s.header), "epoch": s.header.epoch, "revision": s.header.revision,
                    "saved_at_ms": s.updated_at_ms, "size": s.data_len, "user_ids": s.user_ids,
                    "deleted": s.is_tombstone(),
                });
                println!("{line}");
            }
            Ok(())
        }
        Which::Version(text) => {
            let id = datastorer::parse_version_id(&text)
                .ok_or_else(|| format!("{text:?} is not a version id (EPOCH.REVISION)"))?;
            show_one(id)
        }
        Which::At(ms) => {
            let found = summaries.iter().rev().find(|s| s.updated_at_ms <= ms);
            let s = found.ok_or_else(|| format!("{store}/{key} has no version at or before {ms} ms"))?;
            show_one(s.header)
        }
    }
}
