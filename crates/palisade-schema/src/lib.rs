//! Tool schemas (V1, V2): a tool's `inputSchema` and `outputSchema`, compiled
//! once when the tool is pinned and checked on every `tools/call`.
//!
//! Schemas come from servers, so they are hostile input too. Before anything
//! is compiled, a schema is bounded (size, depth) and every `$ref` must point
//! inside the document: nothing is ever fetched (the `jsonschema` crate is
//! built without its file and HTTP resolvers, and remote references are
//! refused here first so the error is clear). Patterns use the `regex` crate
//! (linear time) rather than a backtracking engine.
//!
//! Error messages name the location and the rule broken, never the value:
//! arguments may carry secrets, and the message goes back to the client.

use jsonschema::{Draft, PatternOptions, Validator};
use serde_json::Value;

/// Largest schema accepted, serialized (bytes).
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;
/// Deepest nesting accepted in a schema.
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// Validation errors reported per call (the rest are counted).
const MAX_REPORTED: usize = 5;
/// Longest message kept for one error.
const MAX_MESSAGE: usize = 200;

/// Why a schema was refused at pin time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{which} is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted")]
    TooLarge { which: &'static str, size: usize },
    #[error("{which} nests deeper than {MAX_SCHEMA_DEPTH} levels")]
    TooDeep { which: &'static str },
    #[error("{which} is not a JSON object")]
    NotAnObject { which: &'static str },
    #[error("{which} declares an unsupported $schema {uri:?}")]
    UnsupportedDraft { which: &'static str, uri: String },
    #[error("{which} has a reference outside the document ({reference:?}); remote references are never fetched")]
    RemoteReference { which: &'static str, reference: String },
    #[error("{which} is not a valid JSON Schema: {message}")]
    Invalid { which: &'static str, message: String },
}

/// The compiled schemas of one tool version.
#[derive(Debug)]
pub struct ToolSchemas {
    input: Option<Validator>,
    output: Option<Validator>,
}

/// A call or result that does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl ToolSchemas {
    /// Compiles `inputSchema` and `outputSchema` of a tool definition.
    /// A tool without an `inputSchema` accepts only an object (MCP requires one).
    pub fn compile(tool: &Value) -> Result<ToolSchemas, SchemaError> {
        let input = match tool.get("inputSchema") {
            None | Some(Value::Null) => None,
            Some(s) => Some(compile("inputSchema", s)?),
        };
        let output = match tool.get("outputSchema") {
            None | Some(Value::Null) => None,
            Some(s) => Some(compile("outputSchema", s)?),
        };
        Ok(ToolSchemas { input, output })
    }

    /// Whether an `outputSchema` was declared (then results must carry valid `structuredContent`).
    pub fn has_output(&self) -> bool {
        self.output.is_some()
    }

    /// Checks `tools/call` arguments (`None`: the call had none, checked as `{}`).
    pub fn check_arguments(&self, arguments: Option<&Value>) -> Result<(), Invalid> {
        let empty = Value::Object(serde_json::Map::new());
        let args = arguments.unwrap_or(&empty);
        if !args.is_object() {
            return Err(Invalid("arguments must be a JSON object".into()));
        }
        match &self.input {
            Some(v) => check(v, args, "arguments"),
            None => Ok(()),
        }
    }

    /// Checks a tool result's `structuredContent` against the `outputSchema`.
    /// A result flagged `isError` is not checked (errors need not match).
    pub fn check_result(&self, result: &Value) -> Result<(), Invalid> {
        let Some(v) = &self.output else { return Ok(()) };
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        match result.get("structuredContent") {
            None | Some(Value::Null) => Err(Invalid(
                "the tool declares an outputSchema but its result has no structuredContent".into(),
            )),
            Some(sc) => check(v, sc, "structuredContent"),
        }
    }
}

fn check(v: &Validator, instance: &Value, what: &str) -> Result<(), Invalid> {
    let mut messages = Vec::new();
    let mut count = 0usize;
    for e in v.iter_errors(instance) {
        count += 1;
        if messages.len() < MAX_REPORTED {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() { "/".to_owned() } else { path };
            let mut m = format!("{what} at {path}: {}", e.masked());
            truncate(&mut m, MAX_MESSAGE);
            messages.push(m);
        }
    }
    if count == 0 {
        return Ok(());
    }
    let mut text = messages.join("; ");
    if count > messages.len() {
        text.push_str(&format!("; and {} more", count - messages.len()));
    }
    Err(Invalid(text))
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

fn compile(which: &'static str, schema: &Value) -> Result<Validator, SchemaError> {
    if !schema.is_object() {
        return Err(SchemaError::NotAnObject { which });
    }
    let size = serde_json::to_vec(schema).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_SCHEMA_BYTES {
        return Err(SchemaError::TooLarge { which, size });
    }
    check_tree(which, schema, 0)?;
    let draft = draft_of(which, schema)?;
    jsonschema::options()
        .with_draft(draft)
        .with_pattern_options(PatternOptions::regex())
        .build(schema)
        .map_err(|e| {
            let mut message = e.masked().to_string();
            truncate(&mut message, MAX_MESSAGE);
            SchemaError::Invalid { which, message }
        })
}

/// Bounds depth and refuses references that leave the document.
fn check_tree(which: &'static str, v: &Value, depth: usize) -> Result<(), SchemaError> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(SchemaError::TooDeep { which });
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if matches!(k.as_str(), "$ref" | "$dynamicRef" | "$recursiveRef")
                    && let Some(r) = child.as_str()
                    && !r.starts_with('#')
                {
                    return Err(SchemaError::RemoteReference {
                        which,
                        reference: r.chars().take(120).collect(),
                    });
                }
                check_tree(which, child, depth + 1)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|c| check_tree(which, c, depth + 1)),
        _ => Ok(()),
    }
}

/// The draft named by `$schema`; 2020-12 when absent (the MCP default).
fn draft_of(which: &'static str, schema: &Value) -> Result<Draft, SchemaError> {
    let Some(uri) = schema.get("$schema") else {
        return Ok(Draft::Draft202012);
    };
    let uri = uri.as_str().unwrap_or("");
    let bare = uri.trim_end_matches('#').trim_end_matches('/');
    let bare = bare.strip_prefix("https://").or_else(|| bare.strip_prefix("http://"));
    match bare {
        Some("json-schema.org/draft/2020-12/schema") => Ok(Draft::Draft202012),
        Some("json-schema.org/draft/2019-09/schema") => Ok(Draft::Draft201909),
        Some("json-schema.org/draft-07/schema") => Ok(Draft::Draft7),
        Some("json-schema.org/draft-06/schema") => Ok(Draft::Draft6),
        Some("json-schema.org/draft-04/schema") => Ok(Draft::Draft4),
        _ => Err(SchemaError::UnsupportedDraft {
            which,
            uri: uri.chars().take(120).collect(),
        }),
    }
}

#[cfg(test)]
mod tests;
