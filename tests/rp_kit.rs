//! The Rust RP kit (`clients/rust`, crate `dtr-rp`) end to end over real sockets: dtr-proxy in
//! front of the stand-in OP (tests/op), Redis, a browser login, the verification service's
//! signed completion webhook, the RP's notification endpoint served with the kit's ping check,
//! and the lifecycle events checked with the kit's event verifier. Every step runs in both DTR
//! profiles: the OpenID one, and the IETF one in a realm of `DTR_IETF_REALMS` (the tests named
//! `ietf_…`).

mod common;

use std::time::{Duration, Instant};

use common::kit::{
    borrowed, event_receiver, query_pairs, read_ack, rust_example, wait_for_events, EventLog, ExampleRun, KitPings,
};
use common::*;
use dtr_rp::{
    Acknowledgment, Algorithm, AuthorizationOptions, ClientAuth, ClientOptions, DeferredProcess, Dpop, DpopKey,
    DtrClient, DtrError, EventError, EventVerifier, PollResult, PrivateKeyJwt, Profile, ResponseMode,
};
use serde_json::{json, Value};

const EVENTS_SECRET: &str = "whsec_a2l0LWV2ZW50cy1zZWNyZXQtMDEyMzQ1Njc4OWFiY2RlZg==";

struct Bed {
    proxy: Proxy,
    pings: KitPings,
    events: EventLog,
    /// The profile of the realm's clients, and so of the kit's.
    profile: Profile,
}

async fn bed(extra_env: &[(&str, &str)]) -> Bed {
    bed_in(Profile::OpenId, extra_env).await
}

/// A proxy whose realm speaks `profile` (IETF: the realm in `DTR_IETF_REALMS`), with the RP's
/// notification endpoint reading that profile's pings.
async fn bed_in(profile: Profile, extra_env: &[(&str, &str)]) -> Bed {
    let pings = KitPings::start_in(profile).await;
    let (events_url, events) = event_receiver().await;
    let mut options = Options::new(StoreKind::Redis)
        .client(json!({"client_id": "dtr-client", "redirect_uris": [REDIRECT_URI], "notification_endpoint": pings.url}))
        .client(json!({"client_id": "dtr-public", "require_dpop": true, "notification_endpoint": pings.url}))
        .client(json!({"client_id": "dtr-jwt", "jwks": {"keys": [client_jwk()]}, "notification_endpoint": pings.url}))
        .env("DTR_EVENTS_URL", events_url)
        .env("DTR_EVENTS_SECRET", EVENTS_SECRET)
        .profile(match profile {
            Profile::OpenId => common::Profile::OpenId,
            Profile::Ietf => common::Profile::Ietf,
        });
    for (name, value) in extra_env {
        options = options.env(name, *value);
    }
    Bed {
        proxy: start(options).await,
        pings,
        events,
        profile,
    }
}

fn options(client_id: &str, auth: ClientAuth) -> ClientOptions {
    let mut options = ClientOptions::new(client_id, REDIRECT_URI, auth);
    options.allow_insecure_http = true;
    options
}

/// A client of the bed's realm, in the bed's profile.
async fn discover(bed: &Bed, mut options: ClientOptions) -> DtrClient {
    options.profile = bed.profile;
    DtrClient::discover(&bed.proxy.issuer, options)
        .await
        .expect("discovery")
}

async fn secret_client(bed: &Bed) -> DtrClient {
    discover(
        bed,
        options("dtr-client", ClientAuth::SecretBasic("dtr-client-secret".into())),
    )
    .await
}

async fn public_client(bed: &Bed) -> DtrClient {
    let mut options = options("dtr-public", ClientAuth::None);
    options.dpop = Dpop::PerProcess;
    discover(bed, options).await
}

async fn jwt_client(bed: &Bed) -> DtrClient {
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/op/keys/client-jwt.private.pem"
    ))
    .expect("key");
    let kid = client_jwk()["kid"].as_str().map(str::to_owned);
    let key = PrivateKeyJwt::from_pem(&pem, Algorithm::ES256, kid).expect("client key");
    discover(bed, options("dtr-jwt", ClientAuth::PrivateKeyJwt(key))).await
}

