//! The server's error answer: a status and a JSON body `{code, message}`
//! (plus details such as the lease holder). Client mistakes are 4xx; only
//! the server's own failures may be 5xx. A 503 or 429 says when to retry
//! (`Retry-After`).
//!
//! Owns: every error code, with its status, `Retry-After` and OpenAPI
//! description (`ErrorCode`), and the mapping of engine errors. Must not:
//! import a handler; codes are named here, never written out elsewhere.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};

use datastorer::Error;

/// Every error code the API answers, with its status, its `Retry-After`
/// and the sentence the OpenAPI document gives it. A code's string is part
/// of the API: clients branch on it, so a variant's string never changes.
macro_rules! error_codes {
    ($($variant:ident = $code:literal, $status:ident, $retry:expr, $doc:literal;)*) => {
        /// The machine-readable code of an error answer. Kept in the
        /// response's extensions, so the middleware counts errors by kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub(crate) const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as clients see it.
            pub(crate) fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status the code is always answered with.
            pub(crate) fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            /// Seconds a client waits before retrying, for codes that say so.
            pub(crate) fn retry_after_secs(self) -> Option<u64> {
                match self { $(ErrorCode::$variant => $retry,)* }
            }

            /// What the code means, for the OpenAPI document.
            pub(crate) fn describe(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }
        }
    };
}

