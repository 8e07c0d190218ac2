//! DPoP (RFC 9449) proofs at the deferred token and cancellation endpoints.
//!
//! The proxy checks every proof itself (§4.3) before anything else happens with the request:
//! a process created with a proof is bound to the key's RFC 7638 thumbprint, and only that
//! key's proofs open it again. On the two calls that reach the OP (the exchange and the final
//! refresh) the proof is also forwarded, so a DPoP-capable OP binds the final tokens to the
//! RP's key.
//!
//! [`decode_proof`] is pure (no clock, no store): it parses the proof and verifies its
//! signature with the embedded key. [`Expected::check`] adds the request-dependent rules, and
//! [`validate`] the replay cache and the optional server nonces.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::crypto::{equal_constant_time, HashKey};
use crate::protocol::errors::{Extra, OAuthError};
use crate::protocol::wire::error as code;
use crate::store::Store;

pub use crate::protocol::wire::{DPOP, DPOP_NONCE};

/// Signature algorithms accepted for proofs: asymmetric only (never `none`, never HMAC).
pub const ALGORITHMS: [&str; 9] = [
    "ES256", "ES384", "EdDSA", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512",
];

/// How far a proof's `iat` may be from our clock, either way.
pub const IAT_WINDOW_SECONDS: u64 = 60;
/// Longest proof accepted (a proof with an RSA-4096 key is under 2 KiB).
const MAX_PROOF_LEN: usize = 8 * 1024;
/// Longest `jti` accepted; it is hashed, but there is no reason to take essays.
const MAX_JTI_LEN: usize = 256;
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// A server nonce is valid in the window it was issued in and the next one.
const NONCE_WINDOW_SECONDS: u64 = 300;

/// Why a proof was refused. The text goes to the client as `error_description`: it names the
/// rule, never echoes the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("send exactly one DPoP header")]
    NotOneHeader,
    #[error("the DPoP proof is not a well-formed JWS")]
    Malformed,
    #[error("the DPoP proof's typ must be dpop+jwt")]
    WrongType,
    #[error("the DPoP proof's alg is not an accepted asymmetric algorithm")]
    UnsupportedAlgorithm,
    #[error("the DPoP proof's header has no usable public jwk")]
    BadKey,
    #[error("the DPoP proof's jwk contains private key material")]
    PrivateKey,
    #[error("the DPoP proof uses critical header parameters that are not understood")]
    Critical,
    #[error("the DPoP proof's signature does not verify")]
    BadSignature,
    #[error("the DPoP proof lacks a valid jti, htm, htu or iat claim")]
    MissingClaim,
    #[error("the DPoP proof's htm does not match the request method")]
    WrongMethod,
    #[error("the DPoP proof's htu does not match the request URL")]
    WrongUrl,
    #[error("the DPoP proof's iat is outside the accepted window")]
    StaleIat,
    #[error("the DPoP proof was already used")]
    Replayed,
}

/// A proof whose structure and signature are sound.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key.
    pub jkt: String,
    pub jti: String,
    pub htm: String,
    pub htu: String,
    pub iat: f64,
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<f64>,
    #[serde(default)]
    nonce: Option<Value>,
}

/// JWK members that only private keys (or symmetric keys) have.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn is_base64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key type and curve must be the ones the algorithm uses; anything else is refused
/// before the key is used (and before the thumbprint is computed).
fn key_fits(alg: Algorithm, jwk: &Jwk) -> bool {
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => {
            p.curve == EllipticCurve::P256 && is_base64url(&p.x) && is_base64url(&p.y)
        }
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => {
            p.curve == EllipticCurve::P384 && is_base64url(&p.x) && is_base64url(&p.y)
        }
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519 && is_base64url(&p.x)
        }
        (
            AlgorithmParameters::RSA(p),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => {
            is_base64url(&p.e)
                && is_base64url(&p.n)
                && URL_SAFE_NO_PAD
                    .decode(&p.n)
                    .is_ok_and(|n| n.iter().skip_while(|b| **b == 0).count() >= MIN_RSA_MODULUS_BYTES)
        }
        _ => false,
    }
}

