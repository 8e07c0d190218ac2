//! PEM certificates and keys, parsed in one place for every TLS user (the listeners, the outgoing
//! clients, Redis) on the one crypto provider of the process.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_certificate_and_no_key() {
        assert!(parse_certificates(b"hello").is_err());
        assert!(parse_certificates(b"").is_err());
        assert!(parse_private_key(b"hello").is_err());
    }
}
