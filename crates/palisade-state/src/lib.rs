//! State that several gateway replicas must share: rate limits (R1), adaptive
//! limits from decaying threat scores (R2, G2), session revocation and the
//! DPoP replay cache. Two backends behind one [`Backend`]: in process
//! ([`LocalState`], the default, for a single replica) and Redis
//! ([`RedisState`], for several).
//!
//! # Failing closed
//!
//! This is security state, so nothing here guesses: every operation returns
//! `Result<_, StateError>`, and the gateway decides per control whether an
//! error means deny or allow. No operation blocks a Tokio worker on I/O,
//! holds a lock across an await, or waits on Redis longer than
//! [`RedisOptions::op_timeout`]. Invalid arguments (a rate of 0, a NaN cost,
//! a zero half-life) are [`StateError::Protocol`] errors, never a silent allow;
//! the gateway validates its configuration at load, so this is defence in depth.
//!
//! # Rate limits: a hand-written GCRA
//!
//! [`gcra`] is the generic cell rate algorithm (virtual scheduling), see its
//! documentation for the formulation: emission interval `T = 1 / per_second`,
//! tolerance `τ = T · burst`, exactly `burst` requests pass from a full bucket
//! and the next waits `T`. We write it ourselves rather than use `governor`
//! for two reasons:
//!
//! * **fractional costs**: adaptive limits charge a principal with a threat
//!   score more than 1 per request (cost 2.0 halves its burst and rate);
//!   `governor` only takes whole cells;
//! * **identical semantics in both backends**: the Redis backend must run the
//!   algorithm atomically on the server (one Lua script, `EVALSHA` with a
//!   `NOSCRIPT` fallback). The Lua script mirrors [`gcra`] line by line, and
//!   the local backend calls [`gcra`] itself, so switching backends does not
//!   change who gets limited. A bucket's state is one number, its theoretical
//!   arrival time (TAT); it expires when the bucket is full again.
//!
//! # Time
//!
//! The local backend uses a monotonic clock ([`std::time::Instant`]) for
//! buckets, replay keys and threat scores, and the wall clock only for
//! revocations, which end at a token's `exp`. The Redis backend reads the Redis
//! server's `TIME` inside its scripts (effects replication, the Redis 7
//! default, makes that safe), so replicas with skewed clocks agree.
//!
//! # Keys
//!
//! Caller keys may contain anything (newlines, quotes, NUL, Lua syntax); they
//! are only ever passed to Redis as `KEYS`/`ARGV`, never spliced into script
//! text. Keys longer than [`MAX_KEY_LEN`] bytes are replaced by their SHA-256
//! (see [`normalize_key`]) rather than refused, so storage per key stays
//! bounded while distinct keys stay distinct. Redis keys are
//! `{prefix}rl:{key}`, `{prefix}rev:{sid}`, `{prefix}once:{key}` and
//! `{prefix}threat:{principal}`.
//!
//! # Bounds
//!
//! Every entry expires: buckets when full again, revocations
//! [`REVOCATION_LEEWAY`] after the token's expiry (covering a verifier's
//! clock-skew leeway), replay keys after their TTL (at most
//! [`MAX_REPLAY_TTL`]), threat scores once decayed below [`THREAT_FLOOR`]. The
//! local maps are capped (see [`LocalState`]); [`spawn_maintenance`] purges
//! them periodically.

mod keys;
mod local;
mod math;
mod redis_backend;

use std::sync::Arc;
use std::time::Duration;

pub use keys::{MAX_KEY_LEN, normalize as normalize_key};
pub use local::{DEFAULT_MAX_ENTRIES, LocalCounts, LocalState, MAX_REPLAY_TTL, ManualClock, REVOCATION_LEEWAY};
pub use math::{
    INVALID_RETRY_AFTER, MAX_RATE_WINDOW, MAX_THREAT_SCORE, THREAT_FLOOR, decayed_score, gcra, validate_cost,
};
pub use redis_backend::RedisState;

