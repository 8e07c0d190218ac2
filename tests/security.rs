//! Protocol security, one test per attack, each against the real OP and real Redis: DPoP
//! (RFC 9449), client authentication without the OP, ids that are no oracle, secrets at rest
//! and in logs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const GRANT: &str = "urn:openid:params:grant-type:deferred";

async fn redis_proxy() -> Proxy {
    start(Options::new(StoreKind::Redis)).await
}

fn poll_form(id: &str) -> [(&str, &str); 2] {
    [("grant_type", GRANT), ("deferred_auth_id", id)]
}

fn public() -> Auth {
    Auth::Public("dtr-public")
}

/// Starts a process whose exchange carried a proof by `key`.
async fn start_bound(proxy: &Proxy, auth: &Auth, key: &DpopKey) -> String {
    let (code, verifier) = proxy.deferred_code(auth.client_id(), &unique("u")).await;
    let proof = key.proof("POST", &proxy.token_url());
    let reply = proxy
        .token(
            auth,
            &[
                ("grant_type", GRANT),
                ("deferred_code", &code),
                ("code_verifier", &verifier),
            ],
            Some(&proof),
        )
        .await;
    assert_eq!(reply.status, 200, "exchange: {}", reply.json);
    reply.json["deferred_auth_id"].as_str().expect("id").to_owned()
}

async fn poll_with(proxy: &Proxy, auth: &Auth, id: &str, proof: &str) -> Reply {
    proxy.token(auth, &poll_form(id), Some(proof)).await
}

fn assert_error(reply: &Reply, status: u16, error: &str) {
    assert_eq!(
        (reply.status, reply.error()),
        (status, error),
        "unexpected answer: {}",
        reply.json
    );
}

/// A public client's process, and its key.
async fn bound_public_process(proxy: &Proxy) -> (String, DpopKey) {
    let key = DpopKey::generate();
    let id = start_bound(proxy, &public(), &key).await;
    (id, key)
}

// ---- DPoP -------------------------------------------------------------------------------

#[tokio::test]
async fn dpop_replayed_proof_is_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    let proof = key.proof("POST", &proxy.token_url());
    assert_error(
        &poll_with(&proxy, &public(), &id, &proof).await,
        400,
        "authorization_pending",
    );
    assert_error(
        &poll_with(&proxy, &public(), &id, &proof).await,
        400,
        "invalid_dpop_proof",
    );
}

#[tokio::test]
async fn dpop_proof_by_another_key_is_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    let thief = DpopKey::generate();
    let stolen = poll_with(&proxy, &public(), &id, &thief.proof("POST", &proxy.token_url())).await;
    assert_error(&stolen, 400, "invalid_dpop_proof");
    let cancel = proxy
        .post_form(
            &proxy.url("/protocol/openid-connect/deferred/cancel"),
            &public(),
            &[("deferred_auth_id", &id)],
            Some(&thief.proof("POST", &proxy.url("/protocol/openid-connect/deferred/cancel"))),
        )
        .await;
    assert_error(&cancel, 400, "invalid_dpop_proof");
    // The owner's key still works: the process was neither consumed nor cancelled.
    let owner = poll_with(&proxy, &public(), &id, &key.proof("POST", &proxy.token_url())).await;
    assert_error(&owner, 400, "authorization_pending");
}

#[tokio::test]
async fn dpop_proof_for_another_url_is_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    for htu in [
        proxy.url("/protocol/openid-connect/deferred/cancel"),
        "https://attacker.example/realms/x/protocol/openid-connect/token".to_owned(),
        format!(
            "http://127.0.0.1:{}/realms/{}/protocol/openid-connect/token",
            op().port,
            proxy.realm
        ),
    ] {
        let reply = poll_with(&proxy, &public(), &id, &key.proof("POST", &htu)).await;
        assert_error(&reply, 400, "invalid_dpop_proof");
    }
    // Query and fragment are ignored, and the URL is compared normalised.
    let token_url = proxy.token_url().replacen("http://", "HTTP://", 1) + "?x=1#frag";
    let reply = poll_with(&proxy, &public(), &id, &key.proof("POST", &token_url)).await;
    assert_error(&reply, 400, "authorization_pending");
}

