//! TLS material read from PEM files: the server side of both ports (a certificate that follows
//! its files as they are rotated, an optional CA for client certificates) and extra trust
//! anchors for the client side (the OP behind an internal CA). rustls on aws-lc-rs throughout.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The one crypto provider of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every PEM certificate in `pem` (a chain or a bundle); an error when there is none or one
/// does not parse.
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// Reads and parses a PEM certificate file, the message naming the file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_certificates(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no PEM private key in it: {e}"))
}

/// A certificate chain and its private key, checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, KeyPairError> {
    let chain = parse_certificates(cert_pem).map_err(KeyPairError::Cert)?;
    let key = parse_private_key(key_pem).map_err(KeyPairError::Key)?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| KeyPairError::Key(format!("unusable, or not the key of the certificate: {e}")))
}

/// Which half of a certificate and key pair is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPairError {
    Cert(String),
    Key(String),
}

impl fmt::Display for KeyPairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPairError::Cert(e) => write!(f, "certificate: {e}"),
            KeyPairError::Key(e) => write!(f, "key: {e}"),
        }
    }
}

/// The TLS settings of one listener: where its certificate and key are read from (again
/// whenever they change), and the CAs whose client certificates it requires or requests, if
/// any (read again whenever their file changes).
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<CertificateFiles>,
    client_ca: Option<Arc<ClientCas>>,
    /// With a client CA: whether a connection without a client certificate is refused (the
    /// admin port) or served (the public port, which browsers reach too).
    client_certificate_required: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.files.cert_file)
            .field("key_file", &self.files.key_file)
            .field("client_certificates", &self.client_ca.is_some())
            .field("client_certificate_required", &self.client_certificate_required)
            .finish()
    }
}

/// What went wrong with one of a listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFileError {
    Cert(String),
    Key(String),
    ClientCa(String),
}

impl ServerTls {
    /// Reads and checks the certificate chain, its key and the client CAs now: a listener
    /// never starts without a usable certificate.
    pub fn load(cert_file: &Path, key_file: &Path, client_ca_file: Option<&Path>) -> Result<Self, Vec<TlsFileError>> {
        let mut errors = Vec::new();
        let cert_pem = std::fs::read(cert_file)
            .map_err(|e| errors.push(TlsFileError::Cert(format!("cannot read {}: {e}", cert_file.display()))))
            .ok();
        let key_pem = std::fs::read(key_file)
            .map_err(|e| errors.push(TlsFileError::Key(format!("cannot read {}: {e}", key_file.display()))))
            .ok();
        let client_ca = client_ca_file.and_then(|path| {
            ClientCas::load(path)
                .map(Arc::new)
                .map_err(|e| errors.push(TlsFileError::ClientCa(e)))
                .ok()
        });
        let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) else {
            return Err(errors);
        };
        let files = match CertificateFiles::from_pem(cert_file, key_file, cert_pem, key_pem) {
            Ok(files) => files,
            Err(e) => {
                errors.push(e);
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            files: Arc::new(files),
            client_ca,
            client_certificate_required: true,
        })
    }

    /// The same listener, asking for a client certificate without requiring one: a
    /// connection without one is served, one with a certificate its CAs did not sign is not.
    pub fn client_certificate_optional(mut self) -> Self {
        self.client_certificate_required = false;
        self
    }

    pub fn cert_file(&self) -> &Path {
        &self.files.cert_file
    }

    pub fn key_file(&self) -> &Path {
        &self.files.key_file
    }

    /// Whether the listener requires client certificates (mutual TLS).
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some() && self.client_certificate_required
    }

    /// Whether the listener asks for client certificates (required or not).
    pub fn requests_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The CAs of the client certificates the listener asks for, if it asks.
    pub fn client_cas(&self) -> Option<&Arc<ClientCas>> {
        self.client_ca.as_ref()
    }

    /// The rustls configuration of the listener: HTTP/2 and HTTP/1.1 by ALPN, the current
    /// certificate at every handshake.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some(cas) => builder.with_client_cert_verifier(Arc::new(ClientCasVerifier {
                cas: cas.clone(),
                required: self.client_certificate_required,
            })),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.files.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files again if they changed; see [`CertificateFiles::reload`].
    pub fn reload(&self) -> Reload {
        self.files.reload()
    }
}

