//! `POST /v1/batch`: many session operations on many keys in one request
//! (opens too, so a game server that restarts re-opens its players in one
//! request), answered per operation, and `POST /v1/clients/{client_id}/renew`: every
//! session of one client renewed at once. For clients that pay per request
//! (a game server's 500 a minute), autosave, renewal and shutdown of a
//! hundred players become a handful of requests.
//!
//! Operations on one key run in the order sent; keys run concurrently, so
//! their saves reach the queue together and share its group commits. After
//! an operation on a key fails, the later ones on that key are skipped
//! (`424 skipped`): a `release` must never run after the `patch` before it
//! failed. The whole batch is checked before anything runs; a malformed one
//! is refused with nothing done.
//!
//! Must not: keep state of its own. Every operation goes through the same
//! client sessions and engine calls as its single-request route.

use std::collections::HashMap;
use std::time::Instant;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::fallback::resource;
use super::session::{add_notices, open, OpenArgs, PolicyKind};
use crate::access::AccessClient;
use crate::auth::Role;
use crate::error::{ApiError, ErrorCode};
use crate::extract::{check_client_id, parse, required_json, session_of, PriorityParam};
use crate::json::merge_patch;
use crate::limits::MAX_BATCH_OPS;
use crate::sessions::Ending;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Registers the batch routes.
pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/batch").route(web::post().to(batch)))
        .service(resource("/v1/clients/{client_id}/renew").route(web::post().to(renew_client)));
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Open,
    Patch,
    Replace,
    Save,
    Renew,
    Release,
    Close,
}

/// One operation as sent. The fields allowed depend on `op`; which ones is
/// checked by [`Op::check`] so the error names the operation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    op: Kind,
    store: String,
    key: String,
    /// Every operation's but `open`'s.
    lease_token: Option<String>,
    /// `open`: as the open route's body.
    client_id: Option<String>,
    user_ids: Option<Vec<Value>>,
    policy: Option<PolicyKind>,
    timeout_ms: Option<u64>,
    grace_ms: Option<u64>,
    /// `patch`: the merge patch; `replace`: the document; `release`: an
    /// optional final merge patch, applied before the save.
    data: Option<Value>,
    /// `patch`/`replace`: save once applied, on this lane.
    save: Option<PriorityParam>,
    /// `save`/`release`: the lane (normal unless emergency).
    priority: Option<PriorityParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    ops: Vec<Value>,
}

impl OpBody {
    /// Refuses a combination the operation does not take, naming it.
    fn check(&self, at: usize) -> Result<()> {
        let bad = |m: String| Err(ApiError::new(ErrorCode::BadOperation, format!("ops[{at}]: {m}")));
        let name = format!("{:?}", self.op).to_ascii_lowercase();
        datastorer::validate_store_name(&self.store)
            .map_err(|e| ApiError::new(ErrorCode::InvalidName, format!("ops[{at}]: {e}")))?;
        datastorer::validate_key(&self.key)
            .map_err(|e| ApiError::new(ErrorCode::InvalidName, format!("ops[{at}]: {e}")))?;
        let opening = self.op == Kind::Open;
        match (&self.lease_token, opening) {
            (Some(_), true) => return bad("open takes no lease_token".into()),
            (None, false) => return bad(format!("{name} needs lease_token")),
            (Some(t), false) if t.is_empty() => return bad("lease_token is empty".into()),
            _ => {}
        }
        let open_fields = self.client_id.is_some()
            || self.user_ids.is_some()
            || self.policy.is_some()
            || self.timeout_ms.is_some()
            || self.grace_ms.is_some();
        if open_fields && !opening {
            return bad(format!(
                "{name} takes no client_id, user_ids, policy, timeout_ms or grace_ms (only open does)"
            ));
        }
        match self.op {
            Kind::Open if self.data.is_some() => return bad("open takes no data".into()),
            Kind::Patch | Kind::Replace if self.data.is_none() => return bad(format!("{name} needs data")),
            Kind::Save | Kind::Renew | Kind::Close if self.data.is_some() => {
                return bad(format!("{name} takes no data"))
            }
            _ => {}
        }
        if self.save.is_some() && !matches!(self.op, Kind::Patch | Kind::Replace) {
            return bad(format!("{name} takes no save (only patch and replace do; use priority)"));
        }
        if self.priority.is_some() && !matches!(self.op, Kind::Save | Kind::Release) {
            return bad(format!("{name} takes no priority (only save and release do)"));
        }
        Ok(())
    }
}