/// Authorization URL, browser login, acknowledgment, exchange: a running process whose ping
/// token the RP's endpoint knows.
async fn start_process(
    bed: &Bed,
    rp: &DtrClient,
    username: &str,
    auth: AuthorizationOptions,
) -> (DeferredProcess, String) {
    let (url, pending) = rp.authorization_url(&auth).await.expect("authorization URL");
    let params = query_pairs(&url);
    let answer = bed.proxy.login(&borrowed(&params), username, None).await;
    let ack = read_ack(rp, &answer, &pending).expect("acknowledgment");
    assert!(matches!(ack, Acknowledgment::Deferred { .. }), "{ack:?}");
    let process = rp.exchange(&ack, &pending, None).await.expect("exchange");
    bed.pings.bind(
        &process.deferred_auth_id,
        process.notification_token.as_deref().expect("token"),
    );
    (process, pending.nonce)
}

fn profile() -> AuthorizationOptions {
    AuthorizationOptions {
        scope: "openid profile email".into(),
        ..Default::default()
    }
}

async fn approve(bed: &Bed, username: &str, client_id: &str) {
    let done = bed
        .proxy
        .complete(&json!({"outcome": "approved", "sub": username, "client_id": client_id}))
        .await;
    assert_eq!(done.status, 200, "{}", done.json);
}

/// The verified events of the bed, as (type, data), once `n` arrived.
async fn verified_events(bed: &Bed, n: usize) -> Vec<(String, Value)> {
    let verifier = EventVerifier::new(EVENTS_SECRET).expect("secret");
    let received = wait_for_events(&bed.events, n, Duration::from_secs(15)).await;
    assert!(received.len() >= n, "{} events of {n}", received.len());
    received
        .iter()
        .map(|(headers, body)| {
            let event = verifier.verify(headers, body).expect("signed with the events secret");
            assert!(event.id.starts_with("evt_"), "{}", event.id);
            (event.kind, event.data)
        })
        .collect()
}

#[tokio::test]
async fn client_secret_basic_whole_flow_with_ping_and_lifecycle_events() {
    let bed = bed(&[]).await;
    let rp = secret_client(&bed).await;
    assert_eq!(
        rp.cancellation_endpoint(),
        Some(format!("{}/protocol/openid-connect/deferred/cancel", bed.proxy.issuer).as_str())
    );
    let username = unique("basic");
    let (mut process, nonce) = start_process(&bed, &rp, &username, profile()).await;
    assert!(process.deferred_auth_id.len() >= 22);
    assert_eq!(process.interval, 1);
    assert!(process.expires_at.is_some_and(|e| e > Instant::now()));
    let interim = process.interim_claims.clone().expect("interim ID token");
    assert_eq!(interim.sub, username);
    assert_eq!(interim.nonce.as_deref(), Some(nonce.as_str()));

    assert!(matches!(
        rp.poll(&mut process).await.expect("poll"),
        PollResult::Pending { .. }
    ));
    approve(&bed, &username, "dtr-client").await;
    assert!(
        bed.pings
            .wait_for(&process.deferred_auth_id, Duration::from_secs(15))
            .await,
        "the ping arrived with its bearer token"
    );
    let PollResult::Approved(tokens) = rp.poll(&mut process).await.expect("poll") else {
        panic!("not approved");
    };
    assert_eq!(tokens.claims.sub, username);
    assert_eq!(tokens.claims.nonce.as_deref(), Some(nonce.as_str()));
    assert_eq!(tokens.claims.iss, bed.proxy.issuer);
    assert_eq!(tokens.claims.other["email"], format!("{username}@example.com"));
    assert!(tokens.token_type().is_some_and(|t| t.eq_ignore_ascii_case("bearer")));
    assert!(tokens.access_token().is_some());
    assert!(matches!(
        rp.poll(&mut process).await.expect("poll"),
        PollResult::InvalidGrant { .. }
    ));

    // The verification service heard of the start (with what was requested) and the delivery.
    let events = verified_events(&bed, 2).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["deferred.started", "deferred.delivered"]);
    for (_, data) in &events {
        assert_eq!(data["client_id"], "dtr-client");
        assert_eq!(data["sub"], username.as_str());
        assert_eq!(data["process_id"], events[0].1["process_id"]);
    }
    // A delivery is only believed with its own secret, body and id.
    let (headers, body) = bed.events.lock().unwrap()[0].clone();
    let other = EventVerifier::new("whsec_b3RoZXItc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=").unwrap();
    assert_eq!(other.verify(&headers, &body).unwrap_err(), EventError::BadSignature);
    let verifier = EventVerifier::new(EVENTS_SECRET).unwrap();
    let tampered = String::from_utf8_lossy(&body).replace("dtr-client", "dtr-clienx");
    assert_eq!(
        verifier.verify(&headers, tampered.as_bytes()).unwrap_err(),
        EventError::BadSignature
    );
    let mut renamed = headers.clone();
    renamed.insert("webhook-id", "evt_other".parse().unwrap());
    assert_eq!(verifier.verify(&renamed, &body).unwrap_err(), EventError::BadSignature);
    let strict = EventVerifier::new(EVENTS_SECRET).unwrap();
    let later = headers["webhook-timestamp"].to_str().unwrap().parse::<u64>().unwrap() + 301;
    assert_eq!(strict.verify_at(&headers, &body, later).unwrap_err(), EventError::Stale);
}

