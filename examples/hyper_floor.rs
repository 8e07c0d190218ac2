//! The least a reverse proxy on hyper does: an HTTP/1.1 server whose every request goes, head
//! and body streamed, to one upstream over a keep-alive pool of hyper client connections, and
//! whose answer streams back. No header rewriting, no timeouts, no metrics, no routing.
//!
//! It is the floor of the stack dtr-proxy is built on: `bench/vs_nginx.py --floor` measures it
//! beside nginx and dtr-proxy, so the pass-through figures show which part of the gap to nginx
//! is hyper's own and which part is the proxy's.
//!
//!   cargo run --release --example hyper_floor -- 127.0.0.1:18183 127.0.0.1:18180

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Sender = client::SendRequest<Incoming>;
type Error = Box<dyn std::error::Error + Send + Sync>;

struct Pool {
    upstream: SocketAddr,
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    async fn send(&self, request: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let ready = {
            let mut idle = self.idle.lock().expect("pool lock");
            idle.retain(|sender| !sender.is_closed());
            idle.iter().rposition(Sender::is_ready).map(|i| idle.swap_remove(i))
        };
        let mut sender = match ready {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let response = sender.send_request(request);
        self.idle.lock().expect("pool lock").push(sender);
        Ok(response.await?)
    }

    /// A new connection to the upstream; one that cannot be made is the request's 502.
    async fn connect(&self) -> Result<Sender, Error> {
        let stream = TcpStream::connect(self.upstream).await?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = client::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR: host:port");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM_ADDR: host:port");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        let pool = Arc::new(Pool {
            upstream,
            idle: Mutex::new(Vec::new()),
        });
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut request: Request<Incoming>| {
                    let pool = pool.clone();
                    async move {
                        if let Some(path) = request.uri().path_and_query() {
                            *request.uri_mut() = Uri::from(path.clone());
                        }
                        Ok::<_, Infallible>(match pool.send(request).await {
                            Ok(response) => response.map(http_body_util::Either::Left),
                            Err(_) => {
                                let mut response = Response::new(http_body_util::Either::Right(
                                    http_body_util::Empty::<bytes::Bytes>::new(),
                                ));
                                *response.status_mut() = StatusCode::BAD_GATEWAY;
                                response
                            }
                        })
                    }
                });
                let _ = server::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
