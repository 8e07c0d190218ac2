//! The per-client settings (TOML `[[clients]]` or `DTR_CLIENTS` as JSON) and their checks.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

/// Which DTR profile a client speaks: the wire names of its requests and answers. The engine
/// underneath (records, polls, pings, webhooks) is the same; the names live in
/// `protocol::wire` (see docs/profiles.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Profile {
    /// OpenID Connect Deferred Token Response 1.0 (`deferred_code`, `deferred_auth_id`).
    #[default]
    #[serde(rename = "openid")]
    OpenId,
    /// The OAuth profile (draft-ietf-oauth-deferred-token-response): `completion_mode`,
    /// `deferral_code`, the IETF deferred grant type.
    #[serde(rename = "ietf")]
    Ietf,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::OpenId, Profile::Ietf];

    /// The setting's value, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::OpenId => "openid",
            Profile::Ietf => "ietf",
        }
    }
}

/// One client allowed to use DTR, as written in the TOML file or `DTR_CLIENTS` (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub client_id: String,
    /// Restricts the entry to one realm; absent = the client id in every realm.
    #[serde(default)]
    pub realm: Option<String>,
    /// The DTR profile this client speaks; absent: the realm's (`DTR_IETF_REALMS`), else
    /// `openid`.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// The RP's `deferred_client_notification_endpoint`.
    #[serde(default)]
    pub notification_endpoint: Option<String>,
    /// Seconds between polls (overrides `default_interval`).
    #[serde(default)]
    pub interval: Option<u64>,
    /// Lifetime of a process in seconds (overrides `default_expires_in`).
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Redirect URIs known to be registered at the OP. Only these may receive an error redirect
    /// produced by the proxy itself (before the OP has validated the request).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Every deferred request of this client must carry a DPoP proof, by the key the process
    /// was bound to (as `DTR_REQUIRE_DPOP` does for every client).
    #[serde(default)]
    pub require_dpop: bool,
    /// RFC 8705 client metadata: the client presents its TLS client certificate at the
    /// exchange, which binds the deferred process to it (every later poll and cancellation
    /// must present the same one).
    #[serde(default)]
    pub tls_client_certificate_bound_access_tokens: bool,
    /// The client's public keys (a JWK Set), for verifying `private_key_jwt` assertions on
    /// pending polls and cancels without the OP.
    #[serde(default)]
    pub jwks: Option<jsonwebtoken::jwk::JwkSet>,
    /// Where to fetch the client's JWK Set instead (cached, see `DTR_JWKS_CACHE_TTL`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The client secret, only for clients that authenticate with `client_secret_jwt`
    /// (the HMAC key of their assertions). Other methods never need it.
    #[serde(default, skip_serializing)]
    pub client_secret: Option<ClientSecret>,
}

/// A client secret from the configuration: never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ClientSecret(pub String);

impl ClientSettings {
    /// Seconds between this client's polls: its own `interval`, else `default_interval`.
    pub fn poll_interval(&self, default_interval: u64) -> u64 {
        self.interval.unwrap_or(default_interval)
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

pub(super) fn validate_clients(clients: &[ClientSettings], allow_insecure_http: bool, errors: &mut Vec<String>) {
    let mut seen: HashMap<(&str, Option<&str>), usize> = HashMap::new();
    for (i, client) in clients.iter().enumerate() {
        let at = format!("clients[{i}] ({})", client.client_id);
        if client.client_id.is_empty() {
            errors.push(format!("clients[{i}]: client_id is required"));
        }
        if let Some(previous) = seen.insert((&client.client_id, client.realm.as_deref()), i) {
            errors.push(format!("{at}: same client as clients[{previous}]"));
        }
        if let Some(endpoint) = &client.notification_endpoint {
            match Url::parse(endpoint) {
                Ok(url) if url.scheme() == "https" => {}
                Ok(url) if url.scheme() == "http" && allow_insecure_http => {}
                Ok(_) => errors.push(format!(
                    "{at}: notification_endpoint must be an https URL (http only with \
                     DTR_ALLOW_INSECURE_HTTP=true)"
                )),
                Err(e) => errors.push(format!("{at}: notification_endpoint is not a URL: {e}")),
            }
        }
        if client.interval == Some(0) {
            errors.push(format!("{at}: interval must be positive"));
        }
        if client.expires_in == Some(0) {
            errors.push(format!("{at}: expires_in must be positive"));
        }
        for uri in &client.redirect_uris {
            if Url::parse(uri).is_err() {
                errors.push(format!("{at}: redirect_uris entry is not a URL: {uri}"));
            }
        }
        if client.jwks.is_some() && client.jwks_uri.is_some() {
            errors.push(format!("{at}: give jwks or jwks_uri, not both"));
        }
        if let Some(uri) = &client.jwks_uri {
            match Url::parse(uri) {
                Ok(url) if url.scheme() == "https" => {}
                Ok(url) if url.scheme() == "http" && allow_insecure_http => {}
                Ok(_) => errors.push(format!(
                    "{at}: jwks_uri must be an https URL (http only with DTR_ALLOW_INSECURE_HTTP=true)"
                )),
                Err(e) => errors.push(format!("{at}: jwks_uri is not a URL: {e}")),
            }
        }
        if let Some(jwks) = &client.jwks {
            if jwks.keys.is_empty() {
                errors.push(format!("{at}: jwks has no keys"));
            }
            for key in &jwks.keys {
                if jsonwebtoken::DecodingKey::from_jwk(key).is_err() {
                    errors.push(format!("{at}: jwks has an unusable key"));
                }
            }
        }
        if client.client_secret.as_ref().is_some_and(|s| s.0.len() < 32) {
            errors.push(format!(
                "{at}: client_secret must be at least 32 bytes (client_secret_jwt uses it as an HMAC key)"
            ));
        }
    }
}