/// Parses a proof and verifies its signature with the key it embeds (RFC 9449 §4.3 steps 2–6).
/// Pure: the request-dependent checks are [`Expected::check`].
pub fn decode_proof(proof: &str) -> Result<DecodedProof, DpopError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(DpopError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(DpopError::Malformed);
    };
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| DpopError::Malformed)?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header).map_err(|_| DpopError::Malformed)?;

    if !header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(DpopError::WrongType);
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some(name) if ALGORITHMS.contains(&name) => {
            name.parse::<Algorithm>().map_err(|_| DpopError::UnsupportedAlgorithm)?
        }
        _ => return Err(DpopError::UnsupportedAlgorithm),
    };
    if header.contains_key("crit") {
        return Err(DpopError::Critical);
    }
    let Some(Value::Object(raw_jwk)) = header.get("jwk") else {
        return Err(DpopError::BadKey);
    };
    if PRIVATE_MEMBERS.iter().any(|m| raw_jwk.contains_key(*m)) {
        return Err(DpopError::PrivateKey);
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(raw_jwk.clone())).map_err(|_| DpopError::BadKey)?;
    if !key_fits(alg, &jwk) {
        return Err(DpopError::BadKey);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| DpopError::BadKey)?;

    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(proof, &key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => DpopError::BadSignature,
        jsonwebtoken::errors::ErrorKind::Json(_) => DpopError::MissingClaim,
        _ => DpopError::Malformed,
    })?;
    let claims = data.claims;
    let (Some(jti), Some(htm), Some(htu), Some(iat)) = (claims.jti, claims.htm, claims.htu, claims.iat) else {
        return Err(DpopError::MissingClaim);
    };
    if jti.is_empty() || jti.len() > MAX_JTI_LEN || !iat.is_finite() {
        return Err(DpopError::MissingClaim);
    }
    let nonce = match claims.nonce {
        None | Some(Value::Null) => None,
        Some(Value::String(nonce)) => Some(nonce),
        Some(_) => return Err(DpopError::MissingClaim),
    };
    Ok(DecodedProof {
        jkt: jwk.thumbprint(ThumbprintHash::SHA256),
        jti,
        htm,
        htu,
        iat,
        nonce,
    })
}

/// RFC 3986 §6.2.2 syntax-based normalisation plus §6.2.3 scheme-based (the `url` crate
/// lower-cases scheme and host, drops default ports and resolves dot segments); query and
/// fragment are dropped (RFC 9449 §4.3 step 9).
pub fn normalize_htu(raw: &str) -> Option<String> {
    let mut url = Url::parse(raw).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = normalize_percent_encoding(url.path());
    url.set_path(&path);
    Some(url.into())
}

/// Percent-encoded unreserved characters are decoded, other triplets get upper-case hex
/// (RFC 3986 §6.2.2.1–2).
fn normalize_percent_encoding(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                let value = u8::from_str_radix(&path[i + 1..i + 3], 16).unwrap_or(0);
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(value);
                } else {
                    out.extend_from_slice(&[b'%', hi.to_ascii_uppercase(), lo.to_ascii_uppercase()]);
                }
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_owned())
}

/// What a proof must say about the request it comes with.
pub struct Expected<'a> {
    pub method: &'a str,
    /// The endpoint's public URL, already normalised with [`normalize_htu`].
    pub url: &'a str,
    pub now_seconds: u64,
}

impl Expected<'_> {
    /// RFC 9449 §4.3 steps 8–11 (`htm`, `htu`, `iat`).
    pub fn check(&self, proof: &DecodedProof) -> Result<(), DpopError> {
        if proof.htm != self.method {
            return Err(DpopError::WrongMethod);
        }
        if normalize_htu(&proof.htu).as_deref() != Some(self.url) {
            return Err(DpopError::WrongUrl);
        }
        let now = self.now_seconds as f64;
        if (proof.iat - now).abs() > IAT_WINDOW_SECONDS as f64 {
            return Err(DpopError::StaleIat);
        }
        Ok(())
    }
}

/// Stateless server nonces (RFC 9449 §8): the issuing window, MACed with the hash key, so
/// every replica issues and accepts the same nonces without sharing state.
#[derive(Clone, Debug)]
pub struct Nonces {
    key: HashKey,
}

impl Nonces {
    pub fn new(key: HashKey) -> Self {
        Self { key }
    }

    fn for_window(&self, window: u64) -> String {
        let mac = self.key.hash("dpop-nonce", &window.to_string());
        format!("{window}.{}", &mac[..22])
    }

    pub fn current(&self, now_seconds: u64) -> String {
        self.for_window(now_seconds / NONCE_WINDOW_SECONDS)
    }

    pub fn accepts(&self, nonce: &str, now_seconds: u64) -> bool {
        let window = now_seconds / NONCE_WINDOW_SECONDS;
        let Some(Ok(issued)) = nonce.split_once('.').map(|(w, _)| w.parse::<u64>()) else {
            return false;
        };
        (issued == window || issued + 1 == window) && equal_constant_time(nonce, &self.for_window(issued))
    }
}

/// A proof that passed every check, for this request.
#[derive(Debug, Clone)]
pub struct ValidProof {
    pub jkt: String,
}

fn refused(e: DpopError) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, code::INVALID_DPOP_PROOF, format!("{e}."))
}

