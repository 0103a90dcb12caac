//! The OpenAPI 3 description of API v1, served at `/v1/openapi.json`.
//! `http::configure` and this document list the same routes; the server
//! tests check that every documented operation is routed.
//!
//! Owns: the document. Must not: restate a limit or an error code; both
//! come from `limits` and `error`.

use serde_json::{json, Value};

use crate::error::ErrorCode;

fn err(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

/// The error answer for `status`: where a code answered with that status
/// says when to retry, the answer carries `Retry-After`.
fn err_for(status: &str, description: &str) -> Value {
    let mut e = err(description);
    let retries = ErrorCode::ALL.iter().any(|c| c.status().as_str() == status && c.retry_after_secs().is_some());
    if retries {
        e["headers"] = json!({ "Retry-After": {
            "description": "seconds to wait before retrying", "schema": { "type": "integer", "minimum": 0 } } });
    }
    e
}

/// The `code` property: every code the API answers, each with its status
/// and meaning (`x-codes`), from the one table in `error`.
fn error_codes() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let described: serde_json::Map<String, Value> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), json!({ "status": c.status().as_u16(), "description": c.describe() })))
        .collect();
    json!({ "type": "string", "enum": codes, "x-codes": described })
}

fn ok(schema: Value) -> Value {
    json!({ "description": "OK", "content": { "application/json": { "schema": schema } } })
}

fn body(schema: Value, types: &[&str], required: bool) -> Value {
    let mut content = serde_json::Map::new();
    for t in types {
        content.insert((*t).to_owned(), json!({ "schema": schema.clone() }));
    }
    json!({ "required": required, "content": content })
}

fn op(
    id: &str,
    summary: &str,
    params: Vec<Value>,
    request: Option<Value>,
    success: Value,
    errors: &[(&str, &str)],
) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert("200".into(), success);
    for (code, what) in errors {
        responses.insert((*code).to_owned(), err_for(code, what));
    }
    let mut o = json!({ "operationId": id, "summary": summary, "parameters": params, "responses": responses });
    if let Some(r) = request {
        o["requestBody"] = r;
    }
    o
}

fn path_param(name: &str, max: usize) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": max } })
}

fn query(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema })
}

