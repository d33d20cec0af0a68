//! Audit on the request path (L1–L3): the per-request span whose fields every
//! audit event inherits, the durability barrier of `fsync = "always"`, and
//! what of a tool call's arguments and results is logged per data class.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use palisade_audit::{AuditLog, REQUEST_TARGET};
use palisade_config::{Config, PayloadLogging, PayloadMode};
use palisade_export::Attr;
use palisade_inspect::{Category, Engine};
use serde_json::Value;
use tracing::Instrument;
use tracing::field::Empty;

use crate::gateway::Gateway;

/// The chain handle and the payload rules of one gateway.
pub struct Audit {
    pub log: Arc<AuditLog>,
    payloads: BTreeMap<String, PayloadLogging>,
    /// Upstream → data class.
    classes: HashMap<String, String>,
    /// Secrets and PII engine for `redacted` payloads.
    redactor: Option<Arc<Engine>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("log", &self.log).finish_non_exhaustive()
    }
}

impl Audit {
    pub fn new(log: Arc<AuditLog>, config: &Config, redactor: Option<Arc<Engine>>) -> Audit {
        Audit {
            log,
            payloads: config.audit.payloads.clone(),
            classes: config
                .upstreams
                .iter()
                .map(|(n, u)| {
                    let c = &u.get_ref().classification;
                    // An unclassified server is treated as internal, as elsewhere.
                    (n.clone(), if c.is_empty() { "internal".to_owned() } else { c.clone() })
                })
                .collect(),
            redactor,
        }
    }

    fn mode(&self, upstream: &str, results: bool) -> PayloadMode {
        let class = self.classes.get(upstream).map_or("internal", String::as_str);
        self.payloads
            .get(class)
            .map_or(PayloadMode::None, |p| if results { p.results } else { p.arguments })
    }

    /// Whether anything of this upstream's arguments (or results) is logged:
    /// callers parse a payload only when it is.
    pub fn logs_payload(&self, upstream: &str, results: bool) -> bool {
        self.mode(upstream, results) != PayloadMode::None
    }

    /// A keyed digest of a payload: equal payloads match, and only a
    /// holder of the chain key can test a guess.
    pub fn digest(&self, bytes: &[u8]) -> String {
        self.log.key().keyed_hash(bytes)
    }

    /// What is logged of a payload under the upstream's class: nothing, its
    /// keyed hash, or a copy with secrets and personal data replaced.
    pub fn payload(&self, upstream: &str, results: bool, v: &Value) -> Option<Value> {
        match self.mode(upstream, results) {
            PayloadMode::None => None,
            PayloadMode::Hash => Some(Value::from(self.digest(v.to_string().as_bytes()))),
            PayloadMode::Redacted => {
                // Without an engine nothing can be vouched for: log the hash instead.
                let Some(engine) = &self.redactor else {
                    return Some(Value::from(self.digest(v.to_string().as_bytes())));
                };
                let mut copy = v.clone();
                redact_strings(&mut copy, engine);
                Some(copy)
            }
        }
    }
}

