//! Stores: a named collection of keys with a template, migrations, a
//! metadata template and hooks; the typed registry of its key actors.
//!
//! Owns: the map from key to key actor for one store (which actor is
//! loaded, which is open), name validation, where a key actor starts (the
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

use actix::{Actor, Addr, Arbiter, Recipient};
use serde_json::Value;

use crate::actors::key::KeyActor;
use crate::engine::Engine;
use crate::error::{Error, KeyId};
use crate::keepalive::Keepalive;
use crate::messages::key::{Control, Open};
use crate::migration::Migration;
use crate::registry::{CloseSignal, Fingerprint, StoreControl};
use crate::retry::CONTENTION_WINDOW;
use crate::session::Session;
use crate::storage::{
    split_storage_key, storage_key, store_prefix, Notice, NoticeKind, Precondition, Record, RecordHeader, StorageKey,
    WriteOp, WriteOutcome,
};
pub use crate::store_def::Hooks;
use crate::store_def::{Deregister, StoreDef};
pub use crate::types::Document;
use crate::types::{AcquirePolicy, CloseReason, Priority};

/// How a store is defined. Two `store()` calls for one name must agree on
/// the type, template, metadata template, migration names and hooks.
pub struct StoreSpec<T> {
    /// The document of a new key; also the source of fields that reconcile
    /// adds to old records.
    pub template: T,
    /// Step `i` migrates data version `i` to `i + 1`. New records start at
    /// `migrations.len()`.
    pub migrations: Vec<Migration>,
    /// Metadata of a new key, reconciled into old records like the template.
    pub metadata_template: Value,
    /// Optional callbacks.
    pub hooks: Hooks<T>,
}

impl<T> StoreSpec<T> {
    /// A spec with no migrations, an empty metadata object and no hooks.
    pub fn new(template: T) -> Self {
        Self {
            template,
            migrations: Vec::new(),
            metadata_template: Value::Object(Default::default()),
            hooks: Hooks::default(),
        }
    }

    /// Adds a migration step.
    pub fn migration(mut self, m: Migration) -> Self {
        self.migrations.push(m);
        self
    }

    /// Sets the metadata template.
    pub fn metadata_template(mut self, metadata: Value) -> Self {
        self.metadata_template = metadata;
        self
    }

    /// Sets the after-load hook.
    pub fn after_load(mut self, hook: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.hooks.after_load = Some(Arc::new(hook));
        self
    }

    /// Sets the before-save hook.
    pub fn before_save(mut self, hook: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.hooks.before_save = Some(Arc::new(hook));
        self
    }
}

/// A key: any non-empty UTF-8 string up to 512 bytes without control
/// characters. Numbers are accepted and stored as their decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(s.to_owned())
    }
}
impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(s)
    }
}
impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Key(s.clone())
    }
}
macro_rules! numeric_key {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            fn from(n: $t) -> Self { Key(n.to_string()) }
        }
    )*};
}
numeric_key!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest store name accepted, in bytes.
pub const MAX_STORE_NAME_LEN: usize = 128;

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a key: non-empty, at most 512 bytes, no control characters.
pub fn validate_key(key: &str) -> Result<(), Error> {
    let reason = if key.is_empty() {
        Some("must not be empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("is longer than 512 bytes")
    } else if key.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName { what: "key", value: truncated(key), reason }),
        None => Ok(()),
    }
}

/// The suffix of the store holding a store's messages (`S:inbox`):
/// reserved, no application store may have a name ending in it.
pub const INBOX_SUFFIX: &str = ":inbox";

/// Checks the name of a store an application (or a config file, an import
/// file, an HTTP request) names: [`validate_store_name`], and not a name
/// reserved for messages (ending in `:inbox`). The one rule every entry
/// point applies.
pub fn validate_user_store_name(name: &str) -> Result<(), Error> {
    validate_store_name(name)?;
    if name.ends_with(INBOX_SUFFIX) {
        return Err(Error::InvalidName {
            what: "store name",
            value: truncated(name),
            reason: "names ending in \":inbox\" are reserved for messages to keys",
        });
    }
    Ok(())
}

/// Checks a store name: 1 to 128 bytes of ASCII letters, digits, `_ - . :`.
pub fn validate_store_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_STORE_NAME_LEN {
        Some("is longer than 128 bytes")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')) {
        Some("may contain only ASCII letters, digits, '_', '-', '.' and ':'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName { what: "store name", value: truncated(name), reason }),
        None => Ok(()),
    }
}

