//! OAuth error responses (RFC 6749 §5.2 and the DTR additions), each knowing whose fault it
//! was: that one fact decides the status code, the log level and the metric label.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;

use super::wire::{error as code, Profile, DEFERRED_AUTH_ID, DPOP_NONCE};
use crate::http::{json_bytes_no_store, Body};
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Who caused an error: it decides the status class, whether a retry can help, the log level
/// and the metric label (Pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something wrong (4xx, logged at debug).
    Client,
    /// The OP failed or could not be reached (502/503/504).
    Op,
    /// The store failed (503).
    Store,
    /// A bug or misconfiguration on our side (500).
    Internal,
}

impl Source {
    /// The metric label of a request that ended with an error from this source.
    pub fn label(self) -> &'static str {
        match self {
            Source::Client => "client_error",
            Source::Op => "upstream_error",
            Source::Store => "store_error",
            Source::Internal => "internal_error",
        }
    }
}

/// What caused an error below the OAuth surface (a store or OP failure), kept for the log line.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An OAuth error answer. Constructors only describe; [`OAuthError::into_response`] renders,
/// and the serving edge counts and logs each one once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: Cow<'static, str>,
    pub source: Source,
    /// `WWW-Authenticate` scheme when the client authenticated with the `Authorization`
    /// header (RFC 6749 §5.2: 401 with the scheme it used).
    pub www_authenticate: Option<&'static str>,
    pub retry_after: Option<u64>,
    /// What only some answers carry; boxed, as it is rare (an error travels through every
    /// endpoint's future, whose size each request pays for in moves).
    pub extra: Option<Box<Extra>>,
    #[source]
    pub cause: Option<Cause>,
}

/// The rare part of an error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    /// A fresh server nonce for `DPoP-Nonce` (RFC 9449 §8).
    DpopNonce(HeaderValue),
    /// The IETF profile's `interaction_uri` member of an `interaction_required` answer
    /// (IETF §6.4, §6.6).
    InteractionUri(String),
}

