//! The queue actor's protocol: submit a storage request, drop queued
//! requests, wait for an empty queue, read the depth.
//!
//! Owns: the message types and the request's operation. Must not: schedule
//! or execute anything (the queue actor and `lanes` do).

use actix::Message;
use tokio::sync::oneshot;

use crate::storage::{AllOrNothing, KeySizes, KeyValues, StorageError, StorageKey, WriteOp, WriteOutcome};
use crate::types::{BudgetLevels, Priority, QueueDepth, QueueStats};

/// The backend operation a request performs. Each carries its key once,
/// typed: the queue hands it to the backend as it is.
#[derive(Debug)]
pub(crate) enum Operation {
    Get(StorageKey),
    /// A conditional write (or delete, `value: None`).
    Write(WriteOp),
    Scan {
        prefix: StorageKey,
        start_after: Option<Vec<u8>>,
        limit: usize,
    },
    /// A scan answering each key's value length instead of its value.
    ScanSizes {
        prefix: StorageKey,
        start_after: Option<Vec<u8>>,
        limit: usize,
    },
    /// Several keys written in one all-or-nothing step
    /// (`Backend::write_all`); the request is about the first op's key.
    WriteAll {
        ops: Vec<WriteOp>,
    },
}

impl Operation {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Operation::Get(_) => "get",
            Operation::Write(op) if op.value.is_none() => "delete",
            Operation::Write(_) => "write",
            Operation::Scan { .. } => "scan",
            Operation::ScanSizes { .. } => "scan_sizes",
            Operation::WriteAll { .. } => "write_all",
        }
    }

    /// The key the request is about: what the queue orders requests by.
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            Operation::Get(k) | Operation::Scan { prefix: k, .. } | Operation::ScanSizes { prefix: k, .. } => k,
            Operation::Write(op) => &op.key,
            Operation::WriteAll { ops } => ops.first().map_or(&[][..], |o| &o.key),
        }
    }

    /// Whether it writes (and needs a flush before its answer).
    pub(crate) fn writes(&self) -> bool {
        matches!(self, Operation::Write(_) | Operation::WriteAll { .. })
    }

    /// Bytes this operation writes (0 for reads).
    pub(crate) fn value_len(&self) -> usize {
        match self {
            Operation::Write(op) => op.value.as_ref().map_or(0, |v| v.len()),
            Operation::WriteAll { ops } => ops.iter().map(|o| o.value.as_ref().map_or(0, |v| v.len())).sum(),
            Operation::Get(_) | Operation::Scan { .. } | Operation::ScanSizes { .. } => 0,
        }
    }
}

/// A successful result.
#[derive(Debug)]
pub(crate) enum Reply {
    Value(Option<Vec<u8>>),
    Written(WriteOutcome),
    Scanned(KeyValues),
    Sized(KeySizes),
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
