//! Reads: one key, many keys in one statement, scans by shape, and the
//! consistent snapshot scan the offline export uses.
//!
//! Must not: write.

use std::time::Instant;

use tokio_postgres::Client;

use super::errors::PgFailure;
use super::sql::{self, RowKey, ScanShape};
use super::{Inner, PgBackend};
use crate::storage::history::{split_user_index_key, split_version_key, user_index_key, version_key};
use crate::storage::{split_storage_key, storage_key, KeySizes, KeyValues, StorageError};

impl Inner {
    pub(super) async fn get(&self, key: RowKey) -> Result<Option<Vec<u8>>, PgFailure> {
        let conn = self.reader().await?;
        match key {
            RowKey::Record { store, key } => {
                let sent = Instant::now();
                let row = conn.client.query_one(&conn.st.get, &[&store, &key]).await?;
                let db_ms: i64 = row.try_get(1)?;
                self.clock.sample(sent, db_ms, Instant::now());
                Ok(row.try_get(0)?)
            }
            RowKey::Meta(name) => {
                let rows = conn.client.query(&self.sql.meta_get, &[&name]).await?;
                Ok(match rows.first() {
                    Some(r) => Some(r.try_get(0)?),
                    None => None,
                })
            }
            RowKey::Version { store, key, id } => {
                let (e, r) = (id.epoch as i64, id.revision as i64);
                let rows = conn.client.query(&self.sql.version_get, &[&store, &key, &e, &r]).await?;
                Ok(match rows.first() {
                    Some(r) => Some(r.try_get(0)?),
                    None => None,
                })
            }
            RowKey::UserKey { user, store, key } => {
                let rows = conn.client.query(&self.sql.user_key_get, &[&user, &store, &key]).await?;
                Ok((!rows.is_empty()).then(Vec::new))
            }
        }
    }

    pub(super) async fn get_many(&self, keys: Vec<(String, String)>) -> Result<Vec<Option<Vec<u8>>>, PgFailure> {
        let conn = self.reader().await?;
        let (stores, names): (Vec<&str>, Vec<&str>) = keys.iter().map(|(s, k)| (s.as_str(), k.as_str())).unzip();
        let rows = conn.client.query(&conn.st.get_many, &[&stores, &names]).await?;
        let mut out = vec![None; keys.len()];
        for row in rows {
            let i: i32 = row.try_get(0)?;
            let slot = usize::try_from(i - 1)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| PgFailure::permanent("get_many answered an index out of range"))?;
            *slot = row.try_get(1)?;
        }
        Ok(out)
    }

    pub(super) async fn scan(
        &self,
        shape: ScanShape,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<KeyValues, PgFailure> {
        let conn = self.reader().await?;
        self.scan_on(&conn.client, &shape, start_after, limit).await
    }

    pub(super) async fn scan_on(
        &self,
        client: &Client,
        shape: &ScanShape,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<KeyValues, PgFailure> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = start_after.as_deref().and_then(split_storage_key);
        let rows = match shape {
            ScanShape::AllUserKeys => {
                let (u, s, k) = start_after.as_deref().and_then(split_user_index_key).unwrap_or_default();
                let rows = client.query(&self.sql.all_user_keys, &[&u, &s, &k, &limit]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let (u, s, k): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                    out.push((user_index_key(&u, &s, &k), Vec::new()));
                }
                return Ok(out);
            }
            ScanShape::KeyVersions { .. } | ScanShape::StoreVersions(_) | ScanShape::AllVersions => {
                return self.scan_versions(client, shape, start_after.as_deref(), limit).await;
            }
            ScanShape::User(user) => {
                let (s, k) = match start_after.as_deref().and_then(split_user_index_key) {
                    Some((_, s, k)) => (s, k),
                    None => (String::new(), String::new()),
                };
                let rows = client.query(&self.sql.user_keys, &[user, &s, &k, &limit]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let (u, s, k): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                    out.push((user_index_key(&u, &s, &k), Vec::new()));
                }
                return Ok(out);
            }
            ScanShape::Meta(prefix) => {
                let after = start_after.clone().unwrap_or_default();
                let end = sql::byte_successor(prefix);
                let rows = client.query(&self.sql.meta_scan, &[prefix, &after, &end, &limit]).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push((r.try_get::<_, Vec<u8>>(0)?, r.try_get::<_, Vec<u8>>(1)?));
                }
                return Ok(out);
            }
            ScanShape::AllStores => {
                let (s, k) = after.unwrap_or_default();
                client.query(&self.sql.scan_all, &[&s, &k, &limit]).await?
            }
            ScanShape::Store(store) | ScanShape::KeyPrefix { store, .. } => {
                // The cursor's key within this store: a cursor in an earlier
                // store starts at the beginning, one in a later store ends it.
                let after_key = match after {
                    None => String::new(),
                    Some((s, k)) if s == *store => k,
                    Some((s, _)) if s.as_bytes() < store.as_bytes() => String::new(),
                    Some(_) => return Ok(Vec::new()),
                };
                match shape {
                    ScanShape::KeyPrefix { prefix, .. } => match sql::successor(prefix) {
                        Some(end) => {
                            client.query(&self.sql.scan_prefix, &[store, prefix, &after_key, &end, &limit]).await?
                        }
                        None => client.query(&self.sql.scan_prefix_open, &[store, prefix, &after_key, &limit]).await?,
                    },
                    _ => client.query(&self.sql.scan_store, &[store, &after_key, &limit]).await?,
                }
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let store: String = r.try_get(0)?;
            let key: String = r.try_get(1)?;
            out.push((storage_key(&store, &key), r.try_get::<_, Vec<u8>>(2)?));
        }
        Ok(out)
    }
}

