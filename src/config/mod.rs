//! Configuration: built-in defaults < optional TOML file (`DTR_CONFIG`) < environment `DTR_*`
//! (`__` separates nesting levels). Parsed once into typed structs; every error is collected and
//! reported together, so an operator fixes a bad deployment in one round.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::crypto::{HashKey, Sealer};
use crate::tls::{self, ServerCas, ServerTls, TlsFileError};

mod clients;
mod effective;
mod events;
mod federation;
mod store;
mod traces;

use clients::validate_clients;
pub use clients::{ClientSecret, ClientSettings, Profile};
pub use events::EventSinkSettings;
use federation::{validate_federation, RawFederation};
pub use federation::{
    FederationSettings, FetchLimits, ProviderStatementSettings, Provisioning, RootKeys, TrustRoot, TrustRootSettings,
};
pub use store::StoreSettings;
pub use traces::{ExportTls, RootSampler, SamplerSetting, TraceSettings};

/// Path templates for the OP's endpoints. `{realm}` stands for one path segment; an OP without
/// realms uses templates without it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathTemplates {
    pub issuer: String,
    pub authorization: String,
    pub token: String,
    pub discovery: String,
    /// The OP's pushed authorization request endpoint (RFC 9126); empty to leave it untouched.
    pub par: String,
    /// The OP's token revocation endpoint (RFC 7009), where held grants are given back and
    /// where IETF-profile clients revoke deferral codes (the proxy reads requests there).
    pub revocation: String,
    /// OAuth 2.0 Authorization Server Metadata (RFC 8414) below the issuer, as Keycloak serves
    /// it; empty to leave it untouched.
    pub oauth_metadata: String,
    /// The same at RFC 8414 §3.1's well-known location (the issuer's path after it).
    pub oauth_metadata_root: String,
    pub cancellation: String,
}

impl Default for PathTemplates {
    /// Keycloak's layout.
    fn default() -> Self {
        Self {
            issuer: "/realms/{realm}".into(),
            authorization: "/realms/{realm}/protocol/openid-connect/auth".into(),
            token: "/realms/{realm}/protocol/openid-connect/token".into(),
            discovery: "/realms/{realm}/.well-known/openid-configuration".into(),
            par: "/realms/{realm}/protocol/openid-connect/ext/par/request".into(),
            revocation: "/realms/{realm}/protocol/openid-connect/revoke".into(),
            oauth_metadata: "/realms/{realm}/.well-known/oauth-authorization-server".into(),
            oauth_metadata_root: "/.well-known/oauth-authorization-server/realms/{realm}".into(),
            cancellation: "/realms/{realm}/protocol/openid-connect/deferred/cancel".into(),
        }
    }
}

/// A list given either as one comma-separated string (an environment variable) or as an
/// array (TOML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum StringList {
    Joined(String),
    Items(Vec<String>),
}

impl StringList {
    fn items(&self) -> Vec<&str> {
        let items: Vec<&str> = match self {
            StringList::Joined(joined) => joined.split(',').collect(),
            StringList::Items(items) => items.iter().map(String::as_str).collect(),
        };
        items.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect()
    }
}

