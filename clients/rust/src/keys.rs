//! The keys an RP holds: its DPoP key pair (RFC 9449) and its `private_key_jwt` key
//! (RFC 7523), and how a request is authenticated with them. JWTs are made by `jsonwebtoken`.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::DtrError;

/// Fresh random text: `bytes` random bytes, base64url (state, nonce, PKCE verifier, jti).
pub fn random_text(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The system RNG does not fail on the platforms aws-lc-rs supports.
    SystemRandom::new().fill(&mut buffer).expect("system random");
    URL_SAFE_NO_PAD.encode(buffer)
}

pub(crate) fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The S256 PKCE challenge of a verifier (RFC 7636).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// A DPoP key pair (P-256, ES256). The draft asks for one key per process: the kit makes a
/// fresh one for every authorization unless the client was given one.
#[derive(Clone)]
pub struct DpopKey(std::sync::Arc<DpopKeyInner>);

struct DpopKeyInner {
    pkcs8: Vec<u8>,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey").field("jkt", &self.thumbprint()).finish()
    }
}

impl DpopKey {
    /// A fresh key pair.
    pub fn generate() -> Result<Self, DtrError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| DtrError::Key("cannot generate a P-256 key".into()))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A key pair from its PKCS#8 DER form (see [`DpopKey::pkcs8`]), to keep it with the
    /// process between requests.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, DtrError> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| DtrError::Key("not a P-256 PKCS#8 key".into()))?;
        let encoding = EncodingKey::from_ec_der(der);
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).map_err(|e| DtrError::Key(e.to_string()))?;
        Ok(Self(std::sync::Arc::new(DpopKeyInner {
            pkcs8: der.to_vec(),
            encoding,
            jwk,
        })))
    }

    /// The PKCS#8 DER form of the private key (store it sealed, as any secret).
    pub fn pkcs8(&self) -> &[u8] {
        &self.0.pkcs8
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Jwk {
        &self.0.jwk
    }

    /// The RFC 7638 thumbprint (`jkt`) the OP binds tokens to.
    pub fn thumbprint(&self) -> String {
        self.0.jwk.thumbprint(ThumbprintHash::SHA256)
    }

    /// A proof for one request: `htm`, `htu` (without query and fragment), a fresh `jti`,
    /// `iat`, and the server's `nonce` when it asked for one.
    pub fn proof(&self, method: &str, url: &str, nonce: Option<&str>) -> Result<String, DtrError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(self.0.jwk.clone());
        let htu = url.split(['?', '#']).next().unwrap_or(url);
        let mut claims = json!({"jti": random_text(16), "htm": method, "htu": htu, "iat": now_seconds()});
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        jsonwebtoken::encode(&header, &claims, &self.0.encoding).map_err(|e| DtrError::Key(e.to_string()))
    }
}

/// A `private_key_jwt` signing key.
#[derive(Clone)]
pub struct PrivateKeyJwt {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl std::fmt::Debug for PrivateKeyJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKeyJwt")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish()
    }
}

impl PrivateKeyJwt {
    /// From a PEM private key: an EC key for ES256 (P-256), an RSA key for RS256/PS256.
    pub fn from_pem(pem: &[u8], algorithm: Algorithm, kid: Option<String>) -> Result<Self, DtrError> {
        let key = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(DtrError::Key("private_key_jwt needs an asymmetric algorithm".into()))
            }
        }
        .map_err(|e| DtrError::Key(e.to_string()))?;
        Ok(Self { key, algorithm, kid })
    }

    /// A client assertion for `audience` (the OP's issuer), valid one minute.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, DtrError> {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        let now = now_seconds();
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": audience,
            "jti": random_text(16), "iat": now, "exp": now + 60,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| DtrError::Key(e.to_string()))
    }
}

/// How the client authenticates at the token, PAR and cancellation endpoints.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// A public client: `client_id` in the form (such clients need DPoP at dtr-proxy).
    None,
    /// `client_secret_basic`: the form-encoded id and secret in `Authorization: Basic`.
    SecretBasic(String),
    /// `client_secret_post`: id and secret in the form.
    SecretPost(String),
    /// `private_key_jwt`: a signed assertion whose audience is the issuer.
    PrivateKeyJwt(PrivateKeyJwt),
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl ClientAuth {
    /// Adds the client's credentials to a request form; returns the `Authorization` header
    /// value when the method uses one.
    pub(crate) fn apply(
        &self,
        client_id: &str,
        issuer: &str,
        form: &mut Vec<(String, String)>,
    ) -> Result<Option<String>, DtrError> {
        let mut push = |name: &str, value: String| form.push((name.to_owned(), value));
        match self {
            ClientAuth::None => push("client_id", client_id.to_owned()),
            ClientAuth::SecretBasic(secret) => {
                // RFC 6749 §2.3.1: each part form-encoded before the base64.
                let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let credentials = format!("{}:{}", encode(client_id), encode(secret));
                return Ok(Some(format!("Basic {}", STANDARD.encode(credentials))));
            }
            ClientAuth::SecretPost(secret) => {
                push("client_id", client_id.to_owned());
                push("client_secret", secret.clone());
            }
            ClientAuth::PrivateKeyJwt(key) => {
                push("client_id", client_id.to_owned());
                push("client_assertion_type", ASSERTION_TYPE.to_owned());
                push("client_assertion", key.assertion(client_id, issuer)?);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_dpop_proof_carries_the_public_key_and_the_request() {
        let key = DpopKey::generate().unwrap();
        let proof = key.proof("POST", "https://op.example/token?x=1", Some("n-1")).unwrap();
        let header = jsonwebtoken::decode_header(&proof).unwrap();
        assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
        let jwk = header.jwk.expect("jwk");
        assert_eq!(jwk.thumbprint(ThumbprintHash::SHA256), key.thumbprint());
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(&proof, &decoding, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["htu"], "https://op.example/token");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["nonce"], "n-1");
        let again = DpopKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(again.thumbprint(), key.thumbprint());
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        let mut form = Vec::new();
        let header = ClientAuth::SecretBasic("a b:c".into())
            .apply("id:1", "https://op", &mut form)
            .unwrap()
            .unwrap();
        let decoded = STANDARD.decode(header.trim_start_matches("Basic ")).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "id%3A1:a+b%3Ac");
        assert!(form.is_empty());
    }
}
