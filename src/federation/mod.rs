//! Federated clients: a client whose `client_id` is an https URL the provider does not know is
//! discovered (WebFinger at its host), its metadata statement verified back to a configured
//! trust root, and — once a request of it passes its checks — provisioned into the OP and
//! admitted to the client registry until its statement expires. See `docs/federation.md`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

pub mod discovery;
pub mod fetch;
pub mod provision;

use crate::clients::Clients;
use crate::clock::now_ms;
use crate::config::{ClientSettings, FederationSettings, RootKeys};
use crate::metrics::Metrics;
use crate::protocol::params::{encode, Params};
use crate::statements::{ChainVerifier, NestedStatements, Usage};
pub use discovery::DiscoveryError;
use discovery::{
    check_client, client_id_url, collect_levels, fetch_jwks, fetch_statement, resolve_signed_jwks, select_links,
    webfinger_url,
};
use fetch::Fetcher;
use provision::{Owned, ProvisionError, Provisioner};

/// A client as its verified statement describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct FederatedClient {
    pub client_id: String,
    /// The trust root its statement was verified with.
    pub federation: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    /// Its OIDC keys: request objects and `private_key_jwt` assertions verify with these.
    pub jwks: JwkSet,
    /// Whether every authorization request must be a signed request object (default: yes).
    pub require_signed_request_object: bool,
    pub notification_endpoint: Option<String>,
    /// The earliest `exp` of the chain (seconds).
    pub expires_at: u64,
    /// The whole flattened statement.
    pub metadata: Map<String, Value>,
}

impl FederatedClient {
    /// Its DTR settings, as if configured.
    fn settings(&self, realm: &str) -> ClientSettings {
        let number = |name: &str| self.metadata.get(name).and_then(Value::as_u64).filter(|n| *n > 0);
        ClientSettings {
            client_id: self.client_id.clone(),
            realm: Some(realm.to_owned()),
            notification_endpoint: self.notification_endpoint.clone(),
            interval: number("deferred_interval"),
            expires_in: number("deferred_expires_in"),
            redirect_uris: self.redirect_uris.clone(),
            require_dpop: self.metadata.get("dpop_bound_access_tokens") == Some(&Value::Bool(true)),
            tls_client_certificate_bound_access_tokens: self.metadata.get("tls_client_certificate_bound_access_tokens")
                == Some(&Value::Bool(true)),
            jwks: Some(self.jwks.clone()),
            jwks_uri: None,
            client_secret: None,
            profile: None,
        }
    }

    fn knows_kid(&self, kid: Option<&str>) -> bool {
        kid.is_none_or(|kid| self.jwks.find(kid).is_some())
    }
}

/// Why a federated client's request is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FederationError {
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error("{0}")]
    Provision(#[from] ProvisionError),
}

/// A discovered client is not looked up again before this, whatever requests claim.
const MIN_REDISCOVERY: Duration = Duration::from_secs(10);
/// How long a trust root's fetched keys are used.
const ROOT_KEYS_TTL: Duration = Duration::from_secs(300);

/// (realm, client_id).
type RealmClient = (String, String);

struct Discovered {
    client: Arc<FederatedClient>,
    at: Instant,
}

/// The federation side of the provider: discovery, verification cache, provisioning.
pub struct Federation {
    settings: FederationSettings,
    fetcher: Fetcher,
    verifier: Arc<dyn ChainVerifier>,
    provisioner: Arc<dyn Provisioner>,
    clients: Clients,
    allow_http_notification: bool,
    discovered: Mutex<HashMap<String, Discovered>>,
    root_keys: Mutex<HashMap<String, (Arc<JwkSet>, Instant)>>,
    /// What was last provisioned per (realm, client_id), and until when.
    provisioned: Mutex<HashMap<RealmClient, (Arc<FederatedClient>, u64)>>,
    /// The realms reconciled: the configured ones, and every realm a client was admitted to.
    realms: Mutex<BTreeSet<String>>,
    metrics: Metrics,
}