/// One operation's answer: `{"status": 200, …}` or the error body with its
/// status.
fn failure(e: &ApiError) -> Value {
    let mut out = Map::new();
    out.insert("status".into(), json!(e.status().as_u16()));
    out.insert("code".into(), json!(e.code.as_str()));
    out.insert("message".into(), json!(e.message));
    if let Some(Value::Object(extra)) = &e.details {
        out.extend(extra.clone());
    }
    Value::Object(out)
}

fn skipped(first_failure: usize) -> Value {
    let code = ErrorCode::Skipped;
    json!({
        "status": code.status().as_u16(),
        "code": code.as_str(),
        "message": format!("not run: ops[{first_failure}] on the same key failed before it"),
    })
}

/// Runs one operation for the API key `api_key`; answers its success body.
async fn run_op(state: &AppState, api_key: &str, op: OpBody) -> Result<Value> {
    if op.op == Kind::Open {
        let store = state.store(&op.store)?;
        let args = OpenArgs {
            client_id: op.client_id,
            user_ids: op.user_ids.unwrap_or_default(),
            policy: op.policy.unwrap_or_default(),
            timeout_ms: op.timeout_ms,
            grace_ms: op.grace_ms,
        };
        let mut answer = open(state, None, api_key, &store, &op.store, &op.key, args).await?;
        answer["status"] = json!(200);
        return Ok(answer);
    }
    let path = (op.store, op.key);
    let token = op.lease_token.unwrap_or_default();
    let (session, grant) = session_of(state, &path.0, &path.1, &token).await?;
    let mut out = json!({ "status": 200 });
    add_notices(&mut out, &grant);
    let final_patch = match op.op {
        Kind::Patch | Kind::Replace => op.data.map(|d| (op.op, d)),
        Kind::Release => op.data.map(|d| (Kind::Patch, d)),
        _ => None,
    };
    if let Some((kind, data)) = final_patch {
        session
            .update(move |doc| match kind {
                Kind::Replace => *doc = data,
                _ => merge_patch(doc, &data),
            })
            .await?;
    }
    let started = Instant::now();
    match op.op {
        Kind::Patch | Kind::Replace => {
            if let Some(priority) = op.save {
                let outcome = session.save(priority.into()).await?;
                state.metrics.observe_save(started.elapsed());
                out["revision"] = json!(outcome.revision);
                out["durable"] = json!(true);
            }
        }
        Kind::Save => {
            let outcome = session.save(op.priority.unwrap_or_default().into()).await?;
            state.metrics.observe_save(started.elapsed());
            out["revision"] = json!(outcome.revision);
            out["durable"] = json!(true);
        }
        Kind::Renew => {
            out["epoch"] = json!(grant.epoch);
            out["expires_at_ms"] = json!(grant.expires_at_ms);
        }
        Kind::Release => {
            let ending = Ending::Release(op.priority.unwrap_or_default().into());
            let revision = state.sessions.end(&path.0, &path.1, &token, ending).await?;
            state.metrics.observe_save(started.elapsed());
            out["revision"] = json!(revision);
            out["released"] = json!(true);
        }
        Kind::Open => {} // answered above
        Kind::Close => {
            let revision = state.sessions.end(&path.0, &path.1, &token, Ending::Close).await?;
            out["revision"] = json!(revision);
            out["closed"] = json!(true);
        }
    }
    Ok(out)
}

/// The operations on one key, in order; answers (index, result) pairs.
async fn run_key(state: &AppState, api_key: &str, ops: Vec<(usize, OpBody)>) -> Vec<(usize, Value)> {
    let mut results = Vec::with_capacity(ops.len());
    let mut failed_at = None;
    for (at, op) in ops {
        if let Some(first) = failed_at {
            results.push((at, skipped(first)));
            continue;
        }
        match run_op(state, api_key, op).await {
            Ok(v) => results.push((at, v)),
            Err(e) => {
                failed_at = Some(at);
                results.push((at, failure(&e)));
            }
        }
    }
    results
}

