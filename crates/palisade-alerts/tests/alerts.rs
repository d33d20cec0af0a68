use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_alerts::{Alerts, Fired, MAX_GROUPS_PER_RULE, field};
use palisade_config::{AlertAction, AlertRule};
use serde_json::{Value, json};

fn rule(toml_text: &str) -> AlertRule {
    toml::from_str(toml_text).expect("rule parses")
}

fn alerts(rules: &[&str]) -> Alerts {
    let rules: Vec<AlertRule> = rules.iter().map(|r| rule(r)).collect();
    Alerts::new(&rules).expect("rules are valid")
}

const BRUTE_FORCE: &str = r#"
name = "brute_force"
on = ["auth.failure"]
threshold = 5
window_s = 60
group_by = "principal.sub"
cooldown_s = 300
actions = [{ type = "block_principal", for_s = 900 }, { type = "notify", sink = "pager" }]
"#;

fn auth_failure(sub: &str) -> Value {
    json!({
        "event": "auth.failure",
        "reason": "invalid_token",
        "principal": {"iss": "https://idp", "sub": sub},
        "session": "ab12",
    })
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Feeds `event` at each offset (seconds after `t0`) and returns the firings.
fn feed(a: &Alerts, event: &Value, t0: Instant, offsets: &[u64]) -> Vec<Fired> {
    offsets.iter().flat_map(|&s| a.observe(event, t0 + secs(s))).collect()
}

/// An alert rule matching `on` with one `where` condition, firing on every event.
fn cond_rule(on: &str, path: &str, value: &str) -> Alerts {
    alerts(&[&format!(
        "name = \"c\"\non = [{on}]\ncooldown_s = 0\nactions = [{{ type = \"kill_switch\" }}]\n[where]\n{path:?} = {value}\n"
    )])
}

fn fires(a: &Alerts, event: Value) -> bool {
    !a.observe(&event, Instant::now()).is_empty()
}

#[test]
fn five_failures_within_window_fire_once() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let fired = feed(&a, &auth_failure("alice"), t0, &[0, 10, 20, 30, 40]);
    assert_eq!(fired.len(), 1);
    let f = &fired[0];
    assert_eq!(&*f.rule, "brute_force");
    assert_eq!(f.group.as_deref(), Some("alice"));
    assert_eq!(f.count, 5);
    assert_eq!(f.window_s, 60);
    assert_eq!(
        &*f.actions,
        &[
            AlertAction::BlockPrincipal { for_s: 900 },
            AlertAction::Notify { sink: "pager".into() }
        ]
    );
    // Only the fifth event fired.
    let a = alerts(&[BRUTE_FORCE]);
    let firing: Vec<usize> = (0..5u64)
        .map(|i| a.observe(&auth_failure("alice"), t0 + secs(i)).len())
        .collect();
    assert_eq!(firing, [0, 0, 0, 0, 1]);
}

#[test]
fn four_failures_do_not_fire() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    assert!(feed(&a, &auth_failure("alice"), t0, &[0, 1, 2, 3]).is_empty());
    assert_eq!(a.tracked(), 1);
}

#[test]
fn five_failures_spread_over_120s_do_not_fire() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    assert!(feed(&a, &auth_failure("alice"), t0, &[0, 30, 60, 90, 120]).is_empty());
    // The window slides: three more within 60 s of t=90 complete a run of five.
    assert!(feed(&a, &auth_failure("alice"), t0, &[121, 122]).is_empty());
    assert_eq!(a.observe(&auth_failure("alice"), t0 + secs(123)).len(), 1);
}

#[test]
fn window_edge_is_inclusive() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let ev = auth_failure("alice");
    assert!(feed(&a, &ev, t0, &[0, 15, 30, 45]).is_empty());
    // Exactly window_s after the first: all five are within the window.
    assert_eq!(a.observe(&ev, t0 + secs(60)).len(), 1);

    let b = alerts(&[BRUTE_FORCE]);
    assert!(feed(&b, &ev, t0, &[0, 15, 30, 45]).is_empty());
    assert!(b.observe(&ev, t0 + secs(60) + Duration::from_millis(1)).is_empty());
}

