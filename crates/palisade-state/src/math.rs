//! The arithmetic both backends share: GCRA and the threat-score decay.
//!
//! The Lua scripts in `redis_backend.rs` mirror these functions line by line;
//! a change here must be made there too (`redis_mirror_gcra_semantics` in
//! `tests/redis.rs` runs the same sequences through both).

use std::time::Duration;

use crate::{Rate, RateDecision, StateError};

/// The longest window a [`Rate`] may describe: `burst / per_second` (the time
/// an empty bucket takes to fill) must not exceed this (ten years). Keeps
/// every `retry_after` and every expiry finite and representable.
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `retry_after` reported by [`gcra`] for invalid input (the stateful
/// `rate_check` returns [`StateError::Protocol`] instead and never gets there).
pub const INVALID_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A threat score that has decayed below this is forgotten (reads as 0.0).
pub const THREAT_FLOOR: f64 = 1e-3;

/// Threat scores are clamped to `0.0..=MAX_THREAT_SCORE`.
pub const MAX_THREAT_SCORE: f64 = 1e12;

impl Rate {
    /// Checks that the rate can be enforced: `per_second` finite and > 0,
    /// `burst` ≥ 1, and `burst / per_second` ≤ [`MAX_RATE_WINDOW`].
    pub fn validate(&self) -> Result<(), StateError> {
        let ok = self.per_second.is_finite()
            && self.per_second > 0.0
            && self.burst >= 1
            && f64::from(self.burst) / self.per_second <= MAX_RATE_WINDOW.as_secs_f64();
        if ok {
            Ok(())
        } else {
            Err(StateError::Protocol("invalid rate".into()))
        }
    }
}

/// Checks a request cost: finite and ≥ 0.
pub fn validate_cost(cost: f64) -> Result<(), StateError> {
    if cost.is_finite() && cost >= 0.0 {
        Ok(())
    } else {
        Err(StateError::Protocol("invalid cost".into()))
    }
}

/// GCRA ("generic cell rate algorithm", the virtual-scheduling form of a
/// token bucket) for one request of `cost` at `now` against a bucket whose
/// theoretical arrival time is `tat` (`None`: never seen, i.e. full).
///
/// With emission interval `T = 1 / per_second` and tolerance `τ = T · burst`:
///
/// * `ahead = max(tat − now, 0)`: how far the bucket's schedule runs ahead of
///   the clock (0 when full, τ when empty);
/// * the request needs `ahead + T · cost ≤ τ`; it then passes and the new
///   TAT is `now + ahead + T · cost`;
/// * otherwise it is denied, the TAT is unchanged, and `retry_after` is
///   `ahead + T · cost − τ`, the time after which the same request passes.
///
/// From a full bucket, exactly `burst` requests of cost 1 pass at once and
/// the next is denied with `retry_after = T`. `cost` is fractional (cost 2
/// counts as two requests, so only `burst / 2` pass) and is capped at
/// `burst`, so every request can pass eventually; the harshest cost takes the
/// whole bucket. `remaining` counts the further cost-1 requests that would
/// pass now.
///
/// The arithmetic is done in whole microseconds held in `f64` (exact integers
/// below 2^53, which Unix time in microseconds is): `T` is rounded to a whole
/// microsecond (at least 1, so rates above 1,000,000/s act as 1,000,000/s) and
/// `T · cost` too. Sums and comparisons are then exact, with no rounding drift
/// however large the clock, and the Lua script computes bit for bit the same.
///
/// Invalid input (see [`Rate::validate`], [`validate_cost`], or a non-finite
/// `now`/`tat`) is denied with [`INVALID_RETRY_AFTER`]: fail closed.
///
/// The returned TAT is the one to store when allowed, and `tat` (or `now`
/// when `None`) unchanged when denied. The bucket is full again (its entry may
/// expire) at the returned TAT.
pub fn gcra(tat: Option<f64>, now: f64, rate: Rate, cost: f64) -> (RateDecision, f64) {
    let unchanged = tat.unwrap_or(now);
    let finite_input = now.is_finite() && tat.is_none_or(f64::is_finite);
    if rate.validate().is_err() || validate_cost(cost).is_err() || !finite_input {
        let decision = RateDecision {
            allowed: false,
            retry_after: INVALID_RETRY_AFTER,
            remaining: 0,
        };
        return (decision, unchanged);
    }
    let now_us = micros(now);
    let interval = (1e6 / rate.per_second + 0.5).floor().max(1.0);
    let burst = f64::from(rate.burst);
    let tolerance = interval * burst;
    let cost = cost.min(burst);
    let increment = (interval * cost + 0.5).floor();
    let ahead = match tat {
        Some(t) if micros(t) > now_us => micros(t) - now_us,
        _ => 0.0,
    };
    let new_ahead = ahead + increment;
    if new_ahead <= tolerance {
        let remaining = whole_requests(tolerance - new_ahead, interval, burst);
        let decision = RateDecision {
            allowed: true,
            retry_after: Duration::ZERO,
            remaining,
        };
        return (decision, (now_us + new_ahead) / 1e6);
    }
    let remaining = whole_requests(tolerance - ahead, interval, burst);
    let decision = RateDecision {
        allowed: false,
        retry_after: seconds((new_ahead - tolerance) / 1e6),
        remaining,
    };
    (decision, unchanged)
}

/// Seconds to whole microseconds.
fn micros(seconds: f64) -> f64 {
    (seconds * 1e6 + 0.5).floor()
}

/// How many requests of cost 1 (`interval` µs each) fit in `spare` µs.
fn whole_requests(spare: f64, interval: f64, burst: f64) -> u32 {
    // In 0..=burst, burst ≤ u32::MAX: the cast is exact.
    (spare / interval).floor().clamp(0.0, burst) as u32
}

/// Seconds (finite, bounded by [`MAX_RATE_WINDOW`] for valid input) to a Duration.
pub(crate) fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(MAX_RATE_WINDOW)
}

