//! The internal port: health, readiness, metrics, the completion webhook and the operator API.
//! Kept away from public traffic; in Kubernetes only the verification service and Prometheus
//! should reach it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::App;
use crate::http::{json_no_store, now_ms, plain, read_request_body, Body, BodyError};
use crate::protocol::state::ACTIVE_QUEUE;
use crate::server::Readiness;
use crate::webhook;

/// Largest webhook body accepted.
const MAX_WEBHOOK_BODY: usize = 64 * 1024;

pub async fn handle(app: Arc<App>, readiness: Arc<Readiness>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => ready(&app, &readiness).await,
        (&Method::GET, "/metrics") => metrics(&app).await,
        (&Method::POST, "/v1/completions") => {
            let (parts, body) = request.into_parts();
            match read_request_body(body, MAX_WEBHOOK_BODY, app.config.body_read_timeout).await {
                Ok(bytes) => webhook::completions(&app, &parts.headers, &bytes).await,
                Err(e) => {
                    let status = match e {
                        BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                        BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
                        BodyError::Read(_) => StatusCode::BAD_REQUEST,
                    };
                    app.metrics.request("completion", "bad_body");
                    json_no_store(
                        status,
                        &json!({"error": "invalid_body", "error_description": e.to_string()}),
                    )
                }
            }
        }
        (&Method::GET, p) if p.starts_with("/v1/processes/") => {
            let process_id = &p["/v1/processes/".len()..];
            if process_id.is_empty() || process_id.contains('/') {
                return plain(StatusCode::NOT_FOUND, "not found\n");
            }
            webhook::process_view(&app, process_id).await
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Ready while serving and not draining. The store's health is reported but does not make the
/// replica unready: pass-through works without it, and a Redis blip must not take every
/// replica out of the Service at once (DTR endpoints answer 503 with Retry-After instead).
async fn ready(app: &App, readiness: &Readiness) -> Response<Body> {
    let store = match tokio::time::timeout(std::time::Duration::from_secs(1), app.store().ping()).await {
        Ok(Ok(())) => "up",
        Ok(Err(_)) => "down",
        Err(_) => "slow",
    };
    let draining = readiness.draining.load(Ordering::Relaxed);
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_no_store(
        status,
        &json!({ "ready": !draining, "store": store, "store_kind": app.store().kind() }),
    )
}

async fn metrics(app: &App) -> Response<Body> {
    let store = app.store();
    match store.count_due_after(&store.key(ACTIVE_QUEUE), now_ms()).await {
        Ok(pending) => app.metrics.set_pending(pending),
        Err(e) => tracing::debug!(error = %e, "pending gauge not refreshed"),
    }
    let mut response = plain(StatusCode::OK, "");
    *response.body_mut() = crate::http::full(app.metrics.render());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
