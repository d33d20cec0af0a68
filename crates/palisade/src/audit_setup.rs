//! `serve`: the audit chain, its sinks and alert rules, and the tracing
//! subscriber they hang off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_audit::{AuditLog, AuditSlot, Fsync, Options};
use palisade_config::{AuditFailMode, Config, FsyncPolicy, SecretRef, SinkKind};
use palisade_export::{ExportRecord, Sinks};
use palisade_gateway::audit::{AlertJob, Audit};
use palisade_inspect::{Category, EngineOptions, PackSet};
use serde_json::Value;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the process log (stderr, filtered by `PALISADE_LOG`) and the
/// audit layer, which is connected to the chain once it is open.
pub fn init_logging(format: &str) -> AuditSlot {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (audit, slot) = palisade_audit::AuditLayer::deferred();
    // Only audit events and request spans reach the audit layer, whatever
    // PALISADE_LOG says; the filter also keeps other callsites cheap.
    let audit = audit.with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target(palisade_audit::AUDIT_TARGET, tracing::Level::TRACE)
            .with_target(palisade_audit::REQUEST_TARGET, tracing::Level::TRACE),
    );
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(audit);
    let _ = if format == "json" {
        registry.with(fmt.json().with_filter(filter)).try_init()
    } else {
        registry.with(fmt.with_filter(filter)).try_init()
    };
    slot
}

/// Relative paths of `[audit]` are taken from the configuration file's folder.
pub fn resolve_paths(config: &mut Config, base: &Path) {
    let a = &mut config.audit;
    if a.dir.is_relative() {
        a.dir = base.join(&a.dir);
    }
    if let Some(c) = a.checkpoint_file.as_mut()
        && c.is_relative()
    {
        *c = base.join(&*c);
    }
    for s in &mut a.sinks {
        if let SinkKind::File { path } = &mut s.kind
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }
}

/// Everything `serve` keeps of the audit setup.
pub struct Running {
    pub audit: Arc<Audit>,
    pub sinks: Option<Arc<Sinks>>,
    pub alerts: Option<tokio::sync::mpsc::Receiver<AlertJob>>,
}

impl Running {
    /// Writes the queued events and a last checkpoint, then flushes the sinks.
    pub async fn shutdown(&self) {
        let log = self.audit.log.clone();
        let _ = tokio::task::spawn_blocking(move || log.shutdown()).await;
        if let Some(s) = &self.sinks {
            s.shutdown(Duration::from_secs(3)).await;
        }
    }
}

pub(crate) async fn resolve(
    store: &palisade_secrets::SecretStore,
    r: &SecretRef,
    what: &str,
) -> Result<String, String> {
    let s = palisade_secrets::resolve(store, r)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    s.expose_str().map(str::to_owned).map_err(|e| format!("{what}: {e}"))
}

/// Secrets resolved before a synchronous start (sinks, the trace exporter),
/// looked up by their reference.
#[derive(Default)]
struct Resolved(std::collections::HashMap<String, zeroize::Zeroizing<String>>);

impl Resolved {
    async fn add(&mut self, store: &palisade_secrets::SecretStore, r: &SecretRef, what: &str) -> Result<(), String> {
        let v = resolve(store, r, what).await?;
        self.0.insert(format!("{r:?}"), zeroize::Zeroizing::new(v));
        Ok(())
    }

    fn get(&self, r: &SecretRef) -> Result<String, String> {
        self.0
            .get(&format!("{r:?}"))
            .map(|v| v.to_string())
            .ok_or_else(|| "secret not resolved".to_owned())
    }
}

