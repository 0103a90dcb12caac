//! The names of the stores that hold records, for listing (Roblox's
//! `ListDataStoresAsync`, a console's store list): a skip scan over the
//! record keys, one short scan per store, so a store with a million keys
//! costs what one with a single key does.
//!
//! Owns: that scan. Must not: read any record's value, or list the
//! internal `S:inbox` stores (they are part of their store).

use std::sync::Arc;

use crate::engine::Engine;
use crate::storage::{split_storage_key, storage_key, RECORDS_PREFIX};
use crate::store::{INBOX_SUFFIX, MAX_KEY_LEN};
use crate::Error;

/// The greatest key a store can hold: every valid key sorts at or before
/// it, so scanning after it (exclusive) leaves the store.
fn last_possible_key() -> String {
    std::iter::repeat_n('\u{10FFFF}', MAX_KEY_LEN / '\u{10FFFF}'.len_utf8()).collect()
}

/// Names of stores holding at least one record that start with `prefix`,
/// in byte order, after the store `after` (a cursor: the last name of the
/// previous page), at most `limit`.
pub(crate) async fn names(
    engine: &Engine,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, Error> {
    let label_store: Arc<str> = Arc::from("(stores)");
    let label: Arc<str> = Arc::from(format!("{prefix}*"));
    let last = last_possible_key();
    let mut start = match after {
        Some(store) => Some(storage_key(store, &last)),
        // The first store at or after `prefix` (`d\0{prefix}` sorts before
        // every key of a store whose name starts with it).
        None if !prefix.is_empty() => {
            let mut k = RECORDS_PREFIX.to_vec();
            k.extend_from_slice(prefix.as_bytes());
            Some(k)
        }
        None => None,
    };
    let mut out = Vec::new();
    while out.len() < limit {
        let page = engine.scan(&label_store, &label, RECORDS_PREFIX.to_vec(), start.take(), 1).await?;
        let Some((store, _)) = page.first().and_then(|(k, _)| split_storage_key(k)) else { break };
        if !store.starts_with(prefix) {
            if store.as_str() > prefix {
                break;
            }
        } else if !store.ends_with(INBOX_SUFFIX) {
            out.push(store.clone());
        }
        start = Some(storage_key(&store, &last));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_valid_key_sorts_after_the_last_possible_one() {
        let last = last_possible_key();
        assert!(last.len() <= MAX_KEY_LEN && last.len() > MAX_KEY_LEN - 4);
        for key in ["", "a", "\u{10FFFF}", "\u{FFFF}\u{10FFFF}", &"z".repeat(MAX_KEY_LEN)] {
            assert!(storage_key("s", key) <= storage_key("s", &last), "{key:?}");
        }
        // And the next store sorts after it.
        assert!(storage_key("s", &last) < storage_key("s0", ""));
        assert!(storage_key("s", &last) < storage_key("s-", ""));
    }
}