/// Calls `reload` every `interval` until `shutdown` flips, counting what it did in
/// `dtr_tls_reloads_total{listener,result}` and logging it (`what`, from `file`).
pub async fn watch_reloads(
    listener: &'static str,
    what: &'static str,
    file: PathBuf,
    reload: Arc<dyn Fn() -> Reload + Send + Sync>,
    interval: Duration,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Small files, read rarely: the blocking pool keeps the workers free.
        let reload = reload.clone();
        let Ok(outcome) = tokio::task::spawn_blocking(move || reload()).await else {
            continue;
        };
        match outcome {
            Reload::Unchanged => {}
            Reload::Replaced => {
                metrics.tls_reload(listener, "replaced");
                tracing::info!(listener, file = %file.display(), "{what} reloaded");
            }
            Reload::Failed(error) => {
                metrics.tls_reload(listener, "failed");
                tracing::warn!(listener, %error, "{what} not reloaded; keeping the current one");
            }
        }
    }
}

/// The CAs a listener verifies client certificates against (`DTR_TLS_CLIENT_CA_FILE`,
/// `DTR_ADMIN_TLS_CLIENT_CA_FILE`). The file is read again whenever it changes
/// ([`Self::reload`], every `DTR_TLS_RELOAD_INTERVAL`): the CA of a newly admitted RP is
/// accepted from the next handshake, without a restart. A changed file that holds no usable CA
/// leaves the current ones in place.
pub struct ClientCas(CaBundle<ClientCaVerifier>);

/// The webpki verifier over one version of the bundle, and the CA names a handshake offers the
/// client. The names are kept for the life of the process (rustls borrows them from the
/// verifier for the handshake): a few hundred bytes for each version of the file.
#[derive(Clone)]
struct ClientCaVerifier {
    verifier: Arc<dyn ClientCertVerifier>,
    hints: &'static [DistinguishedName],
}

impl fmt::Debug for ClientCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCas")
            .field("file", &self.0.file)
            .finish_non_exhaustive()
    }
}

impl ClientCas {
    fn load(file: &Path) -> Result<Self, String> {
        CaBundle::load(file, Box::new(Self::verifier)).map(Self)
    }

