//! The queue actor's protocol: submit a storage request, drop queued
//! requests, wait for an empty queue, read the depth.
//!
//! Owns: the message types and the request's operation. Must not: schedule
//! or execute anything (the queue actor and `lanes` do).

use std::sync::Arc;

use actix::Message;
use tokio::sync::oneshot;

use crate::storage::{AllOrNothing, KeyValues, Precondition, StorageError, WriteOp, WriteOutcome};
use crate::types::{BudgetLevels, Priority, QueueDepth, QueueStats};

/// The backend operation a request performs.
#[derive(Debug)]
pub(crate) enum Operation {
    Get,
    /// A conditional write (or delete, `value: None`) of the request's key;
    /// the queue builds the backend's `WriteOp` around the storage key, so
    /// the key is not carried twice.
    Write {
        precondition: Precondition,
        value: Option<Vec<u8>>,
    },
    Scan {
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    },
    /// Several keys written in one all-or-nothing step
    /// (`Backend::write_all`); the request's key is the first op's.
    WriteAll {
        ops: Vec<WriteOp>,
    },
}

impl Operation {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Write { value: None, .. } => "delete",
            Operation::Write { .. } => "write",
            Operation::Scan { .. } => "scan",
            Operation::WriteAll { .. } => "write_all",
        }
    }

    /// Whether it writes (and needs a flush before its answer).
    pub(crate) fn writes(&self) -> bool {
        matches!(self, Operation::Write { .. } | Operation::WriteAll { .. })
    }

    /// Bytes this operation writes (0 for reads).
    pub(crate) fn value_len(&self) -> usize {
        match self {
            Operation::Write { value, .. } => value.as_ref().map_or(0, Vec::len),
            Operation::WriteAll { ops } => ops.iter().map(|o| o.value.as_ref().map_or(0, Vec::len)).sum(),
            Operation::Get | Operation::Scan { .. } => 0,
        }
    }
}

/// A successful result.
#[derive(Debug)]
pub(crate) enum Reply {
    Value(Option<Vec<u8>>),
    Written(WriteOutcome),
    Scanned(KeyValues),
    AllOrNothing(AllOrNothing),
}

/// Why a request produced no result.
#[derive(Debug, Clone)]
pub(crate) enum QueueFailure {
    Storage { error: StorageError, attempts: u32, operation: &'static str },
    Cancelled,
    Stopped,
}

pub(crate) type ReplyTx = oneshot::Sender<Result<Reply, QueueFailure>>;

/// Enqueue one storage request; the answer arrives on `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Submit {
    pub store: Arc<str>,
    pub key: Arc<str>,
    pub storage_key: Vec<u8>,
    pub op: Operation,
    pub lane: Priority,
    pub reply: ReplyTx,
}

/// Drop queued (not yet executing) requests: the normal lane only, or both
/// lanes when `emergency_too`. Their callers get `Cancelled`. Answers how
/// many were dropped.
#[derive(Message)]
#[rtype(result = "usize")]
pub(crate) struct DropQueued {
    pub emergency_too: bool,
}

/// Resolves `done` once nothing is queued, retrying or executing.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct NotifyWhenEmpty {
    pub done: oneshot::Sender<()>,
}

/// Read the current [`QueueDepth`].
#[derive(Message)]
#[rtype(result = "QueueDepth")]
pub(crate) struct GetDepth;

/// Read the current [`BudgetLevels`].
#[derive(Message)]
#[rtype(result = "BudgetLevels")]
pub(crate) struct GetBudgets;

/// Read the [`QueueStats`].
#[derive(Message)]
#[rtype(result = "QueueStats")]
pub(crate) struct GetStats;
