//! Roblox Open Cloud's data-store API on datastorer, so that a tool whose
//! host alone is redirected (scripts, Discord bots, editors, the
//! `rblx-open-cloud` client) works unchanged: the v1 routes
//! (`/datastores/v1/universes/{u}/standard-datastores/…`, names in the
//! query) in `v1`, the v2 routes (`/cloud/v2/universes/{u}/data-stores/…`)
//! in `v2`, and here what both share: the mapping of universe, data store
//! and scope to a store (the same as the Luau DataStoreService facade's, so
//! both see the same data), the reads and compare-and-set writes, Roblox's
//! wire values (`roblox-entry-*` headers, RFC 3339 times, `users/123`) and
//! its error shapes.
//!
//! Beyond Roblox: a write to a key a session holds is refused (`409
//! ABORTED`, nothing written) instead of being overwritten by the holder's
//! next autosave.
//!
//! Owns: those routes and that mapping. Must not: write except through the
//! engine's one-shot paths (`update_unleased_record`, `delete_if`), which
//! take and give back the lease like any session.

mod v1;
mod v2;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use md5::Digest as _;
use serde_json::{json, Value};

use crate::auth::{Identity, Role};
use crate::error::{ApiError, ErrorCode};
use crate::roblox_names::{escape, unescape};
use crate::state::AppState;
use datastorer::storage::{Record, RecordHeader};
use datastorer::{Expect, Store};

/// Registers both versions' routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    v1::configure(cfg);
    v2::configure(cfg);
}

/// An error in Open Cloud's terms: its status, its gRPC-style code, the
/// message, and for v1 the `datastoreErrorCode` clients switch on.
#[derive(Debug)]
pub(crate) struct OcError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: &'static str,
}

impl OcError {
    fn new(status: StatusCode, code: &'static str, detail: &'static str, message: impl Into<String>) -> Self {
        OcError { status, code, message: message.into(), detail }
    }

    fn invalid(detail: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", detail, message)
    }

    fn not_found(detail: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", detail, message)
    }

    /// v1's shape: `{error, message, errorDetails: [{errorDetailType,
    /// datastoreErrorCode}]}`; an unknown key, the gateway's.
    fn v1(&self) -> HttpResponse {
        if self.status == StatusCode::UNAUTHORIZED {
            return self.gateway();
        }
        HttpResponse::build(self.status).json(json!({
            "error": self.code,
            "message": self.message,
            "errorDetails": [{ "errorDetailType": "DatastoreErrorInfo", "datastoreErrorCode": self.detail }],
        }))
    }

    /// v2's shape: `{code, message, details}`.
    fn v2(&self) -> HttpResponse {
        if self.status == StatusCode::UNAUTHORIZED {
            return self.gateway();
        }
        HttpResponse::build(self.status).json(json!({ "code": self.code, "message": self.message, "details": [] }))
    }

    fn gateway(&self) -> HttpResponse {
        HttpResponse::Unauthorized().json(json!({ "errors": [{ "code": 0, "message": "Invalid API Key" }] }))
    }
}

impl From<ApiError> for OcError {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        let (code, detail) = match (status.as_u16(), e.code) {
            (_, ErrorCode::LeaseHeld) => ("ABORTED", "KeyLocked"),
            (400, _) => ("INVALID_ARGUMENT", "InvalidArgument"),
            (401, _) => ("UNAUTHENTICATED", "Unauthorized"),
            (403, _) => ("PERMISSION_DENIED", "Forbidden"),
            (404, _) => ("NOT_FOUND", "NotFound"),
            (409, _) => ("ABORTED", "Conflict"),
            (412, _) => ("FAILED_PRECONDITION", "PreconditionFailed"),
            (413, _) => ("INVALID_ARGUMENT", "ContentTooBig"),
            (429, _) => ("RESOURCE_EXHAUSTED", "TooManyRequests"),
            (503, _) => ("UNAVAILABLE", "ServiceUnavailable"),
            _ => ("INTERNAL", "InternalError"),
        };
        OcError { status, code, message: e.message, detail }
    }
}

impl From<datastorer::Error> for OcError {
    fn from(e: datastorer::Error) -> Self {
        OcError::from(ApiError::from(e))
    }
}

