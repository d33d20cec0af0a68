//! OTLP/HTTP trace export to a local receiver that decodes the protobuf.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use common::wait_until;
use http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{span, status};
use palisade_config::{SecretRef, TracesConfig};
use palisade_export::{Attr, SpanData, SpanKind, TraceExporter};
use prost::Message;

type Seen = Arc<Mutex<Vec<(HeaderMap, ExportTraceServiceRequest)>>>;

async fn traces(State((seen, status)): State<(Seen, StatusCode)>, headers: HeaderMap, body: Bytes) -> StatusCode {
    match ExportTraceServiceRequest::decode(body) {
        Ok(req) => seen.lock().unwrap().push((headers, req)),
        Err(_) => return StatusCode::BAD_REQUEST,
    }
    status
}

async fn receiver(status: StatusCode) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state((Arc::clone(&seen), status));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), seen)
}

fn config(endpoint: String) -> TracesConfig {
    let mut headers = BTreeMap::new();
    headers.insert("x-api-key".to_owned(), SecretRef::Env("OTEL_KEY".into()));
    TracesConfig {
        endpoint: Some(endpoint),
        headers,
        service_name: "gw-test".into(),
        timeout_ms: 500,
        ..Default::default()
    }
}

fn resolve(r: &SecretRef) -> Result<String, String> {
    match r {
        SecretRef::Env(n) if n == "OTEL_KEY" => Ok("k-otel".into()),
        _ => Err("unknown secret".into()),
    }
}

fn trace(n: u8) -> Vec<SpanData> {
    let root = SpanData {
        trace_id: [n; 16],
        span_id: [n; 8],
        parent_span_id: Some([0xaa; 8]),
        name: "tools/call".into(),
        kind: SpanKind::Server,
        start_unix_nanos: 1_000,
        end_unix_nanos: 9_000,
        attributes: vec![
            ("mcp.method.name", Attr::Str("tools/call".into())),
            ("http.response.status_code", Attr::Int(200)),
            ("retry", Attr::Bool(false)),
        ],
        error: None,
    };
    let up = SpanData {
        span_id: [n.wrapping_add(1); 8],
        parent_span_id: Some([n; 8]),
        name: "upstream".into(),
        kind: SpanKind::Client,
        start_unix_nanos: 2_000,
        // An end before the start is sent as the start.
        end_unix_nanos: 1_500,
        attributes: vec![],
        error: Some("upstream timed out".into()),
        ..root.clone()
    };
    vec![root, up]
}

#[tokio::test]
async fn spans_reach_the_collector_with_their_tree_and_headers() {
    let (url, seen) = receiver(StatusCode::OK).await;
    let exporter = TraceExporter::start(&config(url), &resolve).unwrap().unwrap();
    assert!(exporter.offer(trace(1)));
    assert!(exporter.offer(trace(2)));
    assert!(
        wait_until(10, || exporter.counts().0 == 4).await,
        "{:?}",
        exporter.counts()
    );
    let seen = seen.lock().unwrap().clone();
    let (headers, _) = &seen[0];
    assert_eq!(headers["x-api-key"], "k-otel");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let spans: Vec<_> = seen
        .iter()
        .flat_map(|(_, r)| r.resource_spans.iter())
        .inspect(|rs| {
            let res = rs.resource.as_ref().unwrap();
            assert!(res.attributes.iter().any(|a| a.key == "service.name"
                && a.value.as_ref().and_then(|v| v.value.as_ref())
                    == Some(&any_value::Value::StringValue("gw-test".into()))));
        })
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .cloned()
        .collect();
    assert_eq!(spans.len(), 4);
    let root = spans.iter().find(|s| s.span_id == vec![1; 8]).unwrap();
    assert_eq!(root.trace_id, vec![1; 16]);
    assert_eq!(root.parent_span_id, vec![0xaa; 8]);
    assert_eq!(root.kind, span::SpanKind::Server as i32);
    assert_eq!((root.start_time_unix_nano, root.end_time_unix_nano), (1_000, 9_000));
    assert!(root.status.is_none());
    assert!(root.attributes.iter().any(|a| a.key == "http.response.status_code"
        && a.value.as_ref().and_then(|v| v.value.as_ref()) == Some(&any_value::Value::IntValue(200))));
    let up = spans
        .iter()
        .find(|s| s.span_id == vec![2; 8] && s.trace_id == vec![1; 16])
        .unwrap();
    assert_eq!(up.parent_span_id, vec![1; 8]);
    assert_eq!(up.kind, span::SpanKind::Client as i32);
    assert_eq!(up.end_time_unix_nano, up.start_time_unix_nano);
    let st = up.status.as_ref().unwrap();
    assert_eq!(st.code, status::StatusCode::Error as i32);
    assert_eq!(st.message, "upstream timed out");
    exporter.shutdown(Duration::from_secs(1)).await;
    assert!(!exporter.offer(trace(3)), "closed after shutdown");
}

#[tokio::test]
async fn a_dead_collector_never_blocks_and_drops_are_counted() {
    // A port with nothing listening: every attempt fails fast.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = TracesConfig {
        queue: 4,
        ..config(format!("http://{dead}/v1/traces"))
    };
    let exporter = TraceExporter::start(&cfg, &resolve).unwrap().unwrap();
    let mut accepted = 0;
    for i in 0..10_000u32 {
        if exporter.offer(trace((i % 200) as u8)) {
            accepted += 1;
        }
    }
    // `offer` is synchronous and only try_sends: it returned 10 000 times while
    // the worker was stuck retrying the dead endpoint.
    assert!(accepted <= 6, "the queue is bounded: {accepted}");
    let (sent, dropped, _) = exporter.counts();
    assert_eq!(sent, 0);
    assert!(dropped >= 2 * (10_000 - 6), "{dropped}");
    // Given up after the retries: the failures are counted too.
    assert!(
        wait_until(10, || exporter.counts().2 >= 4).await,
        "{:?}",
        exporter.counts()
    );
    exporter.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_refusing_collector_is_retried_then_given_up() {
    let (url, seen) = receiver(StatusCode::SERVICE_UNAVAILABLE).await;
    let exporter = TraceExporter::start(&config(url), &resolve).unwrap().unwrap();
    exporter.offer(trace(7));
    assert!(
        wait_until(10, || exporter.counts().1 == 2).await,
        "{:?}",
        exporter.counts()
    );
    assert_eq!(seen.lock().unwrap().len(), 4, "one try and three retries");
    assert_eq!(exporter.counts().0, 0);
}

#[tokio::test]
async fn bad_settings_are_refused_without_echoing_secrets() {
    assert!(
        TraceExporter::start(&TracesConfig::default(), &resolve)
            .unwrap()
            .is_none(),
        "no endpoint, no exporter"
    );
    let e = TraceExporter::start(&config("http://otel.example/v1/traces".into()), &resolve).unwrap_err();
    assert!(e.contains("allow_insecure_http"), "{e}");
    let mut cfg = config("http://127.0.0.1:9/v1/traces".into());
    cfg.headers.insert("x-other".into(), SecretRef::Env("MISSING".into()));
    let e = TraceExporter::start(&cfg, &resolve).unwrap_err();
    assert!(e.contains("x-other") && !e.contains("k-otel"), "{e}");
    let mut cfg = config("http://127.0.0.1:9/v1/traces".into());
    cfg.headers
        .insert("bad header".into(), SecretRef::Env("OTEL_KEY".into()));
    assert!(TraceExporter::start(&cfg, &resolve).is_err());
}
