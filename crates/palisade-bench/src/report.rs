//! Latency statistics, the comparison table and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to 60 s.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What one target did at one concurrency (several slices merged).
#[derive(Clone)]
pub struct Sample {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Measured time: the sum of the slices' wall-clock durations.
    pub elapsed: Duration,
    pub reconnects: u64,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            hist: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
            reconnects: 0,
        }
    }
}

impl Sample {
    pub fn merge(&mut self, other: &Sample) {
        self.hist.add(&other.hist).expect("histograms share bounds");
        self.ok += other.ok;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.elapsed += other.elapsed;
        self.reconnects += other.reconnects;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Microseconds at a quantile (0 when nothing was recorded).
pub fn quantile_us(hist: &Histogram<u64>, q: f64) -> f64 {
    if hist.is_empty() {
        0.0
    } else {
        hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// One line of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub target: String,
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub seconds: f64,
    pub throughput_rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Throughput divided by the baseline's (the upstream reached directly).
    pub throughput_vs_baseline: Option<f64>,
    /// Throughput divided by the reference proxy's (nginx).
    pub throughput_vs_reference: Option<f64>,
    /// p50 minus the baseline's p50.
    pub added_p50_us: Option<f64>,
    /// `added_p50_us` divided by the reference proxy's added p50.
    pub added_p50_vs_reference: Option<f64>,
}

/// Build the rows, in the order given, with ratios to `baseline` and
/// `reference` (target names) at the same concurrency.
pub fn rows(samples: &[(String, usize, Sample)], baseline: Option<&str>, reference: Option<&str>) -> Vec<Row> {
    let mut out: Vec<Row> = samples
        .iter()
        .map(|(target, concurrency, s)| {
            let seconds = s.elapsed.as_secs_f64();
            Row {
                target: target.clone(),
                concurrency: *concurrency,
                ok: s.ok,
                errors: s.error_count(),
                error_kinds: s.errors.clone(),
                reconnects: s.reconnects,
                seconds,
                throughput_rps: if seconds > 0.0 { s.ok as f64 / seconds } else { 0.0 },
                p50_us: quantile_us(&s.hist, 0.50),
                p90_us: quantile_us(&s.hist, 0.90),
                p99_us: quantile_us(&s.hist, 0.99),
                p999_us: quantile_us(&s.hist, 0.999),
                max_us: if s.hist.is_empty() {
                    0.0
                } else {
                    s.hist.max() as f64 / 1000.0
                },
                throughput_vs_baseline: None,
                throughput_vs_reference: None,
                added_p50_us: None,
                added_p50_vs_reference: None,
            }
        })
        .collect();
    let find = |rows: &[Row], name: Option<&str>, c: usize| -> Option<(f64, f64)> {
        let name = name?;
        rows.iter()
            .find(|r| r.target == name && r.concurrency == c)
            .map(|r| (r.throughput_rps, r.p50_us))
    };
    let snapshot = out.clone();
    for row in &mut out {
        let base = find(&snapshot, baseline, row.concurrency);
        let refr = find(&snapshot, reference, row.concurrency);
        if let Some((tput, p50)) = base {
            if tput > 0.0 {
                row.throughput_vs_baseline = Some(row.throughput_rps / tput);
            }
            row.added_p50_us = Some(row.p50_us - p50);
            if let Some((_, ref_p50)) = refr {
                let ref_added = ref_p50 - p50;
                if ref_added > 0.0 {
                    row.added_p50_vs_reference = Some((row.p50_us - p50) / ref_added);
                }
            }
        }
        if let Some((tput, _)) = refr
            && tput > 0.0
        {
            row.throughput_vs_reference = Some(row.throughput_rps / tput);
        }
    }
    out
}

fn ratio(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// The comparison as a Markdown table (readable as plain text too).
pub fn format_table(rows: &[Row], baseline: &str, reference: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| conc | target | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | tput/{baseline} | tput/{reference} | +p50 µs | +p50/{reference}'s |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.concurrency,
            r.target,
            r.throughput_rps,
            ms(r.p50_us),
            ms(r.p90_us),
            ms(r.p99_us),
            ms(r.p999_us),
            r.errors,
            ratio(r.throughput_vs_baseline),
            ratio(r.throughput_vs_reference),
            r.added_p50_us.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            ratio(r.added_p50_vs_reference),
        );
    }
    out
}

/// Set `key` in the JSON object stored at `path` (created when missing),
/// keeping the other keys, and add the machine description and date.
pub fn merge_json(path: &Path, key: &str, value: Value) -> anyhow::Result<()> {
    let mut doc = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Object(Default::default())),
        Err(_) => Value::Object(Default::default()),
    };
    if !doc.is_object() {
        doc = Value::Object(Default::default());
    }
    let obj = doc.as_object_mut().expect("checked above");
    obj.insert("machine".into(), machine());
    obj.insert("date".into(), Value::from(utc_now()));
    obj.insert(key.into(), value);
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// CPU count, CPU model and kernel release of this machine.
pub fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({ "cpus": cpus, "cpu_model": model, "kernel": kernel })
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Format seconds since the Unix epoch as a UTC timestamp (proleptic
/// Gregorian calendar, days to civil date).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is the process running?)"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The `VmRSS:` value (KiB) of a `/proc/<pid>/status` text.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(latencies_us: &[u64], secs: u64) -> Sample {
        let mut s = Sample::default();
        for &us in latencies_us {
            s.hist.record(us * 1000).unwrap();
            s.ok += 1;
        }
        s.elapsed = Duration::from_secs(secs);
        s
    }

    #[test]
    fn ratios_are_relative_to_baseline_and_reference() {
        let samples = vec![
            ("upstream".to_string(), 16, sample(&[100; 1000], 1)),
            ("nginx".to_string(), 16, sample(&[150; 800], 1)),
            ("gw".to_string(), 16, sample(&[200; 600], 1)),
        ];
        let rows = rows(&samples, Some("upstream"), Some("nginx"));
        let gw = &rows[2];
        assert_eq!(gw.throughput_rps, 600.0);
        assert_eq!(gw.throughput_vs_baseline, Some(0.6));
        assert_eq!(gw.throughput_vs_reference, Some(0.75));
        assert!((gw.added_p50_us.unwrap() - 100.0).abs() < 0.5);
        assert!((gw.added_p50_vs_reference.unwrap() - 2.0).abs() < 0.02);
        assert_eq!(rows[0].added_p50_vs_reference.map(|v| v.abs() < 1e-9), Some(true));
    }

    #[test]
    fn table_has_one_line_per_row_and_dashes_for_missing_ratios() {
        let samples = vec![("only".to_string(), 1, sample(&[1500, 2500], 2))];
        let table = format_table(&rows(&samples, None, None), "upstream", "nginx");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("| conc | target | req/s | p50 ms"));
        assert_eq!(
            lines[2],
            "| 1 | only | 1 | 1.500 | 2.501 | 2.501 | 2.501 | 0 | - | - | - | - |"
        );
    }

    #[test]
    fn samples_merge_counts_and_errors() {
        let mut a = sample(&[10, 20], 1);
        a.errors.insert("http_503".into(), 2);
        let mut b = sample(&[30], 1);
        b.errors.insert("http_503".into(), 1);
        b.errors.insert("rpc_-32602".into(), 4);
        a.merge(&b);
        assert_eq!(a.ok, 3);
        assert_eq!(a.error_count(), 7);
        assert_eq!(a.errors["http_503"], 3);
        assert_eq!(a.hist.len(), 3);
        assert_eq!(a.elapsed, Duration::from_secs(2));
    }

    #[test]
    fn dates_and_rss_are_parsed() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
