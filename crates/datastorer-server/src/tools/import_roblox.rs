//! `datastorer import-roblox`: copies a Roblox data store into a running
//! datastorer server through Open Cloud's v1 data-store API: every key
//! with its latest value, user ids and attributes (as metadata), or, with
//! `--profilestore`, ProfileStore's `Data` with its `MetaData` kept in the
//! metadata. Paced to the source's request budget, resumable from a state
//! file after an interruption (the page being copied and how far into it),
//! with a progress line and a report. Each key goes in through the target's
//! one-shot write, which never writes a key a session holds: such keys are
//! listed as held, left as they are, and can be copied by running again.
//!
//! Owns: that copy and its state file. Must not: write to the target but
//! through its HTTP API, or keep a secret in the state file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::roblox_names::{escape, escape_scope, percent_encode, store_name};

/// What to copy, from where, to where.
pub(crate) struct RobloxImport {
    /// Open Cloud's base URL (`https://apis.roblox.com`).
    pub(crate) source: String,
    /// The Open Cloud API key.
    pub(crate) source_key: String,
    pub(crate) universe: u64,
    pub(crate) datastore: String,
    /// The scope; `None` copies every scope.
    pub(crate) scope: Option<String>,
    /// The datastorer server's base URL and API key.
    pub(crate) target: String,
    pub(crate) target_key: Option<String>,
    /// The target store (default: the store the DataStoreService facade
    /// and the Open Cloud API map the data store and scope to).
    pub(crate) into: Option<String>,
    /// The facade's `StorePrefix` of the default target store.
    pub(crate) store_prefix: String,
    pub(crate) profilestore: bool,
    pub(crate) state: PathBuf,
    /// Source requests per minute (Roblox allows 300 a minute per class).
    pub(crate) source_rate: u32,
    /// Stop after this many keys (an import in slices).
    pub(crate) limit: Option<u64>,
}

/// The state file: which import it is, how far it got, what it found.
#[derive(Serialize, Deserialize, Default, Debug)]
struct State {
    /// `source universe datastore scope into`: a state file answers for
    /// one import only.
    import: String,
    /// The listing cursor of the page being copied (`None`: the first).
    page_cursor: Option<String>,
    /// Keys of that page already done.
    done_in_page: usize,
    imported: u64,
    deleted_meanwhile: u64,
    held: Vec<String>,
    failed: Vec<Failed>,
    done: bool,
}

#[derive(Serialize, Deserialize, Debug)]
struct Failed {
    key: String,
    error: String,
}

impl State {
    fn load(path: &Path, import: &str) -> Result<State, String> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not an import-roblox state file: {e}", path.display()))?;
                if state.import != import {
                    return Err(format!(
                        "{} is the state of another import ({}); give this one its own --state",
                        path.display(),
                        state.import
                    ));
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(State { import: import.to_owned(), ..State::default() })
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Written whole to a file beside it, then renamed over it: a crash
    /// leaves the old state or the new one.
    fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Waits between source requests so as not to exceed a rate.
struct Pacer {
    every: Duration,
    next: Instant,
}

impl Pacer {
    fn new(per_minute: u32) -> Self {
        let every = if per_minute == 0 { Duration::ZERO } else { Duration::from_secs(60) / per_minute };
        Pacer { every, next: Instant::now() }
    }
    fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
        self.next = self.next.max(now) + self.every;
    }
}

/// A page of `(scope, key)` and the cursor of the next.
type KeyPage = (Vec<(String, String)>, Option<String>);

/// One entry as the source has it.
struct SourceEntry {
    value: Value,
    attributes: Value,
    user_ids: Vec<String>,
}

struct Source<'a> {
    http: reqwest::blocking::Client,
    args: &'a RobloxImport,
    pacer: Pacer,
}

