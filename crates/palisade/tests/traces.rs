//! Traces (L4): W3C trace context from the client to the HTTP upstream through
//! the gateway, and the request's spans exported over OTLP/HTTP to a receiver
//! that decodes the protobuf. The upstream is the bundled rmcp test server,
//! whose `request_headers` tool returns the headers it received.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post as post_route;
use bytes::Bytes;
use common::{ACCEPT, Gateway, call, initialize, post_raw, start_http_fixture};
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{Span, span};
use prost::Message;
use serde_json::{Value, json};

type Spans = Arc<Mutex<Vec<Span>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> StatusCode {
    match ExportTraceServiceRequest::decode(body) {
        Ok(req) => {
            let mut all = spans.lock().unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    all.extend(ss.spans);
                }
            }
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post_route(collect))
        .with_state(Arc::clone(&spans));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), spans)
}

fn of_trace(spans: &Spans, trace_id: &str) -> Vec<Span> {
    spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .cloned()
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<any_value::Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .clone()
}

fn text(v: &str) -> Option<any_value::Value> {
    Some(any_value::Value::StringValue(v.into()))
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Calls `request_headers` with extra request headers; returns what the upstream saw.
async fn upstream_headers(url: &str, sid: &str, id: u64, extra: &[(&str, &str)]) -> Value {
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("mcp-protocol-version", "2025-11-25"),
        ("mcp-session-id", sid),
    ];
    h.extend_from_slice(extra);
    let r = post_raw(url, call(id, "request_headers", json!({})).to_string(), &h).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.response()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no tool result: {}", r.body))
        .to_owned();
    serde_json::from_str(&text).unwrap()
}