impl Inner {
    /// Versions in key order (`h\0S\0K\0` + epoch + revision), after the
    /// cursor's version when it is one of the same store.
    async fn scan_versions(
        &self,
        client: &Client,
        shape: &ScanShape,
        start_after: Option<&[u8]>,
        limit: i64,
    ) -> Result<KeyValues, PgFailure> {
        let after = start_after.and_then(split_version_key);
        let rows = match shape {
            ScanShape::KeyVersions { store, key } => {
                let (e, r) = match after {
                    Some((s, k, id)) if s == *store && k == *key => (id.epoch as i64, id.revision as i64),
                    _ => (-1, -1),
                };
                client.query(&self.sql.versions_of_key, &[store, key, &e, &r, &limit]).await?
            }
            ScanShape::StoreVersions(store) => {
                let (k, e, r) = match after {
                    Some((s, k, id)) if s == *store => (k, id.epoch as i64, id.revision as i64),
                    _ => (String::new(), -1, -1),
                };
                client.query(&self.sql.versions_of_store, &[store, &k, &e, &r, &limit]).await?
            }
            ScanShape::AllVersions => {
                let (s, k, e, r) = match after {
                    Some((s, k, id)) => (s, k, id.epoch as i64, id.revision as i64),
                    None => (String::new(), String::new(), -1, -1),
                };
                client.query(&self.sql.all_versions, &[&s, &k, &e, &r, &limit]).await?
            }
            _ => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (s, k): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let (e, r): (i64, i64) = (row.try_get(2)?, row.try_get(3)?);
            let id = crate::storage::RecordHeader { epoch: e as u64, revision: r as u64 };
            out.push((version_key(&s, &k, id), row.try_get::<_, Vec<u8>>(4)?));
        }
        Ok(out)
    }
}

