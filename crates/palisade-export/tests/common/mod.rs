//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_config::{SecretRef, SinkConfig, SinkKind};
use palisade_export::ExportRecord;
use serde_json::{Value, json};

pub const MAC: &str = "abababababababababababababababababababababababababababababababab";
pub const PREV: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

/// A complete `tool.call` record.
pub fn sample() -> Value {
    json!({
        "seq": 42,
        "ts": "2026-11-22T10:00:00.123456Z",
        "id": "0123456789abcdef0123456789abcdef",
        "event": "tool.call",
        "level": "info",
        "msg": "tool called",
        "principal": {"iss": "https://idp.example", "sub": "alice"},
        "client": "claude",
        "session": "5e55",
        "request_id": "r-1",
        "trace_id": "0102030405060708090a0b0c0d0e0f10",
        "upstream": "github",
        "tool": "create_issue",
        "decision": "allow",
        "category": "tools",
        "rule": "r-1",
        "reason": "ok",
        "outcome": "success",
        "duration_ms": 12,
        "prev": PREV,
        "mac": MAC
    })
}

/// A record with the given event and sequence number.
pub fn event(name: &str, seq: u64) -> Arc<ExportRecord> {
    let mut v = sample();
    v["event"] = json!(name);
    v["seq"] = json!(seq);
    rec(v)
}

pub fn rec(v: Value) -> Arc<ExportRecord> {
    Arc::new(ExportRecord {
        line: v.to_string(),
        value: v,
    })
}

pub fn cfg(name: &str, kind: SinkKind) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind,
        events: Vec::new(),
        queue: 1000,
        timeout_ms: 2000,
    }
}

pub fn no_secrets(_: &SecretRef) -> Result<String, String> {
    Err("no secrets in this test".into())
}

/// Polls `f` every 10 ms for up to `secs` seconds.
pub async fn wait_until(secs: u64, f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
