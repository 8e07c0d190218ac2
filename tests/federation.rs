//! Federated clients end to end: a test federation (a trust root, an intermediate organisation,
//! a client host serving WebFinger and statements over HTTPS with a test CA), an RP whose
//! client_id is a URL and which nobody registered, through dtr-proxy in front of the stand-in
//! OP — a DTR flow and a plain code flow — and one test per refusal, each with its OAuth error
//! and nothing provisioned.

mod common;

use std::sync::atomic::Ordering;

use common::federation::*;
use common::*;
use serde_json::{json, Value};

const PROVISIONING_SECRET: &str = "provisioning-secret-for-tests-0123";

async fn start_proxy(federation: &Federation, allow_private_targets: bool) -> Proxy {
    let roots = json!([{"id": FED, "jwks": federation.root.set()}]);
    let options = Options::new(StoreKind::Embedded).env(
        "DTR_FEDERATION_ALLOW_PRIVATE_TARGETS",
        allow_private_targets.to_string(),
    );
    start_proxy_with(options, roots).await
}

/// A proxy with `roots` as its trust roots, provisioning into the stand-in OP; in a fresh
/// realm (given its provisioning secret), or in the realm of the proxy `options` succeed.
async fn start_proxy_with(options: Options, roots: Value) -> Proxy {
    let fresh = options.succeeds.is_none();
    let options = options
        .env("DTR_FEDERATION_TRUST_ROOTS", roots.to_string())
        .env("DTR_FEDERATION_CA_FILE", tls().ca_file.display().to_string())
        .env("DTR_FEDERATION_PROVISIONING", "endpoint")
        .env(
            "DTR_FEDERATION_PROVISIONING_URL",
            format!("http://127.0.0.1:{}/admin/provisioning", op().port),
        )
        .env("DTR_FEDERATION_PROVISIONING_SECRET", PROVISIONING_SECRET);
    let proxy = start(options).await;
    if fresh {
        // The same realm again, now with its provisioning secret (creating a realm replaces it).
        let created = client()
            .post(format!("http://127.0.0.1:{}/admin/realms", op().port))
            .json(&json!({"realm": proxy.realm, "issuer": proxy.issuer, "provisioning_secret": PROVISIONING_SECRET}))
            .send()
            .await
            .expect("OP admin");
        assert_eq!(created.status(), 201);
    }
    proxy
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
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("dtr_requests_total{route=\"federation\",outcome=\"admitted\"} 1"),
        "{metrics}"
    );
    let op_client = provisioned(&proxy, &federation.client_id)
        .await
        .expect("provisioned at the OP");
    assert_eq!(op_client["redirect_uris"], json!([REDIRECT_URI]));
    assert_eq!(op_client["token_endpoint_auth_method"], "private_key_jwt");
    assert_eq!(op_client["jwks"], federation.client_key.set());

    let assertion = federation.assertion(&proxy.issuer);
    let (status, exchanged) = post_form(
        &proxy,
        &proxy.token_url(),
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
    let (status, pending) = post_form(&proxy, &proxy.token_url(), &token_form(&assertion, &poll)).await;
    assert_eq!(
        (status, pending["error"].as_str()),
        (400, Some("authorization_pending")),
        "{pending}"
    );

    let completed = proxy.complete(&json!({"outcome": "approved", "sub": "fed-user"})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let assertion = federation.assertion(&proxy.issuer);
    let (status, tokens) = post_form(&proxy, &proxy.token_url(), &token_form(&assertion, &poll)).await;
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
    let (status, tokens) = post_form(
        &proxy,
        &proxy.token_url(),
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
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("dtr_requests_total{route=\"federation\",outcome=\"refused\"} 1"),
        "{metrics}"
    );
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
    let (status, body) = post_form(
        &proxy,
        &proxy.token_url(),
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
    let (status, exchanged) = post_form(
        &proxy,
        &proxy.token_url(),
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
    let (status, tokens) = post_form(
        &proxy,
        &proxy.token_url(),
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
    assert!(
        disabled_within(&proxy, &federation.client_id, 20).await,
        "the expired client is still enabled at the OP"
    );
}

/// Whether the stand-in OP holds the client disabled within `seconds`.
async fn disabled_within(proxy: &Proxy, client_id: &str, seconds: u64) -> bool {
    for _ in 0..seconds * 4 {
        if provisioned(proxy, client_id)
            .await
            .is_some_and(|c| c["enabled"] == false)
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    false
}

/// Logs in with a signed plain code request, so that the client is provisioned.
async fn provision_by_a_login(federation: &Federation, proxy: &Proxy) {
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request", request.as_str()),
    ];
    let ack = proxy.login(&params, "someone", None).await.ack();
    assert!(ack.get("code").is_some(), "{ack:?}");
    let op_client = provisioned(proxy, &federation.client_id).await.expect("provisioned");
    assert_eq!(op_client["enabled"], true);
    assert_eq!(op_client["dtr_owner"], "dtr-proxy");
    assert_eq!(op_client["dtr_federation"], FED);
}

/// Provisions a client at the stand-in OP as someone other than the proxy would.
async fn provision_by_hand(proxy: &Proxy, client_id: &str) {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let response = client()
        .put(format!(
            "http://127.0.0.1:{}/admin/provisioning/{}/{}",
            op().port,
            encode(&proxy.realm),
            encode(client_id)
        ))
        .bearer_auth(PROVISIONING_SECRET)
        .json(&json!({"client_id": client_id, "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "none", "grant_types": ["authorization_code"],
            "response_types": ["code"]}))
        .send()
        .await
        .expect("OP admin");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_client_whose_trust_root_is_removed_is_disabled_at_the_op_after_a_restart() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let mut proxy = start_proxy(&federation, true).await;
    provision_by_a_login(&federation, &proxy).await;
    let foreign = "https://not-ours.example/app";
    provision_by_hand(&proxy, foreign).await;

    // Restarted without the trust root (the last one: provisioning stays configured).
    proxy.running.take().expect("in process").shutdown().await;
    let options = Options::new(StoreKind::Embedded)
        .env("DTR_FEDERATION_ALLOW_PRIVATE_TARGETS", "true")
        .env("DTR_FEDERATION_REALMS", proxy.realm.clone())
        .succeeding(&proxy);
    let restarted = start_proxy_with(options, json!([])).await;
    assert!(
        disabled_within(&restarted, &federation.client_id, 10).await,
        "the client of the removed trust root is still enabled at the OP"
    );
    let metrics = restarted.metrics().await;
    assert!(
        metrics.contains("dtr_federation_clients_disabled_total{reason=\"trust_root_removed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dtr_federation_reconciles_total{result=\"ok\"}"),
        "{metrics}"
    );
    let untouched = provisioned(&restarted, foreign).await.expect("the foreign client");
    assert_eq!(
        untouched["enabled"], true,
        "a client the proxy does not own is left alone"
    );

    // And the proxy refuses the client at its door.
    let request = federation.request_object(
        &federation.client_key,
        &restarted.issuer,
        json!({"response_type": "code", "scope": "openid"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request", request.as_str()),
    ];
    let answer = restarted.login(&params, "someone", None).await;
    assert_eq!(
        (answer.status, answer.location.as_deref()),
        (400, None),
        "{}",
        answer.html
    );
    assert!(answer.html.contains("invalid_client"), "{}", answer.html);
    let (status, body) = federation
        .token(
            &restarted,
            &[
                ("grant_type", "urn:openid:params:grant-type:deferred"),
                ("deferred_auth_id", "x"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client")),
        "{body}"
    );
    assert_eq!(
        provisioned(&restarted, &federation.client_id).await.expect("record")["enabled"],
        false,
        "still disabled"
    );
}

#[tokio::test]
async fn a_client_whose_statement_expired_while_no_replica_ran_is_disabled_at_the_start() {
    let federation = Federation::new().await;
    let inner = federation.root_statement(now_s() + 3600);
    let mut claims = federation.client_claims(&inner, json!({}));
    claims["exp"] = json!(now_s() + 3);
    federation.publish(FED, federation.org.sign(&claims));
    let mut proxy = start_proxy(&federation, true).await;
    provision_by_a_login(&federation, &proxy).await;
    proxy.running.take().expect("in process").shutdown().await;

    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let options = Options::new(StoreKind::Embedded)
        .env("DTR_FEDERATION_ALLOW_PRIVATE_TARGETS", "true")
        .env("DTR_FEDERATION_REALMS", proxy.realm.clone())
        .succeeding(&proxy);
    let restarted = start_proxy_with(options, json!([{"id": FED, "jwks": federation.root.set()}])).await;
    assert!(
        disabled_within(&restarted, &federation.client_id, 10).await,
        "the expired client is still enabled at the OP"
    );
    let metrics = restarted.metrics().await;
    assert!(
        metrics.contains("dtr_federation_clients_disabled_total{reason=\"statement_expired\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_whose_keys_are_at_a_signed_jwks_uri_completes_a_code_flow() {
    let federation = Federation::new().await;
    let client_signing = Key::new("sp-sign-1");
    federation.publish_with_signed_jwks(&client_signing, &client_signing);
    let proxy = start_proxy(&federation, true).await;
    provision_by_a_login(&federation, &proxy).await;
    let op_client = provisioned(&proxy, &federation.client_id).await.expect("provisioned");
    assert_eq!(
        op_client["jwks"],
        federation.client_key.set(),
        "the keys of the signed JWKS reach the OP"
    );
    let request = federation.request_object(
        &federation.client_key,
        &proxy.issuer,
        json!({"response_type": "code", "scope": "openid", "state": "st-sj"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("request", request.as_str()),
    ];
    let ack = proxy.login(&params, "someone", None).await.ack();
    let code = ack.get("code").expect("code").to_owned();
    let (status, tokens) = federation
        .token(
            &proxy,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
            ],
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
}

#[tokio::test]
async fn a_forged_signed_jwks_is_invalid_client() {
    let federation = Federation::new().await;
    let client_signing = Key::new("sp-sign-1");
    // Signed by a key that names the certified kid but is not it.
    let forger = Key::new("sp-sign-1");
    federation.publish_with_signed_jwks(&client_signing, &forger);
    let proxy = start_proxy(&federation, true).await;
    assert_unverifiable(&federation, &proxy).await;
    // The chain itself verified: the refusal is the signed JWKS's (WebFinger, the statement
    // and the document were fetched).
    assert!(federation.host.hits.load(Ordering::Relaxed) >= 3);
}

/// IETF §5.2: the advance hint travels wherever the request's other parameters do, a signed
/// request object (JAR, RFC 9101) included. A federated client's request object is verified by
/// the proxy itself, with the keys of the client's statement (the OP never sees it), so
/// `completion_mode=deferred` inside it is honoured like one in the query; an unsigned object
/// or one naming another client never is.
#[tokio::test]
async fn completion_mode_inside_a_federated_clients_request_object_defers_its_grant() {
    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let roots = json!([{"id": FED, "jwks": federation.root.set()}]);
    let options = Options::new(StoreKind::Embedded)
        .profile(Profile::Ietf)
        .env("DTR_FEDERATION_ALLOW_PRIVATE_TARGETS", "true");
    let proxy = start_proxy_with(options, roots).await;
    let (verifier, challenge) = pkce();
    let inner = json!({"response_type": "code", "scope": "openid", "state": "st-jar",
        "nonce": "n-jar", "code_challenge": challenge, "code_challenge_method": "S256",
        "completion_mode": "deferred"});

    // Refused before anything is deferred: an unsigned object, and one naming another client.
    let mut claims = json!({"iss": federation.client_id, "aud": proxy.issuer, "exp": now_s() + 300,
        "client_id": federation.client_id, "redirect_uri": REDIRECT_URI});
    claims
        .as_object_mut()
        .unwrap()
        .extend(inner.as_object().unwrap().clone());
    let unsigned = format!(
        "eyJhbGciOiJub25lIn0.{}.",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims.to_string())
    );
    let mut foreign = inner.clone();
    foreign["client_id"] = json!("https://other.example/app");
    let foreign = federation.request_object(&federation.client_key, &proxy.issuer, foreign);
    for request in [unsigned, foreign] {
        let params = [
            ("client_id", federation.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT_URI),
            ("request", request.as_str()),
        ];
        let answer = proxy.login(&params, "jar-user", None).await;
        assert_eq!(refusal(&answer), "invalid_request_object", "{answer:?}");
    }

    let request = federation.request_object(&federation.client_key, &proxy.issuer, inner);
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("request", request.as_str()),
    ];
    let ack = proxy.login(&params, "jar-user", None).await.ack();
    assert_eq!(ack.get("state"), Some("st-jar"));
    let code = ack.get("code").expect("code").to_owned();
    assert!(code.starts_with("deferred."), "the proxy's own code: {code}");

    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", verifier.as_str()),
        ("completion_mode", "deferred"),
    ];
    let (status, deferred) = federation.token(&proxy, &exchange).await;
    assert_eq!(
        (status, deferred["error"].as_str()),
        (400, Some("authorization_pending")),
        "{deferred}"
    );
    let deferral_code = deferred["deferral_code"].as_str().expect("deferral_code").to_owned();
    let poll = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:deferred"),
        ("deferral_code", deferral_code.as_str()),
    ];
    let (status, pending) = federation.token(&proxy, &poll).await;
    assert_eq!(
        (status, pending["error"].as_str()),
        (400, Some("authorization_pending")),
        "{pending}"
    );

    let completed = proxy.complete(&json!({"outcome": "approved", "sub": "jar-user"})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, tokens) = federation.token(&proxy, &poll).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        jwt_claims(tokens["id_token"].as_str().expect("id_token"))["nonce"],
        "n-jar"
    );
}
