//! Federated clients: the trust roots, the limits on what is fetched for an unknown client,
//! how verified clients reach the OP, and the provider's own pre-signed metadata statements
//! (checked here, at startup, against their trust root and our issuer).

use std::fmt;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::statements::{inner_of, ChainVerifier, Inner, NestedStatements, Usage};

/// A trust root as written in the configuration (TOML `[[federation_trust_roots]]` or
/// `DTR_FEDERATION_TRUST_ROOTS` as a JSON array). Their order is their priority.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRootSettings {
    /// The federation id (an https URL), the `iss` of every statement the root signs.
    pub id: String,
    #[serde(default)]
    pub jwks: Option<JwkSet>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

/// One of the provider's own statements (`DTR_FEDERATION_PROVIDER_STATEMENTS`): a chain
/// signed in advance by the federation, added to the realm's discovery document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderStatementSettings {
    pub realm: String,
    pub federation: String,
    /// The outermost compact JWS; its inner levels embedded.
    pub statement: String,
}

/// The raw federation settings, as they sit in the raw configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RawFederation {
    #[serde(rename = "federation_trust_roots")]
    pub trust_roots: Vec<TrustRootSettings>,
    #[serde(rename = "federation_provider_statements")]
    pub provider_statements: Vec<ProviderStatementSettings>,
    #[serde(rename = "federation_connect_timeout")]
    pub connect_timeout: u64,
    #[serde(rename = "federation_fetch_timeout")]
    pub fetch_timeout: u64,
    #[serde(rename = "federation_max_bytes")]
    pub max_bytes: usize,
    #[serde(rename = "federation_max_links")]
    pub max_links: usize,
    #[serde(rename = "federation_host_rate")]
    pub host_rate: u32,
    #[serde(rename = "federation_allow_private_targets")]
    pub allow_private_targets: bool,
    #[serde(rename = "federation_ca_file")]
    pub ca_file: Option<String>,
    #[serde(rename = "federation_provisioning")]
    pub provisioning: String,
    #[serde(rename = "federation_provisioning_url")]
    pub provisioning_url: Option<String>,
    #[serde(rename = "federation_provisioning_secret")]
    pub provisioning_secret: Option<String>,
    #[serde(rename = "federation_realms")]
    pub realms: super::StringList,
    #[serde(rename = "federation_reconcile_interval")]
    pub reconcile_interval: u64,
}

impl Default for RawFederation {
    fn default() -> Self {
        Self {
            trust_roots: Vec::new(),
            provider_statements: Vec::new(),
            connect_timeout: 3,
            fetch_timeout: 5,
            max_bytes: 64 * 1024,
            max_links: 4,
            host_rate: 30,
            allow_private_targets: false,
            ca_file: None,
            provisioning: String::new(),
            provisioning_url: None,
            provisioning_secret: None,
            realms: super::StringList::Items(Vec::new()),
            reconcile_interval: 300,
        }
    }
}

/// A trust root's keys: configured, or fetched from its `jwks_uri`.
#[derive(Debug, Clone)]
pub enum RootKeys {
    Inline(JwkSet),
    Uri(Url),
}

#[derive(Debug, Clone)]
pub struct TrustRoot {
    pub id: String,
    pub keys: RootKeys,
}

/// How verified federated clients are made known to the OP.
#[derive(Clone)]
pub enum Provisioning {
    /// Keycloak's Admin REST API, through the `DTR_KEYCLOAK_ADMIN_*` service account.
    Keycloak(super::KeycloakAdmin),
    /// A provisioning endpoint of the OP's own (`PUT <url>/<client_id>` with the client's
    /// metadata, bearer `secret`).
    Endpoint { url: Url, secret: String },
}

impl fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provisioning::Keycloak(account) => write!(f, "Keycloak({})", account.client_id),
            Provisioning::Endpoint { url, .. } => write!(f, "Endpoint({url})"),
        }
    }
}

