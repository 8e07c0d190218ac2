//! Hostile input over real sockets: every attack gets its exact error, never a panic, a hang
//! or a 500. One test per attack, against the real test OP and real Redis.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFERRED_GRANT: &str = "urn%3Aopenid%3Aparams%3Agrant-type%3Adeferred";
const FORM: &str = "application/x-www-form-urlencoded";
/// CR/LF smuggling: a second Location and an extra header, if anything wrote it out raw.
const SMUGGLED: &str = "s\r\nLocation: https://evil.example/\r\nX-Injected: 1";

fn addr(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// A POST with a raw body, authenticated as dtr-client; the answer read as JSON.
async fn post(proxy: &Proxy, url: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Reply {
    let mut request = proxy
        .http
        .post(url)
        .basic_auth("dtr-client", Some("dtr-client-secret"))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, headers, json }
}

fn cancel_url(proxy: &Proxy) -> String {
    proxy.url("/protocol/openid-connect/deferred/cancel")
}

fn auth_url(proxy: &Proxy) -> String {
    proxy.url("/protocol/openid-connect/auth")
}

fn assert_oauth_error(reply: &Reply, status: u16, error: &str) {
    assert_eq!((reply.status, reply.error()), (status, error), "{}", reply.json);
    assert_eq!(reply.headers["content-type"], "application/json");
}

/// Writes raw bytes (write errors are fine: the server may close early) and reads whatever
/// comes back until the server closes.
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Writes the whole request as a real client on a real network does — over a while, not in
/// one burst — failing if the server resets the connection midway; then reads the answer.
async fn send_over_time(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for chunk in request.chunks(32 * 1024) {
        stream
            .write_all(chunk)
            .await
            .expect("the whole request is taken, not reset midway");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(_))), "the answer is readable: {read:?}");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `head`, then `drip` every `every` until the server closes; returns what the server
/// said and when it closed.
async fn trickle(addr: &str, head: &[u8], drip: &'static [u8], every: Duration) -> (String, Duration) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head).await.expect("head");
    let dripping = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if writer.write_all(drip).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    dripping.abort();
    assert!(read.is_ok(), "a trickling client was never cut off");
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

/// A request over hyper's own client whose body sends `first` and then `drip` every `every`
/// (`None`: stalls after `first`). Returns the status and the JSON body, and how long it took.
async fn slow_body(
    addr: &str,
    path: &str,
    content_type: &str,
    first: &'static [u8],
    drip: Option<Duration>,
) -> (u16, Value, Duration) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let chunks = futures_util::stream::unfold(0u32, move |n| async move {
        if n > 0 {
            match drip {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending::<()>().await,
            }
        }
        let data = if n == 0 {
            Bytes::from_static(first)
        } else {
            Bytes::from_static(b"a")
        };
        Some((Ok::<_, Infallible>(Frame::data(data)), n + 1))
    });
    let request = hyper::Request::post(path)
        .header("host", addr)
        .header("content-type", content_type)
        .header("content-length", "10000")
        .header("authorization", "Basic ZHRyLWNsaWVudDpkdHItY2xpZW50LXNlY3JldA==")
        .body(StreamBody::new(chunks))
        .expect("request");
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the server never answered a stalled body")
        .expect("response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        started.elapsed(),
    )
}

