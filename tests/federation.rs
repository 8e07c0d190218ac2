//! Federated clients end to end: a test federation (a trust root, an intermediate organisation,
//! a client host serving WebFinger and statements over HTTPS with a test CA), an RP whose
//! client_id is a URL and which nobody registered, through dtr-proxy in front of the stand-in
//! OP — a DTR flow and a plain code flow — and one test per refusal, each with its OAuth error
//! and nothing provisioned.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const FED: &str = "https://fed.example.org";
const ORG: &str = "https://org.example.com";
const PROVIDER_REL: &str = "http://openid.net/specs/connect/1.0/provider";
const FEDERATION_PROPERTY: &str = "http://openid.net/specs/connect/1.0/federation";
const PROVISIONING_SECRET: &str = "provisioning-secret-for-tests-0123";

/// An EC P-256 signing key with its public JWK.
struct Key {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    fn new(kid: &str) -> Self {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("key");
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    /// Signs with this key, naming `kid` in the header (a forger names the key it imitates).
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn set(&self) -> Value {
        json!({"keys": [self.jwk]})
    }
}

/// The test CA and the client host's certificate (for `localhost`).
struct Tls {
    ca_file: std::path::PathBuf,
    acceptor: TlsAcceptor,
}

fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dtr-proxy federation test CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
        let host_key = rcgen::KeyPair::generate().expect("host key");
        let host = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("host params")
            .signed_by(&host_key, &ca)
            .expect("host cert");
        let ca_file = std::env::temp_dir().join(unique("dtr-fed-ca-") + ".pem");
        std::fs::write(&ca_file, ca.pem()).expect("ca file");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(host_key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![host.der().clone()], key)
                .expect("server config");
        Tls {
            ca_file,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    })
}

