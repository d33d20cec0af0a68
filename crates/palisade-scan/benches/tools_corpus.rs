//! `cargo bench -p palisade-scan --bench tools_corpus`: detection quality on
//! the tool-poisoning corpus (`../shared/corpus/tools-*.jsonl`, read where it
//! lies) per file and overall, and scan throughput. Prints its figures.

use std::path::PathBuf;
use std::time::Instant;

use palisade_scan::{Verdict, scan_tool};
use serde_json::Value;

const FILES: &[&str] = &[
    "tools-invariant-dvmcp.jsonl",
    "tools-livemcpbench-dev.jsonl",
    "tools-official-servers.jsonl",
    "tools-synthetic-unicode.jsonl",
];

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: usize,
    fp: usize,
    tn: usize,
    fn_: usize,
    suspicious: usize,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.tn += o.tn;
        self.fn_ += o.fn_;
        self.suspicious += o.suspicious;
    }
    fn print(&self, name: &str) {
        let ratio = |a: usize, b: usize| {
            if b == 0 {
                "-".to_owned()
            } else {
                format!("{:.3}", a as f64 / b as f64)
            }
        };
        println!(
            "{name:<34} {:>4} {:>4} {:>4} {:>4} {:>11} {:>9} {:>6} {:>6}",
            self.tp,
            self.fp,
            self.tn,
            self.fn_,
            self.suspicious,
            ratio(self.tp, self.tp + self.fp),
            ratio(self.tp, self.tp + self.fn_),
            ratio(self.fp, self.fp + self.tn)
        );
    }
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus");
    let mut all = Counts::default();
    let mut tools: Vec<Value> = Vec::new();
    println!("verdict 'malicious' counts as flagged; 'suspicious' benign rows are listed separately");
    println!(
        "{:<34} {:>4} {:>4} {:>4} {:>4} {:>11} {:>9} {:>6} {:>6}",
        "file", "TP", "FP", "TN", "FN", "susp.benign", "precision", "recall", "FPR"
    );
    for f in FILES {
        let Ok(text) = std::fs::read_to_string(dir.join(f)) else {
            println!("{f}: missing (../shared/corpus beside the repository)");
            continue;
        };
        let mut c = Counts::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(row) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let poisoned = row["label"] == "poisoned";
            let report = scan_tool(&row["tool"]);
            let flagged = report.verdict() == Verdict::Malicious;
            if !poisoned && report.verdict() == Verdict::Suspicious {
                c.suspicious += 1;
            }
            match (poisoned, flagged) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
            tools.push(row["tool"].clone());
        }
        c.print(f);
        all.add(c);
    }
    all.print("all");
    if tools.is_empty() {
        return;
    }
    let bytes: usize = tools.iter().map(|t| t.to_string().len()).sum();
    let rounds = 20;
    let start = Instant::now();
    let mut flagged = 0;
    for _ in 0..rounds {
        for t in &tools {
            flagged += usize::from(scan_tool(t).verdict() != Verdict::Clean);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = tools.len() * rounds;
    println!(
        "throughput: {n} tool scans in {secs:.3} s = {:.0} tools/s, {:.1} µs/tool, {:.1} MB/s of tool JSON ({flagged} flagged)",
        n as f64 / secs,
        secs * 1e6 / n as f64,
        (bytes * rounds) as f64 / secs / 1e6
    );
}
