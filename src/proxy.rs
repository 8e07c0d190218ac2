//! The public port. DTR requests are recognised by path and parameters and handled in the
//! protocol module (request filters); the authorization rewrite is an upstream request filter
//! and the acknowledgment an upstream response filter. Everything else is streamed straight
//! through to the OP over pooled connections.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::app::App;
use crate::http::{full, media_type, plain, read_request_body, Body, BodyError, FORM_URLENCODED};
use crate::protocol::authorize::{self, Outcome};
use crate::protocol::errors::OAuthError;
use crate::protocol::params::Params;
use crate::protocol::respond::error_page;
use crate::protocol::routes::Endpoint;
use crate::protocol::{cancel, discovery, redirect, token, wire};
use crate::upstream::{strip_hop_by_hop, UpstreamError};

pub async fn handle(app: Arc<App>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if header_bytes(request.headers()) > app.config.max_header_bytes {
        // hyper's read buffer bounds memory only roughly (it has room for a request line and
        // a partial read on top); the configured total is the rule.
        app.metrics.request("passthrough", "client_error");
        return plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request headers too large.\n",
        );
    }
    let route = app
        .routes
        .classify(request.uri().path())
        .map(|(e, realm)| (e, realm.to_owned()));
    match (route, request.method()) {
        (Some((Endpoint::Authorization, realm)), &Method::GET | &Method::POST) => {
            authorization(&app, &realm, request, peer).await
        }
        (Some((Endpoint::Token, realm)), &Method::POST) => token_endpoint(&app, &realm, request, peer).await,
        (Some((Endpoint::Cancellation, realm)), &Method::POST) => cancellation(&app, &realm, request, peer).await,
        (Some((Endpoint::Cancellation, _)), _) => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            response
        }
        (Some((Endpoint::Discovery, realm)), &Method::GET) => {
            let (parts, _) = request.into_parts();
            discovery::discovery(&app, &realm, &parts, peer.ip()).await
        }
        _ => forward(&app, request.map(Either::Left), peer).await,
    }
}

/// Forwards a request to the OP and streams the answer back, turning a redirect that carries
/// one of our handles into the RP's acknowledgment.
pub async fn forward(app: &App, request: Request<Body>, peer: SocketAddr) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    if parts.method == Method::CONNECT {
        // Not a forward proxy: a tunnel request is the client's mistake, not an OP failure.
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
        );
        return response;
    }
    // Only origin-form (and absolute-form, whose authority is ignored) names an OP path;
    // `OPTIONS *` and authority-form have no path to forward.
    let Some(path_and_query) = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
    else {
        return plain(StatusCode::BAD_REQUEST, "bad request target\n");
    };
    parts.uri = match app.upstream.uri(path_and_query) {
        Ok(uri) => uri,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request target\n"),
    };
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    // Keycloak speaks HTTP/1.1 behind a proxy, whatever the client spoke to us.
    parts.version = Version::HTTP_11;
    app.upstream.prepare_headers(&mut parts.headers, peer.ip());
    match app.upstream.send(Request::from_parts(parts, body), "passthrough").await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if parts.status.is_redirection()
                && parts
                    .headers
                    .get(header::LOCATION)
                    .is_some_and(redirect::carries_handle)
            {
                return redirect::acknowledge(app, parts).await;
            }
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => upstream_failure(app, &e),
    }
}

fn upstream_failure(app: &App, e: &UpstreamError) -> Response<Body> {
    tracing::warn!(error = %e, "pass-through to the OP failed");
    app.metrics.request("passthrough", "upstream_error");
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

async fn read_small_body(app: &App, body: Incoming) -> Result<Bytes, OAuthError> {
    read_request_body(body, app.config.max_body_bytes, app.config.body_read_timeout)
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

fn mentions_deferred(bytes: &[u8]) -> bool {
    let needle = b"deferred";
    bytes.windows(needle.len()).any(|w| w == needle)
}

async fn authorization(app: &App, realm: &str, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let is_post = parts.method == Method::POST;
    let raw = if is_post {
        match read_small_body(app, body).await {
            Ok(bytes) => bytes,
            Err(e) => return error_page(e.status, &e.description),
        }
    } else {
        Bytes::copy_from_slice(parts.uri.query().unwrap_or("").as_bytes())
    };
    // Only a request that can be DTR is parsed (strictly); all else reaches the OP untouched.
    let outcome = if mentions_deferred(&raw) {
        match Params::parse(&raw) {
            Ok(params) => authorize::authorize(app, realm, &params).await,
            Err(e) => Outcome::Respond(error_page(
                StatusCode::BAD_REQUEST,
                &format!("Invalid sign-in request: {e}."),
            )),
        }
    } else {
        Outcome::PassThrough
    };
    let body = match outcome {
        Outcome::Respond(response) => return response,
        Outcome::PassThrough if is_post => full(raw),
        Outcome::PassThrough => crate::http::empty(),
        Outcome::Forward { query } if is_post => {
            parts.headers.insert(header::CONTENT_TYPE, FORM_URLENCODED);
            parts.headers.remove(header::CONTENT_LENGTH);
            full(query)
        }
        Outcome::Forward { query } => {
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
    forward(app, Request::from_parts(parts, body), peer).await
}

async fn token_endpoint(app: &App, realm: &str, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let raw = match read_small_body(app, body).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    if mentions_deferred(&raw) {
        if !media_type(&parts.headers).eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            // RFC 6749 §3.2: the token endpoint takes form bodies only; the OP would refuse
            // anything else too, so nothing that works is turned away here.
            app.metrics.request("token", "client_error");
            return OAuthError::invalid_request("Send the token request as application/x-www-form-urlencoded.")
                .into_response();
        }
        match Params::parse(&raw) {
            Ok(params) if params.get("grant_type") == Some(wire::GRANT_TYPE_DEFERRED) => {
                return token::deferred_grant(app, realm, &parts.headers, &params, peer.ip()).await;
            }
            Ok(_) => {}
            Err(e) => {
                app.metrics.request("token", "client_error");
                return OAuthError::from(e).into_response();
            }
        }
    }
    app.metrics.request("token", "passthrough");
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(raw.len()));
    forward(app, Request::from_parts(parts, full(raw)), peer).await
}

async fn cancellation(app: &App, realm: &str, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let raw = match read_small_body(app, body).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    match cancel::parse_body(&parts.headers, &raw) {
        Ok(params) => cancel::cancel(app, realm, &parts.headers, &params, peer.ip()).await,
        Err(e) => {
            app.metrics.request("cancel", "client_error");
            e.into_response()
        }
    }
}