/// The raw, serde-facing shape. Field names are the env names without `DTR_`, lower-cased.
/// Unknown top-level keys are warned about, not refused: Kubernetes injects `<SERVICE>_PORT`
/// style variables for every Service, and a Service named `dtr-…` would otherwise stop the pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawConfig {
    upstream_url: Option<String>,
    public_url: Option<String>,
    listen: String,
    admin_listen: String,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    tls_client_ca_file: Option<String>,
    client_cert_header: Option<String>,
    admin_tls_cert_file: Option<String>,
    admin_tls_key_file: Option<String>,
    admin_tls_client_ca_file: Option<String>,
    tls_reload_interval: u64,
    upstream_ca_file: Option<String>,
    upstream_ca_only: bool,
    redis_url: Option<String>,
    redis_cluster: bool,
    redis_key_prefix: String,
    redis_username: Option<String>,
    redis_password: Option<String>,
    redis_password_file: Option<String>,
    redis_sentinel_username: Option<String>,
    redis_sentinel_password: Option<String>,
    redis_timeout: u64,
    redis_ca_file: Option<String>,
    redis_client_cert_file: Option<String>,
    redis_client_key_file: Option<String>,
    webhook_secret: Option<String>,
    events_url: Option<String>,
    events_secret: Option<String>,
    events_ca_file: Option<String>,
    events_realms: StringList,
    ietf_realms: StringList,
    keycloak_admin_client_id: Option<String>,
    keycloak_admin_client_secret: Option<String>,
    keycloak_admin_realm: Option<String>,
    operator_token: StringList,
    operator_token_file: Option<String>,
    operator_max_lifetime: u64,
    hash_key: Option<String>,
    token_keys: Option<String>,
    allow_insecure_http: bool,
    offline_access: bool,
    interim_id_token: bool,
    require_dpop: bool,
    dpop_nonce: bool,
    jwks_cache_ttl: u64,
    login_ttl: u64,
    deferred_code_ttl: u64,
    default_interval: u64,
    default_expires_in: u64,
    upstream_timeout: u64,
    ping_timeout: u64,
    rp_ca_file: Option<String>,
    completion_hold: u64,
    max_body_bytes: usize,
    max_header_bytes: usize,
    header_read_timeout: u64,
    body_read_timeout: u64,
    worker_threads: usize,
    trusted_proxies: StringList,
    shutdown_grace: u64,
    shutdown_delay: u64,
    log: String,
    log_format: String,
    access_log: bool,
    paths: PathTemplates,
    clients: Vec<ClientSettings>,
    #[serde(flatten)]
    federation: RawFederation,
    /// Not a setting: the path of the TOML file, accepted so `DTR_CONFIG` passes validation.
    config: Option<String>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            upstream_url: None,
            public_url: None,
            listen: "0.0.0.0:8080".into(),
            admin_listen: "0.0.0.0:9090".into(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            client_cert_header: None,
            admin_tls_cert_file: None,
            admin_tls_key_file: None,
            admin_tls_client_ca_file: None,
            tls_reload_interval: 30,
            upstream_ca_file: None,
            upstream_ca_only: false,
            redis_url: None,
            redis_cluster: false,
            redis_key_prefix: "dtr".into(),
            redis_username: None,
            redis_password: None,
            redis_password_file: None,
            redis_sentinel_username: None,
            redis_sentinel_password: None,
            redis_timeout: 2,
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
            webhook_secret: None,
            events_url: None,
            events_secret: None,
            events_ca_file: None,
            events_realms: StringList::Items(Vec::new()),
            ietf_realms: StringList::Items(Vec::new()),
            keycloak_admin_client_id: None,
            keycloak_admin_client_secret: None,
            keycloak_admin_realm: None,
            operator_token: StringList::Items(Vec::new()),
            operator_token_file: None,
            operator_max_lifetime: 7 * 86_400,
            hash_key: None,
            token_keys: None,
            allow_insecure_http: false,
            offline_access: true,
            interim_id_token: true,
            require_dpop: false,
            dpop_nonce: false,
            jwks_cache_ttl: 300,
            login_ttl: 1800,
            deferred_code_ttl: 60,
            default_interval: 5,
            default_expires_in: 86_400,
            upstream_timeout: 10,
            ping_timeout: 10,
            rp_ca_file: None,
            completion_hold: 600,
            max_body_bytes: 64 * 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout: 15,
            body_read_timeout: 15,
            worker_threads: 0,
            trusted_proxies: StringList::Items(Vec::new()),
            shutdown_grace: 25,
            shutdown_delay: 3,
            log: "info".into(),
            log_format: "text".into(),
            access_log: false,
            paths: PathTemplates::default(),
            clients: Vec::new(),
            federation: RawFederation::default(),
            config: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration the proxy runs on.
#[derive(Clone)]
pub struct Config {
    /// Where the OP listens (scheme and authority, optional base path).
    pub upstream_url: Url,
    /// The public origin the OP's issuer uses (scheme and authority).
    pub public_url: Url,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// TLS on the public port (`DTR_TLS_CERT_FILE`, `DTR_TLS_KEY_FILE`); plain HTTP without.
    pub tls: Option<ServerTls>,
    /// TLS on the admin port, optionally requiring client certificates.
    pub admin_tls: Option<ServerTls>,
    /// How often the certificate files are looked at for a rotation.
    pub tls_reload_interval: Duration,
    /// The TLS client settings for the OP when `DTR_UPSTREAM_CA_FILE` adds (or, with
    /// `DTR_UPSTREAM_CA_ONLY`, sets) its trust anchors; the system's roots without.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// The CAs of `upstream_tls`, read again from their file when it changes.
    pub upstream_roots: Option<Arc<ServerCas>>,
    /// Where `upstream_tls`'s CAs come from, and whether they alone are trusted (for display).
    pub upstream_ca: Option<(String, bool)>,
    pub store: StoreSettings,
    pub webhook_secret: Option<Vec<u8>>,
    /// Where lifecycle events go (optional).
    pub events: Option<EventSinkSettings>,
    /// A Keycloak service account that may end offline sessions (optional).
    pub keycloak_admin: Option<KeycloakAdmin>,
    /// The bearer tokens of the operator API (`DTR_OPERATOR_TOKEN`, `DTR_OPERATOR_TOKEN_FILE`);
    /// none: the API is off.
    pub operator_tokens: OperatorTokens,
    /// The longest lifetime, from its start, the operator API may extend a process to.
    pub operator_max_lifetime: Duration,
    pub hash_key: HashKey,
    pub sealer: Sealer,
    pub allow_insecure_http: bool,
    pub offline_access: bool,
    pub interim_id_token: bool,
    /// Every deferred request of every client must carry a DPoP proof (`DTR_REQUIRE_DPOP`).
    pub require_dpop: bool,
    /// The proxy issues and requires DPoP server nonces on the DTR endpoints (`DTR_DPOP_NONCE`).
    pub dpop_nonce: bool,
    /// How long a client's fetched `jwks_uri` document is trusted.
    pub jwks_cache_ttl: Duration,
    pub login_ttl: Duration,
    pub deferred_code_ttl: Duration,
    pub default_interval: u64,
    pub default_expires_in: u64,
    pub upstream_timeout: Duration,
    pub ping_timeout: Duration,
    /// CAs trusted for what the RPs serve, their notification endpoints and `jwks_uri`, besides
    /// the system's roots (`DTR_RP_CA_FILE`: RPs inside the cluster, behind its own CA), read
    /// again when the file changes.
    pub rp_roots: Option<Arc<ServerCas>>,
    /// How long a completion waits for a process the RP has not created yet (0: never).
    pub completion_hold: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers (and, on a new connection, to start one).
    pub header_read_timeout: Duration,
    /// Time a client has to send the body of a request the proxy reads (DTR endpoints, webhook).
    pub body_read_timeout: Duration,
    /// Runtime worker threads (`DTR_WORKER_THREADS`); 0 = one per CPU the process may use.
    pub worker_threads: usize,
    /// Peers whose `X-Forwarded-For` chain is kept (the ingress in front of the proxy).
    pub trusted_proxies: Vec<IpNet>,
    /// The header in which those peers pass on the RP's TLS client certificate
    /// (`DTR_CLIENT_CERT_HEADER`).
    pub client_cert_header: Option<http::HeaderName>,
    pub shutdown_grace: Duration,
    /// Time between turning unready and closing the listeners on SIGTERM.
    pub shutdown_delay: Duration,
    pub log: String,
    pub log_format: LogFormat,
    /// One structured line per public request (`DTR_ACCESS_LOG`).
    pub access_log: bool,
    pub paths: PathTemplates,
    pub clients: Vec<ClientSettings>,
    /// OpenTelemetry trace export (the standard `OTEL_*` variables); `None`: off.
    pub traces: Option<TraceSettings>,
    /// Realms whose clients speak the IETF profile unless their own `profile` says otherwise
    /// (`DTR_IETF_REALMS`).
    pub ietf_realms: Vec<String>,
    /// Federated clients (URL client_ids verified through trust roots); `None`: off.
    pub federation: Option<FederationSettings>,
    /// Non-fatal findings (unknown `DTR_*` variables), logged once at start.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys and secrets stay out of any debug output.
        f.debug_struct("Config")
            .field("upstream_url", &self.upstream_url.as_str())
            .field("public_url", &self.public_url.as_str())
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("tls", &self.tls)
            .field("admin_tls", &self.admin_tls)
            .field("store", &self.store_kind())
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// The CAs of `path` trusted besides the system's roots for an outgoing client, checked now
/// (`name` is the setting, for the error).
fn extra_roots(name: &str, path: &str, errors: &mut Vec<String>) -> Option<Arc<ServerCas>> {
    ServerCas::load(std::path::Path::new(path), false)
        .map(Arc::new)
        .and_then(|roots| {
            tls::client_config(Some(&roots))
                .map(|_| roots)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| errors.push(format!("{name}: {e}")))
        .ok()
}

/// A Keycloak service account (client credentials) with the realm-management role
/// `manage-users`, used only to end the offline sessions of processes that end without the RP
/// at hand (a denial by webhook, an expiry).
#[derive(Debug, Clone)]
pub struct KeycloakAdmin {
    pub client_id: String,
    pub client_secret: ClientSecret,
    /// The realm the account lives in; unset: the realm of each process.
    pub realm: Option<String>,
}

/// The operator API's bearer tokens: several while one is rotated out. Never printed.
#[derive(Clone, Default)]
pub struct OperatorTokens(pub Vec<String>);

impl fmt::Debug for OperatorTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorTokens({} set)", self.0.len())
    }
}

/// Shortest operator token accepted: 32 characters (24 random bytes in base64).
const MIN_OPERATOR_TOKEN: usize = 32;

/// The operator tokens from the setting (comma-separated or a list) and from the file (one a
/// line; blank lines and `#` comments skipped). Each must be an RFC 6750 `b64token` of at
/// least [`MIN_OPERATOR_TOKEN`] characters.
fn operator_tokens(list: &StringList, file: Option<&str>, errors: &mut Vec<String>) -> OperatorTokens {
    let mut tokens: Vec<(String, &str)> = list
        .items()
        .into_iter()
        .map(|t| (t.to_owned(), "DTR_OPERATOR_TOKEN"))
        .collect();
    if let Some(path) = file.filter(|p| !p.is_empty()) {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let before = tokens.len();
                tokens.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(|t| (t.to_owned(), "DTR_OPERATOR_TOKEN_FILE")),
                );
                if tokens.len() == before {
                    errors.push(format!("DTR_OPERATOR_TOKEN_FILE: no token in {path}"));
                }
            }
            Err(e) => errors.push(format!("DTR_OPERATOR_TOKEN_FILE: cannot read {path}: {e}")),
        }
    }
    let b64token = |t: &str| {
        let body = t.trim_end_matches('=');
        !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
    };
    for (token, name) in &tokens {
        if token.len() < MIN_OPERATOR_TOKEN || !b64token(token) {
            errors.push(format!(
                "{name}: a token must be at least {MIN_OPERATOR_TOKEN} characters of A-Z a-z 0-9 - . _ ~ + / (e.g. openssl rand -base64 32)"
            ));
        }
    }
    OperatorTokens(tokens.into_iter().map(|(t, _)| t).collect())
}

