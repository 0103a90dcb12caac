//! `datastorer import`: JSON lines into a data directory or database, by the
//! rules every entry point applies, announced to running servers only once
//! flushed.
//!
//! Must not: rewrite a record it cannot decode.

use std::io::BufRead;
use std::path::Path;

use super::{DataDir, Line, Progress, TOOL_BATCH};
use datastorer::storage::{
    split_storage_key, storage_key, Backend, Precondition, Record, RecordHeader, WriteOp, WriteOutcome,
};

/// The store of an import line, by the rule every entry point applies
/// (`validate_user_store_name`), with one exception: an inbox record
/// (`S:inbox`, as `export` writes them, so a backup restores waiting
/// messages) whose data has exactly the shape of an inbox.
fn import_store_name(line: &Line) -> Result<(), String> {
    let Some(base) = line.store.strip_suffix(datastorer::INBOX_SUFFIX) else {
        return datastorer::validate_user_store_name(&line.store).map_err(|e| e.to_string());
    };
    datastorer::validate_user_store_name(base).map_err(|e| e.to_string())?;
    let shaped = line.data.as_object().is_some_and(|o| o.keys().all(|k| k == "last_id" || k == "messages"))
        && serde_json::from_value::<datastorer::Inbox>(line.data.clone()).is_ok();
    if shaped {
        Ok(())
    } else {
        Err(format!(
            "store {:?} is reserved for messages, and this line's data is not an inbox ({{\"last_id\", \"messages\"}})",
            line.store
        ))
    }
}

/// Why `line`'s data_version could never be opened, if so: an inbox has
/// no migrations; with the server's config, a store's records are at most
/// at its migration count (an undeclared store has none).
fn too_new(
    line: &Line,
    versions: Option<&std::collections::BTreeMap<String, usize>>,
    config: Option<&Path>,
) -> Option<String> {
    let (known, source) = if line.store.ends_with(datastorer::INBOX_SUFFIX) {
        (0, "an inbox has no migrations".to_owned())
    } else {
        let versions = versions?;
        let config = config.map_or_else(String::new, |p| p.display().to_string());
        match versions.get(&line.store) {
            Some(&n) => (n, format!("its {n} migration(s) in {config}")),
            None => (0, format!("{config} does not declare it, so it has no migrations")),
        }
    };
    (line.data_version as usize > known).then(|| {
        format!(
            "{}/{}: data_version {} is newer than store {:?} knows ({source}); the server could never open it",
            line.store, line.key, line.data_version, line.store
        )
    })
}

pub(crate) fn import(
    dir: &DataDir,
    input: Option<&Path>,
    overwrite: bool,
    force: bool,
    config: Option<&Path>,
) -> Result<(), String> {
    let versions = match config {
        Some(path) => Some(crate::config::store_data_versions(path).map_err(|e| e.0)?),
        None => None,
    };
    let reader: Box<dyn BufRead> = match input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin().lock())),
    };
    // Validate everything before writing anything.
    let (lines, mut problems) = read_lines(reader, versions.as_ref(), config)?;
    let opened = dir.open(true)?;
    let backend = opened.backend();
    let now = opened.now_ms();
    let current = stored_headers(backend, &lines, overwrite, force, now, &mut problems)?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        return Err(format!("{} problem(s); nothing was imported", problems.len()));
    }
    if config.is_none() && lines.iter().any(|(_, l)| l.data_version > 0) {
        eprintln!(
            "note: data versions were not checked against the stores' migrations; pass --config (or set \
             DATASTORER_CONFIG) to check them"
        );
    }
    let ops = records(backend, &lines, current, now)?;
    write_and_announce(backend, &ops)?;
    let entry = datastorer::AuditEntry {
        id: String::new(),
        at_ms: 0,
        actor: "cli".into(),
        action: "import".into(),
        store: None,
        key: None,
        outcome: "ok".into(),
        details: serde_json::json!({ "records": lines.len(), "overwrite": overwrite, "force": force }),
    };
    let (_, op) = entry.into_write(now);
    let audited = match backend.write_batch(std::slice::from_ref(&op)).pop() {
        Some(Ok(_)) => backend.flush(),
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    audited.map_err(|e| format!("imported, but the audit trail was not written: {e}"))?;
    eprintln!("imported {} records", lines.len());
    Ok(())
}

/// Every line, checked by the rules every entry point applies; the lines
/// that pass, and what is wrong with the others.
#[allow(clippy::type_complexity)]
fn read_lines(
    reader: Box<dyn BufRead>,
    versions: Option<&std::collections::BTreeMap<String, usize>>,
    config: Option<&Path>,
) -> Result<(Vec<(usize, Line)>, Vec<String>), String> {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    // A key twice would be written twice (the second write conflicting
    // with the first halfway through): refused up front like any bad line.
    let mut seen: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
    for (i, text) in reader.lines().enumerate() {
        let n = i + 1;
        let text = text.map_err(|e| format!("cannot read line {n}: {e}"))?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&text) {
            Ok(line) => {
                if let Err(e) = import_store_name(&line) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Err(e) = datastorer::validate_key(&line.key) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Err(e) = crate::validate::metadata(&line.metadata) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Some(e) = line.user_ids.iter().find_map(|u| crate::validate::user_id(u).err()) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Some(e) = too_new(&line, versions, config) {
                    problems.push(format!("line {n}: {e}"));
                } else if let Some(first) = seen.insert((line.store.clone(), line.key.clone()), n) {
                    problems.push(format!("line {n}: {}/{} is also on line {first}", line.store, line.key));
                } else {
                    lines.push((n, line));
                }
            }
            Err(e) => problems.push(format!("line {n}: {e}")),
        }
    }
    Ok((lines, problems))
}