impl Source<'_> {
    fn url(&self, path: &str) -> String {
        format!(
            "{}/datastores/v1/universes/{}/standard-datastores{path}",
            self.args.source.trim_end_matches('/'),
            self.args.universe
        )
    }

    /// A GET with Roblox's budget and its 429 and 5xx retried with backoff.
    fn get(&mut self, path: &str, query: &[(&str, String)]) -> Result<reqwest::blocking::Response, String> {
        let mut backoff = Duration::from_secs(1);
        for attempt in 1..=6 {
            self.pacer.wait();
            let sent = self.http.get(self.url(path)).query(query).header("x-api-key", &self.args.source_key).send();
            match sent {
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(backoff, Duration::from_secs);
                    if attempt == 6 {
                        return Err(format!("the source answered {} six times", r.status()));
                    }
                    std::thread::sleep(wait.min(Duration::from_secs(60)));
                }
                Ok(r) => return Ok(r),
                Err(e) if attempt == 6 => return Err(format!("the source cannot be reached: {e}")),
                Err(_) => std::thread::sleep(backoff),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        Err("the source did not answer".into())
    }

    /// One page of keys (`(scope, key)`) and the cursor of the next.
    fn page(&mut self, cursor: Option<&str>) -> Result<KeyPage, String> {
        let mut q = vec![("datastoreName", self.args.datastore.clone()), ("limit", "100".into())];
        match &self.args.scope {
            Some(s) => q.push(("scope", s.clone())),
            None => q.push(("allScopes", "true".into())),
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_owned()));
        }
        let r = self.get("/datastore/entries", &q)?;
        let status = r.status();
        let body: Value = r.json().map_err(|e| format!("listing keys: not JSON ({e})"))?;
        if !status.is_success() {
            return Err(format!("listing keys: {status}: {body}"));
        }
        let keys = body["keys"]
            .as_array()
            .ok_or("listing keys: no `keys` in the answer")?
            .iter()
            .filter_map(|k| match k {
                // Key objects, as Open Cloud answers; plain strings, as its spec says.
                Value::Object(o) => Some((
                    o.get("scope").and_then(Value::as_str).unwrap_or("global").to_owned(),
                    o.get("key").and_then(Value::as_str)?.to_owned(),
                )),
                Value::String(s) => Some(("global".to_owned(), s.clone())),
                _ => None,
            })
            .collect();
        let next = body["nextPageCursor"].as_str().filter(|c| !c.is_empty()).map(str::to_owned);
        Ok((keys, next))
    }

    /// The entry, or `None` when it was deleted since the listing.
    fn entry(&mut self, scope: &str, key: &str) -> Result<Option<SourceEntry>, String> {
        let q =
            [("datastoreName", self.args.datastore.clone()), ("scope", scope.to_owned()), ("entryKey", key.to_owned())];
        let r = self.get("/datastore/entries/entry", &q)?;
        if r.status().as_u16() == 404 {
            return Ok(None);
        }
        let status = r.status();
        let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let attributes = header("roblox-entry-attributes")
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let user_ids = header("roblox-entry-userids").map(|t| user_ids(&t)).unwrap_or_default();
        let body = r.bytes().map_err(|e| format!("{key}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{key}: the source answered {status}: {}", String::from_utf8_lossy(&body)));
        }
        let value = serde_json::from_slice(&body).map_err(|_| format!("{key}: the value is not JSON"))?;
        Ok(Some(SourceEntry { value, attributes, user_ids }))
    }
}

