//! The RP's notification endpoint: a ping is a POST of `{"deferred_auth_id": …}` with
//! `Authorization: Bearer <deferred_notification_token>`, the token the RP bound to that id at
//! the exchange (compared in constant time, so a ping cannot be forged or mixed up).

use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;

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

#[derive(Deserialize)]
struct Ping {
    deferred_auth_id: String,
}

/// Checks a ping; `token_for` looks up the notification token bound to the id. On success
/// answer 204 and poll for that id.
pub fn verify_ping(
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
    let ping: Ping =
        serde_json::from_slice(body).map_err(|_| PingRefusal::new(StatusCode::BAD_REQUEST, "no deferred_auth_id"))?;
    if ping.deferred_auth_id.is_empty() {
        return Err(PingRefusal::new(StatusCode::BAD_REQUEST, "no deferred_auth_id"));
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace));
    let refused = PingRefusal::new(StatusCode::UNAUTHORIZED, "invalid notification token");
    let (Some(presented), Some(expected)) = (presented, token_for(&ping.deferred_auth_id)) else {
        return Err(refused);
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), expected.as_bytes())
        .map_err(|_| refused)?;
    Ok(ping.deferred_auth_id)
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
}
