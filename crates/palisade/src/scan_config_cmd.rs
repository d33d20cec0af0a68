//! `palisade scan config [PATH...]`: find the MCP client configurations of this
//! user (or read the given files, or walk project trees), audit every server,
//! and report as text, JSON or SARIF (P3). Exit 0: nothing high; 1: a high
//! finding; 2: usage or I/O error with nothing scanned.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use palisade_discover::{Options, Report, Severity};

#[derive(clap::Args)]
pub struct ConfigArgs {
    /// Configuration files to scan. Without any, the current user's MCP client
    /// configurations are discovered under the home directory.
    pub paths: Vec<PathBuf>,
    #[arg(long, default_value = "text", value_parser = ["text", "json", "sarif"])]
    pub format: String,
    /// Walk this project tree for `.mcp.json`, `.vscode/mcp.json`, `.cursor/mcp.json`,
    /// `.gemini/settings.json`, `.codex/config.toml`, `.continue/mcpServers/*` (repeatable).
    #[arg(long = "project", value_name = "DIR")]
    pub projects: Vec<PathBuf>,
    /// Home directory to discover in (default: $HOME).
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Start each stdio server (strict sandbox, no network) and call each HTTP
    /// server's tools/list, then scan the tools' metadata.
    #[arg(long)]
    pub connect: bool,
    /// Seconds allowed per server with --connect.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub connect_timeout: u64,
}

pub fn run(args: &ConfigArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    let home = args
        .home
        .clone()
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from));
    if args.paths.is_empty() && home.is_none() {
        eprintln!("palisade scan config: no home directory ($HOME unset); pass --home or files");
        return ExitCode::from(2);
    }
    if let Some(h) = &args.home
        && !h.is_dir()
    {
        eprintln!("palisade scan config: --home {}: not a directory", h.display());
        return ExitCode::from(2);
    }
    let opts = Options {
        paths: args.paths.clone(),
        projects: args.projects.clone(),
        home,
        ..Options::default()
    };
    let mut report = with_progress(!args.projects.is_empty(), |progress| {
        palisade_discover::run(&opts, progress)
    });
    if args.connect {
        connect::connect_all(
            &mut report,
            runtime,
            std::time::Duration::from_secs(args.connect_timeout.max(1)),
        );
    }
    let out = match args.format.as_str() {
        "json" => pretty(&palisade_discover::to_json(&report)),
        "sarif" => {
            let base = std::env::current_dir().ok().and_then(|d| d.canonicalize().ok());
            pretty(&palisade_discover::to_sarif(&report, base.as_deref()))
        }
        _ => palisade_discover::to_text(&report),
    };
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
        return ExitCode::from(2);
    }
    exit_code(args, &report)
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

