//! Client sessions: which HTTP client holds which key, under which lease
//! token. One client session is one engine session (so every new client
//! session gets a new fencing epoch); tokens are 128 random bits, bound to
//! one store, key and epoch, and compared in constant time.
//!
//! Must not: touch storage except through engine sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::auth::tokens_equal;
use super::error::ApiError;
use crate::{AcquirePolicy, Error, Priority, Session, Store};

type Key = (String, String);

struct ClientLease {
    token: String,
    epoch: u64,
    holder: String,
    expires_at: Instant,
    session: Session<Value>,
}

/// What a client learns when its session opens or renews.
#[derive(Debug, Clone)]
pub struct LeaseGrant {
    /// The token to send as `Lease-Token`.
    pub token: String,
    /// Fencing epoch of this session.
    pub epoch: u64,
    /// When the client lease lapses without a request (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// How an ending session treats unsaved changes.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// Save, then end.
    Release(Priority),
    /// Drop unsaved changes, then end.
    Close,
}

/// Every client session of this server.
pub struct ClientSessions {
    map: Mutex<HashMap<Key, ClientLease>>,
    locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    released: Notify,
    ttl: Duration,
}

fn wall_ms_in(d: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    now + d.as_millis() as u64
}

fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        ApiError::new(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("no randomness: {e}"))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn held(holder: &str, expires_in: Duration) -> ApiError {
    let mut e = ApiError::conflict("lease_held", format!("the key is held by {holder:?}"));
    e.details = Some(json!({ "holder": holder, "expires_at_ms": wall_ms_in(expires_in) }));
    e
}

fn bad_token() -> ApiError {
    ApiError::conflict(
        "invalid_lease_token",
        "no session with this lease token on this key: wrong, stale (the session ended or was taken over) or for another key",
    )
}

