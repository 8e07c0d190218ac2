//! The HTTP client side: the OP's own connection pool (pass-through and the back-channel token
//! calls, HTTP/1.1 only), a general pooled client for pings to RPs and clients' JWKS, one TLS
//! connector shared by all; the headers that make the OP see its public URL.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{self, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use ipnet::IpNet;
use prometheus_client::metrics::histogram::Histogram;
use url::Url;

use crate::http::{empty, full, read_limited, Body, FORM_URLENCODED};
use crate::metrics::Metrics;
use crate::telemetry::{self, Telemetry};
use crate::timers::TimerPool;

mod export;
mod pool;

pub use export::ExportClient;
use pool::Pool;
pub use pool::{http_client, http_client_with};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Largest OP reply the proxy reads whole (token responses, discovery).
const MAX_UPSTREAM_JSON: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: the request was certainly not processed.
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("request failed: {0}")]
    Failed(String),
    #[error("reply larger than {MAX_UPSTREAM_JSON} bytes")]
    TooLarge,
    /// The OP answered, with a server error: it may or may not have processed the request.
    #[error("answered {0}")]
    Status(StatusCode),
}

impl UpstreamError {
    /// Whether the OP may have received, and acted on, the request: only a failed connection
    /// proves it did not. A code sent once must then never be sent again.
    pub fn may_have_reached_op(&self) -> bool {
        !matches!(self, UpstreamError::Connect(_))
    }
}

/// The OP's back channel as the DTR endpoints use it: a form POST (the code exchange and the
/// final refresh) and a GET of a metadata document, each read whole. A small trait, so the
/// endpoints run in tests against an OP in memory.
pub trait OpClient: Send + Sync {
    /// A form POST to one of the OP's paths (its token endpoint), with the RP's `forwarded`
    /// headers and the public host headers.
    fn post_form<'a>(
        &'a self,
        path: &'a str,
        form: String,
        forwarded: &'a HeaderMap,
        peer: IpAddr,
        call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>>;

    /// A GET of one of the OP's documents (discovery), with the RP's request headers.
    fn get<'a>(
        &'a self,
        path_and_query: &'a str,
        headers: &'a HeaderMap,
        peer: IpAddr,
        call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>>;

    /// Any other call of the proxy's own (the OP's admin API), read whole.
    fn send_own<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        headers: HeaderMap,
        body: Bytes,
        call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>>;
}

/// Headers that must not cross a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a header may not cross a proxy by its name alone (the fixed list; `Connection`
/// names more).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Which of [`HOP_BY_HOP`] a message carries, one bit each, in one pass over its names.
fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    headers
        .keys()
        .fold(0, |present, name| match HOP_BY_HOP.iter().position(|hop| hop == name) {
            Some(i) => present | 1 << i,
            None => present,
        })
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none; most responses only `Connection: keep-alive`. Only the names
    // present are removed (a removal hashes its name).
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return;
    }
    // Headers the Connection header names are hop-by-hop too. `keep-alive`, the usual one, is
    // in the fixed list already: a message whose Connection header says only that (nearly
    // every OP answer) builds no name and looks up nothing more.
    if present & 1 != 0 && !connection_is_keep_alive(headers) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| !name.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
}

/// An absolute target as it goes on the wire: its path and query only (origin-form).
fn to_origin_form(target: &mut Uri) {
    if target.scheme().is_some() || target.authority().is_some() {
        *target = match target.path_and_query() {
            Some(path_and_query) => Uri::from(path_and_query.clone()),
            None => Uri::from_static("/"),
        };
    }
}

