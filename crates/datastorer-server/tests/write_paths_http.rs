//! The write-path checker over HTTP: two real `datastorer serve` processes
//! on one PostgreSQL schema, a fleet (a quarter of each client's requests
//! reach the other server, which forwards session requests and batch
//! operations to the holder), four clients (two per server) firing random
//! requests at three keys at once, and one `kill -9` and restart of a
//! server halfway through. The requests mix every way to write:
//!
//! - sessions: opens with every policy, by the route or as an `open` in
//!   `/v1/batch` (a second open by the same client resumes its session), patches with and without `save`, saves,
//!   releases, closes, and `POST /v1/batch` (patch-and-save, release);
//! - one-shot `PATCH`es: unconditional, `If-None-Match: *`, `If-Match` of
//!   what a `GET` just showed;
//! - `DELETE`s, plain, forced and conditional;
//! - message posts, and acknowledgements by the holder;
//! - restores of a key to one of its versions (`POST …/restore`), which
//!   hand the key over from whichever server's client holds it;
//! - Open Cloud v1 sets, read-modify-write with `matchVersion` (or
//!   `exclusiveCreate` for a new key), as a careful Open Cloud tool does;
//! - the Luau DataStoreService facade's `UpdateAsync` (and so
//!   `IncrementAsync`) as it goes on the wire: the version it last saw
//!   (else a `GET`), the whole document `PUT` with `If-Match` (or
//!   `If-None-Match: *`) and the record parts, read again on `412`;
//! - `datastorer import-roblox` runs (real processes) from a third server
//!   standing in for Roblox, whose values replace the keys nobody holds;
//! - the console's edits (`console/src/edit.ts`): a whole document `PUT`
//!   with `If-Match` on the version read, an edit applied after a
//!   hand-over (`request_release` under the console's client id, a merge
//!   patch with `save`, release), and a delete after a hand-over (release,
//!   then `DELETE` with `If-Match` on the released version);
//! - the Luau client's resume: a session whose server died (or whose
//!   answer was lost) is opened again and, if the stored document is one
//!   the client sent since its last durable save, overwritten with the
//!   client's own (removals included) and saved.
//!
//! A trigger logs every committed row version (and delete) of the records
//! table in commit order per key, and every answer is kept with a logical
//! time (a shared counter taken when the request starts and ends). The
//! checks are those of `tests/it/write_paths.rs`, over the database:
//!
//! 1. per key, epochs never go down (not across a delete), one owner per
//!    epoch, no header written twice;
//! 2. every acknowledged write (`durable`, a revision) was committed at the
//!    epoch and revision it named and carries its change; a one-shot's
//!    condition held against the record its acquire replaced;
//! 3. no later write of a key loses an acknowledged change until a delete,
//!    a restore (a new epoch with no lease) or an import (a document that
//!    is exactly an imported value: imports replace), and no change written
//!    before a delete comes back after it but through a restore or import;
//! 4. a released session's epoch is never written again;
//! 5. a request on a held session is refused (`410`, `409`) only when
//!    something could have ended it meanwhile: another client's `steal` or
//!    `request_release` open of the key, a forced delete, a restore, or the
//!    kill;
//! 6. an acknowledged message waits until acknowledged or deleted, and no
//!    message appears that nobody posted.
//!
//! Size: `DATASTORER_HTTP_CHECK_STEPS` per client (default 150). Needs
//! PostgreSQL (skips, saying so, without it; `DATASTORER_REQUIRE_PG=1`
//! makes that a failure).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::pg::PgSchema;
use common::server::Server;
use common::{env_or, Rng};
use datastorer::storage::Record;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const STORE: &str = "profiles";
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const CLIENTS: usize = 4;

/// A logical clock shared by every client: `a.end < b.start` means request
/// `a` was answered before `b` was sent.
static TICKS: AtomicU64 = AtomicU64::new(0);

fn tick() -> u64 {
    TICKS.fetch_add(1, Ordering::SeqCst)
}

/// An acknowledged write: the key, the header it named, the changes it carries.
#[derive(Debug)]
struct Ack {
    key: String,
    epoch: u64,
    revision: u64,
    ops: BTreeSet<String>,
    what: String,
    /// A one-shot's condition: `None` (unconditional), `Some(None)`
    /// (create-only), `Some(Some((epoch, revision)))`.
    condition: Option<Option<(u64, u64)>>,
}

/// Something that may end another client's session of `key` during `[start, end]`.
#[derive(Debug)]
struct Disruption {
    key: Option<String>,
    server: Option<usize>,
    start: u64,
    end: u64,
}

#[derive(Debug)]
struct Refusal {
    key: String,
    server: usize,
    epoch: u64,
    opened: u64,
    at: u64,
    what: String,
}

#[derive(Debug)]
struct Post {
    key: String,
    n: u64,
    id: Option<u64>,
    start: u64,
}

#[derive(Debug)]
struct InboxClear {
    key: String,
    /// `None`: a delete (everything goes); `Some(id)`: an acknowledgement up to `id`.
    up_to: Option<u64>,
    end: u64,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    disruptions: Vec<Disruption>,
    refusals: Vec<Refusal>,
    posts: Vec<Post>,
    clears: Vec<InboxClear>,
    /// Released sessions: key, epoch, and the history length once answered.
    released: Vec<(String, u64, u64)>,
    /// Acknowledged deletes: key and the history length before the request.
    deletes: Vec<(String, u64)>,
    /// Every delete sent, for a failure's story: key, who, ticks, answer.
    delete_calls: Vec<(String, String, u64, u64, String)>,
    /// Every import run and what it reported.
    imports: Vec<String>,
    /// Sessions resumed after their server died or an answer was lost.
    resumes: u64,
}

struct Held {
    token: String,
    epoch: u64,
    opened: u64,
    ops: BTreeSet<String>,
    /// The documents sent since the last durable save, that one first:
    /// what the store may hold if the session's server dies (the Luau
    /// client's `_sentHistory`).
    sent: Vec<BTreeSet<String>>,
}

impl Held {
    fn new(token: String, epoch: u64, opened: u64, ops: BTreeSet<String>) -> Held {
        let sent = vec![ops.clone()];
        Held { token, epoch, opened, ops, sent }
    }

