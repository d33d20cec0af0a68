//! The in-process backend: sharded maps behind `std::sync::Mutex`, bounded,
//! purged of expired entries periodically and on demand.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::keys::normalize;
use crate::math::{self, decayed_score, gcra, threat_lifetime};
use crate::{Rate, RateDecision, StateError};

/// Entries per map (buckets, revocations, replay keys, threat scores) when
/// not set with [`LocalState::with_max_entries`].
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// A revocation is kept this long after the token's own expiry, to cover the
/// clock-skew leeway a token verifier may grant past `exp`.
pub const REVOCATION_LEEWAY: Duration = Duration::from_secs(300);

/// Replay-cache TTLs are clamped to `1 ms..=MAX_REPLAY_TTL`.
pub const MAX_REPLAY_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Largest revocation expiry accepted (9999-12-31T23:59:59Z); later ones are clamped.
pub(crate) const MAX_UNIX: u64 = 253_402_300_799;

const SHARDS: usize = 16;

/// When a map is full, a full purge of expired entries runs at most this
/// often (seconds); between them a new key is refused at once.
const EMERGENCY_PURGE_INTERVAL: f64 = 1.0;

/// The revocation expiry actually stored for a token expiring at `exp_unix`.
pub(crate) fn revocation_until(exp_unix: u64) -> u64 {
    exp_unix.min(MAX_UNIX).saturating_add(REVOCATION_LEEWAY.as_secs())
}

/// Replay TTL clamped to `1 ms..=MAX_REPLAY_TTL`.
pub(crate) fn replay_ttl(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_millis(1), MAX_REPLAY_TTL)
}

/// A clock for tests: time moves only when [`ManualClock::advance`] is called.
/// Clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    elapsed_nanos: AtomicU64,
    unix_start: u64,
}

impl ManualClock {
    /// A clock whose wall time starts at `unix_start` seconds.
    pub fn new(unix_start: u64) -> ManualClock {
        ManualClock {
            inner: Arc::new(ManualInner {
                elapsed_nanos: AtomicU64::new(0),
                unix_start,
            }),
        }
    }

    /// Moves both the monotonic and the wall time forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.elapsed_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    fn elapsed(&self) -> f64 {
        self.inner.elapsed_nanos.load(Ordering::SeqCst) as f64 / 1e9
    }
}

#[derive(Clone, Debug)]
enum Clock {
    System(Instant),
    Manual(ManualClock),
}

impl Clock {
    /// Monotonic seconds (rate buckets, replay keys, threat scores).
    fn mono(&self) -> f64 {
        match self {
            Clock::System(base) => base.elapsed().as_secs_f64(),
            Clock::Manual(c) => c.elapsed(),
        }
    }

    /// Wall-clock Unix seconds (revocations, which end at a token's `exp`).
    fn unix(&self) -> f64 {
        match self {
            Clock::System(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            Clock::Manual(c) => c.inner.unix_start as f64 + c.elapsed(),
        }
    }
}

/// How many live-or-not-yet-purged entries each map holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalCounts {
    pub buckets: usize,
    pub revocations: usize,
    pub replay_keys: usize,
    pub threat_scores: usize,
}

/// In-process state for a single replica. Cheap operations under short,
/// sharded `std::sync::Mutex` locks (never held across an await).
///
/// Each map holds at most `max_entries` keys (default [`DEFAULT_MAX_ENTRIES`]).
/// When a new key does not fit, expired entries of the whole map are purged
/// (at most once a second) and, if it still does not fit, the operation fails
/// closed with `StateError::Unavailable("local state full")`. Existing keys keep
/// working. Run [`crate::spawn_maintenance`] so expired entries go away without
/// waiting for the map to fill.
pub struct LocalState {
    clock: Clock,
    max_entries: usize,
    buckets: Map<Bucket>,
    revocations: Map<Revocation>,
    replay: Map<Once>,
    threats: Map<Threat>,
}

impl std::fmt::Debug for LocalState {
    /// Counts only: the keys are session ids and principals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("max_entries", &self.max_entries)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Default for LocalState {
    fn default() -> Self {
        LocalState::new()
    }
}

