//! `[traces]`: OpenTelemetry traces of the request pipeline and W3C trace
//! context (L4).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{ConfigError, SecretRef, err_at};

/// `[traces]`: one span per MCP request with a child per pipeline stage and
/// upstream call, exported over OTLP/HTTP; `traceparent` sent to HTTP upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// OTLP/HTTP traces endpoint, e.g. `http://collector:4318/v1/traces`.
    /// Absent: no spans are built or exported (trace ids are still recorded
    /// on audit events and propagated).
    pub endpoint: Option<String>,
    /// Extra request headers (an API key), values from the secret store.
    pub headers: BTreeMap<String, SecretRef>,
    /// Let a plain-`http` endpoint off loopback through.
    pub allow_insecure_http: bool,
    /// Share of new traces exported (0.0 to 1.0), decided from the trace id
    /// so every replica agrees. A caller's `traceparent` decides for itself
    /// when `trust_incoming` is on.
    pub sample_ratio: f64,
    /// Continue the caller's trace (`traceparent` header, or `_meta.traceparent`
    /// of the JSON-RPC request) and follow its sampled flag. Off: every request
    /// starts a trace of its own.
    pub trust_incoming: bool,
    /// Send `traceparent` (the gateway's upstream span) to HTTP upstreams.
    pub propagate: bool,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Finished traces waiting for export; past this they are dropped and counted.
    pub queue: usize,
    /// Per-delivery timeout.
    pub timeout_ms: u64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            endpoint: None,
            headers: BTreeMap::new(),
            allow_insecure_http: false,
            sample_ratio: 1.0,
            trust_incoming: true,
            propagate: true,
            service_name: "palisade".into(),
            queue: 4096,
            timeout_ms: 5_000,
        }
    }
}

pub(crate) fn validate_traces(t: &TracesConfig, errs: &mut Vec<ConfigError>) {
    let e = |k: &str, m: &str| err_at(k, None, m.to_owned());
    if let Some(url) = &t.endpoint {
        crate::validate_url(url, t.allow_insecure_http, "traces.endpoint", None, errs);
    }
    if !(t.sample_ratio.is_finite() && (0.0..=1.0).contains(&t.sample_ratio)) {
        errs.push(e("traces.sample_ratio", "must be a number from 0.0 to 1.0"));
    }
    if t.service_name.trim().is_empty() || t.service_name.len() > 256 {
        errs.push(e("traces.service_name", "must be 1 to 256 characters"));
    }
    if !(1..=1_000_000).contains(&t.queue) {
        errs.push(e("traces.queue", "must be 1 to 1000000"));
    }
    if !(1..=600_000).contains(&t.timeout_ms) {
        errs.push(e("traces.timeout_ms", "must be 1 to 600000"));
    }
    for name in t.headers.keys() {
        if http_token(name).is_none() {
            errs.push(e(&format!("traces.headers.{name}"), "is not a valid header name"));
        }
    }
}

/// A header name is an RFC 9110 token.
fn http_token(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(name)
}
