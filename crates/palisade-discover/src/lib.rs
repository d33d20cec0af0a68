//! Discovery and audit of MCP client configurations (requirement P3).
//!
//! Finds the MCP server configurations of the current user (Claude Desktop,
//! Claude Code, Cursor, VS Code, Windsurf, Zed, Continue, Cline, Gemini CLI,
//! Codex) and of project trees, parses them (JSON, JSONC, YAML, TOML; bounded
//! and never panicking on hostile files), checks every server (unpinned
//! packages, plain secrets, dangerous commands, insecure or credentialed URLs,
//! missing sandbox, auto-approval, the same server configured differently in
//! two places) and reports as text, JSON or SARIF 2.1.0.
//!
//! Secrets are never reported: findings name the key and a redacted hint,
//! arguments and URLs are shown with credentials replaced by `***`.

pub mod discover;
pub mod extract;
pub mod packages;
pub mod parse;
pub mod report;
pub mod rules;
pub mod tree;

use std::path::{Path, PathBuf};

pub use discover::{Candidate, Client, Layout, Scope, WalkLimits};
pub use report::{Report, ServerReport, scan, to_json, to_sarif, to_text};
pub use rules::{Finding, Location, Severity};

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Explicit files; when empty, the user's configurations under `home` are discovered.
    pub paths: Vec<PathBuf>,
    /// Project trees to walk for project files.
    pub projects: Vec<PathBuf>,
    /// Home directory for discovery.
    pub home: Option<PathBuf>,
    pub limits: WalkLimits,
}

/// The files to scan, and notes (walk limits, unreadable project roots).
pub fn collect(opts: &Options, progress: &mut dyn FnMut(&Path, usize)) -> (Vec<Candidate>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for p in &opts.paths {
        let (client, layout) = discover::detect(p, None);
        out.push(Candidate {
            path: p.clone(),
            client,
            layout,
            scope: Scope::Explicit,
        });
    }
    if opts.paths.is_empty()
        && let Some(home) = &opts.home
    {
        out.extend(discover::discover_user(home));
    }
    for root in &opts.projects {
        match discover::walk_project(root, opts.limits, progress) {
            Ok(w) => {
                if let Some(t) = w.truncated {
                    notes.push(format!("{}: {t}", root.display()));
                }
                out.extend(w.candidates);
            }
            Err(e) => notes.push(format!("project {e}")),
        }
    }
    (out, notes)
}

/// Collects and scans.
pub fn run(opts: &Options, progress: &mut dyn FnMut(&Path, usize)) -> Report {
    let (candidates, notes) = collect(opts, progress);
    let mut report = scan(&candidates);
    report.notes.extend(notes);
    report
}
