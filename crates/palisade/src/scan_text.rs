//! `palisade scan text [FILE|-]`: scan text for prompt injection, secrets and
//! personal data with the content-inspection engine.
//!
//! The whole input is one text (`--format text|json|sarif`), or JSON lines of
//! `{"id", "text"}` answered line by line (`--format jsonl`). Offsets are
//! bytes into the scanned text. The matched text of a secret or PII finding
//! is never printed.
//!
//! Exit 0 clean, 1 flagged (suspicious or malicious), 2 bad input; bad input
//! wins over flagged.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use palisade_inspect::{Category, Engine, EngineOptions, Finding, Limits, PackSet, Report, Thresholds, Verdict};
use serde_json::{Map, Value, json};

/// Default bound on the input (`--format text|json|sarif`) or on one line (`jsonl`).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Longest excerpt shown for an injection finding, in characters.
const EXCERPT_CHARS: usize = 80;

/// Findings at or above this weight are SARIF errors.
const ERROR_SCORE: f32 = 0.8;

const CMD: &str = "palisade scan text";

#[derive(clap::Args, Debug)]
pub struct TextArgs {
    /// Input file, or `-` (the default) for standard input.
    pub file: Option<PathBuf>,
    /// `text` and `json` and `sarif` read the whole input as one text; `jsonl`
    /// reads lines of `{"id", "text"}` and answers one JSON line per line.
    #[arg(long, default_value = "text", value_parser = ["text", "json", "jsonl", "sarif"])]
    pub format: String,
    /// Packs to run (comma-separated subset of injection,secrets,pii).
    #[arg(long, default_value = "injection,secrets,pii")]
    pub packs: String,
    /// A gitleaks-format rule file (TOML) added to the built-in secret rules.
    #[arg(long, env = "PALISADE_SECRETS_RULES")]
    pub secrets_rules: Option<PathBuf>,
    /// Largest input accepted (for `jsonl`: largest line), in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

pub fn run(args: &TextArgs) -> ExitCode {
    let engine = match engine(args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{CMD}: {e}");
            return ExitCode::from(2);
        }
    };
    let file = args.file.as_deref().filter(|f| *f != Path::new("-"));
    if args.format == "jsonl" {
        return run_jsonl(&engine, file, args.max_bytes);
    }
    let text = match read_all(file, args.max_bytes) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{CMD}: {e}");
            return ExitCode::from(2);
        }
    };
    let report = engine.scan(&text);
    let artifact = match file {
        Some(f) => f.display().to_string(),
        None => "stdin".to_owned(),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = match args.format.as_str() {
        "json" => serde_json::to_writer_pretty(&mut out, &report_json(&report, None))
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        "sarif" => serde_json::to_writer_pretty(&mut out, &sarif(&text, &report, &artifact))
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        _ => out.write_all(human(&text, &report).as_bytes()),
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        eprintln!("{CMD}: stdout: {e}");
        return ExitCode::from(2);
    }
    if verdict(&report) == Verdict::Clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn engine(args: &TextArgs) -> Result<Engine, String> {
    let packs = PackSet::parse(&args.packs).map_err(|e| format!("--packs: {e}"))?;
    if !(packs.injection || packs.secrets || packs.pii) {
        return Err("--packs: no pack selected (known: injection, secrets, pii)".into());
    }
    let gitleaks_rules = match &args.secrets_rules {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|e| format!("--secrets-rules {}: {e}", path.display()))?)
        }
        None => None,
    };
    if let (true, Some(toml), Some(path)) = (packs.secrets, &gitleaks_rules, &args.secrets_rules) {
        // Rules whose regex the `regex` crate cannot run are skipped, not
        // fatal: say which.
        let pack = palisade_inspect::secrets::SecretsPack::with_gitleaks(toml)
            .map_err(|e| format!("--secrets-rules {}: {e}", path.display()))?;
        let skipped = pack.skipped_rules();
        if !skipped.is_empty() {
            let shown: Vec<&str> = skipped.iter().take(10).map(String::as_str).collect();
            eprintln!(
                "{CMD}: warning: {} rule(s) of {} skipped (unsupported or invalid): {}{}",
                skipped.len(),
                path.display(),
                shown.join(", "),
                if skipped.len() > shown.len() { ", ..." } else { "" }
            );
        }
    }
    let defaults = Limits::default();
    let opts = EngineOptions {
        packs,
        limits: Limits {
            // The input bound is checked before scanning; scan all of it.
            max_scan_bytes: usize::try_from(args.max_bytes)
                .unwrap_or(usize::MAX)
                .max(defaults.max_scan_bytes),
            ..defaults
        },
        gitleaks_rules,
        ..EngineOptions::default()
    };
    palisade_inspect::build(&opts).map_err(|e| match &args.secrets_rules {
        Some(path) => format!("cannot build the engine (rules {}): {e}", path.display()),
        None => format!("cannot build the engine: {e}"),
    })
}