#[test]
fn principals_are_counted_separately() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let mut fired = Vec::new();
    for i in 0..4u64 {
        fired.extend(a.observe(&auth_failure("alice"), t0 + secs(i)));
        fired.extend(a.observe(&auth_failure("bob"), t0 + secs(i)));
    }
    assert!(fired.is_empty(), "4 + 4 failures of two principals must not fire");
    assert_eq!(a.tracked(), 2);
    let f = a.observe(&auth_failure("bob"), t0 + secs(5));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].group.as_deref(), Some("bob"));
    let f = a.observe(&auth_failure("alice"), t0 + secs(5));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].group.as_deref(), Some("alice"));
}

#[test]
fn cooldown_suppresses_then_new_run_fires() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let ev = auth_failure("alice");
    assert_eq!(feed(&a, &ev, t0, &[0, 1, 2, 3, 4]).len(), 1);
    // Inside the 300 s cooldown (measured from the firing at t=4): nothing fires,
    // however many failures arrive.
    let during: Vec<u64> = (5..300).collect();
    assert!(feed(&a, &ev, t0, &during).is_empty());
    // Another principal is not affected by alice's cooldown.
    assert_eq!(feed(&a, &auth_failure("bob"), t0, &[10, 11, 12, 13, 14]).len(), 1);
    // Events during cooldown were not counted: after it ends a full run is needed.
    assert!(feed(&a, &ev, t0, &[304, 305, 306, 307]).is_empty());
    let f = a.observe(&ev, t0 + secs(308));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].count, 5);
}

#[test]
fn firing_clears_the_window() {
    // Cooldown shorter than the window: events before the firing must not
    // count towards the next one.
    let a = alerts(&[r#"
name = "short_cooldown"
on = ["auth.failure"]
threshold = 3
window_s = 60
cooldown_s = 10
actions = [{ type = "kill_switch" }]
"#]);
    let t0 = Instant::now();
    let ev = auth_failure("alice");
    assert_eq!(feed(&a, &ev, t0, &[0, 1, 2]).len(), 1);
    assert!(feed(&a, &ev, t0, &[12, 13]).is_empty());
    assert_eq!(a.observe(&ev, t0 + secs(14)).len(), 1);
}

#[test]
fn prune_keeps_groups_in_cooldown() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let ev = auth_failure("alice");
    assert_eq!(feed(&a, &ev, t0, &[0, 1, 2, 3, 4]).len(), 1);
    a.prune(t0 + secs(200));
    assert_eq!(a.tracked(), 1, "the cooldown must survive pruning");
    assert!(feed(&a, &ev, t0, &[200, 201, 202, 203, 204]).is_empty());
    a.prune(t0 + secs(304));
    assert_eq!(a.tracked(), 0);
}

#[test]
fn missing_group_field_counts_in_its_own_group() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let anonymous = json!({"event": "auth.failure", "reason": "missing_token"});
    let null_sub = json!({"event": "auth.failure", "principal": {"sub": null}});
    // Missing and null share the "missing" group, apart from real principals.
    assert!(feed(&a, &auth_failure("alice"), t0, &[0, 1, 2, 3]).is_empty());
    assert!(feed(&a, &anonymous, t0, &[0, 1, 2]).is_empty());
    assert_eq!(a.tracked(), 2);
    let f = feed(&a, &null_sub, t0, &[3, 4]);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].group, None);
    // Alice's count was not merged into the missing group.
    assert_eq!(
        a.observe(&auth_failure("alice"), t0 + secs(5))[0].group.as_deref(),
        Some("alice")
    );
}

