//! Redis store: one master reached directly (`redis://`, `rediss://`) or through Sentinel
//! (`redis+sentinel://`), or a Redis Cluster. Every key carries a TTL; multi-key scripts only
//! touch keys that share a `{…}` hash tag, so they run on Cluster unchanged.
//!
//! After a failover the proxy follows the new master by itself: a `READONLY` or `MASTERDOWN`
//! reply, a broken or silent connection, drops the connection; the next command connects anew —
//! through Sentinel it asks for the master again, directly it resolves the address again (a
//! Kubernetes Service that now points at the promoted pod) — and checks with `ROLE` that it
//! reached a master. A command the server refused without running it (`READONLY`,
//! `MASTERDOWN`, `LOADING`) is retried within the store timeout; one that may have run is
//! retried only if running it twice is harmless. When no master can be reached at all, a
//! command fails at once (connects are paced by a short backoff), so an outage costs each
//! request a fast 503, not a wait. The cluster client follows slot moves and failovers itself.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo,
    RedisError, Role, Script, ServerErrorKind, TlsCertificates, TlsMode,
};
use tokio::sync::{Mutex, OnceCell};

use super::{StoreError, StoreResult};
use crate::metrics::StoreMetrics;

const REPLACE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0";

const SET_ADD: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1";

// A hash of one or a few entries is a listpack: about 100 bytes less per key than a set.
const INDEX_ADD: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], '')
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1";

// When the value's bytes from ARGV[1] (inclusive) to ARGV[2] are ARGV[3]'s length of any
// bytes followed by ARGV[4], overwrites the first of them with ARGV[3] (SETRANGE keeps the
// TTL) and returns the bytes it replaced; otherwise, or when there is no value (GETRANGE then
// reads ''), writes nothing. It reads only the few bytes it compares: the value itself follows
// in a plain GET, which costs Redis a fraction of moving it through Lua and back. Offsets come
// computed and the arguments are few: in Lua, arithmetic and each argument cost more than
// the comparison.
const PATCH_GUARDED: &str = r"
local span = redis.call('GETRANGE', KEYS[1], ARGV[1], ARGV[2])
if string.sub(span, #ARGV[3] + 1) ~= ARGV[4] then
  return false
end
redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[3])
return string.sub(span, 1, #ARGV[3])";

// SETRANGE on a missing key would create one without a TTL: only an existing value is patched.
const PATCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0";

const CLAIM_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], member)
end
return due";

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

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    kind: &'static str,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    /// Latency and failures by command, when the process exports metrics.
    metrics: Option<StoreMetrics>,
}

struct Scripts {
    replace: Script,
    patch_guarded: Script,
    index_add: Script,
    patch: Script,
    set_add: Script,
    claim_due: Script,
}

#[derive(Clone)]
enum Conn {
    /// One master, directly or through Sentinel; connected lazily so the proxy starts (and
    /// passes traffic through) while Redis is still down.
    Master(Arc<Master>),
    /// Connected on first use and kept; the cluster client follows slot moves itself.
    Cluster(Arc<Cluster>),
}

/// The cluster client and its connection. Both are replaced when the TLS files change: the
/// connection keeps its nodes' connections and opens new ones with the certificates it was
/// built with, so only a new one presents the new certificate.
struct Cluster {
    current: RwLock<(Arc<ClusterClient>, Arc<OnceCell<ClusterConnection>>)>,
}

impl Cluster {
    fn new(client: ClusterClient) -> Self {
        Self {
            current: RwLock::new((Arc::new(client), Arc::new(OnceCell::new()))),
        }
    }

    async fn connection(&self) -> StoreResult<ClusterConnection> {
        let (client, cell) = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            // Every command after the first: the connection, without touching the client.
            if let Some(conn) = current.1.get() {
                return Ok(conn.clone());
            }
            current.clone()
        };
        cell.get_or_try_init(|| client.get_async_connection())
            .await
            .cloned()
            .map_err(unavailable)
    }

    fn replace(&self, client: ClusterClient) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(client), Arc::new(OnceCell::new()));
    }
}

