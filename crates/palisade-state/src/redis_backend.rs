//! The Redis backend: one lazily connected, self-reconnecting
//! `ConnectionManager`, every operation bounded by the op timeout, every
//! read-modify-write a single Lua script (atomic on the server) that reads the
//! server's own clock, so replicas with skewed clocks agree.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, Script, ServerErrorKind, Value};

use crate::keys::normalize;
use crate::local::{replay_ttl, revocation_until};
use crate::math;
use crate::{Rate, RateDecision, RedisOptions, StateError};

/// GCRA, mirroring `math::gcra` line by line (whole microseconds, exact in
/// Lua's doubles too). Keys and numbers arrive as KEYS/ARGV, never as script
/// text. Replies `{allowed (0|1), retry_after (µs), remaining}`.
const RATE_SCRIPT: &str = r#"
local per_second = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if not per_second or not burst or not cost or per_second ~= per_second or cost ~= cost
  or per_second <= 0 or per_second == math.huge or burst < 1 or cost < 0 or cost == math.huge then
  return redis.error_reply('ERR palisade: invalid rate')
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local stored = redis.call('GET', KEYS[1])
local tat = nil
if stored then
  tat = tonumber(stored)
  if not tat or tat ~= tat or tat == math.huge or tat == -math.huge then
    return redis.error_reply('ERR palisade: corrupt rate bucket')
  end
  tat = math.floor(tat + 0.5)
end
local interval = math.max(math.floor(1000000 / per_second + 0.5), 1)
local tolerance = interval * burst
cost = math.min(cost, burst)
local increment = math.floor(interval * cost + 0.5)
local ahead = 0
if tat and tat > now then ahead = tat - now end
local new_ahead = ahead + increment
if new_ahead <= tolerance then
  local remaining = math.max(0, math.min(burst, math.floor((tolerance - new_ahead) / interval)))
  if new_ahead > 0 then
    redis.call('SET', KEYS[1], string.format('%.17g', now + new_ahead), 'PX', math.ceil(new_ahead / 1000))
  end
  return {1, 0, remaining}
end
local remaining = math.max(0, math.min(burst, math.floor((tolerance - ahead) / interval)))
return {0, new_ahead - tolerance, remaining}
"#;

/// Revocation that only ever extends: SET EXAT for a new key, EXPIREAT GT for
/// an existing one; nothing if the time has passed by the server's clock.
const REVOKE_SCRIPT: &str = r#"
local until_unix = tonumber(ARGV[1])
if not until_unix or until_unix ~= until_unix then
  return redis.error_reply('ERR palisade: invalid revocation expiry')
end
local now = tonumber(redis.call('TIME')[1])
if until_unix <= now then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[1], 'GT')
else
  redis.call('SET', KEYS[1], '1', 'EXAT', ARGV[1])
end
return 1
"#;

/// A principal block that only ever extends, within a bound on the number of
/// blocks: expired ones are pruned when the hash is full; past the bound a new
/// principal is refused (reply -1). KEYS[1] the hash, ARGV: principal, until
/// (unix s), bound.
const BLOCK_SCRIPT: &str = r#"
local until_unix = tonumber(ARGV[2])
local bound = tonumber(ARGV[3])
if not until_unix or until_unix ~= until_unix or not bound then
  return redis.error_reply('ERR palisade: invalid block')
end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if old and old >= until_unix then return 0 end
if not old and redis.call('HLEN', KEYS[1]) >= bound then
  local now = tonumber(redis.call('TIME')[1])
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local u = tonumber(all[i + 1])
    if not u or u <= now then redis.call('HDEL', KEYS[1], all[i]) end
  end
  if redis.call('HLEN', KEYS[1]) >= bound then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Shared prologue of the threat scripts: arguments, clock, decayed current score.
/// ARGV[1] is the half-life in seconds.
const THREAT_PROLOGUE: &str = r#"
local half_life = tonumber(ARGV[1])
if not half_life or half_life ~= half_life or half_life <= 0 or half_life == math.huge then
  return redis.error_reply('ERR palisade: invalid half-life')
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local current = 0
local old = redis.call('HMGET', KEYS[1], 's', 't')
if old[1] or old[2] then
  local s, t = tonumber(old[1]), tonumber(old[2])
  if not s or not t or s ~= s or t ~= t then
    return redis.error_reply('ERR palisade: corrupt threat entry')
  end
  local elapsed = now - t
  if elapsed <= 0 then current = s else current = s * 2 ^ (-(elapsed / half_life)) end
end
"#;

/// ARGV[2] is the weight. Stores (score, now) and expires the hash when the
/// score will have decayed below the floor.
const THREAT_ADD_EPILOGUE: &str = r#"
local weight = tonumber(ARGV[2])
if not weight or weight ~= weight or weight == math.huge or weight == -math.huge then
  return redis.error_reply('ERR palisade: invalid threat weight')
