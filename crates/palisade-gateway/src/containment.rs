//! Containment (L5): the global kill switch and blocked principals, set by
//! alert rules and the admin API. A decision takes effect in this process at
//! once; with the Redis state backend it is also written to shared state,
//! which every replica reads back every second ([`spawn_sync`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_state::SharedContainment;

use crate::gateway::Gateway;

/// A local change this recent wins over a shared snapshot, which may have
/// been read before the change reached the store.
const FRESH: Duration = Duration::from_secs(5);

/// How often replicas read the shared containment state.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Most principals blocked at once; past it the oldest block is dropped
/// (alerts cannot be turned into unbounded memory).
const MAX_BLOCKED: usize = 100_000;

#[derive(Debug, Default)]
pub struct Containment {
    kill: AtomicBool,
    /// Principal key (`issuer` NUL `subject`) → until.
    blocked: Mutex<HashMap<String, Instant>>,
    /// Entries in `blocked` (expired ones included), so the request path
    /// skips the key and the lock while nobody is blocked.
    entries: AtomicUsize,
    /// When this process last changed the kill switch.
    kill_changed: Mutex<Option<Instant>>,
    /// Principals this process blocked or unblocked lately.
    recent: Mutex<HashMap<String, Instant>>,
}

impl Containment {
    /// Whether all MCP traffic is refused.
    pub fn killed(&self) -> bool {
        self.kill.load(Ordering::SeqCst)
    }

    /// Engages or lifts the kill switch; returns the previous state.
    pub fn set_kill(&self, on: bool) -> bool {
        *self.kill_changed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.kill.swap(on, Ordering::SeqCst)
    }

    fn touched(&self, key: &str) {
        let mut r = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        r.retain(|_, t| t.elapsed() < FRESH);
        if r.len() < MAX_BLOCKED {
            r.insert(key.to_owned(), Instant::now());
        }
    }

    /// Takes on the shared state: its kill switch and blocks replace this
    /// process's, except where this process changed them within [`FRESH`].
    pub fn apply(&self, shared: &SharedContainment, now_unix: u64) {
        let kill_recent = self
            .kill_changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < FRESH);
        if !kill_recent {
            self.kill.store(shared.kill, Ordering::SeqCst);
        }
        let recent: HashSet<String> = {
            let mut r = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            r.retain(|_, t| t.elapsed() < FRESH);
            r.keys().cloned().collect()
        };
        let now = Instant::now();
        let live: HashMap<&str, Instant> = shared
            .blocked
            .iter()
            .filter(|(_, until)| *until > now_unix)
            .map(|(k, until)| (k.as_str(), now + Duration::from_secs(until - now_unix)))
            .collect();
        let mut m = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        m.retain(|k, _| recent.contains(k) || live.contains_key(k.as_str()));
        for (k, until) in live {
            if !recent.contains(k) && m.len() < MAX_BLOCKED {
                m.insert(k.to_owned(), until);
            }
        }
        self.entries.store(m.len(), Ordering::Release);
    }

    /// Blocks a principal for `d`.
    pub fn block(&self, key: &str, d: Duration) {
        let mut m = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if m.len() >= MAX_BLOCKED {
            m.retain(|_, until| *until > now);
        }
        if m.len() >= MAX_BLOCKED
            && let Some(oldest) = m.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert(key.to_owned(), now + d);
        self.entries.store(m.len(), Ordering::Release);
        drop(m);
        self.touched(key);
    }

    /// Lifts a block; false if there was none.
    pub fn unblock(&self, key: &str) -> bool {
        let had = {
            let mut m = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            let had = m.remove(key).is_some();
            self.entries.store(m.len(), Ordering::Release);
            had
        };
        self.touched(key);
        had
    }

    /// Whether any principal may be blocked (one atomic load).
    pub fn any_blocked(&self) -> bool {
        self.entries.load(Ordering::Acquire) > 0
    }

    /// Seconds left of a principal's block, if blocked.
    pub fn blocked_for(&self, key: &str) -> Option<u64> {
        let m = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let until = m.get(key)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs().max(1))
    }

    /// Current blocks: (principal key, seconds left).
    pub fn blocks(&self) -> Vec<(String, u64)> {
        let now = Instant::now();
        let m = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<(String, u64)> = m
            .iter()
            .filter_map(|(k, u)| u.checked_duration_since(now).map(|d| (k.clone(), d.as_secs().max(1))))
            .collect();
        v.sort();
        v
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn shared_failed(what: &str, e: &palisade_state::StateError) {
    tracing::warn!(
        target: "palisade::audit",
        event = "containment.share_failed",
        action = what,
        error = %e,
        "containment decision applied here but not shared with other replicas"
    );
}

/// Blocks a principal here and, with shared state, on every replica.
pub async fn block(gw: &Gateway, key: &str, d: Duration) {
    gw.containment.block(key, d);
    let until = unix_now().saturating_add(d.as_secs().max(1));
    if let Err(e) = gw.controls.state.containment_block(key, until).await {
        shared_failed("block_principal", &e);
    }
}

/// Lifts a block here and in shared state; false if this process had none.
pub async fn unblock(gw: &Gateway, key: &str) -> bool {
    let had = gw.containment.unblock(key);
    if let Err(e) = gw.controls.state.containment_unblock(key).await {
        shared_failed("unblock_principal", &e);
    }
    had
}

/// Engages or lifts the kill switch here and in shared state.
pub async fn set_kill(gw: &Gateway, on: bool) -> bool {
    let was = gw.containment.set_kill(on);
    if let Err(e) = gw.controls.state.containment_set_kill(on).await {
        shared_failed(if on { "kill_switch" } else { "kill_switch_lift" }, &e);
    }
    was
}

/// Reads the shared containment state every second (Redis backend only).
/// While the store is unreachable the last state stays in force.
pub fn spawn_sync(gw: &Arc<Gateway>) {
    if matches!(gw.controls.state, palisade_state::Backend::Local(_)) {
        return;
    }
    let weak: Weak<Gateway> = Arc::downgrade(gw);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let Some(gw) = weak.upgrade() else { return };
            match gw.controls.state.containment().await {
                Ok(Some(shared)) => {
                    gw.containment.apply(&shared, unix_now());
                    failing = false;
                }
                Ok(None) => return,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read shared containment state; keeping the last one");
                    }
                    failing = true;
                }
            }
        }
    });
}

