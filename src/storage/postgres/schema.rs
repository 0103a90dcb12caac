//! Creating, migrating and checking the database at start.
//!
//! Owns: the DDL, the schema version, and the checks that refuse a server
//! on which acknowledged saves would not be durable. Must not: read or
//! write records.

use tokio_postgres::Client;

use super::errors::{from_pg, StartError};
use super::PostgresConfig;

/// One schema step's DDL, for a schema name.
type Ddl = fn(&str) -> String;

/// The schema version this build creates and understands.
pub(super) const SCHEMA_VERSION: i32 = 3;

fn ddl_v1(schema: &str) -> String {
    let s = format!("\"{schema}\"");
    format!(
        "CREATE TABLE {s}.records (
           store            text   COLLATE \"C\" NOT NULL,
           key              text   COLLATE \"C\" NOT NULL,
           value            bytea  NOT NULL,
           epoch            bigint,
           revision         bigint,
           lease_owner      text,
           lease_expires_ms bigint,
           user_ids         text[] NOT NULL DEFAULT '{{}}',
           updated_at       timestamptz NOT NULL DEFAULT now(),
           PRIMARY KEY (store, key),
           CHECK ((epoch IS NULL) = (revision IS NULL))
         ) WITH (fillfactor = 80);
         CREATE INDEX records_user_ids ON {s}.records USING gin (user_ids);
         CREATE INDEX records_lease_owner ON {s}.records (lease_owner) WHERE lease_owner IS NOT NULL;
         CREATE TABLE {s}.meta (name bytea PRIMARY KEY, value bytea NOT NULL, epoch bigint, revision bigint);
         CREATE TABLE {s}.owners (
           owner_id      text PRIMARY KEY,
           host          text NOT NULL,
           pid           int  NOT NULL,
           advertise_url text,
           started_at    timestamptz NOT NULL DEFAULT now(),
           heartbeat_at  timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE {s}.notices (
           id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           payload    text NOT NULL,
           created_at timestamptz NOT NULL DEFAULT clock_timestamp()
         );
         CREATE INDEX notices_created_at ON {s}.notices (created_at);"
    )
}

/// Version 2 drops the index on `lease_owner` that version 1 created: no
/// query reads it, and because a release changes `lease_owner`, the index
/// made every release a non-HOT update that rewrites every index of the
/// row (measured: the 100,000-key shutdown and the 10,000-key burst).
fn ddl_v2(schema: &str) -> String {
    format!("DROP INDEX IF EXISTS \"{schema}\".records_lease_owner")
}

/// Version 3 adds history: every version of a record (`versions`, written
/// by the same statement as the record) and the user-id index
/// (`user_keys`: which keys carried which user id).
fn ddl_v3(schema: &str) -> String {
    let s = format!("\"{schema}\"");
    format!(
        "CREATE TABLE {s}.versions (
           store    text   COLLATE \"C\" NOT NULL,
           key      text   COLLATE \"C\" NOT NULL,
           epoch    bigint NOT NULL,
           revision bigint NOT NULL,
           saved_ms bigint NOT NULL,
           user_ids text[] NOT NULL DEFAULT '{{}}',
           value    bytea  NOT NULL,
           PRIMARY KEY (store, key, epoch, revision)
         );
         CREATE TABLE {s}.user_keys (
           user_id text COLLATE \"C\" NOT NULL,
           store   text COLLATE \"C\" NOT NULL,
           key     text COLLATE \"C\" NOT NULL,
           PRIMARY KEY (user_id, store, key)
         );"
    )
}

/// Refuses servers on which datastorer's guarantees would not hold, each
/// with a message naming the setting.
pub(super) async fn check_server(client: &Client, cfg: &PostgresConfig) -> Result<(), StartError> {
    let show = |name: &'static str| async move {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await.map_err(|e| StartError::Query(from_pg(e)))?;
        row.try_get::<_, String>(0).map_err(|e| StartError::Query(from_pg(e)))
    };
    let encoding = show("server_encoding").await?;
    if encoding != "UTF8" {
        return Err(StartError::Refused(format!(
            "the database's encoding is {encoding}, not UTF8: keys and store names are UTF-8 text \
             (create the database with ENCODING 'UTF8')"
        )));
    }
    let fsync = show("fsync").await?;
    if fsync != "on" && !cfg.allow_async_commit {
        return Err(StartError::Refused(
            "the server runs with fsync = off: a crash of PostgreSQL can lose acknowledged saves \
             (turn fsync on, or set allow_async_commit for a throwaway database)"
                .into(),
        ));
    }
    let sync_commit = show("synchronous_commit").await?;
    if sync_commit == "off" && !cfg.allow_async_commit {
        return Err(StartError::Refused(
            "synchronous_commit is off for this database or role: commits would be acknowledged before \
             they are durable (set it to on, or set allow_async_commit for a throwaway database)"
                .into(),
        ));
    }
    Ok(())
}

/// Creates the schema or migrates it to [`SCHEMA_VERSION`], under an
/// advisory lock so several processes starting at once do it once.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<(), StartError> {
    let q = |e| StartError::Query(from_pg(e));
    let tx = client.transaction().await.map_err(q)?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&format!("datastorer:schema:{schema}")])
        .await
        .map_err(q)?;
    let s = format!("\"{schema}\"");
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
           version int NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(q)?;
    let found: Option<i32> = tx
        .query_one(&format!("SELECT max(version) FROM {s}.schema_version"), &[])
        .await
        .map_err(q)?
        .try_get(0)
        .map_err(q)?;
    let at = match found {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StartError::Refused(format!(
                "schema \"{schema}\" is at version {v}, written by a newer datastorer; this build understands \
                 versions up to {SCHEMA_VERSION}: upgrade this process, or use another schema"
            )));
        }
        Some(v) => v,
        None => 0,
    };
    // Each step runs once, in order, inside this one transaction: a crash
    // midway leaves the schema at the version it started from.
    let steps: [(i32, Ddl); 3] = [(1, ddl_v1), (2, ddl_v2), (3, ddl_v3)];
    for (version, ddl) in steps {
        if version > at {
            tx.batch_execute(&ddl(schema)).await.map_err(q)?;
            tx.execute(&format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"), &[&version])
                .await
                .map_err(q)?;
        }
    }
    tx.commit().await.map_err(q)
}
