//! Where MCP clients keep their configuration: the files of the current user
//! (under a home directory) and the project files found by walking a tree.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::parse::Syntax;

/// The MCP client a configuration file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    ClaudeDesktop,
    ClaudeCode,
    Cursor,
    VsCode,
    VsCodeInsiders,
    Windsurf,
    Zed,
    Continue,
    Cline,
    GeminiCli,
    Codex,
    /// An explicit path whose client could not be told.
    Unknown,
}

impl Client {
    pub fn id(self) -> &'static str {
        match self {
            Client::ClaudeDesktop => "claude-desktop",
            Client::ClaudeCode => "claude-code",
            Client::Cursor => "cursor",
            Client::VsCode => "vs-code",
            Client::VsCodeInsiders => "vs-code-insiders",
            Client::Windsurf => "windsurf",
            Client::Zed => "zed",
            Client::Continue => "continue",
            Client::Cline => "cline",
            Client::GeminiCli => "gemini-cli",
            Client::Codex => "codex",
            Client::Unknown => "unknown",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Client::ClaudeDesktop => "Claude Desktop",
            Client::ClaudeCode => "Claude Code",
            Client::Cursor => "Cursor",
            Client::VsCode => "VS Code",
            Client::VsCodeInsiders => "VS Code Insiders",
            Client::Windsurf => "Windsurf",
            Client::Zed => "Zed",
            Client::Continue => "Continue",
            Client::Cline => "Cline",
            Client::GeminiCli => "Gemini CLI",
            Client::Codex => "Codex",
            Client::Unknown => "unknown",
        }
    }
}

/// Where the servers are inside a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// A top-level `mcpServers` object (Claude Desktop, Cursor, `.mcp.json`,
    /// Windsurf, Cline, Gemini CLI).
    McpServers,
    /// `~/.claude.json`: `mcpServers` and `projects.<dir>.mcpServers`.
    ClaudeCodeUser,
    /// VS Code `settings.json`: `mcp.servers` (nested or as a dotted key).
    VsCodeSettings,
    /// VS Code `mcp.json`: `servers` (and `inputs`).
    VsCodeMcp,
    /// Zed `settings.json`: `context_servers`.
    Zed,
    /// Continue YAML (`config.yaml`, `.continue/mcpServers/*.yaml`): an `mcpServers` list.
    ContinueYaml,
    /// Continue `config.json`: `experimental.modelContextProtocolServers`.
    ContinueJson,
    /// Codex `config.toml`: `[mcp_servers.NAME]` tables.
    Codex,
    /// An explicit file: the layout is guessed from its keys.
    Auto,
}

/// Whose file it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    User,
    Project,
    Explicit,
}

/// A file to scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub path: PathBuf,
    pub client: Client,
    pub layout: Layout,
    pub scope: Scope,
}

impl Candidate {
    pub fn syntax(&self) -> Syntax {
        Syntax::from_path(&self.path)
    }
}

fn cand(path: PathBuf, client: Client, layout: Layout, scope: Scope) -> Candidate {
    Candidate {
        path,
        client,
        layout,
        scope,
    }
}

/// The user-level files every supported client reads, relative to a home
/// directory (Linux and macOS locations), whether or not they exist.
pub fn user_locations(home: &Path) -> Vec<Candidate> {
    use Client::*;
    use Layout as L;
    let u = Scope::User;
    let h = |p: &str| home.join(p);
    let mut out = vec![
        cand(
            h(".config/Claude/claude_desktop_config.json"),
            ClaudeDesktop,
            L::McpServers,
            u,
        ),
        cand(
            h("Library/Application Support/Claude/claude_desktop_config.json"),
            ClaudeDesktop,
            L::McpServers,
            u,
        ),
        cand(h(".claude.json"), ClaudeCode, L::ClaudeCodeUser, u),
        cand(h(".cursor/mcp.json"), Cursor, L::McpServers, u),
        cand(h(".codeium/windsurf/mcp_config.json"), Windsurf, L::McpServers, u),
        cand(h(".config/zed/settings.json"), Zed, L::Zed, u),
        cand(h(".continue/config.yaml"), Continue, L::ContinueYaml, u),
        cand(h(".continue/config.json"), Continue, L::ContinueJson, u),
        cand(h(".gemini/settings.json"), GeminiCli, L::McpServers, u),
        cand(h(".codex/config.toml"), Codex, L::Codex, u),
    ];
    let editors: [(&str, Client); 6] = [
        (".config/Code/User", VsCode),
        (".config/Code - Insiders/User", VsCodeInsiders),
        ("Library/Application Support/Code/User", VsCode),
        ("Library/Application Support/Code - Insiders/User", VsCodeInsiders),
        (".config/Cursor/User", Cursor),
        ("Library/Application Support/Cursor/User", Cursor),
    ];
    for (dir, client) in editors {
        let d = home.join(dir);
        if client != Cursor {
            out.push(cand(d.join("settings.json"), client, L::VsCodeSettings, u));
            out.push(cand(d.join("mcp.json"), client, L::VsCodeMcp, u));
        }
        out.push(cand(
            d.join("globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json"),
            Cline,
            L::McpServers,
            u,
        ));
    }
    out
}

