//! Client authentication at the token and cancellation endpoints.
//!
//! The proxy holds no client secrets: the OP authenticates the client on every call that
//! reaches it (the exchange and the final refresh). Between those, pending polls and cancels
//! are checked locally against what the exchange bound to the process: a keyed fingerprint of
//! the secret the OP accepted, or the client's identity for assertion-based and public clients.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::client_keys::{verify_assertion, ClientKeys};
use crate::config::ClientSettings;
use crate::crypto::{equal_constant_time, HashKey};
use crate::protocol::errors::OAuthError;
use crate::protocol::params::Params;
use crate::records::{AuthMethod, ClientBinding};
use crate::store::Store;

pub const CLIENT_ASSERTION_TYPE_JWT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Parameters that carry client authentication in a form body (RFC 6749 §2.3.1, RFC 7523).
pub const AUTH_PARAMS: [&str; 4] = [
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
];

/// The credentials one request presented.
pub struct ClientCredentials {
    pub client_id: String,
    pub method: AuthMethod,
    secret: Option<String>,
    assertion: Option<String>,
    /// The scheme of the `Authorization` header when that carried the credentials.
    pub via_header: Option<&'static str>,
    /// The secret's keyed fingerprint, computed once per request: the poll's read guard and
    /// the owner check both need it. Every caller passes the proxy's one [`HashKey`].
    fingerprint: OnceLock<Option<String>>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64 (openid-client sends
/// `dtr%2Dclient`), so they are decoded as such.
fn form_decode(raw: &str) -> Result<String, ()> {
    crate::protocol::params::decode(raw.as_bytes()).map_err(|_| ())
}

fn basic_credentials(value: &str) -> Result<(String, String), OAuthError> {
    let bad = || OAuthError::invalid_client("The Basic authorization header is malformed.", Some("Basic"));
    let decoded = STANDARD.decode(value.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let id = form_decode(id).map_err(|_| bad())?;
    let secret = form_decode(secret).map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((id, secret))
}

/// The `sub` of an assertion, read without verification: only to learn which client claims
/// to be calling. The OP (or the local verifier) checks the signature.
fn assertion_subject(assertion: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Claims {
        sub: Option<String>,
        iss: Option<String>,
    }
    let data = jsonwebtoken::dangerous::insecure_decode::<Claims>(assertion).ok()?;
    data.claims.sub.or(data.claims.iss)
}

impl ClientCredentials {
    /// Reads the credentials of a token or cancellation request. More than one method at
    /// once is refused (RFC 6749 §2.3).
    pub fn extract(headers: &HeaderMap, params: &Params) -> Result<Self, OAuthError> {
        if headers.get_all(AUTHORIZATION).iter().count() > 1 {
            return Err(OAuthError::invalid_request("Send one Authorization header."));
        }
        let basic = match headers.get(AUTHORIZATION) {
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| OAuthError::invalid_client("The authorization header is malformed.", Some("Basic")))?;
                match value.split_once(' ') {
                    Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => Some(basic_credentials(rest)?),
                    _ => None,
                }
            }
            None => None,
        };
        let body_id = params.get("client_id");
        let body_secret = params.get("client_secret");
        let assertion = params.get("client_assertion");
        let methods = [basic.is_some(), body_secret.is_some(), assertion.is_some()];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(OAuthError::invalid_request(
                "Use exactly one client authentication method.",
            ));
        }

        if let Some((client_id, secret)) = basic {
            if body_id.is_some_and(|id| id != client_id) {
                return Err(OAuthError::invalid_client(
                    "client_id does not match the credentials.",
                    Some("Basic"),
                ));
            }
            return Ok(Self {
                client_id,
                method: AuthMethod::ClientSecretBasic,
                secret: Some(secret),
                assertion: None,
                via_header: Some("Basic"),
                fingerprint: OnceLock::new(),
            });
        }
        if let Some(secret) = body_secret {
            let client_id =
                body_id.ok_or_else(|| OAuthError::invalid_client("client_secret needs client_id.", None))?;
            return Ok(Self {
                client_id: client_id.to_owned(),
                method: AuthMethod::ClientSecretPost,
                secret: Some(secret.to_owned()),
                assertion: None,
                via_header: None,
                fingerprint: OnceLock::new(),
            });
        }
        if let Some(assertion) = assertion {
            if params.get("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE_JWT) {
                return Err(OAuthError::invalid_client("Unsupported client_assertion_type.", None));
            }
            let subject = assertion_subject(assertion)
                .ok_or_else(|| OAuthError::invalid_client("The client assertion is not a readable JWT.", None))?;
            if body_id.is_some_and(|id| id != subject) {
                return Err(OAuthError::invalid_client(
                    "client_id does not match the client assertion.",
                    None,
                ));
            }
            return Ok(Self {
                client_id: subject,
                method: AuthMethod::JwtAssertion,
                secret: None,
                assertion: Some(assertion.to_owned()),
                via_header: None,
                fingerprint: OnceLock::new(),
            });
        }
        match body_id {
            Some(client_id) => Ok(Self {
                client_id: client_id.to_owned(),
                method: AuthMethod::None,
                secret: None,
                assertion: None,
                via_header: None,
                fingerprint: OnceLock::new(),
            }),
            None => Err(OAuthError::invalid_client("Client authentication is required.", None)),
        }
    }