/// The header each line's record has now (`None`: absent), adding a
/// problem for each that may not be replaced: it exists (without
/// `--overwrite`), a live lease holds it (without `--force`), or it is
/// corrupt (never overwritten).
fn stored_headers(
    backend: &dyn Backend,
    lines: &[(usize, Line)],
    overwrite: bool,
    force: bool,
    now: u64,
    problems: &mut Vec<String>,
) -> Result<Vec<Option<RecordHeader>>, String> {
    let mut current = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(TOOL_BATCH) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|(_, l)| storage_key(&l.store, &l.key)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        for ((n, line), existing) in chunk.iter().zip(backend.get_many(&refs)) {
            let existing = existing.map_err(|e| e.to_string())?;
            let name = format!("{}/{}", line.store, line.key);
            let header = match existing.as_deref() {
                None => None,
                Some(bytes) => match Record::decode(bytes) {
                    Ok(_) if !overwrite => {
                        problems.push(format!("line {n}: {name} already exists (use --overwrite)"));
                        None
                    }
                    Ok(rec) => match rec.lease.filter(|l| l.expires_at_ms > now) {
                        Some(l) if !force => {
                            problems.push(format!(
                                "line {n}: {name} is held by {:?} for {} more ms (use --force to fence it off)",
                                l.owner,
                                l.expires_at_ms - now
                            ));
                            None
                        }
                        _ => Some(rec.header),
                    },
                    Err(_) => {
                        problems.push(format!("line {n}: {name} exists and is corrupt; not overwritten"));
                        None
                    }
                },
            };
            current.push(header);
        }
    }
    Ok(current)
}

/// The record each line becomes, conditional on what is stored: a new
/// epoch above the stored record's (fencing off any holder) or above its
/// store's epoch floor (the highest epoch a deleted record reached).
fn records(
    backend: &dyn Backend,
    lines: &[(usize, Line)],
    current: Vec<Option<RecordHeader>>,
    now: u64,
) -> Result<Vec<WriteOp>, String> {
    let mut floors: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (_, line) in lines {
        if !floors.contains_key(line.store.as_str()) {
            let raw = backend.get(&datastorer::storage::epoch_floor_key(&line.store)).map_err(|e| e.to_string())?;
            floors.insert(&line.store, raw.as_deref().and_then(RecordHeader::peek).map_or(0, |h| h.epoch));
        }
    }
    let ops = lines.iter().zip(current).map(|((_, line), header)| -> Result<WriteOp, String> {
        let floor = floors.get(line.store.as_str()).copied().unwrap_or(0);
        let data = serde_json::to_vec(&line.data).map_err(|e| e.to_string())?;
        let metadata = serde_json::to_vec(&line.metadata).map_err(|e| e.to_string())?;
        let record = Record {
            header: RecordHeader {
                epoch: header.map_or(floor, |h| h.epoch) + 1,
                revision: header.map_or(0, |h| h.revision) + 1,
            },
            data_version: line.data_version,
            data,
            metadata,
            user_ids: line.user_ids.iter().filter_map(|u| crate::validate::user_id(u).ok()).collect(),
            lease: None,
            created_at_ms: line.created_at_ms.unwrap_or(now),
            updated_at_ms: line.updated_at_ms,
        };
        Ok(WriteOp::new(
            storage_key(&line.store, &line.key),
            header.map_or(Precondition::Absent, Precondition::Header),
            Some(record.encode()),
        ))
    });
    ops.collect()
}

/// Writes the records in batches, each flushed before it is announced:
/// servers sharing the database learn of the new contents (change feeds,
/// caches, waiting opens) only once they are there to read. A conflict or
/// failure stops the import and says how many records went in before it.
fn write_and_announce(backend: &dyn Backend, ops: &[WriteOp]) -> Result<(), String> {
    let mut progress = Progress::new("import", ops.len());
    let mut imported = 0;
    for batch in ops.chunks(TOOL_BATCH) {
        let mut written = Vec::with_capacity(batch.len());
        let mut stopped = None;
        for (op, outcome) in batch.iter().zip(backend.write_batch(batch)) {
            let name = split_storage_key(&op.key).map(|(s, k)| format!("{s}/{k}")).unwrap_or_default();
            match outcome {
                Ok(WriteOutcome::Applied) => {
                    progress.tick();
                    written.push(op);
                }
                Ok(WriteOutcome::Conflict { .. }) => {
                    stopped = stopped.or(Some(format!("{name} changed during the import")))
                }
                Err(e) => stopped = stopped.or(Some(format!("{name}: {e}"))),
            }
        }
        backend.flush().map_err(|e| e.to_string())?;
        for op in &written {
            if let (Some((store, key)), Some(h)) =
                (split_storage_key(&op.key), op.value.as_deref().and_then(RecordHeader::peek))
            {
                backend.notices().publish_saved(store, key, h.revision);
            }
        }
        imported += written.len();
        if let Some(why) = stopped {
            return Err(format!("{why}; {imported} of {} records were imported before it", ops.len()));
        }
    }
    progress.finish();
    Ok(())
}
