//! Text forms of a record: CEF and the RFC 5424 syslog frame around it.
//!
//! Every field is read defensively: a record that lacks fields or carries
//! values of the wrong type still formats (absent parts are left out or
//! replaced by the syslog NILVALUE `-`).

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest syslog datagram sent over UDP (header and message).
pub(crate) const UDP_MAX: usize = 8192;

/// The RFC 5424 structured-data ID of Palisade's element (an enterprise-number style ID).
const SD_ID: &str = "palisade@32473";

/// Longest SD-PARAM value kept, so the header stays far below [`UDP_MAX`] whatever the record holds.
const SD_VALUE_MAX: usize = 256;

/// The record's level, from its `level` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

pub(crate) fn level(rec: &Value) -> Option<Level> {
    match rec.get("level")?.as_str()? {
        "trace" => Some(Level::Trace),
        "debug" => Some(Level::Debug),
        "info" => Some(Level::Info),
        "warn" | "warning" => Some(Level::Warn),
        "error" | "err" => Some(Level::Error),
        _ => None,
    }
}

/// The `event` field, or "" when absent or not a string.
pub(crate) fn event_name(rec: &Value) -> &str {
    rec.get("event").and_then(Value::as_str).unwrap_or("")
}

/// A scalar as text: strings as they are, numbers and bools in JSON form.
/// Null, arrays and objects have no scalar text.
pub(crate) fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `ts` as a point in time.
pub(crate) fn timestamp(rec: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(rec.get("ts")?.as_str()?, &Rfc3339).ok()
}

/// The host's name as syslog and OTLP report it: `/proc/sys/kernel/hostname`, or "-".
pub(crate) fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        header_token(raw.trim(), 255)
    })
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

// ---------------------------------------------------------------- CEF

/// CEF severity (0–10): the record's `severity` when present, else from the level;
/// `alert.fired` is never below 9.
pub(crate) fn cef_severity(rec: &Value) -> u8 {
    let explicit = rec.get("severity").and_then(|v| match v {
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => i.clamp(0, 10) as u8,
            // Beyond i64 or fractional: clamp the float form.
            None => n.as_f64().map_or(10, |f| f.clamp(0.0, 10.0).round() as u8),
        }),
        _ => None,
    });
    let sev = explicit.unwrap_or(match level(rec) {
        Some(Level::Error) => 8,
        Some(Level::Warn) => 6,
        Some(Level::Debug | Level::Trace) => 1,
        Some(Level::Info) | None => 3,
    });
    if event_name(rec) == "alert.fired" {
        sev.max(9)
    } else {
        sev
    }
}

/// CEF header field: `\` and `|` escaped; line breaks (never valid in a header) become spaces.
fn cef_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// CEF extension value: `\`, `=` escaped, CR and LF as `\r` and `\n`.
fn cef_value(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The record as one ArcSight CEF line:
/// `CEF:0|Palisade|palisade|<version>|<event>|<msg or event>|<severity>|<extension>`.
///
/// Extension keys, each left out when the record lacks the field, in this order:
/// `rt` (ms since the epoch, from `ts`), `externalId` (`seq`), `suser` (`principal.sub`),
/// `requestClientApplication` (`client`), `act` (`action`, else `decision`), `cat`,
/// `reason`, `outcome`, then the labelled custom strings `cs1` session, `cs2` server
/// (`upstream`), `cs3` tool, `cs4` trace (`trace_id`), `cs5` rule, `cs6` mac.
pub fn cef(rec: &Value, product_version: &str) -> String {
    let event = match event_name(rec) {
        "" => "unknown",
        e => e,
    };
    let name = match rec.get("msg").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m,
        _ => event,
    };
    let mut out = format!(
        "CEF:0|Palisade|palisade|{}|{}|{}|{}|",
        cef_header(product_version),
        cef_header(event),
        cef_header(name),
        cef_severity(rec)
    );

    let mut ext: Vec<(&str, String)> = Vec::new();
    if let Some(t) = timestamp(rec) {
        ext.push(("rt", (t.unix_timestamp_nanos() / 1_000_000).to_string()));
    }
    let mut put = |key: &'static str, v: Option<String>| {
        if let Some(v) = v {
            ext.push((key, v));
        }
    };
    put("externalId", scalar(rec.get("seq")));
    put("suser", scalar(rec.get("principal").and_then(|p| p.get("sub"))));
    put("requestClientApplication", scalar(rec.get("client")));
    put("act", scalar(rec.get("action")).or_else(|| scalar(rec.get("decision"))));
    put("cat", scalar(rec.get("category")));
    put("reason", scalar(rec.get("reason")));
    put("outcome", scalar(rec.get("outcome")));
    for (n, label, field) in [
        (1, "session", "session"),
        (2, "server", "upstream"),
        (3, "tool", "tool"),
        (4, "trace", "trace_id"),
        (5, "rule", "rule"),
        (6, "mac", "mac"),
    ] {
        if let Some(v) = scalar(rec.get(field)) {
            ext.push((CS_LABELS[n - 1], label.to_owned()));
            ext.push((CS_KEYS[n - 1], v));
        }
    }

    for (i, (k, v)) in ext.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        cef_value(v, &mut out);
    }
    out
}

