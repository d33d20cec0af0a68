//! The chain end to end: writing, every kind of tampering, recovery after a
//! torn write, rotation, checkpoints, the index and the tracing layer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_audit::index::{Filter, Index};
use palisade_audit::verify::{BreakKind, verify};
use palisade_audit::writer::segments;
use palisade_audit::{AuditKey, AuditLog, Fsync, Options};
use serde_json::{Map, Value, json};

fn key() -> AuditKey {
    AuditKey::new(&[42u8; 32]).unwrap()
}

fn opts(dir: &Path) -> Options {
    let mut o = Options::new(dir);
    o.fsync = Fsync::Always;
    o
}

fn ev(name: &str, i: u64) -> Map<String, Value> {
    let Value::Object(m) = json!({
        "ts": format!("2026-11-22T10:{:02}:{:02}.000000Z", (i / 60) % 60, i % 60),
        "id": format!("{i:032x}"),
        "event": name,
        "principal": {"iss": "https://idp", "sub": if i.is_multiple_of(2) { "alice" } else { "bob" }},
        "upstream": "files",
        "tool": "read",
        "session": if i.is_multiple_of(3) { "aaaaaaaaaaaa" } else { "bbbbbbbbbbbb" },
        "decision": if i.is_multiple_of(5) { "deny" } else { "allow" },
        "request_id": i.to_string(),
    }) else {
        unreachable!()
    };
    m
}

/// Writes `n` events and shuts down cleanly (final checkpoint).
fn write_chain(dir: &Path, n: u64) {
    let log = AuditLog::open(opts(dir), key(), None).unwrap();
    for i in 0..n {
        log.append(ev("tool.call", i));
    }
    log.shutdown();
}

fn only_segment(dir: &Path) -> PathBuf {
    let s = segments(dir).unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    s[0].1.clone()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect()
}

fn put(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.join("\n") + "\n").unwrap();
}

fn broken(dir: &Path) -> (BreakKind, usize, String) {
    let r = verify(dir, &key(), None).unwrap();
    let b = r.broken.expect("the tampering must be detected");
    (b.kind, b.line, b.detail)
}

#[test]
fn an_untouched_chain_verifies() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 50);
    let r = verify(d.path(), &key(), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    // One segment record plus 50 events.
    assert_eq!(r.records, 51);
    assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(51)));
    assert_eq!(r.checkpoints, 1);
    assert_eq!(r.last_checkpoint.as_ref().map(|c| c.0), Some(51));
}

#[test]
fn an_edited_record_is_found() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 20);
    let seg = only_segment(d.path());
    let mut l = lines(&seg);
    l[10] = l[10].replace("\"tool\":\"read\"", "\"tool\":\"rm\"");
    assert_ne!(l[10], lines(&seg)[10], "the edit must change the line");
    put(&seg, &l);
    let (kind, line, _) = broken(d.path());
    assert_eq!((kind, line), (BreakKind::Edited, 11));
}

#[test]
fn a_deleted_record_is_found() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 20);
    let seg = only_segment(d.path());
    let mut l = lines(&seg);
    l.remove(7);
    put(&seg, &l);
    let (kind, line, detail) = broken(d.path());
    assert_eq!((kind, line), (BreakKind::Deleted, 8), "{detail}");
    assert!(detail.contains("1 record(s) missing"), "{detail}");
}

#[test]
fn reordered_records_are_found() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 20);
    let seg = only_segment(d.path());
    let mut l = lines(&seg);
    l.swap(5, 6);
    put(&seg, &l);
    let (kind, line, _) = broken(d.path());
    assert_eq!((kind, line), (BreakKind::Reordered, 6));
}

#[test]
fn a_replayed_record_is_found() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 20);
    let seg = only_segment(d.path());
    let mut l = lines(&seg);
    let copy = l[3].clone();
    l.insert(9, copy);
    put(&seg, &l);
    let (kind, line, _) = broken(d.path());
    assert_eq!((kind, line), (BreakKind::Reordered, 10));
}

#[test]
fn an_inserted_record_is_found() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 20);
    let seg = only_segment(d.path());
    let mut l = lines(&seg);
    // A forged record with a plausible shape but no valid MAC.
    let forged = l[4].replace("\"decision\":\"allow\"", "\"decision\":\"allow\",\"note\":\"x\"");
    let forged = if forged == l[4] {
        l[4].replace("\"tool\":\"read\"", "\"tool\":\"rm\"")
    } else {
        forged
    };
    l.insert(5, forged);
    put(&seg, &l);
    let (kind, line, _) = broken(d.path());
    assert_eq!(
        (kind, line),
        (BreakKind::Inserted, 6),
        "a forged record between two that link"
    );
    // A forged record with the next seq and a bad MAC, followed by the real one.
    let mut l = lines(&seg);
    l.remove(5);
    let real6 = l[5].clone();
    let fake = real6.replace("\"tool\":\"read\"", "\"tool\":\"rm\"");
    l.insert(5, fake);
    put(&seg, &l);
    let (kind, line, _) = broken(d.path());
    assert_eq!((kind, line), (BreakKind::Inserted, 6));
}

