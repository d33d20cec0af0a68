//! `[audit]` and `[[alerts]]`: the tamper-evident audit chain (L1–L3), its
//! export to SIEMs (L4) and automated response (L5).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::{ConfigError, SecretRef, err_at};

/// `[audit]`: where the hash chain lives, how it is kept durable, and where
/// events are shipped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Write the chain. Off, decisions still go to the process log only.
    pub enabled: bool,
    /// Folder of the chain segments, the checkpoint file and the query index
    /// (relative paths are taken from the configuration file's folder).
    pub dir: PathBuf,
    /// The HMAC key of the chain. Absent: a random key is created once in
    /// `<dir>/audit.key` (mode 0600); that protects against edits by anyone
    /// who cannot read the key, not against the host's administrator.
    pub key: Option<SecretRef>,
    /// When written records are forced to disk.
    pub fsync: FsyncPolicy,
    /// Period of the `interval` fsync policy.
    pub fsync_interval_ms: u64,
    /// A segment is closed and a new one started past this size ...
    pub segment_max_bytes: u64,
    /// ... or this age.
    pub segment_max_age_s: u64,
    /// How often the head of the chain is checkpointed (0: only at rotation and exit).
    pub checkpoint_interval_s: u64,
    /// The checkpoint witness file; default `<dir>/checkpoints.jsonl`. Put it
    /// on another volume or ship checkpoints to a sink so that truncating the
    /// chain and its checkpoints together takes two compromises.
    pub checkpoint_file: Option<PathBuf>,
    /// Events waiting for the chain writer; past this the request path waits
    /// (`on_failure = "closed"`) or the event is counted as dropped.
    pub queue: usize,
    /// What MCP traffic does when the chain cannot be written: `closed`
    /// refuses it with 503 (admin endpoints stay up), `open` goes on and alerts.
    pub on_failure: AuditFailMode,
    /// Argument and result logging per data class (L3). A class not listed
    /// logs neither.
    pub payloads: BTreeMap<String, PayloadLogging>,
    /// Export of every event to SIEMs and alert receivers (L4).
    pub sinks: Vec<SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            dir: PathBuf::from("audit"),
            key: None,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 10,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age_s: 86_400,
            checkpoint_interval_s: 60,
            checkpoint_file: None,
            queue: 65_536,
            on_failure: AuditFailMode::Closed,
            payloads: BTreeMap::new(),
            sinks: Vec::new(),
        }
    }
}

/// When the chain is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Every event is on disk before the response it belongs to is sent.
    Always,
    /// Every `fsync_interval_ms` (group commit); a crash loses at most that window.
    Interval,
    /// Left to the operating system.
    Never,
}

/// What traffic does when the chain cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditFailMode {
    Closed,
    Open,
}

/// How tool arguments and results of one data class are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayloadLogging {
    pub arguments: PayloadMode,
    pub results: PayloadMode,
}

impl Default for PayloadLogging {
    fn default() -> Self {
        PayloadLogging {
            arguments: PayloadMode::None,
            results: PayloadMode::None,
        }
    }
}

/// One payload logging mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadMode {
    /// Not logged (only a digest in `tool.call`).
    None,
    /// A keyed hash (HMAC-SHA256 with the chain key) of the canonical JSON.
    Hash,
    /// The payload with secrets and personal data replaced by placeholders.
    Redacted,
}

/// `[[audit.sinks]]`: one export destination with its own bounded queue.
/// (Unknown keys are refused by the flattened [`SinkKind`]: serde cannot
/// combine `deny_unknown_fields` with `flatten` on this struct.)
#[derive(Debug, Clone, Deserialize)]
pub struct SinkConfig {
    /// A name for metrics, logs and alert actions (`webhook` actions name a sink).
    pub name: String,
    #[serde(flatten)]
    pub kind: SinkKind,
    /// Events sent: exact names or `prefix.*`; empty sends every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// Events waiting for this sink; past it events are dropped and counted.
    #[serde(default = "default_sink_queue")]
    pub queue: usize,
    /// Per-delivery timeout.
    #[serde(default = "default_sink_timeout")]
    pub timeout_ms: u64,
}

fn default_sink_queue() -> usize {
    10_000
}

fn default_sink_timeout() -> u64 {
    5_000
}

