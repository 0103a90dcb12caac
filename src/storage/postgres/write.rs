//! Writes: a batch as rounds of statements in one transaction (no row
//! twice in a statement, rows in key order), the single-row fast path,
//! meta values, conflicts re-read in a fresh statement, and the
//! all-or-nothing write of several keys.
//!
//! Must not: hold state between calls; the connections are `conn`'s.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::warn;

use super::clock::DbClock;
use super::errors::PgFailure;
use super::sql::{self, RowKey};
use super::{Conn, Inner};
use crate::storage::history::{USER_INDEX_PREFIX, VERSIONS_PREFIX};
use crate::storage::{
    AllOrNothing, Precondition, RecordHeader, RecordIndex, RecordSummary, StorageError, StorageKey, WriteOp,
    WriteOutcome,
};

/// What a write's key names on PostgreSQL: a record (its store and key,
/// as the writer typed them), a meta value, or a row of the history
/// (a version or a user-index entry, written unconditionally).
enum WriteTarget<'a> {
    Record(&'a Arc<str>, &'a Arc<str>),
    Meta(&'a [u8]),
    History(RowKey),
}

impl<'a> WriteTarget<'a> {
    fn of(key: &'a StorageKey) -> Option<Self> {
        if key.starts_with(b"m\0") {
            return Some(WriteTarget::Meta(key.as_bytes()));
        }
        if key.starts_with(VERSIONS_PREFIX) || key.starts_with(USER_INDEX_PREFIX) {
            return RowKey::parse(key).map(WriteTarget::History);
        }
        let (store, key) = key.record_parts()?;
        (!store.is_empty() && !key.is_empty()).then_some(WriteTarget::Record(store, key))
    }
}

/// One record op of a batch, as the statement's parameter arrays take it.
struct RowOp {
    idx: i32,
    store: Arc<str>,
    key: Arc<str>,
    kind: i16,
    exp: Option<RecordHeader>,
    value: Option<Bytes>,
    index: Option<RecordIndex>,
    new_header: Option<RecordHeader>,
    /// The version kept with the write, and what its row says of it.
    version: Option<(Bytes, RecordSummary)>,
}

fn to_i64(v: u64, what: &str) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("{what} {v} does not fit PostgreSQL's bigint"))
}

impl RowOp {
    fn from_op(idx: usize, store: &Arc<str>, key: &Arc<str>, op: &WriteOp) -> Result<RowOp, String> {
        let (kind, exp) = match op.precondition {
            Precondition::Any => (0, None),
            Precondition::Absent => (1, None),
            Precondition::Header(h) => (2, Some(h)),
            Precondition::Acquire { expected, .. } => (3, Some(expected)),
        };
        if let Some(h) = exp {
            to_i64(h.epoch, "epoch")?;
            to_i64(h.revision, "revision")?;
        }
        // The writer's index when it sent one (the key actor does), else
        // read from the bytes: one decode of the record either way, never two.
        let index = op.value_index().map(std::borrow::Cow::into_owned);
        debug_assert!(
            op.index.is_none() || op.value.as_deref().and_then(RecordIndex::peek) == op.index,
            "a write's index disagrees with its value"
        );
        let new_header = index.as_ref().map(|i| i.header).or_else(|| op.value.as_deref().and_then(RecordHeader::peek));
        if let Some(h) = new_header {
            to_i64(h.epoch, "epoch")?;
            to_i64(h.revision, "revision")?;
        }
        let idx = i32::try_from(idx).map_err(|_| "batch too large".to_owned())?;
        let version = match &op.version {
            Some(v) => {
                let summary = RecordSummary::peek(v).ok_or_else(|| "a write's version does not decode".to_owned())?;
                to_i64(summary.header.epoch, "epoch")?;
                to_i64(summary.header.revision, "revision")?;
                Some((v.clone(), summary))
            }
            None => None,
        };
        Ok(RowOp {
            idx,
            store: store.clone(),
            key: key.clone(),
            kind,
            exp,
            value: op.value.clone(),
            index,
            new_header,
            version,
        })
    }
}