/// An OP stand-in on its own port: it answers a deferred authorization request (recognised by
/// the proxy's `state` handle) with an error redirect whose description is `description`, and
/// any other request with a JSON report of the headers it received.
struct ScriptedOp {
    port: u16,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

async fn scripted_op(description: &'static str) -> ScriptedOp {
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let log = seen.clone();
    let addr = serve_http(move |request: hyper::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            log.lock().expect("log").push(request.headers().clone());
            let query: Vec<(String, String)> = request
                .uri()
                .query()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default();
            let get = |name: &str| query.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            let mut response = hyper::Response::new(Full::new(Bytes::new()));
            match (get("state"), get("redirect_uri")) {
                (Some(state), Some(redirect_uri)) if state.starts_with("dtr1.") => {
                    let mut location = url::Url::parse(&redirect_uri).expect("redirect_uri");
                    location
                        .query_pairs_mut()
                        .append_pair("error", "access_denied")
                        .append_pair("error_description", description)
                        .append_pair("state", &state);
                    *response.status_mut() = hyper::StatusCode::FOUND;
                    response
                        .headers_mut()
                        .insert("location", location.as_str().parse().expect("location"));
                }
                _ => {
                    let mut headers = serde_json::Map::new();
                    for name in request.headers().keys() {
                        let values: Vec<Value> = request
                            .headers()
                            .get_all(name)
                            .iter()
                            .map(|v| json!(String::from_utf8_lossy(v.as_bytes())))
                            .collect();
                        headers.insert(name.to_string(), Value::Array(values));
                    }
                    *response.body_mut() = Full::new(Bytes::from(Value::Object(headers).to_string()));
                }
            }
            response
        }
    })
    .await;
    ScriptedOp {
        port: addr.port(),
        seen,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Body size limits
// ---------------------------------------------------------------------------------------------

fn small_bodies() -> Options {
    Options::new(StoreKind::Embedded).env("DTR_MAX_BODY_BYTES", "1024")
}

#[tokio::test]
async fn oversize_token_body_is_413_invalid_request() {
    let proxy = start(small_bodies()).await;
    let body = format!("grant_type={DEFERRED_GRANT}&deferred_auth_id={}", "a".repeat(4096));
    let reply = post(&proxy, &proxy.token_url(), Some(FORM), body).await;
    assert_oauth_error(&reply, 413, "invalid_request");
}

/// A client that writes its whole oversized body before reading must see the 413, not a reset:
/// the proxy reads and drops the rest (bounded) before it answers and closes.
#[tokio::test]
async fn a_client_writing_its_whole_oversized_body_sees_the_413() {
    let proxy = start(small_bodies()).await;
    let body = format!("grant_type={DEFERRED_GRANT}&x={}", "a".repeat(512 * 1024));
    let request = format!(
        "POST /realms/{}/protocol/openid-connect/token HTTP/1.1\r\nHost: {}\r\nContent-Type: {FORM}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        proxy.realm,
        addr(&proxy.base),
        body.len()
    );
    let answer = send_over_time(&addr(&proxy.base), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn oversize_chunked_token_body_is_413_invalid_request() {
    let proxy = start(small_bodies()).await;
    // No Content-Length to refuse up front: the limit holds while the body streams in.
    let chunk = format!("grant_type={DEFERRED_GRANT}&x={}", "a".repeat(700));
    let head = format!(
        "POST /realms/{}/protocol/openid-connect/token HTTP/1.1\r\nHost: {}\r\nContent-Type: {FORM}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        proxy.realm,
        addr(&proxy.base)
    );
    let mut request = head.into_bytes();
    for _ in 0..3 {
        request.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(&addr(&proxy.base), &request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"invalid_request\""), "{answer}");
}

#[tokio::test]
async fn oversize_cancellation_body_is_413_invalid_request() {
    let proxy = start(small_bodies()).await;
    let form = format!("deferred_auth_id={}", "a".repeat(4096));
    assert_oauth_error(
        &post(&proxy, &cancel_url(&proxy), Some(FORM), form).await,
        413,
        "invalid_request",
    );
    let json = json!({"deferred_auth_id": "a".repeat(4096)}).to_string();
    assert_oauth_error(
        &post(&proxy, &cancel_url(&proxy), Some("application/json"), json).await,
        413,
        "invalid_request",
    );
}

#[tokio::test]
async fn oversize_webhook_body_is_413() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let body = json!({"outcome": "pending", "sub": "x", "error_description": "a".repeat(100 * 1024)});
    let reply = proxy.webhook(&body, &unique("msg_"), now_s(), WEBHOOK_SECRET).await;
    assert_eq!(reply.status, 413, "{}", reply.json);
    assert_eq!(reply.json["error"], "invalid_body");
}

// ---------------------------------------------------------------------------------------------
// 2. Header count and size limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn too_many_headers_is_431() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let mut request = format!(
        "GET /realms/{}/x HTTP/1.1\r\nHost: {}\r\n",
        proxy.realm,
        addr(&proxy.base)
    );
    for i in 0..300 {
        request.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let answer = raw_exchange(&addr(&proxy.base), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// The limit is 100 fields (hyper's default, and Envoy's): 100 pass, 101 do not.
#[tokio::test]
async fn a_hundred_header_fields_pass_and_one_more_is_431() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for (fields, refused) in [(100, false), (101, true)] {
        let mut request = format!(
            "GET /realms/{}/x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            proxy.realm,
            addr(&proxy.base)
        );
        for i in 2..fields {
            request.push_str(&format!("X-Filler-{i}: {i}\r\n"));
        }
        request.push_str("\r\n");
        let answer = raw_exchange(&addr(&proxy.base), request.as_bytes()).await;
        assert_eq!(answer.starts_with("HTTP/1.1 431"), refused, "{fields} fields: {answer}");
        assert!(answer.starts_with("HTTP/1.1 "), "{fields} fields: {answer}");
    }
}

#[tokio::test]
async fn oversize_header_is_431() {
    let proxy = start(Options::new(StoreKind::Embedded).env("DTR_MAX_HEADER_BYTES", "8192")).await;
    let request = |cookie_bytes: usize| {
        format!(
            "GET /realms/{}/x HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            proxy.realm,
            addr(&proxy.base),
            "a".repeat(cookie_bytes)
        )
    };
    // Over the configured total.
    let answer = raw_exchange(&addr(&proxy.base), request(9 * 1024).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Far over it, past what the connection buffers at all: hyper answers 431 without reading
    // the rest, and the connection lingers (reading and dropping) so the client, which writes
    // its whole request before reading, still sees the answer rather than a reset.
    for size in [256 * 1024, 2 * 1024 * 1024] {
        let answer = send_over_time(&addr(&proxy.base), request(size).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{size}: {answer}");
    }
}

/// Headers over the configured total on a request whose body is still coming: the body is
/// drained (bounded) so the client sees the 431 instead of a reset.
#[tokio::test]
async fn a_client_sending_a_body_after_oversized_headers_sees_the_431() {
    let proxy = start(Options::new(StoreKind::Embedded).env("DTR_MAX_HEADER_BYTES", "8192")).await;
    let body = "a".repeat(512 * 1024);
    let request = format!(
        "POST /realms/{}/x HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        proxy.realm,
        addr(&proxy.base),
        "c".repeat(9 * 1024),
        body.len()
    );
    let answer = send_over_time(&addr(&proxy.base), request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"));
}

#[tokio::test]
async fn connect_and_asterisk_form_requests_are_refused_not_proxied() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let public = addr(&proxy.base);
    let connect = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(&public, connect).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let asterisk = format!("OPTIONS * HTTP/1.1\r\nHost: {public}\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(&public, asterisk.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Absolute-form names a path: it is served, with the authority ignored.
    let absolute = format!(
        "GET http://evil.example/realms/{}/protocol/openid-connect/certs HTTP/1.1\r\nHost: {public}\r\nConnection: close\r\n\r\n",
        proxy.realm
    );
    let answer = raw_exchange(&public, absolute.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// 3. Slow clients
// ---------------------------------------------------------------------------------------------

fn impatient() -> Options {
    Options::new(StoreKind::Embedded)
        .env("DTR_HEADER_READ_TIMEOUT", "1")
        .env("DTR_BODY_READ_TIMEOUT", "1")
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_after_the_header_read_timeout() {
    let proxy = start(impatient()).await;
    let head = format!(
        "GET /realms/{}/x HTTP/1.1\r\nHost: {}\r\n",
        proxy.realm,
        addr(&proxy.base)
    );
    let (answer, after) = trickle(
        &addr(&proxy.base),
        head.as_bytes(),
        b"X-Drip: a\r\n",
        Duration::from_millis(200),
    )
    .await;
    assert!(after >= Duration::from_millis(900), "cut off too early: {after:?}");
    assert!(after < Duration::from_secs(4), "cut off too late: {after:?}");
    assert!(!answer.contains(" 200 ") && !answer.contains(" 50"), "{answer}");
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_header_read_timeout() {
    let proxy = start(impatient()).await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let started = Instant::now();
        let answer = raw_exchange(&addr(&proxy.base), opening).await;
        let after = started.elapsed();
        assert!(answer.is_empty(), "{answer}");
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(4),
            "{opening:?} closed after {after:?}"
        );
    }
}

#[tokio::test]
async fn stalled_token_body_is_408_invalid_request() {
    let proxy = start(impatient()).await;
    let path = format!("/realms/{}/protocol/openid-connect/token", proxy.realm);
    let (status, json, after) = slow_body(
        &addr(&proxy.base),
        &path,
        FORM,
        b"grant_type=urn%3Aopenid%3Aparams%3Agrant-type%3Adeferred&deferred_auth_id=",
        None,
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (408, Some("invalid_request")),
        "{json}"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "{after:?}"
    );
}

#[tokio::test]
async fn trickled_cancellation_body_is_408_invalid_request() {
    let proxy = start(impatient()).await;
    let path = format!("/realms/{}/protocol/openid-connect/deferred/cancel", proxy.realm);
    // A byte every 100 ms keeps the connection busy but never finishes the body: the limit is
    // on the whole body, not between bytes.
    let (status, json, after) = slow_body(
        &addr(&proxy.base),
        &path,
        FORM,
        b"deferred_auth_id=",
        Some(Duration::from_millis(100)),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (408, Some("invalid_request")),
        "{json}"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "{after:?}"
    );
}

#[tokio::test]
async fn stalled_webhook_body_is_408() {
    let proxy = start(impatient()).await;
    let admin = addr(&proxy.admin);
    let (status, json, _) = slow_body(&admin, "/v1/completions", "application/json", b"{\"outcome\":", None).await;
    assert_eq!((status, json["error"].as_str()), (408, Some("invalid_body")), "{json}");
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed bodies and queries
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_request_for_the_deferred_grant_in_a_non_form_body_is_invalid_request() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let json = json!({"grant_type": "urn:openid:params:grant-type:deferred", "deferred_auth_id": "x"}).to_string();
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        let reply = post(&proxy, &proxy.token_url(), content_type, json.clone()).await;
        assert_oauth_error(&reply, 400, "invalid_request");
    }
    let form = format!("grant_type={DEFERRED_GRANT}&deferred_auth_id=x");
    let reply = post(&proxy, &proxy.token_url(), Some("application/json"), form).await;
    assert_oauth_error(&reply, 400, "invalid_request");
}

#[tokio::test]
async fn cancellation_json_with_a_duplicate_key_is_invalid_request() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let (id, _) = proxy.start_process(&dtr_client(), &unique("dup"), None).await;
    // serde_json alone would keep the last value and cancel nothing; the first is the real id.
    let body = format!(r#"{{"deferred_auth_id":"{id}","deferred_auth_id":"decoy"}}"#);
    let reply = post(&proxy, &cancel_url(&proxy), Some("application/json"), body).await;
    assert_oauth_error(&reply, 400, "invalid_request");
    let reversed = format!(r#"{{"deferred_auth_id":"decoy","deferred_auth_id":"{id}"}}"#);
    let reply = post(&proxy, &cancel_url(&proxy), Some("application/json"), reversed).await;
    assert_oauth_error(&reply, 400, "invalid_request");
    let poll = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(poll.error(), "authorization_pending", "not cancelled: {}", poll.json);
}

#[tokio::test]
async fn cancellation_json_that_is_not_an_object_of_strings_is_invalid_request() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for body in [
        r#"["deferred_auth_id","x"]"#,
        r#""deferred_auth_id""#,
        "null",
        "42",
        r#"{"deferred_auth_id":"x""#,
        r#"{"deferred_auth_id":42}"#,
        r#"{"deferred_auth_id":null}"#,
        r#"{"deferred_auth_id":["x"]}"#,
        r#"{"deferred_auth_id":{"id":"x"}}"#,
        r#"{"deferred_auth_id":"\ud800"}"#,
        "",
    ] {
        let reply = post(&proxy, &cancel_url(&proxy), Some("application/json"), body).await;
        assert_oauth_error(&reply, 400, "invalid_request");
    }
}

#[tokio::test]
async fn cancellation_with_a_wrong_content_type_is_invalid_request() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for content_type in [Some("text/plain"), Some("multipart/form-data; boundary=x"), None] {
        let reply = post(&proxy, &cancel_url(&proxy), content_type, "deferred_auth_id=x").await;
        assert_oauth_error(&reply, 400, "invalid_request");
    }
}

/// An authorization request the proxy answers itself: an error page, never a redirect.
async fn assert_error_page(response: reqwest::Response) {
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, 400, "{}", answer.html);
    assert!(answer.location.is_none(), "redirected to {:?}", answer.location);
    assert!(answer.html.contains("Sign-in problem"), "{}", answer.html);
}

#[tokio::test]
async fn malformed_authorization_query_gets_an_error_page() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let base = format!(
        "{}?response_type=deferred_code&client_id=dtr-client&redirect_uri={}",
        auth_url(&proxy),
        form_urlencoded::byte_serialize(REDIRECT_URI.as_bytes()).collect::<String>()
    );
    // Percent-encoded invalid UTF-8, and an overlong encoding of '/'.
    for tail in ["&state=%FF%FE", "&state=%C0%AF", "&%E0%80=x"] {
        let response = proxy.http.get(format!("{base}{tail}")).send().await.expect("request");
        assert_error_page(response).await;
    }
    // Raw bytes that are not even ASCII never make it past the HTTP layer (400, not 500).
    let request = format!(
        "GET /realms/{}/protocol/openid-connect/auth?response_type=deferred_code&state=\u{0}\u{1} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        proxy.realm,
        addr(&proxy.base)
    )
    .into_bytes();
    let mut raw = request.clone();
    let at = raw.iter().position(|&b| b == 0).expect("marker");
    raw[at] = 0xff;
    raw[at + 1] = 0xfe;
    let answer = raw_exchange(&addr(&proxy.base), &raw).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// 5. A parameter given twice
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn repeated_parameter_at_the_token_endpoint_is_invalid_request() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for body in [
        format!("grant_type={DEFERRED_GRANT}&grant_type={DEFERRED_GRANT}&deferred_code=a"),
        format!("grant_type={DEFERRED_GRANT}&deferred_code=a&deferred_code=b"),
        format!("grant_type={DEFERRED_GRANT}&grant_type=authorization_code&deferred_code=a"),
        format!("grant_type={DEFERRED_GRANT}&deferred_code=a&code_verifier=x&code_verifier=y"),
        format!("grant_type={DEFERRED_GRANT}&deferred_auth_id=a&client_id=dtr-client&client_id=dtr-post"),
    ] {
        let reply = post(&proxy, &proxy.token_url(), Some(FORM), body).await;
        assert_oauth_error(&reply, 400, "invalid_request");
    }
}

#[tokio::test]
async fn repeated_parameter_at_the_cancellation_endpoint_is_invalid_request() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let (id, _) = proxy.start_process(&dtr_client(), &unique("twice"), None).await;
    for body in [
        format!("deferred_auth_id={id}&deferred_auth_id=decoy"),
        format!("deferred_auth_id={id}&client_id=dtr-client&client_id=dtr-client"),
    ] {
        let reply = post(&proxy, &cancel_url(&proxy), Some(FORM), body).await;
        assert_oauth_error(&reply, 400, "invalid_request");
    }
    let poll = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(poll.error(), "authorization_pending", "not cancelled: {}", poll.json);
}

#[tokio::test]
async fn repeated_parameter_at_the_authorization_endpoint_gets_an_error_page() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let redirect = form_urlencoded::byte_serialize(REDIRECT_URI.as_bytes()).collect::<String>();
    let common = format!("client_id=dtr-client&redirect_uri={redirect}&scope=openid");
    for query in [
        format!("response_type=deferred_code&{common}&state=a&state=b"),
        format!("response_type=deferred_code&{common}&redirect_uri=https%3A%2F%2Fevil.example%2Fcb"),
        format!("response_type=deferred_code&response_type=code&{common}"),
        format!("response_type=deferred_code&{common}&client_id=plain-client"),
    ] {
        let response = proxy
            .http
            .get(format!("{}?{query}", auth_url(&proxy)))
            .send()
            .await
            .expect("request");
        assert_error_page(response).await;
        // As a form POST too.
        let response = proxy
            .http
            .post(auth_url(&proxy))
            .header("content-type", FORM)
            .body(query)
            .send()
            .await
            .expect("request");
        assert_error_page(response).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Over-long and non-UTF-8 values
// ---------------------------------------------------------------------------------------------

/// One byte over the longest accepted value (16 KiB).
fn over_long() -> String {
    "a".repeat(16 * 1024 + 1)
}

#[tokio::test]
async fn over_long_values_are_invalid_request() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let long = over_long();
    let reply = post(
        &proxy,
        &proxy.token_url(),
        Some(FORM),
        format!("grant_type={DEFERRED_GRANT}&deferred_auth_id={long}"),
    )
    .await;
    assert_oauth_error(&reply, 400, "invalid_request");
    let reply = post(
        &proxy,
        &cancel_url(&proxy),
        Some(FORM),
        format!("deferred_auth_id={long}"),
    )
    .await;
    assert_oauth_error(&reply, 400, "invalid_request");
    let reply = post(
        &proxy,
        &cancel_url(&proxy),
        Some("application/json"),
        json!({ "deferred_auth_id": long }).to_string(),
    )
    .await;
    assert_oauth_error(&reply, 400, "invalid_request");
    let params = proxy.auth_params("dtr-client", &long, "n");
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let response = proxy
        .http
        .get(format!("{}?{query}", auth_url(&proxy)))
        .send()
        .await
        .expect("request");
    assert_error_page(response).await;
}

#[tokio::test]
async fn non_utf8_values_are_invalid_request() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    // Percent-encoded invalid UTF-8 and raw invalid bytes, in a token and a cancellation body.
    let encoded = format!("grant_type={DEFERRED_GRANT}&deferred_auth_id=%FF%FE");
    let mut raw = format!("grant_type={DEFERRED_GRANT}&deferred_auth_id=").into_bytes();
    raw.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    for body in [encoded.into_bytes(), raw.clone()] {
        let reply = post(&proxy, &proxy.token_url(), Some(FORM), body).await;
        assert_oauth_error(&reply, 400, "invalid_request");
    }
    let mut raw_cancel = b"deferred_auth_id=".to_vec();
    raw_cancel.extend_from_slice(&[0xc3, 0x28]);
    for body in [b"deferred_auth_id=%C3%28".to_vec(), raw_cancel] {
        let reply = post(&proxy, &cancel_url(&proxy), Some(FORM), body).await;
        assert_oauth_error(&reply, 400, "invalid_request");
    }
    let mut raw_json = br#"{"deferred_auth_id":""#.to_vec();
    raw_json.extend_from_slice(&[0xff, b'"', b'}']);
    let reply = post(&proxy, &cancel_url(&proxy), Some("application/json"), raw_json).await;
    assert_oauth_error(&reply, 400, "invalid_request");
    // And a form-posted authorization request.
    let mut raw_auth = b"response_type=deferred_code&client_id=dtr-client&state=".to_vec();
    raw_auth.extend_from_slice(&[0xff, 0xfe]);
    let response = proxy
        .http
        .post(auth_url(&proxy))
        .header("content-type", FORM)
        .body(raw_auth)
        .send()
        .await
        .expect("request");
    assert_error_page(response).await;
}

// ---------------------------------------------------------------------------------------------
// 7. CR/LF and a second Location smuggled through a parameter
// ---------------------------------------------------------------------------------------------

/// Exactly one Location, at the RP, with the CR/LF percent-encoded; nothing injected.
fn assert_one_clean_location(answer: &Answer) {
    let locations: Vec<_> = answer.headers.get_all("location").iter().collect();
    assert_eq!(locations.len(), 1, "{:?}", answer.headers);
    let location = locations[0].to_str().expect("ascii");
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    assert!(location.contains("%0D%0ALocation"), "{location}");
    assert!(!location.contains(['\r', '\n']), "{location}");
    assert!(answer.headers.get("x-injected").is_none(), "{:?}", answer.headers);
}

#[tokio::test]
async fn crlf_in_the_rps_state_stays_inside_the_acknowledgment_location() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for mode in ["query", "fragment"] {
        let mut params = proxy.auth_params("dtr-client", SMUGGLED, "n");
        params.push(("response_mode", mode));
        let answer = proxy.login(&params, &unique("crlf"), None).await;
        assert_eq!(answer.status, 302);
        assert_one_clean_location(&answer);
        let ack = answer.ack();
        assert_eq!(ack.get("state"), Some(SMUGGLED), "the RP gets its state back intact");
        assert!(ack.get("deferred_code").is_some());
    }
}

