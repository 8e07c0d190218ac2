//! Listeners, connections and graceful shutdown: the socket side of both ports.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::drain::Drain;
use crate::timers::HyperTimer;
use crate::tls::ClientCertificate;

/// What a connection may cost before it sends a request.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
}

/// Serves HTTP/1 and HTTP/2 on `listener` with `handler` until `shutdown` flips, then drains
/// for up to `grace`. With `tls`, each connection first completes a TLS handshake (within the
/// header read timeout), and HTTP/2 or HTTP/1.1 is chosen by ALPN.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    grace: Duration,
    tls: Option<Arc<ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<crate::http::Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The header read timeout re-arms pooled timers: hyper asks for a new one per request.
        .timer(HyperTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Keycloak's cookies are large: room for the configured header total. More than this,
        // or more than 100 fields (hyper's default, and Envoy's), is answered 431 by hyper. A
        // limit of its own would make hyper allocate its two parse arrays on the heap for every
        // request (two of 6.4 KiB at 200 fields); at the default they are on the stack.
        .max_buf_size(limits.max_header_bytes.max(8192) + 16 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let tls = tls.map(|config| (TlsAcceptor::from(config), Arc::new(builder.clone())));
    let drain = Drain::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        // Wrapped so that a connection ended while its client is still sending lingers instead
        // of answering the unread bytes with a reset (see `linger`).
        let stream = super::linger::Linger::new(stream);
        let Some((acceptor, builder)) = &tls else {
            let (service, requested) = service(handler.clone(), peer, None);
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            tokio::spawn(drive(drain.member().watch(connection), requested, limits, peer));
            continue;
        };
        let handshake = acceptor.accept(stream);
        let (builder, member, handler) = (builder.clone(), drain.member(), handler.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within the header read timeout; closing");
                    return;
                }
            };
            // A client certificate the listener verified (it asks for one when it has client
            // CAs): every request of the connection carries its thumbprint.
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| ClientCertificate::from_der(leaf));
            let (service, requested) = service(handler, peer, certificate);
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            drive(member.watch(connection), requested, limits, peer).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, drain.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// The service of one connection, and whether it has seen a request yet. The connection's
/// verified client certificate, if any, goes into every request's extensions.
#[allow(clippy::type_complexity)] // an unnameable closure type, spelled out by its bounds
fn service<F, Fut>(
    handler: F,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
) -> (
    impl hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<crate::http::Body>,
            Error = std::convert::Infallible,
            Future = impl Future<Output = Result<hyper::Response<crate::http::Body>, std::convert::Infallible>> + Send,
        > + Clone
        + Send
        + 'static,
    Arc<AtomicBool>,
)
where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<crate::http::Body>> + Send + 'static,
{
    let requested = Arc::new(AtomicBool::new(false));
    let requested_in_service = requested.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        if let Some(certificate) = &certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        requested_in_service.store(true, Ordering::Relaxed);
        // Boxed once here: hyper stores the service's future and moves it as it goes; a box is
        // one pointer. Even with the answer itself boxed deeper in, the handler's future (the
        // access log's timing around it) costs more to move than to box.
        let response = Box::pin(handler(request, peer));
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    (service, requested)
}

/// Runs one connection to its end.
async fn drive<C, E>(connection: C, requested: Arc<AtomicBool>, limits: Limits, peer: SocketAddr)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    // hyper's header read timeout starts once HTTP/1 is chosen; the auto builder first
    // waits for the bytes that tell HTTP/1 from HTTP/2, without a limit. A client that
    // connects and sends nothing (or a partial HTTP/2 preface) must not hold a
    // connection forever. Once a request has come, the timer is dropped: polled beside the
    // connection, it cost a timer check at every wake-up of every request after the first.
    let mut first_request = Some(Box::pin(tokio::time::sleep(limits.header_read_timeout)));
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        if let Some(timer) = &mut first_request {
            if requested.load(Ordering::Relaxed) {
                first_request = None;
            } else if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await;
    match result {
        None => tracing::debug!(%peer, "no request within the header read timeout; closing"),
        Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Some(Ok(())) => {}
    }
}
