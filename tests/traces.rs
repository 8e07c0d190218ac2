//! OpenTelemetry traces over real sockets: the proxy in front of the stand-in OP (through a
//! relay that records what reaches the OP), an RP's notification endpoint, and an OTLP/HTTP
//! receiver started here that decodes what the exporter sends (`ExportTraceServiceRequest`).
//! A caller's `traceparent` is continued: the proxy's server spans are its children, and the
//! OP and the RP's ping receive the same trace. With traces off nothing is exported.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Serves HTTP/1.1 on `listener`, each request answered by `handle`.
fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(http::request::Parts, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (u16, Bytes)> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let (status, answer) = handle(parts, body).await;
                        let mut response = hyper::Response::new(Full::new(answer));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// An OTLP/HTTP trace receiver: every export request it got, and the spans in them.
struct Receiver {
    base: String,
    exports: Arc<Mutex<usize>>,
    spans: Arc<Mutex<Vec<Exported>>>,
}

async fn otlp_receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let exports = Arc::new(Mutex::new(0));
    let spans: Arc<Mutex<Vec<Exported>>> = Arc::default();
    let (count, log) = (exports.clone(), spans.clone());
    serve(listener, move |parts, body| {
        let (count, log) = (count.clone(), log.clone());
        async move {
            *count.lock().unwrap() += 1;
            let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok());
            if parts.method != http::Method::POST
                || parts.uri.path() != "/v1/traces"
                || content_type != Some("application/x-protobuf")
            {
                return (400, Bytes::new());
            }
            let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                return (400, Bytes::new());
            };
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        log.lock().unwrap().push(Exported {
                            service: service.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            name: span.name,
                            kind: span.kind,
                            attributes: span
                                .attributes
                                .into_iter()
                                .map(|kv| (kv.key, text(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                                .collect(),
                        });
                    }
                }
            }
            // An empty ExportTraceServiceResponse: full success.
            (200, Bytes::new())
        }
    });
    Receiver { base, exports, spans }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// The bytes sent on one connection.
type Recorded = Arc<Mutex<Vec<u8>>>;

/// A TCP relay in front of the OP that keeps every byte sent to it, per connection.
struct RecordingRelay {
    port: u16,
    sent: Arc<Mutex<Vec<Recorded>>>,
}

impl RecordingRelay {
    async fn start(target: u16) -> RecordingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let sent: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let connections = sent.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let record: Recorded = Arc::default();
                connections.lock().unwrap().push(record.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_op, mut to_op) = outbound.into_split();
                    let upward = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        while let Ok(n) = from_client.read(&mut buffer).await {
                            if n == 0 || to_op.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buffer[..n]);
                        }
                        let _ = to_op.shutdown().await;
                    };
                    let downward = async {
                        let _ = tokio::io::copy(&mut from_op, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    tokio::join!(upward, downward);
                });
            }
        });
        RecordingRelay { port, sent }
    }

    /// Every request line that reached the OP, with its `traceparent` if it had one: each
    /// connection's bytes read as HTTP/1.1 requests, one after the other.
    fn requests(&self) -> Vec<(String, Option<String>)> {
        let mut requests = Vec::new();
        for connection in self.sent.lock().unwrap().iter() {
            let bytes = connection.lock().unwrap().clone();
            let mut rest = &bytes[..];
            while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&rest[..end]).into_owned();
                rest = &rest[end + 4..];
                let mut lines = head.split("\r\n");
                let line = lines.next().unwrap_or_default().to_owned();
                let mut traceparent = None;
                let mut length = 0;
                let mut chunked = false;
                for header in lines {
                    let Some((name, value)) = header.split_once(':') else {
                        continue;
                    };
                    let value = value.trim();
                    match name.to_ascii_lowercase().as_str() {
                        "traceparent" => traceparent = Some(value.to_owned()),
                        "content-length" => length = value.parse().expect("content-length"),
                        "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                        _ => {}
                    }
                }
                let body = if chunked {
                    rest.windows(5)
                        .position(|w| w == b"0\r\n\r\n")
                        .map_or(rest.len(), |p| p + 5)
                } else {
                    length.min(rest.len())
                };
                rest = &rest[body..];
                requests.push((line, traceparent));
            }
        }
        requests
    }
}

/// An RP's notification endpoint that keeps the `traceparent` of every ping.
async fn traced_ping_receiver() -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/dtr/ping", listener.local_addr().expect("addr"));
    let pings: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = pings.clone();
    serve(listener, move |parts, _| {
        let log = log.clone();
        async move {
            let traceparent = parts
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            log.lock().unwrap().push(traceparent);
            (204, Bytes::new())
        }
    });
    (url, pings)
}

/// (trace id, span id) of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buffer).expect("random");
    hex(&buffer)
}

async fn post_token(proxy: &Proxy, form: &[(&str, &str)], traceparent: &str) -> Reply {
    let response = proxy
        .http
        .post(proxy.token_url())
        .basic_auth("dtr-client", Some("dtr-client-secret"))
        .header("traceparent", traceparent)
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    Reply { status, headers, json }
}

