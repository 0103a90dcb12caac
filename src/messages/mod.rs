//! The messages each actor accepts, one file per actor's protocol.
//!
//! Must not: contain behaviour. A message type is a contract between two
//! actors; handlers live in `crate::actors`.

pub(crate) mod key;
pub(crate) mod queue;
pub(crate) mod supervisor;
