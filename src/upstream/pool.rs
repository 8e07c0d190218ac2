//! The connections to the OP: a lean HTTP/1.1 keep-alive pool for pass-through and the back
//! channel, and the general-purpose pooled client for everything else (pings, key sets).

use std::future::Future;
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use super::{error_chain, HttpClient, UpstreamError};
use crate::http::Body;

/// A pooled HTTP(S) client: HTTP/1.1 to the OP (what Keycloak speaks behind a proxy), TLS by
/// rustls on aws-lc-rs with the system's roots (Mozilla's when the system has none).
pub fn http_client() -> HttpClient {
    pooled(https_connector())
}

/// [`http_client`] with a TLS configuration of its own (other trust anchors, a client
/// certificate).
pub fn http_client_with(tls: rustls::ClientConfig) -> HttpClient {
    pooled(https_connector_with(tls))
}

fn pooled(connector: HttpsConnector<HttpConnector>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// The connections to the OP: HTTP/1.1 with keep-alive, at most [`MAX_IDLE`] kept; one unused
/// for [`IDLE_TIMEOUT`] is dropped when the pool next looks at it. A request goes to the most recently used connection
/// that is ready, or to a new one; a request that a connection closed before taking it is sent
/// again on a new connection (nothing of it reached the OP).
///
/// Leaner per request than the general-purpose pooled client (no per-host map, no checkout
/// race against a connect, no task to return a connection): the pass-through path pays for it
/// on every request.
pub(super) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// Senders of open connections, busy or ready, most recently used last.
    idle: Mutex<Vec<Pooled>>,
}

struct Pooled {
    sender: http1::SendRequest<Body>,
    used: Instant,
}

const MAX_IDLE: usize = 256;
/// Largest read buffer of one connection (hyper's default is about 400 KiB). A large asset
/// streams through in reads of at most this much, and a response head must fit in it: room
/// for Keycloak's largest cookie sets many times over.
const MAX_READ_BUFFER: usize = 128 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// New connections tried for one request whose connection closed before taking it.
const MAX_RETRIES: usize = 3;
/// A connection idle this long may be closing at the OP's end just as a request goes out on
/// it (Node's and Apache's keep-alive timeout is 5 s): the OP then closes without an answer,
/// having read the request or not. A bodiless GET, HEAD or OPTIONS sent on such a connection
/// is kept, and sent once more on a new connection if that happens (as nginx's
/// `proxy_next_upstream error` and Go's transport do for idempotent requests). Any other
/// request cannot be sent twice, so it never goes on such a connection: it takes a fresher
/// one or a new one, and the stale ones stay for GETs. A stalled process (a paused VM, a
/// long collection) can otherwise find its connection closing only as its POST goes out.
/// Busier connections are never that old, so the hot path copies nothing.
const STALE_AFTER: Duration = Duration::from_secs(1);

impl Pool {
    pub(super) fn new() -> Self {
        Self::with_connector(https_connector())
    }

    pub(super) fn with_connector(connector: HttpsConnector<HttpConnector>) -> Self {
        Self {
            connector,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A ready connection from the pool and how long it sat unused at `now`, dropping closed
    /// and expired ones on the way; one idle for `STALE_AFTER` or more only if `stale_ok`
    /// (others are left in the pool).
    fn checkout(&self, now: Instant, stale_ok: bool) -> Option<(http1::SendRequest<Body>, Duration)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let pooled = &idle[i];
            if pooled.sender.is_closed() {
                idle.swap_remove(i);
            } else if pooled.sender.is_ready() {
                let idle_for = now.saturating_duration_since(pooled.used);
                if idle_for > IDLE_TIMEOUT {
                    idle.swap_remove(i);
                } else if stale_ok || idle_for < STALE_AFTER {
                    return Some((idle.swap_remove(i).sender, idle_for));
                }
            }
        }
        None
    }

