//! Completion webhook and ping benchmark helper, used by `bench/events.sh`.
//!
//! `complete` sends one signed completion webhook (Standard Webhooks, `approved`, by
//! `process_id`) for every process of an ids file written by `poll_bench seed --ids`, over a
//! fixed number of keep-alive connections to the admin port (closed loop). Every answer must
//! be `200` with the process `changed` to `approved`. It prints throughput and latency, and
//! writes when each process's completion was answered (Unix µs), for the end-to-end delay.
//!
//! `receive` is the RP's notification endpoint and the verification service's events
//! endpoint in one small server: `POST /ping` takes a ping, `POST /events` a lifecycle event
//! (its Standard Webhooks signature checked with the events secret). It answers `503` to a
//! share of the attempts, at most `--max-failures` times per process or event, so retries are
//! in the mix, and `200` to the others. `POST /ceiling` always answers `200` and is only
//! counted (the server's own ceiling, measured by `blast`). `GET /stats` answers the counts
//! so far. On SIGTERM it writes every request it took to `--out`
//! (`kind\tkey\tprocess\tunix_us\tstatus`) and exits.
//!
//! `blast` posts a ping-sized body to `POST /ceiling` `--count` times over `--concurrency`
//! connections and prints the receiver's throughput.
//!
//! ```text
//! events_bench complete --url http://127.0.0.1:ADMIN --ids FILE --secret whsec_… --concurrency C --out FILE
//! events_bench receive --listen 127.0.0.1:PORT --fail-share 0.2 --max-failures 2 --events-secret whsec_… --out FILE
//! events_bench blast --url http://127.0.0.1:PORT --count N --concurrency C
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dtr_proxy::webhook::{decode_secret, sign, verify};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn die(message: &str) -> ! {
    eprintln!("events_bench: {message}");
    std::process::exit(2)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("complete") => complete(&args).await,
        Some("receive") => receive(&args).await,
        Some("blast") => blast(&args).await,
        _ => die("usage: events_bench complete|receive|blast ... (see the source header)"),
    }
}

struct Prepared {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// One answered request: its index, latency, when its answer arrived (Unix µs), and whether
/// the answer was the expected one.
struct Answered {
    index: usize,
    latency: Duration,
    at_us: u64,
    ok: bool,
}

/// Sends every request once over `concurrency` keep-alive connections (closed loop).
async fn drive(
    authority: &str,
    requests: Arc<Vec<Prepared>>,
    concurrency: usize,
    expected: fn(StatusCode, &[u8]) -> bool,
) -> (Vec<Answered>, f64, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (requests, next, authority) = (requests.clone(), next.clone(), authority.to_owned());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&authority).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            let mut answered = Vec::new();
            let mut unexpected = None;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(prepared) = requests.get(index) else { break };
                let mut request = Request::post(&prepared.path)
                    .header(http::header::HOST, authority.as_str())
                    .body(Full::new(prepared.body.clone()))
                    .expect("request");
                request.headers_mut().extend(prepared.headers.clone());
                let sent = Instant::now();
                let response = sender.send_request(request).await.expect("send");
                let status = response.status();
                let body = response.into_body().collect().await.expect("body").to_bytes();
                let ok = expected(status, &body);
                answered.push(Answered {
                    index,
                    latency: sent.elapsed(),
                    at_us: unix_us(),
                    ok,
                });
                if !ok && unexpected.is_none() {
                    unexpected = Some(format!("{status} {}", String::from_utf8_lossy(&body)));
                }
            }
            (answered, unexpected)
        }));
    }
    let mut all = Vec::new();
    let mut first_unexpected = None;
    for task in tasks {
        let (mut answered, unexpected) = task.await.expect("load task");
        all.append(&mut answered);
        first_unexpected = first_unexpected.or(unexpected);
    }
    (all, started.elapsed().as_secs_f64(), first_unexpected)
}

fn report(answered: &[Answered], seconds: f64) {
    let mut latencies: Vec<Duration> = answered.iter().map(|a| a.latency).collect();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let ok = answered.iter().filter(|a| a.ok).count();
    println!(
        "requests={} seconds={seconds:.3} rps={:.0} ok_rps={:.0} p50_ms={:.3} p99_ms={:.3} unexpected={}",
        answered.len(),
        answered.len() as f64 / seconds,
        ok as f64 / seconds,
        pct(0.50),
        pct(0.99),
        answered.len() - ok
    );
}