/// Where a new connection to the master comes from.
enum Source {
    Direct(redis::Client),
    Sentinel(Mutex<SentinelClient>),
}

/// The connection to the current master, replaced when it fails or the master moves.
struct Master {
    /// Replaced when the TLS files change: the connection open now stays, the next one
    /// presents the new certificate.
    source: RwLock<Arc<Source>>,
    config: AsyncConnectionConfig,
    timeout: Duration,
    current: RwLock<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    /// Held while connecting, so one caller connects and the others wait for its result.
    connecting: Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    last_failure: Option<(Instant, String)>,
}

impl Backoff {
    /// After a failed connect, new attempts wait a little (50 ms doubling to 1 s) so an outage
    /// costs each request one fast refusal instead of one connect timeout.
    fn wait(&self) -> Option<String> {
        let (at, error) = self.last_failure.as_ref()?;
        let pause = Duration::from_millis(50u64 << self.failures.min(5)).min(Duration::from_secs(1));
        (at.elapsed() < pause).then(|| error.clone())
    }
}

/// What a failed command means for the connection and for trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The connection is of no more use (broken, silent, or to a node that is not the master).
    pub drop_connection: bool,
    /// The server refused the command without running it: trying again is always safe.
    pub not_run: bool,
}

pub(crate) fn verdict(e: &RedisError) -> Verdict {
    let readonly = matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
    ) || {
        // A write refused inside a script may come back wrapped.
        let text = e.to_string();
        text.contains("READONLY") || text.contains("read only replica")
    };
    if readonly {
        return Verdict {
            drop_connection: true,
            not_run: true,
        };
    }
    if matches!(e.kind(), ErrorKind::Server(ServerErrorKind::BusyLoading)) {
        return Verdict {
            drop_connection: false,
            not_run: true,
        };
    }
    if e.is_connection_refusal() {
        return Verdict {
            drop_connection: true,
            not_run: true,
        };
    }
    Verdict {
        drop_connection: e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error(),
        not_run: false,
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Whether running a command twice leaves the same state and answer as running it once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    Unsafe,
}

