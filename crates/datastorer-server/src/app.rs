//! The server's life: bind the port, open the storage and the engine,
//! declare the stores, start the HTTP workers with the middleware and the
//! routes, run the background tasks, and on a signal stop in order
//! (requests, then the engine's save-and-release, then HTTP).
//!
//! Owns: start-up and shutdown order. Must not: handle a request; the
//! routes are `http`'s, the state `state`'s.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::budget::Budgets;
use crate::change_log::{self, ChangeLog};
use crate::config::{ServerConfig, Storage};
use crate::error::{humanize, ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::sessions::ClientSessions;
use crate::state::AppState;
use crate::webhooks::{self, Webhooks};
use datastorer::storage::postgres::PgBackend;
use datastorer::storage::sled_backend::SledBackend;
use datastorer::storage::{Backend, StorageError};
use datastorer::{Config, Datastorer, ShutdownReport, StoreSpec};

/// Binds `config.listen`: done before anything else starts, so a busy port
/// is refused before the engine takes leases it would have to give back.
pub fn bind(config: &ServerConfig) -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind(config.listen).map_err(|e| listen_error(config.listen, &e))
}

/// Runs the server on `listener` until `shutdown` resolves (the binary
/// passes SIGINT/SIGTERM; a test, a channel), then stops accepting
/// requests, saves and releases every session, flushes, and answers the
/// report. `shutdown` answers what stopped the server, for the log.
pub async fn run(
    config: ServerConfig,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = &'static str> + 'static,
) -> Result<ShutdownReport, String> {
    let config = advertise_where_bound(config, &listener);
    let (ds, backend, postgres) = start_engine(&config).await?;
    let stores = declare_stores(&ds, &config)?;
    warn_about_exposure(&config);
    let hooks = Arc::new(Webhooks::start(&config.webhooks, ds.owner_id())?);
    // The tasks beside the HTTP server, ended when it has stopped: each
    // holds the engine, which must be let go before `run` returns.
    let mut tasks = Vec::new();
    if !hooks.is_empty() {
        info!(target: "datastorer::server", endpoints = ?hooks.describe(), "webhooks configured");
        tasks.push(actix_web::rt::spawn(webhooks::watch_failures(ds.clone(), hooks.clone())));
    }
    // Hooked in before any request can save, so the log misses nothing.
    // A sink, not a subscriber: every save's notice is appended on the
    // thread that made it, waking no task of its own (the task's wake-up
    // per save cost about a seventh of the durable-save rate, "6b under
    // load" in docs/performance.md).
    let change_log = ChangeLog::new(change_log::DEFAULT_CAPACITY);
    ds.on_change({
        let log = change_log.clone();
        move |n| {
            log.record(n);
        }
    });
    let inbox_news = crate::inbox_watch::forward(&ds);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = web::Data::new(AppState {
        ds: ds.clone(),
        config: config.clone(),
        stores: Mutex::new(stores),
        sessions: ClientSessions::new(config.client_lease_ttl, ds.owner_id(), change_log.clone()),
        metrics: Metrics::default(),
        shutdown: shutdown_rx,
        shutting_down: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        postgres,
        changes: change_log,
        budgets: Budgets::new(&config.api_keys),
        webhooks: hooks.clone(),
        fleet: fleet_client(&config)?,
        advertised: Mutex::new(HashMap::new()),
        forwarded_tokens: Mutex::new(HashMap::new()),
        usage: Mutex::new(HashMap::new()),
    });
    // Polled once now, so that a signal handler it installs is in place
    // before the server says it listens: a SIGTERM right after that line
    // then shuts down cleanly instead of killing the process.
    let mut shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = &'static str>>> = Box::pin(shutdown);
    if let Some(early) = futures_util::future::poll_immediate(&mut shutdown).await {
        shutdown = Box::pin(std::future::ready(early));
    }
    let server = serve_http(&config, state.clone(), listener, &ds)?;
    tasks.push(actix_web::rt::spawn(stop_on(shutdown, state.clone(), ds.clone(), server.handle(), shutdown_tx)));
    tasks.push(actix_web::rt::spawn(sweep_forever(state.clone())));
    tasks.push(actix_web::rt::spawn(crate::inbox_watch::watch(state, inbox_news)));
    server.await.map_err(|e| format!("server failed: {e}"))?;
    // Done already on a signal (this answers its report); otherwise keys on
    // stopped workers are reported as failed, never silently dropped.
    let report = ds.shutdown().await;
    info!(
        target: "datastorer::server",
        released = report.release.released, failed = report.release.failed.len(),
        timed_out = report.release.timed_out, took_ms = report.took.as_millis() as u64, "stopped"
    );
    if !report.is_clean() {
        alert_unsaved(&hooks, &report).await;
    }
    for task in &tasks {
        task.abort();
    }
    drop(ds);
    close_storage(backend, tasks).await;
    Ok(report)
}

