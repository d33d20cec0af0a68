//! A minimal MCP Streamable HTTP client: one keep-alive HTTP/1.1 connection,
//! one MCP session, `tools/call` of `echo` in a loop.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::parse::{Outcome, response_outcome};

/// The protocol revision the load generator negotiates.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// Where one target is reached.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub path: String,
    pub authorization: Option<HeaderValue>,
}

impl Endpoint {
    /// Parse `http://HOST:PORT/PATH` (HOST an IP address; no TLS).
    pub fn parse(url: &str, bearer: Option<&str>) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("invalid URL `{url}`"))?;
        if uri.scheme_str() != Some("http") {
            bail!("URL `{url}`: only plain http:// is supported");
        }
        let authority = uri.authority().ok_or_else(|| anyhow!("URL `{url}` has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host
            .parse()
            .with_context(|| format!("URL `{url}`: the host must be an IP address"))?;
        let port = authority.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let authorization = match bearer {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .context("the bearer token is not a valid header value")?,
            ),
            None => None,
        };
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            host: HeaderValue::from_str(authority.as_str())?,
            path,
            authorization,
        })
    }
}

/// Why a call did not count as a success.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallError {
    /// A non-2xx HTTP status.
    Status(u16),
    /// A JSON-RPC error response.
    Rpc(i64),
    /// A tool result with `isError: true`.
    Tool,
    /// An answer that could not be read as the expected response.
    Malformed,
    /// Connection failure.
    Transport,
    /// No answer within the request timeout.
    Timeout,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Status(code) => write!(f, "http_{code}"),
            CallError::Rpc(code) => write!(f, "rpc_{code}"),
            CallError::Tool => f.write_str("tool_error"),
            CallError::Malformed => f.write_str("malformed"),
            CallError::Transport => f.write_str("transport"),
            CallError::Timeout => f.write_str("timeout"),
        }
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    session: Option<HeaderValue>,
    body: Bytes,
}

/// One virtual client.
pub struct McpClient {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
    session: Option<HeaderValue>,
    next_id: u64,
    timeout: Duration,
    /// Connections opened again after the server closed an idle one.
    pub reconnects: u64,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped or the peer closes it.
        let _ = connection.await;
    });
    Ok(sender)
}

impl McpClient {
    /// Connect without a session (call [`McpClient::initialize`] next).
    pub async fn connect(endpoint: Endpoint, timeout: Duration) -> anyhow::Result<Self> {
        let sender = connect(endpoint.addr).await?;
        Ok(Self {
            endpoint,
            sender: Some(sender),
            session: None,
            next_id: 1,
            timeout,
            reconnects: 0,
        })
    }

