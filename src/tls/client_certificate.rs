//! The client certificate a request is bound to (RFC 8705), whether the listener verified it or
//! a trusted ingress passed it on in a header, and the forms ingresses pass it on in (RFC 9440,
//! Envoy's XFCC, an escaped PEM).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The client certificate a request came with, verified against the listener's client CAs
/// (or vouched for by a trusted ingress): what a deferred process is bound to (RFC 8705).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// `x5t#S256`: the base64url SHA-256 of the leaf certificate's DER (RFC 8705 §3.1).
    pub thumbprint: String,
}

impl ClientCertificate {
    pub fn from_der(der: &[u8]) -> Self {
        use base64::Engine;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Self {
            thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
        }
    }
}

/// Request headers in which TLS terminators pass a client certificate on: ingress-nginx
/// (`ssl-client-cert`), RFC 9440 (`Client-Cert`, `Client-Cert-Chain`), Envoy
/// (`X-Forwarded-Client-Cert`), Traefik (`X-Forwarded-Tls-Client-Cert`) and common
/// variants. Without a trusted one configured, none of them reaches the endpoints or the OP.
pub const CERTIFICATE_HEADERS: [&str; 7] = [
    "ssl-client-cert",
    "x-ssl-client-cert",
    "x-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-forwarded-client-cert",
    "x-forwarded-tls-client-cert",
];

/// [`CERTIFICATE_HEADERS`] as header names: none is a standard name, so a request's standard
/// headers (most of them) differ from each by the kind of name alone, without a byte compared.
static CERTIFICATE_NAMES: [http::HeaderName; 7] = [
    http::HeaderName::from_static(CERTIFICATE_HEADERS[0]),
    http::HeaderName::from_static(CERTIFICATE_HEADERS[1]),
    http::HeaderName::from_static(CERTIFICATE_HEADERS[2]),
    http::HeaderName::from_static(CERTIFICATE_HEADERS[3]),
    http::HeaderName::from_static(CERTIFICATE_HEADERS[4]),
    http::HeaderName::from_static(CERTIFICATE_HEADERS[5]),
    http::HeaderName::from_static(CERTIFICATE_HEADERS[6]),
];

/// A client certificate passed on by the TLS terminator in front (`DTR_CLIENT_CERT_HEADER`):
/// believed only from the peers of `DTR_TRUSTED_PROXIES`.
#[derive(Debug, Clone, Default)]
pub struct ForwardedCertificates {
    header: Option<http::HeaderName>,
    trusted: Vec<ipnet::IpNet>,
}

impl ForwardedCertificates {
    pub fn new(header: Option<http::HeaderName>, trusted: Vec<ipnet::IpNet>) -> Self {
        Self { header, trusted }
    }

    /// The certificate a request from `peer` carries in the trusted header, if it is there and
    /// parses. Every other certificate header is removed, and the trusted one too when `peer`
    /// is not a trusted proxy: a client cannot forge a certificate for the endpoints or, on
    /// pass-through, for the OP.
    pub fn take(&self, headers: &mut http::HeaderMap, peer: std::net::IpAddr) -> Option<ClientCertificate> {
        // One look over the names (most requests carry none of these) before any removal.
        let forged = |name: &http::HeaderName| CERTIFICATE_NAMES.contains(name) && self.header.as_ref() != Some(name);
        if headers.keys().any(forged) {
            for name in &CERTIFICATE_NAMES {
                if self.header.as_ref() != Some(name) {
                    headers.remove(name);
                }
            }
        }
        let name = self.header.as_ref()?;
        let peer = peer.to_canonical();
        if !self.trusted.iter().any(|net| net.contains(&peer)) {
            headers.remove(name);
            return None;
        }
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return None;
        };
        match ClientCertificate::from_header(value.as_bytes()) {
            Ok(certificate) => Some(certificate),
            Err(e) => {
                tracing::debug!(header = %name, error = %e, "unreadable client certificate header; ignored");
                None
            }
        }
    }
}

impl ClientCertificate {
    /// The leaf certificate of a header value, in any form TLS terminators use: RFC 9440
    /// (`:` base64 DER `:`, a structured-field byte sequence), Envoy's XFCC (`Hash=…;Cert=…`,
    /// see [`Self::from_xfcc`]) or a URL-encoded PEM (ingress-nginx
    /// `$ssl_client_escaped_cert`; a plain PEM too), whose first certificate is the leaf.
    pub fn from_header(value: &[u8]) -> Result<Self, String> {
        use base64::Engine;
        let value = value.trim_ascii();
        if let Some(inner) = value.strip_prefix(b":").and_then(|v| v.strip_suffix(b":")) {
            let der = base64::engine::general_purpose::STANDARD
                .decode(inner)
                .map_err(|e| format!("not base64: {e}"))?;
            return Ok(Self::from_der(&der));
        }
        if is_xfcc(value) {
            let value = std::str::from_utf8(value).map_err(|_| "an XFCC value that is not UTF-8".to_owned())?;
            return Self::from_xfcc(value);
        }
        Self::from_escaped_pem(value)
    }

