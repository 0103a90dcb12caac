//! Server configuration: a TOML file, overridden by environment variables
//! and flags (clap reads both), validated before anything starts. Every
//! error names the file (or flag), the field and what is wrong.
//!
//! Owns: the settings and their validation. Must not: open storage or
//! start anything; `app` does, from the resolved `ServerConfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::auth::{ApiKey, MIN_KEY_LEN};
use super::json::MigrationStep;
use datastorer::{Budget, Budgets};

/// A store declared in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreDecl {
    /// The document of a new key.
    #[serde(default = "empty_object")]
    pub(crate) template: Value,
    /// The metadata of a new key.
    #[serde(default = "empty_object")]
    pub(crate) metadata_template: Value,
    /// Migration steps, in order; step `i` takes data version `i` to `i + 1`.
    #[serde(default)]
    pub(crate) migrations: Vec<MigrationStep>,
    /// Keep a version of every save (default `true`; `false` keeps none).
    #[serde(default = "yes")]
    pub(crate) versions: bool,
    /// Every version younger than this many hours is kept (default 24).
    pub(crate) keep_all_hours: Option<u64>,
    /// Past that, the last version of each hour is kept up to this many
    /// days (default 30).
    pub(crate) horizon_days: Option<u64>,
    /// The newest this many versions are kept whatever their age (default 10).
    pub(crate) keep_newest: Option<usize>,
    /// What an erasure by user id does to a record of this store:
    /// `"delete"` (default: the record, its versions and inbox go) or
    /// `"unlink"` (the id is removed, the data stays).
    #[serde(default)]
    pub(crate) erase: EraseDecl,
}

/// `erase` of a store in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EraseDecl {
    /// Delete tagged records with their history and inbox.
    #[default]
    Delete,
    /// Remove the id, keep the data.
    Unlink,
}

impl EraseDecl {
    pub(crate) fn mode(self) -> datastorer::EraseMode {
        match self {
            EraseDecl::Delete => datastorer::EraseMode::Delete,
            EraseDecl::Unlink => datastorer::EraseMode::Unlink,
        }
    }
}

/// `[roblox_erasure]` in the file: Roblox's signed `RightToErasureRequest`
/// webhook, accepted at `POST /v1/webhooks/roblox`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobloxErasureDecl {
    /// The secret entered with the webhook in the Creator Dashboard.
    pub(crate) secret: String,
    /// Which stores belong to which game (a request names the games the
    /// user played); none: every store.
    #[serde(default)]
    pub(crate) games: Vec<RobloxGameDecl>,
}

/// `[open_cloud]` in the file: how Roblox Open Cloud's data-store API
/// (`/datastores/v1/…`, `/cloud/v2/…`) maps universes to stores.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OpenCloudDecl {
    /// Universe id to the prefix of its stores (the Luau facade's
    /// `StorePrefix`). None listed: every universe id maps to the stores
    /// without a prefix (one game per server).
    #[serde(default)]
    pub(crate) universes: BTreeMap<String, String>,
}

/// One game of `[roblox_erasure]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobloxGameDecl {
    /// The game (universe or start place) id Roblox sends in `GameIds`.
    pub(crate) game_id: u64,
    /// Its stores.
    pub(crate) stores: Vec<String>,
}

impl StoreDecl {
    /// The store's retention, checked (`keep_all_hours` within the horizon).
    pub(crate) fn retention(&self) -> Result<datastorer::Retention, String> {
        let defaults = datastorer::Retention::default();
        let hours = |h: u64| Duration::from_secs(h.saturating_mul(3600));
        let retention = datastorer::Retention {
            enabled: self.versions,
            keep_all_for: self.keep_all_hours.map_or(defaults.keep_all_for, hours),
            horizon: self.horizon_days.map_or(defaults.horizon, |d| hours(d.saturating_mul(24))),
            keep_newest: self.keep_newest.unwrap_or(defaults.keep_newest),
        };
        retention.check()?;
        Ok(retention)
    }
}

fn yes() -> bool {
    true
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// One rate budget in the file.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetDecl {
    /// Tokens added per second.
    pub(crate) per_second: f64,
    /// Tokens at most.
    pub(crate) burst: f64,
}