    fn request(&self, method: Method, body: Bytes) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(self.endpoint.path.as_str())
            .header(HOST, self.endpoint.host.clone())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.endpoint.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if let Some(session) = &self.session {
            builder = builder
                .header(SESSION_HEADER, session.clone())
                .header(VERSION_HEADER, PROTOCOL_VERSION);
        }
        builder.body(Full::new(body)).expect("request parts are valid")
    }

    /// Send one request on the kept-alive connection; a connection the
    /// server closed while idle is opened again once.
    async fn exchange(&mut self, method: Method, body: Bytes) -> Result<Answer, CallError> {
        let mut retried = false;
        loop {
            let stale = match &mut self.sender {
                Some(sender) => sender.ready().await.is_err(),
                None => true,
            };
            if stale {
                if retried {
                    return Err(CallError::Transport);
                }
                retried = true;
                self.reconnect().await?;
                continue;
            }
            let request = self.request(method.clone(), body.clone());
            let sender = self.sender.as_mut().expect("checked above");
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                // The server may close a kept-alive connection just as the
                // request goes out; nothing was processed, so retry once.
                Err(e) if !retried && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                    retried = true;
                    self.reconnect().await?;
                    continue;
                }
                Err(_) => {
                    self.sender = None;
                    return Err(CallError::Transport);
                }
            };
            let status = response.status();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let session = response.headers().get(SESSION_HEADER).cloned();
            let body = match response.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    self.sender = None;
                    return Err(CallError::Transport);
                }
            };
            return Ok(Answer {
                status,
                content_type,
                session,
                body,
            });
        }
    }

    async fn reconnect(&mut self) -> Result<(), CallError> {
        self.sender = None;
        match connect(self.endpoint.addr).await {
            Ok(sender) => {
                self.sender = Some(sender);
                self.reconnects += 1;
                Ok(())
            }
            Err(_) => Err(CallError::Transport),
        }
    }

    async fn exchange_timed(&mut self, method: Method, body: Bytes) -> Result<Answer, CallError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, body)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection is in an unknown state: drop it.
                self.sender = None;
                Err(CallError::Timeout)
            }
        }
    }

    /// `initialize` and `notifications/initialized`; keeps the session id.
    pub async fn initialize(&mut self) -> anyhow::Result<()> {
        self.session = None;
        let id = 0;
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": { "name": "palisade-loadgen", "version": env!("CARGO_PKG_VERSION") }
            }
        });
        let answer = self
            .exchange_timed(Method::POST, Bytes::from(body.to_string()))
            .await
            .map_err(|e| anyhow!("initialize failed: {e}"))?;
        if !answer.status.is_success() {
            bail!(
                "initialize answered HTTP {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
            );
        }
        match response_outcome(&answer.content_type, &answer.body, id) {
            Outcome::Success => {}
            other => bail!("initialize failed: {other:?}"),
        }
        self.session = Some(
            answer
                .session
                .ok_or_else(|| anyhow!("initialize answer has no Mcp-Session-Id"))?,
        );
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let answer = self
            .exchange_timed(Method::POST, Bytes::from_static(note))
            .await
            .map_err(|e| anyhow!("notifications/initialized failed: {e}"))?;
        if !answer.status.is_success() {
            bail!("notifications/initialized answered HTTP {}", answer.status);
        }
        Ok(())
    }

    /// One `tools/call` of `echo`; `Ok` only for a non-error tool result.
    pub async fn call_echo(&mut self) -> Result<(), CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello from palisade-loadgen"}}}}}}"#
        );
        let answer = self.exchange_timed(Method::POST, Bytes::from(body)).await?;
        if !answer.status.is_success() {
            return Err(CallError::Status(answer.status.as_u16()));
        }
        match response_outcome(&answer.content_type, &answer.body, id) {
            Outcome::Success => Ok(()),
            Outcome::RpcError(code) => Err(CallError::Rpc(code)),
            Outcome::ToolError => Err(CallError::Tool),
            Outcome::Malformed(_) => Err(CallError::Malformed),
        }
    }

    /// End the session (`DELETE`); errors are ignored.
    pub async fn close(mut self) {
        if self.session.is_some() {
            let _ = self.exchange_timed(Method::DELETE, Bytes::new()).await;
        }
    }
}

/// `GET url` on a fresh connection; the status, or an error if nothing answered.
pub async fn probe(endpoint: &Endpoint) -> anyhow::Result<StatusCode> {
    let mut sender = connect(endpoint.addr).await?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(endpoint.path.as_str())
        .header(HOST, endpoint.host.clone())
        .body(Full::new(Bytes::new()))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed_and_checked() {
        let e = Endpoint::parse("http://127.0.0.1:8787/mcp/echo", Some("abc\n")).unwrap();
        assert_eq!(e.addr, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(e.path, "/mcp/echo");
        assert_eq!(e.host, "127.0.0.1:8787");
        assert_eq!(e.authorization.unwrap(), "Bearer abc");
        assert!(Endpoint::parse("https://127.0.0.1/mcp", None).is_err());
        assert!(Endpoint::parse("http://localhost:80/mcp", None).is_err());
        assert!(Endpoint::parse("not a url", None).is_err());
    }

    #[test]
    fn errors_have_stable_names() {
        assert_eq!(CallError::Status(503).to_string(), "http_503");
        assert_eq!(CallError::Rpc(-32602).to_string(), "rpc_-32602");
    }
}
