//! What every handler shares: the engine, the resolved configuration, the
//! client sessions, the change log, metrics, budgets and webhooks, and the
//! three checks every request on a store passes (admitted, authenticated,
//! the store resolved).
//!
//! Owns: `AppState` and the shutdown flags. Must not: know any route; the
//! handlers under `http/` read this state, never the other way round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{HttpMessage, HttpRequest};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::access::AccessKey;
use crate::auth::{authorize, Identity, Role};
use crate::budget::{Budgets, Spent};
use crate::change_log::ChangeLog;
use crate::config::ServerConfig;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::sessions::ClientSessions;
use crate::webhooks::Webhooks;
use datastorer::storage::postgres::PgBackend;
use datastorer::{Datastorer, Store, StoreSpec};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Everything the handlers share.
pub(crate) struct AppState {
    /// The engine.
    pub(crate) ds: Datastorer,
    /// Resolved configuration.
    pub(crate) config: ServerConfig,
    /// Stores by name (declared ones registered at start).
    pub(crate) stores: Mutex<HashMap<String, Store<Value>>>,
    /// Client sessions.
    pub(crate) sessions: ClientSessions,
    /// Counters.
    pub(crate) metrics: Metrics,
    /// Flips to true when shutdown starts (ends change feeds).
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Whether shutdown started (readiness; session requests get 503).
    pub(crate) shutting_down: AtomicBool,
    /// Requests being handled (the shutdown waits for them).
    pub(crate) in_flight: AtomicUsize,
    /// The PostgreSQL backend, when servers share one.
    pub(crate) postgres: Option<Arc<PgBackend>>,
    /// Every feed event, numbered (the poll and SSE routes read it).
    pub(crate) changes: Arc<ChangeLog>,
    /// Request budgets of the API keys that have one.
    pub(crate) budgets: Budgets,
    /// Alert endpoints.
    pub(crate) webhooks: Arc<Webhooks>,
    /// The HTTP client that forwards requests to the fleet's other servers.
    pub(crate) fleet: Option<reqwest::Client>,
    /// Other servers' advertised URLs, as last read (owner id → URL, when).
    pub(crate) advertised: Mutex<HashMap<String, (Option<String>, std::time::Instant)>>,
    /// Lease tokens of sessions on other servers, each with the URL its
    /// last request was forwarded to: the next one goes there at once,
    /// without looking the key's lease up again.
    pub(crate) forwarded_tokens: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Stores' sizes as last counted (store → figures, when, in Unix ms and
    /// by the monotonic clock).
    pub(crate) usage: Mutex<HashMap<String, (datastorer::StoreUsage, u64, std::time::Instant)>>,
}

/// How long an advertised URL is used before it is read again: a server
/// restarted under its owner id elsewhere is found within this.
const ADVERTISED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// What an audited action was done to.
#[derive(Default)]
pub(crate) struct Target<'a> {
    pub(crate) store: Option<&'a str>,
    pub(crate) key: Option<&'a str>,
}

impl AppState {
    /// Records an administrative action and how it ended in the audit
    /// trail (durably, beside the records) and answers `result` as it is.
    /// A trail that cannot be written is logged; the action's answer
    /// stands (it happened).
    pub(crate) async fn audited<T>(
        &self,
        actor: &str,
        action: &str,
        target: Target<'_>,
        details: impl FnOnce(&T) -> Value,
        result: Result<T>,
    ) -> Result<T> {
        let (outcome, details) = match &result {
            Ok(v) => ("ok".to_owned(), details(v)),
            Err(e) => (e.message.clone(), json!({ "code": e.code.as_str() })),
        };
        let entry = datastorer::AuditEntry {
            id: String::new(),
            at_ms: 0,
            actor: actor.to_owned(),
            action: action.to_owned(),
            store: target.store.map(str::to_owned),
            key: target.key.map(str::to_owned),
            outcome,
            details,
        };
        if let Err(e) = self.ds.audit(entry).await {
            tracing::error!(target: "datastorer::audit", action, actor, error = %e, "the audit trail could not be written");
        }
        result
    }

    /// A write the console made (`Datastorer-Origin: console`) lands in
    /// the audit trail as `action`, under the API key that sent it; any
    /// other write is answered as it is.
    pub(crate) async fn audited_if_console<T>(
        &self,
        req: &HttpRequest,
        action: &str,
        target: Target<'_>,
        result: Result<T>,
    ) -> Result<T> {
        let from_console = req.headers().get("datastorer-origin").is_some_and(|v| v.as_bytes() == b"console");
        if !from_console {
            return result;
        }
        let actor = req.extensions().get::<AccessKey>().map(|k| k.0.clone()).unwrap_or_else(|| "anonymous".into());
        self.audited(&actor, action, target, |_| json!({ "origin": "console" }), result).await
    }