/// Every problem found in one configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const ENV_PREFIX: &str = "DTR_";

impl Config {
    /// Loads from an environment given as pairs (the process environment in `main`, a map in
    /// tests): `DTR_CONFIG` names an optional TOML file, `DTR_*` variables override it.
    pub fn from_env<I, K, V>(vars: I) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut errors = Vec::new();
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        let mut otel = std::collections::BTreeMap::new();
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                if k.as_ref().starts_with("OTEL_") {
                    otel.insert(k.as_ref().to_owned(), v.as_ref().to_owned());
                    return None;
                }
                let key = k.as_ref();
                key.strip_prefix(ENV_PREFIX)
                    .map(|rest| (rest.to_ascii_lowercase(), v.as_ref().to_owned()))
            })
            .filter(|(k, _)| !k.is_empty())
            .collect();

        if let Some((_, path)) = vars.iter().find(|(k, _)| k == "config") {
            if std::path::Path::new(path).is_file() {
                figment = figment.merge(Toml::file_exact(path));
            } else {
                errors.push(format!("DTR_CONFIG: no such file: {path}"));
            }
        }
        let known: Vec<String> = match serde_json::to_value(RawConfig::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let mut warnings = Vec::new();
        let mut extra_clients = Vec::new();
        for (key, value) in &vars {
            let top = key.split("__").next().unwrap_or_default();
            if !known.iter().any(|k| k == top) {
                warnings.push(format!("ignoring unknown setting DTR_{}", key.to_ascii_uppercase()));
                continue;
            }
            if key == "clients" {
                // A JSON array of client objects: the natural way to pass structured settings
                // through a Kubernetes env var.
                match serde_json::from_str::<Vec<ClientSettings>>(value) {
                    Ok(clients) => extra_clients.extend(clients),
                    Err(e) => errors.push(format!("DTR_CLIENTS: not a JSON array of clients: {e}")),
                }
                continue;
            }
            if key == "federation_trust_roots" || key == "federation_provider_statements" {
                // JSON arrays of objects, like DTR_CLIENTS.
                match serde_json::from_str::<Vec<serde_json::Value>>(value) {
                    Ok(items) => figment = figment.merge((key.as_str(), items)),
                    Err(e) => errors.push(format!("DTR_{}: not a JSON array: {e}", key.to_ascii_uppercase())),
                }
                continue;
            }
            let path = key.replace("__", ".");
            let parsed = Value::from_str(value).unwrap_or_else(|_| Value::from(value.clone()));
            figment = figment.merge((path, parsed));
        }
        let traces = traces::trace_settings(&otel, &mut errors);
        let mut config = Self::from_figment(figment, extra_clients, errors)?;
        config.warnings = warnings;
        config.traces = traces;
        Ok(config)
    }

    /// Loads from a ready figment (tests build one from a map or a struct).
    fn from_figment(
        figment: Figment,
        extra_clients: Vec<ClientSettings>,
        mut errors: Vec<String>,
    ) -> Result<Self, ConfigErrors> {
        let raw: RawConfig = match figment.extract_lossy() {
            Ok(raw) => raw,
            Err(e) => {
                for err in e {
                    errors.push(describe_figment_error(&err));
                }
                return Err(ConfigErrors(errors));
            }
        };
        let mut raw = raw;
        raw.clients.extend(extra_clients);
        let config = validate(raw, &mut errors);
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }

    pub fn store_kind(&self) -> &'static str {
        match &self.store {
            StoreSettings::Embedded => "embedded",
            StoreSettings::Redis(options) => options.topology.kind(),
        }
    }

    /// The public origin without a trailing slash, e.g. `https://id.example.com`.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }
}