#[tokio::test]
async fn public_client_with_dpop_gets_dpop_bound_tokens() {
    let bed = bed(&[]).await;
    let rp = public_client(&bed).await;
    let username = unique("dpop");
    let auth = AuthorizationOptions {
        response_mode: Some(ResponseMode::Fragment),
        ..profile()
    };
    let (mut process, _) = start_process(&bed, &rp, &username, auth).await;
    assert!(process.dpop_key.is_some(), "a key for this process");

    // Another key cannot poll this process.
    let mut stolen = process.clone();
    stolen.dpop_key = Some(DpopKey::generate().unwrap());
    match rp.poll(&mut stolen).await {
        Err(DtrError::OAuth { error, .. }) => assert_eq!(error, "invalid_dpop_proof"),
        other => panic!("a poll with another key: {other:?}"),
    }

    approve(&bed, &username, "dtr-public").await;
    let result = rp
        .wait_for_tokens(&mut process, Some(Duration::from_secs(20)), |_| {})
        .await
        .expect("wait");
    let PollResult::Approved(tokens) = result else {
        panic!("not approved: {result:?}");
    };
    assert_eq!(tokens.claims.sub, username);
    assert!(tokens.token_type().is_some_and(|t| t.eq_ignore_ascii_case("dpop")));
    assert!(tokens.access_token().is_some());
}

#[tokio::test]
async fn private_key_jwt_with_par_and_form_post() {
    let bed = bed(&[]).await;
    let rp = jwt_client(&bed).await;
    let username = unique("jwt");
    let (url, pending) = rp
        .authorization_url(&AuthorizationOptions {
            par: true,
            response_mode: Some(ResponseMode::FormPost),
            ..profile()
        })
        .await
        .expect("pushed request");
    let names: Vec<String> = query_pairs(&url).into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        ["client_id", "request_uri"],
        "the front channel carries only these"
    );
    let answer = bed.proxy.login(&borrowed(&query_pairs(&url)), &username, None).await;
    assert!(answer.location.is_none(), "a form_post page");
    let ack = read_ack(&rp, &answer, &pending).expect("form_post acknowledgment");
    let mut process = rp.exchange(&ack, &pending, None).await.expect("exchange");
    approve(&bed, &username, "dtr-jwt").await;
    let result = rp
        .wait_for_tokens(&mut process, Some(Duration::from_secs(20)), |_| {})
        .await
        .expect("wait");
    let PollResult::Approved(tokens) = result else {
        panic!("not approved: {result:?}");
    };
    assert_eq!(tokens.claims.sub, username);
    assert_eq!(tokens.claims.aud, json!("dtr-jwt"));
}

#[tokio::test]
async fn cancel_denial_and_their_events() {
    let bed = bed(&[]).await;
    for rp in [secret_client(&bed).await, public_client(&bed).await] {
        let (mut process, _) = start_process(&bed, &rp, &unique("cancel"), profile()).await;
        assert!(matches!(
            rp.poll(&mut process).await.unwrap(),
            PollResult::Pending { .. }
        ));
        rp.cancel(&process).await.expect("cancel");
        assert!(matches!(
            rp.poll(&mut process).await.unwrap(),
            PollResult::AccessDenied { .. }
        ));
    }

    let rp = secret_client(&bed).await;
    let username = unique("deny");
    let (mut process, _) = start_process(&bed, &rp, &username, profile()).await;
    let done = bed
        .proxy
        .complete(&json!({"outcome": "denied", "sub": username, "client_id": "dtr-client", "error_description": "Document expired"}))
        .await;
    assert_eq!(done.status, 200);
    assert!(
        bed.pings
            .wait_for(&process.deferred_auth_id, Duration::from_secs(15))
            .await
    );
    match rp
        .wait_for_tokens(&mut process, Some(Duration::from_secs(10)), |_| {})
        .await
    {
        Ok(PollResult::AccessDenied { description }) => {
            assert!(description.unwrap_or_default().contains("Document expired"))
        }
        other => panic!("{other:?}"),
    }

    // started ×3 and cancelled ×2 reach the verification service; a denial is its own.
    let mut kinds: Vec<String> = verified_events(&bed, 5)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "deferred.cancelled",
            "deferred.cancelled",
            "deferred.started",
            "deferred.started",
            "deferred.started"
        ]
    );
}

