//! Authorization, rate limits and quotas on the request path (Z2, R1–R3).
//!
//! Order for a request: rate limits (user, session, server, tool; 429) →
//! integrity (pins) → Cedar decision (deny looks like an unknown tool) →
//! step-up obligations → argument validation against the pinned schema →
//! confirmation by the user (elicitation) → upstream, under the per-user
//! concurrency cap and the per-tool timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use palisade_config::{AdaptiveConfig, Config, FailMode, FailModes, RateConfig, RateLevels, StateBackend};
use palisade_policy::{Action, Context, Decision, PolicyEngine, Principal, Request, Resource, ServerInfo};
use palisade_state::{Backend, Rate, RedisOptions, StateError};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use crate::session::LiveSession;

/// A pipeline stage, for the latency histograms.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Stage {
    /// The whole HTTP request (streams: until the response head).
    Request,
    /// Token verification (and the DPoP replay check).
    Auth,
    /// Rate limits and quotas.
    RateLimit,
    /// Pins, Cedar, step-up and argument validation of a `tools/call`.
    CallChecks,
    /// The upstream's answer.
    Upstream,
    /// Inspection of the answer (local engine and remote detector).
    Inspect,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Request => "request",
            Stage::Auth => "auth",
            Stage::RateLimit => "rate_limit",
            Stage::CallChecks => "call_checks",
            Stage::Upstream => "upstream",
            Stage::Inspect => "inspect",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Stage {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        prometheus_client::encoding::EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StageLabel {
    pub stage: Stage,
}

/// Per-stage latency histograms (seconds).
#[derive(Debug)]
pub struct StageTimes(
    pub prometheus_client::metrics::family::Family<StageLabel, prometheus_client::metrics::histogram::Histogram>,
);

impl Default for StageTimes {
    fn default() -> Self {
        StageTimes(prometheus_client::metrics::family::Family::new_with_constructor(|| {
            // 50 µs to ~1.6 s.
            prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16),
            )
        }))
    }
}

