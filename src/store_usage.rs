//! How much a store holds: its records and kept versions, counted and
//! summed, for an operator's view (the console's store list, capacity
//! planning). Counted on request, in pages of keys with their value
//! lengths, through the queue: a large store never holds the queue for
//! longer than one page, and no document leaves the storage to be counted.
//!
//! Owns: that count. Must not: read a document, or cache the figures (the
//! caller decides how fresh they must be).

use std::sync::Arc;

use crate::engine::Engine;
use crate::storage::history::versions_of_store;
use crate::storage::store_prefix;
use crate::store::validate_store_name;
use crate::Error;

/// Keys per request to the storage: small enough that a save queued
/// behind a page waits a few milliseconds at most.
const PAGE: usize = 4096;

/// What a store holds, as counted at `measured_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreUsage {
    /// Records (keys with a stored value).
    pub keys: u64,
    /// Bytes of those records as stored (documents, metadata, headers).
    pub bytes: u64,
    /// Kept versions of its keys (version history).
    pub versions: u64,
    /// Bytes of those versions.
    pub version_bytes: u64,
}

/// Counts `store`'s records and versions.
pub(crate) async fn measure(engine: &Engine, store: &str) -> Result<StoreUsage, Error> {
    validate_store_name(store)?;
    let name: Arc<str> = Arc::from(store);
    let (keys, bytes) = count(engine, &name, "(usage)", store_prefix(store)).await?;
    let (versions, version_bytes) = count(engine, &name, "(versions usage)", versions_of_store(store)).await?;
    Ok(StoreUsage { keys, bytes, versions, version_bytes })
}

async fn count(engine: &Engine, store: &Arc<str>, label: &str, prefix: Vec<u8>) -> Result<(u64, u64), Error> {
    let label: Arc<str> = Arc::from(label);
    let (mut n, mut total) = (0u64, 0u64);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = engine.scan_sizes(store, &label, prefix.clone(), after.take(), PAGE).await?;
        n += page.len() as u64;
        total += page.iter().map(|(_, len)| len).sum::<u64>();
        if page.len() < PAGE {
            return Ok((n, total));
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}
