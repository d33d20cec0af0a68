//! Detection quality on the development corpus (`/work/shared/corpus`).
//!
//! `cargo bench -p palisade-inspect --bench quality [-- FILTER]`
//!
//! For every `{injection,secrets,pii}-*.jsonl` file: rows, positives,
//! negatives, precision, recall and false-positive rate at row level (a row is
//! flagged when the file's category scores ≥ 0.5 for injection, or has any
//! finding of the category for secrets and PII), span-level recall (a gold
//! span counts as found when a finding of the category overlaps it), and the
//! scan rate. The same figures are printed as one JSON object at the end.
//! The corpus is read where it lies; nothing is copied into the repository.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_inspect::{Category, EngineOptions, Report, build};
use serde_json::{Map, Value, json};

/// Score at which a row counts as flagged for prompt injection.
const ROW_THRESHOLD: f32 = 0.5;

/// PII types a pattern pack can be expected to find (the rest are names,
/// places and organisations).
const PATTERN_PII: &[&str] = &["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Injection,
    Secrets,
    Pii,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        if name.starts_with("injection-") {
            Some(Kind::Injection)
        } else if name.starts_with("secrets-") {
            Some(Kind::Secrets)
        } else if name.starts_with("pii-") {
            Some(Kind::Pii)
        } else {
            None
        }
    }

    fn category(self) -> Category {
        match self {
            Kind::Injection => Category::PromptInjection,
            Kind::Secrets => Category::Secret,
            Kind::Pii => Category::Pii,
        }
    }

    fn flagged(self, r: &Report) -> bool {
        match self {
            Kind::Injection => r.category_score(Category::PromptInjection) >= ROW_THRESHOLD,
            Kind::Secrets => r.has(Category::Secret),
            Kind::Pii => r.has(Category::Pii),
        }
    }
}

/// Row-level confusion counts.
#[derive(Default, Clone, Copy)]
struct Counts {
    tp: u64,
    fp: u64,
    fn_: u64,
    tn: u64,
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
    fn positives(&self) -> u64 {
        self.tp + self.fn_
    }
    fn negatives(&self) -> u64 {
        self.fp + self.tn
    }
    fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }
    fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.positives())
    }
    fn fpr(&self) -> Option<f64> {
        ratio(self.fp, self.negatives())
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Gold spans found / total, overall and per type.
#[derive(Default)]
struct Spans {
    found: u64,
    total: u64,
    by_type: BTreeMap<String, (u64, u64)>,
}

impl Spans {
    fn add(&mut self, ty: &str, hit: bool) {
        self.total += 1;
        self.found += u64::from(hit);
        let e = self.by_type.entry(ty.to_owned()).or_default();
        e.0 += u64::from(hit);
        e.1 += 1;
    }
    fn recall(&self) -> Option<f64> {
        ratio(self.found, self.total)
    }
}

struct FileResult {
    name: String,
    kind: Kind,
    rows: u64,
    bad_rows: u64,
    counts: Counts,
    /// PII only: rows whose gold entities include a pattern type, against rows with no entity.
    pattern_counts: Option<Counts>,
    spans: Spans,
    bytes: u64,
    elapsed: Duration,
    /// Negatives flagged, by rule (for tuning).
    fp_rules: BTreeMap<String, u64>,
    /// Positives missed (first few ids).
    missed: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let dir = corpus_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("quality: no corpus at {} (skipped)", dir.display());
        return;
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.ends_with(".jsonl") && Kind::of(n).is_some())
        .filter(|(n, _)| filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    files.sort();

    let rules_path = dir.join("secrets-rules-gitleaks.toml");
    let gitleaks_rules = match std::fs::read_to_string(&rules_path) {
        Ok(t) => Some(t),
        Err(e) => {
            println!(
                "quality: no gitleaks rules ({}: {e}); built-in secret rules only",
                rules_path.display()
            );
            None
        }
    };
    let opts = EngineOptions {
        gitleaks_rules,
        ..EngineOptions::default()
    };
    let t = Instant::now();
    let engine = match build(&opts) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("quality: cannot build the engine: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "engine: packs {:?}, built in {:.1} ms; corpus {}",
        engine.pack_names(),
        t.elapsed().as_secs_f64() * 1e3,
        dir.display()
    );

    let mut results = Vec::new();
    for (name, path) in &files {
        let Some(kind) = Kind::of(name) else { continue };
        match run_file(&engine, name, path, kind) {
            Ok(r) => results.push(r),
            Err(e) => eprintln!("quality: {name}: {e}"),
        }
    }
    print_table(&results);
    let json = to_json(&results);
    println!("\nJSON:");
    println!("{}", serde_json::to_string(&json).unwrap_or_default());
}

fn spans_of(row: &Value, kind: Kind) -> Vec<(usize, usize, String)> {
    let key = match kind {
        Kind::Injection => "spans",
        Kind::Secrets => "secrets",
        Kind::Pii => "entities",
    };
    let Some(items) = row.get(key).and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|s| match s {
            // Injection: [start, end].
            Value::Array(a) if a.len() == 2 => {
                Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize, "injection".into()))
            }
            // Secrets and PII: {"start", "end", "type"}.
            Value::Object(o) => {
                let ty = o.get("type").and_then(Value::as_str).unwrap_or("?");
                // Secret types: keep the family (gitleaks, detect-secrets, manual).
                let ty = match kind {
                    Kind::Secrets => ty.split(':').next().unwrap_or(ty),
                    _ => ty,
                };
                Some((
                    o.get("start")?.as_u64()? as usize,
                    o.get("end")?.as_u64()? as usize,
                    ty.to_owned(),
                ))
            }
            _ => None,
        })
        .collect()
}

