//! The messages each actor accepts, one file per actor's protocol.
//!
//! Must not: contain behaviour beyond trivial accessors (an operation's
//! name and size). A message type is a contract between two actors;
//! handlers live in `crate::actors` (the queue's flusher-to-queue message,
//! `Flushed`, lives with the queue: no other actor sends it).

pub(crate) mod key;
pub(crate) mod queue;
pub(crate) mod supervisor;