type OcResult<T = HttpResponse> = std::result::Result<T, OcError>;

/// A universe's store prefix: the one configured for it, or none when no
/// universe is configured (one game per server).
fn prefix_of(state: &AppState, universe: &str) -> OcResult<String> {
    let universes = &state.config.open_cloud.universes;
    if universes.is_empty() {
        if universe.is_empty() || !universe.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OcError::invalid("InvalidUniverseId", "Invalid universe id."));
        }
        return Ok(String::new());
    }
    universes
        .get(universe)
        .cloned()
        .ok_or_else(|| OcError::not_found("UniverseNotFound", format!("Universe {universe} is not served here.")))
}

const MAX_NAME: usize = 50;

/// The store of data store `name` in `scope` under `prefix`.
fn store_name(prefix: &str, name: &str, scope: &str) -> OcResult<String> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(OcError::invalid("InvalidDataStoreName", "Invalid datastore name."));
    }
    if scope.is_empty() || scope.chars().count() > MAX_NAME {
        return Err(OcError::invalid("InvalidScope", "Invalid scope."));
    }
    let out = crate::roblox_names::store_name(prefix, name, scope);
    if out.len() > datastorer::MAX_STORE_NAME_LEN {
        return Err(OcError::invalid("InvalidDataStoreName", "The datastore name and scope are too long."));
    }
    Ok(out)
}

/// The (data store name, scope) of a store under `prefix`, if it is one.
fn data_store_of(prefix: &str, store: &str) -> Option<(String, String)> {
    let rest = store.strip_prefix(prefix)?;
    let (name, scope) = match rest.split_once(':') {
        Some((n, s)) => (n, s),
        None => (rest, "global"),
    };
    let scope = if scope == ".69nbox" { "inbox".to_owned() } else { unescape(scope)? };
    Some((unescape(name)?, scope))
}

fn check_key(key: &str) -> OcResult<()> {
    if key.is_empty() || key.chars().count() > MAX_NAME {
        return Err(OcError::invalid("InvalidEntryKey", "Invalid entry key."));
    }
    Ok(())
}

/// A resolved entry: its store (handle and name) and key.
struct Entry {
    store: Store<Value>,
    store_name: String,
    key: String,
}

/// Authenticates for `role`, checks the key may use the store, resolves it.
fn entry(state: &AppState, req: &HttpRequest, role: Role, store_name: String, key: String) -> OcResult<Entry> {
    if role >= Role::Write {
        state.admit()?;
    }
    let who: Identity = state.auth(req, role)?;
    who.may_use(&store_name)?;
    check_key(&key)?;
    let store = state.store(&store_name)?;
    datastorer::validate_key(&key).map_err(ApiError::from)?;
    Ok(Entry { store, store_name, key })
}

/// RFC 3339 (UTC, milliseconds) of a time in ms since the Unix epoch.
fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// ms since the Unix epoch of an RFC 3339 time.
fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `E.R` of a header.
fn version_text(h: RecordHeader) -> String {
    format!("{}.{}", h.epoch, h.revision)
}

fn parse_version(text: &str) -> Option<RecordHeader> {
    let (e, r) = text.split_once('.')?;
    Some(RecordHeader { epoch: e.parse().ok()?, revision: r.parse().ok()? })
}

fn md5_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

/// A record's user ids as Roblox's numbers where they are numbers.
fn user_ids_json(ids: &[String]) -> Value {
    Value::Array(ids.iter().map(|id| id.parse::<u64>().map_or_else(|_| json!(id), |n| json!(n))).collect())
}

