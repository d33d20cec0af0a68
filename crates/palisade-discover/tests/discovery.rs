//! Discovery in a fake home, project-tree walks, and drift across files.

use std::fs;
use std::path::{Path, PathBuf};

use palisade_discover::discover::{WalkLimits, walk_project};
use palisade_discover::{Client, Options, Scope, collect, run};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn rel(p: &Path, base: &Path) -> String {
    p.strip_prefix(base).unwrap().to_string_lossy().into_owned()
}

#[test]
fn finds_every_client_in_a_fake_home() {
    let home = fixture("home");
    let (cands, notes) = collect(
        &Options {
            home: Some(home.clone()),
            ..Options::default()
        },
        &mut |_, _| {},
    );
    assert!(notes.is_empty());
    let mut got: Vec<(String, Client)> = cands.iter().map(|c| (rel(&c.path, &home), c.client)).collect();
    got.sort();
    let mut want = vec![
        (".config/Claude/claude_desktop_config.json", Client::ClaudeDesktop),
        (".claude.json", Client::ClaudeCode),
        (".cursor/mcp.json", Client::Cursor),
        (".codeium/windsurf/mcp_config.json", Client::Windsurf),
        (".config/zed/settings.json", Client::Zed),
        (".continue/config.yaml", Client::Continue),
        (".continue/config.json", Client::Continue),
        (".continue/mcpServers/playwright.yaml", Client::Continue),
        (".gemini/settings.json", Client::GeminiCli),
        (".codex/config.toml", Client::Codex),
        (".config/Code/User/settings.json", Client::VsCode),
        (".config/Code/User/mcp.json", Client::VsCode),
        (".config/Code - Insiders/User/mcp.json", Client::VsCodeInsiders),
        (
            ".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
            Client::Cline,
        ),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_string(), c))
    .collect::<Vec<_>>();
    want.sort();
    assert_eq!(got, want);
    assert!(cands.iter().all(|c| c.scope == Scope::User));
}

#[test]
fn empty_home_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        &Options {
            home: Some(dir.path().into()),
            ..Options::default()
        },
        &mut |_, _| {},
    );
    assert!(r.files.is_empty() && r.servers.is_empty());
    assert!(palisade_discover::to_text(&r).contains("No MCP client configuration found"));
}

#[test]
fn drift_across_the_home() {
    let r = run(
        &Options {
            home: Some(fixture("home")),
            ..Options::default()
        },
        &mut |_, _| {},
    );
    assert_eq!(r.errors(), 0, "{:?}", r.files);
    let drift = |client: Client, name: &str| {
        r.servers
            .iter()
            .find(|s| s.client == client && s.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .findings
            .iter()
            .find(|f| f.rule == "config-drift")
            .map(|f| f.message.clone())
    };
    // `github` is a local npx server in Claude Desktop and remote elsewhere.
    let m = drift(Client::ClaudeDesktop, "github").expect("drift on github");
    assert!(m.contains(".claude.json") && m.contains("command"), "{m}");
    // The same package at two versions under different names.
    let m = drift(Client::Cursor, "browser").expect("drift by package");
    assert!(m.contains("Browser search"), "{m}");
    // A server configured once has none.
    assert_eq!(drift(Client::Zed, "context7"), None);
}

#[test]
fn identical_servers_do_not_drift() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"{"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time==0.6.2"]}}}"#;
    fs::write(dir.path().join("a.json"), body).unwrap();
    // The same server, laid out differently.
    fs::write(dir.path().join("b.json"), body.replace(", ", ",\n    ")).unwrap();
    fs::write(dir.path().join("c.json"), body.replace("0.6.2", "0.7.0")).unwrap();
    let scan = |files: &[&str]| {
        let paths = files.iter().map(|f| dir.path().join(f)).collect();
        run(
            &Options {
                paths,
                ..Options::default()
            },
            &mut |_, _| {},
        )
    };
    let r = scan(&["a.json", "b.json"]);
    assert_eq!(r.servers.len(), 2);
    assert!(r.findings().all(|(_, f)| f.rule != "config-drift"));
    let r = scan(&["a.json", "c.json"]);
    assert_eq!(r.findings().filter(|(_, f)| f.rule == "config-drift").count(), 2);
}

