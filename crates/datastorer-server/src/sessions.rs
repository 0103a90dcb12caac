//! Client sessions: which HTTP client holds which key, under which lease
//! token, and how recently ended sessions ended. One client session is one
//! engine session: every new client session is a new engine session with a
//! new fencing epoch, so a client never inherits another client's unsaved
//! state. Tokens are this server's tag and boot plus 128 random bits, bound
//! to one store, key and epoch, and compared in constant time.
//!
//! Must not: touch storage except through engine sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// tokio's clock, so a test can pause it and let a client lease lapse in no time.
use tokio::time::Instant;

use serde_json::{json, Value};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::auth::tokens_equal;
use super::change_log::{ChangeLog, HolderNotice};
use super::ending::{now_ms, EndReason};
use super::error::{ApiError, ErrorCode};
use datastorer::{AcquirePolicy, CloseReason, Error, Priority, Session, Store};

type Key = (String, String);

/// A store and key borrowed from a request, to look an entry up without
/// building an owned [`Key`]: hashes as the tuple of `String`s does.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// The table of live client sessions.
type LeaseMap = hashbrown::HashMap<Key, ClientLease, std::hash::RandomState>;

struct ClientLease {
    token: String,
    epoch: u64,
    holder: String,
    /// The API key the session was opened with: only requests under the
    /// same key may resume it or renew it by client id.
    opened_by: String,
    expires_at: Instant,
    session: Session<Value>,
    /// Another client asked for the key and granted this holder until then
    /// to release it itself.
    handoff: Option<Handoff>,
    /// Messages wait in the key's inbox that the holder has not read.
    messages_waiting: bool,
}

/// What an open decides on about the current holder, copied out of the
/// map so the entry itself stays where the holder's requests find it.
struct HolderView {
    token: String,
    epoch: u64,
    holder: String,
    opened_by: String,
    expires_at: Instant,
    session: Session<Value>,
}

impl HolderView {
    fn of(l: &ClientLease) -> Self {
        Self {
            token: l.token.clone(),
            epoch: l.epoch,
            holder: l.holder.clone(),
            opened_by: l.opened_by.clone(),
            expires_at: l.expires_at,
            session: l.session.clone(),
        }
    }
}

/// A hand-off another client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handoff {
    /// Who asked.
    pub(crate) by: String,
    /// When the server saves and hands over unless the holder released
    /// first (ms since the Unix epoch).
    pub(crate) deadline_ms: u64,
    deadline: Instant,
}

impl ClientLease {
    /// Extends the client lease by `ttl` from now; answers the grant the
    /// client is told.
    fn renew(&mut self, ttl: Duration, resumed: bool) -> LeaseGrant {
        self.expires_at = Instant::now() + ttl;
        LeaseGrant {
            token: self.token.clone(),
            epoch: self.epoch,
            expires_at_ms: wall_ms_in(ttl),
            holder: self.holder.clone(),
            resumed,
            handoff: self.handoff.clone(),
            messages_waiting: self.messages_waiting,
        }
    }
}

/// What a client learns when its session opens or renews.
#[derive(Debug, Clone)]
pub(crate) struct LeaseGrant {
    /// The token to send as `Lease-Token`.
    pub(crate) token: String,
    /// Fencing epoch of this session.
    pub(crate) epoch: u64,
    /// When the client lease lapses without a request (ms since the Unix epoch).
    pub(crate) expires_at_ms: u64,
    /// The client holding the session (its `client_id`, or its API key's name).
    pub(crate) holder: String,
    /// The open found this client's own live session and answered it (a
    /// retried open after a lost answer) instead of a new one.
    pub(crate) resumed: bool,
    /// Another client asked for the key: release it before the deadline.
    pub(crate) handoff: Option<Handoff>,
    /// Messages wait for the holder (read them with `GET …/session/messages`).
    pub(crate) messages_waiting: bool,
}

