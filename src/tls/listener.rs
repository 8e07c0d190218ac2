//! The server side of both ports: a listener's rustls configuration, its certificate and the
//! CAs of the client certificates it asks for.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use super::files::{CaBundle, CertificateFiles, Reload, TlsFileError};
use super::pem::{parse_certificates, provider};

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