impl Inner {
    /// Keys of one store's records, or of its versions, with the length of
    /// each value; the values stay in the database (`octet_length` reads a
    /// TOASTed value's size from its header). `None`: not a shape this
    /// counts, so the caller reads the values instead.
    pub(super) async fn scan_sizes(
        &self,
        shape: &ScanShape,
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Option<Result<KeySizes, PgFailure>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = match self.reader().await {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let client = &conn.client;
        Some(match shape {
            ScanShape::Store(store) => {
                let after = match start_after.and_then(split_storage_key) {
                    Some((s, k)) if s == *store => k,
                    _ => String::new(),
                };
                async {
                    let rows = client.query(&self.sql.sizes_of_store, &[store, &after, &limit]).await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for r in rows {
                        let key: String = r.try_get(0)?;
                        out.push((storage_key(store, &key), r.try_get::<_, i64>(1)?.max(0) as u64));
                    }
                    Ok::<_, PgFailure>(out)
                }
                .await
            }
            ScanShape::StoreVersions(store) => {
                let (k, e, r) = match start_after.and_then(split_version_key) {
                    Some((s, k, id)) if s == *store => (k, id.epoch as i64, id.revision as i64),
                    _ => (String::new(), -1, -1),
                };
                async {
                    let rows = client.query(&self.sql.version_sizes_of_store, &[store, &k, &e, &r, &limit]).await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for row in rows {
                        let key: String = row.try_get(0)?;
                        let (e, r): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
                        let id = crate::storage::RecordHeader { epoch: e as u64, revision: r as u64 };
                        out.push((version_key(store, &key, id), row.try_get::<_, i64>(3)?.max(0) as u64));
                    }
                    Ok::<_, PgFailure>(out)
                }
                .await
            }
            _ => return None,
        })
    }
}

impl PgBackend {
    /// Calls `f` for every value under `prefix`, in key order, all read in
    /// one `REPEATABLE READ READ ONLY` snapshot on a connection of its own:
    /// an export of a database that servers keep writing is consistent.
    /// Stops at the first error of `f` or of the database.
    pub fn scan_snapshot<E>(
        &self,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), SnapshotError<E>> {
        self.scan_snapshot_of(&[prefix], f)
    }

    /// [`PgBackend::scan_snapshot`] over several prefixes, all in the one
    /// snapshot (a backup: records, meta values, versions, the index).
    pub fn scan_snapshot_of<E>(
        &self,
        prefixes: &[&[u8]],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), SnapshotError<E>> {
        let mut shapes = Vec::new();
        for prefix in prefixes {
            shapes.push(ScanShape::parse(prefix).ok_or_else(|| {
                SnapshotError::Storage(StorageError::permanent(format!("unsupported scan prefix {prefix:?}")))
            })?);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<KeyValues, StorageError>>(2);
        let inner = self.inner.clone();
        self.runtime.spawn(async move {
            let client = match inner.open_client("export").await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.into_storage(&inner.target)));
                    return;
                }
            };
            if let Err(e) = client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await {
                let _ = tx.send(Err(StorageError::transient(format!("cannot start the snapshot: {e}"))));
                return;
            }
            for shape in &shapes {
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let page = inner.scan_on(&client, shape, after.clone(), 1000).await.map_err(|f| f.error);
                    let (done, failed) = match &page {
                        Ok(p) => {
                            after = p.last().map(|(k, _)| k.clone());
                            (p.is_empty(), false)
                        }
                        Err(_) => (true, true),
                    };
                    // A receiver that hung up ends the export.
                    if tx.send(page).is_err() || failed {
                        return;
                    }
                    if done {
                        break;
                    }
                }
            }
            let _ = tx.send(Ok(Vec::new()));
        });
        for page in rx {
            for (k, v) in page.map_err(SnapshotError::Storage)? {
                f(&k, &v).map_err(SnapshotError::Stopped)?;
            }
        }
        Ok(())
    }
}

/// Why [`PgBackend::scan_snapshot`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError<E> {
    /// The database failed (or the prefix is not one PostgreSQL can scan).
    #[error("{0}")]
    Storage(StorageError),
    /// The callback stopped the scan with its own error.
    #[error("the scan was stopped")]
    Stopped(E),
}
