//! The storage layout of a key's history and of the user-id index: what a
//! write that carries a version ([`WriteOp::version`]) stores beside its
//! record, in the same atomic step, on every backend.
//!
//! - A **version** of record `K` of store `S` at header `(e, r)` is stored
//!   under `h\0S\0K\0` followed by `e` and `r` as 8 big-endian bytes each,
//!   so a key's versions sort oldest first (epochs never go back for a key,
//!   across deletes too, and within an epoch revisions only grow). Its
//!   value is the record's bytes as saved; a **tombstone** (a delete) is a
//!   record whose document is empty ([`Record::tombstone`]).
//! - The **user-id index** holds `u\0ID\0S\0K` (empty value) for every user
//!   id `ID` a version of `S/K` carried. Entries are added by writes and
//!   removed only by erasure: a lookup verifies what it finds, so an entry
//!   left behind by a pruned version or a removed id finds nothing extra.
//!
//! Owns: those key layouts and the companion writes of an op. Must not:
//! decide what is kept (retention is the engine's) or do I/O.

use bytes::Bytes;

use super::{Record, RecordHeader, RecordIndex, WriteOp};

/// The prefix of every version's storage key.
pub const VERSIONS_PREFIX: &[u8] = b"h\0";

/// The prefix of every user-id index entry.
pub const USER_INDEX_PREFIX: &[u8] = b"u\0";

/// A version's identity within its key: the header it was saved with.
pub type VersionId = RecordHeader;

/// The prefix of every version of `key` in `store` (`h\0S\0K\0`).
pub fn versions_of_key(store: &str, key: &str) -> Vec<u8> {
    let mut out = versions_of_store(store);
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    out
}

/// The prefix of every version of every key of `store` (`h\0S\0`).
pub fn versions_of_store(store: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(VERSIONS_PREFIX.len() + store.len() + 1);
    out.extend_from_slice(VERSIONS_PREFIX);
    out.extend_from_slice(store.as_bytes());
    out.push(0);
    out
}

/// The storage key of the version of `store/key` saved at `id`.
pub fn version_key(store: &str, key: &str, id: VersionId) -> Vec<u8> {
    let mut out = versions_of_key(store, key);
    out.extend_from_slice(&id.epoch.to_be_bytes());
    out.extend_from_slice(&id.revision.to_be_bytes());
    out
}

/// Splits a version's storage key into (store, key, id).
pub fn split_version_key(bytes: &[u8]) -> Option<(String, String, VersionId)> {
    let rest = bytes.strip_prefix(VERSIONS_PREFIX)?;
    if rest.len() < 16 {
        return None;
    }
    let (names, id) = rest.split_at(rest.len() - 16);
    let names = names.strip_suffix(b"\0")?;
    let nul = names.iter().position(|b| *b == 0)?;
    let store = std::str::from_utf8(&names[..nul]).ok()?;
    let key = std::str::from_utf8(&names[nul + 1..]).ok()?;
    let epoch = u64::from_be_bytes(id[..8].try_into().ok()?);
    let revision = u64::from_be_bytes(id[8..].try_into().ok()?);
    Some((store.to_owned(), key.to_owned(), RecordHeader { epoch, revision }))
}

/// The prefix of every index entry of `user_id` (`u\0ID\0`).
pub fn user_index_prefix(user_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(USER_INDEX_PREFIX.len() + user_id.len() + 1);
    out.extend_from_slice(USER_INDEX_PREFIX);
    out.extend_from_slice(user_id.as_bytes());
    out.push(0);
    out
}

/// The index entry saying that `store/key` carried `user_id`.
pub fn user_index_key(user_id: &str, store: &str, key: &str) -> Vec<u8> {
    let mut out = user_index_prefix(user_id);
    out.extend_from_slice(store.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Splits an index entry into (user id, store, key).
pub fn split_user_index_key(bytes: &[u8]) -> Option<(String, String, String)> {
    let rest = bytes.strip_prefix(USER_INDEX_PREFIX)?;
    let mut parts = rest.splitn(3, |b| *b == 0);
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let store = std::str::from_utf8(parts.next()?).ok()?;
    let key = std::str::from_utf8(parts.next()?).ok()?;
    Some((user.to_owned(), store.to_owned(), key.to_owned()))
}

/// A version entry's identity and user ids, read from its bytes (the
/// header, then the body for the ids).
pub fn peek_version(bytes: &[u8]) -> Option<RecordIndex> {
    RecordIndex::peek(bytes)
}

/// What an op stores beside its record: its version, if it carries one,
/// then one user-index entry per user id of the version (or, without one,
/// of the record its writer indexed). Empty for an op on a key that is not
/// a record's.
pub fn companions(op: &WriteOp) -> Vec<(Vec<u8>, Bytes)> {
    let Some((store, key)) = op.key.record_parts() else { return Vec::new() };
    let Some(version) = &op.version else {
        return match (&op.index, &op.value) {
            (Some(index), Some(_)) => {
                index.user_ids.iter().map(|uid| (user_index_key(uid, store, key), Bytes::new())).collect()
            }
            _ => Vec::new(),
        };
    };
    // The writer's index describes the value; for a save the version is
    // the value (the same bytes), for a delete it is the tombstone.
    let same_bytes = op.value.as_deref().is_some_and(|v| super::same_buffer(v, version));
    let index = match (&op.index, same_bytes) {
        (Some(i), true) => Some(std::borrow::Cow::Borrowed(i)),
        _ => peek_version(version).map(std::borrow::Cow::Owned),
    };
    let Some(index) = index else { return Vec::new() };
    let mut out = Vec::with_capacity(1 + index.user_ids.len());
    out.push((version_key(store, key, index.header), version.clone()));
    for uid in &index.user_ids {
        out.push((user_index_key(uid, store, key), Bytes::new()));
    }
    out
}

impl Record {
    /// The version a delete leaves: the record's user ids and times, at the
    /// header after the deleted one, with an empty document (no document
    /// of a record is empty: it is JSON).
    pub fn tombstone(deleted: &Record, at_ms: u64) -> Record {
        Record {
            header: RecordHeader { epoch: deleted.header.epoch, revision: deleted.header.revision + 1 },
            data_version: deleted.data_version,
            data: Vec::new(),
            metadata: Vec::new(),
            user_ids: deleted.user_ids.clone(),
            lease: None,
            created_at_ms: deleted.created_at_ms,
            updated_at_ms: at_ms,
        }
    }

    /// Whether this version records a delete.
    pub fn is_tombstone(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_sort_by_epoch_then_revision_and_split_back() {
        let a = version_key("s", "k", RecordHeader { epoch: 2, revision: 300 });
        let b = version_key("s", "k", RecordHeader { epoch: 3, revision: 1 });
        assert!(a < b, "a later epoch sorts after every revision of an earlier one");
        assert!(a.starts_with(&versions_of_key("s", "k")));
        assert!(!version_key("s", "kk", RecordHeader { epoch: 1, revision: 1 }).starts_with(&versions_of_key("s", "k")));
        assert_eq!(split_version_key(&a), Some(("s".into(), "k".into(), RecordHeader { epoch: 2, revision: 300 })));
        assert_eq!(split_version_key(b"h\0s\0k\0short"), None);
    }

    #[test]
    fn user_index_keys_split_back() {
        let k = user_index_key("123", "profiles", "p:1");
        assert!(k.starts_with(&user_index_prefix("123")));
        assert!(!k.starts_with(&user_index_prefix("12")));
        assert_eq!(split_user_index_key(&k), Some(("123".into(), "profiles".into(), "p:1".into())));
    }
}
