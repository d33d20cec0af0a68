//! `palisade`: the MCP security gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod audit_cmd;
mod audit_setup;
mod inventory_cmd;
mod pin_cmd;
mod policy_cmd;
mod sandbox_cmd;
mod scan_cmd;
mod scan_config_cmd;
mod scan_text;
mod tools_cmd;

use clap::{Parser, Subcommand};
use palisade_config::{AuthMode, Config, SecretRef};
use palisade_gateway::Gateway;
use palisade_session::{SessionKey, SessionSealer};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "A security gateway for the Model Context Protocol"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Serve {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
    },
    /// Run the gateway on 127.0.0.1 in front of the bundled demo MCP server.
    Demo {
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 8787)]
        port: u16,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// TLS tools.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The secret store (`[secrets]` in the configuration).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Tool pins, holds, approvals and quarantine (the `integrity.store`).
    Tools {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Scan tool definitions for poisoning (hidden instructions, invisible text, ...).
    Scan {
        #[command(subcommand)]
        command: ScanCommand,
    },
    /// Authorization policies (Cedar): print the schema, check policy files, run decision cases.
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
    },
    /// The audit chain: verify it, query it, export a session's trail.
    Audit {
        #[command(subcommand)]
        command: audit_cmd::AuditCommand,
    },
    /// The sandbox of launched stdio servers (docs/sandbox.md).
    Sandbox {
        #[command(subcommand)]
        command: sandbox_cmd::SandboxCommand,
    },
    /// Supply-chain pins of launched servers: record, verify, show (docs/supply-chain.md).
    Pin {
        #[command(subcommand)]
        cmd: pin_cmd::PinCmd,
    },
    /// Servers, versions, pins, tools and sandbox profiles as JSON or CycloneDX.
    Inventory {
        #[command(flatten)]
        args: inventory_cmd::InventoryArgs,
    },
    /// The bundled demo MCP server on stdio (what `palisade demo` launches).
    #[command(hide = true)]
    DemoServer,
}

