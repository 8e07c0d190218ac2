//! OAuth error responses (RFC 6749 §5.2 and the DTR additions), each knowing whose fault it
//! was: that one fact decides the status code, the log level and the metric label.

use std::borrow::Cow;

use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::json;

use super::wire::error as code;
use crate::http::{json_no_store, Body};
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong (4xx, logged at debug).
    Client,
    /// The OP failed or could not be reached (502/503, retryable).
    Upstream,
    /// The store failed (503, retryable).
    Store,
    /// A bug or misconfiguration on our side.
    Internal,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::Client => "client_error",
            Fault::Upstream => "upstream_error",
            Fault::Store => "store_error",
            Fault::Internal => "internal_error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: Cow<'static, str>,
    pub fault: Fault,
    /// `WWW-Authenticate` scheme when the client authenticated with the `Authorization`
    /// header (RFC 6749 §5.2: 401 with the scheme it used).
    pub www_authenticate: Option<&'static str>,
    pub retry_after: Option<u64>,
    /// A fresh server nonce for `DPoP-Nonce` (RFC 9449 §8).
    pub dpop_nonce: Option<HeaderValue>,
}

impl OAuthError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        let fault = if status.is_server_error() {
            Fault::Internal
        } else {
            Fault::Client
        };
        Self {
            status,
            error,
            description: description.into(),
            fault,
            www_authenticate: None,
            retry_after: None,
            dpop_nonce: None,
        }
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
        tracing::warn!(error = %e, "store call failed");
        Self {
            fault: Fault::Store,
            retry_after: Some(2),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::TEMPORARILY_UNAVAILABLE,
                "The deferred authentication service is temporarily unavailable; retry later.",
            )
        }
    }

    pub fn upstream(e: &UpstreamError) -> Self {
        tracing::warn!(error = %e, "OP call failed");
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
            fault: Fault::Upstream,
            retry_after: Some(2),
            ..Self::new(status, code::TEMPORARILY_UNAVAILABLE, description)
        }
    }

    pub fn internal(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code::SERVER_ERROR, description)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = json_no_store(
            self.status,
            &json!({ "error": self.error, "error_description": self.description }),
        );
        let headers = response.headers_mut();
        if let Some(scheme) = self.www_authenticate {
            let value = format!("{scheme} error=\"{}\"", self.error);
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(WWW_AUTHENTICATE, value);
            }
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(nonce) = self.dpop_nonce {
            headers.insert(crate::dpop::DPOP_NONCE.clone(), nonce);
        }
        response
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        Self::store(e)
    }
}