/// A registry entry: 32 bytes, since a million of them may exist. The
/// signal's `Arc` identifies the actor instance (a reopened key gets a new one).
struct KeyEntry<T: Document> {
    addr: Addr<KeyActor<T>>,
    closed: Arc<CloseSignal>,
}

/// One store's shared state; `Store<T>` handles point at it. Its key
/// actors see only `def`.
pub(crate) struct StoreShared<T: Document> {
    def: Arc<StoreDef<T>>,
    fingerprint: Fingerprint,
    keys: Mutex<HashMap<Arc<str>, KeyEntry<T>>>,
    /// Keys in a one-shot update (`update_unleased`) right now, each with
    /// the fair lock later ones queue on instead of failing on its lease.
    one_shots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Called for each message to a key open here (`Store::on_message`).
    pub(crate) message_handler: Mutex<Option<MessageHandler<T>>>,
    /// Whether the task delivering messages to open keys runs.
    pub(crate) inbox_watched: std::sync::atomic::AtomicBool,
    /// Keys whose messages are being delivered, and whether another
    /// delivery was asked meanwhile (one delivery per key at a time, so a
    /// message is not handed over twice by two racing deliveries).
    pub(crate) deliveries: Mutex<HashMap<String, bool>>,
}

impl<T: Document> std::ops::Deref for StoreShared<T> {
    type Target = StoreDef<T>;
    fn deref(&self) -> &StoreDef<T> {
        &self.def
    }
}

