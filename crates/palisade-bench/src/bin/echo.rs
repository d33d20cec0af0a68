//! `palisade-echo`: the trivial MCP upstream of the benchmark harness.
//!
//! ```text
//! palisade-echo stdio
//! palisade-echo http [--listen 127.0.0.1:0]   # endpoint /mcp
//! ```
//!
//! It serves one tool, `echo`, which returns its `text` argument as a text
//! result. In HTTP mode the first line on stdout is
//! `listening http://ADDR/mcp`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::json;

#[derive(Parser)]
#[command(name = "palisade-echo", about = "Echo MCP server for the Palisade benchmark")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve MCP over stdin/stdout.
    Stdio,
    /// Serve MCP over Streamable HTTP at /mcp.
    Http {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Default)]
struct Echo;

/// Build an rmcp model value from its wire JSON (many model types are
/// `#[non_exhaustive]`).
fn wire<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("wire JSON matches the rmcp model")
}

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        let mut config = ServerConfig::new(wire(json!({ "tools": { "listChanged": false } })));
        config.server_info = wire(json!({ "name": "palisade-echo", "version": env!("CARGO_PKG_VERSION") }));
        config
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(wire(json!({
            "tools": [{
                "name": "echo",
                "description": "Returns the text argument unchanged.",
                "inputSchema": {
                    "type": "object",
                    "properties": { "text": { "type": "string", "maxLength": 4096 } },
                    "required": ["text"],
                    "additionalProperties": false
                },
                "annotations": { "readOnlyHint": true, "openWorldHint": false }
            }]
        })))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if request.name != "echo" {
            return Err(McpError::invalid_params(
                format!("unknown tool: {}", request.name),
                None,
            ));
        }
        let text = request
            .arguments
            .as_ref()
            .and_then(|args| args.get("text"))
            .and_then(|text| text.as_str())
            .ok_or_else(|| McpError::invalid_params("`text` (a string) is required", None))?;
        Ok(CallToolResult::success(vec![ContentBlock::text(text.to_owned())]).into())
    }
}

async fn run_stdio() -> anyhow::Result<()> {
    let service = Echo
        .serve(rmcp::transport::stdio())
        .await
        .context("MCP initialization over stdio failed")?;
    service.waiting().await?;
    Ok(())
}

async fn run_http(listen: SocketAddr) -> anyhow::Result<()> {
    // Defaults: stateful sessions with SSE responses, loopback Host allow-list.
    let config = StreamableHttpServerConfig::default();
    let service = StreamableHttpService::new(|| Ok(Echo), Arc::new(LocalSessionManager::default()), config);
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    let addr = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening http://{addr}/mcp")?;
        stdout.flush()?;
    }
    // Small SSE writes must not wait for delayed ACKs (Nagle): the gateway
    // and nginx set TCP_NODELAY too.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Stdio => run_stdio().await,
        Mode::Http { listen } => run_http(listen).await,
    };
    if let Err(e) = result {
        eprintln!("palisade-echo: {e:#}");
        std::process::exit(1);
    }
}
