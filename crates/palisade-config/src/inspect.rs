//! `[inspect]`: content inspection of what passes the gateway (V3, V4, J1,
//! J3–J5, L3, S3): prompt injection, secrets and PII in results, resources,
//! prompts, server requests and tool arguments; spotlighting; toxic flows;
//! context-window caps.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{ConfigError, SecretRef, err_at};

/// What the gateway does with content a category flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InspectAction {
    /// Pass it on unchanged (the detection is still audited).
    Allow,
    /// Pass it on with the findings in `_meta` (`palisade/inspection`).
    Annotate,
    /// Wrap untrusted text so the model can tell data from instructions.
    Spotlight,
    /// Replace each flagged span with a typed placeholder.
    Redact,
    /// Ask the user (MCP elicitation) before the content goes on; refused
    /// where the client cannot be asked.
    Confirm,
    /// Refuse: the client gets an error naming what was found, never the content.
    Block,
}

/// Actions by verdict level; a plain string sets both levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelActions {
    pub suspicious: InspectAction,
    pub malicious: InspectAction,
}

impl LevelActions {
    pub const fn both(a: InspectAction) -> LevelActions {
        LevelActions {
            suspicious: a,
            malicious: a,
        }
    }
}

impl InspectAction {
    /// The name used in configuration and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            InspectAction::Allow => "allow",
            InspectAction::Annotate => "annotate",
            InspectAction::Spotlight => "spotlight",
            InspectAction::Redact => "redact",
            InspectAction::Confirm => "confirm",
            InspectAction::Block => "block",
        }
    }

    fn parse(s: &str) -> Option<InspectAction> {
        use InspectAction::*;
        Some(match s {
            "allow" => Allow,
            "annotate" => Annotate,
            "spotlight" => Spotlight,
            "redact" => Redact,
            "confirm" => Confirm,
            "block" => Block,
            _ => return None,
        })
    }
}

const ACTION_NAMES: &str = "allow, annotate, spotlight, redact, confirm or block";

impl<'de> Deserialize<'de> for LevelActions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LevelActions;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "an action ({ACTION_NAMES}) or {{ suspicious = …, malicious = … }}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LevelActions, E> {
                InspectAction::parse(s)
                    .map(LevelActions::both)
                    .ok_or_else(|| E::custom(format!("unknown action {s:?} (known: {ACTION_NAMES})")))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<LevelActions, M::Error> {
                use serde::de::Error;
                let (mut suspicious, mut malicious) = (None, None);
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    let a = InspectAction::parse(&v)
                        .ok_or_else(|| M::Error::custom(format!("unknown action {v:?} (known: {ACTION_NAMES})")))?;
                    match k.as_str() {
                        "suspicious" => suspicious = Some(a),
                        "malicious" => malicious = Some(a),
                        other => {
                            return Err(M::Error::custom(format!(
                                "unknown level {other:?} (suspicious, malicious)"
                            )));
                        }
                    }
                }
                match (suspicious, malicious) {
                    (Some(suspicious), Some(malicious)) => Ok(LevelActions { suspicious, malicious }),
                    _ => Err(M::Error::custom("both suspicious and malicious are needed")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Actions per category for one direction; unset entries fall back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionTable {
    pub prompt_injection: Option<LevelActions>,
    pub secret: Option<LevelActions>,
    pub pii: Option<LevelActions>,
    pub hidden_text: Option<LevelActions>,
}

impl ActionTable {
    /// `self` where set, else `base`.
    pub fn over(&self, base: &ActionTable) -> ActionTable {
        ActionTable {
            prompt_injection: self.prompt_injection.or(base.prompt_injection),
            secret: self.secret.or(base.secret),
            pii: self.pii.or(base.pii),
            hidden_text: self.hidden_text.or(base.hidden_text),
        }
    }
}

/// Overrides for upstreams of one data class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassActions {
    pub results: ActionTable,
    pub arguments: ActionTable,
}

/// How spotlighted text is marked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpotlightMode {
    /// Between random per-session boundary lines the content cannot forge.
    #[default]
    Delimit,
    /// A marker character interleaved between words.
    Datamark,
    /// The whole text base64-encoded.
    Encode,
}

