// The federated-client tests against the real Keycloak, included by `keycloak_federation.rs`
// (Keycloak as it comes) and `keycloak_federation_search.rs` (Keycloak searching the
// `dtr.owner` attribute): each binary defines `bed()` and `SEARCHABLE`.

use common::federation::*;
use common::keycloak::*;
use common::*;
use serde_json::{json, Value};

/// Grants the realm's service account what provisioning needs.
async fn grant_manage_clients(admin: &Admin, realm: &str) {
    let (status, _, users) = admin
        .send(
            reqwest::Method::GET,
            &format!("/{realm}/users?username=service-account-dtr-proxy-admin&exact=true"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{users}");
    let user = users[0]["id"].as_str().expect("service account").to_owned();
    let management = admin.client_uuid(realm, "realm-management").await;
    let (status, _, role) = admin
        .send(
            reqwest::Method::GET,
            &format!("/{realm}/clients/{management}/roles/manage-clients"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{role}");
    let (status, _, body) = admin
        .send(
            reqwest::Method::POST,
            &format!("/{realm}/users/{user}/role-mappings/clients/{management}"),
            Some(&json!([role])),
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

/// A browser through the federated replica and Keycloak's pages (on the bed's origin) until
/// the answer meant for the RP.
async fn browse(replica: &Proxy, bed: &str, params: &[(&str, &str)], username: &str) -> Answer {
    let form = [
        ("username", username),
        ("password", USER_PASSWORD),
        ("credentialId", ""),
    ];
    replica.browse_via(params, &[bed], login_form_action, &form).await
}

/// A fresh realm whose service account may provision clients, with one user:
/// `(realm, username, user id)`.
async fn federated_realm(admin: &Admin) -> (String, String, String) {
    let realm = unique("fed");
    admin.create_realm_from_file(&realm, json!({})).await;
    grant_manage_clients(admin, &realm).await;
    let username = unique("fed-user");
    let user_id = admin.create_user(&realm, &username).await;
    (realm, username, user_id)
}

/// The settings that let a replica fetch from the test federation's hosts (on loopback,
/// under the test CA) and wait for Keycloak's slow first Admin API calls.
fn fetching_settings() -> Vec<(String, String)> {
    vec![
        ("DTR_FEDERATION_ALLOW_PRIVATE_TARGETS".into(), "true".into()),
        ("DTR_FEDERATION_CA_FILE".into(), tls().ca_file.display().to_string()),
        // Keycloak's first Admin API calls after its start are slow.
        ("DTR_UPSTREAM_TIMEOUT".into(), "30".into()),
    ]
}

#[tokio::test]
async fn a_federated_client_is_provisioned_into_keycloak_and_completes_both_flows() {
    let kc = bed();
    let admin = kc.admin().await;
    let (realm, username, user_id) = federated_realm(&admin).await;

    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let roots = json!([{"id": FED, "jwks": federation.root.set()}]).to_string();
    let replica = kc
        .replica_with(
            kc.port(),
            &realm,
            [("DTR_FEDERATION_TRUST_ROOTS".into(), roots)]
                .into_iter()
                .chain(fetching_settings())
                .collect(),
        )
        .await;

    // The plain code flow.
    let request = federation.request_object(
        &federation.client_key,
        &replica.issuer,
        json!({"response_type": "code", "scope": "openid email", "state": "st-kc", "nonce": "n-kc"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("request", request.as_str()),
    ];
    let ack = browse(&replica, &kc.public, &params, &username).await.ack();
    let code = ack.get("code").unwrap_or_else(|| panic!("no code: {ack:?}")).to_owned();
    let (status, tokens) = federation
        .token(
            &replica,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
            ],
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    let id_token = jwt_claims(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(id_token["azp"], federation.client_id.as_str());

    // What Keycloak holds: the URL client, private_key_jwt with the statement's keys.
    let (status, _, clients) = admin
        .send(
            reqwest::Method::GET,
            &format!(
                "/{realm}/clients?clientId={}",
                form_urlencoded::byte_serialize(federation.client_id.as_bytes()).collect::<String>()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let client = &clients[0];
    assert_eq!(client["clientAuthenticatorType"], "client-jwt");
    assert_eq!(client["redirectUris"], json!([REDIRECT_URI]));
    assert_eq!(client["attributes"]["use.jwks.string"], "true");

    // A DTR flow.
    let (verifier, challenge) = pkce();
    let request = federation.request_object(
        &federation.client_key,
        &replica.issuer,
        json!({"response_type": "deferred_code", "scope": "openid", "state": "st-dtr", "nonce": "n-dtr",
            "code_challenge": challenge, "code_challenge_method": "S256"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "deferred_code"),
        ("request", request.as_str()),
    ];
    let ack = browse(&replica, &kc.public, &params, &username).await.ack();
    let code = ack
        .get("deferred_code")
        .unwrap_or_else(|| panic!("no deferred_code: {ack:?}"))
        .to_owned();
    let (status, exchanged) = federation
        .token(
            &replica,
            &[
                ("grant_type", "urn:openid:params:grant-type:deferred"),
                ("deferred_code", &code),
                ("code_verifier", &verifier),
            ],
        )
        .await;
    assert_eq!(status, 200, "{exchanged}");
    let id = exchanged["deferred_auth_id"]
        .as_str()
        .expect("deferred_auth_id")
        .to_owned();
    let completed = replica.complete(&json!({"outcome": "approved", "sub": user_id})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    let poll = [
        ("grant_type", "urn:openid:params:grant-type:deferred"),
        ("deferred_auth_id", id.as_str()),
    ];
    let mut released = (0, Value::Null);
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        released = federation.token(&replica, &poll).await;
        if released.0 != 400 || released.1["error"] != "slow_down" {
            break;
        }
    }
    assert_eq!(released.0, 200, "{}", released.1);
    assert!(released.1["refresh_token"].is_string() || released.1["access_token"].is_string());
}

/// The Admin API's representation of the client whose `clientId` is `client_id`.
async fn keycloak_client(admin: &Admin, realm: &str, client_id: &str) -> Value {
    let (status, _, clients) = admin
        .send(
            reqwest::Method::GET,
            &format!(
                "/{realm}/clients?clientId={}",
                form_urlencoded::byte_serialize(client_id.as_bytes()).collect::<String>()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{clients}");
    clients[0].clone()
}

#[tokio::test]
async fn a_client_whose_trust_root_is_removed_is_disabled_in_keycloak_after_a_restart() {
    let kc = bed();
    let admin = kc.admin().await;
    let (realm, username, _) = federated_realm(&admin).await;

    let federation = Federation::new().await;
    federation.publish_valid(json!({}));
    let mut settings = fetching_settings();
    settings.push((
        "DTR_FEDERATION_TRUST_ROOTS".into(),
        json!([{"id": FED, "jwks": federation.root.set()}]).to_string(),
    ));
    let mut replica = kc.replica_with(kc.port(), &realm, settings).await;
    let request = federation.request_object(
        &federation.client_key,
        &replica.issuer,
        json!({"response_type": "code", "scope": "openid", "state": "st-rm"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("request", request.as_str()),
    ];
    let ack = browse(&replica, &kc.public, &params, &username).await.ack();
    assert!(ack.get("code").is_some(), "{ack:?}");
    let client = keycloak_client(&admin, &realm, &federation.client_id).await;
    assert_eq!(client["enabled"], true);
    assert_eq!(client["attributes"]["dtr.owner"], "dtr-proxy");
    assert_eq!(client["attributes"]["dtr.federation"], FED);
    assert!(client["attributes"]["dtr.expires_at"]
        .as_str()
        .is_some_and(|s| s.parse::<u64>().is_ok()));

    // Restarted without the trust root (the last one: provisioning set explicitly).
    replica.running.take().expect("in process").shutdown().await;
    let mut settings = fetching_settings();
    settings.extend([
        ("DTR_FEDERATION_PROVISIONING".into(), "keycloak".into()),
        ("DTR_FEDERATION_REALMS".into(), realm.clone()),
    ]);
    let restarted = kc.replica_with(kc.port(), &realm, settings).await;
    let mut disabled = false;
    for _ in 0..60 {
        if keycloak_client(&admin, &realm, &federation.client_id).await["enabled"] == false {
            disabled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        disabled,
        "the client of the removed trust root is still enabled in Keycloak"
    );
    let metrics = restarted.metrics().await;
    assert!(
        metrics.contains("dtr_federation_clients_disabled_total{reason=\"trust_root_removed\"} 1"),
        "{metrics}"
    );
    // How the restarted proxy found the clients it owns, as Keycloak logged the requests.
    let search = kc.requests(&format!("/admin/realms/{realm}/clients?q=dtr.owner"));
    let listing = kc.requests(&format!("/admin/realms/{realm}/clients?briefRepresentation=false"));
    let answered = |lines: &[String], status: &str| lines.iter().any(|l| l.contains(&format!("\" {status} ")));
    if SEARCHABLE {
        assert!(answered(&search, "200"), "the q= search was not answered: {search:?}");
        assert!(listing.is_empty(), "every client was listed all the same: {listing:?}");
    } else {
        assert!(answered(&search, "400"), "the q= search was not refused: {search:?}");
        assert!(answered(&listing, "200"), "no listing after the refusal: {listing:?}");
    }
    let untouched = keycloak_client(&admin, &realm, "dtr-client").await;
    assert_eq!(
        untouched["enabled"], true,
        "a client the proxy does not own is left alone"
    );

    // The proxy refuses the client at its door.
    let request = federation.request_object(
        &federation.client_key,
        &restarted.issuer,
        json!({"response_type": "code", "scope": "openid"}),
    );
    let params = [
        ("client_id", federation.client_id.as_str()),
        ("response_type", "code"),
        ("request", request.as_str()),
    ];
    let answer = browse(&restarted, &kc.public, &params, &username).await;
    assert_eq!(
        (answer.status, answer.location.as_deref()),
        (400, None),
        "{}",
        answer.html
    );
    assert!(answer.html.contains("invalid_client"), "{}", answer.html);
}