/// The user-level files that exist under `home`, plus Continue's
/// `~/.continue/mcpServers/*` blocks.
pub fn discover_user(home: &Path) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = user_locations(home).into_iter().filter(|c| c.path.is_file()).collect();
    out.extend(continue_blocks(&home.join(".continue/mcpServers"), Scope::User, None));
    out
}

/// Continue block files in a `mcpServers` directory (YAML, or JSON in another
/// client's format), sorted by name. `inside`: refuse symlinks leading out of it.
fn continue_blocks(dir: &Path, scope: Scope, inside: Option<&Path>) -> Vec<Candidate> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .filter(|p| file_ok(p, inside))
        .take(MAX_BLOCK_FILES)
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let layout = if Syntax::from_path(&p) == Syntax::Yaml {
                Layout::ContinueYaml
            } else {
                Layout::Auto
            };
            cand(p, Client::Continue, layout, scope)
        })
        .collect()
}

const MAX_BLOCK_FILES: usize = 256;

/// A regular file, or a symlink to one; with `inside`, the link must resolve
/// inside that directory.
fn file_ok(p: &Path, inside: Option<&Path>) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return false;
    };
    if meta.is_file() {
        return true;
    }
    if !meta.file_type().is_symlink() {
        return false;
    }
    let Ok(target) = std::fs::canonicalize(p) else {
        return false;
    };
    if !target.is_file() {
        return false;
    }
    match inside {
        Some(root) => target.starts_with(root),
        None => true,
    }
}

/// Limits of a project walk.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub max_depth: usize,
    pub max_dirs: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_depth: 16,
            max_dirs: 50_000,
        }
    }
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub candidates: Vec<Candidate>,
    /// Directories visited.
    pub dirs: usize,
    /// Set when a limit stopped the walk early.
    pub truncated: Option<String>,
}

/// Directories never entered.
const SKIP_DIRS: &[&str] = &["node_modules", "target", "vendor", "__pycache__", "dist", "build"];

/// Walks `root` for project-level MCP files. Hidden directories are not
/// entered (the known ones are probed directly), symlinked directories are
/// never followed, and symlinked files count only when they resolve inside
/// the tree. `progress` is called with every directory visited.
pub fn walk_project(root: &Path, limits: WalkLimits, progress: &mut dyn FnMut(&Path, usize)) -> Result<Walk, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", root.display()));
    }
    let canon = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut walk = Walk::default();
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if walk.dirs >= limits.max_dirs {
            walk.truncated = Some(format!("stopped after {} directories", limits.max_dirs));
            break;
        }
        walk.dirs += 1;
        progress(&dir, walk.dirs);
        probe_project_dir(&dir, &canon, &mut walk.candidates);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut subdirs: Vec<PathBuf> = Vec::new();
        for entry in rd.filter_map(|e| e.ok()) {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue; // symlinks report as symlinks here and are not followed
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || SKIP_DIRS.contains(&name) {
                continue;
            }
            subdirs.push(entry.path());
        }
        if depth + 1 > limits.max_depth {
            if !subdirs.is_empty() && walk.truncated.is_none() {
                walk.truncated = Some(format!(
                    "directories deeper than {} levels not searched",
                    limits.max_depth
                ));
            }
            continue;
        }
        subdirs.sort();
        for d in subdirs.into_iter().rev() {
            stack.push((d, depth + 1));
        }
    }
    Ok(walk)
}

/// The project files one directory may hold.
pub fn project_files(dir: &Path) -> Vec<Candidate> {
    let p = Scope::Project;
    vec![
        cand(dir.join(".mcp.json"), Client::ClaudeCode, Layout::McpServers, p),
        cand(dir.join(".vscode/mcp.json"), Client::VsCode, Layout::VsCodeMcp, p),
        cand(dir.join(".cursor/mcp.json"), Client::Cursor, Layout::McpServers, p),
        cand(
            dir.join(".gemini/settings.json"),
            Client::GeminiCli,
            Layout::McpServers,
            p,
        ),
        cand(dir.join(".codex/config.toml"), Client::Codex, Layout::Codex, p),
    ]
}