impl<T: Document> StoreShared<T> {
    fn keys(&self) -> MutexGuard<'_, HashMap<Arc<str>, KeyEntry<T>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn one_shots(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.one_shots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes `key` if its entry is still the actor instance `instance`.
    pub(crate) fn remove(&self, key: &str, instance: &Arc<CloseSignal>) {
        let mut keys = self.keys();
        if keys.get(key).is_some_and(|e| Arc::ptr_eq(&e.closed, instance)) {
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

    fn key_recipients(&self, sorted: bool) -> Vec<Recipient<Control>> {
        if !sorted {
            return self.keys().values().map(|e| e.addr.clone().recipient()).collect();
        }
        let mut entries: Vec<(Arc<str>, Recipient<Control>)> =
            self.keys().iter().map(|(k, e)| (k.clone(), e.addr.clone().recipient())).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries.into_iter().map(|(_, r)| r).collect()
    }

    fn named_key_recipients(&self) -> Vec<(Arc<str>, Recipient<Control>)> {
        let mut entries: Vec<(Arc<str>, Recipient<Control>)> =
            self.keys().iter().map(|(k, e)| (k.clone(), e.addr.clone().recipient())).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    fn find(&self, key: &str) -> Option<Recipient<Control>> {
        self.keys().get(key).map(|e| e.addr.clone().recipient())
    }

    fn loaded_count(&self) -> usize {
        self.keys().values().filter(|e| e.closed.is_session_open()).count()
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
        let StoreSpec { template: _, migrations, metadata_template, hooks } = spec;
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
                    template_json,
                    engine: engine.clone(),
                    deregister,
                }),
                fingerprint,
                keys: Mutex::new(HashMap::new()),
                one_shots: Mutex::new(HashMap::new()),
                message_handler: Mutex::new(None),
                inbox_watched: std::sync::atomic::AtomicBool::new(false),
                deliveries: Mutex::new(HashMap::new()),
            }
        });
        stores.insert(name.to_owned(), shared.clone());
        Ok(Store { shared, keepalive })
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
        let (k, e) = keys.get_key_value(key.as_str()).filter(|(_, e)| e.closed.is_session_open())?;
        Some(Session::new(e.addr.clone(), self.shared.name.clone(), k.clone(), e.closed.clone(), self.keepalive()))
    }

    /// Whether this instance has `key` loaded and open.
    pub fn is_loaded(&self, key: impl Into<Key>) -> bool {
        let key = key.into().0;
        self.shared.keys().get(key.as_str()).is_some_and(|e| e.closed.is_session_open())
    }

    /// Keys this instance has loaded and open.
    pub fn loaded_keys(&self) -> Vec<String> {
        self.shared.keys().iter().filter(|(_, e)| e.closed.is_session_open()).map(|(k, _)| k.to_string()).collect()
    }

    /// Keys stored in this store (loaded or not) that start with `prefix`,
    /// in byte order, after `start_after` (a cursor: the last key of the
    /// previous page), at most `limit`. Goes through the queue.
    pub async fn list_keys(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        let shared = &self.shared;
        let mut full_prefix = store_prefix(&shared.name);
        full_prefix.extend_from_slice(prefix.as_bytes());
        let label: Arc<str> = Arc::from(format!("{prefix}*"));
        let after = start_after.map(|k| storage_key(&shared.name, k));
        let rows = shared.engine.scan(&shared.name, &label, full_prefix, after, limit).await?;
        Ok(rows.into_iter().filter_map(|(k, _)| split_storage_key(&k).map(|(_, key)| key)).collect())
    }

    /// The stored record of `key` as it is on disk, without taking a lease
    /// (`None` if absent). A corrupt record is reported, not repaired.
    pub async fn inspect(&self, key: impl Into<Key>) -> Result<Option<Record>, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let shared = &self.shared;
        let key: Arc<str> = Arc::from(key);
        let skey = StorageKey::record(&shared.name, &key);
        match shared.engine.get(&shared.name, &key, skey, Priority::Normal).await? {
            None => Ok(None),
            Some(bytes) => Record::decode(&bytes).map(Some).map_err(|source| Error::CorruptRecord {
                at: KeyId::new(shared.name.to_string(), key.to_string()),
                source,
            }),
        }
    }

    /// Deletes everything stored for `key` (administrative): its record and
    /// its inbox (`S:inbox`), the inbox first, so that no crash in between
    /// can leave messages for a key that no longer exists. Refused with
    /// `LeaseHeld` while this instance has the key loaded or another owner
    /// holds an unexpired lease, unless `force`. Answers whether a record existed.
    pub async fn delete(&self, key: impl Into<Key>, force: bool) -> Result<bool, Error> {
        self.delete_if(key, Expect::Anything, force).await
    }

    /// [`Store::delete`] on a condition (HTTP's `If-Match`): with
    /// `Expect::Version(h)` only while the stored record is at exactly `h`,
    /// checked by the backend in the same step as the delete; otherwise
    /// `PreconditionFailed` and nothing is deleted. With `Expect::Absent`
    /// it deletes nothing: `Ok(false)` when nothing is stored, else
    /// `PreconditionFailed`.
    pub async fn delete_if(&self, key: impl Into<Key>, expected: Expect, force: bool) -> Result<bool, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let shared = &self.shared;
        let engine = &shared.engine;
        let failed = || Error::PreconditionFailed { at: KeyId::new(shared.name.to_string(), key.clone()) };
        if expected == Expect::Absent {
            return match self.inspect(key.as_str()).await {
                Ok(None) => Ok(false),
                Ok(Some(_)) | Err(Error::CorruptRecord { .. }) => Err(failed()),
                Err(e) => Err(e),
            };
        }
        if let Some(session) = self.get(key.as_str()) {
            if !force {
                let expires_at_ms = session.lease().await.map_or(0, |l| l.expires_at_ms);
                return Err(Error::LeaseHeld {
                    at: KeyId::new(shared.name.to_string(), key),
                    holder: engine.owner.to_string(),
                    expires_at_ms,
                });
            }
            // A condition that does not hold ends nothing: checked before
            // the session is told (the session is the record's one writer
            // here, so what it last wrote is what is stored).
            if let Expect::Version(want) = expected {
                let held = session.lease().await.map(|l| RecordHeader { epoch: l.epoch, revision: l.revision });
                if held.ok() != Some(want) {
                    return Err(failed());
                }
            }
            // A forced delete ends the live session here first: otherwise it
            // would go on changing a copy of a record that no longer exists,
            // and fail at its next write (at the latest at shutdown).
            if let Some(k) = engine.registry.find(&shared.name, &key) {
                let _ = k.send(Control::Notice(NoticeKind::Deleted)).await;
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while self.is_loaded(key.as_str()) && tokio::time::Instant::now() < deadline {
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let current = self.inspect(key.as_str()).await;
        let precondition = match current {
            Ok(None) if matches!(expected, Expect::Version(_)) => return Err(failed()),
            Ok(None) => {
                self.delete_inbox(&key).await?;
                return Ok(false);
            }
            Ok(Some(rec)) => {
                if let Expect::Version(want) = expected {
                    if rec.header != want {
                        return Err(failed());
                    }
                }
                if let Some(lease) = rec.lease.as_ref().filter(|l| l.expires_at_ms > engine.clock.now_ms()) {
                    if !force {
                        return Err(Error::LeaseHeld {
                            at: KeyId::new(shared.name.to_string(), key),
                            holder: lease.owner.clone(),
                            expires_at_ms: lease.expires_at_ms,
                        });
                    }
                }
                Precondition::Header(rec.header)
            }
            // A corrupt record can be deleted only on purpose.
            Err(Error::CorruptRecord { .. }) if force && expected == Expect::Anything => Precondition::Any,
            Err(e) => return Err(e),
        };
        let key_arc: Arc<str> = Arc::from(key.as_str());
        // The epoch the record reached stays the floor of any record of this
        // store created later (for a corrupt one, the epoch its header shows).
        let reached = match precondition {
            Precondition::Header(h) => Some(h.epoch),
            _ => {
                let skey = StorageKey::record(&shared.name, &key_arc);
                let raw = engine.get(&shared.name, &key_arc, skey, Priority::Normal).await?;
                raw.as_deref().and_then(crate::storage::RecordHeader::peek).map(|h| h.epoch)
            }
        };
        if let Some(epoch) = reached {
            crate::epoch_floor::raise(engine, &shared.name, &key_arc, epoch).await?;
        }
        // Where the backend can, the record and its inbox go in one
        // all-or-nothing step: nothing of the key outlives its delete.
        if engine.backend.capabilities().writes_all_or_nothing && !shared.name.ends_with(INBOX_SUFFIX) {
            let deleted = self.delete_record_and_inbox(&key, precondition, expected).await?;
            engine.backend.notices().publish(Notice { store: shared.name.to_string(), key, kind: NoticeKind::Deleted });
            return Ok(deleted);
        }
        let op = WriteOp::new(StorageKey::record(&shared.name, &key_arc), precondition, None::<bytes::Bytes>);
        let outcome = engine.write(&shared.name, &key_arc, op, Priority::Normal).await?;
        let applied = match outcome {
            WriteOutcome::Applied => true,
            // Gone already: our own attempt whose answer was lost (the
            // queue retried it), or a delete racing ours. Either way what
            // was asked for holds; the record existed when we looked.
            WriteOutcome::Conflict { current: None } if self.inspect(key.as_str()).await?.is_none() => true,
            WriteOutcome::Conflict { .. } if matches!(expected, Expect::Version(_)) => return Err(failed()),
            WriteOutcome::Conflict { .. } => {
                return Err(Error::LeaseLost { at: KeyId::new(shared.name.to_string(), key) });
            }
        };
        // The record first, then its inbox: a delete refused by its
        // condition (or by a writer that got in first) then takes nothing
        // with it. A post racing us lands before the inbox goes (and goes
        // with it) or after (and waits for the key's next life). Should the
        // inbox delete fail, the error says so and a plain retry finishes
        // it: the record is absent then, and the inbox is deleted all the same.
        self.delete_inbox(&key).await?;
        if applied {
            engine.backend.notices().publish(Notice { store: shared.name.to_string(), key, kind: NoticeKind::Deleted });
        }
        Ok(true)
    }

    /// Changes the document of `key` without keeping a session (Roblox's
    /// `UpdateAsync`, PPDB's `update(key, fn)`): takes the lease, loads,
    /// migrates and reconciles as an open does, applies `change`, saves and
    /// releases, answering once durable. A key nobody has stored yet starts
    /// from the template. Refused with `LeaseHeld` while a session holds
    /// the key (here or in another process); another one-shot update of the
    /// same key on this instance is waited for, as is a session of it that
    /// this instance is still opening (then refused if it opened).
    ///
    /// `expected` makes it conditional: `Expect::Version(h)` (HTTP's
    /// `If-Match`) applies only while the stored record is at exactly that
    /// epoch and revision; `Expect::Absent` (HTTP's `If-None-Match: *`)
    /// only creates, decided by the backend in the same step as the
    /// create, across processes too. When the condition fails, nothing
    /// changes and the answer is `PreconditionFailed`. When the save fails,
    /// the change is dropped with the lease and the error answered.
    pub async fn update_unleased<R: Send + 'static>(
        &self,
        key: impl Into<Key>,
        expected: Expect,
        change: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<Updated<R>, Error> {
        let key = key.into().0;
        validate_key(&key)?;
        let name = self.shared.name.to_string();
        let failed = || Error::PreconditionFailed { at: KeyId::new(name.clone(), key.clone()) };
        // A cheap look first, so a condition that fails already costs no
        // lease (whose take and give-back would change the record's ETag);
        // again after waiting for our turn, since the update before us may
        // have changed the record: an acquire on a stale condition would
        // move the ETag on for nothing and fail every other writer's too.
        let holds = |record: Option<Record>| match expected {
            Expect::Version(want) => record.is_some_and(|r| r.header == want),
            Expect::Absent => record.is_none(),
            Expect::Anything => true,
        };
        if expected != Expect::Anything && !holds(self.inspect(key.as_str()).await?) {
            return Err(failed());
        }
        let turn = self.one_shot_turn(&key).await?;
        if turn.waited && expected != Expect::Anything && !holds(self.inspect(key.as_str()).await?) {
            return Err(failed());
        }
        let session = self.clone().open_key(key.clone(), Vec::new(), AcquirePolicy::Fail, true).await?;
        let lease = session.lease().await?;
        // The acquire is the one write since the record was read as
        // expected exactly when it moved the header on by one in both parts;
        // a create is the only acquire that answers revision 1.
        let held_as_expected = match expected {
            Expect::Version(b) => lease.epoch == b.epoch + 1 && lease.revision == b.revision + 1,
            Expect::Absent => lease.revision == 1,
            Expect::Anything => true,
        };
        if !held_as_expected {
            let _ = session.close().await;
            return Err(failed());
        }
        let value = match session.update(change).await {
            Ok(v) => v,
            Err(e) => {
                let _ = session.close().await;
                return Err(e);
            }
        };
        match session.release(Priority::Normal).await {
            Ok(outcome) => Ok(Updated { value, epoch: lease.epoch, revision: outcome.revision }),
            Err(e) => {
                // No session is left behind holding the key: the caller is
                // told the update failed and may try again.
                let _ = session.close().await;
                Err(e)
            }
        }
    }

    /// Waits until no other one-shot update of `key` runs here (in the
    /// order they asked: a fair lock per key), then holds the turn until
    /// the answer is dropped. Gives up after the contention window.
    async fn one_shot_turn(&self, key: &str) -> Result<OneShotTurn<T>, Error> {
        let gate = self.shared.one_shots().entry(key.to_owned()).or_default().clone();
        let (held, waited) = match gate.clone().try_lock_owned() {
            Ok(held) => (Some(held), false),
            Err(_) => (tokio::time::timeout(CONTENTION_WINDOW, gate.lock_owned()).await.ok(), true),
        };
        let turn = OneShotTurn { store: self.shared.clone(), key: key.to_owned(), held, waited };
        if turn.held.is_none() {
            return Err(Error::LeaseHeld {
                at: KeyId::new(self.shared.name.to_string(), key.to_owned()),
                holder: self.shared.engine.owner.to_string(),
                expires_at_ms: 0,
            });
        }
        Ok(turn)
    }

    async fn open_key(
        self,
        key: String,
        user_ids: Vec<String>,
        policy: AcquirePolicy,
        exclusive: bool,
    ) -> Result<Session<T>, Error> {
        validate_key(&key)?;
        let shared = &self.shared;
        let mut stopped = 0;
        loop {
            if shared.engine.registry.is_shutting_down() {
                return Err(Error::ShuttingDown);
            }
            let found = {
                let mut keys = shared.keys();
                match keys.get_key_value(key.as_str()) {
                    // A session joins the session this instance is opening or has open.
                    Some((k, e)) if !exclusive && !e.closed.is_one_shot() => {
                        Found::Join(e.addr.clone(), k.clone(), e.closed.clone())
                    }
                    Some((_, e)) if exclusive && !e.closed.is_one_shot() && e.closed.is_open() => {
                        return Err(Error::LeaseHeld {
                            at: KeyId::new(shared.name.to_string(), key),
                            holder: shared.engine.owner.to_string(),
                            expires_at_ms: 0,
                        });
                    }
                    // A one-shot never shares a session's actor (nor a
                    // session a one-shot's): both would write under one
                    // epoch with nothing fencing one from the other. A
                    // session still opening is waited for (then refused if
                    // it opened); a one-shot is waited out.
                    Some((k, e)) => Found::Busy(k.clone(), e.closed.clone()),
                    None => {
                        let key_arc: Arc<str> = Arc::from(key.as_str());
                        let signal = CloseSignal::new(exclusive);
                        let actor = KeyActor::new(shared.def.clone(), key_arc.clone(), signal.clone());
                        let home = match shared.engine.config.keys_on_caller_arbiter {
                            true => Arbiter::try_current().unwrap_or_else(|| shared.engine.arbiter.clone()),
                            false => shared.engine.arbiter.clone(),
                        };
                        let addr = KeyActor::start_in_arbiter(&home, move |_| actor);
                        keys.insert(key_arc.clone(), KeyEntry { addr: addr.clone(), closed: signal.clone() });
                        Found::Created(addr, key_arc, signal)
                    }
                }
            };
            let (addr, key_arc, closed, created) = match found {
                Found::Join(addr, k, closed) => (addr, k, closed, false),
                Found::Created(addr, k, closed) => (addr, k, closed, true),
                Found::Busy(k, closed) => {
                    if closed.is_one_shot() || closed.reason().is_some() {
                        closed.wait().await;
                        shared.remove(&k, &closed);
                    } else {
                        closed.wait_settled().await;
                    }
                    continue;
                }
            };
            let opened = addr.send(Open { user_ids: user_ids.clone(), policy }).await;
            match opened {
                Ok(Ok(())) => {
                    let session = Session::new(addr, shared.name.clone(), key_arc, closed, self.keepalive());
                    // An open that waited (for a lease held elsewhere) can
                    // complete after the shutdown took its snapshot of the
                    // keys to release: give the key back now and answer
                    // what a caller arriving during the shutdown gets.
                    if created && shared.engine.registry.is_shutting_down() {
                        let _ = session.release_as(Priority::Emergency, CloseReason::Shutdown).await;
                        return Err(Error::ShuttingDown);
                    }
                    // Messages that waited for the key reach its handler now.
                    if created && self.has_message_handler() {
                        actix::spawn(self.for_engine().deliver_messages(key));
                    }
                    return Ok(session);
                }
                // An actor that is closing: wait for it to finish, then load afresh.
                Ok(Err(Error::SessionClosed { .. })) => {
                    closed.wait().await;
                    shared.remove(&key_arc, &closed);
                }
                // The actor stopped before reading our message (it was closing):
                // load afresh, a bounded number of times.
                Err(_) => {
                    closed.wait().await;
                    shared.remove(&key_arc, &closed);
                    stopped += 1;
                    if stopped >= 3 {
                        let reason = closed.reason().unwrap_or(CloseReason::Stopped);
                        return Err(Error::SessionClosed { at: KeyId::new(shared.name.to_string(), key), reason });
                    }
                }
                Ok(Err(e)) => return Err(e),
            }
        }
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

/// What `open_key` found in the key table.
enum Found<T: Document> {
    /// An actor to send the open to (the session this instance has).
    Join(Addr<KeyActor<T>>, Arc<str>, Arc<CloseSignal>),
    /// A new actor, just registered.
    Created(Addr<KeyActor<T>>, Arc<str>, Arc<CloseSignal>),
    /// An actor of the other kind (or one closing): wait, then look again.
    Busy(Arc<str>, Arc<CloseSignal>),
}

/// A one-shot update's turn on its key; given back when dropped.
struct OneShotTurn<T: Document> {
    store: Arc<StoreShared<T>>,
    key: String,
    /// `None` for a wait that timed out (which still tidies the table).
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Another update of the key ran first.
    waited: bool,
}

impl<T: Document> Drop for OneShotTurn<T> {
    fn drop(&mut self) {
        self.held = None;
        let mut gates = self.store.one_shots();
        // The table keeps a key's lock only while someone holds or awaits it.
        if gates.get(&self.key).is_some_and(|g| Arc::strong_count(g) == 1) {
            gates.remove(&self.key);
        }
    }
}

/// What [`Store::update_unleased`] answers: the change's own answer and
/// the record's header once durable (epoch and revision: its `ETag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated<R> {
    /// What the change returned.
    pub value: R,
    /// The epoch the update held the key under.
    pub epoch: u64,
    /// The revision it made durable.
    pub revision: u64,
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