/// Why a client the proxy provisioned is disabled at the OP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// Its trust root is no longer configured.
    TrustRootRemoved,
    /// Its statement's chain has expired.
    StatementExpired,
}

impl Retirement {
    pub fn label(self) -> &'static str {
        match self {
            Retirement::TrustRootRemoved => "trust_root_removed",
            Retirement::StatementExpired => "statement_expired",
        }
    }
}

/// Whether a client the OP records as the proxy's must be disabled now: enabled, and its trust
/// root not among `roots` or its statement expired at `now` (seconds). A disabled client is
/// left as it is, so that replicas reconciling at once do the work once.
pub fn retirement(client: &Owned, roots: &[&str], now: u64) -> Option<Retirement> {
    if !client.enabled {
        None
    } else if !roots.contains(&client.federation.as_str()) {
        Some(Retirement::TrustRootRemoved)
    } else if client.expires_at <= now {
        Some(Retirement::StatementExpired)
    } else {
        None
    }
}

impl Federation {
    pub fn new(
        settings: FederationSettings,
        provisioner: Arc<dyn Provisioner>,
        clients: Clients,
        allow_http_notification: bool,
        metrics: Metrics,
    ) -> Self {
        let realms = settings
            .realms
            .iter()
            .cloned()
            .chain(settings.provider_statements.iter().map(|s| s.realm.clone()))
            .collect();
        Self {
            realms: Mutex::new(realms),
            metrics,
            fetcher: Fetcher::new(settings.limits.clone()),
            settings,
            verifier: Arc::new(NestedStatements::default()),
            provisioner,
            clients,
            allow_http_notification,
            discovered: Mutex::default(),
            root_keys: Mutex::default(),
            provisioned: Mutex::default(),
        }
    }

    /// How often [`Self::reconcile`] runs.
    pub fn reconcile_interval(&self) -> Duration {
        self.settings.reconcile_interval
    }

    /// Whether a client_id is one to discover: an https URL the configuration does not name.
    pub fn is_federated(&self, client_id: &str) -> bool {
        client_id.starts_with("https://") && !self.clients.is_configured(client_id)
    }

    /// The provider's own statements for a realm's discovery document.
    pub fn provider_statements(&self, realm: &str) -> Vec<(&str, &str)> {
        self.settings
            .provider_statements
            .iter()
            .filter(|s| s.realm == realm)
            .map(|s| (s.federation.as_str(), s.statement.as_str()))
            .collect()
    }

    /// The verified client, from the cache while its statement lives (and knows `kid`, when a
    /// request names one), else discovered afresh.
    pub async fn client(&self, client_id: &str, kid: Option<&str>) -> Result<Arc<FederatedClient>, DiscoveryError> {
        let now = now_ms() / 1000;
        {
            let discovered = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = discovered.get(client_id) {
                let alive = entry.client.expires_at > now;
                if alive && (entry.client.knows_kid(kid) || entry.at.elapsed() < MIN_REDISCOVERY) {
                    return Ok(entry.client.clone());
                }
            }
        }
        let client = Arc::new(self.discover(client_id, now).await?);
        let mut discovered = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        if discovered.len() > 10_000 {
            discovered.retain(|_, entry| entry.client.expires_at > now);
        }
        discovered.insert(
            client_id.to_owned(),
            Discovered {
                client: client.clone(),
                at: Instant::now(),
            },
        );
        Ok(client)
    }

