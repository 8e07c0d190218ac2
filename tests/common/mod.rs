//! The test bed: a real redis-server and a real OpenID Provider (tests/op, oidc-provider laid
//! out like Keycloak), started once per test binary and tied to its lifetime; a dtr-proxy per
//! test on its own ports and realm; and an RP that walks the flow over real sockets.

#![allow(dead_code)]
// The children live as long as the test process; they are never waited for by design.
#![allow(clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use dtr_proxy::{Config, Running};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

pub mod faults;
pub mod federation;
pub mod keycloak;
pub mod kit;

pub const REDIRECT_URI: &str = "https://rp.example.com/cb";
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The operator API's bearer token in every test proxy.
pub const OPERATOR_TOKEN: &str = "operator-token-0123456789abcdefghijklmnopqrstuvwxyz";
/// The `client_secret_jwt` client's secret (tests/op/server.mjs).
pub const DTR_HS_SECRET: &str = "dtr-hs-secret-0123456789abcdefghijklmnop";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts `program args…` so that it dies with this test process: a shell keeps the child's
/// pid and kills it when its stdin (our pipe) closes, which happens however we exit.
fn spawn_tied(program: &str, args: &[&str]) -> Child {
    spawn_tied_with(program, args, &[], None)
}

/// [`spawn_tied`] with environment variables on top of ours and, with `log`, the child's
/// output in that file (otherwise stdout is dropped and stderr inherited). The child's stdin
/// is /dev/null, not closed: kc.sh hands its stdin on to the JVM.
fn spawn_tied_with(program: &str, args: &[&str], env: &[(String, String)], log: Option<&std::path::Path>) -> Child {
    let script = r#"prog="$1"; shift; "$prog" "$@" </dev/null & pid=$!; trap 'kill $pid 2>/dev/null' EXIT; cat >/dev/null; kill $pid 2>/dev/null; wait $pid 2>/dev/null"#;
    let mut argv = vec!["-c", script, "tied", program];
    argv.extend_from_slice(args);
    let (stdout, stderr) = match log {
        Some(path) => {
            let file = std::fs::File::create(path).expect("log file");
            let copy = file.try_clone().expect("log file");
            (Stdio::from(file), Stdio::from(copy))
        }
        None => (Stdio::null(), Stdio::inherit()),
    };
    Command::new("sh")
        .args(&argv)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

/// A port for a child process to listen on.
///
/// A port from `bind(0)` is free only while its listener lives; between dropping it and the
/// child's bind, another test's `bind(0)` or outgoing connection may take it. The child then
/// exits, or worse, a readiness check reaches the other process and the test runs against it.
/// So ports come from below the kernel's ephemeral range, which neither `bind(0)` nor `connect`
/// ever hands out, by a counter of this test binary (started at an offset of its pid, as test
/// binaries run one after another while the previous one's sockets may linger), each checked
/// free when handed out.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static RANGE: OnceLock<(u32, u32, u32)> = OnceLock::new();
    let &(low, size, start) = RANGE.get_or_init(|| {
        let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let low = ephemeral_low.saturating_sub(16384).max(10000);
        let size = ephemeral_low.saturating_sub(low);
        (low, size, std::process::id().wrapping_mul(2654435761) % size.max(1))
    });
    if size < 1024 {
        return StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
    }
    for _ in 0..size {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + (start + n) % size) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{}", low + size)
}

