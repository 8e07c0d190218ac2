//! The two DTR profiles an RP may speak, as the names each step puts on the wire: the OpenID
//! profile (`openid-deferred-token-response-1_0`, the default) and the OAuth working group's
//! (`draft-ietf-oauth-deferred-token-response`, § numbers below are that draft's). Every step
//! of [`crate::DtrClient`] is one code path that asks its client's profile for these names.

/// `grant_type` of the OpenID profile's deferred code exchange and of its polls.
pub const DEFERRED_GRANT: &str = "urn:openid:params:grant-type:deferred";
/// `grant_type` of the IETF profile's polls (§6.5).
pub const DEFERRED_GRANT_IETF: &str = "urn:ietf:params:oauth:grant-type:deferred";
/// The `token_type_hint` of a deferral code at the revocation endpoint (§8.1).
pub const DEFERRAL_CODE_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:deferral-code";
/// The IETF profile's opt-in parameter (§5), on the authorization and the token request.
pub const COMPLETION_MODE: &str = "completion_mode";
/// The IETF authorization server metadata flag (§5.1).
pub const DEFERRED_TOKEN_RESPONSE_SUPPORTED: &str = "deferred_token_response_supported";

/// Which DTR profile a client speaks at the OP (dtr-proxy: the client's `profile` setting or
/// its realm's, `DTR_IETF_REALMS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// OpenID Connect DTR 1.0: `response_type=deferred_code`, the deferred grant with
    /// `deferred_code`, a `200` naming `deferred_auth_id`, a cancellation endpoint.
    #[default]
    OpenId,
    /// The OAuth profile: a code flow with `completion_mode=deferred`, the code exchange
    /// answered `400 authorization_pending` with a `deferral_code`, polls with the IETF grant,
    /// cancellation by revoking the deferral code (RFC 7009).
    Ietf,
}

impl Profile {
    /// The authorization request's `response_type` (`with_code`: the OpenID `deferred_code
    /// code`; the IETF profile has only `code`).
    pub fn response_type(self, with_code: bool) -> Option<&'static str> {
        match (self, with_code) {
            (Profile::OpenId, false) => Some("deferred_code"),
            (Profile::OpenId, true) => Some("deferred_code code"),
            (Profile::Ietf, false) => Some("code"),
            (Profile::Ietf, true) => None,
        }
    }

    /// `completion_mode=deferred` on the authorization request (the advance hint, §5.2) and on
    /// the code exchange (§6.3) in the IETF profile; nothing in the OpenID one.
    pub fn completion_mode(self) -> Option<&'static str> {
        match self {
            Profile::OpenId => None,
            Profile::Ietf => Some("deferred"),
        }
    }

    /// The acknowledgment's parameter carrying the code to exchange.
    pub fn acknowledgment_code(self) -> &'static str {
        match self {
            Profile::OpenId => "deferred_code",
            Profile::Ietf => "code",
        }
    }

    /// The code exchange's `grant_type` (its code travels under [`Self::acknowledgment_code`]).
    pub fn exchange_grant(self) -> &'static str {
        match self {
            Profile::OpenId => DEFERRED_GRANT,
            Profile::Ietf => "authorization_code",
        }
    }

    /// What a deferred exchange answers: `200` (OpenID §5.3), or `400` with
    /// `authorization_pending` (IETF §6.4).
    pub fn exchange_answer(self) -> (u16, Option<&'static str>) {
        match self {
            Profile::OpenId => (200, None),
            Profile::Ietf => (400, Some("authorization_pending")),
        }
    }

    /// The exchange's parameter carrying the bearer token for pings (callbacks).
    pub fn notification_token_param(self) -> &'static str {
        match self {
            Profile::OpenId => "deferred_notification_token",
            Profile::Ietf => "client_notification_token",
        }
    }

    /// The `grant_type` of a poll.
    pub fn poll_grant(self) -> &'static str {
        match self {
            Profile::OpenId => DEFERRED_GRANT,
            Profile::Ietf => DEFERRED_GRANT_IETF,
        }
    }

    /// The parameter naming a process: in the exchange's answer, a poll, a ping.
    pub fn process_param(self) -> &'static str {
        match self {
            Profile::OpenId => "deferred_auth_id",
            Profile::Ietf => "deferral_code",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_profile_has_its_own_names() {
        assert_eq!(Profile::default(), Profile::OpenId);
        assert_eq!(Profile::OpenId.response_type(false), Some("deferred_code"));
        assert_eq!(Profile::OpenId.response_type(true), Some("deferred_code code"));
        assert_eq!(Profile::Ietf.response_type(false), Some("code"));
        assert_eq!(Profile::Ietf.response_type(true), None);
        assert_eq!(Profile::OpenId.completion_mode(), None);
        assert_eq!(Profile::Ietf.completion_mode(), Some("deferred"));
        assert_eq!(Profile::Ietf.acknowledgment_code(), "code");
        assert_eq!(Profile::Ietf.exchange_grant(), "authorization_code");
        assert_eq!(Profile::OpenId.exchange_grant(), DEFERRED_GRANT);
        assert_eq!(Profile::Ietf.exchange_answer(), (400, Some("authorization_pending")));
        assert_eq!(Profile::Ietf.notification_token_param(), "client_notification_token");
        assert_eq!(Profile::Ietf.poll_grant(), "urn:ietf:params:oauth:grant-type:deferred");
        assert_eq!(Profile::Ietf.process_param(), "deferral_code");
        assert_eq!(Profile::OpenId.process_param(), "deferred_auth_id");
    }
}