impl LocalState {
    /// Empty state on the system clocks, with [`DEFAULT_MAX_ENTRIES`] per map.
    pub fn new() -> LocalState {
        LocalState {
            clock: Clock::System(Instant::now()),
            max_entries: DEFAULT_MAX_ENTRIES,
            buckets: Map::new(),
            revocations: Map::new(),
            replay: Map::new(),
            threats: Map::new(),
        }
    }

    /// Sets the cap on entries per map.
    pub fn with_max_entries(mut self, max_entries: usize) -> LocalState {
        self.max_entries = max_entries;
        self
    }

    /// Uses a manual clock (tests).
    pub fn with_clock(mut self, clock: ManualClock) -> LocalState {
        self.clock = Clock::Manual(clock);
        self
    }

    /// Entries currently held per map (expired ones count until purged).
    pub fn counts(&self) -> LocalCounts {
        LocalCounts {
            buckets: self.buckets.len(),
            revocations: self.revocations.len(),
            replay_keys: self.replay.len(),
            threat_scores: self.threats.len(),
        }
    }

    /// Removes every expired entry: full buckets, revocations past their
    /// token's expiry (plus [`REVOCATION_LEEWAY`]), replay keys past their TTL,
    /// threat scores decayed below [`crate::THREAT_FLOOR`]. Returns how many.
    /// Locks one shard at a time.
    pub fn purge_expired(&self) -> usize {
        let mono = self.clock.mono();
        self.buckets.purge(mono)
            + self.replay.purge(mono)
            + self.threats.purge(mono)
            + self.revocations.purge(self.clock.unix())
    }

    pub(crate) fn rate_check(&self, key: &str, rate: Rate, cost: f64) -> Result<RateDecision, StateError> {
        rate.validate()?;
        math::validate_cost(cost)?;
        let now = self.clock.mono();
        self.buckets.update(&normalize(key), now, self.max_entries, |bucket| {
            let (decision, tat) = gcra(bucket.map(|b| b.tat), now, rate, cost);
            let action = if decision.allowed {
                Action::Put(Bucket { tat })
            } else {
                Action::Keep
            };
            (action, decision)
        })
    }

    pub(crate) fn revoke(&self, sid: &str, exp_unix: u64) -> Result<(), StateError> {
        let until = revocation_until(exp_unix) as f64;
        let now = self.clock.unix();
        if until <= now {
            return Ok(());
        }
        self.revocations.update(&normalize(sid), now, self.max_entries, |old| {
            let until = old.map_or(until, |r| r.until.max(until));
            (Action::Put(Revocation { until }), ())
        })
    }

    pub(crate) fn is_revoked(&self, sid: &str) -> Result<bool, StateError> {
        let now = self.clock.unix();
        Ok(self.revocations.read(&normalize(sid), now, |r| r.is_some()))
    }

    pub(crate) fn remember_once(&self, key: &str, ttl: Duration) -> Result<bool, StateError> {
        let now = self.clock.mono();
        let expires = now + replay_ttl(ttl).as_secs_f64();
        self.replay
            .update(&normalize(key), now, self.max_entries, |seen| match seen {
                Some(_) => (Action::Keep, false),
                None => (Action::Put(Once { expires }), true),
            })
    }

    pub(crate) fn threat_add(&self, principal: &str, weight: f64, half_life: Duration) -> Result<f64, StateError> {
        let half_life = math::half_life_secs(half_life)?;
        math::validate_weight(weight)?;
        let now = self.clock.mono();
        self.threats
            .update(&normalize(principal), now, self.max_entries, |old| {
                let current = old.map_or(0.0, |t| decayed_score(t.score, now - t.at, half_life));
                let score = math::add_weight(current, weight);
                match threat_lifetime(score, half_life) {
                    Some(life) => (
                        Action::Put(Threat {
                            score,
                            at: now,
                            expires: now + life,
                        }),
                        score,
                    ),
                    None => (Action::Remove, score),
                }
            })
    }

    pub(crate) fn threat_score(&self, principal: &str, half_life: Duration) -> Result<f64, StateError> {
        let half_life = math::half_life_secs(half_life)?;
        let now = self.clock.mono();
        Ok(self.threats.read(&normalize(principal), now, |t| {
            t.map_or(0.0, |t| decayed_score(t.score, now - t.at, half_life))
        }))
    }
}