impl StageTimes {
    /// Observes the stage's latency and records it as a span of the current trace.
    pub fn observe(&self, stage: Stage, since: std::time::Instant) {
        crate::trace::stage(stage, since);
        self.0
            .get_or_create(&StageLabel { stage })
            .observe(since.elapsed().as_secs_f64());
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ControlMetrics {
    pub stages: StageTimes,
    pub denied: Counter,
    pub rate_limited: Counter,
    pub invalid_arguments: Counter,
    pub invalid_results: Counter,
    pub confirmations_accepted: Counter,
    pub confirmations_refused: Counter,
    pub state_errors: Counter,
}

/// Authorization, limits and the shared-state backend of one gateway.
pub struct Controls {
    pub policy: Option<Arc<PolicyEngine>>,
    pub state: Backend,
    global: RateLevels,
    scoped: HashMap<String, RateLevels>,
    adaptive: AdaptiveConfig,
    pub fail: FailModes,
    max_per_user: usize,
    busy: Mutex<HashMap<String, usize>>,
    pub confirm_timeout: Duration,
    pub metrics: ControlMetrics,
    /// Content inspection; `None` when `[inspect] enabled = false`.
    pub inspect: Option<Arc<crate::inspect::Inspector>>,
    /// The audit chain; `None` when `[audit] enabled = false` (events then
    /// reach only the process log).
    pub audit: Option<Arc<crate::audit::Audit>>,
    /// Trace context and span export.
    pub tracer: crate::trace::Tracer,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controls")
            .field("policy", &self.policy.is_some())
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

/// A refusal by a rate limit.
#[derive(Debug)]
pub enum Limited {
    /// Over a rate: retry after this long.
    Rate { level: &'static str, retry_after: Duration },
    /// The state backend could not answer and the control fails closed.
    Unavailable,
}

/// The inspector of `config` without a gitleaks file or remote detector
/// (tests and embedded use; `serve` builds the full one).
fn local_inspector(config: &Config) -> Result<Option<Arc<crate::inspect::Inspector>>, String> {
    if !config.inspect.enabled {
        return Ok(None);
    }
    Ok(Some(Arc::new(crate::inspect::Inspector::new(config, None, None)?)))
}

/// Server attributes for policies, from the configuration.
pub fn server_infos(config: &Config) -> HashMap<String, ServerInfo> {
    config
        .upstreams
        .iter()
        .map(|(n, u)| {
            let u = u.get_ref();
            (
                n.clone(),
                ServerInfo {
                    classification: u.classification.clone(),
                    tags: u.tags.clone(),
                },
            )
        })
        .collect()
}

fn rate(r: &RateConfig) -> Rate {
    Rate {
        per_second: r.per_second,
        burst: r.burst,
    }
}

impl Controls {
    /// Controls with in-process state and no policy (tests and embedded use).
    pub fn local(config: &Config) -> Controls {
        let mut c = Controls::with(config, None, Backend::local());
        c.inspect = match local_inspector(config) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "content inspection could not be built");
                None
            }
        };
        c
    }

    /// Builds the configured controls: the policy folder (`policy_dir`
    /// already resolved against the configuration's folder) and the backend.
    pub async fn build(
        config: &Config,
        policy_dir: Option<&std::path::Path>,
        inspect: Option<Arc<crate::inspect::Inspector>>,
    ) -> Result<Controls, String> {
        let policy = match policy_dir {
            Some(dir) => Some(Arc::new(
                PolicyEngine::load_dir(dir, server_infos(config)).map_err(|e| format!("policy: {e}"))?,
            )),
            None => None,
        };
        let state = match config.state.backend {
            StateBackend::Local => Backend::local(),
            StateBackend::Redis => Backend::redis(RedisOptions {
                url: config.state.redis_url.clone(),
                prefix: config.state.prefix.clone(),
                op_timeout: Duration::from_millis(config.state.op_timeout_ms),
                connect_timeout: Duration::from_millis(config.state.connect_timeout_ms),
            })
            .await
            .map_err(|e| format!("state: {e}"))?,
        };
        let mut c = Controls::with(config, policy, state);
        c.inspect = inspect;
        Ok(c)
    }

    fn with(config: &Config, policy: Option<Arc<PolicyEngine>>, state: Backend) -> Controls {
        let scoped = config
            .upstreams
            .iter()
            .filter(|(_, u)| !u.get_ref().limits.is_empty())
            .map(|(n, u)| (n.clone(), u.get_ref().limits.clone()))
            .collect();
        Controls {
            policy,
            state,
            global: config.limits.rates(),
            scoped,
            adaptive: config.limits.adaptive.clone(),
            fail: config.state.on_error.clone(),
            max_per_user: config.limits.max_concurrent_per_user,
            busy: Mutex::new(HashMap::new()),
            confirm_timeout: Duration::from_millis(config.policy.as_ref().map_or(120_000, |p| p.confirm_timeout_ms)),
            metrics: ControlMetrics::default(),
            inspect: None,
            audit: None,
            tracer: crate::trace::Tracer::new(&config.traces, None),
        }
    }

    /// Watches the policy folder and swaps in valid changes.
    pub fn spawn_policy_reload(self: &Arc<Self>, every: Duration) {
        let Some(engine) = self.policy.clone() else { return };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let e = engine.clone();
                // Reading and validating files: off the async workers.
                let _ = tokio::task::spawn_blocking(move || e.reload_if_changed()).await;
            }
        });
    }

    fn state_error(&self, control: &'static str, e: &StateError) {
        self.metrics.state_errors.inc();
        tracing::error!(control, error = %e, backend = self.state.name(), "shared state unavailable");
    }

    /// The cost of one request for a principal: 1 plus its decayed threat score.
    async fn cost(&self, principal: &str) -> Result<f64, Limited> {
        if !self.adaptive.enabled {
            return Ok(1.0);
        }
        let half = Duration::from_secs(self.adaptive.half_life_s);
        match self.state.threat_score(principal, half).await {
            Ok(s) => Ok((1.0 + s.max(0.0)).min(self.adaptive.max_cost)),
            Err(e) => {
                self.state_error("threat_scores", &e);
                match self.fail.threat_scores {
                    FailMode::Open => Ok(1.0),
                    FailMode::Closed => Err(Limited::Unavailable),
                }
            }
        }
    }

    /// Checks every rate that applies to one request. `upstream` is `None`
    /// for requests the gateway answers itself or fans out; `tool` only for `tools/call`.
    pub async fn check_rates(
        &self,
        principal: &str,
        session: Option<&str>,
        upstream: Option<&str>,
        tool: Option<&str>,
    ) -> Result<(), Limited> {
        let scoped = upstream.and_then(|u| self.scoped.get(u).map(|l| (u, l)));
        if self.global.is_empty() && scoped.is_none() {
            return Ok(());
        }
        let cost = self.cost(principal).await?;
        let mut buckets: Vec<(&'static str, String, RateConfig)> = Vec::with_capacity(8);
        let mut add = |levels: &RateLevels, scope: &str| {
            if let Some(r) = levels.user {
                buckets.push(("user", format!("u:{scope}{principal}"), r));
            }
            if let (Some(r), Some(s)) = (levels.session, session) {
                buckets.push(("session", format!("s:{scope}{s}"), r));
            }
            if let (Some(r), Some(u)) = (levels.server, upstream) {
                buckets.push(("server", format!("v:{scope}{u}"), r));
            }
            if let (Some(r), Some(u), Some(t)) = (levels.tool, upstream, tool) {
                buckets.push(("tool", format!("t:{scope}{u}/{t}"), r));
            }
        };
        add(&self.global, "");
        if let Some((u, l)) = scoped {
            add(l, &format!("{u}:"));
        }
        for (level, key, r) in buckets {
            match self.state.rate_check(&key, rate(&r), cost).await {
                Ok(d) if d.allowed => {}
                Ok(d) => {
                    self.metrics.rate_limited.inc();
                    tracing::info!(
                        target: "palisade::audit",
                        event = "rate.limited",
                        limit = level,
                        decision = "deny",
                        retry_after_ms = d.retry_after.as_millis() as u64,
                        "rate limit hit"
                    );
                    return Err(Limited::Rate {
                        level,
                        retry_after: d.retry_after,
                    });
                }
                Err(e) => {
                    self.state_error("rate_limits", &e);
                    if self.fail.rate_limits == FailMode::Closed {
                        return Err(Limited::Unavailable);
                    }
                }
            }
        }
        Ok(())
    }

    /// Raises a principal's threat score (adaptive limits), in the background.
    pub fn signal(self: &Arc<Self>, principal: &str, kind: Signal) {
        if !self.adaptive.enabled {
            return;
        }
        let weight = match kind {
            Signal::AuthFailure => self.adaptive.auth_failure,
            Signal::Denied => self.adaptive.denied,
            Signal::Detection => self.adaptive.detection,
        };
        if weight <= 0.0 {
            return;
        }
        let me = self.clone();
        let principal = principal.to_owned();
        let half = Duration::from_secs(self.adaptive.half_life_s);
        tokio::spawn(async move {
            if let Err(e) = me.state.threat_add(&principal, weight, half).await {
                me.state_error("threat_scores", &e);
            }
        });
    }

    /// Takes one of a principal's concurrent-call slots (released on drop).
    pub fn acquire(self: &Arc<Self>, principal: &str) -> Option<BusyGuard> {
        if self.max_per_user == 0 {
            return Some(BusyGuard { owner: None });
        }
        let mut m = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(principal.to_owned()).or_insert(0);
        if *n >= self.max_per_user {
            return None;
        }
        *n += 1;
        Some(BusyGuard {
            owner: Some((self.clone(), principal.to_owned())),
        })
    }

    /// Whether a session id was revoked (by any replica); `Err` when the
    /// backend cannot tell and revocation checks fail closed.
    pub async fn is_revoked(&self, sid: &str) -> Result<bool, StateError> {
        match self.state.is_revoked(sid).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.state_error("revocations", &e);
                match self.fail.revocations {
                    FailMode::Closed => Err(e),
                    FailMode::Open => Ok(false),
                }
            }
        }
    }

    /// Revokes a session everywhere; false if the backend could not record it.
    pub async fn revoke(&self, sid: &str, exp: u64) -> bool {
        match self.state.revoke(sid, exp).await {
            Ok(()) => true,
            Err(e) => {
                self.state_error("revocations", &e);
                false
            }
        }
    }

    /// Records a DPoP proof (`jkt` + `jti`) once across replicas.
    /// False: a replay, or the backend is away and replay checks fail closed.
    pub async fn first_use(&self, key: &str, ttl: Duration) -> bool {
        match self.state.remember_once(key, ttl).await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.state_error("replay", &e);
                self.fail.replay == FailMode::Open
            }
        }
    }
}

