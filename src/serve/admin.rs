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
use crate::http::{json_no_store, plain, read_request_body, Body, BodyError, IntoBody};
use crate::metrics::Metrics;
use crate::records::Records;
use crate::telemetry::{self, FutureExt as _, Telemetry};

/// Largest webhook body accepted.
const MAX_WEBHOOK_BODY: usize = 64 * 1024;

/// Whether this replica should receive traffic.
#[derive(Default)]
pub struct Readiness {
    pub draining: AtomicBool,
}

/// The internal port as a value, callable with any request body.
pub struct AdminService {
    pub records: Records,
    pub completions: Completions,
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
            (&Method::GET, p) if p.starts_with("/v1/processes/") => {
                let process_id = &p["/v1/processes/".len()..];
                if process_id.is_empty() || process_id.contains('/') {
                    return plain(StatusCode::NOT_FOUND, "not found\n");
                }
                self.completions.process_view(process_id).await
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn completion(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        match read_request_body(body, MAX_WEBHOOK_BODY, self.body_read_timeout).await {
            Ok(bytes) => self.completions.handle(&parts.headers, &bytes).await,
            Err(e) => {
                let status = match e {
                    BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
                    BodyError::Read(_) => StatusCode::BAD_REQUEST,
                };
                self.metrics.request("completion", "bad_body");
                json_no_store(
                    status,
                    &json!({"error": "invalid_body", "error_description": e.to_string()}),
                )
            }
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