/// `[budgets]` in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsDecl {
    /// Reads.
    pub(crate) get: Option<BudgetDecl>,
    /// Writes.
    pub(crate) write: Option<BudgetDecl>,
    /// Scans.
    pub(crate) scan: Option<BudgetDecl>,
}

/// Every server setting, optional, in one shape: read from the TOML file
/// (serde) and from flags and environment variables (clap), then merged —
/// a flag or variable wins over the file — into [`ServerConfig`]. A field
/// only one of the two sources can set says so (`#[arg(skip)]`,
/// `#[serde(skip)]`).
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML config file (flags and environment variables override it).
    #[arg(long, env = "DATASTORER_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7070; port 0 picks a free one).
    #[arg(long, env = "DATASTORER_LISTEN")]
    pub(crate) listen: Option<String>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "DATASTORER_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DATASTORER_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// sled data directory (default ./data; not with --database-url).
    #[arg(long, env = "DATASTORER_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// PostgreSQL shared by several processes, e.g. postgres://user@127.0.0.1/db (instead of sled).
    #[arg(long, env = "DATASTORER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL schema for datastorer's tables (default datastorer).
    #[arg(long, env = "DATASTORER_POSTGRES_SCHEMA")]
    pub(crate) postgres_schema: Option<String>,
    /// TLS to PostgreSQL (file only): "disable" or "require".
    #[arg(skip)]
    pub(crate) postgres_tls: Option<TlsDecl>,
    /// Extra PEM roots for `postgres_tls = "require"` (file only).
    #[arg(skip)]
    pub(crate) postgres_root_cert: Option<PathBuf>,
    /// Allow plaintext to a host that is not this machine (file only).
    #[arg(skip)]
    pub(crate) postgres_allow_plaintext: Option<bool>,
    /// Connections writing batches at once, 1 to 16 (file only; default 2).
    #[arg(skip)]
    pub(crate) postgres_writer_connections: Option<usize>,
    /// This server's URL as clients should reach it (named in 421 wrong_server answers of other servers).
    #[arg(long, env = "DATASTORER_ADVERTISE_URL")]
    pub(crate) advertise_url: Option<String>,
    /// The secret the servers of a fleet (one PostgreSQL database) share to
    /// forward requests to each other: a request that reaches a server not
    /// holding its session is forwarded to the one that does (at least 32
    /// characters; without it, such a request is answered 421 wrong_server).
    #[arg(long, env = "DATASTORER_FLEET_SECRET", hide_env_values = true)]
    pub(crate) fleet_secret: Option<String>,
    /// Owner id in leases (default: on sled, one generated once and kept in the data directory;
    /// on PostgreSQL, a new one per start; set it per deployment slot to reclaim leases after a crash).
    #[arg(long, env = "DATASTORER_OWNER_ID")]
    pub(crate) owner_id: Option<String>,
    /// Answer 404 for stores the config does not declare.
    #[arg(long, env = "DATASTORER_STRICT_STORES")]
    pub(crate) strict_stores: Option<bool>,
    /// Log one line per request at info (method, route, status, duration, API key name, client id;
    /// never a secret or token). Default true.
    #[arg(long, env = "DATASTORER_ACCESS_LOG")]
    pub(crate) access_log: Option<bool>,
    /// Serve the console (a web UI for the API) at /console. Default true.
    #[arg(long, env = "DATASTORER_CONSOLE")]
    pub(crate) console: Option<bool>,
    /// Engine autosave interval, seconds (default 30).
    #[arg(long, env = "DATASTORER_AUTOSAVE_INTERVAL_SECS")]
    pub(crate) autosave_interval_secs: Option<u64>,
    /// Engine lease TTL between server processes, seconds (default 90).
    #[arg(long, env = "DATASTORER_LEASE_TTL_SECS")]
    pub(crate) lease_ttl_secs: Option<u64>,
    /// Seconds a loaded key with nothing unsaved may go without a request
    /// before it hibernates (its actor stops; the next request wakes it);
    /// rounded up to whole autosave intervals; 0: never (default 60).
    #[arg(long, env = "DATASTORER_HIBERNATE_AFTER_SECS")]
    pub(crate) hibernate_after_secs: Option<u64>,
    /// Client session lifetime without a request, seconds (default 60).
    #[arg(long, env = "DATASTORER_CLIENT_LEASE_TTL_SECS")]
    pub(crate) client_lease_ttl_secs: Option<u64>,
    /// Bound on graceful shutdown, seconds (default 25).
    #[arg(long, env = "DATASTORER_SHUTDOWN_DEADLINE_SECS")]
    pub(crate) shutdown_deadline_secs: Option<u64>,
    /// Longest wait a client may ask for when opening a held key, seconds (default 300).
    #[arg(long, env = "DATASTORER_MAX_WAIT_SECS")]
    pub(crate) max_wait_secs: Option<u64>,
    /// Largest request body and document, bytes (default 4 MiB).
    #[arg(long, env = "DATASTORER_MAX_BODY_BYTES")]
    pub(crate) max_body_bytes: Option<usize>,
    /// HTTP worker threads (default: cores, at most 8).
    #[arg(long, env = "DATASTORER_WORKERS")]
    pub(crate) workers: Option<usize>,
    /// API keys of the file (`[[api_keys]]` tables).
    #[arg(skip)]
    pub(crate) api_keys: Option<Vec<ApiKey>>,
    /// An API key as NAME:ROLE:SECRET (role: read, write, admin); repeatable.
    #[arg(long = "api-key", env = "DATASTORER_API_KEYS", value_delimiter = ',')]
    #[serde(skip)]
    pub(crate) api_key_flags: Vec<String>,
    /// Rate budgets (file only).
    #[arg(skip)]
    pub(crate) budgets: Option<BudgetsDecl>,
    /// Declared stores (file only).
    #[arg(skip)]
    pub(crate) stores: Option<BTreeMap<String, StoreDecl>>,
    /// Alert endpoints (`[[webhooks]]` tables, file only).
    #[arg(skip)]
    pub(crate) webhooks: Option<Vec<super::webhooks::WebhookDecl>>,
    /// Roblox's erasure webhook (file only).
    #[arg(skip)]
    pub(crate) roblox_erasure: Option<RobloxErasureDecl>,
    /// The Open Cloud data-store API's universes (file only).
    #[arg(skip)]
    pub(crate) open_cloud: Option<OpenCloudDecl>,
}

