//! Discovery: the OP's own metadata (OpenID discovery and RFC 8414 authorization server
//! metadata alike) with the DTR additions of every profile a client of the realm speaks.
//! Everything else stays as the OP wrote it (key order preserved).

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use serde_json::{Map, Value};

use crate::clients::Clients;
use crate::federation::Federation;
use crate::http::{empty, full, plain, Body};
use crate::metrics::Metrics;
use crate::protocol::routes::{Endpoint, PublicUrls};
use crate::protocol::wire::{self, Profile};
use crate::upstream::{strip_hop_by_hop, OpClient};

pub struct Discovery {
    pub op: Arc<dyn OpClient>,
    /// Which profiles a realm's clients speak.
    pub clients: Clients,
    pub urls: PublicUrls,
    pub metrics: Metrics,
    /// The provider's own federation statements, when configured.
    pub federation: Option<Arc<Federation>>,
    /// The public port verifies the RPs' client certificates itself (`DTR_TLS_CLIENT_CA_FILE`):
    /// they end at the proxy, and the OP never sees one.
    pub certificates_end_here: bool,
}

impl Discovery {
    pub async fn handle(&self, realm: &str, parts: &Parts, peer: IpAddr) -> Response<Body> {
        let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let reply = match self.op.get(path_and_query, &parts.headers, peer, "discovery").await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, "discovery fetch failed");
                let mut response = plain(StatusCode::BAD_GATEWAY, "The OpenID Provider is unavailable.\n");
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(2));
                return response;
            }
        };
        let mut response = Response::new(empty());
        *response.status_mut() = reply.status;
        *response.headers_mut() = reply.headers.clone();
        strip_hop_by_hop(response.headers_mut());
        let document = match (reply.status, serde_json::from_slice::<Map<String, Value>>(&reply.body)) {
            (StatusCode::OK, Ok(document)) => document,
            _ => {
                *response.body_mut() = full(reply.body);
                return response;
            }
        };
        let cancellation = self.urls.endpoint(Endpoint::Cancellation, realm);
        let profiles = self.clients.profiles_in(realm);
        let statements = self
            .federation
            .as_ref()
            .map(|f| f.provider_statements(realm))
            .unwrap_or_default();
        let document = augment(document, &cancellation, &profiles);
        let document = certificate_binding(document, self.certificates_end_here);
        let document = with_statements(document, &statements);
        let body = serde_json::to_vec(&document).unwrap_or_default();
        response.headers_mut().remove(header::CONTENT_LENGTH);
        response.headers_mut().remove(header::ETAG);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        *response.body_mut() = full(body);
        self.metrics.request("discovery", "ok");
        response
    }
}

/// RFC 8705 §3.3: `tls_client_certificate_bound_access_tokens` says the OP binds its access
/// tokens to the client's certificate. The proxy binds deferred processes, not access tokens,
/// so it never adds the claim; and where the RPs' certificates end at the proxy the OP cannot
/// bind anything to them, so its claim (and its `mtls_endpoint_aliases`, which would lead
/// around the proxy) is taken out. Otherwise the OP's word stands.
pub fn certificate_binding(mut document: Map<String, Value>, certificates_end_here: bool) -> Map<String, Value> {
    if certificates_end_here {
        document.shift_remove("tls_client_certificate_bound_access_tokens");
        document.shift_remove("mtls_endpoint_aliases");
    }
    document
}

fn add_to_list(document: &mut Map<String, Value>, key: &str, values: &[&str]) {
    let entry = document
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = entry {
        for value in values {
            if !list.iter().any(|v| v == value) {
                list.push(Value::String((*value).to_owned()));
            }
        }
    }
}

/// The provider's own federation statements (draft 03 §5.1: federation id → signed
/// statement), as `metadata_statements`; none: the document unchanged.
pub fn with_statements(mut document: Map<String, Value>, statements: &[(&str, &str)]) -> Map<String, Value> {
    if !statements.is_empty() {
        let map: Map<String, Value> = statements
            .iter()
            .map(|(federation, statement)| ((*federation).to_owned(), Value::String((*statement).to_owned())))
            .collect();
        document.insert("metadata_statements".into(), Value::Object(map));
    }
    document
}

