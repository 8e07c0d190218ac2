//! Every name that crosses the wire in the DTR profiles, in one place.
//!
//! Two profiles share one engine: the OpenID profile (OpenID Connect Deferred Token Response
//! 1.0, the default) and the OAuth profile of the IETF draft
//! (draft-ietf-oauth-deferred-token-response; § numbers below are that draft's). A client's [`Profile`] is passed down to the
//! endpoints, which ask it for the names below rather than comparing strings themselves
//! (docs/profiles.md lists every difference).

pub use crate::config::Profile;

/// The `response_type` token that asks for a deferred acknowledgment.
pub const RESPONSE_TYPE_DEFERRED_CODE: &str = "deferred_code";
/// The plain authorization-code `response_type` token (`deferred_code code` is allowed).
pub const RESPONSE_TYPE_CODE: &str = "code";
/// The extension grant used for both the deferred code exchange and polling.
pub const GRANT_TYPE_DEFERRED: &str = "urn:openid:params:grant-type:deferred";

/// Acknowledgment parameter carrying the deferred code.
pub const DEFERRED_CODE: &str = "deferred_code";
/// The RP's handle on one authentication process.
pub const DEFERRED_AUTH_ID: &str = "deferred_auth_id";
/// Bearer token the RP hands us at the exchange for authenticating pings.
pub const DEFERRED_NOTIFICATION_TOKEN: &str = "deferred_notification_token";
/// Optional ID token returned by the exchange.
pub const INTERIM_ID_TOKEN: &str = "interim_id_token";

/// Client metadata naming the RP's ping endpoint.
pub const CLIENT_NOTIFICATION_ENDPOINT: &str = "deferred_client_notification_endpoint";
/// Discovery metadata naming the cancellation endpoint. The draft defines the endpoint but no
/// metadata name; this one follows its title, "Authentication Cancellation Endpoint".
pub const CANCELLATION_ENDPOINT_METADATA: &str = "deferred_authentication_cancellation_endpoint";

/// The IETF profile's grant type for polling with a `deferral_code`.
pub const GRANT_TYPE_DEFERRED_IETF: &str = "urn:ietf:params:oauth:grant-type:deferred";
/// The IETF profile's handle on one deferred token request (the OpenID `deferred_auth_id`).
pub const DEFERRAL_CODE: &str = "deferral_code";
/// The IETF profile's opt-in: a space-separated list of values on the token request (and,
/// as an advance hint, on the authorization request).
pub const COMPLETION_MODE: &str = "completion_mode";
/// The `completion_mode` value that accepts a deferred answer.
pub const COMPLETION_MODE_DEFERRED: &str = "deferred";
/// The IETF profile's authorization server metadata flag (§5.1, §13.5).
pub const DEFERRED_TOKEN_RESPONSE_SUPPORTED: &str = "deferred_token_response_supported";
/// The IETF profile's bearer token for callbacks, sent by the client on the token request
/// that opts in (§6.3); the OpenID profile's `deferred_notification_token`.
pub const CLIENT_NOTIFICATION_TOKEN: &str = "client_notification_token";
/// The token type of a deferral code at the revocation endpoint (`token_type_hint`), where
/// the IETF profile cancels (§8.1, §13.6).
pub const TOKEN_TYPE_DEFERRAL_CODE: &str = "urn:ietf:params:oauth:token-type:deferral-code";
/// Authorization server metadata listing the token types the revocation endpoint takes
/// (§8.4, §13.5).
pub const REVOCATION_TOKEN_TYPES_METADATA: &str = "revocation_endpoint_token_type_values_supported";
/// The authorization code grant, which the IETF profile defers at the token endpoint.
pub const GRANT_TYPE_AUTHORIZATION_CODE: &str = "authorization_code";
/// The prefix of the authorization codes the proxy issues to IETF-profile clients (its own
/// handle on the OP's sealed code), so the token endpoint tells them from the OP's codes
/// without a store lookup. Opaque to the client.
pub const IETF_CODE_PREFIX: &str = "deferred.";
/// The IETF profile's pointer to where the end-user (or another party) must act before a
/// pending request can go on: the member of an `interaction_required` answer (§6.4, §6.6,
/// §13.1).
pub const INTERACTION_URI: &str = "interaction_uri";

/// Whether a `completion_mode` value (space-separated) accepts a deferred answer.
pub fn accepts_deferred(completion_mode: Option<&str>) -> bool {
    completion_mode.is_some_and(|modes| modes.split(' ').any(|m| m == COMPLETION_MODE_DEFERRED))
}

