//! Compact JSON of a `serde_json::Value`, byte for byte what
//! `serde_json::to_writer` writes, with strings scanned sixteen bytes at a
//! time: serde_json looks at each byte of a string through a table, which
//! was the largest cost of our own in an HTTP update (the document is
//! encoded on every change, for its size check, and that encoding is what
//! a save writes). Numbers are written by serde_json itself, so their
//! form (integers, `ryu` floats, arbitrary precision) cannot differ.
//!
//! Owns: that encoding. Must not: be used for anything but a `Value` (a
//! typed document goes through serde_json), or write past `limit`
//! without saying so.

use serde_json::Value;

/// The encoding passed its limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OverLimit;

/// Appends `v` to `out`; `Err` once `out` would pass `limit` bytes (what
/// is in `out` then is unspecified).
pub(crate) fn write_value(out: &mut Vec<u8>, v: &Value, limit: usize) -> Result<(), OverLimit> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // A `Vec` writer cannot fail, and a number always serializes.
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, limit)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_value(out, item, limit)?;
            }
            out.push(b'}');
        }
    }
    if out.len() > limit {
        return Err(OverLimit);
    }
    Ok(())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes of `x` is a control character (below
/// 0x20), `"` or `\\`: the bytes JSON escapes. Exact: a subtraction borrows
/// into a byte's high bit only where that byte is below the subtrahend (or
/// where a lower byte already matched), and `!x` clears the bytes of 0x80
/// and above (XOR with an ASCII byte keeps the high bit, so one `!x`
/// serves all three tests).
#[inline]
fn needs_escape(x: u64) -> bool {
    escape_bits(x) != 0
}

/// The high bits [`needs_escape`] tests, before the test: two words' bits
/// can be joined with `|` and tested once.
#[inline]
fn escape_bits(x: u64) -> u64 {
    let control = x.wrapping_sub(ONES * 0x20);
    let quote = (x ^ (ONES * b'"' as u64)).wrapping_sub(ONES);
    let backslash = (x ^ (ONES * b'\\' as u64)).wrapping_sub(ONES);
    (control | quote | backslash) & !x & HIGHS
}

#[inline]
fn word_at(bytes: &[u8], i: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[i..i + 8]);
    u64::from_le_bytes(word)
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    loop {
        // Sixteen, then eight bytes at a time while none needs escaping.
        while i + 16 <= bytes.len() && escape_bits(word_at(bytes, i)) | escape_bits(word_at(bytes, i + 8)) == 0 {
            i += 16;
        }
        while i + 8 <= bytes.len() && !needs_escape(word_at(bytes, i)) {
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ours(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, v, usize::MAX).unwrap();
        out
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn string(rng: &mut Rng) -> String {
        let len = rng.below(40) as usize;
        (0..len)
            .map(|_| match rng.below(10) {
                0 => char::from(rng.below(0x20) as u8),
                1 => '"',
                2 => '\\',
                3 => '\u{7f}',
                4 => ['é', '日', '\u{10FFFF}', '\u{2028}', '€'][rng.below(5) as usize],
                _ => char::from(b' ' + rng.below(95) as u8),
            })
            .collect()
    }

    fn value(rng: &mut Rng, depth: u32) -> Value {
        match rng.below(if depth > 3 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 0),
            2 => match rng.below(5) {
                0 => json!(rng.next()),
                1 => json!(-(rng.below(1 << 62) as i64)),
                2 => json!(f64::from_bits(rng.next() >> 2)),
                3 => json!([1e21, -0.0, 1.5e-7, 0.1, 123456789.125][rng.below(5) as usize]),
                _ => json!(rng.below(1000)),
            },
            3 | 4 => Value::String(string(rng)),
            5 => Value::Array((0..rng.below(5)).map(|_| value(rng, depth + 1)).collect()),
            _ => Value::Object((0..rng.below(5)).map(|_| (string(rng), value(rng, depth + 1))).collect()),
        }
    }

    #[test]
    fn every_value_encodes_as_serde_json_encodes_it() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let v = value(&mut rng, 0);
            assert_eq!(ours(&v), serde_json::to_vec(&v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn every_byte_is_escaped_as_serde_json_escapes_it() {
        for b in 0u8..0x80 {
            for at in 0..17 {
                let mut s = "x".repeat(at);
                s.push(char::from(b));
                s.push_str(&"y".repeat(16 - at));
                let v = Value::String(s);
                assert_eq!(ours(&v), serde_json::to_vec(&v).unwrap(), "byte {b:#x} at {at}");
            }
        }
        assert!(!needs_escape(u64::from_le_bytes(*b"\x7f\x80\xff #[]/")));
        assert!(needs_escape(u64::from_le_bytes(*b"abcdefg\x1f")));
    }

    #[test]
    fn the_limit_is_kept_and_an_encoding_at_it_passes() {
        let v = json!({"pad": "x".repeat(100), "n": [1, 2, 3]});
        let whole = serde_json::to_vec(&v).unwrap();
        let mut out = Vec::new();
        assert_eq!(write_value(&mut out, &v, whole.len()), Ok(()));
        assert_eq!(out, whole);
        let mut out = Vec::new();
        assert_eq!(write_value(&mut out, &v, whole.len() - 1), Err(OverLimit));
    }
}
