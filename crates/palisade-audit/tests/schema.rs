//! `docs/audit-event.schema.json` against a real chain: every line the writer
//! and the tracing layer produce validates, and malformed records do not.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_audit::writer::segments;
use palisade_audit::{AuditKey, AuditLog, Fsync, Options};
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;

fn key() -> AuditKey {
    AuditKey::new(&[42u8; 32]).unwrap()
}

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit-event.schema.json")
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_path()).expect("the schema file");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the schema is not a valid JSON Schema"
    );
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .expect("the schema compiles")
}

fn errors(v: &jsonschema::Validator, record: &Value) -> Vec<String> {
    v.iter_errors(record)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn opts(dir: &Path) -> Options {
    let mut o = Options::new(dir);
    o.fsync = Fsync::Always;
    o
}

/// Events as the gateway logs them, through the layer, inside a request span.
fn log_events(log: &Arc<AuditLog>, round: u64) {
    let layer = palisade_audit::AuditLayer::new(log.clone(), None);
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        let span = tracing::info_span!(
            target: "palisade::request",
            "mcp.request",
            trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
            route = "/mcp/files",
            http_method = "POST",
            principal.iss = tracing::field::Empty,
            principal.sub = tracing::field::Empty,
            client = tracing::field::Empty,
            session = tracing::field::Empty,
            request_id = tracing::field::Empty,
            method = tracing::field::Empty,
        );
        let _g = span.enter();
        span.record("principal.iss", "https://idp.example.com");
        span.record("principal.sub", "alice");
        span.record("client", "claude-desktop");
        span.record("session", palisade_audit::session_digest("a-session-id").as_str());
        span.record("request_id", round.to_string().as_str());
        span.record("method", "tools/call");
        tracing::info!(
            target: "palisade::audit",
            event = "session.open",
            route = "files",
            version = "2025-11-25",
            upstreams = 1u64,
            "session opened"
        );
        tracing::debug!(
            target: "palisade::audit",
            event = "authz.allow",
            decision = "allow",
            issuer = "https://idp.example.com",
            subject = "alice",
            action = "call_tool",
            target = "files/read",
            policies = "permit-read",
            "allowed"
        );
        tracing::info!(
            target: "palisade::audit",
            event = "authz.deny",
            decision = "deny",
            issuer = "https://idp.example.com",
            subject = "alice",
            action = "call_tool",
            target = "files/delete",
            policies = "forbid-delete",
            "denied"
        );
        tracing::info!(
            target: "palisade::audit",
            event = "tool.call",
            upstream = "files",
            tool = "read",
            rpc_method = "tools/call",
            outcome = "ok",
            duration_ms = 12.5f64,
            params_digest = "0123456789abcdef0123456789abcdef",
            arguments_json = "{\"path\":\"[REDACTED:pii:email]\"}",
            "request forwarded"
        );
        tracing::info!(
            target: "palisade::audit",
            event = "mcp.request",
            upstream = "files",
            rpc_method = "resources/read",
            outcome = "upstream_error",
            duration_ms = 3.0f64,
            "request forwarded"
        );
        tracing::info!(
            target: "palisade::audit",
            event = "inspect.detection",
            direction = "to_client",
            upstream = "files",
            target = "read",
            category = "prompt_injection",
            rule = "injection.override",
            pointer = "/content/0/text",
            start = 10u64,
            end = 40u64,
            score = 0.93f64,
            hash = "00112233445566778899aabb",
            action = "block",
            "content finding"
        );
        tracing::warn!(
            target: "palisade::audit",
            event = "inspect.toxic_flow",
            labels = "private,untrusted,egress",
            touched = "private,untrusted",
            injection = true,
            action = "confirm",
            "toxic flow"
        );
        tracing::info!(
            target: "palisade::audit",
            event = "rate.limited",
            limit = "user",
            decision = "deny",
            retry_after_ms = 250u64,
            "rate limit hit"
        );
        tracing::info!(
            target: "palisade::audit",
            event = "session.close",
            reason = "client",
            "session deleted by client"
        );
    });
    // Outside any request span, as the responder and the admin API log.
    let layer = palisade_audit::AuditLayer::new(log.clone(), None);
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::warn!(
            target: "palisade::audit",
            event = "auth.failure",
            reason = "bad_signature",
            endpoint = "/mcp/files",
            "request refused: invalid token signature"
        );
        tracing::warn!(
            target: "palisade::audit",
            event = "alert.fired",
            rule = "auth-burst",
            count = 5u64,
            trigger = "auth.failure",
            trigger_seq = 3u64,
            severity = 9u64,
            "alert rule fired"
        );
        tracing::warn!(
            target: "palisade::audit",
            event = "response.action",
            action = "kill_switch",
            rule = "auth-burst",
            target = "all MCP traffic",
            outcome = "done",
            "automated response"
        );
        tracing::warn!(
            target: "palisade::audit",
            event = "admin.action",
            action = "killswitch.lift",
            target = "all MCP traffic",
            outcome = "done",
            issuer = "https://idp.example.com",
            subject = "root",
            "admin action"
        );
        tracing::warn!(
            target: "palisade::audit",
            event = "admin.action",
            action = "killswitch.set",
            target = "",
            outcome = "invalid",
            issuer = "https://idp.example.com",
            subject = "root",
            "admin action"
        );
        tracing::warn!(
            target: "palisade::audit",
            event = "admin.denied",
            path = "/admin/killswitch",
            reason = "no_auth_configured",
            "admin call refused"
        );
        tracing::warn!(
            target: "palisade::audit",
            event = "tool.held",
            upstream = "files",
            kind = "tool",
            tool = "read",
            state = "held_changed",
            digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            approved = "",
            findings = "",
            diff = "- old\n+ new",
            "ALERT: tool \"read\" on files held"
        );
    });
}

