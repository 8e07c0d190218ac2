//! A real Keycloak behind a real dtr-proxy. Keycloak's issuer is fixed at start
//! (`--hostname`) and takes seconds to start, so each test binary starts ONE Keycloak and ONE
//! proxy binary (Redis store) on a public port chosen beforehand, and every Keycloak test runs
//! against that pair, each with its own users. Both die with the test process.
//!
//! The distribution and the JDK come from `scripts/keycloak.sh` (run by
//! `scripts/ensure-deps.sh`), which leaves their paths in `target/keycloak/env`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// The realm of `config/keycloak/dtr-realm.json`.
pub const REALM: &str = "dtr";
/// A second import of the same realm file, where the proxy gives `dtr-client` processes of
/// [`SHORT_EXPIRES_IN`] seconds and `dtr-post` a polling interval of [`LONG_INTERVAL`]
/// seconds (a poll right after another is then too fast even on a loaded machine).
pub const TIMING_REALM: &str = "dtr-timing";
/// A realm whose clients speak the OAuth (IETF) profile (`DTR_IETF_REALMS`); created by the
/// first test that uses it ([`Admin::ietf_realm`]), from the operators' realm file.
pub const IETF_REALM: &str = "dtr-oauth";
pub const SHORT_EXPIRES_IN: u64 = 4;
pub const LONG_INTERVAL: u64 = 3;
pub const ADMIN_USER: &str = "bootstrap-admin";
pub const ADMIN_PASSWORD: &str = "bootstrap-admin-password";
pub const USER_PASSWORD: &str = "correct horse battery staple";

pub struct Keycloak {
    /// Keycloak itself, for the Admin REST API (the verification service's side).
    pub direct: String,
    /// The proxy's public URL, which is Keycloak's hostname.
    pub public: String,
    /// The proxy's internal port (webhook, metrics).
    pub proxy_admin: String,
    /// Where the proxy pings every client of the bed.
    pub pings: PingLog,
    pub log_dir: PathBuf,
    /// Keycloak's log, its HTTP access log included.
    pub log: PathBuf,
    /// The proxy's settings, for replicas a test starts beside it.
    proxy_env: Vec<(String, String)>,
    /// Seconds from spawning Keycloak to its readiness.
    pub start_seconds: f64,
    _children: Mutex<Vec<Child>>,
}

fn read_env_file(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{} is missing: run scripts/ensure-deps.sh", path.display()));
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A plain HTTP GET's status over a fresh connection (readiness probes run before any tokio
/// runtime of a test is trusted to outlive them).
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn wait_ready(what: &str, port: u16, path: &str, within: Duration, log: &Path) {
    if !ready_within(port, path, within) {
        panic!("{what} not ready within {within:?}; its log: {}", log.display());
    }
}

/// Whether `path` answers 200 on `port` within `within`.
fn ready_within(port: u16, path: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if http_status(port, path) == Some(200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

static KEYCLOAK: OnceLock<Keycloak> = OnceLock::new();

/// The shared Keycloak and the proxy in front of it (Redis store), for integration tests.
pub fn keycloak() -> &'static Keycloak {
    KEYCLOAK.get_or_init(|| {
        // Set for integration tests only; examples use `keycloak_with`.
        let Some(binary) = option_env!("CARGO_BIN_EXE_dtr-proxy") else {
            panic!("the Keycloak bed runs from integration tests");
        };
        start_bed(binary, true, &[])
    })
}

/// The shared bed with Keycloak searching the client attributes `attributes` (comma-separated:
/// the jpa client provider's `searchableAttributes`, as docs/federation.md advises for a realm
/// with many clients), so the Admin API's `q=` search answers for them.
pub fn keycloak_searching(attributes: &str) -> &'static Keycloak {
    KEYCLOAK.get_or_init(|| {
        let Some(binary) = option_env!("CARGO_BIN_EXE_dtr-proxy") else {
            panic!("the Keycloak bed runs from integration tests");
        };
        start_bed(
            binary,
            true,
            &[format!("--spi-client--jpa--searchable-attributes={attributes}")],
        )
    })
}

/// The same bed with a given dtr-proxy binary, on Redis or on the embedded store.
pub fn keycloak_with(binary: &str, redis_store: bool) -> &'static Keycloak {
    KEYCLOAK.get_or_init(|| start_bed(binary, redis_store, &[]))
}

