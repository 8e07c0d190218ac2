//! Federation metadata statements (OpenID Connect Federation draft 03 §3–§4 and Appendix A,
//! as used by the WebFinger-based federated client model): signed JWTs that nest the more
//! general statement of the level below under `metadata_statements[<federation id>]`, whose
//! innermost level a trust root signed.
//!
//! This module is pure: it reads a chain of compact JWS (outermost first), verifies it from
//! the inside out — the innermost with the trust root's keys, each further level only with the
//! `signing_keys` the level below certified — and flattens it with the subset rule. Fetching
//! the levels (WebFinger, `metadata_statement_uris`) is the caller's business.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// The WebFinger `rel` naming a client's OpenID Connect statements (the seed's choice).
pub const PROVIDER_REL: &str = "http://openid.net/specs/connect/1.0/provider";
/// The WebFinger link property naming the federation a statement is rooted in.
pub const FEDERATION_PROPERTY: &str = "http://openid.net/specs/connect/1.0/federation";
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECONDS: u64 = 30;

/// What a chain is for (`federation_usage`): a missing tag passes, another one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Client metadata.
    Registration,
    /// Provider configuration.
    Discovery,
}

impl Usage {
    fn tag(self) -> &'static str {
        match self {
            Usage::Registration => "registration",
            Usage::Discovery => "discovery",
        }
    }
}

/// Claims about the statement itself, never merged into the metadata (draft 03 Appendix A as
/// fedoidcmsg reads it; `kid` in a payload is a pyoidc artefact: the header's counts).
const NOT_MERGED: [&str; 12] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "kid",
    "signing_keys",
    "signing_keys_uri",
    "metadata_statements",
    "metadata_statement_uris",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    #[error("a statement is not a readable JWT: {0}")]
    Malformed(String),
    #[error("the chain is not rooted in federation {0}")]
    NotInFederation(String),
    #[error("the chain is deeper than {0} levels")]
    TooDeep(usize),
    #[error("a statement's signature does not verify: {0}")]
    Signature(String),
    #[error("a statement has expired")]
    Expired,
    #[error("a statement is issued in the future")]
    NotYetValid,
    #[error("the chain does not hold together: {0}")]
    Chain(String),
    #[error("the statement is for federation_usage {0:?}")]
    Usage(String),
    #[error("claim {0} widens what a statement below allows")]
    NotSubset(String),
}

/// Where the next inner level of a statement is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inner {
    /// Embedded (`metadata_statements[federation]`).
    Embedded(String),
    /// To fetch (`metadata_statement_uris[federation]`).
    Uri(String),
    /// This is the innermost level.
    None,
}

/// The payload of a compact JWS, read without verification: only to find the next level.
pub fn unverified_payload(jws: &str) -> Result<Map<String, Value>, StatementError> {
    jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(jws)
        .map(|data| data.claims)
        .map_err(|e| StatementError::Malformed(e.to_string()))
}

/// The next inner statement of `jws` in `federation` (draft 03: the map key is always the
/// federation id). A statement naming the federation in both maps is refused.
pub fn inner_of(jws: &str, federation: &str) -> Result<Inner, StatementError> {
    let payload = unverified_payload(jws)?;
    let embedded = payload.get("metadata_statements");
    let linked = payload.get("metadata_statement_uris");
    if embedded.is_none() && linked.is_none() {
        return Ok(Inner::None);
    }
    let pick = |map: Option<&Value>, name: &str| -> Result<Option<String>, StatementError> {
        match map {
            None => Ok(None),
            Some(Value::Object(map)) => match map.get(federation) {
                None => Ok(None),
                Some(Value::String(value)) => Ok(Some(value.clone())),
                Some(_) => Err(StatementError::Malformed(format!("{name} values must be strings"))),
            },
            Some(_) => Err(StatementError::Malformed(format!("{name} must be an object"))),
        }
    };
    match (
        pick(embedded, "metadata_statements")?,
        pick(linked, "metadata_statement_uris")?,
    ) {
        (Some(_), Some(_)) => Err(StatementError::Chain(
            "a federation is named both in metadata_statements and metadata_statement_uris".into(),
        )),
        (Some(jws), None) => Ok(Inner::Embedded(jws)),
        (None, Some(uri)) => Ok(Inner::Uri(uri)),
        (None, None) => Err(StatementError::NotInFederation(federation.to_owned())),
    }
}

