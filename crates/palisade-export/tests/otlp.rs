//! OTLP/HTTP logs to a local receiver that decodes the protobuf.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use common::{cfg, event, wait_until};
use http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
use palisade_config::{SecretRef, SinkKind};
use palisade_export::Sinks;
use prost::Message;

#[derive(Default)]
struct Seen {
    requests: Vec<(HeaderMap, ExportLogsServiceRequest)>,
    hits: usize,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Seen>>,
    status: StatusCode,
}

async fn logs(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut seen = r.seen.lock().unwrap();
    seen.hits += 1;
    match ExportLogsServiceRequest::decode(body) {
        Ok(req) => seen.requests.push((headers, req)),
        Err(_) => return StatusCode::BAD_REQUEST,
    }
    r.status
}

async fn receiver(status: StatusCode) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new().route("/v1/logs", post(logs)).with_state(Receiver {
        seen: Arc::clone(&seen),
        status,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/logs"), seen)
}

fn otlp(endpoint: String) -> SinkKind {
    let mut headers = BTreeMap::new();
    headers.insert("x-api-key".to_owned(), SecretRef::Env("OTLP_KEY".into()));
    SinkKind::Otlp {
        endpoint,
        headers,
        allow_insecure_http: false,
    }
}

fn resolve(r: &SecretRef) -> Result<String, String> {
    match r {
        SecretRef::Env(n) if n == "OTLP_KEY" => Ok("k-123".into()),
        _ => Err("unknown secret".into()),
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()
}

fn text(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_decoded_with_attributes() {
    let (url, seen) = receiver(StatusCode::OK).await;
    let sinks = Sinks::start(&[cfg("otlp", otlp(url))], &resolve).unwrap();
    let mut warn = common::sample();
    warn["level"] = serde_json::json!("warn");
    warn["seq"] = serde_json::json!(3);
    let records = [event("tool.call", 1), event("auth.failure", 2), common::rec(warn)];
    for r in &records {
        sinks.offer(r);
    }
    assert!(
        wait_until(10, || sinks.counts("otlp") == Some((3, 0, 0))).await,
        "{:?}",
        sinks.counts("otlp")
    );

    let requests = std::mem::take(&mut seen.lock().unwrap().requests);
    let mut logs = Vec::new();
    for (headers, req) in &requests {
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(headers["x-api-key"], "k-123");
        assert_eq!(req.resource_logs.len(), 1);
        let rl = &req.resource_logs[0];
        let res = rl.resource.as_ref().unwrap();
        assert_eq!(attr(&res.attributes, "service.name"), Some(&text("palisade")));
        assert!(attr(&res.attributes, "host.name").is_some());
        assert_eq!(rl.scope_logs[0].scope.as_ref().unwrap().name, "palisade.audit");
        logs.extend(rl.scope_logs[0].log_records.iter().cloned());
    }
    assert_eq!(logs.len(), 3);
    for (l, r) in logs.iter().zip(&records) {
        assert_eq!(
            l.body,
            Some(AnyValue {
                value: Some(text(&r.line))
            })
        );
        assert_eq!(l.event_name, r.value["event"].as_str().unwrap());
        // 2026-11-22T10:00:00.123456Z
        assert_eq!(l.time_unix_nano, 1_795_341_600_123_456_000);
        assert!(l.observed_time_unix_nano > 0);
        assert_eq!(l.trace_id, (1u8..=16).collect::<Vec<_>>());
        assert_eq!(attr(&l.attributes, "principal.sub"), Some(&text("alice")));
        assert_eq!(attr(&l.attributes, "principal.iss"), Some(&text("https://idp.example")));
        assert_eq!(attr(&l.attributes, "mac"), Some(&text(common::MAC)));
        assert_eq!(attr(&l.attributes, "upstream"), Some(&text("github")));
        assert_eq!(
            attr(&l.attributes, "duration_ms"),
            Some(&any_value::Value::IntValue(12))
        );
        assert_eq!(
            attr(&l.attributes, "seq"),
            Some(&any_value::Value::IntValue(r.value["seq"].as_i64().unwrap()))
        );
        assert!(attr(&l.attributes, "prev").is_none());
    }
    assert_eq!(logs[0].severity_number, SeverityNumber::Info as i32);
    assert_eq!(logs[0].severity_text, "info");
    assert_eq!(logs[2].severity_number, SeverityNumber::Warn as i32);
    assert_eq!(logs[2].severity_text, "warn");
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_records_are_batched() {
    let (url, seen) = receiver(StatusCode::OK).await;
    let mut c = cfg("otlp", otlp(url));
    c.queue = 5000;
    let sinks = Sinks::start(&[c], &resolve).unwrap();
    for seq in 0..2000 {
        sinks.offer(&event("tool.call", seq));
    }
    assert!(
        wait_until(20, || sinks.counts("otlp") == Some((2000, 0, 0))).await,
        "{:?}",
        sinks.counts("otlp")
    );
    let requests = std::mem::take(&mut seen.lock().unwrap().requests);
    let sizes: Vec<usize> = requests
        .iter()
        .map(|(_, r)| r.resource_logs[0].scope_logs[0].log_records.len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 2000);
    assert!(sizes.iter().all(|&n| n <= 512), "{sizes:?}");
    // Offered faster than delivered: some requests carry many records.
    assert!(sizes.len() < 2000 && sizes.iter().any(|&n| n > 1), "{sizes:?}");
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_dropped() {
    let (url, seen) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let sinks = Sinks::start(&[cfg("otlp", otlp(url))], &resolve).unwrap();
    sinks.offer(&event("tool.call", 1));
    assert!(
        wait_until(15, || sinks.counts("otlp") == Some((0, 1, 4))).await,
        "{:?}",
        sinks.counts("otlp")
    );
    // One first attempt and three retries reached the receiver.
    assert_eq!(seen.lock().unwrap().hits, 4);
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_configuration_is_refused_without_the_secret() {
    let kind = otlp("http://127.0.0.1:9/v1/logs".into());
    let e = Sinks::start(&[cfg("otlp", kind)], &|_| Err("OTLP_KEY is not set".into())).unwrap_err();
    assert!(e.contains("otlp") && e.contains("OTLP_KEY is not set"), "{e}");

    let kind = otlp("http://127.0.0.1:9/v1/logs".into());
    let e = Sinks::start(&[cfg("otlp", kind)], &|_| Ok("bad\nvalue-s3cret".into())).unwrap_err();
    assert!(!e.contains("s3cret"), "{e}");

    let kind = otlp("http://collector.example/v1/logs".into());
    assert!(Sinks::start(&[cfg("otlp", kind)], &resolve).is_err());

    // Duplicate names.
    let a = cfg("same", otlp("http://127.0.0.1:9/v1/logs".into()));
    assert!(Sinks::start(&[a.clone(), a], &resolve).is_err());
}

#[test]
fn start_needs_a_runtime() {
    assert!(Sinks::start(&[], &resolve).is_err());
}
