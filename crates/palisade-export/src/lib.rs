//! Export of audit records to external sinks (L4): RFC 5424 syslog with CEF or
//! JSON, OpenTelemetry logs over OTLP/HTTP, signed webhooks, and a JSON-lines file.
//!
//! Each sink has its own bounded queue and one tokio worker task. [`Sinks::offer`]
//! only ever `try_send`s, so a dead or slow sink costs the audit writer nothing
//! but a dropped-record count: the chain on disk stays the record of truth, the
//! sinks are best-effort copies.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderName;
use palisade_config::{SecretRef, SinkConfig, SinkKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

mod format;
mod otlp;
mod traces;
mod worker;

pub use format::{cef, syslog_5424};
pub use otlp::otlp_logs_request;
pub use traces::{Attr, SpanData, SpanKind, TraceExporter, otlp_traces_request};

use worker::{FileTx, HttpTx, Stats, SyslogTx, TARGET, Transport, Worker};

/// One audit record as written to the hash chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRecord {
    /// The exact chain line: a JSON object, no trailing newline.
    pub line: String,
    /// The same object, parsed.
    pub value: serde_json::Value,
}

impl ExportRecord {
    /// A record from its chain line (parsed once here).
    pub fn parse(line: String) -> Result<Self, serde_json::Error> {
        let value = serde_json::from_str(&line)?;
        Ok(ExportRecord { line, value })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// One configured sink as seen by callers.
struct Sink {
    events: Vec<String>,
    tx: mpsc::Sender<Arc<ExportRecord>>,
    stats: Arc<Stats>,
}

/// The running sinks: one bounded queue and one worker task each.
///
/// `Send + Sync`; share it in an `Arc`. Dropping it lets the workers drain
/// their queues and end; [`Sinks::shutdown`] does the same with a deadline.
pub struct Sinks {
    sinks: Vec<Sink>,
    closed: AtomicBool,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    sent: Family<SinkLabel, Counter>,
    dropped: Family<SinkLabel, Counter>,
    failures: Family<SinkLabel, Counter>,
    depth: Family<SinkLabel, Gauge>,
}

// Names only: the transports hold secrets.
impl fmt::Debug for Sinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sinks")
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

/// Plain `http` only to loopback or with `allow_insecure_http`; no credentials in the URL.
/// Errors never repeat the URL (a webhook URL is often a bearer secret).
pub(crate) fn check_url(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("invalid URL ({e})"))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => return Err("the URL has no host".into()),
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_insecure_http => Ok(()),
        "http" => Err("plain http needs allow_insecure_http".into()),
        _ => Err("the URL must be http or https".into()),
    }
}

/// Header values resolved from the secret store, checked at start so a bad
/// value fails there and not on every delivery.
pub(crate) fn resolve_headers(
    headers: &std::collections::BTreeMap<String, SecretRef>,
    secret: Resolver<'_>,
) -> Result<Vec<(HeaderName, Zeroizing<String>)>, String> {
    let mut resolved = Vec::with_capacity(headers.len());
    for (name, r) in headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header {name:?}: invalid name"))?;
        let v = Zeroizing::new(secret(r).map_err(|e| format!("header {name}: {e}"))?);
        http::HeaderValue::from_str(&v).map_err(|_| format!("header {name}: the value is not a valid header value"))?;
        resolved.push((n, v));
    }
    Ok(resolved)
}

pub(crate) fn http_client(timeout: Duration, https_only: bool) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .https_only(https_only)
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .build()
        .map_err(|e| format!("HTTP client: {}", palisade_fetch::describe(&e)))
}

fn timeout_of(cfg: &SinkConfig) -> Duration {
    Duration::from_millis(cfg.timeout_ms.max(1))
}

pub(crate) type Resolver<'a> = &'a dyn Fn(&SecretRef) -> Result<String, String>;

