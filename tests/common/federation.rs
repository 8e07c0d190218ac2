//! A test federation: a trust root, an organisation and a client host serving WebFinger and
//! statements over HTTPS with a test CA (`rcgen`); keys and JWTs made with `jsonwebtoken`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{client, now_s, op, unique, Proxy, REDIRECT_URI};

pub const FED: &str = "https://fed.example.org";
pub const ORG: &str = "https://org.example.com";
pub const PROVIDER_REL: &str = "http://openid.net/specs/connect/1.0/provider";
pub const FEDERATION_PROPERTY: &str = "http://openid.net/specs/connect/1.0/federation";

/// An EC P-256 signing key with its public JWK.
pub struct Key {
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl Key {
    pub fn new(kid: &str) -> Self {
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
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    pub fn set(&self) -> Value {
        json!({"keys": [self.jwk]})
    }
}

/// The test CA and the client host's certificate (for `localhost`).
pub struct Tls {
    pub ca_file: std::path::PathBuf,
    acceptor: TlsAcceptor,
}

pub fn tls() -> &'static Tls {
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
        // In the build's own scratch directory (tests have one, examples do not), one file
        // per binary, rewritten by each run (a file per process would pile up).
        let ca_file = option_env!("CARGO_TARGET_TMPDIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(concat!(env!("CARGO_CRATE_NAME"), "-federation-ca.pem"));
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
pub struct Host {
    pub port: u16,
    routes: Arc<Mutex<HashMap<String, (&'static str, String)>>>,
    pub hits: Arc<AtomicUsize>,
}

impl Host {
    pub async fn start() -> Self {
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

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn put(&self, path: &str, media: &'static str, body: String) {
        self.routes.lock().unwrap().insert(path.to_owned(), (media, body));
    }
}

/// A federation with one client: root → organisation → client statement.
pub struct Federation {
    pub root: Key,
    pub org: Key,
    pub client_key: Key,
    pub host: Host,
    pub client_id: String,
}

impl Federation {
    pub async fn new() -> Self {
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

    pub fn root_statement(&self, exp: u64) -> String {
        self.root.sign(&json!({
            "iss": FED, "sub": ORG, "iat": now_s() - 10, "exp": exp, "jti": unique("j"),
            "federation_usage": "registration",
            "signing_keys": self.org.set(),
            "scopes": ["openid", "profile", "email"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "private_key_jwt",
        }))
    }

    pub fn client_claims(&self, inner: &str, extra: Value) -> Value {
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
    pub fn publish(&self, federation: &str, statement: String) {
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
    pub fn publish_valid(&self, extra: Value) {
        let inner = self.root_statement(now_s() + 3600);
        self.publish(FED, self.org.sign(&self.client_claims(&inner, extra)));
    }

    /// Publishes a statement without inline `jwks` whose client keys are at `signed_jwks_uri`:
    /// the statement certifies `certified` as the client's signing key, and the document there
    /// is the client's JWK Set signed by `signer` (naming `certified`'s kid).
    pub fn publish_with_signed_jwks(&self, certified: &Key, signer: &Key) {
        let document = signer.sign_as(
            &certified.kid,
            &json!({"keys": [self.client_key.jwk], "iat": now_s(), "exp": now_s() + 600}),
        );
        self.host.put("/jwks.jose", "application/jose", document);
        let inner = self.root_statement(now_s() + 3600);
        let mut claims = self.client_claims(
            &inner,
            json!({"signing_keys": certified.set(), "signed_jwks_uri": self.host.url("/jwks.jose")}),
        );
        claims.as_object_mut().expect("claims").remove("jwks");
        self.publish(FED, self.org.sign(&claims));
    }

    pub fn request_object(&self, key: &Key, issuer: &str, params: Value) -> String {
        let mut claims = json!({"iss": self.client_id, "aud": issuer, "exp": now_s() + 300, "iat": now_s(),
            "jti": unique("ro"), "client_id": self.client_id, "redirect_uri": REDIRECT_URI});
        if let (Some(claims), Value::Object(params)) = (claims.as_object_mut(), params) {
            claims.extend(params);
        }
        key.sign_as(&self.client_key.kid, &claims)
    }

    pub fn assertion(&self, audience: &str) -> String {
        self.client_key
            .sign(&json!({"iss": self.client_id, "sub": self.client_id, "aud": audience,
            "exp": now_s() + 60, "iat": now_s(), "jti": unique("a")}))
    }

    /// A token request of the client: `form` with a fresh `private_key_jwt` assertion.
    pub async fn token(&self, proxy: &Proxy, form: &[(&str, &str)]) -> (u16, Value) {
        let assertion = self.assertion(&proxy.issuer);
        post_form(proxy, &proxy.token_url(), &token_form(&assertion, form)).await
    }
}

/// `extra` with a `private_key_jwt` client assertion.
pub fn token_form<'a>(assertion: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
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

/// POSTs a form to the proxy: the status and the JSON answer (null if none).
pub async fn post_form(proxy: &Proxy, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = proxy.http.post(url).form(form).send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The stand-in OP's record of a client provisioned in the proxy's realm, if any (enabled
/// or not: see `enabled`).
pub async fn provisioned(proxy: &Proxy, client_id: &str) -> Option<Value> {
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