    fn from_escaped_pem(value: &[u8]) -> Result<Self, String> {
        let pem: Vec<u8> = percent_encoding::percent_decode(value).collect();
        let leaf = CertificateDer::pem_slice_iter(&pem)
            .next()
            .ok_or("no PEM certificate in it")?
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        Ok(Self::from_der(&leaf))
    }

    /// Envoy's `X-Forwarded-Client-Cert`: `Key=value` pairs joined by `;`, one element per
    /// proxy that appended one, elements joined by `,`. Only a value of one element is taken:
    /// that is what an ingress that sets the header afresh (Envoy's and Istio gateways'
    /// `SANITIZE_SET`) sends. An ingress that appends (`APPEND_FORWARD`) passes on whatever the
    /// client sent when the client has no certificate, so more than one element is refused.
    /// The leaf is `Cert` (a URL-encoded PEM) when present, and must then match `Hash`; with
    /// only `Hash` (the hex SHA-256 of the leaf's DER, which Envoy always sends) that hash is
    /// the thumbprint.
    pub fn from_xfcc(value: &str) -> Result<Self, String> {
        use base64::Engine;
        let elements = xfcc_elements(value)?;
        let [element] = elements.as_slice() else {
            return Err(format!(
                "an XFCC value of {} elements: the ingress must set it afresh (SANITIZE_SET), not append to it",
                elements.len()
            ));
        };
        let field = |key: &str| {
            element
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        let hash = field("Hash")
            .map(|hex| {
                data_encoding::HEXLOWER_PERMISSIVE
                    .decode(hex.as_bytes())
                    .ok()
                    .filter(|digest| digest.len() == 32)
                    .ok_or_else(|| "an XFCC Hash that is not a hex SHA-256".to_owned())
            })
            .transpose()?;
        match (field("Cert"), hash) {
            (Some(cert), hash) => {
                let certificate = Self::from_escaped_pem(cert.as_bytes())?;
                let matches = hash.is_none_or(|digest| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) == certificate.thumbprint
                });
                if !matches {
                    return Err("the XFCC Hash is not that of its Cert".into());
                }
                Ok(certificate)
            }
            (None, Some(digest)) => Ok(Self {
                thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
            }),
            (None, None) => Err("an XFCC value without Hash or Cert".into()),
        }
    }
}

/// The keys of an XFCC element (Envoy's `x-forwarded-client-cert`).
const XFCC_KEYS: [&str; 7] = ["By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS"];

/// Whether a certificate header value is XFCC: it opens with one of its keys and `=` (no PEM
/// or base64 opens so).
fn is_xfcc(value: &[u8]) -> bool {
    XFCC_KEYS.iter().any(|key| {
        value.len() > key.len() && value[..key.len()].eq_ignore_ascii_case(key.as_bytes()) && value[key.len()] == b'='
    })
}

