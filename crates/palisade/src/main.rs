//! `palisade`: the MCP security gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use palisade_config::Config;
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
    /// The bundled demo MCP server on stdio (what `palisade demo` launches).
    #[command(hide = true)]
    DemoServer,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and report every problem.
    Check {
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

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
            init_logging(&cli.log_format);
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
            runtime.block_on(run(config, None))
        }
        Command::Demo { port } => {
            init_logging(&cli.log_format);
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
            runtime.block_on(run(config, Some(())))
        }
    }
}

/// The embedded default: one stdio upstream, the demo server, on loopback.
fn demo_config(exe: &std::path::Path, port: u16) -> String {
    let exe = exe.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[upstreams.demo]
transport = "stdio"
command = "{exe}"
args = ["demo-server"]
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

async fn run(config: Config, demo: Option<()>) -> ExitCode {
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
    let gw: Arc<Gateway> = match Gateway::new(config, sealer) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "listening on a non-loopback address");
    }
    tracing::info!(%bound, "palisade listening");
    let names: Vec<String> = gw.upstreams.keys().cloned().collect();
    println!("palisade listening on http://{bound}");
    if demo.is_some() {
        println!("Palisade demo gateway is running.");
        println!();
        println!("  MCP endpoint (Streamable HTTP): http://{bound}/mcp/demo");
        println!("  Aggregated endpoint:            http://{bound}/mcp");
        println!();
        println!("Connect an MCP client to the URL above, for example:");
        println!("  npx @modelcontextprotocol/inspector   (transport: Streamable HTTP)");
        println!("No authentication is configured in demo mode; it listens on loopback only.");
        println!("Press Ctrl-C to stop.");
    } else {
        for n in &names {
            println!("endpoint: http://{bound}/mcp/{n}");
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal_stop.cancel();
    });
    match palisade_gateway::serve(gw, listener, stop).await {
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
