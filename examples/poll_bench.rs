//! Pending-poll benchmark helper, used by `bench/polls.sh` and `bench/instructions.sh`.
//!
//! `seed` stores pending processes exactly as the deferred code exchange stores them: the same
//! `ProcessRecord` (fresh 256-bit `deferred_auth_id`, sealed id and refresh token, `sub` and
//! `sid` indexes, the active queue), written by `Records::create` under the keys of the
//! configuration in the environment (the same `DTR_*` variables as the proxy, so the proxy
//! finds and opens them). It writes one ready-made poll request per process to a file: client
//! authentication (`client_secret_basic` or a `private_key_jwt` assertion) and, with DPoP, a
//! fresh proof by the key the process is bound to. Proofs and assertions are signed here,
//! before any load, so the load generator spends nothing on them.
//!
//! With `--ids FILE` it also writes `process_id\tdeferred_auth_id` per process, for the
//! completion webhooks of `bench/events.sh` (`examples/events_bench.rs`).
//!
//! `load` sends every request of such a file once, over a fixed number of keep-alive
//! connections (closed loop), and prints throughput and latency; every answer must be
//! `authorization_pending`.
//!
//! ```text
//! poll_bench seed --count N --auth basic|jwt [--dpop] --out FILE [--ids FILE]
//! poll_bench load --url http://127.0.0.1:PORT --file FILE --concurrency C [--skip K] [--take M]
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use dtr_proxy::client_auth::ClientCredentials;
use dtr_proxy::config::Config;
use dtr_proxy::crypto::random_token;
use dtr_proxy::protocol::params::Params;
use dtr_proxy::protocol::wire::GRANT_TYPE_DEFERRED as GRANT_TYPE;
use dtr_proxy::records::{HeldSecrets, ProcessRecord, Records, Status};
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The benchmark's RP, configured in `DTR_CLIENTS` by the scripts.
const CLIENT_ID: &str = "bench-rp";
const CLIENT_SECRET: &str = "bench-secret";
const REALM: &str = "bench";
/// A Keycloak offline refresh token is a signed JWT of roughly this many characters.
const REFRESH_TOKEN_CHARS: usize = 800;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn die(message: &str) -> ! {
    eprintln!("poll_bench: {message}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("seed") => seed(&args).await,
        Some("load") => load(&args).await,
        _ => die("usage: poll_bench seed|load ... (see the source header)"),
    }
}

/// A P-256 DPoP key signing proofs.
struct DpopKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    header: String,
    jkt: String,
}

