//! TLS material read from PEM files: the server side of both ports (a certificate that follows
//! its files as they are rotated, an optional CA for client certificates) and extra trust
//! anchors for the outgoing clients (an OP, RPs, a verification service or a trace receiver
//! behind an internal CA). rustls on aws-lc-rs throughout.
//!
//! One submodule per concern:
//! - `pem`: parsing PEM certificates and keys, and the crypto provider;
//! - `files`: certificates and CA bundles read again when their files change;
//! - `listener`: the listeners' side, their certificate and the CAs of client certificates;
//! - `client_certificate`: the client certificate a request is bound to, as verified by the
//!   listener or passed on by a trusted ingress;
//! - `outgoing`: the servers outgoing clients trust, and their client configuration.

mod client_certificate;
mod files;
mod listener;
mod outgoing;
mod pem;

pub use self::client_certificate::{ClientCertificate, ForwardedCertificates, CERTIFICATE_HEADERS};
pub use self::files::{watch_reloads, CertificateFiles, Reload, TlsFileError};
pub use self::listener::{ClientCas, ServerTls};
pub use self::outgoing::{client_config, client_config_with, ServerCas};
pub use self::pem::{certified_key, parse_certificates, parse_private_key, provider, KeyPairError};