/// Waits, bounded, for every other holder of the storage (the engine's
/// actors and its queue thread, the HTTP workers' state, the tasks) to let
/// go, then closes it here: once `run` has returned, the data directory is
/// unlocked and flushed, so the process (or a test, or an embedding
/// application) may open it again at once.
async fn close_storage(backend: Arc<dyn Backend>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&backend) > 1 {
        if tokio::time::Instant::now() >= deadline {
            warn!(target: "datastorer::server", holders = Arc::strong_count(&backend) - 1,
                "the storage is still in use 10 s after the shutdown; it closes when the process exits");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Closing sled flushes: off the async thread.
    let _ = tokio::task::spawn_blocking(move || drop(backend)).await;
}

/// In a fleet (a fleet secret, PostgreSQL) with no advertised URL, the
/// servers tell each other the address this one is bound to, when that is
/// a specific one (behind a load balancer, set `advertise_url`).
fn advertise_where_bound(mut config: ServerConfig, listener: &std::net::TcpListener) -> ServerConfig {
    if config.fleet_secret.is_none() {
        return config;
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    if let (Storage::Postgres(pg), Ok(addr)) = (&mut config.storage, listener.local_addr()) {
        if pg.advertise_url.is_none() && !addr.ip().is_unspecified() {
            pg.advertise_url = Some(format!("{scheme}://{addr}"));
        }
    }
    config
}

/// The client that forwards requests within the fleet, when there is one.
fn fleet_client(config: &ServerConfig) -> Result<Option<reqwest::Client>, String> {
    if config.fleet_secret.is_none() {
        return Ok(None);
    }
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .pool_max_idle_per_host(32)
        .build()
        .map(Some)
        .map_err(|e| format!("the fleet's HTTP client: {e}"))
}

/// Opens the storage the config names and starts the engine on it.
/// The started engine, the storage it runs on, and that storage as
/// PostgreSQL when it is.
type Started = (Datastorer, Arc<dyn Backend>, Option<Arc<PgBackend>>);

async fn start_engine(config: &ServerConfig) -> Result<Started, String> {
    let (backend, owner, postgres) = match &config.storage {
        Storage::Sled(dir) => {
            let (b, o) = open_data_dir(dir.clone(), config.owner_id.clone()).await?;
            (b, o, None)
        }
        Storage::Postgres(pg) => {
            let (b, o) = open_postgres(pg.clone(), config.owner_id.clone()).await?;
            (b.clone() as Arc<dyn Backend>, o, Some(b))
        }
    };
    let ds = Datastorer::start(engine_config(config, backend.clone(), owner)).await.map_err(|e| e.to_string())?;
    Ok((ds, backend, postgres))
}

/// Says so when secrets would cross a network in clear text, or when
/// anyone on the loopback may call the API.
fn warn_about_exposure(config: &ServerConfig) {
    if config.auth_enabled() && config.tls.is_none() && !config.listen.ip().is_loopback() {
        warn!(target: "datastorer::server", listen = %config.listen,
            "API keys and lease tokens travel in clear text: serve TLS (--tls-cert/--tls-key) or put a TLS proxy in front");
    }
    if !config.auth_enabled() {
        warn!(target: "datastorer::server", listen = %config.listen,
            "no API keys configured: authentication is OFF, which is allowed on loopback addresses only");
    }
}

/// The HTTP server on `listener` (the state, the extractor error answers,
/// the middleware and the routes), announced and running.
fn serve_http(
    config: &ServerConfig,
    state: web::Data<AppState>,
    listener: std::net::TcpListener,
    ds: &Datastorer,
) -> Result<actix_web::dev::Server, String> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::new(ErrorCode::BadQuery, humanize(&e.to_string())).into()),
            )
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::new(ErrorCode::BadPath, humanize(&e.to_string())).into()),
            )
            .wrap(actix_web::middleware::from_fn(crate::forward::forward))
            .wrap(actix_web::middleware::from_fn(crate::middleware::observe))
            .configure(crate::http::configure)
            .default_service(web::to(crate::http::not_found))
    })
    .workers(config.workers)
    .disable_signals()
    .shutdown_timeout(config.shutdown_deadline.as_secs().max(1));
    let server = match &config.tls {
        Some(tls) => server.listen_rustls_0_23(listener, (**tls).clone()),
        None => server.listen(listener),
    }
    .map_err(|e| listen_error(config.listen, &e))?;
    // The line tests and scripts wait for.
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let bound = server.addrs().first().copied().ok_or("bound to no address")?;
    println!("datastorer listening on {scheme}://{bound}");
    let _ = std::io::stdout().flush();
    match &config.storage {
        Storage::Sled(dir) => info!(target: "datastorer::server", %bound, data_dir = %dir.display(), "serving"),
        Storage::Postgres(pg) => {
            info!(target: "datastorer::server", %bound, database = ?pg, owner = %ds.owner_id(), "serving")
        }
    }
    Ok(server.run())
}

