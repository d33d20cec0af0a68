//! The alert rule engine (L5): watches audit events and decides when an
//! `[[alerts]]` rule fires. Carrying out the actions (notify, revoke, block,
//! quarantine, kill switch) is the gateway's job; this crate only says which
//! rules fire, for which group, and with which actions.
//!
//! # Semantics
//!
//! - **Matching.** An event (a JSON object) matches a rule when the string at
//!   `"event"` matches one of the rule's `on` patterns (exact, `prefix.*` or
//!   `*`) and every `where` condition holds. A condition looks up a dotted path
//!   ([`field`]) and compares it with the configured value: a TOML string
//!   equals a JSON string; a TOML integer equals a JSON number of the same
//!   integer value (a JSON float such as `3.0` included); a TOML float equals a
//!   JSON number by `f64` equality; a TOML bool equals a JSON bool; a TOML list
//!   holds when any element does. A missing field, `null`, an object or an
//!   array never matches.
//! - **Groups.** With `group_by`, events are counted per value of that field,
//!   rendered as a string (strings as they are, numbers and bools with their
//!   JSON spelling, objects and arrays as compact JSON). An event that lacks
//!   the field (or has `null` there) is still counted, in one separate
//!   "missing" group that is never merged with a real value; its [`Fired::group`]
//!   is `None`. Skipping such events would let anyone who can strip the field
//!   (an unauthenticated caller has no `principal`) escape a per-principal
//!   rule; sharing one group errs on the side of firing.
//! - **Sliding window.** Per (rule, group) the engine keeps the times of the
//!   matching events still inside the window, at most `threshold - 1` of them
//!   between firings. The rule fires when `threshold` matching events lie within
//!   `window_s` of `now` (an event exactly `window_s` old still counts). Firing
//!   clears the group's window and starts its cooldown: for `cooldown_s`
//!   matching events of that group are neither counted nor fire. `threshold = 1`
//!   fires on every matching event outside cooldown.
//! - **Memory.** At most [`MAX_GROUPS_PER_RULE`] groups are held per rule. When a
//!   rule is full, idle groups (empty window, cooldown over) are pruned first,
//!   at most once a second so a flood of new groups cannot turn every event into
//!   a full scan; if the rule is still full the new group is not tracked and
//!   [`Alerts::overflowed`] counts the event. An untracked event of a
//!   `threshold = 1` rule still fires (it needs no window), but its cooldown
//!   cannot be recorded. Rules with `threshold = 1` and `cooldown_s = 0` hold no
//!   state at all.
//!
//! Times are passed in as [`Instant`]s so callers (and tests) control the clock.
//! Slightly out-of-order times from concurrent callers are tolerated: a time
//! earlier than one already recorded is treated as equal to it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use palisade_config::{AlertAction, AlertRule, event_matches};
use serde_json::{Number, Value};

/// The most (rule, group) states one rule holds; events of further groups are
/// counted by [`Alerts::overflowed`] instead of tracked.
pub const MAX_GROUPS_PER_RULE: usize = 100_000;

/// How often a full rule may scan its groups for idle ones: bounds the cost of
/// a flood of new groups to one scan a second per rule.
const FULL_PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// The compiled `[[alerts]]` rules and their window state. `Send + Sync`: share
/// it behind an `Arc` and call [`Alerts::observe`] from any thread.
#[derive(Debug)]
pub struct Alerts {
    rules: Vec<Rule>,
    overflowed: AtomicU64,
}

/// A rule that fired on an event.
#[derive(Debug, Clone)]
pub struct Fired {
    /// The rule's name.
    pub rule: Arc<str>,
    /// The actions to carry out, in configuration order.
    pub actions: Arc<[AlertAction]>,
    /// The group_by value of the event (as a string), if the rule groups.
    /// `None` also when the rule groups but the event lacked the field.
    pub group: Option<String>,
    /// Matching events counted in the window when it fired.
    pub count: u32,
    /// The rule's window, for the alert's text.
    pub window_s: u64,
}

