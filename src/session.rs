//! `Session<T>`: the application's handle on one loaded key, and its save
//! receipt (the policies, close reasons and lease info are in `types`).
//!
//! Owns: turning method calls into key-actor messages. Must not: hold state
//! of its own; the key actor is the single owner of the document.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::actors::key::{KeyActor, KeyCell};
use crate::error::{Error, KeyId};
use crate::keepalive::Keepalive;
use crate::messages::key::{
    AddUserId, CheckLease, Close, GetLease, GetMetadata, GetUserIds, Read, ReceiptTx, Release, RemoveUserId, Save,
    SetMetadata, Update, UpdateEncoded,
};
use crate::types::Document;
use crate::types::{CloseReason, LeaseInfo, Priority, SaveOutcome};

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
                at: KeyId::new(self.store.to_string(), self.key.to_string()),
                reason: CloseReason::Stopped,
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A handle on one loaded key. Cheap to clone; every clone talks to the same
/// key actor, which runs closures one at a time (a key that sleeps is woken
/// by the next call, unseen).
pub struct Session<T: Document> {
    cell: Arc<KeyCell<T>>,
    /// Keeps the instance running while the application holds the session
    /// (`None` in a session the engine made for itself).
    keepalive: Option<Arc<Keepalive>>,
}

impl<T: Document> Clone for Session<T> {
    fn clone(&self) -> Self {
        Self { cell: self.cell.clone(), keepalive: self.keepalive.clone() }
    }
}

impl<T: Document> fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("store", &self.store()).field("key", &self.key()).finish()
    }
}

impl<T: Document> Session<T> {
    pub(crate) fn new(cell: Arc<KeyCell<T>>, keepalive: Option<Arc<Keepalive>>) -> Self {
        Self { cell, keepalive }
    }

    /// The store name.
    pub fn store(&self) -> &str {
        self.cell.store_name()
    }

    /// The key.
    pub fn key(&self) -> &str {
        self.cell.key()
    }

    fn gone(&self) -> Error {
        let reason = self.cell.signal().reason().unwrap_or(CloseReason::Stopped);
        Error::SessionClosed { at: KeyId::new(self.store().to_owned(), self.key().to_owned()), reason }
    }

    /// Sends `msg` to the key's actor (waking the key if it sleeps) and
    /// waits for the answer.
    async fn ask<M>(&self, msg: M) -> Result<M::Result, Error>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        KeyActor<T>: actix::Handler<M>,
        <KeyActor<T> as actix::Actor>::Context: actix::dev::ToEnvelope<KeyActor<T>, M>,
    {
        match self.cell.send(msg) {
            Some(request) => request.await.map_err(|_| self.gone()),
            None => Err(self.gone()),
        }
    }

    fn receipt(&self) -> (ReceiptTx, SaveReceipt) {
        SaveReceipt::channel(self.cell.store_name().clone(), self.cell.key().clone())
    }

    /// Runs `f` over the document inside the key actor.
    pub async fn read<R: Send + 'static>(&self, f: impl FnOnce(&T) -> R + Send + 'static) -> Result<R, Error> {
        self.ask(Read(f, PhantomData)).await?
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
        self.ask(Update(f, PhantomData)).await?
    }

    /// [`Session::update`], answering also the document's JSON encoding
    /// after the change: the bytes the next save writes (made once, by the
    /// size check), for a caller that sends the document on, such as an
    /// HTTP answer, without serializing it again.
    pub async fn update_encoded<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<(R, bytes::Bytes), Error> {
        self.ask(UpdateEncoded(f, PhantomData)).await?
    }

    /// The metadata stored beside the document.
    pub async fn metadata(&self) -> Result<Value, Error> {
        self.ask(GetMetadata).await?
    }

    /// Replaces the metadata (saved with the next write).
    pub async fn set_metadata(&self, metadata: Value) -> Result<(), Error> {
        self.ask(SetMetadata(metadata)).await?
    }

    /// Associates a user id with the key (saved with the next write).
    pub async fn add_user_id(&self, user_id: impl fmt::Display) -> Result<(), Error> {
        self.ask(AddUserId(user_id.to_string())).await?
    }

    /// Dissociates `user_id` from the key (saved with the next write, like
    /// an added one). Answers whether it was associated.
    pub async fn remove_user_id(&self, user_id: impl fmt::Display) -> Result<bool, Error> {
        self.ask(RemoveUserId(user_id.to_string())).await?
    }

    /// The user ids associated with the key.
    pub async fn user_ids(&self) -> Result<Vec<String>, Error> {
        self.ask(GetUserIds).await?
    }

    /// The lease this session holds.
    pub async fn lease(&self) -> Result<LeaseInfo, Error> {
        self.ask(GetLease).await?
    }

    /// Reads the stored record back (one read through the queue) and
    /// answers whether the session still holds the key. A session whose
    /// key was taken or deleted by another process ends here, with the
    /// reason (`SessionClosed`), instead of at its next write. For a
    /// request that would otherwise answer from memory alone (a client
    /// resuming its session after a lost answer).
    pub async fn check_lease(&self) -> Result<(), Error> {
        self.ask(CheckLease).await?
    }

    /// Saves the document now. The receipt resolves once the write is
    /// durable, or with the error. When nothing changed since the last
    /// durable write it resolves at once with that revision. A save issued
    /// while another write is in flight waits and writes the newer state.
    pub fn save(&self, priority: Priority) -> SaveReceipt {
        let (tx, receipt) = self.receipt();
        self.cell.do_send(Save { priority, receipt: tx });
        receipt
    }

    /// Saves, clears the lease and closes the session (reason `Released`).
    /// On failure the session stays open and the data stays in memory.
    pub async fn release(&self, priority: Priority) -> Result<SaveOutcome, Error> {
        let (tx, receipt) = self.receipt();
        self.cell.do_send(Release { priority, reason: CloseReason::Released, receipt: tx });
        receipt.await
    }

    /// Like [`release`](Self::release), reporting `reason` as why the
    /// session ended (to [`closed`](Self::closed) and in the change
    /// notice): a server that releases a vanished client's session says
    /// `Expired`, one that hands a key to another client says
    /// `ReleaseRequested`.
    pub async fn release_as(&self, priority: Priority, reason: CloseReason) -> Result<SaveOutcome, Error> {
        let (tx, receipt) = self.receipt();
        self.cell.do_send(Release { priority, reason, receipt: tx });
        receipt.await
    }

    /// Drops unsaved changes, clears the lease and closes (reason `Closed`).
    pub async fn close(&self) -> Result<SaveOutcome, Error> {
        self.close_as(CloseReason::Closed).await
    }

    /// Like [`close`](Self::close), reporting `reason` (a server that
    /// hands a key to a stealing client says `Stolen`).
    pub async fn close_as(&self, reason: CloseReason) -> Result<SaveOutcome, Error> {
        let (tx, receipt) = self.receipt();
        self.cell.do_send(Close { reason, receipt: tx });
        receipt.await
    }

    /// Resolves with the reason once the session has closed.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        let cell = self.cell.clone();
        async move { cell.signal().wait().await }
    }

    /// The close reason, if the session has closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.cell.signal().reason()
    }
}