/// Who opens a session.
#[derive(Debug, Clone)]
pub(crate) struct Claimant {
    /// The holder's name: its `client_id`, or its API key's name.
    pub(crate) holder: String,
    /// The API key's name.
    pub(crate) api_key: String,
    /// Whether an open by the same holder under the same key resumes its
    /// live session (only clients that name themselves can).
    pub(crate) resumable: bool,
    /// With `request_release`: how long the holder may take to release
    /// the key itself (with its final changes) before the server saves and
    /// hands over. Zero: at once.
    pub(crate) grace: Duration,
}

/// How an ending session treats unsaved changes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending {
    /// Save, then end.
    Release(Priority),
    /// Drop unsaved changes, then end.
    Close,
}

/// A session that ended, kept so its holder learns why.
#[derive(Debug, Clone)]
struct Ended {
    key: Key,
    reason: EndReason,
    taken_over_by: Option<String>,
    /// `None` when not known (a session of an earlier server process).
    ended_at_ms: Option<u64>,
}

/// How many ended sessions are remembered (oldest forgotten first): enough
/// for every client of a busy server to come back once, bounded in memory.
const ENDED_KEPT: usize = 10_000;

#[derive(Default)]
struct EndedLog {
    by_token: HashMap<String, Ended>,
    order: VecDeque<String>,
}

/// Every client session of this server.
pub(crate) struct ClientSessions {
    map: Mutex<LeaseMap>,
    locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    released: Notify,
    ttl: Duration,
    ended: Mutex<EndedLog>,
    /// Sessions ended because their client stopped renewing.
    lapses: std::sync::atomic::AtomicU64,
    /// This server's owner tag (stable across restarts when the owner id is).
    tag: String,
    /// Random per start: a token of this tag and another boot is from
    /// before a restart.
    boot: String,
    /// Where holder notices go (the change log, read by polls).
    feed: Arc<ChangeLog>,
}

fn wall_ms_in(d: Duration) -> u64 {
    now_ms() + d.as_millis() as u64
}

fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::new(ErrorCode::Internal, format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Token layout: 8 hex of the owner tag, 8 of the boot, 32 random.
const TAG_LEN: usize = 8;
const TOKEN_LEN: usize = 48;

fn ended_error(e: &Ended) -> ApiError {
    let by = e.taken_over_by.as_deref().map(|b| format!(", taken over by {b:?}")).unwrap_or_default();
    let mut err = ApiError::new(
        ErrorCode::SessionEnded,
        match e.reason {
            EndReason::ServerRestarted => {
                "the session ended: the server restarted since it was opened (it shut down or \
                crashed, and its sessions ended with it); open a new session"
                    .to_owned()
            }
            reason => format!("the session ended: {}{by}; open a new session", reason.as_str()),
        },
    );
    err.details =
        Some(json!({ "reason": e.reason.as_str(), "taken_over_by": e.taken_over_by, "ended_at_ms": e.ended_at_ms }));
    err
}

/// The holder could not save, so the key was not handed over: its session
/// is as it was.
fn holder_could_not_save(holder: &str, e: &Error) -> ApiError {
    let mut err = ApiError::new(
        ErrorCode::HolderCouldNotSave,
        format!("the key's holder {holder:?} could not save its changes, so the key was not handed over: {e}"),
    );
    err.details = Some(json!({ "holder": holder, "error": e.to_string() }));
    err
}

fn held(holder: &str, expires_in: Duration) -> ApiError {
    let mut e = ApiError::new(ErrorCode::LeaseHeld, format!("the key is held by {holder:?}"));
    e.details = Some(json!({ "holder": holder, "expires_at_ms": wall_ms_in(expires_in) }));
    e
}

fn bad_token() -> ApiError {
    ApiError::new(ErrorCode::InvalidLeaseToken,
        "no session with this lease token on this key: wrong, stale (the session ended or was taken over) or for another key",
    )
}

impl ClientSessions {
    /// An empty set for the server running as `owner`; sessions lapse
    /// after `ttl` without a request.
    pub(crate) fn new(ttl: Duration, owner: &str, feed: Arc<ChangeLog>) -> Self {
        let tag = format!("{:08x}", seahash::hash(owner.as_bytes()) as u32);
        let boot = random_hex(4).unwrap_or_else(|_| format!("{:08x}", now_ms() as u32));
        Self {
            map: Mutex::new(LeaseMap::default()),
            locks: Mutex::new(HashMap::new()),
            released: Notify::new(),
            ttl,
            ended: Mutex::new(EndedLog::default()),
            lapses: Default::default(),
            tag,
            boot,
            feed,
        }
    }

    fn new_token(&self) -> Result<String, ApiError> {
        Ok(format!("{}{}{}", self.tag, self.boot, random_hex(16)?))
    }

    /// Client sessions that ended because their client stopped renewing.
    pub(crate) fn lapses(&self) -> u64 {
        self.lapses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Remembers that the session behind `token` on `key` ended.
    /// A session its holder did not end itself is announced to the holder
    /// (`session_ended` in the feed, filtered by its client id).
    fn record_end(&self, token: &str, holder: Client<'_>, key: &Key, reason: EndReason, taken_over_by: Option<String>) {
        if reason == EndReason::Expired {
            self.lapses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        debug!(target: "datastorer::server", store = %key.0, key = %key.1, reason = reason.as_str(), "client session ended");
        let mut log = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let ended =
            Ended { key: key.clone(), reason, taken_over_by: taken_over_by.clone(), ended_at_ms: Some(now_ms()) };
        let first = log.by_token.insert(token.to_owned(), ended).is_none();
        if first {
            log.order.push_back(token.to_owned());
        }
        while log.order.len() > ENDED_KEPT {
            if let Some(old) = log.order.pop_front() {
                log.by_token.remove(&old);
            }
        }
        drop(log);
        if first && !matches!(reason, EndReason::Released | EndReason::Closed) {
            let notice = HolderNotice::SessionEnded { reason: reason.as_str(), by: taken_over_by };
            self.feed.notify_holder(&key.0, &key.1, holder.id, holder.api_key, holder.epoch, notice);
        }
    }

    /// Why the session behind `token` on `key` ended, if this server knows.
    fn ended(&self, key: &Key, token: &str) -> Option<Ended> {
        let log = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = log.by_token.get(token).filter(|e| e.key == *key) {
            return Some(e.clone());
        }
        drop(log);
        // Ours, from before a restart: it ended with that server process,
        // whether it shut down or was killed.
        let from_earlier_boot = token.len() == TOKEN_LEN
            && token.is_char_boundary(TAG_LEN * 2)
            && token[..TAG_LEN] == *self.tag
            && token[TAG_LEN..TAG_LEN * 2] != *self.boot;
        from_earlier_boot.then(|| Ended {
            key: key.clone(),
            reason: EndReason::ServerRestarted,
            taken_over_by: None,
            ended_at_ms: None,
        })
    }

    fn map(&self) -> MutexGuard<'_, LeaseMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open client sessions.
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    fn key_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.clone()).or_default().clone()
    }

    /// Opens a client session on `key`, applying `policy` against another
    /// client holding it (and, through the engine, against other servers).
    /// Answers the grant, the session, and how long the call waited.
    ///
    /// The previous holder's engine session always ends before the new one
    /// opens; if it cannot end (its changes cannot be saved), the key is
    /// not handed over and the holder's session stays as it was.
    pub(crate) async fn acquire(
        &self,
        store: &Store<Value>,
        key: &str,
        who: &Claimant,
        user_ids: Vec<String>,
        policy: AcquirePolicy,
    ) -> Result<(LeaseGrant, Session<Value>, Option<Duration>), ApiError> {
        let (holder, opened_by, resumable) = (who.holder.as_str(), who.api_key.as_str(), who.resumable);
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
            // The holder's entry stays in the map while this open decides:
            // its own requests (which do not take the key lock) keep being
            // served until its session has really ended, and only then is
            // it removed and told why.
            let current = self.map().get(&k).map(HolderView::of);
            if let Some(cur) = current {
                let engine_end = cur.session.close_reason();
                let live = cur.expires_at > Instant::now() && engine_end.is_none();
                if let Some(reason) = engine_end {
                    // Ended under the client (a steal elsewhere, a forced delete).
                    self.forget(&k, &cur, EndReason::of(&reason), None);
                } else if !live {
                    info!(target: "datastorer::server", store = %k.0, key = %k.1, holder = %cur.holder, "client lease lapsed: saving its session");
                    if let Err(e) = cur.session.release_as(Priority::Normal, CloseReason::Expired).await {
                        return Err(self.kept(&k, &cur.holder, e));
                    }
                    self.forget(&k, &cur, EndReason::Expired, Some(holder.to_owned()));
                } else if resumable && cur.holder == holder && cur.opened_by == opened_by {
                    // The same client asked again (its first answer was
                    // lost): it gets its session back, not a 409 from a
                    // lock it holds itself. Its client lease renews. What
                    // this server remembers may be stale (another server
                    // may have deleted or taken the key, and its notice not
                    // arrived yet): the record is read back first, and a
                    // session found gone ends here and is opened afresh.
                    if let Err(e) = cur.session.check_lease().await {
                        if cur.session.close_reason().is_some() {
                            continue;
                        }
                        // Storage could not be read: say so; nothing changed.
                        return Err(ApiError::from(e));
                    }
                    for id in user_ids.iter().cloned() {
                        cur.session.add_user_id(id).await.map_err(ApiError::from)?;
                    }
                    let grant =
                        self.map().get_mut(&k).filter(|l| l.token == cur.token).map(|l| l.renew(self.ttl, true));
                    drop(guard);
                    return match grant {
                        Some(grant) => Ok((grant, cur.session, None)),
                        // Ended meanwhile under the client (an engine close is
                        // noticed by the next request): open afresh.
                        None => continue,
                    };
                } else {
                    match policy {
                        AcquirePolicy::Fail => {
                            return Err(held(&cur.holder, cur.expires_at - Instant::now()));
                        }
                        AcquirePolicy::Steal => {
                            cur.session.close_as(CloseReason::Stolen).await.map_err(ApiError::from)?;
                            self.forget(&k, &cur, EndReason::Stolen, Some(holder.to_owned()));
                        }
                        AcquirePolicy::RequestRelease { .. } if self.grants_grace(&k, who, deadline) => {
                            // The holder has until the hand-off deadline to
                            // release with its last change; its release (or
                            // the deadline) wakes this requester.
                            let grace_ends = self.map().get(&k).and_then(|l| l.handoff.as_ref().map(|h| h.deadline));
                            let notified = self.released.notified();
                            drop(guard);
                            let _ = tokio::time::timeout_at(grace_ends.unwrap_or(started), notified).await;
                            waited = Some(started.elapsed());
                            continue;
                        }
                        AcquirePolicy::RequestRelease { .. } => {
                            if let Err(e) =
                                cur.session.release_as(Priority::Emergency, CloseReason::ReleaseRequested).await
                            {
                                return Err(self.kept(&k, &cur.holder, e));
                            }
                            self.forget(&k, &cur, EndReason::ReleaseRequested, Some(holder.to_owned()));
                        }
                        AcquirePolicy::Wait { .. } => {
                            let wake = cur.expires_at.min(deadline.unwrap_or(cur.expires_at));
                            let remaining = cur.expires_at.saturating_duration_since(Instant::now());
                            let notified = self.released.notified();
                            drop(guard);
                            if Instant::now() >= deadline.unwrap_or(started) {
                                return Err(held(&cur.holder, remaining));
                            }
                            let _ = tokio::time::timeout_at(wake, notified).await;
                            waited = Some(started.elapsed());
                            continue;
                        }
                    }
                }
                self.released.notify_waiters();
            }
            // Every client session is a fresh engine session (a new epoch):
            // an engine session still loaded here belongs to no client and
            // may hold changes nobody could save, which a new client must
            // never inherit.
            if store.is_loaded(key) {
                return Err(ApiError::new(
                    ErrorCode::HolderCouldNotSave,
                    "an earlier session on this key is still ending (its changes could not be saved yet); try again",
                ));
            }
            let session = store.open(key).user_ids(user_ids.clone()).policy(policy).await.map_err(ApiError::from)?;
            let lease = session.lease().await.map_err(ApiError::from)?;
            let token = self.new_token()?;
            let grant = LeaseGrant {
                token: token.clone(),
                epoch: lease.epoch,
                expires_at_ms: wall_ms_in(self.ttl),
                holder: holder.to_owned(),
                resumed: false,
                handoff: None,
                messages_waiting: false,
            };
            self.map().insert(
                k,
                ClientLease {
                    token,
                    epoch: lease.epoch,
                    holder: holder.to_owned(),
                    opened_by: opened_by.to_owned(),
                    expires_at: Instant::now() + self.ttl,
                    session: session.clone(),
                    handoff: None,
                    messages_waiting: false,
                },
            );
            drop(guard);
            return Ok((grant, session, waited));
        }
    }

    /// Whether the holder `cur` is (still) within a hand-off grace period:
    /// the first request that grants one starts it (bounded by the
    /// requester's own timeout) and tells the holder; later requesters
    /// wait for the same deadline rather than extending it.
    fn grants_grace(&self, k: &Key, who: &Claimant, deadline: Option<Instant>) -> bool {
        let now = Instant::now();
        let mut map = self.map();
        let Some(cur) = map.get_mut(k) else { return false };
        if let Some(h) = &cur.handoff {
            return h.deadline > now;
        }
        let grace = who.grace.min(deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(now)));
        if grace.is_zero() {
            return false;
        }
        let handoff = Handoff { by: who.holder.clone(), deadline_ms: wall_ms_in(grace), deadline: now + grace };
        info!(target: "datastorer::server", store = %k.0, key = %k.1, holder = %cur.holder, by = %who.holder,
            grace_ms = grace.as_millis() as u64, "hand-off requested: the holder may release first");
        let notice = HolderNotice::HandoffRequested { by: handoff.by.clone(), deadline_ms: handoff.deadline_ms };
        let (holder, api_key, epoch) = (cur.holder.clone(), cur.opened_by.clone(), cur.epoch);
        cur.handoff = Some(handoff);
        drop(map);
        self.feed.notify_holder(&k.0, &k.1, &holder, &api_key, epoch, notice);
        true
    }

    /// A holder whose session could not end keeps it, untouched (it never
    /// left the map): answers what the requester is told.
    fn kept(&self, k: &Key, holder: &str, e: Error) -> ApiError {
        warn!(target: "datastorer::server", store = %k.0, key = %k.1, holder = %holder, error = %e,
            "the holder's session could not be saved: the key stays with it");
        holder_could_not_save(holder, &e)
    }

    /// The holder's session has ended: it leaves the map (if it is still
    /// the one `cur` saw) and its holder is told why, in that order under
    /// the map's lock, so a request finds it in one place or the other.
    fn forget(&self, k: &Key, cur: &HolderView, reason: EndReason, taken_over_by: Option<String>) {
        let mut map = self.map();
        if map.get(k).is_some_and(|l| l.token == cur.token) {
            map.remove(k);
        }
        let client = Client { id: &cur.holder, api_key: &cur.opened_by, epoch: cur.epoch };
        self.record_end(&cur.token, client, k, reason, taken_over_by);
    }

    /// The client holding `key`, and when its client lease lapses (ms since
    /// the Unix epoch), if a client does.
    pub(crate) fn holder(&self, store: &str, key: &str) -> Option<(String, u64)> {
        let map = self.map();
        let cur = map.get(&(store.to_owned(), key.to_owned()))?;
        Some((cur.holder.clone(), wall_ms_in(cur.expires_at.saturating_duration_since(Instant::now()))))
    }

    /// The session behind `token` on (`store`, `key`), renewing its client
    /// lease. A wrong or foreign token is refused (`invalid_lease_token`);
    /// the token of a session that ended is answered with why
    /// (`410 session_ended`).
    pub(crate) fn check(&self, store: &str, key: &str, token: &str) -> Result<(Session<Value>, LeaseGrant), ApiError> {
        let mut map = self.map();
        let current = map.get_mut(&KeyRef(store, key)).filter(|cur| tokens_equal(&cur.token, token));
        let Some(cur) = current else {
            drop(map);
            let k: Key = (store.to_owned(), key.to_owned());
            return Err(self.ended(&k, token).map_or_else(bad_token, |e| ended_error(&e)));
        };
        if let Some(reason) = cur.session.close_reason() {
            let k: Key = (store.to_owned(), key.to_owned());
            let cur = map.remove(&k);
            drop(map);
            self.released.notify_waiters();
            if let Some(cur) = cur {
                self.record_end(&cur.token, Client::of(&cur), &k, EndReason::of(&reason), None);
            }
            return Err(self.ended(&k, token).map_or_else(bad_token, |e| ended_error(&e)));
        }
        if cur.expires_at <= Instant::now() {
            // The sweeper saves it; the client lost it.
            let k: Key = (store.to_owned(), key.to_owned());
            let e = Ended { key: k, reason: EndReason::Expired, taken_over_by: None, ended_at_ms: Some(now_ms()) };
            return Err(ended_error(&e));
        }
        let grant = cur.renew(self.ttl, false);
        Ok((cur.session.clone(), grant))
    }

    /// Records whether messages wait for the client holding `store`/`key`
    /// (a client of this server, if any). Answers the holder when it was
    /// not told yet, so it hears it once in its feed.
    /// Answers the holder's client id, API key and epoch when the news is new.
    pub(crate) fn set_messages_waiting(&self, store: &str, key: &str, waiting: bool) -> Option<(String, String, u64)> {
        let mut map = self.map();
        let cur = map.get_mut(&KeyRef(store, key))?;
        let news = waiting && !cur.messages_waiting;
        cur.messages_waiting = waiting;
        news.then(|| (cur.holder.clone(), cur.opened_by.clone(), cur.epoch))
    }

    /// The API keys under which `client` holds live sessions here.
    pub(crate) fn client_api_keys(&self, client: &str) -> Vec<String> {
        let mut keys: Vec<String> =
            self.map().values().filter(|l| l.holder == client).map(|l| l.opened_by.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Renews every live client lease held by `client` and opened under
    /// the API key `opened_by` (one request instead of one per key, for a
    /// game server holding a hundred players). Answers each renewed
    /// session's store, key and grant, in no particular order.
    pub(crate) fn renew_client(&self, client: &str, opened_by: &str) -> Vec<(Key, LeaseGrant)> {
        let now = Instant::now();
        let mut map = self.map();
        map.iter_mut()
            .filter(|(_, l)| l.holder == client && l.opened_by == opened_by)
            .filter(|(_, l)| l.expires_at > now && l.session.close_reason().is_none())
            .map(|(k, l)| (k.clone(), l.renew(self.ttl, false)))
            .collect()
    }

    /// Ends the session behind `token`.
    pub(crate) async fn end(&self, store: &str, key: &str, token: &str, ending: Ending) -> Result<u64, ApiError> {
        let k: Key = (store.to_owned(), key.to_owned());
        let lock = self.key_lock(&k);
        let _guard = lock.lock().await;
        let (session, grant) = self.check(store, key, token)?;
        let result = match ending {
            Ending::Release(p) => session.release(p).await,
            Ending::Close => session.close().await,
        };
        match result {
            Ok(outcome) => {
                let reason = match ending {
                    Ending::Release(_) => EndReason::Released,
                    Ending::Close => EndReason::Closed,
                };
                // Recorded before the session leaves the map: no request in
                // between finds neither.
                let opened_by = self.map().get(&k).map(|l| l.opened_by.clone()).unwrap_or_default();
                let client = Client { id: &grant.holder, api_key: &opened_by, epoch: grant.epoch };
                self.record_end(token, client, &k, reason, None);
                self.map().remove(&k);
                self.released.notify_waiters();
                Ok(outcome.revision)
            }
            // A failed release keeps the session: the client may retry.
            Err(e) => Err(ApiError::from(e)),
        }
    }

    /// Saves and ends every client session whose lease lapsed (clients that
    /// vanished). Answers how many ended. A session that cannot be saved
    /// stays (and is tried again next time): it is never dropped unsaved.
    pub(crate) async fn sweep(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<(Key, ClientLease)> = {
            let mut map = self.map();
            let keys: Vec<Key> = map
                .iter()
                .filter(|(_, l)| l.expires_at <= now || l.session.close_reason().is_some())
                .map(|(k, _)| k.clone())
                .collect();
            let expired: Vec<(Key, ClientLease)> =
                keys.into_iter().filter_map(|k| map.remove(&k).map(|l| (k, l))).collect();
            // Recorded while the map is still locked: a request never finds
            // its session neither in the map nor among the ended (one put
            // back below is found in the map first).
            for (k, lease) in &expired {
                let reason = lease.session.close_reason().map_or(EndReason::Expired, |r| EndReason::of(&r));
                self.record_end(&lease.token, Client::of(lease), k, reason, None);
            }
            expired
        };
        let mut n = 0;
        for (k, lease) in expired {
            if lease.session.close_reason().is_some() {
                n += 1;
                continue;
            }
            info!(target: "datastorer::server", store = %k.0, key = %k.1, holder = %lease.holder, "client lease lapsed: saving its session");
            match lease.session.release_as(Priority::Normal, CloseReason::Expired).await {
                Ok(_) => n += 1,
                Err(Error::SessionClosed { reason, .. }) => {
                    self.record_end(&lease.token, Client::of(&lease), &k, EndReason::of(&reason), None);
                    n += 1;
                }
                Err(e) => {
                    warn!(target: "datastorer::server", store = %k.0, key = %k.1, holder = %lease.holder, error = %e,
                        "the lapsed session could not be saved; keeping it and trying again");
                    let mut map = self.map();
                    map.entry(k).or_insert(lease);
                }
            }
        }
        if n > 0 {
            self.released.notify_waiters();
        }
        n
    }
}

/// A client as the feed knows it: its `client_id` and the API key it
/// opened its sessions under (its feed is readable only under that key).
#[derive(Clone, Copy)]
struct Client<'a> {
    id: &'a str,
    api_key: &'a str,
    /// The fencing epoch of the session that ended.
    epoch: u64,
}

impl<'a> Client<'a> {
    fn of(lease: &'a ClientLease) -> Self {
        Client { id: &lease.holder, api_key: &lease.opened_by, epoch: lease.epoch }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_store_and_key_find_the_owned_entry_and_only_it() {
        let mut map: hashbrown::HashMap<Key, u32, std::hash::RandomState> = Default::default();
        let names = [("ab", "c"), ("a", "bc"), ("", "abc"), ("abc", ""), ("s", "k\u{10FFFF}"), ("s\u{ff}", "k")];
        for (i, (s, k)) in names.iter().enumerate() {
            map.insert((s.to_string(), k.to_string()), i as u32);
        }
        for (i, (s, k)) in names.iter().enumerate() {
            assert_eq!(map.get(&KeyRef(s, k)), Some(&(i as u32)), "{s:?}/{k:?}");
        }
        assert_eq!(map.get(&KeyRef("a", "b")), None);
        assert_eq!(map.get(&KeyRef("abc", "c")), None);
    }
}
