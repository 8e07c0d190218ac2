//! The deferred flow against a real Keycloak (the version `scripts/keycloak.sh` fetches, the
//! realm of `config/keycloak/dtr-realm.json`) through the real dtr-proxy binary: a browser
//! login on Keycloak's own login page, the exchange, polls, the verification service's part
//! (a user attribute set through the Admin REST API, then the signed completion webhook), and
//! the final tokens fresh from Keycloak.

mod common;

use std::time::{Duration, Instant};

use common::keycloak::{keycloak, LONG_INTERVAL, REALM, SHORT_EXPIRES_IN, TIMING_REALM, USER_PASSWORD};
use common::*;
use serde_json::{json, Value};

const DEFERRED_GRANT: &str = "urn:openid:params:grant-type:deferred";

fn audience_contains(claims: &Value, client_id: &str) -> bool {
    match &claims["aud"] {
        Value::String(aud) => aud == client_id,
        Value::Array(auds) => auds.iter().any(|a| a == client_id),
        _ => false,
    }
}

fn scope_contains(reply: &Value, scope: &str) -> bool {
    reply["scope"]
        .as_str()
        .is_some_and(|s| s.split(' ').any(|s| s == scope))
}

/// One whole deferred flow for a client kind in a profile, proving what the final tokens
/// carry. The IETF profile runs in its own realm (every client there speaks it): a code flow
/// with `completion_mode=deferred`, the exchange answered `authorization_pending` with a
/// `deferral_code`, a ping naming it, and the tokens by the IETF deferred grant.
async fn verified_user_gets_fresh_offline_tokens(profile: Profile, auth: Auth) {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = match profile {
        Profile::OpenId => REALM,
        Profile::Ietf => admin.ietf_realm().await,
    };
    let proxy = bed.proxy_in(realm);
    let rp = proxy.rp(profile);
    let client_id = auth.client_id();
    let username = unique("user");
    let user_id = admin.create_user(realm, &username).await;
    let nonce = unique("nonce");

    let (ack, verifier) = rp.keycloak_ack(client_id, &username, &nonce).await;
    assert_eq!(ack.get("state"), Some("rp-state"));
    assert_eq!(ack.get("iss"), Some(proxy.issuer.as_str()));
    let code = ack.get(rp.code_param()).expect("the proxy's code").to_owned();
    match profile {
        Profile::OpenId => assert_eq!(ack.get("code"), None, "Keycloak's code never reaches the RP"),
        Profile::Ietf => {
            assert_eq!(ack.get("deferred_code"), None);
            assert!(
                code.starts_with("deferred."),
                "Keycloak's code never reaches the RP: {code}"
            );
        }
    }

    let exchange = rp.exchange(&auth, &code, &verifier, Some("notify-me")).await;
    let id = rp
        .id_of(&exchange)
        .unwrap_or_else(|| panic!("{} {}", exchange.status, exchange.json));
    assert!(exchange.json["access_token"].is_null(), "{}", exchange.json);
    let interim = match profile {
        Profile::OpenId => {
            let interim = jwt_claims(exchange.json["interim_id_token"].as_str().expect("interim_id_token"));
            assert_eq!(interim["sub"], user_id.as_str());
            assert_eq!(interim["nonce"], nonce.as_str());
            assert_eq!(interim["iss"], proxy.issuer.as_str());
            assert!(audience_contains(&interim, client_id), "{interim}");
            assert!(
                interim.get("identity_verified").is_none(),
                "not verified yet: {interim}"
            );
            Some(interim)
        }
        Profile::Ietf => {
            assert!(exchange.json["interim_id_token"].is_null(), "{}", exchange.json);
            None
        }
    };
    // The grant the proxy holds is an offline session in Keycloak.
    assert_eq!(admin.offline_sessions(realm, &user_id, client_id).await.len(), 1);

    let pending = rp.poll(&auth, &id).await;
    assert_eq!(
        (pending.status, pending.error()),
        (400, "authorization_pending"),
        "{}",
        pending.json
    );

    // The verification service: the result into Keycloak first, then the webhook.
    admin
        .set_attributes(
            realm,
            &user_id,
            &[("identity_verified", "true"), ("verified_at", "2026-01-02T03:04:05Z")],
        )
        .await;
    let completed = proxy
        .complete(&json!({"outcome": "approved", "sub": user_id, "client_id": client_id}))
        .await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    assert_eq!(completed.json["changed"].as_array().map(Vec::len), Some(1));
    assert!(bed.wait_for_ping(&id, Duration::from_secs(10)).await, "no ping");
    let pings = bed.pings_for(&id);
    assert_eq!(pings[0].0.as_deref(), Some("Bearer notify-me"));
    assert_eq!(pings[0].1, json!({rp.id_param(): id}));

    wait_interval(1).await;
    let tokens = rp.poll(&auth, &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    let id_token = jwt_claims(tokens.json["id_token"].as_str().expect("id_token"));
    let access_token = jwt_claims(tokens.json["access_token"].as_str().expect("access_token"));
    let refresh_token = jwt_claims(tokens.json["refresh_token"].as_str().expect("refresh_token"));
    assert_eq!(id_token["identity_verified"], true, "{id_token}");
    assert_eq!(id_token["verified_at"], "2026-01-02T03:04:05Z");
    assert_eq!(access_token["identity_verified"], true, "{access_token}");
    assert_eq!(id_token["nonce"], nonce.as_str(), "the RP's nonce: {id_token}");
    assert_eq!(id_token["sub"], user_id.as_str());
    assert_eq!(id_token["iss"], proxy.issuer.as_str());
    assert_eq!(access_token["iss"], proxy.issuer.as_str());
    assert!(audience_contains(&id_token, client_id), "{id_token}");
    if let Some(interim) = interim {
        assert!(id_token["iat"].as_u64() > interim["iat"].as_u64(), "fresh at release");
    }
    // Keycloak's offline grant: typ Offline, offline_access granted, no refresh expiry.
    assert_eq!(refresh_token["typ"], "Offline", "{refresh_token}");
    assert!(scope_contains(&tokens.json, "offline_access"), "{}", tokens.json);
    assert_eq!(tokens.json["refresh_expires_in"], 0);

    if let Auth::Public(_) = auth {
        assert_eq!(tokens.json["token_type"], "DPoP", "{}", tokens.json);
        assert_eq!(access_token["cnf"]["jkt"], default_dpop_key().jkt().as_str());
    } else {
        assert_eq!(tokens.json["token_type"], "Bearer", "{}", tokens.json);
    }

    wait_interval(1).await;
    let spent = rp.poll(&auth, &id).await;
    assert_eq!((spent.status, spent.error()), (400, "invalid_grant"));

    // The revocation endpoint, which the IETF profile cancels at, still takes Keycloak's own
    // tokens to Keycloak: the delivered offline grant is revoked there.
    let refresh_token = tokens.json["refresh_token"].as_str().expect("refresh_token");
    let form = [("token", refresh_token), ("token_type_hint", "refresh_token")];
    let revoked = proxy.post_form(&proxy.revocation_url(), &auth, &form, None).await;
    assert_eq!(revoked.status, 200, "{}", revoked.json);
    assert!(
        admin.offline_sessions(realm, &user_id, client_id).await.is_empty(),
        "revoked at Keycloak"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_basic_client_gets_verified_offline_tokens() {
    verified_user_gets_fresh_offline_tokens(Profile::OpenId, dtr_client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_client_gets_verified_offline_tokens() {
    verified_user_gets_fresh_offline_tokens(Profile::OpenId, Auth::Post("dtr-post", "dtr-post-secret")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_client_gets_verified_offline_tokens() {
    verified_user_gets_fresh_offline_tokens(Profile::OpenId, Auth::Jwt("dtr-jwt")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_dpop_client_gets_verified_tokens_bound_to_its_key() {
    verified_user_gets_fresh_offline_tokens(Profile::OpenId, Auth::Public("dtr-public")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_profile_client_gets_verified_offline_tokens() {
    verified_user_gets_fresh_offline_tokens(Profile::Ietf, dtr_client()).await;
}

/// IETF §8: a deferral code is cancelled by revoking it at Keycloak's revocation endpoint,
/// which the proxy answers itself; the held offline session is given back to Keycloak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_deferral_code_revoked_at_the_revocation_endpoint_cancels_the_process() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = admin.ietf_realm().await;
    let proxy = bed.proxy_in(realm);
    let rp = proxy.rp(Profile::Ietf);
    let username = unique("user");
    let user_id = admin.create_user(realm, &username).await;
    let (ack, verifier) = rp.keycloak_ack("dtr-client", &username, "n-revoke").await;
    let code = ack.get("code").expect("the proxy's code").to_owned();
    let exchange = rp.exchange(&dtr_client(), &code, &verifier, None).await;
    let id = rp.id_of(&exchange).unwrap_or_else(|| panic!("{}", exchange.json));
    assert_eq!(admin.offline_sessions(realm, &user_id, "dtr-client").await.len(), 1);

    let cancelled = rp.cancel(&dtr_client(), &id).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.json);
    wait_interval(1).await;
    let poll = rp.poll(&dtr_client(), &id).await;
    assert_eq!((poll.status, poll.error()), (400, "access_denied"), "{}", poll.json);
    // The held grant goes back with the client's own authentication, in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin.offline_sessions(realm, &user_id, "dtr-client").await.is_empty() {
        assert!(Instant::now() < deadline, "the held offline session was not given back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs a fresh user in for `auth`'s client and exchanges the code.
async fn start_process(proxy: &Proxy, auth: &Auth) -> (String, String) {
    let admin = keycloak().admin().await;
    let username = unique("user");
    let user_id = admin.create_user(&proxy.realm, &username).await;
    let (ack, verifier) = proxy.keycloak_ack(auth.client_id(), &username, "n-1").await;
    let code = ack.get("deferred_code").expect("deferred_code");
    let exchange = proxy.exchange(auth, code, &verifier, None).await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().expect("id").to_owned();
    (id, user_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_poll_error_against_keycloak() {
    let proxy = keycloak().proxy_in(TIMING_REALM);
    let auth = Auth::Post("dtr-post", "dtr-post-secret");
    let (id, user_id) = start_process(&proxy, &auth).await;

    let unknown = proxy.poll(&auth, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!((unknown.status, unknown.error()), (400, "invalid_grant"));
    let wrong_secret = proxy.poll(&Auth::Post("dtr-post", "not-the-secret"), &id).await;
    // 400, not 401: the credentials were not in an Authorization header (RFC 6749 §5.2).
    assert_eq!((wrong_secret.status, wrong_secret.error()), (400, "invalid_client"));
    let foreign = proxy.poll(&dtr_client(), &id).await;
    assert_eq!((foreign.status, foreign.error()), (400, "invalid_grant"));
    assert_eq!(foreign.json["error_description"], unknown.json["error_description"]);

    wait_interval(LONG_INTERVAL).await;
    let pending = proxy.poll(&auth, &id).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);
    let too_fast = proxy.poll(&auth, &id).await;
    assert_eq!(
        (too_fast.status, too_fast.error()),
        (400, "slow_down"),
        "{}",
        too_fast.json
    );

    let denied = proxy
        .complete(&json!({"outcome": "denied", "sub": user_id, "error_description": "Document expired"}))
        .await;
    assert_eq!(denied.status, 200, "{}", denied.json);
    assert!(
        keycloak().wait_for_ping(&id, Duration::from_secs(10)).await,
        "denials are pinged"
    );
    wait_interval(LONG_INTERVAL + 5).await;
    let refused = proxy.poll(&auth, &id).await;
    assert_eq!((refused.status, refused.error()), (400, "access_denied"));
    assert_eq!(refused.json["error_description"], "Document expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_process_is_denied_and_never_pinged() {
    let proxy = keycloak().proxy();
    let auth = Auth::Jwt("dtr-jwt");
    let (id, user_id) = start_process(&proxy, &auth).await;
    let cancelled = proxy.cancel(&auth, &id).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.json);
    // A completion after the cancel changes nothing.
    let late = proxy.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_ne!(late.json["changed"].as_array().map(Vec::len), Some(1), "{}", late.json);
    wait_interval(1).await;
    let refused = proxy.poll(&auth, &id).await;
    assert_eq!(
        (refused.status, refused.error()),
        (400, "access_denied"),
        "{}",
        refused.json
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(keycloak().pings_for(&id).is_empty(), "no ping for a cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_keycloaks_with_the_dtr_additions() {
    let bed = keycloak();
    let proxy = bed.proxy();
    let path = "/.well-known/openid-configuration";
    let through: Value = proxy
        .http
        .get(proxy.url(path))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    let own: Value = proxy
        .http
        .get(format!("{}/realms/{REALM}{path}", bed.direct))
        .send()
        .await
        .expect("Keycloak's discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(through["issuer"], proxy.issuer.as_str());
    assert_eq!(own["issuer"], proxy.issuer.as_str(), "Keycloak's hostname is the proxy");
    let has = |key: &str, value: &str| {
        through[key]
            .as_array()
            .is_some_and(|values| values.iter().any(|v| v == value))
    };
    assert!(has("response_types_supported", "deferred_code"), "{through}");
    assert!(has("response_types_supported", "deferred_code code"), "{through}");
    assert!(has("grant_types_supported", DEFERRED_GRANT), "{through}");
    assert_eq!(
        through["deferred_authentication_cancellation_endpoint"],
        proxy.url("/protocol/openid-connect/deferred/cancel")
    );
    // Proofs reach both the proxy and Keycloak: the algorithms both accept, in Keycloak's
    // order (Keycloak also takes ES512, which the proxy does not verify).
    let both: Vec<Value> = own["dpop_signing_alg_values_supported"]
        .as_array()
        .expect("Keycloak advertises DPoP")
        .iter()
        .filter(|alg| alg.as_str().is_some_and(|a| dtr_proxy::dpop::ALGORITHMS.contains(&a)))
        .cloned()
        .collect();
    assert!(both.contains(&json!("ES256")));
    assert_eq!(through["dpop_signing_alg_values_supported"], Value::Array(both));
    for (key, value) in own.as_object().expect("object") {
        let changed = [
            "response_types_supported",
            "grant_types_supported",
            "dpop_signing_alg_values_supported",
        ];
        if !changed.contains(&key.as_str()) {
            assert_eq!(&through[key], value, "{key} changed");
        }
    }
}

/// Where the RPs' client certificates end at the proxy's own TLS port (`DTR_TLS_CLIENT_CA_FILE`),
/// Keycloak never sees one and cannot bind its tokens to it: discovery drops the two claims
/// Keycloak makes about that (RFC 8705 §3.3 and §5), and keeps everything else as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_drops_keycloaks_certificate_binding_where_certificates_end_at_the_proxy() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let bed = keycloak();
    let issue = |ca: bool, issuer: Option<&Issuer<'static, KeyPair>>| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = match issuer {
            Some(issuer) => params.clone().signed_by(&key, issuer).expect("leaf"),
            None => params.clone().self_signed(&key).expect("CA"),
        };
        (cert.pem(), key.serialize_pem(), Issuer::new(params, key))
    };
    let (ca_pem, _, ca) = issue(true, None);
    let (cert_pem, key_pem, _) = issue(false, Some(&ca));
    let (rp_ca_pem, _, _) = issue(true, None);
    let dir = common::faults::ScratchDir::new("kc-mtls");
    for (name, contents) in [("tls.crt", &cert_pem), ("tls.key", &key_pem), ("rps.pem", &rp_ca_pem)] {
        std::fs::write(dir.path(name), contents).expect("write");
    }
    let replica = bed
        .replica_with(
            bed.port(),
            REALM,
            vec![
                ("DTR_TLS_CERT_FILE".into(), dir.path("tls.crt")),
                ("DTR_TLS_KEY_FILE".into(), dir.path("tls.key")),
                ("DTR_TLS_CLIENT_CA_FILE".into(), dir.path("rps.pem")),
            ],
        )
        .await;
    let https = client_builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let path = format!("/realms/{REALM}/.well-known/openid-configuration");
    let fetch = |url: String| {
        let https = https.clone();
        async move {
            let response = https.get(&url).send().await.expect("discovery");
            assert_eq!(response.status(), 200, "{url}");
            response.json::<Value>().await.expect("json")
        }
    };
    let through = fetch(format!("{}{path}", replica.base.replace("http://", "https://"))).await;
    let own = fetch(format!("{}{path}", bed.direct)).await;
    let bound = ["tls_client_certificate_bound_access_tokens", "mtls_endpoint_aliases"];
    for key in bound {
        assert!(own.get(key).is_some(), "Keycloak advertises {key}: {own}");
        assert!(through.get(key).is_none(), "{key} left in: {through}");
    }
    let changed = [
        "response_types_supported",
        "grant_types_supported",
        "dpop_signing_alg_values_supported",
    ];
    for (key, value) in own.as_object().expect("object") {
        if !changed.contains(&key.as_str()) && !bound.contains(&key.as_str()) {
            assert_eq!(&through[key], value, "{key} changed");
        }
    }
}

/// Keycloak's SSO session dies long before a verification finishes; the held offline grant
/// does not. A realm from the same file with an 8 s SSO session proves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_works_after_the_sso_session_is_gone() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = unique("sso");
    admin
        .create_realm_from_file(&realm, json!({"ssoSessionIdleTimeout": 8, "ssoSessionMaxLifespan": 8}))
        .await;
    let proxy = bed.proxy_in(&realm);
    let auth = dtr_client();
    let logged_in = Instant::now();
    let (id, user_id) = start_process(&proxy, &auth).await;
    admin
        .set_attributes(&realm, &user_id, &[("identity_verified", "true")])
        .await;

    tokio::time::sleep(Duration::from_secs(10).saturating_sub(logged_in.elapsed())).await;
    let (status, _, sessions) = admin
        .send(
            reqwest::Method::GET,
            &format!("/{realm}/users/{user_id}/sessions"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        sessions.as_array().map(Vec::len),
        Some(0),
        "SSO session over: {sessions}"
    );

    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    let tokens = proxy.poll(&auth, &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    let id_token = jwt_claims(tokens.json["id_token"].as_str().expect("id_token"));
    assert_eq!(id_token["identity_verified"], true, "{id_token}");
    assert_eq!(id_token["sub"], user_id.as_str());
}

/// Keycloak takes a proof only while `iat` is within 25 s in the past and 15 s in the future
/// (DPoPUtil: 10 s lifetime + 15 s skew), a narrower window than the proxy's. A proof that the
/// proxy accepts but Keycloak finds stale must not cost the RP its tokens: Keycloak's refusal
/// reaches the RP, the process stays approved, and a fresh proof gets the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_too_old_for_keycloak_leaves_the_release_retryable() {
    let bed = keycloak();
    let proxy = bed.proxy();
    let auth = Auth::Public("dtr-public");
    let (id, user_id) = start_process(&proxy, &auth).await;
    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);

    wait_interval(1).await;
    let key = default_dpop_key();
    let (header, mut claims) = key.parts("POST", &proxy.token_url());
    claims["iat"] = json!(now_s() - 40);
    let stale = key.sign(&header, &claims);
    let form = [("grant_type", DEFERRED_GRANT), ("deferred_auth_id", id.as_str())];
    let refused = proxy.token(&auth, &form, Some(&stale)).await;
    // Keycloak's own answer, relayed: it reports every bad proof at the token endpoint as
    // invalid_request (DPoPUtil.handleDPoPHeader), not RFC 9449's invalid_dpop_proof.
    assert_eq!(
        (refused.status, refused.error()),
        (400, "invalid_request"),
        "{}",
        refused.json
    );
    assert_eq!(refused.json["error_description"], "DPoP proof is not active");

    wait_interval(1).await;
    let tokens = proxy.poll(&auth, &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert_eq!(tokens.json["token_type"], "DPoP");
}

/// Keycloak answers `prompt=none` without a session with an error redirect carrying the
/// proxy's handle; the RP gets the error, its own state and the public `iss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_error_redirect_reaches_the_rp_translated() {
    let proxy = keycloak().proxy();
    let (_, challenge) = pkce();
    let mut params = proxy.auth_params("dtr-client", "rp-state", "n-1");
    params.extend([
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("prompt", "none"),
    ]);
    let answer = proxy.keycloak_login(&params, "nobody", "none").await;
    let ack = answer.ack();
    assert_eq!(ack.get("error"), Some("login_required"), "{ack:?}");
    assert_eq!(ack.get("state"), Some("rp-state"));
    assert_eq!(ack.get("iss"), Some(proxy.issuer.as_str()));
    assert_eq!(ack.get("deferred_code"), None);
}

/// The acknowledgment in `form_post`, with Keycloak's session cookies kept on the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_post_acknowledgment_after_keycloak_login() {
    let bed = keycloak();
    let proxy = bed.proxy();
    let username = unique("user");
    bed.admin().await.create_user(REALM, &username).await;
    let (verifier, challenge) = pkce();
    let mut params = proxy.auth_params("dtr-post", "rp-state", "n-1");
    params.extend([
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("response_mode", "form_post"),
    ]);
    let answer = proxy.keycloak_login(&params, &username, USER_PASSWORD).await;
    let cookies: Vec<&str> = answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("KEYCLOAK_SESSION=")),
        "Keycloak's SSO cookie survives the rewrite: {cookies:?}"
    );
    let ack = answer.ack();
    assert_eq!(ack.mode, "form_post");
    assert_eq!(ack.get("state"), Some("rp-state"));
    let code = ack.get("deferred_code").expect("deferred_code");
    let auth = Auth::Post("dtr-post", "dtr-post-secret");
    let exchange = proxy.exchange(&auth, code, &verifier, None).await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
}

/// PAR is allowed on the DTR clients: a plain code-flow request pushed through the proxy
/// reaches Keycloak's endpoint untouched (client authentication included).
/// Pushes an authorization request of `response_type` for dtr-client to Keycloak's PAR
/// endpoint through the proxy; the answer and the PKCE verifier.
async fn push(proxy: &Proxy, response_type: &str) -> (Reply, String) {
    let (verifier, challenge) = pkce();
    let form = [
        ("response_type", response_type),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid"),
        ("state", "s"),
        ("nonce", "n"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let url = proxy.url("/protocol/openid-connect/ext/par/request");
    (proxy.post_form(&url, &dtr_client(), &form, None).await, verifier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pushed_authorization_request_passes_through() {
    let proxy = keycloak().proxy();
    let (pushed, _) = push(&proxy, "code").await;
    assert_eq!(pushed.status, 201, "{}", pushed.json);
    assert!(pushed.json["request_uri"]
        .as_str()
        .is_some_and(|uri| uri.starts_with("urn:ietf:params:oauth:request_uri:")));
}

/// A process nobody completes expires: `expired_token`, and no ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_expires_after_its_lifetime_without_a_ping() {
    let bed = keycloak();
    let proxy = bed.proxy_in(TIMING_REALM);
    let auth = dtr_client();
    let (id, user_id) = start_process(&proxy, &auth).await;
    let exchanged = Instant::now();
    wait_interval(1).await;
    let pending = proxy.poll(&auth, &id).await;
    assert_eq!(pending.error(), "authorization_pending", "{}", pending.json);
    let lifetime = Duration::from_secs(SHORT_EXPIRES_IN) + Duration::from_millis(500);
    tokio::time::sleep(lifetime.saturating_sub(exchanged.elapsed())).await;
    let expired = proxy.poll(&auth, &id).await;
    assert_eq!(
        (expired.status, expired.error()),
        (400, "expired_token"),
        "{}",
        expired.json
    );
    // A completion after expiry finds nothing open and pings nobody.
    let late = proxy.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_ne!(late.json["changed"].as_array().map(Vec::len), Some(1), "{}", late.json);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bed.pings_for(&id).is_empty(), "no ping for an expired process");
}

/// Keycloak processes the final refresh but its answer is lost on the way back: the RP gets
/// a retryable 5xx, the process stays approved, and its next poll (here through another
/// replica) gets the tokens, because the held offline token is still good.
async fn release_after_a_lost_answer(realm: &str) {
    let tokens = release_after_a_lost_answer_retry(realm).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert!(tokens.json["id_token"].is_string());
}

/// An approved process whose first release loses its answer; the retry's reply.
async fn release_after_a_lost_answer_retry(realm: &str) -> Reply {
    let bed = keycloak();
    let proxy = bed.proxy_in(realm);
    let auth = dtr_client();
    let (id, user_id) = start_process(&proxy, &auth).await;
    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);

    let relay = Relay::start(bed.port()).await;
    relay.set_swallow_answers(true);
    let replica = bed.replica(relay.port, realm).await;
    wait_interval(1).await;
    let lost = replica.poll(&auth, &id).await;
    assert!(
        lost.status >= 500 && lost.headers.contains_key("retry-after"),
        "{} {}",
        lost.status,
        lost.json
    );

    wait_interval(1).await;
    let retry = proxy.poll(&auth, &id).await;
    if retry.status == 200 {
        let id_token = jwt_claims(retry.json["id_token"].as_str().expect("id_token"));
        assert_eq!(id_token["sub"], user_id.as_str());
    }
    retry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_to_the_final_refresh_leaves_the_release_retryable() {
    release_after_a_lost_answer(REALM).await;
}

/// A confidential client may use DPoP too: the process is bound to its key at the exchange,
/// and Keycloak binds the final access token to the key of the releasing poll's proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_client_with_dpop_gets_a_bound_access_token() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let proxy = bed.proxy();
    let auth = Auth::Jwt("dtr-jwt");
    let key = DpopKey::generate();
    let username = unique("user");
    let user_id = admin.create_user(REALM, &username).await;
    let (ack, verifier) = proxy.keycloak_ack("dtr-jwt", &username, "n-1").await;
    let code = ack.get("deferred_code").expect("deferred_code");
    let exchange_form = [
        ("grant_type", DEFERRED_GRANT),
        ("deferred_code", code),
        ("code_verifier", verifier.as_str()),
    ];
    let proof = key.proof("POST", &proxy.token_url());
    let exchange = proxy.token(&auth, &exchange_form, Some(&proof)).await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().expect("id");
    let poll_form = [("grant_type", DEFERRED_GRANT), ("deferred_auth_id", id)];

    wait_interval(1).await;
    let unproven = proxy.poll(&auth, id).await;
    assert_eq!(
        unproven.error(),
        "invalid_dpop_proof",
        "bound at the exchange: {}",
        unproven.json
    );
    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    wait_interval(1).await;
    let proof = key.proof("POST", &proxy.token_url());
    let tokens = proxy.token(&auth, &poll_form, Some(&proof)).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    assert_eq!(tokens.json["token_type"], "DPoP", "{}", tokens.json);
    let access_token = jwt_claims(tokens.json["access_token"].as_str().expect("access_token"));
    assert_eq!(access_token["cnf"]["jkt"], key.jkt().as_str());
}

/// A realm whose name needs percent-encoding in the path: the acknowledgment's `iss` is
/// Keycloak's own issuer and the flow completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_name_with_a_space_works_end_to_end() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = format!("{} x", unique("sp"));
    admin.create_realm_from_file(&realm, json!({})).await;
    let encoded: String = url::form_urlencoded::byte_serialize(realm.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    let proxy = bed.proxy_in(&encoded);
    let discovery: Value = proxy
        .http
        .get(proxy.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    let issuer = discovery["issuer"].as_str().expect("issuer").to_owned();
    let auth = dtr_client();
    let username = unique("user");
    let user_id = admin.create_user(&encoded, &username).await;
    let (ack, verifier) = proxy.keycloak_ack("dtr-client", &username, "n-1").await;
    assert_eq!(ack.get("iss"), Some(issuer.as_str()), "{ack:?}");
    let code = ack.get("deferred_code").expect("deferred_code");
    let exchange = proxy.exchange(&auth, code, &verifier, None).await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().expect("id");
    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    wait_interval(1).await;
    let tokens = proxy.poll(&auth, id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    let id_token = jwt_claims(tokens.json["id_token"].as_str().expect("id_token"));
    assert_eq!(id_token["iss"], issuer.as_str());
}

// What the proxy does not yet get right against Keycloak (issue 8, second half). Each test
// states the behaviour wanted; the reason names what happens today.

/// A fresh realm from the operators' file for a test that reconfigures a client.
async fn own_realm(admin: &common::keycloak::Admin, changes: Value) -> String {
    let realm = unique("cfg");
    admin.create_realm_from_file(&realm, changes).await;
    realm
}

/// The offline grant is never silently an online one. A client without the offline_access
/// scope: Keycloak refuses the rewritten request (invalid_scope names the scope) and the RP
/// gets that error, translated, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_offline_access_scope_is_refused_at_authorization() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = own_realm(&admin, json!({})).await;
    let (_, _, scopes) = admin
        .send(reqwest::Method::GET, &format!("/{realm}/client-scopes"), None)
        .await;
    let offline = scopes
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "offline_access"))
        .and_then(|s| s["id"].as_str())
        .expect("offline_access scope")
        .to_owned();
    let uuid = admin.client_uuid(&realm, "dtr-client").await;
    let (status, _, _) = admin
        .send(
            reqwest::Method::DELETE,
            &format!("/{realm}/clients/{uuid}/optional-client-scopes/{offline}"),
            None,
        )
        .await;
    assert_eq!(status, 204);

    let proxy = bed.proxy_in(&realm);
    let username = unique("user");
    admin.create_user(&realm, &username).await;
    let (ack, _) = proxy.keycloak_ack("dtr-client", &username, "n-1").await;
    assert_eq!(ack.get("error"), Some("invalid_scope"), "{ack:?}");
    assert!(
        ack.get("error_description")
            .is_some_and(|d| d.contains("offline_access")),
        "{ack:?}"
    );
    assert_eq!(ack.get("state"), Some("rp-state"));
}

/// A user without the offline_access role (not in default-roles-<realm>): Keycloak refuses
/// the code (not_allowed, TokenManager's "Offline tokens not allowed for the user or client")
/// and the RP gets that answer at the exchange, never a process on an online grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_without_offline_access_role_is_refused_at_the_exchange() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = own_realm(&admin, json!({})).await;
    let username = unique("user");
    let user_id = admin.create_user(&realm, &username).await;
    let roles_path = format!("/{realm}/users/{user_id}/role-mappings/realm");
    let (_, _, roles) = admin.send(reqwest::Method::GET, &roles_path, None).await;
    let (status, _, _) = admin.send(reqwest::Method::DELETE, &roles_path, Some(&roles)).await;
    assert_eq!(status, 204, "{roles}");

    let proxy = bed.proxy_in(&realm);
    let (ack, verifier) = proxy.keycloak_ack("dtr-client", &username, "n-1").await;
    let code = ack.get("deferred_code").expect("deferred_code");
    let exchange = proxy.exchange(&dtr_client(), code, &verifier, None).await;
    assert_eq!(
        (exchange.status, exchange.error()),
        (400, "not_allowed"),
        "{}",
        exchange.json
    );
    assert!(admin.offline_sessions(&realm, &user_id, "dtr-client").await.is_empty());
}

/// Without the "Nonce backwards compatible" mapper Keycloak drops `nonce` from refreshed ID
/// tokens. The first exchange of the client probes one refresh and refuses loudly, naming the
/// mapper, instead of handing out a final ID token an RP would reject days later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_id_token_without_the_rps_nonce_is_never_handed_out() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = own_realm(&admin, json!({})).await;
    let uuid = admin.client_uuid(&realm, "dtr-client").await;
    let mappers_path = format!("/{realm}/clients/{uuid}/protocol-mappers/models");
    let (_, _, mappers) = admin.send(reqwest::Method::GET, &mappers_path, None).await;
    let nonce_mapper = mappers
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|m| m["protocolMapper"] == "oidc-nonce-backwards-compatible-mapper")
        })
        .and_then(|m| m["id"].as_str())
        .expect("nonce mapper")
        .to_owned();
    let (status, _, _) = admin
        .send(reqwest::Method::DELETE, &format!("{mappers_path}/{nonce_mapper}"), None)
        .await;
    assert_eq!(status, 204);

    let proxy = bed.proxy_in(&realm);
    let auth = dtr_client();
    let username = unique("user");
    let user_id = admin.create_user(&realm, &username).await;
    let (ack, verifier) = proxy.keycloak_ack("dtr-client", &username, "rp-nonce").await;
    let code = ack.get("deferred_code").expect("deferred_code");
    let exchange = proxy.exchange(&auth, code, &verifier, None).await;
    assert_eq!(
        (exchange.status, exchange.error()),
        (502, "server_error"),
        "{}",
        exchange.json
    );
    assert!(
        exchange.json["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("Nonce backwards compatible")),
        "{}",
        exchange.json
    );
    assert!(
        exchange.json.get("deferred_auth_id").is_none(),
        "no process on such a grant"
    );
    let _ = user_id;
}

/// A cancel gives the held grant back at once (RFC 7009 with the RP's own credentials): the
/// offline session does not outlive the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_grant_is_revoked_when_the_process_is_cancelled() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let proxy = bed.proxy();
    let auth = dtr_client();
    let (id, user_id) = start_process(&proxy, &auth).await;
    assert_eq!(admin.offline_sessions(REALM, &user_id, "dtr-client").await.len(), 1);
    assert_eq!(proxy.cancel(&auth, &id).await.status, 200);
    assert!(
        offline_sessions_end(&admin, &user_id).await,
        "the offline session outlives the cancelled process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8414_metadata_carries_the_dtr_additions() {
    let proxy = keycloak().proxy();
    let mut wrong = Vec::new();
    for url in [
        proxy.url("/.well-known/oauth-authorization-server"),
        format!("{}/.well-known/oauth-authorization-server/realms/{REALM}", proxy.base),
    ] {
        let response = proxy.http.get(&url).send().await.expect("metadata");
        let status = response.status().as_u16();
        let document: Value = response.json().await.unwrap_or(Value::Null);
        let has_dtr = document["response_types_supported"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "deferred_code"));
        if status != 200 || !has_dtr {
            wrong.push(format!("{url}: {status} {}", document["response_types_supported"]));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A `deferred_code` request pushed to Keycloak's PAR endpoint is rewritten there; the login
/// through `request_uri` on Keycloak's own page ends in the RP's acknowledgment, and the code
/// is exchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_code_request_pushed_to_par_is_acknowledged() {
    let bed = keycloak();
    let proxy = bed.proxy();
    let username = unique("user");
    bed.admin().await.create_user(REALM, &username).await;
    let (pushed, verifier) = push(&proxy, "deferred_code").await;
    assert_eq!(pushed.status, 201, "{}", pushed.json);
    let request_uri = pushed.json["request_uri"].as_str().expect("request_uri");
    let answer = proxy
        .keycloak_login(
            &[("client_id", "dtr-client"), ("request_uri", request_uri)],
            &username,
            USER_PASSWORD,
        )
        .await;
    let ack = answer.ack();
    assert_eq!(ack.get("state"), Some("s"), "{ack:?}");
    let code = ack.get("deferred_code").expect("deferred_code");
    let exchange = proxy.exchange(&dtr_client(), code, &verifier, None).await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
}

/// With "Revoke Refresh Token" the held offline token is single use: the lost release may have
/// spent it, and Keycloak refuses the retry. The verified user is told to start again
/// (`invalid_grant`), never `access_denied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_to_the_final_refresh_with_revoke_refresh_token() {
    let admin = keycloak().admin().await;
    let realm = own_realm(&admin, json!({"revokeRefreshToken": true, "refreshTokenMaxReuse": 0})).await;
    let retry = release_after_a_lost_answer_retry(&realm).await;
    assert_eq!(retry.error(), "invalid_grant", "{}", retry.json);
    assert!(
        retry.json["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("lost")),
        "{}",
        retry.json
    );
}

/// Keycloak treats a second redemption of a code as an attack (CODE_TO_TOKEN_ERROR, the client
/// session dropped): after a lost answer the code is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_to_the_code_exchange_never_redeems_the_code_twice() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = own_realm(&admin, json!({"eventsEnabled": true})).await;
    let proxy = bed.proxy_in(&realm);
    let username = unique("user");
    admin.create_user(&realm, &username).await;
    let (ack, verifier) = proxy.keycloak_ack("dtr-client", &username, "n-1").await;
    let code = ack.get("deferred_code").expect("deferred_code");

    let relay = Relay::start(bed.port()).await;
    relay.set_swallow_answers(true);
    let replica = bed.replica(relay.port, &realm).await;
    let lost = replica.exchange(&dtr_client(), code, &verifier, None).await;
    assert!(lost.status >= 500, "{} {}", lost.status, lost.json);
    let retry = proxy.exchange(&dtr_client(), code, &verifier, None).await;
    let (_, _, errors) = admin
        .send(
            reqwest::Method::GET,
            &format!("/{realm}/events?type=CODE_TO_TOKEN_ERROR"),
            None,
        )
        .await;
    assert_eq!(
        errors.as_array().map(Vec::len),
        Some(0),
        "the retry ({} {}) reached Keycloak: {errors}",
        retry.status,
        retry.json
    );
}

/// A denial by webhook has no RP request at hand: the service account (realm-management
/// `manage-users` only) ends the held offline session through the Admin API at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_process_offline_session_is_ended_by_the_service_account() {
    let bed = keycloak();
    let admin = bed.admin().await;
    let proxy = bed.proxy();
    let auth = dtr_client();
    let (_, user_id) = start_process(&proxy, &auth).await;
    assert_eq!(admin.offline_sessions(REALM, &user_id, "dtr-client").await.len(), 1);
    let denied = proxy
        .complete(&json!({"outcome": "denied", "sub": user_id, "error_description": "Document expired"}))
        .await;
    assert_eq!(denied.status, 200, "{}", denied.json);
    assert!(
        offline_sessions_end(&admin, &user_id).await,
        "the denied process's offline session is still there"
    );
}

/// Waits (5 s at most) until the user has no offline session of dtr-client left.
async fn offline_sessions_end(admin: &common::keycloak::Admin, user_id: &str) -> bool {
    for _ in 0..50 {
        if admin.offline_sessions(REALM, user_id, "dtr-client").await.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