#[tokio::test]
async fn crlf_in_an_error_redirect_made_by_the_proxy_stays_inside_the_location() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    let mut params = proxy.auth_params("dtr-client", SMUGGLED, "n");
    params.push(("request", "eyJhbGciOiJub25lIn0.e30."));
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let response = proxy
        .http
        .get(format!("{}?{query}", auth_url(&proxy)))
        .send()
        .await
        .expect("request");
    let answer = Answer::read(response).await;
    assert_one_clean_location(&answer);
    assert_eq!(answer.ack().get("error"), Some("request_not_supported"));
}

#[tokio::test]
async fn crlf_in_the_ops_error_description_stays_inside_the_location() {
    let op = scripted_op("denied\r\nLocation: https://evil.example/\r\nX-Injected: 1").await;
    let proxy = start_with_upstream(Options::new(StoreKind::Embedded), op.port).await;
    let params = proxy.auth_params("dtr-client", "st", "n");
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let response = proxy
        .http
        .get(format!("{}?{query}", auth_url(&proxy)))
        .send()
        .await
        .expect("request");
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, 302, "{}", answer.html);
    assert_one_clean_location(&answer);
    let ack = answer.ack();
    assert_eq!(ack.get("error"), Some("access_denied"));
    assert_eq!(ack.get("state"), Some("st"));
}