impl OAuthError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        let source = if status.is_server_error() {
            Source::Internal
        } else {
            Source::Client
        };
        Self {
            status,
            error,
            description: description.into(),
            source,
            www_authenticate: None,
            retry_after: None,
            extra: None,
            cause: None,
        }
    }

    /// Whether the same request may succeed later (the failure was ours or the OP's).
    pub fn retryable(&self) -> bool {
        matches!(self.source, Source::Op | Source::Store)
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::INVALID_REQUEST, description)
    }

    pub fn invalid_grant(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::INVALID_GRANT, description)
    }

    /// Unknown, foreign and spent ids all answer with this one text, so the answer is no
    /// oracle for which ids exist.
    pub fn unknown_deferred_auth_id() -> Self {
        Self::invalid_grant("The deferred_auth_id is invalid, was already used, or was issued to another client.")
    }

    /// [`Self::unknown_deferred_auth_id`] in a profile's names: one answer for an unknown,
    /// foreign or (OpenID) spent id, so it is no oracle (IETF §6.6: unknown and foreign alike).
    pub fn unknown_process(profile: Profile) -> Self {
        match profile {
            Profile::OpenId => Self::unknown_deferred_auth_id(),
            Profile::Ietf => {
                Self::invalid_grant("The deferral_code is invalid, was already used, or was issued to another client.")
            }
        }
    }

    /// The description in a profile's names: the poll and cancel answers are written with the
    /// OpenID `deferred_auth_id`; an IETF client reads `deferral_code` instead.
    pub fn named_for(mut self, profile: Profile) -> Self {
        let name = profile.process_param();
        if name != DEFERRED_AUTH_ID && self.description.contains(DEFERRED_AUTH_ID) {
            self.description = Cow::Owned(self.description.replace(DEFERRED_AUTH_ID, name));
        }
        self
    }

    /// A retryable answer (one with `Retry-After`) asks for at least `seconds`.
    pub fn retry_no_sooner_than(mut self, seconds: u64) -> Self {
        if let Some(wait) = self.retry_after.as_mut() {
            *wait = (*wait).max(seconds);
        }
        self
    }

    /// IETF §6.6: the process is pending and cannot go on until someone acts at
    /// `interaction_uri` (an absolute https URL without a fragment, IETF §6.4). Still 400, the
    /// client keeps polling at its interval; `deferral_code` and `interval` are not repeated.
    pub fn interaction_required(interaction_uri: &str, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            extra: Some(Box::new(Extra::InteractionUri(interaction_uri.to_owned()))),
            ..Self::new(StatusCode::BAD_REQUEST, code::INTERACTION_REQUIRED, description)
        }
    }

    /// The `interaction_uri` an `interaction_required` answer carries.
    pub fn interaction_uri(&self) -> Option<&str> {
        match self.extra.as_deref() {
            Some(Extra::InteractionUri(uri)) => Some(uri),
            _ => None,
        }
    }

    /// IETF §6.6: to the client it was issued to, a redeemed deferral code says so.
    pub fn redeemed_deferral_code() -> Self {
        Self::invalid_grant("This deferral_code was already redeemed; its tokens were delivered.")
    }

    pub fn invalid_client(description: impl Into<Cow<'static, str>>, via_header: Option<&'static str>) -> Self {
        let status = if via_header.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            www_authenticate: via_header,
            ..Self::new(status, code::INVALID_CLIENT, description)
        }
    }

    pub fn unauthorized_client(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::UNAUTHORIZED_CLIENT, description)
    }

    pub fn store(e: StoreError) -> Self {
        Self {
            source: Source::Store,
            retry_after: Some(2),
            cause: Some(Arc::new(e)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::TEMPORARILY_UNAVAILABLE,
                "The deferred authentication service is temporarily unavailable; retry later.",
            )
        }
    }

    pub fn upstream(e: UpstreamError) -> Self {
        let (status, description) = match e {
            UpstreamError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "The OpenID Provider did not answer in time; retry later.",
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                "The OpenID Provider is unreachable or failed; retry later.",
            ),
        };
        Self {
            source: Source::Op,
            retry_after: Some(2),
            cause: Some(Arc::new(e)),
            ..Self::new(status, code::TEMPORARILY_UNAVAILABLE, description)
        }
    }

    pub fn internal(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code::SERVER_ERROR, description)
    }

    /// Keeps the failure that led here, for the log line at the edge.
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// The one log line for an error answer: client mistakes at debug, outages at warn, our
    /// own faults at error.
    pub fn log(&self, route: &'static str) {
        let cause = self.cause.as_ref().map(|c| c.to_string()).unwrap_or_default();
        match self.source {
            Source::Client => {
                tracing::debug!(route, error = self.error, description = %self.description, "request refused")
            }
            Source::Op => tracing::warn!(route, error = %cause, "OP call failed"),
            Source::Store => tracing::warn!(route, error = %cause, "store call failed"),
            Source::Internal => {
                tracing::error!(route, description = %self.description, error = %cause, "internal error")
            }
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let description = ascii_description(&self.description);
        let json = match self.interaction_uri() {
            // RFC 6749 §5.2 allows no `"`, `\` or control character in `error` or
            // `error_description` (`ascii_description` made sure of the latter), so a JSON
            // string holds both as they are: nothing to escape, nothing to serialise. Every
            // refusal, a pending poll's above all, is answered this way.
            None => {
                debug_assert!(matches!(ascii_description(self.error), Cow::Borrowed(_)));
                [
                    r#"{"error":""#,
                    self.error,
                    r#"","error_description":""#,
                    &description,
                    r#""}"#,
                ]
                .concat()
                .into_bytes()
            }
            // A URL may hold anything: serialised.
            Some(interaction_uri) => {
                let body = ErrorBody {
                    error: self.error,
                    error_description: &description,
                    interaction_uri,
                };
                // Serialising plain strings cannot fail.
                serde_json::to_vec(&body).unwrap_or_default()
            }
        };
        let mut response = json_bytes_no_store(self.status, json);
        let headers = response.headers_mut();
        if let Some(scheme) = self.www_authenticate {
            let value = [scheme, " error=\"", self.error, "\""].concat();
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(WWW_AUTHENTICATE, value);
            }
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(Extra::DpopNonce(nonce)) = self.extra.map(|extra| *extra) {
            headers.insert(DPOP_NONCE.clone(), nonce);
        }
        response
    }
}

/// The body of an error answer (RFC 6749 §5.2) with the IETF profile's `interaction_uri`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
    interaction_uri: &'a str,
}

/// Longest `error_description` sent, in characters.
pub const MAX_DESCRIPTION: usize = 500;

