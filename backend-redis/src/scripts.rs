//! The Lua scripts of the Redis store: one atomic round trip per transition.
//!
//! Record values stay small: `p|<ms>|<owner>` while processing, `c|<ms>|<owner>` once
//! completed, `r|<ms>|<owner length>|<owner><result>` once completed with a result
//! (`complete_with_result`: the owner's length in bytes, then the owner and the result's
//! bytes as they are), where `<ms>` is the writer's wall clock in milliseconds (informational: the
//! age an operator sees). The key's own TTL (`PX`) is the lease or the completed TTL, so
//! expiry is judged by the Redis server's clock alone. A claim is one `SET ... NX GET` on
//! Redis 7 and later (`SET NX` then `GET` on an older server); the store sends that `SET`
//! without the script where it can (see `plain`). The guard's scripts call
//! only `GET`, `SET`, `DEL` and `PTTL`; the admin listing script adds `TYPE`. All of them are in
//! `@read` or `@write`, so an ACL user limited to `+@read +@write +@scripting` runs them.
//!
//! A value in any other form was written by an older writer (the Python decorator's `"1"`
//! or JSON metadata): it counts as completed, unless it is a JSON object whose `status` (or
//! `state`) is `"processing"`, which counts as another owner's claim. Scripts never
//! complete, extend or delete such a value.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// Lua helper: the state of a value.
macro_rules! state_of {
    () => {
        r#"
-- 'p': a claim of ours; 'c': completed (ours or an older writer's); 'l': an older
-- writer's claim.
local function state_of(v)
  if string.match(v, '^p|%d+|') then return 'p' end
  if string.match(v, '^c|%d+|') then return 'c' end
  if string.match(v, '^r|%d+|%d+|') then return 'c' end
  if string.sub(v, 1, 1) == '{' then
    local ok, t = pcall(cjson.decode, v)
    if ok and type(t) == 'table' and (t['status'] == 'processing' or t['state'] == 'processing') then
      return 'l'
    end
  end
  return 'c'
end
"#
    };
}

/// Lua helper: the claim of one key (needs `state_of!`).
macro_rules! claim {
    () => {
        r#"
-- Sets `key` to `value` with a TTL of `lease` unless it exists: 1 (acquired), 2 (in
-- progress) or 3 (completed). Redis 7 does it in one SET ... NX GET, which answers the
-- value it found (or nil once it set it); an older server refuses NX with GET, and then
-- SET NX and GET go one after the other.
local function claim(key, value, lease)
  local v = redis.pcall('SET', key, value, 'NX', 'GET', 'PX', lease)
  if type(v) == 'table' and v['err'] then
    if redis.call('SET', key, value, 'NX', 'PX', lease) then return 1 end
    v = redis.call('GET', key)
    if not v then return 2 end
  elseif not v then
    return 1
  end
  if state_of(v) == 'c' then return 3 end
  return 2
end
"#
    };
}

/// Lua helper: whether a value is a processing claim of an owner.
macro_rules! held_by {
    () => {
        r#"
-- Whether `v` is a processing claim held by `owner` (compared in place, no copy).
local function held_by(v, owner)
  if not v then return false end
  local head = string.match(v, '^p|%d+|')
  return head ~= nil and #v == #head + #owner and string.find(v, owner, #head + 1, true) == #head + 1
end
"#
    };
}

/// Lua helper for the batch scripts: `held_by` of each key's value, checked once per
/// distinct value and owner (needs `held_by!`).
macro_rules! held_by_last {
    () => {
        r#"
-- The keys of a batch were claimed together and hold one same value, and Lua interns its
-- strings: comparing with the last value and owner is a pointer comparison, so the form
-- of a value is matched once, not once per key.
local last_v, last_owner, last_held
local function held_by_last(v, owner)
  if v ~= last_v or owner ~= last_owner then
    last_v, last_owner, last_held = v, owner, held_by(v, owner)
  end
  return last_held
end
"#
    };
}

/// `try_claim`. KEYS[1] = key; ARGV[1] = owner, ARGV[2] = lease in ms, ARGV[3] = now in
/// ms.
/// Returns 1 (acquired), 2 (in progress) or 3 (completed).
///
/// Guarantee: atomically, if the key is absent (Redis drops expired keys on access) it is
/// set to a processing claim of ARGV[1] with a TTL of the lease; otherwise it is left
/// untouched and its state is reported in the same round trip.
const CLAIM_LUA: &str = concat!(
    state_of!(),
    claim!(),
    r#"
return claim(KEYS[1], 'p|' .. ARGV[3] .. '|' .. ARGV[1], ARGV[2])
"#
);

/// `complete`. KEYS[1] = key; ARGV[1] = owner, ARGV[2] = TTL in ms, ARGV[3] = now in ms.
/// Returns 1 or 0.
///
/// Guarantee: atomically, only if the key holds a processing claim of ARGV[1], it becomes
/// a completed record with a TTL of ARGV[2]; anything else is left untouched.
const COMPLETE_LUA: &str = concat!(
    held_by!(),
    r#"
if not held_by(redis.call('GET', KEYS[1]), ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], 'c|' .. ARGV[3] .. '|' .. ARGV[1], 'PX', ARGV[2])
return 1
"#
);

