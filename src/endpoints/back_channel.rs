//! What the exchange and the final refresh share about talking to the OP on the RP's behalf:
//! which of the RP's headers travel, how the OP's answer is read, and how it is relayed.

use http::header::{self, HeaderMap};
use http::Response;
use serde::Deserialize;

use crate::http::{full, Body, NO_CACHE, NO_STORE};
use crate::protocol::wire::{DPOP, DPOP_NONCE};
use crate::upstream::BufferedReply;

/// Headers of the RP's request that travel with it to the OP: its own client authentication,
/// its DPoP proof (so a DPoP-capable OP binds the tokens to the RP's key), and its
/// `X-Forwarded-For` chain (kept only when the peer is a trusted proxy, like pass-through),
/// and the client certificate header of a trusted ingress (`DTR_CLIENT_CERT_HEADER`: the
/// public service strips every other one first), so an OP that reads it (Keycloak's
/// `x509cert-lookup`) binds its tokens to the RP's certificate.
pub fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
    let mut out = HeaderMap::new();
    for name in [&header::AUTHORIZATION, &DPOP] {
        if let Some(value) = headers.get(name) {
            out.insert(name.clone(), value.clone());
        }
    }
    for name in crate::tls::CERTIFICATE_HEADERS {
        for value in headers.get_all(name) {
            out.append(name, value.clone());
        }
    }
    for value in headers.get_all(&X_FORWARDED_FOR) {
        out.append(X_FORWARDED_FOR.clone(), value.clone());
    }
    out
}

#[derive(Deserialize, Default)]
pub struct IdTokenClaims {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub nonce: Option<String>,
}

/// Claims of an ID token the OP just handed us over the back channel; its signature is the
/// RP's to check, ours only to read who it is about.
pub fn id_token_claims(id_token: Option<&str>) -> IdTokenClaims {
    id_token
        .and_then(|t| jsonwebtoken::dangerous::insecure_decode::<IdTokenClaims>(t).ok())
        .map(|data| data.claims)
        .unwrap_or_default()
}

/// Passes the OP's answer on to the RP: status, JSON body, and the headers that matter to it.
pub fn relay(reply: &BufferedReply) -> Response<Body> {
    let mut response = Response::new(full(reply.body.clone()));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    for name in [&header::CONTENT_TYPE, &header::WWW_AUTHENTICATE, &DPOP_NONCE] {
        for value in reply.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CACHE_CONTROL, NO_STORE);
    headers.insert(header::PRAGMA, NO_CACHE);
    response
}

pub fn reply_error(reply: &BufferedReply) -> Option<String> {
    reply.json()?.get("error")?.as_str().map(str::to_owned)
}

/// OP errors that say nothing about the grant itself: the request may be retried as is or
/// with corrected credentials, so nothing is consumed.
pub fn is_request_error(error: Option<&str>) -> bool {
    matches!(
        error,
        Some("invalid_client" | "unauthorized_client" | "invalid_request" | "invalid_dpop_proof" | "use_dpop_nonce")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_credentials_proof_and_client_chain_travel_to_the_op() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
        incoming.insert(DPOP.clone(), HeaderValue::from_static("proof"));
        incoming.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        incoming.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        incoming.insert(header::COOKIE, HeaderValue::from_static("kc=secret"));
        incoming.insert("x-forwarded-host", HeaderValue::from_static("attacker.example"));
        let out = forwarded_headers(&incoming);
        assert_eq!(out.len(), 4);
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 2);
        assert!(out.get(header::COOKIE).is_none() && out.get("x-forwarded-host").is_none());
    }
}