const CS_LABELS: [&str; 6] = ["cs1Label", "cs2Label", "cs3Label", "cs4Label", "cs5Label", "cs6Label"];
const CS_KEYS: [&str; 6] = ["cs1", "cs2", "cs3", "cs4", "cs5", "cs6"];

// ---------------------------------------------------------------- RFC 5424

/// Syslog severity from the level (info when absent or unknown).
pub(crate) fn syslog_severity(rec: &Value) -> u8 {
    match level(rec) {
        Some(Level::Error) => 3,
        Some(Level::Warn) => 4,
        Some(Level::Debug | Level::Trace) => 7,
        Some(Level::Info) | None => 6,
    }
}

/// A header token: printable US-ASCII only (others become `_`), at most `max` bytes, `-` when empty.
fn header_token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if t.is_empty() { "-".into() } else { t }
}

/// MSGID: the event name when it is 1–32 printable ASCII characters, else `-`.
fn msgid(rec: &Value) -> &str {
    let e = event_name(rec);
    if !e.is_empty() && e.len() <= 32 && e.bytes().all(|b| b.is_ascii_graphic()) {
        e
    } else {
        "-"
    }
}

/// RFC 5424 TIMESTAMP from `ts`: UTC with microseconds, or `-` when `ts` is unusable.
fn syslog_time(rec: &Value) -> String {
    let Some(t) = timestamp(rec).map(|t| t.to_offset(time::UtcOffset::UTC)) else {
        return "-".into();
    };
    if !(0..=9999).contains(&t.year()) {
        return "-".into();
    }
    palisade_audit::chain::timestamp(t)
}

