//! The connections, and what a failed command means for them: how the store follows a failover
//! to the new master, and which commands it may send again.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Role, ServerErrorKind};
use tokio::sync::{Mutex, OnceCell};

use crate::store::{StoreError, StoreResult};

#[derive(Clone)]
pub(super) enum Conn {
    /// One master, directly or through Sentinel; connected lazily so the proxy starts (and
    /// passes traffic through) while Redis is still down.
    Master(Arc<Master>),
    /// Connected on first use and kept; the cluster client follows slot moves itself.
    Cluster(Arc<Cluster>),
}

/// The cluster client and its connection. Both are replaced when the TLS files change: the
/// connection keeps its nodes' connections and opens new ones with the certificates it was
/// built with, so only a new one presents the new certificate.
pub(super) struct Cluster {
    current: RwLock<(Arc<ClusterClient>, Arc<OnceCell<ClusterConnection>>)>,
}

impl Cluster {
    pub(super) fn new(client: ClusterClient) -> Self {
        Self {
            current: RwLock::new((Arc::new(client), Arc::new(OnceCell::new()))),
        }
    }

    pub(super) async fn connection(&self) -> StoreResult<ClusterConnection> {
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

    pub(super) fn replace(&self, client: ClusterClient) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(client), Arc::new(OnceCell::new()));
    }
}

/// Where a new connection to the master comes from.
pub(super) enum Source {
    Direct(redis::Client),
    Sentinel(Mutex<SentinelClient>),
}

/// The connection to the current master, replaced when it fails or the master moves.
pub(super) struct Master {
    /// Replaced when the TLS files change: the connection open now stays, the next one
    /// presents the new certificate.
    pub(super) source: RwLock<Arc<Source>>,
    pub(super) config: AsyncConnectionConfig,
    pub(super) timeout: Duration,
    pub(super) current: RwLock<Option<(u64, MultiplexedConnection)>>,
    pub(super) generation: AtomicU64,
    /// Held while connecting, so one caller connects and the others wait for its result.
    pub(super) connecting: Mutex<Backoff>,
}

#[derive(Default)]
pub(super) struct Backoff {
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

pub(super) fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Whether running a command twice leaves the same state and answer as running it once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Repeat {
    Safe,
    Unsafe,
}

impl Master {
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        if let Some(current) = self.current.read().expect("lock").clone() {
            return Ok(current);
        }
        // Boxed: the connect is deep (Sentinel, TLS, the role check), and every command's
        // future would carry it inline, to be copied wherever that future is moved or boxed.
        Box::pin(self.connect()).await
    }

    /// [`Self::connection`] when there is none: one caller connects, the others wait for it.
    async fn connect(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
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
    pub(super) async fn run<T, F, Fut>(&self, repeat: Repeat, command: F) -> StoreResult<T>
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

#[cfg(test)]
mod tests {
    use super::*;

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