#[test]
fn walks_the_fixture_project() {
    let root = fixture("project");
    let w = walk_project(&root, WalkLimits::default(), &mut |_, _| {}).unwrap();
    let mut got: Vec<String> = w.candidates.iter().map(|c| rel(&c.path, &root)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ".continue/mcpServers/db.yaml",
            ".cursor/mcp.json",
            ".gemini/settings.json",
            ".mcp.json",
            ".vscode/mcp.json",
            "services/api/.mcp.json",
        ]
    );
    assert!(w.truncated.is_none());
    // The two `db` servers (VS Code and Continue) and the two `github` ones differ.
    let r = run(
        &Options {
            projects: vec![root],
            ..Options::default()
        },
        &mut |_, _| {},
    );
    let mut drifted: Vec<(String, Client)> = r
        .findings()
        .filter(|(_, f)| f.rule == "config-drift")
        .map(|(s, _)| (s.name.clone(), s.client))
        .collect();
    drifted.sort();
    let mut want: Vec<(String, Client)> = [
        ("github", Client::ClaudeCode),
        ("github", Client::VsCode),
        ("db", Client::VsCode),
        ("db", Client::Continue),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_string(), c))
    .collect();
    want.sort();
    assert_eq!(drifted, want);
}

const SERVER: &str = r#"{"mcpServers": {"x": {"command": "npx", "args": ["-y", "pkg@1.0.0"]}}}"#;

#[cfg(unix)]
#[test]
fn walk_skips_junk_and_never_leaves_the_tree() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.json"), SERVER).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mk = |p: &str| {
        let full = root.join(p);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, SERVER).unwrap();
    };
    mk("app/.mcp.json");
    mk("node_modules/evil/.mcp.json");
    mk("target/debug/.mcp.json");
    mk(".hidden/.mcp.json");
    mk(".git/.mcp.json");
    mk("app/.vscode/mcp.json");
    // A symlink loop, a link to a directory outside, a file link outside.
    symlink(root, root.join("loop")).unwrap();
    symlink(root.join("app"), root.join("app/again")).unwrap();
    symlink(outside.path(), root.join("outside-dir")).unwrap();
    fs::create_dir_all(root.join("lib")).unwrap();
    symlink(outside.path().join("secret.json"), root.join("lib/.mcp.json")).unwrap();
    // A link inside the tree is fine.
    fs::create_dir_all(root.join("inner")).unwrap();
    symlink(root.join("app/.mcp.json"), root.join("inner/.mcp.json")).unwrap();
    // A `.cursor` that is a link out of the tree.
    fs::create_dir_all(root.join("web")).unwrap();
    symlink(outside.path(), root.join("web/.cursor")).unwrap();
    fs::copy(outside.path().join("secret.json"), outside.path().join("mcp.json")).unwrap();

    let mut visited = 0;
    let w = walk_project(root, WalkLimits::default(), &mut |_, n| visited = n).unwrap();
    let mut got: Vec<String> = w.candidates.iter().map(|c| rel(&c.path, root)).collect();
    got.sort();
    assert_eq!(got, ["app/.mcp.json", "app/.vscode/mcp.json", "inner/.mcp.json"]);
    assert_eq!(visited, w.dirs);
    assert!(w.dirs < 10, "{}", w.dirs);
}

#[test]
fn walk_limits_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = dir.path().to_path_buf();
    for i in 0..6 {
        p = p.join(format!("d{i}"));
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join(".mcp.json"), SERVER).unwrap();
    let w = walk_project(
        dir.path(),
        WalkLimits {
            max_depth: 3,
            max_dirs: 1000,
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert!(w.candidates.is_empty());
    assert!(w.truncated.as_deref().unwrap().contains("deeper than 3"));
    let w = walk_project(
        dir.path(),
        WalkLimits {
            max_depth: 16,
            max_dirs: 2,
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert!(w.truncated.as_deref().unwrap().contains("stopped after 2"));
    let w = walk_project(dir.path(), WalkLimits::default(), &mut |_, _| {}).unwrap();
    assert_eq!(w.candidates.len(), 1);
    // Through the public entry point, the limit becomes a note.
    let opts = Options {
        projects: vec![dir.path().into()],
        limits: WalkLimits {
            max_depth: 3,
            max_dirs: 1000,
        },
        ..Options::default()
    };
    let r = run(&opts, &mut |_, _| {});
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(walk_project(&dir.path().join("missing"), WalkLimits::default(), &mut |_, _| {}).is_err());
}
