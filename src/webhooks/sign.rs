//! Standard Webhooks signing (pure): `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, keyed by the base64-decoded part of a `whsec_…` secret.
//! During a rotation with grace, both secrets sign and the signatures are space-separated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every signing secret.
pub const PREFIX: &str = "whsec_";

/// A secret that is not `whsec_<base64>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret must be `whsec_` followed by base64 (at least 16 bytes)")]
pub struct BadSecret;

/// A new random secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

/// The HMAC key of a secret (the `whsec_` prefix is optional, as the libraries accept).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, BadSecret> {
    let b64 = secret.strip_prefix(PREFIX).unwrap_or(secret);
    match STANDARD.decode(b64) {
        Ok(key) if key.len() >= 16 => Ok(key),
        _ => Err(BadSecret),
    }
}

/// A masked hint that identifies a secret without revealing it (`whsec_…Ab3d`).
pub fn hint(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{PREFIX}…{tail}")
}

/// One `v1,<base64>` signature of a message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per key, space-separated.
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any `v1` signature in `header` is `secret`'s for this message (constant-time).
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(key) = decode_secret(secret) else {
        return false;
    };
    header.split(' ').any(|sig| {
        let Some(b64) = sig.strip_prefix("v1,") else {
            return false;
        };
        let Ok(given) = STANDARD.decode(b64) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&given).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signing_matches_the_standard_webhooks_test_vector() {
        let key = decode_secret(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY), EXPECTED);
        assert!(verify(SECRET, ID, TS, BODY, EXPECTED));
    }

    #[test]
    fn a_changed_body_id_or_timestamp_does_not_verify() {
        assert!(!verify(
            SECRET,
            ID,
            TS,
            br#"{"test": 2432232315}"#,
            EXPECTED
        ));
        assert!(!verify(SECRET, "msg_other", TS, BODY, EXPECTED));
        assert!(!verify(SECRET, ID, TS + 1, BODY, EXPECTED));
        assert!(!verify(SECRET, ID, TS, BODY, "v1,garbage!!"));
        assert!(!verify(SECRET, ID, TS, BODY, ""));
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_either_verifies() {
        let new = new_secret();
        let keys = vec![decode_secret(&new).unwrap(), decode_secret(SECRET).unwrap()];
        let header = signature_header(&keys, ID, TS, BODY);
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.ends_with(EXPECTED));
        assert!(verify(&new, ID, TS, BODY, &header));
        assert!(verify(SECRET, ID, TS, BODY, &header));
    }

    #[test]
    fn secrets_are_random_32_bytes_and_bad_ones_are_refused() {
        let a = new_secret();
        assert!(a.starts_with(PREFIX));
        assert_eq!(decode_secret(&a).unwrap().len(), 32);
        assert_ne!(a, new_secret());
        assert_eq!(decode_secret("whsec_not base64!"), Err(BadSecret));
        assert_eq!(decode_secret("whsec_c2hvcnQ="), Err(BadSecret), "too short");
        assert!(hint(&a).starts_with("whsec_…") && hint(&a).ends_with(&a[a.len() - 4..]));
    }
}
