//! Every client format: the exact findings of each fixture file, scanned alone.

use std::path::PathBuf;

use palisade_discover::{Client, Options, Report, Severity, run};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn scan_one(rel: &str) -> Report {
    let opts = Options {
        paths: vec![fixture(rel)],
        ..Options::default()
    };
    let r = run(&opts, &mut |_, _| {});
    assert_eq!(r.errors(), 0, "{rel}: {:?}", r.files);
    r
}

/// (server, rule, severity) for every finding, sorted.
fn findings(r: &Report) -> Vec<(String, &'static str, Severity)> {
    let mut v: Vec<_> = r
        .findings()
        .map(|(s, f)| (s.name.clone(), f.rule, f.severity))
        .collect();
    v.sort();
    v
}

fn expect(rel: &str, client: Client, servers: &[&str], want: &[(&str, &str, Severity)]) -> Report {
    let r = scan_one(rel);
    assert_eq!(r.files[0].client, client, "{rel}");
    let names: Vec<&str> = r.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, servers, "{rel}");
    let mut want: Vec<(String, &str, Severity)> = want.iter().map(|(s, r, v)| (s.to_string(), *r, *v)).collect();
    want.sort();
    let got = findings(&r);
    assert_eq!(got, want, "{rel}");
    r
}

use Severity::{High, Low, Medium};

#[test]
fn claude_desktop() {
    let r = expect(
        "home/.config/Claude/claude_desktop_config.json",
        Client::ClaudeDesktop,
        &["filesystem", "github", "postgres", "weather-installer", "gateway"],
        &[
            ("github", "unpinned-package", Medium),
            ("github", "plain-secret", High),
            ("github", "no-sandbox", Low),
            ("postgres", "unpinned-package", Medium),
            ("postgres", "no-sandbox", Low),
            ("weather-installer", "dangerous-command", Medium),
            ("weather-installer", "dangerous-command", High),
            ("weather-installer", "no-sandbox", Low),
            ("gateway", "no-sandbox", Low),
        ],
    );
    // The clean, sandboxed container has nothing.
    assert!(r.servers[0].findings.is_empty());
    let secret = r.servers[1].findings.iter().find(|f| f.rule == "plain-secret").unwrap();
    assert_eq!(
        secret.location.pointer,
        "/mcpServers/github/env/GITHUB_PERSONAL_ACCESS_TOKEN"
    );
    assert_eq!(secret.location.line, Some(16));
    assert!(secret.message.contains("GitHub token"), "{}", secret.message);
    let latest = r.servers[2]
        .findings
        .iter()
        .find(|f| f.rule == "unpinned-package")
        .unwrap();
    assert!(latest.message.contains("moving tag 'latest'"), "{}", latest.message);
    assert_eq!(r.servers[2].package.as_ref().unwrap().name, "mcp/postgres");
    let pipe = r.servers[3].findings.iter().find(|f| f.severity == High).unwrap();
    assert!(
        pipe.message.contains("pipes a download into a shell"),
        "{}",
        pipe.message
    );
}

#[test]
fn claude_code_user_with_projects() {
    let r = expect(
        "home/.claude.json",
        Client::ClaudeCode,
        &["github", "sentry", "db-admin", "internal-docs"],
        &[
            ("github", "no-sandbox", Low),
            ("db-admin", "dangerous-command", High),
            ("db-admin", "unpinned-package", Medium),
            ("db-admin", "plain-secret", High),
            ("db-admin", "no-sandbox", Low),
            ("internal-docs", "insecure-transport", High),
            ("internal-docs", "secret-in-url", High),
            ("internal-docs", "unknown-remote", Low),
        ],
    );
    assert_eq!(
        r.servers[2].pointer,
        "/projects/~1home~1dev~1src~1shop/mcpServers/db-admin"
    );
    // The URL is shown without its key.
    let url = r.servers[3].url.as_deref().unwrap();
    assert!(
        url.contains("api_key=***") && !url.contains("4f9d2c7e8a1b6e3f"),
        "{url}"
    );
}