/// Every line of every segment and of the checkpoint file.
fn all_lines(dir: &Path) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut files: Vec<PathBuf> = segments(dir).unwrap().into_iter().map(|(_, p)| p).collect();
    files.push(dir.join("checkpoints.jsonl"));
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for (i, l) in std::fs::read_to_string(&f).unwrap().lines().enumerate() {
            out.push((format!("{name}:{}", i + 1), l.to_owned()));
        }
    }
    out
}

/// Writes a chain with rotation, a restart after a torn write, and events
/// through the layer; returns its folder.
fn write_chain() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for round in 0..2u64 {
        let mut o = opts(d.path());
        o.segment_max_bytes = 4096;
        let log = AuditLog::open(o, key(), None).unwrap();
        for _ in 0..4 {
            log_events(&log, round);
        }
        log.shutdown();
        if round == 0 {
            // A crash in the middle of a write: cut at the next start.
            let (_, last) = segments(d.path()).unwrap().pop().unwrap();
            let mut text = std::fs::read_to_string(&last).unwrap();
            text.push_str("{\"seq\":999,\"ts\":\"2026-");
            std::fs::write(&last, text).unwrap();
        }
    }
    d
}

#[test]
fn every_line_of_a_real_chain_validates() {
    let v = validator();
    let d = write_chain();
    let lines = all_lines(d.path());
    let mut seen = std::collections::BTreeSet::new();
    let mut reasons = std::collections::BTreeSet::new();
    for (at, line) in &lines {
        let record: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
        let errs = errors(&v, &record);
        assert!(errs.is_empty(), "{at}: {line}\n{errs:#?}");
        let event = record["event"].as_str().unwrap().to_owned();
        if event == "audit.segment" {
            reasons.insert(record["reason"].as_str().unwrap().to_owned());
        }
        seen.insert(event);
    }
    // The chain holds what the test meant to cover.
    for e in [
        "audit.segment",
        "audit.checkpoint",
        "session.open",
        "authz.allow",
        "authz.deny",
        "tool.call",
        "mcp.request",
        "inspect.detection",
        "inspect.toxic_flow",
        "rate.limited",
        "auth.failure",
        "alert.fired",
        "response.action",
        "admin.action",
        "admin.denied",
        "tool.held",
        "session.close",
    ] {
        assert!(seen.contains(e), "no {e} in the chain: {seen:?}");
    }
    assert!(reasons.contains("start") && reasons.contains("size"), "{reasons:?}");
    assert!(
        lines.iter().any(|(_, l)| l.contains("\"torn_bytes\":")),
        "the restart after a torn write is recorded"
    );
    // Span fields reached the records.
    let call: Value = lines
        .iter()
        .map(|(_, l)| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["event"] == "tool.call")
        .unwrap();
    assert_eq!(call["principal"]["sub"], "alice");
    assert_eq!(call["session"], palisade_audit::session_digest("a-session-id"));
    assert_eq!(call["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(call["arguments"]["path"], "[REDACTED:pii:email]");
    // rate.limited takes its principal from the span, like every event.
    let limited: Value = lines
        .iter()
        .map(|(_, l)| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["event"] == "rate.limited")
        .unwrap();
    assert_eq!(limited["principal"]["sub"], "alice");
    assert_eq!(limited["level"], "info");
    // And the chain the schema accepted also verifies.
    let r = palisade_audit::verify::verify(d.path(), &key(), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
}

/// A valid record from the chain, changed by `f`, must fail validation.
fn must_fail(v: &jsonschema::Validator, base: &Value, what: &str, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut r = base.clone();
    f(r.as_object_mut().unwrap());
    assert!(!v.is_valid(&r), "{what}: accepted {r}");
}

#[test]
fn malformed_records_are_refused() {
    let v = validator();
    let d = write_chain();
    let records: Vec<Value> = all_lines(d.path())
        .iter()
        .map(|(_, l)| serde_json::from_str(l).unwrap())
        .collect();
    let find = |e: &str| records.iter().find(|r| r["event"] == e).unwrap().clone();
    let call = find("tool.call");
    let segment = find("audit.segment");
    let checkpoint = find("audit.checkpoint");
    let limited = find("rate.limited");
    let detection = find("inspect.detection");
    let deny = find("authz.deny");
    let admin = find("admin.action");
    for r in [&call, &segment, &checkpoint, &limited, &detection, &deny, &admin] {
        assert!(v.is_valid(r), "{r}");
    }

    must_fail(&v, &call, "missing mac", |m| {
        m.remove("mac");
    });
    must_fail(&v, &call, "missing prev", |m| {
        m.remove("prev");
    });
    must_fail(&v, &call, "seq 0", |m| {
        m.insert("seq".into(), json!(0));
    });
    must_fail(&v, &call, "uppercase mac", |m| {
        let mac = m["mac"].as_str().unwrap().to_ascii_uppercase();
        m.insert("mac".into(), json!(mac));
    });
    for ts in [
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00.000001+00:00",
        "2026-11-22 10:00:00.000001Z",
        "2026-13-22T10:00:00.000001Z",
        "2026-11-22T10:00:00.0000001Z",
    ] {
        must_fail(&v, &call, &format!("ts {ts}"), |m| {
            m.insert("ts".into(), json!(ts));
        });
    }
    for event in ["Tool.Call", "TOOL.CALL", "toolcall", "tool.", ".call", "tool call"] {
        must_fail(&v, &call, &format!("event {event}"), |m| {
            m.insert("event".into(), json!(event));
        });
    }
    for session in ["A1B2C3D4E5F6", "a1b2c3", "a1b2c3d4e5f6a7", "the-session-id"] {
        must_fail(&v, &call, &format!("session {session}"), |m| {
            m.insert("session".into(), json!(session));
        });
    }
    must_fail(&v, &call, "bad level", |m| {
        m.insert("level".into(), json!("user"));
    });
    must_fail(&v, &call, "principal as a string", |m| {
        m.insert("principal".into(), json!("https://idp.example.com|alice"));
    });
    must_fail(&v, &call, "negative duration", |m| {
        m.insert("duration_ms".into(), json!(-1));
    });
    must_fail(&v, &call, "tool.call without tool", |m| {
        m.remove("tool");
    });
    must_fail(&v, &call, "unknown outcome", |m| {
        m.insert("outcome".into(), json!("fine"));
    });
    must_fail(&v, &segment, "audit.segment without kid", |m| {
        m.remove("kid");
    });
    must_fail(&v, &segment, "audit.segment with an unknown reason", |m| {
        m.insert("reason".into(), json!("rotated"));
    });
    must_fail(&v, &segment, "audit.segment of another format", |m| {
        m.insert("format".into(), json!("palisade-audit/2"));
    });
    must_fail(&v, &checkpoint, "checkpoint without head", |m| {
        m.remove("head");
    });
    must_fail(&v, &checkpoint, "checkpoint with an extra field", |m| {
        m.insert("note".into(), json!("x"));
    });
    must_fail(&v, &limited, "rate.limited with an unknown limit", |m| {
        m.insert("limit".into(), json!("galaxy"));
    });
    must_fail(&v, &limited, "rate.limited with the limit as its level", |m| {
        m.insert("level".into(), json!("user"));
    });
    must_fail(&v, &limited, "rate.limited with a string principal", |m| {
        m.insert("principal".into(), json!("https://idp.example.com|alice"));
    });
    must_fail(&v, &limited, "rate.limited without decision", |m| {
        m.remove("decision");
    });
    must_fail(&v, &deny, "authz.deny with decision allow", |m| {
        m.insert("decision".into(), json!("allow"));
    });
    must_fail(&v, &detection, "inspect.detection with a capitalised action", |m| {
        m.insert("action".into(), json!("Block"));
    });
    must_fail(&v, &admin, "admin.action with an unknown outcome", |m| {
        m.insert("outcome".into(), json!("ok"));
    });
    assert!(!v.is_valid(&json!("not an object")));
    assert!(!v.is_valid(&json!([call])));
}