/// One Header/Acquire op with a value as a single-row UPDATE.
async fn run_one(conn: &Conn, op: &RowOp, clock: &DbClock) -> Result<bool, PgFailure> {
    let exp = op.exp.ok_or_else(|| PgFailure::permanent("a single-row write needs an expected header"))?;
    let owner = op.index.as_ref().and_then(|i| i.lease_owner.as_deref());
    let lease_exp =
        op.index.as_ref().filter(|i| i.lease_owner.is_some()).map(|i| i.lease_expires_ms.min(i64::MAX as u64) as i64);
    let uids = sql::text_array_literal(op.index.as_ref().map_or(&[][..], |i| &i.user_ids));
    let sent = Instant::now();
    let rows = conn
        .client
        .query(
            &conn.st.write_one,
            &[
                &&*op.store,
                &&*op.key,
                &op.value.as_deref(),
                &op.new_header.map(|h| h.epoch as i64),
                &op.new_header.map(|h| h.revision as i64),
                &owner,
                &lease_exp,
                &uids,
                &(exp.epoch as i64),
                &(exp.revision as i64),
                &op.kind,
            ],
        )
        .await?;
    match rows.first() {
        Some(row) => {
            clock.sample(sent, row.try_get(0)?, Instant::now());
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Runs one round of record ops (no key twice) and answers, per op, whether
/// it applied. `lean` when every op is Header/Acquire with a value.
async fn run_round(conn: &Conn, ops: &[RowOp], clock: &DbClock, fast_path: bool) -> Result<Vec<bool>, PgFailure> {
    let lean = ops.iter().all(|o| o.kind >= 2 && o.value.is_some());
    // The single-row statement keeps no version.
    if lean && fast_path && ops.len() == 1 && ops[0].version.is_none() {
        return Ok(vec![run_one(conn, &ops[0], clock).await?]);
    }
    let idx: Vec<i32> = ops.iter().map(|o| o.idx).collect();
    let stores: Vec<&str> = ops.iter().map(|o| &*o.store).collect();
    let keys: Vec<&str> = ops.iter().map(|o| &*o.key).collect();
    let kinds: Vec<i16> = ops.iter().map(|o| o.kind).collect();
    let exp_epoch: Vec<Option<i64>> = ops.iter().map(|o| o.exp.map(|h| h.epoch as i64)).collect();
    let exp_rev: Vec<Option<i64>> = ops.iter().map(|o| o.exp.map(|h| h.revision as i64)).collect();
    let values: Vec<Option<&[u8]>> = ops.iter().map(|o| o.value.as_deref()).collect();
    let new_epoch: Vec<Option<i64>> = ops.iter().map(|o| o.new_header.map(|h| h.epoch as i64)).collect();
    let new_rev: Vec<Option<i64>> = ops.iter().map(|o| o.new_header.map(|h| h.revision as i64)).collect();
    let owners: Vec<Option<&str>> =
        ops.iter().map(|o| o.index.as_ref().and_then(|i| i.lease_owner.as_deref())).collect();
    let lease_exp: Vec<Option<i64>> = ops
        .iter()
        .map(|o| {
            o.index.as_ref().filter(|i| i.lease_owner.is_some()).map(|i| i.lease_expires_ms.min(i64::MAX as u64) as i64)
        })
        .collect();
    let uids: Vec<String> =
        ops.iter().map(|o| sql::text_array_literal(o.index.as_ref().map_or(&[][..], |i| &i.user_ids))).collect();
    let ver: Vec<Option<&[u8]>> = ops
        .iter()
        .map(|o| o.version.as_ref().map(|(v, _)| &v[..]).filter(|v| Some(*v) != o.value.as_deref()))
        .collect();
    let ver_epoch: Vec<Option<i64>> =
        ops.iter().map(|o| o.version.as_ref().map(|(_, s)| s.header.epoch as i64)).collect();
    let ver_rev: Vec<Option<i64>> =
        ops.iter().map(|o| o.version.as_ref().map(|(_, s)| s.header.revision as i64)).collect();
    let ver_ms: Vec<Option<i64>> =
        ops.iter().map(|o| o.version.as_ref().map(|(_, s)| s.updated_at_ms.min(i64::MAX as u64) as i64)).collect();
    let ver_uids: Vec<String> =
        ops.iter().map(|o| sql::text_array_literal(o.version.as_ref().map_or(&[][..], |(_, s)| &s.user_ids))).collect();
    let statement = if lean { &conn.st.write_lean } else { &conn.st.write_general };
    let sent = Instant::now();
    let row = conn
        .client
        .query_one(
            statement,
            &[
                &idx, &stores, &keys, &kinds, &exp_epoch, &exp_rev, &values, &new_epoch, &new_rev, &owners, &lease_exp,
                &uids, &ver, &ver_epoch, &ver_rev, &ver_ms, &ver_uids,
            ],
        )
        .await?;
    let applied: Option<Vec<i32>> = row.try_get(0)?;
    let db_ms: i64 = row.try_get(1)?;
    clock.sample(sent, db_ms, Instant::now());
    let applied: std::collections::HashSet<i32> = applied.unwrap_or_default().into_iter().collect();
    Ok(ops.iter().map(|o| applied.contains(&o.idx)).collect())
}

/// The current headers of ops that did not apply, in a fresh snapshot.
async fn reread(conn: &Conn, ops: &[&RowOp]) -> Result<Vec<Option<RecordHeader>>, PgFailure> {
    let stores: Vec<&str> = ops.iter().map(|o| &*o.store).collect();
    let keys: Vec<&str> = ops.iter().map(|o| &*o.key).collect();
    let rows = conn.client.query(&conn.st.reread, &[&stores, &keys]).await?;
    let mut out = vec![None; ops.len()];
    for row in rows {
        let i: i32 = row.try_get(0)?;
        let epoch: Option<i64> = row.try_get(1)?;
        let revision: Option<i64> = row.try_get(2)?;
        if let (Some(slot), Some(e), Some(r)) =
            (usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)), epoch, revision)
        {
            *slot = Some(RecordHeader { epoch: e as u64, revision: r as u64 });
        }
    }
    Ok(out)
}

/// A non-record op (`m\0…`), alone.
async fn run_meta(inner: &Inner, conn: &Conn, name: &[u8], op: &WriteOp) -> Result<WriteOutcome, PgFailure> {
    let c = &conn.client;
    let header = op.value.as_deref().and_then(RecordHeader::peek);
    let (e, r) = (header.map(|h| h.epoch as i64), header.map(|h| h.revision as i64));
    let applied = match (&op.precondition, &op.value) {
        (Precondition::Any, Some(v)) => c.execute(&inner.sql.meta_upsert, &[&name, &&v[..], &e, &r]).await? == 1,
        (Precondition::Any, None) => {
            c.execute(&inner.sql.meta_delete_any, &[&name]).await?;
            true
        }
        (Precondition::Absent, Some(v)) => c.execute(&inner.sql.meta_insert, &[&name, &&v[..], &e, &r]).await? == 1,
        (Precondition::Absent, None) => c.query(&inner.sql.meta_get, &[&name]).await?.is_empty(),
        (Precondition::Header(h) | Precondition::Acquire { expected: h, .. }, value) => {
            let (he, hr) = (h.epoch as i64, h.revision as i64);
            match value {
                Some(v) => c.execute(&inner.sql.meta_update, &[&name, &&v[..], &e, &r, &he, &hr]).await? == 1,
                None => c.execute(&inner.sql.meta_delete_header, &[&name, &he, &hr]).await? == 1,
            }
        }
    };
    if applied {
        return Ok(WriteOutcome::Applied);
    }
    let current = c.query(&inner.sql.meta_get, &[&name]).await?;
    let current = match current.first() {
        Some(row) => RecordHeader::peek(&row.try_get::<_, Vec<u8>>(0)?),
        None => None,
    };
    Ok(WriteOutcome::Conflict { current })
}

/// History rows (`Precondition::Any`), in the batch's transaction: the
/// deletes of versions (pruning) as one statement, the rest one by one.
async fn run_history(inner: &Inner, conn: &Conn, rows: &[(usize, RowKey)], ops: &[WriteOp]) -> Result<(), PgFailure> {
    let c = &conn.client;
    let (mut stores, mut keys, mut epochs, mut revisions) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, row) in rows {
        let op = &ops[*i];
        match (row, &op.value) {
            (RowKey::Version { store, key, id }, None) => {
                stores.push(store.as_str());
                keys.push(key.as_str());
                epochs.push(id.epoch as i64);
                revisions.push(id.revision as i64);
            }
            (RowKey::Version { store, key, id }, Some(v)) => {
                let s = RecordSummary::peek(v).ok_or_else(|| PgFailure::permanent("a version does not decode"))?;
                let uids = sql::text_array_literal(&s.user_ids);
                let ms = s.updated_at_ms.min(i64::MAX as u64) as i64;
                c.execute(
                    &inner.sql.version_put,
                    &[store, key, &(id.epoch as i64), &(id.revision as i64), &ms, &uids, &&v[..]],
                )
                .await?;
            }
            (RowKey::UserKey { user, store, key }, Some(_)) => {
                c.execute(&inner.sql.user_key_put, &[user, store, key]).await?;
            }
            (RowKey::UserKey { user, store, key }, None) => {
                c.execute(&inner.sql.user_key_delete, &[user, store, key]).await?;
            }
            _ => return Err(PgFailure::permanent("not a history row")),
        }
    }
    if !stores.is_empty() {
        c.execute(&inner.sql.version_delete, &[&stores, &keys, &epochs, &revisions]).await?;
    }
    Ok(())
}

