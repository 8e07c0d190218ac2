//! Listeners, connections and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::{admin, ping, proxy};

/// Header fields accepted in one HTTP/1 request; more is answered 431.
const MAX_HEADERS: usize = 200;

#[derive(Default)]
pub struct Readiness {
    pub draining: AtomicBool,
}

/// A running proxy.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
    readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Binds the configured addresses and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let public = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            source,
        })?;
    start_on(config, public, admin).await
}

/// Starts serving on listeners bound by the caller (tests bind port 0 first).
pub async fn start_on(config: Config, public: TcpListener, admin: TcpListener) -> Result<Running, StartError> {
    let app = App::new(config)?;
    let readiness = Arc::new(Readiness::default());
    let (shutdown, watcher) = watch::channel(false);
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let proxy_app = app.clone();
    let public_task = tokio::spawn(serve(
        public,
        Limits {
            max_header_bytes: app.config.max_header_bytes,
            header_read_timeout: app.config.header_read_timeout,
        },
        app.config.shutdown_grace,
        watcher.clone(),
        move |request, peer| proxy::handle(proxy_app.clone(), request, peer),
    ));
    let admin_app = app.clone();
    let admin_readiness = readiness.clone();
    let admin_task = tokio::spawn(serve(
        admin,
        Limits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: app.config.header_read_timeout,
        },
        app.config.shutdown_grace,
        watcher.clone(),
        move |request, _peer| admin::handle(admin_app.clone(), admin_readiness.clone(), request),
    ));
    let ping_task = tokio::spawn(ping::run(app.clone(), watcher));
    tracing::info!(%public_addr, %admin_addr, store = app.store().kind(), "dtr-proxy serving");
    Ok(Running {
        public_addr,
        admin_addr,
        app,
        readiness,
        shutdown,
        tasks: vec![public_task, admin_task, ping_task],
    })
}

impl Running {
    /// Stops taking connections and waits (up to the grace period) for those in flight.
    pub async fn shutdown(self) {
        self.readiness.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Marks the replica unready (so Kubernetes stops routing to it) without stopping yet.
    pub fn begin_draining(&self) {
        self.readiness.draining.store(true, Ordering::Relaxed);
    }
}

/// What a connection may cost before it sends a request.
#[derive(Clone, Copy)]
struct Limits {
    max_header_bytes: usize,
    header_read_timeout: Duration,
}

async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<crate::http::Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Keycloak's cookies are large: room for the configured header total. More than this,
        // or more than MAX_HEADERS fields, is answered 431 by hyper.
        .max_buf_size(limits.max_header_bytes.max(8192) + 16 * 1024)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
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
        let handler = handler.clone();
        let requested = Arc::new(AtomicBool::new(false));
        let requested_in_service = requested.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            requested_in_service.store(true, Ordering::Relaxed);
            async move { Ok::<_, std::convert::Infallible>(handler(request, peer).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::pin!(connection);
            // hyper's header read timeout starts once HTTP/1 is chosen; the auto builder first
            // waits for the bytes that tell HTTP/1 from HTTP/2, without a limit. A client that
            // connects and sends nothing (or a partial HTTP/2 preface) must not hold a
            // connection forever.
            let result = tokio::select! {
                result = &mut connection => result,
                _ = tokio::time::sleep(limits.header_read_timeout) => {
                    if !requested.load(Ordering::Relaxed) {
                        tracing::debug!(%peer, "no request within the header read timeout; closing");
                        return;
                    }
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}