/// `complete_with_result`. KEYS[1] = key; ARGV[1] = owner, ARGV[2] = TTL in ms, ARGV[3] =
/// now in ms, ARGV[4] = the result. Returns 1 or 0.
///
/// Guarantee: as `COMPLETE`, the completed record carrying the result in its value
/// (`r|<ms>|<owner length>|<owner><result>`), in the same write: the record and its result
/// appear together or not at all.
const COMPLETE_RESULT_LUA: &str = concat!(
    held_by!(),
    r#"
if not held_by(redis.call('GET', KEYS[1]), ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], 'r|' .. ARGV[3] .. '|' .. #ARGV[1] .. '|' .. ARGV[1] .. ARGV[4], 'PX', ARGV[2])
return 1
"#
);

/// `release`. KEYS[1] = key; ARGV[1] = owner. Returns 1 or 0.
///
/// Guarantee: atomically, only if the key holds a processing claim of ARGV[1], it is
/// deleted; a completed record or another owner's claim is never deleted.
const RELEASE_LUA: &str = concat!(
    held_by!(),
    r#"
if not held_by(redis.call('GET', KEYS[1]), ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#
);

/// `extend`. KEYS[1] = key; ARGV[1] = owner, ARGV[2] = lease in ms, ARGV[3] = now in ms.
/// Returns 1 or 0.
///
/// Guarantee: atomically, only if the key holds a processing claim of ARGV[1], its value
/// is rewritten with the current time and its TTL set to ARGV[2].
const EXTEND_LUA: &str = concat!(
    held_by!(),
    r#"
if not held_by(redis.call('GET', KEYS[1]), ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], 'p|' .. ARGV[3] .. '|' .. ARGV[1], 'PX', ARGV[2])
return 1
"#
);

/// `get`. KEYS[1] = key. Returns `{value, pttl}`, or nil when absent.
///
/// Guarantee: the value and its remaining TTL are read at the same instant.
const GET_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return nil end
return {v, redis.call('PTTL', KEYS[1])}
"#;

/// The batch script: `complete_many`, `try_claim_many` and `complete_then_claim` in one
/// round trip. KEYS[1..n] are completions, KEYS[n+1..] claims; ARGV[1] = now in ms,
/// ARGV[2] = n, ARGV[3] = m, the number of completion tuples that follow, ARGV[4] = w,
/// the width of each tuple: (owner, TTL in ms) when w = 2, (owner, TTL in ms, result) when
/// w = 3, where the result is `-` for none or `+` followed by the result's bytes. m is 1
/// when every completion has the same owner and TTL and none has a result (w = 2), else n
/// (tuple i for completion i). Then, when there are claims, the claiming owner and the
/// lease in ms. Returns one digit per key, in order, as one string: for a completion 1 or
/// 0 as `COMPLETE` (or `COMPLETE_RESULT` for one with a result), for a claim 1, 2 or 3 as
/// `CLAIM`.
///
/// Guarantee: atomically, each completion and then each claim is exactly what the
/// single-key script does, in KEYS order. Runs on one Redis (or, in a cluster, only when
/// every key is in one slot; the store sends cluster batches key by key).
const SETTLE_LUA: &str = concat!(
    state_of!(),
    claim!(),
    held_by!(),
    held_by_last!(),
    r#"
local now = ARGV[1]
local n = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local w = tonumber(ARGV[4])
local out = {}
local owner, ttl, done = nil, nil, nil
for i = 1, n do
  if i == 1 or m ~= 1 then
    local at = 5 + (i - 1) * w
    owner, ttl = ARGV[at], ARGV[at + 1]
    local result = w == 3 and ARGV[at + 2] or '-'
    if string.byte(result, 1) == 43 then
      done = 'r|' .. now .. '|' .. #owner .. '|' .. owner .. string.sub(result, 2)
    else
      done = 'c|' .. now .. '|' .. owner
    end
  end
  if held_by_last(redis.call('GET', KEYS[i]), owner) then
    redis.call('SET', KEYS[i], done, 'PX', ttl)
    out[i] = '1'
  else
    out[i] = '0'
  end
end
if #KEYS > n then
  local owner = ARGV[5 + m * w]
  local lease = ARGV[6 + m * w]
  local value = 'p|' .. now .. '|' .. owner
  local digits = {'1', '2', '3'}
  for i = n + 1, #KEYS do
    out[i] = digits[claim(KEYS[i], value, lease)]
  end
end
return table.concat(out)
"#
);

