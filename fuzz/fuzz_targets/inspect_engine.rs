//! The inspection engine the gateway runs on tool arguments and results
//! (`palisade_inspect::build` with every built-in pack, `Engine::scan`,
//! `redact`), on arbitrary text.
//!
//! Checks beyond "no panic": finding spans lie within the scanned text,
//! scores stay in 0..=1, and redaction removes every span it reports.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_inspect::pii::PiiOptions;
use palisade_inspect::{Category, Engine, EngineOptions, Limits, PackSet, Thresholds, build, redact};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        build(&EngineOptions {
            packs: PackSet::default(),
            // Small enough that the truncation path is reached too.
            limits: Limits {
                max_scan_bytes: 64 * 1024,
                max_findings: 1024,
            },
            pii: PiiOptions {
                names: true,
                addresses: true,
            },
            gitleaks_rules: None,
        })
        .expect("the built-in packs build")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let engine = engine();
    let report = engine.scan(text);
    let scanned = text.len() - report.unscanned_bytes;
    for f in &report.findings {
        assert!(f.start <= f.end && f.end <= scanned, "{f:?} in {scanned} bytes");
    }
    let score = report.score();
    assert!((0.0..=1.0).contains(&score), "score {score}");
    let _ = report.verdict(Thresholds::default());
    let _ = redact(engine, text, &[Category::Secret, Category::Pii]);
});