fn exit_code(args: &ConfigArgs, report: &Report) -> ExitCode {
    let nothing_scanned = report.scanned() == 0;
    let io_problem = report.errors() > 0 || report.notes.iter().any(|n| n.starts_with("project "));
    if nothing_scanned && (io_problem || !args.paths.is_empty()) {
        for f in report.files.iter().filter(|f| f.error.is_some()) {
            eprintln!("palisade scan config: {}: {}", f.path, f.error.as_deref().unwrap_or(""));
        }
        for n in &report.notes {
            eprintln!("palisade scan config: {n}");
        }
        return ExitCode::from(2);
    }
    if report.max_severity() == Some(Severity::High) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `f` with a spinner on standard error when it is a terminal and a tree is walked.
fn with_progress<T>(walking: bool, f: impl FnOnce(&mut dyn FnMut(&Path, usize)) -> T) -> T {
    if !walking || !std::io::stderr().is_terminal() {
        return f(&mut |_, _| {});
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut tick = |dir: &Path, n: usize| {
        if n % 64 == 1 {
            let shown: String = dir
                .display()
                .to_string()
                .chars()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bar.set_message(format!("{n} directories searched … {shown}"));
        }
    };
    let out = f(&mut tick);
    bar.finish_and_clear();
    out
}

/// `--connect`: fetch each server's tools and run the tool-metadata scanner on them.
mod connect {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::StreamExt;
    use palisade_discover::extract::{ServerEntry, Transport};
    use palisade_discover::rules::{self, CONNECT_FAILED, Finding, Location, Severity, TOOL_POISONING};
    use palisade_discover::{Report, ServerReport};
    use palisade_upstream::http::{HttpUpstream, Reply, UpstreamCredentials};
    use palisade_upstream::stdio::{Event, StdioConnection, StdioSpec};
    use palisade_wire::{Id, Limits, Message};
    use serde_json::value::RawValue;
    use serde_json::{Value, json};

    const MAX_PAGES: usize = 20;

    pub fn connect_all(report: &mut Report, runtime: &tokio::runtime::Runtime, timeout: Duration) {
        for s in report.servers.iter_mut() {
            if s.disabled {
                continue;
            }
            let result = match s.transport {
                Transport::Stdio => runtime.block_on(stdio_tools(&s.entry, timeout)),
                Transport::Http => runtime.block_on(http_tools(&s.entry, timeout)),
                Transport::Unknown => continue,
            };
            match result {
                Ok(tools) => add_tool_findings(s, &tools),
                Err(why) => {
                    let f = finding(
                        s,
                        CONNECT_FAILED,
                        Severity::Low,
                        &s.pointer.clone(),
                        "connect",
                        format!("'{}' could not be listed: {why}", s.name),
                    );
                    s.findings.push(f);
                }
            }
        }
    }

    fn finding(
        s: &ServerReport,
        rule: &'static str,
        severity: Severity,
        pointer: &str,
        kind: &str,
        message: String,
    ) -> Finding {
        Finding {
            rule,
            severity,
            message,
            location: Location {
                file: s.file.clone(),
                pointer: pointer.to_string(),
                line: s.line,
            },
            fingerprint: rules::fingerprint(&[rule, &s.file, pointer, kind]),
        }
    }

    fn add_tool_findings(s: &mut ServerReport, tools: &[Value]) {
        for tool in tools {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or("?").to_string();
            let report = palisade_scan::scan_tool(tool);
            // One finding per tool and scanner rule, at its worst severity.
            let mut worst: BTreeMap<&str, (palisade_scan::Severity, String)> = BTreeMap::new();
            for f in &report.findings {
                let e = worst.entry(f.rule).or_insert((f.severity, f.message.clone()));
                if f.severity > e.0 {
                    *e = (f.severity, f.message.clone());
                }
            }
            for (rule, (sev, msg)) in worst {
                let severity = match sev {
                    palisade_scan::Severity::Low => Severity::Low,
                    palisade_scan::Severity::Medium => Severity::Medium,
                    _ => Severity::High,
                };
                let msg: String = msg.chars().take(200).collect();
                let f = finding(
                    s,
                    TOOL_POISONING,
                    severity,
                    &s.pointer.clone(),
                    &format!("{name}/{rule}"),
                    format!("tool '{name}' of '{}': {rule}: {msg}", s.name),
                );
                s.findings.push(f);
            }
        }
    }

    fn init_params() -> Box<RawValue> {
        let v = json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "palisade-scan-config", "version": env!("CARGO_PKG_VERSION")},
        });
        RawValue::from_string(v.to_string()).expect("JSON")
    }

    fn request(id: u64, method: &str, params: Value) -> Message {
        let id = Id::from_raw(RawValue::from_string(id.to_string()).expect("JSON")).expect("an integer id");
        Message::request(
            id,
            method,
            Some(RawValue::from_string(params.to_string()).expect("JSON")),
        )
    }

    /// The tools of one `tools/list` result, and the next cursor.
    fn page(reply: &Message) -> Result<(Vec<Value>, Option<String>), String> {
        if let Some(e) = &reply.error {
            let e: Value = serde_json::from_str(e.get()).unwrap_or(Value::Null);
            let msg: String = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .chars()
                .take(120)
                .collect();
            return Err(format!("tools/list failed: {msg}"));
        }
        let r: Value = reply
            .result
            .as_ref()
            .map(|r| serde_json::from_str(r.get()).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        let tools = r
            .get("tools")
            .and_then(Value::as_array)
            .cloned()
            .ok_or("tools/list without tools")?;
        let next = r.get("nextCursor").and_then(Value::as_str).map(str::to_string);
        Ok((tools, next))
    }

    /// Environment for the process: literal values, and `${VAR}`/`$VAR`/`${env:VAR}`
    /// references resolved from this environment (others are left out).
    fn env_for(e: &ServerEntry) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, f) in &e.env {
            let v = f.value.trim();
            if !rules::is_reference(v) {
                out.insert(k.clone(), f.value.clone());
                continue;
            }
            let name = v
                .strip_prefix("${env:")
                .or_else(|| v.strip_prefix("${"))
                .and_then(|r| r.strip_suffix('}'))
                .or_else(|| v.strip_prefix('$'));
            if let Some(n) = name
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && let Ok(val) = std::env::var(n)
            {
                out.insert(k.clone(), val);
            }
        }
        out
    }

    async fn stdio_tools(e: &ServerEntry, timeout: Duration) -> Result<Vec<Value>, String> {
        let argv = palisade_discover::packages::argv(e.command.as_ref(), &e.args);
        let (cmd, args) = argv.split_first().ok_or("no command")?;
        // Built through serde so every field the configuration gains gets its
        // default; the sandbox is strict, without network.
        let cfg = json!({
            "command": cmd.value,
            "args": args.iter().map(|a| a.value.clone()).collect::<Vec<_>>(),
            "env": env_for(e),
            "sandbox": {"mode": "strict", "network": "none"},
            "restart_backoff_initial_ms": 3_600_000u64,
            "restart_backoff_max_ms": 3_600_000u64,
            "shutdown_grace_ms": 500u64,
        });
        let config: palisade_config::StdioConfig =
            serde_json::from_value(cfg).map_err(|err| format!("cannot build a launch configuration: {err}"))?;
        let spec = StdioSpec {
            name: e.name.clone(),
            config,
            limits: Limits::default(),
            init_params: init_params(),
            require_launch_pins: false,
        };
        let (conn, mut events) = StdioConnection::start(spec);
        // Responses travel through the event queue and must be handed back.
        let pump_conn: Arc<StdioConnection> = conn.clone();
        let (down_tx, mut down_rx) = tokio::sync::mpsc::channel::<String>(1);
        let pump = tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Response(m) => pump_conn.resolve(m),
                    Event::Down { reason } => {
                        let _ = down_tx.try_send(reason);
                    }
                    _ => {}
                }
            }
        });
        let work = async {
            tokio::select! {
                r = conn.wait_ready(timeout) => r.map_err(|err| err.to_string())?,
                Some(why) = down_rx.recv() => return Err(format!("the process exited: {why}")),
            };
            let mut tools = Vec::new();
            let mut cursor: Option<String> = None;
            for i in 0..MAX_PAGES {
                let params = match &cursor {
                    Some(c) => json!({"cursor": c}),
                    None => json!({}),
                };
                let reply = conn
                    .request(request(i as u64 + 1, "tools/list", params), timeout)
                    .await
                    .map_err(|err| err.to_string())?;
                let (mut page_tools, next) = page(&reply)?;
                tools.append(&mut page_tools);
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            Ok(tools)
        };
        let out = match tokio::time::timeout(timeout * 2, work).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        };
        conn.shutdown().await;
        pump.abort();
        out
    }

    async fn http_tools(e: &ServerEntry, timeout: Duration) -> Result<Vec<Value>, String> {
        let url = e.url.as_ref().ok_or("no url")?;
        if rules::is_reference(&url.value) {
            return Err("the URL is a reference".into());
        }
        let cfg: palisade_config::HttpConfig = serde_json::from_value(json!({"url": url.value}))
            .map_err(|err| format!("cannot build an HTTP configuration: {err}"))?;
        // No credentials are sent: --connect never hands configured secrets to a server.
        let up = HttpUpstream::new(&e.name, &cfg, Limits::default(), UpstreamCredentials::default())?;
        let work = async {
            let init = request(
                1,
                "initialize",
                serde_json::from_str(init_params().get()).unwrap_or(Value::Null),
            );
            let answer = up
                .post(&init, None, None, &[], timeout, None)
                .await
                .map_err(|err| err.to_string())?;
            let session = answer.session_id.clone();
            let init_reply = first_message(answer.reply).await?;
            let version = init_reply
                .result
                .as_ref()
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
                .and_then(|v| v.get("protocolVersion").and_then(Value::as_str).map(str::to_string));
            let note = Message::notification("notifications/initialized", None);
            let _ = up
                .post(&note, session.as_deref(), version.as_deref(), &[], timeout, None)
                .await;
            let mut tools = Vec::new();
            let mut cursor: Option<String> = None;
            for i in 0..MAX_PAGES {
                let params = match &cursor {
                    Some(c) => json!({"cursor": c}),
                    None => json!({}),
                };
                let req = request(i as u64 + 2, "tools/list", params);
                let answer = up
                    .post(&req, session.as_deref(), version.as_deref(), &[], timeout, None)
                    .await
                    .map_err(|err| err.to_string())?;
                let (mut page_tools, next) = page(&first_message(answer.reply).await?)?;
                tools.append(&mut page_tools);
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            if let Some(sid) = &session {
                let _ = up.delete(sid, version.as_deref(), None).await;
            }
            Ok(tools)
        };
        match tokio::time::timeout(timeout * 2, work).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        }
    }

    /// The response in a reply: the JSON message, or the first response of an SSE stream.
    async fn first_message(reply: Reply) -> Result<Message, String> {
        match reply {
            Reply::Message(m) => Ok(m),
            Reply::Stream(mut s) => {
                while let Some(m) = s.next().await {
                    let m = m.map_err(|err| err.to_string())?;
                    if m.method.is_none() {
                        return Ok(m);
                    }
                }
                Err("the stream ended without a response".into())
            }
            Reply::Accepted => Err("no response (202)".into()),
        }
    }
}
