//! The public port. DTR requests are recognised by path and parameters and handled in the
//! protocol module (request filters); the authorization rewrite is an upstream request filter
//! and the acknowledgment an upstream response filter. Everything else is streamed straight
//! through to the OP over pooled connections.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use crate::client_auth::ClientCredentials;
use crate::clock::now_ms;
use crate::dpop::DpopVerifier;
use crate::endpoints::acknowledge::{self, Acknowledge};
use crate::endpoints::authorize::{Authorization, Authorize};
use crate::endpoints::cancel::{self, Cancel};
use crate::endpoints::discovery::Discovery;
use crate::endpoints::federated::FederatedRequests;
use crate::endpoints::respond::error_page;
use crate::endpoints::token::{self, DeferredGrant, POLL_ROUTE};
use crate::http::{full, media_type, plain, read_request_body, Body, BodyError, IntoBody, FORM_URLENCODED};
use crate::metrics::{AnswerCounters, Metrics};
use crate::protocol::errors::{OAuthError, Source};
use crate::protocol::params::Params;
use crate::protocol::routes::{Endpoint, Routes};
use crate::protocol::wire;
use crate::telemetry::{self, FutureExt as _, KeyValue, Telemetry};
use crate::tls::{ClientCertificate, ForwardedCertificates};
use crate::upstream::{strip_hop_by_hop, Upstream, UpstreamError, PASSTHROUGH};

/// What a request to the public port may cost.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// `DTR_MAX_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// `DTR_MAX_BODY_BYTES`, for the small DTR bodies the proxy reads.
    pub max_body_bytes: usize,
    /// `DTR_BODY_READ_TIMEOUT`.
    pub body_read_timeout: Duration,
}

/// The public port as a value: built from its endpoints and the pass-through upstream, and
/// callable with any request body, so tests drive it without a socket.
pub struct PublicService {
    pub routes: Routes,
    pub upstream: Arc<Upstream>,
    pub authorize: Authorize,
    pub acknowledge: Acknowledge,
    pub token: DeferredGrant,
    pub cancel: Cancel,
    pub discovery: Discovery,
    /// Federated clients at the token and cancellation endpoints, when configured.
    pub federated: Option<FederatedRequests>,
    pub dpop: DpopVerifier,
    pub metrics: Metrics,
    /// What a pending poll counts ([`Metrics::answer_counters`]).
    pub pending_polls: AnswerCounters,
    pub limits: RequestLimits,
    /// Traces (off unless configured): a server span per request.
    pub telemetry: Telemetry,
    /// Client certificates passed on by a trusted ingress; every other certificate header is
    /// stripped.
    pub forwarded_certificates: ForwardedCertificates,
}

impl PublicService {
    pub async fn handle<B: IntoBody>(&self, request: Request<B>, peer: SocketAddr) -> Response<Body> {
        self.handle_routed(request, peer).1.await
    }

    /// [`Self::handle`], also saying which DTR endpoint the path named (`None`: pass-through),
    /// so the access log labels the request without classifying its path a second time.
    ///
    /// Routing is done here, before any await, and the answer comes as a boxed future: a
    /// future is copied whole wherever it is built and handed up, and this one, holding the
    /// request and the routing state, was copied at every level between hyper and the OP.
    pub fn handle_routed<B: IntoBody>(
        &self,
        request: Request<B>,
        peer: SocketAddr,
    ) -> (Option<Endpoint>, BoxFuture<'_, Response<Body>>) {
        let mut request = request.map(IntoBody::into_body);
        // A certificate from the handshake is the listener's; one from a header only a trusted
        // ingress may give. Either reaches the endpoints as an extension.
        let peer_ip = peer.ip();
        if let Some(certificate) = self.forwarded_certificates.take(request.headers_mut(), peer_ip) {
            if request.extensions().get::<ClientCertificate>().is_none() {
                request.extensions_mut().insert(certificate);
            }
        }
        let route = self
            .routes
            .classify(request.uri().path())
            .map(|(e, realm)| (e, realm.to_owned()));
        let endpoint = route.as_ref().map(|(e, _)| *e);
        if self.telemetry.is_on() {
            return (endpoint, Box::pin(self.traced(route, request, peer)));
        }
        (endpoint, self.dispatch(route, request, peer))
    }