fn describe_figment_error(err: &figment::Error) -> String {
    let path = err.path.join("__").to_ascii_uppercase();
    if path.is_empty() {
        err.kind.to_string()
    } else {
        format!("DTR_{path}: {}", err.kind)
    }
}

fn validate(raw: RawConfig, errors: &mut Vec<String>) -> Option<Config> {
    let upstream_url = required_url("DTR_UPSTREAM_URL", raw.upstream_url.as_deref(), errors);
    let public_url = required_url("DTR_PUBLIC_URL", raw.public_url.as_deref(), errors);
    if let Some(url) = &public_url {
        if url.path() != "/" || url.query().is_some() {
            errors.push(format!(
                "DTR_PUBLIC_URL: must be an origin (scheme, host, port) without a path: {url}"
            ));
        }
        if url.scheme() == "http" && !raw.allow_insecure_http {
            errors.push(
                "DTR_PUBLIC_URL: http is only for local development; use https or set \
                 DTR_ALLOW_INSECURE_HTTP=true"
                    .into(),
            );
        }
    }
    let listen = socket_addr("DTR_LISTEN", &raw.listen, errors);
    let admin_listen = socket_addr("DTR_ADMIN_LISTEN", &raw.admin_listen, errors);
    // The public port asks for a client certificate without requiring one: browsers reach it
    // too. A verified one binds the deferred processes of its requests (RFC 8705).
    let tls = server_tls(
        "DTR_TLS",
        [&raw.tls_cert_file, &raw.tls_key_file, &raw.tls_client_ca_file],
        errors,
    )
    .map(ServerTls::client_certificate_optional);
    let admin_tls = server_tls(
        "DTR_ADMIN_TLS",
        [
            &raw.admin_tls_cert_file,
            &raw.admin_tls_key_file,
            &raw.admin_tls_client_ca_file,
        ],
        errors,
    );
    if raw.tls_reload_interval == 0 {
        errors.push("DTR_TLS_RELOAD_INTERVAL: must be a positive number of seconds".into());
    }
    let upstream_roots = match raw.upstream_ca_file.as_deref().filter(|s| !s.is_empty()) {
        Some(path) => match ServerCas::load(std::path::Path::new(path), raw.upstream_ca_only) {
            Ok(roots) => Some(Arc::new(roots)),
            Err(e) => {
                errors.push(format!("DTR_UPSTREAM_CA_FILE: {e}"));
                None
            }
        },
        None => {
            if raw.upstream_ca_only {
                errors.push("DTR_UPSTREAM_CA_ONLY: needs DTR_UPSTREAM_CA_FILE".into());
            }
            None
        }
    };
    if upstream_roots.is_some() && upstream_url.as_ref().is_some_and(|url| url.scheme() != "https") {
        errors.push("DTR_UPSTREAM_CA_FILE: only for an https DTR_UPSTREAM_URL".into());
    }
    let upstream_tls = upstream_roots.as_ref().and_then(|roots| {
        tls::client_config(Some(roots))
            .map(Arc::new)
            .map_err(|e| errors.push(format!("DTR_UPSTREAM_CA_FILE: {e}")))
            .ok()
    });

    let store = store::settings(&raw, errors);
    let shared_store = matches!(store, StoreSettings::Redis(_));
    let rp_roots = raw
        .rp_ca_file
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|path| extra_roots("DTR_RP_CA_FILE", path, errors));

    let events = events::sink(&raw, errors);

    let keycloak_admin = match (
        raw.keycloak_admin_client_id.as_deref().filter(|s| !s.is_empty()),
        raw.keycloak_admin_client_secret.as_deref().filter(|s| !s.is_empty()),
    ) {
        (Some(client_id), Some(secret)) => Some(KeycloakAdmin {
            client_id: client_id.to_owned(),
            client_secret: ClientSecret(secret.to_owned()),
            realm: raw.keycloak_admin_realm.clone().filter(|r| !r.is_empty()),
        }),
        (None, None) => None,
        _ => {
            errors.push("DTR_KEYCLOAK_ADMIN_CLIENT_ID and DTR_KEYCLOAK_ADMIN_CLIENT_SECRET go together".into());
            None
        }
    };

    let operator_tokens = operator_tokens(&raw.operator_token, raw.operator_token_file.as_deref(), errors);
    if raw.operator_max_lifetime < 60 {
        errors.push("DTR_OPERATOR_MAX_LIFETIME: must be at least 60 seconds".into());
    }

    let webhook_secret = match raw.webhook_secret.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(secret) => match crate::webhook::decode_secret(secret) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                errors.push(format!("DTR_WEBHOOK_SECRET: {e}"));
                None
            }
        },
    };

    // Replicas sharing a store must agree on the keys; a single embedded replica may use
    // per-process random keys (its state dies with it anyway).
    let hash_key = match raw.hash_key.as_deref().filter(|s| !s.is_empty()) {
        Some(encoded) => HashKey::from_base64(encoded)
            .map_err(|e| errors.push(format!("DTR_HASH_KEY: {e}")))
            .ok(),
        None if shared_store => {
            errors.push("DTR_HASH_KEY: required with DTR_REDIS_URL (all replicas must share it)".into());
            None
        }
        None => Some(HashKey::random()),
    };
    let sealer = match raw.token_keys.as_deref().filter(|s| !s.is_empty()) {
        Some(spec) => Sealer::from_spec(spec)
            .map_err(|e| errors.push(format!("DTR_TOKEN_KEYS: {e}")))
            .ok(),
        None if shared_store => {
            errors.push("DTR_TOKEN_KEYS: required with DTR_REDIS_URL (all replicas must share them)".into());
            None
        }
        None => Some(Sealer::random()),
    };

    for (name, value) in [
        ("DTR_LOGIN_TTL", raw.login_ttl),
        ("DTR_DEFERRED_CODE_TTL", raw.deferred_code_ttl),
        ("DTR_DEFAULT_INTERVAL", raw.default_interval),
        ("DTR_DEFAULT_EXPIRES_IN", raw.default_expires_in),
        ("DTR_UPSTREAM_TIMEOUT", raw.upstream_timeout),
        ("DTR_PING_TIMEOUT", raw.ping_timeout),
        ("DTR_JWKS_CACHE_TTL", raw.jwks_cache_ttl),
        ("DTR_HEADER_READ_TIMEOUT", raw.header_read_timeout),
        ("DTR_BODY_READ_TIMEOUT", raw.body_read_timeout),
    ] {
        if value == 0 {
            errors.push(format!("{name}: must be a positive number of seconds"));
        }
    }
    if raw.max_body_bytes < 1024 {
        errors.push("DTR_MAX_BODY_BYTES: must be at least 1024".into());
    }
    if raw.max_header_bytes < 8 * 1024 {
        errors.push("DTR_MAX_HEADER_BYTES: must be at least 8192".into());
    }
    let log_format = match raw.log_format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            errors.push(format!("DTR_LOG_FORMAT: expected text or json, got {other:?}"));
            LogFormat::Text
        }
    };
    let trusted_proxies = networks("DTR_TRUSTED_PROXIES", &raw.trusted_proxies, errors);
    validate_paths(&raw.paths, errors);
    validate_clients(&raw.clients, raw.allow_insecure_http, errors);
    let client_cert_header = client_cert_header(raw.client_cert_header.as_deref(), &trusted_proxies, errors);
    // A client held to its certificate needs a way for certificates to arrive.
    if !tls.as_ref().is_some_and(ServerTls::requests_client_certificates) && client_cert_header.is_none() {
        for (i, client) in raw.clients.iter().enumerate() {
            if client.tls_client_certificate_bound_access_tokens {
                errors.push(format!(
                    "clients[{i}] ({}): tls_client_certificate_bound_access_tokens needs client certificates: set DTR_TLS_CLIENT_CA_FILE or DTR_CLIENT_CERT_HEADER",
                    client.client_id
                ));
            }
        }
    }
    let federation = validate_federation(
        &raw.federation,
        federation::Context {
            public_origin: public_url.as_ref().map(|url| url.origin().ascii_serialization()),
            issuer_template: &raw.paths.issuer,
            keycloak_admin: keycloak_admin.as_ref(),
            allow_insecure_http: raw.allow_insecure_http,
        },
        errors,
    );

    Some(Config {
        upstream_url: upstream_url?,
        public_url: public_url?,
        listen: listen?,
        admin_listen: admin_listen?,
        tls,
        admin_tls,
        tls_reload_interval: Duration::from_secs(raw.tls_reload_interval),
        upstream_tls,
        upstream_roots,
        upstream_ca: raw
            .upstream_ca_file
            .clone()
            .filter(|s| !s.is_empty())
            .map(|file| (file, raw.upstream_ca_only)),
        store,
        webhook_secret,
        events,
        keycloak_admin,
        operator_tokens,
        operator_max_lifetime: Duration::from_secs(raw.operator_max_lifetime),
        hash_key: hash_key?,
        sealer: sealer?,
        allow_insecure_http: raw.allow_insecure_http,
        offline_access: raw.offline_access,
        interim_id_token: raw.interim_id_token,
        require_dpop: raw.require_dpop,
        dpop_nonce: raw.dpop_nonce,
        jwks_cache_ttl: Duration::from_secs(raw.jwks_cache_ttl),
        login_ttl: Duration::from_secs(raw.login_ttl),
        deferred_code_ttl: Duration::from_secs(raw.deferred_code_ttl),
        default_interval: raw.default_interval,
        default_expires_in: raw.default_expires_in,
        upstream_timeout: Duration::from_secs(raw.upstream_timeout),
        ping_timeout: Duration::from_secs(raw.ping_timeout),
        rp_roots,
        completion_hold: Duration::from_secs(raw.completion_hold),
        max_body_bytes: raw.max_body_bytes,
        max_header_bytes: raw.max_header_bytes,
        header_read_timeout: Duration::from_secs(raw.header_read_timeout),
        body_read_timeout: Duration::from_secs(raw.body_read_timeout),
        worker_threads: raw.worker_threads,
        trusted_proxies,
        client_cert_header,
        shutdown_grace: Duration::from_secs(raw.shutdown_grace),
        shutdown_delay: Duration::from_secs(raw.shutdown_delay),
        log: raw.log,
        log_format,
        access_log: raw.access_log,
        paths: raw.paths,
        clients: raw.clients,
        traces: None,
        ietf_realms: raw.ietf_realms.items().into_iter().map(str::to_owned).collect(),
        federation,
        warnings: Vec::new(),
    })
}

