//! The in-process backend, on a manual clock where time matters.

use std::sync::Arc;
use std::time::Duration;

use palisade_state::{
    Backend, LocalCounts, LocalState, MAX_KEY_LEN, ManualClock, REVOCATION_LEEWAY, Rate, StateError, THREAT_FLOOR,
    normalize_key, spawn_maintenance,
};

const START_UNIX: u64 = 1_800_000_000;

fn manual(max_entries: usize) -> (Backend, Arc<LocalState>, ManualClock) {
    let clock = ManualClock::new(START_UNIX);
    let state = Arc::new(
        LocalState::new()
            .with_clock(clock.clone())
            .with_max_entries(max_entries),
    );
    (Backend::Local(state.clone()), state, clock)
}

fn rate(per_second: f64, burst: u32) -> Rate {
    Rate { per_second, burst }
}

async fn allowed_of(b: &Backend, key: &str, r: Rate, cost: f64, n: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        if b.rate_check(key, r, cost).await.unwrap().allowed {
            allowed += 1;
        }
    }
    allowed
}

#[tokio::test]
async fn local_name_ping_and_debug_without_keys() {
    let b = Backend::local();
    assert_eq!(b.name(), "local");
    b.ping().await.unwrap();
    b.revoke("secret-session-id", u64::MAX).await.unwrap();
    let shown = format!("{b:?}");
    assert!(!shown.contains("secret-session-id"), "{shown}");
    assert!(shown.contains("revocations: 1"), "{shown}");
}

#[tokio::test]
async fn local_rate_limit_burst_retry_refill_and_isolation() {
    let (b, _, clock) = manual(100);
    let r = rate(10.0, 5);
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let d = b.rate_check("user:a", r, 1.0).await.unwrap();
        assert!(d.allowed);
        assert!(d.retry_after.is_zero());
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let denied = b.rate_check("user:a", r, 1.0).await.unwrap();
    assert!(!denied.allowed);
    assert!(
        (denied.retry_after.as_secs_f64() - 0.1).abs() < 1e-6,
        "{:?}",
        denied.retry_after
    );
    // Another key has its own bucket.
    assert_eq!(allowed_of(&b, "user:b", r, 1.0, 10).await, 5);
    // Refill: one interval gives one request, the full window the burst.
    clock.advance(Duration::from_millis(100));
    assert_eq!(allowed_of(&b, "user:a", r, 1.0, 3).await, 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(allowed_of(&b, "user:a", r, 1.0, 10).await, 5);
}

#[tokio::test]
async fn local_fractional_cost_halves_the_burst() {
    let (b, _, _) = manual(100);
    assert_eq!(allowed_of(&b, "k", rate(1.0, 10), 2.0, 20).await, 5);
    assert_eq!(allowed_of(&b, "k2", rate(1.0, 10), 0.5, 40).await, 20);
}

#[tokio::test]
async fn local_invalid_rate_or_cost_is_a_protocol_error() {
    let b = Backend::local();
    for r in [
        rate(0.0, 1),
        rate(f64::NAN, 1),
        rate(f64::INFINITY, 1),
        rate(-3.0, 1),
        rate(1.0, 0),
    ] {
        assert!(
            matches!(b.rate_check("k", r, 1.0).await, Err(StateError::Protocol(_))),
            "{r:?}"
        );
    }
    for cost in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(
                b.rate_check("k", rate(1.0, 1), cost).await,
                Err(StateError::Protocol(_))
            ),
            "{cost}"
        );
    }
    // Nothing was consumed by the refusals.
    assert!(b.rate_check("k", rate(1.0, 1), 1.0).await.unwrap().allowed);
}