#[test]
fn cursor() {
    expect(
        "home/.cursor/mcp.json",
        Client::Cursor,
        &["browser", "brave-search", "linear", "cleanup"],
        &[
            ("browser", "unpinned-package", Medium),
            ("browser", "no-sandbox", Low),
            ("brave-search", "plain-secret", High),
            ("brave-search", "no-sandbox", Low),
            ("cleanup", "dangerous-command", Medium),
            ("cleanup", "dangerous-command", High),
            ("cleanup", "no-sandbox", Low),
        ],
    );
}

#[test]
fn vscode_settings_jsonc() {
    let r = expect(
        "home/.config/Code/User/settings.json",
        Client::VsCode,
        &["perplexity", "jira"],
        &[
            ("perplexity", "no-sandbox", Low),
            ("jira", "plain-secret", High),
            ("jira", "unknown-remote", Low),
        ],
    );
    let f = &r.servers[1].findings.iter().find(|f| f.rule == "plain-secret").unwrap();
    assert_eq!(f.location.pointer, "/mcp/servers/jira/headers/Authorization");
    assert_eq!(f.location.line, Some(25));
}

#[test]
fn vscode_mcp_json_and_insiders() {
    expect(
        "home/.config/Code/User/mcp.json",
        Client::VsCode,
        &["time", "memory"],
        &[
            ("time", "unpinned-package", Medium),
            ("time", "no-sandbox", Low),
            ("memory", "dangerous-command", Medium),
            ("memory", "no-sandbox", Low),
        ],
    );
    expect(
        "home/.config/Code - Insiders/User/mcp.json",
        Client::VsCodeInsiders,
        &["github"],
        &[],
    );
}

#[test]
fn windsurf() {
    expect(
        "home/.codeium/windsurf/mcp_config.json",
        Client::Windsurf,
        &["figma", "local-notes", "aws-docs"],
        &[
            ("figma", "insecure-transport", High),
            ("figma", "plain-secret", High),
            ("figma", "unknown-remote", Low),
            ("aws-docs", "no-sandbox", Low),
        ],
    );
}

#[test]
fn zed_both_shapes() {
    let r = expect(
        "home/.config/zed/settings.json",
        Client::Zed,
        &["mcp-server-postgres", "context7", "remote-kb"],
        &[
            ("mcp-server-postgres", "unpinned-package", Medium),
            ("mcp-server-postgres", "plain-secret", High),
            ("mcp-server-postgres", "no-sandbox", Low),
            ("context7", "no-sandbox", Low),
            ("remote-kb", "secret-in-url", High),
            ("remote-kb", "unknown-remote", Low),
        ],
    );
    // The object shape's args are read; the password in the URL argument is masked.
    assert_eq!(r.servers[0].command.as_deref(), Some("npx"));
    assert_eq!(
        r.servers[0].args,
        vec!["-y", "@modelcontextprotocol/server-postgres", "***"]
    );
    assert_eq!(r.servers[1].pointer, "/context_servers/context7");
}

#[test]
fn continue_yaml_json_and_blocks() {
    let r = expect(
        "home/.continue/config.yaml",
        Client::Continue,
        &["SQLite", "Search", "Deploy helper"],
        &[
            ("SQLite", "no-sandbox", Low),
            ("Search", "unpinned-package", Medium),
            ("Search", "no-sandbox", Low),
            ("Deploy helper", "dangerous-command", High),
            ("Deploy helper", "no-sandbox", Low),
        ],
    );
    assert_eq!(r.servers[2].line, Some(22));
    let enc = r.servers[2]
        .findings
        .iter()
        .find(|f| f.rule == "dangerous-command")
        .unwrap();
    assert_eq!(enc.location.pointer, "/mcpServers/2/args/1");
    assert_eq!(enc.location.line, Some(26));
    expect(
        "home/.continue/config.json",
        Client::Continue,
        &["#0", "#1"],
        &[
            ("#0", "no-sandbox", Low),
            ("#1", "unpinned-package", Medium),
            ("#1", "no-sandbox", Low),
        ],
    );
    expect(
        "home/.continue/mcpServers/playwright.yaml",
        Client::Continue,
        &["Browser search"],
        &[("Browser search", "no-sandbox", Low)],
    );
}