#[derive(Subcommand)]
enum ToolsCommand {
    /// Every pinned item with its state (exit 1 when something is held).
    List {
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What changed between the approved and the served version (exit 1 when they differ).
    Diff {
        /// SERVER/TOOL, or SERVER with --instructions.
        target: String,
        #[arg(long)]
        instructions: bool,
    },
    /// Print a stored version (default: the latest served).
    Show {
        target: String,
        #[arg(long)]
        instructions: bool,
        #[arg(long)]
        digest: Option<String>,
    },
    /// Approvals, auto-pins and rollbacks of one item.
    History {
        target: String,
        #[arg(long)]
        instructions: bool,
    },
    /// Approve the served version of SERVER/TOOL, or with --all every held item (of SERVER if given).
    Approve {
        target: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        instructions: bool,
        /// Approve this stored version instead of the latest served.
        #[arg(long)]
        digest: Option<String>,
        /// Required for versions whose scan found high-severity issues.
        #[arg(long)]
        acknowledge_findings: bool,
        /// Recorded as the approver (default: $USER@host).
        #[arg(long)]
        by: Option<String>,
    },
    /// Hold SERVER/TOOL, or every tool of SERVER, until released.
    Quarantine {
        target: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Lift a quarantine.
    Release {
        target: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Make a previously approved version the approved one again.
    Rollback {
        target: String,
        #[arg(long)]
        instructions: bool,
        /// The version to return to (default: the one approved before the current).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        by: Option<String>,
    },
    /// Inventory of servers, tools, pins, approvals and quarantines as JSON.
    Export,
}

#[derive(Subcommand)]
enum ScanCommand {
    /// Scan a `tools/list` result, an array of tools, or JSON lines of `{"id", "tool"}`.
    /// Exit 0 clean, 1 flagged, 2 bad input.
    Tools {
        /// Input file, or `-` for standard input.
        file: PathBuf,
        #[arg(long, default_value = "text", value_parser = ["text", "json", "jsonl", "sarif"])]
        format: String,
        /// Also report the same or look-alike tool names on different `server`s.
        #[arg(long)]
        cross_server: bool,
    },
    /// Scan text (a file, standard input, or JSON lines of `{"id", "text"}`) for prompt
    /// injection, secrets and personal data. Exit 0 clean, 1 flagged, 2 bad input.
    Text {
        #[command(flatten)]
        args: scan_text::TextArgs,
    },
    /// Find MCP client configurations (Claude, Cursor, VS Code, Zed, ...) and audit
    /// every server. Exit 0: nothing high; 1: a high finding; 2: nothing could be scanned.
    Config {
        #[command(flatten)]
        args: scan_config_cmd::ConfigArgs,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Print what each listener and upstream will present and trust, with expiry dates.
    Check {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint an access token from the development issuer (`[auth.dev_issuer]`, or the demo's).
    /// Development only.
    Mint {
        /// Configuration with `[auth.dev_issuer]`; without it, the `palisade demo` issuer.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Port of the demo gateway (without --config).
        #[arg(long, default_value_t = 8787)]
        port: u16,
        #[arg(long, default_value = "demo-user")]
        sub: String,
        /// Scopes (space-separated or repeated).
        #[arg(long)]
        scope: Vec<String>,
        /// Endpoint names the token is for (default: every endpoint).
        #[arg(long)]
        endpoint: Vec<String>,
        #[arg(long)]
        group: Vec<String>,
        #[arg(long)]
        role: Vec<String>,
        /// Authentication methods (`mfa`) for step-up tests.
        #[arg(long)]
        amr: Vec<String>,
        /// Bind to a DPoP key thumbprint (`cnf.jkt`).
        #[arg(long)]
        jkt: Option<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// A token for the admin API only (audience `<public URL>/admin`).
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Store a secret read from standard input (file backend).
    Set {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
        name: String,
    },
    /// List secret names (never values).
    List {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
    },
    /// Re-encrypt every secret under the first key (file backend).
    Rotate {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
    },
    /// Print a new random key line (`kid:base64`) for the file backend.
    Keygen {
        #[arg(long, default_value = "k1")]
        kid: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and report every problem.
    Check {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
    },
}

/// mimalloc: per-request allocations were 10-15% of the gateway's CPU under
/// glibc malloc (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::DemoServer => match runtime.block_on(palisade_demo::run_stdio()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo server: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Config {
            command: ConfigCommand::Check { config },
        } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} upstream{})",
                    config.display(),
                    c.upstreams.len(),
                    if c.upstreams.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{}: {} problem(s)", config.display(), errs.0.len());
                for e in &errs.0 {
                    eprintln!("  {e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let slot = audit_setup::init_logging(&cli.log_format);
            let config_path = config.clone();
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(errs) => {
                    eprintln!("configuration error in {}:", config.display());
                    for e in &errs.0 {
                        eprintln!("  {e}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let mut config = config;
            tools_cmd::resolve_store(&mut config, &config_path);
            resolve_policy_dir(&mut config, &config_path);
            runtime.block_on(run(config, None, slot))
        }
        Command::Token { command } => token_command(command),
        Command::Tls {
            command: TlsCommand::Check { config },
        } => tls_check(&config),
        Command::Secrets { command } => runtime.block_on(secrets_command(command)),
        Command::Tools { config, command } => tools_cmd::run(&config, tools_action(command)),
        Command::Scan {
            command:
                ScanCommand::Tools {
                    file,
                    format,
                    cross_server,
                },
        } => scan_cmd::scan_tools(&file, &format, cross_server),
        Command::Scan {
            command: ScanCommand::Text { args },
        } => scan_text::run(&args),
        Command::Scan {
            command: ScanCommand::Config { args },
        } => scan_config_cmd::run(&args, &runtime),
        Command::Policy { command } => policy_cmd::run(command),
        Command::Audit { command } => audit_cmd::run(command),
        Command::Sandbox { command } => sandbox_cmd::run(command),
        Command::Pin { cmd } => pin_cmd::run(cmd),
        Command::Inventory { args } => inventory_cmd::run(args),
        Command::Demo { port } => {
            let slot = audit_setup::init_logging(&cli.log_format);
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: cannot locate the palisade binary: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let text = demo_config(&exe, port);
            let config = match Config::from_toml(&text) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: demo configuration: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config, Some(()), slot))
        }
    }
}

/// Where the demo keeps its development signing key (per user, outside the repository).
fn tools_action(c: ToolsCommand) -> tools_cmd::Action {
    use tools_cmd::Action;
    match c {
        ToolsCommand::List { server, json } => Action::List { server, json },
        ToolsCommand::Diff { target, instructions } => Action::Diff { target, instructions },
        ToolsCommand::Show {
            target,
            instructions,
            digest,
        } => Action::Show {
            target,
            instructions,
            digest,
        },
        ToolsCommand::History { target, instructions } => Action::History { target, instructions },
        ToolsCommand::Approve {
            target,
            all,
            instructions,
            digest,
            acknowledge_findings,
            by,
        } => Action::Approve {
            target,
            all,
            instructions,
            digest,
            acknowledge: acknowledge_findings,
            by,
        },
        ToolsCommand::Quarantine { target, reason, by } => Action::Quarantine { target, reason, by },
        ToolsCommand::Release { target, by } => Action::Release { target, by },
        ToolsCommand::Rollback {
            target,
            instructions,
            to,
            by,
        } => Action::Rollback {
            target,
            instructions,
            to,
            by,
        },
        ToolsCommand::Export => Action::Export,
    }
}

fn demo_key_file() -> PathBuf {
    let user: String = std::env::var("USER")
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    std::env::temp_dir()
        .join(format!("palisade-demo-{user}"))
        .join("dev-issuer.pem")
}

fn toml_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The embedded default: one stdio upstream, the demo server, on loopback, with
/// tokens from the development issuer required.
fn demo_config(exe: &std::path::Path, port: u16) -> String {
    let exe = toml_str(&exe.display().to_string());
    let key = toml_str(&demo_key_file().display().to_string());
    let store = toml_str(&demo_key_file().with_file_name("state.db").display().to_string());
    let audit = toml_str(&demo_key_file().with_file_name("audit").display().to_string());
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[integrity]
store = "{store}"

[audit]
dir = "{audit}"

[auth]
mode = "oauth"

[auth.dev_issuer]
key_file = "{key}"

[upstreams.demo]
transport = "stdio"
command = "{exe}"
args = ["demo-server"]
# The demo must start on any Linux host: a kernel without Landlock or user
# namespaces gets a loud warning instead of a refusal.
sandbox = {{ mode = "best-effort" }}
"#
    )
}

fn sealer(config: &Config) -> Result<SessionSealer, String> {
    let audience = format!("http://{}", config.server.listen);
    let keys = match std::env::var(&config.sessions.keys_env) {
        Ok(spec) if !spec.trim().is_empty() => {
            SessionSealer::parse_keys(&spec).map_err(|e| format!("{}: {e}", config.sessions.keys_env))?
        }
        _ => {
            tracing::warn!(
                env = %config.sessions.keys_env,
                "no session keys configured: using a random key; sessions end when this process stops and cannot be shared between replicas"
            );
            vec![SessionKey::generate("ephemeral").map_err(|e| e.to_string())?]
        }
    };
    SessionSealer::new(keys, audience).map_err(|e| e.to_string())
}

/// Relative paths (`policy.dir`, `[audit]`, `auth.dev_issuer.key_file`,
/// `inspect.secrets_rules`) are taken from the configuration file's folder.
fn resolve_policy_dir(config: &mut Config, config_path: &std::path::Path) {
    let base = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    audit_setup::resolve_paths(config, base);
    if let Some(dev) = config.auth.dev_issuer.as_mut()
        && dev.key_file.is_relative()
    {
        dev.key_file = base.join(&dev.key_file);
    }
    if let Some(rules) = config.inspect.secrets_rules.as_mut()
        && !std::path::Path::new(rules.as_str()).is_absolute()
    {
        *rules = base.join(&*rules).display().to_string();
    }
    let Some(p) = config.policy.as_mut() else { return };
    if std::path::Path::new(&p.dir).is_absolute() {
        return;
    }
    p.dir = base.join(&p.dir).display().to_string();
}

/// The content inspector of `[inspect]`: the engine (with the gitleaks rule
/// file when set) and the remote detector (its key from the secret store).
async fn inspector(config: &Config) -> Result<Option<Arc<palisade_gateway::inspect::Inspector>>, String> {
    let ic = &config.inspect;
    if !ic.enabled {
        tracing::warn!("[inspect] enabled = false: content inspection is off");
        return Ok(None);
    }
    let rules = match &ic.secrets_rules {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|e| format!("inspect.secrets_rules: cannot read {path}: {e}"))?)
        }
        None => None,
    };
    let remote = match &ic.remote {
        Some(rc) => {
            let endpoint = url::Url::parse(&rc.endpoint).map_err(|e| format!("inspect.remote.endpoint: {e}"))?;
            let mut dc = palisade_detector::DetectorConfig::new(endpoint);
            dc.api_version = rc.api_version.clone();
            dc.timeout = std::time::Duration::from_millis(rc.timeout_ms);
            if let Some(k) = &rc.key {
                let store = secret_store(config)?;
                dc.key = Some(
                    palisade_secrets::resolve(&store, k)
                        .await
                        .map_err(|e| format!("inspect.remote.key: {e}"))?,
                );
            }
            Some(palisade_detector::RemoteDetector::new(dc).map_err(|e| format!("inspect.remote: {e}"))?)
        }
        None => None,
    };
    let i = palisade_gateway::inspect::Inspector::new(config, rules, remote)?;
    tracing::info!(packs = ?ic.packs, remote = ic.remote.is_some(), "content inspection on");
    Ok(Some(Arc::new(i)))
}

async fn run(config: Config, demo: Option<()>, slot: palisade_audit::AuditSlot) -> ExitCode {
    let listen: SocketAddr = config.server.listen;
    let sealer = match sealer(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().unwrap_or(listen);
    let tls = match build_tls(&config, bound) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let admin = match bind_admin(&config).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let auth = match build_auth(&config, bound).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let demo_token = match (&demo, auth.as_ref().and_then(|a| a.dev_issuer())) {
        (Some(()), Some(dev)) => {
            let req = palisade_auth::MintRequest {
                subject: "demo-user".into(),
                audiences: vec![
                    format!("{scheme}://{bound}/mcp/demo"),
                    format!("{scheme}://{bound}/mcp"),
                ],
                ..Default::default()
            };
            dev.mint(&req, palisade_session::unix(std::time::SystemTime::now()))
                .ok()
        }
        _ => None,
    };
    let creds = match upstream_credentials(&config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let integrity = match tools_cmd::open_store(&config)
        .and_then(|store| palisade_gateway::integrity::Integrity::new(store, &config))
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    integrity.spawn_poller(std::time::Duration::from_millis(config.integrity.poll_interval_ms));
    let policy_dir = config.policy.as_ref().map(|p| std::path::PathBuf::from(&p.dir));
    let inspect = match inspector(&config).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = match secret_store(&config) {
        Ok(store) => match audit_setup::start(&config, &slot, &store).await {
            Ok(a) => audit_setup::start_traces(&config, &store).await.map(|t| (a, t)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let (mut audit, traces) = match started {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(i), Some(a)) = (&inspect, &audit) {
        // Finding hashes keyed by the chain key: the same value hashes alike across restarts.
        i.set_detection_key(a.audit.digest(b"palisade-inspect-detection-key").as_bytes());
    }
    let controls = match palisade_gateway::controls::Controls::build(&config, policy_dir.as_deref(), inspect).await {
        Ok(mut c) => {
            c.audit = audit.as_ref().map(|a| a.audit.clone());
            c.tracer = palisade_gateway::trace::Tracer::new(&config.traces, traces.clone());
            Arc::new(c)
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match (&controls.policy, &config.policy) {
        (Some(p), Some(c)) => {
            tracing::info!(policies = p.policy_count(), dir = %c.dir, "authorization policies loaded");
            controls.spawn_policy_reload(std::time::Duration::from_millis(c.reload_interval_ms));
        }
        _ => tracing::warn!(
            "no [policy] configured: authorization is off (every authenticated caller may use every tool)"
        ),
    }
    palisade_state::spawn_maintenance(&controls.state, std::time::Duration::from_secs(10));
    tracing::info!(backend = controls.state.name(), "shared state backend");
    let gw: Arc<Gateway> = match Gateway::new(config, sealer, auth, creds, Some(integrity), Some(controls)) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    palisade_gateway::containment::spawn_sync(&gw);
    audit_setup::spawn_drop_monitor(audit.as_ref().and_then(|a| a.sinks.clone()), traces.clone());
    if let Some(a) = audit.as_mut()
        && let Some(rx) = a.alerts.take()
    {
        palisade_gateway::audit::spawn_responder(gw.clone(), rx, audit_setup::notifier(a.sinks.clone()));
    }
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "listening on a non-loopback address");
    }
    tracing::info!(%bound, "palisade listening");
    let names: Vec<String> = gw.upstreams.keys().cloned().collect();
    println!("palisade listening on {scheme}://{bound}");
    if demo.is_some() {
        println!("Palisade demo gateway is running.");
        println!();
        println!("  MCP endpoint (Streamable HTTP): http://{bound}/mcp/demo");
        println!("  Aggregated endpoint:            http://{bound}/mcp");
        println!();
        println!("Every request needs a bearer token. A development token (1 hour, user demo-user):");
        println!();
        println!("  {}", demo_token.as_deref().unwrap_or("(could not mint one)"));
        println!();
        println!("Connect an MCP client with the header 'Authorization: Bearer <token>', for example");
        println!("  npx @modelcontextprotocol/inspector   (transport: Streamable HTTP)");
        println!(
            "Mint more with: palisade token mint --port {} --sub alice",
            bound.port()
        );
        println!("The development issuer is for trying Palisade on loopback only; see docs/authentication.md.");
        println!("Press Ctrl-C to stop.");
    } else {
        for n in &names {
            println!("endpoint: {scheme}://{bound}/mcp/{n}");
        }
    }
    let stop = CancellationToken::new();
    if let Some((admin_listener, admin_tls)) = admin {
        let addr = admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
        println!("admin listening on {admin_scheme}://{addr}");
        let mut reported = vec![];
        if let Some(t) = &tls {
            reported.push(("mcp".to_owned(), t.clone()));
        }
        if let Some(t) = &admin_tls {
            reported.push(("admin".to_owned(), t.clone()));
            let watcher = t.clone();
            let stop_watch = stop.clone();
            tokio::spawn(async move { watcher.watch(stop_watch.cancelled_owned()).await });
        }
        let mut admin = palisade_gateway::admin::Admin::new(gw.clone(), reported);
        if let Some(s) = audit.as_ref().and_then(|a| a.sinks.as_ref()) {
            s.register(admin.registry_mut());
        }
        if let Some(t) = &traces {
            t.register(admin.registry_mut());
        }
        let state = Arc::new(admin);
        let router = palisade_gateway::admin::router(state, admin_tls.as_ref().and_then(|t| t.hsts()));
        let header_timeout = std::time::Duration::from_millis(gw.config.server.header_timeout_ms);
        let stop_admin = stop.clone();
        tokio::spawn(async move {
            palisade_gateway::serve_router(router, admin_listener, admin_tls, header_timeout, stop_admin).await;
        });
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal_stop.cancel();
    });
    if let Some(t) = &tls {
        let watcher = t.clone();
        let stop_watch = stop.clone();
        tokio::spawn(async move { watcher.watch(stop_watch.cancelled_owned()).await });
    }
    // SIGHUP reloads the certificate; without TLS it is logged and ignored (never fatal,
    // so a renewal hook or `systemctl reload` cannot stop the gateway).
    let on_hup = tls.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match &on_hup {
                Some(t) => {
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    let _ = t.reload(true);
                }
                None => tracing::info!("SIGHUP ignored: no TLS listener to reload"),
            }
        }
    });
    let served = palisade_gateway::serve(gw, listener, tls, stop).await;
    if let Some(a) = &audit {
        a.shutdown().await;
    }
    if let Some(t) = &traces {
        t.shutdown(std::time::Duration::from_secs(3)).await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Public base URL: configured, else the bound address.
fn public_url(config: &Config, bound: SocketAddr) -> String {
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    config
        .auth
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{bound}"))
}

/// The TLS listener, or plain HTTP where that is allowed: loopback, or a non-loopback
/// address only with `allow_plain_http_non_loopback` (behind a TLS-terminating proxy).
fn build_tls(config: &Config, bound: SocketAddr) -> Result<Option<Arc<palisade_tls::TlsListener>>, String> {
    listener_tls(
        "server",
        config.server.tls.as_ref(),
        config.server.allow_plain_http_non_loopback,
        bound,
    )
}

fn listener_tls(
    section: &str,
    tls: Option<&palisade_config::TlsListenerConfig>,
    allow_plain: bool,
    bound: SocketAddr,
) -> Result<Option<Arc<palisade_tls::TlsListener>>, String> {
    match tls {
        Some(t) => {
            let l = palisade_tls::TlsListener::new(t).map_err(|e| format!("{section}.tls: {e}"))?;
            let info = l.info();
            tracing::info!(
                subject = %info.subject,
                not_after = %info.not_after_text,
                min_version = %t.min_version,
                client_auth = ?t.client_auth,
                listener = section,
                "TLS enabled"
            );
            Ok(Some(Arc::new(l)))
        }
        None if bound.ip().is_loopback() => Ok(None),
        None if allow_plain => {
            tracing::warn!(
                %bound,
                listener = section,
                "SERVING PLAIN HTTP ON A NON-LOOPBACK ADDRESS: tokens and session ids cross the network in clear \
                 unless a TLS-terminating proxy is in front (allow_plain_http_non_loopback = true)"
            );
            Ok(None)
        }
        None => Err(format!(
            "plain HTTP on non-loopback address {bound}: configure [{section}.tls], or set \
             {section}.allow_plain_http_non_loopback = true behind a TLS-terminating proxy"
        )),
    }
}

/// Builds the resource server, refusing unsafe combinations (anonymous or development
/// issuer on a non-loopback address).
async fn build_auth(config: &Config, bound: SocketAddr) -> Result<Option<Arc<palisade_auth::Authenticator>>, String> {
    let loopback = bound.ip().is_loopback();
    match config.auth.mode {
        AuthMode::None => {
            if !loopback && !config.auth.allow_anonymous_non_loopback {
                return Err(format!(
                    "auth.mode = \"none\" on non-loopback address {bound}: every caller would be anonymous; \
                     configure [auth] mode = \"oauth\" (or set auth.allow_anonymous_non_loopback = true)"
                ));
            }
            tracing::warn!("authentication is off (auth.mode = \"none\"): every caller is anonymous");
            Ok(None)
        }
        AuthMode::Oauth => {
            if config.auth.dev_issuer.is_some() {
                if !loopback {
                    return Err(format!(
                        "auth.dev_issuer is for development only and refuses non-loopback address {bound}"
                    ));
                }
                tracing::warn!("the development issuer is enabled: tokens from `palisade token mint` are accepted");
            }
            let secrets = resolve_auth_secrets(config).await?;
            let resolve = |r: &SecretRef| -> Result<String, String> {
                secrets
                    .get(&secret_key(r))
                    .cloned()
                    .ok_or_else(|| "not resolved".to_owned())
            };
            let auth = palisade_auth::Authenticator::new(&config.auth, &public_url(config, bound), &resolve)?;
            let auth = Arc::new(auth);
            let warm = auth.clone();
            tokio::spawn(async move { warm.warm_up().await });
            Ok(Some(auth))
        }
    }
}

fn secret_key(r: &SecretRef) -> String {
    match r {
        SecretRef::Env(v) => format!("env:{v}"),
        SecretRef::Secret(s) => format!("secret:{s}"),
    }
}

/// The secret store, opened only when the configuration names a stored secret
/// (environment references need none).
pub(crate) fn secret_store(config: &Config) -> Result<palisade_secrets::SecretStore, String> {
    let mut refs: Vec<&SecretRef> = Vec::new();
    if let Some(ic) = &config.auth.introspection {
        refs.push(&ic.client_secret);
    }
    refs.extend(config.audit.key.iter());
    if let Some(k) = config.inspect.remote.as_ref().and_then(|r| r.key.as_ref()) {
        refs.push(k);
    }
    refs.extend(config.traces.headers.values());
    for s in &config.audit.sinks {
        match &s.kind {
            palisade_config::SinkKind::Otlp { headers, .. } => refs.extend(headers.values()),
            palisade_config::SinkKind::Webhook { secret, .. } => refs.extend(secret.iter()),
            _ => {}
        }
    }
    for up in config.upstreams.values() {
        if let palisade_config::Transport::Http(h) = &up.get_ref().transport {
            refs.extend(h.headers.values());
            refs.extend(h.oauth.iter().map(|o| &o.client_secret));
        }
    }
    if refs.iter().any(|r| matches!(r, SecretRef::Secret(_))) {
        palisade_secrets::SecretStore::from_config(&config.secrets).map_err(|e| format!("secrets: {e}"))
    } else {
        Ok(palisade_secrets::SecretStore::Env(palisade_secrets::EnvStore::new(
            &config.secrets.env_prefix,
        )))
    }
}

/// The gateway's own credentials for each HTTP upstream (M5).
async fn upstream_credentials(
    config: &Config,
) -> Result<std::collections::BTreeMap<String, palisade_upstream::http::UpstreamCredentials>, String> {
    let store = secret_store(config)?;
    let mut out = std::collections::BTreeMap::new();
    for (name, up) in &config.upstreams {
        if let palisade_config::Transport::Http(h) = &up.get_ref().transport {
            let c = palisade_upstream::http::UpstreamCredentials::resolve(name, h, &store).await?;
            out.insert(name.clone(), c);
        }
    }
    Ok(out)
}

/// Reads the secrets authentication needs, from the environment or the secret store.
async fn resolve_auth_secrets(config: &Config) -> Result<std::collections::HashMap<String, String>, String> {
    let mut out = std::collections::HashMap::new();
    let Some(ic) = &config.auth.introspection else {
        return Ok(out);
    };
    let store = secret_store(config)?;
    let secret = palisade_secrets::resolve(&store, &ic.client_secret)
        .await
        .map_err(|e| format!("auth.introspection.client_secret: {e}"))?;
    let text = secret
        .expose_str()
        .map_err(|e| format!("auth.introspection.client_secret: {e}"))?
        .to_owned();
    out.insert(secret_key(&ic.client_secret), text);
    Ok(out)
}

fn token_command(command: TokenCommand) -> ExitCode {
    let TokenCommand::Mint {
        config,
        port,
        sub,
        scope,
        endpoint,
        group,
        role,
        amr,
        jkt,
        ttl,
        admin,
    } = command;
    let config = match config {
        Some(path) => match Config::load(&path) {
            Ok(mut c) => {
                // The same key file as `serve` reads: relative to the configuration's folder.
                resolve_policy_dir(&mut c, &path);
                c
            }
            Err(errs) => {
                eprintln!("configuration error in {}:\n{errs}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("palisade"));
            match Config::from_toml(&demo_config(&exe, port)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: demo configuration: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let Some(dev) = &config.auth.dev_issuer else {
        eprintln!("error: the configuration has no [auth.dev_issuer]; tokens come from your identity provider");
        return ExitCode::FAILURE;
    };
    let base = public_url(&config, config.server.listen);
    let issuer = match palisade_auth::DevIssuer::load_or_create(&dev.key_file, &base, dev.token_ttl_s) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let names: Vec<String> = if endpoint.is_empty() {
        config.upstreams.keys().cloned().collect()
    } else {
        endpoint
    };
    let audiences: Vec<String> = if admin {
        vec![format!("{base}/admin")]
    } else {
        let mut a: Vec<String> = names.iter().map(|n| format!("{base}/mcp/{n}")).collect();
        a.push(format!("{base}/mcp"));
        a
    };
    let split = |v: Vec<String>| -> Vec<String> {
        v.iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let req = palisade_auth::MintRequest {
        subject: sub,
        scopes: split(scope),
        audiences,
        groups: group,
        roles: role,
        amr,
        jkt,
        ttl_s: ttl,
    };
    match issuer.mint(&req, palisade_session::unix(std::time::SystemTime::now())) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn secrets_command(command: SecretsCommand) -> ExitCode {
    let load = |path: &PathBuf| {
        Config::load(path).map_err(|errs| format!("configuration error in {}:\n{errs}", path.display()))
    };
    let result: Result<(), String> = async {
        match command {
            SecretsCommand::Keygen { kid } => {
                println!(
                    "{}",
                    palisade_secrets::cli::generate_key(&kid).map_err(|e| e.to_string())?
                );
            }
            SecretsCommand::Set { config, name } => {
                let c = load(&config)?;
                palisade_secrets::cli::cmd_set(&c.secrets, &name, &mut std::io::stdin()).map_err(|e| e.to_string())?;
                eprintln!("stored {name}");
            }
            SecretsCommand::List { config } => {
                let c = load(&config)?;
                for n in palisade_secrets::cli::cmd_list(&c.secrets)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    println!("{n}");
                }
            }
            SecretsCommand::Rotate { config } => {
                let c = load(&config)?;
                let n = palisade_secrets::cli::cmd_rotate(&c.secrets).map_err(|e| e.to_string())?;
                eprintln!("re-encrypted {n} secret(s) under the first key");
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_cert(indent: &str, info: &palisade_tls::CertInfo) {
    println!("{indent}subject:   {}", info.subject);
    println!("{indent}names:     {}", info.sans.join(", "));
    println!("{indent}issuer:    {}", info.issuer);
    println!("{indent}valid:     {} .. {}", info.not_before_text, info.not_after_text);
    let days = (info.not_after - palisade_session::unix(std::time::SystemTime::now()) as i64) / 86_400;
    println!("{indent}expires in {days} day(s)");
    println!("{indent}key:       {}", info.key_algorithm);
    println!("{indent}sha256:    {}", info.sha256_hex);
    println!("{indent}spki pin:  {}", info.spki_sha256_hex);
}

fn print_bundle(indent: &str, what: &str, path: &std::path::Path) -> bool {
    match palisade_tls::load_certs(path) {
        Ok(certs) => {
            println!("{indent}{what} {} ({} certificate(s)):", path.display(), certs.len());
            for c in &certs {
                match palisade_tls::cert_info(c.as_ref()) {
                    Ok(i) => println!("{indent}  - {} (until {})", i.subject, i.not_after_text),
                    Err(e) => println!("{indent}  - unreadable: {e}"),
                }
            }
            true
        }
        Err(e) => {
            println!("{indent}{what}: ERROR {e}");
            false
        }
    }
}

/// `palisade tls check`: what the listener presents and trusts, and how each upstream is
/// verified. Exits non-zero when something would fail at start.
fn tls_check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("configuration error in {}:\n{errs}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    let s = &config.server;
    ok &= check_listener("listener", s.listen, s.tls.as_ref(), s.allow_plain_http_non_loopback);
    if let Some(a) = &config.admin {
        ok &= check_listener(
            "admin listener",
            a.listen,
            a.tls.as_ref(),
            a.allow_plain_http_non_loopback,
        );
    }
    ok &= check_upstreams(&config);
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn check_listener(
    what: &str,
    listen: SocketAddr,
    tls: Option<&palisade_config::TlsListenerConfig>,
    allow_plain: bool,
) -> bool {
    let mut ok = true;
    println!("{what} {listen}");
    match tls {
        None => {
            let note = if listen.ip().is_loopback() {
                "plain HTTP (loopback only)"
            } else if allow_plain {
                "plain HTTP on a non-loopback address (allowed by allow_plain_http_non_loopback)"
            } else {
                ok = false;
                "plain HTTP on a non-loopback address: REFUSED at start; configure [server.tls]"
            };
            println!("  {note}");
        }
        Some(t) => {
            println!(
                "  TLS: minimum {}, ALPN h2 and http/1.1, client certificates {:?}",
                t.min_version, t.client_auth
            );
            match palisade_tls::load_certified_key(&t.cert_file, &t.key_file) {
                Ok((_, info)) => {
                    println!("  presents {}:", t.cert_file.display());
                    print_cert("    ", &info);
                }
                Err(e) => {
                    ok = false;
                    println!("  presents: ERROR {e}");
                }
            }
            if let Some(ca) = &t.client_ca_file {
                ok &= print_bundle("  ", "trusts client certificates from", ca);
            }
        }
    }
    ok
}

fn check_upstreams(config: &Config) -> bool {
    let mut ok = true;
    for (name, up) in &config.upstreams {
        let palisade_config::Transport::Http(h) = &up.get_ref().transport else {
            continue;
        };
        println!("upstream {name}: {}", h.url);
        if !h.url.starts_with("https://") {
            println!("  plain HTTP");
            continue;
        }
        if !h.pinned_cert_sha256.is_empty() {
            println!(
                "  trusts only certificates with SHA-256 {}",
                h.pinned_cert_sha256.join(", ")
            );
        } else if !h.pinned_spki_sha256.is_empty() {
            let chain = if h.ca_file.is_some() {
                "chain validated against ca_file and "
            } else {
                ""
            };
            println!(
                "  trusts: {chain}a public key with SPKI SHA-256 {}",
                h.pinned_spki_sha256.join(", ")
            );
        } else if h.only_custom_ca {
            println!("  trusts only the CAs in ca_file");
        } else if h.ca_file.is_some() {
            println!("  trusts the system roots and the CAs in ca_file");
        } else {
            println!("  trusts the system roots");
        }
        if let Some(ca) = &h.ca_file {
            ok &= print_bundle("  ", "ca_file", ca);
        }
        if let (Some(c), Some(k)) = (&h.client_cert_file, &h.client_key_file) {
            match palisade_tls::load_certified_key(c, k) {
                Ok((_, info)) => {
                    println!("  presents client certificate {}:", c.display());
                    print_cert("    ", &info);
                }
                Err(e) => {
                    ok = false;
                    println!("  client certificate: ERROR {e}");
                }
            }
        }
    }
    ok
}

/// Binds the admin listener and its TLS, if `[admin]` is configured.
async fn bind_admin(
    config: &Config,
) -> Result<Option<(tokio::net::TcpListener, Option<Arc<palisade_tls::TlsListener>>)>, String> {
    let Some(a) = &config.admin else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", a.listen))?;
    let bound = listener.local_addr().unwrap_or(a.listen);
    let tls = listener_tls("admin", a.tls.as_ref(), a.allow_plain_http_non_loopback, bound)?;
    Ok(Some((listener, tls)))
}
