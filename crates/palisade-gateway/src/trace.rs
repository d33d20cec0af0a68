//! Request traces (L4): W3C trace context in and out, and, when an OTLP
//! endpoint is configured, one span per MCP request with a child per
//! pipeline stage and per upstream call.
//!
//! The trace of a request travels in a task-local, so stage timers and the
//! upstream call find it without threading it through every signature;
//! tasks spawned for a request take it along with [`carry`]. When the last
//! holder drops it, its spans go to the exporter's bounded queue.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_config::TracesConfig;
use palisade_export::{Attr, SpanData, SpanKind, TraceExporter};

use crate::controls::Stage;

tokio::task_local! {
    static CURRENT: Option<Arc<RequestTrace>>;
}

/// Children recorded per request at most (fan-out over many upstreams).
const MAX_CHILDREN: usize = 64;

/// A caller's W3C `traceparent`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Parses a `traceparent` value (W3C Trace Context): lower-case hex, no
/// all-zero ids, version `ff` invalid; a later version may append fields
/// after a `-`, which are ignored. `None` for anything else.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let b = value.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = lower_hex::<1>(value.get(0..2)?)?[0];
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = lower_hex::<16>(value.get(3..35)?)?;
    let parent_id = lower_hex::<8>(value.get(36..52)?)?;
    let flags = lower_hex::<1>(value.get(53..55)?)?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // A failed draw leaves zeros; an all-zero id is then replaced by a fixed non-zero one.
    let _ = aws_lc_rs::rand::fill(&mut b);
    if b.iter().all(|&x| x == 0) {
        b[N - 1] = 1;
    }
    b
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// How requests are traced: sampling, trust in callers, export.
pub struct Tracer {
    exporter: Option<Arc<TraceExporter>>,
    /// New traces are sampled when the low 8 bytes of their id are below this.
    bound: u64,
    always: bool,
    trust_incoming: bool,
    propagate: bool,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("export", &self.exporter.is_some())
            .field("propagate", &self.propagate)
            .finish_non_exhaustive()
    }
}

impl Default for Tracer {
    fn default() -> Self {
        Tracer::new(&TracesConfig::default(), None)
    }
}

impl Tracer {
    pub fn new(cfg: &TracesConfig, exporter: Option<Arc<TraceExporter>>) -> Self {
        let ratio = cfg.sample_ratio.clamp(0.0, 1.0);
        Tracer {
            exporter,
            // `as` saturates; 1.0 is handled by `always`.
            bound: (ratio * u64::MAX as f64) as u64,
            always: ratio >= 1.0,
            trust_incoming: cfg.trust_incoming,
            propagate: cfg.propagate,
        }
    }

    /// The exporter, for its metrics and shutdown.
    pub fn exporter(&self) -> Option<&Arc<TraceExporter>> {
        self.exporter.as_ref()
    }

    fn sampled(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        self.always || u64::from_be_bytes(low) < self.bound
    }

    /// The trace of a new request: the caller's when trusted and valid, else a
    /// new one. Spans are recorded only for MCP routes (`record`), when sampled
    /// and exported.
    pub fn begin(&self, headers: &http::HeaderMap, record: bool) -> Arc<RequestTrace> {
        let incoming = if self.trust_incoming {
            let mut values = headers.get_all("traceparent").iter();
            // Two headers are ambiguous: trust neither.
            match (values.next(), values.next()) {
                (Some(v), None) => v.to_str().ok().and_then(parse_traceparent),
                _ => None,
            }
        } else {
            None
        };
        let (trace_id, parent, sampled) = match incoming {
            Some(p) => (p.trace_id, Some(p.parent_id), p.sampled),
            None => {
                let id = random::<16>();
                (id, None, self.sampled(&id))
            }
        };
        let recorder = match &self.exporter {
            Some(e) if record && sampled => Some(Recorder {
                exporter: Arc::clone(e),
                start_unix: unix_nanos(SystemTime::now()),
                start: Instant::now(),
                spans: Mutex::new(Recorded::default()),
            }),
            _ => None,
        };
        Arc::new(RequestTrace {
            trace_id,
            span_id: random::<8>(),
            parent,
            sampled,
            propagate: self.propagate,
            recorder,
        })
    }
}

/// What one request has recorded so far.
#[derive(Default)]
struct Recorded {
    children: Vec<Child>,
    end: Option<Duration>,
    attributes: Vec<(&'static str, Attr)>,
    error: Option<String>,
}

struct Child {
    span_id: [u8; 8],
    name: &'static str,
    kind: SpanKind,
    start: Duration,
    end: Duration,
    attributes: Vec<(&'static str, Attr)>,
    error: Option<String>,
}

struct Recorder {
    exporter: Arc<TraceExporter>,
    start_unix: u64,
    start: Instant,
    spans: Mutex<Recorded>,
}

impl Recorder {
    fn offset(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.start)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Recorded) -> R) -> R {
        f(&mut self.spans.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The trace of one request.
pub struct RequestTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    propagate: bool,
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("trace_id", &self.trace_id_hex())
            .field("recording", &self.recorder.is_some())
            .finish_non_exhaustive()
    }
}

impl RequestTrace {
    /// The trace id as 32 lower-case hex digits (as audit events carry it).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Whether spans of this request are being recorded for export.
    pub fn recording(&self) -> bool {
        self.recorder.is_some()
    }

