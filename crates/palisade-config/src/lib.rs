//! Palisade configuration: TOML, validated at load, with environment overrides.
//!
//! Unknown keys are errors (a typo in a security setting must not silently
//! fall back to a default). Errors name the key and, where known, the line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod audit;
mod auth;
mod controls;
mod inspect;
mod sandbox;
mod supply;
mod traces;
pub use audit::*;
pub use auth::*;
pub use controls::*;
pub use inspect::*;
pub use sandbox::*;
pub use supply::*;
pub use traces::*;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub sessions: SessionConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The admin listener (metrics, health), off unless configured.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Tool pinning and the poisoning scan.
    #[serde(default)]
    pub integrity: IntegrityConfig,
    /// Cedar authorization; off when absent.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Rate limits, adaptive limits and quotas.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where state shared by replicas lives.
    #[serde(default)]
    pub state: StateConfig,
    /// Content inspection: injection, secrets, PII, spotlighting, toxic flows.
    #[serde(default)]
    pub inspect: InspectConfig,
    /// The audit chain, its sinks and payload logging.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Rules over audit events that set off a response.
    #[serde(default)]
    pub alerts: Vec<AlertRule>,
    /// OpenTelemetry traces and W3C trace context.
    #[serde(default)]
    pub traces: TracesConfig,
}

/// `[integrity]`: tool pins, rug-pull holds and the tool-poisoning scan (J2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrityConfig {
    /// The embedded store for pins and approvals: an SQLite file (relative
    /// paths are taken from the configuration file's folder), or `:memory:`
    /// (pins are then forgotten at exit).
    pub store: String,
    /// Pinning mode for upstreams that do not set `pinning`.
    pub default_pinning: PinMode,
    /// How often the gateway looks for approvals made by `palisade tools`.
    pub poll_interval_ms: u64,
    /// Refuse to launch stdio upstreams that have no `pin` (P1).
    pub require_launch_pins: bool,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            store: "palisade-state.db".into(),
            default_pinning: PinMode::Tofu,
            poll_interval_ms: 1000,
            require_launch_pins: false,
        }
    }
}

/// What happens to new and changed tools of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinMode {
    /// New and changed tools are held until an admin approves them.
    Approve,
    /// First sight pins; a change is held until approved. Tools with a
    /// high-severity scan finding are held even on first sight.
    Tofu,
    /// No pinning (quarantine still applies).
    Off,
}

/// `[admin]`: a separate listener for operators (`/metrics`, `/healthz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// TLS (and, with `client_auth = "required"`, mutual TLS) on the admin listener.
    #[serde(default)]
    pub tls: Option<TlsListenerConfig>,
    /// Serve plain HTTP on a non-loopback address.
    #[serde(default)]
    pub allow_plain_http_non_loopback: bool,
    /// The admin API (`/admin/...`): bearer tokens checked by `[auth]`
    /// (audience: the gateway's public URL + `/admin`) with this scope.
    #[serde(default = "default_admin_scope")]
    pub api_scope: String,
    /// Require an MFA claim on admin tokens: `amr` listing `mfa`, `otp`,
    /// `hwk`, `swk`, `sms` or `fpt` (RFC 8176), or an `acr` containing `mfa`.
    #[serde(default = "yes")]
    pub require_mfa: bool,
}

fn default_admin_scope() -> String {
    "palisade:admin".into()
}

/// The listener and its hygiene limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; loopback unless deliberately changed (T3).
    pub listen: SocketAddr,
    /// Origins allowed to call the gateway. Requests without `Origin` are allowed
    /// (non-browser clients); loopback origins are allowed when the gateway binds loopback.
    pub allowed_origins: Vec<String>,
    /// Host header values accepted (DNS-rebinding defence). Empty: loopback names only
    /// when bound to loopback, anything otherwise.
    pub allowed_hosts: Vec<String>,
    /// Serve the aggregated `/mcp` endpoint over all upstreams with `aggregate = true`.
    pub aggregate: bool,
    /// Protocol revisions accepted; `2025-03-26` only if listed here.
    pub protocol_versions: Vec<String>,
    /// Within a session, `MCP-Protocol-Version` must equal the negotiated version
    /// (the spec says SHOULD). Off: any accepted session-based version is allowed.
    pub require_negotiated_version: bool,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_string_bytes: usize,
    pub max_items: usize,
    /// Requests being handled at once before new ones get 503.
    pub max_concurrent_requests: usize,
    /// Time allowed for a client to send request headers.
    pub header_timeout_ms: u64,
    /// Time allowed to receive a request body.
    pub body_timeout_ms: u64,
    /// SSE `retry` hint sent to clients, in milliseconds.
    pub sse_retry_ms: u64,
    /// Events kept per stream for `Last-Event-ID` resumption.
    pub sse_replay_events: usize,
    /// Seconds between SSE keep-alive comments on idle streams.
    pub sse_keepalive_s: u64,
    /// TLS on this listener (T1). Without it the listener speaks plain HTTP, which is
    /// refused on a non-loopback address unless `allow_plain_http_non_loopback` is set.
    pub tls: Option<TlsListenerConfig>,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating load balancer).
    pub allow_plain_http_non_loopback: bool,
}