/// An XFCC value's elements, each its `(key, value)` pairs, values unquoted (a value holding
/// `,`, `;` or `=` is double-quoted, with `\"` for a quote inside).
fn xfcc_elements(value: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    fn end_pair(
        key: &mut Option<String>,
        field: &mut String,
        element: &mut Vec<(String, String)>,
    ) -> Result<(), String> {
        match key.take() {
            Some(k) => element.push((k.trim().to_owned(), std::mem::take(field))),
            None if field.trim().is_empty() => field.clear(),
            None => return Err(format!("an XFCC pair without '=': {:?}", field.trim())),
        }
        Ok(())
    }
    let (mut elements, mut element) = (Vec::new(), Vec::new());
    let (mut key, mut field) = (None::<String>, String::new());
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        if escaped {
            field.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '=' if !quoted && key.is_none() => key = Some(std::mem::take(&mut field)),
            ';' if !quoted => end_pair(&mut key, &mut field, &mut element)?,
            ',' if !quoted => {
                end_pair(&mut key, &mut field, &mut element)?;
                elements.push(std::mem::take(&mut element));
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err("an XFCC value with an unclosed quote".into());
    }
    end_pair(&mut key, &mut field, &mut element)?;
    elements.push(element);
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_is_the_base64url_sha256_of_the_der() {
        // SHA-256 of the empty string, base64url without padding.
        assert_eq!(
            ClientCertificate::from_der(b"").thumbprint,
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
        assert_eq!(ClientCertificate::from_der(b"abc").thumbprint.len(), 43);
    }

    /// A self-signed certificate: its DER and its PEM.
    fn certificate() -> (Vec<u8>, String) {
        let made = rcgen::generate_simple_self_signed(vec!["rp.example.com".to_owned()]).unwrap();
        (made.cert.der().to_vec(), made.cert.pem())
    }

    #[test]
    fn a_forwarded_certificate_is_read_in_every_form() {
        use base64::Engine;
        let (der, pem) = certificate();
        let expected = ClientCertificate::from_der(&der);
        let escaped = percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
        let rfc9440 = format!(":{}:", base64::engine::general_purpose::STANDARD.encode(&der));
        for value in [escaped.as_str(), pem.as_str(), rfc9440.as_str()] {
            assert_eq!(
                ClientCertificate::from_header(value.as_bytes()),
                Ok(expected.clone()),
                "{value}"
            );
        }
        for garbage in ["", "hello", ":not base64!:", "-----BEGIN CERTIFICATE-----\n%%%\n"] {
            assert!(ClientCertificate::from_header(garbage.as_bytes()).is_err(), "{garbage}");
        }
    }

    /// Envoy's XFCC as its docs show it: `By`, `Hash`, a quoted `Subject` with `,` and `=`
    /// inside, `URI`; and with the URL-encoded PEM in `Cert`.
    #[test]
    fn an_envoy_xfcc_value_gives_its_hash_or_its_cert() {
        let (der, pem) = certificate();
        let expected = ClientCertificate::from_der(&der);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        let hex = data_encoding::HEXLOWER.encode(digest.as_ref());
        let escaped = percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
        let by = "By=spiffe://cluster.local/ns/keycloak/sa/dtr-proxy";
        let subject = r#"Subject="CN=rp.example.com,O=Example \"RP\", Inc.""#;
        let good = [
            format!("{by};Hash={hex};{subject};URI=spiffe://rp.example.com/client"),
            format!("Hash={};{by}", hex.to_uppercase()),
            format!("{by};Hash={hex};Cert=\"{escaped}\";{subject}"),
            format!("cert=\"{escaped}\""),
        ];
        for value in &good {
            assert_eq!(
                ClientCertificate::from_header(value.as_bytes()),
                Ok(expected.clone()),
                "{value}"
            );
        }
        let wrong_hash = "0".repeat(64);
        let bad = [
            // Two elements: an ingress that appends passes on what the client sent.
            format!("{by};Hash={hex},{by};Hash={wrong_hash}"),
            format!("{by};Hash={wrong_hash};Cert=\"{escaped}\""),
            format!("{by};Hash=abc"),
            format!("{by};{subject}"),
            format!("{by};Hash={hex};Subject=\"unclosed"),
            format!("{by};Hash"),
        ];
        for value in &bad {
            assert!(ClientCertificate::from_header(value.as_bytes()).is_err(), "{value}");
        }
    }

    #[test]
    fn a_certificate_header_is_believed_only_from_a_trusted_proxy_and_only_when_configured() {
        let (der, _) = certificate();
        let rfc9440 = {
            use base64::Engine;
            format!(":{}:", base64::engine::general_purpose::STANDARD.encode(&der))
        };
        let request = || {
            let mut headers = http::HeaderMap::new();
            for name in CERTIFICATE_HEADERS {
                headers.insert(name, http::HeaderValue::from_str(&rfc9440).unwrap());
            }
            headers
        };
        let ingress: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let stranger: std::net::IpAddr = "203.0.113.9".parse().unwrap();

        // Not configured: every certificate header is stripped, none is believed.
        let off = ForwardedCertificates::default();
        let mut headers = request();
        assert_eq!(off.take(&mut headers, ingress), None);
        assert!(headers.is_empty(), "{headers:?}");

        let on = ForwardedCertificates::new(
            Some(http::HeaderName::from_static("client-cert")),
            vec!["10.0.0.0/8".parse().unwrap()],
        );
        // From the ingress: the configured header is read and kept for the OP; the rest go.
        let mut headers = request();
        assert_eq!(on.take(&mut headers, ingress), Some(ClientCertificate::from_der(&der)));
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["client-cert"]);
        // The same through an IPv4-mapped address.
        let mapped: std::net::IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert!(on.take(&mut request(), mapped).is_some());
        // From anyone else: forged, stripped.
        let mut headers = request();
        assert_eq!(on.take(&mut headers, stranger), None);
        assert!(headers.is_empty(), "{headers:?}");
        // Two values, or one that does not parse: no certificate.
        let mut headers = request();
        headers.append("client-cert", http::HeaderValue::from_static(":AAAA:"));
        assert_eq!(on.take(&mut headers, ingress), None);
        let mut headers = http::HeaderMap::new();
        headers.insert("client-cert", http::HeaderValue::from_static("garbage"));
        assert_eq!(on.take(&mut headers, ingress), None);
    }
}
