//! From a parsed file to the servers it configures, whatever the client's shape.

use serde::Serialize;

use crate::discover::Layout;
use crate::tree::{Node, Value, pointer_push};

/// A string from the file and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub value: String,
    pub pointer: String,
    pub line: u32,
}

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Stdio,
    Http,
    /// Neither a command nor a URL.
    Unknown,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
            Transport::Unknown => "unknown",
        }
    }
}

/// One configured server, before any check.
#[derive(Debug, Clone)]
pub struct ServerEntry {
    pub name: String,
    /// JSON pointer of the server's object in the file.
    pub pointer: String,
    pub line: u32,
    pub transport: Transport,
    pub command: Option<Field>,
    pub args: Vec<Field>,
    pub env: Vec<(String, Field)>,
    pub url: Option<Field>,
    pub headers: Vec<(String, Field)>,
    /// The declared `type`/`transport`, if any.
    pub declared_type: Option<String>,
    pub disabled: bool,
    /// Gemini `trust: true`, Cline `autoApprove`/`alwaysAllow`: tool calls run unconfirmed.
    pub auto_approve: Option<Field>,
    /// Codex `bearer_token` written inline.
    pub inline_token: Option<Field>,
}

/// The servers of a file, in file order.
pub fn servers(root: &Node, layout: Layout) -> Vec<ServerEntry> {
    let mut out = Vec::new();
    match layout {
        Layout::McpServers => map_at(root, "", "mcpServers", &mut out),
        Layout::ClaudeCodeUser => {
            map_at(root, "", "mcpServers", &mut out);
            if let Some(projects) = root.get("projects") {
                for (dir, p) in projects.entries() {
                    let base = pointer_push("/projects", dir);
                    map_at(p, &base, "mcpServers", &mut out);
                }
            }
        }
        Layout::VsCodeSettings => {
            if let Some(mcp) = root.get("mcp") {
                map_at(mcp, "/mcp", "servers", &mut out);
            }
            map_at(root, "", "mcp.servers", &mut out);
        }
        Layout::VsCodeMcp => map_at(root, "", "servers", &mut out),
        Layout::Zed => map_at(root, "", "context_servers", &mut out),
        Layout::Codex => map_at(root, "", "mcp_servers", &mut out),
        Layout::ContinueYaml => list_at(root, "", "mcpServers", &mut out),
        Layout::ContinueJson => {
            if let Some(exp) = root.get("experimental") {
                list_at(exp, "/experimental", "modelContextProtocolServers", &mut out);
            }
        }
        Layout::Auto => {
            for key in ["mcpServers", "servers", "context_servers", "mcp_servers"] {
                match root.get(key).map(|n| &n.value) {
                    Some(Value::Object(_)) => map_at(root, "", key, &mut out),
                    Some(Value::Array(_)) => list_at(root, "", key, &mut out),
                    _ => {}
                }
            }
            if let Some(mcp) = root.get("mcp") {
                map_at(mcp, "/mcp", "servers", &mut out);
            }
            if let Some(exp) = root.get("experimental") {
                list_at(exp, "/experimental", "modelContextProtocolServers", &mut out);
            }
        }
    }
    out
}

/// Servers in an object keyed by name.
fn map_at(parent: &Node, base: &str, key: &str, out: &mut Vec<ServerEntry>) {
    let Some(map) = parent.get(key) else { return };
    let base = pointer_push(base, key);
    for (name, node) in map.entries() {
        if node.as_object().is_none() {
            continue;
        }
        out.push(server(name.to_string(), node, pointer_push(&base, name)));
    }
}

/// Servers in a list, each with a `name` (Continue).
fn list_at(parent: &Node, base: &str, key: &str, out: &mut Vec<ServerEntry>) {
    let Some(list) = parent.get(key).and_then(Node::as_array) else {
        return;
    };
    let base = pointer_push(base, key);
    for (i, node) in list.iter().enumerate() {
        if node.as_object().is_none() {
            continue;
        }
        let name = node
            .get("name")
            .and_then(Node::scalar_text)
            .unwrap_or_else(|| format!("#{i}"));
        out.push(server(name, node, pointer_push(&base, &i.to_string())));
    }
}