/// `[server.tls]`: certificate, protocol versions and client certificates of a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// PEM certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519).
    pub key_file: PathBuf,
    /// Lowest protocol version: `"1.3"` (default) or `"1.2"`.
    #[serde(default = "default_tls_min")]
    pub min_version: String,
    /// PEM CA bundle that client certificates must chain to (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// `"none"`, `"optional"` (verified when presented) or `"required"`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Seconds between checks of the certificate files for changes (SIGHUP also reloads).
    #[serde(default = "default_tls_reload")]
    pub reload_interval_s: u64,
    /// Warn this many days before the certificate expires.
    #[serde(default = "default_tls_warn")]
    pub expiry_warning_days: u64,
    /// `Strict-Transport-Security` max-age in seconds (0 disables the header).
    #[serde(default = "default_hsts")]
    pub hsts_max_age_s: u64,
    /// Time allowed for the TLS handshake, milliseconds.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
}

fn default_tls_min() -> String {
    "1.3".into()
}
fn default_tls_reload() -> u64 {
    10
}
fn default_tls_warn() -> u64 {
    14
}
fn default_hsts() -> u64 {
    31_536_000
}
fn default_handshake_timeout() -> u64 {
    10_000
}

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            aggregate: true,
            protocol_versions: vec!["2025-06-18".into(), "2025-11-25".into(), "2026-07-28".into()],
            require_negotiated_version: true,
            max_body_bytes: 4 * 1024 * 1024,
            max_json_depth: 64,
            max_string_bytes: 1024 * 1024,
            max_items: 10_000,
            max_concurrent_requests: 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            sse_retry_ms: 1_000,
            sse_replay_events: 256,
            sse_keepalive_s: 15,
            tls: None,
            allow_plain_http_non_loopback: false,
        }
    }
}

/// Sealed session ids (M4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Idle expiry in seconds.
    pub idle_timeout_s: u64,
    /// Absolute expiry in seconds.
    pub max_lifetime_s: u64,
    /// Environment variable holding the session sealing keys as `kid:base64key[,kid:base64key…]`;
    /// the first key seals, all open. Unset: a random key per process (sessions end on restart).
    pub keys_env: String,
    /// The most sessions held live by one gateway process.
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout_s: 30 * 60,
            max_lifetime_s: 24 * 3600,
            keys_env: "PALISADE_SESSION_KEYS".into(),
            max_sessions: 10_000,
        }
    }
}

/// How the gateway reaches one upstream MCP server.
///
/// Unknown keys are refused by the transport tables (serde cannot combine
/// `deny_unknown_fields` with the flattened transport here).
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamConfig {
    #[serde(flatten)]
    pub transport: Transport,
    /// Include this upstream in the aggregated `/mcp` endpoint.
    #[serde(default = "yes")]
    pub aggregate: bool,
    /// Renames for the aggregated endpoint: upstream tool name → exposed name.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Time allowed for one request before the client gets an error.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Upper bound on requests in flight to this upstream.
    #[serde(default = "default_upstream_concurrency")]
    pub max_in_flight: usize,
    /// Scopes, DPoP and step-up for this upstream's endpoint and tools.
    #[serde(default)]
    pub auth: EndpointAuth,
    /// Tool pinning for this upstream (default: `integrity.default_pinning`).
    #[serde(default)]
    pub pinning: Option<PinMode>,
    /// Data classification for policies: public, internal, confidential or restricted.
    #[serde(default)]
    pub classification: String,
    /// Free tags for policies (for example a team name).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Rates scoped to this upstream, added to the gateway-wide `[limits]`.
    #[serde(default)]
    pub limits: RateLevels,
    /// Per-tool timeouts (upstream tool name → ms); other tools use `request_timeout_ms`.
    #[serde(default)]
    pub tool_timeouts_ms: BTreeMap<String, u64>,
    /// Flow labels of every tool of this upstream (J5): `private_data`,
    /// `untrusted_content`, `external_communication`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Flow labels per tool (upstream tool name), added to `capabilities`.
    #[serde(default)]
    pub tool_capabilities: BTreeMap<String, Vec<String>>,
}