impl ClientSessions {
    /// An empty set; sessions lapse after `ttl` without a request.
    pub fn new(ttl: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), locks: Mutex::new(HashMap::new()), released: Notify::new(), ttl }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Key, ClientLease>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open client sessions.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.clone()).or_default().clone()
    }

    /// Opens a client session on `key`, applying `policy` against another
    /// client holding it (and, through the engine, against other servers).
    /// Answers the grant, the session, and how long the call waited.
    pub async fn acquire(
        &self,
        store: &Store<Value>,
        key: &str,
        holder: &str,
        user_ids: Vec<String>,
        policy: AcquirePolicy,
    ) -> Result<(LeaseGrant, Session<Value>, Option<Duration>), ApiError> {
        let k: Key = (store.name().to_owned(), key.to_owned());
        let started = Instant::now();
        let deadline = match policy {
            AcquirePolicy::Wait { timeout } | AcquirePolicy::RequestRelease { timeout } => Some(started + timeout),
            _ => None,
        };
        let mut waited = None;
        loop {
            let lock = self.key_lock(&k);
            let guard = lock.lock().await;
            let current = self.map().remove(&k);
            if let Some(cur) = current {
                let live = cur.expires_at > Instant::now() && cur.session.close_reason().is_none();
                if !live {
                    debug!(target: "datastorer::server", store = %k.0, key = %k.1, holder = %cur.holder, "client lease lapsed: saving");
                    end_engine_session(&cur.session, Ending::Release(Priority::Normal)).await;
                } else {
                    match policy {
                        AcquirePolicy::Fail => {
                            let e = held(&cur.holder, cur.expires_at - Instant::now());
                            self.map().insert(k.clone(), cur);
                            return Err(e);
                        }
                        AcquirePolicy::Steal => end_engine_session(&cur.session, Ending::Close).await,
                        AcquirePolicy::RequestRelease { .. } => {
                            cur.session.release(Priority::Emergency).await.map_err(ApiError::from)?;
                        }
                        AcquirePolicy::Wait { .. } => {
                            let wake = cur.expires_at.min(deadline.unwrap_or(cur.expires_at));
                            let holder = cur.holder.clone();
                            let remaining = cur.expires_at.saturating_duration_since(Instant::now());
                            let notified = self.released.notified();
                            self.map().insert(k.clone(), cur);
                            drop(guard);
                            if Instant::now() >= deadline.unwrap_or(started) {
                                return Err(held(&holder, remaining));
                            }
                            let _ = tokio::time::timeout_at(wake.into(), notified).await;
                            waited = Some(started.elapsed());
                            continue;
                        }
                    }
                }
                self.released.notify_waiters();
            }
            let session = store.open(key).user_ids(user_ids.clone()).policy(policy).await.map_err(ApiError::from)?;
            let lease = session.lease().await.map_err(ApiError::from)?;
            let token = new_token()?;
            let grant = LeaseGrant { token: token.clone(), epoch: lease.epoch, expires_at_ms: wall_ms_in(self.ttl) };
            self.map().insert(
                k,
                ClientLease {
                    token,
                    epoch: lease.epoch,
                    holder: holder.to_owned(),
                    expires_at: Instant::now() + self.ttl,
                    session: session.clone(),
                },
            );
            drop(guard);
            return Ok((grant, session, waited));
        }
    }

    /// The session behind `token` on (`store`, `key`), renewing its client
    /// lease. A wrong, stale or foreign token is refused.
    pub fn check(&self, store: &str, key: &str, token: &str) -> Result<(Session<Value>, LeaseGrant), ApiError> {
        let k: Key = (store.to_owned(), key.to_owned());
        let mut map = self.map();
        let Some(cur) = map.get_mut(&k) else { return Err(bad_token()) };
        if !tokens_equal(&cur.token, token) {
            return Err(bad_token());
        }
        if let Some(reason) = cur.session.close_reason() {
            map.remove(&k);
            self.released.notify_waiters();
            let mut e = ApiError::conflict("session_closed", format!("the session ended: {reason}"));
            e.details = Some(json!({ "reason": reason.to_string() }));
            return Err(e);
        }
        if cur.expires_at <= Instant::now() {
            // The sweeper saves it; the client lost it.
            return Err(ApiError::conflict("lease_expired", "the client lease lapsed; open a new session"));
        }
        cur.expires_at = Instant::now() + self.ttl;
        let grant = LeaseGrant { token: cur.token.clone(), epoch: cur.epoch, expires_at_ms: wall_ms_in(self.ttl) };
        Ok((cur.session.clone(), grant))
    }

    /// Ends the session behind `token`.
    pub async fn end(&self, store: &str, key: &str, token: &str, ending: Ending) -> Result<u64, ApiError> {
        let k: Key = (store.to_owned(), key.to_owned());
        let lock = self.key_lock(&k);
        let _guard = lock.lock().await;
        let (session, _) = self.check(store, key, token)?;
        let result = match ending {
            Ending::Release(p) => session.release(p).await,
            Ending::Close => session.close().await,
        };
        match result {
            Ok(outcome) => {
                self.map().remove(&k);
                self.released.notify_waiters();
                Ok(outcome.revision)
            }
            // A failed release keeps the session: the client may retry.
            Err(e) => Err(ApiError::from(e)),
        }
    }

    /// Saves and ends every client session whose lease lapsed (clients that
    /// vanished). Answers how many.
    pub async fn sweep(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<(Key, ClientLease)> = {
            let mut map = self.map();
            let keys: Vec<Key> = map
                .iter()
                .filter(|(_, l)| l.expires_at <= now || l.session.close_reason().is_some())
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| map.remove(&k).map(|l| (k, l))).collect()
        };
        let n = expired.len();
        for ((store, key), lease) in expired {
            debug!(target: "datastorer::server", %store, %key, holder = %lease.holder, "client vanished: saving its session");
            end_engine_session(&lease.session, Ending::Release(Priority::Normal)).await;
        }
        if n > 0 {
            self.released.notify_waiters();
        }
        n
    }
}

async fn end_engine_session(session: &Session<Value>, ending: Ending) {
    if session.close_reason().is_some() {
        return;
    }
    let result = match ending {
        Ending::Release(p) => session.release(p).await,
        Ending::Close => session.close().await,
    };
    if let Err(e) = result {
        if !matches!(e, Error::SessionClosed { .. }) {
            warn!(target: "datastorer::server", store = session.store(), key = session.key(), error = %e, "ending a client session failed");
        }
    }
}
