//! The key actor's protocol. Typed messages (`Read`, `Update`, ...) come
//! from a `Session<T>`; `Control` is type-erased so the supervisor can drive
//! key actors of every store through one `Recipient`.
//!
//! Owns: the message types. Must not: contain behaviour (the key actor does).

use std::marker::PhantomData;

use actix::Message;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::storage::NoticeKind;
use crate::types::{AcquirePolicy, CloseReason, LeaseInfo, Priority, SaveOutcome};

pub(crate) type ReceiptTx = oneshot::Sender<Result<SaveOutcome, Error>>;

/// Load the record, take the lease, migrate, reconcile, run the after-load hook.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Open {
    pub user_ids: Vec<String>,
    pub policy: AcquirePolicy,
    /// For a one-shot write: a record it creates is versioned by the write
    /// that follows (with the value written), not by the create (the
    /// template nobody asked to keep).
    pub one_shot: bool,
}

/// Run a closure over the document. Generic over the closure and its
/// result, so neither is boxed on its own (the message rides in actix's
/// envelope) and nothing is downcast on the way back.
pub(crate) struct Read<T, F, R>(pub F, pub PhantomData<fn(&T) -> R>);
impl<T: 'static, F, R: Send + 'static> Message for Read<T, F, R>
where
    F: FnOnce(&T) -> R + Send + 'static,
{
    type Result = Result<R, Error>;
}

/// Run a mutating closure over the document (generic, as `Read`).
pub(crate) struct Update<T, F, R>(pub F, pub PhantomData<fn(&mut T) -> R>);
impl<T: 'static, F, R: Send + 'static> Message for Update<T, F, R>
where
    F: FnOnce(&mut T) -> R + Send + 'static,
{
    type Result = Result<R, Error>;
}

/// `Update`, answering also the document's JSON encoding after the change
/// (the bytes the next save writes).
pub(crate) struct UpdateEncoded<T, F, R>(pub F, pub PhantomData<fn(&mut T) -> R>);
impl<T: 'static, F, R: Send + 'static> Message for UpdateEncoded<T, F, R>
where
    F: FnOnce(&mut T) -> R + Send + 'static,
{
    type Result = Result<(R, bytes::Bytes), Error>;
}

#[derive(Message)]
#[rtype(result = "Result<Value, Error>")]
pub(crate) struct GetMetadata;

#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct SetMetadata(pub Value);

#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct AddUserId(pub String);

/// Answers whether the id was associated.
#[derive(Message)]
#[rtype(result = "Result<bool, Error>")]
pub(crate) struct RemoveUserId(pub String);

#[derive(Message)]
#[rtype(result = "Result<Vec<String>, Error>")]
pub(crate) struct GetUserIds;

#[derive(Message)]
#[rtype(result = "Result<LeaseInfo, Error>")]
pub(crate) struct GetLease;

/// Read the stored record back: still ours answers `Ok`; taken (a later
/// epoch, or no record) ends the session and answers why.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct CheckLease;

/// Save now; `receipt` resolves when the write is durable or failed.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Save {
    pub priority: Priority,
    pub receipt: ReceiptTx,
}

/// Save, clear the lease and close; `receipt` resolves when that is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Release {
    pub priority: Priority,
    pub reason: CloseReason,
    pub receipt: ReceiptTx,
}

/// Drop unsaved changes, clear the lease and close.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Close {
    pub reason: CloseReason,
    pub receipt: ReceiptTx,
}

/// Messages from the supervisor and the notice listener, for every store.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) enum Control {
    /// Save if changed; renew the lease if half of it is used.
    Autosave,
    /// A notice addressed to this key's holder arrived on the backend bus.
    Notice(NoticeKind),
    /// Notices may have been missed: re-read the record and close with
    /// `LeaseLost` if its epoch is no longer this session's.
    VerifyLease,
    /// Stop at once without writing anything (a simulated crash).
    #[cfg(feature = "harness")]
    Abort,
    /// `Release`, sent by the supervisor through the type-erased key list
    /// (shutdown, `release_all_keys`).
    Release(Release),
    /// `Close`, sent through the type-erased key list (an erasure ends a
    /// session without saving what it is about to delete).
    Close(Close),
}
