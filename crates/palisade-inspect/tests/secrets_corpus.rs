//! Quality of the secrets pack on the shared labelled corpora.
//!
//! Reads `shared/corpus/secrets-*.jsonl` (rows `{"id","text","secrets":[{"start","end","type"}]}`,
//! byte offsets, `[]` = negative) and measures, per file and per mode
//! (built-in rules, built-in + gitleaks rules):
//! - span recall: a gold secret counts as found when a finding overlaps it;
//! - precision: findings overlapping a gold span / all findings;
//! - row false-positive rate: negative rows with any finding.
//!
//! Run with `--nocapture` to see the table.

use std::path::PathBuf;

use palisade_inspect::secrets::SecretsPack;
use palisade_inspect::{Category, Engine, Limits};
use serde::Deserialize;

#[derive(Deserialize)]
struct Row {
    id: String,
    text: String,
    secrets: Vec<Gold>,
}

#[derive(Deserialize)]
struct Gold {
    start: usize,
    end: usize,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
}

fn load(name: &str) -> Vec<Row> {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "secrets corpus {} is missing ({e}); it lives in shared/corpus next to the checkout",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} line {}: {e}", i + 1)))
        .collect()
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    gold: usize,
    found: usize,
    findings: usize,
    true_findings: usize,
    negatives: usize,
    fp_rows: usize,
}

impl Stats {
    fn recall(&self) -> f64 {
        if self.gold == 0 {
            1.0
        } else {
            self.found as f64 / self.gold as f64
        }
    }
    fn precision(&self) -> f64 {
        if self.findings == 0 {
            1.0
        } else {
            self.true_findings as f64 / self.findings as f64
        }
    }
    fn fp_rate(&self) -> f64 {
        if self.negatives == 0 {
            0.0
        } else {
            self.fp_rows as f64 / self.negatives as f64
        }
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn measure(engine: &Engine, rows: &[Row], verbose: bool) -> Stats {
    let mut s = Stats::default();
    for row in rows {
        let report = engine.scan(&row.text);
        // Only this pack's findings: the engine also reports hidden text.
        let spans: Vec<(usize, usize)> = report
            .findings
            .iter()
            .filter(|f| f.category == Category::Secret)
            .map(|f| (f.start, f.end))
            .collect();
        s.findings += spans.len();
        s.true_findings += spans
            .iter()
            .filter(|f| row.secrets.iter().any(|g| overlaps(**f, (g.start, g.end))))
            .count();
        if row.secrets.is_empty() {
            s.negatives += 1;
            if !spans.is_empty() {
                s.fp_rows += 1;
                if verbose {
                    let rules: Vec<&str> = report.findings.iter().map(|f| &*f.rule).collect();
                    println!("  FP {} {rules:?}", row.id);
                }
            }
        }
        for g in &row.secrets {
            s.gold += 1;
            if spans.iter().any(|f| overlaps(*f, (g.start, g.end))) {
                s.found += 1;
            } else if verbose {
                println!("  FN {}", row.id);
            }
        }
    }
    s
}

const FILES: [&str; 3] = [
    "secrets-gitleaks-rules.jsonl",
    "secrets-detect-secrets-fixtures.jsonl",
    "secrets-hard-negatives.jsonl",
];

fn engine(pack: SecretsPack) -> Engine {
    Engine::new(vec![Box::new(pack)], Limits::default()).expect("engine builds")
}

#[test]
fn secrets_corpus_quality() {
    let verbose = std::env::var_os("SECRETS_CORPUS_VERBOSE").is_some();
    let rules_path = corpus_dir().join("secrets-rules-gitleaks.toml");
    let toml = std::fs::read_to_string(&rules_path)
        .unwrap_or_else(|e| panic!("gitleaks rules {} are missing ({e})", rules_path.display()));
    let gitleaks = SecretsPack::with_gitleaks(&toml).expect("gitleaks rules load");
    println!(
        "gitleaks rules: {} skipped {:?}",
        gitleaks.skipped_rules().len(),
        gitleaks.skipped_rules()
    );
    // The shipped file is compatible with the regex crate except for
    // path-only rules: few may be skipped.
    assert!(gitleaks.skipped_rules().len() <= 3, "{:?}", gitleaks.skipped_rules());

    let modes = [
        ("builtin", engine(SecretsPack::builtin())),
        ("gitleaks", engine(gitleaks)),
    ];
    let mut results = Vec::new();
    println!(
        "{:<9} {:<40} {:>5} {:>7} {:>9} {:>6} {:>8}",
        "mode", "file", "gold", "recall", "precision", "neg", "fp-rate"
    );
    for (mode, eng) in &modes {
        for file in FILES {
            let rows = load(file);
            if verbose {
                println!("{mode} {file}");
            }
            let s = measure(eng, &rows, verbose);
            println!(
                "{:<9} {:<40} {:>5} {:>7.3} {:>9.3} {:>6} {:>7.2}%",
                mode,
                file,
                s.gold,
                s.recall(),
                s.precision(),
                s.negatives,
                s.fp_rate() * 100.0
            );
            results.push((*mode, file, s));
        }
    }
    let get = |mode: &str, file: &str| {
        results
            .iter()
            .find(|(m, f, _)| *m == mode && *f == file)
            .map(|r| r.2)
            .expect("measured")
    };
    // Thresholds sit a little under the measured values (see the report), so
    // a regression fails the test.
    // Measured (see the report): gitleaks mode 1.000 recall / 1.000
    // precision / 0% FP; built-in 0.599 / 0.911 / 5.4% (the built-ins flag
    // Google keys that only the gitleaks file allowlists); 0% FP on the hard
    // negatives in both modes.
    let g = get("gitleaks", "secrets-gitleaks-rules.jsonl");
    assert!(g.recall() >= 0.97, "gitleaks-mode recall {:.3}", g.recall());
    assert!(g.precision() >= 0.95, "gitleaks-mode precision {:.3}", g.precision());
    assert!(g.fp_rate() <= 0.005, "gitleaks-mode FP rate {:.4}", g.fp_rate());
    for mode in ["builtin", "gitleaks"] {
        let h = get(mode, "secrets-hard-negatives.jsonl");
        assert!(h.fp_rate() <= 0.005, "{mode} hard negatives FP rate {:.4}", h.fp_rate());
    }
    let b = get("builtin", "secrets-gitleaks-rules.jsonl");
    assert!(b.recall() >= 0.55, "built-in recall {:.3}", b.recall());
    assert!(b.precision() >= 0.85, "built-in precision {:.3}", b.precision());
    assert!(b.fp_rate() <= 0.08, "built-in FP rate {:.4}", b.fp_rate());
    // detect-secrets labels follow its entropy semantics: regression only.
    let d = get("gitleaks", "secrets-detect-secrets-fixtures.jsonl");
    assert!(d.recall() >= 0.25, "detect-secrets recall {:.3}", d.recall());
    assert!(d.fp_rate() <= 0.0, "detect-secrets FP rate {:.3}", d.fp_rate());
}
