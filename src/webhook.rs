//! The completion webhook (step 4) on the internal port: the verification service reports an
//! outcome, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::HeaderMap;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::crypto::equal_constant_time;
use crate::events::{emit, Event};
use crate::http::{json_no_store, now_ms, Body};
use crate::protocol::state::{webhook_key, Change, Loaded, Status, PING_QUEUE};
use crate::store::StoreError;

/// Accepted clock difference between the sender and us (Standard Webhooks recommends 5 min).
pub const TOLERANCE_SECONDS: u64 = 300;
/// How long a webhook id is remembered for idempotency (beyond the tolerance window, after
/// which a replay is refused for its timestamp anyway).
const REMEMBER_IDS: Duration = Duration::from_secs(24 * 3600);
/// Pings go out no sooner than this after the exchange response: the draft requires the RP to
/// hold its `deferred_auth_id` before the ping names it.
pub const PING_GRACE_MS: u64 = 2_000;

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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Approved,
    Denied,
    /// Progress only: updates the description pending polls see.
    Pending,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Completion {
    outcome: Outcome,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    process_id: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    realm: Option<String>,
}

fn problem(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_no_store(status, &json!({ "error": error, "error_description": description }))
}

fn store_problem(e: StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "store unavailable for a completion webhook");
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "The store is unavailable; retry.",
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(5));
    response
}

/// `POST /v1/completions`.
pub async fn completions(app: &App, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let Some(secret) = app.config.webhook_secret.as_deref() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "DTR_WEBHOOK_SECRET is not set.",
        );
    };
    let webhook_id = match verify(secret, headers, body, now_ms() / 1000) {
        Ok(id) => id,
        Err(e) => {
            app.metrics.request("completion", "bad_signature");
            tracing::warn!(reason = %e, "completion webhook rejected");
            return problem(StatusCode::UNAUTHORIZED, "invalid_signature", &e.to_string());
        }
    };
    let completion: Completion = match serde_json::from_slice(body) {
        Ok(completion) => completion,
        Err(e) => {
            app.metrics.request("completion", "bad_body");
            return problem(StatusCode::BAD_REQUEST, "invalid_body", &e.to_string());
        }
    };
    let selectors = [&completion.process_id, &completion.sub, &completion.sid]
        .iter()
        .filter(|s| s.is_some())
        .count();
    if selectors != 1 {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "Name exactly one of process_id, sub, sid.",
        );
    }
    if matches!(completion.outcome, Outcome::Approved) && completion.error_description.is_some() {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "error_description goes with denied or pending.",
        );
    }

    let store = app.store();
    let id_key = store.key(&webhook_key(&app.config.hash_key.hash("webhook-id", &webhook_id)));
    match store.get(&id_key).await {
        Ok(Some(previous)) => {
            // Same delivery again (a sender's retry): same answer, no second effect.
            app.metrics.request("completion", "duplicate");
            let mut reply: serde_json::Value = serde_json::from_slice(&previous).unwrap_or_else(|_| json!({}));
            reply["duplicate"] = json!(true);
            return json_no_store(StatusCode::OK, &reply);
        }
        Ok(None) => {}
        Err(e) => return store_problem(e),
    }

    let found = match find(app, &completion).await {
        Ok(found) => found,
        Err(e) => return store_problem(e),
    };
    if found.is_empty() {
        app.metrics.request("completion", "not_found");
        return problem(StatusCode::NOT_FOUND, "not_found", "No deferred process matches.");
    }
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for loaded in found {
        match apply(app, &completion, loaded).await {
            Ok((true, record)) => {
                changed.push(json!({"process_id": record.process_id, "status": record.status.name()}))
            }
            Ok((false, record)) => {
                unchanged.push(json!({"process_id": record.process_id, "status": record.status.name()}))
            }
            Err(e) => return store_problem(e),
        }
    }
    let reply = json!({ "changed": changed, "unchanged": unchanged });
    if let Err(e) = store.put(&id_key, reply.to_string().as_bytes(), REMEMBER_IDS).await {
        tracing::warn!(error = %e, "could not remember a webhook id");
    }
    app.metrics.request("completion", "ok");
    json_no_store(StatusCode::OK, &reply)
}

async fn find(app: &App, completion: &Completion) -> Result<Vec<Loaded>, StoreError> {
    let processes = &app.processes;
    let mut found = if let Some(process_id) = &completion.process_id {
        processes.find_by_process_id(process_id).await?.into_iter().collect()
    } else if let Some(sub) = &completion.sub {
        processes.find_by_subject(sub).await?
    } else if let Some(sid) = &completion.sid {
        processes.find_by_session(sid).await?
    } else {
        Vec::new()
    };
    found.retain(|l| {
        completion.client_id.as_ref().is_none_or(|c| *c == l.record.client_id)
            && completion.realm.as_ref().is_none_or(|r| *r == l.record.realm)
    });
    // By subject or session, a finished process is history: only open ones are addressed.
    if completion.process_id.is_none() {
        found.retain(|l| l.record.status.is_open());
    }
    Ok(found)
}

async fn apply(
    app: &App,
    completion: &Completion,
    loaded: Loaded,
) -> Result<(bool, crate::protocol::state::ProcessRecord), StoreError> {
    let process_hash = loaded.process_hash.clone();
    let now = now_ms();
    let result = app
        .processes
        .modify(&process_hash, Some(loaded), |r| {
            if !r.status.is_open() || now >= r.expires_at {
                return Change::Keep(false);
            }
            match completion.outcome {
                Outcome::Approved => r.status = Status::Approved,
                Outcome::Denied => r.status = Status::Denied,
                Outcome::Pending => {}
            }
            r.description = completion.error_description.clone();
            if r.status != Status::Pending {
                r.completed_at = Some(now);
            }
            Change::Write(true)
        })
        .await?;
    let Some((changed, record)) = result else {
        return Err(StoreError::Unavailable("process vanished during the update".into()));
    };
    if changed && record.status != Status::Pending {
        emit(
            &app.metrics,
            if record.status == Status::Approved {
                Event::Approved
            } else {
                Event::Denied
            },
            &record,
        );
        let has_endpoint = app
            .client(&record.realm, &record.client_id)
            .is_some_and(|c| c.notification_endpoint.is_some());
        if has_endpoint {
            let due = now.max(record.created_at + PING_GRACE_MS);
            let store = app.store();
            store.schedule(&store.key(PING_QUEUE), &process_hash, due).await?;
            app.ping_wakeup.notify_one();
        }
    }
    Ok((changed, record))
}

/// `GET /v1/processes/{process_id}`: what an operator may see (no secrets).
pub async fn process_view(app: &App, process_id: &str) -> Response<Body> {
    match app.processes.find_by_process_id(process_id).await {
        Ok(Some(loaded)) => {
            let r = &loaded.record;
            json_no_store(
                StatusCode::OK,
                &json!({
                    "process_id": r.process_id,
                    "realm": r.realm,
                    "client_id": r.client_id,
                    "status": r.status.name(),
                    "description": r.description,
                    "sub": r.sub,
                    "created_at": r.created_at / 1000,
                    "expires_at": r.expires_at / 1000,
                    "completed_at": r.completed_at.map(|t| t / 1000),
                    "interval": r.interval,
                    "dpop_bound": r.jkt.is_some(),
                    "client_auth_method": r.client.method.name(),
                    "ping_attempts": r.ping_attempts,
                }),
            )
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, "not_found", "No such process."),
        Err(e) => store_problem(e),
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