#[tokio::test]
async fn local_revocation_lasts_until_expiry_plus_leeway() {
    let (b, state, clock) = manual(100);
    let exp = START_UNIX + 60;
    assert!(!b.is_revoked("sid-1").await.unwrap());
    b.revoke("sid-1", exp).await.unwrap();
    assert!(b.is_revoked("sid-1").await.unwrap());
    assert!(!b.is_revoked("sid-2").await.unwrap());
    clock.advance(Duration::from_secs(60) + REVOCATION_LEEWAY - Duration::from_secs(1));
    assert!(b.is_revoked("sid-1").await.unwrap(), "still inside the leeway");
    clock.advance(Duration::from_secs(2));
    assert!(!b.is_revoked("sid-1").await.unwrap(), "gone after exp + leeway");
    assert_eq!(state.purge_expired(), 1);
    // A token that expired long ago needs no entry at all.
    b.revoke("old", START_UNIX - 3600).await.unwrap();
    assert!(!b.is_revoked("old").await.unwrap());
    assert_eq!(state.counts().revocations, 0);
    // Absurd expiries do not overflow.
    b.revoke("far", u64::MAX).await.unwrap();
    assert!(b.is_revoked("far").await.unwrap());
}

#[tokio::test]
async fn local_revocation_is_never_shortened() {
    let (b, _, clock) = manual(100);
    b.revoke("s", START_UNIX + 1000).await.unwrap();
    b.revoke("s", START_UNIX + 10).await.unwrap();
    clock.advance(Duration::from_secs(10) + REVOCATION_LEEWAY + Duration::from_secs(1));
    assert!(b.is_revoked("s").await.unwrap());
    clock.advance(Duration::from_secs(1000));
    assert!(!b.is_revoked("s").await.unwrap());
}

#[tokio::test]
async fn local_remember_once_detects_replay_until_ttl() {
    let (b, _, clock) = manual(100);
    let ttl = Duration::from_secs(30);
    assert!(b.remember_once("jti-1", ttl).await.unwrap());
    assert!(!b.remember_once("jti-1", ttl).await.unwrap());
    assert!(b.remember_once("jti-2", ttl).await.unwrap());
    clock.advance(Duration::from_secs(29));
    assert!(
        !b.remember_once("jti-1", ttl).await.unwrap(),
        "a replay does not extend nor reset"
    );
    clock.advance(Duration::from_secs(2));
    assert!(
        b.remember_once("jti-1", ttl).await.unwrap(),
        "fresh again after the TTL"
    );
    // A zero TTL is clamped to 1 ms, not an error.
    assert!(b.remember_once("z", Duration::ZERO).await.unwrap());
    assert!(!b.remember_once("z", Duration::ZERO).await.unwrap());
    clock.advance(Duration::from_millis(1));
    assert!(b.remember_once("z", Duration::ZERO).await.unwrap());
}

#[tokio::test]
async fn local_threat_score_adds_and_decays() {
    let (b, state, clock) = manual(100);
    let hl = Duration::from_secs(10);
    assert_eq!(b.threat_score("p", hl).await.unwrap(), 0.0);
    assert_eq!(b.threat_add("p", 8.0, hl).await.unwrap(), 8.0);
    clock.advance(Duration::from_secs(10));
    let s = b.threat_score("p", hl).await.unwrap();
    assert!((s - 4.0).abs() < 1e-9, "{s}");
    let s = b.threat_add("p", 1.0, hl).await.unwrap();
    assert!((s - 5.0).abs() < 1e-9, "{s}");
    clock.advance(Duration::from_secs(20));
    let s = b.threat_score("p", hl).await.unwrap();
    assert!((s - 1.25).abs() < 1e-9, "{s}");
    // Negative weights lower it, never below zero (and zero forgets it).
    assert_eq!(b.threat_add("p", -100.0, hl).await.unwrap(), 0.0);
    assert_eq!(state.counts().threat_scores, 0);
    // Decayed below the floor: forgotten and purgeable.
    b.threat_add("q", 1.0, hl).await.unwrap();
    clock.advance(Duration::from_secs(10 * 11)); // 2^-11 < 1e-3
    assert_eq!(b.threat_score("q", hl).await.unwrap(), 0.0);
    assert!(THREAT_FLOOR > 2f64.powi(-11));
    assert_eq!(state.purge_expired(), 1);
}

