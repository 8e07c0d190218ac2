//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`): how the verification
//! service signs the completion webhook it sends us.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::HeaderMap;

use crate::crypto::equal_constant_time;

/// Accepted clock difference between the sender and us (Standard Webhooks recommends 5 min).
pub const TOLERANCE_SECONDS: u64 = 300;

/// Decodes a `whsec_<base64>` secret (the prefix is optional).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "expected whsec_<base64>".to_string())?;
    if bytes.len() < 16 {
        return Err(format!("the secret must have at least 16 bytes, got {}", bytes.len()));
    }
    Ok(bytes)
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance window")]
    Stale,
    #[error("no valid v1 signature")]
    Mismatch,
}

/// The signature over `id.timestamp.body`, base64.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    STANDARD.encode(ctx.sign().as_ref())
}

/// Verifies a Standard Webhooks signature; returns the webhook id.
pub fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8], now_seconds: u64) -> Result<String, SignatureError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or(SignatureError::Missing(name))
    };
    let id = header("webhook-id")?;
    // Only the canonical decimal form: the signature covers the number as `sign` writes it,
    // so "+1614265330" or "01614265330" would verify a text the sender never signed.
    let timestamp_text = header("webhook-timestamp")?;
    let timestamp: u64 = timestamp_text
        .parse()
        .ok()
        .filter(|t: &u64| t.to_string() == timestamp_text)
        .ok_or(SignatureError::BadTimestamp)?;
    let signatures = header("webhook-signature")?;
    if timestamp.abs_diff(now_seconds) > TOLERANCE_SECONDS {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, id, timestamp, body);
    // Several signatures may be listed (key rotation on the sender's side).
    let valid = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|candidate| equal_constant_time(candidate, &expected));
    if valid {
        Ok(id.to_owned())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(id: &str, ts: u64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from_str(&ts.to_string()).unwrap());
        h.insert("webhook-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example from the Standard Webhooks specification.
        let secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let h = headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            &format!("v1,bogus v1,{sig}"),
        );
        assert_eq!(
            verify(&secret, &h, body, 1614265330 + 10).unwrap(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek"
        );
    }

    #[test]
    fn tampered_stale_or_unsigned_requests_fail() {
        let secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(&secret, "id1", 1000, b"{}");
        let h = headers("id1", 1000, &format!("v1,{sig}"));
        assert_eq!(verify(&secret, &h, b"{ }", 1000), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(&secret, &h, b"{}", 1000 + TOLERANCE_SECONDS + 1),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(&secret, &HeaderMap::new(), b"{}", 1000),
            Err(SignatureError::Missing("webhook-id"))
        );
    }

    #[test]
    fn a_timestamp_not_in_canonical_form_is_refused() {
        let secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(&secret, "id1", 1000, b"{}");
        for timestamp in ["+1000", "01000", "1000 "] {
            let mut h = headers("id1", 1000, &format!("v1,{sig}"));
            h.insert("webhook-timestamp", HeaderValue::from_str(timestamp).unwrap());
            assert_eq!(
                verify(&secret, &h, b"{}", 1000),
                Err(SignatureError::BadTimestamp),
                "{timestamp}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    use http::HeaderValue;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const SECRET: &[u8] = b"a webhook secret of enough bytes";
    const NOW: u64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"outcome":"approved","process_id":"p"}"#;

    fn signed(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        headers.insert("webhook-timestamp", HeaderValue::from_str(timestamp).unwrap());
        headers.insert("webhook-signature", HeaderValue::from_str(signature).unwrap());
        headers
    }

    /// What a header can carry: visible ASCII and spaces, not starting or ending with a space.
    fn header_text() -> impl Strategy<Value = String> {
        "[!-~]([ -~]{0,40}[!-~])?"
    }

    fn timestamp_near_now() -> impl Strategy<Value = u64> {
        NOW - TOLERANCE_SECONDS..=NOW + TOLERANCE_SECONDS
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn verify_never_panics_and_accepts_only_a_matching_signature(
            id in proptest::option::of(vec(any::<u8>(), 0..48)),
            timestamp in proptest::option::of(prop_oneof![
                vec(any::<u8>(), 0..24),
                timestamp_near_now().prop_map(|t| t.to_string().into_bytes()),
            ]),
            signature in proptest::option::of(vec(any::<u8>(), 0..96)),
            body in vec(any::<u8>(), 0..128),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in [("webhook-id", id), ("webhook-timestamp", timestamp), ("webhook-signature", signature)] {
                if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                    headers.insert(name, value);
                }
            }
            if let Ok(id) = verify(SECRET, &headers, &body, NOW) {
                // Only reachable if the fuzzed signature happens to be right; then it must be.
                let timestamp: u64 = headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
                let expected = format!("v1,{}", sign(SECRET, &id, timestamp, &body));
                prop_assert!(headers["webhook-signature"].to_str().unwrap().split(' ').any(|s| s == expected));
            }
        }

        #[test]
        fn signed_messages_verify(id in header_text(), timestamp in timestamp_near_now(), body in vec(any::<u8>(), 0..256)) {
            let signature = format!("v1,{}", sign(SECRET, &id, timestamp, &body));
            let headers = signed(&id, &timestamp.to_string(), &signature);
            prop_assert_eq!(verify(SECRET, &headers, &body, NOW), Ok(id));
        }

        #[test]
        fn any_flipped_body_byte_fails(
            id in header_text(),
            timestamp in timestamp_near_now(),
            body in vec(any::<u8>(), 1..256),
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let signature = format!("v1,{}", sign(SECRET, &id, timestamp, &body));
            let headers = signed(&id, &timestamp.to_string(), &signature);
            let mut tampered = body.clone();
            tampered[position.index(body.len())] ^= flip;
            prop_assert_eq!(verify(SECRET, &headers, &tampered, NOW), Err(SignatureError::Mismatch));
        }

        #[test]
        fn another_id_fails(id in header_text(), other in header_text(), timestamp in timestamp_near_now(), body in vec(any::<u8>(), 0..64)) {
            prop_assume!(id != other);
            let signature = format!("v1,{}", sign(SECRET, &id, timestamp, &body));
            let headers = signed(&other, &timestamp.to_string(), &signature);
            prop_assert_eq!(verify(SECRET, &headers, &body, NOW), Err(SignatureError::Mismatch));
        }

        #[test]
        fn another_timestamp_fails(
            timestamp in timestamp_near_now(),
            other in timestamp_near_now(),
            body in vec(any::<u8>(), 0..64),
        ) {
            prop_assume!(timestamp != other);
            let signature = format!("v1,{}", sign(SECRET, "msg", timestamp, &body));
            let headers = signed("msg", &other.to_string(), &signature);
            prop_assert_eq!(verify(SECRET, &headers, &body, NOW), Err(SignatureError::Mismatch));
        }

        #[test]
        fn the_same_timestamp_spelled_otherwise_fails(timestamp in timestamp_near_now(), prefix in "[+0]{1,3}") {
            // The signature covers the header's text: "+1700000000" or "01700000000" is not
            // what the sender signed, even though it reads as the same number.
            let signature = format!("v1,{}", sign(SECRET, "msg", timestamp, BODY));
            let headers = signed("msg", &format!("{prefix}{timestamp}"), &signature);
            prop_assert!(verify(SECRET, &headers, BODY, NOW).is_err());
        }

        #[test]
        fn timestamps_outside_the_tolerance_fail(distance in TOLERANCE_SECONDS + 1..=NOW, later in any::<bool>()) {
            let timestamp = if later { NOW + distance } else { NOW - distance };
            let signature = format!("v1,{}", sign(SECRET, "msg", timestamp, BODY));
            let headers = signed("msg", &timestamp.to_string(), &signature);
            prop_assert_eq!(verify(SECRET, &headers, BODY, NOW), Err(SignatureError::Stale));
        }
    }
}