/// Validates the request's DPoP proof, if it carries one: the full RFC 9449 §4.3 checklist
/// including the `jti` replay cache (scoped to the key) and, when `nonces` is set, the server
/// nonce. `Ok(None)` when the request has no `DPoP` header.
pub async fn validate(
    headers: &HeaderMap,
    expected: &Expected<'_>,
    store: &Store,
    hash_key: &HashKey,
    nonces: Option<&Nonces>,
) -> Result<Option<ValidProof>, OAuthError> {
    let mut values = headers.get_all(&DPOP).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(refused(DpopError::NotOneHeader));
    }
    let proof = value.to_str().map_err(|_| refused(DpopError::Malformed))?;
    let proof = decode_proof(proof).map_err(refused)?;
    expected.check(&proof).map_err(refused)?;
    if let Some(nonces) = nonces {
        if !proof
            .nonce
            .as_deref()
            .is_some_and(|n| nonces.accepts(n, expected.now_seconds))
        {
            return Err(use_nonce(nonces, expected.now_seconds));
        }
    }
    // The proof is fresh for at most twice the window; remember its jti that long.
    let key = store.key(&format!(
        "dpop:{}",
        hash_key.hash("dpop-jti", &format!("{}\0{}", proof.jkt, proof.jti))
    ));
    let ttl = Duration::from_secs(2 * IAT_WINDOW_SECONDS + 5);
    if !store.put_new(&key, b"1", ttl).await? {
        return Err(refused(DpopError::Replayed));
    }
    Ok(Some(ValidProof { jkt: proof.jkt }))
}

/// The DPoP checks of one deployment: the replay cache in the store and, when
/// `DTR_DPOP_NONCE` is on, the server nonces.
#[derive(Clone)]
pub struct DpopVerifier {
    store: Store,
    hash_key: HashKey,
    nonces: Option<Nonces>,
}

impl DpopVerifier {
    pub fn new(store: Store, hash_key: HashKey, server_nonces: bool) -> Self {
        let nonces = server_nonces.then(|| Nonces::new(hash_key.clone()));
        Self {
            store,
            hash_key,
            nonces,
        }
    }

    /// Validates the request's proof for a `POST` to `url` (RFC 9449 §4.3, replay cache,
    /// optional server nonce). `Ok(None)` when the request carries none.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        url: &str,
        now_seconds: u64,
    ) -> Result<Option<ValidProof>, OAuthError> {
        if !headers.contains_key(&DPOP) {
            return Ok(None);
        }
        let url = normalize_htu(url).unwrap_or_else(|| url.to_owned());
        let expected = Expected {
            method: "POST",
            url: &url,
            now_seconds,
        };
        validate(headers, &expected, &self.store, &self.hash_key, self.nonces.as_ref()).await
    }

    /// With server nonces on, every DTR answer carries the current nonce (RFC 9449 §8.2), so
    /// clients never need an extra round trip to learn a new one.
    pub fn offer_nonce(&self, headers: &mut HeaderMap, now_seconds: u64) {
        if let Some(nonces) = &self.nonces {
            if let Ok(value) = HeaderValue::from_str(&nonces.current(now_seconds)) {
                headers.entry(DPOP_NONCE.clone()).or_insert(value);
            }
        }
    }
}