fn engine(packs: &str) -> Result<palisade_inspect::Engine, String> {
    palisade_inspect::build(&EngineOptions {
        packs: PackSet::parse(packs)?,
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

/// Opens the chain, starts the sinks and the alert rules, and connects the
/// audit layer. `None` when `[audit] enabled = false`.
pub async fn start(
    config: &Config,
    slot: &AuditSlot,
    store: &palisade_secrets::SecretStore,
) -> Result<Option<Running>, String> {
    let a = &config.audit;
    if !a.enabled {
        tracing::warn!("[audit] enabled = false: decisions reach only the process log (no tamper-evident trail)");
        return Ok(None);
    }
    let key = match &a.key {
        Some(r) => palisade_audit::key_from_text(&resolve(store, r, "audit.key").await?)?,
        None => {
            let k = palisade_audit::load_or_create_key(&a.dir)?;
            tracing::warn!(dir = %a.dir.display(), "audit chain key kept beside the chain (audit.key); set [audit] key from the secret store so that whoever can write the chain cannot re-key it");
            k
        }
    };
    let mut secrets = Resolved::default();
    for s in &a.sinks {
        let refs: Vec<&SecretRef> = match &s.kind {
            SinkKind::Otlp { headers, .. } => headers.values().collect(),
            SinkKind::Webhook { secret, .. } => secret.iter().collect(),
            _ => vec![],
        };
        for r in refs {
            secrets.add(store, r, &format!("audit.sinks {}", s.name)).await?;
        }
    }
    let sinks = if a.sinks.is_empty() {
        None
    } else {
        Some(Arc::new(Sinks::start(&a.sinks, &|r| secrets.get(r))?))
    };
    let alerts = if config.alerts.is_empty() {
        None
    } else {
        Some(palisade_alerts::Alerts::new(&config.alerts)?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<AlertJob>(1024);
    let hook = hook(sinks.clone(), alerts, tx);
    let opts = Options {
        dir: a.dir.clone(),
        fsync: match a.fsync {
            FsyncPolicy::Always => Fsync::Always,
            FsyncPolicy::Interval => Fsync::Interval(Duration::from_millis(a.fsync_interval_ms)),
            FsyncPolicy::Never => Fsync::Never,
        },
        segment_max_bytes: a.segment_max_bytes,
        segment_max_age: Duration::from_secs(a.segment_max_age_s),
        checkpoint_interval: (a.checkpoint_interval_s > 0).then(|| Duration::from_secs(a.checkpoint_interval_s)),
        checkpoint_file: a.checkpoint_file.clone(),
        queue: a.queue,
        fail_closed: a.on_failure == AuditFailMode::Closed,
    };
    let log = AuditLog::open(opts, key, Some(hook))?;
    // Secrets a control logged by mistake are replaced before the chain.
    let secrets_engine = Arc::new(engine("secrets")?);
    let redact: palisade_audit::Redactor = Arc::new(move |s: &str| {
        if s.len() < 8 {
            return None;
        }
        palisade_inspect::redact(&secrets_engine, s, &[Category::Secret])
    });
    slot.install(log.clone(), Some(redact));
    spawn_indexer(a.dir.clone());
    tracing::info!(dir = %a.dir.display(), fsync = ?a.fsync, sinks = a.sinks.len(), alert_rules = config.alerts.len(), "audit chain open");
    let payload_engine = Arc::new(engine("secrets,pii")?);
    Ok(Some(Running {
        audit: Arc::new(Audit::new(log, config, Some(payload_engine))),
        sinks,
        alerts: Some(rx),
    }))
}

/// Runs on the chain writer thread for every record: ships it to the sinks
/// and feeds the alert rules. Never blocks (bounded queues, `try_send`).
fn hook(
    sinks: Option<Arc<Sinks>>,
    alerts: Option<palisade_alerts::Alerts>,
    tx: tokio::sync::mpsc::Sender<AlertJob>,
) -> palisade_audit::Hook {
    Box::new(move |w| {
        if sinks.is_none() && alerts.is_none() {
            return;
        }
        let mut fields = w.fields.clone();
        fields.insert("seq".into(), w.seq.into());
        fields.insert("mac".into(), w.mac.into());
        let value = Value::Object(fields);
        if !w.checkpoint
            && let Some(rules) = &alerts
        {
            for f in rules.observe(&value, Instant::now()) {
                let job = AlertJob {
                    rule: f.rule,
                    actions: f.actions,
                    group: f.group,
                    count: f.count,
                    event: value.clone(),
                };
                if tx.try_send(job).is_err() {
                    tracing::error!(target: "palisade::chain_writer", "alert queue full: an alert was dropped");
                }
            }
        }
        if let Some(s) = &sinks {
            s.offer(&Arc::new(ExportRecord {
                line: w.line.to_owned(),
                value,
            }));
        }
    })
}

/// Keeps the query index close to the chain, off the request path.
fn spawn_indexer(dir: PathBuf) {
    let _ = std::thread::Builder::new()
        .name("palisade-audit-index".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(30));
                let r = palisade_audit::index::Index::open(&dir).and_then(|mut ix| ix.catch_up());
                if let Err(e) = r {
                    tracing::warn!(target: "palisade::chain_writer", error = %e, "audit index catch-up failed");
                }
            }
        });
}

/// The notifier of `notify` alert actions: the alert goes to a sink by name.
pub fn notifier(sinks: Option<Arc<Sinks>>) -> palisade_gateway::audit::Notifier {
    Arc::new(move |sink: &str, alert: &Value| match &sinks {
        Some(s) => s.send_to(
            sink,
            Arc::new(ExportRecord {
                line: alert.to_string(),
                value: alert.clone(),
            }),
        ),
        None => false,
    })
}

/// Starts the OTLP trace exporter of `[traces]`; `None` without an endpoint.
pub async fn start_traces(
    config: &Config,
    store: &palisade_secrets::SecretStore,
) -> Result<Option<Arc<palisade_export::TraceExporter>>, String> {
    let t = &config.traces;
    if t.endpoint.is_none() {
        return Ok(None);
    }
    let mut secrets = Resolved::default();
    for (name, r) in &t.headers {
        secrets.add(store, r, &format!("traces.headers.{name}")).await?;
    }
    let exporter = palisade_export::TraceExporter::start(t, &|r| secrets.get(r))?;
    tracing::info!(sample_ratio = t.sample_ratio, "trace export on");
    Ok(exporter.map(Arc::new))
}

/// Every 10 s, an `export.dropped` audit event for each sink (and the trace
/// exporter) that dropped records since the last look, so alert rules can
/// watch for a SIEM going dark. Runs on the runtime, never on the chain
/// writer's thread (which feeds the sinks and must not wait on itself).
pub fn spawn_drop_monitor(sinks: Option<Arc<Sinks>>, traces: Option<Arc<palisade_export::TraceExporter>>) {
    if sinks.is_none() && traces.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut now: Vec<(String, u64)> = Vec::new();
            if let Some(s) = &sinks {
                for name in s.names() {
                    if let Some((_, dropped, _)) = s.counts(&name) {
                        now.push((name, dropped));
                    }
                }
            }
            if let Some(t) = &traces {
                now.push(("traces".to_owned(), t.counts().1));
            }
            for (name, total) in now {
                let before = seen.insert(name.clone(), total).unwrap_or(0);
                if total > before {
                    tracing::warn!(
                        target: "palisade::audit",
                        event = "export.dropped",
                        sink = %name,
                        dropped = total - before,
                        dropped_total = total,
                        "export sink dropped records"
                    );
                }
            }
        }
    });
}
