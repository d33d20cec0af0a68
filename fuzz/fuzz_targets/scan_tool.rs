//! The tool-metadata scanner (`palisade_scan::scan_tool`, `scan_value`,
//! `scan_instructions`, `collisions`) on JSON as an MCP server sends it in
//! `tools/list`, and the scan output formats.
//!
//! Checks beyond "no panic": every finding's span lies within the string its
//! pointer names (or that member's key), scores stay in 0..=1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_scan::format::{Item, item_json, sarif, text};
use palisade_scan::{Report, collisions, scan_instructions, scan_tool, scan_value};
use serde_json::Value;

fn check(doc: &Value, report: &Report) {
    let score = report.score();
    assert!((0.0..=1.0).contains(&score), "score {score}");
    for f in &report.findings {
        assert!(f.start <= f.end, "{f:?}");
        assert!((0.0..=1.0).contains(&f.score), "{f:?}");
        // Findings in an object key carry the member's pointer, so the span
        // is within the key (the pointer's last token) or within the value.
        if let Some(Value::String(s)) = doc.pointer(&f.pointer) {
            let key = f
                .pointer
                .rsplit('/')
                .next()
                .unwrap_or("")
                .replace("~1", "/")
                .replace("~0", "~");
            assert!(f.end <= s.len().max(key.len()), "{f:?} past the end of {s:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        if let Ok(s) = std::str::from_utf8(data) {
            check(&Value::Null, &scan_instructions(s));
        }
        return;
    };
    let report = scan_tool(&doc);
    check(&doc, &report);
    check(&doc, &scan_value(&doc));
    let id = doc.get("name").cloned().unwrap_or(Value::Null);
    let item = Item {
        id: &id,
        report: &report,
    };
    let _ = item_json(&item);
    let _ = text(std::slice::from_ref(&item));
    let _ = sarif(std::slice::from_ref(&item), "tools.json");

    // An array of tools from two servers: name collisions.
    if let Value::Array(tools) = &doc {
        let pairs: Vec<(&str, &str)> = tools
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((if i % 2 == 0 { "a" } else { "b" }, t.get("name")?.as_str()?)))
            .collect();
        let _ = collisions(&pairs);
    }
});
