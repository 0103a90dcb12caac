//! The SQL the PostgreSQL backend runs, and the mapping between storage
//! keys and rows.
//!
//! Owns: statement texts (schema-qualified once, at start), the storage-key
//! mapping (`d\0{store}\0{key}` ↦ `records(store, key)`, `m\0{name}` ↦
//! `meta(name)`), and the successor used for prefix scans. Must not: run
//! anything.

use crate::storage::history::{split_user_index_key, split_version_key, VersionId, USER_INDEX_PREFIX, VERSIONS_PREFIX};
use crate::storage::split_storage_key;

/// Database time in milliseconds: every statement that returns it hands
/// the backend's clock a free sample. `statement_timestamp()`, not `now()`
/// (frozen at transaction start) nor `clock_timestamp()` (moves during a
/// statement).
pub(super) const DB_NOW_MS: &str = "(extract(epoch FROM statement_timestamp()) * 1000)::int8";

/// What a storage key is on PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RowKey {
    /// A record of a store.
    Record { store: String, key: String },
    /// A non-record value (`m\0…`).
    Meta(Vec<u8>),
    /// A version of a record (`h\0…`): a row of `versions`.
    Version { store: String, key: String, id: VersionId },
    /// A user-id index entry (`u\0…`): a row of `user_keys`.
    UserKey { user: String, store: String, key: String },
}

impl RowKey {
    pub(super) fn parse(storage_key: &[u8]) -> Option<RowKey> {
        if storage_key.starts_with(b"m\0") {
            return Some(RowKey::Meta(storage_key.to_vec()));
        }
        if storage_key.starts_with(VERSIONS_PREFIX) {
            let (store, key, id) = split_version_key(storage_key)?;
            return Some(RowKey::Version { store, key, id });
        }
        if storage_key.starts_with(USER_INDEX_PREFIX) {
            let (user, store, key) = split_user_index_key(storage_key)?;
            return Some(RowKey::UserKey { user, store, key });
        }
        let (store, key) = split_storage_key(storage_key)?;
        if store.is_empty() || key.is_empty() {
            return None;
        }
        Some(RowKey::Record { store, key })
    }
}

/// What a prefix scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ScanShape {
    /// Every record of every store (`d\0`).
    AllStores,
    /// Every record of one store (`d\0{store}\0`).
    Store(String),
    /// Records of one store whose key starts with a prefix.
    KeyPrefix { store: String, prefix: String },
    /// Non-record values whose name starts with these bytes (`m\0…`).
    Meta(Vec<u8>),
    /// Every version of one key (`h\0{store}\0{key}\0`), oldest first.
    KeyVersions { store: String, key: String },
    /// Every version of every key of a store (`h\0{store}\0`).
    StoreVersions(String),
    /// Every index entry of one user id (`u\0{user}\0`).
    User(String),
    /// Every version of every store (`h\0`), for a snapshot.
    AllVersions,
    /// Every user-index entry (`u\0`), for a snapshot.
    AllUserKeys,
}