    /// The keyed fingerprint of the secret presented (of client id and secret), if any.
    pub fn fingerprint(&self, key: &HashKey) -> Option<&str> {
        self.fingerprint
            .get_or_init(|| {
                self.secret
                    .as_ref()
                    .map(|secret| key.hash_joined("client-secret", &[&self.client_id, secret]))
            })
            .as_deref()
    }

    /// What to bind to a process once the OP has accepted these credentials.
    pub fn binding(&self, key: &HashKey) -> ClientBinding {
        ClientBinding {
            method: self.method,
            fingerprint: self.fingerprint(key).map(str::to_owned),
        }
    }

    /// Checks the method and, for secrets, the keyed fingerprint (constant-time) against what
    /// the exchange bound to a process.
    pub fn check_binding(&self, binding: &ClientBinding, key: &HashKey) -> Result<(), OAuthError> {
        let rejected = |description: &'static str| OAuthError::invalid_client(description, self.via_header);
        if binding.method != self.method {
            return Err(rejected(
                "Authenticate with the method used at the deferred code exchange.",
            ));
        }
        if matches!(
            self.method,
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
        ) {
            match (self.fingerprint(key), &binding.fingerprint) {
                (Some(presented), Some(bound)) if equal_constant_time(presented, bound) => {}
                _ => return Err(rejected("Client authentication failed.")),
            }
        }
        Ok(())
    }
}

/// Authenticates clients locally on polls and cancels, and assertions at the exchange.
#[derive(Clone)]
pub struct ClientVerifier {
    keys: Arc<ClientKeys>,
    store: Store,
    hash_key: HashKey,
}

impl ClientVerifier {
    pub fn new(keys: ClientKeys, store: Store, hash_key: HashKey) -> Self {
        Self {
            keys: Arc::new(keys),
            store,
            hash_key,
        }
    }

    /// What the exchange binds to a process about the client that performed it.
    pub fn binding(&self, credentials: &ClientCredentials) -> ClientBinding {
        credentials.binding(&self.hash_key)
    }

