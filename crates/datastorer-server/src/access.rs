//! Facts a request learns on its way (which API key, which client, what
//! news its session has), left in the request's extensions for the
//! middleware to log and turn into headers.
//!
//! Owns: those three marker types. Must not: import anything of the crate;
//! it is the leaf both the extractors and the middleware read.

/// The API key name of a request, for the access log (never the secret).
#[derive(Clone)]
pub(crate) struct AccessKey(pub(crate) String);

/// The client id a request acted for, for the access log.
#[derive(Clone)]
pub(crate) struct AccessClient(pub(crate) String);

/// Set on a request whose session has news for its holder; the middleware
/// turns it into headers on the answer (`Handoff-Requested: <deadline_ms>`,
/// `Messages-Waiting: 1`), so every session route tells the holder.
#[derive(Clone, Copy)]
pub(crate) struct SessionNotices {
    /// Another client asked for the key; the hand-off deadline.
    pub(crate) handoff_deadline_ms: Option<u64>,
    /// Messages wait in the key's inbox.
    pub(crate) messages_waiting: bool,
}