fn required_url(name: &str, value: Option<&str>, errors: &mut Vec<String>) -> Option<Url> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        errors.push(format!("{name}: required"));
        return None;
    };
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) => {
            errors.push(format!("{name}: must be an http(s) URL with a host: {value}"));
            None
        }
        Err(e) => {
            errors.push(format!("{name}: not a URL ({e}): {value}"));
            None
        }
    }
}

/// A listener's TLS files: `[cert, key, client CA]` under `{prefix}_CERT_FILE`,
/// `{prefix}_KEY_FILE` and `{prefix}_CLIENT_CA_FILE`, read and checked now.
fn server_tls(
    prefix: &str,
    [cert, key, client_ca]: [&Option<String>; 3],
    errors: &mut Vec<String>,
) -> Option<ServerTls> {
    let set = |value: &Option<String>| value.clone().filter(|s| !s.is_empty());
    match (set(cert), set(key)) {
        (Some(cert), Some(key)) => {
            let client_ca = set(client_ca);
            let loaded = ServerTls::load(
                std::path::Path::new(&cert),
                std::path::Path::new(&key),
                client_ca.as_deref().map(std::path::Path::new),
            );
            loaded
                .map_err(|problems| {
                    for problem in problems {
                        errors.push(match problem {
                            TlsFileError::Cert(e) => format!("{prefix}_CERT_FILE: {e}"),
                            TlsFileError::Key(e) => format!("{prefix}_KEY_FILE: {e}"),
                            TlsFileError::ClientCa(e) => format!("{prefix}_CLIENT_CA_FILE: {e}"),
                        });
                    }
                })
                .ok()
        }
        (None, None) => {
            if set(client_ca).is_some() {
                errors.push(format!(
                    "{prefix}_CLIENT_CA_FILE: needs {prefix}_CERT_FILE and {prefix}_KEY_FILE"
                ));
            }
            None
        }
        _ => {
            errors.push(format!("{prefix}_CERT_FILE and {prefix}_KEY_FILE go together"));
            None
        }
    }
}

