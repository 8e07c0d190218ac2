//! Local verification of client assertions (RFC 7523: `private_key_jwt` and
//! `client_secret_jwt`), so pending polls and cancels authenticate without the OP.
//!
//! The keys come from the client's settings: an inline `jwks`, a `jwks_uri` fetched and cached
//! for `DTR_JWKS_CACHE_TTL` (refetched early, at most every few seconds, when an assertion
//! names a `kid` the cached set lacks: the client rotated its keys), or the `client_secret`
//! for HMAC assertions. Each assertion is single use: its `jti` is remembered in the store
//! until it expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::ClientSettings;
use crate::crypto::HashKey;
use crate::protocol::errors::{OAuthError, Source};
use crate::protocol::wire::error as code;
use crate::store::Store;
use crate::upstream::HttpClient;

/// Clock skew tolerated on `exp`/`nbf`/`iat`.
const LEEWAY_SECONDS: u64 = 30;
/// A fetched key set is never refetched more often than this, whatever assertions claim.
const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Largest key set document accepted.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The longest a `jti` is remembered, whatever `exp` says.
const MAX_JTI_MEMORY: Duration = Duration::from_secs(24 * 3600);

struct Cached {
    keys: Arc<JwkSet>,
    fetched: Instant,
}

/// Fetched client key sets, by URI.
pub struct ClientKeys {
    http: HttpClient,
    ttl: Duration,
    timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("fetching the client's jwks_uri failed: {0}")]
    Failed(String),
}

impl ClientKeys {
    pub fn new(http: HttpClient, ttl: Duration, timeout: Duration) -> Self {
        Self {
            http,
            ttl,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, uri: &str) -> Option<(Arc<JwkSet>, Duration)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(uri).map(|c| (c.keys.clone(), c.fetched.elapsed()))
    }

    /// The client's key set; `kid` that the set must contain if it can (a miss refetches).
    async fn keys(&self, client: &ClientSettings, kid: Option<&str>) -> Result<Option<Arc<JwkSet>>, FetchError> {
        if let Some(keys) = &client.jwks {
            return Ok(Some(Arc::new(keys.clone())));
        }
        let Some(uri) = client.jwks_uri.as_deref() else {
            return Ok(None);
        };
        if let Some((keys, age)) = self.cached(uri) {
            let knows_kid = kid.is_none_or(|kid| keys.find(kid).is_some());
            if age < self.ttl && (knows_kid || age < MIN_REFETCH) {
                return Ok(Some(keys));
            }
        }
        let keys = Arc::new(self.fetch(uri).await?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(
            uri.to_owned(),
            Cached {
                keys: keys.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(Some(keys))
    }

    async fn fetch(&self, uri: &str) -> Result<JwkSet, FetchError> {
        let request = Request::get(uri)
            .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
            .body(crate::http::empty())
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| FetchError::Failed("timeout".into()))?
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Failed(format!("status {}", response.status())));
        }
        let body = tokio::time::timeout(
            self.timeout,
            http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| FetchError::Failed("timeout".into()))?
        .map_err(|e| FetchError::Failed(e.to_string()))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| FetchError::Failed(format!("not a JWK Set: {e}")))
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    jti: Option<String>,
    exp: u64,
}

fn rejected(description: &'static str) -> OAuthError {
    OAuthError::invalid_client(description, None)
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Whether a JWK may verify `alg` (key type, and the key's own `alg` when it names one).
fn key_matches(jwk: &jsonwebtoken::jwk::Jwk, alg: Algorithm) -> bool {
    let type_fits = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        // Symmetric keys never come from a key set here: that would let a public JWKS
        // double as an HMAC secret.
        AlgorithmParameters::OctetKey(_) => false,
    };
    let alg_fits = jwk
        .common
        .key_algorithm
        .is_none_or(|declared| declared.to_string() == format!("{alg:?}"));
    type_fits && alg_fits
}

fn claim_error(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "The client assertion's signature does not verify with the client's keys.",
        ErrorKind::ExpiredSignature => "The client assertion has expired.",
        ErrorKind::ImmatureSignature => "The client assertion is not valid yet.",
        ErrorKind::InvalidAudience => "The client assertion's audience is not this server.",
        ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
            "The client assertion's iss and sub must both be the client_id."
        }
        ErrorKind::MissingRequiredClaim(_) => "The client assertion lacks iss, sub, aud or exp.",
        ErrorKind::InvalidAlgorithm => "The client assertion's algorithm does not fit the client's keys.",
        _ => "The client assertion is malformed.",
    }
}