/// SD-PARAM value escaping (RFC 5424 §6.3.3): `"`, `\` and `]`.
fn sd_escape(s: &str, out: &mut String) {
    for c in truncate_str(s, SD_VALUE_MAX).chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Everything before MSG: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD`.
fn syslog_header(rec: &Value, facility: u8, app_name: &str, hostname: &str) -> String {
    // Facilities above 23 do not exist; clamp rather than produce an invalid PRI.
    let pri = u16::from(facility.min(23)) * 8 + u16::from(syslog_severity(rec));
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "<{pri}>1 {} {} {} - {} ",
        syslog_time(rec),
        header_token(hostname, 255),
        header_token(app_name, 48),
        msgid(rec)
    );
    let params: Vec<(&str, String)> = [("seq", scalar(rec.get("seq"))), ("mac", scalar(rec.get("mac")))]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    if params.is_empty() {
        out.push('-');
    } else {
        out.push('[');
        out.push_str(SD_ID);
        for (k, v) in params {
            let _ = write!(out, " {k}=\"");
            sd_escape(&v, &mut out);
            out.push('"');
        }
        out.push(']');
    }
    out
}

/// One RFC 5424 syslog message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [SD] MSG`.
///
/// PRI is `facility * 8` plus the syslog severity of `level` (error 3, warn 4,
/// info 6, debug and trace 7); MSGID is the event name when it is printable ASCII
/// of at most 32 characters, else `-`; the structured data is
/// `[palisade@32473 seq="…" mac="…"]`. An empty `msg` is left out with its space.
pub fn syslog_5424(rec: &Value, facility: u8, app_name: &str, hostname: &str, msg: &str) -> String {
    let mut out = syslog_header(rec, facility, app_name, hostname);
    if !msg.is_empty() {
        out.reserve(msg.len() + 1);
        out.push(' ');
        out.push_str(msg);
    }
    out
}

/// [`syslog_5424`] cut to [`UDP_MAX`] bytes by truncating MSG on a char boundary.
pub(crate) fn syslog_datagram(rec: &Value, facility: u8, app_name: &str, hostname: &str, msg: &str) -> String {
    let header = syslog_header(rec, facility, app_name, hostname);
    if header.len() + 1 >= UDP_MAX {
        // Cannot happen with the caps on header parts; cut anyway rather than send an oversize datagram.
        return truncate_str(&header, UDP_MAX).to_owned();
    }
    let room = UDP_MAX - header.len() - 1;
    syslog_5424(rec, facility, app_name, hostname, truncate_str(msg, room))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "a€€"; // 1 + 3 + 3 bytes
        assert_eq!(truncate_str(s, 7), s);
        assert_eq!(truncate_str(s, 6), "a€");
        assert_eq!(truncate_str(s, 5), "a€");
        assert_eq!(truncate_str(s, 4), "a€");
        assert_eq!(truncate_str(s, 3), "a");
        assert_eq!(truncate_str(s, 0), "");
    }

    #[test]
    fn datagram_is_capped_on_a_char_boundary() {
        let rec = json!({"seq": 1, "event": "tool.call", "level": "info", "mac": "ab"});
        let header_len = syslog_header(&rec, 13, "palisade", "h").len();
        // Choose a message so that the byte limit falls inside a 3-byte char.
        let room = UDP_MAX - header_len - 1;
        let msg = format!("{}{}", "x".repeat(room % 3 + 1), "€".repeat(4000));
        let d = syslog_datagram(&rec, 13, "palisade", "h", &msg);
        assert!(d.len() <= UDP_MAX, "{}", d.len());
        assert!(d.len() > UDP_MAX - 3, "{}", d.len());
        assert!(d.ends_with('€'));
        // A short message is untouched.
        assert_eq!(
            syslog_datagram(&rec, 13, "palisade", "h", "short"),
            syslog_5424(&rec, 13, "palisade", "h", "short")
        );
    }

    #[test]
    fn huge_header_values_are_bounded() {
        let rec = json!({"seq": 1, "event": "x", "mac": "]".repeat(100_000)});
        let h = syslog_header(&rec, 13, &"a".repeat(500), &"h".repeat(500));
        assert!(h.len() < 2000, "{}", h.len());
        let d = syslog_datagram(&rec, 13, "a", "h", &"m".repeat(100_000));
        assert_eq!(d.len(), UDP_MAX);
    }

    #[test]
    fn scalars() {
        assert_eq!(scalar(Some(&json!("a"))).as_deref(), Some("a"));
        assert_eq!(scalar(Some(&json!(12))).as_deref(), Some("12"));
        assert_eq!(scalar(Some(&json!(true))).as_deref(), Some("true"));
        assert_eq!(scalar(Some(&json!(null))), None);
        assert_eq!(scalar(Some(&json!({"a": 1}))), None);
        assert_eq!(scalar(None), None);
    }

    #[test]
    fn header_tokens() {
        assert_eq!(header_token("", 10), "-");
        assert_eq!(header_token("a b\u{e9}", 10), "a_b_");
        assert_eq!(header_token("abcdef", 3), "abc");
    }
}