fn yes() -> bool {
    true
}
fn default_request_timeout() -> u64 {
    120_000
}
fn default_upstream_concurrency() -> usize {
    256
}

/// The upstream transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "transport", rename_all = "snake_case")]
// Configuration is read once at start; the size difference costs nothing on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Transport {
    Stdio(StdioConfig),
    Http(HttpConfig),
}

/// A launched stdio server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment given to the process; everything else is cleared.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables copied from the gateway's own environment, by name.
    #[serde(default)]
    pub env_passthrough: Vec<String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Confinement of the process (Landlock, seccomp, namespaces, rlimits).
    #[serde(default)]
    pub sandbox: SandboxConfig,
    #[serde(default)]
    pub mode: StdioMode,
    #[serde(default = "default_line_limit")]
    pub max_line_bytes: usize,
    #[serde(default = "default_backoff_initial")]
    pub restart_backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub restart_backoff_max_ms: u64,
    /// Grace period between closing stdin, SIGTERM and SIGKILL on shutdown.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_ms: u64,
    /// Supply-chain pin (P1): what the command must be before it is launched.
    #[serde(default)]
    pub pin: Option<LaunchPin>,
}

fn default_line_limit() -> usize {
    4 * 1024 * 1024
}
fn default_backoff_initial() -> u64 {
    200
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_shutdown_grace() -> u64 {
    2_000
}

/// Whether one process serves every client session or each session gets its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioMode {
    #[default]
    Shared,
    PerSession,
}

/// A remote Streamable HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    /// Headers the gateway sends as its own credential; values come from the
    /// environment (`{ env = "NAME" }`) or the secret store (`{ secret = "name" }`)
    /// so secrets stay out of the file (M5, S1).
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// An OAuth token the gateway obtains for itself (client credentials) or per user
    /// (token exchange), sent as `Authorization: Bearer` (M5).
    #[serde(default)]
    pub oauth: Option<UpstreamOAuth>,
    /// Extra PEM CA bundle trusted for this upstream (in addition to the system roots
    /// unless `only_custom_ca` is set).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub only_custom_ca: bool,
    /// SHA-256 fingerprints of the upstream's certificate (hex, or `sha256/<base64>`).
    /// When set, only these certificates are accepted and CA validation is not used.
    #[serde(default)]
    pub pinned_cert_sha256: Vec<String>,
    /// SHA-256 of the upstream certificate's SubjectPublicKeyInfo (hex or `sha256/<base64>`,
    /// as `openssl … pkey -pubin -outform der | sha256`). Several for rotation. With
    /// `ca_file` the chain and host name are validated too; without it the pin alone
    /// identifies the server. System roots are not used with pins.
    #[serde(default)]
    pub pinned_spki_sha256: Vec<String>,
    /// Client certificate (PEM chain) the gateway presents to this upstream (mutual TLS).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Allow plain `http://` to a non-loopback host.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_connect_timeout() -> u64 {
    5_000
}

/// A configuration problem, with the key and the line when known.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {}): {}", self.key, line, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one configuration.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Prefix of environment overrides: `PALISADE__SERVER__LISTEN=0.0.0.0:9000`
/// sets `server.listen`. Values are read as TOML values, else as strings.
pub const ENV_PREFIX: &str = "PALISADE__";