/// Rows per write statement. A larger queue batch becomes several
/// statements in one transaction (still one commit, one WAL flush). Two
/// alternating pairs of `bench --only pg-burst`: 10,000 pre-encoded saves
/// through the backend took 0.181/0.185 s in statements of 1,024 rows and
/// 0.190/0.220 s in one statement of 4,096; the autosave burst 1.77/1.63×
/// the hand-written baseline against 1.92/1.97×.
const ROWS_PER_STATEMENT: usize = 1024;

/// The whole of `write_batch` on the writer connection.
pub(super) async fn write_batch(inner: &Inner, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome, StorageError>> {
    let mut results: Vec<Option<Result<WriteOutcome, StorageError>>> = vec![None; ops.len()];
    // Rounds: the n-th op on a key goes to round n, so no statement touches
    // a row twice (PostgreSQL leaves that unspecified).
    let mut rounds: Vec<Vec<RowOp>> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut metas = Vec::new();
    let mut history = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match WriteTarget::of(&op.key) {
            Some(WriteTarget::History(row)) if op.precondition == Precondition::Any => history.push((i, row)),
            Some(WriteTarget::History(_)) => {
                results[i] = Some(Err(StorageError::permanent("history rows are written unconditionally only")))
            }
            None => {
                results[i] = Some(Err(StorageError::permanent(format!(
                    "storage key {:?} is not a record or meta key; PostgreSQL stores only those",
                    String::from_utf8_lossy(&op.key)
                ))))
            }
            Some(WriteTarget::Meta(name)) => metas.push((i, name)),
            Some(WriteTarget::Record(store, key)) => {
                let round = seen.entry((store, key)).or_insert(0);
                match RowOp::from_op(i, store, key, op) {
                    Ok(row) => {
                        if rounds.len() <= *round {
                            rounds.push(Vec::new());
                        }
                        rounds[*round].push(row);
                        *round += 1;
                    }
                    Err(m) => results[i] = Some(Err(StorageError::permanent(m))),
                }
            }
        }
    }
    // Rows are locked in key order: two processes' batches then wait for
    // each other instead of deadlocking (most of the time; the rest is
    // 40P01, retried).
    for round in &mut rounds {
        round.sort_by(|a, b| (a.store.as_bytes(), a.key.as_bytes()).cmp(&(b.store.as_bytes(), b.key.as_bytes())));
    }
    let mut slot = match inner.writer().await {
        Ok(slot) => slot,
        Err(f) => return ops.iter().map(|_| Err(f.error.clone())).collect(),
    };
    let outcome = async {
        let conn = slot.conn(inner).await?;
        let statements: usize = rounds.iter().map(|r| r.len().div_ceil(ROWS_PER_STATEMENT)).sum();
        let in_transaction = statements + usize::from(!metas.is_empty()) + usize::from(!history.is_empty()) > 1;
        if in_transaction {
            conn.client.batch_execute("BEGIN").await?;
        }
        let mut decided: Vec<(usize, WriteOutcome)> = Vec::new();
        let run = async {
            for (i, name) in &metas {
                decided.push((*i, run_meta(inner, conn, name, &ops[*i]).await?));
            }
            if !history.is_empty() {
                run_history(inner, conn, &history, &ops).await?;
                decided.extend(history.iter().map(|(i, _)| (*i, WriteOutcome::Applied)));
            }
            for round in rounds.iter().flat_map(|r| r.chunks(ROWS_PER_STATEMENT)) {
                let applied = run_round(conn, round, &inner.clock, inner.cfg.single_op_fast_path).await?;
                let lost: Vec<&RowOp> = round.iter().zip(&applied).filter(|(_, a)| !**a).map(|(o, _)| o).collect();
                let current = if lost.is_empty() { Vec::new() } else { reread(conn, &lost).await? };
                for (op, current) in lost.iter().zip(current) {
                    // The write's own new header already stored: a retry
                    // meeting its earlier attempt, whose COMMIT answer was
                    // lost. The queue may count it applied, so the flush
                    // after this batch must be a barrier, whatever another
                    // writer's flush did since the loss.
                    if current.is_some() && current == op.new_header {
                        inner.needs_barrier.store(true, Ordering::SeqCst);
                    }
                    decided.push((op.idx as usize, WriteOutcome::Conflict { current }));
                }
                for (op, _) in round.iter().zip(&applied).filter(|(_, a)| **a) {
                    decided.push((op.idx as usize, WriteOutcome::Applied));
                }
            }
            Ok::<(), PgFailure>(())
        }
        .await;
        match run {
            Ok(()) => {
                if in_transaction {
                    conn.client.batch_execute("COMMIT").await?;
                }
                Ok(decided)
            }
            Err(f) => {
                if in_transaction && !conn.client.is_closed() {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                }
                Err(f)
            }
        }
    }
    .await;
    match outcome {
        Ok(decided) => {
            slot.settle();
            for (i, o) in decided {
                results[i] = Some(Ok(o));
            }
        }
        Err(f) => {
            if f.reconnect {
                // The COMMIT may or may not have happened; the connection
                // goes with the unsettled slot.
                inner.needs_barrier.store(true, Ordering::SeqCst);
            } else {
                // Rolled back (or never begun): the connection is clean.
                slot.settle();
            }
            warn!(target: "datastorer::postgres", error = %f.error, ops = ops.len(), "batch failed");
            for r in results.iter_mut().filter(|r| r.is_none()) {
                *r = Some(Err(f.error.clone()));
            }
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(StorageError::permanent("op produced no result")))).collect()
}