impl DpopKey {
    fn generate() -> Self {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("key");
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).expect("jwk");
        let jkt = parsed.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256);
        let header = URL_SAFE_NO_PAD.encode(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string());
        Self { pair, header, jkt }
    }

    fn proof(&self, htu: &str) -> String {
        let claims = json!({"jti": random_token(16), "htm": "POST", "htu": htu, "iat": now_s()});
        let input = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = self.pair.sign(&rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// The `private_key_jwt` key of the test client (tests/op/keys), whose public JWK the
/// scripts put in the client's `jwks`.
struct AssertionKey {
    key: jsonwebtoken::EncodingKey,
    kid: Option<String>,
}

impl AssertionKey {
    fn load() -> Self {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/op/keys");
        let pem = std::fs::read(root.join("client-jwt.private.pem")).expect("tests/op/keys/client-jwt.private.pem");
        let jwk: Value = serde_json::from_slice(
            &std::fs::read(root.join("client-jwt.public.jwk.json")).expect("client-jwt.public.jwk.json"),
        )
        .expect("jwk json");
        Self {
            key: jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("ec key"),
            kid: jwk["kid"].as_str().map(str::to_owned),
        }
    }

    fn assertion(&self, audience: &str) -> String {
        let now = now_s();
        let claims = json!({
            "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": audience,
            "jti": random_token(16), "iat": now, "exp": now + 300,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }
}

fn uuid_like() -> String {
    let hex: String = random_token(12)
        .bytes()
        .map(|b| format!("{:x}", b % 16))
        .chain(std::iter::repeat_n("0".to_string(), 32))
        .take(32)
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

async fn seed(args: &[String]) {
    let count: usize = arg(args, "--count")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| die("--count N"));
    let out = arg(args, "--out").unwrap_or_else(|| die("--out FILE"));
    let jwt = match arg(args, "--auth").as_deref() {
        Some("basic") | None => false,
        Some("jwt") => true,
        Some(other) => die(&format!("--auth basic|jwt, not {other}")),
    };
    let with_dpop = args.iter().any(|a| a == "--dpop");
    let config = Config::from_env(std::env::vars()).unwrap_or_else(|e| die(&e.to_string()));
    let store = dtr_proxy::app::connect_store(&config, None).unwrap_or_else(|e| die(&e.to_string()));
    let records = Records::new(store, config.hash_key.clone(), config.sealer.clone());
    let token_path = config.paths.token.replace("{realm}", REALM);
    let htu = format!("{}{}", config.public_origin(), token_path);

    // What the RP presents, and so what the exchange binds to every process.
    let assertion_key = jwt.then(AssertionKey::load);
    let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    let sample_form = match &assertion_key {
        Some(key) => format!(
            "grant_type=x&client_id={CLIENT_ID}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={}",
            key.assertion(&htu)
        ),
        None => "grant_type=x".to_string(),
    };
    let mut sample_headers = HeaderMap::new();
    if !jwt {
        sample_headers.insert(AUTHORIZATION, HeaderValue::from_str(&basic).expect("header"));
    }
    let params = Params::parse(sample_form.as_bytes()).expect("form");
    let credentials = ClientCredentials::extract(&sample_headers, &params).expect("credentials");
    let binding = credentials.binding(&config.hash_key);
    let dpop = with_dpop.then(DpopKey::generate);
    let interval = config
        .clients
        .iter()
        .find(|c| c.client_id == CLIENT_ID)
        .and_then(|c| c.interval)
        .unwrap_or(config.default_interval);
    let expires_in = config.default_expires_in;

    let started = Instant::now();
    let ids: Vec<String> = (0..count).map(|_| random_token(32)).collect();
    let process_ids: Vec<String> = (0..count).map(|_| random_token(16)).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(ids);
    let process_ids = Arc::new(process_ids);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (records, ids, process_ids, next, binding) = (
            records.clone(),
            ids.clone(),
            process_ids.clone(),
            next.clone(),
            binding.clone(),
        );
        let jkt = dpop.as_ref().map(|k| k.jkt.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let process_hash = records.process_hash(id);
                let now = dtr_proxy::clock::now_ms();
                let secrets = HeldSecrets {
                    deferred_auth_id: id.clone(),
                    refresh_token: random_token(REFRESH_TOKEN_CHARS * 3 / 4),
                    notification_token: None,
                };
                let record = ProcessRecord {
                    process_id: process_ids[i].clone(),
                    realm: REALM.to_owned(),
                    client_id: CLIENT_ID.to_owned(),
                    client: binding.clone(),
                    jkt: jkt.clone(),
                    x5t: None,
                    status: Status::Pending,
                    description: None,
                    interaction: None,
                    interval,
                    strikes: 0,
                    last_strike: None,
                    created_at: now,
                    expires_at: now + expires_in * 1000,
                    completed_at: None,
                    delivering_since: None,
                    sub: Some(uuid_like()),
                    sid: Some(uuid_like()),
                    nonce: Some(random_token(32)),
                    requested: Default::default(),
                    ping_attempts: 0,
                    release_in_doubt: false,
                    trace: None,
                    sealed: records.seal(&secrets, &process_hash),
                };
                records.create(&process_hash, &record).await.expect("store");
            }
        }));
    }
    for task in tasks {
        task.await.expect("seeding task");
    }
    let seeded = started.elapsed();
    if let Some(path) = arg(args, "--ids") {
        let lines: String = process_ids
            .iter()
            .zip(ids.iter())
            .map(|(process_id, id)| format!("{process_id}\t{id}\n"))
            .collect();
        std::fs::write(&path, lines).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    }

    // One poll request per process: DPoP proof, Authorization, form body.
    let mut lines = String::with_capacity(count * 1200);
    for id in ids.iter() {
        let proof = dpop.as_ref().map_or_else(|| "-".to_string(), |k| k.proof(&htu));
        let mut body = format!("grant_type={}&deferred_auth_id={id}", urlencode(GRANT_TYPE));
        let authorization = match &assertion_key {
            Some(key) => {
                body.push_str(&format!(
                    "&client_id={CLIENT_ID}&client_assertion_type={}&client_assertion={}",
                    urlencode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    key.assertion(&htu)
                ));
                "-".to_string()
            }
            None => basic.clone(),
        };
        lines.push_str(&format!("{token_path}\t{proof}\t{authorization}\t{body}\n"));
    }
    std::fs::write(&out, lines).unwrap_or_else(|e| die(&format!("{out}: {e}")));
    eprintln!(
        "poll_bench: seeded {count} pending processes in {:.1} s; requests in {out} (signed in {:.1} s)",
        seeded.as_secs_f64(),
        (started.elapsed() - seeded).as_secs_f64()
    );
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct Prepared {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

fn parse_line(line: &str) -> Prepared {
    let mut fields = line.splitn(4, '\t');
    let (Some(path), Some(proof), Some(authorization), Some(body)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        die("malformed request line")
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if proof != "-" {
        headers.insert("dpop", HeaderValue::from_str(proof).expect("proof"));
    }
    if authorization != "-" {
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("authorization"),
        );
    }
    Prepared {
        path: path.to_owned(),
        headers,
        body: Bytes::from(body.to_owned()),
    }
}

async fn load(args: &[String]) {
    let url = arg(args, "--url").unwrap_or_else(|| die("--url URL"));
    let file = arg(args, "--file").unwrap_or_else(|| die("--file FILE"));
    let concurrency: usize = arg(args, "--concurrency").and_then(|v| v.parse().ok()).unwrap_or(1);
    let skip: usize = arg(args, "--skip").and_then(|v| v.parse().ok()).unwrap_or(0);
    let take: usize = arg(args, "--take").and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
    let authority = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| die(&format!("{file}: {e}")));
    let requests: Arc<Vec<Prepared>> = Arc::new(text.lines().skip(skip).take(take).map(parse_line).collect());
    if requests.is_empty() {
        die("no requests to send");
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (requests, next, authority) = (requests.clone(), next.clone(), authority.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&authority).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut unexpected: Option<String> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(prepared) = requests.get(i) else { break };
                let mut request = http::Request::post(&prepared.path)
                    .header(http::header::HOST, authority.as_str())
                    .body(Full::new(prepared.body.clone()))
                    .expect("request");
                request.headers_mut().extend(prepared.headers.clone());
                let sent = Instant::now();
                let response = sender.send_request(request).await.expect("send");
                let status = response.status();
                let body = response.into_body().collect().await.expect("body").to_bytes();
                latencies.push(sent.elapsed());
                let pending =
                    status == http::StatusCode::BAD_REQUEST && body.windows(21).any(|w| w == b"authorization_pending");
                if !pending && unexpected.is_none() {
                    unexpected = Some(format!("{status} {}", String::from_utf8_lossy(&body)));
                }
            }
            (latencies, unexpected)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut unexpected = Vec::new();
    for task in tasks {
        let (mut l, u) = task.await.expect("load task");
        latencies.append(&mut l);
        unexpected.extend(u);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    println!(
        "requests={} seconds={elapsed:.3} rps={:.0} p50_ms={:.3} p99_ms={:.3} unexpected={}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        unexpected.len()
    );
    if let Some(first) = unexpected.first() {
        eprintln!("poll_bench: an answer was not authorization_pending: {first}");
        std::process::exit(1);
    }
}
