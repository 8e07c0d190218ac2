//! The kit's HTTP client: hyper's pooled client over rustls with aws-lc-rs and the webpki
//! roots (the same stack as dtr-proxy, so nothing else is built), every request bounded by a
//! timeout and every answer read whole (capped).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::DtrError;

/// Largest answer read (discovery documents, JWKS and token answers are far smaller).
const MAX_BODY: usize = 1 << 20;

/// An answer read whole.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    pub fn new(timeout: Duration) -> Result<Self, DtrError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| DtrError::Http(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    pub async fn get(&self, url: &str) -> Result<Answer, DtrError> {
        self.send(Method::GET, url, Vec::new(), Bytes::new()).await
    }

    /// A form POST; `headers` on top of the content type.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(String, String)],
        headers: Vec<(&'static str, String)>,
    ) -> Result<Answer, DtrError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut headers = headers;
        headers.push(("content-type", "application/x-www-form-urlencoded".to_owned()));
        self.send(Method::POST, url, headers, Bytes::from(body)).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Answer, DtrError> {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header("accept", "application/json")
            .body(Full::new(body))
            .map_err(|e| DtrError::Http(format!("{url}: {e}")))?;
        for (name, value) in headers {
            let value = HeaderValue::from_str(&value).map_err(|e| DtrError::Http(format!("{name}: {e}")))?;
            request.headers_mut().insert(name, value);
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| DtrError::Http(format!("{url}: {e}")))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| DtrError::Http(format!("{url}: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| DtrError::Http(format!("{url}: no answer within {:?}", self.timeout)))?
    }
}