    /// Back into the pool as soon as a request is handed to it: the connection is ready
    /// again once the response has been read, which `checkout` sees.
    fn put(&self, sender: http1::SendRequest<Body>, used: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Pooled { sender, used });
        }
    }

    async fn connect(&self, uri: &Uri) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(e.as_ref())))?;
        // Unwrapped: every read and write through `MaybeHttpsStream` matches on its kind, and
        // the sender's type does not depend on the stream's.
        match io {
            MaybeHttpsStream::Http(tcp) => handshake(tcp).await,
            MaybeHttpsStream::Https(tls) => handshake(tls).await,
        }
    }

    /// Sends a request to `origin` (the OP's scheme and authority) on a pooled connection; its
    /// target is origin-form, or an absolute URI of the OP's. `now` is the caller's clock read
    /// (it times the call): the pool reads no clock of its own unless it connects. The request
    /// carries its `Host` already.
    ///
    /// Not an `async fn`: one keeps each argument twice in its future (where the caller put it,
    /// and the body's own copy), and this future is boxed and so copied whole once per request.
    /// The block below uses its captures in place.
    #[allow(clippy::manual_async_fn)] // for the future's size, as said
    pub(super) fn send<'a>(
        &'a self,
        mut request: Request<Body>,
        origin: &'a Uri,
        mut now: Instant,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + 'a {
        async move {
            // Every caller has set it (`Upstream::prepare_headers`): the proxy's public host.
            debug_assert!(
                request.headers().contains_key(header::HOST),
                "a request to the OP without Host"
            );
            super::to_origin_form(request.uri_mut());
            let replayable = is_replayable(&request);
            let mut fresh = 0;
            let mut replayed = false;
            for _ in 0..MAX_IDLE + MAX_RETRIES {
                let pooled = if replayed { None } else { self.checkout(now, replayable) };
                let (mut sender, idle_for) = match pooled {
                    Some(pooled) => pooled,
                    None => {
                        fresh += 1;
                        // Boxed: connecting (TCP, TLS, the handshake) is rare, and its state would
                        // otherwise make every request's future as large as itself.
                        let sender = Box::pin(self.connect(origin)).await?;
                        now = Instant::now();
                        (sender, Duration::ZERO)
                    }
                };
                // Boxed: rare (a connection idle a while), and held across the wait for the answer.
                let replay =
                    (replayable && !replayed && idle_for >= STALE_AFTER).then(|| Box::new(replayable_copy(&request)));
                let response = sender.try_send_request(request);
                self.put(sender, now);
                match response.await {
                    Ok(response) => return Ok(response),
                    Err(mut e) => match (e.take_message(), replay) {
                        // Not taken by the connection (it closed first): nothing reached the OP.
                        (Some(unsent), _) if fresh <= MAX_RETRIES => request = unsent,
                        // Taken, and the stale connection closed without an answer.
                        (None, Some(copy)) if closed_unanswered(e.error()) => {
                            tracing::debug!(error = %error_chain(e.error()), "stale upstream connection closed; sending again on a new one");
                            request = *copy;
                            replayed = true;
                        }
                        _ => return Err(UpstreamError::Failed(error_chain(e.error()))),
                    },
                }
                // Sent again: the answer's wait has passed since the clock was read.
                now = Instant::now();
            }
            Err(UpstreamError::Failed("no usable connection to the OP".into()))
        }
    }
}

/// Opens HTTP/1.1 on a connected stream; the connection runs in a task of its own.
async fn handshake<I>(io: I) -> Result<http1::SendRequest<Body>, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .max_buf_size(MAX_READ_BUFFER)
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Whether a request is safe to send twice: GET, HEAD or OPTIONS without a body.
fn is_replayable(request: &Request<Body>) -> bool {
    use hyper::body::Body as _;
    let method = request.method();
    (method == Method::GET || method == Method::HEAD || method == Method::OPTIONS) && request.body().is_end_stream()
}

/// A copy of a request that [`is_replayable`], to send again.
fn replayable_copy(request: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(crate::http::full(Bytes::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether a connection ended before any answer: closed mid-message, reset or broken.
fn closed_unanswered(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        source = e.source();
    }
    false
}

/// The connector every client shares: the system's root certificates are read and parsed
/// once (they were read three times at start, for the OP pool, the pings and the JWKS fetches).
pub(super) fn https_connector() -> HttpsConnector<HttpConnector> {
    static CONNECTOR: OnceLock<HttpsConnector<HttpConnector>> = OnceLock::new();
    CONNECTOR.get_or_init(new_https_connector).clone()
}

/// A connector with a TLS configuration of its own (other trust anchors).
pub(super) fn https_connector_with(tls: rustls::ClientConfig) -> HttpsConnector<HttpConnector> {
    HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http_connector())
}

fn http_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http
}

fn new_https_connector() -> HttpsConnector<HttpConnector> {
    let http = http_connector();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
        Ok(builder) => builder,
        Err(_) => match HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider) {
            Ok(builder) => builder,
            Err(e) => unreachable!("aws-lc-rs supports the default protocol versions: {e}"),
        },
    };
    builder.https_or_http().enable_http1().wrap_connector(http)
}
