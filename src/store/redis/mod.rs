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
//!
//! The operations are here; the Lua scripts in `scripts`, where Redis is and how to reach it in
//! `settings`, the connections and their failover in `connection`, TLS file reloads in `tls_files`.

mod connection;
mod scripts;
mod settings;
mod tls_files;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, Script};
use tokio::sync::Mutex;

use self::connection::{unavailable, Backoff, Cluster, Conn, Master, Repeat};
use self::scripts::{eval, evalsha, Scripts, CLAIM_DUE, INDEX_ADD, PATCH, PATCH_GUARDED, REPLACE, SET_ADD, UNPATCH};
use self::settings::{cluster_client, master_source};
pub use self::settings::{ClientCertificate, RedisOptions, RedisTlsFiles, SentinelTarget, Topology, SENTINEL_PORT};
pub use self::tls_files::TlsFiles;
use super::StoreResult;
use crate::metrics::StoreMetrics;

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    kind: &'static str,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    /// Latency and failures by command, when the process exports metrics.
    metrics: Option<StoreMetrics>,
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
                unpatch: Script::new(UNPATCH),
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
                evalsha(&self.scripts.replace, key, expected.len() + new.len())
                    .arg(expected)
                    .arg(new),
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
        let Conn::Master(master) = &self.conn else {
            return self.get_patching_on_cluster(key, at, patch, guard).await;
        };
        // The read and the patch, in one round trip of two plain commands: `GET`, then a
        // `BITFIELD` that writes the patch and answers the bytes it replaced, atomically. Redis
        // runs the two in a third of the time of a guarded patch in Lua (which compared before
        // writing); here the guard is compared on the value read, and a patch that was not to
        // be is taken back, at the cost of a second round trip then. That is the rare poll: one
        // that does not present the bound secret, or for an id that is not there.
        // Repeating the pair writes the same bytes again, and reads them as replaced: safe.
        let mut pipe = redis::pipe();
        pipe.add_command(Cmd::get(key))
            .add_command(bitfield_set(key, at, patch));
        let started = Instant::now();
        // Boxed as `query` is: unboxed, the connection's future would sit in every future
        // that reads a poll, and be copied at each level.
        let result: StoreResult<(Option<Vec<u8>>, Vec<i64>)> = Box::pin(master.run(Repeat::Safe, |mut conn| {
            let pipe = &pipe;
            async move { pipe.query_async(&mut conn).await }
        }))
        .await;
        self.observe("bitfield", started, result.is_err());
        let (value, replaced) = result?;
        let replaced = bitfield_bytes(patch.len(), &replaced)?;
        let guard_at = at + patch.len();
        // The patch made the key when there was none: it goes again. A repeated pair reads
        // what its first run made (zeros, then the patch).
        let made =
            |value: &[u8]| value.len() == guard_at && value[..at].iter().all(|b| *b == 0) && &value[at..] == patch;
        let mut value = match value {
            Some(value) if !made(&value) => value,
            _ => {
                // Boxed, as the one below: rare, and it would make every poll's future larger.
                Box::pin(self.unpatch(key, at, patch, &replaced, Some(b""))).await?;
                return Ok(None);
            }
        };
        if value.get(guard_at..guard_at + guard.len()) == Some(guard) {
            // The bytes the patch replaced are the value as this read found it (the same bytes
            // as read, unless a write came between the two commands).
            if let Some(slot) = value.get_mut(at..guard_at) {
                slot.copy_from_slice(&replaced);
            }
            return Ok(Some((value, true)));
        }
        // A value that does not hold the guard, or is too short to (shorter even than the
        // patch's end, which then lengthened it): the patch is taken back.
        let lengthened = (value.len() < guard_at).then_some(value.as_slice());
        Box::pin(self.unpatch(key, at, patch, &replaced, lengthened)).await?;
        Ok(Some((value, false)))
    }

    /// The guarded patch where a pipeline does not follow a migrating slot's redirections
    /// command by command: in Lua (it compares, then writes, and answers the bytes it
    /// replaced), and the read, sent at once, each followed on its own. Their order does not
    /// matter, as the replaced bytes are put back either way.
    async fn get_patching_on_cluster(
        &self,
        key: &str,
        at: usize,
        patch: &[u8],
        guard: &[u8],
    ) -> StoreResult<Option<(Vec<u8>, bool)>> {
        let script = &self.scripts.patch_guarded;
        // Two offsets (up to 20 digits each), the patch and the guard.
        let mut patching = evalsha(script, key, 40 + patch.len() + guard.len());
        patching
            .arg(at)
            .arg(at + patch.len() + guard.len() - 1)
            .arg(patch)
            .arg(guard);
        let (replaced, value) = tokio::join!(
            self.invoke::<Option<Vec<u8>>>(Repeat::Safe, script, &patching),
            self.get(key)
        );
        let (replaced, value) = (replaced?, value?);
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

    /// Takes back `patch`, written at `at` over `replaced`, if it is still there; with
    /// `before`, puts back the value it lengthened (deletes the key when that is empty).
    async fn unpatch(
        &self,
        key: &str,
        at: usize,
        patch: &[u8],
        replaced: &[u8],
        before: Option<&[u8]>,
    ) -> StoreResult<()> {
        let script = &self.scripts.unpatch;
        let before_len = before.map_or(0, <[u8]>::len);
        let mut cmd = evalsha(script, key, 20 + patch.len() + replaced.len() + before_len);
        cmd.arg(at).arg(patch).arg(replaced);
        if let Some(before) = before {
            cmd.arg(before);
        }
        self.invoke::<i64>(Repeat::Safe, script, &cmd).await.map(drop)
    }

    pub(super) async fn patch(&self, key: &str, at: usize, bytes: &[u8]) -> StoreResult<()> {
        self.invoke::<i64>(
            Repeat::Safe,
            &self.scripts.patch,
            evalsha(&self.scripts.patch, key, 20 + bytes.len()).arg(at).arg(bytes),
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
            evalsha(&self.scripts.set_add, key, 20 + member.len())
                .arg(member)
                .arg(ttl_ms(ttl)),
        )
        .await
        .map(drop)
    }

    pub(super) async fn index_add(&self, key: &str, member: &str, ttl: Duration) -> StoreResult<()> {
        self.invoke::<i64>(
            Repeat::Safe,
            &self.scripts.index_add,
            evalsha(&self.scripts.index_add, key, 20 + member.len())
                .arg(member)
                .arg(ttl_ms(ttl)),
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
            evalsha(&self.scripts.claim_due, queue, 60)
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

/// `BITFIELD key SET …` writing `patch` at byte `at`: a signed integer field per eight bytes
/// (64 bits, the widest it takes) and one for the rest, each the big-endian value of its
/// bytes. It answers the fields it replaced, in order.
fn bitfield_set(key: &str, at: usize, patch: &[u8]) -> Cmd {
    const TYPES: [&str; 9] = ["", "i8", "i16", "i24", "i32", "i40", "i48", "i56", "i64"];
    let fields = patch.len().div_ceil(8);
    let mut cmd = Cmd::with_capacity(2 + 4 * fields, 32 + key.len() + 48 * fields);
    cmd.arg("BITFIELD").arg(key);
    for (i, chunk) in patch.chunks(8).enumerate() {
        let unused = 64 - 8 * chunk.len() as u32;
        let unsigned = chunk.iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
        // Shifted up and back down, the sign comes along: the field is signed.
        let value = ((unsigned << unused) as i64) >> unused;
        cmd.arg("SET").arg(TYPES[chunk.len()]).arg((at + 8 * i) * 8).arg(value);
    }
    cmd
}

/// The bytes of the fields that a [`bitfield_set`] of `len` bytes answered.
fn bitfield_bytes(len: usize, fields: &[i64]) -> StoreResult<Vec<u8>> {
    if fields.len() != len.div_ceil(8) {
        return Err(super::StoreError::Unavailable(format!(
            "BITFIELD answered {} fields for {len} bytes",
            fields.len()
        )));
    }
    let mut out = Vec::with_capacity(len);
    for (i, field) in fields.iter().enumerate() {
        let width = (len - 8 * i).min(8);
        out.extend_from_slice(&field.to_be_bytes()[8 - width..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_patch_is_written_and_read_back_as_bitfield_fields() {
        for patch in [&b"1764000000123"[..], b"\xff\x80\x00x", b"12345678", b"\x80"] {
            let args = args(&bitfield_set("k", 3, patch));
            assert_eq!(args[..2], ["BITFIELD", "k"]);
            let fields: Vec<i64> = args[2..].chunks(4).map(|f| f[3].parse().unwrap()).collect();
            assert_eq!(bitfield_bytes(patch.len(), &fields).unwrap(), patch, "{args:?}");
        }
        // A poll's stamp, 13 ASCII digits at byte 1: the first eight, then five.
        let args = args(&bitfield_set("k", 1, b"1764000000123"));
        assert_eq!(args[2..6], ["SET", "i64", "8", "3546362829352218672"]);
        assert_eq!(args[6..], ["SET", "i40", "72", "206966960691"]);
        assert!(bitfield_bytes(13, &[1]).is_err(), "a field short");
    }
}
