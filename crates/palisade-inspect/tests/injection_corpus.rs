//! Quality of the prompt-injection pack on the development corpus
//! (`shared/corpus/injection-*.jsonl`): recall, precision and false-positive
//! rate per file, and the aggregate over indirect injections (AgentDojo and
//! BIPIA tool outputs). Thresholds sit a little under the measured values so
//! that a regression fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;

use palisade_inspect::injection::InjectionPack;
use palisade_inspect::{Category, Engine, Limits};

fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    assert!(
        dir.join("injection-bipia-train.jsonl").is_file(),
        "injection corpus not found at {} (expected shared/corpus next to the workspace)",
        dir.display()
    );
    dir
}

struct Row {
    text: String,
    positive: bool,
    family: String,
    /// First injected span (AgentDojo, BIPIA).
    span: Option<(usize, usize)>,
}

fn load(name: &str) -> Vec<Row> {
    let path = corpus_dir().join(name);
    let data = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    data.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: bad row: {e}"));
            Row {
                text: v["text"].as_str().unwrap_or_default().to_string(),
                positive: v["label"].as_str() == Some("injection"),
                family: v["family"].as_str().unwrap_or("-").to_string(),
                span: v["spans"]
                    .get(0)
                    .and_then(|s| Some((s.get(0)?.as_u64()? as usize, s.get(1)?.as_u64()? as usize))),
            }
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: usize,
    fn_: usize,
    fp: usize,
    tn: usize,
}

impl Counts {
    fn add(&mut self, positive: bool, flagged: bool) {
        match (positive, flagged) {
            (true, true) => self.tp += 1,
            (true, false) => self.fn_ += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
        }
    }
    fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    fn fp_rate(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }
    fn merge(&mut self, o: &Counts) {
        self.tp += o.tp;
        self.fn_ += o.fn_;
        self.fp += o.fp;
        self.tn += o.tn;
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { f64::NAN } else { a as f64 / b as f64 }
}

const FILES: &[&str] = &[
    "injection-agentdojo-banking.jsonl",
    "injection-agentdojo-slack.jsonl",
    "injection-agentdojo-travel.jsonl",
    "injection-bipia-train.jsonl",
    "injection-deepset-train.jsonl",
    "injection-notinject-one.jsonl",
    "injection-wildguard-benign.jsonl",
];

#[test]
fn injection_corpus_quality() {
    let engine = Engine::new(vec![Box::new(InjectionPack::new())], Limits::default()).expect("engine");
    let mut per_file: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut families: BTreeMap<String, Counts> = BTreeMap::new();
    let show_misses = std::env::var("INJ_SHOW").ok();
    println!(
        "{:<36} {:>5} {:>5} {:>7} {:>9} {:>7}",
        "file", "pos", "neg", "recall", "precision", "fp"
    );
    for name in FILES {
        let mut c = Counts::default();
        for row in load(name) {
            let report = engine.scan(&row.text);
            let flagged = report.category_score(Category::PromptInjection) >= 0.5;
            c.add(row.positive, flagged);
            if name.contains("bipia") && row.positive {
                families.entry(row.family.clone()).or_default().add(true, flagged);
            }
            if let Some(show) = &show_misses
                && name.contains(show.as_str())
                && row.positive != flagged
            {
                let rules: Vec<String> = report
                    .findings
                    .iter()
                    .map(|f| format!("{}={:.2}", f.rule, f.score))
                    .collect();
                let shown = match row.span {
                    Some((a, b)) if row.positive && std::env::var("INJ_CTX").is_err() => {
                        row.text.get(a..b).unwrap_or(&row.text)
                    }
                    Some((a, b)) if row.positive => row
                        .text
                        .get(a.saturating_sub(150)..(b + 150).min(row.text.len()))
                        .unwrap_or(&row.text),
                    _ => &row.text,
                };
                let preview: String = shown.chars().take(300).collect();
                println!("  MISS pos={} {:?} {:?}", row.positive, rules, preview);
            }
        }
        println!(
            "{:<36} {:>5} {:>5} {:>7.3} {:>9.3} {:>7.3}",
            name,
            c.tp + c.fn_,
            c.fp + c.tn,
            c.recall(),
            c.precision(),
            c.fp_rate()
        );
        per_file.insert(name, c);
    }
    let mut indirect = Counts::default();
    for (name, c) in &per_file {
        if name.contains("agentdojo") || name.contains("bipia") {
            indirect.merge(c);
        }
    }
    println!(
        "indirect (agentdojo+bipia): recall {:.3}, benign tool-output fp {:.3} ({} of {})",
        indirect.recall(),
        indirect.fp_rate(),
        indirect.fp,
        indirect.fp + indirect.tn
    );
    println!("bipia recall per family:");
    for (fam, c) in &families {
        println!("  {:<45} {:>4} {:.3}", fam, c.tp + c.fn_, c.recall());
    }

    // Measured (dev corpus): indirect recall 0.997 at 0 of 943 benign tool
    // outputs; deepset recall 0.478 at 0 fp; notinject 0, wildguard 0.010.
    assert!(indirect.recall() >= 0.97, "indirect recall {:.3}", indirect.recall());
    assert!(indirect.fp_rate() <= 0.01, "indirect fp {:.3}", indirect.fp_rate());
    let check = |name: &str, min_recall: f64, max_fp: f64| {
        let c = per_file[name];
        if c.tp + c.fn_ > 0 {
            assert!(
                c.recall() >= min_recall,
                "{name}: recall {:.3} < {min_recall}",
                c.recall()
            );
        }
        assert!(c.fp_rate() <= max_fp, "{name}: fp {:.3} > {max_fp}", c.fp_rate());
    };
    check("injection-agentdojo-banking.jsonl", 0.97, 0.05);
    check("injection-agentdojo-slack.jsonl", 0.97, 0.06);
    check("injection-agentdojo-travel.jsonl", 0.97, 0.02);
    check("injection-bipia-train.jsonl", 0.97, 0.01);
    check("injection-deepset-train.jsonl", 0.44, 0.02);
    check("injection-notinject-one.jsonl", 0.0, 0.03);
    check("injection-wildguard-benign.jsonl", 0.0, 0.02);
}
