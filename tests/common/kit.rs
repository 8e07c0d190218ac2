//! What the RP kit's end-to-end tests share: the browser leg for a URL the kit built, the
//! RP's notification endpoint served with the kit's `verify_ping`, and the verification
//! service's event receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtr_rp::{Acknowledgment, DtrClient, DtrError, Pending};
use http_body_util::BodyExt;

use super::*;

/// The query of a URL the kit built, as the pairs [`Proxy::login`] and
/// [`Proxy::keycloak_login`] take.
pub fn query_pairs(url: &url::Url) -> Vec<(String, String)> {
    url.query_pairs().into_owned().collect()
}

pub fn borrowed(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Hands the browser's landing to the kit: a redirect (query or fragment) or a `form_post`
/// page, whose form the browser would post to the RP.
pub fn read_ack(rp: &DtrClient, answer: &Answer, pending: &Pending) -> Result<Acknowledgment, DtrError> {
    match &answer.location {
        Some(location) => rp.acknowledgment_from_url(location, pending),
        None => {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(answer.ack().params)
                .finish();
            rp.acknowledgment_from_form(Some("application/x-www-form-urlencoded"), body.as_bytes(), pending)
        }
    }
}

/// The RP's notification endpoint: each ping is checked by `dtr_rp::verify_ping_in`, in the
/// profile it was started for, against the token bound to its id.
#[derive(Clone, Default)]
pub struct KitPings {
    pub url: String,
    pub tokens: Arc<Mutex<HashMap<String, String>>>,
    pub accepted: Arc<Mutex<Vec<String>>>,
    pub refused: Arc<Mutex<Vec<u16>>>,
}

impl KitPings {
    pub async fn start() -> Self {
        Self::start_in(dtr_rp::Profile::OpenId).await
    }

    /// The endpoint of an RP speaking `profile`: OpenID pings name `deferred_auth_id`, IETF
    /// callbacks `deferral_code`.
    pub async fn start_in(profile: dtr_rp::Profile) -> Self {
        let mut pings = KitPings::default();
        let shared = pings.clone();
        let addr = serve_http(move |request: hyper::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let tokens = shared.tokens.lock().expect("tokens").clone();
                let status = match dtr_rp::verify_ping_in(profile, &parts.method, &parts.headers, &body, |id| {
                    tokens.get(id).cloned()
                }) {
                    Ok(id) => {
                        shared.accepted.lock().expect("accepted").push(id);
                        204
                    }
                    Err(refusal) => {
                        shared.refused.lock().expect("refused").push(refusal.status.as_u16());
                        refusal.status.as_u16()
                    }
                };
                empty_response(status)
            }
        })
        .await;
        pings.url = format!("http://{addr}/dtr/ping");
        pings
    }

    pub fn bind(&self, deferred_auth_id: &str, token: &str) {
        self.tokens
            .lock()
            .expect("tokens")
            .insert(deferred_auth_id.to_owned(), token.to_owned());
    }

    pub async fn wait_for(&self, deferred_auth_id: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self
                .accepted
                .lock()
                .expect("accepted")
                .iter()
                .any(|id| id == deferred_auth_id)
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the verification service received on its events URL, unverified.
pub type EventLog = Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>;

/// The verification service's event receiver: keeps every delivery, answers 204.
pub async fn event_receiver() -> (String, EventLog) {
    let log: EventLog = Arc::default();
    let received = log.clone();
    let addr = serve_http(move |request: hyper::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            log.lock().expect("events").push((parts.headers, body));
            empty_response(204)
        }
    })
    .await;
    (format!("http://{addr}/dtr-events"), received)
}

/// Waits until `n` deliveries arrived (or `within` passed); returns them.
pub async fn wait_for_events(log: &EventLog, n: usize, within: Duration) -> Vec<(http::HeaderMap, bytes::Bytes)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events = log.lock().expect("events").clone();
        if events.len() >= n || tokio::time::Instant::now() >= deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A command-line example of a kit (the Rust one or the TypeScript one), driven as its user
/// would: it prints the authorization URL, reads back the URL the browser landed on, then
/// prints one JSON line per step.
pub struct ExampleRun {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ExampleRun {
    pub fn start(mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        // Read on a thread: a blocked read must not stall the test's runtime.
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, stdin, lines }
    }

    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a line from the example")
    }

    pub fn json(&self) -> Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    pub fn paste(&mut self, landed: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{landed}").expect("paste the URL");
    }

    /// The first step that is not `pending`.
    pub fn outcome(&self) -> Value {
        loop {
            let line = self.json();
            if line["step"] != "pending" {
                return line;
            }
        }
    }

    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("exit")
    }
}

impl Drop for ExampleRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Rust kit's example binary, built if needed (`cargo test --workspace --all-targets`
/// has built it already).
pub fn rust_example() -> std::path::PathBuf {
    let root = repo_root();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "-p", "dtr-rp", "--example", "deferred_login"])
        .current_dir(&root);
    // What cargo set for this test process is not the environment of a build: build scripts
    // that watch a variable would see it changed and rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("CARGO_") && !["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_str()) {
            cargo.env_remove(&name);
        }
    }
    let built = cargo.status().expect("cargo");
    assert!(built.success(), "the Rust kit's example did not build");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), std::path::PathBuf::from);
    target.join("debug/examples/deferred_login")
}
