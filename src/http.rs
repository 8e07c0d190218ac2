//! Small HTTP building blocks shared by the proxy, the protocol endpoints and the admin port.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

/// Every body the proxy sends or receives: an upstream/downstream body streamed as is, or a
/// small one the proxy built itself. No boxing, no copying on the pass-through path.
pub type Body = Either<Incoming, Full<Bytes>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

pub fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}

pub const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
pub const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
pub const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
pub const TEXT_HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
pub const FORM_URLENCODED: HeaderValue = HeaderValue::from_static("application/x-www-form-urlencoded");

/// A JSON response that no cache may keep (RFC 6749 §5.1 for everything token-related).
pub fn json_no_store(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    // Serialising plain data with string keys cannot fail.
    json_bytes_no_store(status, serde_json::to_vec(body).unwrap_or_default())
}

/// [`json_no_store`] of a body already serialised.
pub fn json_bytes_no_store(status: StatusCode, json: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    // Room for these three, the few an error adds and what the server adds: one allocation.
    *response.headers_mut() = http::HeaderMap::with_capacity(8);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    headers.insert(CACHE_CONTROL, NO_STORE);
    headers.insert(PRAGMA, NO_CACHE);
    response
}

pub fn html_no_store(status: StatusCode, html: String) -> Response<Body> {
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, TEXT_HTML);
    headers.insert(CACHE_CONTROL, NO_STORE);
    headers.insert(PRAGMA, NO_CACHE);
    response
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The media type of a request's `Content-Type`, without parameters (`charset=…`).
pub fn media_type(headers: &http::HeaderMap) -> &str {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("")
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body could not be read: {0}")]
    Read(String),
    #[error("request body not received within {0:?}")]
    TimedOut(std::time::Duration),
}

/// Reads a whole body of at most `limit` bytes. Only the small DTR bodies are ever read this way.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// How much of a refused (too large) body is still read and dropped, and for how long, so that
/// a client that is still sending sees the 413 rather than a connection reset (the kernel
/// resets a connection closed with unread data; nginx's lingering close does the same).
const DRAIN_MAX_BYTES: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a client's request body whole, within `limit` bytes and `timeout`: a client that
/// trickles or stalls its body must not hold a request (and its connection) open. Over the
/// limit, the rest is drained (bounded) before the caller answers 413.
pub async fn read_request_body<B>(body: B, limit: usize, timeout: std::time::Duration) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut collected = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut(timeout)),
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.into().to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if collected.len() + data.len() > limit {
            break;
        }
        collected.extend_from_slice(&data);
    }
    let drain_until = tokio::time::Instant::now() + DRAIN_TIME.min(timeout);
    let mut drained = 0;
    while drained < DRAIN_MAX_BYTES {
        match tokio::time::timeout_at(drain_until, body.frame()).await {
            Ok(Some(Ok(frame))) => drained += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    Err(BodyError::TooLarge(limit))
}

/// What the public and admin services take as a request body: hyper's `Incoming` from a
/// socket, or a body built in memory, so tests drive the services without sockets.
pub trait IntoBody {
    fn into_body(self) -> Body;
}

impl IntoBody for Incoming {
    fn into_body(self) -> Body {
        Either::Left(self)
    }
}

impl IntoBody for Full<Bytes> {
    fn into_body(self) -> Body {
        Either::Right(self)
    }
}

impl IntoBody for Body {
    fn into_body(self) -> Body {
        self
    }
}