    /// The keyed fingerprint of the secret the credentials present, if any (computed once).
    pub fn fingerprint<'a>(&self, credentials: &'a ClientCredentials) -> Option<&'a str> {
        credentials.fingerprint(&self.hash_key)
    }

    /// Checks the credentials against what the exchange bound (when given) and verifies an
    /// assertion in full, its `aud` one of `audiences`.
    pub async fn authenticate(
        &self,
        credentials: &ClientCredentials,
        client: &ClientSettings,
        audiences: &[String],
        binding: Option<&ClientBinding>,
    ) -> Result<(), OAuthError> {
        if let Some(binding) = binding {
            credentials.check_binding(binding, &self.hash_key)?;
        }
        if let (AuthMethod::JwtAssertion, Some(assertion)) = (credentials.method, &credentials.assertion) {
            // Boxed: a secret-authenticated request's future need not carry an assertion's.
            Box::pin(verify_assertion(
                &self.keys,
                &self.store,
                &self.hash_key,
                client,
                assertion,
                audiences,
            ))
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let creds = ClientCredentials::extract(&basic("dtr%2Dclient", "s%3Acret+x"), &Params::default()).unwrap();
        assert_eq!(creds.client_id, "dtr-client");
        assert_eq!(creds.secret.as_deref(), Some("s:cret x"));
        assert_eq!(creds.via_header, Some("Basic"));
    }

    #[test]
    fn two_methods_at_once_are_refused() {
        let params = Params::parse(b"client_id=a&client_secret=b").unwrap();
        let err = ClientCredentials::extract(&basic("a", "b"), &params).unwrap_err();
        assert_eq!(err.error, "invalid_request");
    }

    #[test]
    fn fingerprint_verifies_only_the_same_secret() {
        let key = HashKey::random();
        let good = ClientCredentials::extract(&basic("a", "secret"), &Params::default()).unwrap();
        let binding = good.binding(&key);
        assert!(good.check_binding(&binding, &key).is_ok());
        let bad = ClientCredentials::extract(&basic("a", "guess"), &Params::default()).unwrap();
        let err = bad.check_binding(&binding, &key).unwrap_err();
        assert_eq!((err.status.as_u16(), err.error), (401, "invalid_client"));
        let post = ClientCredentials::extract(
            &HeaderMap::new(),
            &Params::parse(b"client_id=a&client_secret=secret").unwrap(),
        )
        .unwrap();
        assert_eq!(post.check_binding(&binding, &key).unwrap_err().error, "invalid_client");
    }

    #[test]
    fn the_fingerprint_is_the_keyed_hash_of_id_and_secret_computed_once() {
        let key = HashKey::random();
        let creds = ClientCredentials::extract(&basic("a", "secret"), &Params::default()).unwrap();
        let expected = key.hash("client-secret", "a\0secret");
        assert_eq!(creds.fingerprint(&key), Some(expected.as_str()));
        assert!(std::ptr::eq(
            creds.fingerprint(&key).unwrap(),
            creds.fingerprint(&key).unwrap()
        ));
        assert_eq!(creds.binding(&key).fingerprint, Some(expected));
        let public = ClientCredentials::extract(&HeaderMap::new(), &Params::parse(b"client_id=a").unwrap()).unwrap();
        assert_eq!(public.fingerprint(&key), None);
    }

    #[test]
    fn missing_authentication_is_invalid_client() {
        let err = ClientCredentials::extract(&HeaderMap::new(), &Params::default()).unwrap_err();
        assert_eq!((err.status.as_u16(), err.error), (400, "invalid_client"));
    }
}

#[cfg(test)]
mod proptests {
    use http::HeaderValue;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    /// `Basic <base64>` of arbitrary text, or arbitrary bytes after a scheme.
    fn authorization() -> impl Strategy<Value = Vec<u8>> {
        let scheme = select(vec!["Basic ", "basic ", "BASIC  ", "Bearer ", "Basic", ""]);
        prop_oneof![
            (scheme.clone(), any::<String>())
                .prop_map(|(s, text)| format!("{s}{}", STANDARD.encode(text)).into_bytes()),
            (scheme.clone(), "[%+:a-z0-9]{0,12}")
                .prop_map(|(s, text)| format!("{s}{}", STANDARD.encode(text)).into_bytes()),
            (scheme, vec(any::<u8>(), 0..64)).prop_map(|(s, bytes)| [s.as_bytes(), &bytes].concat()),
        ]
    }

    /// Form bodies that may or may not carry client authentication.
    fn form_body() -> impl Strategy<Value = Vec<u8>> {
        vec(
            prop_oneof![
                select(vec![
                    "client_id=",
                    "client_secret=",
                    "client_assertion=",
                    "&",
                    "a",
                    "%",
                    "+",
                    "="
                ])
                .prop_map(|s| s.as_bytes().to_vec()),
                any::<u8>().prop_map(|b| vec![b]),
            ],
            0..12,
        )
        .prop_map(|pieces| pieces.concat())
    }

    fn form_encode(text: &str) -> String {
        form_urlencoded::byte_serialize(text.as_bytes()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn extract_never_panics_nor_yields_an_empty_client_id(header in authorization(), body in form_body()) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&header) {
                headers.insert(AUTHORIZATION, value);
            }
            let params = Params::parse(&body).unwrap_or_default();
            if let Ok(credentials) = ClientCredentials::extract(&headers, &params) {
                prop_assert!(!credentials.client_id.is_empty());
                prop_assert_eq!(
                    credentials.via_header.is_some(),
                    credentials.method == AuthMethod::ClientSecretBasic
                );
            }
        }

        #[test]
        fn basic_credentials_round_trip(client_id in ".+", secret in any::<String>()) {
            // RFC 6749 §2.3.1: each part form-urlencoded, then joined by ':' and base64.
            let encoded = STANDARD.encode(format!("{}:{}", form_encode(&client_id), form_encode(&secret)));
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Basic {encoded}")).unwrap());
            let credentials = ClientCredentials::extract(&headers, &Params::default()).unwrap();
            prop_assert_eq!(credentials.client_id, client_id);
            prop_assert_eq!(credentials.secret, Some(secret));
            prop_assert_eq!(credentials.method, AuthMethod::ClientSecretBasic);
        }
    }
}