#[tokio::test]
async fn slow_down_grows_the_interval_and_the_kit_keeps_it() {
    let bed = bed(&[]).await;
    let rp = secret_client(&bed).await;
    let username = unique("slow");
    let (mut process, _) = start_process(&bed, &rp, &username, profile()).await;
    assert!(matches!(
        rp.poll(&mut process).await.unwrap(),
        PollResult::Pending { .. }
    ));
    // Poll at once, without waiting out the interval.
    process.last_poll = None;
    match rp.poll(&mut process).await.unwrap() {
        PollResult::SlowDown { interval, .. } => assert_eq!(interval, 6),
        other => panic!("{other:?}"),
    }
    assert_eq!(process.interval, 6);
    approve(&bed, &username, "dtr-client").await;
    let started = Instant::now();
    let mut waits = Vec::new();
    let result = rp
        .wait_for_tokens(&mut process, Some(Duration::from_secs(30)), |r| {
            waits.push(format!("{r:?}"))
        })
        .await
        .unwrap();
    assert!(matches!(result, PollResult::Approved(_)), "{result:?}");
    assert!(
        waits.iter().all(|w| w.starts_with("Unavailable")),
        "no further slow_down: {waits:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the kit waited the grown interval"
    );
    // And the wait gives up at its limit.
    let (mut other, _) = start_process(&bed, &rp, &unique("timeout"), profile()).await;
    assert!(matches!(
        rp.wait_for_tokens(&mut other, Some(Duration::from_millis(2500)), |_| {})
            .await,
        Err(DtrError::Timeout)
    ));
}

#[tokio::test]
async fn acknowledgments_and_pings_are_checked() {
    let bed = bed(&[]).await;
    let rp = secret_client(&bed).await;
    assert!(rp.metadata().authorization_response_iss_parameter_supported);
    let issuer = bed.proxy.issuer.clone();
    let (_, pending) = rp.authorization_url(&profile()).await.unwrap();
    let ack = |extra: &[(&str, &str)]| {
        let mut params: Vec<(String, String)> = vec![
            ("deferred_code".into(), "abc".into()),
            ("state".into(), pending.state.clone()),
            ("iss".into(), issuer.clone()),
        ];
        for (name, value) in extra {
            params.retain(|(n, _)| n != name);
            if !value.is_empty() {
                params.push((name.to_string(), value.to_string()));
            }
        }
        rp.acknowledgment(params, &pending)
    };
    assert!(matches!(ack(&[]), Ok(Acknowledgment::Deferred { .. })));
    let refused = |result: Result<Acknowledgment, DtrError>| result.unwrap_err().to_string();
    assert!(refused(ack(&[("state", "other")])).contains("state"));
    assert!(refused(ack(&[("iss", "")])).contains("iss"));
    assert!(refused(ack(&[("iss", "http://127.0.0.1:1/realms/x")])).contains("iss"));
    assert!(refused(ack(&[("code", "c")])).contains("both"));
    assert!(refused(ack(&[("deferred_code", "")])).contains("no deferred_code"));
    assert!(matches!(
        ack(&[("deferred_code", ""), ("error", "access_denied")]),
        Err(DtrError::OAuth { error, .. }) if error == "access_denied"
    ));

    // A user who declines at the OP.
    let (url, pending) = rp.authorization_url(&profile()).await.unwrap();
    let answer = bed
        .proxy
        .login(&borrowed(&query_pairs(&url)), &unique("decline"), Some("deny"))
        .await;
    assert!(matches!(
        read_ack(&rp, &answer, &pending),
        Err(DtrError::OAuth { error, .. }) if error == "access_denied"
    ));

    // The RP's endpoint refuses a ping whose bearer token is not the one bound to the id; the
    // proxy's ping then fails, and the poll still works.
    let username = unique("ping");
    let (mut process, _) = start_process(&bed, &rp, &username, profile()).await;
    bed.pings.bind(&process.deferred_auth_id, "not-the-token-we-sent");
    approve(&bed, &username, "dtr-client").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while bed.pings.refused.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bed.pings.refused.lock().unwrap().first(), Some(&401));
    assert!(!bed.pings.wait_for(&process.deferred_auth_id, Duration::ZERO).await);
    assert!(matches!(rp.poll(&mut process).await.unwrap(), PollResult::Approved(_)));
}