fn redact_strings(v: &mut Value, engine: &Engine) {
    match v {
        Value::String(s) => {
            if let Some(r) = palisade_inspect::redact(engine, s, &[Category::Secret, Category::Pii]) {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact_strings(x, engine)),
        Value::Object(m) => m.values_mut().for_each(|x| redact_strings(x, engine)),
        _ => {}
    }
}

/// Middleware of the MCP routes: opens the request span (common fields of
/// every audit event) and, under `fsync = "always"`, holds each part of the
/// response until the events logged before it are on disk.
pub async fn layer(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let mcp = req.uri().path().starts_with("/mcp");
    let trace = gw.controls.tracer.begin(req.headers(), mcp);
    trace.annotate(|| {
        vec![
            ("http.request.method", Attr::Str(req.method().as_str().to_owned())),
            ("url.path", Attr::Str(req.uri().path().to_owned())),
        ]
    });
    let span = tracing::info_span!(
        target: REQUEST_TARGET,
        "mcp.request",
        trace_id = %trace.trace_id_hex(),
        route = %req.uri().path(),
        http_method = %req.method(),
        principal.iss = Empty,
        principal.sub = Empty,
        client = Empty,
        session = Empty,
        request_id = Empty,
        method = Empty,
    );
    let started = std::time::Instant::now();
    let resp = crate::trace::scope(trace.clone(), next.run(req).instrument(span)).await;
    gw.controls
        .metrics
        .stages
        .observe(crate::controls::Stage::Request, started);
    trace.end(resp.status().as_u16());
    match gw.controls.audit.as_ref().map(|a| a.log.clone()) {
        Some(log) if log.sync_each_event() => hold_until_durable(resp, log),
        _ => resp,
    }
}

/// Each body frame waits for the chain to be durable up to the events
/// logged before it; if the chain failed and fails closed, the body is cut.
fn hold_until_durable(resp: Response, log: Arc<AuditLog>) -> Response {
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().then(move |chunk| {
        let log = log.clone();
        async move {
            if log.durable().await.is_err() && log.fail_closed() {
                return Err(axum::Error::new(std::io::Error::other("audit trail unavailable")));
            }
            chunk
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Records the caller on the current request span.
pub fn record_caller(caller: &crate::auth::Caller) {
    let span = tracing::Span::current();
    span.record("principal.iss", caller.principal.issuer());
    span.record("principal.sub", caller.principal.subject());
    if let Some(c) = caller.identity.as_ref().and_then(|i| i.client_id.as_deref()) {
        span.record("client", c);
    }
}

/// Records the session (its audit tag) and JSON-RPC request on the current request span.
pub fn record_request(session: Option<&str>, msg: &palisade_wire::Message) {
    let span = tracing::Span::current();
    if let Some(s) = session {
        span.record("session", s);
    }
    if let Some(id) = &msg.id {
        span.record("request_id", id.as_str());
    }
    if !msg.method().is_empty() {
        span.record("method", msg.method());
    }
    crate::trace::annotate(|| {
        let mut a = Vec::with_capacity(3);
        if !msg.method().is_empty() {
            a.push(("mcp.method.name", Attr::Str(msg.method().to_owned())));
        }
        if let Some(id) = &msg.id {
            a.push(("jsonrpc.request.id", Attr::Str(id.as_str().to_owned())));
        }
        if let Some(s) = session {
            a.push(("palisade.session", Attr::Str(s.to_owned())));
        }
        a
    });
}

/// A fired alert rule and the event that fired it, for the responder.
#[derive(Debug)]
pub struct AlertJob {
    pub rule: Arc<str>,
    pub actions: Arc<[palisade_config::AlertAction]>,
    pub group: Option<String>,
    pub count: u32,
    /// The record that completed the rule (its chain fields included).
    pub event: Value,
}

/// Sends an alert to a named sink; false when it could not be queued.
pub type Notifier = Arc<dyn Fn(&str, &Value) -> bool + Send + Sync>;

/// Carries out alert actions (L5) as they arrive. Each action is audited
/// (`response.action`), so a rule's effect is in the chain beside its cause.
pub fn spawn_responder(gw: Arc<Gateway>, mut jobs: tokio::sync::mpsc::Receiver<AlertJob>, notify: Notifier) {
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            let trigger = job.event.get("event").and_then(Value::as_str).unwrap_or("");
            tracing::warn!(
                target: "palisade::audit",
                event = "alert.fired",
                rule = &*job.rule,
                group = job.group.as_deref(),
                count = job.count,
                trigger,
                trigger_seq = job.event.get("seq").and_then(serde_json::Value::as_u64),
                severity = 9u64,
                "alert rule fired"
            );
            for action in job.actions.iter() {
                let (name, target, result) = act(&gw, &job, action, &notify).await;
                match &result {
                    Ok(()) => {
                        tracing::warn!(target: "palisade::audit", event = "response.action", action = name, rule = &*job.rule, target = %target, outcome = "done", "automated response")
                    }
                    Err(e) => {
                        tracing::error!(target: "palisade::audit", event = "response.action", action = name, rule = &*job.rule, target = %target, outcome = "failed", reason = %e, "automated response failed")
                    }
                }
            }
        }
    });
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    palisade_alerts::field(v, path).and_then(Value::as_str)
}

async fn act(
    gw: &Gateway,
    job: &AlertJob,
    action: &palisade_config::AlertAction,
    notify: &Notifier,
) -> (&'static str, String, Result<(), String>) {
    use palisade_config::AlertAction as A;
    let ev = &job.event;
    match action {
        A::Notify { sink } => {
            let alert = serde_json::json!({
                "event": "alert.fired",
                "ts": palisade_audit::chain::now(),
                "rule": &*job.rule,
                "group": job.group,
                "count": job.count,
                "trigger": ev,
            });
            let ok = notify(sink, &alert);
            (
                "notify",
                sink.clone(),
                if ok {
                    Ok(())
                } else {
                    Err("sink queue full or unknown sink".into())
                },
            )
        }
        A::RevokeSession => {
            let Some(digest) = str_at(ev, "session") else {
                return (
                    "revoke_session",
                    String::new(),
                    Err("the event names no session".into()),
                );
            };
            if gw.revoke_tagged(digest, &format!("alert:{}", job.rule)).await == 0 {
                return (
                    "revoke_session",
                    digest.to_owned(),
                    Err("no live session with this digest here".into()),
                );
            }
            ("revoke_session", digest.to_owned(), Ok(()))
        }
        A::BlockPrincipal { for_s } => match (str_at(ev, "principal.iss"), str_at(ev, "principal.sub")) {
            (Some(iss), Some(sub)) if !sub.is_empty() => {
                crate::containment::block(
                    gw,
                    &crate::containment::principal_key(iss, sub),
                    std::time::Duration::from_secs(*for_s),
                )
                .await;
                ("block_principal", format!("{iss} {sub}"), Ok(()))
            }
            _ => (
                "block_principal",
                String::new(),
                Err("the event names no principal".into()),
            ),
        },
        A::QuarantineTool | A::QuarantineServer => {
            let name = if matches!(action, A::QuarantineTool) {
                "quarantine_tool"
            } else {
                "quarantine_server"
            };
            let Some(upstream) = str_at(ev, "upstream") else {
                return (name, String::new(), Err("the event names no server".into()));
            };
            let tool = if matches!(action, A::QuarantineTool) {
                match str_at(ev, "tool") {
                    Some(t) => Some(t),
                    None => return (name, upstream.to_owned(), Err("the event names no tool".into())),
                }
            } else {
                None
            };
            let target = tool.map_or(upstream.to_owned(), |t| format!("{upstream}/{t}"));
            let by = format!("alert:{}", job.rule);
            let r = gw.integrity.quarantine(upstream, tool, &by, "automated response").await;
            (name, target, r)
        }
        A::KillSwitch => {
            crate::containment::set_kill(gw, true).await;
            ("kill_switch", "all MCP traffic".into(), Ok(()))
        }
    }
}