/// The DTR additions to an OP's metadata, for the profiles spoken in the realm.
///
/// - OpenID (OID §3.1): the `deferred_code` response types, the OpenID deferred grant type,
///   and the cancellation endpoint (OID §9 names no metadata; ours).
/// - IETF: `deferred_token_response_supported` (§5.1), the IETF deferred grant type (§13.4;
///   RFC 8414 `grant_types_supported`), and, where the OP has a revocation endpoint, the
///   deferral code's token type in `revocation_endpoint_token_type_values_supported` (§8.4).
///   An OP that lists no such types is taken to accept RFC 7009's two hints, which the proxy
///   passes on to it.
///
/// Both: the DPoP algorithms both parties accept.
pub fn augment(
    mut document: Map<String, Value>,
    cancellation_endpoint: &str,
    profiles: &[Profile],
) -> Map<String, Value> {
    if profiles.contains(&Profile::OpenId) {
        add_to_list(
            &mut document,
            "response_types_supported",
            &[wire::RESPONSE_TYPE_DEFERRED_CODE, "deferred_code code"],
        );
    }
    let grant_types: Vec<&str> = profiles.iter().map(|p| p.grant_type()).collect();
    add_to_list(&mut document, "grant_types_supported", &grant_types);
    if profiles.contains(&Profile::Ietf) {
        document.insert(wire::DEFERRED_TOKEN_RESPONSE_SUPPORTED.to_owned(), Value::Bool(true));
        if document.contains_key("revocation_endpoint") {
            if !document.contains_key(wire::REVOCATION_TOKEN_TYPES_METADATA) {
                add_to_list(
                    &mut document,
                    wire::REVOCATION_TOKEN_TYPES_METADATA,
                    &["access_token", "refresh_token"],
                );
            }
            add_to_list(
                &mut document,
                wire::REVOCATION_TOKEN_TYPES_METADATA,
                &[wire::TOKEN_TYPE_DEFERRAL_CODE],
            );
        }
    }
    // Proofs at the DTR endpoints are checked by the proxy and, on the calls that reach it, by
    // the OP too: advertise what both accept, and nothing when the OP has no DPoP (it would
    // not bind the final tokens, whatever the proxy checked).
    let ours = crate::dpop::ALGORITHMS;
    if let Some(Value::Array(theirs)) = document.get("dpop_signing_alg_values_supported") {
        let both: Vec<Value> = theirs
            .iter()
            .filter(|alg| alg.as_str().is_some_and(|a| ours.contains(&a)))
            .cloned()
            .collect();
        document.insert("dpop_signing_alg_values_supported".to_owned(), Value::Array(both));
    }
    if profiles.contains(&Profile::OpenId) {
        document.insert(
            wire::CANCELLATION_ENDPOINT_METADATA.to_owned(),
            Value::from(cancellation_endpoint),
        );
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ops_certificate_binding_is_not_claimed_where_certificates_end_at_the_proxy() {
        let document = Map::from_iter([
            ("issuer".to_owned(), Value::from("https://id.example.com/realms/a")),
            (
                "tls_client_certificate_bound_access_tokens".to_owned(),
                Value::Bool(true),
            ),
            (
                "mtls_endpoint_aliases".to_owned(),
                serde_json::json!({"token_endpoint": "https://mtls.op/token"}),
            ),
            ("token_endpoint".to_owned(), Value::from("https://id.example.com/token")),
        ]);
        assert_eq!(certificate_binding(document.clone(), false), document);
        let ended = certificate_binding(document, true);
        assert_eq!(
            ended.keys().collect::<Vec<_>>(),
            ["issuer", "token_endpoint"],
            "the rest in order"
        );
    }

    #[test]
    fn the_providers_statements_are_listed_by_federation() {
        let document = Map::from_iter([("issuer".to_owned(), Value::from("https://id.example.com/realms/a"))]);
        let unchanged = with_statements(document.clone(), &[]);
        assert!(!unchanged.contains_key("metadata_statements"));
        let listed = with_statements(document, &[("https://fed.example.org", "a.b.c")]);
        assert_eq!(
            listed["metadata_statements"],
            serde_json::json!({"https://fed.example.org": "a.b.c"})
        );
    }

    #[test]
    fn adds_dtr_metadata_and_keeps_the_rest_in_order() {
        let original: Map<String, Value> = serde_json::from_str(
            r#"{"issuer":"https://op","response_types_supported":["code"],"grant_types_supported":["authorization_code"],"zzz":1}"#,
        )
        .unwrap();
        let augmented = augment(original, "https://op/cancel", &[Profile::OpenId]);
        let keys: Vec<&str> = augmented.keys().map(String::as_str).collect();
        assert_eq!(
            &keys[..4],
            ["issuer", "response_types_supported", "grant_types_supported", "zzz"]
        );
        assert_eq!(
            augmented["response_types_supported"],
            serde_json::json!(["code", "deferred_code", "deferred_code code"])
        );
        assert_eq!(augmented["grant_types_supported"][1], wire::GRANT_TYPE_DEFERRED);
        assert_eq!(augmented[wire::CANCELLATION_ENDPOINT_METADATA], "https://op/cancel");
        assert!(
            !augmented.contains_key("dpop_signing_alg_values_supported"),
            "no DPoP advertised for an OP without DPoP"
        );
        assert!(!augmented.contains_key(wire::DEFERRED_TOKEN_RESPONSE_SUPPORTED));
    }

    #[test]
    fn the_ietf_profile_adds_its_grant_type_and_flag() {
        let original: Map<String, Value> = serde_json::from_str(
            r#"{"issuer":"https://op","response_types_supported":["code"],"grant_types_supported":["authorization_code"]}"#,
        )
        .unwrap();
        let ietf = augment(original.clone(), "https://op/cancel", &[Profile::Ietf]);
        assert_eq!(ietf["response_types_supported"], serde_json::json!(["code"]));
        assert!(
            !ietf.contains_key(wire::REVOCATION_TOKEN_TYPES_METADATA),
            "no revocation endpoint, no token types"
        );
        assert_eq!(
            ietf["grant_types_supported"],
            serde_json::json!(["authorization_code", "urn:ietf:params:oauth:grant-type:deferred"])
        );
        assert_eq!(ietf[wire::DEFERRED_TOKEN_RESPONSE_SUPPORTED], true);
        assert!(
            !ietf.contains_key(wire::CANCELLATION_ENDPOINT_METADATA),
            "an IETF client cancels at the revocation endpoint"
        );

        let both = augment(original, "https://op/cancel", &Profile::ALL);
        assert_eq!(
            both["grant_types_supported"],
            serde_json::json!([
                "authorization_code",
                "urn:openid:params:grant-type:deferred",
                "urn:ietf:params:oauth:grant-type:deferred"
            ])
        );
        assert_eq!(
            both["response_types_supported"],
            serde_json::json!(["code", "deferred_code", "deferred_code code"])
        );
    }

    #[test]
    fn the_ietf_profile_lists_the_deferral_code_at_the_revocation_endpoint() {
        let original: Map<String, Value> =
            serde_json::from_str(r#"{"issuer":"https://op","revocation_endpoint":"https://op/revoke"}"#).unwrap();
        let ietf = augment(original.clone(), "https://op/cancel", &[Profile::Ietf]);
        assert_eq!(
            ietf[wire::REVOCATION_TOKEN_TYPES_METADATA],
            serde_json::json!([
                "access_token",
                "refresh_token",
                "urn:ietf:params:oauth:token-type:deferral-code"
            ])
        );
        let mut listed = original.clone();
        listed.insert(
            wire::REVOCATION_TOKEN_TYPES_METADATA.into(),
            serde_json::json!(["refresh_token"]),
        );
        let ietf = augment(listed, "https://op/cancel", &[Profile::Ietf]);
        assert_eq!(
            ietf[wire::REVOCATION_TOKEN_TYPES_METADATA],
            serde_json::json!(["refresh_token", "urn:ietf:params:oauth:token-type:deferral-code"])
        );
        let openid = augment(original, "https://op/cancel", &[Profile::OpenId]);
        assert!(!openid.contains_key(wire::REVOCATION_TOKEN_TYPES_METADATA));
    }

    #[test]
    fn dpop_algorithms_are_the_ones_both_accept() {
        let original: Map<String, Value> =
            serde_json::from_str(r#"{"dpop_signing_alg_values_supported":["ES256","ES512","HS256","PS256"]}"#).unwrap();
        let augmented = augment(original, "https://op/cancel", &[Profile::OpenId]);
        assert_eq!(
            augmented["dpop_signing_alg_values_supported"],
            serde_json::json!(["ES256", "PS256"])
        );
    }
}