/// The metadata of a record as a JSON object (`{}` when none).
fn attributes_of(rec: &Record) -> Value {
    match serde_json::from_slice::<Value>(&rec.metadata) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// User ids from Roblox's wire forms: a JSON array of numbers (or strings
/// of digits), or a comma-separated list (the published spec's form).
fn parse_user_ids(text: &str) -> OcResult<Vec<String>> {
    let text = text.trim();
    let items: Vec<Value> = if text.starts_with('[') {
        serde_json::from_str(text).map_err(|_| OcError::invalid("InvalidUserIds", "Invalid user ids."))?
    } else if text.is_empty() {
        Vec::new()
    } else {
        text.split(',').map(|s| json!(s.trim())).collect()
    };
    items
        .iter()
        .map(|v| {
            let id = match v {
                Value::Number(n) if n.is_u64() => n.to_string(),
                Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
                _ => return Err(OcError::invalid("InvalidUserIds", "User ids are whole numbers.")),
            };
            crate::validate::user_id_text(&id).map_err(|e| OcError::invalid("InvalidUserIds", e))?;
            Ok(id)
        })
        .collect()
}

/// Roblox's attributes: a JSON object, checked as datastorer metadata.
fn check_attributes(v: Value) -> OcResult<Value> {
    if !v.is_object() {
        return Err(OcError::invalid("InvalidAttributes", "Attributes are a JSON object."));
    }
    crate::validate::metadata(&v).map_err(|e| OcError::invalid("InvalidAttributes", e))?;
    Ok(v)
}

/// What a write sets: the value, the user ids and the attributes (each
/// replaces what is stored; Roblox clears what a write omits).
struct Write {
    value: Value,
    user_ids: Vec<String>,
    attributes: Value,
}

/// The stored record of an entry, or `None`.
async fn read(e: &Entry) -> OcResult<Option<Record>> {
    Ok(e.store.inspect(e.key.as_str()).await?)
}

/// Refuses a write to a key a client of this server holds (the engine
/// refuses one a session elsewhere holds), naming the holder.
fn refuse_if_held(state: &AppState, e: &Entry) -> OcResult<()> {
    if let Some((holder, _)) = state.sessions.holder(&e.store_name, &e.key) {
        return Err(OcError::new(
            StatusCode::CONFLICT,
            "ABORTED",
            "KeyLocked",
            format!("The entry is held by a game server session ({holder}); nothing was written."),
        ));
    }
    Ok(())
}

/// Writes an entry under `expected` (compare-and-set); answers the
/// record as stored afterwards.
async fn write(state: &AppState, e: &Entry, expected: Expect, w: Write) -> OcResult<Record> {
    refuse_if_held(state, e)?;
    let Write { value, user_ids, attributes } = w;
    let written = e
        .store
        .update_unleased_record(e.key.as_str(), expected, move |doc, parts| {
            *doc = value;
            parts.metadata = attributes;
            parts.user_ids = user_ids;
        })
        .await?;
    // The answer is this write's record, never a later one: a client takes
    // the version it is given as the base of its next `matchVersion`, and
    // another writer may have written (or deleted) between the release and
    // a read. The record as it is when it is still ours, else the version
    // this write kept (none when the store keeps no versions, or when the
    // write changed nothing stored: then a 409 says what was written).
    let header = RecordHeader { epoch: written.epoch, revision: written.revision };
    if let Some(rec) = read(e).await?.filter(|r| r.header == header) {
        return Ok(rec);
    }
    e.store.inspect_version(e.key.as_str(), header).await?.ok_or_else(|| {
        OcError::new(
            StatusCode::CONFLICT,
            "ABORTED",
            "Conflict",
            format!(
                "The entry was written as version {}.{}, and changed again before it could be answered; \
                 no version of that write was kept to answer from. Read it again.",
                header.epoch, header.revision
            ),
        )
    })
}

/// Adds `by` to the integer stored at the entry (0 when absent), keeping
/// nothing else; answers the record written.
async fn increment(state: &AppState, e: &Entry, by: i64, user_ids: Vec<String>, attributes: Value) -> OcResult<Record> {
    for _ in 0..16 {
        let current = read(e).await?;
        let (base, expected) = match &current {
            None => (0, Expect::Absent),
            Some(rec) => {
                let value: Value = serde_json::from_slice(&rec.data).unwrap_or(Value::Null);
                let n = value.as_i64().ok_or_else(|| {
                    OcError::invalid("InvalidIncrement", "The entry's value is not an integer; nothing was written.")
                })?;
                (n, Expect::Version(rec.header))
            }
        };
        let sum = base
            .checked_add(by)
            .ok_or_else(|| OcError::invalid("InvalidIncrement", "The sum does not fit in 64 bits."))?;
        let w = Write { value: json!(sum), user_ids: user_ids.clone(), attributes: attributes.clone() };
        match write(state, e, expected, w).await {
            Err(err) if err.status == StatusCode::PRECONDITION_FAILED => continue,
            other => return other,
        }
    }
    Err(OcError::new(StatusCode::CONFLICT, "ABORTED", "Conflict", "The entry kept changing; try again."))
}

/// `roblox-entry-*` headers (and `content-md5`) of a record.
fn entry_headers(response: &mut actix_web::HttpResponseBuilder, rec: &Record) {
    response
        .insert_header(("content-md5", md5_base64(&rec.data)))
        .insert_header(("roblox-entry-version", version_text(rec.header)))
        .insert_header(("roblox-entry-created-time", rfc3339(rec.created_at_ms)))
        .insert_header(("roblox-entry-version-created-time", rfc3339(rec.updated_at_ms)))
        .insert_header(("roblox-entry-attributes", attributes_of(rec).to_string()))
        .insert_header(("roblox-entry-userids", user_ids_json(&rec.user_ids).to_string()));
}

/// A page token bound to the query it continues (Roblox answers 400 when
/// a filter changes between pages): a hash of the query, then the cursor.
fn page_token(query: &str, cursor: &str) -> String {
    format!("{:016x}.{}", fnv(query), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor))
}

