//! Verifying dtr-proxy's lifecycle events (`deferred.started`, `.cancelled`, `.expired`,
//! `.delivered`) on the verification service's side. They are signed per Standard Webhooks:
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`, a space-separated
//! list of `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the secret configured as
//! `DTR_EVENTS_SECRET` (`whsec_<base64>`).

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::keys::now_seconds;

/// Standard Webhooks' recommended tolerance between the sender's clock and ours.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why an event was refused (answer 400 or 401; the proxy retries only 408, 429 and 5xx).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance")]
    Stale,
    #[error("no valid v1 signature")]
    BadSignature,
    #[error("the signed body is not an event: {0}")]
    BadBody(String),
}

/// A verified lifecycle event.
#[derive(Debug, Clone, Deserialize)]
pub struct LifecycleEvent {
    /// `webhook-id`: the same for every delivery attempt of one event (deduplicate on it).
    #[serde(skip)]
    pub id: String,
    /// `deferred.started`, `deferred.cancelled`, `deferred.expired` or `deferred.delivered`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event happened (Unix seconds).
    pub timestamp: u64,
    /// `process_id`, `client_id`, `realm`, `sub`, `sid`, `expires_at`; for `started` also the
    /// requested `acr_values` and `claims`.
    pub data: Value,
}

impl LifecycleEvent {
    /// `data.process_id`: the handle the completion webhook can name the process by.
    pub fn process_id(&self) -> Option<&str> {
        self.data["process_id"].as_str()
    }
}

/// Checks signed events with one secret (several verifiers for a rotation).
#[derive(Clone)]
pub struct EventVerifier {
    key: hmac::Key,
    tolerance: Duration,
}

impl std::fmt::Debug for EventVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventVerifier")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl EventVerifier {
    /// From the shared secret, `whsec_<base64>` (the prefix is optional).
    pub fn new(secret: &str) -> Result<Self, crate::DtrError> {
        let encoded = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| crate::DtrError::Key("an events secret is whsec_<base64>".into()))?;
        if bytes.is_empty() {
            return Err(crate::DtrError::Key("an empty events secret".into()));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// Accept timestamps this far from our clock (default five minutes).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a delivery against our clock.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<LifecycleEvent, EventError> {
        self.verify_at(headers, body, now_seconds())
    }

    /// Verifies a delivery as of `now` (Unix seconds).
    pub fn verify_at(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<LifecycleEvent, EventError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .ok_or(EventError::Missing(name))
        };
        let id = header("webhook-id")?;
        let timestamp_text = header("webhook-timestamp")?;
        // Only the canonical form: the signature covers the text as the sender wrote it.
        let timestamp: u64 = timestamp_text
            .parse()
            .ok()
            .filter(|t: &u64| t.to_string() == timestamp_text)
            .ok_or(EventError::BadTimestamp)?;
        let signatures = header("webhook-signature")?;
        if timestamp.abs_diff(now) > self.tolerance.as_secs() {
            return Err(EventError::Stale);
        }
        let mut signed = Vec::with_capacity(id.len() + timestamp_text.len() + body.len() + 2);
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp_text.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        // Several signatures may be listed (the sender rotating its secret); other versions
        // than v1 are skipped. `hmac::verify` compares in constant time.
        let valid = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|s| STANDARD.decode(s).ok())
            .any(|tag| hmac::verify(&self.key, &signed, &tag).is_ok());
        if !valid {
            return Err(EventError::BadSignature);
        }
        let mut event: LifecycleEvent = serde_json::from_slice(body).map_err(|e| EventError::BadBody(e.to_string()))?;
        event.id = id.to_owned();
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from_str(timestamp).unwrap());
        h.insert("webhook-signature", HeaderValue::from_str(signature).unwrap());
        h
    }

    fn sign(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
        let bytes = STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        let mut message = format!("{id}.{timestamp}.").into_bytes();
        message.extend_from_slice(body);
        STANDARD.encode(hmac::sign(&key, &message).as_ref())
    }

    #[test]
    fn the_standard_webhooks_reference_signature_verifies_among_others() {
        // The specification's example (its body is not an event, so only the signature
        // step is checked here).
        let verifier = EventVerifier::new(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let expected = "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body), expected);
        let h = headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            &format!("v2,abc v1,Zm9v v1,{expected}"),
        );
        assert!(matches!(
            verifier.verify_at(&h, body, 1614265330 + 60),
            Err(EventError::BadBody(_))
        ));
    }

    #[test]
    fn an_event_verifies_and_every_alteration_fails() {
        let verifier = EventVerifier::new(SECRET).unwrap();
        let body = br#"{"type":"deferred.started","timestamp":1000,"data":{"process_id":"p1"}}"#;
        let good = sign(SECRET, "evt_1", 1000, body);
        let event = verifier
            .verify_at(&headers("evt_1", "1000", &format!("v1,{good}")), body, 1010)
            .unwrap();
        assert_eq!((event.id.as_str(), event.kind.as_str()), ("evt_1", "deferred.started"));
        assert_eq!(event.process_id(), Some("p1"));
        // The prefix is optional.
        let bare = EventVerifier::new(SECRET.trim_start_matches("whsec_")).unwrap();
        assert!(bare
            .verify_at(&headers("evt_1", "1000", &format!("v1,{good}")), body, 1010)
            .is_ok());

        let refused = |h: HeaderMap, body: &[u8], now: u64| verifier.verify_at(&h, body, now).unwrap_err();
        let sig = format!("v1,{good}");
        assert_eq!(
            refused(headers("evt_2", "1000", &sig), body, 1010),
            EventError::BadSignature
        );
        assert_eq!(
            refused(headers("evt_1", "1000", &sig), b"{}", 1010),
            EventError::BadSignature
        );
        assert_eq!(refused(headers("evt_1", "1000", &sig), body, 1301), EventError::Stale);
        assert_eq!(
            refused(headers("evt_1", "01000", &sig), body, 1010),
            EventError::BadTimestamp
        );
        assert_eq!(
            refused(headers("evt_1", "1000", &format!("v2,{good}")), body, 1010),
            EventError::BadSignature
        );
        let other = EventVerifier::new("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(
            other
                .verify_at(&headers("evt_1", "1000", &sig), body, 1010)
                .unwrap_err(),
            EventError::BadSignature
        );
        let mut missing = headers("evt_1", "1000", &sig);
        missing.remove("webhook-signature");
        assert_eq!(refused(missing, body, 1010), EventError::Missing("webhook-signature"));
        // A tighter tolerance.
        let strict = EventVerifier::new(SECRET)
            .unwrap()
            .with_tolerance(Duration::from_secs(5));
        assert_eq!(
            strict
                .verify_at(&headers("evt_1", "1000", &sig), body, 1010)
                .unwrap_err(),
            EventError::Stale
        );
        assert!(EventVerifier::new("whsec_!!").is_err());
    }
}
