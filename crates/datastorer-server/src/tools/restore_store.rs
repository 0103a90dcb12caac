//! `datastorer restore-store`: the engine's point-in-time restore of one
//! store (`Store::restore_to`), run by an engine started here on the
//! storage the flags name, so it takes the same fenced paths as the
//! server's `POST /v1/stores/{store}/restore`.
//!
//! Must not: write records itself.

use std::path::Path;
use std::time::Duration;

use super::Opened;

pub(crate) fn restore_store(
    opened: Opened,
    store: &str,
    at_ms: u64,
    dry_run: bool,
    config: Option<&Path>,
) -> Result<(), String> {
    datastorer::validate_user_store_name(store).map_err(|e| e.to_string())?;
    let spec = match config {
        Some(path) => match crate::config::store_decls(path).map_err(|e| e.0)?.get(store) {
            Some(decl) => crate::app::store_spec(decl)?,
            None => datastorer::StoreSpec::new(serde_json::json!({})),
        },
        None => datastorer::StoreSpec::new(serde_json::json!({})),
    };
    let owner = match &opened {
        // The directory's own owner id: the server that left leases in it is stopped.
        Opened::Sled(b) => {
            b.owner_id_or_insert_with(|| format!("cli-{}", std::process::id())).map_err(|e| e.message)?
        }
        Opened::Postgres(_) => format!("cli-restore-{}", std::process::id()),
    };
    let backend = opened.into_backend();
    let report = actix_web::rt::System::new().block_on(async move {
        let mut cfg = datastorer::Config::backend(backend).owner_id(owner);
        cfg.handle_signals = false;
        cfg.prune_interval = None;
        let ds = datastorer::Datastorer::start(cfg).await.map_err(|e| e.to_string())?;
        let s = ds.store(store, spec).map_err(|e| e.to_string())?;
        let report = s.restore_to(at_ms, dry_run, Duration::from_secs(10)).await.map_err(|e| e.to_string());
        if let Ok(r) = &report {
            if !r.dry_run {
                let entry = datastorer::AuditEntry {
                    id: String::new(),
                    at_ms: 0,
                    actor: "cli".into(),
                    action: "store_restore".into(),
                    store: Some(store.to_owned()),
                    key: None,
                    outcome: "ok".into(),
                    details: serde_json::json!({ "at_ms": r.at_ms, "restored": r.restored, "deleted": r.deleted,
                        "resumed_after": r.resumed_after, "undo_at_ms": r.undo_at_ms }),
                };
                ds.audit(entry).await.map_err(|e| e.to_string())?;
            }
        }
        ds.shutdown().await;
        report
    })?;
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}
