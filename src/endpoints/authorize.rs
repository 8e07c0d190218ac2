//! The authorization request (step 1): a `deferred_code` request becomes a plain code-flow
//! request to the OP, with our own `state` handle standing in for the RP's — in the front
//! channel, or pushed to the OP's PAR endpoint (RFC 9126), whose later `request_uri` the OP
//! resolves to the rewritten request, so its redirect carries our handle as any other.
//!
//! A signed request object (`request`) cannot be rewritten without breaking its signature, and
//! the proxy holds no key to sign a new one: `deferred_code` requests with one are refused with
//! `request_not_supported`, pointing to PAR, which carries the same parameters authenticated
//! by the client at the back channel; an IETF hint with one goes to the OP untouched (an
//! unused hint, IETF §5.2). Federated clients are the exception: their request objects are
//! verified here ([`FederatedRequests`]), and what they carry is rewritten like any request.

use std::time::Duration;

use http::{Response, StatusCode};

use super::federated::FederatedRequests;
use super::respond::{error_page, to_client, unavailable_page};
use crate::client_auth::ClientCredentials;
use crate::clients::Clients;
use crate::clock::now_ms;
use crate::crypto::random_token;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::protocol::errors::OAuthError;
use crate::protocol::params::{encode, Params};
use crate::protocol::routes::PublicUrls;
use crate::protocol::wire::{self, error as code, Profile};
use crate::records::{AuthorizationRecord, Records, Requested, ResponseMode, HANDLE_PREFIX};

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
const REWRITTEN: [&str; 5] = [
    "response_type",
    "state",
    "response_mode",
    "scope",
    wire::COMPLETION_MODE,
];

/// The prefix of the `request_uri`s a PAR endpoint issues (RFC 9126 §2.2).
const PAR_REQUEST_URI: &str = "urn:ietf:params:oauth:request_uri:";

pub struct Authorize {
    pub clients: Clients,
    pub records: Records,
    pub urls: PublicUrls,
    pub metrics: Metrics,
    /// Add `offline_access` to the scope (`DTR_OFFLINE_ACCESS`).
    pub offline_access: bool,
    /// How long a login may take at the OP (`DTR_LOGIN_TTL`).
    pub login_ttl: Duration,
    /// Requests of federated clients, when federation is configured.
    pub federated: Option<FederatedRequests>,
}

/// The decision on an authorization request, before any I/O.
pub enum Decision {
    PassThrough,
    /// Forward only these parameters (a front-channel request naming a pushed request).
    Narrow(String),
    Refuse(Refusal),
    Rewrite(Rewrite),
}

pub use super::respond::Refusal;

/// A `deferred_code` request made into the OP's code-flow request: the record to keep under
/// `handle`, and the upstream query.
pub struct Rewrite {
    pub record: AuthorizationRecord,
    pub query: String,
}

impl Authorize {
    /// A front-channel authorization request.
    pub async fn handle(&self, realm: &str, params: &Params) -> Authorization {
        let handle = format!("{HANDLE_PREFIX}{}", random_token(24));
        let opened = match self.federated(realm, params.get("client_id"), params).await {
            Ok(opened) => opened,
            Err(refusal) => return Authorization::Respond(self.refusal_page(realm, refusal)),
        };
        let params = opened.as_ref().unwrap_or(params);
        match self.decide(realm, params, &handle, now_ms()) {
            // A federated client's request goes on as checked (its request object opened).
            Decision::PassThrough if opened.is_some() => Authorization::Forward {
                query: encode(params.iter()),
            },
            Decision::PassThrough => Authorization::PassThrough,
            Decision::Narrow(query) => Authorization::Forward { query },
            Decision::Refuse(refusal) => Authorization::Respond(self.refusal_page(realm, refusal)),
            Decision::Rewrite(rewrite) => match self.keep(realm, &handle, &rewrite).await {
                Ok(()) => Authorization::Forward { query: rewrite.query },
                Err(()) => Authorization::Respond(unavailable_page()),
            },
        }
    }