/// The wire names of one profile.
impl Profile {
    /// The grant type of a poll (and, in the OpenID profile, of the code exchange).
    pub fn grant_type(self) -> &'static str {
        match self {
            Profile::OpenId => GRANT_TYPE_DEFERRED,
            Profile::Ietf => GRANT_TYPE_DEFERRED_IETF,
        }
    }

    /// The parameter naming a process: in the exchange's answer, a poll, a ping, a cancel.
    pub fn process_param(self) -> &'static str {
        match self {
            Profile::OpenId => DEFERRED_AUTH_ID,
            Profile::Ietf => DEFERRAL_CODE,
        }
    }

    /// The exchange's parameter carrying the client's bearer token for pings (callbacks).
    pub fn notification_token_param(self) -> &'static str {
        match self {
            Profile::OpenId => DEFERRED_NOTIFICATION_TOKEN,
            Profile::Ietf => CLIENT_NOTIFICATION_TOKEN,
        }
    }

    /// The acknowledgment's parameter carrying the proxy's code, and the code's prefix.
    pub fn acknowledgment_code(self) -> (&'static str, &'static str) {
        match self {
            Profile::OpenId => (DEFERRED_CODE, ""),
            Profile::Ietf => (RESPONSE_TYPE_CODE, IETF_CODE_PREFIX),
        }
    }
}

/// The DPoP proof header (RFC 9449 §4.1).
pub static DPOP: http::HeaderName = http::HeaderName::from_static("dpop");
/// The DPoP server-nonce header (RFC 9449 §8).
pub static DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// Error codes the profile uses beyond RFC 6749 §5.2 (RFC 8628 §3.5, RFC 9449 §5, CIBA §11).
pub mod error {
    pub const AUTHORIZATION_PENDING: &str = "authorization_pending";
    pub const SLOW_DOWN: &str = "slow_down";
    pub const EXPIRED_TOKEN: &str = "expired_token";
    pub const ACCESS_DENIED: &str = "access_denied";
    /// The IETF profile's pending state that waits on an external interaction (§6.6, §13.7).
    pub const INTERACTION_REQUIRED: &str = "interaction_required";
    pub const INVALID_DPOP_PROOF: &str = "invalid_dpop_proof";
    pub const USE_DPOP_NONCE: &str = "use_dpop_nonce";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const INVALID_CLIENT: &str = "invalid_client";
    pub const INVALID_GRANT: &str = "invalid_grant";
    pub const UNAUTHORIZED_CLIENT: &str = "unauthorized_client";
    pub const UNSUPPORTED_RESPONSE_TYPE: &str = "unsupported_response_type";
    pub const SERVER_ERROR: &str = "server_error";
    pub const INVALID_SCOPE: &str = "invalid_scope";
    pub const REQUEST_NOT_SUPPORTED: &str = "request_not_supported";
    pub const REQUEST_URI_NOT_SUPPORTED: &str = "request_uri_not_supported";
    pub const TEMPORARILY_UNAVAILABLE: &str = "temporarily_unavailable";
}

/// Parses a `response_type` value: `Some(true)` when it asks for DTR (`deferred_code` or
/// `deferred_code code` in any word order), `Some(false)` for anything without `deferred_code`,
/// `None` for a value that names `deferred_code` in a combination the profile does not define.
pub fn is_deferred_response_type(value: &str) -> Option<bool> {
    let mut deferred = false;
    let mut code = false;
    let mut other = false;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        match word {
            RESPONSE_TYPE_DEFERRED_CODE if !deferred => deferred = true,
            RESPONSE_TYPE_CODE if !code => code = true,
            _ => other = true,
        }
    }
    match (deferred, other) {
        (false, _) => Some(false),
        (true, false) => Some(true),
        (true, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_mode_is_a_space_separated_list() {
        assert!(accepts_deferred(Some("deferred")));
        assert!(accepts_deferred(Some("other deferred")));
        assert!(!accepts_deferred(Some("deferred_code")));
        assert!(!accepts_deferred(Some("")));
        assert!(!accepts_deferred(None));
    }

    #[test]
    fn each_profile_has_its_own_names() {
        assert_eq!(Profile::OpenId.grant_type(), "urn:openid:params:grant-type:deferred");
        assert_eq!(Profile::Ietf.grant_type(), "urn:ietf:params:oauth:grant-type:deferred");
        assert_eq!(Profile::OpenId.process_param(), "deferred_auth_id");
        assert_eq!(Profile::Ietf.process_param(), "deferral_code");
        assert_eq!(
            Profile::OpenId.notification_token_param(),
            "deferred_notification_token"
        );
        assert_eq!(Profile::Ietf.notification_token_param(), "client_notification_token");
        assert_eq!(Profile::OpenId.acknowledgment_code(), ("deferred_code", ""));
        assert_eq!(Profile::Ietf.acknowledgment_code(), ("code", IETF_CODE_PREFIX));
    }

    #[test]
    fn deferred_response_types_in_any_order() {
        assert_eq!(is_deferred_response_type("deferred_code"), Some(true));
        assert_eq!(is_deferred_response_type("deferred_code code"), Some(true));
        assert_eq!(is_deferred_response_type("code deferred_code"), Some(true));
        assert_eq!(is_deferred_response_type("code"), Some(false));
        assert_eq!(is_deferred_response_type("code id_token"), Some(false));
        assert_eq!(is_deferred_response_type("deferred_code id_token"), None);
        assert_eq!(is_deferred_response_type("deferred_code deferred_code"), None);
    }
}