/// `options` go to `kc.sh start-dev` after the bed's own.
fn start_bed(binary: &str, redis_store: bool, options: &[String]) -> Keycloak {
    let root = repo_root();
    let env = read_env_file(&root.join("target/keycloak/env"));
    let setting = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} missing in target/keycloak/env: run scripts/ensure-deps.sh"))
    };
    let (kc_home, java_home) = (PathBuf::from(setting("KC_HOME")), setting("JAVA_HOME"));
    let log_dir = root.join("target/keycloak/logs");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let redis_url = redis_store.then(|| redis().url.clone());

    // Every client pings one receiver that outlives each test's runtime.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let pings = ping_receiver(Vec::new()).await;
            let _ = sender.send((pings.url.clone(), pings.received.clone()));
            std::future::pending::<()>().await;
        });
    });
    let (ping_url, pings) = receiver.recv().expect("ping receiver");

    let mut clients: Vec<Value> = Options::new(StoreKind::Redis)
        .clients
        .into_iter()
        .map(|mut client| {
            client["notification_endpoint"] = json!(ping_url);
            client
        })
        .collect();
    clients.push(json!({
        "client_id": "dtr-client",
        "realm": TIMING_REALM,
        "expires_in": SHORT_EXPIRES_IN,
        "notification_endpoint": ping_url,
    }));
    clients.push(json!({
        "client_id": "dtr-post",
        "realm": TIMING_REALM,
        "interval": LONG_INTERVAL,
        "notification_endpoint": ping_url,
    }));
    // The proxy first, on its own: Keycloak's hostname is the proxy's public URL, so the
    // proxy must hold its ports before Keycloak starts. A port another test took between
    // `free_port` and the bind makes the proxy exit; it is started again on fresh ports.
    let mut attempt = 0;
    let (proxy, proxy_env, public_port, admin_port, http_port, management_port) = loop {
        attempt += 1;
        let (public_port, admin_port, http_port, management_port) =
            (free_port(), free_port(), free_port(), free_port());
        let proxy_log = log_dir.join(format!("dtr-proxy-{}-{attempt}.log", std::process::id()));
        let mut proxy_env = base_env(public_port, http_port);
        proxy_env.extend([
            ("DTR_LISTEN".into(), format!("127.0.0.1:{public_port}")),
            ("DTR_ADMIN_LISTEN".into(), format!("127.0.0.1:{admin_port}")),
            ("DTR_CLIENTS".into(), Value::from(clients.clone()).to_string()),
            ("DTR_IETF_REALMS".into(), IETF_REALM.into()),
            ("DTR_SHUTDOWN_DELAY".into(), "0".into()),
            ("DTR_LOG".into(), "info,dtr_proxy=debug".into()),
            // The realm file's optional service account: ends held offline sessions on denial
            // and expiry.
            ("DTR_KEYCLOAK_ADMIN_CLIENT_ID".into(), "dtr-proxy-admin".into()),
            (
                "DTR_KEYCLOAK_ADMIN_CLIENT_SECRET".into(),
                "dtr-proxy-admin-secret".into(),
            ),
        ]);
        if let Some(redis_url) = &redis_url {
            proxy_env.push(("DTR_REDIS_URL".into(), redis_url.clone()));
            proxy_env.push(("DTR_REDIS_KEY_PREFIX".into(), unique("kc")));
        }
        let proxy = spawn_tied_with(binary, &[], &proxy_env, Some(&proxy_log));
        if ready_within(admin_port, "/healthz", Duration::from_secs(30)) {
            break (proxy, proxy_env, public_port, admin_port, http_port, management_port);
        }
        let tail = std::fs::read_to_string(&proxy_log).unwrap_or_default();
        let tail = &tail[tail.len().saturating_sub(2000)..];
        assert!(
            attempt < 3,
            "dtr-proxy not ready within 30 s, {attempt} times; its last log:\n{tail}"
        );
        eprintln!("dtr-proxy not ready within 30 s (attempt {attempt}); its log ends:\n{tail}");
        drop(proxy);
    };
    let public = format!("http://127.0.0.1:{public_port}");
    let replica_env = proxy_env.clone();

    // `--import-realm` reads data/import; the realm file is what operators import.
    let import = kc_home.join("data/import");
    std::fs::create_dir_all(&import).expect("import dir");
    let realm_file = root.join("config/keycloak/dtr-realm.json");
    std::fs::copy(&realm_file, import.join("dtr-realm.json")).expect("copy the realm file");
    let mut timing: Value =
        serde_json::from_str(&std::fs::read_to_string(&realm_file).expect("realm file")).expect("realm json");
    timing["realm"] = json!(TIMING_REALM);
    std::fs::write(import.join(format!("{TIMING_REALM}-realm.json")), timing.to_string()).expect("timing realm");
    let kc_log = log_dir.join(format!("keycloak-{}.log", std::process::id()));
    let kc = kc_home.join("bin/kc.sh");
    let args = [
        "start-dev".to_owned(),
        "--db=dev-mem".into(),
        "--http-host=127.0.0.1".into(),
        format!("--http-port={http_port}"),
        format!("--http-management-port={management_port}"),
        "--health-enabled=true".into(),
        format!("--hostname={public}"),
        "--proxy-headers=xforwarded".into(),
        // Forwarding headers believed only from the proxy, as in production.
        "--proxy-trusted-addresses=127.0.0.1".into(),
        "--import-realm".into(),
        // Every request in the log, for tests that check what the proxy asked of Keycloak.
        "--http-access-log-enabled=true".into(),
    ];
    let args: Vec<String> = args.into_iter().chain(options.iter().cloned()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kc_env = [
        ("JAVA_HOME".to_owned(), java_home),
        ("KC_BOOTSTRAP_ADMIN_USERNAME".to_owned(), ADMIN_USER.to_owned()),
        ("KC_BOOTSTRAP_ADMIN_PASSWORD".to_owned(), ADMIN_PASSWORD.to_owned()),
    ];
    let started = Instant::now();
    let keycloak = spawn_tied_with(kc.to_str().expect("utf-8 path"), &args, &kc_env, Some(&kc_log));
    wait_ready(
        "Keycloak",
        management_port,
        "/health/ready",
        Duration::from_secs(240),
        &kc_log,
    );
    let start_seconds = started.elapsed().as_secs_f64();
    eprintln!("keycloak: ready in {start_seconds:.1} s (log: {})", kc_log.display());
    Keycloak {
        direct: format!("http://127.0.0.1:{http_port}"),
        public,
        proxy_admin: format!("http://127.0.0.1:{admin_port}"),
        pings,
        log_dir,
        log: kc_log,
        proxy_env: replica_env,
        start_seconds,
        _children: Mutex::new(vec![keycloak, proxy]),
    }
}

