//! Tool integrity on the wire (J2): every `tools/list` answer is pinned and
//! scanned before a client sees it; held and quarantined tools are removed
//! from the list and refused in `tools/call`. Server instructions are pinned
//! the same way and withheld while held.
//!
//! The hot path reads an in-memory snapshot of approvals; the store (SQLite)
//! is written only when a tool is new or changed, on the blocking pool. A
//! poller reloads the snapshot when another process (the `palisade tools`
//! commands) commits an approval or a quarantine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use palisade_config::{Config, PinMode};
use palisade_pins::{Digest, ItemKind, Mode, Observation, PinStore, Snapshot, State, pin_tool};
use palisade_scan::{Report, scan_instructions, scan_tool};
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};

/// Scan results kept by digest (a tool that does not change is scanned once).
const SCAN_CACHE: usize = 10_000;

/// Latest versions remembered, all upstreams together. A server that names ever
/// more tools loses its own entries first; a forgotten tool is re-listed before a call.
const SEEN_CAP: usize = 100_000;

/// Poller version meaning "reload on the next tick" (the last reload failed).
const RELOAD_AGAIN: i64 = i64::MIN;

/// The latest version of a tool the gateway has seen on an upstream.
#[derive(Debug, Clone, Copy)]
struct Seen {
    digest: Digest,
    high_risk: bool,
}

/// What the gateway keeps of one tool version for its calls: the pinned
/// annotations (for policies) and the compiled schemas (for validation).
#[derive(Debug)]
pub struct ToolInfo {
    pub annotations: Option<Value>,
    /// `Err`: the schema was refused at pin time; the tool is withheld.
    pub schemas: Result<palisade_schema::ToolSchemas, palisade_schema::SchemaError>,
}

impl ToolInfo {
    fn of(tool: &Value) -> ToolInfo {
        ToolInfo {
            annotations: tool.get("annotations").filter(|a| a.is_object()).cloned(),
            schemas: palisade_schema::ToolSchemas::compile(tool),
        }
    }
}

/// The answer for one `tools/call`.
#[derive(Debug)]
pub enum CallCheck {
    /// Allowed; the tool version's info when the gateway has seen it.
    Allowed(Option<Arc<ToolInfo>>),
    /// Refused, with the message for the client.
    Refused(String),
    /// Never listed (or the server said its list changed): list first.
    Unknown,
}

/// Upstreams whose tool list changed since they were last listed in full.
#[derive(Debug, Default)]
struct Stale {
    /// Counts `list_changed` notices; a listing remembers the count it started at.
    notices: u64,
    /// Upstream → the count of its latest notice.
    upstreams: HashMap<String, u64>,
}

/// Tool pins, holds and scans for every upstream.
pub struct Integrity {
    store: Arc<PinStore>,
    /// The approvals in force, with the order in which they were read from the store.
    snapshot: RwLock<(u64, Arc<Snapshot>)>,
    /// Counts snapshot reads; held while reading, so the count orders them.
    reads: Arc<Mutex<u64>>,
    /// Upstream → tool → latest version (nested, so a call looks up without allocating).
    seen: Mutex<HashMap<String, HashMap<String, Seen>>>,
    scans: Mutex<HashMap<Digest, (bool, Value)>>,
    infos: Mutex<HashMap<Digest, Arc<ToolInfo>>>,
    stale: Mutex<Stale>,
    version: AtomicI64,
    default_mode: Mode,
    modes: HashMap<String, Mode>,
    /// Items newly held (alerts raised).
    pub holds: Counter,
    /// Calls refused because the tool is held, quarantined or unknown.
    pub refused_calls: Counter,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity").finish_non_exhaustive()
    }
}

fn mode_of(m: PinMode) -> Mode {
    match m {
        PinMode::Approve => Mode::Approve,
        PinMode::Tofu => Mode::Tofu,
        PinMode::Off => Mode::Off,
    }
}

fn now_unix() -> i64 {
    palisade_session::unix(std::time::SystemTime::now()) as i64
}

