//! The tracing layer that turns `palisade::audit` events into chain records.
//!
//! Controls log decisions as ordinary `tracing` events with target
//! `palisade::audit`; the common fields (principal, client, session digest,
//! request id, trace id) come from the enclosing `palisade::request` span, so
//! no control has to repeat them.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::writer::AuditLog;

/// Target of audit events.
pub const AUDIT_TARGET: &str = "palisade::audit";
/// Target of the per-request span whose fields every event inherits.
pub const REQUEST_TARGET: &str = "palisade::request";

/// Longest string kept in a record; longer ones are cut with a note.
pub const MAX_STRING: usize = 4096;

/// Replaces secrets in a string; `None` when there is nothing to replace.
pub type Redactor = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Feeds audit events to the chain.
pub struct AuditLayer {
    target: Arc<OnceLock<Target>>,
}

struct Target {
    log: Arc<AuditLog>,
    redact: Option<Redactor>,
}

/// Where a [`AuditLayer::deferred`] layer sends events once the chain is open.
#[derive(Clone)]
pub struct AuditSlot(Arc<OnceLock<Target>>);

impl AuditSlot {
    /// Connects the layer to the chain; false if it was connected already.
    pub fn install(&self, log: Arc<AuditLog>, redact: Option<Redactor>) -> bool {
        self.0.set(Target { log, redact }).is_ok()
    }
}

impl AuditLayer {
    /// `redact` is applied to every string of every event: a last line of
    /// defence so that a secret a control logged by mistake never reaches
    /// the chain or a sink.
    pub fn new(log: Arc<AuditLog>, redact: Option<Redactor>) -> AuditLayer {
        let (layer, slot) = AuditLayer::deferred();
        slot.install(log, redact);
        layer
    }

    /// A layer installed with the subscriber at start-up and connected to
    /// the chain once the configuration has been read; events before that
    /// reach only the other layers.
    pub fn deferred() -> (AuditLayer, AuditSlot) {
        let target = Arc::new(OnceLock::new());
        (AuditLayer { target: target.clone() }, AuditSlot(target))
    }
}

struct SpanFields(Map<String, Value>);

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visitor<'_> {
    fn put(&mut self, field: &Field, v: Value) {
        let name = match field.name() {
            "message" => "msg",
            n => n,
        };
        insert_path(self.0, name, v);
    }

    /// `x_json` fields carry JSON text (a payload): kept as JSON under `x`.
    fn put_text(&mut self, field: &Field, text: &str) {
        if let Some(name) = field.name().strip_suffix("_json")
            && text.len() <= MAX_STRING * 4
            && let Ok(v) = serde_json::from_str::<Value>(text)
        {
            insert_path(self.0, name, v);
            return;
        }
        self.put(field, Value::from(cut(text)));
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put_text(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
        );
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put_text(field, &format!("{value:?}"));
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_STRING {
        return s.to_owned();
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut {} bytes]", &s[..end], s.len() - end)
}

/// `a.b` fields become nested objects (`principal.sub`).
fn insert_path(map: &mut Map<String, Value>, name: &str, v: Value) {
    match name.split_once('.') {
        None => {
            map.insert(name.to_owned(), v);
        }
        Some((head, rest)) => {
            let slot = map.entry(head.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(m) = slot {
                insert_path(m, rest, v);
            }
        }
    }
}

fn merge_missing(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
            (Some(Value::Object(a)), Value::Object(b)) => merge_missing(a, b),
            _ => {}
        }
    }
}

fn redact_all(v: &mut Value, r: &Redactor) {
    match v {
        Value::String(s) => {
            if let Some(new) = r(s) {
                *s = new;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact_all(x, r)),
        Value::Object(m) => m.values_mut().for_each(|x| redact_all(x, r)),
        _ => {}
    }
}

/// Builds the record fields of one event (pub for tests of callers).
pub fn fields_of(level: &tracing::Level, record: impl FnOnce(&mut dyn Visit)) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ts".into(), crate::chain::now().into());
    m.insert("id".into(), crate::event_id().into());
    m.insert("level".into(), level.as_str().to_ascii_lowercase().into());
    record(&mut Visitor(&mut m));
    m
}

impl<S> Layer<S> for AuditLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != REQUEST_TARGET {
            return;
        }
        let mut m = Map::new();
        attrs.record(&mut Visitor(&mut m));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(m));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(SpanFields(m)) = ext.get_mut::<SpanFields>() {
                values.record(&mut Visitor(m));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != AUDIT_TARGET {
            return;
        }
        let Some(t) = self.target.get() else { return };
        let mut m = fields_of(event.metadata().level(), |v| event.record(v));
        normalize(&mut m);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                    merge_missing(&mut m, f);
                }
            }
        }
        if let Some(r) = &t.redact {
            for v in m.values_mut() {
                redact_all(v, r);
            }
        }
        t.log.append(m);
    }
}

/// Older events name the principal `issuer` / `subject`; records always
/// carry `principal: {iss, sub}`.
fn normalize(m: &mut Map<String, Value>) {
    if !m.contains_key("event") {
        m.insert("event".into(), "audit.unnamed".into());
    }
    let iss = m.remove("issuer");
    let sub = m.remove("subject");
    if !m.contains_key("principal") && (iss.is_some() || sub.is_some()) {
        let mut p = Map::new();
        if let Some(i) = iss {
            p.insert("iss".into(), i);
        }
        if let Some(s) = sub {
            p.insert("sub".into(), s);
        }
        m.insert("principal".into(), Value::Object(p));
    }
}
