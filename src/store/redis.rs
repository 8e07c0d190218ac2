//! Redis store (redis-rs ConnectionManager for a standalone server, the cluster client for
//! Redis Cluster). Every key carries a TTL; multi-key scripts only touch keys that share a
//! `{…}` hash tag, so they run on Cluster unchanged.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Script, ScriptInvocation};
use tokio::sync::OnceCell;

use super::{StoreError, StoreResult};

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

const CLAIM_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], member)
end
return due";

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    replace: Script,
    set_add: Script,
    claim_due: Script,
}

#[derive(Clone)]
enum Conn {
    /// Reconnects by itself with backoff; created lazily so the proxy starts (and passes
    /// traffic through) while Redis is still down.
    Standalone(ConnectionManager),
    /// Connected on first use and kept; the cluster client follows slot moves itself.
    Cluster(Arc<ClusterClient>, Arc<OnceCell<ClusterConnection>>),
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    pub fn connect(url: &str, cluster: bool, prefix: &str, timeout: Duration) -> StoreResult<Self> {
        let conn = if cluster {
            let client = ClusterClient::builder(vec![url.to_owned()])
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(unavailable)?;
            Conn::Cluster(Arc::new(client), Arc::new(OnceCell::new()))
        } else {
            let client = redis::Client::open(url).map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            Conn::Standalone(ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?)
        };
        Ok(Self {
            conn,
            prefix: Arc::from(prefix),
            scripts: Arc::new(Scripts {
                replace: Script::new(REPLACE),
                set_add: Script::new(SET_ADD),
                claim_due: Script::new(CLAIM_DUE),
            }),
        })
    }

    pub(super) fn namespaced(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 1 + key.len());
        out.push_str(&self.prefix);
        out.push(':');
        out.push_str(key);
        out
    }

    async fn cluster(client: &ClusterClient, cell: &OnceCell<ClusterConnection>) -> StoreResult<ClusterConnection> {
        cell.get_or_try_init(|| client.get_async_connection())
            .await
            .cloned()
            .map_err(unavailable)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        match &self.conn {
            Conn::Standalone(manager) => cmd.query_async(&mut manager.clone()).await.map_err(unavailable),
            Conn::Cluster(client, cell) => {
                let mut conn = Self::cluster(client, cell).await?;
                cmd.query_async(&mut conn).await.map_err(unavailable)
            }
        }
    }

    async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> StoreResult<T> {
        match &self.conn {
            Conn::Standalone(manager) => invocation.invoke_async(&mut manager.clone()).await.map_err(unavailable),
            Conn::Cluster(client, cell) => {
                let mut conn = Self::cluster(client, cell).await?;
                invocation.invoke_async(&mut conn).await.map_err(unavailable)
            }
        }
    }

    pub(super) async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    pub(super) async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl_ms(ttl)))
            .await
    }

    pub(super) async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> StoreResult<bool> {
        let reply: Option<String> = self
            .query(
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
        self.query(redis::cmd("GETDEL").arg(key)).await
    }

    pub(super) async fn delete(&self, key: &str) -> StoreResult<()> {
        self.query::<i64>(redis::cmd("DEL").arg(key)).await.map(drop)
    }

    pub(super) async fn replace(&self, key: &str, expected: &[u8], new: &[u8]) -> StoreResult<bool> {
        let replaced: i64 = self
            .invoke(self.scripts.replace.key(key).arg(expected).arg(new))
            .await?;
        Ok(replaced == 1)
    }

    pub(super) async fn get_pair(&self, key: &str, other: &str) -> StoreResult<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        let mut values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(key).arg(other)).await?;
        let second = values.pop().flatten();
        let first = values.pop().flatten();
        Ok((first, second))
    }

    pub(super) async fn set_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        self.invoke::<i64>(self.scripts.set_add.key(key).arg(member).arg(ttl_ms(ttl)))
            .await
            .map(drop)
    }

    pub(super) async fn set_members(&self, key: &str) -> StoreResult<Vec<String>> {
        self.query(redis::cmd("SMEMBERS").arg(key)).await
    }

    pub(super) async fn set_remove(&self, key: &str, member: &str) -> StoreResult<()> {
        self.query::<i64>(redis::cmd("SREM").arg(key).arg(member))
            .await
            .map(drop)
    }

    pub(super) async fn schedule(&self, queue: &str, member: &str, due_ms: u64) -> StoreResult<()> {
        self.query::<i64>(redis::cmd("ZADD").arg(queue).arg(due_ms).arg(member))
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
        self.invoke(self.scripts.claim_due.key(queue).arg(now_ms).arg(until).arg(limit))
            .await
    }

    pub(super) async fn unschedule(&self, queue: &str, member: &str) -> StoreResult<()> {
        self.query::<i64>(redis::cmd("ZREM").arg(queue).arg(member))
            .await
            .map(drop)
    }

    pub(super) async fn count_due_after(&self, queue: &str, after_ms: u64) -> StoreResult<u64> {
        self.query(redis::cmd("ZCOUNT").arg(queue).arg(format!("({after_ms}")).arg("+inf"))
            .await
    }

    pub(super) async fn ping(&self) -> StoreResult<()> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}