    /// Whether a certificate is required is the listener's to say
    /// ([`ClientCertVerifier::client_auth_mandatory`]); the verifier accepts a handshake
    /// without one.
    fn verifier(pem: &[u8]) -> Result<ClientCaVerifier, String> {
        let mut roots = RootCertStore::empty();
        for certificate in parse_certificates(pem)? {
            roots
                .add(certificate)
                .map_err(|e| format!("not a CA certificate: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        let hints = Box::leak(verifier.root_hint_subjects().to_vec().into_boxed_slice());
        Ok(ClientCaVerifier { verifier, hints })
    }

    /// Reads the file and, if its contents changed, verifies client certificates against its
    /// CAs from the next handshake on when they parse.
    pub fn reload(&self) -> Reload {
        self.0.reload()
    }

    pub fn file(&self) -> &Path {
        &self.0.file
    }

    fn current(&self) -> ClientCaVerifier {
        self.0.current()
    }
}

/// A CA bundle read from a file and what is built from it, read again whenever the file
/// changes: a changed file that builds is in use from then on; one that does not leaves the
/// current one in place.
struct CaBundle<T> {
    file: PathBuf,
    build: Build<T>,
    current: RwLock<T>,
    /// What the last look at the file found, so that an unchanged file (or an unchanged
    /// failure) is neither built nor reported again.
    seen: Mutex<Result<Vec<u8>, String>>,
}

/// What a [`CaBundle`] builds from the file's contents.
type Build<T> = Box<dyn Fn(&[u8]) -> Result<T, String> + Send + Sync>;

impl<T: Clone> CaBundle<T> {
    fn load(file: &Path, build: Build<T>) -> Result<Self, String> {
        let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let current = build(&pem).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Self {
            file: file.to_owned(),
            build,
            current: RwLock::new(current),
            seen: Mutex::new(Ok(pem)),
        })
    }

    fn reload(&self) -> Reload {
        let found = std::fs::read(&self.file).map_err(|e| format!("cannot read {}: {e}", self.file.display()));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == found {
            return Reload::Unchanged;
        }
        let outcome = match &found {
            Err(e) => Reload::Failed(e.clone()),
            Ok(pem) => match (self.build)(pem) {
                Ok(built) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = built;
                    Reload::Replaced
                }
                Err(e) => Reload::Failed(format!("{}: {e}", self.file.display())),
            },
        };
        *seen = found;
        outcome
    }

    fn current(&self) -> T {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A listener's client-certificate check: the CAs read last, and whether a certificate is
/// required (the admin port) or only asked for (the public port, which browsers reach too).
#[derive(Debug)]
struct ClientCasVerifier {
    cas: Arc<ClientCas>,
    required: bool,
}

impl ClientCertVerifier for ClientCasVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.cas.current().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.cas
            .current()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.cas.current().verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.cas.current().verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.cas.current().verifier.supported_verify_schemes()
    }
}

/// What one look at the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The same contents as last time (or the same failure).
    Unchanged,
    /// New contents, in use from the next handshake.
    Replaced,
    /// New contents that do not make a usable certificate: the current one stays.
    Failed(String),
}

/// The certificate of a listener and the files it comes from. Every handshake takes the
/// current certificate; a reload replaces it only with a pair that parses and matches.
pub struct CertificateFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the last look found, so that an unchanged file (or an unchanged failure) is
    /// neither parsed nor reported again.
    seen: Mutex<Seen>,
}

#[derive(PartialEq, Eq)]
enum Seen {
    Pair(Vec<u8>, Vec<u8>),
    Unreadable(String),
}