fn verdict(report: &Report) -> Verdict {
    report.verdict(Thresholds::default())
}

/// The whole input, at most `max` bytes, as UTF-8.
fn read_all(file: Option<&Path>, max: u64) -> Result<String, String> {
    let mut buf = Vec::new();
    let limit = max.saturating_add(1);
    match file {
        None => std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| format!("stdin: {e}"))?,
        Some(f) => std::fs::File::open(f)
            .and_then(|h| h.take(limit).read_to_end(&mut buf))
            .map_err(|e| format!("{}: {e}", f.display()))?,
    };
    if buf.len() as u64 > max {
        return Err(format!("input is larger than --max-bytes ({max} bytes)"));
    }
    String::from_utf8(buf).map_err(|e| {
        format!(
            "input is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// A score as a short JSON number (three decimals, like [`Report::score`]).
fn num(score: f32) -> Value {
    json!((f64::from(score) * 1000.0).round() / 1000.0)
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "category": f.category.as_str(),
        "rule": &*f.rule,
        "start": f.start,
        "end": f.end,
        "score": num(f.score),
    })
}

/// `{"verdict", "score", "findings", "unscanned_bytes"}`, with `id` first when given.
fn report_json(report: &Report, id: Option<Value>) -> Value {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m.insert("verdict".into(), json!(verdict(report).as_str()));
    m.insert("score".into(), num(report.score()));
    m.insert(
        "findings".into(),
        Value::Array(report.findings.iter().map(finding_json).collect()),
    );
    m.insert("unscanned_bytes".into(), json!(report.unscanned_bytes));
    Value::Object(m)
}

// ---------------------------------------------------------------- jsonl

fn run_jsonl(engine: &Engine, file: Option<&Path>, max: u64) -> ExitCode {
    let stdin = std::io::stdin();
    let reader: Box<dyn BufRead> = match file {
        None => Box::new(stdin.lock()),
        Some(f) => match std::fs::File::open(f) {
            Ok(h) => Box::new(std::io::BufReader::with_capacity(64 << 10, h)),
            Err(e) => {
                eprintln!("{CMD}: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match jsonl(engine, reader, &mut out, max) {
        Ok(Outcome { bad: true, .. }) => ExitCode::from(2),
        Ok(Outcome { flagged: true, .. }) => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{CMD}: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Default)]
struct Outcome {
    flagged: bool,
    bad: bool,
}

/// One line read with a bound: the line (without its end), or `None` when
/// it was longer than the bound (the rest of it is skipped).
enum Line {
    Text(Vec<u8>),
    TooLong,
}

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes.
/// `Ok(None)` at the end of input.
fn read_line_bounded(reader: &mut dyn BufRead, buf: &mut Vec<u8>, max: u64) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long {
            if (buf.len() + part.len()) as u64 > max {
                too_long = true;
                buf.clear();
                buf.shrink_to(64 << 10);
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if too_long {
        return Ok(Some(Line::TooLong));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(Line::Text(std::mem::take(buf))))
}

fn jsonl(engine: &Engine, mut reader: Box<dyn BufRead>, out: &mut dyn Write, max: u64) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        let line = read_line_bounded(&mut *reader, &mut buf, max).map_err(|e| format!("reading input: {e}"))?;
        let Some(line) = line else { break };
        n += 1;
        let answer = match line {
            Line::TooLong => Err((Value::Null, format!("line {n}: longer than --max-bytes ({max} bytes)"))),
            Line::Text(bytes) => {
                let r = if bytes.iter().all(u8::is_ascii_whitespace) {
                    None
                } else {
                    Some(scan_line(engine, &bytes, n))
                };
                buf = bytes;
                match r {
                    None => continue,
                    Some(r) => r,
                }
            }
        };
        let value = match answer {
            Ok((value, v)) => {
                outcome.flagged |= v != Verdict::Clean;
                value
            }
            Err((id, msg)) => {
                outcome.bad = true;
                eprintln!("{CMD}: {msg}");
                json!({"id": id, "error": msg})
            }
        };
        serde_json::to_writer(&mut *out, &value).map_err(|e| format!("stdout: {e}"))?;
        out.write_all(b"\n")
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }
    Ok(outcome)
}

/// One `{"id", "text"}` line → its answer and verdict, or (id, error).
fn scan_line(engine: &Engine, bytes: &[u8], n: u64) -> Result<(Value, Verdict), (Value, String)> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let why = if std::str::from_utf8(bytes).is_err() {
            "not UTF-8".to_owned()
        } else {
            format!("not JSON: {e}")
        };
        (Value::Null, format!("line {n}: {why}"))
    })?;
    let Value::Object(mut m) = value else {
        return Err((
            Value::Null,
            format!("line {n}: expected an object {{\"id\", \"text\"}}"),
        ));
    };
    let id = m.remove("id").unwrap_or(Value::Null);
    let text = match m.remove("text") {
        Some(Value::String(s)) => s,
        Some(_) => return Err((id, format!("line {n}: \"text\" must be a string"))),
        None => return Err((id, format!("line {n}: missing \"text\""))),
    };
    let report = engine.scan(&text);
    let v = verdict(&report);
    let mut answer = report_json(&report, Some(id));
    if let Value::Object(o) = &mut answer
        && report.unscanned_bytes == 0
    {
        o.remove("unscanned_bytes");
    }
    Ok((answer, v))
}

