//! The admin listener: Prometheus metrics and health, apart from the MCP listener so it
//! can be bound to a private address and put behind mutual TLS.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use palisade_tls::TlsListener;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::gateway::Gateway;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

/// Per launched server (shared processes): read from its supervisor at render (X3).
const PROCESS_METRICS: [(&str, &str); 8] = [
    ("upstream_process_starts", "Processes started for this stdio server"),
    ("upstream_process_exits", "Processes of this stdio server that ended"),
    (
        "upstream_process_refused_starts",
        "Starts refused: sandbox unavailable or pin mismatch",
    ),
    (
        "upstream_process_limit_kills",
        "Processes killed for exceeding a sandbox limit",
    ),
    (
        "upstream_process_last_exit_code",
        "Exit code of the last process (-1: killed by a signal)",
    ),
    (
        "upstream_process_cpu_milliseconds",
        "CPU time of the running process tree",
    ),
    (
        "upstream_process_resident_bytes",
        "Resident memory of the running process tree",
    ),
    ("upstream_process_peak_resident_bytes", "Highest resident memory seen"),
];

/// What the admin endpoints read.
pub struct Admin {
    gw: Arc<Gateway>,
    /// Named TLS listeners whose certificates are reported.
    tls: Vec<(String, Arc<TlsListener>)>,
    registry: Registry,
    expiry: Family<ListenerLabel, Gauge>,
    sessions: Gauge,
    /// Chain writer: written, dropped, queue depth, healthy (read at render).
    audit: [Gauge; 4],
    process: [Family<UpstreamLabel, Gauge>; 8],
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    pub fn new(gw: Arc<Gateway>, tls: Vec<(String, Arc<TlsListener>)>) -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let expiry = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "tls_certificate_not_after_seconds",
            "Expiry (unix time) of the certificate each TLS listener serves",
            expiry.clone(),
        );
        let sessions = Gauge::default();
        registry.register("sessions", "Live MCP sessions held by this process", sessions.clone());
        registry.register(
            "tool_holds",
            "Tool versions and server instructions newly held (changed, unapproved or flagged)",
            gw.integrity.holds.clone(),
        );
        registry.register(
            "tool_calls_refused",
            "tools/call refused because the tool is held, quarantined or not listed",
            gw.integrity.refused_calls.clone(),
        );
        let m = &gw.controls.metrics;
        let mut counters: Vec<(&str, &str, &Counter)> = vec![
            ("authz_denied", "Requests denied by a Cedar policy", &m.denied),
            ("rate_limited", "Requests refused by a rate limit", &m.rate_limited),
            (
                "invalid_arguments",
                "tools/call refused: arguments do not match the pinned inputSchema",
                &m.invalid_arguments,
            ),
            (
                "invalid_results",
                "Tool results refused: structuredContent does not match the pinned outputSchema",
                &m.invalid_results,
            ),
            (
                "confirmations_accepted",
                "Calls the user confirmed",
                &m.confirmations_accepted,
            ),
            (
                "confirmations_refused",
                "Calls not confirmed (declined, cancelled, timed out, or no elicitation)",
                &m.confirmations_refused,
            ),
            ("state_errors", "Shared-state backend errors", &m.state_errors),
        ];
        if let Some(i) = &gw.controls.inspect {
            let m = &i.metrics;
            counters.extend([
                ("inspect_scanned_bytes", "Bytes of content scanned", &m.scanned_bytes),
                (
                    "inspect_detections_prompt_injection",
                    "Messages with a prompt injection at or above the suspicious level",
                    &m.detections_injection,
                ),
                (
                    "inspect_detections_secret",
                    "Messages with a secret",
                    &m.detections_secret,
                ),
                (
                    "inspect_detections_pii",
                    "Messages with personal data",
                    &m.detections_pii,
                ),
                (
                    "inspect_detections_hidden_text",
                    "Messages with hidden text",
                    &m.detections_hidden,
                ),
                ("inspect_blocked", "Content blocked", &m.blocked),
                ("inspect_redacted", "Texts redacted", &m.redacted),
                ("inspect_spotlighted", "Messages spotlighted", &m.spotlighted),
                (
                    "inspect_truncated",
                    "Results cut or withheld by the size caps",
                    &m.truncated,
                ),
                (
                    "inspect_toxic_flows",
                    "Calls that would complete a toxic flow",
                    &m.toxic_flows,
                ),
                ("inspect_remote_errors", "Remote detector failures", &m.remote_errors),
            ]);
        }
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "stage_seconds",
            "Latency of each pipeline stage",
            gw.controls.metrics.stages.0.clone(),
        );
        let audit: [Gauge; 4] = Default::default();
        if gw.controls.audit.is_some() {
            for (g, (name, help)) in audit.iter().zip([
                (
                    "audit_records_written",
                    "Records appended to the audit chain by this process",
                ),
                (
                    "audit_events_dropped",
                    "Audit events lost (queue full in fail-open mode, or write errors)",
                ),
                ("audit_queue_depth", "Audit events waiting for the chain writer"),
                (
                    "audit_healthy",
                    "1 while the audit chain can be written, 0 after a write failure",
                ),
            ]) {
                registry.register(name, help, g.clone());
            }
        }
        let process: [Family<UpstreamLabel, Gauge>; 8] = Default::default();
        for (f, (name, help)) in process.iter().zip(PROCESS_METRICS) {
            registry.register(name, help, f.clone());
        }
        Admin {
            process,
            gw,
            tls,
            registry,
            expiry,
            sessions,
            audit,
        }
    }

    /// The registry, for metrics kept outside the gateway (export sinks).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition, with values read now.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        for (name, l) in &self.tls {
            self.expiry
                .get_or_create(&ListenerLabel { listener: name.clone() })
                .set(l.info().not_after);
        }
        if let Some(a) = &self.gw.controls.audit {
            let s = a.log.stats();
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            for (g, v) in self
                .audit
                .iter()
                .zip([n(s.written), n(s.dropped), n(s.queue_depth), i64::from(!s.failed)])
            {
                g.set(v);
            }
        }
        self.render_processes();
        let live = self.gw.sessions.lock().map(|m| m.len()).unwrap_or(0);
        self.sessions.set(i64::try_from(live).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Admin {
    fn render_processes(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (name, up) in &self.gw.upstreams {
            let crate::gateway::UpstreamKind::Stdio { shared: Some(conn), .. } = &up.kind else {
                continue;
            };
            let st = conn.stats();
            let label = UpstreamLabel { upstream: name.clone() };
            let values = [
                n(st.starts.load(Relaxed)),
                n(st.exits.load(Relaxed)),
                n(st.refused.load(Relaxed)),
                n(st.limit_kills.load(Relaxed)),
                st.last_exit_code.load(Relaxed),
                n(st.cpu_ms.load(Relaxed)),
                n(st.rss_bytes.load(Relaxed)),
                n(st.peak_rss_bytes.load(Relaxed)),
            ];
            for (f, v) in self.process.iter().zip(values) {
                f.get_or_create(&label).set(v);
            }
        }
    }
}

async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    match a.render() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The admin routes, with the security headers (and HSTS when `hsts` is given).
pub fn router(admin: Arc<Admin>, hsts: Option<String>) -> Router {
    let hsts = hsts.and_then(|v| HeaderValue::from_str(&v).ok());
    let api = crate::admin_api::router(admin.gw.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(admin)
        .merge(api)
        .layer(axum::middleware::map_response(move |mut r: Response| {
            let hsts = hsts.clone();
            async move {
                crate::hygiene::security_headers(r.headers_mut());
                if let Some(v) = hsts {
                    r.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v);
                }
                r
            }
        }))
}