    async fn discover(&self, client_id: &str, now: u64) -> Result<FederatedClient, DiscoveryError> {
        let url = client_id_url(client_id)?;
        if self.settings.trust_roots.is_empty() {
            // Every trust root was removed: only the reconciliation is left to do.
            return Err(DiscoveryError::NoTrustedLink);
        }
        let limits = self.fetcher.limits();
        let jrd = self
            .fetcher
            .get(
                &webfinger_url(&url),
                "application/jrd+json",
                &["application/jrd+json", "application/json"],
            )
            .await?;
        let priority: Vec<&str> = self.settings.trust_roots.iter().map(|r| r.id.as_str()).collect();
        let links = select_links(&jrd, client_id, &priority, limits.max_links)?;
        let mut last = DiscoveryError::NoTrustedLink;
        // The first federation (by our priority) whose chain verifies decides (draft 03:
        // "ultimately the OP decides").
        for (federation, href) in links {
            match self.verify_link(client_id, &federation, &href, now).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    tracing::info!(client_id, federation, error = %e, "a federation's statement about a client does not verify");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn verify_link(
        &self,
        client_id: &str,
        federation: &str,
        href: &str,
        now: u64,
    ) -> Result<FederatedClient, DiscoveryError> {
        let href = url::Url::parse(href).map_err(|_| DiscoveryError::WebFinger("a link's href is not a URL".into()))?;
        let statement = fetch_statement(&self.fetcher, &href).await?;
        let max_depth = NestedStatements::default().max_depth;
        let levels = collect_levels(&self.fetcher, statement, federation, max_depth).await?;
        let innermost_kid = levels
            .last()
            .and_then(|jws| jsonwebtoken::decode_header(jws).ok())
            .and_then(|header| header.kid);
        let keys = self.root_keys(federation, innermost_kid.as_deref()).await?;
        let mut verified = self
            .verifier
            .verify(&levels, federation, &keys, Usage::Registration, now)
            .map_err(|e| DiscoveryError::Statement(federation.to_owned(), e))?;
        resolve_signed_jwks(&self.fetcher, federation, &mut verified, now).await?;
        check_client(
            client_id,
            federation,
            verified.subject.as_deref(),
            verified.metadata,
            verified.expires_at,
            self.allow_http_notification,
        )
    }

    async fn root_keys(&self, federation: &str, kid: Option<&str>) -> Result<Arc<JwkSet>, DiscoveryError> {
        let root = self
            .settings
            .trust_root(federation)
            .ok_or(DiscoveryError::NoTrustedLink)?;
        let url = match &root.keys {
            RootKeys::Inline(keys) => return Ok(Arc::new(keys.clone())),
            RootKeys::Uri(url) => url,
        };
        if let Some((keys, at)) = self.root_keys.lock().unwrap_or_else(|e| e.into_inner()).get(federation) {
            let knows = kid.is_none_or(|kid| keys.find(kid).is_some());
            if at.elapsed() < ROOT_KEYS_TTL && (knows || at.elapsed() < MIN_REDISCOVERY) {
                return Ok(keys.clone());
            }
        }
        let keys = Arc::new(fetch_jwks(&self.fetcher, url).await?);
        self.root_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(federation.to_owned(), (keys.clone(), Instant::now()));
        Ok(keys)
    }

    /// Lets a verified client in: provisions it into the OP (again only when its statement
    /// changed) and admits it to the registry for `realm`.
    pub async fn admit(&self, realm: &str, client: &Arc<FederatedClient>) -> Result<(), ProvisionError> {
        let key = (realm.to_owned(), client.client_id.clone());
        {
            let mut realms = self.realms.lock().unwrap_or_else(|e| e.into_inner());
            if !realms.contains(realm) {
                realms.insert(realm.to_owned());
            }
        }
        let current = self
            .provisioned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|(known, _)| known == client);
        if !current {
            self.provisioner.upsert(realm, client).await?;
            tracing::info!(client_id = %client.client_id, realm, federation = %client.federation, "federated client provisioned");
            self.provisioned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (client.clone(), client.expires_at));
        }
        self.clients.admit_federated(realm, client.settings(realm));
        Ok(())
    }

