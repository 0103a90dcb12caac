//! The registry of one `Datastorer` instance: its stores (type-erased, for
//! the supervisor and the notice listener), the shutting-down flag, each
//! store's fingerprint, each key session's close signal, and `KeyControl`,
//! the type-erased way to a loaded key.
//!
//! Owns: these tables and signals. Must not: name the key actor, a store's
//! document type or the engine; the layers above register here, and a key
//! actor reports its end only through its `CloseSignal` and the deregister
//! callback its store handed it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde_json::Value;
use tokio::sync::Notify;

use crate::messages::key::Control;
use crate::types::CloseReason;

/// Type-erased view of a store, for the supervisor and the notice listener.
pub(crate) trait StoreControl: Send + Sync + 'static {
    fn as_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    fn fingerprint(&self) -> &Fingerprint;
    /// The store's loaded keys (awake or asleep).
    fn key_targets(&self) -> Vec<Arc<dyn KeyControl>>;
    /// Every loaded key with its key, in key order.
    fn named_key_targets(&self) -> Vec<(Arc<str>, Arc<dyn KeyControl>)>;
    fn find(&self, key: &str) -> Option<Arc<dyn KeyControl>>;
    fn loaded_count(&self) -> usize;
    /// What an erasure by user id does to this store's records.
    fn erase_mode(&self) -> crate::types::EraseMode;
    /// Whether the store keeps versions.
    fn keeps_versions(&self) -> bool;
}

/// One loaded key, as the supervisor and the notice listener reach it:
/// a `Control` goes to its actor, waking it if it sleeps (and only if the
/// message needs the actor).
pub(crate) trait KeyControl: Send + Sync + 'static {
    /// Delivers `msg`; `false` once the key's session has ended (the
    /// message, and any receipt in it, is dropped).
    fn control(self: Arc<Self>, msg: Control) -> bool;
    /// The autosave tick (`Control::Autosave`), at `now_ms` of the engine's
    /// clock: a sleeping key whose lease is not due is passed without its
    /// lock.
    fn tick(self: Arc<Self>, now_ms: u64);
    /// Ends a sleeping key's session with `Stopped` (the instance stopped).
    fn stop_if_asleep(&self);
}

/// The stores of one instance. Stores point at the engine and the engine at
/// the registry: the supervisor clears the registry when it is dropped (the
/// actix System stopped), which frees the engine and closes the backend.
#[derive(Default)]
pub(crate) struct Registry {
    stores: Mutex<HashMap<String, Arc<dyn StoreControl>>>,
    shutting_down: AtomicBool,
    /// Set once the supervisor stopped: the instance's background tasks
    /// (inbox watchers, the signal listener) end on it.
    stopped: AtomicBool,
    stopped_notify: Notify,
}

impl Registry {
    pub(crate) fn stores(&self) -> MutexGuard<'_, HashMap<String, Arc<dyn StoreControl>>> {
        // Critical sections are single map operations; a poisoned lock holds
        // a consistent map.
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every loaded key, in map order.
    pub(crate) fn all_keys(&self) -> Vec<Arc<dyn KeyControl>> {
        let stores: Vec<_> = self.stores().values().cloned().collect();
        stores.iter().flat_map(|s| s.key_targets()).collect()
    }

    /// Every loaded key in storage-key order (stores by name, then keys),
    /// for the one-off passes that release them all (shutdown, release
    /// all): the queue then gets neighbouring keys and each group commit
    /// touches few tree nodes (100k keys: 0.95 s in map order, 0.65 s
    /// sorted). Not for the periodic autosave: sorting a million keys takes
    /// ~0.3 s on the engine's thread, a stall every tick.
    /// Each with its store and key, so a key that cannot be released in
    /// time can be named.
    pub(crate) fn all_keys_sorted(&self) -> Vec<NamedKey> {
        let mut stores: Vec<_> = self.stores().iter().map(|(name, s)| (name.clone(), s.clone())).collect();
        stores.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        stores
            .iter()
            .flat_map(|(name, s)| {
                let store: Arc<str> = Arc::from(name.as_str());
                s.named_key_targets().into_iter().map(move |(key, target)| NamedKey {
                    store: store.clone(),
                    key,
                    target,
                })
            })
            .collect()
    }

    pub(crate) fn find(&self, store: &str, key: &str) -> Option<Arc<dyn KeyControl>> {
        let s = self.stores().get(store).cloned()?;
        s.find(key)
    }

