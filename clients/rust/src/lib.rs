//! A relying-party kit for the Deferred Token Response (DTR) flow, in both of its profiles
//! (OpenID Connect DTR 1.0, the default, and the OAuth working group's
//! `draft-ietf-oauth-deferred-token-response`, chosen by [`ClientOptions::profile`]): discovery,
//! the deferred authorization request (also pushed, RFC 9126) with PKCE, the acknowledgment
//! (query, fragment or `form_post`) with its `state` and `iss` checks, the `deferred_code`
//! exchange, polling with the interval and `slow_down`, pings, cancellation, and the final ID
//! token's validation (signature against the OP's JWKS, `iss`, `aud`, `exp`, `nonce`, the same
//! `sub` as the interim token), with DPoP (RFC 9449, nonces included) and `private_key_jwt`.
//! HTTP is hyper's client over rustls with aws-lc-rs, JOSE is jsonwebtoken's. [`events`] verifies the
//! lifecycle events dtr-proxy sends to the verification service.

pub mod events;
mod http;
mod id_token;
mod keys;
mod ping;
mod profile;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::http::header::{HeaderMap, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

pub use events::{EventError, EventVerifier, LifecycleEvent};
pub use id_token::IdTokenClaims;
pub use jsonwebtoken::Algorithm;
pub use keys::{pkce_challenge, random_text, ClientAuth, DpopKey, PrivateKeyJwt};
pub use ping::{verify_ping, verify_ping_in, PingRefusal};
pub use profile::{
    Profile, COMPLETION_MODE, DEFERRAL_CODE_TOKEN_TYPE, DEFERRED_GRANT, DEFERRED_GRANT_IETF,
    DEFERRED_TOKEN_RESPONSE_SUPPORTED,
};

/// Discovery metadata naming the cancellation endpoint.
pub const CANCELLATION_ENDPOINT: &str = "deferred_authentication_cancellation_endpoint";

/// What can go wrong in the deferred flow.
#[derive(Debug, thiserror::Error)]
pub enum DtrError {
    /// An OAuth error answer (`error`, `error_description`) with its HTTP status.
    #[error("{error} ({status}): {}", description.as_deref().unwrap_or(""))]
    OAuth {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// The OP answered something the protocol does not allow.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// An ID token failed a check.
    #[error("invalid ID token: {0}")]
    InvalidIdToken(String),
    /// The OP lacks what the step needs (an endpoint, `deferred_code`).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A key or secret is unusable.
    #[error("key: {0}")]
    Key(String),
    /// The waiting loop gave up before the process ended.
    #[error("gave up waiting for the deferred process")]
    Timeout,
    /// The request could not be sent or its answer not read (connection, TLS, timeout).
    #[error("http: {0}")]
    Http(String),
}

/// The OP's discovery document, as far as the kit reads it; everything else in `extra`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub pushed_authorization_request_endpoint: Option<String>,
    #[serde(default)]
    pub deferred_authentication_cancellation_endpoint: Option<String>,
    /// Where the IETF profile cancels (RFC 7009).
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// The `token_type_hint` values the revocation endpoint takes (IETF §8.4).
    #[serde(default)]
    pub revocation_endpoint_token_type_values_supported: Vec<String>,
    #[serde(default)]
    pub response_types_supported: Vec<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Who the client is and how it talks to the OP.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub client_id: String,
    /// The registered redirect URI the acknowledgment comes back to.
    pub redirect_uri: String,
    pub auth: ClientAuth,
    /// The DTR profile the client speaks (default: OpenID).
    pub profile: Profile,
    /// Sender-constrain processes with DPoP (public clients need it at dtr-proxy).
    pub dpop: Dpop,
    /// Accept `http:` URLs (local development and tests only).
    pub allow_insecure_http: bool,
    /// Longest wait for one answer (default 30 s). TLS: rustls with aws-lc-rs and the webpki
    /// roots; redirects are not followed.
    pub timeout: Duration,
}

impl ClientOptions {
    pub fn new(client_id: impl Into<String>, redirect_uri: impl Into<String>, auth: ClientAuth) -> Self {
        Self {
            client_id: client_id.into(),
            redirect_uri: redirect_uri.into(),
            auth,
            profile: Profile::OpenId,
            dpop: Dpop::Off,
            allow_insecure_http: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// DPoP use.
#[derive(Clone, Debug)]
pub enum Dpop {
    Off,
    /// A fresh key for every authorization (one key per process).
    PerProcess,
    /// This key for every process.
    Key(DpopKey),
}

/// How the acknowledgment comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseMode {
    Query,
    Fragment,
    FormPost,
}

/// Options of one authorization request.
#[derive(Clone, Debug)]
pub struct AuthorizationOptions {
    /// Default `openid`.
    pub scope: String,
    /// `deferred_code code` instead of `deferred_code` (OpenID profile only).
    pub with_code: bool,
    /// Default: the OP's default (query).
    pub response_mode: Option<ResponseMode>,
    /// Push the request first (RFC 9126): the URL carries only `client_id` and `request_uri`.
    pub par: bool,
    /// Further parameters: `acr_values`, `claims`, `login_hint`, `prompt`…
    pub parameters: Vec<(String, String)>,
}

impl Default for AuthorizationOptions {
    fn default() -> Self {
        Self {
            scope: "openid".into(),
            with_code: false,
            response_mode: None,
            par: false,
            parameters: Vec::new(),
        }
    }
}

/// What the RP keeps between sending the user away and the acknowledgment.
#[derive(Clone, Debug)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub code_verifier: String,
    pub dpop_key: Option<DpopKey>,
}

/// A validated acknowledgment.
#[derive(Clone, Debug)]
pub enum Acknowledgment {
    Deferred {
        /// The code to exchange: the `deferred_code` (OpenID), or the `code` (IETF).
        deferred_code: String,
        parameters: Vec<(String, String)>,
    },
    /// Only for the OpenID `deferred_code code`: the OP answered at once; continue with the
    /// code flow.
    Code { parameters: Vec<(String, String)> },
}

/// A running deferred process: what the RP keeps after the exchange.
#[derive(Clone, Debug)]
pub struct DeferredProcess {
    /// The process's handle: the `deferred_auth_id` (OpenID), or the `deferral_code` (IETF).
    pub deferred_auth_id: String,
    /// When the process is over (`expires_in`), if the OP said.
    pub expires_at: Option<Instant>,
    /// Seconds between polls; grows by 5 on every `slow_down`.
    pub interval: u64,
    /// The interim ID token and its checked claims.
    pub interim_id_token: Option<String>,
    pub interim_claims: Option<IdTokenClaims>,
    /// The bearer token pings for this process carry.
    pub notification_token: Option<String>,
    pub nonce: String,
    pub dpop_key: Option<DpopKey>,
    pub last_poll: Option<Instant>,
}

/// The final answer, its ID token checked.
#[derive(Clone, Debug)]
pub struct FinalTokens {
    /// The whole token response (`access_token`, `token_type`, `refresh_token`…).
    pub response: Map<String, Value>,
    pub id_token: String,
    pub claims: IdTokenClaims,
}

impl FinalTokens {
    pub fn access_token(&self) -> Option<&str> {
        self.response.get("access_token").and_then(Value::as_str)
    }
    pub fn token_type(&self) -> Option<&str> {
        self.response.get("token_type").and_then(Value::as_str)
    }
}

/// One poll's outcome.
#[derive(Clone, Debug)]
pub enum PollResult {
    Pending {
        description: Option<String>,
    },
    /// Still pending, and the verification waits for the end-user at `interaction_uri`: send
    /// the user there (a link or a redirect) and keep polling. IETF: `interaction_required`
    /// (§6.6); OpenID: `authorization_pending` whose description ends in
    /// `; interaction_uri=<url>` (dtr-proxy's convention, `docs/profiles.md`).
    InteractionRequired {
        interaction_uri: String,
        description: Option<String>,
    },
    SlowDown {
        interval: u64,
        description: Option<String>,
    },
    Approved(Box<FinalTokens>),
    /// The OP or its store is briefly unavailable: try again after `retry_after` seconds.
    Unavailable {
        retry_after: u64,
        status: u16,
        description: Option<String>,
    },
    /// Denied or cancelled.
    AccessDenied {
        description: Option<String>,
    },
    ExpiredToken {
        description: Option<String>,
    },
    /// Spent or unknown id.
    InvalidGrant {
        description: Option<String>,
    },
}

impl PollResult {
    /// Whether the process is over (approved, denied, expired or spent).
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            PollResult::Pending { .. }
                | PollResult::InteractionRequired { .. }
                | PollResult::SlowDown { .. }
                | PollResult::Unavailable { .. }
        )
    }
}