fn authority_of(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_owned()
}

async fn complete(args: &[String]) {
    let url = arg(args, "--url").unwrap_or_else(|| die("--url URL"));
    let ids = arg(args, "--ids").unwrap_or_else(|| die("--ids FILE"));
    let out = arg(args, "--out").unwrap_or_else(|| die("--out FILE"));
    let secret = arg(args, "--secret").unwrap_or_else(|| die("--secret whsec_..."));
    let secret = decode_secret(&secret).unwrap_or_else(|e| die(&e));
    let concurrency: usize = arg(args, "--concurrency").and_then(|v| v.parse().ok()).unwrap_or(32);
    let text = std::fs::read_to_string(&ids).unwrap_or_else(|e| die(&format!("{ids}: {e}")));
    let processes: Vec<(&str, &str)> = text
        .lines()
        .map(|line| line.split_once('\t').unwrap_or_else(|| die("malformed ids line")))
        .collect();
    if processes.is_empty() {
        die("no processes to complete");
    }
    // Signed before the load (the timestamp stays well inside the 5 minute tolerance).
    let timestamp = unix_us() / 1_000_000;
    let run = dtr_proxy::crypto::random_token(8);
    let requests: Vec<Prepared> = processes
        .iter()
        .enumerate()
        .map(|(i, (process_id, _))| {
            let body = json!({"outcome": "approved", "process_id": process_id}).to_string();
            let id = format!("msg_{run}_{i}");
            let signature = sign(&secret, &id, timestamp, body.as_bytes());
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert("webhook-id", HeaderValue::from_str(&id).expect("id"));
            headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
            headers.insert(
                "webhook-signature",
                HeaderValue::from_str(&format!("v1,{signature}")).expect("signature"),
            );
            Prepared {
                path: "/v1/completions".into(),
                headers,
                body: Bytes::from(body),
            }
        })
        .collect();
    let expected = |status: StatusCode, body: &[u8]| {
        status == StatusCode::OK
            && serde_json::from_slice::<Value>(body).is_ok_and(|v| v["changed"][0]["status"] == "approved")
    };
    let (answered, seconds, unexpected) = drive(&authority_of(&url), Arc::new(requests), concurrency, expected).await;
    report(&answered, seconds);
    let mut lines = String::with_capacity(answered.len() * 64);
    for a in answered.iter().filter(|a| a.ok) {
        lines.push_str(&format!("{}\t{}\n", processes[a.index].1, a.at_us));
    }
    std::fs::write(&out, lines).unwrap_or_else(|e| die(&format!("{out}: {e}")));
    if let Some(first) = unexpected {
        eprintln!("events_bench: a completion was not accepted: {first}");
        std::process::exit(1);
    }
}

async fn blast(args: &[String]) {
    let url = arg(args, "--url").unwrap_or_else(|| die("--url URL"));
    let count: usize = arg(args, "--count").and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let concurrency: usize = arg(args, "--concurrency").and_then(|v| v.parse().ok()).unwrap_or(32);
    let requests: Vec<Prepared> = (0..count)
        .map(|_| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Prepared {
                path: "/ceiling".into(),
                headers,
                body: Bytes::from(json!({"deferred_auth_id": dtr_proxy::crypto::random_token(32)}).to_string()),
            }
        })
        .collect();
    let expected = |status: StatusCode, _: &[u8]| status.is_success();
    let (answered, seconds, unexpected) = drive(&authority_of(&url), Arc::new(requests), concurrency, expected).await;
    report(&answered, seconds);
    if let Some(first) = unexpected {
        eprintln!("events_bench: the receiver refused a request: {first}");
        std::process::exit(1);
    }
}

/// What the receiver took: one entry per request.
struct Taken {
    kind: &'static str,
    key: String,
    process: String,
    at_us: u64,
    status: u16,
}

#[derive(Default)]
struct Counts {
    pings_ok: u64,
    pings_refused: u64,
    events_ok: u64,
    events_refused: u64,
    bad: u64,
    ceiling: u64,
}

struct Receiver {
    fail_share: f64,
    max_failures: u32,
    events_secret: Option<Vec<u8>>,
    state: Mutex<ReceiverState>,
}