#[test]
fn cline() {
    let r = expect(
        "home/.config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
        Client::Cline,
        &[
            "github.com/modelcontextprotocol/servers/tree/main/src/puppeteer",
            "slack",
        ],
        &[
            (
                "github.com/modelcontextprotocol/servers/tree/main/src/puppeteer",
                "auto-approve",
                Medium,
            ),
            (
                "github.com/modelcontextprotocol/servers/tree/main/src/puppeteer",
                "no-sandbox",
                Low,
            ),
            ("slack", "plain-secret", High),
            ("slack", "no-sandbox", Low),
        ],
    );
    assert!(r.servers[1].disabled);
    assert_eq!(
        r.servers[0].pointer,
        "/mcpServers/github.com~1modelcontextprotocol~1servers~1tree~1main~1src~1puppeteer"
    );
}

#[test]
fn gemini() {
    expect(
        "home/.gemini/settings.json",
        Client::GeminiCli,
        &["github", "shell-tools", "events"],
        &[
            ("shell-tools", "auto-approve", Medium),
            ("shell-tools", "no-sandbox", Low),
            ("events", "insecure-transport", Medium),
            ("events", "unknown-remote", Low),
        ],
    );
}

#[test]
fn codex_toml() {
    let r = expect(
        "home/.codex/config.toml",
        Client::Codex,
        &["docs", "github", "scratch"],
        &[
            ("docs", "unpinned-package", Medium),
            ("docs", "plain-secret", High),
            ("docs", "no-sandbox", Low),
            ("scratch", "dangerous-command", High),
            ("scratch", "dangerous-command", High),
            ("scratch", "no-sandbox", Low),
        ],
    );
    let secret = r.servers[0].findings.iter().find(|f| f.rule == "plain-secret").unwrap();
    assert_eq!(secret.location.pointer, "/mcp_servers/docs/env/DOCS_API_TOKEN");
    assert_eq!(secret.location.line, Some(9));
}

#[test]
fn project_files() {
    expect(
        "project/.cursor/mcp.json",
        Client::Cursor,
        &["shop-tools"],
        &[("shop-tools", "plain-secret", High), ("shop-tools", "no-sandbox", Low)],
    );
    expect(
        "project/.mcp.json",
        Client::ClaudeCode,
        &["github", "stripe"],
        &[("github", "no-sandbox", Low)],
    );
    expect(
        "project/.gemini/settings.json",
        Client::GeminiCli,
        &["analytics"],
        &[("analytics", "unknown-remote", Low)],
    );
}

/// No output format ever carries a secret value planted in the fixtures.
#[test]
fn secrets_never_in_any_output() {
    let opts = Options {
        home: Some(fixture("home")),
        projects: vec![fixture("project")],
        ..Options::default()
    };
    let r = run(&opts, &mut |_, _| {});
    let outputs = [
        palisade_discover::to_text(&r),
        palisade_discover::to_json(&r).to_string(),
        palisade_discover::to_sarif(&r, None).to_string(),
    ];
    let planted = [
        "ghp_Fk3x9Qm2Lp7Rt4Vw8Yz1Bc6Dn0Hj5Ks2Ua7E",
        "S3cure-Pa55w0rd",
        "4f9d2c7e8a1b6e3f",
        "BSAq7Xw2Rk9mTz4Lp1Nc8Vd",
        "atl-9Fq2Lx7Mz4Kp1Rw8",
        "figd_Q2w7Er9Ty3Ui5Op1As",
        "Zx81q0Lm2pw",
        "kbT0k3nV4lu3Xy",
        "xoxb-2048-7713-Qm9Lr2Xk8Tz4",
        "dk_live_7Hq2Wm9Zr4Tx1Lp8",
        "Winter2025!shop",
    ];
    for out in &outputs {
        for s in planted {
            assert!(!out.contains(s), "secret {s} leaked into output");
        }
    }
    // ...while the files really contain them (the test would be vacuous otherwise).
    assert!(r.count(Severity::High) >= 10);
}
