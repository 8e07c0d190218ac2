//! The main job, end to end on one machine: the real dtr-proxy binary on the embedded store in
//! front of a real local OpenID Provider (tests/op, laid out like Keycloak), and an RP walking
//! one complete deferred flow, printing each step.
//!
//! Run it with `scripts/demo.sh` (installs what it needs and builds first);
//! `scripts/demo.sh --keycloak` walks the same flow in front of a real Keycloak.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn step(n: u32, title: &str) {
    println!("\n── {n}. {title}");
}

fn show(label: &str, value: impl std::fmt::Display) {
    println!("   {label:<22} {value}");
}

fn short(secret: &str) -> String {
    format!("{}… ({} chars)", &secret[..secret.len().min(8)], secret.len())
}

#[tokio::main]
async fn main() {
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/dtr-proxy".into());
    if std::env::args().any(|a| a == "--keycloak") {
        return keycloak_walkthrough(&binary).await;
    }
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (public_port, admin_port) = (free(), free());
    let base = format!("http://127.0.0.1:{public_port}");
    let realm = "demo".to_string();

    step(
        0,
        "Start a local OpenID Provider, a ping receiver and dtr-proxy (embedded store)",
    );
    let issuer = create_realm(&realm, &base).await;
    show("OP listens on", format!("http://127.0.0.1:{}", op().port));
    show("issuer (via proxy)", &issuer);
    let pings = ping_receiver(vec![]).await;
    show("RP ping endpoint", &pings.url);
    let clients = json!([{ "client_id": "dtr-client", "interval": 2, "notification_endpoint": pings.url }]);
    let mut env = base_env(public_port, op().port);
    env.retain(|(k, _)| k != "DTR_DEFAULT_INTERVAL");
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .envs(env)
        .env("DTR_LISTEN", format!("127.0.0.1:{public_port}"))
        .env("DTR_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("DTR_CLIENTS", clients.to_string())
        .env("DTR_SHUTDOWN_DELAY", "0")
        .env("DTR_LOG", "warn")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    let http = client();
    let admin = format!("http://127.0.0.1:{admin_port}");
    assert!(wait_until_up(&http, &admin).await, "dtr-proxy did not come up");
    show("dtr-proxy public", &base);
    show("dtr-proxy admin", &admin);
    let proxy = Proxy {
        running: None,
        base,
        admin,
        realm,
        issuer,
        http,
    };

    step(
        1,
        "Authorization request: response_type=deferred_code, the user logs in at the OP",
    );
    let user = "alice";
    let (verifier, challenge) = pkce();
    let mut params = proxy.auth_params("dtr-client", "rp-state-42", "nonce-42");
    params.push(("code_challenge", &challenge));
    params.push(("code_challenge_method", "S256"));
    let ack = proxy.acknowledge(&params, user).await;
    let code = ack.get("deferred_code").expect("deferred_code").to_owned();
    show("acknowledgment", format!("302 to {REDIRECT_URI} ({})", ack.mode));
    show("deferred_code", short(&code));
    show("state", ack.get("state").unwrap_or("-"));
    show("iss", ack.get("iss").unwrap_or("-"));

    step(2, "Deferred code exchange at the token endpoint");
    let exchange = proxy
        .exchange(&dtr_client(), &code, &verifier, Some("rp-notification-token"))
        .await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().unwrap().to_owned();
    show("deferred_auth_id", short(&id));
    show(
        "expires_in / interval",
        format!("{} s / {} s", exchange.json["expires_in"], exchange.json["interval"]),
    );
    let interim = jwt_claims(exchange.json["interim_id_token"].as_str().unwrap_or("x.e30.x"));
    show(
        "interim_id_token",
        format!("sub={} email={}", interim["sub"], interim["email"]),
    );

    step(3, "The RP polls while the verification runs");
    for _ in 0..2 {
        let pending = proxy.poll(&dtr_client(), &id).await;
        show(
            &format!("poll → {}", pending.status),
            format!("{}: {}", pending.error(), pending.json["error_description"]),
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }

    step(
        4,
        "The verification service reports the outcome (signed completion webhook)",
    );
    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    show(&format!("POST /v1/completions → {}", completed.status), &completed.json);

    step(5, "dtr-proxy pings the RP's notification endpoint");
    let arrived = pings.wait_for(1, Duration::from_secs(10)).await;
    let received: Vec<(Option<String>, Value)> = pings.received.lock().unwrap().clone();
    match received.first() {
        Some((auth, body)) if arrived => {
            show("Authorization", auth.as_deref().unwrap_or("-"));
            show("body", body);
        }
        _ => panic!("no ping arrived"),
    }

    step(
        6,
        "The RP polls once more and receives the final tokens (fresh from the OP)",
    );
    let tokens = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    let id_token = jwt_claims(tokens.json["id_token"].as_str().unwrap());
    show("token_type", &tokens.json["token_type"]);
    show(
        "access_token",
        short(tokens.json["access_token"].as_str().unwrap_or("")),
    );
    show(
        "refresh_token",
        short(tokens.json["refresh_token"].as_str().unwrap_or("")),
    );
    show(
        "id_token",
        format!(
            "sub={} nonce={} iss={}",
            id_token["sub"], id_token["nonce"], id_token["iss"]
        ),
    );
    // After the interval, so the answer is about the code (spent), not the rate.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let spent = proxy.poll(&dtr_client(), &id).await;
    show("poll again →", format!("{} {}", spent.status, spent.error()));

    step(7, "Stop dtr-proxy (SIGTERM, graceful drain)");
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    show("exit", format!("{status:?}"));
    println!("\nThe deferred flow completed end to end.");
}

/// The same flow in front of a real Keycloak (from Maven Central, `scripts/keycloak.sh`), with
/// the realm operators import (`config/keycloak/dtr-realm.json`), dtr-proxy on the embedded
/// store, and the verification service's two steps: the user attribute through Keycloak's
/// Admin REST API, then the signed webhook.
async fn keycloak_walkthrough(binary: &str) {
    use common::keycloak::{keycloak_with, REALM};

    step(
        0,
        "Start Keycloak (the DTR realm imported) and dtr-proxy in front of it",
    );
    let bed = keycloak_with(binary, false);
    show("Keycloak ready in", format!("{:.1} s", bed.start_seconds));
    show("Keycloak (internal)", &bed.direct);
    show("public URL (proxy)", &bed.public);
    let proxy = bed.proxy();
    let admin = bed.admin().await;
    let username = unique("alice");
    let user_id = admin.create_user(REALM, &username).await;
    show("user", format!("{username} (id {user_id})"));

    step(
        1,
        "Authorization request: response_type=deferred_code, login on Keycloak's own page",
    );
    let (ack, verifier) = proxy.keycloak_ack("dtr-client", &username, "nonce-42").await;
    let code = ack.get("deferred_code").expect("deferred_code").to_owned();
    show("acknowledgment", format!("302 to {REDIRECT_URI} ({})", ack.mode));
    show("deferred_code", short(&code));
    show(
        "state / iss",
        format!(
            "{} / {}",
            ack.get("state").unwrap_or("-"),
            ack.get("iss").unwrap_or("-")
        ),
    );

    step(
        2,
        "Deferred code exchange: dtr-proxy redeems Keycloak's code for an offline grant",
    );
    let exchange = proxy
        .exchange(&dtr_client(), &code, &verifier, Some("rp-notification-token"))
        .await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().unwrap().to_owned();
    show("deferred_auth_id", short(&id));
    let interim = jwt_claims(exchange.json["interim_id_token"].as_str().unwrap_or("x.e30.x"));
    show(
        "interim_id_token",
        format!(
            "sub={} identity_verified={}",
            interim["sub"], interim["identity_verified"]
        ),
    );
    let pending = proxy.poll(&dtr_client(), &id).await;
    show(&format!("poll → {}", pending.status), pending.error());

    step(
        3,
        "The verification service: the user attribute in Keycloak, then the webhook",
    );
    admin
        .set_attributes(
            REALM,
            &user_id,
            &[("identity_verified", "true"), ("verified_at", "2026-11-30")],
        )
        .await;
    show("Admin REST API", "identity_verified=true, verified_at=2026-11-30");
    let completed = proxy
        .complete(&json!({"outcome": "approved", "sub": user_id, "client_id": "dtr-client"}))
        .await;
    show(&format!("POST /v1/completions → {}", completed.status), &completed.json);
    let pinged = bed.wait_for_ping(&id, Duration::from_secs(10)).await;
    show("ping to the RP", if pinged { "delivered" } else { "not (yet) seen" });

    step(4, "The RP polls and receives the final tokens, minted by Keycloak now");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tokens = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);
    let id_token = jwt_claims(tokens.json["id_token"].as_str().unwrap());
    let refresh = jwt_claims(tokens.json["refresh_token"].as_str().unwrap_or("x.e30.x"));
    show(
        "id_token",
        format!(
            "sub={} nonce={} identity_verified={} verified_at={}",
            id_token["sub"], id_token["nonce"], id_token["identity_verified"], id_token["verified_at"]
        ),
    );
    show("iss", &id_token["iss"]);
    show("refresh_token typ", &refresh["typ"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let spent = proxy.poll(&dtr_client(), &id).await;
    show("poll again →", format!("{} {}", spent.status, spent.error()));
    println!("\nThe deferred flow completed end to end in front of Keycloak.");
}
