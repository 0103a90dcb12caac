//! A store's definition as its key actors see it: name, template,
//! migrations, metadata template, hooks, the engine, and how to leave the
//! store's key table. `Store<T>` (the public handle, `store.rs`) owns the
//! key table; the key actor holds only this, so it never names `Store`.
//!
//! Owns: the definition. Must not: hold the key table or spawn actors.

use std::sync::Arc;

use serde_json::Value;

use crate::engine::Engine;
use crate::migration::Migration;
use crate::registry::CloseSignal;
use crate::types::Document;

pub(crate) type Hook<T> = Arc<dyn Fn(&mut T) + Send + Sync>;

/// Callbacks run inside the key actor. A panicking hook is caught: a
/// panicking after-load hook fails the open (the lease is cleared), a
/// panicking before-save hook fails that save.
pub struct Hooks<T> {
    /// After the record is loaded, migrated, reconciled and the lease taken.
    /// Changes it makes are saved by the next save or autosave.
    pub after_load: Option<Hook<T>>,
    /// Before every write of the document (save, autosave, release).
    pub before_save: Option<Hook<T>>,
}

impl<T> Default for Hooks<T> {
    fn default() -> Self {
        Self { after_load: None, before_save: None }
    }
}

impl<T> Clone for Hooks<T> {
    fn clone(&self) -> Self {
        Self { after_load: self.after_load.clone(), before_save: self.before_save.clone() }
    }
}

/// Removes a key from its store's table if the entry is still the session
/// whose close signal this is (compared by address).
pub(crate) type Deregister = Box<dyn Fn(&str, &CloseSignal) + Send + Sync>;

/// What a key actor needs of its store.
pub(crate) struct StoreDef<T: Document> {
    pub name: Arc<str>,
    pub migrations: Vec<Migration>,
    pub metadata_template: Value,
    pub hooks: Hooks<T>,
    /// Which versions the store keeps; saves carry a version when enabled.
    pub retention: crate::retention::Retention,
    /// What an erasure by user id does to this store's records.
    pub erase: crate::types::EraseMode,
    /// The template as JSON; the typed template is not kept, so documents
    /// need not be `Sync`.
    pub template_json: Value,
    pub engine: Arc<Engine>,
    pub deregister: Deregister,
}

impl<T: Document> StoreDef<T> {
    /// Leaves the store's key table (if `instance` is still the entry there).
    pub(crate) fn remove(&self, key: &str, instance: &CloseSignal) {
        (self.deregister)(key, instance);
    }
}
