//! How Roblox's names become datastorer's, in one place, the same way the
//! Luau DataStoreService facade does it (`DataStoreService.luau`): a data
//! store `name` in `scope` is the store `PREFIX` + `escape(name)` (scope
//! `global`) or that + `:` + `escape(scope)`; plus the percent-encoding of
//! a path segment the tools and the fleet use in URLs they build.
//!
//! Owns: those mappings (the Open Cloud API, `import-roblox` and the
//! fleet's hops use them). Must not: validate lengths (the callers do, each
//! with its own error).

/// A name's bytes in store-name characters, reversibly: `[A-Za-z0-9_-]`
/// kept, any other byte as `.XX`.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!(".{b:02X}"));
        }
    }
    out
}

/// The inverse of [`escape`] (`None` for what `escape` never makes).
pub(crate) fn unescape(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The escaped form of a scope as it follows the `:` of a store name
/// (`inbox` spelled `.69nbox`: `S:inbox` is the server's name for S's messages).
pub(crate) fn escape_scope(scope: &str) -> String {
    let escaped = escape(scope);
    if escaped == "inbox" {
        ".69nbox".to_owned()
    } else {
        escaped
    }
}

/// The store of data store `name` in `scope` under `prefix` (already in
/// store-name characters).
pub(crate) fn store_name(prefix: &str, name: &str, scope: &str) -> String {
    let mut out = format!("{prefix}{}", escape(name));
    if scope != "global" {
        out.push(':');
        out.push_str(&escape_scope(scope));
    }
    out
}

/// Percent-encodes a URL path segment or query value (RFC 3986
/// unreserved characters kept).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_the_facade_maps_them_and_come_back() {
        assert_eq!(escape("Player Data/1"), "Player.20Data.2F1");
        assert_eq!(unescape("Player.20Data.2F1").as_deref(), Some("Player Data/1"));
        assert_eq!(store_name("g1-", "PlayerData", "global"), "g1-PlayerData");
        assert_eq!(store_name("", "A", "inbox"), "A:.69nbox");
        assert_eq!(store_name("", "A", "b c"), "A:b.20c");
        assert_eq!(percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