#[tokio::test]
async fn form_post_acknowledgment_html_escapes_hostile_values() {
    let hostile = "\"><script>alert(1)</script>\r\n<x y='";
    let op = scripted_op(hostile).await;
    let proxy = start_with_upstream(Options::new(StoreKind::Embedded), op.port).await;
    let mut params = proxy.auth_params("dtr-client", hostile, "n");
    params.push(("response_mode", "form_post"));
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let response = proxy
        .http
        .get(format!("{}?{query}", auth_url(&proxy)))
        .send()
        .await
        .expect("request");
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, 200, "{}", answer.html);
    assert!(answer.location.is_none());
    assert_eq!(answer.html.matches("<script>").count(), 0, "{}", answer.html);
    assert_eq!(answer.html.matches("<form").count(), 1, "{}", answer.html);
    assert_eq!(answer.html.matches("<x ").count(), 0, "{}", answer.html);
    let ack = answer.ack();
    assert_eq!(ack.get("state"), Some(hostile));
    assert_eq!(ack.get("error_description"), Some(hostile));
}

// ---------------------------------------------------------------------------------------------
// 8. Spoofed X-Forwarded-*
// ---------------------------------------------------------------------------------------------

/// Sends a pass-through request with every forwarding header spoofed; returns what the OP saw.
async fn spoofed_request(proxy: &Proxy) -> Value {
    let response = proxy
        .http
        .get(proxy.url("/spoof"))
        .header("host", "evil.example")
        .header("x-forwarded-for", "6.6.6.6, 10.0.0.1")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "8443")
        .header("x-forwarded-prefix", "/evil")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6;host=evil.example;proto=https")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("echo")
}