/// A threat signal for adaptive limits.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    AuthFailure,
    Denied,
    Detection,
}

/// A concurrent-call slot of one principal.
pub struct BusyGuard {
    owner: Option<(Arc<Controls>, String)>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let Some((c, p)) = self.owner.take() else { return };
        let mut m = c.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&p);
            }
        }
    }
}

/// The key a principal's limits and scores are kept under.
pub fn principal_key(p: &palisade_session::Principal) -> String {
    format!("{}|{}", p.issuer(), p.subject())
}

/// What the policy sees of a session's user.
pub struct Who {
    pub issuer: String,
    pub subject: String,
    pub identity: Option<Arc<palisade_auth::Identity>>,
}

impl Who {
    pub fn of(sess: &LiveSession) -> Who {
        let identity = sess.identity.lock().ok().and_then(|g| g.clone());
        Who {
            issuer: sess.principal.issuer().to_owned(),
            subject: sess.principal.subject().to_owned(),
            identity,
        }
    }

    pub fn of_caller(caller: &crate::auth::Caller) -> Who {
        Who {
            issuer: caller.principal.issuer().to_owned(),
            subject: caller.principal.subject().to_owned(),
            identity: caller.identity.clone(),
        }
    }

    fn principal(&self) -> Principal<'_> {
        const NONE: &[String] = &[];
        match &self.identity {
            Some(id) => Principal {
                issuer: &self.issuer,
                subject: &self.subject,
                authenticated: true,
                client_id: id.client_id.as_deref(),
                groups: &id.groups,
                roles: &id.roles,
                scopes: &id.scopes,
                mfa: id.amr.iter().any(|a| a == "mfa"),
                tenant: id.tenant.as_deref(),
                claims: Some(&id.claims),
            },
            None => Principal {
                issuer: &self.issuer,
                subject: &self.subject,
                authenticated: self.issuer != palisade_session::Principal::anonymous().issuer(),
                client_id: None,
                groups: NONE,
                roles: NONE,
                scopes: NONE,
                mfa: false,
                tenant: None,
                claims: None,
            },
        }
    }
}