    /// Disables at the OP, and forgets, every client whose statement has expired. Run
    /// periodically.
    pub async fn sweep(&self) {
        let now = now_ms() / 1000;
        let expired: Vec<(String, Owned)> = {
            let provisioned = self.provisioned.lock().unwrap_or_else(|e| e.into_inner());
            provisioned
                .iter()
                .filter(|(_, (_, until))| *until <= now)
                .map(|((realm, _), (client, _))| (realm.clone(), Owned::of(client)))
                .collect()
        };
        for (realm, client) in expired {
            self.clients.remove_federated(&realm, &client.client_id);
            self.discovered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&client.client_id);
            match self.provisioner.disable(&realm, &client).await {
                Ok(disabled) => {
                    if disabled {
                        self.metrics.federation_disabled(Retirement::StatementExpired.label());
                        tracing::info!(client_id = %client.client_id, realm, "federated client disabled: its statement expired");
                    }
                    self.forget(&realm, &client.client_id);
                }
                // Still known as provisioned: tried again at the next sweep.
                Err(e) => {
                    tracing::warn!(client_id = %client.client_id, realm, error = %e, "cannot disable an expired federated client")
                }
            }
        }
    }

    /// Forgets a client on this replica: not admitted, not cached, not known as provisioned.
    fn forget(&self, realm: &str, client_id: &str) {
        self.clients.remove_federated(realm, client_id);
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
        self.provisioned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(realm.to_owned(), client_id.to_owned()));
    }

    /// Makes the OP's record agree with the configuration, in every known realm: each client
    /// the proxy provisioned (it lists only those carrying its marker) whose trust root is no
    /// longer configured, or whose statement has expired, is disabled. Run at startup and
    /// every `DTR_FEDERATION_RECONCILE_INTERVAL`, by every replica: a client already disabled
    /// is left alone, and a disable applies only to the record that was listed.
    ///
    /// A client the OP holds disabled is also forgotten here, so that a replica that still
    /// believes it provisioned provisions it again at its next verified request.
    pub async fn reconcile(&self) {
        let realms: Vec<String> = self
            .realms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let roots: Vec<&str> = self.settings.trust_roots.iter().map(|r| r.id.as_str()).collect();
        for realm in realms {
            let owned = match self.provisioner.owned(&realm).await {
                Ok(owned) => owned,
                Err(e) => {
                    self.metrics.federation_reconcile("failed");
                    tracing::warn!(realm, error = %e, "cannot list the federated clients at the OP");
                    continue;
                }
            };
            self.metrics.federation_reconcile("ok");
            let now = now_ms() / 1000;
            for client in owned {
                if !client.enabled {
                    self.forget(&realm, &client.client_id);
                    continue;
                }
                let Some(reason) = retirement(&client, &roots, now) else {
                    continue;
                };
                self.forget(&realm, &client.client_id);
                match self.provisioner.disable(&realm, &client).await {
                    Ok(true) => {
                        self.metrics.federation_disabled(reason.label());
                        tracing::info!(
                            client_id = %client.client_id,
                            realm,
                            federation = %client.federation,
                            reason = reason.label(),
                            "federated client disabled at the OP"
                        );
                    }
                    Ok(false) => tracing::debug!(
                        client_id = %client.client_id,
                        realm,
                        "federated client changed or disabled meanwhile; left as it is"
                    ),
                    Err(e) => tracing::warn!(
                        client_id = %client.client_id,
                        realm,
                        error = %e,
                        "cannot disable a federated client; tried again at the next reconciliation"
                    ),
                }
            }
        }
    }
}

/// Why a request object is refused (`invalid_request_object`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestObjectError(pub &'static str);

/// Claims of a request object that are about the JWT, not authorization parameters.
const JWT_CLAIMS: [&str; 6] = ["iss", "aud", "exp", "iat", "nbf", "jti"];

