//! Migrations and reconciliation over the untyped (JSON) document.
//!
//! Owns: running migration steps in order, catching their panics, and
//! filling fields the template has and the record lacks. Must not: touch
//! storage or know about leases.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde_json::Value;

type MigrationFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// One step from data version `n` to `n + 1`, over the untyped document, so
/// a record that no longer deserializes into the application's type still
/// migrates.
#[derive(Clone)]
pub struct Migration {
    name: String,
    step: Arc<MigrationFn>,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration").field("name", &self.name).finish()
    }
}

impl Migration {
    /// A named step. Return `Err` to refuse a document; the key then fails to
    /// open and its record is left untouched.
    pub fn new(name: impl Into<String>, step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static) -> Self {
        Self { name: name.into(), step: Arc::new(step) }
    }

    /// Runs this one step on `doc` (what the engine does on load; handy to
    /// test a migration by itself).
    pub fn apply(&self, doc: Value) -> Result<Value, StepRefused> {
        (self.step)(doc).map_err(|reason| StepRefused { step: self.name.clone(), reason })
    }

    /// The step's name (part of the store's identity: two `store()` calls
    /// with different migration names conflict).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A migration step refused a document ([`Migration::apply`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("migration step {step:?} refused the document: {reason}")]
pub struct StepRefused {
    /// The step's name.
    pub step: String,
    /// What the step said.
    pub reason: String,
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Applies `migrations[from..]` in order. Errors name the failing step.
pub(crate) fn migrate(mut doc: Value, from: u32, migrations: &[Migration]) -> Result<Value, String> {
    let latest = migrations.len() as u32;
    if from > latest {
        return Err(format!("stored data version {from} is newer than the latest known version {latest}"));
    }
    for (index, m) in migrations.iter().enumerate().skip(from as usize) {
        let step = m.step.clone();
        doc = match catch_unwind(AssertUnwindSafe(move || step(doc))) {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => return Err(format!("step {} ({:?}) failed: {e}", index + 1, m.name)),
            Err(p) => return Err(format!("step {} ({:?}) panicked: {}", index + 1, m.name, panic_message(&*p))),
        };
    }
    Ok(doc)
}

/// Fills fields present in `template` and missing from `doc`, recursively
/// through nested objects. Values present in `doc` are never changed, even
/// if their type differs from the template's.
pub(crate) fn reconcile(doc: &mut Value, template: &Value) -> bool {
    let (Value::Object(doc), Value::Object(template)) = (doc, template) else {
        return false;
    };
    let mut changed = false;
    for (field, default) in template {
        match doc.get_mut(field) {
            Some(existing) => changed |= reconcile(existing, default),
            None => {
                doc.insert(field.clone(), default.clone());
                changed = true;
            }
        }
    }
    changed
}