fn transport(cfg: &SinkConfig, secret: Resolver<'_>) -> Result<Transport, String> {
    Ok(match &cfg.kind {
        SinkKind::Syslog {
            address,
            protocol,
            format,
            facility,
            app_name,
        } => {
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err("address must be host:port".into());
            }
            Transport::Syslog(SyslogTx::new(
                address.clone(),
                *protocol,
                *format,
                *facility,
                app_name.clone(),
            ))
        }
        SinkKind::Otlp {
            endpoint,
            headers,
            allow_insecure_http,
        } => {
            check_url(endpoint, *allow_insecure_http).map_err(|e| format!("endpoint: {e}"))?;
            Transport::Otlp(HttpTx {
                client: http_client(timeout_of(cfg), endpoint.starts_with("https:"))?,
                url: endpoint.clone(),
                headers: resolve_headers(headers, secret)?,
                secret: None,
            })
        }
        SinkKind::Webhook {
            url,
            secret: key,
            allow_insecure_http,
        } => {
            check_url(url, *allow_insecure_http).map_err(|e| format!("url: {e}"))?;
            let key = match key {
                Some(r) => Some(Zeroizing::new(secret(r).map_err(|e| format!("secret: {e}"))?)),
                None => None,
            };
            Transport::Webhook(HttpTx {
                client: http_client(timeout_of(cfg), url.starts_with("https:"))?,
                url: url.clone(),
                headers: Vec::new(),
                secret: key,
            })
        }
        SinkKind::File { path } => {
            if path.as_os_str().is_empty() {
                return Err("path must not be empty".into());
            }
            Transport::File(FileTx::new(path.clone()))
        }
    })
}