/// An HTTPS host of the federation: serves what the test puts at each path, and counts hits.
#[derive(Clone)]
struct Host {
    port: u16,
    routes: Arc<Mutex<HashMap<String, (&'static str, String)>>>,
    hits: Arc<AtomicUsize>,
}

impl Host {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let host = Host {
            port,
            routes: Arc::default(),
            hits: Arc::default(),
        };
        let served = host.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let served = served.clone();
                tokio::spawn(async move {
                    let Ok(tls) = tls().acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        served.hits.fetch_add(1, Ordering::Relaxed);
                        let path = request.uri().path().to_owned();
                        let found = served.routes.lock().unwrap().get(&path).cloned();
                        async move {
                            let response = match found {
                                Some((media, body)) => hyper::Response::builder()
                                    .header("content-type", media)
                                    .body(Full::new(Bytes::from(body))),
                                None => hyper::Response::builder().status(404).body(Full::new(Bytes::new())),
                            };
                            Ok::<_, Infallible>(response.expect("response"))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        host
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    fn put(&self, path: &str, media: &'static str, body: String) {
        self.routes.lock().unwrap().insert(path.to_owned(), (media, body));
    }
}

/// A federation with one client: root → organisation → client statement.
struct Federation {
    root: Key,
    org: Key,
    client_key: Key,
    host: Host,
    client_id: String,
}

impl Federation {
    async fn new() -> Self {
        let host = Host::start().await;
        let client_id = host.url(&format!("/{}", unique("app")));
        Self {
            root: Key::new("fo-1"),
            org: Key::new("org-1"),
            client_key: Key::new(&format!("{client_id}#1")),
            host,
            client_id,
        }
    }

    fn root_statement(&self, exp: u64) -> String {
        self.root.sign(&json!({
            "iss": FED, "sub": ORG, "iat": now_s() - 10, "exp": exp, "jti": unique("j"),
            "federation_usage": "registration",
            "signing_keys": self.org.set(),
            "scopes": ["openid", "profile", "email"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "private_key_jwt",
        }))
    }

    fn client_claims(&self, inner: &str, extra: Value) -> Value {
        let mut claims = json!({
            "iss": ORG, "sub": self.client_id, "iat": now_s() - 5, "exp": now_s() + 600, "jti": unique("j"),
            "federation_usage": "registration",
            "client_id": self.client_id,
            "redirect_uris": [REDIRECT_URI],
            "scopes": ["openid", "profile", "email"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "private_key_jwt",
            "require_signed_request_object": true,
            "jwks": self.client_key.set(),
            "metadata_statements": {FED: inner},
        });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        claims
    }

    /// Publishes the WebFinger document (its link naming `federation`) and `statement`.
    fn publish(&self, federation: &str, statement: String) {
        let path = format!("/statements/{}.jwt", unique("s"));
        self.host.put(&path, "application/jwt", statement);
        self.host.put(
            "/.well-known/webfinger",
            "application/jrd+json",
            json!({"subject": self.client_id, "links": [
                {"rel": PROVIDER_REL, "href": self.host.url(&path), "properties": {FEDERATION_PROPERTY: federation}}
            ]})
            .to_string(),
        );
    }

    /// The usual, valid publication (with `extra` client metadata).
    fn publish_valid(&self, extra: Value) {
        let inner = self.root_statement(now_s() + 3600);
        self.publish(FED, self.org.sign(&self.client_claims(&inner, extra)));
    }

    fn request_object(&self, key: &Key, issuer: &str, params: Value) -> String {
        let mut claims = json!({"iss": self.client_id, "aud": issuer, "exp": now_s() + 300, "iat": now_s(),
            "jti": unique("ro"), "client_id": self.client_id, "redirect_uri": REDIRECT_URI});
        if let (Some(claims), Value::Object(params)) = (claims.as_object_mut(), params) {
            claims.extend(params);
        }
        key.sign_as(&self.client_key.kid, &claims)
    }

    fn assertion(&self, audience: &str) -> String {
        self.client_key
            .sign(&json!({"iss": self.client_id, "sub": self.client_id, "aud": audience,
            "exp": now_s() + 60, "iat": now_s(), "jti": unique("a")}))
    }
}

async fn start_proxy(federation: &Federation, allow_private_targets: bool) -> Proxy {
    let roots = json!([{"id": FED, "jwks": federation.root.set()}]).to_string();
    let options = Options::new(StoreKind::Embedded)
        .env("DTR_FEDERATION_TRUST_ROOTS", roots)
        .env(
            "DTR_FEDERATION_ALLOW_PRIVATE_TARGETS",
            allow_private_targets.to_string(),
        )
        .env("DTR_FEDERATION_CA_FILE", tls().ca_file.display().to_string())
        .env("DTR_FEDERATION_PROVISIONING", "endpoint")
        .env(
            "DTR_FEDERATION_PROVISIONING_URL",
            format!("http://127.0.0.1:{}/admin/provisioning", op().port),
        )
        .env("DTR_FEDERATION_PROVISIONING_SECRET", PROVISIONING_SECRET);
    let proxy = start(options).await;
    // The same realm again, now with its provisioning secret (creating a realm replaces it).
    let created = client()
        .post(format!("http://127.0.0.1:{}/admin/realms", op().port))
        .json(&json!({"realm": proxy.realm, "issuer": proxy.issuer, "provisioning_secret": PROVISIONING_SECRET}))
        .send()
        .await
        .expect("OP admin");
    assert_eq!(created.status(), 201);
    proxy
}

/// The OP's record of a provisioned client, if any.
async fn provisioned(proxy: &Proxy, client_id: &str) -> Option<Value> {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let response = client()
        .get(format!(
            "http://127.0.0.1:{}/admin/provisioning/{}/{}",
            op().port,
            encode(&proxy.realm),
            encode(client_id)
        ))
        .send()
        .await
        .expect("OP admin");
    match response.status().as_u16() {
        200 => Some(response.json().await.expect("json")),
        _ => None,
    }
}

fn token_form<'a>(assertion: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    form
}

async fn post_token(proxy: &Proxy, form: &[(&str, &str)]) -> (u16, Value) {
    let response = proxy
        .http
        .post(proxy.token_url())
        .form(form)
        .send()
        .await
        .expect("token");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The error a refused authorization request produced: from the redirect, or the page.
fn refusal(answer: &Answer) -> String {
    match &answer.location {
        Some(location) => url::Url::parse(location)
            .expect("location")
            .query_pairs()
            .find(|(name, _)| name == "error")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default(),
        None => answer.html.clone(),
    }
}

#[tokio::test]
async fn a_federated_rp_completes_a_deferred_flow_never_registered_by_hand() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, true).await;
    assert!(provisioned(&proxy, &federation.client_id).await.is_none());

    let (verifier, challenge) = pkce();
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "deferred_code", "scope": "openid profile email", "state": "st-1",
            "nonce": "n-1", "code_challenge": challenge, "code_challenge_method": "S256"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "deferred_code"),
        ("request", request.as_str()),
    ];
    let ack = proxy.login(&params, "fed-user", None).await.ack();
    assert_eq!(ack.get("state"), Some("st-1"));
    let code = ack.get("deferred_code").expect("deferred_code").to_owned();
    let op_client = provisioned(&proxy, &federation.client_id)
        .await
        .expect("provisioned at the OP");
    assert_eq!(op_client["redirect_uris"], json!([REDIRECT_URI]));
    assert_eq!(op_client["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(op_client["jwks"], federation.client_key.set());

    let assertion = federation.assertion(&proxy.issuer);
    let (status, exchanged) = post_token(
        &proxy,
        &token_form(
            &assertion,
            &[
                ("grant_type", "urn:openid:params:grant-type:deferred"),
                ("deferred_code", &code),
                ("code_verifier", &verifier),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200, "{exchanged}");
    let id = exchanged["deferred_auth_id"]
        .as_str()
        .expect("deferred_auth_id")
        .to_owned();

    let assertion = federation.assertion(&proxy.issuer);
    let poll = [
        ("grant_type", "urn:openid:params:grant-type:deferred"),
        ("deferred_auth_id", id.as_str()),
    ];
    let (status, pending) = post_token(&proxy, &token_form(&assertion, &poll)).await;
    assert_eq!(
        (status, pending["error"].as_str()),
        (400, Some("authorization_pending")),
        "{pending}"
    );

    let completed = proxy.complete(&json!({"outcome": "approved", "sub": "fed-user"})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let assertion = federation.assertion(&proxy.issuer);
    let (status, tokens) = post_token(&proxy, &token_form(&assertion, &poll)).await;
    assert_eq!(status, 200, "{tokens}");
    let id_token = jwt_claims(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(id_token["aud"], federation.client_id.as_str());
    assert_eq!(id_token["sub"], "fed-user");
}

#[tokio::test]
async fn a_federated_rp_completes_a_plain_code_flow() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, true).await;
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid email", "state": "st-2", "nonce": "n-2"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("request", request.as_str()),
    ];
    let answer = proxy.login(&params, "plain-user", None).await;
    let ack = answer.ack();
    assert_eq!(ack.get("state"), Some("st-2"));
    let code = ack.get("code").expect("code").to_owned();
    let assertion = federation.assertion(&proxy.issuer);
    let (status, tokens) = post_token(
        &proxy,
        &token_form(
            &assertion,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        jwt_claims(tokens["id_token"].as_str().expect("id_token"))["aud"],
        federation.client_id.as_str()
    );
}

#[tokio::test]
async fn an_unsigned_request_where_signing_is_required_is_invalid_request() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, true).await;
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid"),
        ("state", "st-3"),
    ];
    let answer = proxy.login(&params, "someone", None).await;
    assert_eq!(refusal(&answer), "invalid_request", "{answer:?}");
    assert!(provisioned(&proxy, &federation.client_id).await.is_none());
}

#[tokio::test]
async fn an_unsigned_request_passes_where_the_statement_allows_it() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({"require_signed_request_object": false}));
    let proxy = start_proxy(&federation, true).await;
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid"),
        ("state", "st-4"),
    ];
    let ack = proxy.login(&params, "someone", None).await.ack();
    assert!(ack.get("code").is_some(), "{ack:?}");
}

