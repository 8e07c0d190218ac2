//! Fetching what an unauthenticated caller points us to (a client's WebFinger document, its
//! statements): HTTPS only, no redirects, never to a loopback, private or link-local address —
//! checked on the addresses actually connected to, so a name that resolves elsewhere the second
//! time gains nothing — with connect and total timeouts, a size limit and a per-host rate.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use url::{Host, Url};

use crate::config::FetchLimits;
use crate::http::{empty, Body};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not a URL that may be fetched: {1}")]
    NotAllowed(String, &'static str),
    #[error("too many fetches from {0}; try again later")]
    RateLimited(String),
    #[error("fetching {0} failed: {1}")]
    Failed(String, String),
    #[error("{0} answered {1}")]
    Status(String, u16),
    #[error("{0} answered {1}, not {2}")]
    MediaType(String, String, &'static str),
    #[error("{0} sent more than {1} bytes")]
    TooLarge(String, usize),
}

/// Whether an address is one a fetch chosen by a stranger may reach: not loopback, private,
/// link-local, shared (CGNAT), unspecified, multicast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

/// A resolver that drops every address a fetch may not reach; the connector connects only to
/// what it returns.
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found.filter(|addr| allow_private || is_public(addr.ip())).collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the host resolves only to addresses that may not be fetched",
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

type GuardedClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Body>;

/// The fetcher of federation documents.
pub struct Fetcher {
    client: GuardedClient,
    limits: FetchLimits,
    /// Per host: the start of the current minute and the fetches in it.
    rate: Mutex<HashMap<String, (Instant, u32)>>,
}

fn tls_config(ca_pem: Option<&[u8]>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => unreachable!("aws-lc-rs supports the default protocol versions: {e}"),
    }
}

impl Fetcher {
    pub fn new(limits: FetchLimits) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            allow_private: limits.allow_private_targets,
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(limits.connect_timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(limits.ca_pem.as_deref()))
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Self {
            client,
            limits,
            rate: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    /// Whether `url` may be fetched at all (before any I/O): https, a host, no user info, and
    /// an address literal only if it is public.
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        let refuse = |why| Err(FetchError::NotAllowed(url.to_string(), why));
        if url.scheme() != "https" {
            return refuse("only https");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return refuse("no user information");
        }
        let ip = match url.host() {
            None => return refuse("no host"),
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(Host::Domain(_)) => None,
        };
        if ip.is_some_and(|ip| !self.limits.allow_private_targets && !is_public(ip)) {
            return refuse("a loopback, private or link-local address");
        }
        Ok(())
    }

    fn take_rate(&self, host: &str) -> Result<(), FetchError> {
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if rate.len() > 10_000 {
            rate.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = rate.entry(host.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        if entry.1 >= self.limits.host_rate {
            return Err(FetchError::RateLimited(host.to_owned()));
        }
        entry.1 += 1;
        Ok(())
    }

    /// GETs `url` and returns its body, if the answer is a 200 of one of `media_types`.
    pub async fn get(
        &self,
        url: &Url,
        accept: &'static str,
        media_types: &[&'static str],
    ) -> Result<Bytes, FetchError> {
        self.check_url(url)?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        self.take_rate(&host)?;
        let shown = url.to_string();
        let failed = |e: String| FetchError::Failed(shown.clone(), e);
        let request = Request::get(url.as_str())
            .header(http::header::ACCEPT, accept)
            .body(empty())
            .map_err(|e| failed(e.to_string()))?;
        let max = self.limits.max_bytes;
        let fetch = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| failed(error_chain(&e)))?;
            let status = response.status();
            // No redirect is followed: a 3xx is an answer like any other non-200.
            if status != http::StatusCode::OK {
                return Err(FetchError::Status(shown.clone(), status.as_u16()));
            }
            let media = crate::http::media_type(response.headers()).to_ascii_lowercase();
            let Some(expected) = media_types.iter().find(|m| **m == media) else {
                return Err(FetchError::MediaType(
                    shown.clone(),
                    media,
                    media_types.first().copied().unwrap_or(""),
                ));
            };
            let _ = expected;
            let body = http_body_util::Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(|_| FetchError::TooLarge(shown.clone(), max))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(self.limits.total_timeout, fetch)
            .await
            .map_err(|_| FetchError::Failed(url.to_string(), "timed out".into()))?
    }
}

/// An error with its causes, for a log line (hyper's own message is only "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    fn limits(allow_private_targets: bool) -> FetchLimits {
        FetchLimits {
            connect_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(1),
            max_bytes: 1024,
            max_links: 2,
            host_rate: 2,
            allow_private_targets,
            ca_pem: None,
        }
    }

    #[tokio::test]
    async fn urls_are_checked_before_any_io() {
        let fetcher = Fetcher::new(limits(false));
        for refused in [
            "http://example.com/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://user:pw@example.com/",
            "https://169.254.169.254/latest",
        ] {
            assert!(
                matches!(
                    fetcher.check_url(&Url::parse(refused).unwrap()),
                    Err(FetchError::NotAllowed(..))
                ),
                "{refused}"
            );
        }
        assert!(fetcher.check_url(&Url::parse("https://example.com/x").unwrap()).is_ok());
        assert!(Fetcher::new(limits(true))
            .check_url(&Url::parse("https://127.0.0.1/x").unwrap())
            .is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect() {
        let fetcher = Fetcher::new(limits(false));
        let result = fetcher
            .get(
                &Url::parse("https://localhost:9/x").unwrap(),
                "application/jwt",
                &["application/jwt"],
            )
            .await;
        match result {
            Err(FetchError::Failed(_, why)) => assert!(why.contains("may not be fetched"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_host_has_its_own_rate() {
        let fetcher = Fetcher::new(limits(false));
        assert!(fetcher.take_rate("a.example").is_ok());
        assert!(fetcher.take_rate("a.example").is_ok());
        assert_eq!(
            fetcher.take_rate("a.example"),
            Err(FetchError::RateLimited("a.example".into()))
        );
        assert!(fetcher.take_rate("b.example").is_ok());
    }
}