/// What may be fetched for an unknown client, and how.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    pub connect_timeout: Duration,
    /// For a whole fetch: connection, request and body.
    pub total_timeout: Duration,
    pub max_bytes: usize,
    /// WebFinger links of trusted federations tried per client.
    pub max_links: usize,
    /// Fetches per host and minute.
    pub host_rate: u32,
    /// Loopback, private and link-local targets allowed: for tests only.
    pub allow_private_targets: bool,
    /// Extra trusted CA certificates (PEM) for the fetches.
    pub ca_pem: Option<Vec<u8>>,
}

/// The validated federation settings.
#[derive(Debug, Clone)]
pub struct FederationSettings {
    /// In priority order.
    pub trust_roots: Vec<TrustRoot>,
    /// Per realm: federation id → the provider's statement.
    pub provider_statements: Vec<ProviderStatementSettings>,
    pub limits: FetchLimits,
    pub provisioning: Provisioning,
    /// The realms whose provisioned clients are reconciled (besides those of provider
    /// statements and those a client was admitted to since the start).
    pub realms: Vec<String>,
    /// How often the OP's record of provisioned clients is reconciled with the trust roots.
    pub reconcile_interval: Duration,
}

impl FederationSettings {
    pub fn trust_root(&self, id: &str) -> Option<&TrustRoot> {
        self.trust_roots.iter().find(|root| root.id == id)
    }
}

fn https_url(name: &str, value: &str, errors: &mut Vec<String>) -> Option<Url> {
    match Url::parse(value) {
        Ok(url) if url.scheme() == "https" && url.host().is_some() => Some(url),
        Ok(_) => {
            errors.push(format!("{name}: must be an https URL: {value}"));
            None
        }
        Err(e) => {
            errors.push(format!("{name}: not a URL ({e}): {value}"));
            None
        }
    }
}

/// Everything the federation settings need from the rest of the configuration.
pub(super) struct Context<'a> {
    pub public_origin: Option<String>,
    pub issuer_template: &'a str,
    pub keycloak_admin: Option<&'a super::KeycloakAdmin>,
    pub allow_insecure_http: bool,
}