fn assert_public_origin_only(proxy: &Proxy, seen: &Value) {
    let public_host = addr(&proxy.base);
    assert_eq!(seen["host"], json!([public_host]), "{seen}");
    assert_eq!(seen["x-forwarded-host"], json!([public_host]), "{seen}");
    assert_eq!(seen["x-forwarded-proto"], json!(["http"]), "{seen}");
    let port = public_host.rsplit(':').next().expect("port");
    assert_eq!(seen["x-forwarded-port"], json!([port]), "{seen}");
    for dropped in ["forwarded", "x-forwarded-prefix", "x-real-ip"] {
        assert!(seen.get(dropped).is_none(), "{dropped} reached the OP: {seen}");
    }
}

#[tokio::test]
async fn spoofed_forwarding_headers_from_an_untrusted_peer_never_reach_the_op() {
    let op = scripted_op("").await;
    let options = Options::new(StoreKind::Embedded).env("DTR_TRUSTED_PROXIES", "10.0.0.0/8");
    let proxy = start_with_upstream(options, op.port).await;
    let seen = spoofed_request(&proxy).await;
    assert_eq!(seen["x-forwarded-for"], json!(["127.0.0.1"]), "only the peer: {seen}");
    assert_public_origin_only(&proxy, &seen);
}

#[tokio::test]
async fn trusted_proxy_keeps_the_forwarded_for_chain_and_appends_the_peer() {
    let op = scripted_op("").await;
    let options = Options::new(StoreKind::Embedded).env("DTR_TRUSTED_PROXIES", "192.168.0.0/16,127.0.0.0/8");
    let proxy = start_with_upstream(options, op.port).await;
    let seen = spoofed_request(&proxy).await;
    assert_eq!(
        seen["x-forwarded-for"],
        json!(["6.6.6.6, 10.0.0.1, 127.0.0.1"]),
        "{seen}"
    );
    // Even a trusted peer does not choose the public origin.
    assert_public_origin_only(&proxy, &seen);
    assert!(!op.seen.lock().expect("log").is_empty());
}