/// The key of a principal in blocks and audit queries.
pub fn principal_key(issuer: &str, subject: &str) -> String {
    format!("{issuer}\u{0}{subject}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_expire_and_lift() {
        let c = Containment::default();
        let k = principal_key("https://idp", "alice");
        assert!(!c.any_blocked());
        c.block(&k, Duration::from_secs(60));
        assert!(c.any_blocked());
        assert!(c.blocked_for(&k).is_some_and(|s| s <= 60));
        assert!(c.blocked_for(&principal_key("https://idp", "bob")).is_none());
        assert!(c.unblock(&k));
        assert!(!c.any_blocked());
        assert!(!c.unblock(&k));
        c.block(&k, Duration::from_millis(0));
        assert!(c.blocked_for(&k).is_none());
        assert!(!c.set_kill(true));
        assert!(c.killed());
        assert!(c.set_kill(false));
    }

    #[test]
    fn shared_state_is_applied_but_fresh_local_changes_win() {
        let c = Containment::default();
        let now = 1_000_000;
        let shared = SharedContainment {
            kill: true,
            blocked: vec![("a".into(), now + 60), ("expired".into(), now - 1)],
        };
        c.apply(&shared, now);
        assert!(c.killed());
        assert!(c.blocked_for("a").is_some());
        assert!(c.blocked_for("expired").is_none());
        // Lifted on another replica: gone here too.
        c.apply(&SharedContainment::default(), now);
        assert!(!c.killed() && c.blocked_for("a").is_none());
        // A block made here survives a snapshot read before it was shared.
        c.block("b", Duration::from_secs(60));
        c.set_kill(true);
        c.apply(&SharedContainment::default(), now);
        assert!(c.blocked_for("b").is_some() && c.killed());
        // An unblock made here is not undone by a stale snapshot.
        c.unblock("b");
        c.apply(
            &SharedContainment {
                kill: true,
                blocked: vec![("b".into(), now + 60)],
            },
            now,
        );
        assert!(c.blocked_for("b").is_none());
    }

    #[test]
    fn blocks_are_bounded() {
        let c = Containment::default();
        for i in 0..MAX_BLOCKED + 10 {
            c.block(&format!("p{i}"), Duration::from_secs(600));
        }
        assert_eq!(c.blocks().len(), MAX_BLOCKED);
    }
}