impl Integrity {
    /// Wraps an opened store with the configured modes.
    pub fn new(store: PinStore, config: &Config) -> Result<Arc<Self>, String> {
        // The version first: a write landing between the two is reloaded by the poller.
        let version = store.data_version().map_err(|e| format!("pin store: {e}"))?;
        let snapshot = store.snapshot().map_err(|e| format!("pin store: {e}"))?;
        let modes = config
            .upstreams
            .iter()
            .map(|(n, u)| {
                let m = u.get_ref().pinning.unwrap_or(config.integrity.default_pinning);
                (n.clone(), mode_of(m))
            })
            .collect();
        Ok(Arc::new(Integrity {
            store: Arc::new(store),
            snapshot: RwLock::new((0, Arc::new(snapshot))),
            reads: Arc::new(Mutex::new(0)),
            seen: Mutex::new(HashMap::new()),
            scans: Mutex::new(HashMap::new()),
            infos: Mutex::new(HashMap::new()),
            stale: Mutex::new(Stale::default()),
            version: AtomicI64::new(version),
            default_mode: mode_of(config.integrity.default_pinning),
            modes,
            holds: Counter::default(),
            refused_calls: Counter::default(),
        }))
    }

    /// An in-memory store (pins last as long as the process).
    pub fn in_memory(config: &Config) -> Result<Arc<Self>, String> {
        Integrity::new(PinStore::in_memory().map_err(|e| e.to_string())?, config)
    }

