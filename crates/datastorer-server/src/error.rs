//! The server's error answer: a status and a JSON body `{code, message}`
//! (plus details such as the lease holder). Client mistakes are 4xx; only
//! the server's own failures may be 5xx. A 503 or 429 says when to retry
//! (`Retry-After`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};

use datastorer::Error;

/// The code of an error answer, kept in the response's extensions so the
/// metrics middleware can count errors by kind.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra fields merged into the body.
    pub details: Option<Value>,
    /// `Retry-After` seconds, when the error knows better than its status.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, retry_after: None }
    }
    /// 400
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 404
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    /// 409
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// The `Retry-After` of a 503 or 429 (RFC 9110 §10.2.3): a client that
    /// pays per request (a game server's 500 a minute) waits this long
    /// instead of retrying at once. A shutting-down server answers longer,
    /// since another server (or this one restarted) will take the key over.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.retry_after.is_some() {
            return self.retry_after;
        }
        match (self.status, self.code) {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down") => Some(5),
            (StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS, _) => Some(1),
            _ => None,
        }
    }

    fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// A deserializer's message in the API's words: no Rust type names
/// (`u64`, `struct OpenBody`), no framework prefixes, JSON quotes.
pub fn humanize(message: &str) -> String {
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
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (&self.details, &mut body) {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        let mut builder = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            builder.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let Some(seconds) = self.retry_after_secs() {
            builder.insert_header(("Retry-After", seconds.to_string()));
        }
        let mut response = builder.json(body);
        // Read by the metrics middleware.
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::LeaseHeld { holder, expires_at_ms, .. } => ApiError::conflict("lease_held", message)
                .with(json!({ "holder": holder, "expires_at_ms": expires_at_ms })),
            Error::LeaseLost { .. } => ApiError::conflict("lease_lost", message),
            Error::LeaseExpired { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "lease_unconfirmed", message),
            // The engine session behind a client's session ended while the
            // request was on its way (a hand-off or steal deciding at that
            // moment): the client is told what a later request is told.
            Error::SessionClosed { reason, .. } => {
                let reason = super::sessions::EndReason::of(&reason).as_str();
                ApiError::new(
                    StatusCode::GONE,
                    "session_ended",
                    format!("the session ended: {reason}; open a new session"),
                )
                .with(json!({ "reason": reason, "taken_over_by": null, "ended_at_ms": super::sessions::now_ms() }))
            }
            Error::InvalidName { .. } => ApiError::bad_request("invalid_name", message),
            Error::DocumentTooLarge { limit, .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "document_too_large", message)
                    .with(json!({ "max_document_bytes": limit }))
            }
            Error::Serialize { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "document_rejected", message),
            Error::CorruptRecord { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "corrupt_record", message),
            Error::Migration { .. } | Error::Deserialize { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "migration_failed", message)
            }
            Error::StoreConflict { .. } => ApiError::conflict("store_conflict", message),
            Error::InboxFull { limit, .. } => {
                ApiError::conflict("inbox_full", message).with(json!({ "max_messages": limit }))
            }
            Error::InboxTooLarge { limit, .. } => {
                ApiError::conflict("inbox_full", message).with(json!({ "max_inbox_bytes": limit }))
            }
            Error::MessageTooLarge { limit, .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "message_too_large", message)
                    .with(json!({ "max_message_bytes": limit }))
            }
            Error::PreconditionFailed { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
            }
            Error::Cancelled { .. } | Error::Storage { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", message)
            }
            Error::ShuttingDown | Error::NotRunning => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            Error::Config(_) | Error::Open(_) | Error::Panicked { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
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
        let cases = [
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", Some("5")),
            (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", Some("1")),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some("1")),
            (StatusCode::CONFLICT, "lease_held", None),
            (StatusCode::BAD_REQUEST, "bad_json", None),
        ];
        for (status, code, want) in cases {
            let response = ApiError::new(status, code, "m").error_response();
            let got = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or("not text").to_owned());
            assert_eq!(got.as_deref(), want, "{status} {code}");
        }
    }
}
