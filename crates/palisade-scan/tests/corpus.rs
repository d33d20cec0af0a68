//! The tool-poisoning corpus (`../shared/corpus/tools-*.jsonl`), read where it
//! lies. Asserts the minimum figures recorded in `docs/detection.md`.

use std::path::PathBuf;

use palisade_scan::{Verdict, scan_tool};
use serde_json::Value;

fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    dir.is_dir().then_some(dir)
}

#[derive(Default, Debug)]
struct Counts {
    tp: usize,
    fp: usize,
    tn: usize,
    fn_: usize,
    suspicious_benign: usize,
}

fn run(file: &str, counts: &mut Counts, verbose: bool) {
    let Some(dir) = corpus_dir() else {
        panic!("../shared/corpus is missing: the corpus test needs the shared folder beside the repository");
    };
    let text = std::fs::read_to_string(dir.join(file)).expect("corpus file");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).expect("corpus row");
        let poisoned = row["label"] == "poisoned";
        let report = scan_tool(&row["tool"]);
        let flagged = report.verdict() == Verdict::Malicious;
        if !poisoned && report.verdict() == Verdict::Suspicious {
            counts.suspicious_benign += 1;
        }
        match (poisoned, flagged) {
            (true, true) => counts.tp += 1,
            (false, true) => counts.fp += 1,
            (false, false) => counts.tn += 1,
            (true, false) => counts.fn_ += 1,
        }
        if verbose && (poisoned != flagged || (!poisoned && report.verdict() != Verdict::Clean)) {
            eprintln!(
                "{} {} label={} verdict={:?} {:?}",
                file,
                row["id"],
                row["label"],
                report.verdict(),
                report
                    .findings
                    .iter()
                    .map(|f| format!("{}@{}", f.rule, f.pointer))
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn tool_corpus_meets_minimum_figures() {
    let mut all = Counts::default();
    for file in [
        "tools-invariant-dvmcp.jsonl",
        "tools-livemcpbench-dev.jsonl",
        "tools-official-servers.jsonl",
        "tools-synthetic-unicode.jsonl",
    ] {
        let mut c = Counts::default();
        run(file, &mut c, true);
        eprintln!("{file}: {c:?}");
        all.tp += c.tp;
        all.fp += c.fp;
        all.tn += c.tn;
        all.fn_ += c.fn_;
        all.suspicious_benign += c.suspicious_benign;
    }
    let precision = all.tp as f64 / (all.tp + all.fp).max(1) as f64;
    let recall = all.tp as f64 / (all.tp + all.fn_).max(1) as f64;
    let fpr = all.fp as f64 / (all.fp + all.tn).max(1) as f64;
    eprintln!("all: {all:?} precision {precision:.3} recall {recall:.3} fpr {fpr:.3}");
    assert!(precision >= 0.95, "precision {precision}");
    assert!(recall >= 0.95, "recall {recall}");
    assert!(fpr <= 0.01, "false-positive rate {fpr}");
}