fn socket_addr(name: &str, value: &str, errors: &mut Vec<String>) -> Option<SocketAddr> {
    value
        .parse()
        .map_err(|_| errors.push(format!("{name}: expected host:port, got {value:?}")))
        .ok()
}

/// CIDR networks (`10.0.0.0/8`, `fd00::/8`); a bare address stands for itself alone.
/// `DTR_CLIENT_CERT_HEADER`: a header name, believed only from `DTR_TRUSTED_PROXIES`, which
/// must therefore name the ingress.
fn client_cert_header(value: Option<&str>, trusted: &[IpNet], errors: &mut Vec<String>) -> Option<http::HeaderName> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    let name = http::HeaderName::from_bytes(value.as_bytes())
        .map_err(|_| errors.push(format!("DTR_CLIENT_CERT_HEADER: not a header name: {value:?}")))
        .ok()?;
    if trusted.is_empty() {
        errors.push(
            "DTR_CLIENT_CERT_HEADER: needs DTR_TRUSTED_PROXIES (the ingress that sets the header; from anyone else it is stripped)"
                .into(),
        );
    }
    Some(name)
}

fn networks(name: &str, list: &StringList, errors: &mut Vec<String>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for item in list.items() {
        match (IpNet::from_str(item), IpAddr::from_str(item)) {
            (Ok(net), _) => out.push(net),
            (_, Ok(addr)) => out.push(IpNet::from(addr)),
            _ => errors.push(format!("{name}: not a CIDR network or IP address: {item:?}")),
        }
    }
    out
}

