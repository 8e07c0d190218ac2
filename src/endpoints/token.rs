//! The token endpoint's deferred grant: the deferred code exchange (step 3) or a poll
//! (step 6), told apart by their parameter. Every other grant passes through to the OP.

use std::net::IpAddr;

use http::header::HeaderMap;
use http::Response;

use super::exchange::Exchange;
use super::poll::Poll;
use crate::http::Body;
use crate::protocol::errors::OAuthError;
use crate::protocol::params::Params;
use crate::protocol::wire;

pub struct DeferredGrant {
    pub exchange: Exchange,
    pub poll: Poll,
}

/// The metric route of a deferred-grant request.
pub const EXCHANGE_ROUTE: &str = "token_exchange";
pub const POLL_ROUTE: &str = "token_poll";

impl DeferredGrant {
    /// Handles a token request with the deferred grant; returns its route with the result.
    pub async fn handle(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        peer: IpAddr,
    ) -> (&'static str, Result<Response<Body>, OAuthError>) {
        match (params.get(wire::DEFERRED_CODE), params.get(wire::DEFERRED_AUTH_ID)) {
            (Some(_), Some(_)) => (
                EXCHANGE_ROUTE,
                Err(OAuthError::invalid_request(
                    "Send either deferred_code or deferred_auth_id, not both.",
                )),
            ),
            (Some(deferred_code), None) => (
                EXCHANGE_ROUTE,
                self.exchange.handle(realm, headers, params, deferred_code, peer).await,
            ),
            (None, Some(deferred_auth_id)) => (
                POLL_ROUTE,
                self.poll.handle(realm, headers, params, deferred_auth_id, peer).await,
            ),
            (None, None) => (
                EXCHANGE_ROUTE,
                Err(OAuthError::invalid_request(
                    "The deferred grant needs deferred_code or deferred_auth_id.",
                )),
            ),
        }
    }
}
