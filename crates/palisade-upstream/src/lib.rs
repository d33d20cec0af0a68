//! Upstream MCP transports: launched stdio servers and remote Streamable HTTP servers.
//!
//! This crate moves JSON-RPC messages; it knows nothing of client sessions.
//! Ids are chosen by the caller (the gateway mints process-wide unique ids),
//! so one upstream connection can carry many client sessions without collisions.

pub mod http;
pub mod launch;
pub mod oauth;
pub mod pin;
pub mod sse;
pub mod stdio;

use std::fmt;

/// Why a message could not be delivered to or answered by an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// Not running (crashed, restarting, or never started).
    Unavailable(String),
    /// Did not answer in time.
    Timeout,
    /// Answered with something that is not valid MCP.
    Protocol(String),
    /// The upstream no longer knows the session (HTTP 404).
    SessionExpired,
    /// Too many requests in flight to this upstream.
    Overloaded,
    /// The upstream refused the request with an HTTP status.
    Status(u16),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Unavailable(why) => write!(f, "upstream unavailable: {why}"),
            UpstreamError::Timeout => f.write_str("upstream timed out"),
            UpstreamError::Protocol(why) => write!(f, "upstream protocol error: {why}"),
            UpstreamError::SessionExpired => f.write_str("upstream session expired"),
            UpstreamError::Overloaded => f.write_str("upstream overloaded"),
            UpstreamError::Status(s) => write!(f, "upstream answered HTTP {s}"),
        }
    }
}

impl std::error::Error for UpstreamError {}
