//! `[policy]`, `[limits]` and `[state]`: authorization, rate limits and quotas,
//! and where shared state lives.

use serde::Deserialize;

use crate::{ConfigError, err_at};

/// `[policy]`: Cedar authorization (Z2). Absent: authorization is off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Folder of `*.cedar` files (relative paths are taken from the configuration file's folder).
    pub dir: String,
    /// How often the folder is checked for changes (hot reload).
    #[serde(default = "default_policy_reload")]
    pub reload_interval_ms: u64,
    /// How long the user has to answer a confirmation (elicitation) before the call is refused.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout_ms: u64,
}

fn default_policy_reload() -> u64 {
    2000
}
fn default_confirm_timeout() -> u64 {
    120_000
}

/// A GCRA rate: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub per_second: f64,
    pub burst: u32,
}

/// Rates at the four levels (R1); each is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLevels {
    /// Per principal (issuer and subject), all of its sessions and replicas together.
    pub user: Option<RateConfig>,
    /// Per MCP session.
    pub session: Option<RateConfig>,
    /// Per tool, all callers together (`tools/call` only).
    pub tool: Option<RateConfig>,
    /// Per upstream server, all callers together.
    pub server: Option<RateConfig>,
}

impl RateLevels {
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.session.is_none() && self.tool.is_none() && self.server.is_none()
    }
}

/// `[limits]`: rate limits, adaptive limits and quotas (R1–R3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Gateway-wide rates (`user`, `session`, `tool`, `server`); an upstream's
    /// `limits` add buckets scoped to it.
    pub user: Option<RateConfig>,
    pub session: Option<RateConfig>,
    pub tool: Option<RateConfig>,
    pub server: Option<RateConfig>,
    /// Calls in flight per principal, all upstreams together (this replica); 0 = no cap.
    pub max_concurrent_per_user: usize,
    /// Largest upstream answer relayed to a client (bytes); larger answers become an error.
    pub max_response_bytes: usize,
    pub adaptive: AdaptiveConfig,
}

impl LimitsConfig {
    /// The gateway-wide rates.
    pub fn rates(&self) -> RateLevels {
        RateLevels {
            user: self.user,
            session: self.session,
            tool: self.tool,
            server: self.server,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            user: None,
            session: None,
            tool: None,
            server: None,
            max_concurrent_per_user: 64,
            max_response_bytes: 16 * 1024 * 1024,
            adaptive: AdaptiveConfig::default(),
        }
    }
}

/// Adaptive limits (R2): threat signals raise a principal's score, which
/// makes each of its requests cost more; the score halves every `half_life_s`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    pub enabled: bool,
    pub half_life_s: u64,
    /// Score added by one authentication failure, denied call, or detection.
    pub auth_failure: f64,
    pub denied: f64,
    pub detection: f64,
    /// A request costs `1 + score`, at most this much.
    pub max_cost: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: true,
            half_life_s: 300,
            auth_failure: 1.0,
            denied: 1.0,
            detection: 2.0,
            max_cost: 10.0,
        }
    }
}

/// Where shared state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In this process (one replica).
    Local,
    /// A Redis server shared by every replica.
    Redis,
}

/// What a control does when the state backend cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse the request (the default for security state).
    Closed,
    /// Let the request through and log it.
    Open,
}

/// Per-control behaviour when the backend is unreachable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailModes {
    pub rate_limits: FailMode,
    pub revocations: FailMode,
    pub replay: FailMode,
    /// Adaptive scores: open means "score 0" while the backend is away.
    pub threat_scores: FailMode,
}

impl Default for FailModes {
    fn default() -> Self {
        FailModes {
            rate_limits: FailMode::Closed,
            revocations: FailMode::Closed,
            replay: FailMode::Closed,
            threat_scores: FailMode::Open,
        }
    }
}

/// `[state]`: rate-limit buckets, session revocations, the DPoP replay cache and threat scores.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// `redis://host:port/db`; a password belongs in the environment
    /// (`PALISADE__STATE__REDIS_URL`), not in the file.
    pub redis_url: String,
    /// Prefix of every key, so several deployments can share one Redis.
    pub prefix: String,
    pub op_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub on_error: FailModes,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Local,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            prefix: "palisade:".into(),
            op_timeout_ms: 250,
            connect_timeout_ms: 1000,
            on_error: FailModes::default(),
        }
    }
}

