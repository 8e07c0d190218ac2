//! Finding and verifying a client the provider has never seen: WebFinger (RFC 7033) at the
//! client_id's host, one link per federation, the links of trusted federations fetched in our
//! priority order, each chain walked inward and verified outward from its trust root, and the
//! flattened metadata checked for what a client needs.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::fetch::{FetchError, Fetcher};
use super::FederatedClient;
use crate::statements::{
    inner_of, verify_signed_jwks, Inner, StatementError, Verified, FEDERATION_PROPERTY, PROVIDER_REL,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the client_id is not an https URL without query or fragment")]
    NotAUrl,
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("the WebFinger answer is not usable: {0}")]
    WebFinger(String),
    #[error("no WebFinger link names a federation this provider trusts")]
    NoTrustedLink,
    #[error("the statement of federation {0} does not verify: {1}")]
    Statement(String, StatementError),
    #[error("the trust root's keys cannot be loaded: {0}")]
    RootKeys(String),
    #[error("the verified statement does not describe a usable client: {0}")]
    Unusable(String),
}

impl DiscoveryError {
    /// Whether trying later may help (a fetch limit or an unreachable trust root, not a bad
    /// statement).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            DiscoveryError::Fetch(FetchError::RateLimited(_)) | DiscoveryError::RootKeys(_)
        )
    }
}

/// The client_id gate (the async draft §2): an https URL with a host, no query, no fragment.
pub fn client_id_url(client_id: &str) -> Result<Url, DiscoveryError> {
    let url = Url::parse(client_id).map_err(|_| DiscoveryError::NotAUrl)?;
    if url.scheme() != "https"
        || url.host().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || url.as_str() != client_id
    {
        return Err(DiscoveryError::NotAUrl);
    }
    Ok(url)
}

/// `https://<host>/.well-known/webfinger?resource=<client_id>&rel=<provider rel>`.
pub fn webfinger_url(client: &Url) -> Url {
    let mut url = client.clone();
    url.set_path("/.well-known/webfinger");
    url.set_query(None);
    url.query_pairs_mut()
        .append_pair("resource", client.as_str())
        .append_pair("rel", PROVIDER_REL);
    url
}

#[derive(Deserialize)]
struct Jrd {
    subject: Option<String>,
    #[serde(default)]
    links: Vec<Link>,
}

#[derive(Deserialize)]
struct Link {
    rel: Option<String>,
    href: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
}

/// The links to follow, as (federation, href), in `priority` order (the trust roots as
/// configured), at most `max`: only provider links whose federation property names a
/// trusted federation (servers may ignore `rel`, so it is checked here).
pub fn select_links(
    jrd: &[u8],
    client_id: &str,
    priority: &[&str],
    max: usize,
) -> Result<Vec<(String, String)>, DiscoveryError> {
    let jrd: Jrd = serde_json::from_slice(jrd).map_err(|e| DiscoveryError::WebFinger(e.to_string()))?;
    if jrd.subject.as_deref() != Some(client_id) {
        return Err(DiscoveryError::WebFinger("its subject is not the client_id".into()));
    }
    let mut links: Vec<(usize, String, String)> = jrd
        .links
        .into_iter()
        .filter(|link| link.rel.as_deref() == Some(PROVIDER_REL))
        .filter_map(|link| {
            let federation = link.properties.get(FEDERATION_PROPERTY)?.as_str()?.to_owned();
            let rank = priority.iter().position(|id| *id == federation)?;
            Some((rank, federation, link.href?))
        })
        .collect();
    links.sort_by_key(|(rank, ..)| *rank);
    links.dedup_by(|a, b| a.1 == b.1);
    links.truncate(max);
    if links.is_empty() {
        return Err(DiscoveryError::NoTrustedLink);
    }
    Ok(links
        .into_iter()
        .map(|(_, federation, href)| (federation, href))
        .collect())
}

/// The levels of a chain, outermost first: `statement`, then each inner one embedded or
/// fetched, at most `max_depth`.
pub async fn collect_levels(
    fetcher: &Fetcher,
    statement: String,
    federation: &str,
    max_depth: usize,
) -> Result<Vec<String>, DiscoveryError> {
    let mut levels = vec![statement];
    loop {
        let last = levels.last().map(String::as_str).unwrap_or_default();
        let next = match inner_of(last, federation).map_err(|e| DiscoveryError::Statement(federation.into(), e))? {
            Inner::None => return Ok(levels),
            Inner::Embedded(jws) => jws,
            Inner::Uri(uri) => {
                let url = Url::parse(&uri).map_err(|_| {
                    DiscoveryError::Statement(
                        federation.into(),
                        StatementError::Malformed("a metadata_statement_uris value is not a URL".into()),
                    )
                })?;
                fetch_statement(fetcher, &url).await?
            }
        };
        if levels.len() >= max_depth {
            return Err(DiscoveryError::Statement(
                federation.into(),
                StatementError::TooDeep(max_depth),
            ));
        }
        levels.push(next);
    }
}