impl ScanShape {
    pub(super) fn parse(prefix: &[u8]) -> Option<ScanShape> {
        if prefix.starts_with(b"m\0") {
            return Some(ScanShape::Meta(prefix.to_vec()));
        }
        if prefix == VERSIONS_PREFIX {
            return Some(ScanShape::AllVersions);
        }
        if prefix == USER_INDEX_PREFIX {
            return Some(ScanShape::AllUserKeys);
        }
        if let Some(rest) = prefix.strip_prefix(VERSIONS_PREFIX) {
            let rest = std::str::from_utf8(rest).ok()?.strip_suffix('\0')?;
            return Some(match rest.split_once('\0') {
                None => ScanShape::StoreVersions(rest.to_owned()),
                Some((store, key)) if !key.contains('\0') => {
                    ScanShape::KeyVersions { store: store.to_owned(), key: key.to_owned() }
                }
                Some(_) => return None,
            });
        }
        if let Some(rest) = prefix.strip_prefix(USER_INDEX_PREFIX) {
            let user = std::str::from_utf8(rest).ok()?.strip_suffix('\0')?;
            return (!user.contains('\0')).then(|| ScanShape::User(user.to_owned()));
        }
        let rest = prefix.strip_prefix(b"d\0")?;
        if rest.is_empty() {
            return Some(ScanShape::AllStores);
        }
        let nul = rest.iter().position(|b| *b == 0)?;
        let store = std::str::from_utf8(&rest[..nul]).ok()?.to_owned();
        let key_prefix = std::str::from_utf8(&rest[nul + 1..]).ok()?;
        if key_prefix.contains('\0') {
            return None;
        }
        Some(if key_prefix.is_empty() {
            ScanShape::Store(store)
        } else {
            ScanShape::KeyPrefix { store, prefix: key_prefix.to_owned() }
        })
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (code-point order, which is byte order for UTF-8 under `COLLATE "C"`).
/// `None` when there is none (the prefix is all U+10FFFF).
pub(super) fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The smallest byte string greater than every one starting with `prefix`.
pub(super) fn byte_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// A PostgreSQL array literal of strings (`{"a","b \"c\""}`), every element
/// quoted: arrays of arrays must be rectangular, so each op's user ids
/// travel as one literal and are cast with `::text[]` in the statement.
pub(super) fn text_array_literal(items: &[String]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Every statement, qualified with the schema.
pub(super) struct Statements {
    pub get: String,
    pub get_many: String,
    pub write_lean: String,
    pub write_one: String,
    pub write_general: String,
    pub reread: String,
    pub scan_all: String,
    pub scan_store: String,
    pub scan_prefix: String,
    pub scan_prefix_open: String,
    pub meta_get: String,
    pub meta_scan: String,
    pub meta_upsert: String,
    pub meta_insert: String,
    pub meta_update: String,
    pub meta_delete_any: String,
    pub meta_delete_header: String,
    pub now: String,
    pub notify: String,
    pub channel: String,
    pub outbox_write: String,
    pub outbox_read: String,
    pub outbox_prune: String,
    pub version_get: String,
    pub version_put: String,
    pub version_delete: String,
    pub versions_of_key: String,
    pub versions_of_store: String,
    pub sizes_of_store: String,
    pub version_sizes_of_store: String,
    pub user_key_get: String,
    pub user_key_put: String,
    pub user_key_delete: String,
    pub user_keys: String,
    pub all_versions: String,
    pub all_user_keys: String,
}

/// The unnest that turns one batch's parameter arrays into rows. Shared by
/// both write shapes: `$1` idx, `$2` store, `$3` key, `$4` kind (0 Any,
/// 1 Absent, 2 Header, 3 Acquire), `$5`/`$6` expected epoch and revision,
/// `$7` value (NULL deletes), `$8`/`$9` the new value's epoch and revision
/// (NULL: not a record), `$10`/`$11` its lease owner and expiry, `$12` its
/// user ids as an array literal; `$13` the version kept with it, `$14`/`$15`
/// its epoch and revision (NULL: no version), `$16` when it was saved,
/// `$17` its user ids as an array literal. A version that is the written
/// value itself (a save's, the common case) is sent once, as `$7`, with
/// `$13` NULL: the bytes would otherwise cross the wire and fill the
/// statement's rows twice.
const OPS: &str = "ops AS (
  SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::int2[], $5::int8[], $6::int8[], $7::bytea[],
                       $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::text[],
                       $13::bytea[], $14::int8[], $15::int8[], $16::int8[], $17::text[])
         AS o(idx, store, key, kind, exp_epoch, exp_rev, value, new_epoch, new_rev, lease_owner, lease_exp, uids,
              ver, ver_epoch, ver_rev, ver_ms, ver_uids)
)";

/// The versions of the ops in `applied` (a CTE of their `idx`) and their
/// user-id index entries, written by the same statement as the records.
fn keep_versions(s: &str, applied: &str) -> String {
    format!(
        "ver AS (
           INSERT INTO {s}.versions (store, key, epoch, revision, saved_ms, user_ids, value)
           SELECT o.store, o.key, o.ver_epoch, o.ver_rev, o.ver_ms, o.ver_uids::text[], COALESCE(o.ver, o.value)
             FROM ops o JOIN {applied} a ON a.idx = o.idx WHERE o.ver_rev IS NOT NULL
           ON CONFLICT DO NOTHING
           RETURNING store, key, user_ids),
         uk AS (
           INSERT INTO {s}.user_keys (user_id, store, key)
           SELECT DISTINCT u, ver.store, ver.key FROM ver, unnest(ver.user_ids) AS u
           ON CONFLICT DO NOTHING)"
    )
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let now = DB_NOW_MS;
        // The lease guard of Precondition::Acquire, decided by database time.
        let guard = format!(
            "(o.kind = 2 OR r.lease_owner IS NULL OR r.lease_owner = o.lease_owner OR r.lease_expires_ms <= {now})"
        );
        let set = "value = o.value, epoch = o.new_epoch, revision = o.new_rev, lease_owner = o.lease_owner, \
                   lease_expires_ms = o.lease_exp, user_ids = o.uids::text[], updated_at = now()";
        let lean_versions = keep_versions(&s, "upd");
        let general_versions = keep_versions(&s, "applied");
        Statements {
            get: format!("SELECT (SELECT value FROM {s}.records WHERE store = $1 AND key = $2), {now}"),
            get_many: format!(
                "SELECT k.i::int4, r.value FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(store, key, i)
                   LEFT JOIN {s}.records r ON r.store = k.store AND r.key = k.key ORDER BY k.i"
            ),
            // Every op Header/Acquire with a value: saves, renewals,
            // releases and acquisitions of existing keys.
            write_lean: format!(
                "WITH {OPS},
                 upd AS (
                   UPDATE {s}.records r SET {set} FROM ops o
                    WHERE r.store = o.store AND r.key = o.key
                      AND r.epoch = o.exp_epoch AND r.revision = o.exp_rev
                      AND {guard}
                   RETURNING o.idx),
                 {lean_versions}
                 SELECT (SELECT array_agg(idx) FROM upd), {now}"
            ),
            // The lean shape for a batch of one: a plain single-row UPDATE
            // (no arrays to build, unnest or join).
            write_one: format!(
                "UPDATE {s}.records r SET value = $3, epoch = $4, revision = $5, lease_owner = $6,
                        lease_expires_ms = $7, user_ids = $8::text::text[], updated_at = now()
                  WHERE r.store = $1 AND r.key = $2 AND r.epoch = $9 AND r.revision = $10
                    AND ($11::int2 = 2 OR r.lease_owner IS NULL OR r.lease_owner = $6 OR r.lease_expires_ms <= {now})
                 RETURNING {now}"
            ),
            write_general: format!(
                "WITH {OPS},
                 upd AS (
                   UPDATE {s}.records r SET {set} FROM ops o
                    WHERE o.kind IN (2, 3) AND o.value IS NOT NULL
                      AND r.store = o.store AND r.key = o.key
                      AND r.epoch = o.exp_epoch AND r.revision = o.exp_rev
                      AND {guard}
                   RETURNING o.idx),
                 del AS (
                   DELETE FROM {s}.records r USING ops o
                    WHERE o.kind = 2 AND o.value IS NULL
                      AND r.store = o.store AND r.key = o.key AND r.epoch = o.exp_epoch AND r.revision = o.exp_rev
                   RETURNING o.idx),
                 ins AS (
                   INSERT INTO {s}.records (store, key, value, epoch, revision, lease_owner, lease_expires_ms, user_ids)
                   SELECT o.store, o.key, o.value, o.new_epoch, o.new_rev, o.lease_owner, o.lease_exp, o.uids::text[]
                     FROM ops o WHERE o.kind = 1 AND o.value IS NOT NULL
                   ON CONFLICT (store, key) DO NOTHING
                   RETURNING store, key),
                 anyw AS (
                   INSERT INTO {s}.records (store, key, value, epoch, revision, lease_owner, lease_expires_ms, user_ids)
                   SELECT o.store, o.key, o.value, o.new_epoch, o.new_rev, o.lease_owner, o.lease_exp, o.uids::text[]
                     FROM ops o WHERE o.kind = 0 AND o.value IS NOT NULL
                   ON CONFLICT (store, key) DO UPDATE
                      SET value = EXCLUDED.value, epoch = EXCLUDED.epoch, revision = EXCLUDED.revision,
                          lease_owner = EXCLUDED.lease_owner, lease_expires_ms = EXCLUDED.lease_expires_ms,
                          user_ids = EXCLUDED.user_ids, updated_at = now()
                   RETURNING store, key),
                 anyd AS (
                   DELETE FROM {s}.records r USING ops o
                    WHERE o.kind = 0 AND o.value IS NULL AND r.store = o.store AND r.key = o.key
                   RETURNING o.idx),
                 applied AS (
                   SELECT idx FROM upd
                   UNION ALL SELECT idx FROM del
                   UNION ALL SELECT o.idx FROM ins JOIN ops o ON o.kind = 1 AND o.store = ins.store AND o.key = ins.key
                   UNION ALL SELECT o.idx FROM ops o WHERE o.kind = 0
                   UNION ALL SELECT o.idx FROM ops o
                    WHERE o.kind = 1 AND o.value IS NULL
                      AND NOT EXISTS (SELECT 1 FROM {s}.records c WHERE c.store = o.store AND c.key = o.key)),
                 {general_versions}
                 SELECT (SELECT array_agg(idx) FROM applied), {now}"
            ),
            // A fresh statement, so a fresh snapshot: see the module docs
            // of `mod.rs` on why a conflict's header is never taken from
            // the write statement itself.
            reread: format!(
                "SELECT k.i::int4, r.epoch, r.revision, (r.key IS NOT NULL)
                   FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(store, key, i)
                   LEFT JOIN {s}.records r ON r.store = k.store AND r.key = k.key ORDER BY k.i"
            ),
            scan_all: format!(
                "SELECT store, key, value FROM {s}.records WHERE (store, key) > ($1, $2) ORDER BY store, key LIMIT $3"
            ),
            scan_store: format!(
                "SELECT store, key, value FROM {s}.records WHERE store = $1 AND key > $2 ORDER BY key LIMIT $3"
            ),
            scan_prefix: format!(
                "SELECT store, key, value FROM {s}.records
                  WHERE store = $1 AND key >= $2 AND key > $3 AND key < $4 ORDER BY key LIMIT $5"
            ),
            scan_prefix_open: format!(
                "SELECT store, key, value FROM {s}.records
                  WHERE store = $1 AND key >= $2 AND key > $3 ORDER BY key LIMIT $4"
            ),
            meta_get: format!("SELECT value FROM {s}.meta WHERE name = $1"),
            meta_scan: format!(
                "SELECT name, value FROM {s}.meta WHERE name >= $1 AND name > $2 AND ($3::bytea IS NULL OR name < $3)
                  ORDER BY name LIMIT $4"
            ),
            meta_upsert: format!(
                "INSERT INTO {s}.meta (name, value, epoch, revision) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, epoch = EXCLUDED.epoch,
                                                  revision = EXCLUDED.revision"
            ),
            meta_insert: format!(
                "INSERT INTO {s}.meta (name, value, epoch, revision) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
            ),
            meta_update: format!(
                "UPDATE {s}.meta SET value = $2, epoch = $3, revision = $4 WHERE name = $1 AND epoch = $5 AND revision = $6"
            ),
            meta_delete_any: format!("DELETE FROM {s}.meta WHERE name = $1"),
            meta_delete_header: format!("DELETE FROM {s}.meta WHERE name = $1 AND epoch = $2 AND revision = $3"),
            now: format!("SELECT {now}"),
            notify: "SELECT pg_notify($1, $2)".to_owned(),
            channel: format!("{schema}_notices"),
            outbox_write: format!("INSERT INTO {s}.notices (payload) VALUES ($1)"),
            outbox_read: format!(
                "SELECT id, (extract(epoch FROM created_at) * 1000)::int8, payload FROM {s}.notices
                  WHERE created_at >= to_timestamp($1::int8 / 1000.0) ORDER BY id"
            ),
            outbox_prune: format!("DELETE FROM {s}.notices WHERE created_at < now() - interval '{}'", "10 minutes"),
            version_get: format!(
                "SELECT value FROM {s}.versions WHERE store = $1 AND key = $2 AND epoch = $3 AND revision = $4"
            ),
            version_put: format!(
                "INSERT INTO {s}.versions (store, key, epoch, revision, saved_ms, user_ids, value)
                 VALUES ($1, $2, $3, $4, $5, $6::text::text[], $7)
                 ON CONFLICT (store, key, epoch, revision) DO UPDATE
                   SET saved_ms = EXCLUDED.saved_ms, user_ids = EXCLUDED.user_ids, value = EXCLUDED.value"
            ),
            version_delete: format!(
                "DELETE FROM {s}.versions v USING unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS d(store, key, epoch, revision)
                  WHERE v.store = d.store AND v.key = d.key AND v.epoch = d.epoch AND v.revision = d.revision"
            ),
            versions_of_key: format!(
                "SELECT store, key, epoch, revision, value FROM {s}.versions
                  WHERE store = $1 AND key = $2 AND (epoch, revision) > ($3, $4)
                  ORDER BY epoch, revision LIMIT $5"
            ),
            sizes_of_store: format!(
                "SELECT key, octet_length(value)::int8 FROM {s}.records WHERE store = $1 AND key > $2 ORDER BY key LIMIT $3"
            ),
            version_sizes_of_store: format!(
                "SELECT key, epoch, revision, octet_length(value)::int8 FROM {s}.versions
                  WHERE store = $1 AND (key, epoch, revision) > ($2, $3, $4)
                  ORDER BY key, epoch, revision LIMIT $5"
            ),
            versions_of_store: format!(
                "SELECT store, key, epoch, revision, value FROM {s}.versions
                  WHERE store = $1 AND (key, epoch, revision) > ($2, $3, $4)
                  ORDER BY key, epoch, revision LIMIT $5"
            ),
            all_versions: format!(
                "SELECT store, key, epoch, revision, value FROM {s}.versions
                  WHERE (store, key, epoch, revision) > ($1, $2, $3, $4)
                  ORDER BY store, key, epoch, revision LIMIT $5"
            ),
            all_user_keys: format!(
                "SELECT user_id, store, key FROM {s}.user_keys WHERE (user_id, store, key) > ($1, $2, $3)
                  ORDER BY user_id, store, key LIMIT $4"
            ),
            user_key_get: format!("SELECT 1 FROM {s}.user_keys WHERE user_id = $1 AND store = $2 AND key = $3"),
            user_key_put: format!("INSERT INTO {s}.user_keys (user_id, store, key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"),
            user_key_delete: format!("DELETE FROM {s}.user_keys WHERE user_id = $1 AND store = $2 AND key = $3"),
            // The index, and the records that carry the id now (a store
            // without versions writes no index rows on PostgreSQL: its
            // records' user ids are a column with an index of its own).
            user_keys: format!(
                "SELECT $1::text, store, key FROM (
                   SELECT store, key FROM {s}.user_keys WHERE user_id = $1
                   UNION SELECT store, key FROM {s}.records WHERE user_ids @> ARRAY[$1::text]) u
                  WHERE (store, key) > ($2::text COLLATE \"C\", $3::text COLLATE \"C\")
                  ORDER BY store, key LIMIT $4"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{storage_key, store_prefix};

    #[test]
    fn storage_keys_map_to_rows_and_back() {
        assert_eq!(
            RowKey::parse(&storage_key("profiles", "42")),
            Some(RowKey::Record { store: "profiles".into(), key: "42".into() })
        );
        assert_eq!(RowKey::parse(b"m\0owner_id"), Some(RowKey::Meta(b"m\0owner_id".to_vec())));
        for unsupported in [&b"x\0a\0b"[..], b"d\0", b"d\0s\0", b"d\0\xff\0k", b""] {
            assert_eq!(RowKey::parse(unsupported), None, "{unsupported:?}");
        }
    }

    #[test]
    fn scan_prefixes_decode_into_range_shapes() {
        assert_eq!(ScanShape::parse(b"d\0"), Some(ScanShape::AllStores));
        assert_eq!(ScanShape::parse(&store_prefix("s")), Some(ScanShape::Store("s".into())));
        assert_eq!(
            ScanShape::parse(&storage_key("s", "ab")),
            Some(ScanShape::KeyPrefix { store: "s".into(), prefix: "ab".into() })
        );
        assert_eq!(ScanShape::parse(b"d\0partial-store-name"), None);
        assert_eq!(ScanShape::parse(b"zz"), None);
    }

    #[test]
    fn successors_bound_every_string_with_the_prefix() {
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(successor("\u{10FFFF}"), None);
        for p in ["a", "é", "z\u{10FFFF}x", "日本"] {
            let s = successor(p).unwrap();
            for probe in [p.to_owned(), format!("{p}\u{10FFFF}"), format!("{p}zzz")] {
                assert!(probe.as_bytes() < s.as_bytes(), "{probe:?} < {s:?}");
            }
            assert!(p.as_bytes() < s.as_bytes());
        }
        assert_eq!(byte_successor(b"m\0a"), Some(b"m\0b".to_vec()));
        assert_eq!(byte_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(byte_successor(b"\xff"), None);
    }

    #[test]
    fn user_ids_travel_as_quoted_array_literals() {
        assert_eq!(text_array_literal(&[]), "{}");
        assert_eq!(text_array_literal(&["42".into(), "a b".into(), "q\"\\,{}".into()]), r#"{"42","a b","q\"\\,{}"}"#);
    }
}
