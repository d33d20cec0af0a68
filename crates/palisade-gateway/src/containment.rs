//! Containment (L5): the global kill switch and blocked principals, set by
//! alert rules and the admin API. Kept in this process: each replica applies
//! what its own alerts and admin calls decide (documented in docs/audit.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most principals blocked at once; past it the oldest block is dropped
/// (alerts cannot be turned into unbounded memory).
const MAX_BLOCKED: usize = 100_000;

#[derive(Debug, Default)]
pub struct Containment {
    kill: AtomicBool,
    /// Principal key (`issuer` NUL `subject`) → until.
    blocked: Mutex<HashMap<String, Instant>>,
}

impl Containment {
    /// Whether all MCP traffic is refused.
    pub fn killed(&self) -> bool {
        self.kill.load(Ordering::SeqCst)
    }

    /// Engages or lifts the kill switch; returns the previous state.
    pub fn set_kill(&self, on: bool) -> bool {
        self.kill.swap(on, Ordering::SeqCst)
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
    }

    /// Lifts a block; false if there was none.
    pub fn unblock(&self, key: &str) -> bool {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .is_some()
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
        c.block(&k, Duration::from_secs(60));
        assert!(c.blocked_for(&k).is_some_and(|s| s <= 60));
        assert!(c.blocked_for(&principal_key("https://idp", "bob")).is_none());
        assert!(c.unblock(&k));
        assert!(!c.unblock(&k));
        c.block(&k, Duration::from_millis(0));
        assert!(c.blocked_for(&k).is_none());
        assert!(!c.set_kill(true));
        assert!(c.killed());
        assert!(c.set_kill(false));
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