#[tokio::test]
async fn dpop_proof_for_another_method_is_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    let reply = poll_with(&proxy, &public(), &id, &key.proof("GET", &proxy.token_url())).await;
    assert_error(&reply, 400, "invalid_dpop_proof");
}

#[tokio::test]
async fn dpop_proof_with_stale_or_future_iat_is_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    for iat in [now_s() - 120, now_s() + 120] {
        let (header, mut claims) = key.parts("POST", &proxy.token_url());
        claims["iat"] = json!(iat);
        let reply = poll_with(&proxy, &public(), &id, &key.sign(&header, &claims)).await;
        assert_error(&reply, 400, "invalid_dpop_proof");
    }
}

#[tokio::test]
async fn dpop_proof_with_alg_none_is_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    let (mut header, claims) = key.parts("POST", &proxy.token_url());
    header["alg"] = json!("none");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let reply = poll_with(&proxy, &public(), &id, &unsigned).await;
    assert_error(&reply, 400, "invalid_dpop_proof");
}

#[tokio::test]
async fn dpop_proof_with_hmac_alg_is_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    let (_, claims) = key.parts("POST", &proxy.token_url());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(serde_json::from_value(json!({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"})).unwrap());
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"secret-secret-secret"),
    )
    .unwrap();
    let reply = poll_with(&proxy, &public(), &id, &forged).await;
    assert_error(&reply, 400, "invalid_dpop_proof");
}

#[tokio::test]
async fn dpop_proof_with_private_key_in_jwk_is_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    let (mut header, claims) = key.parts("POST", &proxy.token_url());
    header["jwk"]["d"] = json!("0lH6CmMGqAvtTcL9PFDdBr5sTN2dnqR-9k6Pf4OKmrc");
    let reply = poll_with(&proxy, &public(), &id, &key.sign(&header, &claims)).await;
    assert_error(&reply, 400, "invalid_dpop_proof");
}