/// A verified, flattened chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The merged metadata (without the statement claims of [`NOT_MERGED`]).
    pub metadata: Map<String, Value>,
    /// The `sub` of the outermost level, if it names one.
    pub subject: Option<String>,
    /// The earliest `exp` of the chain (seconds): nothing of it is trusted after that.
    pub expires_at: u64,
    /// The `signing_keys` the outermost level certifies for its subject (the client): the
    /// keys a `signed_jwks_uri` document must be signed with.
    pub signing_keys: Option<JwkSet>,
}

/// Verifies chains of metadata statements. Behind a trait so that another resolution model
/// (OpenID Federation 1.0 trust chains) can stand beside this one.
pub trait ChainVerifier: Send + Sync {
    /// `levels`: compact JWS, outermost first, innermost last.
    fn verify(
        &self,
        levels: &[String],
        federation: &str,
        root_keys: &JwkSet,
        usage: Usage,
        now: u64,
    ) -> Result<Verified, StatementError>;
}

/// Draft 03 nested statements.
#[derive(Debug, Clone, Copy)]
pub struct NestedStatements {
    pub max_depth: usize,
}

impl Default for NestedStatements {
    fn default() -> Self {
        Self { max_depth: 4 }
    }
}

/// Asymmetric algorithms only: never `none`, never HMAC (a public key set is no shared secret).
fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Checks a JWS's signature with `keys`, choosing the key by the header's `kid` (asymmetric
/// algorithms only), and returns its payload. Time claims are the caller's to check, against
/// its own clock; `what` and `whose` name the document and the keys in errors.
fn signed_payload(jws: &str, keys: &JwkSet, what: &str, whose: &str) -> Result<Map<String, Value>, StatementError> {
    let header = jsonwebtoken::decode_header(jws).map_err(|e| StatementError::Malformed(e.to_string()))?;
    if !asymmetric(header.alg) {
        return Err(StatementError::Signature(format!(
            "algorithm {:?} is not allowed",
            header.alg
        )));
    }
    let kid = header
        .kid
        .as_deref()
        .ok_or_else(|| StatementError::Signature(format!("{what} names no kid")))?;
    let jwk = keys
        .find(kid)
        .ok_or_else(|| StatementError::Signature(format!("no {whose} key has kid {kid:?}")))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| StatementError::Signature(e.to_string()))?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    Ok(jsonwebtoken::decode::<Map<String, Value>>(jws, &key, &validation)
        .map_err(|e| StatementError::Signature(e.to_string()))?
        .claims)
}

/// Verifies one level with `keys`, choosing the key by the header's `kid`.
fn verify_level(jws: &str, keys: &JwkSet, now: u64) -> Result<Map<String, Value>, StatementError> {
    let payload = signed_payload(jws, keys, "the header", "trusted")?;
    let exp = payload
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| StatementError::Malformed("exp is required".into()))?;
    if exp + LEEWAY_SECONDS <= now {
        return Err(StatementError::Expired);
    }
    match payload.get("iat").map(Value::as_u64) {
        Some(Some(iat)) if iat > now + LEEWAY_SECONDS => return Err(StatementError::NotYetValid),
        Some(None) => return Err(StatementError::Malformed("iat must be a number".into())),
        _ => {}
    }
    if payload.contains_key("signing_keys_uri") {
        return Err(StatementError::Chain("signing_keys_uri is not supported".into()));
    }
    Ok(payload)
}

