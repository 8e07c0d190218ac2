//! Where Redis is and how to reach it: the URL and the credentials and TLS material beside it,
//! checked once at startup, and the clients built from them (again when the TLS files change).

use std::path::PathBuf;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisError, TlsCertificates, TlsMode};
use tokio::sync::Mutex;

use super::connection::Source;
use crate::store::{StoreError, StoreResult};

/// The port Sentinel listens on unless a `redis+sentinel://` URL names another.
pub const SENTINEL_PORT: u16 = 26379;

/// How the proxy reaches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One master at a fixed address (`redis://`, `rediss://`); may be a name that moves to the
    /// new master on failover.
    Standalone { url: String },
    /// A Redis Cluster, discovered from one seed node.
    Cluster { url: String },
    /// A master found through Sentinel.
    Sentinel(SentinelTarget),
}

/// A `redis+sentinel://` (`rediss+sentinel://` for TLS) URL, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub db: i64,
    /// TLS to the Sentinels and to the data nodes.
    pub tls: bool,
    /// The data nodes' credentials from the URL.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// Reads `DTR_REDIS_URL` (with `DTR_REDIS_CLUSTER`); the error says what is wrong.
    pub fn from_url(url: &str, cluster: bool) -> Result<Self, String> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("redis" | "rediss") => {
                redis::Client::open(url).map_err(|e| format!("not a usable Redis URL: {e}"))?;
                Ok(if cluster {
                    Topology::Cluster { url: url.to_owned() }
                } else {
                    Topology::Standalone { url: url.to_owned() }
                })
            }
            Some("redis+sentinel" | "rediss+sentinel") if cluster => {
                Err("a Sentinel URL cannot be combined with Redis Cluster mode".into())
            }
            Some(scheme @ ("redis+sentinel" | "rediss+sentinel")) => {
                let rest = &url[scheme.len() + 3..];
                SentinelTarget::parse(rest, scheme == "rediss+sentinel").map(Topology::Sentinel)
            }
            _ => Err("expected a redis://, rediss://, redis+sentinel:// or rediss+sentinel:// URL".into()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Standalone { .. } => "redis",
            Topology::Cluster { .. } => "redis-cluster",
            Topology::Sentinel(_) => "redis-sentinel",
        }
    }
}

impl SentinelTarget {
    /// `[user[:password]@]host[:port][,host[:port]…]/master-name[/db]`
    fn parse(rest: &str, tls: bool) -> Result<Self, String> {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the credentials are not UTF-8".to_owned())
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = info.split_once(':').map_or((info, None), |(u, p)| (u, Some(p)));
                let user = Some(decode(user)?).filter(|u| !u.is_empty());
                let pass = pass.map(decode).transpose()?.filter(|p| !p.is_empty());
                (user, pass)
            }
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) if !name.ends_with(':') && !port.contains(']') => {
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| format!("bad Sentinel port in {host:?}"))?;
                    (name, port)
                }
                _ => (host, SENTINEL_PORT),
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(format!("empty Sentinel host in {host:?}"));
            }
            sentinels.push((name.to_owned(), port));
        }
        if sentinels.is_empty() {
            return Err("no Sentinel address (redis+sentinel://host:26379,…/master-name)".into());
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = segments
            .next()
            .map(decode)
            .transpose()?
            .ok_or("no master name (redis+sentinel://host:26379/master-name)")?;
        let db = match segments.next() {
            None => 0,
            Some(db) => db.parse::<i64>().map_err(|_| format!("bad database number {db:?}"))?,
        };
        if segments.next().is_some() {
            return Err("expected /master-name or /master-name/db after the Sentinel addresses".into());
        }
        Ok(Self {
            sentinels,
            master,
            db,
            tls,
            username,
            password,
        })
    }
}

/// Everything the Redis store is built from.
#[derive(Clone)]
pub struct RedisOptions {
    pub topology: Topology,
    pub key_prefix: String,
    /// Connect and response timeout, and the time a refused command is retried within.
    pub timeout: Duration,
    /// Data-node credentials; override those of the URL.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Sentinel credentials (Sentinels often have a `requirepass` of their own).
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// PEM certificates that sign the TLS certificates of Redis and Sentinel, instead of the
    /// system's roots (an internal CA).
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM client certificate chain and its key, for servers that require one
    /// (`tls-auth-clients yes`); presented to data nodes and Sentinels alike.
    pub client_certificate: Option<ClientCertificate>,
    /// The files `ca_pem` and `client_certificate` were read from, read again when they
    /// change ([`TlsFiles`]).
    ///
    /// [`TlsFiles`]: super::TlsFiles
    pub tls_files: Option<RedisTlsFiles>,
}

