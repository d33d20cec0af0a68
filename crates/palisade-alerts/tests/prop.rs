//! Random event sequences against the firing invariants and a naive model.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use palisade_alerts::Alerts;
use palisade_config::{AlertAction, AlertRule};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Op {
    /// An event `dt_ms` after the previous op; `group` None lacks the field.
    Event {
        dt_ms: u64,
        group: Option<u8>,
        matching: bool,
    },
    Prune {
        dt_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..4_000u64, prop::option::weighted(0.8, 0..4u8), prop::bool::weighted(0.8))
            .prop_map(|(dt_ms, group, matching)| Op::Event { dt_ms, group, matching }),
        1 => (0..4_000u64).prop_map(|dt_ms| Op::Prune { dt_ms }),
    ]
}

/// The rule semantics written the obvious way: every counted time kept, no
/// caps, no pruning.
#[derive(Default)]
struct Model {
    counted: HashMap<Option<u8>, Vec<Duration>>,
    fired_at: HashMap<Option<u8>, Duration>,
}

impl Model {
    fn observe(&mut self, g: Option<u8>, t: Duration, threshold: u32, window: Duration, cooldown: Duration) -> bool {
        if self.fired_at.get(&g).is_some_and(|&f| t - f < cooldown) {
            return false;
        }
        let counted = self.counted.entry(g).or_default();
        counted.push(t);
        counted.retain(|&c| t - c <= window);
        if counted.len() < threshold as usize {
            return false;
        }
        counted.clear();
        self.fired_at.insert(g, t);
        true
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn firings_are_bounded_and_respect_cooldown(
        threshold in 1..6u32,
        window_s in 1..20u64,
        cooldown_s in 0..30u64,
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let rule = AlertRule {
            name: "p".into(),
            on: vec!["auth.failure".into()],
            conditions: [("reason".to_owned(), toml::Value::from("bad"))].into_iter().collect(),
            threshold,
            window_s,
            group_by: Some("principal.sub".into()),
            cooldown_s,
            actions: vec![AlertAction::RevokeSession],
        };
        let alerts = Alerts::new(&[rule]).expect("valid rule");
        let window = Duration::from_secs(window_s);
        let cooldown = Duration::from_secs(cooldown_s);
        let t0 = Instant::now();
        let mut t = Duration::ZERO;
        let mut model = Model::default();
        let mut matching: HashMap<Option<u8>, u32> = HashMap::new();
        let mut fired: HashMap<Option<u8>, Vec<Duration>> = HashMap::new();
        for op in &ops {
            match *op {
                Op::Prune { dt_ms } => {
                    t += Duration::from_millis(dt_ms);
                    alerts.prune(t0 + t);
                }
                Op::Event { dt_ms, group, matching: m } => {
                    t += Duration::from_millis(dt_ms);
                    let mut ev = json!({"event": "auth.failure", "reason": if m { "bad" } else { "other" }});
                    if let Some(g) = group {
                        ev["principal"] = json!({"sub": format!("u{g}")});
                    }
                    let got = alerts.observe(&ev, t0 + t);
                    prop_assert!(got.len() <= 1);
                    if m {
                        *matching.entry(group).or_default() += 1;
                    } else {
                        prop_assert!(got.is_empty(), "a non-matching event fired");
                    }
                    let expected = m && model.observe(group, t, threshold, window, cooldown);
                    prop_assert_eq!(got.len() == 1, expected, "engine and model disagree at {:?}", t);
                    for f in got {
                        prop_assert_eq!(f.group, group.map(|g| format!("u{g}")));
                        prop_assert_eq!(f.count, threshold);
                        let times = fired.entry(group).or_default();
                        if let Some(&last) = times.last() {
                            prop_assert!(t - last >= cooldown, "fired {:?} after the last firing", t - last);
                        }
                        times.push(t);
                    }
                }
            }
            prop_assert!(alerts.tracked() <= 5);
        }
        let total_fired: usize = fired.values().map(Vec::len).sum();
        let total_matching: u32 = matching.values().sum();
        prop_assert!(total_fired as u32 <= total_matching / threshold);
        for (g, times) in &fired {
            prop_assert!(times.len() as u32 <= matching[g] / threshold);
        }
        prop_assert_eq!(alerts.overflowed(), 0);
    }
}
