//! Spans of the request pipeline as OTLP/HTTP trace exports.
//!
//! The gateway hands over each finished trace (a request span and its
//! children) with [`TraceExporter::offer`], which only `try_send`s: a dead
//! collector costs a dropped-trace count, never request latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use palisade_config::{SecretRef, TracesConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::format::hostname;
use crate::otlp::{kv, string};
use crate::worker::{BACKOFF_MS, HttpTx, Stats, TARGET};

/// Spans sent in one export request.
const MAX_SPANS: usize = 1024;

/// Scope name of every exported span.
const SCOPE: &str = "palisade.gateway";

/// What a span stands for (OTLP span kinds the gateway uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The gateway serving a request.
    Server,
    /// A step inside the gateway.
    Internal,
    /// A call the gateway makes (the upstream).
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    /// An error status with its description; `None` leaves the status unset.
    pub error: Option<String>,
}

fn attr(a: &Attr) -> AnyValue {
    match a {
        Attr::Str(s) => string(s.as_str()),
        Attr::Int(i) => AnyValue {
            value: Some(any_value::Value::IntValue(*i)),
        },
        Attr::Bool(b) => AnyValue {
            value: Some(any_value::Value::BoolValue(*b)),
        },
    }
}

fn span(s: &SpanData) -> Span {
    let kind = match s.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Client => span::SpanKind::Client,
    };
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos.max(s.start_unix_nanos),
        attributes: s
            .attributes
            .iter()
            .map(|(k, v)| kv(*k, attr(v)))
            .collect::<Vec<KeyValue>>(),
        status: s.error.as_ref().map(|m| Status {
            message: m.clone(),
            code: status::StatusCode::Error as i32,
        }),
        // Only a sampled trace is ever exported.
        flags: 0x100 | 0x01,
        ..Default::default()
    }
}

/// One OTLP trace export request: one resource (`service.name`,
/// `service.version`, `host.name`), one scope (`palisade.gateway`).
pub fn otlp_traces_request(spans: &[SpanData], service_name: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", string(service_name)),
                    kv("service.version", string(env!("CARGO_PKG_VERSION"))),
                    kv("host.name", string(hostname())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.iter().map(span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The trace export queue and its worker.
pub struct TraceExporter {
    tx: mpsc::Sender<Vec<SpanData>>,
    stats: Arc<Stats>,
    closed: AtomicBool,
    stop: watch::Sender<bool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for TraceExporter {
    // The transport holds header secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExporter").finish_non_exhaustive()
    }
}

impl TraceExporter {
    /// Starts the worker on the current tokio runtime; `None` when no
    /// endpoint is configured. Errors name the setting, never a secret.
    pub fn start(
        cfg: &TracesConfig,
        secret: &dyn Fn(&SecretRef) -> Result<String, String>,
    ) -> Result<Option<TraceExporter>, String> {
        let Some(endpoint) = &cfg.endpoint else {
            return Ok(None);
        };
        let rt = tokio::runtime::Handle::try_current().map_err(|_| "trace export needs a tokio runtime".to_owned())?;
        crate::check_url(endpoint, cfg.allow_insecure_http).map_err(|e| format!("traces.endpoint: {e}"))?;
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let http = HttpTx {
            client: crate::http_client(timeout, endpoint.starts_with("https:"))?,
            url: endpoint.clone(),
            headers: crate::resolve_headers(&cfg.headers, secret).map_err(|e| format!("traces.{e}"))?,
            secret: None,
        };
        let stats = Arc::new(Stats::new(
            "traces".into(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Gauge::default(),
        ));
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let (stop, stopped) = watch::channel(false);
        let worker = rt.spawn(run(
            rx,
            stopped,
            http,
            Arc::clone(&stats),
            cfg.service_name.clone(),
            timeout,
        ));
        Ok(Some(TraceExporter {
            tx,
            stats,
            closed: AtomicBool::new(false),
            stop,
            worker: Mutex::new(Some(worker)),
        }))
    }

    /// Queues one finished trace. Never blocks; a full queue drops the
    /// trace's spans and counts them.
    pub fn offer(&self, spans: Vec<SpanData>) -> bool {
        let n = spans.len() as u64;
        if self.closed.load(Ordering::Acquire) {
            self.stats.dropped.inc_by(n);
            return false;
        }
        match self.tx.try_send(spans) {
            Ok(()) => {
                self.stats
                    .depth
                    .set((self.tx.max_capacity() - self.tx.capacity()) as i64);
                true
            }
            Err(_) => {
                self.stats.dropped.inc_by(n.saturating_sub(1));
                self.stats.queue_full();
                false
            }
        }
    }

    /// `(sent, dropped, failed attempts)` in spans.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.stats.sent.get(),
            self.stats.dropped.get(),
            self.stats.failures.get(),
        )
    }

    /// Registers `palisade_trace_spans_sent_total`, `palisade_trace_spans_dropped_total`,
    /// `palisade_trace_export_failures_total` and `palisade_trace_queue_depth`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "trace_spans_sent",
            "Spans delivered to the OTLP endpoint",
            self.stats.sent.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans not delivered: queue full, or given up after retries",
            self.stats.dropped.clone(),
        );
        registry.register(
            "trace_export_failures",
            "Failed trace export attempts",
            self.stats.failures.clone(),
        );
        registry.register(
            "trace_queue_depth",
            "Traces waiting for export",
            self.stats.depth.clone(),
        );
    }

    /// Stops accepting traces and lets the worker deliver what is queued
    /// until `deadline`; what is left is counted as dropped.
    pub async fn shutdown(&self, deadline: Duration) {
        self.closed.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let Some(handle) = self.worker.lock().await.take() else {
            return;
        };
        let abort = handle.abort_handle();
        if tokio::time::timeout(deadline, handle).await.is_err() {
            abort.abort();
            self.stats.dropped.inc_by(self.stats.depth.get().max(0) as u64);
        }
    }
}

/// Delivers until the queue is closed and drained: when the exporter is
/// gone or `stop` fires.
async fn run(
    mut rx: mpsc::Receiver<Vec<SpanData>>,
    mut stop: watch::Receiver<bool>,
    http: HttpTx,
    stats: Arc<Stats>,
    service: String,
    timeout: Duration,
) {
    let mut closing = false;
    loop {
        let next = tokio::select! {
            biased;
            r = rx.recv() => r,
            _ = stop.changed(), if !closing => {
                closing = true;
                rx.close();
                continue;
            }
        };
        let Some(mut batch) = next else { break };
        while batch.len() < MAX_SPANS {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        stats.depth.set(rx.len() as i64);
        deliver(&http, &stats, &service, timeout, &batch).await;
    }
}

async fn deliver(http: &HttpTx, stats: &Stats, service: &str, timeout: Duration, batch: &[SpanData]) {
    let n = batch.len() as u64;
    let body = otlp_traces_request(batch, service).encode_to_vec();
    for attempt in 0..=BACKOFF_MS.len() {
        let result = match tokio::time::timeout(timeout, http.post_protobuf(body.clone())).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
        };
        match result {
            Ok(()) => {
                stats.sent.inc_by(n);
                return;
            }
            Err(error) => {
                stats.failures.inc();
                tracing::debug!(target: TARGET, attempt = attempt + 1, %error, "trace export attempt failed");
                if let Some(ms) = BACKOFF_MS.get(attempt) {
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                } else {
                    stats.dropped.inc_by(n);
                    if stats.may_warn(&stats.last_fail_warn) {
                        tracing::warn!(target: TARGET, %error, spans = n, "trace export failed; spans given up after retries");
                    }
                }
            }
        }
    }
}
