//! PostgreSQL for tests: a fresh schema per test, dropped at the end.
//!
//! `DATASTORER_PG_URL` names the server (default: the local one,
//! `host=127.0.0.1 user=postgres dbname=test`). When it cannot be reached
//! the test prints `SKIPPED` and passes, unless `DATASTORER_REQUIRE_PG=1`
//! (set by `.ci/run`), which turns the skip into a failure.

use std::time::Duration;

use datastorer::storage::postgres::PgBackend;
use datastorer::PostgresConfig;

pub fn url() -> String {
    std::env::var("DATASTORER_PG_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

fn required() -> bool {
    std::env::var("DATASTORER_REQUIRE_PG").is_ok_and(|v| v == "1")
}

/// Runs `f` with a fresh client on a runtime of its own thread, so it
/// works from plain tests, actix tests and drops alike.
pub fn with_client<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(tokio_postgres::Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> Result<T, String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| e.to_string())?;
            cfg.connect_timeout(Duration::from_secs(3));
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(f(client).await)
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_string())?
}

/// Runs SQL statements (simple protocol) and answers the first column of
/// every row they return, as text.
pub fn sql(url: &str, statements: &str) -> Vec<Option<String>> {
    let statements = statements.to_owned();
    with_client(url, move |c| {
        Box::pin(async move {
            let msgs = c.simple_query(&statements).await.unwrap_or_else(|e| panic!("SQL failed: {e}: {statements}"));
            msgs.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
                    _ => None,
                })
                .collect()
        })
    })
    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL: {e}"))
}

/// An engine on `backend` for tests in real time: 3 s leases, 300 ms
/// autosave, 100 ms polls, quick retries, no signal handling.
pub fn engine_config(backend: std::sync::Arc<PgBackend>, owner: &str) -> datastorer::Config {
    let mut c = datastorer::Config::backend(backend).owner_id(owner);
    c.handle_signals = false;
    c.autosave_interval = Duration::from_millis(300);
    c.lease_ttl = Duration::from_secs(3);
    c.lease_poll_interval = Duration::from_millis(100);
    c.queue.retry.base_delay = Duration::from_millis(10);
    c
}

/// A schema of its own for one test; dropped (with everything in it) when
/// this is dropped.
pub struct PgSchema {
    pub url: String,
    pub schema: String,
}

impl PgSchema {
    /// A fresh schema, or `None` (after printing why) when PostgreSQL is
    /// unreachable and not required.
    pub fn new(test: &str) -> Option<PgSchema> {
        let url = url();
        if let Err(e) = with_client(&url, |c| Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()) }))
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            assert!(!required(), "PostgreSQL is required here (DATASTORER_REQUIRE_PG=1) but unreachable: {e}");
            println!("SKIPPED {test}: PostgreSQL unreachable at {url:?} ({e}); set DATASTORER_PG_URL to run it");
            return None;
        }
        let mut random = [0u8; 6];
        getrandom_fill(&mut random);
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Some(PgSchema { url, schema: format!("ds_test_{suffix}") })
    }

    pub fn config(&self) -> PostgresConfig {
        let mut c = PostgresConfig::new(self.url.clone()).schema(self.schema.clone());
        c.connect_timeout = Duration::from_secs(5);
        c
    }

    pub fn backend(&self) -> PgBackend {
        PgBackend::connect(self.config()).expect("connect to PostgreSQL")
    }

    /// Runs SQL with `$S` standing for the quoted schema name.
    pub fn sql(&self, statements: &str) -> Vec<Option<String>> {
        sql(&self.url, &statements.replace("$S", &format!("\"{}\"", self.schema)))
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = with_client(&self.url, {
            let q = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
            move |c| Box::pin(async move { c.simple_query(&q).await.map(|_| ()) })
        });
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    // Time and address entropy suffice for unique test schema names.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rng =
        datastorer::testing::Rng((nanos as u64) ^ n.rotate_left(40) ^ u64::from(std::process::id()) << 20 | 1);
    for b in buf.iter_mut() {
        *b = rng.next() as u8;
    }
}

/// A transaction held open in another session (holding its row locks)
/// until `commit` or `rollback` ends it.
pub struct OpenTransaction {
    go: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OpenTransaction {
    /// Runs `BEGIN; statements` in a session of its own and returns once
    /// they ran.
    pub fn begin(url: &str, statements: &str) -> OpenTransaction {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let (url, statements) = (url.to_owned(), statements.to_owned());
        let thread = std::thread::spawn(move || {
            with_client(&url, move |c| {
                Box::pin(async move {
                    c.batch_execute(&format!("BEGIN; {statements}")).await.expect("the held transaction's statements");
                    let _ = locked_tx.send(());
                    // A message commits; a dropped sender rolls back.
                    let commit = tokio::task::spawn_blocking(move || go_rx.recv().is_ok()).await.unwrap_or(false);
                    c.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
                        .await
                        .expect("end the held transaction");
                })
            })
            .expect("reach PostgreSQL");
        });
        locked_rx.recv().expect("the held transaction started");
        OpenTransaction { go: Some(go), thread: Some(thread) }
    }

    pub fn commit(mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
        self.join();
    }

    pub fn rollback(mut self) {
        self.go = None;
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("the held transaction's thread");
        }
    }
}