/// Verifies the document a `signed_jwks_uri` serves: a JWS whose payload is the entity's
/// OIDC JWK Set, signed with one of the `signing_keys` its statement certified (chosen by the
/// header `kid`; asymmetric algorithms only). An `exp` is optional; when present it must not
/// have passed, and it is returned to bound the keys' lifetime.
pub fn verify_signed_jwks(jws: &str, keys: &JwkSet, now: u64) -> Result<(JwkSet, Option<u64>), StatementError> {
    let payload = signed_payload(jws, keys, "the signed JWKS", "certified signing")?;
    let exp = match payload.get("exp").map(Value::as_u64) {
        None => None,
        Some(Some(exp)) if exp + LEEWAY_SECONDS > now => Some(exp),
        Some(Some(_)) => return Err(StatementError::Expired),
        Some(None) => return Err(StatementError::Malformed("exp must be a number".into())),
    };
    if let Some(Some(iat)) = payload.get("iat").map(Value::as_u64) {
        if iat > now + LEEWAY_SECONDS {
            return Err(StatementError::NotYetValid);
        }
    }
    let keys = payload
        .get("keys")
        .cloned()
        .ok_or_else(|| StatementError::Malformed("the signed JWKS has no keys".into()))?;
    let jwks: JwkSet = serde_json::from_value(json_object("keys", keys))
        .map_err(|e| StatementError::Malformed(format!("the signed JWKS is not a JWK Set: {e}")))?;
    Ok((jwks, exp))
}

fn json_object(name: &str, value: Value) -> Value {
    let mut map = Map::new();
    map.insert(name.to_owned(), value);
    Value::Object(map)
}

/// The `signing_keys` a level certifies for the level above it (a JWK Set, or the same as a
/// JSON string, as fedoidcmsg accepts).
fn signing_keys(payload: &Map<String, Value>) -> Result<Option<JwkSet>, StatementError> {
    let parsed = match payload.get("signing_keys") {
        None => return Ok(None),
        Some(Value::String(text)) => serde_json::from_str(text),
        Some(value) => serde_json::from_value(value.clone()),
    };
    parsed
        .map(Some)
        .map_err(|e| StatementError::Malformed(format!("signing_keys is not a JWK Set: {e}")))
}

fn string_claim<'a>(payload: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    payload.get(name).and_then(Value::as_str)
}

/// Draft 03 Appendix A: whether `specific` is a subset of `general`.
pub fn is_subset(specific: &Value, general: &Value) -> bool {
    match (specific, general) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => a <= b,
            _ => false,
        },
        (Value::Array(a), Value::Array(b)) => a.iter().all(|item| b.iter().any(|other| is_subset(item, other))),
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(key, value)| b.get(key).is_some_and(|other| is_subset(value, other))),
        (Value::Null, Value::Null) => true,
        _ => false,
    }
}

/// Folds `specific` into `merged`: a new claim is added, a known one replaced only by a subset
/// of it; anything else is an error (draft 03, not draft 01's silent ignore).
pub fn merge(merged: &mut Map<String, Value>, specific: &Map<String, Value>) -> Result<(), StatementError> {
    for (name, value) in specific {
        if NOT_MERGED.contains(&name.as_str()) {
            continue;
        }
        match merged.get(name) {
            Some(general) if !is_subset(value, general) => return Err(StatementError::NotSubset(name.clone())),
            _ => {
                merged.insert(name.clone(), value.clone());
            }
        }
    }
    Ok(())
}