/// An `error_description` as RFC 6749 §5.2 allows it: printable ASCII without `"` and `\`
/// (%x20-21 / %x23-5B / %x5D-7E). Texts from elsewhere (the verification service's webhook)
/// may hold anything; quotes become `'`, backslashes `/`, other characters `?`.
pub fn ascii_description(text: &str) -> Cow<'_, str> {
    let allowed = |c: char| matches!(c, '\x20'..='\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E');
    // Every allowed character is ASCII, so byte by byte says the same (and costs less).
    if text.len() <= MAX_DESCRIPTION && text.bytes().all(|b| allowed(char::from(b))) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .take(MAX_DESCRIPTION)
            .map(|c| match c {
                '"' => '\'',
                '\\' => '/',
                c if allowed(c) => c,
                _ => '?',
            })
            .collect(),
    )
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        Self::store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(error: OAuthError) -> String {
        use http_body_util::BodyExt;
        let body = error.into_response().into_body();
        let bytes = futures_util::FutureExt::now_or_never(body.collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn only_a_retryable_answer_is_told_to_wait_longer() {
        let outage = || OAuthError::store(crate::store::StoreError::Unavailable("down".into()));
        assert_eq!(outage().retry_no_sooner_than(7).retry_after, Some(7));
        assert_eq!(outage().retry_no_sooner_than(1).retry_after, Some(2));
        let refused = OAuthError::invalid_grant("spent").retry_no_sooner_than(7);
        assert_eq!(refused.retry_after, None);
        let response = outage().retry_no_sooner_than(7).into_response();
        assert_eq!(response.headers()["retry-after"], "7");
    }

    #[test]
    fn an_error_renders_its_members_in_order() {
        let response = OAuthError::invalid_client("Client \"authentication\" failed.", Some("Basic")).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Basic error=\"invalid_client\"");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body = body_of(OAuthError::invalid_grant("G\u{e4}one \"x\"."));
        assert_eq!(body, r#"{"error":"invalid_grant","error_description":"G?one 'x'."}"#);
        let body = body_of(OAuthError::interaction_required("https://v.example/a?b=c", "Waiting."));
        assert_eq!(
            body,
            r#"{"error":"interaction_required","error_description":"Waiting.","interaction_uri":"https://v.example/a?b=c"}"#
        );
        let response = OAuthError::store(StoreError::Unavailable("down".into())).into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "2");
    }

    #[test]
    fn descriptions_are_ascii_safe() {
        assert_eq!(ascii_description("Still checking."), "Still checking.");
        assert_eq!(
            ascii_description("Identit\u{e4}t \"gepr\u{fc}ft\"\n\\ok"),
            "Identit?t 'gepr?ft'?/ok"
        );
        assert_eq!(ascii_description(&"x".repeat(600)).len(), MAX_DESCRIPTION);
    }

    #[test]
    fn every_error_code_goes_into_json_as_it_is() {
        use crate::protocol::wire::error::*;
        for code in [
            AUTHORIZATION_PENDING,
            SLOW_DOWN,
            EXPIRED_TOKEN,
            ACCESS_DENIED,
            INTERACTION_REQUIRED,
            INVALID_DPOP_PROOF,
            USE_DPOP_NONCE,
            INVALID_REQUEST,
            INVALID_CLIENT,
            INVALID_GRANT,
            UNAUTHORIZED_CLIENT,
            UNSUPPORTED_RESPONSE_TYPE,
            SERVER_ERROR,
            INVALID_SCOPE,
            REQUEST_NOT_SUPPORTED,
            REQUEST_URI_NOT_SUPPORTED,
            TEMPORARILY_UNAVAILABLE,
        ] {
            assert!(matches!(ascii_description(code), Cow::Borrowed(_)), "{code}");
            let body: serde_json::Value =
                serde_json::from_str(&body_of(OAuthError::new(StatusCode::BAD_REQUEST, code, "d"))).unwrap();
            assert_eq!(body, serde_json::json!({"error": code, "error_description": "d"}));
        }
    }

    proptest::proptest! {
        /// Whatever the description, the body is the JSON a serialiser would write for it.
        #[test]
        fn the_body_is_the_json_of_its_members(description in proptest::prelude::any::<String>()) {
            let body = body_of(OAuthError::new(StatusCode::BAD_REQUEST, code::ACCESS_DENIED, description.clone()));
            let expected = serde_json::to_string(&serde_json::json!({
                "error": code::ACCESS_DENIED,
                "error_description": ascii_description(&description),
            }))
            .unwrap();
            proptest::prop_assert_eq!(body, expected);
        }
    }
}
