//! CEF and RFC 5424 text, exactly.

mod common;

use common::{MAC, sample};
use palisade_export::{cef, otlp_logs_request, syslog_5424};
use serde_json::json;

#[test]
fn cef_of_a_full_record() {
    let expected = format!(
        "CEF:0|Palisade|palisade|1.2.3|tool.call|tool called|3|rt=1795341600123 externalId=42 suser=alice \
         requestClientApplication=claude act=allow cat=tools reason=ok outcome=success \
         cs1Label=session cs1=5e55 cs2Label=server cs2=github cs3Label=tool cs3=create_issue \
         cs4Label=trace cs4=0102030405060708090a0b0c0d0e0f10 cs5Label=rule cs5=r-1 cs6Label=mac cs6={MAC}"
    );
    assert_eq!(cef(&sample(), "1.2.3"), expected);
}

#[test]
fn cef_action_wins_over_decision_and_absent_keys_are_left_out() {
    let v = json!({"seq": 1, "event": "authz.decision", "action": "block", "decision": "deny"});
    assert_eq!(
        cef(&v, "0.1.0"),
        "CEF:0|Palisade|palisade|0.1.0|authz.decision|authz.decision|3|externalId=1 act=block"
    );
    let v = json!({"seq": 1, "event": "authz.decision", "decision": "deny"});
    assert!(cef(&v, "0.1.0").ends_with("|externalId=1 act=deny"));
}

#[test]
fn cef_escaping() {
    let v = json!({
        "event": "a|b\\c",
        "msg": "pipe | back \\ eq = line\nbreak",
        "reason": "x=y\\z|w\r\nv",
    });
    assert_eq!(
        cef(&v, "1|0"),
        "CEF:0|Palisade|palisade|1\\|0|a\\|b\\\\c|pipe \\| back \\\\ eq = line break|3|reason=x\\=y\\\\z|w\\r\\nv"
    );
}

#[test]
fn cef_severity_mapping() {
    let sev = |v: serde_json::Value| {
        let line = cef(&v, "1");
        line.split('|').nth(6).unwrap_or_default().to_owned()
    };
    assert_eq!(sev(json!({"event": "e", "level": "error"})), "8");
    assert_eq!(sev(json!({"event": "e", "level": "warn"})), "6");
    assert_eq!(sev(json!({"event": "e", "level": "info"})), "3");
    assert_eq!(sev(json!({"event": "e", "level": "debug"})), "1");
    assert_eq!(sev(json!({"event": "e", "level": "trace"})), "1");
    assert_eq!(sev(json!({"event": "e"})), "3");
    // An explicit severity overrides the level, clamped to 0–10.
    assert_eq!(sev(json!({"event": "e", "level": "error", "severity": 2})), "2");
    assert_eq!(sev(json!({"event": "e", "severity": 42})), "10");
    assert_eq!(sev(json!({"event": "e", "severity": -3})), "0");
    assert_eq!(sev(json!({"event": "e", "severity": "7", "level": "warn"})), "6");
    // Alerts are at least 9.
    assert_eq!(sev(json!({"event": "alert.fired", "level": "info"})), "9");
    assert_eq!(sev(json!({"event": "alert.fired", "severity": 10})), "10");
    assert_eq!(sev(json!({"event": "alert.fired", "severity": 1})), "9");
}

#[test]
fn syslog_of_a_full_record() {
    let line = syslog_5424(&sample(), 13, "palisade", "gw1", "hello world");
    assert_eq!(
        line,
        format!(
            "<110>1 2026-11-22T10:00:00.123456Z gw1 palisade - tool.call [palisade@32473 seq=\"42\" mac=\"{MAC}\"] hello world"
        )
    );
}