    /// About to send a patch adding `op`.
    fn sending(&mut self, op: &str) {
        let mut doc = self.ops.clone();
        doc.insert(op.to_owned());
        self.sent.push(doc);
        if self.sent.len() > 32 {
            self.sent.remove(0);
        }
    }

    /// The session's document is durable as it stands.
    fn durable(&mut self) {
        self.sent = vec![self.ops.clone()];
    }
}

struct Shared {
    bases: [RwLock<String>; 2],
    /// The server standing in for Roblox, for imports.
    source: String,
    /// Where import runs keep their state files.
    work: std::path::PathBuf,
    log: Mutex<Log>,
    pg: PgSchema,
    next: AtomicU64,
    /// Steps done by all clients, so the kill lands halfway.
    done: AtomicU64,
}

impl Shared {
    fn base(&self, server: usize) -> String {
        self.bases[server].read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unique(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    fn history_len(&self) -> u64 {
        self.pg.sql("SELECT coalesce(max(seq), 0)::text FROM $S.history")[0].as_deref().unwrap_or("0").parse().unwrap()
    }
}

/// One request: status and JSON body; `None` when no answer came (a server
/// killed under it): the outcome is unknown.
async fn send(req: reqwest::RequestBuilder) -> Option<(StatusCode, Value)> {
    let resp = req.timeout(Duration::from_secs(20)).send().await.ok()?;
    let status = resp.status();
    let text = resp.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

fn key_path(key: &str) -> String {
    format!("/v1/stores/{STORE}/keys/{key}")
}

fn ops_of(doc: &Value) -> BTreeSet<String> {
    doc["ops"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

/// Whether a refusal says the session is gone (the case check 5 is about).
fn session_gone(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::GONE
        || (status == StatusCode::CONFLICT && body["code"].as_str().is_some_and(|c| c.contains("lease_token")))
}

async fn client(shared: Arc<Shared>, index: usize, steps: u64) {
    let server = index % 2;
    let client_id = format!("client-{index}");
    let c = Client::new();
    let mut rng = Rng((0x9e37_79b9_7f4a_7c15 ^ ((index as u64 + 1) * 0x1000_0001)) | 1);
    let mut held: HashMap<&'static str, Held> = HashMap::new();
    let policies = ["fail", "wait", "request_release", "steal"];
    // The facade's last seen version of each key (its UpdateAsync cache).
    let mut known: HashMap<&'static str, ((u64, u64), Value)> = HashMap::new();
    // Each client starts with an Open Cloud set and a facade update (keys
    // are free then), so every run has both acknowledged.
    let first = KEYS[index % KEYS.len()];
    open_cloud_set(&shared, &c, &shared.base(server), first, &client_id).await;
    facade_update(&shared, &c, &shared.base(server), first, &client_id, &mut known).await;
    for _ in 0..steps {
        shared.done.fetch_add(1, Ordering::SeqCst);
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        // A fleet behind a round-robin front: a quarter of the requests
        // reach the other server, which forwards what it does not hold.
        let base = if rng.below(4) == 0 { shared.base(1 - server) } else { shared.base(server) };
        let start = tick();
        match rng.below(117) {
            115..=116 => console_handover_delete(&shared, &c, &base, key, &client_id, start).await,
            110..=112 => console_free_edit(&shared, &c, &base, key, &client_id).await,
            113..=114 => console_handover_edit(&shared, &c, &base, key, &client_id, start).await,
            100..=104 => open_cloud_set(&shared, &c, &base, key, &client_id).await,
            105..=107 => facade_update(&shared, &c, &base, key, &client_id, &mut known).await,
            108..=109 => import_run(&shared, &c, &base, key, &client_id).await,
            0..=19 => {
                let policy = policies[rng.below(4) as usize];
                let body = json!({"client_id": client_id, "policy": policy, "timeout_ms": 1500});
                // The open route, or an `open` in `/v1/batch` (a restarted
                // game server re-opening its players).
                let answer = if rng.below(3) == 0 {
                    let mut op = body.clone();
                    op["op"] = json!("open");
                    op["store"] = json!(STORE);
                    op["key"] = json!(key);
                    match send(c.post(format!("{base}/v1/batch")).json(&json!({ "ops": [op] }))).await {
                        Some((StatusCode::OK, v)) => {
                            let r = v["results"][0].clone();
                            let status = r["status"].as_u64().and_then(|s| StatusCode::from_u16(s as u16).ok());
                            status.map(|st| (st, r))
                        }
                        other => other,
                    }
                } else {
                    send(c.post(format!("{base}{}/session", key_path(key))).json(&body)).await
                };
                let end = tick();
                if matches!(policy, "steal" | "request_release") {
                    shared.log().disruptions.push(Disruption { key: Some(key.into()), server: None, start, end });
                }
                if let Some((StatusCode::OK, v)) = answer {
                    let (Some(token), Some(epoch)) = (v["lease_token"].as_str(), v["epoch"].as_u64()) else {
                        panic!("an open answered without token or epoch: {v}")
                    };
                    // A resumed session keeps what it changed so far, and
                    // its age: whatever happened to it since it was first
                    // opened (a forced delete elsewhere that this server
                    // has not heard of yet) still explains its end.
                    let resumed = match held.remove(key) {
                        Some(mut h) if h.epoch == epoch => {
                            h.token = token.to_owned();
                            h
                        }
                        _ => Held::new(token.to_owned(), epoch, start, ops_of(&v["data"])),
                    };
                    held.insert(key, resumed);
                }
            }
            20..=37 => {
                let Some(h) = held.get_mut(key) else { continue };
                let op = format!("{}", shared.unique());
                let save = rng.below(2) == 0;
                let url = format!("{base}{}/session/data{}", key_path(key), if save { "?save=normal" } else { "" });
                h.sending(&op);
                let answer = send(
                    c.patch(url)
                        .header("Lease-Token", &h.token)
                        .header("Content-Type", "application/merge-patch+json")
                        .body(json!({"ops": {op.clone(): true}}).to_string()),
                )
                .await;
                let end = tick();
                match answer {
                    Some((StatusCode::OK, v)) => {
                        h.ops.insert(op);
                        if save {
                            h.durable();
                            let revision = v["revision"].as_u64().expect("a saved patch names its revision");
                            let ack = Ack {
                                key: key.into(),
                                epoch: h.epoch,
                                revision,
                                ops: h.ops.clone(),
                                what: format!("{client_id} patch+save"),
                                condition: None,
                            };
                            shared.log().acks.push(ack);
                        }
                    }
                    Some((status, v)) if session_gone(status, &v) => {
                        refused(&shared, key, server, h, end, format!("{client_id} patch: {status} {v}"));
                        let h = held.remove(key).expect("held");
                        if v["code"] == "invalid_lease_token" {
                            // Known nowhere: its server may have died.
                            resume_into(&mut held, &shared, &c, &base, key, &client_id, h, op).await;
                        }
                    }
                    // Not applied: the session lives elsewhere and the
                    // request was not forwarded.
                    Some((StatusCode::MISDIRECTED_REQUEST, _)) => {}
                    // The holder could not be reached, or no answer came:
                    // unknown outcome.
                    Some((StatusCode::SERVICE_UNAVAILABLE, v)) if v["code"] == "holder_unreachable" => {
                        let h = held.remove(key).expect("held");
                        resume_into(&mut held, &shared, &c, &base, key, &client_id, h, op).await;
                    }
                    // A save that failed keeps the change in the session.
                    Some((_, _)) => {
                        h.ops.insert(op);
                    }
                    None => {
                        let h = held.remove(key).expect("held");
                        resume_into(&mut held, &shared, &c, &base, key, &client_id, h, op).await;
                    }
                }
            }
            38..=47 => {
                let Some(h) = held.get(key) else { continue };
                let release = rng.below(3) == 0;
                let via_batch = rng.below(3) == 0;
                let answer = if via_batch {
                    let op = if release { "release" } else { "save" };
                    let body = json!({"ops": [{"op": op, "store": STORE, "key": key, "lease_token": h.token}]});
                    send(c.post(format!("{base}/v1/batch")).json(&body)).await.map(|(status, v)| {
                        let r = v["results"][0].clone();
                        let status =
                            r["status"].as_u64().and_then(|s| StatusCode::from_u16(s as u16).ok()).unwrap_or(status);
                        (status, r)
                    })
                } else {
                    let end = if release { "release" } else { "save" };
                    send(c.post(format!("{base}{}/session/{end}", key_path(key))).header("Lease-Token", &h.token)).await
                };
                let end = tick();
                match answer {
                    Some((StatusCode::OK, v)) => {
                        let revision = v["revision"].as_u64().expect("a save names its revision");
                        let what = format!(
                            "{client_id} {}{}",
                            if release { "release" } else { "save" },
                            if via_batch { " (batch)" } else { "" }
                        );
                        let ack = Ack {
                            key: key.into(),
                            epoch: h.epoch,
                            revision,
                            ops: h.ops.clone(),
                            what,
                            condition: None,
                        };
                        shared.log().acks.push(ack);
                        if release {
                            let after = shared.history_len();
                            shared.log().released.push((key.into(), h.epoch, after));
                            held.remove(key);
                        }
                    }
                    Some((status, v)) if session_gone(status, &v) => {
                        refused(&shared, key, server, h, end, format!("{client_id} save/release: {status} {v}"));
                        held.remove(key);
                    }
                    Some(_) => {}
                    None => {
                        held.remove(key);
                    }
                }
            }
            48..=50 => {
                let Some(h) = held.remove(key) else { continue };
                let _ =
                    send(c.delete(format!("{base}{}/session", key_path(key))).header("Lease-Token", &h.token)).await;
            }
            51..=64 => {
                // A one-shot: unconditional, create-only, or on the version just read.
                let mut req = c.patch(format!("{base}{}", key_path(key)));
                let condition = match rng.below(3) {
                    0 => None,
                    1 => {
                        req = req.header("If-None-Match", "*");
                        Some(None)
                    }
                    _ => match send(c.get(format!("{base}{}", key_path(key)))).await {
                        Some((StatusCode::OK, v)) => {
                            let (e, r) = (v["epoch"].as_u64().unwrap(), v["revision"].as_u64().unwrap());
                            req = req.header("If-Match", format!("\"{e}.{r}\""));
                            Some(Some((e, r)))
                        }
                        _ => {
                            req = req.header("If-None-Match", "*");
                            Some(None)
                        }
                    },
                };
                let op = format!("{}", shared.unique());
                let answer = send(
                    req.header("Content-Type", "application/merge-patch+json")
                        .body(json!({"ops": {op.clone(): true}}).to_string()),
                )
                .await;
                if let Some((StatusCode::OK, v)) = answer {
                    let (epoch, revision) = (v["epoch"].as_u64().unwrap(), v["revision"].as_u64().unwrap());
                    let ack = Ack {
                        key: key.into(),
                        epoch,
                        revision,
                        ops: ops_of(&v["data"]),
                        what: format!("{client_id} one-shot {condition:?}"),
                        condition,
                    };
                    assert!(ack.ops.contains(&op), "a one-shot's answer lacks its own change: {v}");
                    shared.log().acks.push(ack);
                }
            }
            65..=70 => {
                let force = rng.below(2) == 0;
                let mut req = c.delete(format!("{base}{}?force={force}", key_path(key)));
                if rng.below(2) == 0 {
                    if let Some((StatusCode::OK, v)) = send(c.get(format!("{base}{}", key_path(key)))).await {
                        let (e, r) = (v["epoch"].as_u64().unwrap(), v["revision"].as_u64().unwrap());
                        req = req.header("If-Match", format!("\"{e}.{r}\""));
                    }
                }
                logged_delete(&shared, req, key, format!("{client_id} force={force}"), start, force).await;
            }
            71..=80 => {
                let n = shared.unique();
                let answer = send(c.post(format!("{base}{}/messages", key_path(key))).json(&json!({"n": n}))).await;
                let id = match answer {
                    Some((StatusCode::OK, v)) => v["id"].as_u64(),
                    _ => None,
                };
                shared.log().posts.push(Post { key: key.into(), n, id, start });
            }
            88..=90 => {
                // A restore of the key to one of its versions, as an
                // administrator's console would send it.
                let Some((StatusCode::OK, page)) =
                    send(c.get(format!("{base}{}/versions?limit=20", key_path(key)))).await
                else {
                    continue;
                };
                let live: Vec<String> = page["versions"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter(|v| v["deleted"] == json!(false))
                            .filter_map(|v| v["version"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let Some(target) = live.get(rng.below(live.len().max(1) as u64) as usize) else { continue };
                let Some((StatusCode::OK, then)) =
                    send(c.get(format!("{base}{}/versions/{target}", key_path(key)))).await
                else {
                    continue;
                };
                let answer = send(
                    c.post(format!("{base}{}/restore", key_path(key)))
                        .json(&json!({"version": target, "handoff_ms": 2000})),
                )
                .await;
                let end = tick();
                shared.log().disruptions.push(Disruption { key: Some(key.into()), server: None, start, end });
                if let Some((StatusCode::OK, v)) = answer {
                    let id = v["version"].as_str().and_then(|s| s.split_once('.')).map(|(e, r)| (e.parse(), r.parse()));
                    if let Some((Ok(epoch), Ok(revision))) = id {
                        let ack = Ack {
                            key: key.into(),
                            epoch,
                            revision,
                            ops: ops_of(&then["data"]),
                            what: format!("{client_id} restore to {target}"),
                            condition: None,
                        };
                        shared.log().acks.push(ack);
                    }
                }
            }
            81..=87 => {
                let Some(h) = held.get(key) else { continue };
                let Some((StatusCode::OK, v)) =
                    send(c.get(format!("{base}{}/session/messages", key_path(key))).header("Lease-Token", &h.token))
                        .await
                else {
                    continue;
                };
                let ids: Vec<u64> = v["messages"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|m| m["id"].as_u64()).collect())
                    .unwrap_or_default();
                let Some(&up_to) = ids.get(rng.below(ids.len().max(1) as u64) as usize) else { continue };
                let answer = send(
                    c.post(format!("{base}{}/session/messages/ack", key_path(key)))
                        .header("Lease-Token", &h.token)
                        .json(&json!({"up_to": up_to})),
                )
                .await;
                let end = tick();
                if !matches!(answer, Some((s, _)) if s.is_client_error()) {
                    shared.log().clears.push(InboxClear { key: key.into(), up_to: Some(up_to), end });
                }
            }
            _ => {
                if let Some(h) = held.get(key) {
                    // Patch and save through a batch.
                    let op = format!("{}", shared.unique());
                    let body = json!({"ops": [{"op": "patch", "store": STORE, "key": key, "lease_token": h.token,
                        "data": {"ops": {op.clone(): true}}, "save": "normal"}]});
                    held.get_mut(key).expect("held").sending(&op);
                    let answer = send(c.post(format!("{base}/v1/batch")).json(&body)).await;
                    let end = tick();
                    let r = answer.as_ref().map(|(_, v)| v["results"][0].clone()).unwrap_or(Value::Null);
                    let h = held.get_mut(key).expect("held");
                    match r["status"].as_u64() {
                        Some(200) => {
                            h.ops.insert(op);
                            h.durable();
                            let ack = Ack {
                                key: key.into(),
                                epoch: h.epoch,
                                revision: r["revision"].as_u64().expect("a saved batch patch names its revision"),
                                ops: h.ops.clone(),
                                what: format!("{client_id} batch patch+save"),
                                condition: None,
                            };
                            shared.log().acks.push(ack);
                        }
                        Some(s) if session_gone(StatusCode::from_u16(s as u16).unwrap(), &r) => {
                            refused(&shared, key, server, h, end, format!("{client_id} batch: {r}"));
                            let h = held.remove(key).expect("held");
                            if r["code"] == "invalid_lease_token" {
                                resume_into(&mut held, &shared, &c, &base, key, &client_id, h, op).await;
                            }
                        }
                        Some(421) => {}
                        Some(503) if r["code"] == "holder_unreachable" => {
                            let h = held.remove(key).expect("held");
                            resume_into(&mut held, &shared, &c, &base, key, &client_id, h, op).await;
                        }
                        Some(_) => {
                            h.ops.insert(op);
                        }
                        None => {
                            let h = held.remove(key).expect("held");
                            resume_into(&mut held, &shared, &c, &base, key, &client_id, h, op).await;
                        }
                    }
                }
            }
        }
    }
    for (key, h) in held {
        let base = shared.base(server);
        let _ = send(c.post(format!("{base}{}/session/release", key_path(key))).header("Lease-Token", &h.token)).await;
    }
}

/// The Luau client's resume (`Key._resume`) after its session's server
/// died or an answer was lost (`op`'s patch: applied or not): open the key
/// again under the same client id with policy `fail`; if the stored
/// document is one this client sent since its last durable save (or its
/// own, `op` included), write its own document over it, as the client's
/// diff does (adding what is missing, removing what it never had), and
/// save; otherwise close the new session untouched. A wrong "it is ours"
/// would remove someone else's acknowledged change, which check 3 finds.
#[allow(clippy::too_many_arguments)]
async fn resume_into(
    held: &mut HashMap<&'static str, Held>,
    shared: &Shared,
    c: &Client,
    base: &str,
    key: &'static str,
    client_id: &str,
    mut h: Held,
    op: String,
) {
    h.ops.insert(op);
    let start = tick();
    let body = json!({"client_id": client_id, "policy": "fail"});
    let Some((StatusCode::OK, v)) = send(c.post(format!("{base}{}/session", key_path(key))).json(&body)).await else {
        return;
    };
    let (Some(token), Some(epoch)) = (v["lease_token"].as_str(), v["epoch"].as_u64()) else {
        panic!("an open answered without token or epoch: {v}")
    };
    let stored = ops_of(&v["data"]);
    if !(h.sent.contains(&stored) || stored == h.ops) {
        let _ = send(c.delete(format!("{base}{}/session", key_path(key))).header("Lease-Token", token)).await;
        return;
    }
    let mut patch = serde_json::Map::new();
    for missing in h.ops.difference(&stored) {
        patch.insert(missing.clone(), json!(true));
    }
    for extra in stored.difference(&h.ops) {
        patch.insert(extra.clone(), Value::Null);
    }
    let answer = send(
        c.patch(format!("{base}{}/session/data?save=normal", key_path(key)))
            .header("Lease-Token", token)
            .header("Content-Type", "application/merge-patch+json")
            .body(json!({ "ops": patch }).to_string()),
    )
    .await;
    if let Some((StatusCode::OK, r)) = answer {
        let revision = r["revision"].as_u64().expect("a saved patch names its revision");
        let ack = Ack {
            key: key.into(),
            epoch,
            revision,
            ops: h.ops.clone(),
            what: format!("{client_id} resume"),
            condition: None,
        };
        shared.log().acks.push(ack);
        shared.log().resumes += 1;
        held.insert(key, Held::new(token.to_owned(), epoch, start, h.ops));
    }
}

/// The console's edit of a key nobody holds (`console/src/edit.ts`,
/// `saveFree`): read the record, add a change, `PUT` the whole document
/// with `If-Match` on the version read.
async fn console_free_edit(shared: &Shared, c: &Client, base: &str, key: &str, client_id: &str) {
    let Some((StatusCode::OK, v)) = send(c.get(format!("{base}{}", key_path(key)))).await else { return };
    let (Some(e), Some(r)) = (v["epoch"].as_u64(), v["revision"].as_u64()) else { return };
    let op = format!("{}", shared.unique());
    let mut doc = v["data"].clone();
    if !doc["ops"].is_object() {
        doc["ops"] = json!({});
    }
    doc["ops"][&op] = json!(true);
    let answer =
        send(c.put(format!("{base}{}", key_path(key))).header("If-Match", format!("\"{e}.{r}\"")).json(&doc)).await;
    if let Some((StatusCode::OK, v)) = answer {
        let ack = Ack {
            key: key.into(),
            epoch: v["epoch"].as_u64().expect("an acknowledged PUT names its epoch"),
            revision: v["revision"].as_u64().expect("an acknowledged PUT names its revision"),
            ops: ops_of(&doc),
            what: format!("{client_id} console edit"),
            condition: Some(Some((e, r))),
        };
        shared.log().acks.push(ack);
    }
}

/// The console's edit of a held key after a hand-over (`edit.ts`,
/// `applyAfterHandover`): read the record, open the key with
/// `request_release` under the console's client id, apply the change as a
/// merge patch with `save` (it touches only its own new field, so it never
/// collides), and release.
async fn console_handover_edit(shared: &Shared, c: &Client, base: &str, key: &str, client_id: &str, start: u64) {
    let body = json!({"client_id": format!("console-{client_id}"), "policy": "request_release", "grace_ms": 3000,
        "timeout_ms": 1500});
    let answer = send(c.post(format!("{base}{}/session", key_path(key))).json(&body)).await;
    shared.log().disruptions.push(Disruption { key: Some(key.into()), server: None, start, end: tick() });
    let Some((StatusCode::OK, v)) = answer else { return };
    let (Some(token), Some(epoch)) = (v["lease_token"].as_str(), v["epoch"].as_u64()) else {
        panic!("an open answered without token or epoch: {v}")
    };
    let mut ops = ops_of(&v["data"]);
    let op = format!("{}", shared.unique());
    let session = format!("{base}{}/session", key_path(key));
    let answer = send(
        c.patch(format!("{session}/data?save=normal"))
            .header("Lease-Token", token)
            .header("Content-Type", "application/merge-patch+json")
            .body(json!({"ops": {op.clone(): true}}).to_string()),
    )
    .await;
    if let Some((StatusCode::OK, r)) = answer {
        ops.insert(op);
        let revision = r["revision"].as_u64().expect("a saved patch names its revision");
        let what = format!("{client_id} console hand-over edit");
        shared.log().acks.push(Ack { key: key.into(), epoch, revision, ops, what, condition: None });
    }
    let released = send(c.post(format!("{session}/release")).header("Lease-Token", token)).await;
    if let Some((StatusCode::OK, _)) = released {
        let after = shared.history_len();
        shared.log().released.push((key.into(), epoch, after));
    }
}

/// The console's delete of a held key (`edit.ts`, `deleteAfterHandover`):
/// read the record, open it with `request_release` under the console's
/// client id, give up (closing) if the document changed since the read,
/// release, then `DELETE` with `If-Match` on the released version.
async fn console_handover_delete(shared: &Shared, c: &Client, base: &str, key: &str, client_id: &str, start: u64) {
    let Some((StatusCode::OK, seen)) = send(c.get(format!("{base}{}", key_path(key)))).await else { return };
    let body = json!({"client_id": format!("console-{client_id}"), "policy": "request_release", "grace_ms": 3000,
        "timeout_ms": 1500});
    let answer = send(c.post(format!("{base}{}/session", key_path(key))).json(&body)).await;
    shared.log().disruptions.push(Disruption { key: Some(key.into()), server: None, start, end: tick() });
    let Some((StatusCode::OK, v)) = answer else { return };
    let (Some(token), Some(epoch)) = (v["lease_token"].as_str(), v["epoch"].as_u64()) else {
        panic!("an open answered without token or epoch: {v}")
    };
    let session = format!("{base}{}/session", key_path(key));
    if v["data"] != seen["data"] {
        let _ = send(c.delete(&session).header("Lease-Token", token)).await;
        return;
    }
    let Some((StatusCode::OK, released)) =
        send(c.post(format!("{session}/release")).header("Lease-Token", token)).await
    else {
        return;
    };
    shared.log().released.push((key.into(), epoch, shared.history_len()));
    let revision = released["revision"].as_u64().expect("a release names its revision");
    let req = c.delete(format!("{base}{}", key_path(key))).header("If-Match", format!("\"{epoch}.{revision}\""));
    logged_delete(shared, req, key, format!("{client_id} console delete"), tick(), false).await;
}

/// Sends a `DELETE` of `key` and logs it for the checks: the call, a
/// forced one's disruption, the delete it acknowledged, and the inbox it
/// cleared (or may have: an unknown answer counts as cleared).
async fn logged_delete(shared: &Shared, req: reqwest::RequestBuilder, key: &str, who: String, start: u64, force: bool) {
    let before = shared.history_len();
    let answer = send(req).await;
    let end = tick();
    let mut log = shared.log();
    let said = answer.as_ref().map_or("no answer".to_owned(), |(st, v)| format!("{st} {v}"));
    log.delete_calls.push((key.into(), who, start, end, said));
    if force {
        log.disruptions.push(Disruption { key: Some(key.into()), server: None, start, end });
    }
    match answer {
        Some((StatusCode::OK, v)) => {
            if v["deleted"] == json!(true) {
                log.deletes.push((key.into(), before));
            }
            log.clears.push(InboxClear { key: key.into(), up_to: None, end });
        }
        Some((StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT, _)) => {}
        _ => log.clears.push(InboxClear { key: key.into(), up_to: None, end }),
    }
}

/// An Open Cloud tool's compare-and-set: read the entry (v1), add a
/// change, set it with `matchVersion` (`exclusiveCreate` when absent).
async fn open_cloud_set(shared: &Shared, c: &Client, base: &str, key: &str, client_id: &str) {
    let url = format!(
        "{base}/datastores/v1/universes/1/standard-datastores/datastore/entries/entry?datastoreName={STORE}&entryKey={key}"
    );
    let Ok(read) = c.get(&url).send().await else { return };
    let (mut doc, version) = match read.status() {
        StatusCode::OK => {
            let v = read.headers().get("roblox-entry-version").and_then(|h| h.to_str().ok()).map(str::to_owned);
            let Ok(doc) = read.json::<Value>().await else { return };
            (doc, v)
        }
        StatusCode::NOT_FOUND => (json!({}), None),
        _ => return,
    };
    let op = format!("{}", shared.unique());
    if !doc.is_object() {
        doc = json!({});
    }
    doc["ops"][op.as_str()] = json!(true);
    let condition = match &version {
        Some(v) => {
            let (e, r) = v.split_once('.').unwrap();
            Some(Some((e.parse().unwrap(), r.parse().unwrap())))
        }
        None => Some(None),
    };
    let set = match &version {
        Some(v) => format!("{url}&matchVersion={v}"),
        None => format!("{url}&exclusiveCreate=true"),
    };
    if let Some((StatusCode::OK, v)) = send(c.post(set).body(doc.to_string())).await {
        let (e, r) = v["version"].as_str().and_then(|v| v.split_once('.')).unwrap();
        shared.log().acks.push(Ack {
            key: key.into(),
            epoch: e.parse().unwrap(),
            revision: r.parse().unwrap(),
            ops: ops_of(&doc),
            what: format!("{client_id} open cloud set {condition:?}"),
            condition,
        });
    }
}

/// The Luau facade's `UpdateAsync` on the wire.
async fn facade_update(
    shared: &Shared,
    c: &Client,
    base: &str,
    key: &'static str,
    client_id: &str,
    known: &mut HashMap<&'static str, ((u64, u64), Value)>,
) {
    for _ in 0..4 {
        let (seen, mut doc) = match known.remove(key) {
            Some((h, doc)) => (Some(h), doc),
            None => match send(c.get(format!("{base}{}", key_path(key)))).await {
                Some((StatusCode::OK, v)) => {
                    (Some((v["epoch"].as_u64().unwrap(), v["revision"].as_u64().unwrap())), v["data"].clone())
                }
                Some((StatusCode::NOT_FOUND, _)) => (None, json!({})),
                _ => return,
            },
        };
        let op = format!("{}", shared.unique());
        if !doc.is_object() {
            doc = json!({});
        }
        doc["ops"][op.as_str()] = json!(true);
        let mut req = c
            .put(format!("{base}{}", key_path(key)))
            .header("Content-Type", "application/json")
            .header("Prefer", "return=minimal")
            .header("Datastorer-User-Ids", "[]")
            .header("Datastorer-Metadata", "{}")
            .body(doc.to_string());
        req = match seen {
            Some((e, r)) => req.header("If-Match", format!("\"{e}.{r}\"")),
            None => req.header("If-None-Match", "*"),
        };
        match send(req).await {
            Some((StatusCode::OK, v)) => {
                let (epoch, revision) = (v["epoch"].as_u64().unwrap(), v["revision"].as_u64().unwrap());
                shared.log().acks.push(Ack {
                    key: key.into(),
                    epoch,
                    revision,
                    ops: ops_of(&doc),
                    what: format!("{client_id} facade UpdateAsync {seen:?}"),
                    condition: Some(seen),
                });
                known.insert(key, ((epoch, revision), doc));
                return;
            }
            Some((StatusCode::PRECONDITION_FAILED, _)) => continue,
            _ => return,
        }
    }
}

/// Sets the stand-in Roblox's value of `key` to a fresh marker and runs
/// `datastorer import-roblox` into `base` (every source key goes).
async fn import_run(shared: &Shared, c: &Client, base: &str, key: &str, client_id: &str) {
    let marker = format!("import-{}", shared.unique());
    let set = format!(
        "{}/datastores/v1/universes/1/standard-datastores/datastore/entries/entry?datastoreName={STORE}&entryKey={key}",
        shared.source
    );
    if !matches!(send(c.post(set).body(json!({"ops": {marker: true}}).to_string())).await, Some((StatusCode::OK, _))) {
        return;
    }
    let state = shared.work.join(format!("import-{}.json", shared.unique()));
    let (source, target) = (shared.source.clone(), base.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::server::BIN)
            .args(["import-roblox", "--universe", "1", "--datastore", STORE, "--source-rate", "0"])
            .args(["--source", &source, "--target", &target, "--state"])
            .arg(&state)
            .env("ROBLOX_API_KEY", "unused-by-an-open-server")
            .output()
            .expect("run import-roblox")
    })
    .await
    .expect("the import thread");
    let report = String::from_utf8_lossy(&out.stdout);
    shared.log().imports.push(format!("{client_id}: {} {report}", out.status));
}

fn refused(shared: &Shared, key: &str, server: usize, held: &Held, at: u64, what: String) {
    let refusal = Refusal { key: key.into(), server, epoch: held.epoch, opened: held.opened, at, what };
    shared.log().refusals.push(refusal);
}

/// One committed row version (or delete) of the records table.
struct Row {
    seq: u64,
    store: String,
    key: String,
    record: Option<Record>,
}

fn history(pg: &PgSchema) -> Vec<Row> {
    pg.sql(
        "SELECT seq || ' ' || store || ' ' || key || ' ' || coalesce(encode(value, 'hex'), '-') FROM $S.history ORDER BY seq",
    )
    .into_iter()
    .flatten()
    .map(|line| {
        let mut parts = line.split(' ');
        let seq = parts.next().unwrap().parse().unwrap();
        let store = parts.next().unwrap().to_owned();
        let key = parts.next().unwrap().to_owned();
        let hex = parts.next().unwrap();
        let record = (hex != "-").then(|| {
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            Record::decode(&bytes).unwrap_or_else(|e| panic!("row {seq} does not decode: {e}"))
        });
        Row { seq, store, key, record }
    })
    .collect()
}

fn doc_ops(r: &Record) -> BTreeSet<String> {
    ops_of(&serde_json::from_slice(&r.data).unwrap_or(Value::Null))
}

/// Everything the run knows of one key, for a failure to explain itself:
/// its committed rows (seq:epoch.revision:owner:ops), its acknowledgements
/// and the servers' log lines about it.
fn story(records: &[&Row], log: &Log, server_logs: &str, key: &str) -> String {
    let trail: Vec<String> = records
        .iter()
        .filter(|x| x.key == key)
        .map(|x| match &x.record {
            Some(rec) => format!(
                "{}:{}.{}:{}:{:?}",
                x.seq,
                rec.header.epoch,
                rec.header.revision,
                rec.lease.as_ref().map_or("-", |l| l.owner.as_str()),
                doc_ops(rec)
            ),
            None => format!("{}:deleted", x.seq),
        })
        .collect();
    let said: Vec<String> =
        log.acks.iter().filter(|x| x.key == key).map(|x| format!("{}@{}/{}", x.what, x.epoch, x.revision)).collect();
    let logs: Vec<&str> = server_logs
        .lines()
        .filter(|l| l.contains(&format!("key={key}")) || l.contains(&format!("key=\"{key}\"")))
        .filter(|l| !l.contains("datastorer::access"))
        .collect();
    format!("rows: {}\nacks of the key: {said:?}\nserver logs about it:\n{}", trail.join("\n  "), logs.join("\n"))
}

fn check(rows: &[Row], log: &Log, server_logs: &str) {
    let records: Vec<&Row> = rows.iter().filter(|r| r.store == STORE).collect();
    // 1. Epochs, owners, headers.
    let mut last_epoch: HashMap<&str, u64> = HashMap::new();
    let mut owner_of: HashMap<(&str, u64), String> = HashMap::new();
    let mut at_header: HashMap<(&str, u64, u64), &Row> = HashMap::new();
    for row in &records {
        let Some(rec) = &row.record else { continue };
        let (key, epoch) = (row.key.as_str(), rec.header.epoch);
        let prev = last_epoch.insert(key, epoch).unwrap_or(0);
        assert!(epoch >= prev, "{key}: epoch went from {prev} down to {epoch} at row {}", row.seq);
        if let Some(owner) = rec.lease.as_ref().map(|l| l.owner.clone()) {
            let first = owner_of.entry((key, epoch)).or_insert_with(|| owner.clone());
            assert_eq!(first, &owner, "{key}: epoch {epoch} written by two owners (row {})", row.seq);
        }
        let header = (key, epoch, rec.header.revision);
        assert!(at_header.insert(header, row).is_none(), "header {header:?} written twice (row {})", row.seq);
    }
    // 2. Acknowledged writes committed as acknowledged, conditions held.
    let mut acked_rows: HashMap<u64, BTreeSet<String>> = HashMap::new();
    for a in &log.acks {
        let row = at_header
            .get(&(a.key.as_str(), a.epoch, a.revision))
            .unwrap_or_else(|| panic!("acknowledged {} {}@{}/{} never committed", a.what, a.key, a.epoch, a.revision));
        let ops = doc_ops(row.record.as_ref().unwrap());
        let missing: Vec<_> = a.ops.difference(&ops).collect();
        if !missing.is_empty() {
            panic!(
                "{} {}@{}/{}: committed without {missing:?}\n{}",
                a.what,
                a.key,
                a.epoch,
                a.revision,
                story(&records, log, server_logs, &a.key)
            );
        }
        acked_rows.entry(row.seq).or_default().extend(a.ops.iter().cloned());
        if let Some(condition) = a.condition {
            let acquire = records
                .iter()
                .find(|r| r.key == a.key && r.record.as_ref().is_some_and(|x| x.header.epoch == a.epoch))
                .unwrap();
            let before = records.iter().rev().find(|r| r.key == a.key && r.seq < acquire.seq);
            let found = before.and_then(|r| r.record.as_ref()).map(|r| (r.header.epoch, r.header.revision));
            assert_eq!(
                found,
                condition,
                "{} {}@{}: its condition did not hold\n{}",
                a.what,
                a.key,
                a.epoch,
                story(&records, log, server_logs, &a.key)
            );
        }
    }
    for (key, before) in &log.deletes {
        assert!(
            records.iter().any(|r| r.seq > *before && r.key == *key && r.record.is_none()),
            "an acknowledged delete of {key} never committed"
        );
    }
    // 3. Nothing acknowledged lost, nothing deleted back.
    for key in KEYS {
        let (mut must, mut since, mut deleted) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut last_epoch = None;
        for row in records.iter().filter(|r| r.key == key) {
            let Some(rec) = &row.record else {
                deleted.append(&mut since);
                must.clear();
                last_epoch = None;
                continue;
            };
            let ops = doc_ops(rec);
            // A restore: a new epoch written with no lease. An import: a
            // document that is exactly an imported value.
            let imported = ops.len() == 1 && ops.iter().all(|op| op.starts_with("import-"));
            if (rec.lease.is_none() && last_epoch != Some(rec.header.epoch)) || imported {
                must.clear();
                deleted.retain(|op| !ops.contains(op));
            }
            last_epoch = Some(rec.header.epoch);
            let lost: Vec<&String> = must.difference(&ops).collect();
            assert!(lost.is_empty(), "{key}: row {} lost acknowledged changes {lost:?}", row.seq);
            let back: Vec<&String> = deleted.intersection(&ops).collect();
            assert!(back.is_empty(), "{key}: row {} brought back deleted changes {back:?}", row.seq);
            since.extend(ops.iter().cloned());
            if let Some(acked) = acked_rows.get(&row.seq) {
                must.extend(acked.iter().cloned());
            }
        }
    }
    // 4. A released epoch is never written again.
    for (key, epoch, after) in &log.released {
        let late = records
            .iter()
            .find(|r| r.seq > *after && r.key == *key && r.record.as_ref().is_some_and(|x| x.header.epoch == *epoch));
        assert!(late.is_none(), "{key}@{epoch} written (row {:?}) after its release was answered", late.map(|r| r.seq));
    }
    // 5. No valid request refused.
    for r in &log.refusals {
        let explained = log.disruptions.iter().any(|d| {
            d.start <= r.at
                && d.end >= r.opened
                && d.key.as_deref().is_none_or(|k| k == r.key)
                && d.server.is_none_or(|s| s == r.server)
        });
        if !explained {
            let deletes: Vec<String> = log
                .delete_calls
                .iter()
                .filter(|(k, _, _, end, _)| *k == r.key && *end + 200 >= r.opened)
                .map(|(_, who, start, end, said)| format!("{who} [{start}, {end}]: {said}"))
                .collect();
            panic!(
                "a live session (epoch {}) was refused with nothing that could end it: {} (opened at tick {}, refused at {}); \
                 deletes of {} near then: {:?}\n{}",
                r.epoch,
                r.what,
                r.opened,
                r.at,
                r.key,
                deletes,
                story(&records, log, server_logs, &r.key)
            );
        }
    }
    // 6. Messages.
    for key in KEYS {
        let last = rows.iter().rev().find(|r| r.store == format!("{STORE}:inbox") && r.key == key);
        let stored: BTreeSet<u64> = last
            .and_then(|r| r.record.as_ref())
            .map(|r| {
                let inbox: Value = serde_json::from_slice(&r.data).unwrap();
                inbox["messages"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|m| m["body"]["n"].as_u64()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let posts: Vec<&Post> = log.posts.iter().filter(|p| p.key == key).collect();
        for p in &posts {
            let Some(id) = p.id else { continue };
            // Something that may have taken it: a delete or an
            // acknowledgement (by id) that ended after the post began.
            let may_be_gone =
                log.clears.iter().any(|c| c.key == key && c.end > p.start && c.up_to.is_none_or(|u| u >= id));
            assert!(may_be_gone || stored.contains(&p.n), "{key}: acknowledged message {} (id {id}) is gone", p.n);
        }
        for n in &stored {
            assert!(posts.iter().any(|p| p.n == *n), "{key}: message {n} was never posted");
        }
    }
}

#[tokio::test]
async fn every_write_path_over_http_keeps_what_it_acknowledged_across_two_servers() {
    let Some(pg) = PgSchema::new("every_write_path_over_http") else { return };
    let steps = env_or("DATASTORER_HTTP_CHECK_STEPS", 150);
    let tmp = tempfile::tempdir().unwrap();
    let (url, schema) = (pg.url.clone(), pg.schema.clone());
    let start = |name: &str| {
        let args = [
            "--owner-id",
            name,
            "--lease-ttl-secs",
            "4",
            "--autosave-interval-secs",
            "1",
            "--fleet-secret",
            "write-path-checker-fleet-secret-0123456789",
        ];
        Server::start_pg(&tmp.path().join(name), &url, &schema, &args)
    };
    let a = start("srv-a");
    let mut b = start("srv-b");
    // Roblox, as far as an import can tell: a server of its own (sled).
    let mut source = Server::process(&tmp.path().join("roblox"), &["--access-log", "false"]);
    pg.sql(
        "CREATE TABLE $S.history (seq bigserial PRIMARY KEY, store text, key text, value bytea);
         CREATE FUNCTION $S.log_history() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF TG_OP = 'DELETE' THEN INSERT INTO $S.history (store, key, value) VALUES (OLD.store, OLD.key, NULL);
           ELSE INSERT INTO $S.history (store, key, value) VALUES (NEW.store, NEW.key, NEW.value); END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER log_history AFTER INSERT OR UPDATE OR DELETE ON $S.records
           FOR EACH ROW EXECUTE FUNCTION $S.log_history();",
    );
    let shared = Arc::new(Shared {
        bases: [RwLock::new(a.base.clone()), RwLock::new(b.base.clone())],
        source: source.base.clone(),
        work: tmp.path().to_owned(),
        log: Mutex::new(Log::default()),
        pg,
        next: AtomicU64::new(1),
        done: AtomicU64::new(0),
    });
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..CLIENTS).map(|i| tokio::spawn(client(shared.clone(), i, steps))).collect();
    // Halfway, server b dies without a word and comes back (same owner id,
    // so it reclaims its leases at once).
    while shared.done.load(Ordering::SeqCst) < CLIENTS as u64 * steps / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kill_start = tick();
    b.kill();
    b = start("srv-b");
    *shared.bases[1].write().unwrap() = b.base.clone();
    let kill_end = tick();
    shared.log().disruptions.push(Disruption { key: None, server: Some(1), start: kill_start, end: kill_end });
    for c in clients {
        c.await.expect("a client panicked");
    }
    let rows = history(&shared.pg);
    let log = std::mem::take(&mut *shared.log());
    println!(
        "write paths over HTTP: {CLIENTS} clients × {steps} steps on 2 servers (one killed and restarted) in {:.1} s: \
         {} committed rows checked, {} acknowledged writes ({} restores, {} Open Cloud sets, {} facade updates, \
         {} client resumes, {} console edits), {} console deletes, \
         {} import runs ({} rows written by them), {} acknowledged deletes, {} posts, {} refusals explained",
        started.elapsed().as_secs_f64(),
        rows.len(),
        log.acks.len(),
        log.acks.iter().filter(|a| a.what.contains("restore")).count(),
        log.acks.iter().filter(|a| a.what.contains("open cloud")).count(),
        log.acks.iter().filter(|a| a.what.contains("facade")).count(),
        log.resumes,
        log.acks.iter().filter(|a| a.what.contains("console")).count(),
        log.delete_calls.iter().filter(|d| d.1.contains("console") && d.4.starts_with("200")).count(),
        log.imports.len(),
        rows.iter()
            .filter(|r| r.record.as_ref().is_some_and(|rec| {
                let ops = doc_ops(rec);
                ops.len() == 1 && ops.iter().all(|o| o.starts_with("import-")) && rec.lease.is_none()
            }))
            .count(),
        log.deletes.len(),
        log.posts.len(),
        log.refusals.len()
    );
    assert!(!log.acks.is_empty(), "some writes were acknowledged");
    assert!(
        log.acks.iter().any(|a| a.what.contains("open cloud")) && log.acks.iter().any(|a| a.what.contains("facade")),
        "Open Cloud sets and facade updates were acknowledged"
    );
    let (mut a, mut b) = (a, b);
    let _ = (a.stop(), b.stop(), source.stop());
    let server_logs = format!("{}\n{}", a.log(), b.log());
    check(&rows, &log, &server_logs);
}