    fn mode(&self, upstream: &str) -> Mode {
        self.modes.get(upstream).copied().unwrap_or(self.default_mode)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).1.clone()
    }

    /// Installs the snapshot read `order`-th, unless a later read is already in
    /// force (two reloads may finish out of order; the older would undo a quarantine).
    fn install(&self, order: u64, snap: Snapshot) {
        let mut w = self.snapshot.write().unwrap_or_else(PoisonError::into_inner);
        if order > w.0 {
            *w = (order, Arc::new(snap));
        }
    }

    /// Rereads approvals and quarantines; false if the store could not be read.
    async fn reload(&self) -> bool {
        let store = self.store.clone();
        let reads = self.reads.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut n = reads.lock().unwrap_or_else(PoisonError::into_inner);
            let snap = store.snapshot()?;
            *n += 1;
            Ok::<_, palisade_pins::PinError>((*n, snap))
        })
        .await;
        match read {
            Ok(Ok((order, snap))) => {
                self.install(order, snap);
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "pin store: cannot reload approvals");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "pin store: reload task failed");
                false
            }
        }
    }

    /// Reloads approvals whenever another process has written the store.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let store = me.store.clone();
                let v = tokio::task::spawn_blocking(move || store.data_version()).await;
                if let Ok(Ok(v)) = v
                    && me.version.swap(v, Ordering::AcqRel) != v
                {
                    if me.reload().await {
                        tracing::info!(target: "palisade::audit", event = "pins.reloaded", "tool approvals reloaded from the store");
                    } else {
                        // Not reloaded: try again next tick, or an approval or a
                        // quarantine would wait for the store's next write.
                        me.version.store(RELOAD_AGAIN, Ordering::Release);
                    }
                }
            }
        });
    }

    /// Quarantines a tool, or with `tool = None` a whole server, in the
    /// store (so `palisade tools` shows and can release it) and at once here.
    pub async fn quarantine(&self, upstream: &str, tool: Option<&str>, by: &str, reason: &str) -> Result<(), String> {
        let store = self.store.clone();
        let (u, t, b, r) = (
            upstream.to_owned(),
            tool.map(str::to_owned),
            by.to_owned(),
            reason.to_owned(),
        );
        let now = palisade_session::unix(std::time::SystemTime::now()) as i64;
        tokio::task::spawn_blocking(move || store.quarantine(&u, t.as_deref(), &b, &r, now))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        tracing::warn!(target: "palisade::audit", event = "pins.quarantine", upstream, tool, by, reason, "quarantined");
        if self.reload().await {
            Ok(())
        } else {
            Err("quarantine recorded, but the pin store could not be reread".into())
        }
    }

    /// The server said its tool list changed: re-list before the next call.
    pub fn mark_stale(&self, upstream: &str) {
        let mut s = self.stale.lock().unwrap_or_else(PoisonError::into_inner);
        s.notices += 1;
        let n = s.notices;
        s.upstreams.insert(upstream.to_owned(), n);
    }

    /// Taken before a `tools/list` is sent; give it to [`Self::listed_all`].
    pub fn listing_started(&self) -> u64 {
        self.stale.lock().unwrap_or_else(PoisonError::into_inner).notices
    }

    /// Every page of `upstream`'s list, from a request sent after `started`, went
    /// through [`Self::filter_tools`]: a change announced before then has been checked.
    pub fn listed_all(&self, upstream: &str, started: u64) {
        let mut s = self.stale.lock().unwrap_or_else(PoisonError::into_inner);
        if s.upstreams.get(upstream).is_some_and(|n| *n <= started) {
            s.upstreams.remove(upstream);
        }
    }

    /// Records the latest version of a tool, or forgets it (`None`: the next
    /// call re-lists first).
    fn remember(&self, upstream: &str, name: &str, seen: Option<Seen>) {
        let mut m = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(seen) = seen else {
            if let Some(tools) = m.get_mut(upstream) {
                tools.remove(name);
            }
            return;
        };
        let known = m.get(upstream).is_some_and(|t| t.contains_key(name));
        if !known && m.values().map(HashMap::len).sum::<usize>() >= SEEN_CAP {
            tracing::warn!(upstream, "too many tool names remembered; forgetting this server's");
            m.remove(upstream);
            if m.values().map(HashMap::len).sum::<usize>() >= SEEN_CAP {
                m.clear();
            }
        }
        m.entry(upstream.to_owned()).or_default().insert(name.to_owned(), seen);
    }

    /// The latest version of `tool` seen on `upstream`.
    fn seen(&self, upstream: &str, tool: &str) -> Option<Seen> {
        let m = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(upstream).and_then(|t| t.get(tool)).copied()
    }

    /// Whether `tools/call` of `tool` on `upstream` may go through.
    pub fn check_call(&self, upstream: &str, tool: &str) -> CallCheck {
        let mode = self.mode(upstream);
        let snap = self.snapshot();
        if snap.is_quarantined(upstream, Some(tool)) {
            self.refused_calls.inc();
            return CallCheck::Refused(refusal(tool, State::Quarantined));
        }
        if mode == Mode::Off {
            let info = self.seen(upstream, tool).and_then(|s| self.info_of(&s.digest));
            return self.allowed(tool, info);
        }
        if self
            .stale
            .lock()
            .map(|s| s.upstreams.contains_key(upstream))
            .unwrap_or(true)
        {
            return CallCheck::Unknown;
        }
        let Some(seen) = self.seen(upstream, tool) else {
            return CallCheck::Unknown;
        };
        match snap.evaluate(mode, upstream, ItemKind::Tool, tool, &seen.digest, seen.high_risk) {
            s if s.is_allowed() => match self.info_of(&seen.digest) {
                Some(info) => self.allowed(tool, Some(info)),
                // Compiled when listed; forgotten (cache full): list again.
                None => CallCheck::Unknown,
            },
            s => {
                self.refused_calls.inc();
                CallCheck::Refused(refusal(tool, s))
            }
        }
    }

    fn allowed(&self, tool: &str, info: Option<Arc<ToolInfo>>) -> CallCheck {
        if let Some(Err(e)) = info.as_ref().map(|i| &i.schemas) {
            self.refused_calls.inc();
            return CallCheck::Refused(format!("tool {tool:?} is unavailable: {e}"));
        }
        CallCheck::Allowed(info)
    }

    /// The info of the version of `tool` last seen on `upstream`.
    pub fn tool_info(&self, upstream: &str, tool: &str) -> Option<Arc<ToolInfo>> {
        self.seen(upstream, tool).and_then(|s| self.info_of(&s.digest))
    }

    fn info_of(&self, digest: &Digest) -> Option<Arc<ToolInfo>> {
        self.infos.lock().ok()?.get(digest).cloned()
    }

    /// Compiles (once per version) what calls of this tool need.
    fn learn(&self, upstream: &str, tool: &Value, digest: &Digest) -> Arc<ToolInfo> {
        if let Some(hit) = self.info_of(digest) {
            return hit;
        }
        let info = Arc::new(off_worker(|| ToolInfo::of(tool)));
        if let Err(e) = &info.schemas {
            let name = tool.get("name").and_then(|n| n.as_str()).unwrap_or("");
            tracing::warn!(
                target: "palisade::audit",
                event = "tool.schema_rejected",
                upstream,
                tool = name,
                error = %e,
                "tool withheld: its schema was refused"
            );
        }
        if let Ok(mut m) = self.infos.lock() {
            if m.len() >= SCAN_CACHE {
                m.clear();
            }
            m.insert(*digest, info.clone());
        }
        info
    }

    /// A call for a tool the server never listed, after re-listing.
    pub fn refuse_unlisted(&self, tool: &str) -> String {
        self.refused_calls.inc();
        format!("tool {tool:?} is not available (not in the server's reviewed tool list)")
    }

    fn scan(&self, tool: &Value, digest: &Digest) -> (bool, Value) {
        if let Some(hit) = self.scans.lock().ok().and_then(|m| m.get(digest).cloned()) {
            return hit;
        }
        let report = off_worker(|| scan_tool(tool));
        let out = (report.high_risk(), findings_json(&report));
        if let Ok(mut m) = self.scans.lock() {
            if m.len() >= SCAN_CACHE {
                m.clear();
            }
            m.insert(*digest, out.clone());
        }
        out
    }

    /// Pins, scans and filters the `tools` of one upstream's `tools/list` result.
    ///
    /// A name listed twice is withheld in every copy and forgotten: the gateway
    /// cannot tell which definition the server would run. False when the result
    /// had no `tools` array (nothing was checked; anything else there is removed).
    pub async fn filter_tools(&self, upstream: &str, result: &mut Map<String, Value>) -> bool {
        let mode = self.mode(upstream);
        let Some(Value::Array(tools)) = result.remove("tools") else {
            return false;
        };
        let mut kept = Vec::with_capacity(tools.len());
        let mut fresh: Vec<(usize, Observation)> = Vec::new();
        // (tool, state once decided, whether its schemas compiled)
        let mut items: Vec<(Value, Option<State>, bool)> = Vec::with_capacity(tools.len());
        let snap = self.snapshot();
        let duplicates = if mode == Mode::Off {
            HashSet::new()
        } else {
            duplicate_names(&tools)
        };
        for name in &duplicates {
            tracing::warn!(upstream, tool = %name, "tool name listed more than once: every copy withheld");
            self.remember(upstream, name, None);
        }
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str).map(str::to_owned) else {
                tracing::warn!(upstream, "tool without a string name withheld");
                continue;
            };
            if duplicates.contains(&name) {
                continue;
            }
            let digest = pin_tool(&tool);
            let schema_ok = self.learn(upstream, &tool, &digest).schemas.is_ok();
            if mode == Mode::Off {
                let state = if snap.is_quarantined(upstream, Some(&name)) {
                    State::Quarantined
                } else {
                    State::Unpinned
                };
                self.remember(
                    upstream,
                    &name,
                    Some(Seen {
                        digest,
                        high_risk: false,
                    }),
                );
                items.push((tool, Some(state), schema_ok));
                continue;
            }
            match self.seen(upstream, &name) {
                Some(s) if s.digest == digest => {
                    let state = snap.evaluate(mode, upstream, ItemKind::Tool, &name, &digest, s.high_risk);
                    items.push((tool, Some(state), schema_ok));
                }
                _ => {
                    let (high_risk, findings) = self.scan(&tool, &digest);
                    match Observation::tool(upstream, &tool, findings, high_risk) {
                        Some(obs) => {
                            fresh.push((items.len(), obs));
                            items.push((tool, None, schema_ok));
                        }
                        None => tracing::warn!(upstream, "tool could not be pinned; withheld"),
                    }
                }
            }
        }
        if !fresh.is_empty() {
            let decided = self.observe(mode, fresh.iter().map(|(_, o)| o.clone()).collect()).await;
            let mut any_pinned = false;
            for ((i, obs), decision) in fresh.iter().zip(decided) {
                // Not recorded (store error): held, and not remembered either, or the
                // next list or call would judge it from a snapshot that lacks its pin
                // (tofu takes "no pin" for "about to be pinned").
                let seen = decision.is_some().then_some(Seen {
                    digest: obs.digest,
                    high_risk: obs.high_risk,
                });
                self.remember(&obs.upstream, &obs.name, seen);
                let (state, pinned) = decision.unwrap_or((State::HeldNew, false));
                any_pinned |= pinned;
                if let Some(slot) = items.get_mut(*i) {
                    slot.1 = Some(state);
                }
            }
            if any_pinned {
                self.reload().await;
            }
        }
        for (tool, state, schema_ok) in items {
            match state {
                // A refused schema is still pinned and scanned (an admin sees it), never served.
                Some(s) if s.is_allowed() && schema_ok => kept.push(tool),
                Some(s) => tracing::debug!(upstream, state = s.as_str(), "tool withheld from tools/list"),
                None => {}
            }
        }
        result.insert("tools".into(), Value::Array(kept));
        true
    }

    /// Records observations on the blocking pool; audits each new hold with
    /// its diff. Returns (state, auto-pinned) per observation, `None` where the
    /// store failed (the caller holds the item: fail closed).
    async fn observe(&self, mode: Mode, batch: Vec<Observation>) -> Vec<Option<(State, bool)>> {
        let store = self.store.clone();
        let n = batch.len();
        let now = now_unix();
        let out = tokio::task::spawn_blocking(move || {
            batch
                .iter()
                .map(|obs| match store.observe(mode, obs, now) {
                    Ok(d) => {
                        let diff = if d.newly_held {
                            store.diff(&obs.upstream, obs.kind, &obs.name).ok().flatten()
                        } else {
                            None
                        };
                        Ok((d, diff, obs.clone()))
                    }
                    Err(e) => Err((e.to_string(), obs.clone())),
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(results) = out else {
            tracing::error!("pin store task failed; items held");
            return vec![None; n];
        };
        results
            .into_iter()
            .map(|r| match r {
                Ok((d, diff, obs)) => {
                    if d.newly_held {
                        self.holds.inc();
                        audit_hold(&obs, d.state, d.approved.as_ref(), diff.as_deref());
                    } else if d.auto_pinned {
                        tracing::info!(
                            target: "palisade::audit",
                            event = "tool.pinned",
                            upstream = %obs.upstream,
                            kind = obs.kind.as_str(),
                            tool = %obs.name,
                            digest = %d.digest,
                            "first sight: pinned"
                        );
                    }
                    Some((d.state, d.auto_pinned))
                }
                Err((e, obs)) => {
                    tracing::error!(upstream = %obs.upstream, tool = %obs.name, error = %e, "pin store error; item held");
                    None
                }
            })
            .collect()
    }

    /// Pins `instructions` of an `initialize` result; removes them while held.
    pub async fn filter_instructions(&self, upstream: &str, result: &mut Map<String, Value>) {
        let mode = self.mode(upstream);
        let text = match result.get("instructions") {
            None => return,
            Some(Value::String(text)) => text,
            Some(_) => {
                // Not a string, so not pinnable; a lenient client might still show it.
                tracing::warn!(upstream, "server instructions that are not a string withheld");
                result.remove("instructions");
                return;
            }
        };
        let snap = self.snapshot();
        if mode == Mode::Off {
            if snap.is_quarantined(upstream, None) {
                result.remove("instructions");
            }
            return;
        }
        let report = scan_instructions(text);
        let obs = Observation::instructions(upstream, text, findings_json(&report), report.high_risk());
        let state = snap.evaluate(mode, upstream, ItemKind::Instructions, "", &obs.digest, obs.high_risk);
        let approved_now =
            state.is_allowed() && snap.approved(upstream, ItemKind::Instructions, "") == Some(obs.digest);
        if approved_now {
            return;
        }
        let decided = self.observe(mode, vec![obs]).await;
        let (state, pinned) = decided.first().copied().flatten().unwrap_or((State::HeldNew, false));
        if pinned {
            self.reload().await;
        }
        if !state.is_allowed() {
            tracing::warn!(upstream, state = state.as_str(), "server instructions withheld");
            result.remove("instructions");
        }
    }
}

/// CPU work (about 0.1 ms a tool): off the async worker where the runtime allows.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi { tokio::task::block_in_place(f) } else { f() }
}

/// Names that occur more than once among `tools`.
fn duplicate_names(tools: &[Value]) -> HashSet<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in tools {
        if let Some(n) = t.get("name").and_then(Value::as_str) {
            *count.entry(n).or_default() += 1;
        }
    }
    count
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(n, _)| n.to_owned())
        .collect()
}