fn run_file(engine: &palisade_inspect::Engine, name: &str, path: &Path, kind: Kind) -> Result<FileResult, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = std::io::BufReader::new(file);
    let mut r = FileResult {
        name: name.to_owned(),
        kind,
        rows: 0,
        bad_rows: 0,
        counts: Counts::default(),
        pattern_counts: (kind == Kind::Pii).then(Counts::default),
        spans: Spans::default(),
        bytes: 0,
        elapsed: Duration::ZERO,
        fp_rules: BTreeMap::new(),
        missed: Vec::new(),
    };
    let cat = kind.category();
    for line in reader.lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(row) = serde_json::from_str::<Value>(&line) else {
            r.bad_rows += 1;
            continue;
        };
        let Some(text) = row.get("text").and_then(Value::as_str) else {
            r.bad_rows += 1;
            continue;
        };
        r.rows += 1;
        let gold = spans_of(&row, kind);
        let positive = match kind {
            Kind::Injection => row.get("label").and_then(Value::as_str) == Some("injection"),
            _ => !gold.is_empty(),
        };
        let t = Instant::now();
        let report = engine.scan(text);
        r.elapsed += t.elapsed();
        r.bytes += text.len() as u64;
        let flagged = kind.flagged(&report);
        r.counts.add(positive, flagged);
        if let Some(pc) = &mut r.pattern_counts {
            let pattern_positive = gold.iter().any(|(_, _, ty)| PATTERN_PII.contains(&ty.as_str()));
            if pattern_positive || !positive {
                pc.add(pattern_positive, flagged);
            }
        }
        if flagged && !positive {
            for f in report.findings.iter().filter(|f| f.category == cat) {
                *r.fp_rules.entry(f.rule.to_string()).or_default() += 1;
            }
        }
        if positive && !flagged && r.missed.len() < 5 {
            r.missed
                .push(row.get("id").and_then(Value::as_str).unwrap_or("?").to_owned());
        }
        for (s, e, ty) in &gold {
            let hit = report
                .findings
                .iter()
                .any(|f| f.category == cat && f.start < *e && *s < f.end);
            r.spans.add(ty, hit);
        }
    }
    Ok(r)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn print_table(results: &[FileResult]) {
    println!(
        "\n{:<40} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>10} {:>9}",
        "file", "rows", "pos", "neg", "precision", "recall", "fpr", "span-rec", "MB/s"
    );
    println!("{}", "-".repeat(110));
    for r in results {
        let rate = r.bytes as f64 / 1e6 / r.elapsed.as_secs_f64().max(1e-9);
        let span = if r.kind == Kind::Injection && r.spans.total == 0 {
            "-".to_owned()
        } else {
            pct(r.spans.recall())
        };
        println!(
            "{:<40} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>10} {:>9.1}",
            r.name,
            r.rows,
            r.counts.positives(),
            r.counts.negatives(),
            pct(r.counts.precision()),
            pct(r.counts.recall()),
            pct(r.counts.fpr()),
            span,
            rate
        );
        if r.bad_rows > 0 {
            println!("    {} rows skipped (not JSON or no text)", r.bad_rows);
        }
        if let Some(pc) = &r.pattern_counts {
            println!(
                "    rows with pattern-type PII ({}) vs rows with none: pos {} neg {} precision {} recall {} fpr {}",
                PATTERN_PII.join(","),
                pc.positives(),
                pc.negatives(),
                pct(pc.precision()),
                pct(pc.recall()),
                pct(pc.fpr())
            );
        }
        if r.kind != Kind::Injection && !r.spans.by_type.is_empty() {
            let per: Vec<String> = r
                .spans
                .by_type
                .iter()
                .map(|(t, (f, n))| format!("{t} {f}/{n}"))
                .collect();
            println!("    spans found by type: {}", per.join(", "));
        }
        if !r.fp_rules.is_empty() {
            let mut v: Vec<(&String, &u64)> = r.fp_rules.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let top: Vec<String> = v.iter().take(6).map(|(k, n)| format!("{k} ×{n}")).collect();
            println!("    rules on false positives: {}", top.join(", "));
        }
        if !r.missed.is_empty() && r.counts.fn_ > 0 {
            println!("    missed e.g.: {}", r.missed.join(", "));
        }
    }
    println!("{}", "-".repeat(110));
    for (label, kind) in [
        ("total injection", Kind::Injection),
        ("total secrets", Kind::Secrets),
        ("total pii", Kind::Pii),
    ] {
        let mut c = Counts::default();
        let mut any = false;
        for r in results.iter().filter(|r| r.kind == kind) {
            any = true;
            c.tp += r.counts.tp;
            c.fp += r.counts.fp;
            c.fn_ += r.counts.fn_;
            c.tn += r.counts.tn;
        }
        if any {
            println!(
                "{:<40} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8}",
                label,
                c.positives() + c.negatives(),
                c.positives(),
                c.negatives(),
                pct(c.precision()),
                pct(c.recall()),
                pct(c.fpr())
            );
        }
    }
}