impl ChainVerifier for NestedStatements {
    fn verify(
        &self,
        levels: &[String],
        federation: &str,
        root_keys: &JwkSet,
        usage: Usage,
        now: u64,
    ) -> Result<Verified, StatementError> {
        if levels.is_empty() {
            return Err(StatementError::Malformed("no statement".into()));
        }
        if levels.len() > self.max_depth {
            return Err(StatementError::TooDeep(self.max_depth));
        }
        // Innermost first: the trust root's own statement.
        let mut inward = levels.iter().rev();
        let innermost = inward.next().map(String::as_str).unwrap_or_default();
        let payload = verify_level(innermost, root_keys, now)?;
        if string_claim(&payload, "iss") != Some(federation) {
            return Err(StatementError::NotInFederation(federation.to_owned()));
        }
        if let Some(tag) = payload.get("federation_usage") {
            if tag.as_str() != Some(usage.tag()) {
                return Err(StatementError::Usage(tag.to_string()));
            }
        }
        let mut expires_at = payload.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let mut merged = Map::new();
        merge(&mut merged, &payload)?;
        let mut below = payload;
        for jws in inward {
            // Only the keys the level below certified; never the keys a statement carries for
            // itself (that would let anyone sign the outer level).
            let keys = signing_keys(&below)?
                .ok_or_else(|| StatementError::Chain("a statement below certifies no signing_keys".into()))?;
            let payload = verify_level(jws, &keys, now)?;
            let issuer =
                string_claim(&payload, "iss").ok_or_else(|| StatementError::Malformed("iss is required".into()))?;
            if let Some(subject) = string_claim(&below, "sub") {
                if subject != issuer {
                    return Err(StatementError::Chain(format!(
                        "the statement below is about {subject}, this one is signed by {issuer}"
                    )));
                }
            }
            // The embedded level must be the one just verified (a chain assembled from
            // unrelated statements does not pass).
            if let Some(Value::Object(map)) = payload.get("metadata_statements") {
                let expected = levels_below(levels, jws);
                if let (Some(Value::String(embedded)), Some(expected)) = (map.get(federation), expected) {
                    if embedded != expected {
                        return Err(StatementError::Chain(
                            "the embedded statement is not the level below".into(),
                        ));
                    }
                }
            }
            expires_at = expires_at.min(payload.get("exp").and_then(Value::as_u64).unwrap_or(0));
            merge(&mut merged, &payload)?;
            below = payload;
        }
        Ok(Verified {
            metadata: merged,
            subject: string_claim(&below, "sub").map(str::to_owned),
            expires_at,
            signing_keys: signing_keys(&below)?,
        })
    }
}