    /// The erase mode of `store` as this instance declared it (`Delete`
    /// for a store it has not opened).
    pub(crate) fn erase_mode(&self, store: &str) -> crate::types::EraseMode {
        self.stores().get(store).map_or(crate::types::EraseMode::Delete, |s| s.erase_mode())
    }

    /// Whether `store` keeps versions (`true` for a store this instance has
    /// not opened: the default).
    pub(crate) fn keeps_versions(&self, store: &str) -> bool {
        self.stores().get(store).is_none_or(|s| s.keeps_versions())
    }

    pub(crate) fn loaded_count(&self) -> usize {
        let stores: Vec<_> = self.stores().values().cloned().collect();
        stores.iter().map(|s| s.loaded_count()).sum()
    }

    /// The instance stopped: drops every store (breaking the store →
    /// engine → registry cycle) and ends every task waiting in `stopped`.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stopped_notify.notify_waiters();
        let stores = std::mem::take(&mut *self.stores());
        // A sleeping key has no actor to stop with the System: its session
        // ends here, so whoever waits for it is told.
        for store in stores.values() {
            for key in store.key_targets() {
                key.stop_if_asleep();
            }
        }
        drop(stores);
    }

    /// Resolves once the instance stopped (at once if it has).
    pub(crate) async fn stopped(&self) {
        loop {
            let notified = self.stopped_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// What identifies a store's definition, to detect conflicting `store()` calls.
#[derive(Debug, PartialEq)]
pub(crate) struct Fingerprint {
    pub type_id: TypeId,
    pub type_name: &'static str,
    pub template: Value,
    pub metadata_template: Value,
    pub migrations: Vec<String>,
    pub hooks: (bool, bool),
}

impl Fingerprint {
    pub(crate) fn difference(&self, other: &Fingerprint) -> Option<String> {
        if self.type_id != other.type_id {
            return Some(format!("document type {} vs {}", self.type_name, other.type_name));
        }
        if self.template != other.template {
            return Some("template differs".into());
        }
        if self.metadata_template != other.metadata_template {
            return Some("metadata template differs".into());
        }
        if self.migrations != other.migrations {
            return Some(format!("migrations {:?} vs {:?}", self.migrations, other.migrations));
        }
        if self.hooks != other.hooks {
            return Some("hooks differ".into());
        }
        None
    }
}

/// A loaded key with the store and key it is.
pub(crate) struct NamedKey {
    pub store: Arc<str>,
    pub key: Arc<str>,
    pub target: Arc<dyn KeyControl>,
}

/// One key session's lifecycle as others see it: whether its open finished,
/// and, once, that its session closed and why. It lives in the key's cell
/// and outlives the actors that serve the session (a key that sleeps and
/// wakes keeps it); its address identifies the session in the store's
/// table.
///
/// One exists per loaded key, so it is kept small: a `watch` channel costs
/// about 360 bytes (eight inner `Notify`s), this 80.
pub(crate) struct CloseSignal {
    reason: OnceLock<CloseReason>,
    opened: AtomicBool,
    /// The actor serves a one-shot update (`Store::update_unleased`), never
    /// a session: neither may join the other's actor (they would share one
    /// epoch with no fencing between them).
    one_shot: bool,
    notify: Notify,
}

impl CloseSignal {
    pub(crate) fn new(one_shot: bool) -> Self {
        Self { reason: OnceLock::new(), opened: AtomicBool::new(false), one_shot, notify: Notify::new() }
    }

    pub(crate) fn mark_opened(&self) {
        self.opened.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// An open session (not a one-shot update's): what `Store::get` may hand out.
    pub(crate) fn is_session_open(&self) -> bool {
        !self.one_shot && self.is_open()
    }

    /// Whether the actor serves a one-shot update rather than a session.
    pub(crate) fn is_one_shot(&self) -> bool {
        self.one_shot
    }

    /// Resolves once the open finished or the actor closed (at once if
    /// either happened).
    pub(crate) async fn wait_settled(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.opened.load(Ordering::Acquire) || self.reason.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// The open finished and the session has not closed.
    pub(crate) fn is_open(&self) -> bool {
        self.opened.load(Ordering::Acquire) && self.reason.get().is_none()
    }

    /// Records `reason` and wakes every waiter; later calls change nothing.
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        self.reason.get().cloned()
    }

    /// Resolves once `close` has been called (at once if it has).
    pub(crate) async fn wait(&self) -> CloseReason {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the two still wakes us.
            notified.as_mut().enable();
            if let Some(reason) = self.reason.get() {
                return reason.clone();
            }
            notified.await;
        }
    }
}