end
local score = math.max(0, math.min(1e12, current + weight))
if score > 0.001 then
  local life = half_life * (math.log(score / 0.001) / math.log(2))
  redis.call('HSET', KEYS[1], 's', string.format('%.17g', score), 't', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(life * 1000)))
else
  redis.call('DEL', KEYS[1])
end
return string.format('%.17g', score)
"#;

const THREAT_GET_EPILOGUE: &str = r#"
return string.format('%.17g', current)
"#;

/// Shared state in Redis. Create with [`crate::Backend::redis`].
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
    rate: Script,
    revoke: Script,
    threat_add: Script,
    threat_get: Script,
    block: Script,
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisState {
    /// Builds the lazy connection manager; no network I/O happens here.
    /// Must run inside a Tokio runtime.
    pub(crate) fn new(opts: RedisOptions) -> Result<RedisState, StateError> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| StateError::Unavailable(format!("invalid Redis URL: {e}")))?;
        // One quick retry per reconnect: while Redis refuses connections an
        // operation fails after about 100-200 ms (or the op timeout, if
        // shorter) instead of sitting out a long backoff, concurrent operations
        // share the one attempt in flight (no connection storm), and the
        // operation that finds the attempt failed starts the next one, so
        // recovery follows Redis within moments of it coming back.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StateError::Unavailable(format!("Redis client: {e}")))?;
        Ok(RedisState {
            conn,
            prefix: opts.prefix,
            op_timeout: opts.op_timeout,
            rate: Script::new(RATE_SCRIPT),
            revoke: Script::new(REVOKE_SCRIPT),
            threat_add: Script::new(&format!("{THREAT_PROLOGUE}{THREAT_ADD_EPILOGUE}")),
            threat_get: Script::new(&format!("{THREAT_PROLOGUE}{THREAT_GET_EPILOGUE}")),
            block: Script::new(BLOCK_SCRIPT),
        })
    }

    /// `{prefix}{kind}:{normalized key}`.
    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{}", self.prefix, normalize(key))
    }

    /// Runs one Redis exchange under the op timeout.
    async fn bounded<T>(&self, op: impl Future<Output = RedisResult<T>>) -> Result<T, StateError> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(&e)),
            Err(_) => Err(StateError::Timeout),
        }
    }

    pub(crate) async fn rate_check(&self, key: &str, rate: Rate, cost: f64) -> Result<RateDecision, StateError> {
        rate.validate()?;
        math::validate_cost(cost)?;
        let mut conn = self.conn.clone();
        let mut call = self.rate.prepare_invoke();
        call.key(self.key("rl", key))
            .arg(rate.per_second.to_string())
            .arg(rate.burst)
            .arg(cost.to_string());
        let reply: Value = self.bounded(call.invoke_async(&mut conn)).await?;
        let bad = || StateError::Protocol("unexpected rate-limit reply".into());
        let Value::Array(items) = reply else { return Err(bad()) };
        let [allowed, retry_after, remaining] = items.as_slice() else {
            return Err(bad());
        };
        let allowed = match as_int(allowed).ok_or_else(bad)? {
            0 => false,
            1 => true,
            _ => return Err(bad()),
        };
        let retry_micros = as_int(retry_after)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(bad)?;
        let remaining = as_int(remaining).and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)?;
        let retry_after = if allowed {
            Duration::ZERO
        } else {
            Duration::from_micros(retry_micros)
        };
        Ok(RateDecision {
            allowed,
            retry_after,
            remaining,
        })
    }

    pub(crate) async fn revoke(&self, sid: &str, exp_unix: u64) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut call = self.revoke.prepare_invoke();
        call.key(self.key("rev", sid)).arg(revocation_until(exp_unix));
        let reply: Value = self.bounded(call.invoke_async(&mut conn)).await?;
        match as_int(&reply) {
            Some(0 | 1) => Ok(()),
            _ => Err(StateError::Protocol("unexpected revocation reply".into())),
        }
    }

    /// `{prefix}containment:kill` and `{prefix}containment:blocked` (principal → until, unix s).
    fn containment_key(&self, which: &str) -> String {
        format!("{}containment:{which}", self.prefix)
    }

    pub(crate) async fn containment_set_kill(&self, on: bool) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("SET")
            .arg(self.containment_key("kill"))
            .arg(if on { "1" } else { "0" })
            .to_owned();
        let _: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    pub(crate) async fn containment_block(&self, principal: &str, until_unix: u64) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut call = self.block.prepare_invoke();
        call.key(self.containment_key("blocked"))
            .arg(principal)
            .arg(until_unix)
            .arg(crate::MAX_SHARED_BLOCKS);
        let reply: Value = self.bounded(call.invoke_async(&mut conn)).await?;
        match as_int(&reply) {
            Some(0 | 1) => Ok(()),
            Some(-1) => Err(StateError::Protocol("too many shared blocks".into())),
            _ => Err(StateError::Protocol("unexpected block reply".into())),
        }
    }

    pub(crate) async fn containment_unblock(&self, principal: &str) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HDEL")
            .arg(self.containment_key("blocked"))
            .arg(principal)
            .to_owned();
        let _: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    pub(crate) async fn containment(&self) -> Result<crate::SharedContainment, StateError> {
        let mut conn = self.conn.clone();
        let kill = redis::cmd("GET").arg(self.containment_key("kill")).to_owned();
        let kill: Option<String> = self.bounded(kill.query_async(&mut conn)).await?;
        let all = redis::cmd("HGETALL").arg(self.containment_key("blocked")).to_owned();
        let all: std::collections::HashMap<String, String> = self.bounded(all.query_async(&mut conn)).await?;
        let mut blocked: Vec<(String, u64)> = all
            .into_iter()
            .filter_map(|(k, v)| v.parse::<u64>().ok().map(|u| (k, u)))
            .collect();
        blocked.truncate(crate::MAX_SHARED_BLOCKS);
        Ok(crate::SharedContainment {
            kill: kill.as_deref() == Some("1"),
            blocked,
        })
    }

    pub(crate) async fn is_revoked(&self, sid: &str) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("EXISTS").arg(self.key("rev", sid)).to_owned();
        let reply: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        match as_int(&reply) {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(StateError::Protocol("unexpected EXISTS reply".into())),
        }
    }

    pub(crate) async fn remember_once(&self, key: &str, ttl: Duration) -> Result<bool, StateError> {
        let millis = u64::try_from(replay_ttl(ttl).as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("SET")
            .arg(self.key("once", key))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .to_owned();
        let reply: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        match reply {
            Value::Okay => Ok(true),
            Value::SimpleString(s) if s == "OK" => Ok(true),
            Value::Nil => Ok(false),
            _ => Err(StateError::Protocol("unexpected SET NX reply".into())),
        }
    }

    pub(crate) async fn threat_add(
        &self,
        principal: &str,
        weight: f64,
        half_life: Duration,
    ) -> Result<f64, StateError> {
        let half_life = math::half_life_secs(half_life)?;
        math::validate_weight(weight)?;
        let mut conn = self.conn.clone();
        let mut call = self.threat_add.prepare_invoke();
        call.key(self.key("threat", principal))
            .arg(half_life.to_string())
            .arg(weight.to_string());
        let reply: Value = self.bounded(call.invoke_async(&mut conn)).await?;
        score_of(&reply)
    }

    pub(crate) async fn threat_score(&self, principal: &str, half_life: Duration) -> Result<f64, StateError> {
        let half_life = math::half_life_secs(half_life)?;
        let mut conn = self.conn.clone();
        let mut call = self.threat_get.prepare_invoke();
        call.key(self.key("threat", principal)).arg(half_life.to_string());
        let reply: Value = self.bounded(call.invoke_async(&mut conn)).await?;
        score_of(&reply)
    }

    pub(crate) async fn ping(&self) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let reply: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        match reply {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            Value::BulkString(b) if b == b"PONG" => Ok(()),
            _ => Err(StateError::Protocol("unexpected PING reply".into())),
        }
    }
}