/// `postgres_tls` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsDecl {
    /// Plain TCP (loopback only unless allowed).
    Disable,
    /// TLS with certificate and host-name checks.
    Require,
}

/// Where the server keeps its records.
#[derive(Debug, Clone)]
pub enum Storage {
    /// An embedded sled directory (one process).
    Sled(PathBuf),
    /// A PostgreSQL database shared with other servers and applications.
    Postgres(datastorer::PostgresConfig),
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub(crate) listen: SocketAddr,
    /// HTTPS: the certificate and key, loaded and checked at start.
    pub(crate) tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Where records live.
    pub(crate) storage: Storage,
    /// The owner id in leases; `None`: on sled, the one stored in the data
    /// directory; on PostgreSQL, a new one per start (never read from the
    /// shared database).
    pub(crate) owner_id: Option<String>,
    /// API keys; empty means no authentication (loopback only).
    pub(crate) api_keys: Vec<ApiKey>,
    /// Undeclared stores are 404 instead of created on first use.
    pub(crate) strict_stores: bool,
    /// One info line per request (target `datastorer::access`).
    pub(crate) access_log: bool,
    /// The console at `/console`.
    pub(crate) console: bool,
    /// Declared stores.
    pub(crate) stores: BTreeMap<String, StoreDecl>,
    /// Engine autosave interval.
    pub(crate) autosave_interval: Duration,
    /// Engine lease TTL (between server processes).
    pub(crate) lease_ttl: Duration,
    /// How long an idle, saved key keeps its actor (`None`: always).
    pub(crate) hibernate_after: Option<Duration>,
    /// How long a client's session lives without a request or renewal.
    pub(crate) client_lease_ttl: Duration,
    /// Bound on graceful shutdown.
    pub(crate) shutdown_deadline: Duration,
    /// Longest `timeout_ms` a client may ask an open to wait.
    pub(crate) max_wait: Duration,
    /// Largest request body accepted.
    pub(crate) max_body_bytes: usize,
    /// HTTP worker threads.
    pub(crate) workers: usize,
    /// Queue rate budgets.
    pub(crate) budgets: Budgets,
    /// Alert endpoints.
    pub(crate) webhooks: Vec<super::webhooks::WebhookDecl>,
    /// Roblox's erasure webhook, when configured.
    pub(crate) roblox_erasure: Option<RobloxErasureDecl>,
    /// The Open Cloud data-store API's universes.
    pub(crate) open_cloud: OpenCloudDecl,
    /// The fleet's forwarding secret, when set.
    pub(crate) fleet_secret: Option<String>,
}