#[test]
fn group_values_are_rendered_as_strings() {
    let a = alerts(&[r#"
name = "g"
on = ["tool.call"]
group_by = "who"
cooldown_s = 0
threshold = 2
actions = [{ type = "quarantine_tool" }]
"#]);
    let t0 = Instant::now();
    let group_of = |who: Value| {
        let ev = json!({"event": "tool.call", "who": who});
        assert!(a.observe(&ev, t0).is_empty());
        a.observe(&ev, t0).pop().and_then(|f| f.group)
    };
    assert_eq!(group_of(json!("x")).as_deref(), Some("x"));
    assert_eq!(group_of(json!(42)).as_deref(), Some("42"));
    assert_eq!(group_of(json!(true)).as_deref(), Some("true"));
    assert_eq!(group_of(json!({"sub": "a"})).as_deref(), Some(r#"{"sub":"a"}"#));
    // The number 42 and the string "42" share a group: both render as "42".
    let n = json!({"event": "tool.call", "who": 42});
    let s = json!({"event": "tool.call", "who": "42"});
    assert!(a.observe(&n, t0).is_empty());
    assert_eq!(a.observe(&s, t0).len(), 1);
}

#[test]
fn ungrouped_rule_counts_all_events_together() {
    let a = alerts(&[r#"
name = "any"
on = ["auth.failure"]
threshold = 3
actions = [{ type = "kill_switch" }]
"#]);
    let t0 = Instant::now();
    assert!(a.observe(&auth_failure("a"), t0).is_empty());
    assert!(a.observe(&auth_failure("b"), t0).is_empty());
    let f = a.observe(&auth_failure("c"), t0);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].group, None);
}

#[test]
fn conditions_string_equality() {
    let a = cond_rule("\"auth.failure\"", "reason", "\"invalid_token\"");
    assert!(fires(&a, json!({"event": "auth.failure", "reason": "invalid_token"})));
    assert!(!fires(&a, json!({"event": "auth.failure", "reason": "expired"})));
    assert!(!fires(&a, json!({"event": "auth.failure", "reason": "Invalid_Token"})));
    // A number is not the string that spells it.
    let b = cond_rule("\"x.y\"", "code", "\"7\"");
    assert!(!fires(&b, json!({"event": "x.y", "code": 7})));
    assert!(fires(&b, json!({"event": "x.y", "code": "7"})));
}

#[test]
fn conditions_nested_path() {
    let a = cond_rule("\"auth.failure\"", "principal.iss", "\"https://idp\"");
    assert!(fires(&a, auth_failure("alice")));
    assert!(!fires(
        &a,
        json!({"event": "auth.failure", "principal": {"iss": "https://evil"}})
    ));
    // The literal dotted key is not the nested path.
    assert!(!fires(
        &a,
        json!({"event": "auth.failure", "principal.iss": "https://idp"})
    ));
    // A path through a non-object.
    assert!(!fires(&a, json!({"event": "auth.failure", "principal": "https://idp"})));
}

#[test]
fn conditions_integer_and_float() {
    let int = cond_rule("\"inspect.finding\"", "severity", "3");
    assert!(fires(&int, json!({"event": "inspect.finding", "severity": 3})));
    assert!(fires(&int, json!({"event": "inspect.finding", "severity": 3.0})));
    assert!(!fires(&int, json!({"event": "inspect.finding", "severity": 3.5})));
    assert!(!fires(&int, json!({"event": "inspect.finding", "severity": 4})));
    assert!(!fires(&int, json!({"event": "inspect.finding", "severity": "3"})));
    // Above 2^53 an f64 comparison would round 2^53 + 1 to 2^53.
    let big = cond_rule("\"inspect.finding\"", "id", "9007199254740993");
    assert!(fires(
        &big,
        json!({"event": "inspect.finding", "id": 9_007_199_254_740_993_u64})
    ));
    assert!(!fires(
        &big,
        json!({"event": "inspect.finding", "id": 9_007_199_254_740_992_u64})
    ));

    let float = cond_rule("\"inspect.finding\"", "score", "0.93");
    assert!(fires(&float, json!({"event": "inspect.finding", "score": 0.93})));
    assert!(!fires(&float, json!({"event": "inspect.finding", "score": 0.9300001})));
    assert!(!fires(&float, json!({"event": "inspect.finding", "score": "0.93"})));
    let whole = cond_rule("\"inspect.finding\"", "score", "1.0");
    assert!(fires(&whole, json!({"event": "inspect.finding", "score": 1})));
    assert!(fires(&whole, json!({"event": "inspect.finding", "score": 1.0})));
}

#[test]
fn conditions_bool() {
    let a = cond_rule("\"tool.call\"", "blocked", "true");
    assert!(fires(&a, json!({"event": "tool.call", "blocked": true})));
    assert!(!fires(&a, json!({"event": "tool.call", "blocked": false})));
    assert!(!fires(&a, json!({"event": "tool.call", "blocked": "true"})));
    assert!(!fires(&a, json!({"event": "tool.call", "blocked": 1})));
}

#[test]
fn conditions_list_any_of() {
    let a = cond_rule(
        "\"inspect.finding\"",
        "category",
        "[\"prompt_injection\", \"exfiltration\", 7]",
    );
    assert!(fires(
        &a,
        json!({"event": "inspect.finding", "category": "prompt_injection"})
    ));
    assert!(fires(
        &a,
        json!({"event": "inspect.finding", "category": "exfiltration"})
    ));
    assert!(fires(&a, json!({"event": "inspect.finding", "category": 7})));
    assert!(!fires(&a, json!({"event": "inspect.finding", "category": "pii"})));
    // A JSON array field is not "any of": non-scalars never match.
    assert!(!fires(
        &a,
        json!({"event": "inspect.finding", "category": ["prompt_injection"]})
    ));
}

#[test]
fn conditions_all_must_hold() {
    let a = alerts(&[r#"
name = "confidential_injection"
on = ["inspect.finding"]
cooldown_s = 0
actions = [{ type = "quarantine_server" }]
[where]
category = "prompt_injection"
data_class = ["confidential", "secret"]
"#]);
    let ev = |c: &str, d: &str| json!({"event": "inspect.finding", "category": c, "data_class": d});
    assert!(fires(&a, ev("prompt_injection", "secret")));
    assert!(!fires(&a, ev("prompt_injection", "public")));
    assert!(!fires(&a, ev("pii", "secret")));
}

#[test]
fn condition_missing_field_never_matches() {
    let a = cond_rule("\"auth.failure\"", "reason", "\"invalid_token\"");
    assert!(!fires(&a, json!({"event": "auth.failure"})));
    assert!(!fires(&a, json!({"event": "auth.failure", "reason": null})));
    let b = cond_rule("\"auth.failure\"", "principal.sub", "\"alice\"");
    assert!(!fires(&b, json!({"event": "auth.failure", "principal": {}})));
}

#[test]
fn condition_non_scalar_field_never_matches() {
    let a = cond_rule("\"auth.failure\"", "principal", "\"alice\"");
    assert!(!fires(
        &a,
        json!({"event": "auth.failure", "principal": {"sub": "alice"}})
    ));
    assert!(!fires(&a, json!({"event": "auth.failure", "principal": ["alice"]})));
    assert!(fires(&a, json!({"event": "auth.failure", "principal": "alice"})));
}

#[test]
fn wrong_event_name_and_prefix_patterns() {
    let exact = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let other = json!({"event": "auth.success", "principal": {"sub": "alice"}});
    assert!(feed(&exact, &other, t0, &[0, 1, 2, 3, 4, 5, 6]).is_empty());
    assert_eq!(exact.tracked(), 0);

    let prefix = alerts(&[r#"
name = "any_auth"
on = ["auth.*", "admin.login"]
cooldown_s = 0
actions = [{ type = "revoke_session" }]
"#]);
    assert!(fires(&prefix, json!({"event": "auth.failure"})));
    assert!(fires(&prefix, json!({"event": "auth.token.expired"})));
    assert!(fires(&prefix, json!({"event": "admin.login"})));
    assert!(!fires(&prefix, json!({"event": "auth"})));
    assert!(!fires(&prefix, json!({"event": "authz.decision"})));
    assert!(!fires(&prefix, json!({"event": "admin.logout"})));

    let star = alerts(&["name = \"all\"\non = [\"*\"]\ncooldown_s = 0\nactions = [{ type = \"kill_switch\" }]"]);
    assert!(fires(&star, json!({"event": "anything.at.all"})));
}

#[test]
fn events_without_a_name_are_ignored() {
    let a = alerts(&["name = \"all\"\non = [\"*\"]\ncooldown_s = 0\nactions = [{ type = \"kill_switch\" }]"]);
    assert!(fires(&a, json!({"event": "x"})));
    assert!(!fires(&a, json!({"reason": "x"})));
    assert!(!fires(&a, json!({"event": 5})));
    assert!(!fires(&a, json!({"event": {"name": "x"}})));
    assert!(!fires(&a, json!("auth.failure")));
    assert!(!fires(&a, json!(null)));
    assert!(!fires(&a, json!([{"event": "x"}])));
}

#[test]
fn threshold_one_cooldown_zero_fires_on_every_event() {
    let a = alerts(&[r#"
name = "kill"
on = ["inspect.finding"]
group_by = "session"
cooldown_s = 0
actions = [{ type = "kill_switch" }]
"#]);
    let t0 = Instant::now();
    let ev = json!({"event": "inspect.finding", "session": "s1"});
    for i in 0..10u64 {
        let f = a.observe(&ev, t0 + Duration::from_millis(i));
        assert_eq!(f.len(), 1, "event {i}");
        assert_eq!(f[0].count, 1);
        assert_eq!(f[0].group.as_deref(), Some("s1"));
    }
    // Needs no window state at all.
    assert_eq!(a.tracked(), 0);
}

#[test]
fn threshold_one_with_cooldown_fires_once_until_cooldown_ends() {
    let a = alerts(&[r#"
name = "kill"
on = ["inspect.finding"]
group_by = "session"
cooldown_s = 30
actions = [{ type = "revoke_session" }]
"#]);
    let t0 = Instant::now();
    let s1 = json!({"event": "inspect.finding", "session": "s1"});
    let s2 = json!({"event": "inspect.finding", "session": "s2"});
    assert_eq!(a.observe(&s1, t0).len(), 1);
    assert!(feed(&a, &s1, t0, &[0, 1, 10, 29]).is_empty());
    assert_eq!(a.observe(&s2, t0 + secs(5)).len(), 1);
    assert_eq!(a.observe(&s1, t0 + secs(30)).len(), 1);
    assert!(a.observe(&s1, t0 + secs(31)).is_empty());
}

#[test]
fn several_rules_can_fire_on_one_event() {
    let a = alerts(&[
        BRUTE_FORCE,
        "name = \"each\"\non = [\"auth.*\"]\ncooldown_s = 0\nactions = [{ type = \"kill_switch\" }]",
    ]);
    let t0 = Instant::now();
    let ev = auth_failure("alice");
    assert_eq!(feed(&a, &ev, t0, &[0, 1, 2, 3]).len(), 4);
    let mut names: Vec<String> = a
        .observe(&ev, t0 + secs(4))
        .iter()
        .map(|f| f.rule.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["brute_force", "each"]);
}

#[test]
fn rotating_principals_do_not_grow_memory_without_bound() {
    let second = BRUTE_FORCE.replace("brute_force", "brute_force_2");
    let a = alerts(&[BRUTE_FORCE, &second]);
    let t0 = Instant::now();
    let mut fired = 0;
    for i in 0..200_000u32 {
        // 200k distinct principals within one second: none can be pruned yet.
        let now = t0 + Duration::from_micros(u64::from(i) * 5);
        fired += a.observe(&auth_failure(&format!("p{i}")), now).len();
    }
    assert_eq!(fired, 0);
    assert!(a.tracked() <= MAX_GROUPS_PER_RULE * 2, "tracked {}", a.tracked());
    assert_eq!(a.tracked(), MAX_GROUPS_PER_RULE * 2);
    assert!(a.overflowed() > 0);
    assert_eq!(a.overflowed(), 2 * 100_000);

    // Once the window has passed everything can go.
    a.prune(t0 + secs(62));
    assert_eq!(a.tracked(), 0);

    // And new groups are tracked again.
    assert!(a.observe(&auth_failure("alice"), t0 + secs(63)).is_empty());
    assert_eq!(a.tracked(), 2);
}

#[test]
fn expired_groups_make_room_without_explicit_prune() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    for i in 0..MAX_GROUPS_PER_RULE as u32 {
        a.observe(&auth_failure(&format!("p{i}")), t0);
    }
    assert_eq!(a.tracked(), MAX_GROUPS_PER_RULE);
    // A minute and more later the old groups have expired; the next new group
    // makes room without an explicit prune.
    assert!(a.observe(&auth_failure("late"), t0 + secs(61)).is_empty());
    assert_eq!(a.tracked(), 1);
    assert_eq!(a.overflowed(), 0);
}

#[test]
fn full_rule_prunes_before_refusing_a_group() {
    let a = alerts(&[BRUTE_FORCE]);
    let t0 = Instant::now();
    let first = auth_failure("first");
    assert!(a.observe(&first, t0).is_empty());
    for i in 1..MAX_GROUPS_PER_RULE as u32 {
        a.observe(&auth_failure(&format!("p{i}")), t0 + secs(10));
    }
    assert_eq!(a.tracked(), MAX_GROUPS_PER_RULE);
    // The periodic prune at t0+60 finds nothing expired yet.
    assert!(a.observe(&first, t0 + secs(60)).is_empty());
    assert_eq!(a.tracked(), MAX_GROUPS_PER_RULE);
    // At t0+71 the batch from t0+10 has expired, but the next periodic prune is
    // not due before t0+120: being full is what makes the rule look for room.
    assert!(a.observe(&auth_failure("late"), t0 + secs(71)).is_empty());
    assert_eq!(a.overflowed(), 0);
    assert_eq!(a.tracked(), 2, "first (still in its window) and late");
}

#[test]
fn overflowed_threshold_one_rule_still_fires() {
    let a = alerts(&[r#"
name = "per_session"
on = ["inspect.finding"]
group_by = "session"
cooldown_s = 600
actions = [{ type = "revoke_session" }]
"#]);
    let t0 = Instant::now();
    for i in 0..MAX_GROUPS_PER_RULE as u32 {
        let f = a.observe(&json!({"event": "inspect.finding", "session": format!("s{i}")}), t0);
        assert_eq!(f.len(), 1);
    }
    assert_eq!(a.tracked(), MAX_GROUPS_PER_RULE);
    // Every group is in cooldown, so none can be pruned: the new one overflows
    // but still fires, since threshold 1 needs no window.
    let f = a.observe(&json!({"event": "inspect.finding", "session": "new"}), t0 + secs(2));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].group.as_deref(), Some("new"));
    assert_eq!(a.overflowed(), 1);
    assert_eq!(a.tracked(), MAX_GROUPS_PER_RULE);
    // Tracked groups keep their cooldown.
    assert!(
        a.observe(&json!({"event": "inspect.finding", "session": "s7"}), t0 + secs(3))
            .is_empty()
    );
}

#[test]
fn concurrent_observers_count_every_event() {
    let a = Arc::new(alerts(&[r#"
name = "burst"
on = ["tool.call"]
threshold = 10
window_s = 3600
group_by = "principal.sub"
cooldown_s = 0
actions = [{ type = "notify", sink = "s" }]
"#]));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let a = Arc::clone(&a);
            std::thread::spawn(move || {
                let mut fired = 0;
                for i in 0..1000u32 {
                    let ev = json!({"event": "tool.call", "principal": {"sub": format!("u{}", i % 8)}});
                    fired += a
                        .observe(&ev, t0 + Duration::from_millis(u64::from(t * 1000 + i)))
                        .len();
                }
                fired
            })
        })
        .collect();
    let fired: usize = handles.into_iter().map(|h| h.join().expect("no panic")).sum();
    // 4000 events over 8 principals, 500 each: 50 firings each.
    assert_eq!(fired, 400);
}

#[test]
fn alerts_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Alerts>();
    check::<Fired>();
}

#[test]
fn empty_rule_set() {
    let a = Alerts::new(&[]).expect("no rules is fine");
    assert!(a.is_empty());
    assert!(a.observe(&auth_failure("alice"), Instant::now()).is_empty());
    assert!(!alerts(&[BRUTE_FORCE]).is_empty());
}

#[test]
fn new_rejects_invalid_rules() {
    let base = rule(BRUTE_FORCE);
    let reject = |edit: &dyn Fn(&mut AlertRule), expect: &str| {
        let mut r = base.clone();
        edit(&mut r);
        let err = Alerts::new(&[r]).expect_err(expect);
        assert!(err.contains(expect), "{err:?} should mention {expect:?}");
        assert!(err.contains("alerts[0]"), "{err:?} should say which rule");
    };
    reject(&|r| r.name = String::new(), "name must not be empty");
    reject(&|r| r.name = "  ".into(), "name must not be empty");
    reject(&|r| r.on.clear(), "on must name at least one event");
    reject(&|r| r.on = vec![String::new()], "event pattern is empty");
    reject(&|r| r.threshold = 0, "threshold must be at least 1");
    reject(&|r| r.window_s = 0, "window_s must be at least 1");
    reject(&|r| r.actions.clear(), "actions must list at least one action");
    reject(&|r| r.group_by = Some("principal..sub".into()), "group_by");
    reject(&|r| r.group_by = Some(String::new()), "group_by");
    let with_where = |path: &'static str, v: toml::Value| {
        move |r: &mut AlertRule| {
            r.conditions.insert(path.into(), v.clone());
        }
    };
    reject(&with_where("", toml::Value::from("x")), "not a dotted field path");
    reject(&with_where(".a", toml::Value::from("x")), "not a dotted field path");
    reject(
        &with_where("a", toml::Value::Array(vec![])),
        "where.a: must be a string",
    );
    reject(&with_where("a", toml::Value::Array(vec![])), "the list is empty");
    reject(&with_where("a", toml::Value::Table(Default::default())), "got a table");
    reject(
        &with_where("a", toml::Value::Array(vec![toml::Value::Array(vec![1.into()])])),
        "lists cannot nest",
    );
    reject(
        &with_where(
            "a",
            toml::Value::Array(vec!["x".into(), toml::Value::Table(Default::default())]),
        ),
        "got a table",
    );
    reject(&with_where("a", toml::Value::Float(f64::NAN)), "NaN");
    let date: toml::Value = toml::from_str::<toml::Table>("d = 1979-05-27")
        .expect("date")
        .remove("d")
        .expect("d");
    reject(&with_where("a", date), "got a datetime");

    // Duplicate names, and every problem is reported, not only the first.
    let mut bad = base.clone();
    bad.threshold = 0;
    let err = Alerts::new(&[base.clone(), base.clone(), bad]).expect_err("invalid");
    assert!(
        err.contains("alerts[1] (\"brute_force\"): name is used by an earlier rule"),
        "{err}"
    );
    assert!(
        err.contains("alerts[2]") && err.contains("threshold must be at least 1"),
        "{err}"
    );

    // Valid condition values of every kind are accepted.
    let mut ok = base.clone();
    for (k, v) in [
        ("s", toml::Value::from("x")),
        ("i", toml::Value::from(1)),
        ("f", toml::Value::from(0.5)),
        ("b", toml::Value::from(true)),
        (
            "l",
            toml::Value::Array(vec!["x".into(), 2.into(), 0.5.into(), false.into()]),
        ),
    ] {
        ok.conditions.insert(k.into(), v);
    }
    assert!(Alerts::new(&[ok]).is_ok());
}

#[test]
fn field_looks_up_dotted_paths() {
    let ev = json!({
        "event": "auth.failure",
        "principal": {"iss": "https://idp", "sub": "alice", "claims": {"tenant": 7}},
        "tags": ["a"],
        "a.b": 1,
    });
    assert_eq!(field(&ev, "event"), Some(&json!("auth.failure")));
    assert_eq!(field(&ev, "principal.sub"), Some(&json!("alice")));
    assert_eq!(field(&ev, "principal.claims.tenant"), Some(&json!(7)));
    assert_eq!(field(&ev, "principal"), ev.get("principal"));
    assert_eq!(field(&ev, "principal.nope"), None);
    assert_eq!(field(&ev, "tags.0"), None);
    assert_eq!(field(&ev, "a.b"), None);
    assert_eq!(field(&ev, ""), None);
    assert_eq!(field(&ev, "principal."), None);
    assert_eq!(field(&ev, ".principal"), None);
    assert_eq!(field(&json!("x"), "event"), None);
}