/// Whether every `Connection` option is `keep-alive`, which is in [`HOP_BY_HOP`] already.
fn connection_is_keep_alive(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().all(|value| {
        let value = value.as_bytes();
        // The usual value whole, before taking it apart.
        value.eq_ignore_ascii_case(b"keep-alive")
            || value
                .split(|&b| b == b',')
                .all(|option| option.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
    })
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Forwarding headers a client may not set: the proxy writes its own or none.
const NOT_FORWARDED: [HeaderName; 3] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-real-ip"),
];

/// The `call` label of pass-through requests.
pub const PASSTHROUGH: &str = "passthrough";

/// The OP behind the proxy and how to address it.
pub struct Upstream {
    pool: Pool,
    /// Scheme and authority of the OP, plus any base path (without a trailing slash).
    base: String,
    /// The OP's scheme and authority (`None` for a base that is no URI, which every call then
    /// reports): where the pool connects.
    origin: Option<Uri>,
    /// Whether the base has no path: a public path and query is then the OP's as is.
    at_root: bool,
    /// The pass-through latency histogram, looked up once instead of on every request.
    passthrough_latency: OnceLock<Histogram>,
    public_host: HeaderValue,
    public_proto: HeaderValue,
    public_port: HeaderValue,
    /// Peers whose `X-Forwarded-For` chain is believed (the ingress in front of the proxy).
    trusted_proxies: Vec<IpNet>,
    timeout: Duration,
    /// The timers of `timeout`, re-armed from one call to the next.
    timers: Arc<TimerPool>,
    metrics: Metrics,
    /// Traces: each call is a client span whose `traceparent` the OP receives.
    telemetry: Telemetry,
}

impl Upstream {
    pub fn new(
        upstream_url: &Url,
        public_url: &Url,
        trusted_proxies: Vec<IpNet>,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        let base = upstream_url.as_str().trim_end_matches('/').to_owned();
        let host = public_url.host_str().unwrap_or("localhost");
        let port = public_url.port_or_known_default().unwrap_or(443);
        let authority = match public_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let header = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let parsed = base.parse::<Uri>().ok();
        let at_root = parsed
            .as_ref()
            .is_some_and(|uri| uri.path() == "/" && uri.query().is_none());
        let origin = parsed.and_then(|uri| {
            let parts = uri.into_parts();
            let mut origin = uri::Parts::default();
            origin.scheme = Some(parts.scheme?);
            origin.authority = Some(parts.authority?);
            origin.path_and_query = Some(PathAndQuery::from_static("/"));
            Uri::from_parts(origin).ok()
        });
        Self {
            pool: Pool::new(),
            base,
            origin,
            at_root,
            passthrough_latency: OnceLock::new(),
            public_host: header(&authority),
            public_proto: header(public_url.scheme()),
            public_port: HeaderValue::from(port),
            trusted_proxies,
            timeout,
            timers: TimerPool::new(),
            metrics,
            telemetry: Telemetry::off(),
        }
    }

    /// Connects to the OP with `tls` (its trust anchors: an OP behind an internal CA), on
    /// pass-through and the back channel alike.
    pub fn with_tls(mut self, tls: &rustls::ClientConfig) -> Self {
        self.pool = Pool::with_connector(pool::https_connector_with(tls.clone()));
        self
    }

    /// Traces every call (off unless given).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The OP's URI for a public path and query.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        format!("{}{}", self.base, path_and_query)
            .parse()
            .map_err(|e| UpstreamError::Connect(format!("bad upstream URI: {e}")))
    }

    /// Makes a public request target (its path and query starting with `/`) the OP's. With no
    /// base path the public path and query is the OP's: an origin-form target (what clients
    /// send) is left as it is, and an absolute-form one loses its scheme and authority.
    pub fn forward_target(&self, target: &mut Uri) -> Result<(), UpstreamError> {
        let path_and_query = target.path_and_query().map_or("/", PathAndQuery::as_str);
        if !self.at_root {
            *target = self.uri(path_and_query)?;
        } else {
            to_origin_form(target);
        }
        Ok(())
    }

    /// A target of the OP, origin-form or absolute, as an absolute URI (for a trace span).
    fn absolute(&self, target: &Uri) -> Uri {
        if target.scheme().is_some() {
            return target.clone();
        }
        let Some(origin) = &self.origin else {
            return target.clone();
        };
        let mut parts = uri::Parts::default();
        parts.scheme = origin.scheme().cloned();
        parts.authority = origin.authority().cloned();
        parts.path_and_query = target.path_and_query().cloned();
        Uri::from_parts(parts).unwrap_or_else(|_| target.clone())
    }

    /// Makes request headers fit for the OP: hop-by-hop headers out, and the forwarding
    /// headers set by us, never taken from the client, so the OP builds its public URLs (the
    /// issuer, redirects, DPoP `htu`) from the configured public origin. Only the client chain
    /// of `X-Forwarded-For` may come from a trusted proxy.
    pub fn prepare_headers(&self, headers: &mut HeaderMap, peer: IpAddr) {
        let forwarded_for = forwarded_for(headers, peer, &self.trusted_proxies);
        // Most requests carry none of these: one pass over the names instead of a lookup each.
        if headers
            .keys()
            .any(|name| is_hop_by_hop(name) || NOT_FORWARDED.contains(name))
        {
            strip_hop_by_hop(headers);
            for name in &NOT_FORWARDED {
                headers.remove(name);
            }
        }
        headers.insert(header::HOST, self.public_host.clone());
        headers.insert(X_FORWARDED_HOST.clone(), self.public_host.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), self.public_proto.clone());
        headers.insert(X_FORWARDED_PORT.clone(), self.public_port.clone());
        headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    }

    /// Sends a request as is (headers already prepared) and returns the streaming response.
    ///
    /// Not an `async fn`: one keeps each argument twice in its future, and this one is part of
    /// every pass-through request's. The request is handed to the pool before the future is
    /// built, so the future holds only the pool's (boxed) call and its timer.
    pub fn send<'a>(
        &'a self,
        mut request: Request<Body>,
        call: &'static str,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + 'a {
        // No span for a request that cannot be sent (a bad upstream URI).
        let span = if self.origin.is_some() && self.telemetry.is_on() {
            let (method, uri) = (request.method().clone(), self.absolute(request.uri()));
            self.telemetry.client(call, &method, &uri, request.headers_mut(), None)
        } else {
            None
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.timeout;
        // Boxed: the pool's future holds the request and its retry state (about 700 bytes), and
        // a future is copied whole at each level it is built and handed up through; a box
        // from the thread cache costs less than those copies.
        let sent = self.origin.as_ref().map(|origin| {
            self.timers
                .timeout(deadline, Box::pin(self.pool.send(request, origin, started)))
        });
        async move {
            let Some(sent) = sent else {
                return Err(UpstreamError::Connect(format!("bad upstream URI: {}", self.base)));
            };
            let result = sent.await;
            if span.is_some() {
                match &result {
                    Ok(Ok(response)) => telemetry::end_client(span, Ok(response.status())),
                    Ok(Err(e)) => telemetry::end_client(span, Err(e)),
                    Err(_) => telemetry::end_client(span, Err(&UpstreamError::Timeout)),
                }
            }
            if call == PASSTHROUGH {
                self.passthrough_latency
                    .get_or_init(|| self.metrics.upstream_histogram(PASSTHROUGH))
                    .observe(started.elapsed().as_secs_f64());
            } else {
                self.metrics.observe_upstream(call, started.elapsed());
            }
            match result {
                Err(_) => Err(UpstreamError::Timeout),
                Ok(result) => result,
            }
        }
    }

    /// A back-channel form POST to the OP (token endpoint), read whole.
    pub async fn post_form(
        &self,
        path: &str,
        form: String,
        forwarded: &HeaderMap,
        peer: IpAddr,
        call: &'static str,
    ) -> Result<BufferedReply, UpstreamError> {
        let mut request = Request::new(full(form));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri(path)?;
        let headers = request.headers_mut();
        for (name, value) in forwarded {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::CONTENT_TYPE, FORM_URLENCODED);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        self.prepare_headers(headers, peer);
        self.fetch(request, call).await
    }

    /// Sends a GET with the RP's headers and reads the reply whole; asks for it uncompressed,
    /// since the caller reads it.
    pub async fn get(
        &self,
        path_and_query: &str,
        incoming: &HeaderMap,
        peer: IpAddr,
        call: &'static str,
    ) -> Result<BufferedReply, UpstreamError> {
        let mut request = Request::new(empty());
        *request.uri_mut() = self.uri(path_and_query)?;
        let headers = request.headers_mut();
        for (name, value) in incoming {
            headers.append(name.clone(), value.clone());
        }
        headers.remove(header::ACCEPT_ENCODING);
        self.prepare_headers(headers, peer);
        self.fetch(request, call).await
    }

    /// Sends a request and reads the reply whole (bounded), all within the timeout.
    pub async fn fetch(&self, request: Request<Body>, call: &'static str) -> Result<BufferedReply, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = self.send(request, call).await?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout_at(deadline, read_limited(body, MAX_UPSTREAM_JSON))
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(|e| match e {
                crate::http::BodyError::TooLarge(_) => UpstreamError::TooLarge,
                other => UpstreamError::Failed(other.to_string()),
            })?;
        Ok(BufferedReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl OpClient for Upstream {
    fn post_form<'a>(
        &'a self,
        path: &'a str,
        form: String,
        forwarded: &'a HeaderMap,
        peer: IpAddr,
        call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(Upstream::post_form(self, path, form, forwarded, peer, call))
    }

    fn get<'a>(
        &'a self,
        path_and_query: &'a str,
        headers: &'a HeaderMap,
        peer: IpAddr,
        call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(Upstream::get(self, path_and_query, headers, peer, call))
    }

    fn send_own<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        headers: HeaderMap,
        body: Bytes,
        call: &'static str,
    ) -> BoxFuture<'a, Result<BufferedReply, UpstreamError>> {
        Box::pin(async move {
            let mut request = Request::new(full(body));
            *request.method_mut() = method;
            *request.uri_mut() = self.uri(path)?;
            *request.headers_mut() = headers;
            // The proxy's own call: from loopback as far as the forwarding headers go.
            self.prepare_headers(request.headers_mut(), IpAddr::from([127, 0, 0, 1]));
            self.fetch(request, call).await
        })
    }
}