    /// [`Self::dispatch`] inside the request's server span.
    async fn traced(
        &self,
        route: Option<(Endpoint, String)>,
        request: Request<Body>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let label = route_label(route.as_ref().map(|(e, _)| *e));
        let Some(cx) = self
            .telemetry
            .server(request.headers(), request.method(), request.uri().path(), label)
        else {
            return self.dispatch(route, request, peer).await;
        };
        // The pass-through hands its request to the upstream, opening the client span, while
        // its future is built rather than when it is first polled: the server span must be
        // the current one for that too.
        let dispatched = {
            let _current = cx.clone().attach();
            self.dispatch(route, request, peer)
        };
        let response = dispatched.with_context(cx.clone()).await;
        telemetry::end_server(&cx, response.status());
        response
    }

    /// The client a DTR request names (its `client_id` parameter or its client
    /// authentication), on the request's span.
    fn note_client(&self, headers: &http::HeaderMap, params: &Params) {
        self.telemetry.note(|| {
            let client_id = params
                .get("client_id")
                .map(str::to_owned)
                .or_else(|| ClientCredentials::extract(headers, params).ok().map(|c| c.client_id));
            client_id
                .map(|id| vec![KeyValue::new("dtr.client_id", id)])
                .unwrap_or_default()
        });
    }

    /// What became of a DTR request, on its span.
    fn note_outcome(&self, step: &'static str, outcome: &'static str) {
        self.telemetry
            .note(|| vec![KeyValue::new("dtr.step", step), KeyValue::new("dtr.outcome", outcome)]);
    }