pub(super) fn validate_federation(
    raw: &RawFederation,
    context: Context<'_>,
    errors: &mut Vec<String>,
) -> Option<FederationSettings> {
    let name = "DTR_FEDERATION_TRUST_ROOTS";
    let mut trust_roots = Vec::new();
    for (i, root) in raw.trust_roots.iter().enumerate() {
        let at = format!("{name}[{i}] ({})", root.id);
        if https_url(&at, &root.id, errors).is_none() {
            continue;
        }
        if trust_roots.iter().any(|r: &TrustRoot| r.id == root.id) {
            errors.push(format!("{at}: listed twice"));
            continue;
        }
        let keys = match (&root.jwks, &root.jwks_uri) {
            (Some(jwks), None) => {
                let usable = jwks
                    .keys
                    .iter()
                    .all(|key| key.common.key_id.is_some() && jsonwebtoken::DecodingKey::from_jwk(key).is_ok());
                if jwks.keys.is_empty() || !usable {
                    errors.push(format!("{at}: jwks needs at least one key, each usable and with a kid"));
                    continue;
                }
                RootKeys::Inline(jwks.clone())
            }
            (None, Some(uri)) => match https_url(&format!("{at}: jwks_uri"), uri, errors) {
                Some(url) => RootKeys::Uri(url),
                None => continue,
            },
            _ => {
                errors.push(format!("{at}: give exactly one of jwks and jwks_uri"));
                continue;
            }
        };
        trust_roots.push(TrustRoot {
            id: root.id.clone(),
            keys,
        });
    }

    for (setting, value, least) in [
        ("DTR_FEDERATION_CONNECT_TIMEOUT", raw.connect_timeout, 1),
        ("DTR_FEDERATION_FETCH_TIMEOUT", raw.fetch_timeout, 1),
        ("DTR_FEDERATION_MAX_LINKS", raw.max_links as u64, 1),
        ("DTR_FEDERATION_HOST_RATE", u64::from(raw.host_rate), 1),
        ("DTR_FEDERATION_MAX_BYTES", raw.max_bytes as u64, 1024),
        ("DTR_FEDERATION_RECONCILE_INTERVAL", raw.reconcile_interval, 10),
    ] {
        if value < least {
            errors.push(format!("{setting}: must be at least {least}"));
        }
    }
    let ca_pem = match raw.ca_file.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                errors.push(format!("DTR_FEDERATION_CA_FILE: no PEM certificate in {path}"));
                None
            }
            Err(e) => {
                errors.push(format!("DTR_FEDERATION_CA_FILE: cannot read {path}: {e}"));
                None
            }
        },
    };

    let provisioning = match (
        raw.provisioning.as_str(),
        raw.provisioning_url.as_deref().filter(|s| !s.is_empty()),
        raw.provisioning_secret.as_deref().filter(|s| !s.is_empty()),
    ) {
        ("keycloak", None, None) | ("", None, None) => {
            if let Some(account) = context.keycloak_admin {
                Some(Provisioning::Keycloak(account.clone()))
            } else {
                if !raw.trust_roots.is_empty() || !raw.provisioning.is_empty() {
                    errors.push(
                        "DTR_FEDERATION_PROVISIONING: federated clients must be provisioned into the OP: set \
                     DTR_KEYCLOAK_ADMIN_CLIENT_ID/SECRET, or DTR_FEDERATION_PROVISIONING=endpoint with its URL \
                     and secret"
                            .into(),
                    );
                }
                None
            }
        }
        ("endpoint", Some(url), Some(secret)) => {
            let allow_http = context.allow_insecure_http;
            match Url::parse(url) {
                Ok(url) if url.scheme() == "https" || (allow_http && url.scheme() == "http") => {
                    Some(Provisioning::Endpoint {
                        url,
                        secret: secret.to_owned(),
                    })
                }
                _ => {
                    errors.push(format!(
                        "DTR_FEDERATION_PROVISIONING_URL: must be an https URL (http only with \
                         DTR_ALLOW_INSECURE_HTTP=true): {url}"
                    ));
                    None
                }
            }
        }
        ("endpoint", _, _) => {
            errors.push(
                "DTR_FEDERATION_PROVISIONING=endpoint needs DTR_FEDERATION_PROVISIONING_URL and \
                 DTR_FEDERATION_PROVISIONING_SECRET"
                    .into(),
            );
            None
        }
        ("keycloak" | "", _, _) => {
            errors
                .push("DTR_FEDERATION_PROVISIONING_URL/SECRET: only with DTR_FEDERATION_PROVISIONING=endpoint".into());
            None
        }
        (other, _, _) => {
            errors.push(format!(
                "DTR_FEDERATION_PROVISIONING: expected keycloak or endpoint, got {other:?}"
            ));
            None
        }
    };

    check_provider_statements(raw, &trust_roots, &context, errors);

    if raw.trust_roots.is_empty() {
        if !raw.provider_statements.is_empty() {
            errors
                .push("DTR_FEDERATION_PROVIDER_STATEMENTS: needs the federation in DTR_FEDERATION_TRUST_ROOTS".into());
        }
        // Without trust roots, an explicit DTR_FEDERATION_PROVISIONING keeps the
        // reconciliation running: it disables every client provisioned under the roots
        // that were removed. Otherwise federation is off.
        if raw.provisioning.is_empty() {
            return None;
        }
    }
    Some(FederationSettings {
        trust_roots,
        provider_statements: raw.provider_statements.clone(),
        limits: FetchLimits {
            connect_timeout: Duration::from_secs(raw.connect_timeout.max(1)),
            total_timeout: Duration::from_secs(raw.fetch_timeout.max(1)),
            max_bytes: raw.max_bytes,
            max_links: raw.max_links.max(1),
            host_rate: raw.host_rate.max(1),
            allow_private_targets: raw.allow_private_targets,
            ca_pem,
        },
        provisioning: provisioning?,
        realms: raw.realms.items().into_iter().map(str::to_owned).collect(),
        reconcile_interval: Duration::from_secs(raw.reconcile_interval.max(10)),
    })
}