// ---------------------------------------------------------------- text

/// Line and column (1-based; the column counts characters) of byte offsets.
struct Lines<'a> {
    text: &'a str,
    /// Byte offset of each line's first byte.
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Lines { text, starts }
    }

    fn at(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self.starts[line - 1];
        // Characters = bytes that are not UTF-8 continuation bytes.
        let col = self.text.as_bytes()[start..offset]
            .iter()
            .filter(|b| (**b & 0xC0) != 0x80)
            .count();
        (line, col + 1)
    }
}

fn is_sensitive(c: Category) -> bool {
    matches!(c, Category::Secret | Category::Pii)
}

/// Characters a terminal or reader should see escaped: controls, invisible
/// format characters, bidi controls, tags and variation selectors.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E0FFF}')
}

/// A short excerpt of `text[start..end]` with secret and PII spans replaced
/// by `[redacted]` and control characters escaped.
fn excerpt(text: &str, start: usize, end: usize, hide: &[(usize, usize)]) -> Option<String> {
    let end = end.min(text.len());
    if start >= end || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
        return None;
    }
    let mut out = String::new();
    let mut shown = 0usize;
    let mut pos = start;
    while pos < end {
        if shown >= EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if let Some(&(_, h_end)) = hide.iter().find(|(s, e)| *s <= pos && pos < *e) {
            out.push_str("[redacted]");
            shown += 10;
            pos = h_end.max(pos + 1);
            while pos < end && !text.is_char_boundary(pos) {
                pos += 1;
            }
            continue;
        }
        let Some(c) = text[pos..].chars().next() else { break };
        if must_escape(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                _ => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
        shown += 1;
        pos += c.len_utf8();
    }
    Some(out)
}