fn field(node: &Node, pointer: String) -> Option<Field> {
    node.scalar_text().map(|value| Field {
        value,
        pointer,
        line: node.line,
    })
}

fn string_list(node: Option<&Node>, pointer: &str) -> Vec<Field> {
    let Some(items) = node.and_then(Node::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, n)| field(n, pointer_push(pointer, &i.to_string())))
        .collect()
}

fn string_map(node: Option<&Node>, pointer: &str) -> Vec<(String, Field)> {
    let Some(node) = node else { return Vec::new() };
    node.entries()
        .into_iter()
        .filter_map(|(k, v)| field(v, pointer_push(pointer, k)).map(|f| (k.to_string(), f)))
        .collect()
}

fn server(name: String, node: &Node, pointer: String) -> ServerEntry {
    // Continue's config.json nests the launch details under `transport`.
    let (body, body_ptr) = match node.get("transport") {
        Some(t) if t.as_object().is_some() => (t, pointer_push(&pointer, "transport")),
        _ => (node, pointer.clone()),
    };
    let mut command = None;
    let mut args = Vec::new();
    let mut env = Vec::new();
    match body.get("command") {
        // Zed: "command": {"path", "args", "env"}
        Some(c) if c.as_object().is_some() => {
            let cp = pointer_push(&body_ptr, "command");
            command = c.get("path").and_then(|p| field(p, pointer_push(&cp, "path")));
            args = string_list(c.get("args"), &pointer_push(&cp, "args"));
            env = string_map(c.get("env"), &pointer_push(&cp, "env"));
        }
        Some(c) => command = field(c, pointer_push(&body_ptr, "command")),
        None => {}
    }
    if args.is_empty() {
        args = string_list(body.get("args"), &pointer_push(&body_ptr, "args"));
    }
    env.extend(string_map(body.get("env"), &pointer_push(&body_ptr, "env")));
    let url = ["url", "serverUrl", "httpUrl"]
        .iter()
        .find_map(|k| body.get(k).and_then(|n| field(n, pointer_push(&body_ptr, k))));
    let mut headers = string_map(body.get("headers"), &pointer_push(&body_ptr, "headers"));
    headers.extend(string_map(
        body.get("http_headers"),
        &pointer_push(&body_ptr, "http_headers"),
    ));
    if let Some(ro) = body.get("requestOptions") {
        headers.extend(string_map(
            ro.get("headers"),
            &pointer_push(&pointer_push(&body_ptr, "requestOptions"), "headers"),
        ));
    }
    let declared_type = body
        .get("type")
        .or_else(|| node.get("type"))
        .and_then(Node::as_str)
        .map(str::to_string);
    let transport = if command.is_some() {
        Transport::Stdio
    } else if url.is_some() {
        Transport::Http
    } else {
        Transport::Unknown
    };
    let disabled = node.get("disabled").and_then(Node::as_bool) == Some(true)
        || node.get("enabled").and_then(Node::as_bool) == Some(false);
    let auto_approve = auto_approve(node, &pointer);
    let inline_token = node
        .get("bearer_token")
        .and_then(|n| field(n, pointer_push(&pointer, "bearer_token")));
    ServerEntry {
        name,
        line: node.line,
        pointer,
        transport,
        command,
        args,
        env,
        url,
        headers,
        declared_type,
        disabled,
        auto_approve,
        inline_token,
    }
}

fn auto_approve(node: &Node, pointer: &str) -> Option<Field> {
    if let Some(t) = node.get("trust")
        && t.as_bool() == Some(true)
    {
        return Some(Field {
            value: "trust: true".into(),
            pointer: pointer_push(pointer, "trust"),
            line: t.line,
        });
    }
    for key in ["autoApprove", "alwaysAllow"] {
        if let Some(list) = node.get(key)
            && let Some(items) = list.as_array()
            && !items.is_empty()
        {
            let names: Vec<String> = items.iter().filter_map(Node::scalar_text).take(5).collect();
            return Some(Field {
                value: format!("{key}: {}", names.join(", ")),
                pointer: pointer_push(pointer, key),
                line: list.line,
            });
        }
    }
    None
}