fn parse_page_token(query: &str, token: &str) -> OcResult<String> {
    let bad = || OcError::invalid("InvalidCursor", "Invalid cursor.");
    let (hash, cursor) = token.split_once('.').ok_or_else(bad)?;
    if hash != format!("{:016x}", fnv(query)) {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// FNV-1a: stable across processes, for binding page tokens to queries.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A page of the data stores (names, each once) under `prefix` whose name
/// starts with `name_prefix`, after the store `after` (the raw store name a
/// previous page ended on); answers the names and the next cursor.
///
/// Stores list in byte order, where a name's scopes (`name:scope`) are
/// contiguous but other names may sort between `name` and them
/// (`name-2`). A name is listed at its global store, or where none
/// exists, at the first of its scopes.
async fn list_data_stores(
    state: &AppState,
    prefix: &str,
    name_prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> OcResult<(Vec<String>, Option<String>)> {
    let store_prefix = format!("{prefix}{}", escape(name_prefix));
    let mut previous: Option<String> = after.map(str::to_owned);
    let mut names: Vec<String> = Vec::new();
    loop {
        let page = state.ds.store_names(&store_prefix, previous.as_deref(), 64).await?;
        let full = page.len() == 64;
        for store in page {
            if names.len() == limit {
                return Ok((names, previous));
            }
            if let Some((name, scope)) = data_store_of(prefix, &store) {
                let listed = if scope == "global" {
                    true
                } else {
                    let global = store_name(prefix, &name, "global")?;
                    let follows_a_scope = previous
                        .as_deref()
                        .is_some_and(|p| p.strip_prefix(global.as_str()).is_some_and(|r| r.starts_with(':')));
                    !follows_a_scope && state.ds.store_names(&global, None, 1).await?.first() != Some(&global)
                };
                if listed {
                    names.push(name);
                }
            }
            previous = Some(store);
        }
        if !full {
            return Ok((names, None));
        }
    }
}

/// Which keys a listing asks for: of data store `name` under `prefix`,
/// in `scope` (`None`: every scope), starting with `key_prefix`, after the
/// cursor `scope/key`, at most `limit`.
struct Listing<'a> {
    prefix: &'a str,
    name: &'a str,
    scope: Option<&'a str>,
    key_prefix: &'a str,
    after: Option<&'a str>,
    limit: usize,
}

/// A page of keys (with their scopes) and the next cursor.
async fn list_entries(
    state: &AppState,
    req: &HttpRequest,
    l: Listing<'_>,
) -> OcResult<(Vec<(String, String)>, Option<String>)> {
    let Listing { prefix, name, scope, key_prefix, after, limit } = l;
    let who = state.auth(req, Role::Read)?;
    let scopes: Vec<String> = match scope {
        Some(s) => vec![s.to_owned()],
        None => {
            let base = store_name(prefix, name, "global")?;
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = state.ds.store_names(&base, cursor.as_deref(), 256).await?;
                for store in &page {
                    if store == &base || store.starts_with(&format!("{base}:")) {
                        if let Some((_, scope)) = data_store_of(prefix, store) {
                            all.push(scope);
                        }
                    }
                }
                if page.len() < 256 {
                    break;
                }
                cursor = page.last().cloned();
            }
            all.sort();
            all
        }
    };
    let (after_scope, after_key) = match after.and_then(|a| a.split_once('/')) {
        Some((s, k)) => (Some(s.to_owned()), Some(k.to_owned())),
        None => (None, None),
    };
    let mut out = Vec::new();
    for scope in scopes {
        if after_scope.as_ref().is_some_and(|a| &scope < a) {
            continue;
        }
        let store_name = store_name(prefix, name, &scope)?;
        who.may_use(&store_name)?;
        let store = state.store(&store_name)?;
        let start = if after_scope.as_deref() == Some(scope.as_str()) { after_key.clone() } else { None };
        let want = limit + 1 - out.len();
        for key in store.list_keys(key_prefix, start.as_deref(), want).await? {
            out.push((scope.clone(), key));
        }
        if out.len() > limit {
            break;
        }
    }
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|(s, k)| format!("{s}/{k}"))
    } else {
        None
    };
    Ok((out, next))
}

