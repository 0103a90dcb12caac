//! Connections: the driver task of each, opening one for a role (writer,
//! reader, listener, export) with its statements prepared, the reader
//! shared, the writers handed out one call at a time (`WriterSlot`) and
//! reconnected when one broke, and the barrier after a
//! lost outcome.
//!
//! Must not: decide what a write means; `write` does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};
use tracing::debug;

use super::errors::{PgFailure, StartError};
use super::{Conn, Inner, Prepared};

/// Drives a connection until it ends, forwarding notifications.
pub(super) async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notes: Option<mpsc::UnboundedSender<Notification>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notes {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                debug!(target: "datastorer::postgres", error = %e, "connection ended");
                return;
            }
            None => return,
        }
    }
}

pub(super) fn describe_target(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", pg.get_dbname().or(pg.get_user()).unwrap_or("?"))
}

impl Inner {
    /// Opens a connection; the driver task runs on this runtime.
    /// Opens a connection whose driver runs on this runtime. The listener
    /// passes `notes` to receive notifications; other connections never
    /// get any (they never LISTEN).
    pub(crate) async fn connect_raw(
        &self,
        role: &str,
        notes: Option<mpsc::UnboundedSender<Notification>>,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let mut pg = self.pg.clone();
        pg.application_name(format!("datastorer-{role}-{}", self.instance));
        match &self.tls {
            None => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) = pg.connect(NoTls).await?;
                Ok((client, tokio::spawn(drive(connection, notes))))
            }
            #[cfg(feature = "postgres-tls")]
            Some(tls) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = pg.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(drive(connection, notes))))
            }
            #[cfg(not(feature = "postgres-tls"))]
            Some(never) => match *never {},
        }
    }

    /// Opens a connection for `role`.
    pub(super) async fn open_client(&self, role: &str) -> Result<Client, StartError> {
        let (client, _driver) =
            self.connect_raw(role, None).await.map_err(|e| StartError::Connect(connect_error(&e)))?;
        Ok(client)
    }

    pub(super) async fn prepare(&self, client: Client) -> Result<Conn, PgFailure> {
        let st = Prepared {
            get: client.prepare(&self.sql.get).await?,
            get_many: client.prepare(&self.sql.get_many).await?,
            write_lean: client.prepare(&self.sql.write_lean).await?,
            write_one: client.prepare(&self.sql.write_one).await?,
            write_general: client.prepare(&self.sql.write_general).await?,
            reread: client.prepare(&self.sql.reread).await?,
            now: client.prepare(&self.sql.now).await?,
        };
        Ok(Conn { client, st })
    }

    pub(super) async fn connect_role(&self, role: &str) -> Result<Conn, PgFailure> {
        let client = self.open_client(role).await.map_err(|e| match e {
            StartError::Connect(m) => PgFailure::transient_reconnect(format!("cannot reconnect: {m}")),
            StartError::Query(f) => f,
            StartError::Refused(m) => PgFailure::permanent(m),
        })?;
        self.prepare(client).await
    }

    pub(super) async fn reader(&self) -> Result<Arc<Conn>, PgFailure> {
        let mut slot = self.reader.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let conn = Arc::new(self.connect_role("reader").await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    pub(super) async fn sample_clock(&self, conn: &Conn) -> Result<(), PgFailure> {
        let sent = Instant::now();
        let row = conn.client.query_one(&conn.st.now, &[]).await?;
        let db_ms: i64 = row.try_get(0)?;
        self.clock.sample(sent, db_ms, Instant::now());
        Ok(())
    }

    pub(super) async fn barrier(&self) -> Result<(), PgFailure> {
        if !self.needs_barrier.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut slot = self.writer().await?;
        let conn = slot.conn(self).await?;
        // A failure leaves the connection to be dropped with the slot (it
        // may be inside the aborted transaction).
        conn.client.batch_execute("BEGIN; SELECT pg_current_xact_id(); COMMIT").await?;
        slot.settle();
        self.needs_barrier.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// A writer connection nobody is using, waiting for one to come free
    /// if need be (the queue keeps no more batches in flight than there
    /// are writers, so waiting is rare: an all-or-nothing step or a
    /// barrier beside them).
    pub(super) async fn writer(&self) -> Result<WriterSlot<'_>, PgFailure> {
        let permit =
            self.writers_free.acquire().await.map_err(|_| PgFailure::permanent("the writer connections are closed"))?;
        // A permit is held for each slot locked, so one of them is free.
        let guard = self
            .writers
            .iter()
            .find_map(|slot| slot.try_lock().ok())
            .ok_or_else(|| PgFailure::permanent("no free writer connection under a permit"))?;
        Ok(WriterSlot { guard, _permit: permit, settled: false })
    }
}

/// A writer connection held for one call. A call that ends without
/// [`WriterSlot::settle`] (dropped mid-way by the request timeout, or
/// failed with its connection) drops the connection before anyone else
/// can take the slot: it may be inside a transaction, or owe answers to
/// statements nobody waits for.
pub(super) struct WriterSlot<'a> {
    // Dropped before the permit: a waiter woken by the permit finds the
    // slot unlocked.
    guard: tokio::sync::MutexGuard<'a, Option<Conn>>,
    _permit: tokio::sync::SemaphorePermit<'a>,
    settled: bool,
}

impl WriterSlot<'_> {
    /// The connection, opened again if it broke.
    pub(super) async fn conn(&mut self, inner: &Inner) -> Result<&Conn, PgFailure> {
        if self.guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *self.guard = None;
            *self.guard = Some(inner.connect_role("writer").await?);
        }
        self.guard.as_ref().ok_or_else(|| PgFailure::transient_reconnect("no writer connection"))
    }

    /// The call is over and the connection is between transactions.
    pub(super) fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for WriterSlot<'_> {
    fn drop(&mut self) {
        if !self.settled {
            *self.guard = None;
        }
    }
}

pub(super) fn connect_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut m = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                m.push_str(": ");
                m.push_str(&s.to_string());
                source = s.source();
            }
            m
        }
    }
}