    /// The answer to a routed request: one boxed future per request, whichever the endpoint
    /// (one allocation, a thread-cache hit; each endpoint's future is as large as it needs and
    /// no other request's future is sized by it).
    fn dispatch(
        &self,
        route: Option<(Endpoint, String)>,
        request: Request<Body>,
        peer: SocketAddr,
    ) -> BoxFuture<'_, Response<Body>> {
        if header_bytes(request.headers()) > self.limits.max_header_bytes {
            // hyper's read buffer bounds memory only roughly (it has room for a request line and
            // a partial read on top); the configured total is the rule. A body still on its way
            // is read and dropped (bounded) first, so the client sees the 431, not a reset.
            self.metrics.request("passthrough", "client_error");
            let timeout = self.limits.body_read_timeout;
            return Box::pin(async move {
                let _ = read_request_body(request.into_body(), 0, timeout).await;
                plain(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "Request headers too large.\n",
                )
            });
        }
        let method = request.method().clone();
        match (route, method) {
            (Some((Endpoint::Authorization, realm)), Method::GET | Method::POST) => {
                Box::pin(async move { self.authorization(&realm, request, peer).await })
            }
            (Some((Endpoint::Token, realm)), Method::POST) => {
                Box::pin(async move { self.token_endpoint(&realm, request, peer).await })
            }
            (Some((Endpoint::PushedAuthorization, realm)), Method::POST) => {
                Box::pin(async move { self.pushed_authorization(&realm, request, peer).await })
            }
            (Some((Endpoint::Cancellation, realm)), Method::POST) => {
                Box::pin(async move { self.cancellation(&realm, request, peer).await })
            }
            (Some((Endpoint::Revocation, realm)), Method::POST) => {
                Box::pin(async move { self.revocation(&realm, request, peer).await })
            }
            (Some((Endpoint::Cancellation, _)), _) => {
                let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                Box::pin(std::future::ready(response))
            }
            (Some((Endpoint::Discovery, realm)), Method::GET) => Box::pin(async move {
                let (parts, _) = request.into_parts();
                self.discovery.handle(&realm, &parts, peer.ip()).await
            }),
            _ => Box::pin(self.forward(request, peer)),
        }
    }

    /// The one place a DTR endpoint's result becomes an answer: errors are rendered, counted
    /// and logged here, and every answer offers the current DPoP nonce.
    fn finish(&self, route: &'static str, result: Result<Response<Body>, OAuthError>) -> Response<Body> {
        let mut response = match result {
            Ok(response) => {
                self.note_outcome(route, "ok");
                self.metrics.request(route, "ok");
                if route == POLL_ROUTE {
                    self.metrics.poll(if response.status().is_success() {
                        "delivered"
                    } else {
                        "op_refused"
                    });
                }
                response
            }
            Err(e) => {
                e.log(route);
                self.note_outcome(route, e.error);
                if route == POLL_ROUTE && e.error == wire::error::AUTHORIZATION_PENDING && e.source == Source::Client {
                    self.pending_polls.inc();
                } else {
                    self.metrics.request(route, e.source.label());
                    if route == POLL_ROUTE {
                        self.metrics.poll(e.error);
                    }
                }
                e.into_response()
            }
        };
        self.dpop.offer_nonce(response.headers_mut(), now_ms() / 1000);
        response
    }

    /// Forwards a request to the OP and streams the answer back, turning a redirect that carries
    /// one of our handles into the RP's acknowledgment.
    ///
    /// Not an `async fn`: one keeps each argument twice in its future, and this future is boxed
    /// (copied whole) for every pass-through request. The request is checked and handed to
    /// the upstream before the future is built; the future holds only that call.
    pub fn forward(
        &self,
        request: Request<Body>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        let sent = self.send_on(request, peer);
        async move {
            let sent = match sent {
                Ok(sent) => sent,
                Err(refused) => return *refused,
            };
            match sent.await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    if parts.status.is_redirection()
                        && parts
                            .headers
                            .get(header::LOCATION)
                            .is_some_and(acknowledge::carries_handle)
                    {
                        return Box::pin(self.acknowledge.handle(parts)).await;
                    }
                    Response::from_parts(parts, body.into_body())
                }
                Err(e) => self.upstream_failure(&e),
            }
        }
    }

    /// The synchronous half of [`Self::forward`]: the request as the OP gets it, handed to the
    /// upstream, or (boxed: rare, and it would double the size of every pass-through future)
    /// the answer to a request that names nothing to forward.
    fn send_on(
        &self,
        request: Request<Body>,
        peer: SocketAddr,
    ) -> Result<
        impl Future<Output = Result<Response<hyper::body::Incoming>, UpstreamError>> + Send + '_,
        Box<Response<Body>>,
    > {
        let (mut parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            // Not a forward proxy: a tunnel request is the client's mistake, not an OP failure.
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
            );
            return Err(Box::new(response));
        }
        // Only origin-form (and absolute-form, whose authority is ignored) names an OP path;
        // `OPTIONS *` and authority-form have no path to forward.
        let names_a_path = parts.uri.path_and_query().is_some_and(|p| p.as_str().starts_with('/'));
        if !names_a_path || self.upstream.forward_target(&mut parts.uri).is_err() {
            return Err(Box::new(plain(StatusCode::BAD_REQUEST, "bad request target\n")));
        }
        if parts.version == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        // Keycloak speaks HTTP/1.1 behind a proxy, whatever the client spoke to us.
        parts.version = Version::HTTP_11;
        self.upstream.prepare_headers(&mut parts.headers, peer.ip());
        Ok(self.upstream.send(Request::from_parts(parts, body), PASSTHROUGH))
    }

    fn upstream_failure(&self, e: &UpstreamError) -> Response<Body> {
        tracing::warn!(error = %e, "pass-through to the OP failed");
        self.metrics.request("passthrough", "upstream_error");
        let status = match e {
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let mut response = plain(
            status,
            "The identity provider is unavailable. Please try again shortly.\n",
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(2));
        response
    }
}

/// Size of the request headers as sent in HTTP/1.1 (`name: value\r\n`).
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 needs one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let cookies: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()).collect();
    if cookies.len() < 2 {
        return;
    }
    let joined = cookies.join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