/// Toxic-flow control (J5): the step that would complete the "lethal
/// trifecta" of private data, untrusted content and external communication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToxicFlowConfig {
    /// `allow`, `confirm` or `block`.
    pub action: InspectAction,
    /// The action once an injection was detected in the session.
    pub after_injection: InspectAction,
}

impl Default for ToxicFlowConfig {
    fn default() -> Self {
        ToxicFlowConfig {
            action: InspectAction::Confirm,
            after_injection: InspectAction::Block,
        }
    }
}

/// When the remote detector cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteFailMode {
    /// Go on with the local verdict.
    #[default]
    Open,
    /// Refuse the content.
    Closed,
}

/// `[inspect.remote]`: a content-safety service asked about tool results
/// (`text:shieldPrompt` request and response shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteDetectorConfig {
    /// Base URL (https, or http on loopback).
    pub endpoint: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The subscription key, from the secret store or the environment.
    #[serde(default)]
    pub key: Option<SecretRef>,
    #[serde(default = "default_remote_timeout")]
    pub timeout_ms: u64,
    /// Default when the service fails or times out.
    #[serde(default)]
    pub on_error: RemoteFailMode,
    /// Per upstream (route) overrides of `on_error`.
    #[serde(default)]
    pub on_error_upstreams: BTreeMap<String, RemoteFailMode>,
}

fn default_api_version() -> String {
    "2024-09-01".into()
}
fn default_remote_timeout() -> u64 {
    2000
}

/// `[inspect]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    /// Inspection on or off as a whole.
    pub enabled: bool,
    /// Rule packs: `injection`, `secrets`, `pii`.
    pub packs: Vec<String>,
    /// A gitleaks-format rule file added to the built-in secret rules
    /// (relative paths are taken from the configuration file's folder).
    pub secrets_rules: Option<String>,
    /// Optional PII types, off by default.
    pub pii_names: bool,
    pub pii_addresses: bool,
    /// Longest single text scanned; longer text is refused (fail closed).
    pub max_scan_bytes: usize,
    /// Score thresholds of the verdicts.
    pub suspicious: f32,
    pub malicious: f32,
    /// Actions on content going to the client (tool results, resources,
    /// prompts, sampling and elicitation requests from servers).
    pub results: ActionTable,
    /// Actions on tool arguments going to a server.
    pub arguments: ActionTable,
    /// Overrides per data class of the upstream (`public`, `internal`,
    /// `confidential`, `restricted`; unclassified upstreams count as `internal`).
    pub classes: BTreeMap<String, ClassActions>,
    /// How `spotlight` marks text.
    pub spotlight: SpotlightMode,
    /// Spotlight every result of tools labelled `untrusted_content`, flagged or not.
    pub spotlight_untrusted: bool,
    /// Largest text relayed in one result (bytes); longer text is cut with a note.
    pub max_result_text_bytes: usize,
    /// Result bytes relayed per session (this replica); past it, results are
    /// replaced by a note. 0 = no cap.
    pub max_session_bytes: u64,
    pub toxic_flow: ToxicFlowConfig,
    pub remote: Option<RemoteDetectorConfig>,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            enabled: true,
            packs: vec!["injection".into(), "secrets".into(), "pii".into()],
            secrets_rules: None,
            pii_names: false,
            pii_addresses: false,
            max_scan_bytes: 16 << 20,
            suspicious: 0.5,
            malicious: 0.8,
            results: ActionTable::default(),
            arguments: ActionTable::default(),
            classes: BTreeMap::new(),
            spotlight: SpotlightMode::Delimit,
            spotlight_untrusted: false,
            max_result_text_bytes: 4 << 20,
            max_session_bytes: 0,
            toxic_flow: ToxicFlowConfig::default(),
            remote: None,
        }
    }
}