// ---------------------------------------------------------------------------------------------
// 9. Redirect URIs the OP did not validate
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unregistered_redirect_uri_never_becomes_a_redirect() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    for redirect_uri in [
        "https://evil.example/cb",
        "https://rp.example.com/cb/../evil",
        "https://rp.example.com/cb\r\nLocation: https://evil.example/",
    ] {
        let mut params = proxy.auth_params("dtr-client", "s", "n");
        params.retain(|(name, _)| *name != "redirect_uri");
        params.push(("redirect_uri", redirect_uri));
        let answer = proxy.login(&params, &unique("eve"), None).await;
        assert!(answer.location.is_none(), "{redirect_uri:?} → {:?}", answer.location);
        assert_eq!(answer.status, 400, "{redirect_uri:?}: {}", answer.html);
        assert!(!answer.html.contains("deferred_code"), "{}", answer.html);
    }
}

#[tokio::test]
async fn forged_callback_with_a_handle_like_state_is_not_acted_on() {
    let proxy = start(Options::new(StoreKind::Embedded)).await;
    // Straight at the proxy: not an upstream redirect, so it is only passed through.
    let forged = proxy
        .http
        .get(format!(
            "{}?code=stolen&state=dtr1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            proxy.url("/cb")
        ))
        .send()
        .await
        .expect("request");
    let answer = Answer::read(forged).await;
    assert!(!(300..400).contains(&answer.status), "{:?}", answer.location);
    assert!(!answer.html.contains("deferred_code"));

    // Through the OP: a plain client's redirect carrying an unknown handle-like state gets an
    // error page, never a deferred code or a redirect.
    let params = [
        ("response_type", "code"),
        ("client_id", "plain-client"),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid"),
        ("state", "dtr1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ];
    let answer = proxy.login(&params, &unique("mallory"), None).await;
    assert_eq!(answer.status, 400, "{}", answer.html);
    assert!(answer.location.is_none(), "{:?}", answer.location);
    assert!(!answer.html.contains("deferred_code"));
}

// ---------------------------------------------------------------------------------------------
// 10. Webhook forgery, staleness and replay
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn webhook_with_a_forged_signature_is_401() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let user = unique("wf");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let body = json!({"outcome": "approved", "sub": user});
    let forged = proxy
        .webhook(
            &body,
            &unique("msg_"),
            now_s(),
            "whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ==",
        )
        .await;
    assert_eq!(
        (forged.status, forged.json["error"].as_str()),
        (401, Some("invalid_signature"))
    );
    // A valid signature over another body does not cover this one.
    let response = proxy
        .http
        .post(format!("{}/v1/completions", proxy.admin))
        .header("webhook-id", "msg_tampered")
        .header("webhook-timestamp", now_s().to_string())
        .header(
            "webhook-signature",
            format!(
                "v1,{}",
                dtr_proxy::webhook::sign(
                    &dtr_proxy::webhook::decode_secret(WEBHOOK_SECRET).expect("secret"),
                    "msg_tampered",
                    now_s(),
                    br#"{"outcome":"denied"}"#
                )
            ),
        )
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    assert_eq!(proxy.poll(&dtr_client(), &id).await.error(), "authorization_pending");
}

#[tokio::test]
async fn webhook_with_a_stale_or_future_timestamp_is_401() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let user = unique("ws");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let body = json!({"outcome": "approved", "sub": user});
    for timestamp in [now_s() - 301, now_s() + 301] {
        let reply = proxy.webhook(&body, &unique("msg_"), timestamp, WEBHOOK_SECRET).await;
        assert_eq!(
            (reply.status, reply.json["error"].as_str()),
            (401, Some("invalid_signature"))
        );
    }
    assert_eq!(proxy.poll(&dtr_client(), &id).await.error(), "authorization_pending");
}

