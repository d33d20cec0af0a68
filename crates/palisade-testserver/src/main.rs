//! `palisade-testserver`: an MCP server used as a test fixture for the
//! Palisade gateway.
//!
//! ```text
//! palisade-testserver stdio
//! palisade-testserver http --port N      # 127.0.0.1:N, endpoint /mcp; N=0 picks a free port
//! ```
//!
//! In HTTP mode the first line on stdout is `listening http://127.0.0.1:PORT/mcp`.

mod fixtures;
mod hostile;
mod server;
mod sessions;

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use server::TestServer;
use sessions::TrackingSessionManager;

const USAGE: &str = "usage: palisade-testserver stdio | palisade-testserver http --port N";

enum Mode {
    Stdio,
    Http { port: u16 },
}

fn parse_args(args: &[String]) -> anyhow::Result<Mode> {
    match args.first().map(String::as_str) {
        Some("stdio") if args.len() == 1 => Ok(Mode::Stdio),
        Some("http") => {
            let mut port = None;
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                let value = match arg.as_str() {
                    "--port" => rest.next().context("--port needs a value")?.as_str(),
                    other => match other.strip_prefix("--port=") {
                        Some(v) => v,
                        None => bail!("unknown argument `{other}`\n{USAGE}"),
                    },
                };
                port = Some(value.parse::<u16>().context("invalid --port")?);
            }
            Ok(Mode::Http {
                port: port.context("http mode requires --port N")?,
            })
        }
        _ => bail!("{USAGE}"),
    }
}

async fn run_stdio() -> anyhow::Result<()> {
    let service = TestServer::new(None)
        .serve(rmcp::transport::stdio())
        .await
        .context("MCP initialization over stdio failed")?;
    service.waiting().await?;
    Ok(())
}

async fn run_http(port: u16) -> anyhow::Result<()> {
    let sessions = Arc::new(TrackingSessionManager::default());
    let factory_sessions = sessions.clone();
    // Defaults: stateful sessions, SSE priming + retry, Host allow-list of
    // loopback names (DNS-rebinding protection).
    let config = StreamableHttpServerConfig::default().with_allowed_origins([
        "http://localhost:*",
        "http://127.0.0.1:*",
        "http://[::1]:*",
    ]);
    let service = StreamableHttpService::new(
        move || Ok(TestServer::new(Some(factory_sessions.clone()))),
        sessions,
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot bind 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening http://{addr}/mcp")?;
        stdout.flush()?;
    }
    axum::serve(listener, router).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match parse_args(&args) {
        Ok(Mode::Stdio) => run_stdio().await,
        Ok(Mode::Http { port }) => run_http(port).await,
        Err(e) => {
            eprintln!("palisade-testserver: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("palisade-testserver: {e:#}");
        std::process::exit(1);
    }
}
