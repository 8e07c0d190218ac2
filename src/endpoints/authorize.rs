//! The authorization request (step 1): a `deferred_code` request becomes a plain code-flow
//! request to the OP, with our own `state` handle standing in for the RP's.

use std::time::Duration;

use http::{Response, StatusCode};

use super::respond::{error_page, to_client, unavailable_page};
use crate::clients::Clients;
use crate::clock::now_ms;
use crate::crypto::random_token;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::protocol::params::{encode, Params};
use crate::protocol::routes::PublicUrls;
use crate::protocol::wire::{self, error as code};
use crate::records::{AuthorizationRecord, Records, ResponseMode, HANDLE_PREFIX};

/// What becomes of an authorization request.
pub enum Authorization {
    /// Not a DTR request: forward it untouched.
    PassThrough,
    /// Forward the rewritten request to the OP (as a query for GET, a form body for POST).
    Forward { query: String },
    /// Answer the user agent ourselves.
    Respond(Response<Body>),
}

/// Parameters the proxy sets itself on the upstream request.
const REWRITTEN: [&str; 4] = ["response_type", "state", "response_mode", "scope"];

pub struct Authorize {
    pub clients: Clients,
    pub records: Records,
    pub urls: PublicUrls,
    pub metrics: Metrics,
    /// Add `offline_access` to the scope (`DTR_OFFLINE_ACCESS`).
    pub offline_access: bool,
    /// How long a login may take at the OP (`DTR_LOGIN_TTL`).
    pub login_ttl: Duration,
}

/// The decision on an authorization request, before any I/O.
pub enum Decision {
    PassThrough,
    Respond(Response<Body>),
    Rewrite(Rewrite),
}

/// A `deferred_code` request made into the OP's code-flow request: the record to keep under
/// `handle`, and the upstream query.
pub struct Rewrite {
    pub record: AuthorizationRecord,
    pub query: String,
}

impl Authorize {
    pub async fn handle(&self, realm: &str, params: &Params) -> Authorization {
        let handle = format!("{HANDLE_PREFIX}{}", random_token(24));
        let rewrite = match self.decide(realm, params, &handle, now_ms()) {
            Decision::Rewrite(rewrite) => rewrite,
            Decision::PassThrough => return Authorization::PassThrough,
            Decision::Respond(response) => return Authorization::Respond(response),
        };
        if let Err(e) = self
            .records
            .put_authorization(&handle, &rewrite.record, self.login_ttl)
            .await
        {
            tracing::warn!(error = %e, "cannot store authorization request");
            return Authorization::Respond(unavailable_page());
        }
        tracing::debug!(client_id = %rewrite.record.client_id, realm, handle = %self.records.log_tag(&handle), "deferred authorization request");
        Authorization::Forward { query: rewrite.query }
    }

    /// The decision on the request alone: pass it through, answer it, or rewrite it with
    /// `handle` as the OP's `state`.
    pub fn decide(&self, realm: &str, params: &Params, handle: &str, now: u64) -> Decision {
        let Some(response_type) = params.get("response_type") else {
            return Decision::PassThrough;
        };
        match wire::is_deferred_response_type(response_type) {
            Some(false) => return Decision::PassThrough,
            Some(true) => {}
            None => {
                return Decision::Respond(error_page(
                    StatusCode::BAD_REQUEST,
                    "The application asked for an unsupported combination of response types.",
                ))
            }
        }
        self.metrics.request("authorize", "deferred");

        // Without a client and a redirect URI there is nowhere safe to send an error.
        let (Some(client_id), Some(redirect_uri)) = (params.get("client_id"), params.get("redirect_uri")) else {
            return Decision::Respond(error_page(
                StatusCode::BAD_REQUEST,
                "The sign-in request is missing client_id or redirect_uri.",
            ));
        };
        let state = params.get("state");
        let Some(client) = self.clients.find(realm, client_id) else {
            // The client's redirect URIs are unknown to us: only an error page is safe.
            return Decision::Respond(error_page(
                StatusCode::BAD_REQUEST,
                "This application is not allowed to use deferred sign-in (unauthorized_client).",
            ));
        };
        let known_redirect = client.redirect_uris.iter().any(|uri| uri == redirect_uri);
        let reject = |mode: ResponseMode, error: &'static str, description: &'static str| {
            if known_redirect {
                let iss = self.urls.issuer(realm);
                let mut out = vec![("error", error), ("error_description", description)];
                if let Some(state) = state {
                    out.push(("state", state));
                }
                out.push(("iss", iss.as_str()));
                Decision::Respond(to_client(redirect_uri, mode, &out))
            } else {
                Decision::Respond(error_page(StatusCode::BAD_REQUEST, description))
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

        let record = AuthorizationRecord {
            realm: realm.to_owned(),
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            state: state.map(str::to_owned),
            response_mode,
            nonce: params.get("nonce").map(str::to_owned),
            created_at: now,
        };
        let mut scope = params.get("scope").unwrap_or("openid").to_owned();
        if self.offline_access && !scope.split(' ').any(|s| s == "offline_access") {
            // An offline grant survives the days a verification may take; an online session
            // (Keycloak: 10 h max) would not.
            scope.push_str(" offline_access");
        }
        let upstream = params.iter().filter(|(name, _)| !REWRITTEN.contains(name)).chain([
            ("response_type", wire::RESPONSE_TYPE_CODE),
            ("state", handle),
            ("response_mode", "query"),
            ("scope", scope.as_str()),
        ]);
        Decision::Rewrite(Rewrite {
            record,
            query: encode(upstream),
        })
    }
}