fn validate_paths(paths: &PathTemplates, errors: &mut Vec<String>) {
    for (name, template) in [
        ("DTR_PATHS__ISSUER", &paths.issuer),
        ("DTR_PATHS__AUTHORIZATION", &paths.authorization),
        ("DTR_PATHS__TOKEN", &paths.token),
        ("DTR_PATHS__DISCOVERY", &paths.discovery),
        ("DTR_PATHS__PAR", &paths.par),
        ("DTR_PATHS__REVOCATION", &paths.revocation),
        ("DTR_PATHS__OAUTH_METADATA", &paths.oauth_metadata),
        ("DTR_PATHS__OAUTH_METADATA_ROOT", &paths.oauth_metadata_root),
        ("DTR_PATHS__CANCELLATION", &paths.cancellation),
    ] {
        let optional = matches!(
            name,
            "DTR_PATHS__OAUTH_METADATA" | "DTR_PATHS__OAUTH_METADATA_ROOT" | "DTR_PATHS__PAR"
        );
        if optional && template.is_empty() {
            continue;
        }
        if name != "DTR_PATHS__ISSUER" && !template.starts_with('/') {
            errors.push(format!("{name}: must start with '/': {template:?}"));
        }
        if template.matches("{realm}").count() > 1 {
            errors.push(format!("{name}: may name {{realm}} at most once: {template:?}"));
        }
    }
}

#[cfg(test)]
mod tests;
