//! Where the state lives: the embedded store, or Redis (standalone, through Sentinel, or a
//! Cluster) with its credentials and TLS files, each checked now and named by its setting.

use std::path::PathBuf;
use std::time::Duration;

use super::RawConfig;
use crate::store::{ClientCertificate, RedisOptions, RedisTlsFiles, Topology};
use crate::tls::{self, KeyPairError};

#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// In-process store: one replica only, state dies with the process.
    Embedded,
    /// Redis standalone, through Sentinel, or Cluster.
    Redis(Box<RedisOptions>),
}

/// The store `DTR_REDIS_*` describe: the embedded one when `DTR_REDIS_URL` is unset.
pub(super) fn settings(raw: &RawConfig, errors: &mut Vec<String>) -> StoreSettings {
    let nonempty = |value: &Option<String>| value.clone().filter(|s| !s.is_empty());
    if raw.redis_timeout == 0 {
        errors.push("DTR_REDIS_TIMEOUT: must be at least 1 second".into());
    }
    match raw.redis_url.as_deref().filter(|s| !s.is_empty()) {
        None => StoreSettings::Embedded,
        Some(url) => {
            let topology = Topology::from_url(url, raw.redis_cluster).unwrap_or_else(|e| {
                errors.push(format!("DTR_REDIS_URL: {e}"));
                Topology::Standalone { url: url.to_owned() }
            });
            let sentinel = matches!(topology, Topology::Sentinel(_));
            if !sentinel
                && (nonempty(&raw.redis_sentinel_username).is_some()
                    || nonempty(&raw.redis_sentinel_password).is_some())
            {
                errors.push("DTR_REDIS_SENTINEL_USERNAME/PASSWORD: only for a redis+sentinel:// DTR_REDIS_URL".into());
            }
            let tls = url.to_ascii_lowercase().starts_with("rediss");
            let ca_pem = match nonempty(&raw.redis_ca_file) {
                None => None,
                Some(_) if !tls => {
                    errors.push("DTR_REDIS_CA_FILE: only for a rediss:// or rediss+sentinel:// DTR_REDIS_URL".into());
                    None
                }
                Some(path) => match std::fs::read(&path) {
                    Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => Some(pem),
                    Ok(_) => {
                        errors.push(format!("DTR_REDIS_CA_FILE: no PEM certificate in {path}"));
                        None
                    }
                    Err(e) => {
                        errors.push(format!("DTR_REDIS_CA_FILE: cannot read {path}: {e}"));
                        None
                    }
                },
            };
            let client_certificate = match (
                nonempty(&raw.redis_client_cert_file),
                nonempty(&raw.redis_client_key_file),
            ) {
                (None, None) => None,
                (Some(_), Some(_)) if !tls => {
                    errors.push(
                        "DTR_REDIS_CLIENT_CERT_FILE: only for a rediss:// or rediss+sentinel:// DTR_REDIS_URL".into(),
                    );
                    None
                }
                (Some(cert), Some(key)) => redis_client_certificate(&cert, &key, errors),
                _ => {
                    errors.push("DTR_REDIS_CLIENT_CERT_FILE and DTR_REDIS_CLIENT_KEY_FILE go together".into());
                    None
                }
            };
            let password = match (nonempty(&raw.redis_password), nonempty(&raw.redis_password_file)) {
                (Some(_), Some(_)) => {
                    errors.push("DTR_REDIS_PASSWORD and DTR_REDIS_PASSWORD_FILE: set one of them".into());
                    None
                }
                (password, None) => password,
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    // A Secret key written by hand often ends with a newline that is not part
                    // of the password.
                    Ok(password) => match password.trim_end_matches(['\r', '\n']) {
                        "" => {
                            errors.push(format!("DTR_REDIS_PASSWORD_FILE: {path} is empty"));
                            None
                        }
                        password => Some(password.to_owned()),
                    },
                    Err(e) => {
                        errors.push(format!("DTR_REDIS_PASSWORD_FILE: cannot read {path}: {e}"));
                        None
                    }
                },
            };
            StoreSettings::Redis(Box::new(RedisOptions {
                topology,
                key_prefix: raw.redis_key_prefix.clone(),
                timeout: Duration::from_secs(raw.redis_timeout.max(1)),
                username: nonempty(&raw.redis_username),
                password,
                sentinel_username: nonempty(&raw.redis_sentinel_username),
                sentinel_password: nonempty(&raw.redis_sentinel_password),
                tls_files: (ca_pem.is_some() || client_certificate.is_some()).then(|| RedisTlsFiles {
                    ca_file: ca_pem.as_ref().and(nonempty(&raw.redis_ca_file)).map(PathBuf::from),
                    cert_file: client_certificate
                        .as_ref()
                        .and(nonempty(&raw.redis_client_cert_file))
                        .map(PathBuf::from),
                    key_file: client_certificate
                        .as_ref()
                        .and(nonempty(&raw.redis_client_key_file))
                        .map(PathBuf::from),
                }),
                ca_pem,
                client_certificate,
            }))
        }
    }
}

/// A Redis client certificate chain and key, read and checked to make a pair.
fn redis_client_certificate(cert: &str, key: &str, errors: &mut Vec<String>) -> Option<ClientCertificate> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| errors.push(format!("DTR_REDIS_CLIENT_CERT_FILE: cannot read {cert}: {e}")))
        .ok();
    let key_pem = std::fs::read(key)
        .map_err(|e| errors.push(format!("DTR_REDIS_CLIENT_KEY_FILE: cannot read {key}: {e}")))
        .ok();
    let (cert_pem, key_pem) = (cert_pem?, key_pem?);
    match tls::certified_key(&cert_pem, &key_pem) {
        Ok(_) => Some(ClientCertificate { cert_pem, key_pem }),
        Err(KeyPairError::Cert(e)) => {
            errors.push(format!("DTR_REDIS_CLIENT_CERT_FILE: {cert}: {e}"));
            None
        }
        Err(KeyPairError::Key(e)) => {
            errors.push(format!("DTR_REDIS_CLIENT_KEY_FILE: {key}: {e}"));
            None
        }
    }
}
