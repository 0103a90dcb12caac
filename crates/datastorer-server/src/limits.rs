//! The API's fixed ceilings, in one place: the handlers enforce them and
//! the OpenAPI document publishes them.
//!
//! Owns: the numbers. Must not: import anything of the crate.

/// The longest hand-off grace a requester may grant a holder (ProfileStore
/// gives its holder one save; ten seconds is several round trips).
pub(crate) const MAX_GRACE_MS: u64 = 10_000;

/// Most keys one page of `GET /v1/stores/{store}/keys` lists.
pub(crate) const MAX_LIST_LIMIT: usize = 1000;

/// The longest a poll may wait: under HttpService's 30 s request timeout,
/// with room for the answer.
pub(crate) const MAX_POLL_WAIT_MS: u64 = 20_000;

/// Most events one poll answers.
pub(crate) const MAX_POLL_LIMIT: usize = 1000;

/// Most operations one batch may carry (the body limit applies as well).
pub(crate) const MAX_BATCH_OPS: usize = 1000;
