//! The in-process tier: the public and admin services built from a configuration, the
//! embedded store and an OP in memory, and called as values — no socket, no child process.
//! Fast and deterministic; the socket-level suites prove the same flows over the wire.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use dtr_proxy::app::{compose, upstream, Services};
use dtr_proxy::endpoints::authorize::Authorization;
use dtr_proxy::http::Body;
use dtr_proxy::metrics::Metrics;
use dtr_proxy::protocol::params::Params;
use dtr_proxy::store::{MemoryStore, Store};
use dtr_proxy::telemetry::Telemetry;
use dtr_proxy::upstream::{BufferedReply, OpClient, UpstreamError};
use dtr_proxy::Config;

const REALM: &str = "acme";
const PUBLIC: &str = "https://id.example.com";
const REDIRECT_URI: &str = "https://rp.example.com/cb";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_PATH: &str = "/realms/acme/protocol/openid-connect/token";

/// One call the OP received.
#[derive(Debug, Clone)]
struct OpCall {
    path: String,
    form: Vec<(String, String)>,
    authorization: Option<String>,
}

/// An OP in memory: answers the code redemption and the refresh like a code-flow OP, or
/// fails when told to.
#[derive(Default)]
struct MemoryOp {
    calls: Mutex<Vec<OpCall>>,
    down: Mutex<bool>,
    /// Refreshed ID tokens without `nonce`, as Keycloak ≥ 25 without the mapper.
    drops_nonce: Mutex<bool>,
    /// Answers the code with an online grant (no offline_access).
    online: Mutex<bool>,
}

fn unsigned_jwt(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.c2ln")
}

impl MemoryOp {
    fn calls(&self) -> Vec<OpCall> {
        self.calls.lock().unwrap().clone()
    }

    fn answer(&self, form: &[(String, String)]) -> BufferedReply {
        let get = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let scope = if *self.online.lock().unwrap() {
            "openid"
        } else {
            "openid offline_access"
        };
        let rotated = get("refresh_token")
            .and_then(|t| t.strip_prefix("offline-"))
            .and_then(|n| n.parse::<u32>().ok());
        let nonce = if *self.drops_nonce.lock().unwrap() {
            json!(null)
        } else {
            json!("n-1")
        };
        let (status, body) = match get("grant_type") {
            Some("authorization_code") if get("code") == Some("op-code-1") => (
                StatusCode::OK,
                json!({
                    "access_token": "interim-access",
                    "refresh_token": "offline-1",
                    "refresh_expires_in": 0,
                    "scope": scope,
                    "id_token": unsigned_jwt(&json!({"sub": "user-1", "sid": "s-1", "nonce": "n-1"})),
                    "token_type": "Bearer",
                }),
            ),
            Some("refresh_token") if rotated.is_some() => (
                StatusCode::OK,
                json!({
                    "access_token": "final-access",
                    "refresh_token": format!("offline-{}", rotated.unwrap_or(0) + 1),
                    "scope": scope,
                    "id_token": unsigned_jwt(&json!({"sub": "user-1", "nonce": nonce, "identity_verified": true})),
                    "token_type": "Bearer",
                }),
            ),
            None if get("token").is_some() => (StatusCode::OK, json!({})),
            _ => (StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        BufferedReply {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}

impl OpClient for MemoryOp {
    fn post_form<'a>(
        &'a self,
        path: &'a str,
        form: String,
        forwarded: &'a HeaderMap,
        _peer: IpAddr,
        _call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(async move {
            let form: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes()).into_owned().collect();
            self.calls.lock().unwrap().push(OpCall {
                path: path.to_owned(),
                form: form.clone(),
                authorization: forwarded
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            });
            if *self.down.lock().unwrap() {
                return Err(UpstreamError::Connect("connection refused".into()));
            }
            Ok(self.answer(&form))
        })
    }

    fn get<'a>(
        &'a self,
        _path_and_query: &'a str,
        _headers: &'a HeaderMap,
        _peer: IpAddr,
        _call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Connect("no discovery in memory".into())) })
    }

    fn send_own<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        headers: HeaderMap,
        body: Bytes,
        _call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(async move {
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            self.calls.lock().unwrap().push(OpCall {
                path: format!("{method} {path}"),
                form: form.clone(),
                authorization: headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            });
            let (status, body) = if method == Method::DELETE {
                (StatusCode::NO_CONTENT, String::new())
            } else {
                (
                    StatusCode::OK,
                    json!({"access_token": "admin-token", "expires_in": 300}).to_string(),
                )
            };
            Ok(BufferedReply {
                status,
                headers: HeaderMap::new(),
                body: Bytes::from(body),
            })
        })
    }
}