/// Where the Redis CA bundle and the client certificate and key are read from.
#[derive(Debug, Clone, Default)]
pub struct RedisTlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A TLS client certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct ClientCertificate {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl RedisOptions {
    /// Options for one URL with nothing else set.
    pub fn new(topology: Topology, key_prefix: &str, timeout: Duration) -> Self {
        Self {
            topology,
            key_prefix: key_prefix.to_owned(),
            timeout,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            ca_pem: None,
            client_certificate: None,
            tls_files: None,
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("kind", &self.topology.kind())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn bad_settings(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis settings: {e}"))
}

/// The CA and client certificate of `options`, for redis-rs; `None` when TLS is to trust the
/// system's roots and present no certificate.
fn certificates(options: &RedisOptions) -> Option<TlsCertificates> {
    if options.ca_pem.is_none() && options.client_certificate.is_none() {
        return None;
    }
    Some(TlsCertificates {
        client_tls: options.client_certificate.as_ref().map(|client| ClientTlsConfig {
            client_cert: client.cert_pem.clone(),
            client_key: client.key_pem.clone(),
        }),
        root_cert: options.ca_pem.clone(),
    })
}

pub(super) fn cluster_client(options: &RedisOptions) -> StoreResult<ClusterClient> {
    let Topology::Cluster { url } = &options.topology else {
        return Err(StoreError::Unavailable("not a Redis Cluster".into()));
    };
    let mut builder = ClusterClient::builder(vec![url.clone()])
        .connection_timeout(options.timeout)
        .response_timeout(options.timeout);
    if let Some(username) = &options.username {
        builder = builder.username(username);
    }
    if let Some(password) = &options.password {
        builder = builder.password(password);
    }
    if let Some(certs) = certificates(options) {
        builder = builder.certs(certs);
    }
    builder.build().map_err(bad_settings)
}

/// Where connections to the master come from: the configured address, or the Sentinels.
pub(super) fn master_source(options: &RedisOptions) -> StoreResult<Source> {
    match &options.topology {
        Topology::Cluster { .. } => Err(StoreError::Unavailable("a Redis Cluster has no one master".into())),
        Topology::Standalone { url } => {
            let mut info = url.as_str().into_connection_info().map_err(bad_settings)?;
            let mut settings = info.redis_settings().clone();
            if let Some(username) = &options.username {
                settings = settings.set_username(username);
            }
            if let Some(password) = &options.password {
                settings = settings.set_password(password);
            }
            info = info.set_redis_settings(settings);
            let client = match certificates(options) {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            };
            Ok(Source::Direct(client.map_err(bad_settings)?))
        }
        Topology::Sentinel(target) => {
            let addrs = target.sentinels.iter().map(|(host, port)| {
                if target.tls {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), *port)
                }
            });
            let mut builder =
                SentinelClientBuilder::new(addrs, &target.master, SentinelServerType::Master).map_err(bad_settings)?;
            builder = builder.set_client_to_redis_db(target.db);
            if target.tls {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                if let Some(certs) = certificates(options) {
                    builder = builder
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_certificates(certs);
                }
            }
            if let Some(username) = options.username.as_ref().or(target.username.as_ref()) {
                builder = builder.set_client_to_redis_username(username);
            }
            if let Some(password) = options.password.as_ref().or(target.password.as_ref()) {
                builder = builder.set_client_to_redis_password(password);
            }
            if let Some(username) = &options.sentinel_username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            if let Some(password) = &options.sentinel_password {
                builder = builder.set_client_to_sentinel_password(password);
            }
            Ok(Source::Sentinel(Mutex::new(builder.build().map_err(bad_settings)?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelTarget {
        match Topology::from_url(url, false) {
            Ok(Topology::Sentinel(target)) => target,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_the_data_node_credentials() {
        let t = sentinel("redis+sentinel://s-0.redis:26380,s-1.redis,[::1]:26381/mymaster");
        assert_eq!(
            t.sentinels,
            vec![
                ("s-0.redis".to_owned(), 26380),
                ("s-1.redis".to_owned(), SENTINEL_PORT),
                ("::1".to_owned(), 26381)
            ]
        );
        assert_eq!((t.master.as_str(), t.db, t.tls), ("mymaster", 0, false));
        assert_eq!((t.username, t.password), (None, None));

        let t = sentinel("rediss+sentinel://app:p%40ss@sentinel:26379/main/2");
        assert_eq!((t.master.as_str(), t.db, t.tls), ("main", 2, true));
        assert_eq!(
            (t.username.as_deref(), t.password.as_deref()),
            (Some("app"), Some("p@ss"))
        );
        let t = sentinel("redis+sentinel://:secret@sentinel/main");
        assert_eq!((t.username, t.password.as_deref()), (None, Some("secret")));
    }

    #[test]
    fn bad_redis_urls_say_what_is_wrong() {
        for (url, cluster, needle) in [
            ("redis+sentinel://sentinel:26379", false, "master name"),
            ("redis+sentinel://sentinel:26379/", false, "master name"),
            ("redis+sentinel:///main", false, "no Sentinel address"),
            ("redis+sentinel://sentinel:port/main", false, "bad Sentinel port"),
            ("redis+sentinel://sentinel/main/x", false, "bad database"),
            ("redis+sentinel://sentinel/main", true, "Cluster"),
            ("http://redis:6379", false, "expected a redis://"),
            ("redis-sentinel", false, "expected a redis://"),
        ] {
            let error = Topology::from_url(url, cluster).expect_err(url);
            assert!(error.contains(needle), "{url}: {error}");
        }
        assert_eq!(
            Topology::from_url("redis://r:6379", true),
            Ok(Topology::Cluster {
                url: "redis://r:6379".into()
            })
        );
        assert_eq!(
            Topology::from_url("rediss://r:6379/1", false).map(|t| t.kind()),
            Ok("redis")
        );
    }
}
