//! The effective settings of a configuration, for `dtr-proxy check-config`.

use std::time::Duration;

use url::Url;

use super::{Config, LogFormat, StoreSettings};

impl Config {
    /// The effective settings, for `dtr-proxy check-config`: every value as it will be used,
    /// every secret shown only as set or unset.
    pub fn effective(&self) -> serde_json::Value {
        use serde_json::json;
        const SET: &str = "(set)";
        let secs = |d: Duration| d.as_secs();
        let store = match &self.store {
            StoreSettings::Embedded => json!({ "kind": "embedded" }),
            StoreSettings::Redis(options) => {
                let topology = match &options.topology {
                    crate::store::Topology::Standalone { url } => {
                        json!({ "kind": "standalone", "url": redact_url(url) })
                    }
                    crate::store::Topology::Cluster { url } => {
                        json!({ "kind": "cluster", "url": redact_url(url) })
                    }
                    crate::store::Topology::Sentinel(target) => json!({
                        "kind": "sentinel",
                        "sentinels": target.sentinels.iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>(),
                        "master": target.master,
                        "db": target.db,
                        "tls": target.tls,
                        "password": target.password.as_ref().map(|_| SET),
                    }),
                };
                json!({
                    "kind": "redis",
                    "topology": topology,
                    "key_prefix": options.key_prefix,
                    "timeout": secs(options.timeout),
                    "username": options.username,
                    "password": options.password.as_ref().map(|_| SET),
                    "sentinel_password": options.sentinel_password.as_ref().map(|_| SET),
                    "ca": options.ca_pem.as_ref().map(|_| SET),
                    "client_certificate": options.client_certificate.as_ref().map(|_| SET),
                })
            }
        };
        let clients: Vec<serde_json::Value> = self
            .clients
            .iter()
            .map(|c| {
                json!({
                    "client_id": c.client_id,
                    "realm": c.realm,
                    "profile": c.profile.map(|p| p.as_str()),
                    "notification_endpoint": c.notification_endpoint,
                    "interval": c.interval,
                    "expires_in": c.expires_in,
                    "redirect_uris": c.redirect_uris,
                    "require_dpop": c.require_dpop,
                    "tls_client_certificate_bound_access_tokens": c.tls_client_certificate_bound_access_tokens,
                    "jwks_keys": c.jwks.as_ref().map(|j| j.keys.len()),
                    "jwks_uri": c.jwks_uri,
                    "client_secret": c.client_secret.as_ref().map(|_| SET),
                })
            })
            .collect();
        let federation = self.federation.as_ref().map(|f| {
            let roots: Vec<serde_json::Value> = f
                .trust_roots
                .iter()
                .map(|root| match &root.keys {
                    super::RootKeys::Inline(set) => json!({ "id": root.id, "jwks_keys": set.keys.len() }),
                    super::RootKeys::Uri(url) => json!({ "id": root.id, "jwks_uri": url.as_str() }),
                })
                .collect();
            let statements: Vec<serde_json::Value> = f
                .provider_statements
                .iter()
                .map(|s| json!({ "realm": s.realm, "federation": s.federation }))
                .collect();
            json!({
                "trust_roots": roots,
                "provider_statements": statements,
                "connect_timeout": secs(f.limits.connect_timeout),
                "fetch_timeout": secs(f.limits.total_timeout),
                "max_bytes": f.limits.max_bytes,
                "max_links": f.limits.max_links,
                "host_rate": f.limits.host_rate,
                "allow_private_targets": f.limits.allow_private_targets,
                "ca": f.limits.ca_pem.as_ref().map(|_| SET),
                "provisioning": format!("{:?}", f.provisioning),
            })
        });
        json!({
            "upstream_url": self.upstream_url.as_str(),
            "public_url": self.public_url.as_str(),
            "listen": self.listen.to_string(),
            "admin_listen": self.admin_listen.to_string(),
            "tls": self.tls.as_ref().map(server_tls),
            "admin_tls": self.admin_tls.as_ref().map(server_tls),
            "tls_reload_interval": secs(self.tls_reload_interval),
            "upstream_ca": self.upstream_ca.as_ref().map(|(file, only)| json!({ "file": file, "only": only })),
            "store": store,
            "webhook_secret": self.webhook_secret.as_ref().map(|_| SET),
            "hash_key": SET,
            "token_keys": self.sealer.key_ids(),
            "events": self.events.as_ref().map(|e| json!({
                "url": e.url.as_str(), "realms": e.realms, "secret": SET,
                "ca_file": e.roots.as_ref().map(|roots| roots.file()),
            })),
            "keycloak_admin": self.keycloak_admin.as_ref().map(|a| json!({
                "client_id": a.client_id, "realm": a.realm, "client_secret": SET,
            })),
            "operator_api": json!({
                "enabled": !self.operator_tokens.0.is_empty(),
                "tokens": self.operator_tokens.0.len(),
                "max_lifetime": secs(self.operator_max_lifetime),
            }),
            "allow_insecure_http": self.allow_insecure_http,
            "offline_access": self.offline_access,
            "interim_id_token": self.interim_id_token,
            "require_dpop": self.require_dpop,
            "dpop_nonce": self.dpop_nonce,
            "jwks_cache_ttl": secs(self.jwks_cache_ttl),
            "login_ttl": secs(self.login_ttl),
            "deferred_code_ttl": secs(self.deferred_code_ttl),
            "default_interval": self.default_interval,
            "default_expires_in": self.default_expires_in,
            "upstream_timeout": secs(self.upstream_timeout),
            "ping_timeout": secs(self.ping_timeout),
            "rp_ca_file": self.rp_roots.as_ref().map(|roots| roots.file()),
            "completion_hold": secs(self.completion_hold),
            "max_body_bytes": self.max_body_bytes,
            "max_header_bytes": self.max_header_bytes,
            "header_read_timeout": secs(self.header_read_timeout),
            "body_read_timeout": secs(self.body_read_timeout),
            "trusted_proxies": self.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "client_cert_header": self.client_cert_header.as_ref().map(|h| h.as_str()),
            "shutdown_grace": secs(self.shutdown_grace),
            "shutdown_delay": secs(self.shutdown_delay),
            "log": self.log,
            "log_format": match self.log_format { LogFormat::Text => "text", LogFormat::Json => "json" },
            "access_log": self.access_log,
            "traces": self.traces.as_ref().map(|t| json!({
                "endpoint": redact_url(t.endpoint.as_str()),
                "service_name": t.service_name,
                "sampler": t.sampler.describe(),
                // Header values are often credentials: names only.
                "headers": t.headers.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
                "resource": t.resource.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "timeout_ms": t.timeout.as_millis() as u64,
                "ca_file": t.tls.as_ref().and_then(|tls| tls.ca_file()),
                "client_certificate_file": t.tls.as_ref().and_then(|tls| tls.certificate_file()),
            })),
            "paths": self.paths,
            "clients": clients,
            "ietf_realms": self.ietf_realms,
            "federation": federation,
            "warnings": self.warnings,
        })
    }
}

fn server_tls(tls: &crate::tls::ServerTls) -> serde_json::Value {
    serde_json::json!({
        "cert_file": tls.cert_file().display().to_string(),
        "key_file": tls.key_file().display().to_string(),
        "client_certificates": if tls.requires_client_certificates() {
            "required"
        } else if tls.requests_client_certificates() {
            "requested"
        } else {
            "none"
        },
    })
}

/// A URL with its password (and a user name that may be a credential) hidden.
fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "(unparsable)".into(),
    }
}