/// Verifies a request object (OIDC Core §6.1, RFC 9101) with the client's keys — asymmetric
/// only, `iss` = client_id, `aud` = our issuer, not expired — and returns the authorization
/// parameters it carries. Only those count (RFC 9101 §5), with the outer `client_id`.
pub fn open_request_object(
    client: &FederatedClient,
    request: &str,
    issuer: &str,
    outer: &Params,
) -> Result<Params, RequestObjectError> {
    let header = jsonwebtoken::decode_header(request)
        .map_err(|_| RequestObjectError("The request object is not a signed JWT."))?;
    if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(RequestObjectError(
            "The request object must be signed with the client's private key.",
        ));
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = crate::statements::LEEWAY_SECONDS;
    validation.set_audience(&[issuer]);
    validation.set_issuer(&[&client.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    let keys = client
        .jwks
        .keys
        .iter()
        .filter(|jwk| match (&header.kid, &jwk.common.key_id) {
            (Some(wanted), Some(id)) => wanted == id,
            _ => true,
        });
    let mut claims = None;
    let mut last = RequestObjectError("No key of the client fits the request object.");
    for jwk in keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        match jsonwebtoken::decode::<Map<String, Value>>(request, &key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => {
                last = RequestObjectError(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "The request object has expired.",
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                        "The request object's aud is not this provider."
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => "The request object's iss is not the client_id.",
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                        "The request object needs iss, aud and exp."
                    }
                    _ => "The request object's signature does not verify with the client's keys.",
                })
            }
        }
    }
    let claims = claims.ok_or(last)?;
    if claims
        .get("client_id")
        .is_some_and(|id| id.as_str() != Some(client.client_id.as_str()))
    {
        return Err(RequestObjectError(
            "The request object's client_id is not the request's.",
        ));
    }
    if let (Some(inside), Some(outside)) = (claims.get("response_type"), outer.get("response_type")) {
        if inside.as_str() != Some(outside) {
            return Err(RequestObjectError(
                "The request object's response_type is not the request's.",
            ));
        }
    }
    if claims.contains_key("request") || claims.contains_key("request_uri") {
        return Err(RequestObjectError("A request object cannot name another one."));
    }
    let mut pairs: Vec<(String, String)> = vec![("client_id".into(), client.client_id.clone())];
    for (name, value) in claims {
        if JWT_CLAIMS.contains(&name.as_str()) || name == "client_id" {
            continue;
        }
        let value = match value {
            Value::String(text) => text,
            Value::Null => continue,
            other => other.to_string(),
        };
        pairs.push((name, value));
    }
    Params::parse(encode(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))).as_bytes())
        .map_err(|_| RequestObjectError("The request object's parameters are malformed."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(federation: &str, expires_at: u64, enabled: bool) -> Owned {
        Owned {
            client_id: "https://sp.example.com/app".into(),
            federation: federation.into(),
            expires_at,
            enabled,
        }
    }

    #[test]
    fn a_provisioned_client_is_retired_for_its_root_or_its_expiry_and_only_once() {
        let roots = ["https://fed.example.org"];
        let cases = [
            (owned(roots[0], 1_000, true), None),
            (owned(roots[0], 999, true), Some(Retirement::StatementExpired)),
            (owned(roots[0], 500, true), Some(Retirement::StatementExpired)),
            (
                owned("https://gone.example", 5_000, true),
                Some(Retirement::TrustRootRemoved),
            ),
            // A marked client without a readable expiry counts as expired.
            (owned(roots[0], 0, true), Some(Retirement::StatementExpired)),
            // Already disabled (by another replica): nothing to do.
            (owned("https://gone.example", 5_000, false), None),
            (owned(roots[0], 500, false), None),
        ];
        for (client, expected) in cases {
            assert_eq!(retirement(&client, &roots, 999), expected, "{client:?}");
        }
        assert_eq!(
            retirement(&owned(roots[0], 5_000, true), &[], 999),
            Some(Retirement::TrustRootRemoved),
            "the last root removed"
        );
    }
}
