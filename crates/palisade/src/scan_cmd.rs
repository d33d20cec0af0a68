//! `palisade scan tools FILE`: scan a `tools/list` result, an array of tools,
//! or JSON lines of `{"id", "tool"}` rows.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use palisade_scan::format::{self, Item};
use palisade_scan::{Report, Verdict, collisions, scan_tool};
use serde_json::Value;

/// Inputs larger than this are refused (exit 2).
const MAX_INPUT: u64 = 512 * 1024 * 1024;

/// One tool to scan.
struct Row {
    id: Value,
    server: Option<String>,
    tool: Value,
}

pub fn scan_tools(file: &Path, fmt: &str, cross_server: bool) -> ExitCode {
    let text = match read_input(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("palisade scan tools: {e}");
            return ExitCode::from(2);
        }
    };
    let (rows, errors) = parse(&text);
    for e in &errors {
        eprintln!("palisade scan tools: {e}");
    }
    if rows.is_empty() && errors.is_empty() {
        eprintln!("palisade scan tools: no tools in the input");
        return ExitCode::from(2);
    }
    let mut reports: Vec<Report> = rows.iter().map(|r| scan_tool(&r.tool)).collect();
    if cross_server {
        add_collisions(&rows, &mut reports);
    }
    let items: Vec<Item> = rows
        .iter()
        .zip(&reports)
        .map(|(r, report)| Item { id: &r.id, report })
        .collect();
    if let Err(e) = write_output(&items, fmt, &file.display().to_string()) {
        eprintln!("palisade scan tools: {e}");
        return ExitCode::from(2);
    }
    if !errors.is_empty() {
        ExitCode::from(2)
    } else if reports.iter().any(|r| r.verdict() != Verdict::Clean) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn read_input(file: &Path) -> Result<String, String> {
    let mut buf = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .take(MAX_INPUT + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("stdin: {e}"))?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_INPUT + 1).read_to_end(&mut buf))
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    if buf.len() as u64 > MAX_INPUT {
        return Err(format!("input larger than {MAX_INPUT} bytes"));
    }
    String::from_utf8(buf).map_err(|e| format!("input is not UTF-8 (byte {})", e.utf8_error().valid_up_to()))
}

/// One JSON document (a list result, an array, one row or one tool), or JSON lines.
fn parse(text: &str) -> (Vec<Row>, Vec<String>) {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let mut errors = Vec::new();
        let rows = document_rows(v, &mut errors);
        return (rows, errors);
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) => match row(v, Value::from(n + 1)) {
                Ok(r) => rows.push(r),
                Err(e) => errors.push(format!("line {}: {e}", n + 1)),
            },
            Err(e) => errors.push(format!("line {}: not JSON: {e}", n + 1)),
        }
    }
    (rows, errors)
}

fn document_rows(v: Value, errors: &mut Vec<String>) -> Vec<Row> {
    let list = match v {
        Value::Object(mut m) => {
            if let Some(Value::Object(mut result)) = m.remove("result")
                && let Some(tools) = result.remove("tools")
            {
                tools
            } else if let Some(tools) = m.remove("tools") {
                tools
            } else {
                return match row(Value::Object(m), Value::from(1)) {
                    Ok(r) => vec![r],
                    Err(e) => {
                        errors.push(e);
                        Vec::new()
                    }
                };
            }
        }
        other => other,
    };
    let Value::Array(items) = list else {
        errors.push("expected a tools/list result, an array of tools or JSON lines".into());
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match row(item, Value::from(i)) {
            Ok(r) => rows.push(r),
            Err(e) => errors.push(format!("item {i}: {e}")),
        }
    }
    rows
}

/// `{"id", "tool", "server"?}` or a bare tool (its name is the id).
fn row(v: Value, fallback: Value) -> Result<Row, String> {
    let Value::Object(mut m) = v else {
        return Err("expected an object".into());
    };
    let server = m.get("server").and_then(Value::as_str).map(str::to_owned);
    if let Some(tool) = m.remove("tool") {
        if !tool.is_object() {
            return Err("\"tool\" must be an object".into());
        }
        let id = m.remove("id").unwrap_or(fallback);
        return Ok(Row { id, server, tool });
    }
    match m.get("name") {
        Some(Value::String(name)) => Ok(Row {
            id: Value::String(name.clone()),
            server,
            tool: Value::Object(m),
        }),
        _ => Err("expected {\"id\", \"tool\"} or a tool with a string \"name\"".into()),
    }
}

fn add_collisions(rows: &[Row], reports: &mut [Report]) {
    let pairs: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|r| Some((r.server.as_deref()?, r.tool.get("name")?.as_str()?)))
        .collect();
    for (server, name, finding) in collisions(&pairs) {
        for (r, report) in rows.iter().zip(reports.iter_mut()) {
            if r.server.as_deref() == Some(server) && r.tool.get("name").and_then(Value::as_str) == Some(name) {
                report.findings.push(finding.clone());
            }
        }
    }
}

fn write_output(items: &[Item], fmt: &str, artifact: &str) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = match fmt {
        "jsonl" => items.iter().try_for_each(|i| writeln!(out, "{}", format::item_json(i))),
        "json" => {
            let all: Vec<Value> = items.iter().map(format::item_json).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&all).unwrap_or_default())
        }
        "sarif" => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&format::sarif(items, artifact)).unwrap_or_default()
        ),
        _ => write!(out, "{}", format::text(items)),
    };
    r.and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
}