/// The deferred flow for one client at one OP.
pub struct DtrClient {
    metadata: ProviderMetadata,
    options: ClientOptions,
    http: http::Http,
    keys: id_token::KeySet,
    /// The last DPoP nonce each server (origin) gave (RFC 9449 §8).
    dpop_nonces: Mutex<HashMap<String, String>>,
}

fn check_url(url: &str, allow_http: bool) -> Result<Url, DtrError> {
    let parsed = Url::parse(url).map_err(|e| DtrError::InvalidResponse(format!("{url}: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if allow_http => Ok(parsed),
        _ => Err(DtrError::InvalidResponse(format!("{url}: not an https URL"))),
    }
}

fn origin(url: &str) -> String {
    Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

fn text(body: &Map<String, Value>, name: &str) -> Option<String> {
    body.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// A response read whole.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Map<String, Value>,
    raw: String,
}

impl Reply {
    fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }

    fn oauth_error(&self) -> DtrError {
        match self.error() {
            Some(error) => DtrError::OAuth {
                status: self.status,
                error: error.to_owned(),
                description: text(&self.body, "error_description"),
            },
            None => DtrError::InvalidResponse(format!(
                "HTTP {}: {}",
                self.status,
                self.raw.chars().take(200).collect::<String>()
            )),
        }
    }

    fn retry_after(&self, fallback: u64) -> u64 {
        self.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map_or(fallback, |s| s.min(3600))
    }
}

impl DtrClient {
    /// Discovers the OP (`{issuer}/.well-known/openid-configuration`, which dtr-proxy augments)
    /// and checks that it names this issuer and offers the client's profile (`deferred_code`,
    /// or `deferred_token_response_supported`).
    pub async fn discover(issuer: &str, options: ClientOptions) -> Result<Self, DtrError> {
        let base = check_url(issuer, options.allow_insecure_http)?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            base.as_str().trim_end_matches('/')
        );
        let answer = http::Http::new(options.timeout)?.get(&url).await?;
        if answer.status != 200 {
            return Err(DtrError::InvalidResponse(format!(
                "discovery answered {}",
                answer.status
            )));
        }
        let metadata: ProviderMetadata =
            serde_json::from_slice(&answer.body).map_err(|e| DtrError::InvalidResponse(format!("discovery: {e}")))?;
        if metadata.issuer != issuer {
            return Err(DtrError::InvalidResponse(format!(
                "discovery names issuer {}, not {issuer}",
                metadata.issuer
            )));
        }
        Self::from_metadata(metadata, options)
    }

    /// From metadata already at hand.
    pub fn from_metadata(metadata: ProviderMetadata, options: ClientOptions) -> Result<Self, DtrError> {
        let allow = options.allow_insecure_http;
        for url in [
            Some(&metadata.authorization_endpoint),
            Some(&metadata.token_endpoint),
            Some(&metadata.jwks_uri),
            metadata.pushed_authorization_request_endpoint.as_ref(),
            metadata.deferred_authentication_cancellation_endpoint.as_ref(),
            metadata.revocation_endpoint.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            check_url(url, allow)?;
        }
        let offered = match options.profile {
            Profile::OpenId => metadata.response_types_supported.iter().any(|t| t == "deferred_code"),
            Profile::Ietf => metadata.extra.get(DEFERRED_TOKEN_RESPONSE_SUPPORTED) == Some(&Value::Bool(true)),
        };
        if !offered {
            return Err(DtrError::Unsupported(match options.profile {
                Profile::OpenId => "the OP does not offer response_type deferred_code".into(),
                Profile::Ietf => format!("the OP does not announce {DEFERRED_TOKEN_RESPONSE_SUPPORTED}"),
            }));
        }
        let keys = id_token::KeySet::new(metadata.jwks_uri.clone());
        let http = http::Http::new(options.timeout)?;
        Ok(Self {
            metadata,
            options,
            http,
            keys,
            dpop_nonces: Mutex::new(HashMap::new()),
        })
    }

    pub fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    pub fn client_id(&self) -> &str {
        &self.options.client_id
    }

    /// The DTR profile this client speaks.
    pub fn profile(&self) -> Profile {
        self.options.profile
    }

    /// Checks a ping (callback) for this client's processes, in its profile's names
    /// ([`verify_ping_in`]).
    pub fn verify_ping(
        &self,
        method: &::http::Method,
        headers: &HeaderMap,
        body: &[u8],
        token_for: impl FnOnce(&str) -> Option<String>,
    ) -> Result<String, PingRefusal> {
        verify_ping_in(self.options.profile, method, headers, body, token_for)
    }

    /// The cancellation endpoint from discovery, if the OP has one.
    pub fn cancellation_endpoint(&self) -> Option<&str> {
        self.metadata.deferred_authentication_cancellation_endpoint.as_deref()
    }

    /// An authenticated form POST, with a DPoP proof when `dpop` is given, retried once with
    /// the server's nonce when it answers `use_dpop_nonce`.
    async fn post(&self, url: &str, form: &[(&str, &str)], dpop: Option<&DpopKey>) -> Result<Reply, DtrError> {
        let server = origin(url);
        let mut retried = false;
        loop {
            let mut pairs: Vec<(String, String)> =
                form.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let authorization = self
                .options
                .auth
                .apply(&self.options.client_id, &self.metadata.issuer, &mut pairs)?;
            let mut headers = Vec::new();
            if let Some(value) = authorization {
                headers.push(("authorization", value));
            }
            if let Some(key) = dpop {
                let nonce = self.dpop_nonces.lock().ok().and_then(|n| n.get(&server).cloned());
                headers.push(("dpop", key.proof("POST", url, nonce.as_deref())?));
            }
            let answer = self.http.post_form(url, &pairs, headers).await?;
            let (status, headers) = (answer.status, answer.headers);
            if let Some(nonce) = headers.get("dpop-nonce").and_then(|v| v.to_str().ok()) {
                if let Ok(mut nonces) = self.dpop_nonces.lock() {
                    nonces.insert(server.clone(), nonce.to_owned());
                }
            }
            let raw = String::from_utf8_lossy(&answer.body).into_owned();
            let body = match serde_json::from_str::<Value>(&raw) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            };
            let reply = Reply {
                status,
                headers,
                body,
                raw,
            };
            let nonce_error = reply.error() == Some("use_dpop_nonce")
                || reply
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("use_dpop_nonce"));
            if dpop.is_some() && nonce_error && !retried {
                retried = true;
                continue;
            }
            return Ok(reply);
        }
    }

    /// Builds the deferred authorization request (PKCE S256, state, nonce), pushed first if
    /// asked. Returns the URL to send the browser to and what to keep until it comes back.
    pub async fn authorization_url(&self, options: &AuthorizationOptions) -> Result<(Url, Pending), DtrError> {
        let pending = Pending {
            state: random_text(24),
            nonce: random_text(24),
            code_verifier: random_text(32),
            dpop_key: match &self.options.dpop {
                Dpop::Off => None,
                Dpop::PerProcess => Some(DpopKey::generate()?),
                Dpop::Key(key) => Some(key.clone()),
            },
        };
        let challenge = pkce_challenge(&pending.code_verifier);
        let profile = self.options.profile;
        let response_type = profile.response_type(options.with_code).ok_or_else(|| {
            DtrError::Unsupported("`deferred_code code` is the OpenID profile's response type".into())
        })?;
        let mut params: Vec<(&str, &str)> = vec![
            ("client_id", &self.options.client_id),
            ("redirect_uri", &self.options.redirect_uri),
            ("response_type", response_type),
            ("scope", &options.scope),
            ("state", &pending.state),
            ("nonce", &pending.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        if let Some(hint) = profile.completion_mode() {
            params.push((COMPLETION_MODE, hint));
        }
        if let Some(mode) = options.response_mode {
            params.push((
                "response_mode",
                match mode {
                    ResponseMode::Query => "query",
                    ResponseMode::Fragment => "fragment",
                    ResponseMode::FormPost => "form_post",
                },
            ));
        }
        for (name, value) in &options.parameters {
            params.retain(|(n, _)| n != name);
            params.push((name, value));
        }
        let mut url =
            Url::parse(&self.metadata.authorization_endpoint).map_err(|e| DtrError::InvalidResponse(e.to_string()))?;
        if options.par {
            let endpoint = self
                .metadata
                .pushed_authorization_request_endpoint
                .as_deref()
                .ok_or_else(|| DtrError::Unsupported("the OP has no pushed_authorization_request_endpoint".into()))?;
            // client_id comes with the client authentication.
            params.retain(|(n, _)| *n != "client_id");
            let reply = self.post(endpoint, &params, pending.dpop_key.as_ref()).await?;
            if reply.status != 201 && reply.status != 200 {
                return Err(reply.oauth_error());
            }
            let request_uri = text(&reply.body, "request_uri")
                .ok_or_else(|| DtrError::InvalidResponse("no request_uri in the PAR answer".into()))?;
            url.query_pairs_mut()
                .append_pair("client_id", &self.options.client_id)
                .append_pair("request_uri", &request_uri);
        } else {
            url.query_pairs_mut().extend_pairs(params);
        }
        Ok((url, pending))
    }

    /// Reads the acknowledgment from the URL the browser came back to (query or fragment).
    pub fn acknowledgment_from_url(&self, url: &str, pending: &Pending) -> Result<Acknowledgment, DtrError> {
        let url = Url::parse(url).map_err(|e| DtrError::InvalidResponse(e.to_string()))?;
        let parameters: Vec<(String, String)> = match url.fragment().filter(|f| !f.is_empty()) {
            Some(fragment) => form_urlencoded::parse(fragment.as_bytes()).into_owned().collect(),
            None => url.query_pairs().into_owned().collect(),
        };
        self.acknowledgment(parameters, pending)
    }

    /// Reads a `form_post` acknowledgment: the form-encoded body the browser posted.
    pub fn acknowledgment_from_form(
        &self,
        content_type: Option<&str>,
        body: &[u8],
        pending: &Pending,
    ) -> Result<Acknowledgment, DtrError> {
        let form = content_type.is_some_and(|t| {
            t.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
        if !form {
            return Err(DtrError::InvalidResponse(
                "a form_post acknowledgment must be form-encoded".into(),
            ));
        }
        self.acknowledgment(form_urlencoded::parse(body).into_owned().collect(), pending)
    }

    /// Validates acknowledgment parameters: an error answer becomes [`DtrError::OAuth`];
    /// `iss` (RFC 9207) must name this OP (and be present if the OP says it sends it); `state`
    /// must be the request's; the profile's code present: `deferred_code`, never with `code`
    /// (OpenID), or `code` (IETF).
    pub fn acknowledgment(
        &self,
        parameters: Vec<(String, String)>,
        pending: &Pending,
    ) -> Result<Acknowledgment, DtrError> {
        let get = |name: &str| -> Result<Option<&str>, DtrError> {
            let mut values = parameters.iter().filter(|(n, _)| n == name);
            let first = values.next().map(|(_, v)| v.as_str());
            if values.next().is_some() {
                return Err(DtrError::InvalidResponse(format!("{name} appears more than once")));
            }
            Ok(first)
        };
        match get("iss")? {
            Some(iss) if iss != self.metadata.issuer => {
                return Err(DtrError::InvalidResponse(
                    "the acknowledgment's iss is not this OP".into(),
                ))
            }
            None if self.metadata.authorization_response_iss_parameter_supported => {
                return Err(DtrError::InvalidResponse("the acknowledgment has no iss".into()))
            }
            _ => {}
        }
        if get("state")? != Some(pending.state.as_str()) {
            return Err(DtrError::InvalidResponse(
                "the acknowledgment's state is not the request's".into(),
            ));
        }
        if let Some(error) = get("error")? {
            return Err(DtrError::OAuth {
                status: 400,
                error: error.to_owned(),
                description: get("error_description")?.map(str::to_owned),
            });
        }
        let name = self.options.profile.acknowledgment_code();
        // In the OpenID profile a `code` is the OP's immediate answer; in the IETF one it is
        // the acknowledgment itself.
        let immediate = match self.options.profile {
            Profile::OpenId => get("code")?,
            Profile::Ietf => None,
        };
        match (get(name)?, immediate) {
            (Some(_), Some(_)) => Err(DtrError::InvalidResponse(format!(
                "the response carries both code and {name}"
            ))),
            (Some(code), None) if !code.is_empty() => Ok(Acknowledgment::Deferred {
                deferred_code: code.to_owned(),
                parameters,
            }),
            (None, Some(_)) => Ok(Acknowledgment::Code { parameters }),
            _ => Err(DtrError::InvalidResponse(format!("the acknowledgment has no {name}"))),
        }
    }

    /// Exchanges the acknowledgment's code for a process, with a fresh bearer token for pings
    /// (or `notification_token`). OpenID: the deferred grant with `deferred_code` and
    /// `deferred_notification_token`, answered `200` with `deferred_auth_id` (and an interim ID
    /// token, checked). IETF: the `authorization_code` grant with `completion_mode=deferred` and
    /// `client_notification_token`, answered `400 authorization_pending` with `deferral_code`.
    pub async fn exchange(
        &self,
        ack: &Acknowledgment,
        pending: &Pending,
        notification_token: Option<String>,
    ) -> Result<DeferredProcess, DtrError> {
        let Acknowledgment::Deferred { deferred_code, .. } = ack else {
            return Err(DtrError::InvalidResponse("not a deferred acknowledgment".into()));
        };
        let profile = self.options.profile;
        let token = notification_token.unwrap_or_else(|| random_text(24));
        let mut form = vec![
            ("grant_type", profile.exchange_grant()),
            (profile.acknowledgment_code(), deferred_code.as_str()),
            ("redirect_uri", self.options.redirect_uri.as_str()),
            ("code_verifier", pending.code_verifier.as_str()),
            (profile.notification_token_param(), token.as_str()),
        ];
        if let Some(mode) = profile.completion_mode() {
            form.push((COMPLETION_MODE, mode));
        }
        let reply = self
            .post(&self.metadata.token_endpoint, &form, pending.dpop_key.as_ref())
            .await?;
        if reply.body.contains_key("access_token") {
            return Err(DtrError::InvalidResponse(
                "the exchange answered tokens, not a deferred process".into(),
            ));
        }
        if (reply.status, reply.error()) != profile.exchange_answer() {
            return Err(reply.oauth_error());
        }
        let name = profile.process_param();
        let id = text(&reply.body, name)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| DtrError::InvalidResponse(format!("no {name} in the exchange answer")))?;
        let positive = |name: &str| reply.body.get(name).and_then(Value::as_u64).filter(|v| *v > 0);
        let mut process = DeferredProcess {
            deferred_auth_id: id,
            expires_at: positive("expires_in").map(|s| Instant::now() + Duration::from_secs(s)),
            interval: positive("interval").unwrap_or(5),
            interim_id_token: None,
            interim_claims: None,
            notification_token: Some(token),
            nonce: pending.nonce.clone(),
            dpop_key: pending.dpop_key.clone(),
            last_poll: None,
        };
        if let Some(interim) = text(&reply.body, "interim_id_token") {
            let claims = self.verify_id_token(&interim, &pending.nonce).await?;
            process.interim_id_token = Some(interim);
            process.interim_claims = Some(claims);
        }
        Ok(process)
    }

    /// Checks an ID token: signature against the OP's JWKS with an algorithm it announces,
    /// `iss`, `aud` (and `azp`), `exp`, `iat`, `sub`, and the request's `nonce`.
    pub async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<IdTokenClaims, DtrError> {
        self.keys
            .verify(
                &self.http,
                token,
                &self.metadata.id_token_signing_alg_values_supported,
                &self.metadata.issuer,
                &self.options.client_id,
                nonce,
            )
            .await
    }

    /// Polls once, after waiting out the interval since the last poll. Updates the interval on
    /// `slow_down` (+5 s, RFC 8628). Errors other than the flow's own (`invalid_client`,
    /// `invalid_dpop_proof`…) are returned as [`DtrError::OAuth`].
    pub async fn poll(&self, process: &mut DeferredProcess) -> Result<PollResult, DtrError> {
        if let Some(last) = process.last_poll {
            let due = last + Duration::from_secs(process.interval);
            tokio::time::sleep_until(due.into()).await;
        }
        process.last_poll = Some(Instant::now());
        let profile = self.options.profile;
        let form = [
            ("grant_type", profile.poll_grant()),
            (profile.process_param(), process.deferred_auth_id.as_str()),
        ];
        let reply = self
            .post(&self.metadata.token_endpoint, &form, process.dpop_key.as_ref())
            .await?;
        if reply.status == 200 {
            return Ok(PollResult::Approved(Box::new(
                self.final_tokens(process, reply.body).await?,
            )));
        }
        let description = text(&reply.body, "error_description");
        Ok(match reply.error() {
            Some("authorization_pending") => match description.as_deref().and_then(interaction_in_description) {
                Some((progress, interaction_uri)) => PollResult::InteractionRequired {
                    interaction_uri,
                    description: progress,
                },
                None => PollResult::Pending { description },
            },
            Some("interaction_required") => match text(&reply.body, "interaction_uri").filter(|u| is_https(u)) {
                Some(interaction_uri) => PollResult::InteractionRequired {
                    interaction_uri,
                    description,
                },
                None => {
                    return Err(DtrError::InvalidResponse(
                        "interaction_required without an https interaction_uri".into(),
                    ))
                }
            },
            Some("slow_down") => {
                process.interval += 5;
                PollResult::SlowDown {
                    interval: process.interval,
                    description,
                }
            }
            Some("access_denied") => PollResult::AccessDenied { description },
            Some("expired_token") => PollResult::ExpiredToken { description },
            Some("invalid_grant") => PollResult::InvalidGrant { description },
            error if error == Some("temporarily_unavailable") || reply.status >= 500 || reply.status == 429 => {
                PollResult::Unavailable {
                    retry_after: reply.retry_after(process.interval),
                    status: reply.status,
                    description,
                }
            }
            _ => return Err(reply.oauth_error()),
        })
    }

    async fn final_tokens(
        &self,
        process: &DeferredProcess,
        response: Map<String, Value>,
    ) -> Result<FinalTokens, DtrError> {
        let id_token = text(&response, "id_token")
            .ok_or_else(|| DtrError::InvalidResponse("the final answer has no ID token".into()))?;
        let claims = self.verify_id_token(&id_token, &process.nonce).await?;
        if let Some(interim) = &process.interim_claims {
            if interim.sub != claims.sub {
                return Err(DtrError::InvalidIdToken(
                    "the final ID token names another sub than the interim one".into(),
                ));
            }
        }
        let token_type = text(&response, "token_type").unwrap_or_default();
        if process.dpop_key.is_some() && !token_type.eq_ignore_ascii_case("dpop") {
            return Err(DtrError::InvalidResponse(
                "a DPoP process answered a token that is not DPoP-bound".into(),
            ));
        }
        Ok(FinalTokens {
            response,
            id_token,
            claims,
        })
    }

    /// Polls with the interval until the process ends (approved, denied, expired, spent),
    /// within its expiry and `max_wait`; `on_wait` sees every pending poll.
    pub async fn wait_for_tokens(
        &self,
        process: &mut DeferredProcess,
        max_wait: Option<Duration>,
        mut on_wait: impl FnMut(&PollResult),
    ) -> Result<PollResult, DtrError> {
        let limit = max_wait.map(|w| Instant::now() + w);
        let deadline = match (process.expires_at, limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        loop {
            if let (Some(deadline), Some(last)) = (deadline, process.last_poll) {
                if last + Duration::from_secs(process.interval) > deadline {
                    if process.expires_at.is_some_and(|e| deadline >= e) {
                        return Ok(PollResult::ExpiredToken { description: None });
                    }
                    return Err(DtrError::Timeout);
                }
            }
            let result = self.poll(process).await?;
            if result.is_final() {
                return Ok(result);
            }
            on_wait(&result);
            if let PollResult::Unavailable { retry_after, .. } = result {
                let extra = retry_after.saturating_sub(process.interval);
                tokio::time::sleep(Duration::from_secs(extra)).await;
            }
        }
    }

    /// Cancels the process, with the client's authentication and DPoP proof: at the OP's
    /// cancellation endpoint (OpenID), or by revoking the deferral code at its revocation
    /// endpoint (IETF §8, RFC 7009) with the deferral code's `token_type_hint` when the OP
    /// lists it. A later poll answers `access_denied`.
    pub async fn cancel(&self, process: &DeferredProcess) -> Result<(), DtrError> {
        let id = process.deferred_auth_id.as_str();
        let (endpoint, form) = match self.options.profile {
            Profile::OpenId => (
                self.cancellation_endpoint()
                    .ok_or_else(|| DtrError::Unsupported(format!("the OP publishes no {CANCELLATION_ENDPOINT}")))?,
                vec![("deferred_auth_id", id)],
            ),
            Profile::Ietf => {
                let endpoint = self.metadata.revocation_endpoint.as_deref();
                let hinted = self
                    .metadata
                    .revocation_endpoint_token_type_values_supported
                    .iter()
                    .any(|t| t == DEFERRAL_CODE_TOKEN_TYPE);
                let mut form = vec![("token", id)];
                if hinted {
                    form.push(("token_type_hint", DEFERRAL_CODE_TOKEN_TYPE));
                }
                (
                    endpoint.ok_or_else(|| DtrError::Unsupported("the OP publishes no revocation_endpoint".into()))?,
                    form,
                )
            }
        };
        let reply = self.post(endpoint, &form, process.dpop_key.as_ref()).await?;
        if reply.status == 200 || reply.status == 204 {
            Ok(())
        } else {
            Err(reply.oauth_error())
        }
    }
}

/// The content type of a request, for [`DtrClient::acknowledgment_from_form`].
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// The OpenID profile's way of naming an interaction: `<progress>; interaction_uri=<https URL>`
/// at the end of a pending poll's description. The progress text before it, if any, and the URL.
fn interaction_in_description(description: &str) -> Option<(Option<String>, String)> {
    const JOIN: &str = "; interaction_uri=";
    let at = description.rfind(JOIN)?;
    let uri = &description[at + JOIN.len()..];
    if !is_https(uri) || uri.contains(char::is_whitespace) {
        return None;
    }
    let progress = &description[..at];
    Some(((!progress.is_empty()).then(|| progress.to_owned()), uri.to_owned()))
}

fn is_https(uri: &str) -> bool {
    uri.len() > "https://".len() && uri[..8].eq_ignore_ascii_case("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interaction_is_read_from_the_end_of_a_pending_description() {
        assert_eq!(
            interaction_in_description("step=video_ident; interaction_uri=https://idv.example/book?p=1"),
            Some((Some("step=video_ident".into()), "https://idv.example/book?p=1".into()))
        );
        assert_eq!(
            interaction_in_description("; interaction_uri=https://idv.example/x"),
            Some((None, "https://idv.example/x".into()))
        );
        for not_one in [
            "still checking",
            "x; interaction_uri=http://idv.example/x",
            "x; interaction_uri=https://",
            "x; interaction_uri=https://idv.example/a b",
        ] {
            assert_eq!(interaction_in_description(not_one), None, "{not_one}");
        }
    }
}
