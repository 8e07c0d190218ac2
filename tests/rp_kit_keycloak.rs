//! Both RP kits against a real Keycloak through the real dtr-proxy binary (the bed of
//! `tests/common/keycloak.rs`): the Rust kit (`clients/rust`) in process, and both kits'
//! command-line examples (the TypeScript one on node), driven as a user would: log in on
//! Keycloak's own login page and paste the URL the browser came back to. The IETF profile runs
//! in the bed's realm of `DTR_IETF_REALMS` ([`Admin::ietf_realm`]).

mod common;

use std::process::Command;
use std::time::Duration;

use common::keycloak::{keycloak, Admin, Keycloak, REALM, USER_PASSWORD};
use common::kit::{borrowed, query_pairs, read_ack, rust_example, ExampleRun};
use common::*;
use dtr_rp::{
    Acknowledgment, Algorithm, AuthorizationOptions, ClientAuth, ClientOptions, Dpop, DtrClient, PollResult,
    PrivateKeyJwt, Profile, ResponseMode,
};
use serde_json::json;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn options(client_id: &str, auth: ClientAuth) -> ClientOptions {
    let mut options = ClientOptions::new(client_id, REDIRECT_URI, auth);
    options.allow_insecure_http = true;
    options
}

/// The bed's realm of a profile.
async fn realm_of(admin: &Admin, profile: Profile) -> &'static str {
    match profile {
        Profile::OpenId => REALM,
        Profile::Ietf => admin.ietf_realm().await,
    }
}

/// Keycloak login with the kit in `profile`, the acknowledgment and the exchange: a running
/// process of a fresh user (and that user's id).
async fn start_kit_process(
    bed: &Keycloak,
    admin: &Admin,
    profile: Profile,
    client_id: &str,
    auth: ClientAuth,
    dpop: bool,
    request: &AuthorizationOptions,
) -> (DtrClient, dtr_rp::DeferredProcess, String) {
    let realm = realm_of(admin, profile).await;
    let proxy = bed.proxy_in(realm);
    let username = unique("kit");
    let user_id = admin.create_user(realm, &username).await;

    let mut options = options(client_id, auth);
    options.profile = profile;
    if dpop {
        options.dpop = Dpop::PerProcess;
    }
    let rp = DtrClient::discover(&proxy.issuer, options).await.expect("discovery");
    match profile {
        Profile::OpenId => assert!(rp.cancellation_endpoint().is_some()),
        Profile::Ietf => assert!(rp.metadata().revocation_endpoint.is_some()),
    }
    let (url, pending) = rp.authorization_url(request).await.expect("authorization URL");
    let answer = proxy
        .keycloak_login(&borrowed(&query_pairs(&url)), &username, USER_PASSWORD)
        .await;
    let ack = read_ack(&rp, &answer, &pending).expect("acknowledgment");
    assert!(matches!(ack, Acknowledgment::Deferred { .. }), "{ack:?}");
    let process = rp.exchange(&ack, &pending, None).await.expect("exchange");
    (rp, process, user_id)
}

/// One whole deferred flow with the Rust kit: Keycloak login, exchange, pending poll, the
/// verification service's result into Keycloak and its webhook, the ping, the final tokens.
async fn rust_kit_flow(client_id: &str, auth: ClientAuth, dpop: bool, request: AuthorizationOptions) {
    rust_kit_flow_in(Profile::OpenId, client_id, auth, dpop, request).await
}