/// The `use_dpop_nonce` error with a fresh nonce in `DPoP-Nonce`.
pub fn use_nonce(nonces: &Nonces, now_seconds: u64) -> OAuthError {
    let mut error = OAuthError::new(
        StatusCode::BAD_REQUEST,
        code::USE_DPOP_NONCE,
        "Resend the request with a DPoP proof carrying the nonce from the DPoP-Nonce header.",
    );
    error.extra = HeaderValue::from_str(&nonces.current(now_seconds))
        .ok()
        .map(|nonce| Box::new(Extra::DpopNonce(nonce)));
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    struct Key(EcdsaKeyPair);

    impl Key {
        fn new() -> Self {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
            Self(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap())
        }

        fn jwk(&self) -> Value {
            let point = self.0.public_key().as_ref();
            json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            })
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let signature = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        }

        fn proof(&self, claims: &Value) -> String {
            self.sign(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}), claims)
        }
    }

    fn claims(iat: u64) -> Value {
        json!({"jti": "j1", "htm": "POST", "htu": "https://id.example/realms/r/token", "iat": iat})
    }

    #[test]
    fn a_sound_proof_decodes_with_its_thumbprint() {
        let key = Key::new();
        let proof = decode_proof(&key.proof(&claims(1000))).unwrap();
        let jwk: Jwk = serde_json::from_value(key.jwk()).unwrap();
        assert_eq!(proof.jkt, jwk.thumbprint(ThumbprintHash::SHA256));
        assert_eq!((proof.jti.as_str(), proof.htm.as_str()), ("j1", "POST"));
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn every_header_rule_is_enforced() {
        let key = Key::new();
        let c = claims(1000);
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk()});
            edit(&mut header);
            decode_proof(&key.sign(&header, &c)).unwrap_err()
        };
        assert_eq!(with(&|h| h["typ"] = json!("JWT")), DpopError::WrongType);
        assert_eq!(with(&|h| h["alg"] = json!("none")), DpopError::UnsupportedAlgorithm);
        assert_eq!(with(&|h| h["alg"] = json!("HS256")), DpopError::UnsupportedAlgorithm);
        assert_eq!(with(&|h| h["jwk"]["d"] = json!("AAAA")), DpopError::PrivateKey);
        assert_eq!(with(&|h| h["jwk"]["crv"] = json!("P-384")), DpopError::BadKey);
        assert_eq!(with(&|h| h["jwk"]["crv"] = json!("Ed25519")), DpopError::BadKey);
        assert_eq!(with(&|h| h["jwk"]["kty"] = json!("OKP")), DpopError::BadKey);
        assert_eq!(with(&|h| h["jwk"] = json!("x")), DpopError::BadKey);
        assert_eq!(with(&|h| h["crit"] = json!(["x"])), DpopError::Critical);
        let other = Key::new();
        assert_eq!(
            with(&|h| h["jwk"] = other.jwk()),
            DpopError::BadSignature,
            "a proof signed by one key but naming another"
        );
        assert_eq!(decode_proof("a.b"), Err(DpopError::Malformed));
        assert_eq!(decode_proof("a.b.c.d"), Err(DpopError::Malformed));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk()}).to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        assert_eq!(decode_proof(&unsigned), Err(DpopError::UnsupportedAlgorithm));
    }

    #[test]
    fn claims_are_required() {
        let key = Key::new();
        for missing in ["jti", "htm", "htu", "iat"] {
            let mut c = claims(1000);
            c.as_object_mut().unwrap().remove(missing);
            assert_eq!(
                decode_proof(&key.proof(&c)).unwrap_err(),
                DpopError::MissingClaim,
                "{missing}"
            );
        }
        let mut c = claims(1000);
        c["nonce"] = json!(5);
        assert_eq!(decode_proof(&key.proof(&c)).unwrap_err(), DpopError::MissingClaim);
    }

    #[test]
    fn htu_htm_and_iat_are_checked() {
        let key = Key::new();
        let url = normalize_htu("https://id.example/realms/r/token").unwrap();
        let expected = Expected {
            method: "POST",
            url: &url,
            now_seconds: 1000,
        };
        let check = |c: Value| expected.check(&decode_proof(&key.proof(&c)).unwrap());
        assert_eq!(check(claims(1000)), Ok(()));
        assert_eq!(check(claims(1060)), Ok(()));
        assert_eq!(check(claims(1061)), Err(DpopError::StaleIat));
        assert_eq!(check(claims(939)), Err(DpopError::StaleIat));
        let mut c = claims(1000);
        c["htm"] = json!("GET");
        assert_eq!(check(c), Err(DpopError::WrongMethod));
        for (htu, ok) in [
            ("HTTPS://ID.example:443/realms/r/token?x=1#f", true),
            ("https://id.example/realms/./r/%74oken", true),
            ("https://id.example/realms/r/token/", false),
            ("https://evil.example/realms/r/token", false),
            ("http://id.example/realms/r/token", false),
            ("https://id.example:8443/realms/r/token", false),
            ("not a url", false),
        ] {
            let mut c = claims(1000);
            c["htu"] = json!(htu);
            assert_eq!(check(c).is_ok(), ok, "{htu}");
        }
    }

    #[test]
    fn percent_encoding_normalisation() {
        assert_eq!(normalize_percent_encoding("/a%7e%2fb%"), "/a~%2Fb%");
        assert_eq!(normalize_percent_encoding("/%4"), "/%4");
        assert_eq!(normalize_percent_encoding("/%zz"), "/%zz");
    }

    #[test]
    fn nonces_live_two_windows() {
        let nonces = Nonces::new(HashKey::random());
        let nonce = nonces.current(1000);
        assert!(nonces.accepts(&nonce, 1000));
        assert!(nonces.accepts(&nonce, 1000 + NONCE_WINDOW_SECONDS));
        assert!(!nonces.accepts(&nonce, 1000 + 2 * NONCE_WINDOW_SECONDS));
        assert!(!Nonces::new(HashKey::random()).accepts(&nonce, 1000));
        assert!(!nonces.accepts("3.xyz", 1000));
        assert!(!nonces.accepts("", 1000));
    }
}