fn findings_json(report: &Report) -> Value {
    serde_json::to_value(&report.findings).unwrap_or(Value::Array(Vec::new()))
}

fn refusal(tool: &str, state: State) -> String {
    format!("tool {tool:?} is unavailable: {}", state.reason())
}

/// The hold alert: what, why, and a readable diff against the approved version.
fn audit_hold(obs: &Observation, state: State, approved: Option<&Digest>, diff: Option<&str>) {
    let findings: Vec<String> = obs
        .findings
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    Some(format!(
                        "{} ({})",
                        f.get("rule")?.as_str()?,
                        f.get("severity")?.as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    tracing::warn!(
        target: "palisade::audit",
        event = "tool.held",
        upstream = %obs.upstream,
        kind = obs.kind.as_str(),
        tool = %obs.name,
        state = state.as_str(),
        digest = %obs.digest,
        approved = approved.map(ToString::to_string).unwrap_or_default(),
        findings = %findings.join(", "),
        diff = diff.unwrap_or(""),
        "ALERT: {} on {} held: {}",
        match obs.kind {
            ItemKind::Tool => format!("tool {:?}", obs.name),
            ItemKind::Instructions => "server instructions".to_owned(),
        },
        obs.upstream,
        state.reason()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integrity() -> Arc<Integrity> {
        let config: Config = serde_json::from_value(serde_json::json!({})).expect("empty config");
        Integrity::in_memory(&config).expect("in-memory store")
    }

    #[test]
    fn remembered_versions_are_bounded_and_a_flood_forgets_its_own_first() {
        let i = integrity();
        let seen = Seen {
            digest: Digest([7; 32]),
            high_risk: false,
        };
        i.remember("good", "t", Some(seen));
        for n in 0..SEEN_CAP + 10 {
            i.remember("flood", &n.to_string(), Some(seen));
        }
        let len: usize = i.seen.lock().expect("seen").values().map(HashMap::len).sum();
        assert!(len <= SEEN_CAP, "{len} entries");
        assert!(i.seen("good", "t").is_some());
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let i = integrity();
        let older = i.store.snapshot().expect("snapshot");
        i.store
            .quarantine("up", None, "admin", "incident", 0)
            .expect("quarantine");
        let newer = i.store.snapshot().expect("snapshot");
        // Two reloads finishing out of order: the later read is installed first.
        i.install(2, newer);
        i.install(1, older);
        assert!(i.snapshot().is_quarantined("up", None));
        assert!(matches!(i.check_call("up", "t"), CallCheck::Refused(_)));
    }

    #[test]
    fn a_listing_started_before_a_change_notice_does_not_clear_it() {
        let i = integrity();
        let started = i.listing_started();
        i.mark_stale("up");
        i.listed_all("up", started);
        assert!(matches!(i.check_call("up", "t"), CallCheck::Unknown));
        let again = i.listing_started();
        i.listed_all("up", again);
        assert!(i.stale.lock().expect("stale").upstreams.is_empty());
    }
}