/// `release_many`. KEYS = keys; ARGV[1] = owner. Returns 1 or 0 per key, in order, as
/// one string of digits.
///
/// Guarantee: atomically, each key holding a processing claim of ARGV[1] is deleted;
/// nothing else is touched.
const RELEASE_MANY_LUA: &str = concat!(
    held_by!(),
    held_by_last!(),
    r#"
local out = {}
for i = 1, #KEYS do
  if held_by_last(redis.call('GET', KEYS[i]), ARGV[1]) then
    redis.call('DEL', KEYS[i])
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
"#
);

/// `extend_many`. KEYS = keys; ARGV[1] = owner, ARGV[2] = lease in ms, ARGV[3] = now in
/// ms. Returns 1 or 0 per key, in order, as one string of digits.
///
/// Guarantee: atomically, each key holding a processing claim of ARGV[1] is rewritten
/// with the current time and its TTL set to ARGV[2]; nothing else is touched.
const EXTEND_MANY_LUA: &str = concat!(
    held_by!(),
    held_by_last!(),
    r#"
local out = {}
for i = 1, #KEYS do
  if held_by_last(redis.call('GET', KEYS[i]), ARGV[1]) then
    redis.call('SET', KEYS[i], 'p|' .. ARGV[3] .. '|' .. ARGV[1], 'PX', ARGV[2])
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
"#
);

/// Admin listing. KEYS = the keys of one `SCAN` page. Returns, for each key in order,
/// `{value, pttl}`, or nil when the key is gone or holds no string (not a record).
///
/// Guarantee: each value and its remaining TTL are read at the same instant. Needs all
/// keys on one node: listing is for a single server.
const LIST_LUA: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = false
  if redis.call('TYPE', k)['ok'] == 'string' then
    local v = redis.call('GET', k)
    if v then out[i] = {v, redis.call('PTTL', k)} end
  end
end
return out
"#;

/// Admin removal. KEYS[1] = key; ARGV[1] = `p` or `c`, ARGV[2] = owner. Returns 1 or 0.
///
/// Guarantee: atomically, only if the key still holds an eventonce record in state
/// ARGV[1] written by ARGV[2] (the record the operator saw), it is deleted; any other
/// value, an older writer's included, is left untouched.
const REMOVE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local head = string.match(v, '^' .. ARGV[1] .. '|%d+|')
if head == nil or string.sub(v, #head + 1) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

// Each script is loaded once and run by EVALSHA (reloaded on NOSCRIPT).
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| Script::new(COMPLETE_LUA));
pub(crate) static COMPLETE_RESULT: LazyLock<Script> =
    LazyLock::new(|| Script::new(COMPLETE_RESULT_LUA));
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_LUA));
pub(crate) static GET: LazyLock<Script> = LazyLock::new(|| Script::new(GET_LUA));
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));
pub(crate) static RELEASE_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_MANY_LUA));
pub(crate) static EXTEND_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_MANY_LUA));
pub(crate) static LIST: LazyLock<Script> = LazyLock::new(|| Script::new(LIST_LUA));
pub(crate) static REMOVE: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_LUA));

/// One script call, built straight into one command buffer: `EVALSHA` with the script's
/// hash, its keys and arguments, without an allocation per argument. On `NOSCRIPT` (a
/// server that restarted or was flushed) the script is loaded and the call sent once more.
pub(crate) struct Call {
    script: &'static Script,
    cmd: Cmd,
}

impl Call {
    /// A call of `script` with `keys` keys, about `args` arguments in all (keys included)
    /// and `bytes` bytes of them.
    pub(crate) fn new(script: &'static Script, keys: usize, args: usize, bytes: usize) -> Self {
        let mut cmd = Cmd::with_capacity(args + 3, bytes + 64);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        Call { script, cmd }
    }

    /// Appends a key or an argument (keys first, in order).
    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// The `EVALSHA` command, for a pipeline (which must answer `NOSCRIPT` itself).
    pub(crate) fn into_command(self) -> Cmd {
        self.cmd
    }

    /// Sends the call; on `NOSCRIPT` loads the script and sends it again.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.prepare_invoke().load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            other => other,
        }
    }
}