#[test]
fn truncation_at_the_end_is_found_against_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 20);
    let seg = only_segment(d.path());
    let mut l = lines(&seg);
    l.truncate(15);
    put(&seg, &l);
    let (kind, _, detail) = broken(d.path());
    assert_eq!(kind, BreakKind::Truncated, "{detail}");
    assert!(detail.contains("ends at seq 15"), "{detail}");
    // Without checkpoints a clean cut at the end cannot be seen: that is why they exist.
    std::fs::remove_file(d.path().join("checkpoints.jsonl")).unwrap();
    assert!(verify(d.path(), &key(), None).unwrap().ok());
}

#[test]
fn a_forged_checkpoint_is_ignored_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 5);
    let cp = d.path().join("checkpoints.jsonl");
    let mut l = lines(&cp);
    l.push(l[0].replace("\"seq\":6", "\"seq\":600"));
    put(&cp, &l);
    let r = verify(d.path(), &key(), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert!(
        r.warnings.iter().any(|w| w.contains("not a valid checkpoint")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn another_key_is_named() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 5);
    let other = AuditKey::new(&[1u8; 32]).unwrap();
    let b = verify(d.path(), &other, None).unwrap().broken.unwrap();
    assert_eq!((b.kind, b.line), (BreakKind::WrongKey, 1));
    // And the writer refuses to continue a chain under another key.
    let err = AuditLog::open(opts(d.path()), AuditKey::new(&[1u8; 32]).unwrap(), None).unwrap_err();
    assert!(err.contains("another key"), "{err}");
}

#[test]
fn a_missing_segment_is_found() {
    let d = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        write_chain(d.path(), 3);
    }
    let s = segments(d.path()).unwrap();
    assert_eq!(s.len(), 3);
    assert!(verify(d.path(), &key(), None).unwrap().ok());
    std::fs::remove_file(&s[1].1).unwrap();
    let (kind, _, detail) = broken(d.path());
    assert_eq!(kind, BreakKind::SegmentMissing, "{detail}");
}

#[test]
fn malformed_lines_are_reported_not_panicked_on() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 5);
    let seg = only_segment(d.path());
    for bad in [
        "",
        "garbage",
        "{\"seq\":3}",
        &"x".repeat(1 << 20),
        "{\"seq\":3,\"prev\":\"a\",\"mac\":\"b\"}",
    ] {
        let mut l = lines(&seg);
        l[3] = bad.to_owned();
        let copy = d.path().join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        put(&copy.join("audit-00000001.jsonl"), &l);
        let b = verify(&copy, &key(), None).unwrap().broken.unwrap();
        assert_eq!((b.kind, b.line), (BreakKind::Malformed, 4), "{bad:.20}");
    }
    assert!(verify(&d.path().join("nope"), &key(), None).is_err());
}

#[test]
fn a_torn_last_line_is_cut_on_restart_and_the_chain_goes_on() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 5);
    let seg = only_segment(d.path());
    // A crash in the middle of a write.
    let mut text = std::fs::read_to_string(&seg).unwrap();
    text.push_str("{\"seq\":7,\"ts\":\"2026-");
    std::fs::write(&seg, &text).unwrap();
    let r = verify(d.path(), &key(), None).unwrap();
    assert!(r.ok());
    assert!(
        r.warnings.iter().any(|w| w.contains("incomplete last record")),
        "{:?}",
        r.warnings
    );
    write_chain(d.path(), 5);
    let r = verify(d.path(), &key(), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!(r.segments, 2);
    assert_eq!(r.records, 12);
    let second = lines(&segments(d.path()).unwrap()[1].1);
    assert!(second[0].contains("\"torn_bytes\":"), "{}", second[0]);
}

#[test]
fn segments_rotate_by_size_and_stay_linked() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts(d.path());
    o.segment_max_bytes = 4096;
    o.fsync = Fsync::Never;
    let log = AuditLog::open(o, key(), None).unwrap();
    for i in 0..200 {
        log.append(ev("tool.call", i));
    }
    log.shutdown();
    let s = segments(d.path()).unwrap();
    assert!(s.len() > 5, "{}", s.len());
    let r = verify(d.path(), &key(), None).unwrap();
    assert!(r.ok(), "{:?}", r.broken);
    assert_eq!(r.records, 200 + s.len() as u64);
    assert!(r.checkpoints >= s.len() - 1);
}

#[test]
fn interval_fsync_and_hooks_see_every_record() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts(d.path());
    o.fsync = Fsync::Interval(Duration::from_millis(5));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let hook: palisade_audit::Hook = Box::new(move |w| {
        s2.lock()
            .unwrap()
            .push((w.seq, w.checkpoint, w.fields.get("event").cloned()));
    });
    let log = AuditLog::open(o, key(), Some(hook)).unwrap();
    for i in 0..10 {
        log.append(ev("auth.failure", i));
    }
    log.shutdown();
    let seen = seen.lock().unwrap();
    let records: Vec<_> = seen.iter().filter(|s| !s.1).collect();
    assert_eq!(records.len(), 11, "{seen:?}");
    assert!(seen.iter().any(|s| s.1), "a checkpoint at shutdown");
    assert_eq!(log.stats().written, 11);
    assert_eq!(log.stats().dropped, 0);
}