impl PublicService {
    async fn read_small_body(&self, body: Body) -> Result<Bytes, OAuthError> {
        read_request_body(body, self.limits.max_body_bytes, self.limits.body_read_timeout)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(limit) => OAuthError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    wire::error::INVALID_REQUEST,
                    format!("The request body exceeds {limit} bytes."),
                ),
                BodyError::TimedOut(_) => OAuthError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    wire::error::INVALID_REQUEST,
                    "The request body was not received in time.",
                ),
                BodyError::Read(detail) => {
                    OAuthError::invalid_request(format!("The request body could not be read: {detail}"))
                }
            })
    }

    async fn authorization(&self, realm: &str, request: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let is_post = parts.method == Method::POST;
        let raw = if is_post {
            match self.read_small_body(body).await {
                Ok(bytes) => bytes,
                Err(e) => return error_page(e.status, &e.description),
            }
        } else {
            Bytes::copy_from_slice(parts.uri.query().unwrap_or("").as_bytes())
        };
        // Only a request that can be DTR is parsed (strictly); all else reaches the OP untouched.
        let outcome = if mentions_deferred(&raw) || (self.federated.is_some() && mentions_url_client(&raw)) {
            match Params::parse(&raw) {
                Ok(params) => {
                    self.note_client(&parts.headers, &params);
                    self.authorize.handle(realm, &params).await
                }
                Err(e) => Authorization::Respond(error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid sign-in request: {e}."),
                )),
            }
        } else {
            Authorization::PassThrough
        };
        if matches!(outcome, Authorization::Forward { .. }) {
            self.note_outcome("authorize", "deferred");
        }
        let body = match outcome {
            Authorization::Respond(response) => return response,
            Authorization::PassThrough if is_post => full(raw),
            Authorization::PassThrough => crate::http::empty(),
            Authorization::Forward { query } if is_post => {
                parts.headers.insert(header::CONTENT_TYPE, FORM_URLENCODED);
                parts.headers.remove(header::CONTENT_LENGTH);
                full(query)
            }
            Authorization::Forward { query } => {
                let uri = format!("{}?{query}", parts.uri.path());
                match uri.parse() {
                    Ok(uri) => parts.uri = uri,
                    Err(_) => return error_page(StatusCode::BAD_REQUEST, "Invalid sign-in request."),
                }
                crate::http::empty()
            }
        };
        if is_post {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::TRANSFER_ENCODING);
        }
        self.forward(Request::from_parts(parts, body), peer).await
    }

    /// A request pushed to the OP's PAR endpoint: a `deferred_code` one is rewritten as in the
    /// front channel (the RP's client authentication travels untouched), anything else passes.
    async fn pushed_authorization(&self, realm: &str, request: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let raw = match self.read_small_body(body).await {
            Ok(bytes) => bytes,
            Err(e) => return self.finish("par", Err(e)),
        };
        let mut forwarded = raw.clone();
        let federated = self.federated.is_some() && (mentions_url_client(&raw) || mentions_assertion(&raw));
        if (mentions_deferred(&raw) || federated)
            && media_type(&parts.headers).eq_ignore_ascii_case("application/x-www-form-urlencoded")
        {
            let pushed = match Params::parse(&raw) {
                Ok(params) => {
                    self.note_client(&parts.headers, &params);
                    self.authorize.handle_pushed(realm, &parts.headers, &params).await
                }
                Err(e) => Err(OAuthError::from(e)),
            };
            match pushed {
                Ok(Some(rewritten)) => {
                    self.note_outcome("par", "deferred");
                    self.metrics.request("par", "deferred");
                    forwarded = Bytes::from(rewritten);
                }
                Ok(None) => {}
                Err(e) => return self.finish("par", Err(e)),
            }
        }
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
        self.forward(Request::from_parts(parts, full(forwarded)), peer).await
    }

    async fn token_endpoint(&self, realm: &str, request: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let raw = match self.read_small_body(body).await {
            Ok(bytes) => bytes,
            Err(e) => return self.finish("token", Err(e)),
        };
        if let Some(federated) = &self.federated {
            if (mentions_url_client(&raw) || mentions_assertion(&raw))
                && media_type(&parts.headers).eq_ignore_ascii_case("application/x-www-form-urlencoded")
            {
                let known = match Params::parse(&raw) {
                    // Boxed: rare and large, it would make every token request's future larger.
                    Ok(params) => Box::pin(federated.token_request(realm, &parts.headers, &params)).await,
                    Err(e) => Err(OAuthError::from(e)),
                };
                if let Err(e) = known {
                    return self.finish("token", Err(e));
                }
            }
        }
        if mentions_deferred(&raw) {
            if !media_type(&parts.headers).eq_ignore_ascii_case("application/x-www-form-urlencoded") {
                // RFC 6749 §3.2: the token endpoint takes form bodies only; the OP would refuse
                // anything else too, so nothing that works is turned away here.
                return self.finish(
                    "token",
                    Err(OAuthError::invalid_request(
                        "Send the token request as application/x-www-form-urlencoded.",
                    )),
                );
            }
            match Params::parse(&raw) {
                Ok(params) => {
                    if let Some(step) = token::classify(&params) {
                        self.note_client(&parts.headers, &params);
                        let certificate = parts.extensions.get::<ClientCertificate>();
                        let (route, result) = self
                            .token
                            .handle(realm, &parts.headers, &params, step, peer.ip(), certificate)
                            .await;
                        return self.finish(route, result);
                    }
                }
                Err(e) => return self.finish("token", Err(OAuthError::from(e))),
            }
        }
        self.metrics.request("token", "passthrough");
        self.note_outcome("token", "passthrough");
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(raw.len()));
        self.forward(Request::from_parts(parts, full(raw)), peer).await
    }

    async fn cancellation(&self, realm: &str, request: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let certificate = parts.extensions.get::<ClientCertificate>();
        let result = match self.read_small_body(body).await {
            Ok(raw) => match cancel::parse_body(&parts.headers, &raw) {
                Ok(params) => {
                    self.note_client(&parts.headers, &params);
                    match &self.federated {
                        Some(federated) => match federated.token_request(realm, &parts.headers, &params).await {
                            Ok(()) => {
                                self.cancel
                                    .handle(realm, &parts.headers, &params, peer.ip(), certificate)
                                    .await
                            }
                            Err(e) => Err(e),
                        },
                        None => {
                            self.cancel
                                .handle(realm, &parts.headers, &params, peer.ip(), certificate)
                                .await
                        }
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.finish("cancel", result)
    }

    /// The revocation endpoint: a deferral code of an IETF-profile client is cancelled here
    /// (IETF §8); every other revocation reaches the OP with its body as sent.
    async fn revocation(&self, realm: &str, request: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let raw = match self.read_small_body(body).await {
            Ok(bytes) => bytes,
            Err(e) => return self.finish("revocation", Err(e)),
        };
        if media_type(&parts.headers).eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            // A form the proxy cannot parse is the OP's to refuse.
            if let Ok(params) = Params::parse(&raw) {
                // A federated client is known once its request is (as at the token endpoint).
                if let Some(federated) = &self.federated {
                    if mentions_url_client(&raw) || mentions_assertion(&raw) {
                        if let Err(e) = federated.token_request(realm, &parts.headers, &params).await {
                            return self.finish("revocation", Err(e));
                        }
                    }
                }
                let certificate = parts.extensions.get::<ClientCertificate>();
                let revoked = match self
                    .cancel
                    .revoke(realm, &parts.headers, &params, peer.ip(), certificate)
                    .await
                {
                    Ok(None) => None,
                    Ok(Some(response)) => Some(Ok(response)),
                    Err(e) => Some(Err(e)),
                };
                if let Some(result) = revoked {
                    self.note_client(&parts.headers, &params);
                    return self.finish("revocation", result);
                }
            }
        }
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(raw.len()));
        self.forward(Request::from_parts(parts, full(raw)), peer).await
    }
}

/// The route of a request as spans name it (as the request metrics label it).
fn route_label(endpoint: Option<Endpoint>) -> &'static str {
    match endpoint {
        None => "passthrough",
        Some(Endpoint::Authorization) => "authorize",
        Some(Endpoint::PushedAuthorization) => "par",
        Some(Endpoint::Token) => "token",
        Some(Endpoint::Cancellation) => "cancel",
        Some(Endpoint::Revocation) => "revocation",
        Some(Endpoint::Discovery) => "discovery",
    }
}

/// A `client_id` that may be a URL (`https%3A…` form-encoded, or raw): a federated client's.
fn mentions_url_client(bytes: &[u8]) -> bool {
    contains(bytes, b"client_id=https")
}

/// A client assertion, whose subject may be a federated client.
fn mentions_assertion(bytes: &[u8]) -> bool {
    contains(bytes, b"client_assertion=")
}

fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

fn mentions_deferred(bytes: &[u8]) -> bool {
    let needle = b"deferred";
    bytes.windows(needle.len()).any(|w| w == needle)
}
