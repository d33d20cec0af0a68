//! The JSON-RPC decoder (`palisade_wire::parse_message`) and its structural
//! pre-scan, on raw bytes as they arrive from a client or an upstream.
//!
//! Checks beyond "no panic": an accepted message is UTF-8 JSON, honours the
//! limits it was decoded under, and re-encodes to a message that decodes again
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_wire::{Limits, has_unique_keys, parse_message, prescan};
use serde::de::IgnoredAny;
use serde_json::Value;

/// Deepest nesting, longest string (decoded, keys included) and largest
/// container of a parsed document.
fn shape(v: &Value, depth: usize, out: &mut (usize, usize, usize)) {
    match v {
        Value::String(s) => out.1 = out.1.max(s.len()),
        Value::Array(a) => {
            out.0 = out.0.max(depth + 1);
            out.2 = out.2.max(a.len());
            for x in a {
                shape(x, depth + 1, out);
            }
        }
        Value::Object(m) => {
            out.0 = out.0.max(depth + 1);
            out.2 = out.2.max(m.len());
            for (k, x) in m {
                out.1 = out.1.max(k.len());
                shape(x, depth + 1, out);
            }
        }
        _ => {}
    }
}

fn check(bytes: &[u8], limits: &Limits) {
    let Ok(msg) = parse_message(bytes, limits) else {
        return;
    };
    assert!(prescan(bytes, limits).is_ok());
    assert!(bytes.len() <= limits.max_bytes);
    let text = std::str::from_utf8(bytes).expect("an accepted message is UTF-8");
    serde_json::from_str::<IgnoredAny>(text).expect("an accepted message is JSON");
    // Strings with lone surrogate escapes (`"\ud800"`) are JSON but no `Value`.
    if let Ok(doc) = serde_json::from_str::<Value>(text) {
        let mut s = (0, 0, 0);
        shape(&doc, 0, &mut s);
        assert!(
            s.0 <= limits.max_depth.min(Limits::DEPTH_CAP),
            "depth {} over {limits:?}",
            s.0
        );
        assert!(s.1 <= limits.max_string, "string of {} bytes over {limits:?}", s.1);
        assert!(s.2 <= limits.max_items, "{} items over {limits:?}", s.2);
    }

    let _ = (msg.kind(), msg.method(), msg.error_object());
    let again = msg.to_bytes();
    let msg2 = parse_message(&again, &Limits::default()).expect("a re-encoded message decodes");
    assert_eq!(msg2.to_bytes(), again, "re-encoding is stable");
    assert_eq!(msg2.id, msg.id);
    assert_eq!(msg2.kind(), msg.kind());
}

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = has_unique_keys(s);
    }
    // Small limits chosen by the first four bytes, so the limit paths are reached.
    if let [a, b, c, d, rest @ ..] = data {
        let limits = Limits {
            max_bytes: usize::from(*a) * 64 + 1,
            max_depth: usize::from(*b) % 80,
            max_string: usize::from(*c) % 64,
            max_items: usize::from(*d) % 16,
        };
        check(rest, &limits);
    }
});