/// With `DTR_DPOP_NONCE` the proxy asks for its nonce (`use_dpop_nonce`); the kit retries once
/// with it and keeps it for the next requests. (The exchange and the release forward the RP's
/// proof to the OP, which the stand-in OP refuses with a nonce it did not issue: the process
/// here is started without DPoP and polled with proofs, which the proxy checks all the same.)
#[tokio::test]
async fn dpop_server_nonces_are_fetched_and_reused() {
    let bed = bed(&[("DTR_DPOP_NONCE", "true")]).await;
    let rp = secret_client(&bed).await;
    let (mut process, _) = start_process(&bed, &rp, &unique("nonce"), profile()).await;
    process.dpop_key = Some(DpopKey::generate().unwrap());
    // A client that has not seen the proxy's nonce yet.
    let fresh = secret_client(&bed).await;
    assert!(matches!(
        fresh.poll(&mut process).await.expect("retried with the nonce"),
        PollResult::Pending { .. }
    ));
    assert!(matches!(
        fresh.poll(&mut process).await.expect("the kept nonce"),
        PollResult::Pending { .. }
    ));
    fresh.cancel(&process).await.expect("cancel with a proof and the nonce");
    assert!(matches!(
        fresh.poll(&mut process).await.unwrap(),
        PollResult::AccessDenied { .. }
    ));
    let refusals = bed.proxy.metrics().await;
    assert!(
        refusals.contains("use_dpop_nonce"),
        "the proxy asked for its nonce: {refusals}"
    );
}

/// The kit's command-line example (clients/rust/examples/deferred_login.rs) walks a whole
/// deferred login as a public DPoP client, its request pushed first. (Two workers: the test
/// blocks one reading the example's output while the in-process proxy serves it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_walks_a_whole_deferred_login() {
    let example = rust_example();
    let bed = bed(&[]).await;
    let username = unique("example");
    let mut command = std::process::Command::new(example);
    command
        .env("DTR_ISSUER", &bed.proxy.issuer)
        .env("DTR_CLIENT_ID", "dtr-public")
        .env("DTR_REDIRECT_URI", REDIRECT_URI)
        .env("DTR_INSECURE", "1")
        .env("DTR_PAR", "1")
        .env_remove("DTR_CLIENT_SECRET");
    let mut run = ExampleRun::start(command);
    let url = url::Url::parse(&run.line()).expect("the authorization URL");
    assert!(url.query_pairs().any(|(name, _)| name == "request_uri"), "{url}");
    let answer = bed.proxy.login(&borrowed(&query_pairs(&url)), &username, None).await;
    run.paste(answer.location.as_deref().expect("a redirect to the RP"));
    assert_eq!(run.json(), json!({"step": "exchanged", "sub": username, "interval": 1}));
    assert_eq!(run.json()["step"], "pending");
    approve(&bed, &username, "dtr-public").await;
    assert_eq!(
        run.outcome(),
        json!({
            "step": "approved",
            "sub": username,
            "email": format!("{username}@example.com"),
            "name": format!("User {username}"),
            "token_type": "DPoP",
        })
    );
    assert!(run.finish().success());
}

/// The ID token checks refuse what they should, on tokens the OP really signed: another
/// nonce, another audience, altered claims, a key or algorithm the OP does not publish; and
/// a final token naming another `sub` than the interim one.
#[tokio::test]
async fn id_tokens_are_refused_when_any_check_fails() {
    let bed = bed(&[]).await;
    let rp = secret_client(&bed).await;
    let username = unique("idt");
    let (mut process, nonce) = start_process(&bed, &rp, &username, profile()).await;
    let interim = process.interim_id_token.clone().expect("interim ID token");
    assert_eq!(rp.verify_id_token(&interim, &nonce).await.expect("valid").sub, username);

    let refused = |result: Result<dtr_rp::IdTokenClaims, DtrError>| match result {
        Err(DtrError::InvalidIdToken(why)) => why,
        other => panic!("accepted: {other:?}"),
    };
    assert!(refused(rp.verify_id_token(&interim, "another-nonce").await).contains("nonce"));
    // The same token at another client of the same OP.
    let other = DtrClient::discover(
        &bed.proxy.issuer,
        options("dtr-post", ClientAuth::SecretBasic("dtr-post-secret".into())),
    )
    .await
    .unwrap();
    refused(other.verify_id_token(&interim, &nonce).await);
    // Altered claims under the OP's signature.
    let parts: Vec<&str> = interim.split('.').collect();
    let mut claims = jwt_claims(&interim);
    claims["sub"] = json!("someone-else");
    use base64::Engine;
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let altered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    refused(rp.verify_id_token(&altered, &nonce).await);
    // The same claims signed by a key the OP does not publish, or with a shared secret.
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/op/keys/client-jwt.private.pem"
    ))
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("dtr-test-op-rs256".into());
    let es = jsonwebtoken::encode(
        &header,
        &jwt_claims(&interim),
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    refused(rp.verify_id_token(&es, &nonce).await);
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &jwt_claims(&interim),
        &jsonwebtoken::EncodingKey::from_secret(b"dtr-client-secret"),
    )
    .unwrap();
    assert!(refused(rp.verify_id_token(&hs, &nonce).await).contains("HMAC"));
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        parts[1]
    );
    refused(rp.verify_id_token(&none, &nonce).await);

    // The final token must name the interim sub: a process whose interim sub is not the
    // user's is refused at release.
    if let Some(claims) = process.interim_claims.as_mut() {
        claims.sub = "someone-else".into();
    }
    approve(&bed, &username, "dtr-client").await;
    wait_interval(1).await;
    match rp.poll(&mut process).await {
        Err(DtrError::InvalidIdToken(why)) => assert!(why.contains("sub"), "{why}"),
        other => panic!("accepted: {other:?}"),
    }
}