impl Alerts {
    /// Compiles the rules. Re-checks what configuration validation may not
    /// have (the rules can come from elsewhere): non-empty unique names, at
    /// least one event pattern and one action, `threshold` and `window_s` at
    /// least 1, well-formed dotted paths, and condition values that are a
    /// string, integer, float (not NaN) or bool, or a non-empty list of them.
    /// The error lists every problem found.
    pub fn new(rules: &[AlertRule]) -> Result<Alerts, String> {
        let mut errs = Vec::new();
        let mut names = HashSet::new();
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let at = format!("alerts[{i}] ({:?})", r.name);
            if !r.name.trim().is_empty() && !names.insert(r.name.as_str()) {
                errs.push(format!("{at}: name is used by an earlier rule"));
            }
            match Rule::compile(r) {
                Ok(rule) => compiled.push(rule),
                Err(problems) => errs.extend(problems.into_iter().map(|p| format!("{at}: {p}"))),
            }
        }
        if errs.is_empty() {
            Ok(Alerts {
                rules: compiled,
                overflowed: AtomicU64::new(0),
            })
        } else {
            Err(format!("invalid alert rules: {}", errs.join("; ")))
        }
    }

    /// True when there are no rules (the gateway can skip feeding events).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Feeds one event; returns the rules that fire now. `now` is passed in so tests need no sleeps.
    pub fn observe(&self, event: &Value, now: Instant) -> Vec<Fired> {
        let Some(name) = event.get("event").and_then(Value::as_str) else {
            return Vec::new();
        };
        self.rules
            .iter()
            .filter(|r| r.matches(name, event))
            .filter_map(|r| r.count(event, now, &self.overflowed))
            .collect()
    }

    /// Drops window state older than any rule's window (call periodically; observe also prunes lazily).
    /// Groups still in cooldown are kept, so pruning never re-arms a rule early.
    pub fn prune(&self, now: Instant) {
        for r in &self.rules {
            r.prune(&mut lock(&r.state), now);
        }
    }

    /// Number of (rule, group) states held (for tests and a metric).
    pub fn tracked(&self) -> usize {
        self.rules.iter().map(|r| lock(&r.state).groups.len()).sum()
    }

    /// Events whose group could not be tracked because their rule already held
    /// [`MAX_GROUPS_PER_RULE`] live groups (a metric: a high value suggests an
    /// attacker rotating identities).
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// A dotted path lookup ("principal.sub") into an event; pub for the gateway.
/// Each segment names a key of a JSON object; an empty path or segment, or a
/// step through a non-object, gives `None`.
pub fn field<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return None;
    }
    path.split('.').try_fold(event, |v, seg| match seg {
        "" => None,
        _ => v.as_object()?.get(seg),
    })
}

/// The lock, recovered if a thread panicked while holding it: the state is a
/// cache of counts, and a stale count is better than a gateway that panics.
fn lock(m: &Mutex<RuleState>) -> MutexGuard<'_, RuleState> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    on: Vec<String>,
    conditions: Vec<Condition>,
    threshold: u32,
    window_s: u64,
    window: Duration,
    cooldown: Duration,
    group_by: Option<Vec<String>>,
    actions: Arc<[AlertAction]>,
    state: Mutex<RuleState>,
}

#[derive(Debug)]
struct Condition {
    path: Vec<String>,
    /// Any of these values satisfies the condition (one for a scalar).
    any_of: Vec<Scalar>,
}

#[derive(Debug)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Key `None`: the rule does not group, or the event lacks the group field.
#[derive(Debug, Default)]
struct RuleState {
    groups: HashMap<Option<String>, Group>,
    last_prune: Option<Instant>,
}

#[derive(Debug, Default)]
struct Group {
    /// Times of the counted events inside the window, oldest first; fewer than
    /// `threshold` between firings.
    hits: VecDeque<Instant>,
    fired_at: Option<Instant>,
}

impl Rule {
    fn compile(r: &AlertRule) -> Result<Rule, Vec<String>> {
        let mut errs = Vec::new();
        if r.name.trim().is_empty() {
            errs.push("name must not be empty".to_owned());
        }
        if r.on.is_empty() {
            errs.push("on must name at least one event".to_owned());
        }
        if r.on.iter().any(|p| p.is_empty()) {
            errs.push("on: an event pattern is empty".to_owned());
        }
        if r.threshold == 0 {
            errs.push("threshold must be at least 1".to_owned());
        }
        if r.window_s == 0 {
            errs.push("window_s must be at least 1".to_owned());
        }
        if r.actions.is_empty() {
            errs.push("actions must list at least one action".to_owned());
        }
        let group_by = match &r.group_by {
            None => None,
            Some(p) => match split_path(p) {
                Some(segs) => Some(segs),
                None => {
                    errs.push(format!("group_by {p:?} is not a dotted field path"));
                    None
                }
            },
        };
        let mut conditions = Vec::with_capacity(r.conditions.len());
        for (path, value) in &r.conditions {
            let Some(segs) = split_path(path) else {
                errs.push(format!("where: {path:?} is not a dotted field path"));
                continue;
            };
            match condition_values(value) {
                Ok(any_of) => conditions.push(Condition { path: segs, any_of }),
                Err(why) => errs.push(format!(
                    "where.{path}: must be a string, integer, float or bool, or a non-empty list of them ({why})"
                )),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Rule {
            name: Arc::from(r.name.as_str()),
            on: r.on.clone(),
            conditions,
            threshold: r.threshold,
            window_s: r.window_s,
            window: Duration::from_secs(r.window_s),
            cooldown: Duration::from_secs(r.cooldown_s),
            group_by,
            actions: Arc::from(r.actions.as_slice()),
            state: Mutex::new(RuleState::default()),
        })
    }

    fn matches(&self, name: &str, event: &Value) -> bool {
        event_matches(&self.on, name) && self.conditions.iter().all(|c| c.holds(event))
    }

    fn group_key(&self, event: &Value) -> Option<String> {
        let value = lookup(event, self.group_by.as_deref()?)?;
        match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(_) | Value::Object(_) => Some(value.to_string()),
        }
    }