fn now_unix() -> u64 {
    palisade_session::unix(SystemTime::now())
}

/// One policy decision; `None` when authorization is off (everything allowed).
pub fn decide(
    engine: &PolicyEngine,
    who: &Who,
    route: &str,
    action: Action,
    resource: Resource<'_>,
    arguments: Option<&Value>,
) -> Decision {
    let req = Request {
        principal: who.principal(),
        action,
        resource,
        context: Context {
            arguments,
            now_unix: now_unix(),
            route,
            risk: 0,
            flow_labels: &[],
        },
    };
    let d = engine.authorize(&req);
    if !d.errors.is_empty() {
        tracing::warn!(errors = ?d.errors, "policy evaluation errors (an erroring permit is skipped, an erroring forbid denies)");
    }
    d
}

/// Obligations of a decision outside `tools/call` (which answers them with
/// challenges and elicitation): met by the token as it is, or the request is
/// refused. Fail closed: a confirmation cannot be asked there.
pub fn obligations_met(who: &Who, o: &palisade_policy::Obligations) -> Result<(), String> {
    if o.confirm {
        return Err("needs the user's confirmation, which is only asked for tools/call".into());
    }
    let (scopes, mfa): (&[String], bool) = match &who.identity {
        Some(id) => (&id.scopes, id.amr.iter().any(|a| a == "mfa")),
        None => (&[], false),
    };
    if o.mfa && !mfa {
        return Err("needs multi-factor authentication (step-up)".into());
    }
    let missing = o.missing_scopes(scopes);
    if !missing.is_empty() {
        return Err(format!("needs the scopes {}", missing.join(" ")));
    }
    Ok(())
}