    /// A request pushed to the OP's PAR endpoint: the rewritten form body to push instead, or
    /// the OAuth error to answer (RFC 9126 §2.3). `Ok(None)`: push it untouched.
    pub async fn handle_pushed(
        &self,
        realm: &str,
        headers: &http::HeaderMap,
        params: &Params,
    ) -> Result<Option<String>, OAuthError> {
        let handle = format!("{HANDLE_PREFIX}{}", random_token(24));
        // A pushed request names its client by its authentication (RFC 9126 §2.1): the
        // Authorization header or an assertion, not necessarily a client_id parameter.
        let authenticated = match params.get("client_id") {
            Some(_) => None,
            None => ClientCredentials::extract(headers, params).ok().map(|c| c.client_id),
        };
        let client_id = params.get("client_id").or(authenticated.as_deref());
        let opened = self
            .federated(realm, client_id, params)
            .await
            .map_err(|refusal| OAuthError::new(StatusCode::BAD_REQUEST, refusal.error, refusal.description))?;
        let params = opened.as_ref().unwrap_or(params);
        match self.decide_for(realm, params, authenticated.as_deref(), &handle, now_ms()) {
            Decision::PassThrough | Decision::Narrow(_) if opened.is_some() => Ok(Some(encode(params.iter()))),
            Decision::PassThrough | Decision::Narrow(_) => Ok(None),
            Decision::Refuse(refusal) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                refusal.error,
                refusal.description,
            )),
            Decision::Rewrite(rewrite) => match self.keep(realm, &handle, &rewrite).await {
                Ok(()) => Ok(Some(rewrite.query)),
                Err(()) => Err(OAuthError::store(crate::store::StoreError::Unavailable(
                    "cannot store the authorization request".into(),
                ))),
            },
        }
    }

    /// A federated client's request checked and opened (`None`: not a federated client's).
    async fn federated(
        &self,
        realm: &str,
        client_id: Option<&str>,
        params: &Params,
    ) -> Result<Option<Params>, Refusal> {
        let (Some(federated), Some(client_id)) = (&self.federated, client_id) else {
            return Ok(None);
        };
        // A front-channel request naming a pushed one: checked when it was pushed.
        let names_pushed = params
            .get("request_uri")
            .is_some_and(|uri| uri.starts_with(PAR_REQUEST_URI));
        if !federated.concerns(Some(client_id)) || (names_pushed && params.get("request").is_none()) {
            return Ok(None);
        }
        federated.authorization(realm, client_id, params).await.map(Some)
    }

    async fn keep(&self, realm: &str, handle: &str, rewrite: &Rewrite) -> Result<(), ()> {
        if let Err(e) = self
            .records
            .put_authorization(handle, &rewrite.record, self.login_ttl)
            .await
        {
            tracing::warn!(error = %e, "cannot store authorization request");
            return Err(());
        }
        tracing::debug!(client_id = %rewrite.record.client_id, realm, handle = %self.records.log_tag(handle), "deferred authorization request");
        Ok(())
    }

    /// A refusal in the front channel: an error redirect to a redirect URI the proxy knows
    /// is registered, else an error page (never a redirect to an unvalidated URI).
    fn refusal_page(&self, realm: &str, refusal: Refusal) -> Response<Body> {
        match refusal.redirect {
            Some((redirect_uri, mode, state)) => {
                let iss = self.urls.issuer(realm);
                let mut out = vec![("error", refusal.error), ("error_description", refusal.description)];
                if let Some(state) = state.as_deref() {
                    out.push(("state", state));
                }
                out.push(("iss", iss.as_str()));
                to_client(&redirect_uri, mode, &out)
            }
            None => error_page(StatusCode::BAD_REQUEST, refusal.description),
        }
    }

    /// The decision on the request alone: pass it through, refuse it, or rewrite it with
    /// `handle` as the OP's `state`.
    pub fn decide(&self, realm: &str, params: &Params, handle: &str, now: u64) -> Decision {
        self.decide_for(realm, params, None, handle, now)
    }

    /// [`Self::decide`], for a client named by its authentication rather than a parameter.
    fn decide_for(
        &self,
        realm: &str,
        params: &Params,
        authenticated_client: Option<&str>,
        handle: &str,
        now: u64,
    ) -> Decision {
        let Some(response_type) = params.get("response_type") else {
            return Decision::PassThrough;
        };
        let refuse = |error, description| {
            Decision::Refuse(Refusal {
                error,
                description,
                redirect: None,
            })
        };
        // The profile the request speaks: the OpenID `deferred_code` response type, or the IETF
        // profile's advance hint, `completion_mode=deferred` on a plain code request.
        let spoken = match wire::is_deferred_response_type(response_type) {
            Some(true) => Profile::OpenId,
            Some(false)
                if response_type == wire::RESPONSE_TYPE_CODE
                    && wire::accepts_deferred(params.get(wire::COMPLETION_MODE)) =>
            {
                Profile::Ietf
            }
            Some(false) => return Decision::PassThrough,
            None => {
                return refuse(
                    code::UNSUPPORTED_RESPONSE_TYPE,
                    "The application asked for an unsupported combination of response types.",
                )
            }
        };
        if spoken == Profile::OpenId {
            self.metrics.request("authorize", "deferred");
        }

        // A front-channel request naming a pushed one (RFC 9126 §4): the OP takes every
        // parameter from what was pushed (and rewritten there); a duplicated deferred
        // response_type would only confuse it.
        if let (Some(client_id), Some(request_uri)) = (params.get("client_id"), params.get("request_uri")) {
            if request_uri.starts_with(PAR_REQUEST_URI) && params.get("request").is_none() {
                return Decision::Narrow(encode([("client_id", client_id), ("request_uri", request_uri)]));
            }
        }
        let client_id = params.get("client_id").or(authenticated_client);
        if spoken == Profile::Ietf {
            // A hint, not a demand: a request the proxy will not defer is the OP's plain code
            // flow (a client of the OpenID profile, an unknown client, a malformed request).
            // So is one whose parameters are in a request object the OP verifies (by value, or
            // by a reference other than a PAR request_uri): they cannot be rewritten without
            // breaking its signature, and an unused hint leaves the request as it would be
            // without DTR (IETF §5.2), not refused. A federated client's object was opened
            // and checked above; its parameters are these.
            let client = client_id.and_then(|id| self.clients.find(realm, id));
            if client.is_none_or(|c| self.clients.profile(realm, &c) != Profile::Ietf)
                || params.get("redirect_uri").is_none()
                || params.get("request").is_some()
                || params.get("request_uri").is_some()
            {
                return Decision::PassThrough;
            }
            self.metrics.request("authorize", "deferred");
        }
        // Without a client and a redirect URI there is nowhere safe to send an error.
        let (Some(client_id), Some(redirect_uri)) = (client_id, params.get("redirect_uri")) else {
            return refuse(
                code::INVALID_REQUEST,
                "The sign-in request is missing client_id or redirect_uri.",
            );
        };
        let state = params.get("state");
        let Some(client) = self.clients.find(realm, client_id) else {
            // The client's redirect URIs are unknown to us: only an error page is safe.
            return refuse(
                code::UNAUTHORIZED_CLIENT,
                "This application is not allowed to use deferred sign-in (unauthorized_client).",
            );
        };
        let known_redirect = client.redirect_uris.iter().any(|uri| uri == redirect_uri);
        let reject = |mode: ResponseMode, error: &'static str, description: &'static str| {
            Decision::Refuse(Refusal {
                error,
                description,
                redirect: known_redirect.then(|| (redirect_uri.to_owned(), mode, state.map(str::to_owned))),
            })
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
        if self.clients.profile(realm, &client) != spoken {
            return reject(
                response_mode,
                code::UNSUPPORTED_RESPONSE_TYPE,
                "This application uses the OAuth profile of deferred sign-in: ask for response_type=code with completion_mode=deferred.",
            );
        }
        if params.get("request").is_some() {
            return reject(
                response_mode,
                code::REQUEST_NOT_SUPPORTED,
                "Signed request objects cannot carry deferred_code through this provider (the rewrite would break the signature); push the request (PAR) instead.",
            );
        }
        if params.get("request_uri").is_some() {
            return reject(
                response_mode,
                code::REQUEST_URI_NOT_SUPPORTED,
                "A request_uri with deferred_code must name a request pushed to this provider's PAR endpoint.",
            );
        }

        let record = AuthorizationRecord {
            realm: realm.to_owned(),
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            state: state.map(str::to_owned),
            response_mode,
            nonce: params.get("nonce").map(str::to_owned),
            requested: Requested {
                acr_values: params.get("acr_values").map(str::to_owned),
                claims: params.get("claims").map(str::to_owned),
            },
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
