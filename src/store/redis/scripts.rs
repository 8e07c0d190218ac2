//! The Lua scripts, for the few writes one command cannot make atomically, and how they are
//! sent: as one pre-built `EVALSHA`, the script loaded again where the server does not know it.

use redis::{Cmd, ErrorKind, FromRedisValue, Script, ServerErrorKind};

pub(super) const REPLACE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0";

pub(super) const SET_ADD: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1";

// A hash of one or a few entries is a listpack: about 100 bytes less per key than a set.
pub(super) const INDEX_ADD: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], '')
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1";

// On Cluster, the guarded patch of a poll: when the value's bytes from ARGV[1] (inclusive)
// to ARGV[2] are ARGV[3]'s length of any bytes followed by ARGV[4], overwrites the first of
// them with ARGV[3] (SETRANGE keeps the TTL) and returns the bytes it replaced; otherwise, or
// when there is no value (GETRANGE then reads ''), writes nothing. It reads only the few bytes
// it compares: the value itself follows in a plain GET. Offsets come computed and the
// arguments are few: in Lua, arithmetic and each argument cost more than the comparison.
pub(super) const PATCH_GUARDED: &str = r"
local span = redis.call('GETRANGE', KEYS[1], ARGV[1], ARGV[2])
if string.sub(span, #ARGV[3] + 1) ~= ARGV[4] then
  return false
end
redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[3])
return string.sub(span, 1, #ARGV[3])";

// Takes back a patch that was not to be (ARGV[2] written at offset ARGV[1] by a BITFIELD
// whose guard the read then found wanting), while it is still there: writes back the bytes it
// replaced (ARGV[3]); or, with ARGV[4], the value it lengthened, or deletes the key it made
// (ARGV[4] empty). A newer write over the patch stays.
pub(super) const UNPATCH: &str = r"
if redis.call('GETRANGE', KEYS[1], ARGV[1], ARGV[1] + #ARGV[2] - 1) ~= ARGV[2] then
  return 0
end
if ARGV[4] == nil then
  redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[3])
elseif ARGV[4] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[4], 'KEEPTTL')
end
return 1";

// SETRANGE on a missing key would create one without a TTL: only an existing value is patched.
pub(super) const PATCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0";

pub(super) const CLAIM_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], member)
end
return due";

pub(super) struct Scripts {
    pub(super) replace: Script,
    pub(super) patch_guarded: Script,
    pub(super) unpatch: Script,
    pub(super) index_add: Script,
    pub(super) patch: Script,
    pub(super) set_add: Script,
    pub(super) claim_due: Script,
}

/// `EVALSHA` of `script` with one key, its arguments to be appended: built in one buffer (a
/// `ScriptInvocation` keeps every argument in a `Vec` of its own, then copies them all into
/// such a command on every call).
/// `args` is about how many bytes of arguments follow: the buffer is sized once for them (a
/// guarded read's outgrew a fixed allowance and was reallocated on every poll).
pub(super) fn evalsha(script: &Script, key: &str, args: usize) -> Cmd {
    // "EVALSHA", the 40-digit hash and the key count.
    let mut cmd = Cmd::with_capacity(8, 48 + key.len() + args);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(1).arg(key);
    cmd
}

/// Loads of a script tried for one command. The server can lose its scripts again between
/// the load and the command sent again (a `SCRIPT FLUSH`, a failover to a server that never
/// had them), most likely just as a new replica uses each script for the first time; a
/// command refused with `NOSCRIPT` did not run, so it is always safe to send again.
const LOADS: usize = 3;

/// Sends an [`evalsha`] command; on `NOSCRIPT` (a restarted or new server) loads the script
/// and sends it again, as `ScriptInvocation::invoke_async` does, up to [`LOADS`] times.
pub(super) async fn eval<T: FromRedisValue>(
    script: &Script,
    cmd: &Cmd,
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<T> {
    let mut loads = 0;
    loop {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) && loads < LOADS => {
                loads += 1;
                script.load_async(conn).await?;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::aio::ConnectionLike;
    use redis::{RedisFuture, Value};

    use super::*;

    /// A server whose script cache is lost again right after each of the first `lost_after_load`
    /// loads, as a `SCRIPT FLUSH` from elsewhere landing between a load and the command would.
    struct ForgetfulServer {
        hash: String,
        loaded: bool,
        lost_after_load: usize,
        loads: usize,
        runs: usize,
    }

    impl ForgetfulServer {
        fn answer(&mut self, cmd: &Cmd) -> Value {
            let name = match cmd.args_iter().next() {
                Some(redis::Arg::Simple(name)) => name.to_ascii_uppercase(),
                _ => Vec::new(),
            };
            match &name[..] {
                b"EVALSHA" if self.loaded => {
                    self.runs += 1;
                    Value::BulkString(b"1".to_vec())
                }
                b"GET" => Value::BulkString(b"value".to_vec()),
                b"EVALSHA" => redis::parse_redis_value(b"-NOSCRIPT No matching script. Please use EVAL.\r\n").unwrap(),
                b"SCRIPT" => {
                    self.loads += 1;
                    self.loaded = self.loads > self.lost_after_load;
                    Value::BulkString(self.hash.clone().into_bytes())
                }
                _ => redis::parse_redis_value(b"-ERR unexpected\r\n").unwrap(),
            }
        }
    }

    impl ConnectionLike for ForgetfulServer {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
            let value = self.answer(cmd);
            Box::pin(async move { Ok(value) })
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            pipeline: &'a redis::Pipeline,
            offset: usize,
            count: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            let values: Vec<Value> = pipeline.cmd_iter().map(|cmd| self.answer(cmd)).collect();
            Box::pin(async move { Ok(values.into_iter().skip(offset).take(count).collect()) })
        }

        fn get_db(&self) -> i64 {
            0
        }
    }

    fn server(script: &Script, lost_after_load: usize) -> ForgetfulServer {
        ForgetfulServer {
            hash: script.get_hash().to_owned(),
            loaded: false,
            lost_after_load,
            loads: 0,
            runs: 0,
        }
    }

    #[tokio::test]
    async fn a_script_lost_again_after_its_load_is_loaded_again() {
        let script = Script::new(PATCH);
        let cmd = evalsha(&script, "k", 8);
        let mut conn = server(&script, 1);
        let ran: i64 = eval(&script, &cmd, &mut conn).await.unwrap();
        assert_eq!((ran, conn.loads, conn.runs), (1, 2, 1));
    }

    #[tokio::test]
    async fn a_server_that_keeps_losing_its_scripts_is_an_error_not_a_loop() {
        let script = Script::new(PATCH);
        let cmd = evalsha(&script, "k", 8);
        let mut conn = server(&script, usize::MAX);
        let refused = eval::<i64>(&script, &cmd, &mut conn).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Server(ServerErrorKind::NoScript));
        assert_eq!((conn.loads, conn.runs), (LOADS, 0));
    }
}