/// The document; `max_wait` is the server's ceiling on `timeout_ms`.
pub(crate) fn document(max_wait: std::time::Duration) -> Value {
    let max_wait_ms = max_wait.as_millis() as u64;
    let store = || json!({ "name": "store", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$" } });
    let key = || path_param("key", 512);
    let token = || json!({ "name": "Lease-Token", "in": "header", "required": true, "schema": { "type": "string", "minLength": 1 } });
    let priority = || query("priority", json!({ "type": "string", "enum": ["normal", "emergency"] }));
    let save = || query("save", json!({ "type": "string", "enum": ["normal", "emergency"] }));
    let prefer = || {
        json!({ "name": "Prefer", "in": "header", "required": false,
        "description": "`return=minimal` (RFC 7240): leave the document out of the answer (`Preference-Applied: return=minimal`)",
        "schema": { "type": "string", "enum": ["return=minimal", "return=representation"] } })
    };
    // `data` unless `Prefer: return=minimal`; `revision` and `durable` only with `?save=`.
    let changed = json!({ "type": "object", "properties": {
        "data": {}, "revision": { "type": "integer" }, "durable": { "type": "boolean" } } });
    let common: &[(&str, &str)] = &[
        ("400", "bad input"),
        ("401", "missing or unknown API key"),
        ("403", "role too weak, or a store outside the key's scope (`store_forbidden`)"),
        ("429", "the API key's request budget is spent (`rate_limited`)"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        common.iter().copied().chain(extra.iter().copied()).collect()
    };
    let session_errs = with(&[
        ("409", "wrong or foreign lease token"),
        ("410", "the session ended: `reason` says why (released, closed, stolen, release_requested, expired, deleted, shutdown, server_restarted, lease_lost), `taken_over_by` who took over"),
        ("421", "the session lives on another server sharing the database"),
        ("503", "storage unavailable or shutting down"),
    ]);
    let body_errs = with(&[
        ("409", "wrong or foreign lease token"),
        ("410", "the session ended (see `reason`)"),
        ("413", "body too large, or the change would make the document larger than the server saves (`document_too_large`; the session is unchanged)"),
        ("415", "wrong content type"),
        ("503", "storage unavailable or shutting down"),
    ]);
    let record_metadata = || {
        json!({ "name": "Datastorer-Metadata", "in": "header", "required": false,
        "description": "a JSON object: replaces the record's metadata in the same write (Roblox's `SetMetadata`)",
        "schema": { "type": "string" } })
    };
    let record_user_ids = || {
        json!({ "name": "Datastorer-User-Ids", "in": "header", "required": false,
        "description": "a JSON array of user ids: replaces the record's user ids in the same write (Roblox's `SetAsync` user ids)",
        "schema": { "type": "string" } })
    };
    let if_match = || {
        json!({ "name": "If-Match", "in": "header", "required": false,
        "description": "`*` or entity tags (`\"3.17\"`): only if the stored record is still that version (412 otherwise)", "schema": { "type": "string" } })
    };
    let unleased = json!({ "type": "object", "required": ["revision", "epoch", "durable"], "properties": {
        "data": {}, "revision": { "type": "integer" }, "epoch": { "type": "integer" }, "durable": { "type": "boolean" } } });
    let unleased_errs = with(&[
        ("404", "unknown store (strict stores)"),
        ("409", "a session holds the key (`lease_held`, with `holder`)"),
        ("412", "the record changed since the If-Match version, or does not exist (`precondition_failed`)"),
        ("413", "body too large, or the document would be"),
        ("415", "wrong content type"),
        ("422", "the record cannot be migrated or is corrupt"),
        ("503", "storage unavailable or shutting down"),
    ]);
    let any = json!({});
    let mut view_get = op("view_key", "read the stored record without a lease; `ETag: \"EPOCH.REVISION\"`, and `If-None-Match` with that tag answers 304 without a body",
                        vec![store(), key(), json!({ "name": "If-None-Match", "in": "header", "required": false, "schema": { "type": "string" } })], None,
                        ok(json!({ "$ref": "#/components/schemas/Record" })),
                        &with(&[("404", "no such key or store"), ("422", "corrupt record"), ("503", "storage unavailable")]));
    view_get["responses"]["304"] = json!({ "description": "not modified: the tag sent is the stored version" });

    let object = json!({ "type": "object" });
    let session_ops = |extra: Vec<Value>| -> Vec<Value> {
        let mut p = vec![store(), key(), token()];
        p.extend(extra);
        p
    };

    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "datastorer",
            "version": "1",
            "description": "Per-key, session-locked JSON documents. Every route but /healthz and /readyz needs `Authorization: Bearer <api key>` when keys are configured."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": error_codes(),
                        "message": { "type": "string" },
                        "holder": { "type": "string" },
                        "holder_server": { "type": "string", "description": "lease_held: the key is held on this other server of the fleet" },
                        "advertise_url": { "type": "string", "nullable": true, "description": "wrong_server, and lease_held on another server: where that server is" },
                        "expires_at_ms": { "type": "integer", "nullable": true },
                        "reason": { "type": "string" },
                        "taken_over_by": { "type": "string", "nullable": true },
                        "ended_at_ms": { "type": "integer" }
                    }
                },
                "Session": {
                    "type": "object",
                    "required": ["store", "key", "data", "metadata", "user_ids", "revision", "epoch", "expires_at_ms"],
                    "properties": {
                        "store": { "type": "string" }, "key": { "type": "string" },
                        "data": {}, "metadata": { "type": "object" },
                        "user_ids": { "type": "array", "items": { "type": "string" } },
                        "revision": { "type": "integer" }, "epoch": { "type": "integer" },
                        "expires_at_ms": { "type": "integer", "nullable": true }, "lease_token": { "type": "string" },
                        "resumed": { "type": "boolean", "description": "this client_id's own live session, answered again (a retried open)" },
                        "handoff": { "$ref": "#/components/schemas/Handoff" },
                        "messages": { "type": "array", "items": { "$ref": "#/components/schemas/Message" }, "description": "on open: the messages waiting for the key" },
                        "messages_waiting": { "type": "boolean", "description": "messages wait: read them with GET …/session/messages (also the Messages-Waiting: 1 header)" }
                    }
                },
                "OpenSession": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "client_id": { "type": "string", "minLength": 1, "maxLength": 128 },
                        "user_ids": { "type": "array", "items": { "oneOf": [{ "type": "string", "minLength": 1, "maxLength": 128 }, { "type": "integer" }] } },
                        "policy": { "type": "string", "enum": ["fail", "wait", "request_release", "steal"] },
                        "timeout_ms": { "type": "integer", "minimum": 0, "maximum": max_wait_ms },
                        "grace_ms": { "type": "integer", "minimum": 0, "maximum": crate::limits::MAX_GRACE_MS,
                            "description": "with policy=request_release only: how long the holder may take to release with its last change before the server saves and hands over" }
                    }
                },
                "Message": {
                    "type": "object",
                    "required": ["id", "sent_at_ms", "message"],
                    "properties": { "id": { "type": "integer" }, "sent_at_ms": { "type": "integer" }, "message": {} }
                },
                "Handoff": {
                    "type": "object",
                    "description": "another client asked for this key: release it (with a final patch) before deadline_ms, or the server saves and hands it over then. Every single-session answer also carries it as the `Handoff-Requested: <deadline_ms>` header",
                    "properties": { "by": { "type": "string" }, "deadline_ms": { "type": "integer" } }
                },
                "BatchOp": {
                    "type": "object",
                    "required": ["op", "store", "key"],
                    "additionalProperties": false,
                    "description": "open takes what the open route's body does (`client_id`, `user_ids`, `policy`, `timeout_ms`, `grace_ms`) and no `lease_token`, and answers as that route does (with `lease_token`); every other operation needs `lease_token`; patch and replace need `data` and may `save`; release may carry a final merge patch in `data` and a `priority`; save takes a `priority`; renew and close take neither",
                    "properties": {
                        "op": { "type": "string", "enum": ["open", "patch", "replace", "save", "renew", "release", "close"] },
                        "store": { "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$" },
                        "key": { "type": "string", "minLength": 1, "maxLength": 512 },
                        "lease_token": { "type": "string", "minLength": 1 },
                        "client_id": { "type": "string", "minLength": 1, "maxLength": 128 },
                        "user_ids": { "type": "array", "items": { "oneOf": [{ "type": "string" }, { "type": "integer" }] } },
                        "policy": { "type": "string", "enum": ["fail", "wait", "request_release", "steal"] },
                        "timeout_ms": { "type": "integer", "minimum": 0, "maximum": max_wait_ms },
                        "grace_ms": { "type": "integer", "minimum": 0, "maximum": crate::limits::MAX_GRACE_MS },
                        "data": {},
                        "save": { "type": "string", "enum": ["normal", "emergency"] },
                        "priority": { "type": "string", "enum": ["normal", "emergency"] }
                    }
                },
                "Record": {
                    "type": "object",
                    "required": ["store", "key", "data", "revision", "epoch", "data_version"],
                    "properties": {
                        "store": { "type": "string" }, "key": { "type": "string" }, "data": {}, "metadata": {},
                        "user_ids": { "type": "array", "items": { "type": "string" } },
                        "data_version": { "type": "integer" }, "revision": { "type": "integer" }, "epoch": { "type": "integer" },
                        "unmigrated": { "type": "boolean" }, "store_data_version": { "type": "integer" },
                        "lease": { "nullable": true, "type": "object", "properties": { "owner": { "type": "string" }, "expires_at_ms": { "type": "integer" } } },
                        "holder_client": { "type": "string", "nullable": true, "description": "the client holding the key through this server, if one does" },
                        "created_at_ms": { "type": "integer" }, "updated_at_ms": { "type": "integer" }
                    }
                }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/healthz": { "get": { "operationId": "healthz", "summary": "liveness", "security": [], "responses": { "200": ok(object.clone()) } } },
            "/readyz": { "get": { "operationId": "readyz", "summary": "readiness (503 while shutting down)", "security": [],
                "responses": { "200": ok(object.clone()), "503": err_for("503", "shutting down") } } },
            "/metrics": { "get": { "operationId": "metrics", "summary": "Prometheus metrics",
                "responses": { "200": { "description": "OK", "content": { "text/plain": { "schema": { "type": "string" } } } }, "401": err("unauthenticated"), "403": err("forbidden") } } },
            "/v1/openapi.json": { "get": op("openapi", "this document", vec![], None, ok(object.clone()), &with(&[])) },
            "/v1/whoami": { "get": op("whoami", "the name, role (read, write or admin) and store scope (null: every store) of the API key the request came with", vec![], None,
                ok(json!({ "type": "object", "required": ["name", "role", "stores"], "properties": { "name": { "type": "string" }, "role": { "type": "string", "enum": ["read", "write", "admin"] },
                    "stores": { "type": "array", "nullable": true, "items": { "type": "string" } } } })), &with(&[])) },
            "/v1/stats": { "get": op("stats", "the metrics' counters as JSON (the console's live charts): requests and error answers by route, durable saves and their summed latency, lease waits, the queue, sessions, webhook deliveries, the storage's operation budgets (tokens left), api_budgets (each budgeted API key's bucket and its most drawn clients': share used, served, refused; an admin sees every key, another key its own), at_ms", vec![], None, ok(object.clone()), &with(&[])) },
            "/v1/changes": { "get": { "operationId": "changes", "summary": "change feed (Server-Sent Events: saved, released, closed, stolen, release_requested, expired, deleted, resync, lagged); each event's `id:` is its sequence",
                "parameters": [query("store", json!({ "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$" })),
                    json!({ "name": "Last-Event-ID", "in": "header", "required": false, "description": "resume after this sequence", "schema": { "type": "integer", "minimum": 0 } })],
                "responses": { "200": { "description": "event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
                    "400": err("bad input"), "401": err("unauthenticated"), "403": err("forbidden") } } },
            "/v1/changes/poll": { "get": op("poll_changes", "the change feed as a long poll: answers at once when events after `after` wait, else when one arrives or after `wait_ms`; pass `next` as the following `after` (omit `after` to start from now)",
                vec![query("after", json!({ "type": "string", "minLength": 1, "description": "a `next` this feed answered: a sequence number, or in a fleet `owner:seq,…`" })), query("wait_ms", json!({ "type": "integer", "minimum": 0, "maximum": 20000 })),
                    query("store", json!({ "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$" })), query("limit", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                    query("client_id", json!({ "type": "string", "minLength": 1, "maxLength": 128, "description": "only holder notices for this client (handoff_requested, session_ended), plus resync and lagged" }))],
                None,
                ok(json!({ "type": "object", "required": ["events", "next", "lagged"], "properties": {
                    "events": { "type": "array", "items": { "type": "object", "required": ["seq", "kind"], "properties": {
                        "seq": { "type": "integer" }, "kind": { "type": "string" }, "store": { "type": "string" }, "key": { "type": "string" },
                        "revision": { "type": "integer" }, "reason": { "type": "string" }, "holder": { "type": "string" },
                        "by": { "type": "string" }, "deadline_ms": { "type": "integer" },
                        "server": { "type": "string", "description": "in a fleet: the server the event comes from" } } } },
                    "next": { "oneOf": [{ "type": "integer", "minimum": 0 }, { "type": "string" }], "description": "the following poll's `after`: a sequence number, or in a fleet a string naming each server's" },
                    "lagged": { "type": "boolean", "description": "events after `after` were lost: re-read what you cache" } } })),
                &with(&[])) },
            "/v1/batch": { "post": op("batch", "many session operations on many keys in one request, answered per operation in the order sent; operations on one key run in order and a failure skips that key's later ones (424 skipped); saves share group commits",
                vec![],
                Some(body(json!({ "type": "object", "required": ["ops"], "additionalProperties": false, "properties": {
                    "ops": { "type": "array", "maxItems": crate::limits::MAX_BATCH_OPS, "items": { "$ref": "#/components/schemas/BatchOp" } } } }), &["application/json"], true)),
                ok(json!({ "type": "object", "required": ["results", "succeeded", "failed"], "properties": {
                    "results": { "type": "array", "items": { "type": "object", "required": ["status"], "properties": {
                        "status": { "type": "integer" }, "code": { "type": "string" }, "message": { "type": "string" },
                        "revision": { "type": "integer" }, "durable": { "type": "boolean" }, "released": { "type": "boolean" },
                        "closed": { "type": "boolean" }, "epoch": { "type": "integer" }, "expires_at_ms": { "type": "integer", "nullable": true },
                        "handoff": { "$ref": "#/components/schemas/Handoff" }, "messages_waiting": { "type": "boolean" } } } },
                    "succeeded": { "type": "integer" }, "failed": { "type": "integer" } } })),
                &with(&[("413", "body too large, or more than 1000 operations (`too_many_operations`)"), ("415", "wrong content type"), ("503", "shutting down")])) },
            "/v1/webhooks/test": { "post": op("test_webhooks", "send a test alert to every configured webhook (admin)", vec![], None,
                ok(json!({ "type": "object", "properties": { "webhooks": { "type": "integer" } } })), &with(&[])) },
            "/v1/clients/{client_id}/renew": { "post": op("renew_client", "renew every session this client_id holds under the caller's API key",
                vec![path_param("client_id", 128)],
                None,
                ok(json!({ "type": "object", "required": ["renewed", "sessions"], "properties": {
                    "renewed": { "type": "integer" }, "expires_at_ms": { "type": "integer", "nullable": true },
                    "sessions": { "type": "array", "items": { "type": "object", "properties": {
                        "store": { "type": "string" }, "key": { "type": "string" }, "epoch": { "type": "integer" }, "expires_at_ms": { "type": "integer" } } } } } })),
                &with(&[("503", "shutting down")])) },
            "/v1/stores/{store}": { "get": op("describe_store", "the store's template, metadata template and data version (what a client reconciles against)",
                vec![store()],
                None,
                ok(json!({ "type": "object", "required": ["store", "declared", "template", "metadata_template", "data_version"], "properties": {
                    "store": { "type": "string" }, "declared": { "type": "boolean" }, "template": { "type": "object" },
                    "metadata_template": { "type": "object" }, "data_version": { "type": "integer", "minimum": 0 } } })),
                &with(&[("404", "unknown store (strict stores)")])) },
            "/v1/stores": { "get": op("list_stores", "list the stores holding records (declared or not) by name prefix, with a cursor (the last name of the previous page)",
                vec![query("prefix", json!({ "type": "string", "maxLength": 128 })), query("cursor", json!({ "type": "string", "maxLength": 128 })), query("limit", json!({ "type": "integer", "minimum": 1, "maximum": 1000 }))],
                None,
                ok(json!({ "type": "object", "required": ["stores"], "properties": { "stores": { "type": "array", "items": { "type": "string" } }, "next_cursor": { "type": "string", "nullable": true } } })),
                &with(&[("400", "bad prefix, cursor or limit"), ("503", "storage unavailable")])) },
            "/v1/stores/{store}/keys": { "get": op("list_keys", "list stored keys by prefix, with a cursor",
                vec![store(), query("prefix", json!({ "type": "string", "maxLength": 512 })), query("cursor", json!({ "type": "string", "maxLength": 512 })), query("limit", json!({ "type": "integer", "minimum": 1, "maximum": 1000 }))],
                None,
                ok(json!({ "type": "object", "required": ["keys"], "properties": { "keys": { "type": "array", "items": { "type": "string" } }, "next_cursor": { "type": "string", "nullable": true } } })),
                &with(&[("404", "unknown store (strict stores)"), ("503", "storage unavailable")])) },
            "/v1/stores/{store}/usage": { "get": op("store_usage", "how many records and kept versions the store holds and their bytes as stored, counted without reading documents out; a count younger than 30 s is answered again unless `fresh=true`",
                vec![store(), query("fresh", json!({ "type": "boolean" }))],
                None,
                ok(json!({ "type": "object", "required": ["store", "keys", "bytes", "versions", "version_bytes", "measured_at_ms"], "properties": {
                    "store": { "type": "string" }, "keys": { "type": "integer", "minimum": 0 }, "bytes": { "type": "integer", "minimum": 0 },
                    "versions": { "type": "integer", "minimum": 0 }, "version_bytes": { "type": "integer", "minimum": 0 }, "measured_at_ms": { "type": "integer" } } })),
                &with(&[("400", "bad store name"), ("503", "storage unavailable")])) },
            "/v1/stores/{store}/keys/{key}": {
                "get": view_get,
                "patch": op("patch_unleased", "one-shot merge patch of a key no session holds (takes the lease, saves, releases); `If-Match` makes it conditional; answers once durable with the new `ETag`",
                    vec![store(), key(), if_match(), prefer(), record_metadata(), record_user_ids()],
                    Some(body(any.clone(), &["application/merge-patch+json", "application/json"], true)),
                    ok(unleased.clone()), &unleased_errs),
                "put": op("put_unleased", "one-shot replace of the document of a key no session holds; `If-Match` makes it conditional",
                    vec![store(), key(), if_match(), prefer(), record_metadata(), record_user_ids()],
                    Some(body(any.clone(), &["application/json"], true)),
                    ok(unleased.clone()), &unleased_errs),
                "delete": op("delete_key", "delete a key nobody holds (write; kept as a tombstone version), or with force=true end its session and delete it (admin)", vec![store(), key(), query("force", json!({ "type": "boolean" }))], None,
                    ok(json!({ "type": "object", "properties": { "deleted": { "type": "boolean" } } })),
                    &with(&[("404", "no such key or store"), ("409", "the key is leased"), ("422", "corrupt record"), ("503", "storage unavailable")]))
            },
            "/v1/stores/{store}/keys/{key}/session": {
                "post": op("open_session", "open a session (take the lease); policy and timeout_ms may be given in the query or the body, not both with different values", vec![store(), key(),
                        query("policy", json!({ "type": "string", "enum": ["fail", "wait", "request_release", "steal"] })),
                        query("timeout_ms", json!({ "type": "integer", "minimum": 0, "maximum": max_wait_ms })),
                        query("grace_ms", json!({ "type": "integer", "minimum": 0, "maximum": crate::limits::MAX_GRACE_MS }))],
                    Some(body(json!({ "$ref": "#/components/schemas/OpenSession" }), &["application/json"], false)),
                    ok(json!({ "$ref": "#/components/schemas/Session" })),
                    &with(&[("404", "unknown store (strict stores)"), ("409", "held by another client, or its holder could not save (`holder_could_not_save`)"), ("413", "body too large"), ("415", "wrong content type"), ("422", "the record cannot be migrated or is corrupt"), ("503", "storage unavailable or shutting down")])),
                "get": op("get_session", "read the session's live document", session_ops(vec![]), None,
                    ok(json!({ "$ref": "#/components/schemas/Session" })), &session_errs),
                "delete": op("close_session", "end the session without saving", session_ops(vec![]), None,
                    ok(json!({ "type": "object", "properties": { "revision": { "type": "integer" }, "closed": { "type": "boolean" } } })), &session_errs)
            },
            "/v1/stores/{store}/keys/{key}/session/data": {
                "put": op("put_data", "replace the document; with ?save=, answers once durable", session_ops(vec![save(), prefer()]), Some(body(any.clone(), &["application/json"], true)),
                    ok(changed.clone()), &body_errs),
                "patch": op("patch_data", "JSON merge patch (RFC 7396); with ?save=, answers once durable", session_ops(vec![save(), prefer()]),
                    Some(body(any.clone(), &["application/merge-patch+json", "application/json"], true)),
                    ok(changed.clone()), &body_errs)
            },
            "/v1/stores/{store}/keys/{key}/session/metadata": {
                "put": op("put_metadata", "replace the metadata", session_ops(vec![prefer()]), Some(body(object.clone(), &["application/json"], true)),
                    ok(json!({ "type": "object", "properties": { "metadata": { "type": "object" } } })), &body_errs)
            },
            "/v1/stores/{store}/keys/{key}/session/user_ids/{user_id}": {
                "delete": op("remove_user_id", "dissociate a user id (idempotent: `removed` says whether it was there)",
                    session_ops(vec![json!({ "name": "user_id", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 128 } })]), None,
                    ok(json!({ "type": "object", "required": ["user_ids", "removed"], "properties": { "user_ids": { "type": "array", "items": { "type": "string" } }, "removed": { "type": "boolean" } } })), &session_errs)
            },
            "/v1/stores/{store}/keys/{key}/session/user_ids": {
                "post": op("add_user_id", "associate a user id", session_ops(vec![]),
                    Some(body(json!({ "type": "object", "required": ["user_id"], "additionalProperties": false,
                        "properties": { "user_id": { "oneOf": [{ "type": "string", "minLength": 1, "maxLength": 128 }, { "type": "integer" }] } } }), &["application/json"], true)),
                    ok(json!({ "type": "object", "properties": { "user_ids": { "type": "array", "items": { "type": "string" } } } })), &body_errs)
            },
            "/v1/stores/{store}/keys/{key}/messages": {
                "get": op("peek_messages", "the messages waiting for the key, oldest first, without a session and without taking them (what the console shows)",
                    vec![store(), key()], None,
                    ok(json!({ "type": "object", "required": ["messages"], "properties": { "messages": { "type": "array", "items": { "$ref": "#/components/schemas/Message" } } } })),
                    &with(&[("404", "unknown store (strict stores)"), ("503", "storage unavailable")])),
                "post": op("post_message", "post a message (the body, any JSON) to a key, held or not, stored or not; answers its id once durable",
                    vec![store(), key()], Some(body(any.clone(), &["application/json"], true)),
                    ok(json!({ "type": "object", "required": ["id"], "properties": { "id": { "type": "integer" }, "durable": { "type": "boolean" } } })),
                    &with(&[("404", "unknown store (strict stores)"), ("409", "the key's inbox is full (`inbox_full`: `max_messages` wait, or `max_inbox_bytes` would be exceeded)"), ("413", "body too large, or a message above 64 KiB (`message_too_large`, `max_message_bytes`)"), ("415", "wrong content type"), ("503", "storage unavailable or shutting down")]))
            },
            "/v1/stores/{store}/keys/{key}/session/messages": {
                "get": op("list_messages", "the messages waiting for the holder, oldest first", session_ops(vec![]), None,
                    ok(json!({ "type": "object", "required": ["messages"], "properties": { "messages": { "type": "array", "items": { "$ref": "#/components/schemas/Message" } } } })),
                    &session_errs)
            },
            "/v1/stores/{store}/keys/{key}/session/messages/ack": {
                "post": op("ack_messages", "remove the messages up to and including `up_to`, durably (idempotent)", session_ops(vec![]),
                    Some(body(json!({ "type": "object", "required": ["up_to"], "additionalProperties": false, "properties": { "up_to": { "type": "integer", "minimum": 0 } } }), &["application/json"], true)),
                    ok(json!({ "type": "object", "properties": { "removed": { "type": "integer" }, "pending": { "type": "integer" }, "durable": { "type": "boolean" } } })),
                    &body_errs)
            },
            "/v1/stores/{store}/keys/{key}/session/save": {
                "post": op("save", "save now; answers once durable", session_ops(vec![priority()]), None,
                    ok(json!({ "type": "object", "properties": { "revision": { "type": "integer" }, "durable": { "type": "boolean" } } })),
                    &with(&[("409", "wrong or foreign lease token"), ("410", "the session ended (see `reason`)"), ("413", "document too large"), ("503", "storage unavailable")]))
            },
            "/v1/stores/{store}/keys/{key}/session/renew": {
                "post": op("renew", "renew the client lease", session_ops(vec![]), None,
                    ok(json!({ "type": "object", "properties": { "epoch": { "type": "integer" }, "expires_at_ms": { "type": "integer" } } })), &session_errs)
            },
            "/v1/stores/{store}/keys/{key}/session/release": {
                "post": op("release", "save and end the session", session_ops(vec![priority()]), None,
                    ok(json!({ "type": "object", "properties": { "revision": { "type": "integer" }, "released": { "type": "boolean" } } })),
                    &with(&[("409", "wrong or foreign lease token"), ("410", "the session ended (see `reason`)"), ("413", "document too large"), ("503", "storage unavailable")]))
            }
        }
    });
    if let (Some(paths), Value::Object(history)) = (doc["paths"].as_object_mut(), history_paths(&with(&[]))) {
        paths.extend(history);
    }
    doc
}