    fn fired(&self, group: Option<String>, count: u32) -> Fired {
        Fired {
            rule: Arc::clone(&self.name),
            actions: Arc::clone(&self.actions),
            group,
            count,
            window_s: self.window_s,
        }
    }

    /// Counts one matching event; `Some` when the rule fires for its group.
    fn count(&self, event: &Value, now: Instant, overflowed: &AtomicU64) -> Option<Fired> {
        let group = self.group_key(event);
        if self.threshold == 1 && self.cooldown.is_zero() {
            // Fires on every event and never suppresses: nothing to remember.
            return Some(self.fired(group, 1));
        }
        let mut st = lock(&self.state);
        let window_passed = st
            .last_prune
            .is_none_or(|p| now.saturating_duration_since(p) >= self.window.max(FULL_PRUNE_INTERVAL));
        if window_passed {
            self.prune(&mut st, now);
        }
        if !st.groups.contains_key(&group) {
            if st.groups.len() >= MAX_GROUPS_PER_RULE
                && st
                    .last_prune
                    .is_none_or(|p| now.saturating_duration_since(p) >= FULL_PRUNE_INTERVAL)
            {
                self.prune(&mut st, now);
            }
            if st.groups.len() >= MAX_GROUPS_PER_RULE {
                drop(st);
                overflowed.fetch_add(1, Ordering::Relaxed);
                return (self.threshold == 1).then(|| self.fired(group, 1));
            }
            st.groups.insert(group.clone(), Group::default());
        }
        let g = st.groups.get_mut(&group)?;
        if g.in_cooldown(now, self.cooldown) {
            return None;
        }
        g.expire(now, self.window);
        // Keep the queue sorted even if a concurrent caller's `now` is a bit older.
        let at = g.hits.back().map_or(now, |&last| last.max(now));
        g.hits.push_back(at);
        if g.hits.len() < self.threshold as usize {
            return None;
        }
        g.hits = VecDeque::new();
        g.fired_at = Some(now);
        if self.cooldown.is_zero() {
            st.groups.remove(&group);
        }
        Some(self.fired(group, self.threshold))
    }

    fn prune(&self, st: &mut RuleState, now: Instant) {
        st.groups.retain(|_, g| !g.idle(now, self.window, self.cooldown));
        st.last_prune = Some(st.last_prune.map_or(now, |p| p.max(now)));
        // Give back the table after a flood of groups has drained.
        if st.groups.capacity() > 1024 && st.groups.len() < st.groups.capacity() / 4 {
            st.groups.shrink_to(st.groups.len() * 2);
        }
    }
}

impl Group {
    fn in_cooldown(&self, now: Instant, cooldown: Duration) -> bool {
        self.fired_at
            .is_some_and(|f| now.saturating_duration_since(f) < cooldown)
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .hits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > window)
        {
            self.hits.pop_front();
        }
    }

    /// Nothing left worth keeping: an empty window and no running cooldown.
    fn idle(&mut self, now: Instant, window: Duration, cooldown: Duration) -> bool {
        self.expire(now, window);
        self.hits.is_empty() && !self.in_cooldown(now, cooldown)
    }
}

impl Condition {
    fn holds(&self, event: &Value) -> bool {
        lookup(event, &self.path).is_some_and(|v| self.any_of.iter().any(|s| s.equals(v)))
    }
}

