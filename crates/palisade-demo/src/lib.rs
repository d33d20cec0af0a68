//! The bundled demo MCP server: a small stdio server with harmless tools,
//! a resource and a prompt, so `palisade demo` works with nothing installed.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PROTOCOL_VERSIONS: [&str; 2] = ["2025-11-25", "2025-06-18"];
const README: &str =
    "This is the Palisade demo server. Every message you exchange with it passed through the Palisade gateway.";

/// Serves MCP over stdin/stdout until stdin closes.
pub async fn run_stdio() -> std::io::Result<()> {
    let stdin = BufReader::new(tokio::io::stdin());
    let mut stdout = tokio::io::stdout();
    let mut lines = stdin.lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let out = match serde_json::from_str::<Value>(&line) {
            Ok(msg) => handle(&msg, &mut stdout).await?,
            Err(_) => Some(error(Value::Null, -32700, "parse error")),
        };
        if let Some(out) = out {
            write(&mut stdout, &out).await?;
        }
    }
    Ok(())
}

async fn write(out: &mut tokio::io::Stdout, v: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    out.write_all(&bytes).await?;
    out.flush().await
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn result(id: Value, r: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": r })
}

fn text(t: impl Into<String>) -> Value {
    json!({ "content": [ { "type": "text", "text": t.into() } ] })
}

/// Answers one message; `None` for notifications.
async fn handle(msg: &Value, out: &mut tokio::io::Stdout) -> std::io::Result<Option<Value>> {
    let Some(id) = msg.get("id").cloned() else {
        return Ok(None);
    };
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        return Ok(None); // a response to us; we send no requests
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    Ok(Some(match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or("");
            let version = PROTOCOL_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&PROTOCOL_VERSIONS[0]);
            result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": { "tools": {}, "resources": {}, "prompts": {} },
                    "serverInfo": { "name": "palisade-demo", "version": env!("CARGO_PKG_VERSION") },
                    "instructions": "A demo server with harmless tools: echo, add, word_count and countdown."
                }),
            )
        }
        "ping" => result(id, json!({})),
        "tools/list" => result(id, json!({ "tools": tools() })),
        "tools/call" => call_tool(id, &params, out).await?,
        "resources/list" => result(
            id,
            json!({ "resources": [ { "uri": "demo://readme", "name": "readme", "mimeType": "text/plain" } ] }),
        ),
        "resources/read" => match params.get("uri").and_then(Value::as_str) {
            Some("demo://readme") => result(
                id,
                json!({ "contents": [ { "uri": "demo://readme", "mimeType": "text/plain", "text": README } ] }),
            ),
            _ => error(id, -32002, "resource not found"),
        },
        "prompts/list" => result(
            id,
            json!({ "prompts": [ { "name": "greet", "description": "Greets someone", "arguments": [ { "name": "name", "required": true } ] } ] }),
        ),
        "prompts/get" => {
            let who = params
                .pointer("/arguments/name")
                .and_then(Value::as_str)
                .unwrap_or("world");
            result(
                id,
                json!({ "messages": [ { "role": "user", "content": { "type": "text", "text": format!("Say hello to {who}.") } } ] }),
            )
        }
        _ => error(id, -32601, "method not found"),
    }))
}

fn tools() -> Value {
    json!([
        { "name": "echo", "description": "Returns the text it is given.",
          "inputSchema": { "type": "object", "properties": { "text": { "type": "string" } }, "required": ["text"] },
          "annotations": { "readOnlyHint": true } },
        { "name": "add", "description": "Adds two numbers.",
          "inputSchema": { "type": "object", "properties": { "a": { "type": "number" }, "b": { "type": "number" } }, "required": ["a", "b"] },
          "annotations": { "readOnlyHint": true } },
        { "name": "word_count", "description": "Counts the words in a text.",
          "inputSchema": { "type": "object", "properties": { "text": { "type": "string" } }, "required": ["text"] },
          "annotations": { "readOnlyHint": true } },
        { "name": "countdown", "description": "Counts down from n (at most 10), one step every 100 ms, reporting progress.",
          "inputSchema": { "type": "object", "properties": { "n": { "type": "integer", "minimum": 1, "maximum": 10 } }, "required": ["n"] },
          "annotations": { "readOnlyHint": true } }
    ])
}

async fn call_tool(id: Value, params: &Value, out: &mut tokio::io::Stdout) -> std::io::Result<Value> {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    let args = params.get("arguments").cloned().unwrap_or(Value::Null);
    let r = match name {
        "echo" => match args.get("text").and_then(Value::as_str) {
            Some(t) => text(t),
            None => tool_error("text is required"),
        },
        "add" => match (
            args.get("a").and_then(Value::as_f64),
            args.get("b").and_then(Value::as_f64),
        ) {
            (Some(a), Some(b)) => text(format!("{}", a + b)),
            _ => tool_error("a and b must be numbers"),
        },
        "word_count" => match args.get("text").and_then(Value::as_str) {
            Some(t) => text(t.split_whitespace().count().to_string()),
            None => tool_error("text is required"),
        },
        "countdown" => {
            let n = args.get("n").and_then(Value::as_u64).unwrap_or(3).clamp(1, 10);
            let token = params.pointer("/_meta/progressToken").cloned();
            for i in 0..n {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if let Some(t) = &token {
                    let note = json!({ "jsonrpc": "2.0", "method": "notifications/progress",
                        "params": { "progressToken": t, "progress": i + 1, "total": n } });
                    write(out, &note).await?;
                }
            }
            text("liftoff")
        }
        _ => return Ok(error(id, -32602, &format!("unknown tool {name:?}"))),
    };
    Ok(result(id, r))
}

fn tool_error(m: &str) -> Value {
    json!({ "content": [ { "type": "text", "text": m } ], "isError": true })
}