/// `POST /v1/batch`: `{"ops": [{"op", "store", "key", "lease_token", …}]}`
/// answered `200 {"results": [...], "succeeded", "failed"}` with one result
/// per operation, in the order sent.
async fn batch(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Write)?;
    let body = required_json(&req, payload, &state, &["application/json"], r#"{"ops": [...]}"#).await?;
    let body: BatchBody = parse(body)?;
    if body.ops.len() > MAX_BATCH_OPS {
        return Err(ApiError::new(
            ErrorCode::TooManyOperations,
            format!("a batch carries at most {MAX_BATCH_OPS} operations; this one has {}", body.ops.len()),
        )
        .with(json!({ "max_operations": MAX_BATCH_OPS })));
    }
    let n = body.ops.len();
    let mut by_key: Vec<Vec<(usize, OpBody)>> = Vec::new();
    let mut slot: HashMap<(String, String), usize> = HashMap::new();
    // Kept as sent, for the operations forwarded to another server.
    let raws = body.ops.clone();
    for (at, raw) in body.ops.into_iter().enumerate() {
        let op: OpBody = parse(raw).map_err(|e| ApiError::new(e.code, format!("ops[{at}]: {}", e.message)))?;
        op.check(at)?;
        who.may_use(&op.store).map_err(|e| ApiError { message: format!("ops[{at}]: {}", e.message), ..e })?;
        let i = *slot.entry((op.store.clone(), op.key.clone())).or_insert_with(|| {
            by_key.push(Vec::new());
            by_key.len() - 1
        });
        by_key[i].push((at, op));
    }
    let mut results = vec![Value::Null; n];
    let api_key = who.name.clone();
    let key_of: Vec<Vec<usize>> = by_key.iter().map(|ops| ops.iter().map(|(at, _)| *at).collect()).collect();
    for (at, result) in
        join_all(by_key.into_iter().map(|ops| run_key(&state, &api_key, ops))).await.into_iter().flatten()
    {
        results[at] = result;
    }
    forward_misdirected(&req, &state, &raws, &key_of, &mut results).await;
    let succeeded = results.iter().filter(|r| r["status"] == 200).count();
    Ok(HttpResponse::Ok().json(json!({ "results": results, "succeeded": succeeded, "failed": n - succeeded })))
}

/// In a fleet: the operations on keys whose sessions live on another
/// server (answered `421 wrong_server` here, the ones after them on the
/// same key skipped) go to that server, one batch per holder, and their
/// answers take their places, so the batch is answered in the order sent.
async fn forward_misdirected(
    req: &HttpRequest,
    state: &AppState,
    raws: &[Value],
    key_of: &[Vec<usize>],
    results: &mut [Value],
) {
    if !crate::forward::may_forward(state, req) {
        return;
    }
    let mut per_holder: HashMap<String, Vec<usize>> = HashMap::new();
    for indices in key_of {
        let Some(first) = indices.iter().position(|&at| results[at]["code"] == "wrong_server") else { continue };
        let Some(url) = results[indices[first]]["advertise_url"].as_str().map(str::to_owned) else { continue };
        per_holder.entry(url).or_default().extend(&indices[first..]);
    }
    let hops = per_holder.into_iter().map(|(url, mut indices)| async move {
        indices.sort_unstable();
        let ops: Vec<Value> = indices.iter().map(|&at| raws[at].clone()).collect();
        (indices, crate::forward::batch_hop(state, req, &url, ops).await)
    });
    for (indices, answered) in join_all(hops).await {
        for (j, at) in indices.into_iter().enumerate() {
            results[at] = match &answered {
                Ok(sub) => sub.get(j).cloned().unwrap_or_else(|| failure(&unreachable_answer("the answer lacks it"))),
                Err(e) => failure(e),
            };
        }
    }
}

fn unreachable_answer(why: &str) -> ApiError {
    ApiError::new(ErrorCode::HolderUnreachable, format!("the holder's answer: {why}"))
}

/// `POST /v1/clients/{client_id}/renew`: renews every session `client_id`
/// holds that was opened under the caller's API key.
async fn renew_client(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse> {
    state.admit()?;
    let who = state.auth(&req, Role::Write)?;
    let client = path.into_inner();
    check_client_id(&client)?;
    req.extensions_mut().insert(AccessClient(client.clone()));
    let mut renewed = state.sessions.renew_client(&client, &who.name);
    renewed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sessions: Vec<Value> = renewed
        .into_iter()
        .map(|((store, key), g)| json!({ "store": store, "key": key, "epoch": g.epoch, "expires_at_ms": g.expires_at_ms }))
        .collect();
    // In a fleet the client's sessions may live on every server: each
    // renews its own, asked in one hop.
    sessions.extend(crate::forward::renew_everywhere(&state, &req, &client).await);
    let expires_at_ms = sessions.iter().filter_map(|s| s["expires_at_ms"].as_u64()).max();
    Ok(HttpResponse::Ok().json(json!({
        "renewed": sessions.len(),
        "expires_at_ms": expires_at_ms,
        "sessions": sessions,
    })))
}
