//! Stores: a named collection of keys with a template, migrations, a
//! metadata template and hooks; the typed registry of its key actors.
//!
//! Owns: the map from key to key cell for one store (which key is loaded,
//! which is open; a cell holds its actor or, hibernating, what the actor
//! left), name validation, where a key actor starts (the
//! engine's arbiter, or the caller's with `keys_on_caller_arbiter`), and
//! the open flow up to the moment the key actor takes over, and the
//! administrative reads and writes that need no lease (`list_keys`,
//! `inspect`, `delete`, through the queue like everything else).
//! Must not: touch a loaded key's document (its key actor owns it) or call
//! the backend directly.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::Arbiter;
use serde_json::Value;

use crate::actors::key::KeyCell;
use crate::engine::Engine;
use crate::error::{Error, KeyId};
use crate::keepalive::Keepalive;
use crate::messages::key::Open;
use crate::migration::Migration;
use crate::registry::{CloseSignal, Fingerprint, KeyControl, StoreControl};
pub use crate::retention::Retention;
use crate::retry::CONTENTION_WINDOW;
use crate::session::Session;
use crate::storage::{
    split_storage_key, storage_key, store_prefix, Notice, NoticeKind, Precondition, Record, RecordHeader, StorageKey,
    WriteOp, WriteOutcome,
};
pub use crate::store_def::Hooks;
use crate::store_def::{Deregister, StoreDef};
pub use crate::types::Document;
pub use crate::types::EraseMode;
use crate::types::{AcquirePolicy, CloseReason, Priority};
mod admin;
mod bulk_migration;
pub(crate) mod history;
pub(crate) mod inbox;
mod one_shot;
mod open;
mod point_in_time;
pub(crate) mod read_cache;
mod spec;

pub use bulk_migration::{MigrationFailure, MigrationReport};
pub use history::{
    parse_version_id, version_id_text, RestoreTarget, Restored, Version, VersionInfo, VersionOrder, VersionPage,
    VersionQuery, MAX_VERSIONS_PAGE,
};
pub use one_shot::{RecordParts, Updated};
pub use point_in_time::{KeyChange, RestoreProgress, StoreRestoreReport, MAX_LISTED_CHANGES};
pub use spec::{
    validate_key, validate_store_name, validate_user_store_name, Key, StoreSpec, INBOX_SUFFIX, MAX_KEY_LEN,
    MAX_STORE_NAME_LEN,
};

/// One store's shared state; `Store<T>` handles point at it. Its key
/// actors see only `def`.
pub(crate) struct StoreShared<T: Document> {
    def: Arc<StoreDef<T>>,
    fingerprint: Fingerprint,
    /// One cell per loaded key (its actor awake, or the key asleep); the
    /// cell identifies the session (a reopened key gets a new one).
    keys: Mutex<HashMap<Arc<str>, Arc<KeyCell<T>>>>,
    /// Keys in a one-shot update (`update_unleased`) right now, each with
    /// the fair lock later ones queue on instead of failing on its lease.
    one_shots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Message delivery to the keys open here (`inbox.rs`).
    inbox: inbox::InboxState<T>,
}

impl<T: Document> std::ops::Deref for StoreShared<T> {
    type Target = StoreDef<T>;
    fn deref(&self) -> &StoreDef<T> {
        &self.def
    }
}

impl<T: Document> StoreShared<T> {
    fn keys(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<KeyCell<T>>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn one_shots(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.one_shots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes `key` if its entry is still the session `instance`.
    pub(crate) fn remove(&self, key: &str, instance: &CloseSignal) {
        let mut keys = self.keys();
        if keys.get(key).is_some_and(|e| std::ptr::eq(e.signal(), instance)) {
            keys.remove(key);
        }
    }
}

impl<T: Document> StoreControl for StoreShared<T> {
    fn as_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }

    fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    fn key_targets(&self) -> Vec<Arc<dyn KeyControl>> {
        self.keys().values().map(|e| e.clone() as Arc<dyn KeyControl>).collect()
    }

    fn named_key_targets(&self) -> Vec<(Arc<str>, Arc<dyn KeyControl>)> {
        let mut entries: Vec<(Arc<str>, Arc<dyn KeyControl>)> =
            self.keys().iter().map(|(k, e)| (k.clone(), e.clone() as Arc<dyn KeyControl>)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    fn find(&self, key: &str) -> Option<Arc<dyn KeyControl>> {
        self.keys().get(key).map(|e| e.clone() as Arc<dyn KeyControl>)
    }

    fn loaded_count(&self) -> usize {
        self.keys().values().filter(|e| e.signal().is_session_open()).count()
    }

    fn erase_mode(&self) -> crate::types::EraseMode {
        self.def.erase
    }

    fn keeps_versions(&self) -> bool {
        self.def.retention.enabled
    }
}

/// A handle on a store. Cheap to clone.
pub struct Store<T: Document> {
    shared: Arc<StoreShared<T>>,
    /// Keeps the instance running while the application holds the store;
    /// `None` in the handle a background task of the engine holds.
    keepalive: Option<Arc<Keepalive>>,
}

impl<T: Document> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), keepalive: self.keepalive.clone() }
    }
}

impl<T: Document> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("name", &self.shared.name).finish()
    }
}