#[tokio::test]
async fn a_request_object_signed_by_another_key_is_invalid_request_object() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, true).await;
    let other = Key::new("other");
    let request = federation.request_object(
        &other,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT_URI),
        ("request", request.as_str()),
    ];
    let answer = proxy.login(&params, "someone", None).await;
    assert_eq!(refusal(&answer), "invalid_request_object", "{answer:?}");
    assert!(provisioned(&proxy, &federation.client_id).await.is_none());
}

#[tokio::test]
async fn a_redirect_uri_not_in_the_statement_gets_an_error_page() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, true).await;
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid", "redirect_uri": "https://evil.example/cb"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("request", request.as_str()),
    ];
    let answer = proxy.login(&params, "someone", None).await;
    assert_eq!((answer.status, answer.location.as_deref()), (400, None));
    assert!(answer.html.contains("invalid_request"), "{}", answer.html);
    assert!(provisioned(&proxy, &federation.client_id).await.is_none());
}

/// An authorization request that a statement problem must stop: an error page naming
/// `invalid_client`, and nothing provisioned.
async fn assert_unverifiable(federation: &Federation, proxy: &Proxy) {
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("request", request.as_str()),
    ];
    let answer = proxy.login(&params, "someone", None).await;
    assert_eq!(
        (answer.status, answer.location.as_deref()),
        (400, None),
        "{}",
        answer.html
    );
    assert!(answer.html.contains("invalid_client"), "{}", answer.html);
    assert!(provisioned(proxy, &federation.client_id).await.is_none());
}