async fn rust_kit_flow_in(
    profile: Profile,
    client_id: &str,
    auth: ClientAuth,
    dpop: bool,
    request: AuthorizationOptions,
) {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = realm_of(&admin, profile).await;
    let proxy = bed.proxy_in(realm);
    let (rp, mut process, user_id) = start_kit_process(bed, &admin, profile, client_id, auth, dpop, &request).await;
    match profile {
        Profile::OpenId => {
            let interim = process.interim_claims.clone().expect("interim ID token");
            assert_eq!(interim.sub, user_id);
            assert!(interim.other.get("identity_verified").is_none(), "not verified yet");
        }
        Profile::Ietf => assert!(process.interim_id_token.is_none(), "no interim ID token"),
    }

    assert!(matches!(
        rp.poll(&mut process).await.expect("poll"),
        PollResult::Pending { .. }
    ));
    admin
        .set_attributes(realm, &user_id, &[("identity_verified", "true")])
        .await;
    let done = proxy
        .complete(&json!({"outcome": "approved", "sub": user_id, "client_id": client_id}))
        .await;
    assert_eq!(done.status, 200, "{}", done.json);
    let id = process.deferred_auth_id.clone();
    assert!(bed.wait_for_ping(&id, Duration::from_secs(15)).await, "no ping");
    // The ping as the RP's endpoint reads it, with the kit, in the client's profile.
    let (authorization, body) = bed.pings_for(&id)[0].clone();
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("authorization", authorization.expect("a bearer token").parse().unwrap());
    let token = process.notification_token.clone().expect("token");
    let pinged = rp.verify_ping(&http::Method::POST, &headers, body.to_string().as_bytes(), |_| {
        Some(token)
    });
    assert_eq!(pinged.as_deref(), Ok(id.as_str()), "{body}");

    let result = rp
        .wait_for_tokens(&mut process, Some(Duration::from_secs(30)), |_| {})
        .await
        .expect("wait");
    let PollResult::Approved(tokens) = result else {
        panic!("not approved: {result:?}");
    };
    // Signature (Keycloak's JWKS), iss, aud, exp, nonce and the interim sub: checked by the kit.
    assert_eq!(tokens.claims.sub, user_id);
    assert_eq!(tokens.claims.iss, proxy.issuer);
    assert_eq!(tokens.claims.other["identity_verified"], true, "{:?}", tokens.claims);
    let token_type = tokens.token_type().unwrap_or_default();
    assert_eq!(token_type.eq_ignore_ascii_case("dpop"), dpop, "{token_type}");
    if let Some(key) = &process.dpop_key {
        let access = jwt_claims(tokens.access_token().expect("access token"));
        assert_eq!(
            access["cnf"]["jkt"],
            key.thumbprint().as_str(),
            "bound to the process's key"
        );
    }
    assert!(matches!(
        rp.poll(&mut process).await.expect("poll"),
        PollResult::InvalidGrant { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_kit_client_secret_basic_against_keycloak() {
    let request = AuthorizationOptions {
        scope: "openid profile email".into(),
        ..Default::default()
    };
    rust_kit_flow(
        "dtr-client",
        ClientAuth::SecretBasic("dtr-client-secret".into()),
        false,
        request,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_kit_public_dpop_client_against_keycloak() {
    let request = AuthorizationOptions {
        response_mode: Some(ResponseMode::Fragment),
        ..Default::default()
    };
    rust_kit_flow("dtr-public", ClientAuth::None, true, request).await;
}

/// The IETF profile with the Rust kit against Keycloak: a public DPoP client (the code flow
/// with `completion_mode=deferred`, `authorization_pending` with a `deferral_code`, the
/// callback, DPoP-bound tokens), then a cancellation by revoking a deferral code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_kit_ietf_profile_against_keycloak() {
    let request = AuthorizationOptions {
        response_mode: Some(ResponseMode::Fragment),
        ..Default::default()
    };
    rust_kit_flow_in(Profile::Ietf, "dtr-public", ClientAuth::None, true, request).await;

    let bed = keycloak();
    let admin = bed.admin().await;
    let auth = ClientAuth::SecretBasic("dtr-client-secret".into());
    let (rp, mut process, _) = start_kit_process(
        bed,
        &admin,
        Profile::Ietf,
        "dtr-client",
        auth,
        false,
        &AuthorizationOptions::default(),
    )
    .await;
    assert!(matches!(
        rp.poll(&mut process).await.expect("poll"),
        PollResult::Pending { .. }
    ));
    rp.cancel(&process).await.expect("revocation of the deferral code");
    assert!(matches!(
        rp.poll(&mut process).await.expect("poll"),
        PollResult::AccessDenied { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_kit_private_key_jwt_with_par_and_form_post_against_keycloak() {
    let pem = std::fs::read(root().join("tests/op/keys/client-jwt.private.pem")).expect("key");
    let kid = client_jwk()["kid"].as_str().map(str::to_owned);
    let key = PrivateKeyJwt::from_pem(&pem, Algorithm::ES256, kid).expect("client key");
    let request = AuthorizationOptions {
        par: true,
        response_mode: Some(ResponseMode::FormPost),
        ..Default::default()
    };
    rust_kit_flow("dtr-jwt", ClientAuth::PrivateKeyJwt(key), false, request).await;
}

/// The TypeScript kit, built, and both kits' command-line examples as (program, arguments).
fn examples() -> Vec<(std::path::PathBuf, Vec<std::path::PathBuf>)> {
    let js = root().join("clients/js");
    let built = Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(&js)
        .status()
        .expect("npm (run scripts/ensure-deps.sh)");
    assert!(built.success(), "the TypeScript kit did not build");
    vec![
        (
            std::path::PathBuf::from("node"),
            vec![js.join("examples/deferred-login.mjs")],
        ),
        (rust_example(), vec![]),
    ]
}

/// Runs one example as `client_id` in `profile` through a whole login at Keycloak, and the
/// verification service's approval; checks each line it prints.
async fn run_example(
    (program, args): &(std::path::PathBuf, Vec<std::path::PathBuf>),
    profile: Profile,
    client_id: &str,
    secret: Option<&str>,
    token_type: &str,
) {
    let bed = keycloak();
    let admin = bed.admin().await;
    let realm = realm_of(&admin, profile).await;
    let proxy = bed.proxy_in(realm);
    let what = format!("{} as {client_id} ({profile:?})", program.display());
    let username = unique("example");
    let user_id = admin.create_user(realm, &username).await;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("DTR_ISSUER", &proxy.issuer)
        .env("DTR_CLIENT_ID", client_id)
        .env("DTR_REDIRECT_URI", REDIRECT_URI)
        .env("DTR_INSECURE", "1")
        .env(
            "DTR_PROFILE",
            match profile {
                Profile::OpenId => "openid",
                Profile::Ietf => "ietf",
            },
        )
        .env_remove("DTR_CLIENT_SECRET")
        .env_remove("DTR_PAR");
    if let Some(secret) = secret {
        command.env("DTR_CLIENT_SECRET", secret);
    }
    let mut run = ExampleRun::start(command);
    let url = url::Url::parse(&run.line()).expect("the authorization URL");
    let answer = proxy
        .keycloak_login(&borrowed(&query_pairs(&url)), &username, USER_PASSWORD)
        .await;
    run.paste(&answer.location.clone().expect("a redirect to the RP"));
    let exchanged = run.json();
    assert_eq!(exchanged["step"], "exchanged", "{what}: {exchanged}");
    match profile {
        // Who the user says they are, from the interim ID token.
        Profile::OpenId => assert_eq!(exchanged["sub"], user_id.as_str(), "{what}"),
        // No interim ID token in the IETF profile.
        Profile::Ietf => assert!(exchanged["sub"].is_null(), "{what}: {exchanged}"),
    }
    assert_eq!(run.json()["step"], "pending", "{what}");

    admin
        .set_attributes(realm, &user_id, &[("identity_verified", "true")])
        .await;
    let done = proxy
        .complete(&json!({"outcome": "approved", "sub": user_id, "client_id": client_id}))
        .await;
    assert_eq!(done.status, 200, "{}", done.json);
    let last = run.outcome();
    assert_eq!(last["step"], "approved", "{what}: {last}");
    assert_eq!(last["sub"], user_id.as_str());
    assert_eq!(last["email"], format!("{username}@example.com"));
    assert_eq!(
        last["token_type"].as_str().map(str::to_ascii_lowercase).as_deref(),
        Some(token_type),
        "{what}"
    );
    let status = run.finish();
    assert!(status.success(), "{what} exited with {status}");
}

/// Both kits' command-line examples (clients/js/examples/deferred-login.mjs,
/// clients/rust/examples/deferred_login.rs), as a public DPoP client and as a confidential
/// one, against Keycloak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kits_examples_against_keycloak() {
    for example in examples() {
        for (client_id, secret, token_type) in [
            ("dtr-public", None, "dpop"),
            ("dtr-client", Some("dtr-client-secret"), "bearer"),
        ] {
            run_example(&example, Profile::OpenId, client_id, secret, token_type).await;
        }
    }
}

/// Both kits' examples in the IETF profile (`DTR_PROFILE=ietf`) against Keycloak: the
/// TypeScript kit as a public DPoP client, the Rust kit as a confidential one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kits_examples_in_the_ietf_profile_against_keycloak() {
    let [js, rust]: [_; 2] = examples().try_into().expect("two examples");
    run_example(&js, Profile::Ietf, "dtr-public", None, "dpop").await;
    run_example(&rust, Profile::Ietf, "dtr-client", Some("dtr-client-secret"), "bearer").await;
}