impl Master {
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        if let Some(current) = self.current.read().expect("lock").clone() {
            return Ok(current);
        }
        let mut backoff = self.connecting.lock().await;
        if let Some(current) = self.current.read().expect("lock").clone() {
            return Ok(current);
        }
        if let Some(error) = backoff.wait() {
            return Err(StoreError::Unavailable(format!("reconnecting to Redis: {error}")));
        }
        let opened = match tokio::time::timeout(self.timeout.saturating_mul(2), self.open()).await {
            Ok(opened) => opened,
            Err(_) => Err(format!("no master within {:?}", self.timeout.saturating_mul(2))),
        };
        match opened {
            Ok(conn) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *self.current.write().expect("lock") = Some((generation, conn.clone()));
                if backoff.failures > 0 {
                    tracing::info!(target: "dtr::store", "connected to the Redis master again");
                }
                *backoff = Backoff::default();
                Ok((generation, conn))
            }
            Err(error) => {
                backoff.failures = backoff.failures.saturating_add(1);
                backoff.last_failure = Some((Instant::now(), error.clone()));
                Err(StoreError::Unavailable(error))
            }
        }
    }

    /// A new connection to whichever node is master now.
    async fn open(&self) -> Result<MultiplexedConnection, String> {
        let source = self.source.read().unwrap_or_else(|p| p.into_inner()).clone();
        let client = match &*source {
            Source::Direct(client) => client.clone(),
            // Sentinel names the master and the library checks it with ROLE.
            Source::Sentinel(sentinel) => sentinel
                .lock()
                .await
                .async_get_client()
                .await
                .map_err(|e| format!("no master from Sentinel: {e}"))?,
        };
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| e.to_string())?;
        if matches!(*source, Source::Direct(_)) {
            // The address may still lead to a demoted master (a Service whose endpoints have
            // not moved yet): writing there would fail, so wait for the new one.
            match redis::cmd("ROLE").query_async::<Role>(&mut conn).await {
                Ok(Role::Primary { .. }) => {}
                Ok(_) => return Err("the configured Redis address is a replica, not the master".into()),
                // ROLE may be forbidden by an ACL; the writes will tell.
                Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(conn)
    }

    fn forget(&self, generation: u64) {
        let mut current = self.current.write().expect("lock");
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// Runs one command (or pipeline) on the master, following a failover within the store
    /// timeout.
    async fn run<T, F, Fut>(&self, repeat: Repeat, command: F) -> StoreResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(25);
        loop {
            let outcome = match self.connection().await {
                Ok((generation, conn)) => match command(conn).await {
                    Ok(value) => return Ok(value),
                    Err(e) => {
                        let verdict = verdict(&e);
                        if verdict.drop_connection {
                            tracing::warn!(target: "dtr::store", error = %e, "dropping the Redis connection");
                            self.forget(generation);
                        }
                        (
                            verdict.not_run || (repeat == Repeat::Safe && verdict.drop_connection),
                            unavailable(e),
                        )
                    }
                },
                // Not connected: nothing ran, but the connect has just been tried (or is in
                // its backoff); fail fast rather than hold the request through an outage.
                Err(e) => (false, e),
            };
            let (again, error) = outcome;
            if !again || Instant::now() + pause > deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

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

fn cluster_client(options: &RedisOptions) -> StoreResult<ClusterClient> {
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
fn master_source(options: &RedisOptions) -> StoreResult<Source> {
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

impl RedisStore {
    pub fn connect(options: &RedisOptions) -> StoreResult<Self> {
        let timeout = options.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = match &options.topology {
            Topology::Cluster { .. } => Conn::Cluster(Arc::new(Cluster::new(cluster_client(options)?))),
            Topology::Standalone { .. } | Topology::Sentinel(_) => Conn::Master(Arc::new(Master {
                source: RwLock::new(Arc::new(master_source(options)?)),
                config,
                timeout,
                current: RwLock::new(None),
                generation: AtomicU64::new(0),
                connecting: Mutex::new(Backoff::default()),
            })),
        };
        Ok(Self {
            conn,
            kind: options.topology.kind(),
            prefix: Arc::from(options.key_prefix.as_str()),
            scripts: Arc::new(Scripts {
                replace: Script::new(REPLACE),
                patch_guarded: Script::new(PATCH_GUARDED),
                index_add: Script::new(INDEX_ADD),
                patch: Script::new(PATCH),
                set_add: Script::new(SET_ADD),
                claim_due: Script::new(CLAIM_DUE),
            }),
            metrics: None,
        })
    }

    /// `redis`, `redis-sentinel` or `redis-cluster`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub(super) fn namespaced(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 1 + key.len());
        out.push_str(&self.prefix);
        out.push(':');
        out.push_str(key);
        out
    }

    /// From now on, connects with the CA and client certificate of `options` (the same
    /// settings otherwise, read again from their files). The master's connection open now
    /// stays, and the next one presents the new certificate; a cluster's connection is
    /// replaced, the next command opening a new one.
    pub fn use_certificates(&self, options: &RedisOptions) -> StoreResult<()> {
        match &self.conn {
            Conn::Master(master) => {
                let source = Arc::new(master_source(options)?);
                *master.source.write().unwrap_or_else(|p| p.into_inner()) = source;
            }
            Conn::Cluster(cluster) => cluster.replace(cluster_client(options)?),
        }
        Ok(())
    }

    /// Boxed: the retrying future is deep, and every endpoint's future would carry it inline.
    fn query<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        repeat: Repeat,
        cmd: &'a Cmd,
    ) -> Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = match &self.conn {
                Conn::Master(master) => {
                    master
                        .run(repeat, |mut conn| async move { cmd.query_async(&mut conn).await })
                        .await
                }
                Conn::Cluster(cluster) => match cluster.connection().await {
                    Ok(mut conn) => cmd.query_async(&mut conn).await.map_err(unavailable),
                    Err(e) => Err(e),
                },
            };
            self.observe(command_name(cmd), started, result.is_err());
            result
        })
    }

    /// Runs `cmd`, an `EVALSHA` of `script` built by [`evalsha`]; where the server does not
    /// know the script yet (`NOSCRIPT`), loads it and sends the command again.
    fn invoke<'a, T: FromRedisValue + Send + 'a>(
        &'a self,
        repeat: Repeat,
        script: &'a Script,
        cmd: &'a Cmd,
    ) -> Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = match &self.conn {
                Conn::Master(master) => {
                    master
                        .run(repeat, |mut conn| async move { eval(script, cmd, &mut conn).await })
                        .await
                }
                Conn::Cluster(cluster) => match cluster.connection().await {
                    Ok(mut conn) => eval(script, cmd, &mut conn).await.map_err(unavailable),
                    Err(e) => Err(e),
                },
            };
            self.observe("eval", started, result.is_err());
            result
        })
    }

    /// Records into `metrics` the latency and failures of every command from now on.
    pub fn with_metrics(mut self, metrics: StoreMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn observe(&self, command: &'static str, started: Instant, failed: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(command, started.elapsed(), failed);
        }
    }

    pub(super) async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.query(Repeat::Safe, redis::cmd("GET").arg(key)).await
    }

    pub(super) async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        self.query(
            Repeat::Safe,
            redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl_ms(ttl)),
        )
        .await
    }

    pub(super) async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        // Twice would answer "exists" to the caller that stored it.
        let reply: Option<String> = self
            .query(
                Repeat::Unsafe,
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms(ttl))
                    .arg("NX"),
            )
            .await?;
        Ok(reply.is_some())
    }

    pub(super) async fn take(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        // Twice would lose the value: the first answer may be the one that never arrived.
        self.query(Repeat::Unsafe, redis::cmd("GETDEL").arg(key)).await
    }

    pub(super) async fn delete(&self, key: &str) -> StoreResult<()> {
        self.query::<i64>(Repeat::Safe, redis::cmd("DEL").arg(key))
            .await
            .map(drop)
    }

    pub(super) async fn replace(&self, key: &str, expected: &[u8], new: &[u8]) -> StoreResult<bool> {
        let replaced: i64 = self
            .invoke(
                Repeat::Unsafe,
                &self.scripts.replace,
                evalsha(&self.scripts.replace, key).arg(expected).arg(new),
            )
            .await?;
        Ok(replaced == 1)
    }

    pub(super) async fn get_patching(
        &self,
        key: &str,
        at: usize,
        patch: &[u8],
        guard: &[u8],
    ) -> StoreResult<Option<(Vec<u8>, bool)>> {
        if guard.is_empty() {
            return Ok(self.get(key).await?.map(|value| (value, false)));
        }
        // The guarded patch and the read, in one round trip. The patch alone is atomic (it
        // compares, then writes, and answers the bytes it replaced); the read sees the value
        // patched or not, and the replaced bytes are put back for the caller. A write by
        // someone else between the two is read as it is: the value is simply newer.
        // Repeating writes the same bytes again: safe.
        let script = &self.scripts.patch_guarded;
        let mut patching = evalsha(script, key);
        patching
            .arg(at)
            .arg(at + patch.len() + guard.len() - 1)
            .arg(patch)
            .arg(guard);
        let (replaced, value) = match &self.conn {
            Conn::Master(master) => {
                let mut pipe = redis::pipe();
                pipe.add_command(patching).add_command(Cmd::get(key)).ignore_errors();
                let started = Instant::now();
                // Boxed as `query` is: unboxed, the connection's future would sit in every
                // future that reads a poll, and be copied at each level.
                let result = Box::pin(master.run(Repeat::Safe, |mut conn| {
                    let pipe = &pipe;
                    async move { run_patching(script, pipe, &mut conn).await }
                }))
                .await;
                self.observe("eval", started, result.is_err());
                result?
            }
            // A pipeline on Cluster does not follow a migrating slot's redirections command
            // by command: two commands, sent at once, each followed on its own. Their order
            // does not matter, as the replaced bytes are put back either way.
            Conn::Cluster(..) => {
                let (replaced, value) = tokio::join!(
                    self.invoke::<Option<Vec<u8>>>(Repeat::Safe, script, &patching),
                    self.get(key)
                );
                (replaced?, value?)
            }
        };
        Ok(value.map(|mut value| {
            let patched = replaced.is_some();
            if let Some(replaced) = replaced {
                if let Some(slot) = value.get_mut(at..at + replaced.len()) {
                    slot.copy_from_slice(&replaced);
                }
            }
            (value, patched)
        }))
    }

    pub(super) async fn patch(&self, key: &str, at: usize, bytes: &[u8]) -> StoreResult<()> {
        self.invoke::<i64>(
            Repeat::Safe,
            &self.scripts.patch,
            evalsha(&self.scripts.patch, key).arg(at).arg(bytes),
        )
        .await
        .map(drop)
    }

    pub(super) async fn get_pair(&self, key: &str, other: &str) -> StoreResult<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        if matches!(self.conn, Conn::Cluster(..)) {
            // While a slot migrates, a multi-key read whose keys are not all on one side is
            // refused (TRYAGAIN) until the migration ends; a missing key (no poll yet) counts
            // as not there. Two reads in parallel follow the redirections one by one. The pair
            // need not be atomic: it is a record and the time of the last poll.
            let (first, second) = tokio::join!(self.get(key), self.get(other));
            return Ok((first?, second?));
        }
        let mut values: Vec<Option<Vec<u8>>> = self.query(Repeat::Safe, redis::cmd("MGET").arg(key).arg(other)).await?;
        let second = values.pop().flatten();
        let first = values.pop().flatten();
        Ok((first, second))
    }

    pub(super) async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        self.invoke::<i64>(
            Repeat::Safe,
            &self.scripts.set_add,
            evalsha(&self.scripts.set_add, key).arg(member).arg(ttl_ms(ttl)),
        )
        .await
        .map(drop)
    }

    pub(super) async fn index_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        self.invoke::<i64>(
            Repeat::Safe,
            &self.scripts.index_add,
            evalsha(&self.scripts.index_add, key).arg(member).arg(ttl_ms(ttl)),
        )
        .await
        .map(drop)
    }

    pub(super) async fn index_members(&self, key: &str) -> StoreResult<Vec<String>> {
        self.query(Repeat::Safe, redis::cmd("HKEYS").arg(key)).await
    }

    pub(super) async fn index_remove(&self, key: &str, member: &str) -> StoreResult<()> {
        self.query::<i64>(Repeat::Safe, redis::cmd("HDEL").arg(key).arg(member))
            .await
            .map(drop)
    }

    pub(super) async fn set_members(&self, key: &str) -> StoreResult<Vec<String>> {
        self.query(Repeat::Safe, redis::cmd("SMEMBERS").arg(key)).await
    }

    pub(super) async fn set_remove(&self, key: &str, member: &str) -> StoreResult<()> {
        self.query::<i64>(Repeat::Safe, redis::cmd("SREM").arg(key).arg(member))
            .await
            .map(drop)
    }

    pub(super) async fn schedule(&self, queue: &str, member: &str, due_ms: u64) -> StoreResult<()> {
        self.query::<i64>(Repeat::Safe, redis::cmd("ZADD").arg(queue).arg(due_ms).arg(member))
            .await
            .map(drop)
    }

    pub(super) async fn claim_due(
        &self,
        queue: &str,
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let until = now_ms.saturating_add(ttl_ms(lease));
        // Twice would hide the members leased by the first run until their lease ends.
        self.invoke(
            Repeat::Unsafe,
            &self.scripts.claim_due,
            evalsha(&self.scripts.claim_due, queue)
                .arg(now_ms)
                .arg(until)
                .arg(limit),
        )
        .await
    }

    pub(super) async fn unschedule(&self, queue: &str, member: &str) -> StoreResult<()> {
        self.query::<i64>(Repeat::Safe, redis::cmd("ZREM").arg(queue).arg(member))
            .await
            .map(drop)
    }

    pub(super) async fn due_from(
        &self,
        queue: &str,
        from_ms: u64,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>> {
        let page: Vec<(String, f64)> = self
            .query(
                Repeat::Safe,
                redis::cmd("ZRANGEBYSCORE")
                    .arg(queue)
                    .arg(from_ms)
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(limit),
            )
            .await?;
        // Due times are whole milliseconds, exact in a double.
        Ok(page.into_iter().map(|(member, due)| (member, due as u64)).collect())
    }

    pub(super) async fn expire(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        let set: i64 = self
            .query(Repeat::Safe, redis::cmd("PEXPIRE").arg(key).arg(ttl_ms(ttl)))
            .await?;
        Ok(set == 1)
    }

    pub(super) async fn count_due_after(&self, queue: &str, after_ms: u64) -> StoreResult<u64> {
        self.query(
            Repeat::Safe,
            redis::cmd("ZCOUNT").arg(queue).arg(format!("({after_ms}")).arg("+inf"),
        )
        .await
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        self.query::<String>(Repeat::Safe, &redis::cmd("PING")).await.map(drop)
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

/// `EVALSHA` of `script` with one key, its arguments to be appended: built in one buffer (a
/// `ScriptInvocation` keeps every argument in a `Vec` of its own, then copies them all into
/// such a command on every call).
fn evalsha(script: &Script, key: &str) -> Cmd {
    let mut cmd = Cmd::with_capacity(8, 96 + key.len());
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(1).arg(key);
    cmd
}

/// Sends an [`evalsha`] command; on `NOSCRIPT` (a restarted or new server) loads the script
/// and sends it again, as `ScriptInvocation::invoke_async` does.
async fn eval<T: FromRedisValue>(
    script: &Script,
    cmd: &Cmd,
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

/// Sends the pipeline of [`RedisStore::get_patching`] (its guarded patch, then `GET`); on
/// `NOSCRIPT` loads the script and sends both again, as [`eval`] does for one command.
/// Answers the bytes the patch replaced (none when it did not patch) and the value.
async fn run_patching(
    script: &Script,
    pipe: &redis::Pipeline,
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<(Option<Vec<u8>>, Option<Vec<u8>>)> {
    let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    if matches!(replies.first(), Some(redis::Value::ServerError(e)) if e.kind() == Some(ServerErrorKind::NoScript)) {
        script.load_async(conn).await?;
        replies = pipe.query_async(conn).await?;
    }
    let [replaced, value]: [redis::Value; 2] = replies
        .try_into()
        .map_err(|_| RedisError::from((ErrorKind::Parse, "a pipeline of two commands answered otherwise")))?;
    Ok((
        redis::from_redis_value(replaced.extract_error()?)?,
        redis::from_redis_value(value.extract_error()?)?,
    ))
}

/// The command of `cmd` as a metric label: the commands this store sends, `other` for any else.
fn command_name(cmd: &Cmd) -> &'static str {
    const KNOWN: [&str; 20] = [
        "GET",
        "SET",
        "GETDEL",
        "DEL",
        "MGET",
        "PING",
        "SMEMBERS",
        "SREM",
        "SADD",
        "ZADD",
        "ZREM",
        "ZCOUNT",
        "ZRANGE",
        "ZRANGEBYSCORE",
        "HKEYS",
        "HDEL",
        "HSET",
        "PEXPIRE",
        "EXPIRE",
        "PTTL",
    ];
    let Some(redis::Arg::Simple(name)) = cmd.args_iter().next() else {
        return "other";
    };
    KNOWN
        .into_iter()
        .find(|known| known.as_bytes().eq_ignore_ascii_case(name))
        .unwrap_or("other")
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

    #[test]
    fn a_refused_or_broken_command_drops_the_connection_and_says_whether_it_ran() {
        let server = |kind| RedisError::from((ErrorKind::Server(kind), "refused"));
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        let refused = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        let both = |drop_connection, not_run| Verdict {
            drop_connection,
            not_run,
        };
        assert_eq!(verdict(&server(ServerErrorKind::ReadOnly)), both(true, true));
        assert_eq!(verdict(&server(ServerErrorKind::MasterDown)), both(true, true));
        assert_eq!(verdict(&server(ServerErrorKind::BusyLoading)), both(false, true));
        assert_eq!(verdict(&refused), both(true, true));
        assert_eq!(verdict(&io), both(true, false), "a reset request may have run");
        assert_eq!(verdict(&server(ServerErrorKind::ResponseError)), both(false, false));
    }
}