/// The peer as the OP should see it: an IPv4 client of a dual-stack listener as IPv4.
fn canonical(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    }
}

/// The `X-Forwarded-For` the OP receives: the peer alone, unless the peer is a trusted proxy,
/// whose chain (every incoming field, in order) is kept with the peer appended. A client's own
/// claim about its address is never believed.
fn forwarded_for(incoming: &HeaderMap, peer: IpAddr, trusted_proxies: &[IpNet]) -> HeaderValue {
    let peer = canonical(peer);
    let own = ip_header(peer);
    if !trusted_proxies.iter().any(|net| net.contains(&peer)) {
        return own;
    }
    let chain: Vec<&[u8]> = incoming
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .filter(|v| !v.trim_ascii().is_empty())
        .collect();
    if chain.is_empty() {
        return own;
    }
    let mut joined = chain.join(&b", "[..]);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(own.as_bytes());
    HeaderValue::from_bytes(&joined).unwrap_or(own)
}

/// An address as a header value; IPv4 without the formatting machinery (it is on every
/// pass-through request).
fn ip_header(peer: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = peer else {
        return HeaderValue::from_str(&peer.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A whole reply from the OP.
#[derive(Debug, Clone)]
pub struct BufferedReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl BufferedReply {
    pub fn json(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_chain(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&X_FORWARDED_FOR, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn addresses_are_written_as_displayed() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.10.9",
            "::1",
            "fd00::1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_header(ip), text);
        }
    }

    #[test]
    fn a_forwarded_uri_is_the_base_and_the_path() {
        let metrics = Metrics::new();
        let public: Url = "https://id.example.com".parse().unwrap();
        let timeout = Duration::from_secs(1);
        let pq = PathAndQuery::from_static("/realms/a/x?b=c&d");
        for (base, expected) in [
            ("http://kc:8080", "http://kc:8080/realms/a/x?b=c&d"),
            ("http://kc:8080/", "http://kc:8080/realms/a/x?b=c&d"),
            ("https://kc", "https://kc/realms/a/x?b=c&d"),
            ("http://kc:8080/auth", "http://kc:8080/auth/realms/a/x?b=c&d"),
            ("http://kc:8080/auth/", "http://kc:8080/auth/realms/a/x?b=c&d"),
        ] {
            let upstream = Upstream::new(&base.parse().unwrap(), &public, vec![], timeout, metrics.clone());
            assert_eq!(upstream.uri(pq.as_str()).unwrap().to_string(), expected, "{base}");
            // Origin-form, as clients send it, and absolute-form, whose authority is not ours.
            for sent in ["/realms/a/x?b=c&d", "http://elsewhere/realms/a/x?b=c&d"] {
                let mut target: Uri = sent.parse().unwrap();
                upstream.forward_target(&mut target).unwrap();
                assert_eq!(upstream.absolute(&target).to_string(), expected, "{base} {sent}");
                let at_root = !base.contains("/auth");
                assert_eq!(target.scheme().is_none(), at_root, "{base} {sent}");
            }
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert(
            HeaderName::from_static("keep-alive"),
            HeaderValue::from_static("timeout=5"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));

        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("close, X-Secret"));
        headers.append(header::CONNECTION, HeaderValue::from_static("te"));
        headers.insert(HeaderName::from_static("x-secret"), HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(
            HeaderName::from_static("proxy-connection"),
            HeaderValue::from_static("x"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(header::TRAILER, HeaderValue::from_static("x"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"1\""));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), [header::ETAG]);

        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"1\""));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);

        // Only keep-alive named: the fixed list goes, nothing else.
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive, keep-alive"));
        headers.insert(
            HeaderName::from_static("keep-alive"),
            HeaderValue::from_static("timeout=5"),
        );
        headers.insert(header::ETAG, HeaderValue::from_static("\"1\""));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), [header::ETAG]);

        // Another option beside it still names a header; `close` too.
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.append(header::CONNECTION, HeaderValue::from_static(" X-Secret ,close"));
        headers.insert(HeaderName::from_static("x-secret"), HeaderValue::from_static("1"));
        headers.insert(HeaderName::from_static("close"), HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn untrusted_peer_replaces_the_chain() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(forwarded_for(&with_chain(&["1.2.3.4"]), peer, &trusted), "203.0.113.9");
        assert_eq!(forwarded_for(&with_chain(&["1.2.3.4"]), peer, &[]), "203.0.113.9");
    }

    #[test]
    fn trusted_peer_keeps_the_chain_and_appends_itself() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            forwarded_for(&with_chain(&["198.51.100.1, 10.9.9.9", "10.8.8.8"]), peer, &trusted),
            "198.51.100.1, 10.9.9.9, 10.8.8.8, 10.1.2.3"
        );
        assert_eq!(forwarded_for(&HeaderMap::new(), peer, &trusted), "10.1.2.3");
        // An IPv4 peer on a dual-stack listener is matched and written as IPv4.
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            forwarded_for(&with_chain(&["1.1.1.1"]), mapped, &trusted),
            "1.1.1.1, 10.1.2.3"
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            forwarded_for(&with_chain(&["1.1.1.1"]), v6, &trusted),
            "1.1.1.1, fd00::1"
        );
    }
}
