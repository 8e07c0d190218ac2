//! Requests of federated clients (a URL `client_id` the configuration does not name), before
//! the usual handling: the client is discovered and verified (`federation`), its request
//! checked against its statement — redirect URI, scopes, a signed request object unless the
//! statement allows unsigned requests —, and only then provisioned into the OP and admitted.
//! At the token and cancellation endpoints the client is made known the same way, so that a
//! replica that never saw its authorization request verifies its assertions too.

use std::sync::Arc;

use http::header::HeaderMap;
use http::StatusCode;

use super::respond::Refusal;
use crate::client_auth::{ClientCredentials, AUTH_PARAMS};
use crate::federation::{open_request_object, DiscoveryError, FederatedClient, Federation};
use crate::metrics::Metrics;
use crate::protocol::errors::OAuthError;
use crate::protocol::params::{encode, Params};
use crate::protocol::routes::PublicUrls;
use crate::protocol::wire::error as code;
use crate::records::ResponseMode;

/// The metric route of federated client checks.
const FEDERATION_ROUTE: &str = "federation";

/// OIDC Core §6.1: a request object that does not verify.
const INVALID_REQUEST_OBJECT: &str = "invalid_request_object";

pub struct FederatedRequests {
    pub federation: Arc<Federation>,
    pub urls: PublicUrls,
    /// `dtr_requests_total{route="federation", outcome}`: admitted, refused, unavailable.
    pub metrics: Metrics,
    /// Added to the scopes a federated client may ask for when the proxy adds it itself
    /// (`DTR_OFFLINE_ACCESS`).
    pub offline_access: bool,
}

fn refusal(error: &'static str, description: &'static str) -> Refusal {
    Refusal {
        error,
        description,
        redirect: None,
    }
}

/// Why discovery failed, as the refusal of an authorization request (no redirect: nothing
/// about the client is trusted).
fn discovery_refusal(e: &DiscoveryError) -> Refusal {
    if e.retryable() {
        return refusal(
            code::TEMPORARILY_UNAVAILABLE,
            "The application cannot be verified right now; try again later (temporarily_unavailable).",
        );
    }
    match e {
        DiscoveryError::NotAUrl => refusal(
            code::INVALID_REQUEST,
            "The client_id is not a valid application URL (invalid_client).",
        ),
        _ => refusal(
            code::INVALID_CLIENT,
            "The application could not be verified through a trusted federation (invalid_client).",
        ),
    }
}

fn response_mode(params: &Params) -> ResponseMode {
    match params.get("response_mode") {
        Some("fragment") => ResponseMode::Fragment,
        Some("form_post") => ResponseMode::FormPost,
        _ => ResponseMode::Query,
    }
}

/// The `kid` in a JWT's header, if it names one.
fn header_kid(jwt: &str) -> Option<String> {
    jsonwebtoken::decode_header(jwt).ok().and_then(|h| h.kid)
}

impl FederatedRequests {
    /// Whether this request is a federated client's: it names a client_id to discover.
    pub fn concerns(&self, client_id: Option<&str>) -> bool {
        client_id.is_some_and(|id| self.federation.is_federated(id))
    }

    /// The authorization request of a federated client, checked, with its request object
    /// opened: the parameters to go on with. The client is provisioned and admitted only when
    /// everything passed.
    pub async fn authorization(&self, realm: &str, client_id: &str, outer: &Params) -> Result<Params, Refusal> {
        let result = self.check_authorization(realm, client_id, outer).await;
        self.metrics.request(
            FEDERATION_ROUTE,
            match &result {
                Ok(_) => "admitted",
                Err(refusal) if refusal.error == code::TEMPORARILY_UNAVAILABLE => "unavailable",
                Err(_) => "refused",
            },
        );
        result
    }

