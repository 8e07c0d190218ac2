//! The HTTP client the span exporter posts through: the general pooled client (rustls with
//! aws-lc-rs, like every other call of the proxy), no second TLS stack. The exporter sends from
//! a thread of its own, so each post is run as a task on the proxy's runtime and awaited there.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry_http::HttpError;

use super::HttpClient;
use crate::http::{full, read_limited};

/// Largest answer of a trace receiver the exporter reads (a partial-success message at most).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug)]
pub struct ExportClient {
    http: HttpClient,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl ExportClient {
    /// Posts on `runtime` (the proxy's), each within `timeout`.
    pub fn new(http: HttpClient, runtime: tokio::runtime::Handle, timeout: Duration) -> Self {
        Self { http, runtime, timeout }
    }
}

impl opentelemetry_http::HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let http = self.http.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let response = http.request(request.map(full)).await.map_err(|e| e.to_string())?;
                let (parts, body) = response.into_parts();
                let body = read_limited(body, MAX_ANSWER).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        });
        Box::pin(async move {
            match task.await {
                Ok(result) => result.map_err(HttpError::from),
                Err(e) => Err(HttpError::from(e.to_string())),
            }
        })
    }
}