async fn wait_for<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const SERVER: i32 = SpanKind::Server as i32;
const CLIENT: i32 = SpanKind::Client as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_flow_continues_the_callers_trace_to_the_op_and_the_ping() {
    let receiver = otlp_receiver().await;
    let relay = RecordingRelay::start(op().port).await;
    let (ping_url, pings) = traced_ping_receiver().await;
    let options = Options::new(StoreKind::Redis)
        .client(json!({"client_id": "dtr-client", "redirect_uris": [REDIRECT_URI], "notification_endpoint": ping_url}))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base.clone())
        .env("OTEL_SERVICE_NAME", "dtr-under-test");
    let mut proxy = start_with_upstream(options, relay.port).await;
    let user = unique("tracy");
    let (code, verifier) = proxy.deferred_code("dtr-client", &user).await;

    // The RP's trace: every DTR request it makes is a child of one of its spans.
    let trace = random_hex(16);
    let (exchange_parent, poll_parent, release_parent) = (random_hex(8), random_hex(8), random_hex(8));
    let traceparent = |span: &str| format!("00-{trace}-{span}-01");
    let exchange = post_token(
        &proxy,
        &[
            ("grant_type", "urn:openid:params:grant-type:deferred"),
            ("deferred_code", &code),
            ("code_verifier", &verifier),
            ("deferred_notification_token", "notify-1"),
        ],
        &traceparent(&exchange_parent),
    )
    .await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let id = exchange.json["deferred_auth_id"].as_str().expect("id").to_owned();
    let poll = [
        ("grant_type", "urn:openid:params:grant-type:deferred"),
        ("deferred_auth_id", id.as_str()),
    ];
    let pending = post_token(&proxy, &poll, &traceparent(&poll_parent)).await;
    assert_eq!((pending.status, pending.error()), (400, "authorization_pending"));

    let completed = proxy.complete(&json!({"outcome": "approved", "sub": user})).await;
    assert_eq!(completed.status, 200, "{}", completed.json);
    let ping = wait_for(Duration::from_secs(10), || pings.lock().unwrap().first().cloned())
        .await
        .expect("a ping");
    let ping = ping.expect("the ping carries a traceparent");
    let (ping_trace, ping_span) = ids(&ping);
    assert_eq!(ping_trace, trace, "the ping continues the trace of the exchange");

    wait_interval(1).await;
    let tokens = post_token(&proxy, &poll, &traceparent(&release_parent)).await;
    assert_eq!(tokens.status, 200, "{}", tokens.json);

    // Pass-through: another trace; the OP sees the proxy's span as the parent.
    let other_trace = random_hex(16);
    let other_parent = random_hex(8);
    let certs = proxy
        .http
        .get(format!("{}/protocol/openid-connect/certs", proxy.issuer))
        .header("traceparent", format!("00-{other_trace}-{other_parent}-01"))
        .send()
        .await
        .expect("certs");
    assert_eq!(certs.status(), 200);

    // Stopping flushes the exporter.
    proxy.running.take().expect("in process").shutdown().await;
    let spans = receiver.spans.lock().unwrap().clone();
    assert!(spans.iter().all(|s| s.service == "dtr-under-test"), "{spans:#?}");
    let find = |trace: &str, kind: i32, parent: &str| -> Vec<Exported> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace && s.kind == kind && s.parent_span_id == parent)
            .cloned()
            .collect()
    };

    // One server span per request, each the child of the RP's span, with step and outcome.
    for (parent, step, outcome, status) in [
        (&exchange_parent, "token_exchange", "ok", "200"),
        (&poll_parent, "token_poll", "authorization_pending", "400"),
        (&release_parent, "token_poll", "ok", "200"),
    ] {
        let server = find(&trace, SERVER, parent);
        assert_eq!(server.len(), 1, "one server span under {parent}: {spans:#?}");
        let server = &server[0];
        assert_eq!(server.name, "POST token");
        assert_eq!(server.attr("dtr.route"), Some("token"));
        assert_eq!(server.attr("dtr.step"), Some(step), "{server:?}");
        assert_eq!(server.attr("dtr.outcome"), Some(outcome), "{server:?}");
        assert_eq!(server.attr("dtr.client_id"), Some("dtr-client"), "{server:?}");
        assert_eq!(server.attr("http.response.status_code"), Some(status), "{server:?}");
        assert_eq!(server.attr("http.request.method"), Some("POST"));
        // The exchange and the release call the OP (client spans under the server span);
        // a pending poll is answered from the store alone.
        let children = find(&trace, CLIENT, &server.span_id);
        let calls: Vec<&str> = children
            .iter()
            .filter_map(|s| s.attributes.get("dtr.call").map(String::as_str))
            .filter(|call| *call != "ping")
            .map(|call| match call {
                "exchange" | "nonce_probe" | "refresh" => call,
                other => panic!("unexpected OP call {other} under {step}"),
            })
            .collect();
        match (step, outcome) {
            ("token_exchange", _) => assert!(calls.contains(&"exchange"), "{calls:?}"),
            ("token_poll", "ok") => assert_eq!(calls, ["refresh"]),
            _ => assert!(calls.is_empty(), "a pending poll stays off the OP: {calls:?}"),
        }
    }

    // The OP received the trace: every back-channel client span's id reached the OP as the
    // parent in a token request's traceparent, and nothing else of this trace did.
    let requests = relay.requests();
    let reached: Vec<(String, String)> = requests
        .iter()
        .filter(|(line, _)| line.starts_with("POST ") && line.contains("/protocol/openid-connect/token"))
        .filter_map(|(_, tp)| tp.as_deref().map(ids))
        .filter(|(t, _)| *t == trace)
        .collect();
    let op_calls: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.kind == CLIENT && s.attr("dtr.call") != Some("ping"))
        .collect();
    assert!(op_calls.len() >= 2, "code redemption and release: {op_calls:#?}");
    assert_eq!(reached.len(), op_calls.len(), "{requests:#?}");
    for call in &op_calls {
        assert!(
            reached.iter().any(|(_, span)| *span == call.span_id),
            "the OP saw the span of {call:?}: {requests:#?}"
        );
        assert_eq!(call.attr("http.response.status_code"), Some("200"), "{call:?}");
    }

    // The ping: a client span in the exchange's trace, whose id the RP received.
    let ping_spans: Vec<&Exported> = spans.iter().filter(|s| s.span_id == ping_span).collect();
    assert_eq!(ping_spans.len(), 1, "{spans:#?}");
    assert_eq!(ping_spans[0].kind, CLIENT);
    assert_eq!(ping_spans[0].attr("dtr.call"), Some("ping"));
    assert_eq!(ping_spans[0].attr("http.response.status_code"), Some("204"));
    let exchange_server = &find(&trace, SERVER, &exchange_parent)[0];
    assert_eq!(ping_spans[0].parent_span_id, exchange_server.span_id);

    // The completion webhook on the admin port is a server span of its own.
    let completion: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.kind == SERVER && s.attr("dtr.route") == Some("completion"))
        .collect();
    assert_eq!(completion.len(), 1, "{spans:#?}");
    assert_eq!(completion[0].name, "POST completion");
    assert_eq!(completion[0].attr("http.response.status_code"), Some("200"));

    // Pass-through has its span too, and the forwarded request carries the proxy's span.
    let passthrough = find(&other_trace, SERVER, &other_parent);
    assert_eq!(passthrough.len(), 1, "{spans:#?}");
    assert_eq!(passthrough[0].attr("dtr.route"), Some("passthrough"));
    assert_eq!(passthrough[0].attr("http.response.status_code"), Some("200"));
    let forwarded = requests
        .iter()
        .find(|(line, _)| line.starts_with("GET ") && line.contains("/protocol/openid-connect/certs"))
        .and_then(|(_, tp)| tp.as_deref().map(ids))
        .expect("the forwarded request carries a traceparent");
    assert_eq!(forwarded.0, other_trace);
    assert_ne!(
        forwarded.1, other_parent,
        "the OP sees the proxy's span, not the caller's"
    );
    let forward_span = spans.iter().find(|s| s.span_id == forwarded.1).expect("exported");
    assert_eq!(forward_span.kind, CLIENT);
    assert_eq!(forward_span.parent_span_id, passthrough[0].span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_traces_off_nothing_is_exported_and_nothing_is_added() {
    let receiver = otlp_receiver().await;
    let relay = RecordingRelay::start(op().port).await;
    // The receiver is there, but no OTEL_EXPORTER_OTLP_ENDPOINT names it.
    let options = Options::new(StoreKind::Embedded).env("OTEL_SERVICE_NAME", "dtr-off");
    let mut proxy = start_with_upstream(options, relay.port).await;
    let user = unique("quiet");
    let (code, verifier) = proxy.deferred_code("dtr-client", &user).await;
    let caller = format!("00-{}-{}-01", random_hex(16), random_hex(8));
    let exchange = post_token(
        &proxy,
        &[
            ("grant_type", "urn:openid:params:grant-type:deferred"),
            ("deferred_code", &code),
            ("code_verifier", &verifier),
        ],
        &caller,
    )
    .await;
    assert_eq!(exchange.status, 200, "{}", exchange.json);
    let certs = proxy
        .http
        .get(format!("{}/protocol/openid-connect/certs", proxy.issuer))
        .header("traceparent", &caller)
        .send()
        .await
        .expect("certs");
    assert_eq!(certs.status(), 200);
    proxy.running.take().expect("in process").shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*receiver.exports.lock().unwrap(), 0, "nothing is exported");

    let requests = relay.requests();
    let redemption = requests
        .iter()
        .find(|(line, _)| line.starts_with("POST ") && line.contains("/protocol/openid-connect/token"))
        .expect("the code redemption reached the OP");
    assert_eq!(
        redemption.1, None,
        "the proxy's own calls carry no trace context: {requests:#?}"
    );
    let forwarded = requests
        .iter()
        .find(|(line, _)| line.contains("/protocol/openid-connect/certs"))
        .expect("forwarded");
    assert_eq!(
        forwarded.1.as_deref(),
        Some(caller.as_str()),
        "pass-through forwards the caller's header untouched"
    );
}