impl Keycloak {
    /// The request lines of Keycloak's access log that contain `needle`, each with the status
    /// Keycloak answered (`"GET /admin/realms/r/clients?q=… HTTP/1.1" 200 …`).
    pub fn requests(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .filter_map(|line| line.find('"').map(|at| line[at..].to_owned()))
            .collect()
    }

    /// An RP's view of the proxy in `realm` (a fresh HTTP client for this test's runtime).
    pub fn proxy_in(&self, realm: &str) -> Proxy {
        Proxy {
            running: None,
            base: self.public.clone(),
            admin: self.proxy_admin.clone(),
            realm: realm.to_owned(),
            issuer: format!("{}/realms/{realm}", self.public),
            http: client(),
        }
    }

    pub fn proxy(&self) -> Proxy {
        self.proxy_in(REALM)
    }

    /// Another replica of the bed's proxy (same store, keys and public URL), in this test's
    /// runtime, reaching Keycloak through `upstream_port`; RPs address it directly.
    pub async fn replica(&self, upstream_port: u16, realm: &str) -> Proxy {
        self.replica_with(upstream_port, realm, Vec::new()).await
    }

    /// [`Self::replica`] with settings of its own on top.
    pub async fn replica_with(&self, upstream_port: u16, realm: &str, extra: Vec<(String, String)>) -> Proxy {
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", public.local_addr().expect("addr"));
        let mut env: Vec<(String, String)> = self
            .proxy_env
            .iter()
            .filter(|(name, _)| !["DTR_UPSTREAM_URL", "DTR_UPSTREAM_TIMEOUT"].contains(&name.as_str()))
            .cloned()
            .collect();
        env.push(("DTR_UPSTREAM_URL".into(), format!("http://127.0.0.1:{upstream_port}")));
        env.push(("DTR_UPSTREAM_TIMEOUT".into(), "3".into()));
        env.extend(extra);
        let config = dtr_proxy::Config::from_env(env).unwrap_or_else(|e| panic!("{e}"));
        let running = dtr_proxy::start_on(config, public, admin).await.expect("replica start");
        Proxy {
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
            base,
            realm: realm.to_owned(),
            issuer: format!("{}/realms/{realm}", self.public),
            http: client(),
        }
    }

