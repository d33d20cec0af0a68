//! What every outbound HTTP call of the gateway needs (upstreams, token endpoints,
//! identity providers, Vault): a response body read up to a limit, and error text
//! that never carries the URL (whose query could hold a secret) or headers.

use std::fmt;

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit (announced or actual); carries the limit.
    TooLarge(usize),
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge(limit) => write!(f, "response larger than {limit} bytes"),
            BodyError::Transport(e) => f.write_str(&describe(e)),
        }
    }
}

impl std::error::Error for BodyError {}

/// Reads the whole body, refusing more than `limit` bytes before buffering them.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::with_capacity(announced.map_or(0, |n| n as usize));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error as text: its kind and innermost cause, without URL or headers.
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let mut source = String::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = cur {
        source = s.to_string();
        cur = s.source();
    }
    if source.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {source}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_never_name_the_url() {
        let client = reqwest::Client::new();
        let e = client
            .get("http://127.0.0.1:1/path?token=secret-in-query")
            .send()
            .await
            .unwrap_err();
        let text = describe(&e);
        assert!(text.starts_with("connection failed"), "{text}");
        assert!(
            !text.contains("secret-in-query") && !text.contains("127.0.0.1:1/path"),
            "{text}"
        );
    }
}