/// The IETF profile, the whole flow with the kit: discovery's flag and revocation endpoint,
/// the code flow with `completion_mode=deferred`, the `code` acknowledgment, the
/// `authorization_code` exchange answered `authorization_pending` with a `deferral_code`, a
/// pending poll with the IETF grant, the verification service's webhook, the callback naming
/// the `deferral_code` with the `client_notification_token`, the final tokens checked, and a
/// spent code.
#[tokio::test]
async fn ietf_profile_whole_flow_with_callback() {
    let bed = bed_in(Profile::Ietf, &[]).await;
    let rp = secret_client(&bed).await;
    assert_eq!(rp.profile(), Profile::Ietf);
    let metadata = rp.metadata();
    assert_eq!(metadata.extra["deferred_token_response_supported"], true);
    assert_eq!(
        metadata.revocation_endpoint.as_deref(),
        Some(bed.proxy.revocation_url().as_str())
    );
    assert!(metadata
        .revocation_endpoint_token_type_values_supported
        .iter()
        .any(|t| t == dtr_rp::DEFERRAL_CODE_TOKEN_TYPE));
    // The OpenID profile is not offered in this realm: a client of that profile is refused.
    let openid = DtrClient::discover(
        &bed.proxy.issuer,
        options("dtr-client", ClientAuth::SecretBasic("dtr-client-secret".into())),
    )
    .await;
    assert!(matches!(openid, Err(DtrError::Unsupported(_))), "{:?}", openid.err());

    let username = unique("ietf");
    let (url, pending) = rp.authorization_url(&profile()).await.expect("authorization URL");
    let query = query_pairs(&url);
    let param = |name: &str| query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(param("response_type"), Some("code"));
    assert_eq!(param("completion_mode"), Some("deferred"));
    let answer = bed.proxy.login(&borrowed(&query), &username, None).await;
    let location = answer.location.clone().expect("a redirect to the RP");
    assert!(!location.contains("deferred_code="), "{location}");
    let ack = read_ack(&rp, &answer, &pending).expect("acknowledgment");
    let Acknowledgment::Deferred { deferred_code, .. } = &ack else {
        panic!("{ack:?}");
    };
    assert!(location.contains(&format!("code={deferred_code}")), "{location}");

    let mut process = rp.exchange(&ack, &pending, None).await.expect("exchange");
    assert!(process.deferred_auth_id.len() >= 22, "a deferral_code");
    assert_eq!(process.interval, 1);
    assert!(process.expires_at.is_some_and(|e| e > Instant::now()));
    assert!(
        process.interim_id_token.is_none(),
        "the IETF profile has no interim ID token"
    );
    let token = process.notification_token.clone().expect("a client_notification_token");
    bed.pings.bind(&process.deferred_auth_id, &token);
    // The code is spent by the exchange.
    match rp.exchange(&ack, &pending, None).await {
        Err(DtrError::OAuth { error, .. }) => assert_eq!(error, "invalid_grant"),
        other => panic!("a second exchange: {other:?}"),
    }

    assert!(matches!(
        rp.poll(&mut process).await.expect("poll"),
        PollResult::Pending { .. }
    ));
    approve(&bed, &username, "dtr-client").await;
    assert!(
        bed.pings
            .wait_for(&process.deferred_auth_id, Duration::from_secs(15))
            .await,
        "the callback named the deferral_code, with the client_notification_token"
    );
    let PollResult::Approved(tokens) = rp.poll(&mut process).await.expect("poll") else {
        panic!("not approved");
    };
    assert_eq!(tokens.claims.sub, username);
    assert_eq!(tokens.claims.nonce.as_deref(), Some(pending.nonce.as_str()));
    assert_eq!(tokens.claims.iss, bed.proxy.issuer);
    assert_eq!(tokens.claims.aud, json!("dtr-client"));
    assert!(tokens.token_type().is_some_and(|t| t.eq_ignore_ascii_case("bearer")));
    assert!(tokens.access_token().is_some());
    // IETF §6.6: to the client it was issued to, a redeemed code says so.
    match rp.poll(&mut process).await.expect("poll") {
        PollResult::InvalidGrant { description } => {
            assert!(description.unwrap_or_default().contains("already redeemed"))
        }
        other => panic!("{other:?}"),
    }

    let kinds: Vec<String> = verified_events(&bed, 2)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    assert_eq!(kinds, ["deferred.started", "deferred.delivered"]);
}