#[tokio::test]
async fn replayed_webhook_id_gets_the_first_answer_and_changes_nothing() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let user = unique("wr");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let step_one = json!({"outcome": "pending", "sub": user, "error_description": "Step 1 of 2"});
    let msg = unique("msg_");
    let first = proxy.webhook(&step_one, &msg, now_s(), WEBHOOK_SECRET).await;
    assert_eq!(first.status, 200, "{}", first.json);
    let later = proxy
        .complete(&json!({"outcome": "pending", "sub": user, "error_description": "Step 2 of 2"}))
        .await;
    assert_eq!(later.status, 200);

    let replay = proxy.webhook(&step_one, &msg, now_s(), WEBHOOK_SECRET).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json["duplicate"], true);
    assert_eq!(replay.json["changed"], first.json["changed"]);
    let pending = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(
        pending.json["error_description"], "Step 2 of 2",
        "the replay changed nothing"
    );

    // Replaying an approval does not approve twice.
    let approve = json!({"outcome": "approved", "sub": user});
    let approval = unique("msg_");
    assert_eq!(
        proxy.webhook(&approve, &approval, now_s(), WEBHOOK_SECRET).await.status,
        200
    );
    let again = proxy.webhook(&approve, &approval, now_s(), WEBHOOK_SECRET).await;
    assert_eq!(again.json["duplicate"], true);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("dtr_process_events_total{event=\"deferred.approved\"} 1"),
        "{metrics}"
    );
}

