//! Scanning a set of files into a report, and the report as text, JSON and SARIF.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::discover::{Candidate, Client, Layout, Scope, detect};
use crate::extract::{ServerEntry, Transport, servers};
use crate::packages::{self, Package};
use crate::parse::{parse, read_text};
use crate::rules::{self, DRIFT, Finding, RULES, Severity, Sink};

/// The version of the JSON output's shape.
pub const JSON_VERSION: u32 = 1;

/// One file looked at.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: String,
    pub client: Client,
    pub layout: Layout,
    pub scope: Scope,
    pub syntax: &'static str,
    /// Servers found in the file.
    pub servers: usize,
    /// Why the file could not be read or parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One configured server and what was found about it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub client: Client,
    pub file: String,
    pub scope: Scope,
    pub name: String,
    pub pointer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub transport: Transport,
    pub disabled: bool,
    /// The command (stdio), never with secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments with secrets replaced by `***`.
    pub args: Vec<String>,
    /// The endpoint (http) with credentials replaced by `***`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Names of the environment variables set (values are never reported).
    pub env: Vec<String>,
    /// Names of the headers set.
    pub headers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<Package>,
    pub findings: Vec<Finding>,
    /// The raw entry (with real values), for `--connect`. Never serialized.
    #[serde(skip)]
    pub entry: ServerEntry,
}

/// Everything one run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub files: Vec<FileReport>,
    pub servers: Vec<ServerReport>,
    /// Walk limits reached, unreadable directories, ...
    pub notes: Vec<String>,
}

impl Report {
    pub fn findings(&self) -> impl Iterator<Item = (&ServerReport, &Finding)> {
        self.servers.iter().flat_map(|s| s.findings.iter().map(move |f| (s, f)))
    }

    pub fn count(&self, sev: Severity) -> usize {
        self.findings().filter(|(_, f)| f.severity == sev).count()
    }

    pub fn max_severity(&self) -> Option<Severity> {
        self.findings().map(|(_, f)| f.severity).max()
    }

    /// Files that were read and parsed.
    pub fn scanned(&self) -> usize {
        self.files.iter().filter(|f| f.error.is_none()).count()
    }

    pub fn errors(&self) -> usize {
        self.files.iter().filter(|f| f.error.is_some()).count()
    }
}

/// Scans every candidate (each path once) and runs the cross-file checks.
pub fn scan(candidates: &[Candidate]) -> Report {
    let mut report = Report::default();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    for c in candidates {
        let key = std::fs::canonicalize(&c.path).unwrap_or_else(|_| c.path.clone());
        if !seen.insert(key) {
            continue;
        }
        scan_file(c, &mut report);
    }
    drift(&mut report);
    report
}

fn display_path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn scan_file(c: &Candidate, report: &mut Report) {
    let path = display_path(&c.path);
    let syntax = c.syntax();
    let mut file = FileReport {
        path: path.clone(),
        client: c.client,
        layout: c.layout,
        scope: c.scope,
        syntax: syntax.as_str(),
        servers: 0,
        error: None,
    };
    let parsed = read_text(&c.path).and_then(|t| parse(&t, syntax));
    let root = match parsed {
        Ok(r) => r,
        Err(e) => {
            file.error = Some(e);
            report.files.push(file);
            return;
        }
    };
    let (client, layout) = if c.layout == Layout::Auto || c.client == Client::Unknown {
        let (dc, dl) = detect(&c.path, Some(&root));
        (
            if c.client == Client::Unknown { dc } else { c.client },
            if c.layout == Layout::Auto { dl } else { c.layout },
        )
    } else {
        (c.client, c.layout)
    };
    file.client = client;
    file.layout = layout;
    if root.as_object().is_none() {
        file.error = Some("the document is not an object/mapping".into());
        report.files.push(file);
        return;
    }
    let entries = servers(&root, layout);
    file.servers = entries.len();
    for e in entries {
        let (findings, package) = rules::check(&e, &path);
        let argv = packages::argv(e.command.as_ref(), &e.args);
        let secret_idx = rules::secret_args(&argv);
        let shown: Vec<String> = argv
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if secret_idx.contains(&i) {
                    "***".to_string()
                } else if f.value.contains("://") {
                    match f.value.split_once('=') {
                        Some((k, v)) if k.starts_with('-') => format!("{k}={}", rules::redact_url(v)),
                        _ => rules::redact_url(&f.value),
                    }
                } else {
                    f.value.clone()
                }
            })
            .collect();
        let (command, args) = match shown.split_first() {
            Some((c, rest)) => (Some(c.clone()), rest.to_vec()),
            None => (None, Vec::new()),
        };
        report.servers.push(ServerReport {
            client,
            file: path.clone(),
            scope: c.scope,
            name: e.name.clone(),
            pointer: e.pointer.clone(),
            line: (e.line > 0).then_some(e.line),
            transport: e.transport,
            disabled: e.disabled,
            command,
            args,
            url: e.url.as_ref().map(|u| rules::redact_url(&u.value)),
            env: e.env.iter().map(|(k, _)| k.clone()).collect(),
            headers: e.headers.iter().map(|(k, _)| k.clone()).collect(),
            package,
            findings,
            entry: e,
        });
    }
    report.files.push(file);
}

