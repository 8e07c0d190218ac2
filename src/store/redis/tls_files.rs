//! The Redis TLS files, read again when they change, so a renewed certificate or CA bundle is
//! used without a restart.

use std::path::PathBuf;

use super::{ClientCertificate, RedisOptions, RedisStore, RedisTlsFiles};

/// The Redis TLS files of a store (`DTR_REDIS_CA_FILE`, `DTR_REDIS_CLIENT_CERT_FILE`,
/// `DTR_REDIS_CLIENT_KEY_FILE`) and what they held when last read. A renewed client certificate
/// (cert-manager) or a CA bundle that gains Redis's next CA is used without a restart: the
/// master's connection open now stays and a reconnect (after a failover, a network break)
/// presents the certificate read last; a Cluster's client and connection are rebuilt at once.
pub struct TlsFiles {
    store: RedisStore,
    options: std::sync::Mutex<RedisOptions>,
    /// The contents of the CA, certificate and key files at the last look, or why one could
    /// not be read: an unchanged file (or an unchanged failure) is neither used nor reported
    /// again.
    seen: std::sync::Mutex<[FileRead; 3]>,
}

/// A configured file's contents, or why they could not be read; `None` when not configured.
type FileRead = Option<Result<Vec<u8>, String>>;

impl TlsFiles {
    /// The files of `options`, when it names any, watched for `store` (built from `options`).
    pub fn new(store: RedisStore, options: &RedisOptions) -> Option<Self> {
        let seen = Self::read(options.tls_files.as_ref()?);
        Some(Self {
            store,
            options: std::sync::Mutex::new(options.clone()),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// The CA bundle, the certificate and the key, each when configured.
    fn read(files: &RedisTlsFiles) -> [FileRead; 3] {
        [&files.ca_file, &files.cert_file, &files.key_file].map(|path| {
            path.as_ref()
                .map(|path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())))
        })
    }

    /// The first of the files, to name them in log lines.
    pub fn file(&self) -> PathBuf {
        let options = self.options.lock().unwrap_or_else(|p| p.into_inner());
        let files = options.tls_files.clone().unwrap_or_default();
        files.ca_file.or(files.cert_file).unwrap_or_default()
    }

    /// Reads the files and, if they changed and make a usable CA bundle and certificate with
    /// its key, connects with them from now on.
    pub fn reload(&self) -> crate::tls::Reload {
        use crate::tls::Reload;
        let mut options = self.options.lock().unwrap_or_else(|p| p.into_inner());
        let Some(files) = options.tls_files.clone() else {
            return Reload::Unchanged;
        };
        let found = Self::read(&files);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == found {
            return Reload::Unchanged;
        }
        *seen = found.clone();
        let [ca, cert, key] = found;
        let renewed = (|| {
            let ca_pem = ca.transpose()?;
            if let (Some(pem), Some(path)) = (&ca_pem, &files.ca_file) {
                crate::tls::parse_certificates(pem).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let client_certificate = match (cert.transpose()?, key.transpose()?) {
                (Some(cert_pem), Some(key_pem)) => {
                    crate::tls::certified_key(&cert_pem, &key_pem).map_err(|e| e.to_string())?;
                    Some(ClientCertificate { cert_pem, key_pem })
                }
                _ => None,
            };
            let renewed = RedisOptions {
                ca_pem,
                client_certificate,
                ..options.clone()
            };
            self.store.use_certificates(&renewed).map_err(|e| e.to_string())?;
            Ok::<_, String>(renewed)
        })();
        match renewed {
            Ok(renewed) => {
                *options = renewed;
                Reload::Replaced
            }
            Err(e) => Reload::Failed(e),
        }
    }
}