/// The IETF profile with DPoP and `private_key_jwt`: a public client's fragment
/// acknowledgment and DPoP-bound tokens; a confidential client whose process is bound to its
/// DPoP key (IETF §11.1, whatever the client), so a poll or a revocation by another key is
/// refused; a pushed request with a `form_post` acknowledgment.
#[tokio::test]
async fn ietf_profile_with_dpop_par_and_private_key_jwt() {
    let bed = bed_in(Profile::Ietf, &[]).await;

    let rp = public_client(&bed).await;
    let username = unique("ietf-dpop");
    let auth = AuthorizationOptions {
        response_mode: Some(ResponseMode::Fragment),
        ..profile()
    };
    let (mut process, _) = start_process(&bed, &rp, &username, auth).await;
    assert!(process.dpop_key.is_some());
    approve(&bed, &username, "dtr-public").await;
    assert!(
        bed.pings
            .wait_for(&process.deferred_auth_id, Duration::from_secs(15))
            .await
    );
    let result = rp
        .wait_for_tokens(&mut process, Some(Duration::from_secs(20)), |_| {})
        .await
        .expect("wait");
    let PollResult::Approved(tokens) = result else {
        panic!("not approved: {result:?}");
    };
    assert_eq!(tokens.claims.sub, username);
    assert!(tokens.token_type().is_some_and(|t| t.eq_ignore_ascii_case("dpop")));

    // A confidential client that presented DPoP at the exchange is held to that key.
    let mut with_dpop = options("dtr-client", ClientAuth::SecretBasic("dtr-client-secret".into()));
    with_dpop.dpop = Dpop::PerProcess;
    let rp = discover(&bed, with_dpop).await;
    let (mut process, _) = start_process(&bed, &rp, &unique("ietf-bound"), profile()).await;
    let mut stolen = process.clone();
    stolen.dpop_key = Some(DpopKey::generate().unwrap());
    match rp.poll(&mut stolen).await {
        Err(DtrError::OAuth { error, .. }) => assert_eq!(error, "invalid_dpop_proof"),
        other => panic!("a poll with another key: {other:?}"),
    }
    match rp.cancel(&stolen).await {
        Err(DtrError::OAuth { error, .. }) => assert_eq!(error, "invalid_dpop_proof"),
        other => panic!("a revocation with another key: {other:?}"),
    }
    assert!(matches!(
        rp.poll(&mut process).await.unwrap(),
        PollResult::Pending { .. }
    ));
    rp.cancel(&process).await.expect("revocation with the bound key");
    assert!(matches!(
        rp.poll(&mut process).await.unwrap(),
        PollResult::AccessDenied { .. }
    ));

    let rp = jwt_client(&bed).await;
    let username = unique("ietf-jwt");
    let (url, pending) = rp
        .authorization_url(&AuthorizationOptions {
            par: true,
            response_mode: Some(ResponseMode::FormPost),
            ..profile()
        })
        .await
        .expect("pushed request");
    let names: Vec<String> = query_pairs(&url).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["client_id", "request_uri"]);
    let answer = bed.proxy.login(&borrowed(&query_pairs(&url)), &username, None).await;
    assert!(answer.location.is_none(), "a form_post page");
    let ack = read_ack(&rp, &answer, &pending).expect("form_post acknowledgment");
    let mut process = rp.exchange(&ack, &pending, None).await.expect("exchange");
    approve(&bed, &username, "dtr-jwt").await;
    let result = rp
        .wait_for_tokens(&mut process, Some(Duration::from_secs(20)), |_| {})
        .await
        .expect("wait");
    let PollResult::Approved(tokens) = result else {
        panic!("not approved: {result:?}");
    };
    assert_eq!(tokens.claims.sub, username);
    assert_eq!(tokens.claims.aud, json!("dtr-jwt"));
}

