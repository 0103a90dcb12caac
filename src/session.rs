//! `Session<T>`: the application's handle on one loaded key, and the small
//! public types around it (policies, close reasons, receipts, lease info).
//!
//! Owns: turning method calls into key-actor messages. Must not: hold state
//! of its own; the key actor is the single owner of the document.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use actix::Addr;
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use crate::actors::key::KeyActor;
use crate::error::Error;
use crate::messages::key::{
    AddUserId, Close, GetLease, GetMetadata, GetUserIds, Read, ReceiptTx, Release, Save, SetMetadata, Update,
};
use crate::messages::queue::Priority;
use crate::store::Document;

/// What `open` does when another owner holds a live lease on the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquirePolicy {
    /// Fail at once with `Error::LeaseHeld` (holder and expiry).
    Fail,
    /// Re-check whenever the holder releases (notice) or every
    /// `lease_poll_interval`, and take the key once it is free or expired;
    /// fail with `LeaseHeld` after `timeout`.
    Wait {
        /// How long to wait at most.
        timeout: Duration,
    },
    /// Ask the holder to save and release (it does so at once when it is
    /// alive and shares the backend's notice bus), then wait as `Wait` does.
    RequestRelease {
        /// How long to wait at most.
        timeout: Duration,
    },
    /// Take the lease now. The old holder's next write fails its fencing
    /// check and its session closes with `Stolen` (notice) or `LeaseLost`.
    Steal,
}

impl Default for AcquirePolicy {
    fn default() -> Self {
        AcquirePolicy::RequestRelease { timeout: Duration::from_secs(15) }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// `release()`: saved and lease cleared.
    Released,
    /// `close()`: unsaved changes dropped, lease cleared.
    Closed,
    /// A write failed its fencing check: another owner holds the lease.
    LeaseLost,
    /// Another owner stole the lease (announced by notice).
    Stolen,
    /// Another owner asked for the key; it was saved and released.
    ReleaseRequested,
    /// The engine shut down; the key was saved and released.
    Shutdown,
    /// An administrator deleted the record (`Store::delete` with `force`);
    /// unsaved changes were dropped.
    Deleted,
    /// The holder stopped renewing (a server's client vanished); the key
    /// was saved and released.
    Expired,
    /// Something failed; the message says what.
    Error(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Released => f.write_str("released"),
            CloseReason::Closed => f.write_str("closed"),
            CloseReason::LeaseLost => f.write_str("lease lost"),
            CloseReason::Stolen => f.write_str("stolen"),
            CloseReason::ReleaseRequested => f.write_str("released on request"),
            CloseReason::Shutdown => f.write_str("shutdown"),
            CloseReason::Deleted => f.write_str("deleted"),
            CloseReason::Expired => f.write_str("expired"),
            CloseReason::Error(m) => write!(f, "error: {m}"),
        }
    }
}

/// The lease a session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Owner id of this instance.
    pub owner: String,
    /// Fencing epoch of this session.
    pub epoch: u64,
    /// When the lease lapses unless renewed (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// Revision of the last durable write.
    pub revision: u64,
}

/// A durable write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOutcome {
    /// The record's revision after the write (unchanged if nothing needed writing).
    pub revision: u64,
}

/// Resolves when a save is durable (`Ok`) or has failed.
#[must_use = "a receipt does nothing unless awaited; drop it to fire and forget"]
pub struct SaveReceipt {
    rx: oneshot::Receiver<Result<SaveOutcome, Error>>,
    store: Arc<str>,
    key: Arc<str>,
}

impl SaveReceipt {
    pub(crate) fn channel(store: Arc<str>, key: Arc<str>) -> (ReceiptTx, SaveReceipt) {
        let (tx, rx) = oneshot::channel();
        (tx, SaveReceipt { rx, store, key })
    }
}

impl Future for SaveReceipt {
    type Output = Result<SaveOutcome, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::SessionClosed {
                store: self.store.to_string(),
                key: self.key.to_string(),
                reason: CloseReason::Error("key actor stopped".into()),
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A handle on one loaded key. Cheap to clone; every clone talks to the same
/// key actor, which runs closures one at a time.
pub struct Session<T: Document> {
    addr: Addr<KeyActor<T>>,
    store: Arc<str>,
    key: Arc<str>,
    closed: Arc<CloseSignal>,
}

impl<T: Document> Clone for Session<T> {
    fn clone(&self) -> Self {
        Self { addr: self.addr.clone(), store: self.store.clone(), key: self.key.clone(), closed: self.closed.clone() }
    }
}

impl<T: Document> fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("store", &self.store).field("key", &self.key).finish()
    }
}

impl<T: Document> Session<T> {
    pub(crate) fn new(addr: Addr<KeyActor<T>>, store: Arc<str>, key: Arc<str>, closed: Arc<CloseSignal>) -> Self {
        Self { addr, store, key, closed }
    }

