//! `datastorer restore-store` and `datastorer migrate-store`: the engine's
//! point-in-time restore (`Store::restore_to`) and bulk migration
//! (`Store::migrate_all`) of one store, run by an engine started here on
//! the storage the flags name, so they take the same fenced paths as the
//! server's `POST /v1/stores/{store}/restore` and `…/migrate`: on a stopped
//! sled directory, or on PostgreSQL while servers run.
//!
//! Must not: write records itself.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::Opened;
use datastorer::{AuditEntry, Datastorer, Store};

/// Starts an engine on `opened`, hands `job` the store `store` (declared
/// as the config file says, if given), records what it did in the audit
/// trail, shuts down, and prints the job's report.
fn with_store<F, Fut>(
    opened: Opened,
    store: &str,
    config: Option<&Path>,
    action: &'static str,
    job: F,
) -> Result<(), String>
where
    F: FnOnce(Store<Value>) -> Fut,
    Fut: Future<Output = Result<(Value, bool), String>>,
{
    datastorer::validate_user_store_name(store).map_err(|e| e.to_string())?;
    let spec = match config {
        Some(path) => match crate::config::store_decls(path).map_err(|e| e.0)?.get(store) {
            Some(decl) => crate::app::store_spec(decl)?,
            None => return Err(format!("{} declares no store {store:?}", path.display())),
        },
        None => datastorer::StoreSpec::new(json!({})),
    };
    let owner = match &opened {
        // The directory's own owner id: the server that left leases in it is stopped.
        Opened::Sled(b) => {
            b.owner_id_or_insert_with(|| format!("cli-{}", std::process::id())).map_err(|e| e.message)?
        }
        Opened::Postgres(_) => format!("cli-{action}-{}", std::process::id()),
    };
    let backend = opened.into_backend();
    let report = actix_web::rt::System::new().block_on(async move {
        let mut cfg = datastorer::Config::backend(backend).owner_id(owner);
        cfg.handle_signals = false;
        cfg.prune_interval = None;
        let ds = Datastorer::start(cfg).await.map_err(|e| e.to_string())?;
        let s = ds.store(store, spec).map_err(|e| e.to_string())?;
        let done = job(s).await;
        if let Ok((report, true)) = &done {
            let entry = AuditEntry {
                id: String::new(),
                at_ms: 0,
                actor: "cli".into(),
                action: action.into(),
                store: Some(store.to_owned()),
                key: None,
                outcome: "ok".into(),
                details: report.clone(),
            };
            ds.audit(entry).await.map_err(|e| e.to_string())?;
        }
        ds.shutdown().await;
        done.map(|(r, _)| r)
    })?;
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

pub(crate) fn restore_store(
    opened: Opened,
    store: &str,
    at_ms: u64,
    dry_run: bool,
    config: Option<&Path>,
) -> Result<(), String> {
    with_store(opened, store, config, "store_restore", |s| async move {
        let r = s.restore_to(at_ms, dry_run, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
        Ok((serde_json::to_value(r).map_err(|e| e.to_string())?, !dry_run))
    })
}

pub(crate) fn migrate_store(opened: Opened, store: &str, config: &Path) -> Result<(), String> {
    with_store(opened, store, Some(config), "bulk_migration", |s| async move {
        let r = s.migrate_all().await.map_err(|e| e.to_string())?;
        Ok((serde_json::to_value(r).map_err(|e| e.to_string())?, true))
    })
}