#[tokio::test]
async fn durable_waits_for_the_sync() {
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(opts(d.path()), key(), None).unwrap();
    for i in 0..100 {
        log.append(ev("tool.call", i));
    }
    log.durable().await.unwrap();
    // Every appended event is on disk now, before shutdown.
    let seg = only_segment(d.path());
    assert_eq!(lines(&seg).len(), 101);
    log.shutdown();
}

#[test]
fn the_index_answers_queries() {
    let d = tempfile::tempdir().unwrap();
    write_chain(d.path(), 300);
    write_chain(d.path(), 10);
    let mut ix = Index::open(d.path()).unwrap();
    assert_eq!(ix.catch_up().unwrap(), 312);
    assert_eq!(ix.catch_up().unwrap(), 0, "nothing new");
    let q = |f: Filter| ix.query(&f).unwrap();
    let alice = q(Filter {
        principal: Some("alice".into()),
        ..Default::default()
    });
    assert_eq!(alice.len(), 155);
    assert!(alice.iter().all(|l| l.contains("\"sub\":\"alice\"")));
    let denied = q(Filter {
        decision: Some("deny".into()),
        session: Some("aaaaaaaaaaaa".into()),
        ..Default::default()
    });
    // i % 5 == 0 and i % 3 == 0 in 0..300 and 0..10.
    assert_eq!(denied.len(), 20 + 1);
    let segs = q(Filter {
        event: Some("audit.*".into()),
        ..Default::default()
    });
    assert_eq!(segs.len(), 2);
    let window = q(Filter {
        since: Some("2026-11-22T10:01:00.000000Z".into()),
        until: Some("2026-11-22T10:01:10.000000Z".into()),
        event: Some("tool.call".into()),
        ..Default::default()
    });
    // Seconds 60..70 occur in 0..300 once each (the ts wraps per hour).
    assert_eq!(window.len(), 10);
    let last = q(Filter {
        limit: Some(1),
        newest_first: true,
        ..Default::default()
    });
    assert!(last[0].contains("\"request_id\":\"9\""), "{}", last[0]);
    // Records come from the chain: each still verifies.
    let k = key();
    for l in alice.iter().take(5) {
        let (b, m) = palisade_audit::chain::split(l).unwrap();
        assert!(k.verify(b.as_bytes(), m));
    }
    // A chain replaced under the index is re-indexed, not misread.
    drop(ix);
    for (_, p) in segments(d.path()).unwrap() {
        std::fs::remove_file(p).unwrap();
    }
    std::fs::remove_file(d.path().join("checkpoints.jsonl")).unwrap();
    write_chain(d.path(), 3);
    let mut ix = Index::open(d.path()).unwrap();
    ix.catch_up().unwrap();
    assert_eq!(ix.count().unwrap(), 4);
}

#[test]
fn the_layer_records_events_with_span_fields_and_redaction() {
    use tracing_subscriber::layer::SubscriberExt;
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(opts(d.path()), key(), None).unwrap();
    let redact: palisade_audit::Redactor =
        Arc::new(|s: &str| s.contains("ghp_").then(|| s.replace("ghp_SECRET", "[REDACTED:secret]")));
    let layer = palisade_audit::AuditLayer::new(log.clone(), Some(redact));
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        let span = tracing::info_span!(target: "palisade::request", "mcp.request",
            session = "abcdefabcdef", request_id = tracing::field::Empty, principal.sub = "alice", principal.iss = "https://idp");
        let _g = span.enter();
        span.record("request_id", "7");
        tracing::warn!(target: "palisade::audit", event = "inspect.detection", category = "secret", note = "token ghp_SECRET here", "found");
        tracing::info!(target: "palisade::other", event = "not.audited", "ignored");
        tracing::info!(target: "palisade::audit", event = "authz.decision", subject = "bob", issuer = "x", "own principal wins");
    });
    log.shutdown();
    let l = lines(&only_segment(d.path()));
    assert_eq!(l.len(), 3, "{l:?}");
    let v: Value = serde_json::from_str(&l[1]).unwrap();
    assert_eq!(v["event"], "inspect.detection");
    assert_eq!(v["level"], "warn");
    assert_eq!(v["msg"], "found");
    assert_eq!(v["session"], "abcdefabcdef");
    assert_eq!(v["request_id"], "7");
    assert_eq!(v["principal"]["sub"], "alice");
    assert_eq!(v["note"], "token [REDACTED:secret] here");
    assert!(!l.iter().any(|x| x.contains("ghp_SECRET")));
    let v: Value = serde_json::from_str(&l[2]).unwrap();
    assert_eq!(v["principal"]["sub"], "bob");
    assert_eq!(v["session"], "abcdefabcdef");
}
