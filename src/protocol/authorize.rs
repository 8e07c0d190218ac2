//! The authorization request (step 1): a `deferred_code` request becomes a plain code-flow
//! request to the OP, with our own `state` handle standing in for the RP's.

use http::{Method, Response, StatusCode};

use super::params::{encode, Params};
use super::respond::{error_page, to_client, unavailable_page};
use super::state::{authorization_key, AuthorizationRecord, ResponseMode, HANDLE_PREFIX};
use super::wire::{self, error as code};
use crate::app::App;
use crate::crypto::random_token;
use crate::http::{now_ms, Body};

pub enum Outcome {
    /// Not a DTR request: forward it untouched.
    PassThrough,
    /// Forward the rewritten request to the OP (as a query for GET, a form body for POST).
    Forward { query: String },
    /// Answer the user agent ourselves.
    Respond(Response<Body>),
}

/// Parameters the proxy sets itself on the upstream request.
const REWRITTEN: [&str; 4] = ["response_type", "state", "response_mode", "scope"];

pub async fn authorize(app: &App, realm: &str, params: &Params) -> Outcome {
    let Some(response_type) = params.get("response_type") else {
        return Outcome::PassThrough;
    };
    match wire::is_deferred_response_type(response_type) {
        Some(false) => return Outcome::PassThrough,
        Some(true) => {}
        None => {
            return Outcome::Respond(error_page(
                StatusCode::BAD_REQUEST,
                "The application asked for an unsupported combination of response types.",
            ))
        }
    }
    app.metrics.request("authorize", "deferred");

    // Without a client and a redirect URI there is nowhere safe to send an error.
    let (Some(client_id), Some(redirect_uri)) = (params.get("client_id"), params.get("redirect_uri")) else {
        return Outcome::Respond(error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in request is missing client_id or redirect_uri.",
        ));
    };
    let state = params.get("state");
    let Some(client) = app.client(realm, client_id) else {
        // The client's redirect URIs are unknown to us: only an error page is safe.
        return Outcome::Respond(error_page(
            StatusCode::BAD_REQUEST,
            "This application is not allowed to use deferred sign-in (unauthorized_client).",
        ));
    };
    let known_redirect = client.redirect_uris.iter().any(|uri| uri == redirect_uri);
    let reject = |mode: ResponseMode, error: &'static str, description: &'static str| {
        if known_redirect {
            let iss = app.issuer(realm);
            let mut out = vec![("error", error), ("error_description", description)];
            if let Some(state) = state {
                out.push(("state", state));
            }
            out.push(("iss", iss.as_str()));
            Outcome::Respond(to_client(redirect_uri, mode, &out))
        } else {
            Outcome::Respond(error_page(StatusCode::BAD_REQUEST, description))
        }
    };

    let response_mode = match params.get("response_mode") {
        None | Some("query") => ResponseMode::Query,
        Some("fragment") => ResponseMode::Fragment,
        Some("form_post") => ResponseMode::FormPost,
        Some(_) => {
            return reject(
                ResponseMode::Query,
                code::INVALID_REQUEST,
                "Supported response modes with deferred_code: query, fragment, form_post.",
            )
        }
    };
    if params.get("request").is_some() || params.get("request_uri").is_some() {
        // Our rewrite would invalidate a signed request object, and a pushed request is
        // already at the OP with its original response_type.
        return reject(
            response_mode,
            code::INVALID_REQUEST,
            "Request objects and pushed authorization requests are not supported with deferred_code.",
        );
    }

    let handle = format!("{HANDLE_PREFIX}{}", random_token(24));
    let record = AuthorizationRecord {
        realm: realm.to_owned(),
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        state: state.map(str::to_owned),
        response_mode,
        nonce: params.get("nonce").map(str::to_owned),
        created_at: now_ms(),
    };
    let store = app.store();
    let key = store.key(&authorization_key(&app.config.hash_key.hash("handle", &handle)));
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    if let Err(e) = store.put(&key, &bytes, app.config.login_ttl).await {
        tracing::warn!(error = %e, "cannot store authorization request");
        return Outcome::Respond(unavailable_page());
    }

    let mut scope = params.get("scope").unwrap_or("openid").to_owned();
    if app.config.offline_access && !scope.split(' ').any(|s| s == "offline_access") {
        // An offline grant survives the days a verification may take; an online session
        // (Keycloak: 10 h max) would not.
        scope.push_str(" offline_access");
    }
    let upstream = params.iter().filter(|(name, _)| !REWRITTEN.contains(name)).chain([
        ("response_type", wire::RESPONSE_TYPE_CODE),
        ("state", handle.as_str()),
        ("response_mode", "query"),
        ("scope", scope.as_str()),
    ]);
    tracing::debug!(client_id, realm, handle = %app.config.hash_key.log_tag(&handle), "deferred authorization request");
    Outcome::Forward {
        query: encode(upstream),
    }
}

/// Whether a request method can carry an authorization request.
pub fn is_authorization_method(method: &Method) -> bool {
    method == Method::GET || method == Method::POST
}
