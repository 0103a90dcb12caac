//! `datastorer export`: records as JSON lines, from one snapshot.
//!
//! Must not: rewrite a record it cannot decode.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::{json_or_string, Line, Opened, Progress};
use datastorer::storage::{split_storage_key, store_prefix, Record, RECORDS_PREFIX};

pub(crate) fn export(opened: &Opened, store: Option<&str>, output: Option<&Path>) -> Result<(), String> {
    let prefix = store.map(store_prefix).unwrap_or_else(|| RECORDS_PREFIX.to_vec());
    // Counted for the progress bar only; the export itself is one snapshot.
    let mut total = 0;
    opened.for_each_record(&prefix, |_, _| {
        total += 1;
        Ok(())
    })?;
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut progress = Progress::new("export", total);
    let (mut exported, mut corrupt) = (0usize, 0usize);
    opened.for_each_record(&prefix, |k, v| {
        progress.tick();
        let (store, key) = split_storage_key(k).ok_or_else(|| format!("unexpected storage key {k:?}"))?;
        match Record::decode(v) {
            Ok(rec) => {
                let line = Line {
                    store,
                    key,
                    data_version: rec.data_version,
                    data: json_or_string(&rec.data),
                    metadata: json_or_string(&rec.metadata),
                    user_ids: rec.user_ids.into_iter().map(Value::String).collect(),
                    created_at_ms: Some(rec.created_at_ms),
                    updated_at_ms: rec.updated_at_ms,
                };
                let text = serde_json::to_string(&line).map_err(|e| e.to_string())?;
                writeln!(out, "{text}").map_err(|e| format!("write failed: {e}"))?;
                exported += 1;
            }
            Err(e) => {
                corrupt += 1;
                eprintln!("skipped corrupt record {store}/{key}: {e}");
            }
        }
        Ok(())
    })?;
    out.flush().map_err(|e| format!("write failed: {e}"))?;
    progress.finish();
    eprintln!("exported {exported} records ({corrupt} corrupt, skipped and left untouched)");
    if corrupt > 0 {
        return Err(format!("{corrupt} corrupt records were not exported (see `datastorer check`)"));
    }
    Ok(())
}