fn probe_project_dir(dir: &Path, root: &Path, out: &mut Vec<Candidate>) {
    for c in project_files(dir) {
        // The hidden parent (".vscode", ...) must be a real directory inside the tree.
        if file_ok(&c.path, Some(root)) && parent_inside(&c.path, root) {
            out.push(c);
        }
    }
    let blocks = dir.join(".continue/mcpServers");
    if parent_inside(&blocks.join("x"), root) {
        out.extend(continue_blocks(&blocks, Scope::Project, Some(root)));
    }
}

fn parent_inside(path: &Path, root: &Path) -> bool {
    match path.parent().map(std::fs::canonicalize) {
        Some(Ok(p)) => p.starts_with(root),
        _ => false,
    }
}

/// Client and layout of an explicit path, from its name, then its contents.
pub fn detect(path: &Path, root: Option<&crate::tree::Node>) -> (Client, Layout) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let s = path.to_string_lossy().replace('\\', "/");
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let by_name = match name {
        "claude_desktop_config.json" => Some((Client::ClaudeDesktop, Layout::McpServers)),
        ".claude.json" => Some((Client::ClaudeCode, Layout::ClaudeCodeUser)),
        ".mcp.json" => Some((Client::ClaudeCode, Layout::McpServers)),
        "mcp_config.json" if s.contains("windsurf") => Some((Client::Windsurf, Layout::McpServers)),
        "cline_mcp_settings.json" => Some((Client::Cline, Layout::McpServers)),
        "mcp.json" if parent == ".cursor" => Some((Client::Cursor, Layout::McpServers)),
        "mcp.json" if parent == ".vscode" || s.contains("Code - Insiders/User") || s.contains("Code/User") => {
            let c = if s.contains("Insiders") {
                Client::VsCodeInsiders
            } else {
                Client::VsCode
            };
            Some((c, Layout::VsCodeMcp))
        }
        "settings.json" if parent == ".gemini" => Some((Client::GeminiCli, Layout::McpServers)),
        "settings.json" if parent == "zed" => Some((Client::Zed, Layout::Zed)),
        "settings.json" if s.contains("Code - Insiders/User") => Some((Client::VsCodeInsiders, Layout::VsCodeSettings)),
        "settings.json" if s.contains("Code/User") || parent == ".vscode" => {
            Some((Client::VsCode, Layout::VsCodeSettings))
        }
        "config.toml" if parent == ".codex" => Some((Client::Codex, Layout::Codex)),
        "config.yaml" | "config.yml" if parent == ".continue" => Some((Client::Continue, Layout::ContinueYaml)),
        "config.json" if parent == ".continue" => Some((Client::Continue, Layout::ContinueJson)),
        _ if parent == "mcpServers" && s.contains(".continue/") => {
            if Syntax::from_path(path) == Syntax::Yaml {
                Some((Client::Continue, Layout::ContinueYaml))
            } else {
                Some((Client::Continue, Layout::Auto))
            }
        }
        _ => None,
    };
    if let Some(found) = by_name {
        return found;
    }
    let Some(root) = root else {
        return (Client::Unknown, Layout::Auto);
    };
    // By contents.
    if root.get("mcp_servers").is_some() {
        (Client::Codex, Layout::Codex)
    } else if root.get("context_servers").is_some() {
        (Client::Zed, Layout::Zed)
    } else if root.get("projects").is_some() && root.get("mcpServers").map(|m| m.as_object().is_some()).unwrap_or(true)
    {
        (Client::ClaudeCode, Layout::ClaudeCodeUser)
    } else if root.get("mcpServers").and_then(|m| m.as_array()).is_some() {
        (Client::Continue, Layout::ContinueYaml)
    } else if root
        .get("experimental")
        .and_then(|e| e.get("modelContextProtocolServers"))
        .is_some()
    {
        (Client::Continue, Layout::ContinueJson)
    } else if root.get("mcp").and_then(|m| m.get("servers")).is_some() || root.get("mcp.servers").is_some() {
        (Client::VsCode, Layout::VsCodeSettings)
    } else if root.get("servers").is_some() {
        (Client::VsCode, Layout::VsCodeMcp)
    } else {
        (Client::Unknown, Layout::McpServers)
    }
}