struct ReceiverState {
    log: Vec<Taken>,
    failures: HashMap<String, u32>,
    counts: Counts,
    /// xorshift64: which attempts are refused.
    random: u64,
}

impl ReceiverState {
    fn chance(&mut self) -> f64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Receiver {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return answer(StatusCode::BAD_REQUEST, "unreadable body"),
        };
        let at_us = unix_us();
        let path = parts.uri.path();
        if parts.method == Method::GET && path == "/stats" {
            let s = self.state.lock().expect("state");
            let c = &s.counts;
            let stats = json!({
                "pings_ok": c.pings_ok, "pings_refused": c.pings_refused,
                "events_ok": c.events_ok, "events_refused": c.events_refused,
                "bad": c.bad, "ceiling": c.ceiling,
            });
            return answer(StatusCode::OK, &stats.to_string());
        }
        if parts.method != Method::POST {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let (kind, key, process) = match path {
            "/ceiling" => {
                self.state.lock().expect("state").counts.ceiling += 1;
                return answer(StatusCode::OK, "");
            }
            "/ping" => {
                let id = parsed.as_ref().and_then(|v| {
                    v.get("deferred_auth_id")
                        .or_else(|| v.get("deferral_code"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                let Some(id) = id else {
                    self.state.lock().expect("state").counts.bad += 1;
                    return answer(StatusCode::BAD_REQUEST, "no deferred_auth_id");
                };
                ("ping", id.clone(), id)
            }
            "/events" => {
                let secret = self.events_secret.as_deref().unwrap_or_default();
                let verified = verify(secret, &parts.headers, &body, at_us / 1_000_000);
                let process = parsed
                    .as_ref()
                    .and_then(|v| v["data"]["process_id"].as_str().map(str::to_owned));
                let (Ok(event_id), Some(process)) = (verified, process) else {
                    self.state.lock().expect("state").counts.bad += 1;
                    return answer(StatusCode::BAD_REQUEST, "bad signature or body");
                };
                ("event", event_id, process)
            }
            _ => return answer(StatusCode::NOT_FOUND, ""),
        };
        let mut state = self.state.lock().expect("state");
        let failures = state.failures.get(&key).copied().unwrap_or(0);
        let refuse = failures < self.max_failures && state.chance() < self.fail_share;
        if refuse {
            state.failures.insert(key.clone(), failures + 1);
        }
        let status = if refuse {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        match (kind, refuse) {
            ("ping", false) => state.counts.pings_ok += 1,
            ("ping", true) => state.counts.pings_refused += 1,
            (_, false) => state.counts.events_ok += 1,
            (_, true) => state.counts.events_refused += 1,
        }
        state.log.push(Taken {
            kind,
            key,
            process,
            at_us,
            status: status.as_u16(),
        });
        drop(state);
        answer(status, "")
    }
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

async fn receive(args: &[String]) {
    let listen = arg(args, "--listen").unwrap_or_else(|| die("--listen ADDR"));
    let out = arg(args, "--out").unwrap_or_else(|| die("--out FILE"));
    let fail_share: f64 = arg(args, "--fail-share").and_then(|v| v.parse().ok()).unwrap_or(0.2);
    let max_failures: u32 = arg(args, "--max-failures").and_then(|v| v.parse().ok()).unwrap_or(2);
    let events_secret = arg(args, "--events-secret").map(|s| decode_secret(&s).unwrap_or_else(|e| die(&e)));
    let seed = unix_us() | 1;
    let receiver = Arc::new(Receiver {
        fail_share,
        max_failures,
        events_secret,
        state: Mutex::new(ReceiverState {
            log: Vec::new(),
            failures: HashMap::new(),
            counts: Counts::default(),
            random: seed,
        }),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| die(&format!("{listen}: {e}")));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let receiver = receiver.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let receiver = receiver.clone();
                        async move { Ok::<_, Infallible>(receiver.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = terminate.recv() => break,
        }
    }
    let state = receiver.state.lock().expect("state");
    let mut lines = String::with_capacity(state.log.len() * 120);
    for t in &state.log {
        lines.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            t.kind, t.key, t.process, t.at_us, t.status
        ));
    }
    std::fs::write(&out, lines).unwrap_or_else(|e| die(&format!("{out}: {e}")));
}