/// The level right inside `jws` in the (outermost-first) `levels`.
fn levels_below<'a>(levels: &'a [String], jws: &str) -> Option<&'a String> {
    let at = levels.iter().position(|level| level == jws)?;
    levels.get(at + 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn subsets_follow_appendix_a() {
        assert!(is_subset(&json!(["openid"]), &json!(["openid", "email"])));
        assert!(!is_subset(&json!(["openid", "address"]), &json!(["openid", "email"])));
        assert!(is_subset(&json!("code"), &json!("code")));
        assert!(!is_subset(&json!("openid email"), &json!("openid email profile")));
        assert!(is_subset(&json!(3), &json!(5)));
        assert!(!is_subset(&json!(6), &json!(5)));
        assert!(!is_subset(&json!(false), &json!(true)));
        assert!(is_subset(&json!({"a": [1]}), &json!({"a": [1, 2], "b": 1})));
        assert!(!is_subset(&json!({"c": 1}), &json!({"a": 1})));
    }

    #[test]
    fn a_more_specific_level_narrows_and_cannot_widen() {
        let mut merged = map(json!({"scopes": ["openid", "email", "profile"], "iss": "x"}));
        merge(
            &mut merged,
            &map(json!({"scopes": ["openid"], "redirect_uris": ["https://a/cb"], "exp": 1})),
        )
        .unwrap();
        assert_eq!(
            merged["scopes"],
            json!(["openid"]),
            "the leaf's value is kept (fedoidcmsg)"
        );
        assert!(merged.contains_key("redirect_uris"));
        assert!(!merged.contains_key("exp"));
        let widened = merge(&mut merged, &map(json!({"scopes": ["openid", "address"]})));
        assert_eq!(widened, Err(StatementError::NotSubset("scopes".into())));
    }

    #[test]
    fn a_frozen_boolean_cannot_be_flipped() {
        let mut merged = map(json!({"require_signed_request_object": true}));
        assert!(merge(&mut merged, &map(json!({"require_signed_request_object": false}))).is_err());
    }

    #[test]
    fn the_next_level_is_found_by_federation_id() {
        let payload = encode_part(&json!({"metadata_statements": {"https://fed": "a.b.c"}}));
        let jws = format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln");
        assert_eq!(inner_of(&jws, "https://fed"), Ok(Inner::Embedded("a.b.c".into())));
        assert_eq!(
            inner_of(&jws, "https://other"),
            Err(StatementError::NotInFederation("https://other".into()))
        );
        let none = encode_part(&json!({"iss": "https://fed"}));
        assert_eq!(
            inner_of(&format!("eyJhbGciOiJFUzI1NiJ9.{none}.c2ln"), "https://fed"),
            Ok(Inner::None)
        );
    }

    fn encode_part(value: &Value) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// A P-256 key pair as (signing key, public JWK with `kid`).
    pub(crate) fn ec_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::Engine;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn sign(key: &jsonwebtoken::EncodingKey, kid: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    const NOW: u64 = 2_000_000_000;
    const FED: &str = "https://fed.example.org";

    struct Federation {
        root: (jsonwebtoken::EncodingKey, Value),
        org: (jsonwebtoken::EncodingKey, Value),
    }

    impl Federation {
        fn new() -> Self {
            Self {
                root: ec_key("fo-1"),
                org: ec_key("org-1"),
            }
        }
        fn root_keys(&self) -> JwkSet {
            serde_json::from_value(json!({"keys": [self.root.1]})).unwrap()
        }
        fn inner(&self, exp: u64) -> String {
            sign(
                &self.root.0,
                "fo-1",
                &json!({"iss": FED, "sub": "https://org.example.com", "iat": NOW - 10,
                "exp": exp, "federation_usage": "registration", "signing_keys": {"keys": [self.org.1]},
                "scopes": ["openid", "profile", "email"], "response_types": ["code"]}),
            )
        }
        fn outer(&self, signer: &jsonwebtoken::EncodingKey, inner: &str, scopes: Value) -> String {
            sign(
                signer,
                "org-1",
                &json!({"iss": "https://org.example.com", "sub": "https://sp.example.com/app",
                "iat": NOW - 5, "exp": NOW + 600, "client_id": "https://sp.example.com/app", "scopes": scopes,
                "redirect_uris": ["https://sp.example.com/cb"], "metadata_statements": {FED: inner}}),
            )
        }
    }

    #[test]
    fn a_two_level_chain_verifies_and_flattens() {
        let fed = Federation::new();
        let inner = fed.inner(NOW + 3600);
        let outer = fed.outer(&fed.org.0, &inner, json!(["openid", "email"]));
        let verified = NestedStatements::default()
            .verify(&[outer, inner], FED, &fed.root_keys(), Usage::Registration, NOW)
            .unwrap();
        assert_eq!(verified.metadata["scopes"], json!(["openid", "email"]));
        assert_eq!(verified.metadata["response_types"], json!(["code"]));
        assert_eq!(verified.subject.as_deref(), Some("https://sp.example.com/app"));
        assert_eq!(verified.expires_at, NOW + 600, "the earliest exp of the chain");
        assert!(!verified.metadata.contains_key("signing_keys"));
    }

    #[test]
    fn chains_that_must_fail_do() {
        let fed = Federation::new();
        let verifier = NestedStatements::default();
        let inner = fed.inner(NOW + 3600);
        let widened = fed.outer(&fed.org.0, &inner, json!(["openid", "address"]));
        assert_eq!(
            verifier.verify(
                &[widened, inner.clone()],
                FED,
                &fed.root_keys(),
                Usage::Registration,
                NOW
            ),
            Err(StatementError::NotSubset("scopes".into()))
        );
        let (forger, _) = ec_key("org-1");
        let forged = fed.outer(&forger, &inner, json!(["openid"]));
        assert!(matches!(
            verifier.verify(
                &[forged, inner.clone()],
                FED,
                &fed.root_keys(),
                Usage::Registration,
                NOW
            ),
            Err(StatementError::Signature(_))
        ));
        let expired = fed.inner(NOW - 100);
        let outer = fed.outer(&fed.org.0, &expired, json!(["openid"]));
        assert_eq!(
            verifier.verify(&[outer, expired], FED, &fed.root_keys(), Usage::Registration, NOW),
            Err(StatementError::Expired)
        );
        let outer = fed.outer(&fed.org.0, &inner, json!(["openid"]));
        let other_root: JwkSet = serde_json::from_value(json!({"keys": [ec_key("fo-1").1]})).unwrap();
        assert!(matches!(
            verifier.verify(
                &[outer.clone(), inner.clone()],
                FED,
                &other_root,
                Usage::Registration,
                NOW
            ),
            Err(StatementError::Signature(_))
        ));
        assert_eq!(
            verifier.verify(
                &[outer.clone(), inner.clone()],
                "https://other.example",
                &fed.root_keys(),
                Usage::Registration,
                NOW
            ),
            Err(StatementError::NotInFederation("https://other.example".into()))
        );
        assert!(matches!(
            verifier.verify(&[outer, inner], FED, &fed.root_keys(), Usage::Discovery, NOW),
            Err(StatementError::Usage(_))
        ));
    }

    #[test]
    fn an_outer_level_cannot_vouch_for_itself() {
        let fed = Federation::new();
        // The root certifies no signing_keys: the outer level's own keys must not count.
        let inner = sign(&fed.root.0, "fo-1", &json!({"iss": FED, "iat": NOW, "exp": NOW + 60}));
        let (own, own_jwk) = ec_key("org-1");
        let outer = sign(
            &own,
            "org-1",
            &json!({"iss": "https://org", "iat": NOW, "exp": NOW + 60,
            "signing_keys": {"keys": [own_jwk]}, "metadata_statements": {FED: inner}}),
        );
        assert!(matches!(
            NestedStatements::default().verify(&[outer, inner], FED, &fed.root_keys(), Usage::Registration, NOW),
            Err(StatementError::Chain(_))
        ));
    }

    #[test]
    fn a_signed_jwks_verifies_only_with_a_certified_key() {
        let (signer, signer_jwk) = ec_key("sp-sign");
        let certified: JwkSet = serde_json::from_value(json!({"keys": [signer_jwk]})).unwrap();
        let (_, client_jwk) = ec_key("sp-1");
        let document = json!({"keys": [client_jwk], "iat": NOW, "exp": NOW + 60});
        let (jwks, exp) = verify_signed_jwks(&sign(&signer, "sp-sign", &document), &certified, NOW).unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert!(jwks.find("sp-1").is_some());
        assert_eq!(exp, Some(NOW + 60));
        let (forger, _) = ec_key("sp-sign");
        assert!(matches!(
            verify_signed_jwks(&sign(&forger, "sp-sign", &document), &certified, NOW),
            Err(StatementError::Signature(_))
        ));
        assert!(matches!(
            verify_signed_jwks(&sign(&signer, "other", &document), &certified, NOW),
            Err(StatementError::Signature(_))
        ));
        let stale = json!({"keys": [client_jwk], "exp": NOW - 100});
        assert_eq!(
            verify_signed_jwks(&sign(&signer, "sp-sign", &stale), &certified, NOW),
            Err(StatementError::Expired)
        );
        assert!(matches!(
            verify_signed_jwks(&sign(&signer, "sp-sign", &json!({"iss": "x"})), &certified, NOW),
            Err(StatementError::Malformed(_))
        ));
    }

    #[test]
    fn the_outermost_level_hands_over_the_keys_it_certifies_for_its_subject() {
        let fed = Federation::new();
        let inner = fed.inner(NOW + 3600);
        let (_, client_signing) = ec_key("sp-sign");
        let outer = sign(
            &fed.org.0,
            "org-1",
            &json!({"iss": "https://org.example.com", "sub": "https://sp.example.com/app",
            "iat": NOW - 5, "exp": NOW + 600, "signing_keys": {"keys": [client_signing]},
            "signed_jwks_uri": "https://sp.example.com/jwks.jose", "metadata_statements": {FED: inner.clone()}}),
        );
        let verified = NestedStatements::default()
            .verify(&[outer, inner], FED, &fed.root_keys(), Usage::Registration, NOW)
            .unwrap();
        assert!(verified.signing_keys.unwrap().find("sp-sign").is_some());
        assert_eq!(
            verified.metadata["signed_jwks_uri"], "https://sp.example.com/jwks.jose",
            "merged (compared by the subset rule like any claim)"
        );
    }
}
