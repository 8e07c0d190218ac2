//! The internal port: health, readiness, metrics, the completion webhook and the operator API.
//! Kept away from public traffic; in Kubernetes only the verification service and Prometheus
//! should reach it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::clock::now_ms;
use crate::endpoints::completion::Completions;
use crate::endpoints::operator::{self, OperatorApi};
use crate::http::{json_no_store, plain, read_request_body, Body, BodyError, IntoBody};
use crate::metrics::Metrics;
use crate::records::Records;
use crate::telemetry::{self, FutureExt as _, Telemetry};

/// Largest webhook body accepted.
const MAX_WEBHOOK_BODY: usize = 64 * 1024;
/// Largest operator API body accepted (a denial's description, an extension).
const MAX_OPERATOR_BODY: usize = 16 * 1024;

/// Every route of the internal port, as `docs/openapi/admin.json` names them; the tests hold
/// the document, this list and the answers of the port to one another.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/completions"),
    ("GET", "/operator/v1/openapi.json"),
    ("GET", "/operator/v1/processes"),
    ("GET", "/operator/v1/processes/{process_id}"),
    ("POST", "/operator/v1/processes/{process_id}/cancel"),
    ("POST", "/operator/v1/processes/{process_id}/deny"),
    ("POST", "/operator/v1/processes/{process_id}/extend"),
];

/// `405` for a known path asked with another method.
fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Whether this replica should receive traffic.
#[derive(Default)]
pub struct Readiness {
    pub draining: AtomicBool,
}

/// The internal port as a value, callable with any request body.
pub struct AdminService {
    pub records: Records,
    pub completions: Completions,
    /// The operator API; `None` (every `/operator/…` path is 404) without a token.
    pub operator: Option<OperatorApi>,
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    /// `DTR_BODY_READ_TIMEOUT`.
    pub body_read_timeout: Duration,
    /// Traces: the completion webhook is a server span (health and metrics are not traced).
    pub telemetry: Telemetry,
}

impl AdminService {
    pub async fn handle<B: IntoBody>(&self, request: Request<B>) -> Response<Body> {
        let request = request.map(IntoBody::into_body);
        let path = request.uri().path().to_owned();
        match (request.method(), path.as_str()) {
            (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.ready().await,
            (&Method::GET, "/metrics") => self.metrics().await,
            (&Method::POST, "/v1/completions") => {
                // A server span in the verification service's trace: the revocations and
                // Keycloak admin calls a verdict leads to are its children.
                let span = self
                    .telemetry
                    .server(request.headers(), request.method(), &path, "completion");
                match span {
                    None => self.completion(request).await,
                    Some(cx) => {
                        let response = self.completion(request).with_context(cx.clone()).await;
                        telemetry::end_server(&cx, response.status());
                        response
                    }
                }
            }
            (_, p) if p == operator::PREFIX || p.starts_with(&format!("{}/", operator::PREFIX)) => {
                let Some(api) = &self.operator else {
                    return plain(StatusCode::NOT_FOUND, "not found\n");
                };
                let (parts, body) = request.into_parts();
                let query = parts.uri.query();
                let bytes = if parts.method == Method::GET || parts.method == Method::HEAD {
                    Default::default()
                } else {
                    match read_request_body(body, MAX_OPERATOR_BODY, self.body_read_timeout).await {
                        Ok(bytes) => bytes,
                        Err(e) => return self.unreadable("operator", e),
                    }
                };
                api.handle(&parts.method, p, query, &parts.headers, &bytes).await
            }
            (_, "/healthz" | "/readyz" | "/metrics") => not_allowed("GET"),
            (_, "/v1/completions") => not_allowed("POST"),
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// A request body that could not be read whole.
    fn unreadable(&self, route: &'static str, e: BodyError) -> Response<Body> {
        let status = match e {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        };
        self.metrics.request(route, "bad_body");
        json_no_store(
            status,
            &json!({"error": "invalid_body", "error_description": e.to_string()}),
        )
    }

    async fn completion(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        match read_request_body(body, MAX_WEBHOOK_BODY, self.body_read_timeout).await {
            Ok(bytes) => self.completions.handle(&parts.headers, &bytes).await,
            Err(e) => self.unreadable("completion", e),
        }
    }

    /// Ready while serving and not draining. The store's health is reported but does not make the
    /// replica unready: pass-through works without it, and a Redis blip must not take every
    /// replica out of the Service at once (DTR endpoints answer 503 with Retry-After instead).
    async fn ready(&self) -> Response<Body> {
        let store = match tokio::time::timeout(Duration::from_secs(1), self.records.store().ping()).await {
            Ok(Ok(())) => "up",
            Ok(Err(_)) => "down",
            Err(_) => "slow",
        };
        let draining = self.readiness.draining.load(Ordering::Relaxed);
        let status = if draining {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json_no_store(
            status,
            &json!({ "ready": !draining, "store": store, "store_kind": self.records.store().kind() }),
        )
    }

    async fn metrics(&self) -> Response<Body> {
        match self.records.count_active(now_ms()).await {
            Ok(pending) => self.metrics.set_pending(pending),
            Err(e) => tracing::debug!(error = %e, "pending gauge not refreshed"),
        }
        let mut response = plain(StatusCode::OK, "");
        *response.body_mut() = crate::http::full(self.metrics.render());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    }
}