/// User ids from `[1,2]` or `1,2`.
fn user_ids(text: &str) -> Vec<String> {
    let text = text.trim();
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) {
        return items
            .iter()
            .filter_map(|v| match v {
                Value::Number(n) => Some(n.to_string()),
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
    }
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// ProfileStore's envelope unwrapped: `Data` is the document; its
/// `MetaData` (without the session lock, which means nothing here) goes
/// into the metadata as `ProfileStore`, beside the Roblox attributes;
/// its `UserIds` join the entry's.
fn unwrap_profile(entry: SourceEntry) -> Result<SourceEntry, String> {
    let Value::Object(mut envelope) = entry.value else {
        return Err("not a ProfileStore profile (not a table)".into());
    };
    let data = envelope.remove("Data").ok_or("not a ProfileStore profile (no Data)")?;
    let mut meta = envelope.remove("MetaData").unwrap_or_else(|| json!({}));
    if let Value::Object(m) = &mut meta {
        m.remove("ActiveSession");
        m.remove("ForceLoadSession");
    }
    let mut attributes = entry.attributes;
    if let Value::Object(a) = &mut attributes {
        a.insert("ProfileStore".into(), meta);
    }
    let mut ids = entry.user_ids;
    for id in envelope.get("UserIds").and_then(Value::as_array).into_iter().flatten() {
        let id = match id {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => continue,
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(SourceEntry { value: data, attributes, user_ids: ids })
}

/// Where a key of `scope` goes.
fn target_store(args: &RobloxImport, scope: &str) -> String {
    if let Some(into) = &args.into {
        return if args.scope.is_none() && scope != "global" {
            format!("{into}:{}", escape_scope(scope))
        } else {
            into.clone()
        };
    }
    store_name(&escape(&args.store_prefix), &args.datastore, scope)
}

/// How a key's write went.
enum Outcome {
    Imported,
    Held,
}

fn put(
    http: &reqwest::blocking::Client,
    args: &RobloxImport,
    store: &str,
    key: &str,
    e: &SourceEntry,
) -> Result<Outcome, String> {
    let url = format!(
        "{}/v1/stores/{}/keys/{}",
        args.target.trim_end_matches('/'),
        percent_encode(store),
        percent_encode(key)
    );
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=6 {
        let mut req = http
            .put(&url)
            .header("content-type", "application/json")
            .header("Prefer", "return=minimal")
            .header("Datastorer-Metadata", e.attributes.to_string())
            .header("Datastorer-User-Ids", Value::from(e.user_ids.clone()).to_string())
            .body(e.value.to_string());
        if let Some(k) = &args.target_key {
            req = req.bearer_auth(k);
        }
        match req.send() {
            Ok(r) if r.status().is_success() => return Ok(Outcome::Imported),
            Ok(r) if r.status().as_u16() == 409 => {
                let body: Value = r.json().unwrap_or(Value::Null);
                if body["code"] == "lease_held" {
                    return Ok(Outcome::Held);
                }
                return Err(format!("{key}: {body}"));
            }
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                if attempt == 6 {
                    return Err(format!("{key}: the target answered {}", r.status()));
                }
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().unwrap_or_default();
                return Err(format!("{key}: the target refused it ({status}): {body}"));
            }
            Err(e) if attempt == 6 => return Err(format!("the target cannot be reached: {e}")),
            Err(_) => {}
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    Err(format!("{key}: the target did not take it"))
}

/// Runs (or resumes) the import; prints the report as JSON on stdout.
pub(crate) fn import_roblox(args: &RobloxImport) -> Result<(), String> {
    if args.profilestore && args.into.is_none() {
        return Err(
            "--profilestore needs --into: the unwrapped profiles are not what a DataStoreService facade would read"
                .into(),
        );
    }
    if let Some(into) = &args.into {
        datastorer::validate_user_store_name(into).map_err(|e| format!("--into: {e}"))?;
    }
    let identity = format!(
        "{} {} {} {} {}",
        args.source.trim_end_matches('/'),
        args.universe,
        args.datastore,
        args.scope.as_deref().unwrap_or("*"),
        args.into.clone().unwrap_or_else(|| target_store(args, "global")),
    );
    let mut state = State::load(&args.state, &identity)?;
    let started = Instant::now();
    if state.done {
        eprintln!("import-roblox: this import is complete ({}); remove it to import again", args.state.display());
        return report(&state, started, &args.state);
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("datastorer-import-roblox/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    let mut source = Source { http: http.clone(), args, pacer: Pacer::new(args.source_rate) };
    let mut this_run = 0u64;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let (keys, next) = source.page(state.page_cursor.as_deref())?;
        for (scope, key) in keys.iter().skip(state.done_in_page) {
            if args.limit.is_some_and(|l| this_run >= l) {
                state.save(&args.state)?;
                eprintln!("import-roblox: stopped after {this_run} keys (--limit); run again to go on");
                return report(&state, started, &args.state);
            }
            match source.entry(scope, key)? {
                None => state.deleted_meanwhile += 1,
                Some(entry) => {
                    let entry = if args.profilestore { unwrap_profile(entry) } else { Ok(entry) };
                    match entry {
                        Err(why) => state.failed.push(Failed { key: format!("{scope}/{key}"), error: why }),
                        Ok(entry) => match put(&http, args, &target_store(args, scope), key, &entry) {
                            Ok(Outcome::Imported) => state.imported += 1,
                            Ok(Outcome::Held) => state.held.push(format!("{scope}/{key}")),
                            Err(why) => {
                                // The target failing is not the key's fault:
                                // stop here, resumable.
                                state.save(&args.state)?;
                                return Err(format!("{why}; run again to resume"));
                            }
                        },
                    }
                }
            }
            state.done_in_page += 1;
            this_run += 1;
            if this_run % 25 == 0 {
                state.save(&args.state)?;
            }
            if progress {
                let rate = this_run as f64 / started.elapsed().as_secs_f64().max(0.001);
                eprint!(
                    "\rimport-roblox: {} imported, {} held, {} failed ({rate:.0} keys/s)   ",
                    state.imported,
                    state.held.len(),
                    state.failed.len()
                );
            }
        }
        match next {
            Some(cursor) => {
                state.page_cursor = Some(cursor);
                state.done_in_page = 0;
                state.save(&args.state)?;
            }
            None => break,
        }
    }
    if progress {
        eprintln!();
    }
    state.done = true;
    state.save(&args.state)?;
    report(&state, started, &args.state)
}

fn report(state: &State, started: Instant, path: &Path) -> Result<(), String> {
    let answer = json!({
        "imported": state.imported,
        "held": state.held,
        "failed": state.failed.iter().map(|f| json!({ "key": f.key, "error": f.error })).collect::<Vec<_>>(),
        "deleted_meanwhile": state.deleted_meanwhile,
        "complete": state.done,
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "state": path.display().to_string(),
    });
    println!("{answer}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_unwrap_into_data_and_metadata() {
        let e = SourceEntry {
            value: json!({
                "Data": {"Coins": 5},
                "MetaData": {"ProfileCreateTime": 1, "ActiveSession": [1, "job"], "SessionLoadCount": 3},
                "UserIds": [7],
                "GlobalUpdates": [0, []],
            }),
            attributes: json!({"a": 1}),
            user_ids: vec!["1".into()],
        };
        let u = unwrap_profile(e).unwrap();
        assert_eq!(u.value, json!({"Coins": 5}));
        assert_eq!(u.attributes, json!({"a": 1, "ProfileStore": {"ProfileCreateTime": 1, "SessionLoadCount": 3}}));
        assert_eq!(u.user_ids, ["1", "7"]);
        let not = SourceEntry { value: json!(5), attributes: json!({}), user_ids: vec![] };
        assert!(unwrap_profile(not).is_err());
    }

    #[test]
    fn keys_go_where_the_facade_would_read_them() {
        let args = RobloxImport {
            source: String::new(),
            source_key: String::new(),
            universe: 1,
            datastore: "Player Data".into(),
            scope: None,
            target: String::new(),
            target_key: None,
            into: None,
            store_prefix: "g1-".into(),
            profilestore: false,
            state: PathBuf::new(),
            source_rate: 0,
            limit: None,
        };
        assert_eq!(target_store(&args, "global"), "g1-Player.20Data");
        assert_eq!(target_store(&args, "beta"), "g1-Player.20Data:beta");
        assert_eq!(user_ids("[1, 2]"), ["1", "2"]);
        assert_eq!(user_ids("3,4"), ["3", "4"]);
    }
}
