//! API keys and roles. Keys are compared in constant time, and every
//! configured key is compared on every request, so timing reveals neither a
//! key's prefix nor which key matched.
//!
//! Owns: key lookup, roles, store scopes. Must not: charge budgets or
//! know routes (the state's `auth` does both around it).

use actix_web::HttpRequest;
use serde::Deserialize;

use super::error::{ApiError, ErrorCode};

/// What a key may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Read views, list keys, follow the change feed, metrics, the API document.
    Read,
    /// Hold sessions: open, change, save, release.
    Write,
    /// Delete keys.
    Admin,
}

impl Role {
    /// The name used in the config file and in messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (expected read, write or admin)")),
        }
    }
}

/// One configured API key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKey {
    /// A name for logs and lease holders (never the secret).
    pub(crate) name: String,
    /// The secret, sent as `Authorization: Bearer <secret>`.
    pub(crate) key: String,
    /// What it may do.
    pub(crate) role: Role,
    /// The stores it may reach (all when absent).
    #[serde(default)]
    pub(crate) stores: Option<Vec<String>>,
    /// Its own request budget: at most this many requests a minute, in
    /// bursts of up to as many (429 with `Retry-After` beyond).
    #[serde(default)]
    pub(crate) requests_per_minute: Option<u32>,
    /// A budget of this many requests a minute for each client under the
    /// key (`Datastorer-Client-Id`), so one game server in a retry loop
    /// cannot starve the others sharing the key.
    #[serde(default)]
    pub(crate) client_requests_per_minute: Option<u32>,
}

/// On a request another server of the fleet forwards: the fleet's secret.
pub(crate) const FLEET_KEY: &str = "Datastorer-Fleet-Key";
/// On a forwarded request: the API key it entered with.
pub(crate) const FORWARDED_KEY: &str = "Datastorer-Forwarded-Key";

/// The identity of a request forwarded by another server of the fleet, if
/// it is one; a request claiming to be one without the secret is refused.
pub(crate) fn forwarded_identity(
    req: &HttpRequest,
    fleet_secret: Option<&str>,
    keys: &[ApiKey],
    role: Role,
) -> Result<Option<Identity>, ApiError> {
    let Some(presented) = req.headers().get(FLEET_KEY) else { return Ok(None) };
    let valid =
        fleet_secret.zip(presented.to_str().ok()).is_some_and(|(secret, presented)| tokens_equal(secret, presented));
    if !valid {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "not a server of this fleet"));
    }
    let name = req.headers().get(FORWARDED_KEY).and_then(|v| v.to_str().ok()).unwrap_or("anonymous");
    if keys.is_empty() {
        return Ok(Some(Identity { name: "anonymous".into(), role: Role::Admin, stores: None }));
    }
    let key = keys.iter().find(|k| k.name == name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            format!("a forwarded request names API key {name:?}, which this server does not have"),
        )
    })?;
    has_role(key, role)?;
    Ok(Some(Identity { name: key.name.clone(), role: key.role, stores: key.stores.clone() }))
}

/// Refuses a key whose role is below `required` (403, naming both roles).
fn has_role(key: &ApiKey, required: Role) -> Result<(), ApiError> {
    if key.role < required {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "API key {:?} has the role {}; this request needs the role {}",
                key.name,
                key.role.as_str(),
                required.as_str()
            ),
        ));
    }
    Ok(())
}

/// Shortest secret accepted.
pub(crate) const MIN_KEY_LEN: usize = 16;

/// The identity a request was authenticated as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Key name ("anonymous" without authentication).
    pub(crate) name: String,
    /// What it may do (a server without keys lets anyone do everything).
    pub(crate) role: Role,
    /// The stores it may reach (all when `None`).
    pub(crate) stores: Option<Vec<String>>,
}

impl Identity {
    /// Refuses a store outside the key's scope (403 `store_forbidden`).
    pub(crate) fn may_use(&self, store: &str) -> Result<(), ApiError> {
        match &self.stores {
            Some(allowed) if !allowed.iter().any(|s| s == store) => Err(ApiError::new(
                ErrorCode::StoreForbidden,
                format!("API key {:?} may not use store {store:?}", self.name),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the key is limited to some stores.
    pub(crate) fn is_scoped(&self) -> bool {
        self.stores.is_some()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (all keys are at least MIN_KEY_LEN); contents are.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the bearer key (or `x-api-key`) of `req` against `keys` and the `required` role.
/// With no keys configured, every request is allowed (the server then binds
/// only loopback addresses).
///
/// The key's name is handed to `known` as soon as the key is recognised,
/// before its role is checked, so the access log names the key of a
/// request refused for its role.
pub(crate) fn authorize(
    req: &HttpRequest,
    keys: &[ApiKey],
    required: Role,
    known: impl FnOnce(&str),
) -> Result<Identity, ApiError> {
    if keys.is_empty() {
        return Ok(Identity { name: "anonymous".into(), role: Role::Admin, stores: None });
    }
    // Roblox Open Cloud's clients send the key as `x-api-key`.
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| req.headers().get("x-api-key").and_then(|h| h.to_str().ok()).filter(|k| !k.is_empty()))
        .ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthenticated, "send Authorization: Bearer <api key> (or x-api-key: <api key>)")
        })?;
    let mut found: Option<&ApiKey> = None;
    for k in keys {
        if constant_time_eq(k.key.as_bytes(), presented.as_bytes()) && found.is_none() {
            found = Some(k);
        }
    }
    let key = found.ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "unknown API key"))?;
    known(&key.name);
    has_role(key, required)?;
    Ok(Identity { name: key.name.clone(), role: key.role, stores: key.stores.clone() })
}

/// The token of an `Authorization: Bearer …` value. The scheme is
/// case-insensitive (RFC 9110 §11.1) and may be followed by any run of spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    let token = rest.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Constant-time comparison for lease tokens too.
pub(crate) fn tokens_equal(a: &str, b: &str) -> bool {
    constant_time_eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }
}