impl Scalar {
    fn equals(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(s), Value::String(x)) => s == x,
            (Scalar::Bool(b), Value::Bool(x)) => b == x,
            (Scalar::Int(i), Value::Number(n)) => int_equals(*i, n),
            (Scalar::Float(f), Value::Number(n)) => n.as_f64() == Some(*f),
            _ => false,
        }
    }
}

/// A TOML integer against a JSON number: the same integer, or a float that is
/// exactly that integer (`3.0`), but never a rounded one (`3.5`, or `2^63`).
fn int_equals(i: i64, n: &Number) -> bool {
    if let Some(x) = n.as_i64() {
        return x == i;
    }
    if !n.is_f64() {
        // A u64 above i64::MAX.
        return false;
    }
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    n.as_f64()
        .is_some_and(|f| f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) && f as i64 == i)
}

fn lookup<'a>(event: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(event, |v, seg| v.as_object()?.get(seg.as_str()))
}

fn split_path(p: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = p.split('.').map(str::to_owned).collect();
    (!p.is_empty() && segs.iter().all(|s| !s.is_empty())).then_some(segs)
}

fn condition_values(v: &toml::Value) -> Result<Vec<Scalar>, &'static str> {
    match v {
        toml::Value::Array(items) if items.is_empty() => Err("the list is empty"),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                toml::Value::Array(_) => Err("lists cannot nest"),
                other => scalar(other),
            })
            .collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

fn scalar(v: &toml::Value) -> Result<Scalar, &'static str> {
    match v {
        toml::Value::String(s) => Ok(Scalar::Str(s.clone())),
        toml::Value::Integer(i) => Ok(Scalar::Int(*i)),
        toml::Value::Float(f) if f.is_nan() => Err("NaN never matches"),
        toml::Value::Float(f) => Ok(Scalar::Float(*f)),
        toml::Value::Boolean(b) => Ok(Scalar::Bool(*b)),
        toml::Value::Datetime(_) => Err("got a datetime"),
        toml::Value::Table(_) => Err("got a table"),
        toml::Value::Array(_) => Err("got a list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(threshold: u32, cooldown_s: u64) -> AlertRule {
        AlertRule {
            name: "r".into(),
            on: vec!["auth.failure".into()],
            conditions: Default::default(),
            threshold,
            window_s: 60,
            group_by: Some("principal.sub".into()),
            cooldown_s,
            actions: vec![AlertAction::KillSwitch],
        }
    }

    #[test]
    fn poisoned_lock_is_recovered() {
        let alerts = Arc::new(Alerts::new(&[rule(2, 0)]).expect("valid"));
        let t0 = Instant::now();
        let ev = json!({"event": "auth.failure", "principal": {"sub": "alice"}});
        assert!(alerts.observe(&ev, t0).is_empty());
        let a = Arc::clone(&alerts);
        let res = std::thread::spawn(move || {
            let _guard = a.rules[0].state.lock();
            panic!("poison the rule's lock");
        })
        .join();
        assert!(res.is_err());
        assert!(alerts.rules[0].state.is_poisoned());
        // The state survives and the second event still completes the run.
        assert_eq!(alerts.observe(&ev, t0).len(), 1);
        assert_eq!(alerts.tracked(), 0);
        alerts.prune(t0);
    }

    #[test]
    fn integer_equality_is_exact() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            _ => unreachable!(),
        };
        assert!(int_equals(3, &n(json!(3))));
        assert!(int_equals(3, &n(json!(3.0))));
        assert!(int_equals(-2, &n(json!(-2.0))));
        assert!(!int_equals(3, &n(json!(3.5))));
        assert!(!int_equals(3, &n(json!(4))));
        assert!(!int_equals(i64::MAX, &n(json!(9_223_372_036_854_775_808.0_f64))));
        assert!(!int_equals(i64::MAX, &n(json!(u64::MAX))));
        assert!(int_equals(i64::MIN, &n(json!(i64::MIN as f64))));
    }

    #[test]
    fn window_state_is_bounded_by_threshold() {
        let alerts = Alerts::new(&[rule(1000, 0)]).expect("valid");
        let t0 = Instant::now();
        let ev = json!({"event": "auth.failure", "principal": {"sub": "alice"}});
        for i in 0..5000u64 {
            // One event every 100 ms: at most 601 fall within 60 s, never 1000.
            assert!(alerts.observe(&ev, t0 + Duration::from_millis(i * 100)).is_empty());
        }
        let st = lock(&alerts.rules[0].state);
        let hits = st.groups.values().map(|g| g.hits.len()).max().unwrap_or(0);
        assert!(hits <= 601, "{hits} timestamps kept");
    }
}