error_codes! {
    BadBody = "bad_body", BAD_REQUEST, None, "the body could not be read or decompressed";
    BadClientId = "bad_client_id", BAD_REQUEST, None, "client_id is not 1 to 128 printable characters";
    BadCondition = "bad_condition", BAD_REQUEST, None, "If-Match / If-None-Match is not * or a list of entity tags";
    BadCursor = "bad_cursor", BAD_REQUEST, None, "after is not a cursor this feed answered";
    BadGrace = "bad_grace", BAD_REQUEST, None, "grace_ms is out of range or given without policy=request_release";
    BadJson = "bad_json", BAD_REQUEST, None, "the body is not valid JSON, or missing";
    BadLastEventId = "bad_last_event_id", BAD_REQUEST, None, "Last-Event-ID is not a sequence number of the feed";
    BadLimit = "bad_limit", BAD_REQUEST, None, "limit is out of range";
    BadMetadata = "bad_metadata", BAD_REQUEST, None, "metadata is not a JSON object";
    BadOperation = "bad_operation", BAD_REQUEST, None, "a batch operation has fields its op does not take";
    BadPath = "bad_path", BAD_REQUEST, None, "a path parameter does not parse";
    BadPrefix = "bad_prefix", BAD_REQUEST, None, "prefix or cursor is too long";
    BadQuery = "bad_query", BAD_REQUEST, None, "a query parameter is unknown or does not parse";
    BadRequestBody = "bad_request_body", BAD_REQUEST, None, "the body is JSON but not the object this route takes";
    BadTimeout = "bad_timeout", BAD_REQUEST, None, "timeout_ms is above the server's ceiling";
    BadUserId = "bad_user_id", BAD_REQUEST, None, "a user id is not a short printable string or an integer";
    BadWait = "bad_wait", BAD_REQUEST, None, "wait_ms is above the ceiling";
    ConflictingParameters = "conflicting_parameters", BAD_REQUEST, None, "a setting is given in the query and the body with different values";
    InvalidName = "invalid_name", BAD_REQUEST, None, "a store name or key breaks the naming rules";
    MissingLeaseToken = "missing_lease_token", BAD_REQUEST, None, "a session route was called without the Lease-Token header";
    UnsupportedCondition = "unsupported_condition", BAD_REQUEST, None, "a condition header this request does not evaluate";
    Unauthenticated = "unauthenticated", UNAUTHORIZED, None, "no API key, or an unknown one";
    BadSignature = "bad_signature", UNAUTHORIZED, None, "a webhook's signature is missing, stale or does not match";
    Forbidden = "forbidden", FORBIDDEN, None, "the API key's role does not allow this route";
    StoreForbidden = "store_forbidden", FORBIDDEN, None, "the API key is limited to other stores";
    ClientForbidden = "client_forbidden", FORBIDDEN, None, "the client's feed belongs to another API key";
    NoSuchKey = "no_such_key", NOT_FOUND, None, "no record for the key";
    NoSuchVersion = "no_such_version", NOT_FOUND, None, "no kept version of the key matches (never saved, pruned, or the store keeps none)";
    NotFound = "not_found", NOT_FOUND, None, "no such route";
    NotConfigured = "not_configured", NOT_FOUND, None, "the route needs configuration this server does not have";
    UnknownStore = "unknown_store", NOT_FOUND, None, "the store is not declared (strict stores)";
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED, None, "the route does not take that method";
    HolderCouldNotSave = "holder_could_not_save", CONFLICT, None, "the holder could not save, so the key was not handed over";
    InboxFull = "inbox_full", CONFLICT, None, "the key's inbox is full";
    InvalidLeaseToken = "invalid_lease_token", CONFLICT, None, "no session with this lease token on this key";
    LeaseHeld = "lease_held", CONFLICT, None, "another holder has the key";
    LeaseLost = "lease_lost", CONFLICT, None, "the session's lease was taken over";
    StoreConflict = "store_conflict", CONFLICT, None, "the store is open with another type";
    SessionEnded = "session_ended", GONE, None, "the session ended (released, taken over, restored, expired or the server restarted)";
    PreconditionFailed = "precondition_failed", PRECONDITION_FAILED, None, "the record is not in the state If-Match / If-None-Match asks for";
    BodyTooLarge = "body_too_large", PAYLOAD_TOO_LARGE, None, "the body is larger than the server's limit";
    DocumentRejected = "document_rejected", PAYLOAD_TOO_LARGE, None, "the document cannot be encoded";
    DocumentTooLarge = "document_too_large", PAYLOAD_TOO_LARGE, None, "the document is larger than the store's limit";
    MessageTooLarge = "message_too_large", PAYLOAD_TOO_LARGE, None, "the message is larger than the limit";
    TooManyOperations = "too_many_operations", PAYLOAD_TOO_LARGE, None, "the batch carries more operations than allowed";
    UnsupportedContentEncoding = "unsupported_content_encoding", UNSUPPORTED_MEDIA_TYPE, None, "a Content-Encoding other than gzip";
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, None, "a Content-Type this route does not take";
    WrongServer = "wrong_server", MISDIRECTED_REQUEST, None, "the session lives on another server of the fleet";
    HolderUnreachable = "holder_unreachable", SERVICE_UNAVAILABLE, Some(1), "the session lives on another server of the fleet, which cannot be reached now (its lease lapses if it is gone)";
    CorruptRecord = "corrupt_record", UNPROCESSABLE_ENTITY, None, "the stored record is corrupt (kept as it is)";
    MigrationFailed = "migration_failed", UNPROCESSABLE_ENTITY, None, "the stored record does not migrate to the store's data version";
    RestoreRefused = "restore_refused", UNPROCESSABLE_ENTITY, None, "the restore cannot be done as asked (a part to keep that does not fit the restored version)";
    Skipped = "skipped", FAILED_DEPENDENCY, None, "not run: an earlier batch operation on the same key failed";
    RateLimited = "rate_limited", TOO_MANY_REQUESTS, Some(1), "the API key spent its request budget";
    Internal = "internal", INTERNAL_SERVER_ERROR, None, "the server's own failure";
    LeaseUnconfirmed = "lease_unconfirmed", SERVICE_UNAVAILABLE, Some(1), "the lease could not be confirmed in time; retry";
    ShuttingDown = "shutting_down", SERVICE_UNAVAILABLE, Some(5), "the server is shutting down; another server (or this one restarted) takes over";
    StorageUnavailable = "storage_unavailable", SERVICE_UNAVAILABLE, Some(1), "the storage did not answer in time; retry";
}

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// What went wrong, which also fixes the status.
    pub(crate) code: ErrorCode,
    /// Human-readable explanation.
    pub(crate) message: String,
    /// Extra fields merged into the body.
    pub(crate) details: Option<Value>,
    /// `Retry-After` seconds, when the error knows better than its code.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no details.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None, retry_after: None }
    }

    /// The status it is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The `Retry-After` of a 503 or 429 (RFC 9110 §10.2.3): a client that
    /// pays per request (a game server's 500 a minute) waits this long
    /// instead of retrying at once. A shutting-down server answers longer,
    /// since another server (or this one restarted) will take the key over.
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.or(self.code.retry_after_secs())
    }

    /// The same error with `details` merged into its body.
    pub(crate) fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// A deserializer's message in the API's words: no Rust type names
