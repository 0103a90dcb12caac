//! The one input contract of the server's entry points: HTTP bodies, the
//! TOML config and import files check user ids, metadata and templates
//! here, by the same rules and with the same words.
//!
//! Owns: the rules for values a user supplies. Must not: touch storage or
//! the engine; key and store names are the engine's rules
//! (`store::validate_key`, `store::validate_store_name`), used as they are.

use serde_json::Value;

/// Longest user id, in bytes.
pub(crate) const MAX_USER_ID_LEN: usize = 128;

/// A user id as given: a non-empty string of printable characters (at most
/// 128 bytes), or an integer (Roblox user ids are numbers); answered as
/// the string stored.
pub(crate) fn user_id(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => user_id_text(s).map(|()| s.clone()),
        // Integers only: `1.5` is no user id, and `1e3` would be stored as "1000.0".
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        _ => Err(format!(
            "user ids are non-empty strings (at most {MAX_USER_ID_LEN} bytes, no control characters) or integers"
        )),
    }
}

/// The rule for a user id that is already text (import files, the CLI).
pub(crate) fn user_id_text(s: &str) -> Result<(), String> {
    if !printable_id(s) {
        return Err(format!("user id {s:?} is not 1 to {MAX_USER_ID_LEN} bytes of printable characters"));
    }
    Ok(())
}

/// A client id (the holder a game server names itself as).
pub(crate) fn client_id(s: &str) -> Result<(), String> {
    if !printable_id(s) {
        return Err(format!("client_id is 1 to {MAX_USER_ID_LEN} printable characters"));
    }
    Ok(())
}

/// A server's owner id (`--owner-id`, `owner_id` in the config).
pub(crate) fn owner_id(s: &str) -> Result<(), String> {
    if !printable_id(s) {
        return Err(format!("must be 1 to {MAX_USER_ID_LEN} bytes of printable characters"));
    }
    Ok(())
}

/// The one rule for the ids a user names things by: 1 to 128 bytes, no
/// control characters.
fn printable_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_USER_ID_LEN && !s.chars().any(char::is_control)
}

/// Metadata is a JSON object, wherever it comes from.
pub(crate) fn metadata(v: &Value) -> Result<(), String> {
    if v.is_object() {
        Ok(())
    } else {
        Err(format!("metadata must be a JSON object, not {}", kind(v)))
    }
}

/// A store's template (the document of a new key) is a JSON object: new
/// keys are reconciled against it field by field.
pub(crate) fn template(v: &Value) -> Result<(), String> {
    if v.is_object() {
        Ok(())
    } else {
        Err(format!("a template must be a JSON object, not {}", kind(v)))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_ids_are_printable_strings_or_integers() {
        for (v, ok) in [
            (json!("u1"), true),
            (json!(42), true),
            (json!(-7), true),
            (json!(1.5), false),
            (json!(1e3), false),
            (json!(""), false),
            (json!("a\u{1}b"), false),
            (json!("x".repeat(129)), false),
            (json!(null), false),
            (json!(["u1"]), false),
        ] {
            assert_eq!(user_id(&v).is_ok(), ok, "{v}");
        }
        assert_eq!(user_id(&json!(42)).unwrap(), "42");
    }

    #[test]
    fn metadata_and_templates_are_objects() {
        assert!(metadata(&json!({})).is_ok());
        assert!(template(&json!({"coins": 0})).is_ok());
        for v in [json!([1]), json!(5), json!("x"), json!(null)] {
            assert!(metadata(&v).is_err(), "{v}");
            assert!(template(&v).is_err(), "{v}");
        }
    }
}