#[tokio::test]
async fn local_threat_invalid_arguments() {
    let b = Backend::local();
    assert!(matches!(
        b.threat_add("p", 1.0, Duration::ZERO).await,
        Err(StateError::Protocol(_))
    ));
    assert!(matches!(
        b.threat_add("p", f64::NAN, Duration::from_secs(1)).await,
        Err(StateError::Protocol(_))
    ));
    assert!(matches!(
        b.threat_add("p", f64::INFINITY, Duration::from_secs(1)).await,
        Err(StateError::Protocol(_))
    ));
    assert!(matches!(
        b.threat_score("p", Duration::ZERO).await,
        Err(StateError::Protocol(_))
    ));
    let s = b.threat_add("p", 1e300, Duration::from_secs(1)).await.unwrap();
    assert_eq!(s, palisade_state::MAX_THREAT_SCORE);
}

#[tokio::test]
async fn local_full_map_fails_closed_and_recovers_after_purge() {
    let (b, state, clock) = manual(4);
    let r = rate(1.0, 10);
    for i in 0..4 {
        assert!(b.rate_check(&format!("k{i}"), r, 1.0).await.unwrap().allowed);
    }
    let full = b.rate_check("k4", r, 1.0).await;
    assert_eq!(full, Err(StateError::Unavailable("local state full".into())));
    // Existing keys keep working (and keep being limited).
    assert_eq!(allowed_of(&b, "k0", r, 1.0, 20).await, 9);
    // The other maps have their own caps.
    for i in 0..4 {
        assert!(b.remember_once(&format!("j{i}"), Duration::from_secs(5)).await.unwrap());
    }
    assert!(matches!(
        b.remember_once("j4", Duration::from_secs(5)).await,
        Err(StateError::Unavailable(_))
    ));
    assert!(b.threat_add("t", 1.0, Duration::from_secs(5)).await.is_ok());
    for i in 0..4 {
        b.revoke(&format!("s{i}"), START_UNIX + 5).await.unwrap();
    }
    assert!(matches!(
        b.revoke("s4", START_UNIX + 5).await,
        Err(StateError::Unavailable(_))
    ));
    // Still full of live entries a moment later: refused again.
    clock.advance(Duration::from_millis(500));
    assert!(matches!(
        b.rate_check("k4", r, 1.0).await,
        Err(StateError::Unavailable(_))
    ));
    // Once the buckets are full again their entries are expired: a new key
    // triggers the purge of the whole map (no maintenance task here).
    clock.advance(Duration::from_secs(11));
    assert!(b.rate_check("k4", r, 1.0).await.unwrap().allowed);
    assert_eq!(state.counts().buckets, 1);
    assert!(b.remember_once("j4", Duration::from_secs(5)).await.unwrap());
    assert_eq!(state.counts().replay_keys, 1);
    clock.advance(REVOCATION_LEEWAY);
    b.revoke("s4", START_UNIX + 3600).await.unwrap();
    assert_eq!(state.counts().revocations, 1);
}

#[tokio::test]
async fn local_purge_removes_only_expired_entries() {
    let (b, state, clock) = manual(1000);
    b.rate_check("short", rate(10.0, 1), 1.0).await.unwrap(); // full again after 0.1 s
    b.rate_check("long", rate(0.001, 1), 1.0).await.unwrap(); // after 1000 s
    b.remember_once("j-short", Duration::from_secs(1)).await.unwrap();
    b.remember_once("j-long", Duration::from_secs(1000)).await.unwrap();
    b.revoke("s-short", START_UNIX).await.unwrap();
    b.revoke("s-long", START_UNIX + 100_000).await.unwrap();
    b.threat_add("t-short", 0.002, Duration::from_secs(1)).await.unwrap(); // below the floor after 1 s
    b.threat_add("t-long", 1000.0, Duration::from_secs(1000)).await.unwrap();
    let all = LocalCounts {
        buckets: 2,
        revocations: 2,
        replay_keys: 2,
        threat_scores: 2,
    };
    assert_eq!(state.counts(), all);
    assert_eq!(state.purge_expired(), 0);
    clock.advance(Duration::from_secs(1) + REVOCATION_LEEWAY);
    assert_eq!(state.purge_expired(), 4);
    assert_eq!(
        state.counts(),
        LocalCounts {
            buckets: 1,
            revocations: 1,
            replay_keys: 1,
            threat_scores: 1
        }
    );
    assert!(!b.rate_check("long", rate(0.001, 1), 1.0).await.unwrap().allowed);
    assert!(!b.remember_once("j-long", Duration::from_secs(1)).await.unwrap());
    assert!(b.is_revoked("s-long").await.unwrap());
    assert!(b.threat_score("t-long", Duration::from_secs(1000)).await.unwrap() > 500.0);
}