fn num(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |v| json!((v * 10000.0).round() / 10000.0))
}

fn counts_json(c: &Counts) -> Value {
    json!({
        "positives": c.positives(),
        "negatives": c.negatives(),
        "tp": c.tp,
        "fp": c.fp,
        "fn": c.fn_,
        "tn": c.tn,
        "precision": num(c.precision()),
        "recall": num(c.recall()),
        "fpr": num(c.fpr()),
    })
}

fn to_json(results: &[FileResult]) -> Value {
    let mut files = Map::new();
    let mut totals: BTreeMap<&str, Counts> = BTreeMap::new();
    for r in results {
        let mut o = match counts_json(&r.counts) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        o.insert("rows".into(), json!(r.rows));
        if r.spans.total > 0 {
            o.insert("span_recall".into(), num(r.spans.recall()));
            o.insert("spans".into(), json!(r.spans.total));
            let by: Map<String, Value> = r
                .spans
                .by_type
                .iter()
                .map(|(t, (f, n))| (t.clone(), json!({"found": f, "total": n, "recall": num(ratio(*f, *n))})))
                .collect();
            o.insert("span_recall_by_type".into(), Value::Object(by));
        }
        if let Some(pc) = &r.pattern_counts {
            o.insert("pattern_types".into(), counts_json(pc));
        }
        o.insert(
            "mb_per_s".into(),
            json!((r.bytes as f64 / 1e6 / r.elapsed.as_secs_f64().max(1e-9) * 10.0).round() / 10.0),
        );
        files.insert(r.name.clone(), Value::Object(o));
        let key = match r.kind {
            Kind::Injection => "injection",
            Kind::Secrets => "secrets",
            Kind::Pii => "pii",
        };
        let t = totals.entry(key).or_default();
        t.tp += r.counts.tp;
        t.fp += r.counts.fp;
        t.fn_ += r.counts.fn_;
        t.tn += r.counts.tn;
    }
    let totals: Map<String, Value> = totals.iter().map(|(k, c)| ((*k).to_owned(), counts_json(c))).collect();
    json!({"row_threshold": ROW_THRESHOLD, "files": files, "totals": totals})
}