struct Bed {
    services: Services,
    op: Arc<MemoryOp>,
}

fn bed() -> Bed {
    bed_with(&[])
}

fn bed_with(extra: &[(&str, &str)]) -> Bed {
    let mut env: Vec<(String, String)> = vec![
        // Never dialled: everything below stays in memory.
        ("DTR_UPSTREAM_URL".into(), "http://127.0.0.1:9".into()),
        ("DTR_PUBLIC_URL".into(), PUBLIC.into()),
        ("DTR_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
        ("DTR_DEFAULT_INTERVAL".into(), "1".into()),
        ("DTR_HASH_KEY".into(), STANDARD.encode([7u8; 32])),
        ("DTR_TOKEN_KEYS".into(), format!("k1:{}", STANDARD.encode([9u8; 32]))),
        (
            "DTR_CLIENTS".into(),
            json!([{"client_id": "rp", "redirect_uris": [REDIRECT_URI]}]).to_string(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_env(env).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Metrics::new();
    let op = Arc::new(MemoryOp::default());
    let services = compose(
        &config,
        Store::Memory(MemoryStore::new()),
        upstream(&config, &metrics, Telemetry::off()),
        op.clone(),
        metrics,
        Telemetry::off(),
    );
    Bed { services, op }
}

fn peer() -> SocketAddr {
    "192.0.2.10:50000".parse().unwrap()
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

async fn read(response: Response<Body>) -> (StatusCode, HeaderMap, Value) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

impl Bed {
    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .uri(TOKEN_PATH)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, basic("rp", "rp-secret"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        read(self.services.public.handle(request, peer()).await).await
    }

    async fn poll(&self, deferred_auth_id: &str) -> (StatusCode, HeaderMap, Value) {
        self.token(&[
            ("grant_type", "urn:openid:params:grant-type:deferred"),
            ("deferred_auth_id", deferred_auth_id),
        ])
        .await
    }

    /// Steps 1 and 2 without an OP: the authorization rewrite, then the OP's redirect back
    /// with its code, turned into the RP's acknowledgment. Returns the `deferred_code`.
    async fn deferred_code(&self) -> String {
        let query = format!(
            "response_type=deferred_code&client_id=rp&redirect_uri={}&scope=openid&state=rp-state&nonce=n-1",
            form_urlencoded::byte_serialize(REDIRECT_URI.as_bytes()).collect::<String>()
        );
        let params = Params::parse(query.as_bytes()).unwrap();
        let Authorization::Forward { query } = self.services.public.authorize.handle(REALM, &params).await else {
            panic!("a deferred_code request is forwarded");
        };
        let upstream: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let get = |name: &str| upstream.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(get("response_type").as_deref(), Some("code"));
        assert_eq!(get("scope").as_deref(), Some("openid offline_access"));
        let handle = get("state").expect("our handle");
        assert_ne!(handle, "rp-state");

        let redirect = Response::builder()
            .status(StatusCode::FOUND)
            .header(
                header::LOCATION,
                format!("{REDIRECT_URI}?code=op-code-1&state={handle}&iss={PUBLIC}/realms/{REALM}"),
            )
            .header(header::SET_COOKIE, "KEYCLOAK_SESSION=abc; Path=/")
            .body(())
            .unwrap();
        let acknowledgment = self.services.public.acknowledge.handle(redirect.into_parts().0).await;
        assert_eq!(acknowledgment.status(), StatusCode::FOUND);
        assert!(
            acknowledgment.headers().contains_key(header::SET_COOKIE),
            "OP cookies kept"
        );
        let location = acknowledgment.headers()[header::LOCATION].to_str().unwrap().to_owned();
        let url = url::Url::parse(&location).unwrap();
        let found = |name: &str| url.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned());
        assert_eq!(found("state").as_deref(), Some("rp-state"));
        assert_eq!(found("iss").as_deref(), Some("https://id.example.com/realms/acme"));
        assert!(found("code").is_none(), "the OP's code never reaches the RP");
        found("deferred_code").expect("deferred_code")
    }

    async fn exchange(&self, deferred_code: &str) -> (StatusCode, HeaderMap, Value) {
        self.token(&[
            ("grant_type", "urn:openid:params:grant-type:deferred"),
            ("deferred_code", deferred_code),
            ("redirect_uri", REDIRECT_URI),
        ])
        .await
    }

    async fn complete(&self, process: &Value) -> StatusCode {
        self.send_outcome(json!({"outcome": "approved", "sub": process["sub"]}))
            .await
    }

    async fn send_outcome(&self, outcome: Value) -> StatusCode {
        let body = outcome.to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let key = dtr_proxy::webhook::decode_secret(WEBHOOK_SECRET).unwrap();
        let signature = dtr_proxy::webhook::sign(&key, "wh-1", now, body.as_bytes());
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/completions")
            .header("webhook-id", "wh-1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", format!("v1,{signature}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.services.admin.handle(request).await.status()
    }
}

#[tokio::test]
async fn a_whole_deferred_flow_runs_in_memory() {
    let bed = bed();
    let deferred_code = bed.deferred_code().await;

    let (status, headers, body) = bed.exchange(&deferred_code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let deferred_auth_id = body["deferred_auth_id"].as_str().expect("deferred_auth_id").to_owned();
    assert_eq!(body["interval"], 1);
    let calls = bed.op.calls();
    assert_eq!(
        calls.len(),
        2,
        "the OP's code is redeemed once, then the nonce probed once"
    );
    assert_eq!(calls[0].path, TOKEN_PATH);
    assert!(calls[0]
        .form
        .contains(&("grant_type".into(), "authorization_code".into())));
    assert!(calls[0].form.contains(&("code".into(), "op-code-1".into())));
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some(basic("rp", "rp-secret").as_str()),
        "the RP's own client authentication reaches the OP"
    );

    let (status, _, body) = bed.poll(&deferred_auth_id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("authorization_pending"))
    );
    assert_eq!(bed.op.calls().len(), 2, "a pending poll costs no OP call");

    let (status, _, body) = bed.poll(&deferred_auth_id).await;
    assert_eq!(body["error"], "slow_down", "{status} {body}");

    assert_eq!(bed.complete(&json!({"sub": "user-1"})).await, StatusCode::OK);
    // The slow_down above grew the interval to 6 s; wait it out with the jitter allowance.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let (status, _, body) = bed.poll(&deferred_auth_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["access_token"], "final-access");
    let refresh = bed.op.calls().pop().expect("the release");
    assert!(
        refresh.form.contains(&("refresh_token".into(), "offline-2".into())),
        "the release uses the grant the probe rotated"
    );

    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let (_, _, body) = bed.poll(&deferred_auth_id).await;
    assert_eq!(body["error"], "invalid_grant", "the id is spent");
}

#[tokio::test]
async fn an_op_outage_at_the_exchange_is_retryable_with_the_same_code() {
    let bed = bed();
    let deferred_code = bed.deferred_code().await;
    *bed.op.down.lock().unwrap() = true;
    let (status, headers, body) = bed.exchange(&deferred_code).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(headers.contains_key(header::RETRY_AFTER));

    *bed.op.down.lock().unwrap() = false;
    let (status, _, body) = bed.exchange(&deferred_code).await;
    assert_eq!(status, StatusCode::OK, "the code was put back: {body}");
    let (_, _, body) = bed.exchange(&deferred_code).await;
    assert_eq!(body["error"], "invalid_grant", "and is single use once redeemed");
}

#[tokio::test]
async fn a_foreign_or_unknown_deferred_auth_id_costs_no_op_call() {
    let bed = bed();
    let (status, _, body) = bed.poll("not-an-id-of-ours").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(bed.op.calls().is_empty());
}

#[tokio::test]
async fn an_online_grant_is_refused_at_the_exchange_naming_the_setting() {
    let bed = bed();
    *bed.op.online.lock().unwrap() = true;
    let deferred_code = bed.deferred_code().await;
    let (status, _, body) = bed.exchange(&deferred_code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_scope");
    assert!(
        body["error_description"].as_str().unwrap().contains("offline_access"),
        "{body}"
    );
}

#[tokio::test]
async fn a_missing_nonce_mapper_fails_the_first_exchange_loudly() {
    let bed = bed();
    *bed.op.drops_nonce.lock().unwrap() = true;
    let deferred_code = bed.deferred_code().await;
    let (status, _, body) = bed.exchange(&deferred_code).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Nonce backwards compatible"),
        "{body}"
    );
}

#[tokio::test]
async fn a_final_id_token_without_the_nonce_is_never_handed_out() {
    let bed = bed();
    // The probe passes (the mapper is there at the exchange) ...
    let deferred_code = bed.deferred_code().await;
    let (_, _, body) = bed.exchange(&deferred_code).await;
    let deferred_auth_id = body["deferred_auth_id"].as_str().expect("id").to_owned();
    assert_eq!(bed.complete(&json!({"sub": "user-1"})).await, StatusCode::OK);
    // ... and is gone at the release.
    *bed.op.drops_nonce.lock().unwrap() = true;
    let (status, _, body) = bed.poll(&deferred_auth_id).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "server_error");
    // Fixed at the OP: the next poll gets the tokens, with the grant the failed release rotated.
    *bed.op.drops_nonce.lock().unwrap() = false;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, _, body) = bed.poll(&deferred_auth_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let release = bed.op.calls().pop().expect("release");
    assert!(
        release.form.contains(&("refresh_token".into(), "offline-3".into())),
        "{release:?}"
    );
}

impl Bed {
    async fn cancel(&self, deferred_auth_id: &str) -> StatusCode {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("deferred_auth_id", deferred_auth_id)
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .uri("/realms/acme/protocol/openid-connect/deferred/cancel")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::AUTHORIZATION, basic("rp", "rp-secret"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.services.public.handle(request, peer()).await.status()
    }

    /// Waits (bounded) for a call the proxy makes without waiting itself.
    async fn wait_for_call(&self, path: &str) -> OpCall {
        for _ in 0..100 {
            if let Some(call) = self.op.calls().into_iter().find(|c| c.path.ends_with(path)) {
                return call;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no call to {path}: {:?}", self.op.calls());
    }
}

#[tokio::test]
async fn a_cancel_gives_the_held_grant_back_with_the_rps_credentials() {
    let bed = bed();
    let deferred_code = bed.deferred_code().await;
    let (_, _, body) = bed.exchange(&deferred_code).await;
    let deferred_auth_id = body["deferred_auth_id"].as_str().expect("id").to_owned();
    assert_eq!(bed.cancel(&deferred_auth_id).await, StatusCode::OK);
    let revocation = bed.wait_for_call("/realms/acme/protocol/openid-connect/revoke").await;
    assert!(
        revocation.form.contains(&("token".into(), "offline-2".into())),
        "{revocation:?}"
    );
    assert!(revocation
        .form
        .contains(&("token_type_hint".into(), "refresh_token".into())));
    assert_eq!(
        revocation.authorization.as_deref(),
        Some(basic("rp", "rp-secret").as_str())
    );
}

#[tokio::test]
async fn a_denial_ends_the_offline_session_with_the_operators_account() {
    let bed = bed_with(&[
        ("DTR_KEYCLOAK_ADMIN_CLIENT_ID", "dtr-proxy-admin"),
        ("DTR_KEYCLOAK_ADMIN_CLIENT_SECRET", "admin-secret"),
    ]);
    let deferred_code = bed.deferred_code().await;
    bed.exchange(&deferred_code).await;
    let denied = bed
        .send_outcome(json!({"outcome": "denied", "sub": "user-1", "error_description": "Document expired"}))
        .await;
    assert_eq!(denied, StatusCode::OK);
    let token = bed
        .wait_for_call("POST /realms/acme/protocol/openid-connect/token")
        .await;
    assert!(token.form.contains(&("grant_type".into(), "client_credentials".into())));
    assert_eq!(
        token.authorization.as_deref(),
        Some(basic("dtr-proxy-admin", "admin-secret").as_str())
    );
    let ended = bed
        .wait_for_call("/admin/realms/acme/sessions/s-1?isOffline=true")
        .await;
    assert!(ended.path.starts_with("DELETE "), "{ended:?}");
    assert_eq!(ended.authorization.as_deref(), Some("Bearer admin-token"));
}
