//! Reading MCP answers: Server-Sent Events framing and JSON-RPC outcomes.

use serde_json::Value;

/// How one JSON-RPC request ended, judged from the answer's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `result` without `isError: true`.
    Success,
    /// A JSON-RPC `error` object.
    RpcError(i64),
    /// A tool result with `isError: true` (for example a blocked call).
    ToolError,
    /// No response with the expected id, or a body that is not JSON-RPC.
    Malformed(String),
}

/// The `data` payloads of every event in an SSE body, in order. Each event's
/// `data:` lines are joined with `\n`; events without data (priming events,
/// comments, keep-alives) are skipped.
pub fn sse_data(body: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if let Some(d) = data.take()
                && !d.is_empty()
            {
                events.push(d);
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    // A body that ends without the blank line still dispatches its last event.
    if let Some(d) = data.take()
        && !d.is_empty()
    {
        events.push(d);
    }
    events
}

/// Whether a JSON-RPC message is the response to the request `id`.
fn is_response_to(msg: &Value, id: u64) -> bool {
    msg.get("id").and_then(Value::as_u64) == Some(id) && (msg.get("result").is_some() || msg.get("error").is_some())
}

/// The outcome of one JSON-RPC response message.
pub fn classify(msg: &Value) -> Outcome {
    if let Some(error) = msg.get("error") {
        return Outcome::RpcError(error.get("code").and_then(Value::as_i64).unwrap_or(0));
    }
    match msg.get("result") {
        Some(result) if result.get("isError").and_then(Value::as_bool) == Some(true) => Outcome::ToolError,
        Some(result) if result.is_object() => Outcome::Success,
        Some(_) => Outcome::Malformed("result is not an object".into()),
        None => Outcome::Malformed("neither result nor error".into()),
    }
}

/// Find the response to request `id` in a body of the given content type
/// (`application/json` or `text/event-stream`) and classify it.
pub fn response_outcome(content_type: &str, body: &[u8], id: u64) -> Outcome {
    let Ok(text) = std::str::from_utf8(body) else {
        return Outcome::Malformed("body is not UTF-8".into());
    };
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "text/event-stream" => {
            for data in sse_data(text) {
                if let Ok(msg) = serde_json::from_str::<Value>(&data)
                    && is_response_to(&msg, id)
                {
                    return classify(&msg);
                }
            }
            Outcome::Malformed(format!("no response with id {id} in the event stream"))
        }
        "application/json" => match serde_json::from_str::<Value>(text) {
            Ok(msg) if is_response_to(&msg, id) => classify(&msg),
            Ok(_) => Outcome::Malformed(format!("JSON body is not the response to id {id}")),
            Err(e) => Outcome::Malformed(format!("invalid JSON: {e}")),
        },
        other => Outcome::Malformed(format!("unexpected content type `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_data_skips_priming_and_joins_lines() {
        let body = "id: 0\nretry: 3000\ndata:\n\n: keepalive\n\nid: 1\ndata: {\"a\":\ndata: 1}\n\n";
        assert_eq!(sse_data(body), vec!["{\"a\":\n1}".to_string()]);
    }

    #[test]
    fn sse_data_handles_crlf_and_missing_final_blank_line() {
        let body = "event: message\r\ndata: one\r\n\r\ndata:two";
        assert_eq!(sse_data(body), vec!["one".to_string(), "two".to_string()]);
    }

    #[test]
    fn sse_response_is_found_by_id() {
        let body = "id: s.0\nretry: 1000\ndata: \n\n\
                    data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n\
                    data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}\n\n";
        assert_eq!(
            response_outcome("text/event-stream", body.as_bytes(), 7),
            Outcome::Success
        );
        assert!(matches!(
            response_outcome("text/event-stream", body.as_bytes(), 8),
            Outcome::Malformed(_)
        ));
    }

    #[test]
    fn json_rpc_errors_and_tool_errors_are_not_successes() {
        let err = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"no"}}"#;
        assert_eq!(response_outcome("application/json", err, 3), Outcome::RpcError(-32602));
        let tool = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"isError":true}}"#;
        assert_eq!(
            response_outcome("application/json; charset=utf-8", tool, 3),
            Outcome::ToolError
        );
        let ok = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"hi"}]}}"#;
        assert_eq!(response_outcome("application/json", ok, 3), Outcome::Success);
        assert!(matches!(
            response_outcome("application/json", ok, 4),
            Outcome::Malformed(_)
        ));
        assert!(matches!(response_outcome("text/plain", ok, 3), Outcome::Malformed(_)));
        assert!(matches!(
            response_outcome("application/json", b"{", 3),
            Outcome::Malformed(_)
        ));
    }
}