/// The arguments of a throwaway redis-server on `port`: loopback only, nothing persisted.
pub fn redis_server_args(port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub struct Redis {
    pub url: String,
    _child: Mutex<Child>,
}

/// One redis-server per test binary (Debian's package, installed by scripts/ensure-deps.sh).
pub fn redis() -> &'static Redis {
    static REDIS: OnceLock<Redis> = OnceLock::new();
    REDIS.get_or_init(|| {
        let port = free_port();
        let args = redis_server_args(port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = spawn_tied("redis-server", &args);
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Redis {
                    url,
                    _child: Mutex::new(child),
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start (run scripts/ensure-deps.sh)");
    })
}

pub struct Op {
    pub port: u16,
    _child: Mutex<Child>,
}

/// One test OP per test binary; each proxy gets its own realm in it.
pub fn op() -> &'static Op {
    static OP: OnceLock<Op> = OnceLock::new();
    OP.get_or_init(|| {
        let server = repo_root().join("tests/op/server.mjs");
        // The OP exits by itself when its stdin (our pipe) closes.
        let mut child = Command::new("node")
            .arg(&server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its log is noise in test output; DTR_TEST_OP_LOG=1 shows it.
            .stderr(if std::env::var_os("DTR_TEST_OP_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("cannot start node (run scripts/ensure-deps.sh)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("OP output");
        let ready: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("OP did not start (run scripts/ensure-deps.sh); said {line:?}"));
        let port = ready["port"].as_u64().expect("port") as u16;
        Op {
            port,
            _child: Mutex::new(child),
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Redis,
}

pub struct Options {
    pub store: StoreKind,
    pub clients: Vec<Value>,
    pub env: Vec<(String, String)>,
    /// The profile of the test realm's clients (`DTR_IETF_REALMS` names the realm for IETF).
    pub profile: Profile,
    /// Another proxy's realm and public port, to start in its place (a restart); its realm at
    /// the OP is kept.
    pub succeeds: Option<(String, u16)>,
}

impl Options {
    pub fn new(store: StoreKind) -> Self {
        Self {
            store,
            clients: vec![
                json!({"client_id": "dtr-client", "redirect_uris": [REDIRECT_URI]}),
                json!({"client_id": "dtr-post"}),
                json!({"client_id": "dtr-jwt", "jwks": {"keys": [client_jwk()]}}),
                json!({"client_id": "dtr-hs", "client_secret": DTR_HS_SECRET}),
                json!({"client_id": "dtr-public"}),
            ],
            env: Vec::new(),
            profile: Profile::OpenId,
            succeeds: None,
        }
    }

    /// Starts in the place of `proxy` (stopped before): same realm, same public URL.
    pub fn succeeding(mut self, proxy: &Proxy) -> Self {
        let port = url::Url::parse(&proxy.base)
            .ok()
            .and_then(|url| url.port())
            .expect("the proxy's port");
        self.succeeds = Some((proxy.realm.clone(), port));
        self
    }

    /// Every client of the test realm speaks `profile` (a realm setting, `DTR_IETF_REALMS`).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    pub fn client(mut self, client: Value) -> Self {
        let id = client["client_id"].clone();
        self.clients.retain(|c| c["client_id"] != id);
        self.clients.push(client);
        self
    }
}

pub struct Proxy {
    /// The in-process proxy; `None` when the proxy runs as its own process.
    pub running: Option<Running>,
    pub base: String,
    pub admin: String,
    pub realm: String,
    pub issuer: String,
    pub http: reqwest::Client,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{n}x{nanos}", std::process::id())
}

/// A CA the test HTTP clients trust besides the system's (the TLS suite's own).
pub static EXTRA_ROOT_CA: OnceLock<String> = OnceLock::new();

/// The start of every test HTTP client: TLS by rustls on aws-lc-rs (installed as the process
/// default, which reqwest needs), trusting [`EXTRA_ROOT_CA`] when one is set.
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let builder = reqwest::Client::builder();
    match EXTRA_ROOT_CA.get() {
        Some(pem) => builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA PEM")),
        None => builder,
    }
}

pub fn client() -> reqwest::Client {
    client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn base_env(public_port: u16, upstream_port: u16) -> Vec<(String, String)> {
    vec![
        ("DTR_UPSTREAM_URL".into(), format!("http://127.0.0.1:{upstream_port}")),
        ("DTR_PUBLIC_URL".into(), format!("http://127.0.0.1:{public_port}")),
        ("DTR_ALLOW_INSECURE_HTTP".into(), "true".into()),
        ("DTR_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
        ("DTR_OPERATOR_TOKEN".into(), OPERATOR_TOKEN.into()),
        ("DTR_DEFAULT_INTERVAL".into(), "1".into()),
        ("DTR_HASH_KEY".into(), STANDARD.encode([7u8; 32])),
        ("DTR_TOKEN_KEYS".into(), format!("k1:{}", STANDARD.encode([9u8; 32]))),
    ]
}

/// Starts a proxy in front of the shared OP, in a fresh realm whose issuer is this proxy.
pub async fn start(options: Options) -> Proxy {
    start_with_upstream(options, op().port).await
}

/// Like [`start`], with the proxy's upstream at another port (a relay in front of the OP).
pub async fn start_with_upstream(options: Options, upstream_port: u16) -> Proxy {
    let public_port = options.succeeds.as_ref().map_or(0, |(_, port)| *port);
    let public = TcpListener::bind(("127.0.0.1", public_port)).await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = public.local_addr().expect("addr").port();
    let base = format!("http://127.0.0.1:{port}");
    let (realm, issuer) = match options.succeeds.clone() {
        Some((realm, _)) => {
            let issuer = format!("{base}/realms/{realm}");
            (realm, issuer)
        }
        None => {
            let realm = unique("r");
            let issuer = create_realm(&realm, &base).await;
            (realm, issuer)
        }
    };
    let http = client();

    let mut env = base_env(port, upstream_port);
    env.push(("DTR_CLIENTS".into(), Value::from(options.clients).to_string()));
    if options.store == StoreKind::Redis {
        env.push(("DTR_REDIS_URL".into(), redis().url.clone()));
        env.push(("DTR_REDIS_KEY_PREFIX".into(), unique("t")));
    }
    if options.profile == Profile::Ietf {
        env.push(("DTR_IETF_REALMS".into(), realm.clone()));
    }
    env.extend(options.env);
    let config = Config::from_env(env).unwrap_or_else(|e| panic!("{e}"));
    let running = dtr_proxy::start_on(config, public, admin).await.expect("proxy start");
    let admin = format!("http://{}", running.admin_addr);
    Proxy {
        running: Some(running),
        base,
        admin,
        realm,
        issuer,
        http,
    }
}

/// Creates a realm at the test OP whose issuer lives at `public_base` (the proxy).
pub async fn create_realm(realm: &str, public_base: &str) -> String {
    let issuer = format!("{public_base}/realms/{realm}");
    let created = client()
        .post(format!("http://127.0.0.1:{}/admin/realms", op().port))
        .json(&json!({"realm": realm, "issuer": issuer}))
        .send()
        .await
        .expect("OP admin");
    assert_eq!(
        created.status(),
        201,
        "realm creation: {}",
        created.text().await.unwrap_or_default()
    );
    issuer
}

pub fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    (verifier, URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("random");
    bytes
}

/// How the RP authenticates at the token and cancellation endpoints.
#[derive(Debug, Clone)]
pub enum Auth {
    /// client_secret_basic, with the id and secret form-encoded first (as openid-client does).
    Basic(&'static str, &'static str),
    Post(&'static str, &'static str),
    /// private_key_jwt with the test key (tests/op/keys).
    Jwt(&'static str),
    /// client_secret_jwt (HS256 with the client's secret).
    HsJwt(&'static str, &'static str),
    /// A public client; its requests carry a DPoP proof by [`default_dpop_key`] unless the
    /// test gives one.
    Public(&'static str),
}

impl Auth {
    pub fn client_id(&self) -> &'static str {
        match self {
            Auth::Basic(id, _) | Auth::Post(id, _) | Auth::Jwt(id) | Auth::HsJwt(id, _) | Auth::Public(id) => id,
        }
    }
}

pub fn dtr_client() -> Auth {
    Auth::Basic("dtr-client", "dtr-client-secret")
}

/// The acknowledgment the RP received, however it was delivered.
#[derive(Debug, Clone, Default)]
pub struct Ack {
    pub params: Vec<(String, String)>,
    pub mode: &'static str,
}

impl Ack {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Reply {
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("{}/realms/{}{path}", self.base, self.realm)
    }

    pub fn token_url(&self) -> String {
        self.url("/protocol/openid-connect/token")
    }

    pub fn revocation_url(&self) -> String {
        self.url("/protocol/openid-connect/revoke")
    }

    /// Walks a browser login through the proxy: authorization request, the OP's login page,
    /// the login form, every redirect, until the answer meant for the RP (or an error page).
    pub async fn login(&self, params: &[(&str, &str)], username: &str, outcome: Option<&str>) -> Answer {
        let mut form = vec![("username", username)];
        if let Some(outcome) = outcome {
            form.push(("outcome", outcome));
        }
        self.browse(params, first_form_action, &form).await
    }

    /// The browser behind [`Self::login`]: `form_action` finds the login form's action on a
    /// page (none: the page is the answer), `form` is what the user enters in it.
    pub async fn browse(
        &self,
        params: &[(&str, &str)],
        form_action: fn(&str) -> Option<String>,
        form: &[(&str, &str)],
    ) -> Answer {
        self.browse_via(params, &[], form_action, form).await
    }

    /// [`Self::browse`], following redirects to `origins` too (the OP's own pages when they
    /// are served on another origin than this proxy's).
    pub async fn browse_via(
        &self,
        params: &[(&str, &str)],
        origins: &[&str],
        form_action: fn(&str) -> Option<String>,
        form: &[(&str, &str)],
    ) -> Answer {
        let browser = client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("browser");
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let mut response = browser
            .get(format!("{}?{query}", self.url("/protocol/openid-connect/auth")))
            .send()
            .await
            .expect("authorization request");
        for _ in 0..10 {
            let answer = Answer::read(response).await;
            match &answer.location {
                Some(location)
                    if location.starts_with(&self.base) || origins.iter().any(|o| location.starts_with(o)) =>
                {
                    response = browser.get(location).send().await.expect("follow");
                    continue;
                }
                Some(_) => return answer,
                None => {}
            }
            let action = form_action(&answer.html);
            let Some(action) = action.filter(|a| !a.starts_with("https://rp.example.com")) else {
                return answer;
            };
            let target = if action.starts_with('/') {
                format!("{}{action}", self.base)
            } else {
                action
            };
            response = browser.post(&target).form(form).send().await.expect("login form");
        }
        panic!("login did not finish");
    }

    /// A standard DTR authorization request for a client.
    pub fn auth_params<'a>(&self, client_id: &'a str, state: &'a str, nonce: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("response_type", "deferred_code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid profile email"),
            ("state", state),
            ("nonce", nonce),
        ]
    }

    /// Logs in and reads the acknowledgment from the redirect (query or fragment).
    pub async fn acknowledge(&self, params: &[(&str, &str)], username: &str) -> Ack {
        self.login(params, username, None).await.ack()
    }

    /// The whole front half: acknowledgment for `client_id` with PKCE; returns the deferred
    /// code and the verifier.
    pub async fn deferred_code(&self, client_id: &str, username: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let mut params = self.auth_params(client_id, "st-1", "n-1");
        params.push(("code_challenge", &challenge));
        params.push(("code_challenge_method", "S256"));
        let ack = self.acknowledge(&params, username).await;
        let code = ack
            .get("deferred_code")
            .unwrap_or_else(|| panic!("no deferred_code in {ack:?}"))
            .to_owned();
        (code, verifier)
    }

    pub async fn token(&self, auth: &Auth, form: &[(&str, &str)], dpop: Option<&str>) -> Reply {
        self.post_form(&self.token_url(), auth, form, dpop).await
    }

    pub async fn post_form(&self, url: &str, auth: &Auth, form: &[(&str, &str)], dpop: Option<&str>) -> Reply {
        let mut pairs: Vec<(String, String)> = form.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let mut request = self.http.post(url);
        match auth {
            Auth::Basic(id, secret) => {
                let credentials = format!("{}:{}", form_encode(id), form_encode(secret));
                request = request.header("authorization", format!("Basic {}", STANDARD.encode(credentials)));
            }
            Auth::Post(id, secret) => {
                pairs.push(("client_id".into(), id.to_string()));
                pairs.push(("client_secret".into(), secret.to_string()));
            }
            Auth::Jwt(id) => {
                pairs.push((
                    "client_assertion_type".into(),
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                pairs.push(("client_assertion".into(), client_assertion(id, &self.token_url())));
            }
            Auth::HsJwt(id, secret) => {
                pairs.push((
                    "client_assertion_type".into(),
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                pairs.push((
                    "client_assertion".into(),
                    hs_client_assertion(id, secret, &self.token_url()),
                ));
            }
            Auth::Public(id) => pairs.push(("client_id".into(), id.to_string())),
        }
        match (dpop, auth) {
            (Some(proof), _) => request = request.header("dpop", proof),
            (None, Auth::Public(_)) => request = request.header("dpop", default_dpop_key().proof("POST", url)),
            (None, _) => {}
        }
        let response = request.form(&pairs).send().await.expect("token request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, json }
    }

    /// Exchanges a deferred code; returns the exchange reply.
    pub async fn exchange(&self, auth: &Auth, code: &str, verifier: &str, notification_token: Option<&str>) -> Reply {
        let mut form = vec![
            ("grant_type", "urn:openid:params:grant-type:deferred"),
            ("deferred_code", code),
            ("code_verifier", verifier),
        ];
        if let Some(token) = notification_token {
            form.push(("deferred_notification_token", token));
        }
        self.token(auth, &form, None).await
    }

    pub async fn poll(&self, auth: &Auth, deferred_auth_id: &str) -> Reply {
        self.token(
            auth,
            &[
                ("grant_type", "urn:openid:params:grant-type:deferred"),
                ("deferred_auth_id", deferred_auth_id),
            ],
            None,
        )
        .await
    }

    pub async fn cancel(&self, auth: &Auth, deferred_auth_id: &str) -> Reply {
        let url = self.url("/protocol/openid-connect/deferred/cancel");
        self.post_form(&url, auth, &[("deferred_auth_id", deferred_auth_id)], None)
            .await
    }

    /// Logs in, exchanges, and returns (deferred_auth_id, exchange reply).
    pub async fn start_process(
        &self,
        auth: &Auth,
        username: &str,
        notification_token: Option<&str>,
    ) -> (String, Reply) {
        let (code, verifier) = self.deferred_code(auth.client_id(), username).await;
        let reply = self.exchange(auth, &code, &verifier, notification_token).await;
        assert_eq!(reply.status, 200, "exchange failed: {}", reply.json);
        let id = reply.json["deferred_auth_id"]
            .as_str()
            .expect("deferred_auth_id")
            .to_owned();
        (id, reply)
    }

    /// The RP side of this proxy, speaking `profile`.
    pub fn rp(&self, profile: Profile) -> Rp<'_> {
        Rp { proxy: self, profile }
    }

    /// Sends a signed completion webhook to the admin port.
    pub async fn complete(&self, body: &Value) -> Reply {
        self.webhook(body, &unique("msg_"), now_s(), WEBHOOK_SECRET).await
    }

    pub async fn webhook(&self, body: &Value, id: &str, timestamp: u64, secret: &str) -> Reply {
        let body = body.to_string();
        let key = dtr_proxy::webhook::decode_secret(secret).expect("secret");
        let signature = dtr_proxy::webhook::sign(&key, id, timestamp, body.as_bytes());
        let response = self
            .http
            .post(format!("{}/v1/completions", self.admin))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", format!("v1,{signature}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("webhook");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let json = response.json().await.unwrap_or(Value::Null);
        Reply { status, headers, json }
    }

    /// A process as the operator API shows it.
    pub async fn process(&self, process_id: &str) -> Value {
        self.http
            .get(format!("{}/operator/v1/processes/{process_id}", self.admin))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .expect("process view")
            .json()
            .await
            .expect("json")
    }

    /// A call to the operator API with its token: (status, JSON body).
    pub async fn operator(&self, method: reqwest::Method, path_and_query: &str, body: Option<Value>) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}/operator/v1{path_and_query}", self.admin))
            .bearer_auth(OPERATOR_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("operator API");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let json = response.json().await.unwrap_or(Value::Null);
        Reply { status, headers, json }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HTTP answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub html: String,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let location = headers.get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let html = response.text().await.unwrap_or_default();
        Self {
            status,
            location,
            headers,
            html,
        }
    }

    /// The acknowledgment in a redirect's query or fragment, or a form_post page.
    pub fn ack(&self) -> Ack {
        if let Some(location) = &self.location {
            assert!(location.starts_with(REDIRECT_URI), "redirect went to {location}");
            let url = url::Url::parse(location).expect("absolute location");
            if let Some(fragment) = url.fragment().filter(|f| !f.is_empty()) {
                let params = form_urlencoded::parse(fragment.as_bytes()).into_owned().collect();
                return Ack {
                    params,
                    mode: "fragment",
                };
            }
            return Ack {
                params: url.query_pairs().into_owned().collect(),
                mode: "query",
            };
        }
        assert_eq!(self.status, 200, "not an acknowledgment: {}", self.html);
        let mut params = Vec::new();
        for input in self.html.split("<input").skip(1) {
            let attr = |name: &str| {
                input
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .map(html_unescape)
            };
            if let (Some(name), Some(value)) = (attr("name"), attr("value")) {
                params.push((name, value));
            }
        }
        Ack {
            params,
            mode: "form_post",
        }
    }
}

/// The action of the first form on a page (the test OP's login page has one).
fn first_form_action(html: &str) -> Option<String> {
    html.split("action=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .map(str::to_owned)
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The public JWK of the `private_key_jwt` test client (tests/op/keys).
pub fn client_jwk() -> Value {
    serde_json::from_slice(
        &std::fs::read(repo_root().join("tests/op/keys/client-jwt.public.jwk.json")).expect("client jwk"),
    )
    .expect("jwk json")
}

/// Standard claims of a client assertion.
pub fn assertion_claims(client_id: &str, audience: &str) -> Value {
    let now = now_s();
    json!({
        "iss": client_id, "sub": client_id, "aud": audience,
        "jti": unique("jti"), "iat": now, "exp": now + 60,
    })
}

/// A `private_key_jwt` assertion signed with the test client key.
pub fn client_assertion(client_id: &str, audience: &str) -> String {
    sign_client_assertion(&assertion_claims(client_id, audience))
}

/// Signs any claims with the `private_key_jwt` test client key.
pub fn sign_client_assertion(claims: &Value) -> String {
    let pem = std::fs::read(repo_root().join("tests/op/keys/client-jwt.private.pem")).expect("client key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("ec key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = client_jwk()["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// A `client_secret_jwt` assertion (HS256).
pub fn hs_client_assertion(client_id: &str, secret: &str, audience: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &assertion_claims(client_id, audience), &key).expect("sign")
}

/// An RP's DPoP key (P-256), signing proofs by hand so tests can also forge any part.
pub struct DpopKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
}

impl DpopKey {
    pub fn generate() -> Self {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("key");
        Self { pair }
    }

    pub fn jwk(&self) -> Value {
        use aws_lc_rs::signature::KeyPair;
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// RFC 7638 thumbprint of the public key.
    pub fn jkt(&self) -> String {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(self.jwk()).expect("jwk");
        jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
    }

    /// The standard header and claims of a proof for `htm` `htu`, now.
    pub fn parts(&self, htm: &str, htu: &str) -> (Value, Value) {
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}),
            json!({"jti": unique("dpop"), "htm": htm, "htu": htu, "iat": now_s()}),
        )
    }

    pub fn proof(&self, htm: &str, htu: &str) -> String {
        let (header, claims) = self.parts(htm, htu);
        self.sign(&header, &claims)
    }

    /// Signs whatever header and claims a test builds.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = self.pair.sign(&rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// The key public clients use when a test does not pick one.
pub fn default_dpop_key() -> &'static DpopKey {
    static KEY: OnceLock<DpopKey> = OnceLock::new();
    KEY.get_or_init(DpopKey::generate)
}

/// Payload of a JWT, unverified (the tests check what the OP put there).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("jwt");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

/// Records what pings arrive and answers with scripted statuses.
/// Each ping: its Authorization header and JSON body.
pub type PingLog = Arc<Mutex<Vec<(Option<String>, Value)>>>;

pub struct PingReceiver {
    pub url: String,
    pub received: PingLog,
}

/// Serves `handle` over HTTP/1.1 on a fresh loopback port, one task per connection, for as
/// long as the process runs; returns the address. The stand-in for every small HTTP peer a
/// test needs (ping receivers, scripted upstreams).
pub async fn serve_http<H, F>(handle: H) -> SocketAddr
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = handle(request);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An empty answer with `status`.
pub fn empty_response(status: u16) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response
}

pub async fn ping_receiver(statuses: Vec<u16>) -> PingReceiver {
    use http_body_util::BodyExt;
    let received: PingLog = Arc::default();
    let log = received.clone();
    let statuses = Arc::new(Mutex::new(statuses.into_iter()));
    let addr = serve_http(move |request: hyper::Request<hyper::body::Incoming>| {
        let (log, statuses) = (log.clone(), statuses.clone());
        async move {
            let auth = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            log.lock().expect("log").push((auth, json));
            empty_response(statuses.lock().expect("statuses").next().unwrap_or(204))
        }
    })
    .await;
    PingReceiver {
        url: format!("http://{addr}/dtr/ping"),
        received,
    }
}

impl PingReceiver {
    pub fn count(&self) -> usize {
        self.received.lock().expect("log").len()
    }

    pub async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.count() >= n
    }
}

/// Waits out the poll interval (1 s in tests) with a margin.
pub async fn wait_interval(seconds: u64) {
    tokio::time::sleep(Duration::from_millis(seconds * 1000 + 150)).await;
}

/// A TCP relay in front of the OP that can be cut: while down it refuses new connections
/// (its port is closed, as a stopped OP's is) and drops those in flight, as an OP outage would.
pub struct Relay {
    pub port: u16,
    down: tokio::sync::watch::Sender<bool>,
    swallow: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

/// Accepts on `listener` and hands each connection to `serve`, until the process ends. While
/// `down` is on the port is closed — connections are refused, as a stopped server's are, so a
/// caller knows its request went nowhere — and bound again when it turns off.
pub fn accept_until_down<F>(listener: TcpListener, mut down: tokio::sync::watch::Receiver<bool>, serve: F)
where
    F: Fn(tokio::net::TcpStream) + Send + 'static,
{
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut listener = Some(listener);
        loop {
            let Some(open) = listener.as_ref() else {
                if down.wait_for(|down| !*down).await.is_err() {
                    return;
                }
                for _ in 0..100 {
                    match TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(bound) => {
                            listener = Some(bound);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                continue;
            };
            let accepted = tokio::select! {
                accepted = open.accept() => accepted,
                _ = down.wait_for(|down| *down) => {
                    listener = None;
                    continue;
                }
            };
            let Ok((stream, _)) = accepted else {
                return;
            };
            serve(stream);
        }
    });
}

impl Relay {
    pub async fn start(target_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (down, watcher) = tokio::sync::watch::channel(false);
        let swallow = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swallowing = swallow.clone();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let in_flight = watcher.clone();
        accept_until_down(listener, watcher, move |mut inbound| {
            let mut in_flight = in_flight.clone();
            let swallowing = swallowing.clone();
            let mut cuts = cuts.clone();
            // Only cuts from now on concern this connection.
            cuts.borrow_and_update();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else {
                    return;
                };
                if swallowing.load(Ordering::Relaxed) {
                    // The request reaches the OP; its answer never comes back.
                    let (mut from_client, _to_client) = inbound.split();
                    let (mut from_op, mut to_op) = outbound.split();
                    let mut first = [0u8; 1];
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_client, &mut to_op) => {}
                        _ = from_op.read(&mut first) => {}
                    }
                    return;
                }
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = in_flight.wait_for(|down| *down) => {}
                    _ = cuts.changed() => {}
                }
            });
        });
        Relay {
            port,
            down,
            swallow,
            cut,
        }
    }

    pub fn set_down(&self, down: bool) {
        let _ = self.down.send(down);
    }

    /// While on, new connections carry requests to the OP but drop its answers: a call the OP
    /// acts on whose answer is lost.
    pub fn set_swallow_answers(&self, on: bool) {
        self.swallow.store(on, Ordering::Relaxed);
        // Pooled connections opened before were not swallowing: close them.
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Waits up to 5 s for a proxy's admin port to answer; whether it did.
pub async fn wait_until_up(http: &reqwest::Client, admin: &str) -> bool {
    for _ in 0..200 {
        if http.get(format!("{admin}/healthz")).send().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Everything a proxy binary wrote to stdout and stderr.
pub type OutputLog = Arc<Mutex<String>>;

/// Runs the proxy binary at `binary` in front of the shared OP (fresh realm, issuer = its
/// public URL) with `env` on top of the usual settings, capturing its output.
pub async fn start_binary(
    binary: &str,
    clients: Value,
    env: &[(&str, &str)],
) -> (Proxy, tokio::process::Child, OutputLog) {
    use tokio::io::AsyncReadExt;
    let (public_port, admin_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{public_port}");
    let realm = unique("r");
    let issuer = create_realm(&realm, &base).await;
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs(base_env(public_port, op().port))
        .env("DTR_LISTEN", format!("127.0.0.1:{public_port}"))
        .env("DTR_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("DTR_CLIENTS", clients.to_string())
        .env("DTR_SHUTDOWN_DELAY", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the proxy binary");
    let log: OutputLog = Arc::default();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for mut stream in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stderr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    ] {
        let log = log.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                log.lock().expect("log").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let http = client();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let up = wait_until_up(&http, &admin).await;
    assert!(up, "the binary did not come up:\n{}", log.lock().expect("log"));
    let proxy = Proxy {
        running: None,
        base,
        admin,
        realm,
        issuer,
        http,
    };
    (proxy, child, log)
}

/// The token type of a deferral code at the revocation endpoint (IETF §8.1).
pub const DEFERRAL_CODE_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:deferral-code";

/// The two DTR profiles, as an RP speaks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// OpenID Connect DTR 1.0: `response_type=deferred_code`, the OpenID deferred grant with
    /// `deferred_code` and `deferred_auth_id`.
    OpenId,
    /// The OAuth profile: a code flow with `completion_mode=deferred`, the code exchange
    /// answered `authorization_pending` with a `deferral_code`, polls with the IETF grant.
    Ietf,
}

/// An RP of one profile in front of a [`Proxy`]: the same steps, in that profile's names.
pub struct Rp<'a> {
    pub proxy: &'a Proxy,
    pub profile: Profile,
}

impl Rp<'_> {
    /// The parameter naming a process (exchange answer, polls, pings, cancels).
    pub fn id_param(&self) -> &'static str {
        match self.profile {
            Profile::OpenId => "deferred_auth_id",
            Profile::Ietf => "deferral_code",
        }
    }

    /// The acknowledgment's parameter carrying the proxy's code.
    pub fn code_param(&self) -> &'static str {
        match self.profile {
            Profile::OpenId => "deferred_code",
            Profile::Ietf => "code",
        }
    }

    pub fn grant_type(&self) -> &'static str {
        match self.profile {
            Profile::OpenId => "urn:openid:params:grant-type:deferred",
            Profile::Ietf => "urn:ietf:params:oauth:grant-type:deferred",
        }
    }

    /// A deferred authorization request for a client, in this profile.
    pub fn auth_params<'a>(&self, client_id: &'a str, state: &'a str, nonce: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut params = self.proxy.auth_params(client_id, state, nonce);
        if self.profile == Profile::Ietf {
            params[0] = ("response_type", "code");
            params.push(("completion_mode", "deferred"));
        }
        params
    }

    /// Logs in with PKCE; returns the proxy's code from the acknowledgment and the verifier.
    pub async fn deferred_code(&self, client_id: &str, username: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let mut params = self.auth_params(client_id, "st-1", "n-1");
        params.push(("code_challenge", &challenge));
        params.push(("code_challenge_method", "S256"));
        let ack = self.proxy.acknowledge(&params, username).await;
        let code = ack
            .get(self.code_param())
            .unwrap_or_else(|| panic!("no {} in {ack:?}", self.code_param()))
            .to_owned();
        (code, verifier)
    }

    /// The code exchange, in this profile's shape.
    pub async fn exchange(&self, auth: &Auth, code: &str, verifier: &str, notification_token: Option<&str>) -> Reply {
        let mut form = match self.profile {
            Profile::OpenId => vec![
                ("grant_type", "urn:openid:params:grant-type:deferred"),
                ("deferred_code", code),
            ],
            Profile::Ietf => vec![
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("completion_mode", "deferred"),
            ],
        };
        form.push(("code_verifier", verifier));
        if let Some(token) = notification_token {
            form.push((self.notification_token_param(), token));
        }
        self.proxy.token(auth, &form, None).await
    }

    /// The exchange's parameter carrying the bearer token for pings.
    pub fn notification_token_param(&self) -> &'static str {
        match self.profile {
            Profile::OpenId => "deferred_notification_token",
            Profile::Ietf => "client_notification_token",
        }
    }

    /// The process named by a successful exchange: a 200 with `deferred_auth_id` (OpenID), a
    /// 400 `authorization_pending` with `deferral_code` (IETF). `None` for anything else.
    pub fn id_of(&self, reply: &Reply) -> Option<String> {
        let expected = match self.profile {
            Profile::OpenId => (200, ""),
            Profile::Ietf => (400, "authorization_pending"),
        };
        let no_store = reply.headers.get("cache-control").is_some_and(|v| v == "no-store");
        if (reply.status, reply.error()) != expected || !no_store {
            return None;
        }
        reply.json[self.id_param()].as_str().map(str::to_owned)
    }

    /// Logs in, exchanges, and returns the process id with the exchange reply.
    pub async fn start_process(
        &self,
        auth: &Auth,
        username: &str,
        notification_token: Option<&str>,
    ) -> (String, Reply) {
        let (code, verifier) = self.deferred_code(auth.client_id(), username).await;
        let reply = self.exchange(auth, &code, &verifier, notification_token).await;
        let id = self
            .id_of(&reply)
            .unwrap_or_else(|| panic!("exchange failed: {} {}", reply.status, reply.json));
        (id, reply)
    }

    pub async fn poll(&self, auth: &Auth, id: &str) -> Reply {
        self.proxy
            .token(auth, &[("grant_type", self.grant_type()), (self.id_param(), id)], None)
            .await
    }

    /// Cancels a process: at the cancellation endpoint (OpenID), or by revoking the deferral
    /// code at the revocation endpoint (IETF §8.1).
    pub async fn cancel(&self, auth: &Auth, id: &str) -> Reply {
        match self.profile {
            Profile::OpenId => {
                let url = self.proxy.url("/protocol/openid-connect/deferred/cancel");
                self.proxy.post_form(&url, auth, &[(self.id_param(), id)], None).await
            }
            Profile::Ietf => {
                let form = [("token", id), ("token_type_hint", DEFERRAL_CODE_TOKEN_TYPE)];
                self.proxy
                    .post_form(&self.proxy.revocation_url(), auth, &form, None)
                    .await
            }
        }
    }
}

/// The value of the sample `series` (name and labels exactly as rendered) in a metrics text.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}