/// An `interaction_uri` is handed to RPs and their end-users: anything but a plain absolute
/// https URL without a fragment (IETF §6.4) is the webhook caller's 400, and changes nothing.
#[tokio::test]
async fn a_bad_interaction_uri_is_the_webhook_callers_400_and_changes_nothing() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let user = unique("iu");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    let set = proxy
        .complete(&json!({"outcome": "pending", "sub": user, "error_description": "step=1"}))
        .await;
    assert_eq!(set.status, 200);
    let long = format!("https://idv.example/{}", "a".repeat(480));
    let bad: Vec<Value> = vec![
        json!("http://idv.example/slot"),
        json!("javascript:alert(document.cookie)"),
        json!("https://idv.example/slot#frag"),
        json!("https://user:pw@idv.example/slot"),
        json!("https:idv.example/slot"),
        json!("https://idv.example/a b"),
        json!("https://idv.example/\"><script>"),
        json!("https://idv.example/\r\nSet-Cookie:x=1"),
        json!("https://idv.example/caf\u{e9}"),
        json!("/relative/path"),
        json!(""),
        json!(long),
        json!(42),
        json!(["https://idv.example/"]),
        json!({"href": "https://idv.example/"}),
    ];
    for uri in bad {
        let refused = proxy
            .complete(&json!({"outcome": "pending", "sub": user, "interaction_uri": uri}))
            .await;
        assert_eq!(
            (refused.status, refused.error()),
            (400, "invalid_body"),
            "{uri}: {}",
            refused.json
        );
    }
    // Only a progress update may ask for an interaction.
    for outcome in ["approved", "denied"] {
        let refused = proxy
            .complete(&json!({"outcome": outcome, "sub": user, "interaction_uri": "https://idv.example/slot"}))
            .await;
        assert_eq!((refused.status, refused.error()), (400, "invalid_body"), "{outcome}");
    }
    let pending = proxy.poll(&dtr_client(), &id).await;
    assert_eq!(
        pending.json,
        json!({"error": "authorization_pending", "error_description": "step=1"}),
        "nothing changed"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Rapid polling
// ---------------------------------------------------------------------------------------------

/// A `slow_down` naming an interval of `seconds`.
fn assert_slow_down(reply: &Reply, seconds: u64) {
    assert_oauth_error(reply, 400, "slow_down");
    let description = reply.json["error_description"].as_str().unwrap_or("");
    assert!(description.contains(&format!(" {seconds} seconds")), "{}", reply.json);
}

#[tokio::test]
async fn polling_faster_than_the_interval_gets_slow_down_and_a_longer_interval() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let (id, _) = proxy.start_process(&dtr_client(), &unique("fast"), None).await;
    assert_eq!(proxy.poll(&dtr_client(), &id).await.error(), "authorization_pending");
    assert_slow_down(&proxy.poll(&dtr_client(), &id).await, 6);
    // At once again: too fast, but within a second of the strike, so no strike of its own
    // (a burst is one strike).
    assert_slow_down(&proxy.poll(&dtr_client(), &id).await, 6);
    // The old interval no longer suffices, and a second later the strike counts.
    wait_interval(1).await;
    assert_slow_down(&proxy.poll(&dtr_client(), &id).await, 11);
}

#[tokio::test]
async fn sustained_fast_polling_kills_the_deferred_auth_id() {
    let proxy = start(Options::new(StoreKind::Redis)).await;
    let user = unique("abuse");
    let (id, _) = proxy.start_process(&dtr_client(), &user, None).await;
    assert_eq!(proxy.poll(&dtr_client(), &id).await.error(), "authorization_pending");
    // A poll a second, far faster than the interval: each is a strike (one a second counts),
    // and the tenth revokes the id. The polls between them are told slow_down, no strike.
    let mut answers = Vec::new();
    for n in 0..10 {
        answers.push(proxy.poll(&dtr_client(), &id).await);
        let between = proxy.poll(&dtr_client(), &id).await;
        assert_oauth_error(&between, 400, if n < 9 { "slow_down" } else { "invalid_request" });
        wait_interval(1).await;
    }
    for (n, reply) in (1..).zip(&answers[..9]) {
        assert_slow_down(reply, 1 + 5 * n);
    }
    assert_oauth_error(&answers[9], 400, "invalid_request");
    // The interval reached 1 + 9 × 5 = 46 s; even a poll spaced that far apart, after the
    // verification succeeded, gets nothing.
    let approved = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(
        approved.status, 404,
        "a revoked process is no longer open: {}",
        approved.json
    );
    wait_interval(46).await;
    assert_oauth_error(&proxy.poll(&dtr_client(), &id).await, 400, "invalid_request");
}