#[tokio::test]
async fn a_forged_statement_is_invalid_client() {
    let federation = Federation::new().await;
    let inner = federation.root_statement(now_s() + 3600);
    let forger = Key::new("org-1");
    federation.publish(FED, forger.sign(&federation.client_claims(&inner, json!({}))));
    let proxy = start_proxy(&federation, true).await;
    assert_unverifiable(&federation, &proxy).await;
}

#[tokio::test]
async fn an_expired_statement_is_invalid_client() {
    let federation = Federation::new().await;
    let inner = federation.root_statement(now_s() - 120);
    federation.publish(FED, federation.org.sign(&federation.client_claims(&inner, json!({}))));
    let proxy = start_proxy(&federation, true).await;
    assert_unverifiable(&federation, &proxy).await;
}

#[tokio::test]
async fn a_statement_of_an_untrusted_root_is_invalid_client() {
    let federation = Federation::new().await;
    // Signed by a root of its own, in a federation this provider does not trust.
    let untrusted = Key::new("fo-1");
    let inner = untrusted.sign(&json!({"iss": "https://other-federation.example", "sub": ORG,
        "iat": now_s(), "exp": now_s() + 600, "signing_keys": federation.org.set()}));
    let claims = federation.client_claims(
        &inner,
        json!({"metadata_statements": {"https://other-federation.example": inner}}),
    );
    federation.publish("https://other-federation.example", federation.org.sign(&claims));
    let proxy = start_proxy(&federation, true).await;
    assert_unverifiable(&federation, &proxy).await;

    // The same chain presented as ours: its root key is not the configured one.
    let forged_inner = untrusted.sign(&json!({"iss": FED, "sub": ORG, "iat": now_s(), "exp": now_s() + 600,
        "signing_keys": federation.org.set()}));
    federation.publish(
        FED,
        federation.org.sign(&federation.client_claims(&forged_inner, json!({}))),
    );
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_unverifiable(&federation, &proxy).await;
}

#[tokio::test]
async fn a_private_target_is_refused_without_the_test_switch() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, false).await;
    assert_unverifiable(&federation, &proxy).await;
    assert_eq!(
        federation.host.hits.load(Ordering::Relaxed),
        0,
        "nothing reached the private host"
    );
}

#[tokio::test]
async fn a_federated_client_unknown_at_the_token_endpoint_is_invalid_client() {
    let federation = Federation::new().await;
    let inner = federation.root_statement(now_s() + 3600);
    federation.publish(
        FED,
        Key::new("org-1").sign(&federation.client_claims(&inner, json!({}))),
    );
    let proxy = start_proxy(&federation, true).await;
    let assertion = federation.assertion(&proxy.issuer);
    let (status, body) = post_token(
        &proxy,
        &token_form(
            &assertion,
            &[
                ("grant_type", "urn:openid:params:grant-type:deferred"),
                ("deferred_auth_id", "x"),
            ],
        ),
    )
    .await;
    // RFC 6749 §5.2: 401 only for a client that authenticated with the Authorization header.
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client")),
        "{body}"
    );
    assert!(provisioned(&proxy, &federation.client_id).await.is_none());
}