pub(crate) fn validate_rate(key: &str, r: &RateConfig, errs: &mut Vec<ConfigError>) {
    if !(r.per_second.is_finite() && r.per_second > 0.0 && r.per_second <= 1e6) {
        errs.push(err_at(key, None, "per_second must be a number in (0, 1000000]".into()));
    }
    if r.burst == 0 || r.burst > 1_000_000 {
        errs.push(err_at(key, None, "burst must be between 1 and 1000000".into()));
    }
}

pub(crate) fn validate_levels(prefix: &str, l: &RateLevels, errs: &mut Vec<ConfigError>) {
    for (name, r) in [
        ("user", &l.user),
        ("session", &l.session),
        ("tool", &l.tool),
        ("server", &l.server),
    ] {
        if let Some(r) = r {
            validate_rate(&format!("{prefix}{name}"), r, errs);
        }
    }
}

pub(crate) fn validate_controls(
    policy: Option<&PolicyConfig>,
    limits: &LimitsConfig,
    state: &StateConfig,
    errs: &mut Vec<ConfigError>,
) {
    if let Some(p) = policy {
        if p.dir.is_empty() {
            errs.push(err_at("policy.dir", None, "must name a folder of *.cedar files".into()));
        }
        if p.reload_interval_ms == 0 || p.confirm_timeout_ms == 0 {
            errs.push(err_at(
                "policy",
                None,
                "reload_interval_ms and confirm_timeout_ms must be positive".into(),
            ));
        }
    }
    validate_levels("limits.", &limits.rates(), errs);
    if limits.max_response_bytes < 1024 {
        errs.push(err_at(
            "limits.max_response_bytes",
            None,
            "must be at least 1024".into(),
        ));
    }
    let a = &limits.adaptive;
    for (k, v) in [
        ("auth_failure", a.auth_failure),
        ("denied", a.denied),
        ("detection", a.detection),
    ] {
        if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
            errs.push(err_at(
                &format!("limits.adaptive.{k}"),
                None,
                "must be between 0 and 100".into(),
            ));
        }
    }
    if !(a.max_cost.is_finite() && a.max_cost >= 1.0 && a.max_cost <= 1000.0) {
        errs.push(err_at(
            "limits.adaptive.max_cost",
            None,
            "must be between 1 and 1000".into(),
        ));
    }
    if a.half_life_s == 0 {
        errs.push(err_at("limits.adaptive.half_life_s", None, "must be positive".into()));
    }
    if state.backend == StateBackend::Redis
        && !(state.redis_url.starts_with("redis://") || state.redis_url.starts_with("unix://"))
    {
        errs.push(err_at(
            "state.redis_url",
            None,
            "must be a redis:// or unix:// URL (TLS to Redis is not supported yet)".into(),
        ));
    }
    if state.op_timeout_ms == 0 || state.connect_timeout_ms == 0 {
        errs.push(err_at(
            "state",
            None,
            "op_timeout_ms and connect_timeout_ms must be positive".into(),
        ));
    }
    if state.prefix.len() > 64 {
        errs.push(err_at("state.prefix", None, "must be at most 64 bytes".into()));
    }
}

/// Checks the per-upstream control settings.
pub(crate) fn validate_upstream(
    key: &str,
    line: Option<usize>,
    up: &crate::UpstreamConfig,
    errs: &mut Vec<ConfigError>,
) {
    validate_levels(&format!("{key}.limits."), &up.limits, errs);
    crate::inspect::validate_labels(&format!("{key}.capabilities"), line, &up.capabilities, errs);
    for (tool, labels) in &up.tool_capabilities {
        crate::inspect::validate_labels(&format!("{key}.tool_capabilities.{tool}"), line, labels, errs);
    }
    for (tool, ms) in &up.tool_timeouts_ms {
        if *ms == 0 {
            errs.push(err_at(
                &format!("{key}.tool_timeouts_ms.{tool}"),
                line,
                "must be positive".into(),
            ));
        }
    }
    if !matches!(
        up.classification.as_str(),
        "" | "public" | "internal" | "confidential" | "restricted"
    ) {
        errs.push(err_at(
            &format!("{key}.classification"),
            line,
            "must be public, internal, confidential or restricted".into(),
        ));
    }
}