#[tokio::test]
async fn local_maintenance_task_purges_and_stops_with_the_state() {
    let (b, state, clock) = manual(1000);
    for i in 0..50 {
        b.rate_check(&format!("k{i}"), rate(1.0, 1), 1.0).await.unwrap();
        b.remember_once(&format!("j{i}"), Duration::from_secs(1)).await.unwrap();
    }
    spawn_maintenance(&b, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state.counts().buckets, 50, "nothing expired yet");
    clock.advance(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state.counts() != LocalCounts::default() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not purged: {:?}",
            state.counts()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The task holds no strong reference: dropping the backend frees the state.
    let weak = Arc::downgrade(&state);
    drop((b, state));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(weak.upgrade().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_concurrent_rate_checks_are_atomic() {
    let b = Backend::local();
    let r = rate(0.001, 300);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..100 {
                n += usize::from(b.rate_check("shared", r, 1.0).await.unwrap().allowed);
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 300);
}

/// Keys that would break naive string handling, plus long ones.
pub fn hostile_keys() -> Vec<String> {
    vec![
        "line\nbreak".into(),
        "cr\r\nlf".into(),
        "quote\"s'and`back".into(),
        "nul\0byte".into(),
        "\0".into(),
        "".into(),
        " ".into(),
        "x".repeat(10 * 1024),
        "y".repeat(10 * 1024),
        "x".repeat(MAX_KEY_LEN),
        "x".repeat(MAX_KEY_LEN + 1),
        "#short".into(),
        "\"]) redis.call('FLUSHALL') --".into(),
        "'; return redis.call('FLUSHDB') --".into(),
        "]] redis.call('SET','pwned','1') [[".into(),
        "KEYS[1]".into(),
        "*\r\n$8\r\nFLUSHALL\r\n".into(),
        "ünïcødé ✓ \u{202e}rtl".into(),
        "%s%n{}{0}".into(),
    ]
}

#[tokio::test]
async fn local_hostile_keys_are_distinct_and_bounded() {
    let (b, state, _) = manual(1000);
    let keys = hostile_keys();
    let r = rate(0.001, 1);
    for k in &keys {
        assert!(b.rate_check(k, r, 1.0).await.unwrap().allowed, "{k:?}");
        assert!(!b.rate_check(k, r, 1.0).await.unwrap().allowed, "{k:?}");
        assert!(b.remember_once(k, Duration::from_secs(60)).await.unwrap(), "{k:?}");
        assert!(!b.remember_once(k, Duration::from_secs(60)).await.unwrap(), "{k:?}");
        b.revoke(k, START_UNIX + 60).await.unwrap();
        assert!(b.is_revoked(k).await.unwrap());
        b.threat_add(k, 1.0, Duration::from_secs(60)).await.unwrap();
    }
    // Every key got its own entry (the two 10 KB keys, the 512- and 513-byte
    // keys and "#short" included).
    assert_eq!(state.counts().buckets, keys.len());
    assert_eq!(state.counts().replay_keys, keys.len());
    // The hashed form of a long key is itself another key.
    let hashed = normalize_key(&keys[7]).into_owned();
    assert!(hashed.len() == 65);
    assert!(b.remember_once(&hashed, Duration::from_secs(60)).await.unwrap());
}
