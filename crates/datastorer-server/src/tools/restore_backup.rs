//! `datastorer restore-backup`: an online backup into an empty data
//! directory or database (the engine's `backup::restore_backup`), then an
//! entry in the restored audit trail.
//!
//! Must not: restore into storage that holds records.

use std::path::Path;

use super::Opened;

pub(crate) fn restore_backup(opened: &Opened, input: &Path) -> Result<(), String> {
    let backend = opened.backend();
    let now = opened.now_ms();
    let open = || -> std::io::Result<Box<dyn std::io::Read>> { Ok(Box::new(std::fs::File::open(input)?)) };
    let report = datastorer::backup::restore_backup(backend, open, now)
        .map_err(|e| format!("{}: {e}; nothing was restored", input.display()))?;
    let entry = datastorer::AuditEntry {
        id: String::new(),
        at_ms: 0,
        actor: "cli".into(),
        action: "restore_backup".into(),
        store: None,
        key: None,
        outcome: "ok".into(),
        details: serde_json::json!({ "report": report, "file": input.display().to_string() }),
    };
    let (_, op) = entry.into_write(now);
    let audited = match backend.write_batch(std::slice::from_ref(&op)).pop() {
        Some(Ok(_)) => backend.flush(),
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    audited.map_err(|e| format!("restored, but the audit trail was not written: {e}"))?;
    eprintln!(
        "restored {} entries ({} records, {} kept as found because they do not decode) from a backup taken at {} ms; \
         every epoch raised by {}",
        report.written, report.records, report.corrupt_records, report.taken_at_ms, report.epoch_raise
    );
    Ok(())
}