fn score_of(reply: &Value) -> Result<f64, StateError> {
    as_float(reply)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| StateError::Protocol("unexpected threat-score reply".into()))
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d),
        Value::Int(n) => Some(*n as f64),
        _ => None,
    }
}

/// Connection trouble (including a server that is loading, read-only or
/// refusing us) is `Unavailable`; a reply we cannot use is `Protocol`.
fn map_error(e: &RedisError) -> StateError {
    if e.is_timeout() {
        return StateError::Timeout;
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::NoPerm,
        ) => StateError::Unavailable(e.to_string()),
        // Script busy, out of memory, cannot persist, too few replicas: Redis is there but not serving.
        ErrorKind::Extension if matches!(e.code(), Some("BUSY" | "OOM" | "MISCONF" | "NOREPLICAS")) => {
            StateError::Unavailable(e.to_string())
        }
        // WRONGTYPE and script errors (a tampered entry) among them.
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            StateError::Protocol(e.to_string())
        }
        _ => StateError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrored_constants_agree() {
        assert!(THREAT_ADD_EPILOGUE.contains("math.min(1e12,") && crate::MAX_THREAT_SCORE == 1e12);
        assert!(THREAT_ADD_EPILOGUE.contains("score > 0.001") && crate::THREAT_FLOOR == 0.001);
    }
}
