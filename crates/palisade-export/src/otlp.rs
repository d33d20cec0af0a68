//! Records as OpenTelemetry log records (OTLP/HTTP, protobuf).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;

use crate::ExportRecord;
use crate::format::{Level, event_name, hostname, level, timestamp};

/// Nesting kept as structure; deeper values are sent as their JSON text.
const MAX_DEPTH: usize = 8;

/// Scope name of every exported record.
pub(crate) const SCOPE: &str = "palisade.audit";

pub(crate) fn string(s: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    }
}

pub(crate) fn kv(key: impl Into<String>, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}

/// A JSON value as an AnyValue (arrays and objects kept as structure up to [`MAX_DEPTH`]).
fn any(v: &Value, depth: usize) -> AnyValue {
    let value = match v {
        Value::Null => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Value::Number(n) => Some(match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => any_value::Value::IntValue(i),
            // u64 above i64::MAX: text keeps every digit.
            _ if n.is_u64() => any_value::Value::StringValue(n.to_string()),
            (None, Some(f)) => any_value::Value::DoubleValue(f),
            (None, None) => any_value::Value::StringValue(n.to_string()),
        }),
        Value::String(s) => Some(any_value::Value::StringValue(s.clone())),
        Value::Array(a) if depth < MAX_DEPTH => Some(any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(|x| any(x, depth + 1)).collect(),
        })),
        Value::Object(m) if depth < MAX_DEPTH => Some(any_value::Value::KvlistValue(KeyValueList {
            values: m.iter().map(|(k, x)| kv(k.clone(), any(x, depth + 1))).collect(),
        })),
        deep => Some(any_value::Value::StringValue(deep.to_string())),
    };
    AnyValue { value }
}

/// Top-level fields as attributes; nested objects become dotted keys (`principal.sub`).
fn flatten(prefix: &str, v: &Value, depth: usize, out: &mut Vec<KeyValue>) {
    match v {
        Value::Null => {}
        Value::Object(m) if depth < MAX_DEPTH => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, depth + 1, out);
            }
        }
        other => out.push(kv(prefix, any(other, depth))),
    }
}

fn attributes(rec: &Value) -> Vec<KeyValue> {
    let mut out = Vec::new();
    if let Value::Object(m) = rec {
        for (k, v) in m {
            // `prev` only links the chain; `seq` and `mac` stay so a SIEM can cross-check it.
            if k != "prev" {
                flatten(k, v, 1, &mut out);
            }
        }
    }
    out
}

fn severity(rec: &Value) -> (SeverityNumber, String) {
    let n = match level(rec) {
        Some(Level::Trace) => SeverityNumber::Trace,
        Some(Level::Debug) => SeverityNumber::Debug,
        Some(Level::Info) => SeverityNumber::Info,
        Some(Level::Warn) => SeverityNumber::Warn,
        Some(Level::Error) => SeverityNumber::Error,
        None => SeverityNumber::Unspecified,
    };
    let text = match level(rec) {
        Some(_) => rec.get("level").and_then(Value::as_str).unwrap_or_default().to_owned(),
        None => String::new(),
    };
    (n, text)
}

/// 16 bytes from a 32-hex-digit `trace_id`; empty when absent, malformed or all zero.
fn trace_id(rec: &Value) -> Vec<u8> {
    let Some(s) = rec.get("trace_id").and_then(Value::as_str) else {
        return Vec::new();
    };
    match hex::decode(s) {
        Ok(b) if b.len() == 16 && b.iter().any(|&x| x != 0) => b,
        _ => Vec::new(),
    }
}

fn unix_nanos(t: Option<time::OffsetDateTime>) -> u64 {
    t.and_then(|t| u64::try_from(t.unix_timestamp_nanos()).ok())
        .unwrap_or(0)
}

fn log_record(rec: &ExportRecord, observed: u64) -> LogRecord {
    let v = &rec.value;
    let (severity_number, severity_text) = severity(v);
    LogRecord {
        time_unix_nano: unix_nanos(timestamp(v)),
        observed_time_unix_nano: observed,
        severity_number: severity_number as i32,
        severity_text,
        body: Some(string(rec.line.as_str())),
        attributes: attributes(v),
        trace_id: trace_id(v),
        event_name: event_name(v).to_owned(),
        ..Default::default()
    }
}

/// One OTLP logs export request for `records`: one resource (`service.name`,
/// `host.name`), one scope (`palisade.audit`), one log record per audit record.
///
/// Each log record carries `time_unix_nano` from `ts` (0 when unusable), the
/// severity from `level`, the exact chain line as a string body, `event_name`,
/// the 16-byte trace ID from `trace_id` when valid, and every top-level field
/// except `prev` as attributes (nested objects flattened to dotted keys).
pub fn otlp_logs_request(records: &[Arc<ExportRecord>], service_name: &str) -> ExportLogsServiceRequest {
    let observed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", string(service_name)),
                    kv("host.name", string(hostname())),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records.iter().map(|r| log_record(r, observed)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()
    }

    #[test]
    fn flattening_and_types() {
        let v = json!({
            "seq": 7, "big": u64::MAX, "f": 1.5, "ok": true, "none": null,
            "principal": {"iss": "i", "sub": "s"},
            "list": [1, "a", {"k": 2}],
            "prev": "00", "mac": "ff"
        });
        let a = attributes(&v);
        assert_eq!(find(&a, "seq"), Some(&any_value::Value::IntValue(7)));
        assert_eq!(
            find(&a, "big"),
            Some(&any_value::Value::StringValue(u64::MAX.to_string()))
        );
        assert_eq!(find(&a, "f"), Some(&any_value::Value::DoubleValue(1.5)));
        assert_eq!(find(&a, "ok"), Some(&any_value::Value::BoolValue(true)));
        assert_eq!(
            find(&a, "principal.sub"),
            Some(&any_value::Value::StringValue("s".into()))
        );
        assert_eq!(find(&a, "mac"), Some(&any_value::Value::StringValue("ff".into())));
        assert!(find(&a, "prev").is_none());
        assert!(find(&a, "none").is_none());
        assert!(matches!(find(&a, "list"), Some(any_value::Value::ArrayValue(x)) if x.values.len() == 3));
    }

    #[test]
    fn deep_nesting_is_cut_to_text() {
        let mut v = json!("leaf");
        for _ in 0..50 {
            v = json!({ "n": v });
        }
        let a = attributes(&json!({ "deep": v }));
        assert_eq!(a.len(), 1);
        assert!(a[0].key.starts_with("deep.n.n"));
        assert!(
            matches!(a[0].value.as_ref().and_then(|x| x.value.as_ref()), Some(any_value::Value::StringValue(s)) if s.contains("leaf"))
        );
    }

    #[test]
    fn trace_ids() {
        assert_eq!(
            trace_id(&json!({"trace_id": "0102030405060708090a0b0c0d0e0f10"})).len(),
            16
        );
        assert!(trace_id(&json!({"trace_id": "00000000000000000000000000000000"})).is_empty());
        assert!(trace_id(&json!({"trace_id": "xyz"})).is_empty());
        assert!(trace_id(&json!({"trace_id": 5})).is_empty());
    }
}