impl Config {
    /// Reads and validates a file, applying environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: path.display().to_string(),
                line: None,
                message: format!("cannot read configuration: {e}"),
            }])
        })?;
        // vars() would panic on a variable that is not UTF-8, even an unrelated one.
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str().filter(|k| k.starts_with(ENV_PREFIX)) else {
                continue;
            };
            let v = v.into_string().map_err(|_| {
                ConfigErrors(vec![ConfigError {
                    key: k.to_owned(),
                    line: None,
                    message: "environment override is not valid UTF-8".into(),
                }])
            })?;
            env.push((k.to_owned(), v));
        }
        Config::from_toml_with_env(&text, &env)
    }

    /// Parses and validates TOML text without environment overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_with_env(text, &[])
    }

    /// Parses TOML text, applies `overrides` (environment-style pairs), validates.
    pub fn from_toml_with_env(text: &str, overrides: &[(String, String)]) -> Result<Config, ConfigErrors> {
        let config: Config = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(text, &e)]))?
        } else {
            // Check the file alone first so its errors keep their lines.
            toml::from_str::<Config>(text).map_err(|e| ConfigErrors(vec![toml_error(text, &e)]))?;
            let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(text, &e)]))?;
            for (k, v) in overrides {
                apply_override(&mut table, k, v).map_err(|e| ConfigErrors(vec![e]))?;
            }
            let text = toml::to_string(&table).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    key: "environment".into(),
                    line: None,
                    message: e.to_string(),
                }])
            })?;
            toml::from_str(&text).map_err(|e| {
                let mut err = toml_error(&text, &e);
                err.line = None;
                err.message = format!("after environment overrides: {}", err.message);
                ConfigErrors(vec![err])
            })?
        };
        let errors = config.validate(text);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn validate(&self, text: &str) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.integrity.store.is_empty() {
            errs.push(err_at(
                "integrity.store",
                None,
                "must be a file path or \":memory:\"".into(),
            ));
        }
        if self.integrity.poll_interval_ms == 0 {
            errs.push(err_at("integrity.poll_interval_ms", None, "must be positive".into()));
        }
        let s = &self.server;
        for v in &s.protocol_versions {
            if !matches!(v.as_str(), "2025-03-26" | "2025-06-18" | "2025-11-25" | "2026-07-28") {
                errs.push(err_at(
                    "server.protocol_versions",
                    None,
                    format!("unsupported protocol version {v:?}"),
                ));
            }
        }
        if s.protocol_versions.is_empty() {
            errs.push(err_at(
                "server.protocol_versions",
                None,
                "at least one protocol version is required".into(),
            ));
        }
        for (key, value, min) in [
            ("server.max_body_bytes", s.max_body_bytes, 1024),
            ("server.max_json_depth", s.max_json_depth, 4),
            ("server.max_string_bytes", s.max_string_bytes, 64),
            ("server.max_items", s.max_items, 16),
            ("server.max_concurrent_requests", s.max_concurrent_requests, 1),
            ("server.sse_replay_events", s.sse_replay_events, 1),
        ] {
            if value < min {
                errs.push(err_at(key, None, format!("must be at least {min}")));
            }
        }
        if s.max_json_depth > 256 {
            errs.push(err_at("server.max_json_depth", None, "must be at most 256".into()));
        }
        for o in &s.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                errs.push(err_at(
                    "server.allowed_origins",
                    None,
                    format!("{o:?} is not an origin like https://app.example.com"),
                ));
            }
        }
        if self.sessions.idle_timeout_s == 0 || self.sessions.max_lifetime_s == 0 {
            errs.push(err_at(
                "sessions",
                None,
                "idle_timeout_s and max_lifetime_s must be positive".into(),
            ));
        }
        if self.upstreams.is_empty() {
            errs.push(err_at("upstreams", None, "configure at least one upstream".into()));
        }
        self.validate_auth(&mut errs);
        validate_controls(self.policy.as_ref(), &self.limits, &self.state, &mut errs);
        let names: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
        validate_inspect(&self.inspect, &names, &mut errs);
        validate_audit(&self.audit, &self.alerts, &mut errs);
        validate_traces(&self.traces, &mut errs);
        if let Some(t) = &s.tls {
            validate_tls("server.tls", t, &mut errs);
        }
        if let Some(t) = self.admin.as_ref().and_then(|a| a.tls.as_ref()) {
            validate_tls("admin.tls", t, &mut errs);
        }
        for (name, up) in &self.upstreams {
            let line = Some(line_of(text, up.span().start));
            let key = format!("upstreams.{name}");
            if let Transport::Http(h) = &up.get_ref().transport {
                if h.oauth.as_ref().is_some_and(|o| o.grant == OAuthGrant::TokenExchange)
                    && self.auth.mode != AuthMode::Oauth
                {
                    errs.push(err_at(
                        &format!("{key}.oauth.grant"),
                        line,
                        "token_exchange needs the caller's token: set auth.mode = \"oauth\"".into(),
                    ));
                }
                if h.oauth.is_some() && h.headers.keys().any(|k| k.eq_ignore_ascii_case("authorization")) {
                    errs.push(err_at(
                        &format!("{key}.headers"),
                        line,
                        "set either an Authorization header or oauth, not both".into(),
                    ));
                }
                if let Some(o) = &h.oauth {
                    validate_url(
                        &o.token_endpoint,
                        false,
                        &format!("{key}.oauth.token_endpoint"),
                        line,
                        &mut errs,
                    );
                }
                if h.only_custom_ca && h.ca_file.is_none() {
                    errs.push(err_at(&format!("{key}.only_custom_ca"), line, "needs ca_file".into()));
                }
                if h.client_cert_file.is_some() != h.client_key_file.is_some() {
                    errs.push(err_at(
                        &format!("{key}.client_cert_file"),
                        line,
                        "client_cert_file and client_key_file go together".into(),
                    ));
                }
                if !h.pinned_spki_sha256.is_empty() && !h.pinned_cert_sha256.is_empty() {
                    errs.push(err_at(
                        &format!("{key}.pinned_spki_sha256"),
                        line,
                        "pin either the certificate or its key (SPKI), not both".into(),
                    ));
                }
                if (!h.pinned_spki_sha256.is_empty() || !h.pinned_cert_sha256.is_empty())
                    && !h.url.starts_with("https://")
                {
                    errs.push(err_at(&format!("{key}.url"), line, "pinning needs an https url".into()));
                }
            }
            if !valid_name(name) {
                errs.push(err_at(
                    &key,
                    line,
                    "name must be 1-64 characters of a-z, 0-9, '-' or '_' (it becomes a URL path and a tool prefix)"
                        .into(),
                ));
            }
            up.get_ref().validate(&key, line, &mut errs);
            validate_upstream(&key, line, up.get_ref(), &mut errs);
        }
        errs
    }

    fn validate_auth(&self, errs: &mut Vec<ConfigError>) {
        let a = &self.auth;
        if let Some(u) = &a.public_url {
            validate_url(u, true, "auth.public_url", None, errs);
            if u.contains('?') || u.contains('#') {
                errs.push(err_at(
                    "auth.public_url",
                    None,
                    "must not have a query or fragment".into(),
                ));
            }
        }
        if a.mode == AuthMode::Oauth && a.issuers.is_empty() && a.introspection.is_none() && a.dev_issuer.is_none() {
            errs.push(err_at(
                "auth",
                None,
                "mode = \"oauth\" needs [[auth.issuers]], [auth.introspection] or [auth.dev_issuer]".into(),
            ));
        }
        for (i, iss) in a.issuers.iter().enumerate() {
            if iss.algorithms.is_empty() {
                errs.push(err_at(
                    &format!("auth.issuers[{i}].algorithms"),
                    None,
                    "list at least one algorithm".into(),
                ));
            }
            for alg in &iss.algorithms {
                if !matches!(
                    alg.as_str(),
                    "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA"
                ) {
                    errs.push(err_at(
                        &format!("auth.issuers[{i}].algorithms"),
                        None,
                        format!("{alg:?} is not an accepted public-key algorithm"),
                    ));
                }
            }
        }
        if a.max_token_bytes < 256 || a.max_token_bytes > 64 * 1024 {
            errs.push(err_at(
                "auth.max_token_bytes",
                None,
                "must be between 256 and 65536".into(),
            ));
        }
        if a.dpop_max_age_s == 0 || a.dpop_max_age_s > 3600 {
            errs.push(err_at("auth.dpop_max_age_s", None, "must be between 1 and 3600".into()));
        }
        if a.leeway_s > 600 {
            errs.push(err_at("auth.leeway_s", None, "must be at most 600 seconds".into()));
        }
    }

    /// Upstreams merged into the aggregated endpoint.
    pub fn aggregate_upstreams(&self) -> impl Iterator<Item = (&String, &UpstreamConfig)> {
        self.upstreams
            .iter()
            .map(|(k, v)| (k, v.get_ref()))
            .filter(|(_, v)| v.aggregate)
    }
}