    /// Marks the end of the request span (the response head) and its HTTP status.
    pub fn end(&self, status: u16) {
        if let Some(r) = &self.recorder {
            let end = r.offset(Instant::now());
            r.with(|s| {
                s.end = Some(end);
                s.attributes
                    .push(("http.response.status_code", Attr::Int(i64::from(status))));
                if status >= 500 {
                    s.error = Some(format!("HTTP {status}"));
                }
            });
        }
    }

    /// Adds attributes to the request span.
    pub fn annotate(&self, attrs: impl FnOnce() -> Vec<(&'static str, Attr)>) {
        if let Some(r) = &self.recorder {
            let mut more = attrs();
            r.with(|s| s.attributes.append(&mut more));
        }
    }

    fn child(&self, child: Child) {
        if let Some(r) = &self.recorder {
            r.with(|s| {
                if s.children.len() < MAX_CHILDREN {
                    s.children.push(child);
                }
            });
        }
    }

    fn spans(&self, r: &Recorder) -> Vec<SpanData> {
        let mut rec = std::mem::take(&mut *r.spans.lock().unwrap_or_else(PoisonError::into_inner));
        let at = |d: Duration| {
            r.start_unix
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let last_child = rec.children.iter().map(|c| c.end).max().unwrap_or_default();
        let end = rec.end.unwrap_or_else(|| r.offset(Instant::now())).max(last_child);
        let name = rec
            .attributes
            .iter()
            .find_map(|(k, v)| match (k, v) {
                (&"mcp.method.name", Attr::Str(m)) => Some(m.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "mcp.request".to_owned());
        let mut out = Vec::with_capacity(rec.children.len() + 1);
        out.push(SpanData {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent,
            name,
            kind: SpanKind::Server,
            start_unix_nanos: r.start_unix,
            end_unix_nanos: at(end),
            attributes: std::mem::take(&mut rec.attributes),
            error: rec.error.take(),
        });
        for c in rec.children {
            out.push(SpanData {
                trace_id: self.trace_id,
                span_id: c.span_id,
                parent_span_id: Some(self.span_id),
                name: c.name.to_owned(),
                kind: c.kind,
                start_unix_nanos: at(c.start),
                end_unix_nanos: at(c.end),
                attributes: c.attributes,
                error: c.error,
            });
        }
        out
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        if let Some(r) = &self.recorder {
            let spans = self.spans(r);
            r.exporter.offer(spans);
        }
    }
}

/// Runs `fut` with `trace` as the current request's trace.
pub fn scope<F: Future>(trace: Arc<RequestTrace>, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(Some(trace), fut)
}

/// Takes the current request's trace (if any) into a future about to be spawned.
pub fn carry<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(current(), fut)
}

fn current() -> Option<Arc<RequestTrace>> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

fn with_current(f: impl FnOnce(&RequestTrace)) {
    let _ = CURRENT.try_with(|t| {
        if let Some(t) = t {
            f(t);
        }
    });
}

/// Records a finished pipeline stage as a child span (no-op unless recording).
pub fn stage(stage: Stage, started: Instant) {
    if matches!(stage, Stage::Request | Stage::Upstream) {
        // The request span is the parent; upstream calls have their own guard.
        return;
    }
    with_current(|t| {
        if let Some(r) = &t.recorder {
            t.child(Child {
                span_id: random::<8>(),
                name: stage.as_str(),
                kind: SpanKind::Internal,
                start: r.offset(started),
                end: r.offset(Instant::now()),
                attributes: Vec::new(),
                error: None,
            });
        }
    });
}

/// Adds attributes to the current request span (no-op unless recording).
pub fn annotate(attrs: impl FnOnce() -> Vec<(&'static str, Attr)>) {
    with_current(|t| t.annotate(attrs));
}

/// An upstream call in flight: its span id is what the upstream sees as
/// the parent in `traceparent`.
#[derive(Debug)]
pub struct UpstreamSpan {
    trace: Option<Arc<RequestTrace>>,
    span_id: [u8; 8],
    started: Instant,
    upstream: String,
    method: String,
}

/// Starts the span of an upstream call in the current request (an inert
/// guard outside a request).
pub fn upstream_call(upstream: &str, method: &str) -> UpstreamSpan {
    let trace = current();
    let recording = trace.as_ref().is_some_and(|t| t.recording());
    UpstreamSpan {
        trace,
        span_id: random::<8>(),
        started: Instant::now(),
        // Names are kept only for a span that will be exported.
        upstream: if recording { upstream.to_owned() } else { String::new() },
        method: if recording { method.to_owned() } else { String::new() },
    }
}

impl UpstreamSpan {
    /// The `traceparent` header for an HTTP upstream; `None` outside a
    /// request or with `propagate = false`.
    pub fn traceparent(&self) -> Option<(http::HeaderName, http::HeaderValue)> {
        let t = self.trace.as_ref().filter(|t| t.propagate)?;
        let value = format!(
            "00-{}-{}-{}",
            hex::encode(t.trace_id),
            hex::encode(self.span_id),
            if t.sampled { "01" } else { "00" }
        );
        Some((
            http::HeaderName::from_static("traceparent"),
            http::HeaderValue::from_str(&value).ok()?,
        ))
    }

    /// Ends the span; `error` describes a failed call.
    pub fn finish(self, error: Option<String>) {
        let Some(t) = &self.trace else { return };
        if let Some(r) = &t.recorder {
            t.child(Child {
                span_id: self.span_id,
                name: "upstream",
                kind: SpanKind::Client,
                start: r.offset(self.started),
                end: r.offset(Instant::now()),
                attributes: vec![
                    ("palisade.upstream", Attr::Str(self.upstream)),
                    ("mcp.method.name", Attr::Str(self.method)),
                ],
                error,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parsing() {
        let p = parse_traceparent(GOOD).unwrap();
        assert_eq!(hex::encode(p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(p.parent_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert!(!parse_traceparent(&GOOD.replace("-01", "-00")).unwrap().sampled);
        // A later version may carry more fields after a dash.
        assert!(parse_traceparent(&format!("cc{}-what-ever", &GOOD[2..])).is_some());
        let bad = [
            "",
            "00",
            &GOOD.to_uppercase(),
            &format!("ff{}", &GOOD[2..]),
            &format!("{GOOD}-extra"),
            &format!("cc{}extra", &GOOD[2..]),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "0-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
            "\u{e9}0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b), None, "{b:?}");
        }
        let long = format!("cc{}-{}", &GOOD[2..], "a".repeat(100_000));
        assert!(parse_traceparent(&long).is_some());
    }

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("traceparent", http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn incoming_context_is_followed_only_when_trusted_and_unambiguous() {
        let t = Tracer::default().begin(&headers(&[GOOD]), true);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled);
        let two = Tracer::default().begin(&headers(&[GOOD, GOOD]), true);
        assert_ne!(two.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let cfg = TracesConfig {
            trust_incoming: false,
            ..Default::default()
        };
        let untrusted = Tracer::new(&cfg, None).begin(&headers(&[GOOD]), true);
        assert_ne!(untrusted.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(untrusted.parent, None);
        let fresh = Tracer::default().begin(&headers(&["garbage"]), true);
        assert_eq!(fresh.trace_id_hex().len(), 32);
        assert!(!fresh.recording(), "nothing is recorded without an exporter");
    }

    #[test]
    fn sampling_ratio() {
        let none = Tracer::new(
            &TracesConfig {
                sample_ratio: 0.0,
                ..Default::default()
            },
            None,
        );
        let half = Tracer::new(
            &TracesConfig {
                sample_ratio: 0.5,
                ..Default::default()
            },
            None,
        );
        let all = Tracer::default();
        let mut id = [0u8; 16];
        assert!(all.sampled(&id) && !none.sampled(&id) && half.sampled(&id));
        id[8] = 0xff;
        assert!(all.sampled(&id) && !none.sampled(&id) && !half.sampled(&id));
        let n = (0..2000).filter(|_| half.sampled(&random::<16>())).count();
        assert!((700..1300).contains(&n), "{n}");
        // The caller's flag decides for a continued trace.
        let off = headers(&[&GOOD.replace("-01", "-00")]);
        assert!(!all.begin(&off, true).sampled);
        assert!(none.begin(&headers(&[GOOD]), true).sampled);
    }

    #[tokio::test]
    async fn upstream_traceparent_carries_the_trace_and_a_new_parent() {
        let t = Tracer::default().begin(&headers(&[GOOD]), true);
        let up = scope(t.clone(), async { upstream_call("u", "tools/call") }).await;
        let (name, value) = up.traceparent().unwrap();
        assert_eq!(name, "traceparent");
        let p = parse_traceparent(value.to_str().unwrap()).unwrap();
        assert_eq!(p.trace_id, t.trace_id);
        assert_ne!(
            p.parent_id,
            t.parent.unwrap(),
            "the upstream's parent is the gateway's span"
        );
        assert!(p.sampled);
        // Spawned work sees the same trace only when carried.
        let id = || current().map(|t| t.trace_id_hex());
        let bare = scope(t.clone(), async { tokio::spawn(async move { id() }).await.unwrap() }).await;
        assert_eq!(bare, None);
        let carried = scope(t.clone(), async {
            tokio::spawn(carry(async move { id() })).await.unwrap()
        })
        .await;
        assert_eq!(carried, Some(t.trace_id_hex()));
        assert!(
            upstream_call("u", "tools/call").traceparent().is_none(),
            "outside a request"
        );
        let cfg = TracesConfig {
            propagate: false,
            ..Default::default()
        };
        let quiet = Tracer::new(&cfg, None).begin(&headers(&[GOOD]), true);
        assert!(
            scope(quiet, async { upstream_call("u", "tools/call") })
                .await
                .traceparent()
                .is_none()
        );
    }
}