    /// Keycloak's HTTP port.
    pub fn port(&self) -> u16 {
        self.direct
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// The pings the proxy sent for one `deferred_auth_id`.
    pub fn pings_for(&self, deferred_auth_id: &str) -> Vec<(Option<String>, Value)> {
        self.pings
            .lock()
            .expect("pings")
            .iter()
            .filter(|(_, body)| {
                body["deferred_auth_id"] == deferred_auth_id || body["deferral_code"] == deferred_auth_id
            })
            .cloned()
            .collect()
    }

    pub async fn wait_for_ping(&self, deferred_auth_id: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if !self.pings_for(deferred_auth_id).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The Admin REST API, as the verification service (or an operator) uses it.
    pub async fn admin(&self) -> Admin {
        let http = client();
        let reply: Value = http
            .post(format!("{}/realms/master/protocol/openid-connect/token", self.direct))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", ADMIN_USER),
                ("password", ADMIN_PASSWORD),
            ])
            .send()
            .await
            .expect("admin token")
            .json()
            .await
            .expect("admin token json");
        let token = reply["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no admin token: {reply}"))
            .to_owned();
        Admin {
            base: format!("{}/admin/realms", self.direct),
            token,
            http,
        }
    }
}

pub struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a realm from the operators' realm file, renamed, with `changes` on top.
    pub async fn create_realm_from_file(&self, realm: &str, changes: Value) {
        let text = std::fs::read_to_string(repo_root().join("config/keycloak/dtr-realm.json")).expect("realm file");
        let mut representation: Value = serde_json::from_str(&text).expect("realm json");
        representation["realm"] = json!(realm);
        if let (Some(target), Some(changes)) = (representation.as_object_mut(), changes.as_object()) {
            for (key, value) in changes {
                target.insert(key.clone(), value.clone());
            }
        }
        let (status, _, body) = self.send(reqwest::Method::POST, "", Some(&representation)).await;
        assert_eq!(status, 201, "realm creation: {body}");
    }

    /// [`IETF_REALM`], imported from the operators' realm file by the first test that needs it.
    pub async fn ietf_realm(&self) -> &'static str {
        static CREATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        CREATED
            .get_or_init(|| self.create_realm_from_file(IETF_REALM, json!({})))
            .await;
        IETF_REALM
    }

    /// A fresh user with everything the default user profile requires, so no required action
    /// interrupts the login. Returns the user's id (the `sub` of its tokens).
    pub async fn create_user(&self, realm: &str, username: &str) -> String {
        let user = json!({
            "username": username,
            "email": format!("{username}@example.com"),
            "emailVerified": true,
            "firstName": "Test",
            "lastName": "User",
            "enabled": true,
            "credentials": [{"type": "password", "value": USER_PASSWORD, "temporary": false}],
        });
        let (status, headers, body) = self
            .send(reqwest::Method::POST, &format!("/{realm}/users"), Some(&user))
            .await;
        assert_eq!(status, 201, "user creation: {body}");
        let location = headers["location"].to_str().expect("location");
        location.rsplit('/').next().expect("user id").to_owned()
    }

    /// What the verification service does when it is done: GET the user, set the attributes,
    /// PUT the whole representation back (a partial one would clear the rest).
    pub async fn set_attributes(&self, realm: &str, user_id: &str, attributes: &[(&str, &str)]) {
        let path = format!("/{realm}/users/{user_id}");
        let (status, _, mut user) = self.send(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "user: {user}");
        if !user["attributes"].is_object() {
            user["attributes"] = json!({});
        }
        for (name, value) in attributes {
            user["attributes"][*name] = json!([value]);
        }
        let (status, _, body) = self.send(reqwest::Method::PUT, &path, Some(&user)).await;
        assert_eq!(status, 204, "user update: {body}");
    }

    /// The internal id of a client.
    pub async fn client_uuid(&self, realm: &str, client_id: &str) -> String {
        let (status, _, clients) = self
            .send(
                reqwest::Method::GET,
                &format!("/{realm}/clients?clientId={client_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "clients: {clients}");
        clients[0]["id"].as_str().expect("client uuid").to_owned()
    }

    /// The user's offline sessions for a client.
    pub async fn offline_sessions(&self, realm: &str, user_id: &str, client_id: &str) -> Vec<Value> {
        let uuid = self.client_uuid(realm, client_id).await;
        let (status, _, sessions) = self
            .send(
                reqwest::Method::GET,
                &format!("/{realm}/users/{user_id}/offline-sessions/{uuid}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "offline sessions: {sessions}");
        sessions.as_array().cloned().unwrap_or_default()
    }
}

impl Proxy {
    /// A browser login through the proxy and Keycloak's own login page: the login form's
    /// action is taken from the page, never rebuilt.
    pub async fn keycloak_login(&self, params: &[(&str, &str)], username: &str, password: &str) -> Answer {
        let form = [("username", username), ("password", password), ("credentialId", "")];
        self.browse(params, login_form_action, &form).await
    }

    /// Logs `username` in for `client_id` with PKCE; the acknowledgment and the verifier.
    pub async fn keycloak_ack(&self, client_id: &str, username: &str, nonce: &str) -> (Ack, String) {
        self.rp(Profile::OpenId).keycloak_ack(client_id, username, nonce).await
    }
}

impl Rp<'_> {
    /// A deferred authorization request in this profile, with PKCE and state `rp-state`,
    /// logged in on Keycloak's own page; the acknowledgment and the PKCE verifier.
    pub async fn keycloak_ack(&self, client_id: &str, username: &str, nonce: &str) -> (Ack, String) {
        let (verifier, challenge) = pkce();
        let mut params = self.auth_params(client_id, "rp-state", nonce);
        params.push(("code_challenge", &challenge));
        params.push(("code_challenge_method", "S256"));
        let answer = self.proxy.keycloak_login(&params, username, USER_PASSWORD).await;
        (answer.ack(), verifier)
    }
}

/// The action of Keycloak's `<form id="kc-form-login" … action="…">`, HTML-unescaped.
pub fn login_form_action(html: &str) -> Option<String> {
    let form = html.split("<form").find(|tag| {
        let tag = tag.split('>').next().unwrap_or("");
        tag.contains("id=\"kc-form-login\"")
    })?;
    let tag = form.split('>').next()?;
    let action = tag.split("action=\"").nth(1)?.split('"').next()?;
    Some(html_unescape(action))
}