/// What identifies a configuration, part by part (values hashed, never kept).
fn parts(s: &ServerReport) -> [(&'static str, String); 4] {
    let e = &s.entry;
    let argv = packages::argv(e.command.as_ref(), &e.args);
    let cmd: Vec<&str> = argv.iter().map(|f| f.value.as_str()).collect();
    let mut env: Vec<String> = e.env.iter().map(|(k, f)| format!("{k}={}", f.value)).collect();
    env.sort();
    let mut hdr: Vec<String> = e
        .headers
        .iter()
        .map(|(k, f)| format!("{}={}", k.to_ascii_lowercase(), f.value))
        .collect();
    hdr.sort();
    [
        ("command", rules::fingerprint(&cmd)),
        (
            "env",
            rules::fingerprint(&env.iter().map(String::as_str).collect::<Vec<_>>()),
        ),
        (
            "url",
            rules::fingerprint(&[e.url.as_ref().map(|u| u.value.as_str()).unwrap_or("")]),
        ),
        (
            "headers",
            rules::fingerprint(&hdr.iter().map(String::as_str).collect::<Vec<_>>()),
        ),
    ]
}

/// The same server (same name, or same package) configured differently in two places.
fn drift(report: &mut Report) {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in report.servers.iter().enumerate() {
        groups.entry(format!("name:{}", s.name)).or_default().push(i);
        if let Some(p) = &s.package {
            groups.entry(format!("pkg:{}", p.id())).or_default().push(i);
        }
    }
    let all_parts: Vec<_> = report.servers.iter().map(parts).collect();
    let mut add: Vec<(usize, Finding)> = Vec::new();
    for i in 0..report.servers.len() {
        let mut others: BTreeSet<usize> = BTreeSet::new();
        let mut differs: BTreeSet<&'static str> = BTreeSet::new();
        let mut by_package = false;
        for (key, members) in &groups {
            if !members.contains(&i) || members.len() < 2 {
                continue;
            }
            for &j in members {
                if j == i {
                    continue;
                }
                let d: Vec<&'static str> = all_parts[i]
                    .iter()
                    .zip(&all_parts[j])
                    .filter(|(a, b)| a.1 != b.1)
                    .map(|(a, _)| a.0)
                    .collect();
                // Two entries of the same package differing only in version count too.
                let version_differs = key.starts_with("pkg:")
                    && report.servers[i].package.as_ref().map(|p| &p.version)
                        != report.servers[j].package.as_ref().map(|p| &p.version);
                if !d.is_empty() || version_differs {
                    others.insert(j);
                    differs.extend(d);
                    if key.starts_with("pkg:") {
                        by_package = true;
                    }
                }
            }
        }
        if others.is_empty() {
            continue;
        }
        let s = &report.servers[i];
        let places: Vec<String> = others
            .iter()
            .take(5)
            .map(|&j| {
                let o = &report.servers[j];
                let line = o.line.map(|l| format!(":{l}")).unwrap_or_default();
                format!("'{}' in {}{line}", o.name, o.file)
            })
            .collect();
        let what = if by_package {
            "the same server (by name or package)"
        } else {
            "the same server"
        };
        let differs: Vec<&str> = differs.into_iter().collect();
        let message = format!(
            "'{}' is {what} as {} but configured differently (differs in: {})",
            s.name,
            places.join(", "),
            if differs.is_empty() {
                "version".to_string()
            } else {
                differs.join(", ")
            }
        );
        let mut sink = Sink {
            file: &s.file,
            findings: Vec::new(),
        };
        sink.add(
            DRIFT,
            Severity::Medium,
            (&s.pointer, s.line.unwrap_or(0)),
            "drift",
            message,
        );
        add.extend(sink.findings.into_iter().map(|f| (i, f)));
    }
    for (i, f) in add {
        report.servers[i].findings.push(f);
    }
}

// ---------------------------------------------------------------- JSON

/// The JSON output (shape documented in `docs/discovery.md`).
pub fn to_json(report: &Report) -> Json {
    json!({
        "version": JSON_VERSION,
        "tool": {"name": "palisade", "version": env!("CARGO_PKG_VERSION")},
        "summary": {
            "files": report.files.len(),
            "files_scanned": report.scanned(),
            "files_with_errors": report.errors(),
            "servers": report.servers.len(),
            "findings": {
                "high": report.count(Severity::High),
                "medium": report.count(Severity::Medium),
                "low": report.count(Severity::Low),
            },
        },
        "files": report.files,
        "servers": report.servers,
        "notes": report.notes,
    })
}

// ---------------------------------------------------------------- SARIF

/// A SARIF artifact location: relative to `base` (with `%SRCROOT%`) when the
/// file is under it, else an absolute `file://` URI.
fn artifact(file: &str, base: Option<&Path>) -> Json {
    let p = Path::new(file);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    if let Some(base) = base
        && let Ok(rel) = abs.strip_prefix(base)
    {
        let uri: Vec<String> = rel
            .components()
            .map(|c| encode_segment(&c.as_os_str().to_string_lossy()))
            .collect();
        return json!({"uri": uri.join("/"), "uriBaseId": "%SRCROOT%"});
    }
    match url::Url::from_file_path(&abs) {
        Ok(u) => json!({"uri": u.to_string()}),
        Err(()) => json!({"uri": encode_segment(file)}),
    }
}

fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// SARIF 2.1.0. `base`: the directory paths are made relative to (`%SRCROOT%`).
pub fn to_sarif(report: &Report, base: Option<&Path>) -> Json {
    let rules: Vec<Json> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": {"text": r.short},
                "fullDescription": {"text": r.help},
                "help": {"text": r.help, "markdown": format!("**{}**\n\n{}", r.short, r.help)},
                "defaultConfiguration": {"level": r.severity.sarif_level()},
                "properties": {
                    "tags": ["security", "mcp"],
                    "security-severity": match r.severity { Severity::High => "8.0", Severity::Medium => "5.0", Severity::Low => "2.0" },
                },
            })
        })
        .collect();
    let results: Vec<Json> = report
        .findings()
        .map(|(s, f)| {
            let mut region = serde_json::Map::new();
            if let Some(l) = f.location.line {
                region.insert("startLine".into(), json!(l));
            }
            let mut physical = json!({"artifactLocation": artifact(&f.location.file, base)});
            if !region.is_empty() {
                physical["region"] = Json::Object(region);
            }
            json!({
                "ruleId": f.rule,
                "ruleIndex": RULES.iter().position(|r| r.id == f.rule).unwrap_or(0),
                "level": f.severity.sarif_level(),
                "message": {"text": f.message},
                "locations": [{
                    "physicalLocation": physical,
                    "logicalLocations": [{"name": s.name, "fullyQualifiedName": f.location.pointer, "kind": "object"}],
                }],
                "partialFingerprints": {"palisadeConfigFinding/v1": f.fingerprint},
                "properties": {"severity": f.severity.as_str(), "client": s.client.id(), "server": s.name},
            })
        })
        .collect();
    let notifications: Vec<Json> = report
        .files
        .iter()
        .filter_map(|f| {
            f.error.as_ref().map(|e| {
                json!({
                    "level": "error",
                    "message": {"text": format!("{}: {e}", f.path)},
                    "locations": [{"physicalLocation": {"artifactLocation": artifact(&f.path, base)}}],
                })
            })
        })
        .collect();
    let mut run = json!({
        "tool": {"driver": {
            "name": "palisade",
            "semanticVersion": env!("CARGO_PKG_VERSION"),
            "informationUri": "https://github.com/palisade/palisade/blob/main/docs/discovery.md",
            "rules": rules,
        }},
        "invocations": [{
            "executionSuccessful": report.scanned() > 0 || report.files.is_empty(),
            "toolExecutionNotifications": notifications,
        }],
        "results": results,
        "columnKind": "unicodeCodePoints",
    });
    if let Some(b) = base
        && let Ok(u) = url::Url::from_directory_path(b)
    {
        run["originalUriBaseIds"] = json!({"%SRCROOT%": {"uri": u.to_string()}});
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [run],
    })
}