/// A statement served as `application/jwt` (plain JSON is not allowed).
pub async fn fetch_statement(fetcher: &Fetcher, url: &Url) -> Result<String, DiscoveryError> {
    let body = fetcher.get(url, "application/jwt", &["application/jwt"]).await?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| DiscoveryError::Statement(url.to_string(), StatementError::Malformed("not text".into())))?;
    Ok(text.trim().to_owned())
}

/// A trust root's JWK Set from its `jwks_uri`.
pub async fn fetch_jwks(fetcher: &Fetcher, url: &Url) -> Result<JwkSet, DiscoveryError> {
    let body = fetcher
        .get(
            url,
            "application/jwk-set+json, application/json",
            &["application/jwk-set+json", "application/json"],
        )
        .await
        .map_err(|e| DiscoveryError::RootKeys(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| DiscoveryError::RootKeys(format!("not a JWK Set: {e}")))
}

/// Media types a `signed_jwks_uri` document may be served as.
const SIGNED_JWKS_TYPES: [&str; 3] = ["application/jose", "application/jwt", "application/jwk-set+jwt"];

/// A verified chain whose client publishes its keys at `signed_jwks_uri` (and not inline in
/// `jwks`, which is used when both are given): the document is fetched under the same rules
/// as every other fetch, verified with the `signing_keys` the client's statement certified,
/// and its keys put in the metadata as `jwks`; an `exp` of the document bounds the client's
/// lifetime.
pub async fn resolve_signed_jwks(
    fetcher: &Fetcher,
    federation: &str,
    verified: &mut Verified,
    now: u64,
) -> Result<(), DiscoveryError> {
    if verified.metadata.contains_key("jwks") {
        return Ok(());
    }
    let Some(uri) = verified.metadata.get("signed_jwks_uri") else {
        return Ok(());
    };
    let url = uri
        .as_str()
        .and_then(|uri| Url::parse(uri).ok())
        .ok_or_else(|| DiscoveryError::Unusable("signed_jwks_uri must be a URL".into()))?;
    let keys = verified.signing_keys.as_ref().ok_or_else(|| {
        DiscoveryError::Unusable("signed_jwks_uri needs signing_keys in the client's statement".into())
    })?;
    let body = fetcher
        .get(&url, "application/jose, application/jwt", &SIGNED_JWKS_TYPES)
        .await?;
    let jws = std::str::from_utf8(&body)
        .map_err(|_| DiscoveryError::Statement(federation.into(), StatementError::Malformed("not text".into())))?
        .trim();
    let (jwks, exp) =
        verify_signed_jwks(jws, keys, now).map_err(|e| DiscoveryError::Statement(federation.into(), e))?;
    let jwks = serde_json::to_value(jwks).map_err(|e| DiscoveryError::Unusable(e.to_string()))?;
    verified.metadata.insert("jwks".into(), jwks);
    if let Some(exp) = exp {
        verified.expires_at = verified.expires_at.min(exp);
    }
    Ok(())
}

fn strings(metadata: &Map<String, Value>, name: &str) -> Option<Vec<String>> {
    metadata.get(name)?.as_array().map(|items| {
        items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect()
    })
}

/// Whether a key may sign (a public asymmetric key not reserved for encryption).
fn signing_key(jwk: &jsonwebtoken::jwk::Jwk) -> bool {
    !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        && !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        && jsonwebtoken::DecodingKey::from_jwk(jwk).is_ok()
}

/// Step 9 of the verification: what a verified statement must say for its client to be let in.
pub fn check_client(
    client_id: &str,
    federation: &str,
    subject: Option<&str>,
    metadata: Map<String, Value>,
    expires_at: u64,
    allow_http_notification: bool,
) -> Result<FederatedClient, DiscoveryError> {
    let unusable = |why: &str| Err(DiscoveryError::Unusable(why.to_owned()));
    if metadata.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return unusable("its client_id is not the requested one");
    }
    if subject != Some(client_id) {
        return unusable("its outermost sub is not the client_id");
    }
    let redirect_uris = strings(&metadata, "redirect_uris").unwrap_or_default();
    if redirect_uris.is_empty() || redirect_uris.iter().any(|uri| Url::parse(uri).is_err()) {
        return unusable("redirect_uris must be a non-empty list of URLs");
    }
    // `scopes` (array) as the drafts name it; a `scope` string only when it is absent.
    let scopes = match strings(&metadata, "scopes") {
        Some(scopes) => scopes,
        None => metadata
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    if scopes.is_empty() {
        return unusable("scopes are required");
    }
    if metadata.contains_key("jwks_uri") && !metadata.contains_key("jwks") {
        return unusable("a bare jwks_uri is not accepted: the keys must be in the signed statement (jwks)");
    }
    let jwks: JwkSet = match metadata.get("jwks").map(|v| serde_json::from_value(v.clone())) {
        Some(Ok(jwks)) => jwks,
        _ => return unusable("jwks (a JWK Set) is required"),
    };
    if !jwks.keys.iter().any(signing_key) {
        return unusable("jwks holds no signing key");
    }
    match metadata.get("token_endpoint_auth_method") {
        None => {}
        Some(Value::String(method)) if method == "private_key_jwt" => {}
        Some(_) => return unusable("token_endpoint_auth_method must be private_key_jwt"),
    }
    let require_signed_request_object = match metadata.get("require_signed_request_object") {
        None => true,
        Some(Value::Bool(required)) => *required,
        Some(_) => return unusable("require_signed_request_object must be a boolean"),
    };
    let notification_endpoint = match metadata.get(crate::protocol::wire::CLIENT_NOTIFICATION_ENDPOINT) {
        None => None,
        Some(Value::String(endpoint)) => match Url::parse(endpoint) {
            Ok(url) if url.scheme() == "https" || (allow_http_notification && url.scheme() == "http") => {
                Some(endpoint.clone())
            }
            _ => return unusable("deferred_client_notification_endpoint must be an https URL"),
        },
        Some(_) => return unusable("deferred_client_notification_endpoint must be a string"),
    };
    Ok(FederatedClient {
        client_id: client_id.to_owned(),
        federation: federation.to_owned(),
        redirect_uris,
        scopes,
        jwks,
        require_signed_request_object,
        notification_endpoint,
        expires_at,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_https_urls_without_query_or_fragment_are_client_ids() {
        assert!(client_id_url("https://sp.example.com/app").is_ok());
        for bad in [
            "http://sp.example.com/app",
            "https://sp.example.com/app?x=1",
            "https://sp.example.com/app#f",
            "dtr-client",
            "https:///nohost",
        ] {
            assert!(client_id_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_webfinger_query_is_encoded() {
        let url = webfinger_url(&Url::parse("https://sp.example.com:8443/app").unwrap());
        assert_eq!(
            url.as_str(),
            "https://sp.example.com:8443/.well-known/webfinger?resource=https%3A%2F%2Fsp.example.com%3A8443%2Fapp&rel=http%3A%2F%2Fopenid.net%2Fspecs%2Fconnect%2F1.0%2Fprovider"
        );
    }

    #[test]
    fn links_of_trusted_federations_are_taken_in_our_order() {
        let jrd = json!({"subject": "https://sp/app", "links": [
            {"rel": PROVIDER_REL, "href": "https://a/1", "properties": {FEDERATION_PROPERTY: "https://fed-b"}},
            {"rel": "other", "href": "https://a/2", "properties": {FEDERATION_PROPERTY: "https://fed-a"}},
            {"rel": PROVIDER_REL, "href": "https://a/3", "properties": {FEDERATION_PROPERTY: "https://fed-a"}},
            {"rel": PROVIDER_REL, "href": "https://a/4"},
            {"rel": PROVIDER_REL, "href": "https://a/5", "properties": {FEDERATION_PROPERTY: "https://unknown"}},
        ]});
        let links = select_links(
            jrd.to_string().as_bytes(),
            "https://sp/app",
            &["https://fed-a", "https://fed-b"],
            4,
        )
        .unwrap();
        assert_eq!(
            links,
            vec![
                ("https://fed-a".to_owned(), "https://a/3".to_owned()),
                ("https://fed-b".to_owned(), "https://a/1".to_owned())
            ]
        );
        let capped = select_links(
            jrd.to_string().as_bytes(),
            "https://sp/app",
            &["https://fed-a", "https://fed-b"],
            1,
        )
        .unwrap();
        assert_eq!(capped.len(), 1);
        assert!(matches!(
            select_links(jrd.to_string().as_bytes(), "https://other/app", &["https://fed-a"], 4),
            Err(DiscoveryError::WebFinger(_))
        ));
        assert!(matches!(
            select_links(jrd.to_string().as_bytes(), "https://sp/app", &["https://fed-c"], 4),
            Err(DiscoveryError::NoTrustedLink)
        ));
    }

    fn metadata(extra: Value) -> Map<String, Value> {
        let mut base = json!({
            "client_id": "https://sp/app",
            "redirect_uris": ["https://sp/cb"],
            "scopes": ["openid", "email"],
            "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]},
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
            base.extend(extra);
        }
        match base {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_verified_statement_must_describe_a_usable_client() {
        let ok = check_client(
            "https://sp/app",
            "https://fed",
            Some("https://sp/app"),
            metadata(json!({})),
            9,
            false,
        )
        .unwrap();
        assert!(
            ok.require_signed_request_object,
            "signed requests unless the statement says otherwise"
        );
        assert_eq!(ok.scopes, vec!["openid", "email"]);
        for (why, extra, subject) in [
            (
                "other client",
                json!({"client_id": "https://evil/app"}),
                "https://sp/app",
            ),
            ("other subject", json!({}), "https://org"),
            ("no redirect", json!({"redirect_uris": []}), "https://sp/app"),
            (
                "secret",
                json!({"token_endpoint_auth_method": "client_secret_basic"}),
                "https://sp/app",
            ),
            ("no keys", json!({"jwks": {"keys": []}}), "https://sp/app"),
            (
                "http ping",
                json!({"deferred_client_notification_endpoint": "http://sp/ping"}),
                "https://sp/app",
            ),
        ] {
            assert!(
                check_client(
                    "https://sp/app",
                    "https://fed",
                    Some(subject),
                    metadata(extra),
                    9,
                    false
                )
                .is_err(),
                "{why}"
            );
        }
    }
}