/// The IETF profile cancels by revoking the deferral code (IETF §8, RFC 7009): later polls
/// are `access_denied` and no callback is sent; `slow_down` grows the interval as in the
/// OpenID profile; the acknowledgment is the code flow's `code`.
#[tokio::test]
async fn ietf_profile_cancel_by_revocation_slow_down_and_acknowledgment_checks() {
    let bed = bed_in(Profile::Ietf, &[]).await;
    for rp in [secret_client(&bed).await, public_client(&bed).await] {
        let (mut process, _) = start_process(&bed, &rp, &unique("ietf-cancel"), profile()).await;
        assert!(matches!(
            rp.poll(&mut process).await.unwrap(),
            PollResult::Pending { .. }
        ));
        rp.cancel(&process).await.expect("revocation");
        assert!(matches!(
            rp.poll(&mut process).await.unwrap(),
            PollResult::AccessDenied { .. }
        ));
        assert!(
            !bed.pings
                .wait_for(&process.deferred_auth_id, Duration::from_millis(2500))
                .await,
            "no callback after a cancellation"
        );
    }

    let rp = secret_client(&bed).await;
    let (mut process, _) = start_process(&bed, &rp, &unique("ietf-slow"), profile()).await;
    assert!(matches!(
        rp.poll(&mut process).await.unwrap(),
        PollResult::Pending { .. }
    ));
    process.last_poll = None;
    match rp.poll(&mut process).await.unwrap() {
        PollResult::SlowDown { interval, .. } => assert_eq!(interval, 6),
        other => panic!("{other:?}"),
    }
    assert_eq!(process.interval, 6);
    rp.cancel(&process).await.expect("revocation");

    // `deferred_code code` is the OpenID profile's.
    let with_code = AuthorizationOptions {
        with_code: true,
        ..profile()
    };
    assert!(matches!(
        rp.authorization_url(&with_code).await,
        Err(DtrError::Unsupported(_))
    ));
    let (_, pending) = rp.authorization_url(&profile()).await.unwrap();
    let issuer = bed.proxy.issuer.clone();
    let ack = |params: &[(&str, &str)]| {
        let params = params
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.replace("$state", &pending.state).replace("$iss", &issuer),
                )
            })
            .collect();
        rp.acknowledgment(params, &pending)
    };
    assert!(matches!(
        ack(&[("code", "c1"), ("state", "$state"), ("iss", "$iss")]),
        Ok(Acknowledgment::Deferred { deferred_code, .. }) if deferred_code == "c1"
    ));
    let refused = |result: Result<Acknowledgment, DtrError>| result.unwrap_err().to_string();
    assert!(refused(ack(&[("code", "c1"), ("state", "other"), ("iss", "$iss")])).contains("state"));
    assert!(refused(ack(&[("code", "c1"), ("state", "$state")])).contains("iss"));
    assert!(refused(ack(&[("deferred_code", "c1"), ("state", "$state"), ("iss", "$iss")])).contains("no code"));
}

/// The verification service asks for the end-user again (`interaction_uri` on a pending
/// webhook): in both profiles the kit's poll says so with the URL and the progress text,
/// and the process goes on to its tokens once approved.
#[tokio::test]
async fn an_interaction_need_reaches_the_kit_in_both_profiles() {
    for profile_of_realm in [Profile::OpenId, Profile::Ietf] {
        let bed = bed_in(profile_of_realm, &[]).await;
        let rp = secret_client(&bed).await;
        let username = unique("interaction");
        let (mut process, _) = start_process(&bed, &rp, &username, profile()).await;
        let uri = "https://idv.example/book?slot=video&p=7";
        let asked = bed
            .proxy
            .complete(&json!({"outcome": "pending", "sub": username, "error_description": "step=video_ident", "interaction_uri": uri}))
            .await;
        assert_eq!(asked.status, 200, "{}", asked.json);
        match rp.poll(&mut process).await.unwrap() {
            PollResult::InteractionRequired {
                interaction_uri,
                description,
            } => {
                assert_eq!(interaction_uri, uri, "{profile_of_realm:?}");
                assert_eq!(description.as_deref(), Some("step=video_ident"), "{profile_of_realm:?}");
            }
            other => panic!("{profile_of_realm:?}: {other:?}"),
        }
        approve(&bed, &username, "dtr-client").await;
        let result = rp
            .wait_for_tokens(&mut process, Some(Duration::from_secs(30)), |_| {})
            .await
            .unwrap();
        assert!(
            matches!(result, PollResult::Approved(_)),
            "{profile_of_realm:?}: {result:?}"
        );
    }
}