#[tokio::test]
async fn a_pushed_request_object_of_a_federated_client_carries_deferred_code() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, true).await;
    let (verifier, challenge) = pkce();
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "deferred_code", "scope": "openid", "state": "st-par",
            "code_challenge": challenge, "code_challenge_method": "S256"}),
    );
    let assertion = federation.assertion(&proxy.issuer);
    let mut form = token_form(&assertion, &[("request", request.as_str())]);
    form.push(("client_id", federation.client_id.as_str()));
    let pushed = proxy
        .http
        .post(proxy.url("/protocol/openid-connect/ext/par/request"))
        .form(&form)
        .send()
        .await
        .expect("PAR");
    let status = pushed.status().as_u16();
    let pushed: Value = pushed.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{pushed}");
    let request_uri = pushed["request_uri"].as_str().expect("request_uri");
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request_uri", request_uri),
    ];
    let ack = proxy.login(&params, "par-user", None).await.ack();
    assert_eq!(ack.get("state"), Some("st-par"));
    let code = ack.get("deferred_code").expect("deferred_code").to_owned();
    let assertion = federation.assertion(&proxy.issuer);
    let (status, exchanged) = post_token(
        &proxy,
        &token_form(
            &assertion,
            &[
                ("grant_type", "urn:openid:params:grant-type:deferred"),
                ("deferred_code", &code),
                ("code_verifier", &verifier),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200, "{exchanged}");
}

#[tokio::test]
async fn a_scope_beyond_the_statement_is_invalid_scope() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({"scopes": ["openid"]}));
    let proxy = start_proxy(&federation, true).await;
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid email"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request", request.as_str()),
    ];
    let answer = proxy.login(&params, "someone", None).await;
    assert_eq!(refusal(&answer), "invalid_scope", "{answer:?}");
    assert!(provisioned(&proxy, &federation.client_id).await.is_none());
}

#[tokio::test]
async fn a_rotated_client_key_is_picked_up_and_provisioned_again() {
    let mut federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let proxy = start_proxy(&federation, true).await;
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request", request.as_str()),
    ];
    assert!(proxy.login(&params, "someone", None).await.ack().get("code").is_some());

    // The client rotates its key; its statement names the new one.
    federation.client_key = Key::new(&format!("{}#2", federation.client_id));
    federation.publish_valid(json!({}));
    // Within 10 s of the last discovery an unknown kid does not make the proxy look again.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid", "state": "st-rotated"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request", request.as_str()),
    ];
    let ack = proxy.login(&params, "someone", None).await.ack();
    let code = ack.get("code").expect("code").to_owned();
    let op_client = provisioned(&proxy, &federation.client_id).await.expect("provisioned");
    assert_eq!(op_client["jwks"], federation.client_key.set(), "the OP has the new key");
    let assertion = federation.assertion(&proxy.issuer);
    let (status, tokens) = post_token(
        &proxy,
        &token_form(
            &assertion,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
}

#[tokio::test]
async fn a_client_is_disabled_at_the_op_when_its_statement_expires() {
    let federation = Federation::new().await;
    let inner = federation.root_statement(now_s() + 3600);
    let mut claims = federation.client_claims(&inner, json!({}));
    claims["exp"] = json!(now_s() + 2);
    federation.publish(FED, federation.org.sign(&claims));
    let proxy = start_proxy(&federation, true).await;
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request", request.as_str()),
    ];
    assert!(proxy.login(&params, "someone", None).await.ack().get("code").is_some());
    assert!(provisioned(&proxy, &federation.client_id).await.is_some());
    // The sweep runs every 15 s.
    let mut disabled = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if provisioned(&proxy, &federation.client_id).await.is_none() {
            disabled = true;
            break;
        }
    }
    assert!(disabled, "the expired client is still enabled at the OP");
}