impl Sinks {
    /// Starts one tokio worker task per sink on the current runtime. `secret` resolves a
    /// [`SecretRef`] (OTLP header values, the webhook signing secret) to its value;
    /// failures are returned as errors naming the sink, never the value.
    ///
    /// Every sink is checked before any worker starts, so an error starts nothing.
    pub fn start(
        configs: &[SinkConfig],
        secret: &dyn Fn(&SecretRef) -> Result<String, String>,
    ) -> Result<Sinks, String> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| "export sinks need a tokio runtime".to_owned())?;
        let mut transports = Vec::with_capacity(configs.len());
        let mut seen = std::collections::BTreeSet::new();
        for cfg in configs {
            if cfg.name.is_empty() || !seen.insert(cfg.name.as_str()) {
                return Err(format!("sink {:?}: the name must be present and unique", cfg.name));
            }
            transports.push(transport(cfg, secret).map_err(|e| format!("sink {}: {e}", cfg.name))?);
        }

        let sent = Family::<SinkLabel, Counter>::default();
        let dropped = Family::<SinkLabel, Counter>::default();
        let failures = Family::<SinkLabel, Counter>::default();
        let depth = Family::<SinkLabel, Gauge>::default();
        let (stop, _) = watch::channel(false);
        let mut sinks = Vec::with_capacity(configs.len());
        let mut workers = Vec::with_capacity(configs.len());
        for (cfg, t) in configs.iter().zip(transports) {
            let label = SinkLabel { sink: cfg.name.clone() };
            let stats = Arc::new(Stats::new(
                cfg.name.clone(),
                sent.get_or_create(&label).clone(),
                dropped.get_or_create(&label).clone(),
                failures.get_or_create(&label).clone(),
                depth.get_or_create(&label).clone(),
            ));
            // A zero capacity would panic in tokio; configuration validation already refuses it.
            let (tx, rx) = mpsc::channel(cfg.queue.max(1));
            let w = Worker::new(rx, t, Arc::clone(&stats), timeout_of(cfg));
            workers.push(rt.spawn(w.run(stop.subscribe())));
            sinks.push(Sink {
                events: cfg.events.clone(),
                tx,
                stats,
            });
        }
        Ok(Sinks {
            sinks,
            closed: AtomicBool::new(false),
            stop,
            workers: Mutex::new(workers),
            sent,
            dropped,
            failures,
            depth,
        })
    }

    fn push(&self, s: &Sink, rec: Arc<ExportRecord>) -> bool {
        if self.closed.load(Ordering::Acquire) {
            s.stats.dropped.inc();
            return false;
        }
        match s.tx.try_send(rec) {
            Ok(()) => {
                s.stats.depth.set((s.tx.max_capacity() - s.tx.capacity()) as i64);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.stats.queue_full();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                s.stats.dropped.inc();
                false
            }
        }
    }

    /// Queues the record for every sink whose `events` match its `event` (an empty
    /// list matches every event). Never blocks and never awaits, so it may be called
    /// from a plain thread; a full queue drops the record for that sink, counts it,
    /// and warns (at most once per 10 s per sink, target `palisade::export`).
    pub fn offer(&self, rec: &Arc<ExportRecord>) {
        let event = format::event_name(&rec.value);
        for s in &self.sinks {
            if s.events.is_empty() || palisade_config::event_matches(&s.events, event) {
                self.push(s, Arc::clone(rec));
            }
        }
    }

    /// Queues the record for the named sink whatever its event filter (alert
    /// notifications). False when there is no such sink or its queue is full
    /// (then the record is counted as dropped).
    pub fn send_to(&self, sink: &str, rec: Arc<ExportRecord>) -> bool {
        match self.sink(sink) {
            Some(s) => self.push(s, rec),
            None => false,
        }
    }

    fn sink(&self, name: &str) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.stats.name == name)
    }

    /// The sink names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.stats.name.clone()).collect()
    }

    /// Registers the per-sink metrics (label `sink`) in a registry created with the
    /// prefix `palisade`: `palisade_sink_sent_total`, `palisade_sink_dropped_total`
    /// (queue full, or given up after retries), `palisade_sink_failures_total`
    /// (failed delivery attempts) and the gauge `palisade_sink_queue_depth`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("sink_sent", "Audit records delivered to the sink", self.sent.clone());
        registry.register(
            "sink_dropped",
            "Audit records not delivered: queue full, or given up after retries",
            self.dropped.clone(),
        );
        registry.register(
            "sink_failures",
            "Failed delivery attempts to the sink",
            self.failures.clone(),
        );
        registry.register(
            "sink_queue_depth",
            "Audit records waiting in the sink's queue",
            self.depth.clone(),
        );
    }

    /// `(sent, dropped, failures)` of a sink, or `None` when there is no such sink.
    pub fn counts(&self, sink: &str) -> Option<(u64, u64, u64)> {
        self.sink(sink)
            .map(|s| (s.stats.sent.get(), s.stats.dropped.get(), s.stats.failures.get()))
    }

    /// Stops accepting records (later ones are counted as dropped), lets the
    /// workers deliver what is queued until `deadline` has passed, then aborts
    /// those still busy; what they held is counted as dropped.
    pub async fn shutdown(&self, deadline: Duration) {
        self.closed.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let end = tokio::time::Instant::now() + deadline;
        for h in handles {
            let abort = h.abort_handle();
            if tokio::time::timeout_at(end, h).await.is_err() {
                abort.abort();
            }
        }
        tracing::debug!(target: TARGET, "export sinks stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://siem.example/x", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", false).is_ok());
        assert!(check_url("http://localhost/x", false).is_ok());
        assert!(check_url("http://[::1]:80/x", false).is_ok());
        assert!(check_url("http://siem.example/x", false).is_err());
        assert!(check_url("http://siem.example/x", true).is_ok());
        assert!(check_url("ftp://siem.example/x", true).is_err());
        let e = check_url("https://user:pw@siem.example/token-in-path", false).unwrap_err();
        assert!(!e.contains("token-in-path") && !e.contains("pw"), "{e}");
        assert!(check_url("not a url", false).is_err());
    }

    #[test]
    fn sinks_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Sinks>();
    }
}
