//! Certificates and CA bundles that follow their files: a rotated Secret is in use from the next
//! handshake or connection without a restart, and a changed file that is not usable leaves the
//! current material in place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tokio::sync::watch;

use super::pem::{certified_key, KeyPairError};
use crate::metrics::Metrics;

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
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
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

    pub(super) fn from_pem(
        cert_file: &Path,
        key_file: &Path,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    ) -> Result<Self, TlsFileError> {
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

/// What went wrong with one of a listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFileError {
    Cert(String),
    Key(String),
    ClientCa(String),
}

/// A CA bundle read from a file and what is built from it, read again whenever the file
/// changes: a changed file that builds is in use from then on; one that does not leaves the
/// current one in place.
pub(super) struct CaBundle<T> {
    pub(super) file: PathBuf,
    build: Build<T>,
    current: RwLock<T>,
    /// What the last look at the file found, so that an unchanged file (or an unchanged
    /// failure) is neither built nor reported again.
    seen: Mutex<Result<Vec<u8>, String>>,
}

/// What a [`CaBundle`] builds from the file's contents.
type Build<T> = Box<dyn Fn(&[u8]) -> Result<T, String> + Send + Sync>;

impl<T: Clone> CaBundle<T> {
    pub(super) fn load(file: &Path, build: Build<T>) -> Result<Self, String> {
        let pem = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let current = build(&pem).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Self {
            file: file.to_owned(),
            build,
            current: RwLock::new(current),
            seen: Mutex::new(Ok(pem)),
        })
    }

    pub(super) fn reload(&self) -> Reload {
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

    pub(super) fn current(&self) -> T {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
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