/// The built-in actions for content going to the client.
pub fn default_result_actions() -> ActionTable {
    use InspectAction::*;
    ActionTable {
        prompt_injection: Some(LevelActions {
            suspicious: Spotlight,
            malicious: Block,
        }),
        secret: Some(LevelActions::both(Redact)),
        pii: Some(LevelActions::both(Annotate)),
        hidden_text: Some(LevelActions {
            suspicious: Annotate,
            malicious: Block,
        }),
    }
}

/// The built-in actions for tool arguments going to a server of `class`:
/// secrets never leave to a server below `restricted`; PII only to
/// `internal` or higher.
pub fn default_argument_actions(class: &str) -> ActionTable {
    use InspectAction::*;
    let (secret, pii) = match class {
        "public" => (Block, Block),
        "restricted" => (Annotate, Annotate),
        "confidential" => (Block, Annotate),
        _ => (Block, Annotate),
    };
    ActionTable {
        prompt_injection: Some(LevelActions::both(Annotate)),
        secret: Some(LevelActions::both(secret)),
        pii: Some(LevelActions::both(pii)),
        hidden_text: Some(LevelActions::both(Annotate)),
    }
}

/// The flow labels of tools (J5).
pub const FLOW_LABELS: [&str; 3] = ["private_data", "untrusted_content", "external_communication"];

pub(crate) fn validate_inspect(i: &InspectConfig, upstreams: &[&str], errs: &mut Vec<ConfigError>) {
    for p in &i.packs {
        if !matches!(p.as_str(), "injection" | "secrets" | "pii") {
            errs.push(err_at(
                "inspect.packs",
                None,
                format!("unknown pack {p:?} (known: injection, secrets, pii)"),
            ));
        }
    }
    if !(0.0 < i.suspicious && i.suspicious <= i.malicious && i.malicious <= 1.0) {
        errs.push(err_at(
            "inspect",
            None,
            "thresholds must satisfy 0 < suspicious <= malicious <= 1".into(),
        ));
    }
    if i.max_scan_bytes < 1024 || i.max_result_text_bytes < 1024 {
        errs.push(err_at(
            "inspect",
            None,
            "max_scan_bytes and max_result_text_bytes must be at least 1024".into(),
        ));
    }
    for class in i.classes.keys() {
        if !matches!(class.as_str(), "public" | "internal" | "confidential" | "restricted") {
            errs.push(err_at(
                &format!("inspect.classes.{class}"),
                None,
                "must be public, internal, confidential or restricted".into(),
            ));
        }
    }
    for (key, a) in [
        ("inspect.toxic_flow.action", i.toxic_flow.action),
        ("inspect.toxic_flow.after_injection", i.toxic_flow.after_injection),
    ] {
        if !matches!(a, InspectAction::Allow | InspectAction::Confirm | InspectAction::Block) {
            errs.push(err_at(key, None, "must be allow, confirm or block".into()));
        }
    }
    if let Some(r) = &i.remote {
        let ok = r.endpoint.starts_with("https://")
            || r.endpoint.starts_with("http://127.0.0.1")
            || r.endpoint.starts_with("http://localhost")
            || r.endpoint.starts_with("http://[::1]");
        if !ok {
            errs.push(err_at(
                "inspect.remote.endpoint",
                None,
                "must be an https:// URL (http only on loopback)".into(),
            ));
        }
        if r.timeout_ms == 0 {
            errs.push(err_at("inspect.remote.timeout_ms", None, "must be positive".into()));
        }
        for name in r.on_error_upstreams.keys() {
            if !upstreams.contains(&name.as_str()) {
                errs.push(err_at(
                    &format!("inspect.remote.on_error_upstreams.{name}"),
                    None,
                    "names no configured upstream".into(),
                ));
            }
        }
    }
}

/// Checks an upstream's flow labels.
pub(crate) fn validate_labels(key: &str, line: Option<usize>, labels: &[String], errs: &mut Vec<ConfigError>) {
    for l in labels {
        if !FLOW_LABELS.contains(&l.as_str()) {
            errs.push(err_at(
                key,
                line,
                format!("unknown label {l:?} (known: private_data, untrusted_content, external_communication)"),
            ));
        }
    }
}