#[tokio::test]
async fn two_dpop_headers_are_refused() {
    let proxy = redis_proxy().await;
    let (id, key) = bound_public_process(&proxy).await;
    let response = proxy
        .http
        .post(proxy.token_url())
        .header("dpop", key.proof("POST", &proxy.token_url()))
        .header("dpop", key.proof("POST", &proxy.token_url()))
        .form(&[
            ("grant_type", GRANT),
            ("deferred_auth_id", &id),
            ("client_id", "dtr-public"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"], "invalid_dpop_proof");
}

#[tokio::test]
async fn missing_dpop_proof_on_a_bound_process_is_refused() {
    let proxy = redis_proxy().await;
    let key = DpopKey::generate();
    // A confidential client that chose DPoP at the exchange.
    let id = start_bound(&proxy, &dtr_client(), &key).await;
    assert_error(&proxy.poll(&dtr_client(), &id).await, 400, "invalid_dpop_proof");
    assert_error(&proxy.cancel(&dtr_client(), &id).await, 400, "invalid_dpop_proof");
    let reply = poll_with(&proxy, &dtr_client(), &id, &key.proof("POST", &proxy.token_url())).await;
    assert_error(&reply, 400, "authorization_pending");
}

#[tokio::test]
async fn public_client_without_dpop_cannot_start_a_process() {
    let proxy = redis_proxy().await;
    let (code, verifier) = proxy.deferred_code("dtr-public", &unique("u")).await;
    let form = [
        ("grant_type", GRANT),
        ("deferred_code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("client_id", "dtr-public"),
    ];
    let response = proxy.http.post(proxy.token_url()).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"], "invalid_dpop_proof", "{json}");
    // Refused before the code was consumed: the same code works with a proof.
    let key = DpopKey::generate();
    let reply = proxy
        .token(&public(), &form[..3], Some(&key.proof("POST", &proxy.token_url())))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
}

#[tokio::test]
async fn require_dpop_binds_every_client_to_its_key() {
    let proxy = start(Options::new(StoreKind::Redis).env("DTR_REQUIRE_DPOP", "true")).await;
    let (code, verifier) = proxy.deferred_code("dtr-client", &unique("u")).await;
    let unbound = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_error(&unbound, 400, "invalid_dpop_proof");
    let key = DpopKey::generate();
    let id = start_bound(&proxy, &dtr_client(), &key).await;
    let other = DpopKey::generate();
    let reply = poll_with(&proxy, &dtr_client(), &id, &other.proof("POST", &proxy.token_url())).await;
    assert_error(&reply, 400, "invalid_dpop_proof");
    let reply = poll_with(&proxy, &dtr_client(), &id, &key.proof("POST", &proxy.token_url())).await;
    assert_error(&reply, 400, "authorization_pending");
}

#[tokio::test]
async fn dpop_server_nonce_is_required_when_enabled() {
    let proxy = start(Options::new(StoreKind::Redis).env("DTR_DPOP_NONCE", "true")).await;
    let (id, exchange) = proxy.start_process(&dtr_client(), &unique("u"), None).await;
    let offered = exchange.headers["dpop-nonce"].to_str().unwrap().to_owned();
    let key = DpopKey::generate();

    let without = poll_with(&proxy, &dtr_client(), &id, &key.proof("POST", &proxy.token_url())).await;
    assert_error(&without, 400, "use_dpop_nonce");
    let nonce = without.headers["dpop-nonce"].to_str().unwrap().to_owned();
    assert_eq!(nonce, offered, "one nonce per window, from any answer");

    let (header, mut claims) = key.parts("POST", &proxy.token_url());
    claims["nonce"] = json!("1.forged");
    let forged = poll_with(&proxy, &dtr_client(), &id, &key.sign(&header, &claims)).await;
    assert_error(&forged, 400, "use_dpop_nonce");

    let (header, mut claims) = key.parts("POST", &proxy.token_url());
    claims["nonce"] = json!(nonce);
    let good = poll_with(&proxy, &dtr_client(), &id, &key.sign(&header, &claims)).await;
    assert_error(&good, 400, "authorization_pending");
    assert!(good.headers.contains_key("dpop-nonce"));
}

// ---- Client authentication --------------------------------------------------------------

#[tokio::test]
async fn wrong_secret_on_a_poll_is_invalid_client() {
    let proxy = redis_proxy().await;
    let (id, _) = proxy.start_process(&dtr_client(), &unique("u"), None).await;
    let basic = proxy.poll(&Auth::Basic("dtr-client", "guess"), &id).await;
    assert_error(&basic, 401, "invalid_client");
    assert!(
        basic.headers["www-authenticate"].to_str().unwrap().starts_with("Basic"),
        "{:?}",
        basic.headers
    );
    let post = proxy.poll(&Auth::Post("dtr-client", "dtr-client-secret"), &id).await;
    assert_error(&post, 400, "invalid_client");
    assert!(!post.headers.contains_key("www-authenticate"));
    let (post_id, _) = proxy
        .start_process(&Auth::Post("dtr-post", "dtr-post-secret"), &unique("u"), None)
        .await;
    let wrong = proxy.poll(&Auth::Post("dtr-post", "dtr-post-guess"), &post_id).await;
    assert_error(&wrong, 400, "invalid_client");
}

async fn poll_with_assertion(proxy: &Proxy, id: &str, assertion: &str) -> Reply {
    let response = proxy
        .http
        .post(proxy.token_url())
        .form(&[
            ("grant_type", GRANT),
            ("deferred_auth_id", id),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let json = response.json().await.unwrap_or(Value::Null);
    Reply { status, headers, json }
}

#[tokio::test]
async fn assertion_signed_by_another_key_is_refused() {
    let proxy = redis_proxy().await;
    let (id, _) = proxy.start_process(&Auth::Jwt("dtr-jwt"), &unique("u"), None).await;
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = client_jwk()["kid"].as_str().map(str::to_owned);
    let forged = jsonwebtoken::encode(
        &header,
        &assertion_claims("dtr-jwt", &proxy.token_url()),
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .unwrap();
    assert_error(&poll_with_assertion(&proxy, &id, &forged).await, 400, "invalid_client");
    // An HMAC assertion keyed with the client's public key material is refused too.
    let hmac = hs_client_assertion("dtr-jwt", &client_jwk().to_string(), &proxy.token_url());
    assert_error(&poll_with_assertion(&proxy, &id, &hmac).await, 400, "invalid_client");
    let good = client_assertion("dtr-jwt", &proxy.token_url());
    assert_error(
        &poll_with_assertion(&proxy, &id, &good).await,
        400,
        "authorization_pending",
    );
}

#[tokio::test]
async fn replayed_assertion_is_refused() {
    let proxy = redis_proxy().await;
    let (id, _) = proxy.start_process(&Auth::Jwt("dtr-jwt"), &unique("u"), None).await;
    let assertion = client_assertion("dtr-jwt", &proxy.token_url());
    assert_error(
        &poll_with_assertion(&proxy, &id, &assertion).await,
        400,
        "authorization_pending",
    );
    wait_interval(1).await;
    assert_error(
        &poll_with_assertion(&proxy, &id, &assertion).await,
        400,
        "invalid_client",
    );
}

#[tokio::test]
async fn assertion_with_wrong_claims_is_refused() {
    let proxy = redis_proxy().await;
    let (id, _) = proxy.start_process(&Auth::Jwt("dtr-jwt"), &unique("u"), None).await;
    let base = assertion_claims("dtr-jwt", &proxy.token_url());
    type Edit<'a> = (&'a str, &'a dyn Fn(&mut Value));
    let edits: [Edit; 5] = [
        ("audience", &|c| c["aud"] = json!("https://attacker.example")),
        ("expired", &|c| c["exp"] = json!(now_s() - 300)),
        ("issuer", &|c| c["iss"] = json!("dtr-client")),
        ("no exp", &|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        ("no jti", &|c| {
            c.as_object_mut().unwrap().remove("jti");
        }),
    ];
    for (what, edit) in edits {
        let mut claims = base.clone();
        claims["jti"] = json!(unique("jti"));
        edit(&mut claims);
        let reply = poll_with_assertion(&proxy, &id, &sign_client_assertion(&claims)).await;
        assert_error(&reply, 400, "invalid_client");
        assert!(reply.json["error_description"].is_string(), "{what}");
    }
}

#[tokio::test]
async fn client_secret_jwt_with_the_wrong_secret_is_refused() {
    let proxy = redis_proxy().await;
    let auth = Auth::HsJwt("dtr-hs", DTR_HS_SECRET);
    let (id, _) = proxy.start_process(&auth, &unique("u"), None).await;
    let forged = hs_client_assertion("dtr-hs", "a-guessed-secret-of-thirty-two-bytes!!", &proxy.token_url());
    assert_error(&poll_with_assertion(&proxy, &id, &forged).await, 400, "invalid_client");
    assert_error(&proxy.poll(&auth, &id).await, 400, "authorization_pending");
}

/// Serves a JWK Set and counts the fetches.
async fn jwks_server(jwks: Value) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = jwks.to_string();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

#[tokio::test]
async fn jwks_uri_keys_are_fetched_once_and_cached() {
    use std::sync::atomic::Ordering;
    let (url, hits) = jwks_server(json!({"keys": [client_jwk()]})).await;
    let proxy = start(Options::new(StoreKind::Redis).client(json!({"client_id": "dtr-jwt", "jwks_uri": url}))).await;
    let auth = Auth::Jwt("dtr-jwt");
    let (id, _) = proxy.start_process(&auth, &unique("u"), None).await;
    for _ in 0..2 {
        wait_interval(1).await;
        assert_error(&proxy.poll(&auth, &id).await, 400, "authorization_pending");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one fetch serves the exchange and both polls"
    );
}

// ---- Codes and ids ----------------------------------------------------------------------

#[tokio::test]
async fn a_code_used_by_another_client_is_burnt() {
    let proxy = redis_proxy().await;
    let (code, verifier) = proxy.deferred_code("dtr-client", &unique("u")).await;
    let other = Auth::Post("dtr-post", "dtr-post-secret");
    assert_error(
        &proxy.exchange(&other, &code, &verifier, None).await,
        400,
        "invalid_grant",
    );
    let owner = proxy.exchange(&dtr_client(), &code, &verifier, None).await;
    assert_error(&owner, 400, "invalid_grant");
}

#[tokio::test]
async fn a_deferred_auth_id_polled_by_another_client_looks_unknown() {
    let proxy = redis_proxy().await;
    let (id, _) = proxy.start_process(&dtr_client(), &unique("u"), None).await;
    let other = Auth::Post("dtr-post", "dtr-post-secret");
    let foreign = proxy.poll(&other, &id).await;
    assert_error(&foreign, 400, "invalid_grant");
    let guessed = proxy.poll(&other, &dtr_proxy::crypto::random_token(32)).await;
    assert_eq!(
        (foreign.status, &foreign.json),
        (guessed.status, &guessed.json),
        "foreign and unknown ids answer alike"
    );
    // Nor may the other client cancel it: 200 (no oracle) and the process lives on.
    assert_eq!(proxy.cancel(&other, &id).await.status, 200);
    assert_error(&proxy.poll(&dtr_client(), &id).await, 400, "authorization_pending");
}

#[tokio::test]
async fn a_stolen_deferred_auth_id_cannot_disturb_its_owner() {
    let proxy = redis_proxy().await;
    let (id, _) = proxy.start_process(&dtr_client(), &unique("u"), None).await;
    let thief = Auth::Basic("dtr-client", "not-the-secret");
    for _ in 0..15 {
        assert_error(&proxy.poll(&thief, &id).await, 401, "invalid_client");
    }
    // The thief's polls neither counted as the owner's nor revoked the id.
    let owner = proxy.poll(&dtr_client(), &id).await;
    assert_error(&owner, 400, "authorization_pending");
    assert_eq!(proxy.cancel(&thief, &id).await.status, 401);
    wait_interval(1).await;
    assert_error(&proxy.poll(&dtr_client(), &id).await, 400, "authorization_pending");
}

// ---- Secrets at rest and in logs --------------------------------------------------------

/// Every value under the proxy's key prefix, as text.
fn redis_dump(prefix: &str) -> String {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-u", &redis().url, "--no-raw"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut dump = String::new();
    for key in cli(&["--scan", "--pattern", &format!("{prefix}:*")]).lines() {
        let key = key.trim().trim_matches('"');
        dump.push_str(key);
        dump.push('\n');
        let value = match cli(&["type", key]).trim() {
            "string" => cli(&["get", key]),
            "set" => cli(&["smembers", key]),
            "zset" => cli(&["zrange", key, "0", "-1"]),
            "hash" => cli(&["hgetall", key]),
            "list" => cli(&["lrange", key, "0", "-1"]),
            _ => String::new(),
        };
        dump.push_str(&value);
    }
    dump
}

#[tokio::test]
async fn a_redis_dump_yields_nothing_usable() {
    let prefix = unique("dump");
    let proxy = start(Options::new(StoreKind::Redis).env("DTR_REDIS_KEY_PREFIX", &prefix)).await;
    // A live process, a deferred code not yet exchanged, and a login in progress.
    let (id, exchange) = proxy
        .start_process(&dtr_client(), &unique("u"), Some("notification-token-4f2a"))
        .await;
    let (code, _) = proxy.deferred_code("dtr-client", &unique("u")).await;
    let started = proxy
        .http
        .get(proxy.url("/protocol/openid-connect/auth"))
        .query(&proxy.auth_params("dtr-client", "rp-state", "rp-nonce"))
        .send()
        .await
        .unwrap();
    assert!(started.status().is_redirection() || started.status().is_success());
    let interim = exchange.json["interim_id_token"].as_str().unwrap().to_owned();

    let dump = redis_dump(&prefix);
    assert!(dump.lines().count() > 5, "the dump holds the records:\n{dump}");
    for secret in [
        id.as_str(),
        code.as_str(),
        "notification-token-4f2a",
        "dtr-client-secret",
        interim.as_str(),
    ] {
        assert!(!dump.contains(secret), "{secret} is readable in the store");
    }
    // Whatever token-like string the dump holds, none opens anything: not at the proxy as a
    // deferred_auth_id or deferred_code, not at the OP as a refresh token.
    let candidates: std::collections::BTreeSet<&str> = dump
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|s| s.len() >= 20)
        .collect();
    assert!(!candidates.is_empty());
    let op_token = format!(
        "http://127.0.0.1:{}/realms/{}/protocol/openid-connect/token",
        op().port,
        proxy.realm
    );
    for candidate in candidates {
        let poll = proxy.poll(&dtr_client(), candidate).await;
        assert_error(&poll, 400, "invalid_grant");
        let exchange = proxy.exchange(&dtr_client(), candidate, "x", None).await;
        assert_error(&exchange, 400, "invalid_grant");
        let refresh = proxy
            .post_form(
                &op_token,
                &dtr_client(),
                &[("grant_type", "refresh_token"), ("refresh_token", candidate)],
                None,
            )
            .await;
        assert_error(&refresh, 400, "invalid_grant");
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let pings = ping_receiver(vec![]).await;
    let clients = json!([
        {"client_id": "dtr-client", "notification_endpoint": pings.url},
        {"client_id": "dtr-jwt", "jwks": {"keys": [client_jwk()]}},
        {"client_id": "dtr-public"},
    ]);
    let (proxy, _child, log) = start_binary(
        env!("CARGO_BIN_EXE_dtr-proxy"),
        clients,
        &[("DTR_LOG", "debug"), ("DTR_DEFAULT_INTERVAL", "1")],
    )
    .await;
    let mut secrets: Vec<String> = vec![
        "dtr-client-secret".into(),
        WEBHOOK_SECRET.into(),
        WEBHOOK_SECRET.trim_start_matches("whsec_").into(),
    ];

    // Secret-based client with a ping, through to the final tokens.
    let user = unique("u");
    let (code, verifier) = proxy.deferred_code("dtr-client", &user).await;
    secrets.push(code.clone());
    let notification_token = "notification-token-9c1e";
    secrets.push(notification_token.into());
    let key = DpopKey::generate();
    let exchange_proof = key.proof("POST", &proxy.token_url());
    secrets.push(exchange_proof.clone());
    let exchange = proxy
        .token(
            &dtr_client(),
            &[
                ("grant_type", GRANT),
                ("deferred_code", &code),
                ("code_verifier", &verifier),
                ("deferred_notification_token", notification_token),
            ],
            Some(&exchange_proof),
        )
        .await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().unwrap().to_owned();
    secrets.push(id.clone());
    secrets.push(exchange.json["interim_id_token"].as_str().unwrap().to_owned());
    let wrong = proxy.poll(&Auth::Basic("dtr-client", "wrong-secret-5d1"), &id).await;
    assert_eq!(wrong.status, 401);
    secrets.push("wrong-secret-5d1".into());
    assert_eq!(
        proxy
            .complete(&json!({"outcome": "approved", "sub": user}))
            .await
            .status,
        200
    );
    assert!(pings.wait_for(1, Duration::from_secs(10)).await, "ping");
    wait_interval(1).await;
    let final_proof = key.proof("POST", &proxy.token_url());
    secrets.push(final_proof.clone());
    let tokens = poll_with(&proxy, &dtr_client(), &id, &final_proof).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    for name in ["access_token", "refresh_token", "id_token"] {
        secrets.push(tokens.json[name].as_str().unwrap().to_owned());
    }

    // An assertion-based client and a public one, pending and cancelled.
    let assertion = client_assertion("dtr-jwt", &proxy.token_url());
    secrets.push(assertion.clone());
    let (jwt_id, _) = proxy.start_process(&Auth::Jwt("dtr-jwt"), &unique("u"), None).await;
    secrets.push(jwt_id.clone());
    let pending = poll_with_assertion(&proxy, &jwt_id, &assertion).await;
    assert_error(&pending, 400, "authorization_pending");
    let (public_id, _) = proxy.start_process(&public(), &unique("u"), None).await;
    secrets.push(public_id.clone());
    assert_eq!(proxy.cancel(&public(), &public_id).await.status, 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let output = log.lock().unwrap().clone();
    assert!(
        output.contains("DEBUG") || output.contains("\"level\":\"DEBUG\""),
        "debug logging is on:\n{output}"
    );
    for secret in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "a secret reached the logs: {secret}\n{output}"
        );
    }
}