/// `(trace id, parent id, flags)` of a traceparent the upstream received.
fn parts(seen: &Value) -> (String, String, String) {
    let tp = seen["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {seen}"));
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(p[0], "00", "{tp}");
    assert!(p[1].len() == 32 && p[2].len() == 16 && p[1] != "0".repeat(32), "{tp}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_call_is_one_trace_from_client_to_upstream_with_a_span_per_stage() {
    let (endpoint, spans) = collector().await;
    let (_fixture, fixture_url) = start_http_fixture();
    let gw = Gateway::start(&format!(
        "[traces]\nendpoint = \"{endpoint}\"\n\n[upstreams.remote]\ntransport = \"http\"\nurl = \"{fixture_url}\"\n"
    ));
    gw.wait_ready().await;
    let url = gw.url("/mcp/remote");
    let sid = initialize(&url).await;

    // The caller's trace continues through the gateway to the upstream.
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let seen = upstream_headers(
        &url,
        &sid,
        1,
        &[("traceparent", &tp), ("tracestate", "vendor=secret-ish")],
    )
    .await;
    let (trace, upstream_parent, flags) = parts(&seen);
    assert_eq!(trace, TRACE);
    assert_ne!(
        upstream_parent, CALLER_SPAN,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(flags, "01");
    assert!(
        seen.get("tracestate").is_none(),
        "the caller's tracestate is not forwarded: {seen}"
    );

    eventually("the request's spans", || {
        let s = of_trace(&spans, TRACE);
        s.iter().any(|x| x.name == "upstream") && s.iter().any(|x| x.kind == span::SpanKind::Server as i32)
    })
    .await;
    let got = of_trace(&spans, TRACE);
    let root = got.iter().find(|s| s.kind == span::SpanKind::Server as i32).unwrap();
    assert_eq!(hex(&root.parent_span_id), CALLER_SPAN);
    assert_eq!(root.name, "tools/call");
    assert_eq!(attr(root, "mcp.method.name"), text("tools/call"));
    assert_eq!(attr(root, "gen_ai.tool.name"), text("request_headers"));
    assert_eq!(attr(root, "palisade.upstream"), text("remote"));
    assert_eq!(attr(root, "url.path"), text("/mcp/remote"));
    assert_eq!(
        attr(root, "http.response.status_code"),
        Some(any_value::Value::IntValue(200))
    );
    assert!(root.end_time_unix_nano >= root.start_time_unix_nano && root.start_time_unix_nano > 0);
    let children: Vec<&Span> = got.iter().filter(|s| s.parent_span_id == root.span_id).collect();
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    for stage in ["rate_limit", "call_checks", "upstream", "inspect"] {
        assert!(names.contains(&stage), "no {stage} span in {names:?}");
    }
    // The propagated parent is the exported span of the forwarded call (a first
    // call also relists the tools: a second upstream span).
    let up = children
        .iter()
        .find(|s| hex(&s.span_id) == upstream_parent)
        .unwrap_or_else(|| panic!("no exported span {upstream_parent}: {children:?}"));
    assert_eq!(up.name, "upstream");
    assert_eq!(up.kind, span::SpanKind::Client as i32);
    assert_eq!(attr(up, "mcp.method.name"), text("tools/call"));
    assert_eq!(attr(up, "palisade.upstream"), text("remote"));
    assert!(up.start_time_unix_nano >= root.start_time_unix_nano);
    assert!(up.end_time_unix_nano <= root.end_time_unix_nano);

    // The audit trail carries the same trace id.
    let audit_dir = gw.dir().join("audit");
    eventually("the tool.call audit record", || {
        std::fs::read_dir(&audit_dir).into_iter().flatten().flatten().any(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|t| {
                t.lines()
                    .any(|l| l.contains("\"tool.call\"") && l.contains(&format!("\"trace_id\":\"{TRACE}\"")))
            })
        })
    })
    .await;

    // Hostile or ambiguous trace context is ignored: a new trace starts.
    let hostile = [
        vec![("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01")],
        vec![("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
        vec![("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        )],
        vec![("traceparent", tp.as_str()), ("traceparent", tp.as_str())],
    ];
    let mut fresh = Vec::new();
    for (i, extra) in hostile.iter().enumerate() {
        let seen = upstream_headers(&url, &sid, 10 + i as u64, extra).await;
        let (trace, _, flags) = parts(&seen);
        assert_ne!(trace, TRACE, "{extra:?}");
        assert_eq!(flags, "01", "new traces are sampled at the default ratio");
        fresh.push(trace);
    }
    for t in &fresh {
        eventually("spans of a new trace", || {
            of_trace(&spans, t)
                .iter()
                .any(|s| s.kind == span::SpanKind::Server as i32 && s.parent_span_id.is_empty())
        })
        .await;
    }

    // A caller that does not sample: the decision is passed on, nothing is exported.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    let seen = upstream_headers(
        &url,
        &sid,
        20,
        &[("traceparent", &format!("00-{quiet}-b7ad6b7169203331-00"))],
    )
    .await;
    assert_eq!(parts(&seen).2, "00");
    // Health checks are not traced.
    let h = common::client().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    // One more sampled call, to know the exporter has passed the ones before it.
    let seen = upstream_headers(&url, &sid, 21, &[]).await;
    let last = parts(&seen).0;
    eventually("the last trace", || !of_trace(&spans, &last).is_empty()).await;
    assert!(of_trace(&spans, quiet).is_empty(), "an unsampled trace was exported");
    assert!(
        !spans
            .lock()
            .unwrap()
            .iter()
            .any(|s| attr(s, "url.path") == text("/healthz")),
        "a health check was traced"
    );
}

#[tokio::test]
async fn without_trust_or_propagation_the_caller_context_stops_at_the_gateway() {
    let (_fixture, fixture_url) = start_http_fixture();
    let gw = Gateway::start(&format!(
        "[traces]\ntrust_incoming = false\npropagate = false\n\n[upstreams.remote]\ntransport = \"http\"\nurl = \"{fixture_url}\"\n"
    ));
    gw.wait_ready().await;
    let url = gw.url("/mcp/remote");
    let sid = initialize(&url).await;
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let seen = upstream_headers(&url, &sid, 1, &[("traceparent", &tp)]).await;
    assert!(seen.get("traceparent").is_none(), "propagated although off: {seen}");
    // The audit record has a trace id of the gateway's own, not the caller's.
    let audit_dir = gw.dir().join("audit");
    eventually("the tool.call audit record", || {
        std::fs::read_dir(&audit_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.lines().any(|l| l.contains("\"tool.call\""))))
    })
    .await;
    let chain: String = std::fs::read_dir(&audit_dir)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    assert!(!chain.contains(TRACE), "the untrusted caller's trace id was recorded");
    assert!(chain.contains("\"trace_id\":\""));
}
