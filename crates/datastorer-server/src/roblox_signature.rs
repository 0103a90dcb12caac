//! Roblox's webhook signature (`roblox-signature: t=UNIX_SECONDS,v1=BASE64`,
//! the HMAC-SHA256 of `"{t}.{body}"` with the secret entered in the
//! Creator Dashboard), checked as Roblox documents it: the MAC compared in
//! constant time, the timestamp within a ten-minute window either way.
//!
//! Owns: parsing and checking the header. Must not: act on the body.

use base64::Engine as _;

/// How far the signed time may be from ours, either way.
pub(crate) const WINDOW_SECS: u64 = 600;

/// Why a signature was refused (said to the sender as it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("no roblox-signature header")]
    Missing,
    #[error("the roblox-signature header is not t=UNIX_SECONDS,v1=BASE64")]
    Malformed,
    #[error("the signature was made {0} s away from now; at most {WINDOW_SECS} s are accepted (a replay, or a clock to fix)")]
    Stale(u64),
    #[error("the signature does not match the body and the configured secret")]
    Mismatch,
}

/// Checks `header` (the `roblox-signature` value) over `body` at `now_secs`.
pub(crate) fn verify(secret: &str, header: Option<&str>, body: &[u8], now_secs: u64) -> Result<(), Refused> {
    let header = header.ok_or(Refused::Missing)?;
    let (mut t, mut signatures) = (None, Vec::new());
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| Refused::Malformed)?),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(Refused::Malformed)?;
    if signatures.is_empty() {
        return Err(Refused::Malformed);
    }
    let skew = now_secs.abs_diff(t);
    if skew > WINDOW_SECS {
        return Err(Refused::Stale(skew));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    // Any of the v1 signatures may match (Roblox may send several while a
    // secret is rotated).
    let matches = signatures.iter().any(|s| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .is_ok_and(|mac| ring::hmac::verify(&key, &signed, &mac).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err(Refused::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: u64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(body);
        let mac = ring::hmac::sign(&key, &signed);
        format!("t={t},v1={}", base64::engine::general_purpose::STANDARD.encode(mac.as_ref()))
    }

    #[test]
    fn a_good_signature_passes_and_every_kind_of_bad_one_says_why() {
        let body = br#"{"EventType":"RightToErasureRequest"}"#;
        let now = 1_800_000_000;
        let good = sign("secret-0123456789", now - 30, body);
        assert_eq!(verify("secret-0123456789", Some(&good), body, now), Ok(()));
        assert_eq!(verify("another-secret-00", Some(&good), body, now), Err(Refused::Mismatch));
        assert_eq!(verify("secret-0123456789", Some(&good), b"{}", now), Err(Refused::Mismatch));
        assert_eq!(verify("secret-0123456789", Some(&good), body, now + 700), Err(Refused::Stale(730)));
        assert_eq!(verify("secret-0123456789", None, body, now), Err(Refused::Missing));
        for bad in ["", "t=abc,v1=x", "v1=AAAA", "t=5", "garbage"] {
            assert_eq!(verify("secret-0123456789", Some(bad), body, now), Err(Refused::Malformed), "{bad:?}");
        }
        let rotated = format!("{},v1=bm90LWl0", sign("secret-0123456789", now, body));
        assert_eq!(verify("secret-0123456789", Some(&rotated), body, now), Ok(()), "one of several v1 may match");
    }
}