/// A configuration problem, already phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn parse_api_key_flag(s: &str) -> Result<ApiKey, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(name), Some(role), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected NAME:ROLE:SECRET".into());
    };
    Ok(ApiKey {
        name: name.to_owned(),
        role: role.parse()?,
        key: key.to_owned(),
        stores: None,
        requests_per_minute: None,
        client_requests_per_minute: None,
    })
}

fn budget(d: Option<BudgetDecl>) -> Option<Budget> {
    d.map(|b| Budget { per_second: b.per_second, burst: b.burst })
}

impl ServerConfig {
    /// Reads the file (if any), applies overrides, validates.
    pub fn load(o: &Settings) -> Result<ServerConfig, ConfigError> {
        let (file, source) = match &o.config {
            Some(path) => (read_file(path)?, path.display().to_string()),
            None => (Settings::default(), "defaults".to_owned()),
        };
        let at = Origin { source: &source, has_file: o.config.is_some() };
        let err_at = |field: &str, flag_given: bool, what: String| at.err(field, flag_given, what);
        let err = |field: &str, what: String| at.err(field, false, what);
        let storage = storage(o, &file, &at)?;

        let listen_text = o.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:7070".into());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            err_at("listen", o.listen.is_some(), format!("{listen_text:?} is not an address like 127.0.0.1:7070 ({e})"))
        })?;

        let api_keys = api_keys(file.api_keys.unwrap_or_default(), &o.api_key_flags, &at)?;
        let tls_cert = o.tls_cert.clone().or(file.tls_cert.clone());
        let tls_key = o.tls_key.clone().or(file.tls_key.clone());
        let tls = match (tls_cert, tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(std::sync::Arc::new(
                tls_config(&cert, &key).map_err(|e| err_at("tls_cert", o.tls_cert.is_some(), e))?,
            )),
            (Some(_), None) => {
                return Err(err_at(
                    "tls_key",
                    o.tls_key.is_some(),
                    "--tls-cert needs --tls-key (its private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err_at(
                    "tls_cert",
                    o.tls_cert.is_some(),
                    "--tls-key needs --tls-cert (its certificate)".into(),
                ))
            }
        };
        let webhooks = file.webhooks.clone().unwrap_or_default();
        for (i, w) in webhooks.iter().enumerate() {
            super::webhooks::Endpoint::parse(&w.url).map_err(|e| err(&format!("webhooks[{i}].url"), e))?;
        }
        if api_keys.is_empty() && !listen.ip().is_loopback() {
            return Err(err_at(
                "listen",
                o.listen.is_some(),
                format!("{listen} is not a loopback address; without api_keys the server only binds 127.0.0.1 or ::1"),
            ));
        }

        let owner_id = o.owner_id.clone().or(file.owner_id);
        if let Some(Err(e)) = owner_id.as_deref().map(super::validate::owner_id) {
            return Err(err_at("owner_id", o.owner_id.is_some(), e));
        }
        let stores = file.stores.unwrap_or_default();
        for (name, decl) in &stores {
            datastorer::validate_user_store_name(name).map_err(|e| err(&format!("stores.{name}"), e.to_string()))?;
            super::validate::template(&decl.template).map_err(|e| err(&format!("stores.{name}.template"), e))?;
            super::validate::metadata(&decl.metadata_template)
                .map_err(|e| err(&format!("stores.{name}.metadata_template"), e))?;
            for (i, step) in decl.migrations.iter().enumerate() {
                step.validate().map_err(|e| err(&format!("stores.{name}.migrations[{i}]"), e))?;
            }
            decl.retention().map_err(|e| err(&format!("stores.{name}.keep_all_hours"), e))?;
        }

        let secs =
            |flag: Option<u64>, file: Option<u64>, default: u64| Duration::from_secs(flag.or(file).unwrap_or(default));
        // The engine's own defaults, not a second copy of them.
        let engine = datastorer::Config::memory();
        let autosave_interval =
            secs(o.autosave_interval_secs, file.autosave_interval_secs, engine.autosave_interval.as_secs());
        let lease_ttl = secs(o.lease_ttl_secs, file.lease_ttl_secs, engine.lease_ttl.as_secs());
        let client_lease_ttl = secs(o.client_lease_ttl_secs, file.client_lease_ttl_secs, 60);
        let hibernate_after = match o.hibernate_after_secs.or(file.hibernate_after_secs) {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => engine.hibernate_after,
        };
        let shutdown_deadline =
            secs(o.shutdown_deadline_secs, file.shutdown_deadline_secs, engine.shutdown_deadline.as_secs());
        for (field, d, given) in [
            ("autosave_interval_secs", autosave_interval, o.autosave_interval_secs.is_some()),
            ("client_lease_ttl_secs", client_lease_ttl, o.client_lease_ttl_secs.is_some()),
            ("shutdown_deadline_secs", shutdown_deadline, o.shutdown_deadline_secs.is_some()),
        ] {
            if d.is_zero() {
                return Err(err_at(field, given, "must be at least 1".into()));
            }
        }
        if lease_ttl < autosave_interval * 2 {
            return Err(err_at(
                "lease_ttl_secs",
                o.lease_ttl_secs.is_some() || o.autosave_interval_secs.is_some(),
                format!(
                    "{}s must be at least twice autosave_interval_secs ({}s)",
                    lease_ttl.as_secs(),
                    autosave_interval.as_secs()
                ),
            ));
        }
        let max_wait = secs(o.max_wait_secs, file.max_wait_secs, 300);
        let max_body_bytes = o.max_body_bytes.or(file.max_body_bytes).unwrap_or(engine.max_document_bytes);
        if max_body_bytes == 0 {
            return Err(err_at("max_body_bytes", o.max_body_bytes.is_some(), "must be greater than zero".into()));
        }
        let workers = o
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8));
        if workers == 0 || workers > 256 {
            return Err(err_at("workers", o.workers.is_some(), format!("{workers} is outside 1..=256")));
        }
        let b = file.budgets.unwrap_or_default();
        let budgets = Budgets { get: budget(b.get), write: budget(b.write), scan: budget(b.scan) };
        for (name, bd) in [("get", budgets.get), ("write", budgets.write), ("scan", budgets.scan)] {
            if let Some(bd) = bd {
                // The engine's rule, in the engine's words.
                if let Err(e) = bd.check() {
                    let message = match e {
                        datastorer::Error::Config(m) => m,
                        other => other.to_string(),
                    };
                    return Err(err(&format!("budgets.{name}"), message));
                }
            }
        }
        // Checked here, where the flag is named; the PostgreSQL settings
        // carry it (it means nothing on sled).
        if let Some(u) = o.advertise_url.as_ref().or(file.advertise_url.as_ref()) {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 512 {
                return Err(err_at(
                    "advertise_url",
                    o.advertise_url.is_some(),
                    format!("{u:?} is not an http(s) URL of at most 512 bytes"),
                ));
            }
        }
        let roblox_erasure = file.roblox_erasure.clone();
        if let Some(r) = &roblox_erasure {
            if r.secret.len() < 16 {
                return Err(err("roblox_erasure.secret", "is shorter than 16 characters".into()));
            }
            for (i, g) in r.games.iter().enumerate() {
                for s in &g.stores {
                    datastorer::validate_user_store_name(s)
                        .map_err(|e| err(&format!("roblox_erasure.games[{i}].stores"), e.to_string()))?;
                }
            }
        }
        let fleet_secret = o.fleet_secret.clone().or(file.fleet_secret.clone());
        if let Some(f) = &fleet_secret {
            if f.len() < 32 {
                return Err(err_at("fleet_secret", o.fleet_secret.is_some(), "is shorter than 32 characters".into()));
            }
        }
        let open_cloud = file.open_cloud.clone().unwrap_or_default();
        for (universe, prefix) in &open_cloud.universes {
            if universe.is_empty() || !universe.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("open_cloud.universes", format!("{universe:?} is not a universe id (digits)")));
            }
            if prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(err(
                    &format!("open_cloud.universes.{universe}"),
                    format!("{prefix:?} is not a store prefix (at most 64 of A-Z a-z 0-9 _ -)"),
                ));
            }
        }
        Ok(ServerConfig {
            listen,
            tls,
            webhooks,
            roblox_erasure,
            open_cloud,
            fleet_secret,
            storage,
            owner_id,
            api_keys,
            strict_stores: o.strict_stores.or(file.strict_stores).unwrap_or(false),
            access_log: o.access_log.or(file.access_log).unwrap_or(true),
            console: o.console.or(file.console).unwrap_or(true),
            stores,
            autosave_interval,
            lease_ttl,
            hibernate_after,
            client_lease_ttl,
            shutdown_deadline,
            max_wait,
            max_body_bytes,
            workers,
            budgets,
        })
    }

    /// Whether requests must carry an API key.
    pub(crate) fn auth_enabled(&self) -> bool {
        !self.api_keys.is_empty()
    }
}

