//! Trust for the outgoing TLS clients (to the OP, the RPs, the verification service, the trace
//! receiver): the system's roots, extra CAs that follow their file, and one rustls client
//! configuration built from them for every client.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::files::{CaBundle, CertificateFiles, Reload};
use super::pem::{parse_certificates, provider};

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
