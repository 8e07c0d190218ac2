//! The Lua scripts, for the few writes one command cannot make atomically, and how they are
//! sent: as one pre-built `EVALSHA`, the script loaded again where the server does not know it.

use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind};

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

// When the value's bytes from ARGV[1] (inclusive) to ARGV[2] are ARGV[3]'s length of any
// bytes followed by ARGV[4], overwrites the first of them with ARGV[3] (SETRANGE keeps the
// TTL) and returns the bytes it replaced; otherwise, or when there is no value (GETRANGE then
// reads ''), writes nothing. It reads only the few bytes it compares: the value itself follows
// in a plain GET, which costs Redis a fraction of moving it through Lua and back. Offsets come
// computed and the arguments are few: in Lua, arithmetic and each argument cost more than
// the comparison.
pub(super) const PATCH_GUARDED: &str = r"
local span = redis.call('GETRANGE', KEYS[1], ARGV[1], ARGV[2])
if string.sub(span, #ARGV[3] + 1) ~= ARGV[4] then
  return false
end
redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[3])
return string.sub(span, 1, #ARGV[3])";

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

/// Sends an [`evalsha`] command; on `NOSCRIPT` (a restarted or new server) loads the script
/// and sends it again, as `ScriptInvocation::invoke_async` does.
pub(super) async fn eval<T: FromRedisValue>(
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
///
/// [`RedisStore::get_patching`]: super::RedisStore::get_patching
pub(super) async fn run_patching(
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