fn human(text: &str, report: &Report) -> String {
    let lines = Lines::new(text);
    let hide: Vec<(usize, usize)> = report
        .findings
        .iter()
        .filter(|f| is_sensitive(f.category))
        .map(|f| (f.start, f.end))
        .collect();
    let mut out = format!(
        "verdict: {}\nscore: {:.3}\nfindings: {}\n",
        verdict(report).as_str(),
        report.score(),
        report.findings.len()
    );
    if report.unscanned_bytes > 0 {
        out.push_str(&format!("not scanned: {} bytes at the end\n", report.unscanned_bytes));
    }
    for f in &report.findings {
        let (line, col) = lines.at(f.start);
        out.push_str(&format!(
            "  {:<16} {:<32} bytes {}..{}  line {line}:{col}  score {:.2}",
            f.category.as_str(),
            f.rule,
            f.start,
            f.end,
            f.score
        ));
        match f.category {
            Category::Secret | Category::Pii => out.push_str("  [redacted]"),
            Category::PromptInjection => {
                if let Some(x) = excerpt(text, f.start, f.end, &hide) {
                    out.push_str(&format!("  \"{x}\""));
                }
            }
            Category::HiddenText => {}
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------- sarif

/// SARIF 2.1.0: one result per finding, located by byte offset and by line
/// and column (columns count Unicode code points).
fn sarif(text: &str, report: &Report, artifact: &str) -> Value {
    let lines = Lines::new(text);
    let mut rules: Vec<(&str, Category)> = report.findings.iter().map(|f| (&*f.rule, f.category)).collect();
    rules.sort_unstable();
    rules.dedup_by(|a, b| a.0 == b.0);
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let (line, col) = lines.at(f.start);
            let level = if f.score >= ERROR_SCORE { "error" } else { "warning" };
            json!({
                "ruleId": &*f.rule,
                "ruleIndex": rules.iter().position(|(r, _)| *r == &*f.rule).unwrap_or(0),
                "level": level,
                "message": {"text": format!("{} ({}) at bytes {}..{}", f.category.as_str(), f.rule, f.start, f.end)},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": artifact},
                        "region": {
                            "byteOffset": f.start,
                            "byteLength": f.end.saturating_sub(f.start),
                            "startLine": line,
                            "startColumn": col,
                        }
                    }
                }],
                "properties": {"category": f.category.as_str(), "score": num(f.score)}
            })
        })
        .collect();
    let rules = rules
        .iter()
        .map(|(r, c)| {
            json!({
                "id": r,
                "shortDescription": {"text": format!("{} rule {r}", c.as_str())},
                "properties": {"category": c.as_str()}
            })
        })
        .collect();
    let mut extra = serde_json::Map::new();
    extra.insert("columnKind".into(), json!("unicodeCodePoints"));
    extra.insert(
        "properties".into(),
        json!({
            "verdict": verdict(report).as_str(),
            "score": num(report.score()),
            "unscanned_bytes": report.unscanned_bytes,
        }),
    );
    palisade_scan::format::sarif_log(rules, results, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let t = "ab\nçé x\n\nz";
        let l = Lines::new(t);
        assert_eq!(l.at(0), (1, 1));
        assert_eq!(l.at(3), (2, 1));
        assert_eq!(l.at(t.find('x').unwrap_or(0)), (2, 4));
        assert_eq!(l.at(t.len() - 1), (4, 1));
        assert_eq!(l.at(t.len() + 10), (4, 2));
    }

    #[test]
    fn excerpt_escapes_redacts_and_bounds() {
        let t = "say\n\u{202E}hi KEY123 done";
        let k = t.find("KEY123").unwrap_or(0);
        let x = excerpt(t, 0, t.len(), &[(k, k + 6)]).unwrap_or_default();
        assert_eq!(x, "say\\n\\u{202e}hi [redacted] done");
        let long = "a".repeat(500);
        let x = excerpt(&long, 0, 500, &[]).unwrap_or_default();
        assert_eq!(x.chars().count(), EXCERPT_CHARS + 1);
        assert!(excerpt("é", 1, 2, &[]).is_none());
    }

    #[test]
    fn bounded_lines() {
        let data = b"short\r\nthis one is far too long\n\nlast";
        let mut r: Box<dyn BufRead> = Box::new(std::io::BufReader::with_capacity(4, &data[..]));
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(l) = read_line_bounded(&mut *r, &mut buf, 10).unwrap_or(None) {
            got.push(match l {
                Line::Text(t) => String::from_utf8_lossy(&t).into_owned(),
                Line::TooLong => "<long>".into(),
            });
        }
        assert_eq!(got, ["short", "<long>", "", "last"]);
    }
}