/// Audits a decision (denials always; allows at debug level).
pub fn audit_decision(who: &Who, action: Action, target: &str, d: &Decision) {
    if d.allowed {
        tracing::debug!(
            target: "palisade::audit",
            event = "authz.allow",
            decision = "allow",
            issuer = %who.issuer,
            subject = %who.subject,
            action = action.cedar_id(),
            target,
            policies = %d.policies.join(","),
            "allowed"
        );
    } else {
        tracing::info!(
            target: "palisade::audit",
            event = "authz.deny",
            decision = "deny",
            issuer = %who.issuer,
            subject = %who.subject,
            action = action.cedar_id(),
            target,
            policies = %d.policies.join(","),
            "denied"
        );
    }
}

/// Removes from a list result what the caller may not use: tools it may not
/// call, resources it may not read, prompts it may not get. The list action
/// itself being denied empties the list.
pub fn filter_list_items(
    engine: &PolicyEngine,
    who: &Who,
    route: &str,
    upstream: &str,
    key: &str,
    items: &mut Vec<Value>,
) {
    let list_action = match key {
        "tools" => Action::ListTools,
        "resources" => Action::ListResources,
        "resourceTemplates" => Action::ListResourceTemplates,
        "prompts" => Action::ListPrompts,
        _ => return,
    };
    let listed = decide(
        engine,
        who,
        route,
        list_action,
        Resource::Server { server: upstream },
        None,
    );
    if !listed.allowed {
        audit_decision(who, list_action, upstream, &listed);
        items.clear();
        return;
    }
    if let Err(why) = obligations_met(who, &listed.obligations) {
        tracing::info!(target: "palisade::audit", event = "authz.obligation_unmet", upstream, action = list_action.cedar_id(), why = %why, "list withheld");
        items.clear();
        return;
    }
    items.retain(|item| {
        let text = |k: &str| item.get(k).and_then(Value::as_str);
        let (action, resource) = match key {
            // The served annotations: a listed tool is the pinned version.
            "tools" => match text("name") {
                Some(tool) => (
                    Action::CallTool,
                    Resource::Tool {
                        server: upstream,
                        tool,
                        annotations: item.get("annotations"),
                    },
                ),
                None => return false,
            },
            "resources" | "resourceTemplates" => match text("uri").or_else(|| text("uriTemplate")) {
                Some(uri) => (Action::ReadResource, Resource::Resource { server: upstream, uri }),
                None => return false,
            },
            _ => match text("name") {
                Some(prompt) => (
                    Action::GetPrompt,
                    Resource::Prompt {
                        server: upstream,
                        prompt,
                    },
                ),
                None => return false,
            },
        };
        decide(engine, who, route, action, resource, None).allowed
    });
}