/// Where a bad value came from: the flag and its environment variable when
/// one was given, else the file's field, else the default.
struct Origin<'a> {
    source: &'a str,
    has_file: bool,
}

impl Origin<'_> {
    fn of(&self, field: &str, flag_given: bool) -> String {
        if flag_given {
            format!("--{} / DATASTORER_{}", field.replace('_', "-"), field.to_ascii_uppercase())
        } else if self.has_file {
            format!("{}: field `{field}`", self.source)
        } else {
            format!("default `{field}`")
        }
    }

    fn err(&self, field: &str, flag_given: bool, what: String) -> ConfigError {
        ConfigError(format!("{}: {what}", self.of(field, flag_given)))
    }
}

/// The HTTPS server configuration from a PEM certificate chain and key:
/// ring as the provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The file's API keys, then the flags' (`NAME:ROLE:SECRET`), checked:
/// names given, secrets long enough, no secret or name twice.
fn api_keys(mut api_keys: Vec<ApiKey>, flags: &[String], at: &Origin<'_>) -> Result<Vec<ApiKey>, ConfigError> {
    let from_file = api_keys.len();
    for flag in flags {
        api_keys
            .push(parse_api_key_flag(flag).map_err(|e| ConfigError(format!("--api-key / DATASTORER_API_KEYS: {e}")))?);
    }
    for (i, k) in api_keys.iter().enumerate() {
        // Keys after the file's come from --api-key / DATASTORER_API_KEYS.
        let origin = |part: &str| {
            if i >= from_file {
                format!("--api-key / DATASTORER_API_KEYS (key {} of the flags)", i - from_file + 1)
            } else {
                at.of(&format!("api_keys[{i}].{part}"), false)
            }
        };
        if k.name.is_empty() {
            return Err(ConfigError(format!("{}: the name must not be empty", origin("name"))));
        }
        if k.key.len() < MIN_KEY_LEN {
            return Err(ConfigError(format!(
                "{}: the secret of API key {:?} is {} characters; at least {MIN_KEY_LEN} are needed",
                origin("key"),
                k.name,
                k.key.len()
            )));
        }
        if let Some(stores) = &k.stores {
            if stores.is_empty() {
                return Err(ConfigError(format!(
                    "{}: an empty list would allow no store; leave it out to allow all",
                    origin("stores")
                )));
            }
            for store in stores {
                datastorer::validate_user_store_name(store)
                    .map_err(|e| ConfigError(format!("{}: {e}", origin("stores"))))?;
            }
        }
        if k.requests_per_minute == Some(0) {
            return Err(ConfigError(format!("{}: must be at least 1", origin("requests_per_minute"))));
        }
        if k.client_requests_per_minute == Some(0) {
            return Err(ConfigError(format!("{}: must be at least 1", origin("client_requests_per_minute"))));
        }
        if api_keys[..i].iter().any(|other| other.key == k.key) {
            return Err(ConfigError(format!("{}: the same secret is configured twice", origin("key"))));
        }
        if api_keys[..i].iter().any(|other| other.name == k.name) {
            return Err(ConfigError(format!(
                "{}: two API keys are named {:?}; names appear in logs and must tell keys apart",
                origin("name"),
                k.name
            )));
        }
    }
    Ok(api_keys)
}

