//! `datastorer inspect`: one record, decoded.
//!
//! Must not: rewrite a record it cannot decode.

use serde_json::json;

use super::{json_or_string, Opened};
use datastorer::storage::{storage_key, Record};

pub(crate) fn inspect(opened: &Opened, store: &str, key: &str) -> Result<(), String> {
    let bytes = opened
        .backend()
        .get(&storage_key(store, key))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no record for key {key:?} in store {store:?}"))?;
    let rec =
        Record::decode(&bytes).map_err(|e| format!("record {store}/{key} is corrupt ({} bytes): {e}", bytes.len()))?;
    let out = json!({
        "store": store,
        "key": key,
        "epoch": rec.header.epoch,
        "revision": rec.header.revision,
        "data_version": rec.data_version,
        "data": json_or_string(&rec.data),
        "metadata": json_or_string(&rec.metadata),
        "user_ids": rec.user_ids,
        "lease": rec.lease.map(|l| json!({ "owner": l.owner, "expires_at_ms": l.expires_at_ms })),
        "created_at_ms": rec.created_at_ms,
        "updated_at_ms": rec.updated_at_ms,
        "size_bytes": bytes.len(),
    });
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}