/// An entry that stops existing at some time (in its map's clock).
trait Expiring {
    fn expires_at(&self) -> f64;
}

#[derive(Debug)]
struct Bucket {
    tat: f64,
}
impl Expiring for Bucket {
    /// A bucket whose TAT has passed is full: the same as no entry.
    fn expires_at(&self) -> f64 {
        self.tat
    }
}

#[derive(Debug)]
struct Revocation {
    until: f64,
}
impl Expiring for Revocation {
    fn expires_at(&self) -> f64 {
        self.until
    }
}

#[derive(Debug)]
struct Once {
    expires: f64,
}
impl Expiring for Once {
    fn expires_at(&self) -> f64 {
        self.expires
    }
}

#[derive(Debug)]
struct Threat {
    score: f64,
    at: f64,
    expires: f64,
}
impl Expiring for Threat {
    fn expires_at(&self) -> f64 {
        self.expires
    }
}

enum Action<V> {
    Keep,
    Put(V),
    Remove,
}

type Shard<V> = Mutex<HashMap<Box<str>, V>>;

/// A sharded, counted map of expiring entries.
struct Map<V> {
    shards: Box<[Shard<V>]>,
    shard_hasher: RandomState,
    len: AtomicUsize,
    /// When the last emergency purge ran (map clock seconds).
    last_emergency: Mutex<f64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot leave a map half-updated; a panic
    // elsewhere must not turn every later call into a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<V: Expiring> Map<V> {
    fn new() -> Map<V> {
        Map {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shard_hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            last_emergency: Mutex::new(f64::NEG_INFINITY),
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        let h = self.shard_hasher.hash_one(key);
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Reads the live entry (an expired one reads as absent).
    fn read<R>(&self, key: &str, now: f64, f: impl FnOnce(Option<&V>) -> R) -> R {
        let shard = lock(self.shard(key));
        f(shard.get(key).filter(|v| v.expires_at() > now))
    }

    /// Runs `f` on the live entry under the shard lock and applies its action.
    /// A new key needs a free slot; without one, expired entries are purged
    /// (rate-limited) and `f` runs again; still none: `Unavailable`.
    fn update<R>(
        &self,
        key: &str,
        now: f64,
        max_entries: usize,
        mut f: impl FnMut(Option<&V>) -> (Action<V>, R),
    ) -> Result<R, StateError> {
        for attempt in 0..2 {
            {
                let mut shard = lock(self.shard(key));
                if let Some(v) = shard.get_mut(key) {
                    let live = v.expires_at() > now;
                    let (action, r) = f(if live { Some(&*v) } else { None });
                    match action {
                        Action::Put(new) if new.expires_at() > now => *v = new,
                        Action::Keep if live => {}
                        Action::Put(_) | Action::Keep | Action::Remove => {
                            shard.remove(key);
                            self.len.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    return Ok(r);
                }
                let (action, r) = f(None);
                let new = match action {
                    Action::Put(new) if new.expires_at() > now => new,
                    _ => return Ok(r),
                };
                if self.reserve(max_entries) {
                    shard.insert(key.into(), new);
                    return Ok(r);
                }
            }
            // The shard lock is released: purging locks each shard in turn.
            if attempt > 0 || !self.emergency_purge(now) {
                break;
            }
        }
        Err(StateError::Unavailable("local state full".into()))
    }

    fn reserve(&self, max_entries: usize) -> bool {
        let reserved = self.len.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max_entries).then_some(n + 1)
        });
        reserved.is_ok()
    }

    /// A full purge, unless one ran less than `EMERGENCY_PURGE_INTERVAL` ago
    /// (then `false`: a map full of live keys fails fast, not with a scan per call).
    fn emergency_purge(&self, now: f64) -> bool {
        {
            let mut last = lock(&self.last_emergency);
            if now - *last < EMERGENCY_PURGE_INTERVAL {
                return false;
            }
            *last = now;
        }
        self.purge(now);
        true
    }

    fn purge(&self, now: f64) -> usize {
        let mut removed = 0;
        for shard in &*self.shards {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, v| v.expires_at() > now);
            let gone = before - shard.len();
            self.len.fetch_sub(gone, Ordering::Relaxed);
            removed += gone;
        }
        removed
    }
}