impl<T: Document> Store<T> {
    /// Finds or registers the store `name` in `engine`.
    pub(crate) fn register(
        engine: &Arc<Engine>,
        name: &str,
        spec: StoreSpec<T>,
        keepalive: Option<Arc<Keepalive>>,
    ) -> Result<Store<T>, Error> {
        validate_store_name(name)?;
        spec.retention.check().map_err(|m| Error::Config(format!("store `{name}`: retention: {m}")))?;
        let template_json = serde_json::to_value(&spec.template).map_err(|e| Error::Serialize {
            at: KeyId::new(name.to_owned(), "<template>".to_owned()),
            message: e.to_string(),
        })?;
        let fingerprint = Fingerprint {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            template: template_json.clone(),
            metadata_template: spec.metadata_template.clone(),
            migrations: spec.migrations.iter().map(|m| m.name().to_owned()).collect(),
            hooks: (spec.hooks.after_load.is_some(), spec.hooks.before_save.is_some()),
        };
        let mut stores = engine.registry.stores();
        if let Some(existing) = stores.get(name) {
            if let Some(difference) = existing.fingerprint().difference(&fingerprint) {
                return Err(Error::StoreConflict { store: name.to_owned(), difference });
            }
            let shared = existing
                .clone()
                .as_any_arc()
                .downcast::<StoreShared<T>>()
                .map_err(|_| Error::StoreConflict { store: name.to_owned(), difference: "document type".into() })?;
            return Ok(Store { shared, keepalive });
        }
        let StoreSpec { template: _, migrations, metadata_template, hooks, retention, erase } = spec;
        let shared = Arc::new_cyclic(|me: &std::sync::Weak<StoreShared<T>>| {
            // The key actor leaves the table through this, never by naming the store.
            let me = me.clone();
            let deregister: Deregister = Box::new(move |key, instance| {
                if let Some(store) = me.upgrade() {
                    store.remove(key, instance);
                }
            });
            StoreShared {
                def: Arc::new(StoreDef {
                    name: Arc::from(name),
                    migrations,
                    metadata_template,
                    hooks,
                    retention,
                    erase,
                    template_json,
                    engine: engine.clone(),
                    deregister,
                }),
                fingerprint,
                keys: Mutex::new(HashMap::new()),
                one_shots: Mutex::new(HashMap::new()),
                inbox: inbox::InboxState::default(),
            }
        });
        stores.insert(name.to_owned(), shared.clone());
        let store = Store { shared, keepalive };
        if let (true, Some(every)) = (store.def().retention.enabled, engine.config.prune_interval) {
            engine.arbiter.spawn(store.for_engine().prune_every(every));
        }
        Ok(store)
    }

    /// A handle for a task the engine runs itself: it does not keep the
    /// instance running (see `keepalive`).
    pub(crate) fn for_engine(&self) -> Store<T> {
        Store { shared: self.shared.clone(), keepalive: None }
    }

    /// The instance's keepalive this handle carries, for handles made from it.
    pub(crate) fn keepalive(&self) -> Option<Arc<Keepalive>> {
        self.keepalive.clone()
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    pub(crate) fn def(&self) -> &StoreDef<T> {
        &self.shared.def
    }

    pub(crate) fn shared(&self) -> &StoreShared<T> {
        &self.shared
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Starts opening `key`: configure with `.user_ids(..)` and `.policy(..)`,
    /// then `.await`. Opening a key this instance already has open returns
    /// that session.
    pub fn open(&self, key: impl Into<Key>) -> OpenRequest<T> {
        OpenRequest { store: self.clone(), key: key.into().0, user_ids: Vec::new(), policy: AcquirePolicy::default() }
    }

    /// The open session of `key`, if this instance has it loaded.
    pub fn get(&self, key: impl Into<Key>) -> Option<Session<T>> {
        let key = key.into().0;
        let keys = self.shared.keys();
        let cell = keys.get(key.as_str()).filter(|e| e.signal().is_session_open())?;
        Some(Session::new(cell.clone(), self.keepalive()))
    }

    /// Whether this instance has `key` loaded and open.
    pub fn is_loaded(&self, key: impl Into<Key>) -> bool {
        let key = key.into().0;
        self.shared.keys().get(key.as_str()).is_some_and(|e| e.signal().is_session_open())
    }

    /// Keys this instance has loaded and open.
    pub fn loaded_keys(&self) -> Vec<String> {
        self.shared.keys().iter().filter(|(_, e)| e.signal().is_session_open()).map(|(k, _)| k.to_string()).collect()
    }
}

/// Handles one message to a key open here; answers whether it was
/// processed (then it is acknowledged; otherwise it stays for later).
pub type MessageHandler<T> = Arc<dyn Fn(&Session<T>, &crate::types::Message) -> bool + Send + Sync>;

/// What a one-shot write or a delete requires of the stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// Nothing: write whatever is stored.
    #[default]
    Anything,
    /// The record is stored at exactly this epoch and revision (its ETag).
    Version(crate::storage::RecordHeader),
    /// No record is stored: create only.
    Absent,
}

/// A pending `open`; await it.
pub struct OpenRequest<T: Document> {
    store: Store<T>,
    key: String,
    user_ids: Vec<String>,
    policy: AcquirePolicy,
}

impl<T: Document> OpenRequest<T> {
    /// User ids to associate with the key (added to those already stored).
    pub fn user_ids<I, U>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: fmt::Display,
    {
        self.user_ids.extend(ids.into_iter().map(|u| u.to_string()));
        self
    }

    /// What to do when another owner holds the key.
    pub fn policy(mut self, policy: AcquirePolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl<T: Document> IntoFuture for OpenRequest<T> {
    type Output = Result<Session<T>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.store.open_key(self.key, self.user_ids, self.policy, false))
    }
}