/// (`u64`, `struct OpenBody`), no framework prefixes, JSON quotes.
pub(crate) fn humanize(message: &str) -> String {
    let mut m = message.trim();
    for prefix in ["Query deserialize error: ", "Path deserialize error: ", "Json deserialize error: "] {
        m = m.strip_prefix(prefix).unwrap_or(m);
    }
    let mut out = m.replace('`', "\"");
    for (rust, api) in [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a string", "expected a string"),
        ("invalid digit found in string", "expected a non-negative integer"),
        ("cannot parse integer from empty string", "expected a non-negative integer, got nothing"),
        ("number too large to fit in target type", "the number is too large"),
        ("provided string was not `true` or `false`", "expected true or false"),
        ("provided string was not \"true\" or \"false\"", "expected true or false"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: object"),
        ("invalid type: unit value", "invalid type: null"),
    ] {
        out = out.replace(rust, api);
    }
    // "expected struct OpenBody" and the like: the API only has objects.
    while let Some(at) = out.find("struct ") {
        let end = out[at + 7..].find(|c: char| !c.is_alphanumeric() && c != '_').map_or(out.len(), |e| at + 7 + e);
        out.replace_range(at..end, "an object");
    }
    out
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status().as_u16(), self.code.as_str(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "code": self.code.as_str(), "message": self.message });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (&self.details, &mut body) {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        let mut builder = HttpResponse::build(self.status());
        if self.code == ErrorCode::Unauthenticated {
            builder.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let Some(seconds) = self.retry_after_secs() {
            builder.insert_header(("Retry-After", seconds.to_string()));
        }
        let mut response = builder.json(body);
        // Read by the metrics middleware.
        response.extensions_mut().insert(self.code);
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        let plain = |code| ApiError::new(code, message.clone());
        match e {
            // The engine's holder is a process: another server of the
            // fleet (a client of this one is named by `sessions`).
            Error::LeaseHeld { holder, expires_at_ms, .. } => ApiError::new(
                ErrorCode::LeaseHeld,
                format!("the key is held by a session on another server ({holder:?})"),
            )
            .with(json!({ "holder": holder, "holder_server": holder, "expires_at_ms": expires_at_ms })),
            Error::LeaseLost { .. } => plain(ErrorCode::LeaseLost),
            Error::LeaseExpired { .. } => plain(ErrorCode::LeaseUnconfirmed),
            // The engine session behind a client's session ended while the
            // request was on its way (a hand-off or steal deciding at that
            // moment): the client is told what a later request is told.
            Error::SessionClosed { reason, .. } => {
                let reason = crate::ending::EndReason::of(&reason).as_str();
                ApiError::new(ErrorCode::SessionEnded, format!("the session ended: {reason}; open a new session"))
                    .with(json!({ "reason": reason, "taken_over_by": null, "ended_at_ms": crate::ending::now_ms() }))
            }
            Error::InvalidName { .. } => plain(ErrorCode::InvalidName),
            Error::DocumentTooLarge { limit, .. } => {
                plain(ErrorCode::DocumentTooLarge).with(json!({ "max_document_bytes": limit }))
            }
            Error::Serialize { .. } => plain(ErrorCode::DocumentRejected),
            Error::CorruptRecord { .. } => plain(ErrorCode::CorruptRecord),
            Error::Migration { .. } | Error::Deserialize { .. } => plain(ErrorCode::MigrationFailed),
            Error::StoreConflict { .. } => plain(ErrorCode::StoreConflict),
            Error::InboxFull { limit, .. } => plain(ErrorCode::InboxFull).with(json!({ "max_messages": limit })),
            Error::InboxTooLarge { limit, .. } => plain(ErrorCode::InboxFull).with(json!({ "max_inbox_bytes": limit })),
            Error::MessageTooLarge { limit, .. } => {
                plain(ErrorCode::MessageTooLarge).with(json!({ "max_message_bytes": limit }))
            }
            Error::PreconditionFailed { .. } => plain(ErrorCode::PreconditionFailed),
            Error::VersionNotFound { .. } => plain(ErrorCode::NoSuchVersion),
            Error::Restore { .. } => plain(ErrorCode::RestoreRefused),
            Error::Cancelled { .. } | Error::Storage { .. } => plain(ErrorCode::StorageUnavailable),
            Error::ShuttingDown | Error::NotRunning => plain(ErrorCode::ShuttingDown),
            Error::Config(_) | Error::Open(_) | Error::Panicked { .. } => plain(ErrorCode::Internal),
            // An engine error this build does not know yet: the server's own failure.
            _ => plain(ErrorCode::Internal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializer_messages_speak_the_api_language() {
        for (rust, api) in [
            ("invalid type: string \"x\", expected u64", "invalid type: string \"x\", expected a non-negative integer"),
            ("invalid type: sequence, expected struct OpenBody", "invalid type: array, expected an object"),
            (
                "Query deserialize error: unknown field `sav`, expected `save`",
                "unknown field \"sav\", expected \"save\"",
            ),
            ("Query deserialize error: invalid digit found in string", "expected a non-negative integer"),
        ] {
            assert_eq!(humanize(rust), api);
        }
    }

    #[test]
    fn unavailable_and_too_many_requests_say_when_to_retry_and_nothing_else_does() {
        for &code in ErrorCode::ALL {
            let response = ApiError::new(code, "m").error_response();
            let got = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or("not text").to_owned());
            let status = code.status();
            let want = match code {
                ErrorCode::ShuttingDown => Some("5"),
                _ if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS => Some("1"),
                _ => None,
            };
            assert_eq!(got.as_deref(), want, "{status} {}", code.as_str());
            assert_eq!(response.status(), status);
        }
    }

    #[test]
    fn every_code_is_distinct_snake_case_and_a_client_error_unless_the_server_failed() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            let server_side = matches!(
                code,
                ErrorCode::Internal
                    | ErrorCode::ShuttingDown
                    | ErrorCode::StorageUnavailable
                    | ErrorCode::LeaseUnconfirmed
                    | ErrorCode::HolderUnreachable
            );
            assert_eq!(code.status().is_server_error(), server_side, "{s}");
        }
    }
}