    /// Refuses session work once shutdown started: the engine is about to
    /// release every session, and a request admitted later would race it.
    pub(crate) fn admit(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down"));
        }
        Ok(())
    }

    /// For a sessionless write to `store`/`key`: admitted (not shutting
    /// down), authorized to write, the store resolved and the key valid.
    pub(crate) fn sessionless_write(&self, req: &HttpRequest, store: &str, key: &str) -> Result<Store<Value>> {
        self.admit()?;
        self.auth(req, Role::Write)?;
        let resolved = self.store(store)?;
        datastorer::validate_key(key).map_err(ApiError::from)?;
        Ok(resolved)
    }

    /// The store `name`: declared, or created on first use unless strict.
    pub(crate) fn store(&self, name: &str) -> Result<Store<Value>> {
        datastorer::validate_store_name(name).map_err(ApiError::from)?;
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(name) {
            return Ok(s.clone());
        }
        if self.config.strict_stores {
            return Err(undeclared(name));
        }
        let store = self.ds.store(name, StoreSpec::new(json!({})))?;
        stores.insert(name.to_owned(), store.clone());
        Ok(store)
    }

    /// The URL the server running under `owner` advertised, from a cache
    /// of [`ADVERTISED_FOR`] (a misdirected request needs it every time).
    pub(crate) fn advertised_url(&self, owner: &str) -> Option<String> {
        let pg = self.postgres.as_ref()?;
        let now = std::time::Instant::now();
        let mut cache = self.advertised.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((url, at)) = cache.get(owner) {
            if now.duration_since(*at) < ADVERTISED_FOR {
                return url.clone();
            }
        }
        let url = pg.advertised_url(owner).ok().flatten();
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(owner.to_owned(), (url.clone(), now));
        url
    }

    /// Where the session of lease token `token` was forwarded to lately.
    pub(crate) fn holder_of_token(&self, token: &str) -> Option<String> {
        let cache = self.forwarded_tokens.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(token).filter(|(_, at)| at.elapsed() < ADVERTISED_FOR).map(|(url, _)| url.clone())
    }

    /// Remembers (`Some`) or forgets (`None`) where `token`'s session lives.
    pub(crate) fn set_holder_of_token(&self, token: &str, url: Option<&str>) {
        let mut cache = self.forwarded_tokens.lock().unwrap_or_else(|p| p.into_inner());
        match url {
            Some(url) => {
                if cache.len() >= 10_000 {
                    cache.retain(|_, (_, at)| at.elapsed() < ADVERTISED_FOR);
                    if cache.len() >= 10_000 {
                        cache.clear();
                    }
                }
                cache.insert(token.to_owned(), (url.to_owned(), std::time::Instant::now()));
            }
            None => {
                cache.remove(token);
            }
        }
    }

    /// Drops the cached advertised URL `url` (a hop to it failed).
    pub(crate) fn forget_advertised(&self, url: &str) {
        let mut cache = self.advertised.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (u, _)| u.as_deref() != Some(url));
    }

    /// Authenticates `req`, charges its key's request budget (429 with
    /// `Retry-After` when spent) and, for a route on a store, checks the
    /// key's store scope.
    pub(crate) fn auth(&self, req: &HttpRequest, role: Role) -> Result<Identity> {
        // A request another server of the fleet forwards was authenticated
        // (and charged) where it entered: it carries the fleet's secret and
        // the name of the key it came in with.
        let fleet = self.config.fleet_secret.as_deref();
        if let Some(who) = crate::auth::forwarded_identity(req, fleet, &self.config.api_keys, role)? {
            req.extensions_mut().insert(AccessKey(who.name.clone()));
            if let Some(store) = req.match_info().get("store") {
                who.may_use(store)?;
            }
            return Ok(who);
        }
        let who = authorize(req, &self.config.api_keys, role, |name| {
            req.extensions_mut().insert(AccessKey(name.to_owned()));
        })?;
        if req.extensions().get::<AccessKey>().is_none() {
            req.extensions_mut().insert(AccessKey(who.name.clone()));
        }
        let client = match req.headers().get(CLIENT_ID_HEADER) {
            None => None,
            Some(v) => {
                let id = v.to_str().ok().filter(|id| crate::validate::client_id(id).is_ok()).ok_or_else(|| {
                    ApiError::new(ErrorCode::BadClientId, format!("{CLIENT_ID_HEADER} is not a valid client id"))
                })?;
                Some(id)
            }
        };
        if let Err(spent) = self.budgets.charge(&who.name, client) {
            let (seconds, whose) = match spent {
                Spent::Key(s) => (s, format!("API key {:?}", who.name)),
                Spent::Client(s) => {
                    (s, format!("client {:?} of API key {:?}", client.unwrap_or("(unnamed)"), who.name))
                }
            };
            let mut e = ApiError::new(
                ErrorCode::RateLimited,
                format!("{whose} spent its request budget; retry in {seconds} s"),
            );
            e.retry_after = Some(seconds);
            return Err(e);
        }
        if let Some(store) = req.match_info().get("store") {
            who.may_use(store)?;
        }
        Ok(who)
    }
}

/// The header naming the client (a game server) a request comes from, for
/// its budget within the API key.
pub(crate) const CLIENT_ID_HEADER: &str = "Datastorer-Client-Id";

/// The answer for a store that strict stores do not know.
pub(crate) fn undeclared(name: &str) -> ApiError {
    ApiError::new(ErrorCode::UnknownStore, format!("store {name:?} is not declared (strict stores)"))
}
