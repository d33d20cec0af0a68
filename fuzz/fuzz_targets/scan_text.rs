//! Per-string analysis in `palisade_scan::text`: the folded view with its
//! map back to the original, invisible and deceptive characters, and the
//! decoders of hidden carriers (tags, zero-width bits, base64, hex).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_scan::text::{encoded_blobs, fold, printable_text, unicode_findings};

fuzz_target!(|data: &[u8]| {
    let _ = printable_text(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let folded = fold(s);
    // Every folded range maps back into the original on character boundaries.
    let n = folded.text.len();
    for (a, b) in [(0, n), (0, n / 2), (n / 3, n), (n / 2, n / 2 + 1), (n, n + 5)] {
        let (x, y) = folded.span(a, b);
        assert!(x <= y && y <= s.len(), "span {a}..{b} -> {x}..{y} of {}", s.len());
        assert!(
            s.is_char_boundary(x) && s.is_char_boundary(y),
            "span {a}..{b} -> {x}..{y}"
        );
    }
    let mut findings = Vec::new();
    let mut decoded = Vec::new();
    unicode_findings(s, "/x", &mut findings, &mut decoded);
    for f in &findings {
        assert!(f.start <= f.end && f.end <= s.len(), "{f:?} in {} bytes", s.len());
    }
    for d in decoded.iter().chain(encoded_blobs(s).iter()) {
        assert!(
            d.span.0 <= d.span.1 && d.span.1 <= s.len(),
            "{:?} in {} bytes",
            d.span,
            s.len()
        );
    }
});
