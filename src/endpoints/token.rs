//! The token endpoint's deferred grants, in either profile: the code exchange (step 3) or a
//! poll (step 6), told apart by their grant type and parameters (see [`classify`]). Every
//! other grant passes through to the OP.

use std::net::IpAddr;

use http::header::HeaderMap;
use http::Response;

use super::exchange::Exchange;
use super::poll::Poll;
use crate::http::Body;
use crate::protocol::errors::OAuthError;
use crate::protocol::params::Params;
use crate::protocol::wire::{self, Profile};
use crate::tls::ClientCertificate;

pub struct DeferredGrant {
    pub exchange: Exchange,
    pub poll: Poll,
}

/// The metric route of a deferred-grant request.
pub const EXCHANGE_ROUTE: &str = "token_exchange";
pub const POLL_ROUTE: &str = "token_poll";

/// A token request the proxy answers itself, in the wire names of `profile`.
#[derive(Debug)]
pub enum Step<'a> {
    /// Trade the proxy's code for a process.
    Exchange { profile: Profile, code: &'a str },
    /// Ask a process for its tokens.
    Poll { profile: Profile, id: &'a str },
    /// A deferred request the proxy refuses before any lookup.
    Refuse(&'static str, OAuthError),
}

/// What a token request is, from its parameters alone; `None`: not the proxy's, pass it to the
/// OP.
///
/// - OpenID profile: the grant `urn:openid:params:grant-type:deferred` with `deferred_code`
///   (the exchange) or `deferred_auth_id` (a poll).
/// - IETF profile: `authorization_code` with a code the proxy issued (the exchange, which must
///   opt in with `completion_mode=deferred`), or `urn:ietf:params:oauth:grant-type:deferred`
///   with `deferral_code` (a poll). An `authorization_code` request with the OP's own code
///   passes through, `completion_mode` or not: the OP answers it at once, which the draft
///   allows (the server decides whether to defer).
pub fn classify(params: &Params) -> Option<Step<'_>> {
    let grant_type = params.get("grant_type")?;
    if grant_type == wire::GRANT_TYPE_DEFERRED {
        let profile = Profile::OpenId;
        return Some(
            match (params.get(wire::DEFERRED_CODE), params.get(wire::DEFERRED_AUTH_ID)) {
                (Some(_), Some(_)) => Step::Refuse(
                    EXCHANGE_ROUTE,
                    OAuthError::invalid_request("Send either deferred_code or deferred_auth_id, not both."),
                ),
                (Some(code), None) => Step::Exchange { profile, code },
                (None, Some(id)) => Step::Poll { profile, id },
                (None, None) => Step::Refuse(
                    EXCHANGE_ROUTE,
                    OAuthError::invalid_request("The deferred grant needs deferred_code or deferred_auth_id."),
                ),
            },
        );
    }
    if grant_type == wire::GRANT_TYPE_DEFERRED_IETF {
        let profile = Profile::Ietf;
        return Some(match params.get(wire::DEFERRAL_CODE) {
            Some(id) => Step::Poll { profile, id },
            None => Step::Refuse(
                POLL_ROUTE,
                OAuthError::invalid_request("The deferred grant needs deferral_code."),
            ),
        });
    }
    if grant_type == wire::GRANT_TYPE_AUTHORIZATION_CODE {
        let code = params.get("code").filter(|c| c.starts_with(wire::IETF_CODE_PREFIX))?;
        if !wire::accepts_deferred(params.get(wire::COMPLETION_MODE)) {
            // The code stands for a process that cannot end now; the client must accept a
            // deferred answer. The code is not consumed: a corrected request may follow.
            return Some(Step::Refuse(
                EXCHANGE_ROUTE,
                OAuthError::invalid_request(
                    "This authorization code starts a deferred token response: send completion_mode=deferred.",
                ),
            ));
        }
        return Some(Step::Exchange {
            profile: Profile::Ietf,
            code,
        });
    }
    None
}

impl DeferredGrant {
    /// Handles a token request [`classify`] recognised; returns its route with the result.
    pub async fn handle(
        &self,
        realm: &str,
        headers: &HeaderMap,
        params: &Params,
        step: Step<'_>,
        peer: IpAddr,
        certificate: Option<&ClientCertificate>,
    ) -> (&'static str, Result<Response<Body>, OAuthError>) {
        match step {
            // Once per process against many polls: boxed, so the poll's future stays small.
            Step::Exchange { profile, code } => (
                EXCHANGE_ROUTE,
                Box::pin(
                    self.exchange
                        .handle(realm, headers, params, code, profile, peer, certificate),
                )
                .await,
            ),
            Step::Poll { profile, id } => (
                POLL_ROUTE,
                self.poll
                    .handle(realm, headers, params, id, profile, peer, certificate)
                    .await,
            ),
            Step::Refuse(route, error) => (route, Err(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(form: &str) -> Option<Step<'static>> {
        let params: &'static Params = Box::leak(Box::new(Params::parse(form.as_bytes()).unwrap()));
        classify(params)
    }

    fn refused(step: Option<Step>) -> &'static str {
        match step {
            Some(Step::Refuse(_, e)) => e.error,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn each_profile_is_recognised_by_its_own_names() {
        let openid = "grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Adeferred";
        let ietf = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adeferred";
        assert!(matches!(
            step(&format!("{openid}&deferred_code=c")),
            Some(Step::Exchange {
                profile: Profile::OpenId,
                code: "c"
            })
        ));
        assert!(matches!(
            step(&format!("{openid}&deferred_auth_id=i")),
            Some(Step::Poll {
                profile: Profile::OpenId,
                id: "i"
            })
        ));
        assert!(matches!(
            step(&format!("{ietf}&deferral_code=i")),
            Some(Step::Poll {
                profile: Profile::Ietf,
                id: "i"
            })
        ));
        assert!(matches!(
            step("grant_type=authorization_code&code=deferred.abc&completion_mode=deferred"),
            Some(Step::Exchange {
                profile: Profile::Ietf,
                code: "deferred.abc"
            })
        ));
        assert!(matches!(
            step("grant_type=authorization_code&code=deferred.abc&completion_mode=other+deferred"),
            Some(Step::Exchange {
                profile: Profile::Ietf,
                code: "deferred.abc"
            })
        ));
    }

    #[test]
    fn wrong_shapes_are_invalid_request() {
        let openid = "grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Adeferred";
        let ietf = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adeferred";
        assert_eq!(refused(step(openid)), wire::error::INVALID_REQUEST);
        assert_eq!(
            refused(step(&format!("{openid}&deferred_code=c&deferred_auth_id=i"))),
            wire::error::INVALID_REQUEST
        );
        // The OpenID parameter under the IETF grant type names nothing.
        assert_eq!(
            refused(step(&format!("{ietf}&deferred_auth_id=i"))),
            wire::error::INVALID_REQUEST
        );
        // The proxy's code without the opt-in: refused, not consumed.
        assert_eq!(
            refused(step("grant_type=authorization_code&code=deferred.abc")),
            wire::error::INVALID_REQUEST
        );
    }

    #[test]
    fn everything_else_is_the_ops() {
        assert!(step("grant_type=authorization_code&code=op-code&completion_mode=deferred").is_none());
        assert!(step("grant_type=client_credentials&completion_mode=deferred").is_none());
        assert!(step("grant_type=refresh_token&refresh_token=deferred.x").is_none());
        assert!(step("code=deferred.abc").is_none());
    }
}