/// Where records live: sled (`data_dir`) or PostgreSQL (`database_url`),
/// never both, with the PostgreSQL settings only beside a URL.
fn storage(o: &Settings, file: &Settings, at: &Origin<'_>) -> Result<Storage, ConfigError> {
    let err_at = |field: &str, flag_given: bool, what: String| at.err(field, flag_given, what);
    let err = |field: &str, what: String| at.err(field, false, what);
    let data_dir = o.data_dir.clone().or(file.data_dir.clone());
    let database_url = o.database_url.clone().or(file.database_url.clone());
    Ok(match database_url {
        None => {
            for (field, set) in [
                ("postgres_schema", file.postgres_schema.is_some()),
                ("postgres_tls", file.postgres_tls.is_some()),
                ("postgres_root_cert", file.postgres_root_cert.is_some()),
                ("postgres_allow_plaintext", file.postgres_allow_plaintext.is_some()),
                ("postgres_writer_connections", file.postgres_writer_connections.is_some()),
            ] {
                if set {
                    return Err(err(field, "applies only with database_url".into()));
                }
            }
            if o.postgres_schema.is_some() {
                return Err(err_at("postgres_schema", true, "applies only with --database-url".into()));
            }
            Storage::Sled(data_dir.unwrap_or_else(|| PathBuf::from("./data")))
        }
        Some(url) => {
            if let Some(dir) = data_dir {
                return Err(err_at(
                    "data_dir",
                    o.data_dir.is_some(),
                    format!(
                        "{} is set together with database_url: records live in one place; \
                         drop one of them (copy a sled directory with `datastorer copy-sled-to-postgres`)",
                        dir.display()
                    ),
                ));
            }
            let mut pg = datastorer::PostgresConfig::new(url);
            if let Some(schema) = o.postgres_schema.clone().or(file.postgres_schema.clone()) {
                pg.schema = schema;
            }
            pg.tls = match file.postgres_tls {
                Some(TlsDecl::Require) => datastorer::PostgresTls::Require,
                Some(TlsDecl::Disable) | None => datastorer::PostgresTls::Disable,
            };
            pg.root_cert_path = file.postgres_root_cert.clone();
            pg.allow_plaintext = file.postgres_allow_plaintext.unwrap_or(false);
            if let Some(n) = file.postgres_writer_connections {
                let most = datastorer::storage::postgres::MAX_WRITER_CONNECTIONS;
                if !(1..=most).contains(&n) {
                    return Err(err("postgres_writer_connections", format!("must be between 1 and {most}, not {n}")));
                }
                pg.writer_connections = n;
            }
            pg.advertise_url = o.advertise_url.clone().or(file.advertise_url.clone());
            pg.validate().map_err(|e| {
                let message = match e {
                    datastorer::Error::Config(m) => m,
                    other => other.to_string(),
                };
                err_at("database_url", o.database_url.is_some(), message)
            })?;
            Storage::Postgres(pg)
        }
    })
}