/// The history routes (`http::history`): versions, one version, the one
/// at a time, and the restore.
fn history_paths(common: &[(&'static str, &'static str)]) -> Value {
    let store = json!({ "name": "store", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$" } });
    let key = path_param("key", 512);
    let version_id = json!({ "type": "string", "pattern": "^[0-9]{1,20}\\.[0-9]{1,20}$" });
    let info = json!({ "type": "object", "required": ["version", "epoch", "revision", "saved_at_ms", "size", "user_ids", "deleted"], "properties": {
        "version": version_id.clone(), "epoch": { "type": "integer" }, "revision": { "type": "integer" },
        "saved_at_ms": { "type": "integer" }, "created_at_ms": { "type": "integer" }, "size": { "type": "integer" },
        "data_version": { "type": "integer" }, "user_ids": { "type": "array", "items": { "type": "string" } },
        "deleted": { "type": "boolean" } } });
    let mut full = info.clone();
    full["properties"]["data"] = json!({ "nullable": true });
    full["properties"]["metadata"] = json!({ "nullable": true });
    let errs = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        common.iter().copied().chain(extra.iter().copied()).collect()
    };
    let read_errs = errs(&[
        ("404", "unknown store (strict stores), or no such version (`no_such_version`)"),
        ("422", "a stored version is corrupt"),
        ("503", "storage unavailable"),
    ]);
    let millis = json!({ "type": "integer", "minimum": 0 });
    let user_id = json!({ "name": "user_id", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 128 } });
    let counts = json!({ "type": "object", "properties": {
        "records_deleted": { "type": "integer" }, "records_unlinked": { "type": "integer" }, "versions_deleted": { "type": "integer" },
        "versions_unlinked": { "type": "integer" }, "inboxes_deleted": { "type": "integer" }, "sessions_ended": { "type": "integer" } } });
    let receipt = json!({ "type": "object", "required": ["id", "at_ms", "stores", "keys"], "properties": {
        "id": { "type": "string" }, "at_ms": { "type": "integer" }, "keys": { "type": "integer" },
        "stores": { "type": "object", "additionalProperties": counts } } });
    json!({
        "/v1/stores/{store}/keys/{key}/versions": {
            "get": op("list_versions", "the key's kept versions (every acknowledged save, a tombstone per delete), newest first unless order=oldest; filter by saved time; page with next_cursor",
                vec![store.clone(), key.clone(), query("order", json!({ "type": "string", "enum": ["newest", "oldest"] })),
                     query("from_ms", millis.clone()), query("to_ms", millis.clone()), query("cursor", version_id.clone()),
                     query("limit", json!({ "type": "integer", "minimum": 1, "maximum": datastorer::MAX_VERSIONS_PAGE }))],
                None,
                ok(json!({ "type": "object", "required": ["versions"], "properties": { "versions": { "type": "array", "items": info }, "next_cursor": { "type": "string", "nullable": true } } })),
                &read_errs)
        },
        "/v1/stores/{store}/keys/{key}/versions/at": {
            "get": op("version_at", "the version current at time_ms (the last saved at or before it; `deleted` when the key was deleted then)",
                vec![store.clone(), key.clone(), json!({ "name": "time_ms", "in": "query", "required": true, "schema": millis.clone() })],
                None, ok(full.clone()), &read_errs)
        },
        "/v1/stores/{store}/keys/{key}/versions/{version}": {
            "get": op("get_version", "one version with its document as saved",
                vec![store.clone(), key.clone(), json!({ "name": "version", "in": "path", "required": true, "schema": version_id.clone() })],
                None, ok(full), &read_errs)
        },
        "/v1/users/{user_id}": {
            "get": op("user_records", "every record and kept version tagged with the user id, across stores, with their documents (admin; a subject-access export)",
                vec![user_id.clone()], None,
                ok(json!({ "type": "object", "required": ["user_id", "records"], "properties": { "user_id": { "type": "string" }, "records": { "type": "array", "items": { "type": "object" } } } })),
                &errs(&[("422", "a tagged record or version is corrupt"), ("503", "storage unavailable")])),
            "delete": op("erase_user", "erase the user id in every store (admin): records tagged with it are deleted with their versions and inbox (stores declared erase = \"unlink\" keep the data without the id), live sessions end with `erased`; idempotent; answers a receipt that repeats no erased data",
                vec![user_id], None, ok(receipt.clone()),
                &errs(&[("409", "a record kept moving under the erasure (`lease_lost`)"), ("422", "a tagged record is corrupt"), ("503", "storage unavailable or shutting down")]))
        },
        "/v1/backup": {
            "get": {
                "operationId": "backup", "summary": "an online backup (admin): every record, version, index entry and meta value as of one instant, streamed while saves go on; restore it with `datastorer restore-backup`",
                "parameters": [],
                "responses": {
                    "200": { "description": "the backup file", "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                    "401": err("missing or unknown API key"), "403": err("role too weak"), "429": err_for("429", "the API key's request budget is spent"),
                    "503": err_for("503", "shutting down")
                }
            }
        },
        "/v1/audit": {
            "get": op("audit_trail", "the audit trail (admin), oldest first: every administrative action (delete, restore, erase, import, forced_open) with who, when, what and how it ended; filter by action, actor, store and key; page with next_cursor",
                vec![query("after", json!({ "type": "string", "pattern": "^[0-9a-f]{48}$" })), query("limit", json!({ "type": "integer", "minimum": 1, "maximum": crate::limits::MAX_LIST_LIMIT })),
                     query("action", json!({ "type": "string" })), query("actor", json!({ "type": "string" })),
                     query("store", json!({ "type": "string" })), query("key", json!({ "type": "string" }))],
                None,
                ok(json!({ "type": "object", "required": ["entries"], "properties": {
                    "entries": { "type": "array", "items": { "type": "object", "required": ["id", "at_ms", "actor", "action", "outcome"], "properties": {
                        "id": { "type": "string" }, "at_ms": { "type": "integer" }, "actor": { "type": "string" }, "action": { "type": "string" },
                        "store": { "type": "string" }, "key": { "type": "string" }, "outcome": { "type": "string" }, "details": {} } } },
                    "next_cursor": { "type": "string", "nullable": true } } })),
                &errs(&[("503", "storage unavailable")]))
        },
        "/v1/webhooks/roblox": {
            "post": op("roblox_erasure_webhook", "Roblox's RightToErasureRequest notification, authenticated by its `roblox-signature` (HMAC-SHA256 of `t.body` with [roblox_erasure].secret, within 10 minutes), not by an API key; erases the user id in the stores configured for the games named; other events are acknowledged and ignored",
                vec![json!({ "name": "roblox-signature", "in": "header", "required": true, "schema": { "type": "string" } })],
                Some(body(json!({ "type": "object" }), &["application/json"], true)),
                ok(json!({ "type": "object" })),
                &[("400", "not a Roblox notification"), ("401", "missing, stale or wrong signature (`bad_signature`)"), ("404", "no [roblox_erasure] configured"), ("409", "a record kept moving under the erasure"), ("422", "a tagged record is corrupt"), ("503", "storage unavailable or shutting down")])
        },
        "/v1/stores/{store}/migrate": {
            "post": op("migrate_store", "bring every record of the store to its newest data version (admin): each key nobody holds is migrated through a one-shot update conditional on what was read; keys a session holds are left to their holder; failures are listed and kept; run again, it does what is left",
                vec![store.clone()], None,
                ok(json!({ "type": "object", "required": ["to_version", "examined", "migrated", "current", "held", "failed", "failures"], "properties": {
                    "to_version": { "type": "integer" }, "examined": { "type": "integer" }, "migrated": { "type": "integer" },
                    "current": { "type": "integer" }, "held": { "type": "integer" }, "failed": { "type": "integer" },
                    "failures": { "type": "array", "items": { "type": "object", "properties": { "key": { "type": "string" }, "error": { "type": "string" } } } } } })),
                &errs(&[("404", "unknown store (strict stores)"), ("503", "storage unavailable or shutting down")]))
        },
        "/v1/stores/{store}/restore": {
            "get": op("restore_store_progress", "the store restore under way, from any server, or one interrupted that waits to be run again (admin): its target time, when it began, the last key done, keys done; `null` when none",
                vec![store.clone()], None,
                ok(json!({ "type": "object", "required": ["progress"], "properties": { "progress": { "type": "object", "nullable": true, "properties": {
                    "at_ms": { "type": "integer" }, "started_at_ms": { "type": "integer" },
                    "done_through": { "type": "string", "nullable": true }, "keys_done": { "type": "integer" } } } } })),
                &errs(&[("404", "unknown store (strict stores)"), ("503", "storage unavailable")])),
            "post": op("restore_store", "restore a whole store to at_ms (admin): keys whose version then differs get it as a new revision (holders hand over or are fenced), keys created after it are deleted, keys with no history are left alone; dry_run lists the changes only; a run interrupted and run again resumes; restoring to the answer's undo_at_ms undoes it",
                vec![store.clone()],
                Some(body(json!({ "type": "object", "required": ["at_ms"], "additionalProperties": false, "properties": {
                    "at_ms": millis.clone(), "dry_run": { "type": "boolean" },
                    "handoff_ms": { "type": "integer", "minimum": 0, "maximum": 60000 } } }), &["application/json"], true)),
                ok(json!({ "type": "object", "required": ["at_ms", "dry_run", "changes", "undo_at_ms"], "properties": {
                    "at_ms": { "type": "integer" }, "dry_run": { "type": "boolean" }, "keys": { "type": "integer" },
                    "restored": { "type": "integer" }, "deleted": { "type": "integer" }, "unchanged": { "type": "integer" },
                    "unknown": { "type": "integer" }, "holders_ended": { "type": "integer" },
                    "changes": { "type": "array", "items": { "type": "object" } },
                    "resumed_after": { "type": "string", "nullable": true }, "undo_at_ms": { "type": "integer" } } })),
                &errs(&[("404", "unknown store (strict stores)"), ("409", "a key kept moving under the restore (`lease_lost`); run it again to resume"), ("413", "a restored document is too large"), ("415", "wrong content type"), ("422", "a version does not migrate"), ("503", "storage unavailable or shutting down")]))
        },
        "/v1/stores/{store}/keys/{key}/restore": {
            "post": op("restore_key", "restore the key to a version or a time (admin): the holder saves and hands the key over (its session ends with `restored`) or, silent past handoff_ms, is fenced; the restore is a new revision under a new epoch; `keep` names JSON pointers of the current document to carry over",
                vec![store, key],
                Some(body(json!({ "type": "object", "additionalProperties": false, "properties": {
                    "version": version_id, "at_ms": millis,
                    "keep": { "type": "array", "items": { "type": "string" } },
                    "handoff_ms": { "type": "integer", "minimum": 0, "maximum": 60000 } } }), &["application/json"], true)),
                ok(json!({ "type": "object", "required": ["from", "holder"], "properties": {
                    "from": { "type": "string" }, "version": { "type": "string", "nullable": true },
                    "holder": { "type": "string", "enum": ["none", "released", "fenced"] } } })),
                &errs(&[("404", "unknown store, or no such version (`no_such_version`)"), ("409", "the key kept moving under the restore (`lease_lost`)"), ("413", "the restored document is too large"), ("415", "wrong content type"), ("422", "a part to keep does not fit (`restore_refused`), or the version does not migrate"), ("503", "storage unavailable or shutting down")]))
        }
    })
}