/// Each provider statement must verify now against its trust root (whose keys must be inline:
/// nothing is fetched at startup), be meant for discovery, and name our issuer.
fn check_provider_statements(
    raw: &RawFederation,
    roots: &[TrustRoot],
    context: &Context<'_>,
    errors: &mut Vec<String>,
) {
    let now = crate::clock::now_ms() / 1000;
    let verifier = NestedStatements::default();
    for (i, entry) in raw.provider_statements.iter().enumerate() {
        let at = format!(
            "DTR_FEDERATION_PROVIDER_STATEMENTS[{i}] ({}, {})",
            entry.realm, entry.federation
        );
        if raw
            .provider_statements
            .iter()
            .take(i)
            .any(|e| e.realm == entry.realm && e.federation == entry.federation)
        {
            errors.push(format!("{at}: listed twice"));
            continue;
        }
        let Some(root) = roots.iter().find(|root| root.id == entry.federation) else {
            errors.push(format!("{at}: the federation is not a configured trust root"));
            continue;
        };
        let RootKeys::Inline(keys) = &root.keys else {
            errors.push(format!(
                "{at}: the trust root's keys must be given inline (jwks) to check the statement at startup"
            ));
            continue;
        };
        let mut levels = vec![entry.statement.clone()];
        let walked = loop {
            let Some(last) = levels.last() else { break Ok(()) };
            match inner_of(last, &entry.federation) {
                Ok(Inner::Embedded(inner)) if levels.len() < verifier.max_depth => levels.push(inner),
                Ok(Inner::Embedded(_)) => break Err(format!("deeper than {} levels", verifier.max_depth)),
                Ok(Inner::Uri(_)) => break Err("every level must be embedded (metadata_statements)".into()),
                Ok(Inner::None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Err(problem) = walked {
            errors.push(format!("{at}: {problem}"));
            continue;
        }
        let verified = match verifier.verify(&levels, &entry.federation, keys, Usage::Discovery, now) {
            Ok(verified) => verified,
            Err(e) => {
                errors.push(format!("{at}: does not verify: {e}"));
                continue;
            }
        };
        if let Some(origin) = &context.public_origin {
            let ours = format!("{origin}{}", context.issuer_template.replace("{realm}", &entry.realm));
            let theirs = verified.metadata.get("issuer").and_then(|v| v.as_str());
            if theirs != Some(ours.as_str()) {
                errors.push(format!("{at}: its issuer {theirs:?} is not ours ({ours})"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::Config;
    use crate::statements::tests::ec_key;

    const FED: &str = "https://fed.example.org";

    fn base(extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("DTR_UPSTREAM_URL", "http://kc:8080"),
            ("DTR_PUBLIC_URL", "https://id.example.com"),
            ("DTR_KEYCLOAK_ADMIN_CLIENT_ID", "dtr-proxy-admin"),
            ("DTR_KEYCLOAK_ADMIN_CLIENT_SECRET", "secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    /// A root-signed discovery statement naming `issuer`, and the root's key set.
    fn provider_statement(issuer: &str) -> (String, serde_json::Value) {
        let (key, jwk) = ec_key("fo-1");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("fo-1".into());
        let now = crate::clock::now_ms() / 1000;
        let claims = json!({"iss": FED, "sub": issuer, "iat": now, "exp": now + 3600,
            "federation_usage": "discovery", "issuer": issuer});
        (
            jsonwebtoken::encode(&header, &claims, &key).unwrap(),
            json!({"keys": [jwk]}),
        )
    }

    fn federation_env(statement: &str, jwks: &serde_json::Value) -> Vec<(String, String)> {
        base(&[
            (
                "DTR_FEDERATION_TRUST_ROOTS",
                json!([{"id": FED, "jwks": jwks}]).to_string(),
            ),
            (
                "DTR_FEDERATION_PROVIDER_STATEMENTS",
                json!([{"realm": "dtr", "federation": FED, "statement": statement}]).to_string(),
            ),
        ])
    }

    #[test]
    fn a_provider_statement_naming_our_issuer_loads() {
        let (statement, jwks) = provider_statement("https://id.example.com/realms/dtr");
        let config = Config::from_env(federation_env(&statement, &jwks)).unwrap();
        let federation = config.federation.expect("federation on");
        assert_eq!(federation.trust_roots.len(), 1);
        assert_eq!(federation.provider_statements.len(), 1);
        assert!(matches!(federation.provisioning, super::Provisioning::Keycloak(_)));
    }

    #[test]
    fn a_provider_statement_for_another_issuer_stops_the_start() {
        let (statement, jwks) = provider_statement("https://elsewhere.example.com/realms/dtr");
        let errors = Config::from_env(federation_env(&statement, &jwks))
            .unwrap_err()
            .to_string();
        assert!(errors.contains("is not ours"), "{errors}");
    }

    #[test]
    fn a_provider_statement_that_does_not_verify_stops_the_start() {
        let (statement, _) = provider_statement("https://id.example.com/realms/dtr");
        let (_, other) = ec_key("fo-1");
        let errors = Config::from_env(federation_env(&statement, &json!({"keys": [other]})))
            .unwrap_err()
            .to_string();
        assert!(errors.contains("does not verify"), "{errors}");
    }

    #[test]
    fn every_federation_problem_is_reported_at_once() {
        let env = vec![
            ("DTR_UPSTREAM_URL", "http://kc:8080".to_owned()),
            ("DTR_PUBLIC_URL", "https://id.example.com".to_owned()),
            (
                "DTR_FEDERATION_TRUST_ROOTS",
                json!([{"id": "http://fed.example.org", "jwks_uri": "https://fed.example.org/jwks"},
                    {"id": FED, "jwks": {"keys": []}}, {"id": "https://both.example", "jwks_uri": "https://x", "jwks": {"keys": []}}])
                .to_string(),
            ),
            ("DTR_FEDERATION_MAX_LINKS", "0".to_owned()),
            ("DTR_FEDERATION_CA_FILE", "/nonexistent/ca.pem".to_owned()),
        ];
        let errors = Config::from_env(env).unwrap_err().to_string();
        for expected in [
            "must be an https URL",
            "jwks needs at least one key",
            "exactly one of jwks and jwks_uri",
            "DTR_FEDERATION_MAX_LINKS",
            "DTR_FEDERATION_CA_FILE",
            "DTR_FEDERATION_PROVISIONING",
        ] {
            assert!(errors.contains(expected), "{expected} missing from {errors}");
        }
    }

    #[test]
    fn without_trust_roots_an_explicit_provisioning_keeps_reconciling() {
        let off = Config::from_env(base(&[])).unwrap();
        assert!(off.federation.is_none(), "no roots, no explicit provisioning: off");
        let retired = Config::from_env(base(&[
            ("DTR_FEDERATION_PROVISIONING", "keycloak".into()),
            ("DTR_FEDERATION_REALMS", "customers, staff".into()),
            ("DTR_FEDERATION_RECONCILE_INTERVAL", "60".into()),
        ]))
        .unwrap()
        .federation
        .expect("reconciling without roots");
        assert!(retired.trust_roots.is_empty());
        assert_eq!(retired.realms, vec!["customers", "staff"]);
        assert_eq!(retired.reconcile_interval, std::time::Duration::from_secs(60));
    }

    #[test]
    fn a_too_short_reconcile_interval_is_reported() {
        let errors = Config::from_env(base(&[
            ("DTR_FEDERATION_PROVISIONING", "keycloak".into()),
            ("DTR_FEDERATION_RECONCILE_INTERVAL", "1".into()),
        ]))
        .unwrap_err()
        .to_string();
        assert!(errors.contains("DTR_FEDERATION_RECONCILE_INTERVAL"), "{errors}");
    }
}