    /// The store name.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn gone(&self) -> Error {
        let reason = self.closed.reason().unwrap_or_else(|| CloseReason::Error("key actor stopped".into()));
        Error::SessionClosed { store: self.store.to_string(), key: self.key.to_string(), reason }
    }

    /// Runs `f` over the document inside the key actor.
    pub async fn read<R: Send + 'static>(&self, f: impl FnOnce(&T) -> R + Send + 'static) -> Result<R, Error> {
        self.addr.send(Read(f, PhantomData)).await.map_err(|_| self.gone())?
    }

    /// A copy of the document.
    pub async fn get(&self) -> Result<T, Error> {
        self.read(T::clone).await
    }

    /// Runs `f` over the document inside the key actor. If `f` panics the
    /// document is restored to what it was before the call (the actor keeps
    /// a copy for the duration of the call), the panic is returned as
    /// `Error::Panicked`, and the session stays open.
    pub async fn update<R: Send + 'static>(&self, f: impl FnOnce(&mut T) -> R + Send + 'static) -> Result<R, Error> {
        self.addr.send(Update(f, PhantomData)).await.map_err(|_| self.gone())?
    }

    /// The metadata stored beside the document.
    pub async fn metadata(&self) -> Result<Value, Error> {
        self.addr.send(GetMetadata).await.map_err(|_| self.gone())?
    }

    /// Replaces the metadata (saved with the next write).
    pub async fn set_metadata(&self, metadata: Value) -> Result<(), Error> {
        self.addr.send(SetMetadata(metadata)).await.map_err(|_| self.gone())?
    }

    /// Associates a user id with the key (saved with the next write).
    pub async fn add_user_id(&self, user_id: impl fmt::Display) -> Result<(), Error> {
        self.addr.send(AddUserId(user_id.to_string())).await.map_err(|_| self.gone())?
    }

    /// The user ids associated with the key.
    pub async fn user_ids(&self) -> Result<Vec<String>, Error> {
        self.addr.send(GetUserIds).await.map_err(|_| self.gone())?
    }

    /// The lease this session holds.
    pub async fn lease(&self) -> Result<LeaseInfo, Error> {
        self.addr.send(GetLease).await.map_err(|_| self.gone())?
    }

    /// Saves the document now. The receipt resolves once the write is
    /// durable, or with the error. When nothing changed since the last
    /// durable write it resolves at once with that revision. A save issued
    /// while another write is in flight waits and writes the newer state.
    pub fn save(&self, priority: Priority) -> SaveReceipt {
        let (tx, receipt) = SaveReceipt::channel(self.store.clone(), self.key.clone());
        self.addr.do_send(Save { priority, receipt: tx });
        receipt
    }

    /// Saves, clears the lease and closes the session (reason `Released`).
    /// On failure the session stays open and the data stays in memory.
    pub async fn release(&self, priority: Priority) -> Result<SaveOutcome, Error> {
        let (tx, receipt) = SaveReceipt::channel(self.store.clone(), self.key.clone());
        self.addr.do_send(Release { priority, reason: CloseReason::Released, receipt: tx });
        receipt.await
    }

    /// Like [`release`](Self::release), reporting `reason` as why the
    /// session ended (to [`closed`](Self::closed) and in the change
    /// notice): a server that releases a vanished client's session says
    /// `Expired`, one that hands a key to another client says
    /// `ReleaseRequested`.
    pub async fn release_as(&self, priority: Priority, reason: CloseReason) -> Result<SaveOutcome, Error> {
        let (tx, receipt) = SaveReceipt::channel(self.store.clone(), self.key.clone());
        self.addr.do_send(Release { priority, reason, receipt: tx });
        receipt.await
    }

    /// Drops unsaved changes, clears the lease and closes (reason `Closed`).
    pub async fn close(&self) -> Result<SaveOutcome, Error> {
        self.close_as(CloseReason::Closed).await
    }

    /// Like [`close`](Self::close), reporting `reason` (a server that
    /// hands a key to a stealing client says `Stolen`).
    pub async fn close_as(&self, reason: CloseReason) -> Result<SaveOutcome, Error> {
        let (tx, receipt) = SaveReceipt::channel(self.store.clone(), self.key.clone());
        self.addr.do_send(Close { reason, receipt: tx });
        receipt.await
    }

    /// Resolves with the reason once the session has closed.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        let signal = self.closed.clone();
        async move { signal.wait().await }
    }

    /// The close reason, if the session has closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.reason()
    }
}

/// One key actor's lifecycle as others see it: whether its open finished,
/// and, once, that its session closed and why. The `Arc` doubles as the
/// actor instance's identity in the store's registry.
///
/// One exists per loaded key, so it is kept small: a `watch` channel costs
/// about 360 bytes (eight inner `Notify`s), this 80.
pub(crate) struct CloseSignal {
    reason: OnceLock<CloseReason>,
    opened: AtomicBool,
    notify: Notify,
}

impl CloseSignal {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { reason: OnceLock::new(), opened: AtomicBool::new(false), notify: Notify::new() })
    }

    pub(crate) fn mark_opened(&self) {
        self.opened.store(true, Ordering::Release);
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