impl UpstreamConfig {
    fn validate(&self, key: &str, line: Option<usize>, errs: &mut Vec<ConfigError>) {
        if self.request_timeout_ms == 0 {
            errs.push(err_at(
                &format!("{key}.request_timeout_ms"),
                line,
                "must be positive".into(),
            ));
        }
        if self.max_in_flight == 0 {
            errs.push(err_at(&format!("{key}.max_in_flight"), line, "must be positive".into()));
        }
        for (from, to) in &self.aliases {
            if from.is_empty() || to.is_empty() || to.contains("__") {
                errs.push(err_at(
                    &format!("{key}.aliases"),
                    line,
                    format!(
                        "alias {from:?} -> {to:?}: names must be non-empty and the new name must not contain \"__\""
                    ),
                ));
            }
        }
        match &self.transport {
            Transport::Stdio(s) => {
                if s.command.trim().is_empty() {
                    errs.push(err_at(&format!("{key}.command"), line, "must not be empty".into()));
                }
                if s.max_line_bytes < 1024 {
                    errs.push(err_at(
                        &format!("{key}.max_line_bytes"),
                        line,
                        "must be at least 1024".into(),
                    ));
                }
                if s.restart_backoff_initial_ms == 0 || s.restart_backoff_max_ms < s.restart_backoff_initial_ms {
                    errs.push(err_at(
                        &format!("{key}.restart_backoff_max_ms"),
                        line,
                        "backoff must be positive and max >= initial".into(),
                    ));
                }
                s.sandbox.validate(key, line, errs);
                if let Some(pin) = &s.pin {
                    pin.validate(key, line, errs);
                }
                for k in s.env.keys() {
                    if k.is_empty() || k.contains('=') || k.contains('\0') {
                        errs.push(err_at(
                            &format!("{key}.env"),
                            line,
                            format!("invalid variable name {k:?}"),
                        ));
                    }
                }
            }
            Transport::Http(h) => validate_url(&h.url, h.allow_insecure_http, &format!("{key}.url"), line, errs),
        }
    }
}