// ---------------------------------------------------------------- text

fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    t.set_width(160);
    t
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// A readable report: the servers, the findings, the files with errors.
pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    if report.files.is_empty() {
        out.push_str("No MCP client configuration found.\n");
    }
    if !report.servers.is_empty() {
        let mut t = table();
        t.set_header(vec![
            "#",
            "Client",
            "Server",
            "Transport",
            "Command / URL",
            "Location",
            "Findings",
        ]);
        for (i, s) in report.servers.iter().enumerate() {
            let target = match (&s.command, &s.url) {
                (Some(c), _) => std::iter::once(c.as_str())
                    .chain(s.args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                (None, Some(u)) => u.clone(),
                _ => "-".into(),
            };
            let worst = s.findings.iter().map(|f| f.severity).max();
            let count = if s.findings.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} ({} worst)",
                    s.findings.len(),
                    worst.map(Severity::as_str).unwrap_or("")
                )
            };
            let name = if s.disabled {
                format!("{} (disabled)", s.name)
            } else {
                s.name.clone()
            };
            t.add_row(vec![
                (i + 1).to_string(),
                s.client.label().to_string(),
                name,
                s.transport.as_str().to_string(),
                shorten(&target, 70),
                format!("{}{}", s.file, s.line.map(|l| format!(":{l}")).unwrap_or_default()),
                count,
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    let mut findings: Vec<(usize, &ServerReport, &Finding)> = Vec::new();
    for (i, s) in report.servers.iter().enumerate() {
        for f in &s.findings {
            findings.push((i, s, f));
        }
    }
    findings.sort_by(|a, b| b.2.severity.cmp(&a.2.severity).then(a.0.cmp(&b.0)));
    if !findings.is_empty() {
        let mut t = table();
        t.set_header(vec!["Severity", "Rule", "#", "Server", "Message", "Location"]);
        for (i, s, f) in findings {
            t.add_row(vec![
                f.severity.as_str().to_uppercase(),
                f.rule.to_string(),
                (i + 1).to_string(),
                s.name.clone(),
                f.message.clone(),
                format!(
                    "{}{}",
                    f.location.file,
                    f.location.line.map(|l| format!(":{l}")).unwrap_or_default()
                ),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    let errors: Vec<&FileReport> = report.files.iter().filter(|f| f.error.is_some()).collect();
    if !errors.is_empty() {
        out.push_str("Files that could not be scanned:\n");
        for f in errors {
            out.push_str(&format!("  {}: {}\n", f.path, f.error.as_deref().unwrap_or("")));
        }
    }
    for n in &report.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&format!(
        "{} file(s) scanned, {} with errors, {} server(s); findings: {} high, {} medium, {} low\n",
        report.scanned(),
        report.errors(),
        report.servers.len(),
        report.count(Severity::High),
        report.count(Severity::Medium),
        report.count(Severity::Low),
    ));
    out
}