#[test]
fn syslog_pri_follows_level_and_facility() {
    let pri = |level: &str, facility: u8| {
        let v = json!({"event": "e", "level": level});
        let line = syslog_5424(&v, facility, "p", "h", "m");
        line[1..line.find('>').unwrap_or(1)].to_owned()
    };
    assert_eq!(pri("error", 13), "107");
    assert_eq!(pri("warn", 13), "108");
    assert_eq!(pri("info", 13), "110");
    assert_eq!(pri("debug", 13), "111");
    assert_eq!(pri("trace", 0), "7");
    assert_eq!(pri("info", 4), "38");
    // No facility above 23 exists.
    assert_eq!(pri("error", 200), "187");
}

#[test]
fn syslog_sd_escaping_and_nil_values() {
    let v = json!({"seq": "1\"2", "mac": "a\\b]c", "event": "x", "ts": "garbage"});
    assert_eq!(
        syslog_5424(&v, 13, "palisade", "h", ""),
        "<110>1 - h palisade - x [palisade@32473 seq=\"1\\\"2\" mac=\"a\\\\b\\]c\"]"
    );
    // No seq or mac: the structured data is the NILVALUE.
    let v = json!({"event": "x"});
    assert_eq!(syslog_5424(&v, 13, "palisade", "h", "m"), "<110>1 - h palisade - x - m");
    // Hostname and app name are kept to printable ASCII.
    assert_eq!(syslog_5424(&v, 13, "my app", "", "m"), "<110>1 - - my_app - x - m");
}

#[test]
fn syslog_timestamp_is_utc_with_microseconds() {
    let v = json!({"event": "x", "ts": "2026-11-22T12:00:00.5+02:00"});
    assert!(syslog_5424(&v, 13, "p", "h", "").starts_with("<110>1 2026-11-22T10:00:00.500000Z h p - x -"));
}

#[test]
fn msgid_falls_back_for_odd_event_names() {
    let msgid = |event: serde_json::Value| {
        let v = json!({ "event": event });
        syslog_5424(&v, 13, "p", "h", "")
            .split(' ')
            .nth(5)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(msgid(json!("auth.failure")), "auth.failure");
    assert_eq!(msgid(json!("a".repeat(32))), "a".repeat(32));
    assert_eq!(msgid(json!("a".repeat(33))), "-");
    assert_eq!(msgid(json!("with space")), "-");
    assert_eq!(msgid(json!("ünïcode")), "-");
    assert_eq!(msgid(json!("tab\tname")), "-");
    assert_eq!(msgid(json!("")), "-");
    assert_eq!(msgid(json!(17)), "-");
    assert_eq!(msgid(json!(null)), "-");
}

#[test]
fn malformed_records_do_not_panic() {
    let huge = "x".repeat(1 << 20);
    let cases = [
        json!(null),
        json!("just a string"),
        json!([1, 2, 3]),
        json!({}),
        json!({"event": 42, "level": 7, "seq": {"nested": true}, "principal": "not an object"}),
        json!({"event": "tool.call", "msg": huge, "ts": 12, "trace_id": "zz", "severity": 1e300}),
        json!({"event": ["a"], "mac": null, "ts": "9999-99-99T00:00:00Z"}),
    ];
    for v in &cases {
        let c = cef(v, "1");
        assert!(c.starts_with("CEF:0|Palisade|palisade|1|"), "{}", &c[..c.len().min(80)]);
        let s = syslog_5424(v, 13, "palisade", "h", &c);
        assert!(s.starts_with('<'));
        let r = common::rec(v.clone());
        let req = otlp_logs_request(&[r], "palisade");
        assert_eq!(req.resource_logs[0].scope_logs[0].log_records.len(), 1);
    }
    // Absent event: the CEF header says so instead of being empty.
    assert_eq!(cef(&json!({}), "1"), "CEF:0|Palisade|palisade|1|unknown|unknown|3|");
    // The 1 MiB message is kept whole in CEF (only UDP datagrams are capped).
    assert!(cef(&cases[5], "1").len() > 1 << 20);
    // A huge float severity is clamped.
    assert!(cef(&cases[5], "1").starts_with("CEF:0|Palisade|palisade|1|tool.call|"));
    assert_eq!(cef(&cases[5], "1").split('|').nth(6), Some("10"));
}