/// `id.startsWith("…")`, Roblox's one supported list filter.
fn starts_with_filter(filter: Option<&str>) -> OcResult<String> {
    let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) else { return Ok(String::new()) };
    f.strip_prefix("id.startsWith(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .filter(|p| !p.contains('"'))
        .map(str::to_owned)
        .ok_or_else(|| OcError::invalid("InvalidFilter", "Only id.startsWith(\"prefix\") is supported."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_as_the_luau_facade_does_and_come_back() {
        assert_eq!(escape("PlayerData"), "PlayerData");
        assert_eq!(escape("Player Data/1"), "Player.20Data.2F1");
        assert_eq!(unescape("Player.20Data.2F1").as_deref(), Some("Player Data/1"));
        assert_eq!(store_name("", "PlayerData", "global").unwrap(), "PlayerData");
        assert_eq!(store_name("g1-", "PlayerData", "beta").unwrap(), "g1-PlayerData:beta");
        assert_eq!(store_name("", "A", "inbox").unwrap(), "A:.69nbox");
        assert_eq!(data_store_of("", "A:.69nbox"), Some(("A".into(), "inbox".into())));
        assert_eq!(data_store_of("g1-", "g1-Player.20Data:beta"), Some(("Player Data".into(), "beta".into())));
        assert_eq!(data_store_of("g1-", "g2-x"), None);
        assert!(store_name("", &"n".repeat(51), "global").is_err());
        assert!(store_name("", "n", "").is_err());
    }

    #[test]
    fn times_are_rfc3339_both_ways() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20+00:00"), Some(1_700_000_000_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn user_ids_in_every_wire_form() {
        assert_eq!(parse_user_ids("[1, 2]").unwrap(), ["1", "2"]);
        assert_eq!(parse_user_ids("1,2").unwrap(), ["1", "2"]);
        assert_eq!(parse_user_ids("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_user_ids("[\"7\"]").unwrap(), ["7"]);
        assert!(parse_user_ids("[1.5]").is_err());
        assert!(parse_user_ids("[-1]").is_err());
        assert!(parse_user_ids("abc").is_err());
        assert_eq!(user_ids_json(&["1".into(), "x".into()]), json!([1, "x"]));
    }

    #[test]
    fn page_tokens_are_bound_to_their_query() {
        let t = page_token("q1", "scope/key");
        assert_eq!(parse_page_token("q1", &t).unwrap(), "scope/key");
        assert!(parse_page_token("q2", &t).is_err());
        assert!(parse_page_token("q1", "garbage").is_err());
    }

    #[test]
    fn only_the_starts_with_filter_is_understood() {
        assert_eq!(starts_with_filter(Some("id.startsWith(\"ab\")")).unwrap(), "ab");
        assert_eq!(starts_with_filter(None).unwrap(), "");
        assert!(starts_with_filter(Some("id == \"x\"")).is_err());
    }
}
