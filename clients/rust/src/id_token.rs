//! ID token validation against the OP's JWKS (fetched once, again when a `kid` is unknown:
//! the OP rotated its keys). Signature and registered claims by jsonwebtoken.

use std::collections::HashSet;
use std::str::FromStr;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::RwLock;

use crate::http::Http;
use crate::DtrError;

/// Seconds of clock difference accepted on `exp` and `iat`.
const LEEWAY: u64 = 30;

/// The claims of a checked ID token: the standard ones by name, the rest in `other`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Value,
    pub exp: u64,
    pub iat: u64,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

pub(crate) struct KeySet {
    uri: String,
    keys: RwLock<Option<JwkSet>>,
}

fn invalid(what: impl Into<String>) -> DtrError {
    DtrError::InvalidIdToken(what.into())
}

impl KeySet {
    pub fn new(uri: String) -> Self {
        Self {
            uri,
            keys: RwLock::new(None),
        }
    }

    async fn fetch(&self, http: &Http) -> Result<JwkSet, DtrError> {
        let answer = http.get(&self.uri).await?;
        if answer.status != 200 {
            return Err(DtrError::InvalidResponse(format!(
                "jwks_uri answered {}",
                answer.status
            )));
        }
        let set: JwkSet =
            serde_json::from_slice(&answer.body).map_err(|e| DtrError::InvalidResponse(format!("jwks_uri: {e}")))?;
        *self.keys.write().await = Some(set.clone());
        Ok(set)
    }

    async fn key_for(&self, http: &Http, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, DtrError> {
        let pick = |set: &JwkSet| {
            let fits = |jwk: &&jsonwebtoken::jwk::Jwk| {
                let use_ok = !matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                );
                let alg_ok = jwk
                    .common
                    .key_algorithm
                    .is_none_or(|a| a.to_string() == format!("{alg:?}"));
                use_ok && alg_ok
            };
            match kid {
                Some(kid) => set
                    .keys
                    .iter()
                    .filter(fits)
                    .find(|k| k.common.key_id.as_deref() == Some(kid)),
                None => {
                    let mut candidates = set.keys.iter().filter(fits);
                    let first = candidates.next();
                    // Without a kid only an unambiguous key will do.
                    if candidates.next().is_some() {
                        None
                    } else {
                        first
                    }
                }
            }
            .cloned()
        };
        let cached = self.keys.read().await.clone();
        let jwk = match cached.as_ref().and_then(pick) {
            Some(jwk) => jwk,
            None => pick(&self.fetch(http).await?).ok_or_else(|| invalid("no key of the OP's JWKS fits the token"))?,
        };
        DecodingKey::from_jwk(&jwk).map_err(|e| invalid(format!("unusable JWK: {e}")))
    }

    pub async fn verify(
        &self,
        http: &Http,
        token: &str,
        allowed_algs: &[String],
        issuer: &str,
        client_id: &str,
        nonce: &str,
    ) -> Result<IdTokenClaims, DtrError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("not a JWS: {e}")))?;
        let alg = header.alg;
        // Asymmetric only: an HMAC ID token would be keyed by the client secret.
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(invalid("HMAC-signed ID tokens are not accepted"));
        }
        let announced = if allowed_algs.is_empty() {
            vec![Algorithm::RS256]
        } else {
            allowed_algs
                .iter()
                .filter_map(|a| Algorithm::from_str(a).ok())
                .collect()
        };
        if !announced.contains(&alg) {
            return Err(invalid(format!("{alg:?} is not an algorithm the OP announces")));
        }
        let key = self.key_for(http, header.kid.as_deref(), alg).await?;
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[client_id]);
        validation.required_spec_claims = HashSet::from(["exp", "iat", "iss", "aud", "sub"].map(str::to_owned));
        let claims = jsonwebtoken::decode::<IdTokenClaims>(token, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?
            .claims;
        let audiences = match &claims.aud {
            Value::Array(list) => list.len(),
            _ => 1,
        };
        if audiences > 1 && claims.azp.as_deref().is_some_and(|azp| azp != client_id) {
            return Err(invalid("azp names another client"));
        }
        if claims.sub.is_empty() {
            return Err(invalid("no sub"));
        }
        if claims.iat > crate::keys::now_seconds() + LEEWAY {
            return Err(invalid("issued in the future"));
        }
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(invalid("the ID token does not carry the nonce of the request"));
        }
        Ok(claims)
    }
}