/// Why a state operation failed. The caller decides whether that denies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    #[error("state backend timed out")]
    Timeout,
    #[error("state backend answered badly: {0}")]
    Protocol(String),
}

/// A rate: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// The outcome of one [`Backend::rate_check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    /// When the same request would pass; zero when allowed.
    pub retry_after: Duration,
    /// Further requests of cost 1 that would pass now.
    pub remaining: u32,
}

/// Most principals blocked in shared state at once.
pub const MAX_SHARED_BLOCKS: usize = 100_000;

/// Containment shared by replicas: the kill switch and principal blocks
/// (principal key → until, unix seconds; expired entries may be present).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedContainment {
    pub kill: bool,
    pub blocked: Vec<(String, u64)>,
}

/// Where state lives.
#[derive(Clone)]
pub enum Backend {
    Local(Arc<LocalState>),
    Redis(Arc<RedisState>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local(s) => f.debug_tuple("Local").field(s).finish(),
            Backend::Redis(s) => f.debug_tuple("Redis").field(s).finish(),
        }
    }
}

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db` (`redis+unix:///path` works too).
    pub url: String,
    /// Key prefix, e.g. `"palisade:"`.
    pub prefix: String,
    /// The longest any operation waits on Redis (connecting included).
    pub op_timeout: Duration,
    /// The longest one connection attempt may take.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for RedisOptions {
    /// The URL may carry a password: only its scheme is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.url.split_once("://").map_or("?", |(s, _)| s);
        f.debug_struct("RedisOptions")
            .field("url", &format_args!("{scheme}://…"))
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Backend {
    /// Fresh in-process state.
    pub fn local() -> Backend {
        Backend::Local(Arc::new(LocalState::new()))
    }

    /// Never fails because Redis is down at start-up: connects lazily and
    /// reconnects (redis `ConnectionManager`); operations return `StateError`
    /// until it is reachable. Fails only on an invalid URL. A background task
    /// starts connecting at once so the first request does not pay for it.
    /// Must be called inside a Tokio runtime.
    pub async fn redis(opts: RedisOptions) -> Result<Backend, StateError> {
        let state = Arc::new(RedisState::new(opts)?);
        let warm = Arc::downgrade(&state);
        tokio::spawn(async move {
            if let Some(state) = warm.upgrade() {
                let _ = state.ping().await;
            }
        });
        Ok(Backend::Redis(state))
    }

    /// `"local"` or `"redis"`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Redis(_) => "redis",
        }
    }

    /// GCRA: one request of `cost` (≥ 0.0; 1.0 normally; more for principals
    /// with a threat score) against the bucket `key` (e.g. `"user:<iss>|<sub>"`,
    /// `"tool:github/create_issue"`). Atomic in both backends. Keys expire when
    /// the bucket is full again. See [`gcra`] for the semantics; an invalid
    /// rate or cost is `StateError::Protocol`.
    pub async fn rate_check(&self, key: &str, rate: Rate, cost: f64) -> Result<RateDecision, StateError> {
        match self {
            Backend::Local(s) => s.rate_check(key, rate, cost),
            Backend::Redis(s) => s.rate_check(key, rate, cost).await,
        }
    }

    /// Session revocation: `sid` revoked until `exp_unix` (the token's own
    /// expiry) plus [`REVOCATION_LEEWAY`]; afterwards the entry vanishes.
    /// Revoking again never shortens an existing revocation.
    pub async fn revoke(&self, sid: &str, exp_unix: u64) -> Result<(), StateError> {
        match self {
            Backend::Local(s) => s.revoke(sid, exp_unix),
            Backend::Redis(s) => s.revoke(sid, exp_unix).await,
        }
    }

    /// Whether `sid` is revoked.
    pub async fn is_revoked(&self, sid: &str) -> Result<bool, StateError> {
        match self {
            Backend::Local(s) => s.is_revoked(sid),
            Backend::Redis(s) => s.is_revoked(sid).await,
        }
    }

    /// Replay cache (DPoP `jti`): records `key` for `ttl` (clamped to
    /// 1 ms..=[`MAX_REPLAY_TTL`]); `Ok(true)` if it was fresh, `Ok(false)` if
    /// seen before (a replay). Redis: `SET NX PX`.
    pub async fn remember_once(&self, key: &str, ttl: Duration) -> Result<bool, StateError> {
        match self {
            Backend::Local(s) => s.remember_once(key, ttl),
            Backend::Redis(s) => s.remember_once(key, ttl).await,
        }
    }

    /// Adaptive limits: adds `weight` (finite; negative lowers it) to a
    /// principal's threat score, which decays exponentially with `half_life`
    /// (> 0). Returns the new score, clamped to `0..=MAX_THREAT_SCORE`.
    pub async fn threat_add(&self, principal: &str, weight: f64, half_life: Duration) -> Result<f64, StateError> {
        match self {
            Backend::Local(s) => s.threat_add(principal, weight, half_life),
            Backend::Redis(s) => s.threat_add(principal, weight, half_life).await,
        }
    }

    /// The current decayed score (0.0 when unknown or decayed below
    /// [`THREAT_FLOOR`]).
    pub async fn threat_score(&self, principal: &str, half_life: Duration) -> Result<f64, StateError> {
        match self {
            Backend::Local(s) => s.threat_score(principal, half_life),
            Backend::Redis(s) => s.threat_score(principal, half_life).await,
        }
    }

    /// Shares the kill switch with every replica (Redis); locally a no-op,
    /// since the process's own state is all there is.
    pub async fn containment_set_kill(&self, on: bool) -> Result<(), StateError> {
        match self {
            Backend::Local(_) => Ok(()),
            Backend::Redis(s) => s.containment_set_kill(on).await,
        }
    }

    /// Shares a principal block until `until_unix` (never shortens one).
    /// At most [`MAX_SHARED_BLOCKS`] principals; past that a new one is refused.
    pub async fn containment_block(&self, principal: &str, until_unix: u64) -> Result<(), StateError> {
        match self {
            Backend::Local(_) => Ok(()),
            Backend::Redis(s) => s.containment_block(principal, until_unix).await,
        }
    }

    /// Lifts a shared block.
    pub async fn containment_unblock(&self, principal: &str) -> Result<(), StateError> {
        match self {
            Backend::Local(_) => Ok(()),
            Backend::Redis(s) => s.containment_unblock(principal).await,
        }
    }

    /// What every replica should apply; `None` for the local backend.
    pub async fn containment(&self) -> Result<Option<SharedContainment>, StateError> {
        match self {
            Backend::Local(_) => Ok(None),
            Backend::Redis(s) => s.containment().await.map(Some),
        }
    }

    /// Liveness (`PING` for Redis; always fine locally).
    pub async fn ping(&self) -> Result<(), StateError> {
        match self {
            Backend::Local(_) => Ok(()),
            Backend::Redis(s) => s.ping().await,
        }
    }
}

/// Spawns the periodic purge of expired local entries (buckets, revocations,
/// replay keys, decayed scores) so memory stays bounded; no-op for Redis
/// (keys carry their own expiry). The purge runs on the blocking pool, one
/// shard lock at a time; the task ends when the state is dropped. Outside a
/// Tokio runtime it logs a warning and does nothing. `every` is at least 10 ms.
pub fn spawn_maintenance(backend: &Backend, every: Duration) {
    let Backend::Local(state) = backend else { return };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("palisade-state: spawn_maintenance called outside a Tokio runtime; local state is not purged");
        return;
    };
    let state = Arc::downgrade(state);
    let every = every.max(Duration::from_millis(10));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(live) = state.upgrade() else { return };
            let purged = tokio::task::spawn_blocking(move || live.purge_expired()).await;
            match purged {
                Ok(n) if n > 0 => tracing::debug!(purged = n, "palisade-state: expired local entries purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "palisade-state: local purge failed"),
            }
        }
    });
}
