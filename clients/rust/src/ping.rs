//! The RP's notification endpoint: a ping is a POST of `{"deferred_auth_id": …}` with
//! `Authorization: Bearer <deferred_notification_token>` (OpenID), or a callback of
//! `{"deferral_code": …}` with `Authorization: Bearer <client_notification_token>` (IETF §7),
//! the token the RP bound to that id at the exchange (compared in constant time, so a ping
//! cannot be forged or mixed up).

use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use crate::Profile;

/// Why a ping is refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ping refused ({status}): {reason}")]
pub struct PingRefusal {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl PingRefusal {
    fn new(status: StatusCode, reason: &'static str) -> Self {
        Self { status, reason }
    }

    /// Headers for the refusal (`WWW-Authenticate: Bearer` on 401).
    pub fn www_authenticate(&self) -> Option<&'static str> {
        (self.status == StatusCode::UNAUTHORIZED).then_some("Bearer")
    }
}

/// Checks an OpenID-profile ping; `token_for` looks up the notification token bound to the
/// id. On success answer 204 and poll for that id. [`verify_ping_in`] for either profile.
pub fn verify_ping(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    token_for: impl FnOnce(&str) -> Option<String>,
) -> Result<String, PingRefusal> {
    verify_ping_in(Profile::OpenId, method, headers, body, token_for)
}

/// Checks a ping (a callback) of a profile: its body names the process by the profile's
/// parameter (`deferred_auth_id`, `deferral_code`); `token_for` looks up the bearer token
/// bound to that id. On success answer 204 and poll for that id.
pub fn verify_ping_in(
    profile: Profile,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    token_for: impl FnOnce(&str) -> Option<String>,
) -> Result<String, PingRefusal> {
    if method != Method::POST {
        return Err(PingRefusal::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(PingRefusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not JSON"));
    }
    let missing = PingRefusal::new(
        StatusCode::BAD_REQUEST,
        match profile {
            Profile::OpenId => "no deferred_auth_id",
            Profile::Ietf => "no deferral_code",
        },
    );
    let ping: Value = serde_json::from_slice(body).map_err(|_| missing.clone())?;
    let id = ping
        .get(profile.process_param())
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or(missing)?;
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace));
    let refused = PingRefusal::new(StatusCode::UNAUTHORIZED, "invalid notification token");
    let (Some(presented), Some(expected)) = (presented, token_for(id)) else {
        return Err(refused);
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), expected.as_bytes())
        .map_err(|_| refused)?;
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: Option<&str>, content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_str(content_type).unwrap());
        if let Some(auth) = auth {
            h.insert("authorization", HeaderValue::from_str(auth).unwrap());
        }
        h
    }

    #[test]
    fn only_the_bound_token_is_accepted() {
        let token = |id: &str| (id == "id-1").then(|| "tok".to_owned());
        let body = br#"{"deferred_auth_id":"id-1"}"#;
        let ok = verify_ping(
            &Method::POST,
            &headers(Some("Bearer tok"), "application/json"),
            body,
            token,
        );
        assert_eq!(ok.unwrap(), "id-1");
        let status = |m: Method, h: HeaderMap, b: &[u8]| verify_ping(&m, &h, b, token).unwrap_err().status;
        assert_eq!(
            status(Method::POST, headers(Some("Bearer tok2"), "application/json"), body),
            401
        );
        assert_eq!(status(Method::POST, headers(None, "application/json"), body), 401);
        assert_eq!(
            status(
                Method::POST,
                headers(Some("Bearer tok"), "application/json"),
                br#"{"deferred_auth_id":"id-2"}"#
            ),
            401
        );
        assert_eq!(
            status(Method::POST, headers(Some("Basic tok"), "application/json"), body),
            401
        );
        assert_eq!(
            status(Method::GET, headers(Some("Bearer tok"), "application/json"), body),
            405
        );
        assert_eq!(
            status(Method::POST, headers(Some("Bearer tok"), "text/plain"), body),
            415
        );
        assert_eq!(
            status(Method::POST, headers(Some("Bearer tok"), "application/json"), b"{}"),
            400
        );
    }

    #[test]
    fn an_ietf_callback_names_the_deferral_code() {
        let token = |id: &str| (id == "dc-1").then(|| "tok".to_owned());
        let h = headers(Some("Bearer tok"), "application/json");
        let ietf = |body: &[u8]| verify_ping_in(Profile::Ietf, &Method::POST, &h, body, token);
        assert_eq!(ietf(br#"{"deferral_code":"dc-1"}"#).unwrap(), "dc-1");
        // The other profile's name is not this one's.
        assert_eq!(ietf(br#"{"deferred_auth_id":"dc-1"}"#).unwrap_err().status, 400);
        assert_eq!(ietf(br#"{"deferral_code":"dc-2"}"#).unwrap_err().status, 401);
        assert_eq!(
            verify_ping(&Method::POST, &h, br#"{"deferral_code":"dc-1"}"#, token)
                .unwrap_err()
                .status,
            400
        );
    }
}