/// Verifies a client assertion in full, without the OP: signature with the client's keys,
/// `iss` = `sub` = client_id, `aud` one of `audiences`, `exp`, and `jti` single use.
pub async fn verify_assertion(
    keys: &ClientKeys,
    store: &Store,
    hash_key: &HashKey,
    client: &ClientSettings,
    assertion: &str,
    audiences: &[String],
) -> Result<(), OAuthError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| rejected("The client assertion is malformed."))?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_audience(audiences);
    validation.set_issuer(&[&client.client_id]);
    validation.sub = Some(client.client_id.clone());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);

    let candidates: Vec<DecodingKey> = if is_hmac(header.alg) {
        match &client.client_secret {
            Some(secret) => vec![DecodingKey::from_secret(secret.0.as_bytes())],
            None => {
                tracing::warn!(client_id = %client.client_id, "client_secret_jwt assertion, but no client_secret is configured for this client");
                return Err(rejected(
                    "client_secret_jwt is not configured for this client at the deferred endpoints.",
                ));
            }
        }
    } else {
        let set = keys.keys(client, header.kid.as_deref()).await.map_err(|e| OAuthError {
            source: Source::Op,
            retry_after: Some(5),
            cause: Some(std::sync::Arc::new(e)),
            ..OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::TEMPORARILY_UNAVAILABLE,
                "The client's keys cannot be loaded right now; retry later.",
            )
        })?;
        let Some(set) = set else {
            tracing::warn!(client_id = %client.client_id, "private_key_jwt assertion, but neither jwks nor jwks_uri is configured for this client");
            return Err(rejected(
                "private_key_jwt is not configured for this client at the deferred endpoints.",
            ));
        };
        set.keys
            .iter()
            .filter(|jwk| match (&header.kid, &jwk.common.key_id) {
                (Some(wanted), Some(id)) => wanted == id,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .filter(|jwk| key_matches(jwk, header.alg))
            .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
            .collect()
    };
    if candidates.is_empty() {
        return Err(rejected("No key of this client fits the client assertion."));
    }
    let mut last = ErrorKind::InvalidSignature;
    let mut claims = None;
    for key in &candidates {
        match jsonwebtoken::decode::<AssertionClaims>(assertion, key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => last = e.into_kind(),
        }
    }
    let claims = claims.ok_or_else(|| rejected(claim_error(&last)))?;
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| rejected("The client assertion needs a jti."))?;
    let now = crate::clock::now_ms() / 1000;
    let remember = Duration::from_secs((claims.exp + LEEWAY_SECONDS).saturating_sub(now).max(1)).min(MAX_JTI_MEMORY);
    let key = store.key(&format!(
        "jwt:{}",
        hash_key.hash("assertion-jti", &format!("{}\0{jti}", client.client_id))
    ));
    if !store.put_new(&key, b"1", remember).await? {
        return Err(rejected("The client assertion was already used."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwk(value: serde_json::Value) -> jsonwebtoken::jwk::Jwk {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn keys_fit_only_their_algorithms() {
        let ec = jwk(json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}));
        assert!(key_matches(&ec, Algorithm::ES256));
        assert!(!key_matches(&ec, Algorithm::RS256));
        let ec_pinned = jwk(json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "alg": "ES384"}));
        assert!(key_matches(&ec_pinned, Algorithm::ES384));
        assert!(!key_matches(&ec_pinned, Algorithm::ES256));
        let oct = jwk(json!({"kty": "oct", "k": "c2VjcmV0"}));
        assert!(
            !key_matches(&oct, Algorithm::HS256),
            "a key set never holds an HMAC key"
        );
    }
}