    async fn check_authorization(&self, realm: &str, client_id: &str, outer: &Params) -> Result<Params, Refusal> {
        let kid = outer.get("request").and_then(header_kid);
        let client = self.federation.client(client_id, kid.as_deref()).await.map_err(|e| {
            tracing::info!(client_id, error = %e, "federated client refused");
            discovery_refusal(&e)
        })?;
        // An error may go back to a redirect URI only once the statement vouches for it.
        let vouched = |params: &Params| {
            params
                .get("redirect_uri")
                .filter(|uri| client.redirect_uris.iter().any(|known| known == uri))
                .map(|uri| {
                    (
                        uri.to_owned(),
                        response_mode(params),
                        params.get("state").map(str::to_owned),
                    )
                })
        };
        let reject = |params: &Params, error, description| Refusal {
            error,
            description,
            redirect: vouched(params),
        };
        if outer.get("request_uri").is_some() {
            return Err(reject(
                outer,
                code::REQUEST_URI_NOT_SUPPORTED,
                "Send the request object by value (request) or push it (PAR).",
            ));
        }
        let params = match outer.get("request") {
            Some(request) => {
                let issuer = self.urls.issuer(realm);
                let mut opened = open_request_object(&client, request, &issuer, outer).map_err(|e| {
                    tracing::info!(client_id, error = %e, "request object refused");
                    reject(outer, INVALID_REQUEST_OBJECT, e.0)
                })?;
                // Client authentication of a pushed request travels beside the object.
                let carried: Vec<(&str, &str)> = outer
                    .iter()
                    .filter(|(name, _)| AUTH_PARAMS[2..].contains(name))
                    .collect();
                if !carried.is_empty() {
                    let all = encode(opened.iter().chain(carried));
                    opened = Params::parse(all.as_bytes())
                        .map_err(|_| reject(outer, code::INVALID_REQUEST, "The request's parameters are malformed."))?;
                }
                opened
            }
            None if client.require_signed_request_object => {
                return Err(reject(
                    outer,
                    code::INVALID_REQUEST,
                    "This application must sign its authorization requests (a request object).",
                ))
            }
            None => outer.clone(),
        };
        if vouched(&params).is_none() {
            return Err(refusal(
                code::INVALID_REQUEST,
                "The redirect_uri is not one the application's federation statement lists (invalid_request).",
            ));
        }
        if !self.scopes_allowed(&client, params.get("scope").unwrap_or("openid")) {
            return Err(reject(
                &params,
                code::INVALID_SCOPE,
                "The application's federation statement does not allow these scopes.",
            ));
        }
        self.federation.admit(realm, &client).await.map_err(|e| {
            tracing::warn!(client_id, error = %e, "cannot provision a federated client");
            refusal(
                code::TEMPORARILY_UNAVAILABLE,
                "The application cannot be registered with the identity provider right now (temporarily_unavailable).",
            )
        })?;
        Ok(params)
    }

    fn scopes_allowed(&self, client: &FederatedClient, requested: &str) -> bool {
        requested.split(' ').filter(|s| !s.is_empty()).all(|scope| {
            client.scopes.iter().any(|allowed| allowed == scope) || (self.offline_access && scope == "offline_access")
        })
    }

    /// At the token and cancellation endpoints: a federated client (named by its assertion or
    /// its client_id) is verified and admitted, so that its assertion is checked with the
    /// statement's keys; a key the cached statement lacks makes it look again.
    pub async fn token_request(&self, realm: &str, headers: &HeaderMap, params: &Params) -> Result<(), OAuthError> {
        let result = self.check_token_request(realm, headers, params).await;
        if let Err(e) = &result {
            self.metrics.request(
                FEDERATION_ROUTE,
                if e.error == code::TEMPORARILY_UNAVAILABLE {
                    "unavailable"
                } else {
                    "refused"
                },
            );
        }
        result
    }

    async fn check_token_request(&self, realm: &str, headers: &HeaderMap, params: &Params) -> Result<(), OAuthError> {
        let Ok(credentials) = ClientCredentials::extract(headers, params) else {
            return Ok(());
        };
        if !self.federation.is_federated(&credentials.client_id) {
            return Ok(());
        }
        let kid = params.get("client_assertion").and_then(header_kid);
        let client = self
            .federation
            .client(&credentials.client_id, kid.as_deref())
            .await
            .map_err(|e| {
                if e.retryable() {
                    OAuthError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        code::TEMPORARILY_UNAVAILABLE,
                        "The client cannot be verified right now; retry later.",
                    )
                    .caused_by(e)
                } else {
                    OAuthError::invalid_client("The client could not be verified through a trusted federation.", None)
                        .caused_by(e)
                }
            })?;
        self.federation.admit(realm, &client).await.map_err(|e| {
            OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::TEMPORARILY_UNAVAILABLE,
                "The client cannot be registered with the identity provider right now; retry later.",
            )
            .caused_by(e)
        })
    }
}