pub(crate) fn validate_url(
    url: &str,
    allow_insecure: bool,
    key: &str,
    line: Option<usize>,
    errs: &mut Vec<ConfigError>,
) {
    let Some((scheme, rest)) = url.split_once("://") else {
        errs.push(err_at(key, line, format!("{url:?} is not an absolute http(s) URL")));
        return;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_only = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.contains('@') {
        errs.push(err_at(
            key,
            line,
            "credentials in the URL are not allowed; use headers from the environment".into(),
        ));
    }
    if host_only.is_empty() {
        errs.push(err_at(key, line, format!("{url:?} has no host")));
    }
    match scheme {
        "https" => {}
        "http" => {
            let name = host_only.rsplit_once(':').map_or(host_only, |(h, _)| h);
            let loopback = matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.starts_with("127.");
            if !loopback && !allow_insecure {
                errs.push(err_at(
                    key,
                    line,
                    "plain http to a non-loopback host; use https or set allow_insecure_http = true".into(),
                ));
            }
        }
        _ => errs.push(err_at(key, line, format!("scheme {scheme:?} is not http or https"))),
    }
}

fn validate_tls(section: &str, t: &TlsListenerConfig, errs: &mut Vec<ConfigError>) {
    if !matches!(t.min_version.as_str(), "1.2" | "1.3") {
        errs.push(err_at(
            &format!("{section}.min_version"),
            None,
            "must be \"1.2\" or \"1.3\"".into(),
        ));
    }
    if t.client_auth != ClientAuth::None && t.client_ca_file.is_none() {
        errs.push(err_at(
            &format!("{section}.client_ca_file"),
            None,
            "client_auth = \"optional\" or \"required\" needs client_ca_file".into(),
        ));
    }
    if t.client_ca_file.is_some() && t.client_auth == ClientAuth::None {
        errs.push(err_at(
            &format!("{section}.client_auth"),
            None,
            "client_ca_file is set but client_auth = \"none\"; set \"optional\" or \"required\"".into(),
        ));
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.contains("__")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(crate) fn err_at(key: &str, line: Option<usize>, message: String) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        line,
        message,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start));
    ConfigError {
        key: "configuration".into(),
        line,
        message: e.message().trim().to_owned(),
    }
}

fn apply_override(table: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let rest = key
        .strip_prefix(ENV_PREFIX)
        .ok_or_else(|| err_at(key, None, format!("override names start with {ENV_PREFIX}")))?;
    let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if path.iter().any(String::is_empty) {
        return Err(err_at(key, None, "malformed override name".into()));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = path
        .split_last()
        .ok_or_else(|| err_at(key, None, "empty override".into()))?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| err_at(key, None, format!("{p} is not a table")))?;
    }
    cur.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests;