/// The last thing this process says after an unclean shutdown; bounded, so
/// a dead webhook cannot hold the exit.
async fn alert_unsaved(hooks: &Webhooks, report: &ShutdownReport) {
    if hooks.is_empty() {
        return;
    }
    let before = hooks.delivered.load(Ordering::Relaxed);
    hooks.alert(webhooks::Alert {
        kind: webhooks::AlertKind::ShutdownUnsaved,
        count: (report.release.failed.len() + report.release.timed_out) as u64,
        message: format!(
            "shut down with {} keys unsaved and {} timed out: their last changes are lost unless another process saved them",
            report.release.failed.len(),
            report.release.timed_out
        ),
    });
    let deadline = tokio::time::Instant::now() + webhooks::COALESCE + Duration::from_secs(3);
    while hooks.delivered.load(Ordering::Relaxed) == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The engine's configuration for the server.
fn engine_config(config: &ServerConfig, backend: Arc<dyn Backend>, owner: String) -> Config {
    let mut engine = Config::backend(backend).owner_id(owner);
    engine.autosave_interval = config.autosave_interval;
    engine.hibernate_after = config.hibernate_after;
    engine.lease_ttl = config.lease_ttl;
    engine.shutdown_deadline = config.shutdown_deadline;
    // Ordered by `stop_on`: requests, then the engine, then HTTP.
    engine.handle_signals = false;
    // Keys live on the HTTP worker that opened them: a request on that
    // worker's connections reaches its key without a thread hop (bench
    // figure 6a: 62.7k -> 70.2k updates/s with one worker). The shutdown
    // therefore runs the engine's shutdown before the workers stop.
    engine.keys_on_caller_arbiter = true;
    engine.queue.budgets = config.budgets.clone();
    engine.max_document_bytes = config.max_body_bytes;
    engine
}

/// The stores the config declares, with their templates and migrations.
fn declare_stores(
    ds: &Datastorer,
    config: &ServerConfig,
) -> Result<HashMap<String, datastorer::Store<serde_json::Value>>, String> {
    let mut stores = HashMap::new();
    for (name, decl) in &config.stores {
        let spec = store_spec(decl).map_err(|e| format!("store {name:?}: {e}"))?;
        stores.insert(name.clone(), ds.store(name, spec).map_err(|e| e.to_string())?);
    }
    Ok(stores)
}

/// The engine's spec of a declared store (the server and the tools that
/// run an engine alike).
pub(crate) fn store_spec(decl: &crate::config::StoreDecl) -> Result<StoreSpec<serde_json::Value>, String> {
    let mut spec = StoreSpec::new(decl.template.clone())
        .metadata_template(decl.metadata_template.clone())
        .retention(decl.retention()?)
        .erase(decl.erase.mode());
    for step in &decl.migrations {
        spec = spec.migration(step.to_migration());
    }
    Ok(spec)
}

/// Saves and ends client sessions whose clients went silent, forever.
async fn sweep_forever(state: web::Data<AppState>) {
    let period = (state.config.client_lease_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        state.sessions.sweep().await;
    }
}

/// When `shutdown` resolves: refuse new session requests, end change
/// feeds, let admitted requests finish (bounded), save and release every
/// key while the workers still run them, then stop HTTP.
async fn stop_on(
    shutdown: impl std::future::Future<Output = &'static str>,
    signal_state: web::Data<AppState>,
    signal_ds: Datastorer,
    handle: actix_web::dev::ServerHandle,
    shutdown_tx: watch::Sender<bool>,
) {
    let name = shutdown.await;
    info!(target: "datastorer::server", signal = name, "stopping: no new requests, then save and release everything");
    signal_state.shutting_down.store(true, Ordering::SeqCst);
    let _ = shutdown_tx.send(true);
    // Session requests now get 503; those already admitted finish first
    // (bounded: an open may be waiting for a lease held elsewhere).
    let drain = (signal_state.config.shutdown_deadline / 5).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let drained = tokio::time::timeout(drain, async {
        while signal_state.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    if drained.is_err() {
        warn!(target: "datastorer::server", in_flight = signal_state.in_flight.load(Ordering::SeqCst),
                "requests still running at shutdown; their sessions are released under them");
    }
    // Keys live on the workers' arbiters: save and release them while
    // the workers still run, then stop HTTP.
    signal_ds.shutdown().await;
    handle.stop(true).await;
}

/// Opens the sled directory and reads (or creates) the server's owner id
/// there (see `SledBackend::owner_id_or_insert_with`).
async fn open_data_dir(
    dir: std::path::PathBuf,
    explicit: Option<String>,
) -> Result<(Arc<dyn Backend>, String), String> {
    tokio::task::spawn_blocking(move || {
        let open_error = |e: StorageError| format!("cannot open --data-dir {}: {}", dir.display(), e.message);
        let backend = SledBackend::open(&dir).map_err(open_error)?;
        let owner = match explicit {
            Some(o) => o,
            None => {
                let id = random_owner_id()?;
                backend
                    .owner_id_or_insert_with(|| id)
                    .map_err(|e| format!("cannot store the server's owner id: {e}"))?
            }
        };
        Ok((Arc::new(backend) as Arc<dyn Backend>, owner))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn random_owner_id() -> Result<String, String> {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).map_err(|e| e.to_string())?;
    Ok(format!("server-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Connects to PostgreSQL. The owner id is never read from the shared
/// database (every server would read the same one): it is the configured
/// one, stable per deployment slot so a restarted server reclaims its own
/// leases at once, or a new one per start. The engine refuses to start
/// when a live process already runs under it.
async fn open_postgres(
    pg: datastorer::PostgresConfig,
    explicit: Option<String>,
) -> Result<(Arc<datastorer::storage::postgres::PgBackend>, String), String> {
    let owner = match explicit {
        Some(o) => o,
        None => random_owner_id()?,
    };
    let backend = tokio::task::spawn_blocking(move || datastorer::storage::postgres::PgBackend::connect(pg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
    Ok((Arc::new(backend), owner))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C elsewhere), answering which.
#[cfg(unix)]
pub(crate) async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub(crate) async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// Why the server cannot listen, as a sentence (no OS error code).
fn listen_error(addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => "another program is already listening there".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".to_owned(),
        std::io::ErrorKind::AddrNotAvailable => "that address is not one of this machine's".to_owned(),
        _ => {
            // The OS's own words, without the "(os error N)" tail.
            let text = e.to_string();
            text.split(" (os error").next().unwrap_or(&text).to_owned()
        }
    };
    format!("cannot listen on {addr}: {why}")
}