/// The kind of a sink and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkKind {
    /// RFC 5424 syslog with a CEF message (or the JSON record).
    Syslog {
        /// `host:port`.
        address: String,
        #[serde(default)]
        protocol: SyslogProtocol,
        #[serde(default)]
        format: SyslogFormat,
        /// Syslog facility number (default 13, log audit).
        #[serde(default = "default_facility")]
        facility: u8,
        /// The syslog APP-NAME (the CEF header always names Palisade).
        #[serde(default = "default_app_name")]
        app_name: String,
    },
    /// OpenTelemetry logs over OTLP/HTTP (protobuf), e.g. `http://collector:4318/v1/logs`.
    Otlp {
        endpoint: String,
        /// Extra headers (e.g. an API key), values from the secret store.
        #[serde(default)]
        headers: BTreeMap<String, SecretRef>,
        #[serde(default)]
        allow_insecure_http: bool,
    },
    /// JSON POSTed to a URL (alert receivers, chat hooks).
    Webhook {
        url: String,
        /// Signs each body: `X-Palisade-Signature: sha256=<hex HMAC>`.
        #[serde(default)]
        secret: Option<SecretRef>,
        #[serde(default)]
        allow_insecure_http: bool,
    },
    /// A plain JSON-lines copy of the records (for a log shipper).
    File { path: PathBuf },
}

fn default_facility() -> u8 {
    13
}

fn default_app_name() -> String {
    "palisade".into()
}

/// Syslog transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogProtocol {
    #[default]
    Udp,
    /// RFC 6587 octet-counted framing.
    Tcp,
}

/// Syslog message body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFormat {
    #[default]
    Cef,
    Json,
}

/// `[[alerts]]`: a rule over audit events and what it sets off (L5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    /// Event names matched: exact or `prefix.*`.
    pub on: Vec<String>,
    /// Field conditions, all of which must hold: a dotted path into the
    /// event (`category`, `principal.sub`, `data_class`) and the value it
    /// must equal (string, number or bool), or a list of accepted values.
    #[serde(default, rename = "where")]
    pub conditions: BTreeMap<String, toml::Value>,
    /// Fires when this many matching events fall within `window_s` ...
    #[serde(default = "one")]
    pub threshold: u32,
    #[serde(default = "default_window")]
    pub window_s: u64,
    /// ... counted per value of this field (e.g. `principal.sub`); absent: one count.
    #[serde(default)]
    pub group_by: Option<String>,
    /// After firing, the same group does not fire again for this long.
    #[serde(default = "default_cooldown")]
    pub cooldown_s: u64,
    pub actions: Vec<AlertAction>,
}

fn one() -> u32 {
    1
}

fn default_window() -> u64 {
    60
}

fn default_cooldown() -> u64 {
    300
}

/// A response action.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertAction {
    /// Send the alert to a sink by name (usually a webhook).
    Notify { sink: String },
    /// Revoke the session of the event that fired the rule.
    RevokeSession,
    /// Refuse the event's principal for a while.
    BlockPrincipal {
        #[serde(default = "default_block")]
        for_s: u64,
    },
    /// Quarantine the event's tool (`server` and `tool` fields).
    QuarantineTool,
    /// Quarantine the event's server: all its tools are refused.
    QuarantineServer,
    /// Refuse all MCP traffic with 503 until an admin lifts it.
    KillSwitch,
}

fn default_block() -> u64 {
    900
}

/// Event-name patterns: exact, `prefix.*`, or `*`.
pub fn event_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, name))
}

fn pattern_matches(p: &str, name: &str) -> bool {
    if p == "*" {
        return true;
    }
    match p.strip_suffix(".*") {
        Some(prefix) => name.len() > prefix.len() && name.starts_with(prefix) && name.as_bytes()[prefix.len()] == b'.',
        None => p == name,
    }
}