/// Every op of `ops` in one transaction, committed only if every one
/// applied: one statement (`run_round`) decides them all, and a refusal
/// rolls the whole transaction back.
pub(super) async fn write_all(inner: &Inner, ops: Vec<WriteOp>) -> Result<AllOrNothing, StorageError> {
    let mut rows = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        match WriteTarget::of(&op.key) {
            Some(WriteTarget::Record(store, key)) => {
                rows.push(RowOp::from_op(i, store, key, op).map_err(StorageError::permanent)?)
            }
            _ => return Err(StorageError::permanent("write_all takes record keys only")),
        }
    }
    // Rows locked in key order, as in `write_batch`.
    rows.sort_by(|a, b| (a.store.as_bytes(), a.key.as_bytes()).cmp(&(b.store.as_bytes(), b.key.as_bytes())));
    let mut slot = inner.writer().await.map_err(|f| f.error)?;
    let outcome = async {
        let conn = slot.conn(inner).await?;
        conn.client.batch_execute("BEGIN").await?;
        let decided = async {
            let applied = run_round(conn, &rows, &inner.clock, false).await?;
            let lost: Vec<&RowOp> = rows.iter().zip(&applied).filter(|(_, a)| !**a).map(|(o, _)| o).collect();
            if lost.is_empty() {
                return Ok::<_, PgFailure>(AllOrNothing::Applied);
            }
            let current = reread(conn, &lost).await?;
            Ok(AllOrNothing::Refused(lost.iter().map(|o| o.idx as usize).zip(current).collect()))
        }
        .await;
        match decided {
            Ok(AllOrNothing::Applied) => {
                conn.client.batch_execute("COMMIT").await?;
                Ok(AllOrNothing::Applied)
            }
            other => {
                if !conn.client.is_closed() {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                }
                other
            }
        }
    }
    .await;
    match &outcome {
        // The COMMIT may or may not have happened; the connection goes with
        // the unsettled slot.
        Err(f) if f.reconnect => inner.needs_barrier.store(true, Ordering::SeqCst),
        _ => slot.settle(),
    }
    outcome.map_err(|f| {
        warn!(target: "datastorer::postgres", error = %f.error, ops = ops.len(), "all-or-nothing write failed");
        f.error
    })
}