/// The threat score `score`, last updated `elapsed` seconds ago, decayed with
/// `half_life` seconds: `score · 2^(−elapsed / half_life)`.
pub fn decayed_score(score: f64, elapsed: f64, half_life: f64) -> f64 {
    if elapsed <= 0.0 {
        score
    } else {
        score * (-(elapsed / half_life)).exp2()
    }
}

/// Seconds until `score` decays below [`THREAT_FLOOR`], `None` if it already is.
pub(crate) fn threat_lifetime(score: f64, half_life: f64) -> Option<f64> {
    (score > THREAT_FLOOR).then(|| half_life * (score / THREAT_FLOOR).log2())
}

/// Validates a half-life (> 0) and returns it in seconds.
pub(crate) fn half_life_secs(half_life: Duration) -> Result<f64, StateError> {
    if half_life.is_zero() {
        return Err(StateError::Protocol("invalid half-life".into()));
    }
    Ok(half_life.as_secs_f64())
}

/// Validates a threat weight (finite).
pub(crate) fn validate_weight(weight: f64) -> Result<(), StateError> {
    if weight.is_finite() {
        Ok(())
    } else {
        Err(StateError::Protocol("invalid threat weight".into()))
    }
}

/// The new score after adding `weight` to a decayed `current`, clamped.
pub(crate) fn add_weight(current: f64, weight: f64) -> f64 {
    (current + weight).clamp(0.0, MAX_THREAT_SCORE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// Runs `n` requests at the same instant, threading the TAT through.
    fn run(mut tat: Option<f64>, now: f64, rate: Rate, cost: f64, n: usize) -> (Vec<RateDecision>, Option<f64>) {
        let mut out = Vec::new();
        for _ in 0..n {
            let (d, t) = gcra(tat, now, rate, cost);
            if d.allowed {
                tat = Some(t);
            } else {
                assert_eq!(t, tat.unwrap_or(now), "a denial must not move the TAT");
            }
            out.push(d);
        }
        (out, tat)
    }

    fn allowed(ds: &[RateDecision]) -> usize {
        ds.iter().filter(|d| d.allowed).count()
    }

    #[test]
    fn burst_then_deny() {
        let r = rate(10.0, 5);
        let (ds, _) = run(None, 1000.0, r, 1.0, 8);
        assert_eq!(allowed(&ds), 5);
        assert!(ds[..5].iter().all(|d| d.allowed && d.retry_after.is_zero()));
        assert_eq!(
            ds.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [4, 3, 2, 1, 0, 0, 0, 0]
        );
        assert!(ds[5..].iter().all(|d| !d.allowed));
    }

    #[test]
    fn exact_burst_with_awkward_rates_and_large_clocks() {
        // 1/3 and 1/7 are not exact in binary; at 1.8e9 s (Unix time, as the
        // Redis script sees it) f64 steps are 2.4e-7 s. Still exactly `burst` pass.
        for (per_second, burst) in [
            (3.0, 10),
            (7.0, 100),
            (0.3, 3),
            (1000.0, 1000),
            (1.0, 1),
            (1.5, 10),
            (1e9, 5),
        ] {
            for now in [0.0, 12.345, 1e8, 1_800_000_000.123_456] {
                let (ds, _) = run(None, now, rate(per_second, burst), 1.0, burst as usize + 3);
                assert_eq!(
                    allowed(&ds),
                    burst as usize,
                    "rate {per_second}/s burst {burst} at {now}"
                );
                assert!(!ds[burst as usize].allowed);
            }
        }
    }

    #[test]
    fn retry_after_is_one_emission_interval() {
        let r = rate(4.0, 3);
        let (ds, _) = run(None, 50.0, r, 1.0, 4);
        let denied = ds[3];
        assert!(!denied.allowed);
        assert!(
            (denied.retry_after.as_secs_f64() - 0.25).abs() < 1e-6,
            "{:?}",
            denied.retry_after
        );
        assert_eq!(denied.remaining, 0);
    }

    #[test]
    fn refills_after_time() {
        let r = rate(2.0, 4);
        let (_, tat) = run(None, 0.0, r, 1.0, 4);
        // Empty. After the retry_after (0.5 s) exactly one passes.
        assert!(!gcra(tat, 0.49, r, 1.0).0.allowed);
        let (d, t) = gcra(tat, 0.5, r, 1.0);
        assert!(d.allowed);
        assert!(!gcra(Some(t), 0.5, r, 1.0).0.allowed);
        // After the whole window (2 s) the bucket is full again: the TAT is in
        // the past and behaves exactly as a missing entry.
        let (ds, _) = run(tat, 2.0, r, 1.0, 6);
        assert_eq!(allowed(&ds), 4);
        let (ds_fresh, _) = run(None, 2.0, r, 1.0, 6);
        assert_eq!(ds, ds_fresh);
        // Half the window gives half the burst.
        let (ds, _) = run(tat, 1.0, r, 1.0, 6);
        assert_eq!(allowed(&ds), 2);
    }

    #[test]
    fn tat_marks_when_the_bucket_is_full_again() {
        let r = rate(10.0, 5);
        let (_, tat) = run(None, 100.0, r, 1.0, 3);
        assert!((tat.unwrap() - 100.3).abs() < 1e-9);
    }

    #[test]
    fn fractional_cost_consumes_proportionally() {
        let r = rate(1.0, 10);
        let (ds, _) = run(None, 0.0, r, 2.0, 10);
        assert_eq!(allowed(&ds), 5, "cost 2 halves the burst");
        let (ds, _) = run(None, 0.0, r, 0.5, 30);
        assert_eq!(allowed(&ds), 20, "cost 0.5 doubles it");
        let (ds, _) = run(None, 0.0, r, 1.5, 10);
        assert_eq!(allowed(&ds), 6, "cost 1.5: 6 × 1.5 = 9 ≤ 10 < 10.5");
        // Remaining counts cost-1 requests.
        assert_eq!(gcra(None, 0.0, r, 2.5).0.remaining, 7);
        // A denied cost-2 request with one unit left reports it.
        let (_, tat) = run(None, 0.0, r, 1.0, 9);
        let (d, _) = gcra(tat, 0.0, r, 2.0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 1);
        assert!((d.retry_after.as_secs_f64() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn zero_cost_always_passes_and_costs_nothing() {
        let r = rate(1.0, 2);
        let (ds, tat) = run(None, 0.0, r, 0.0, 100);
        assert_eq!(allowed(&ds), 100);
        assert_eq!(tat, Some(0.0));
        assert!(ds.iter().all(|d| d.remaining == 2));
    }

    #[test]
    fn cost_above_burst_is_capped_at_the_whole_bucket() {
        let r = rate(1.0, 4);
        // From a full bucket a huge cost passes once, draining it...
        let (d, tat) = gcra(None, 0.0, r, 1e9);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!((tat - 4.0).abs() < 1e-9);
        // ...and the next one must wait for the whole bucket.
        let (d, _) = gcra(Some(tat), 0.0, r, 1e9);
        assert!(!d.allowed);
        assert!((d.retry_after.as_secs_f64() - 4.0).abs() < 1e-6);
        assert!(gcra(Some(tat), 4.0, r, 1e9).0.allowed);
    }

    #[test]
    fn invalid_inputs_are_denied() {
        let good = rate(1.0, 1);
        let bad_rates = [
            rate(0.0, 1),
            rate(-1.0, 1),
            rate(f64::NAN, 1),
            rate(f64::INFINITY, 1),
            rate(1.0, 0),
            rate(1e-12, 1), // a window of 31,000 years
        ];
        for r in bad_rates {
            assert!(r.validate().is_err(), "{r:?}");
            let (d, t) = gcra(None, 5.0, r, 1.0);
            assert!(!d.allowed, "{r:?}");
            assert_eq!(d.retry_after, INVALID_RETRY_AFTER);
            assert_eq!(t, 5.0);
        }
        for cost in [-1.0, -0.0001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(validate_cost(cost).is_err(), "{cost}");
            assert!(!gcra(None, 5.0, good, cost).0.allowed, "{cost}");
        }
        assert!(!gcra(None, f64::NAN, good, 1.0).0.allowed);
        assert!(!gcra(Some(f64::NAN), 1.0, good, 1.0).0.allowed);
        assert!(!gcra(Some(f64::INFINITY), 1.0, good, 1.0).0.allowed);
        assert!(good.validate().is_ok());
        assert!(rate(1e-6, 300).validate().is_ok(), "a 300-hour window is fine");
        assert!(validate_cost(0.0).is_ok());
    }

    #[test]
    fn decay_halves_per_half_life() {
        assert_eq!(decayed_score(8.0, 0.0, 10.0), 8.0);
        assert_eq!(decayed_score(8.0, -5.0, 10.0), 8.0, "a clock step back never raises it");
        assert!((decayed_score(8.0, 10.0, 10.0) - 4.0).abs() < 1e-12);
        assert!((decayed_score(8.0, 30.0, 10.0) - 1.0).abs() < 1e-12);
        let life = threat_lifetime(1.0, 10.0).unwrap();
        assert!((decayed_score(1.0, life, 10.0) - THREAT_FLOOR).abs() < 1e-12);
        assert_eq!(threat_lifetime(THREAT_FLOOR / 2.0, 10.0), None);
        assert_eq!(add_weight(1.0, -5.0), 0.0);
        assert_eq!(add_weight(1.0, f64::MAX), MAX_THREAT_SCORE);
        assert!(half_life_secs(Duration::ZERO).is_err());
        assert!(validate_weight(f64::NAN).is_err());
    }
}
