//! `datastorer check`: every record scanned, the ones that do not decode
//! reported and left as they are.
//!
//! Must not: rewrite a record it cannot decode.

use serde_json::Value;

use super::Opened;
use datastorer::storage::{split_storage_key, Record, RECORDS_PREFIX};

pub(crate) fn check(opened: &Opened) -> Result<(), String> {
    let (mut checked, mut bad) = (0usize, 0usize);
    opened.for_each_record(RECORDS_PREFIX, |k, v| {
        checked += 1;
        let name = split_storage_key(k).map(|(s, k)| format!("{s}/{k}")).unwrap_or_else(|| format!("{k:?}"));
        let problem = match Record::decode(v) {
            Err(e) => Some(e.to_string()),
            Ok(rec) if serde_json::from_slice::<Value>(&rec.data).is_err() => Some("data is not JSON".into()),
            Ok(rec) if serde_json::from_slice::<Value>(&rec.metadata).is_err() => Some("metadata is not JSON".into()),
            Ok(_) => None,
        };
        if let Some(p) = problem {
            bad += 1;
            println!("corrupt {name}: {p}");
        }
        Ok(())
    })?;
    println!("checked {checked} records: {bad} corrupt");
    if bad > 0 {
        Err(format!("{bad} corrupt record(s); they were left untouched"))
    } else {
        Ok(())
    }
}