/// The data version each declared store of the config file at `path`
/// gives its records (its migration count), for tools that write records
/// the server will open: the same file the server reads, the same rules.
pub(crate) fn store_data_versions(path: &Path) -> Result<BTreeMap<String, usize>, ConfigError> {
    let o = Settings { config: Some(path.to_owned()), ..Settings::default() };
    let config = ServerConfig::load(&o)?;
    Ok(config.stores.iter().map(|(name, decl)| (name.clone(), decl.migrations.len())).collect())
}

/// The stores the config file at `path` declares, checked as the server
/// checks them.
pub(crate) fn store_decls(path: &Path) -> Result<BTreeMap<String, StoreDecl>, ConfigError> {
    let o = Settings { config: Some(path.to_owned()), ..Settings::default() };
    Ok(ServerConfig::load(&o)?.stores)
}

fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read the config file: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.to_string().trim_end())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(o: &Settings) -> String {
        ServerConfig::load(o).expect_err("refused").0
    }

    fn with_file(text: &str) -> (tempfile::TempDir, Settings) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("datastorer.toml");
        std::fs::write(&path, text).expect("write config");
        (dir, Settings { config: Some(path), ..Settings::default() })
    }

    #[test]
    fn a_bad_flag_is_named_as_the_flag_and_its_variable() {
        let o = Settings { workers: Some(0), ..Settings::default() };
        let m = refused(&o);
        assert!(m.starts_with("--workers / DATASTORER_WORKERS: "), "{m}");
        assert!(!m.contains("defaults"), "{m}");
        let o = Settings { listen: Some("nowhere".into()), ..Settings::default() };
        assert!(refused(&o).starts_with("--listen / DATASTORER_LISTEN: "));
        // A flag wins over the file, and is named even when a file is given.
        let (_dir, mut o) = with_file("workers = 2\n");
        o.max_body_bytes = Some(0);
        assert!(refused(&o).starts_with("--max-body-bytes / DATASTORER_MAX_BODY_BYTES: "));
    }

    #[test]
    fn a_bad_file_field_is_named_with_the_file() {
        let (_dir, o) = with_file("workers = 0\n");
        let m = refused(&o);
        assert!(m.contains("datastorer.toml: field `workers`"), "{m}");
    }

    #[test]
    fn postgres_writer_connections_are_checked_and_need_a_database() {
        let url = "database_url = \"host=127.0.0.1 user=postgres dbname=test\"\n";
        for bad in ["0", "17"] {
            let (_dir, o) = with_file(&format!("{url}postgres_writer_connections = {bad}\n"));
            let m = refused(&o);
            assert!(m.contains("field `postgres_writer_connections`") && m.contains("between 1 and 16"), "{m}");
        }
        let (_dir, o) = with_file(&format!("{url}postgres_writer_connections = 4\n"));
        match ServerConfig::load(&o).map(|c| c.storage) {
            Ok(Storage::Postgres(pg)) => assert_eq!(pg.writer_connections, 4),
            other => panic!("expected PostgreSQL with 4 writers: {:?}", other.map(|_| ()).map_err(|e| e.0)),
        }
        let (_dir, o) = with_file("postgres_writer_connections = 2\n");
        assert!(refused(&o).contains("applies only with database_url"));
    }

    #[test]
    fn api_key_names_are_unique_and_the_short_key_message_shows_no_secret() {
        let keys = |list: &[&str]| Settings {
            api_key_flags: list.iter().map(|s| s.to_string()).collect(),
            ..Settings::default()
        };
        let m = refused(&keys(&["game:write:aaaaaaaaaaaaaaaaaaaa", "game:read:bbbbbbbbbbbbbbbbbbbb"]));
        assert!(m.contains("two API keys are named \"game\""), "{m}");
        let m = refused(&keys(&["game:write:short-secret"]));
        assert!(m.contains("the secret of API key \"game\" is 12 characters"), "{m}");
        assert!(!m.contains("short-secret"), "the secret never appears in a message: {m}");
    }

    #[test]
    fn templates_and_metadata_templates_are_objects() {
        let (_dir, o) = with_file("[stores.p]\ntemplate = 5\n");
        assert!(refused(&o).contains("stores.p.template"));
        let (_dir, o) = with_file("[stores.p]\nmetadata_template = [1]\n");
        assert!(refused(&o).contains("stores.p.metadata_template"));
        let (_dir, o) = with_file("[stores.p]\ntemplate = { coins = 0 }\n");
        assert!(ServerConfig::load(&o).is_ok());
    }
}