fn valid_pattern(p: &str) -> bool {
    let body = p.strip_suffix(".*").unwrap_or(p);
    p == "*"
        || (!body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_'))
}

pub(crate) fn validate_audit(a: &AuditConfig, alerts: &[AlertRule], errs: &mut Vec<ConfigError>) {
    let e = |k: &str, m: &str| err_at(k, None, m.to_owned());
    if a.dir.as_os_str().is_empty() {
        errs.push(e("audit.dir", "must be a folder path"));
    }
    if a.fsync == FsyncPolicy::Interval && !(1..=60_000).contains(&a.fsync_interval_ms) {
        errs.push(e("audit.fsync_interval_ms", "must be 1 to 60000"));
    }
    if a.segment_max_bytes < 4096 {
        errs.push(e("audit.segment_max_bytes", "must be at least 4096"));
    }
    if a.segment_max_age_s == 0 {
        errs.push(e("audit.segment_max_age_s", "must be at least 1"));
    }
    if !(16..=10_000_000).contains(&a.queue) {
        errs.push(e("audit.queue", "must be 16 to 10000000"));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in a.sinks.iter().enumerate() {
        let key = format!("audit.sinks[{i}]");
        if s.name.is_empty() || !names.insert(s.name.as_str()) {
            errs.push(e(&format!("{key}.name"), "must be present and unique"));
        }
        if !(1..=10_000_000).contains(&s.queue) {
            errs.push(e(&format!("{key}.queue"), "must be 1 to 10000000"));
        }
        if !(1..=600_000).contains(&s.timeout_ms) {
            errs.push(e(&format!("{key}.timeout_ms"), "must be 1 to 600000"));
        }
        for p in &s.events {
            if !valid_pattern(p) {
                errs.push(e(
                    &format!("{key}.events"),
                    &format!("{p:?} is not an event name or `prefix.*`"),
                ));
            }
        }
        match &s.kind {
            SinkKind::Syslog { address, .. } => {
                if !address.contains(':') {
                    errs.push(e(&format!("{key}.address"), "must be host:port"));
                }
            }
            SinkKind::Otlp {
                endpoint,
                allow_insecure_http,
                ..
            } => crate::validate_url(endpoint, *allow_insecure_http, &format!("{key}.endpoint"), None, errs),
            SinkKind::Webhook {
                url,
                allow_insecure_http,
                ..
            } => crate::validate_url(url, *allow_insecure_http, &format!("{key}.url"), None, errs),
            SinkKind::File { path } => {
                if path.as_os_str().is_empty() {
                    errs.push(e(&format!("{key}.path"), "must be a file path"));
                }
            }
        }
    }
    let mut rule_names = std::collections::BTreeSet::new();
    for (i, r) in alerts.iter().enumerate() {
        let key = format!("alerts[{i}]");
        if r.name.is_empty() || !rule_names.insert(r.name.as_str()) {
            errs.push(e(&format!("{key}.name"), "must be present and unique"));
        }
        if r.on.is_empty() {
            errs.push(e(&format!("{key}.on"), "must name at least one event"));
        }
        for p in &r.on {
            if !valid_pattern(p) {
                errs.push(e(
                    &format!("{key}.on"),
                    &format!("{p:?} is not an event name or `prefix.*`"),
                ));
            }
        }
        if r.threshold == 0 {
            errs.push(e(&format!("{key}.threshold"), "must be at least 1"));
        }
        if !(1..=86_400).contains(&r.window_s) {
            errs.push(e(&format!("{key}.window_s"), "must be 1 to 86400"));
        }
        if r.actions.is_empty() {
            errs.push(e(&format!("{key}.actions"), "must list at least one action"));
        }
        for (path, v) in &r.conditions {
            if path.is_empty() || !condition_value_ok(v) {
                errs.push(e(
                    &format!("{key}.where.{path}"),
                    "must be a string, number, bool, or a list of them",
                ));
            }
        }
        for a in &r.actions {
            if let AlertAction::Notify { sink } = a
                && !names.contains(sink.as_str())
            {
                errs.push(e(
                    &format!("{key}.actions"),
                    &format!("no sink named {sink:?} in [[audit.sinks]]"),
                ));
            }
            if let AlertAction::BlockPrincipal { for_s } = a
                && !(1..=31_536_000).contains(for_s)
            {
                errs.push(e(
                    &format!("{key}.actions"),
                    "block_principal.for_s must be 1 to 31536000",
                ));
            }
        }
    }
}

fn condition_value_ok(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_) => true,
        toml::Value::Array(items) => !items.is_empty() && items.iter().all(|i| !i.is_array() && condition_value_ok(i)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(event_matches(&p(&["auth.*"]), "auth.failure"));
        assert!(!event_matches(&p(&["auth.*"]), "auth"));
        assert!(!event_matches(&p(&["auth.*"]), "authz.decision"));
        assert!(event_matches(&p(&["tool.call"]), "tool.call"));
        assert!(!event_matches(&p(&["tool.call"]), "tool.calls"));
        assert!(event_matches(&p(&["*"]), "x"));
        assert!(!event_matches(&[], "x"));
        assert!(valid_pattern("inspect.*"));
        assert!(!valid_pattern("Auth.*"));
        assert!(!valid_pattern(".*"));
        assert!(!valid_pattern("a b"));
    }
}
