//! The OP's redirect back (step 2): when an upstream 3xx carries one of our `state` handles,
//! the proxy answers the user agent with the RP's acknowledgment instead: the proxy's own code
//! (or the OP's error), the RP's own `state`, and `iss`. The code is a `deferred_code` in the
//! OpenID profile, and a `code` (prefixed, see `wire::IETF_CODE_PREFIX`) in the IETF profile,
//! whose client redeems it at the token endpoint with `completion_mode=deferred`.

use http::header::{self, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode};
use url::Url;

use std::time::Duration;

use super::respond::{error_page, to_client, unavailable_page};
use crate::clients::Clients;
use crate::clock::now_ms;
use crate::crypto::random_token;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::protocol::routes::PublicUrls;
use crate::records::{CodeRecord, Records, HANDLE_PREFIX};

/// Cheap test on every upstream redirect: does `Location` carry one of our handles?
pub fn carries_handle(location: &HeaderValue) -> bool {
    let bytes = location.as_bytes();
    let needle = b"state=dtr1.";
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Upstream headers that do not describe the acknowledgment we send instead.
const REPLACED: [header::HeaderName; 6] = [
    header::LOCATION,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CACHE_CONTROL,
    header::PRAGMA,
];

pub struct Acknowledge {
    pub records: Records,
    /// For the profile each client speaks.
    pub clients: Clients,
    pub urls: PublicUrls,
    pub metrics: Metrics,
    /// Lifetime of a `deferred_code` (`DTR_DEFERRED_CODE_TTL`).
    pub deferred_code_ttl: Duration,
}

impl Acknowledge {
    /// Turns an upstream redirect carrying our handle into the RP's acknowledgment. Keeps the
    /// upstream's other headers (Keycloak sets its session cookies on this very response).
    pub async fn handle(&self, upstream: Parts) -> Response<Body> {
        let mut response = self.build(&upstream).await;
        let headers = response.headers_mut();
        let own: Vec<header::HeaderName> = headers.keys().cloned().collect();
        for (name, value) in upstream.headers.iter() {
            if !REPLACED.contains(name) && !own.contains(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        response
    }

    async fn build(&self, upstream: &Parts) -> Response<Body> {
        let location = upstream.headers.get(header::LOCATION).and_then(|v| v.to_str().ok());
        let Some(location) = location.and_then(|l| Url::parse(l).ok()) else {
            return error_page(
                StatusCode::BAD_GATEWAY,
                "The identity provider answered with an unreadable redirect.",
            );
        };
        let mut handle = None;
        let mut code = None;
        let mut error = None;
        let mut error_description = None;
        let mut error_uri = None;
        let mut iss = None;
        for (name, value) in location.query_pairs() {
            let slot = match name.as_ref() {
                "state" => &mut handle,
                "code" => &mut code,
                "error" => &mut error,
                "error_description" => &mut error_description,
                "error_uri" => &mut error_uri,
                "iss" => &mut iss,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        let Some(handle) = handle.filter(|h| h.starts_with(HANDLE_PREFIX)) else {
            return error_page(
                StatusCode::BAD_GATEWAY,
                "The identity provider answered with an unexpected redirect.",
            );
        };

        let record = match self.records.take_authorization(&handle).await {
            Ok(Some(record)) => record,
            Err(crate::store::StoreError::Corrupt(e)) => {
                tracing::error!(error = %e, "unreadable authorization record");
                return error_page(StatusCode::BAD_REQUEST, "This sign-in link is no longer valid.");
            }
            Ok(None) => {
                self.metrics.request("acknowledge", "unknown_handle");
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "This sign-in has expired or was already completed.",
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "store unavailable for the acknowledgment");
                return unavailable_page();
            }
        };

        // The OP redirects to the redirect_uri it validated, which is the one we recorded. A
        // redirect elsewhere means someone else's handle: never follow it.
        let Ok(expected) = Url::parse(&record.redirect_uri) else {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The application's redirect address is not valid.",
            );
        };
        if (
            expected.scheme(),
            expected.host_str(),
            expected.port_or_known_default(),
            expected.path(),
        ) != (
            location.scheme(),
            location.host_str(),
            location.port_or_known_default(),
            location.path(),
        ) {
            tracing::warn!(client_id = %record.client_id, "upstream redirect does not match the recorded redirect_uri");
            return error_page(StatusCode::BAD_REQUEST, "This sign-in link is no longer valid.");
        }

        let iss = iss.unwrap_or_else(|| self.urls.issuer(&record.realm));
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(4);
        let deferred_code;
        if let Some(code) = code {
            let profile = self
                .clients
                .find(&record.realm, &record.client_id)
                .map(|client| self.clients.profile(&record.realm, client))
                .unwrap_or_default();
            let (code_param, prefix) = profile.acknowledgment_code();
            deferred_code = format!("{prefix}{}", random_token(32));
            let code_record = CodeRecord {
                realm: record.realm.clone(),
                client_id: record.client_id.clone(),
                redirect_uri: record.redirect_uri.clone(),
                upstream_code: code,
                nonce: record.nonce.clone(),
                requested: record.requested.clone(),
                issued_at: now_ms(),
            };
            if let Err(e) = self
                .records
                .put_code(&deferred_code, code_record, self.deferred_code_ttl)
                .await
            {
                tracing::warn!(error = %e, "cannot store deferred code");
                return unavailable_page();
            }
            params.push((code_param, &deferred_code));
            self.metrics.request("acknowledge", "deferred_code");
            tracing::info!(client_id = %record.client_id, realm = %record.realm, "deferred code issued");
        } else if let Some(error) = error.as_deref() {
            params.push(("error", error));
            if let Some(description) = error_description.as_deref() {
                params.push(("error_description", description));
            }
            if let Some(uri) = error_uri.as_deref() {
                params.push(("error_uri", uri));
            }
            self.metrics.request("acknowledge", "error");
        } else {
            return error_page(
                StatusCode::BAD_GATEWAY,
                "The identity provider answered without a result.",
            );
        }
        if let Some(state) = record.state.as_deref() {
            params.push(("state", state));
        }
        params.push(("iss", &iss));
        to_client(&record.redirect_uri, record.response_mode, &params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_our_handles() {
        assert!(carries_handle(&HeaderValue::from_static(
            "https://rp/cb?code=x&state=dtr1.abc"
        )));
        assert!(!carries_handle(&HeaderValue::from_static(
            "https://rp/cb?code=x&state=abc"
        )));
    }
}