impl fmt::Debug for CertificateFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateFiles")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl CertificateFiles {
    /// Reads and checks the pair now: nothing starts on a certificate that cannot be used.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsFileError> {
        let cert_pem = std::fs::read(cert_file)
            .map_err(|e| TlsFileError::Cert(format!("cannot read {}: {e}", cert_file.display())))?;
        let key_pem = std::fs::read(key_file)
            .map_err(|e| TlsFileError::Key(format!("cannot read {}: {e}", key_file.display())))?;
        Self::from_pem(cert_file, key_file, cert_pem, key_pem)
    }

    fn from_pem(cert_file: &Path, key_file: &Path, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, TlsFileError> {
        let key = certified_key(&cert_pem, &key_pem).map_err(|e| match e {
            KeyPairError::Cert(e) => TlsFileError::Cert(format!("{}: {e}", cert_file.display())),
            KeyPairError::Key(e) => TlsFileError::Key(format!("{}: {e}", key_file.display())),
        })?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(Seen::Pair(cert_pem, key_pem)),
        })
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads both files (a Kubernetes Secret volume swaps them together, behind one symlink)
    /// and, if their contents changed, replaces the certificate with them when they make a
    /// matching pair.
    pub fn reload(&self) -> Reload {
        let read = std::fs::read(&self.cert_file)
            .map_err(|e| format!("cannot read {}: {e}", self.cert_file.display()))
            .and_then(|cert| {
                std::fs::read(&self.key_file)
                    .map(|key| (cert, key))
                    .map_err(|e| format!("cannot read {}: {e}", self.key_file.display()))
            });
        let found = match read {
            Ok((cert, key)) => Seen::Pair(cert, key),
            Err(e) => Seen::Unreadable(e),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == found {
            return Reload::Unchanged;
        }
        let outcome = match &found {
            Seen::Unreadable(e) => Reload::Failed(e.clone()),
            Seen::Pair(cert, key) => match certified_key(cert, key) {
                Ok(key) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                    Reload::Replaced
                }
                Err(KeyPairError::Cert(e)) => Reload::Failed(format!("{}: {e}", self.cert_file.display())),
                Err(KeyPairError::Key(e)) => Reload::Failed(format!("{}: {e}", self.key_file.display())),
            },
        };
        *seen = found;
        outcome
    }
}

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// As a client certificate: the current pair, whatever CAs the server names.
impl ResolvesClientCert for CertificateFiles {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

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
        let forged = |name: &http::HeaderName| {
            CERTIFICATE_HEADERS.contains(&name.as_str()) && self.header.as_ref() != Some(name)
        };
        if headers.keys().any(forged) {
            for name in CERTIFICATE_HEADERS {
                if self.header.as_ref().is_none_or(|trusted| trusted != name) {
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

/// CAs an outgoing TLS client trusts for the servers it reaches, besides or instead of the
/// system's roots: the OP's (`DTR_UPSTREAM_CA_FILE`), the RPs' (`DTR_RP_CA_FILE`), the
/// verification service's (`DTR_EVENTS_CA_FILE`) and the trace receiver's
/// (`OTEL_EXPORTER_OTLP_CERTIFICATE`). The file is read again whenever it changes
/// ([`Self::reload`], every `DTR_TLS_RELOAD_INTERVAL`): a bundle that gains the next CA ahead of
/// a rotation (trust-manager, cert-manager's CA issuer) is in use from the next connection,
/// without a restart. A changed file that holds no usable CA leaves the current ones in place.
pub struct ServerCas {
    bundle: CaBundle<Arc<WebPkiServerVerifier>>,
    /// Trust only the file's CAs, not the system's roots.
    only: bool,
}

impl fmt::Debug for ServerCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCas")
            .field("file", &self.bundle.file)
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

impl ServerCas {
    pub fn load(file: &Path, only: bool) -> Result<Self, String> {
        let bundle = CaBundle::load(file, Box::new(move |pem: &[u8]| Self::verifier(pem, only)))?;
        Ok(Self { bundle, only })
    }

    fn verifier(pem: &[u8], only: bool) -> Result<Arc<WebPkiServerVerifier>, String> {
        let mut roots = if only { RootCertStore::empty() } else { system_roots() };
        for certificate in parse_certificates(pem)? {
            roots
                .add(certificate)
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("not a usable CA certificate: {e}"))
    }

    /// Reads the file and, if its contents changed, trusts its CAs from the next connection
    /// on when they parse.
    pub fn reload(&self) -> Reload {
        self.bundle.reload()
    }

    pub fn file(&self) -> &Path {
        &self.bundle.file
    }

    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.bundle.current()
    }
}

/// Every check is the webpki verifier's over the CAs read last.
impl ServerCertVerifier for ServerCas {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The system's roots, Mozilla's when the system has none.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// The rustls client configuration for a server whose certificate chains to the system's roots
/// (Mozilla's when the system has none) or, with `roots`, to theirs.
pub fn client_config(roots: Option<&Arc<ServerCas>>) -> Result<ClientConfig, rustls::Error> {
    client_config_with(roots, None)
}

/// [`client_config`] presenting `certificate` (the pair read last) when the server asks.
pub fn client_config_with(
    roots: Option<&Arc<ServerCas>>,
    certificate: Option<&Arc<CertificateFiles>>,
) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match roots {
        Some(roots) => builder.dangerous().with_custom_certificate_verifier(roots.clone()),
        None => builder.with_root_certificates(system_roots()),
    };
    Ok(match certificate {
        Some(certificate) => builder.with_client_cert_resolver(certificate.clone()),
        None => builder.with_no_client_auth(),
    })
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

    #[test]
    fn garbage_is_no_certificate_and_no_key() {
        assert!(parse_certificates(b"hello").is_err());
        assert!(parse_certificates(b"").is_err());
        assert!(parse_private_key(b"hello").is_err());
    }
}
