//! Arguments and claims as Cedar entity tags.
//!
//! Cedar records need declared attributes, so arbitrary tool arguments are
//! exposed as the tags of one `Palisade::Args` entity (and token claims as the
//! tags of the `Palisade::User` entity). Everything here is bounded: the number
//! of tags, the length of keys and values and the nesting depth. A value that
//! does not fit is never shortened (a shortened value could pass a `like`
//! pattern that the full value would fail); it is left out and the caller
//! learns that something was left out (`context.args_truncated`).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

/// At most this many argument tags (and claim tags) per request.
pub const MAX_ARG_TAGS: usize = 256;
/// A tag value longer than this (in bytes, after conversion to text) is left out.
pub const MAX_ARG_VALUE_BYTES: usize = 4096;
/// Nested object keys become tags up to this many levels (`a.b.c.d`).
pub const MAX_ARG_DEPTH: usize = 4;
/// A tag name longer than this (in bytes) is left out.
pub const MAX_ARG_KEY_BYTES: usize = 256;
/// Arrays and objects deeper than this are not rendered as JSON text.
const MAX_JSON_DEPTH: usize = 64;

/// Tags derived from a JSON object, and whether something was left out.
#[derive(Debug, Default)]
pub(crate) struct Tags {
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) truncated: bool,
}

struct Builder {
    tags: Vec<(String, String)>,
    index: HashMap<String, usize>,
    /// Names seen twice (`{"a.b": 1, "a": {"b": 2}}`): ambiguous, never exposed.
    ambiguous: HashSet<String>,
    truncated: bool,
    full: bool,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            tags: Vec::new(),
            index: HashMap::new(),
            ambiguous: HashSet::new(),
            truncated: false,
            full: false,
        }
    }

    fn insert(&mut self, key: String, value: String) {
        if self.ambiguous.contains(&key) {
            return;
        }
        if let Some(i) = self.index.remove(&key) {
            // The same name from two places: expose neither.
            self.tags.swap_remove(i);
            if let Some((moved, _)) = self.tags.get(i) {
                self.index.insert(moved.clone(), i);
            }
            self.ambiguous.insert(key);
            self.truncated = true;
            return;
        }
        if self.tags.len() >= MAX_ARG_TAGS {
            self.truncated = true;
            self.full = true;
            return;
        }
        self.index.insert(key.clone(), self.tags.len());
        self.tags.push((key, value));
    }

    fn finish(self) -> Tags {
        Tags {
            tags: self.tags,
            truncated: self.truncated,
        }
    }
}

/// The tags of the `Args` entity for the arguments of a request.
pub(crate) fn argument_tags(arguments: Option<&Value>) -> Tags {
    let mut b = Builder::new();
    match arguments {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => walk(map, "", 1, &mut b),
        // Arguments are an object in MCP; anything else cannot be exposed.
        Some(_) => b.truncated = true,
    }
    b.finish()
}

fn walk(map: &Map<String, Value>, prefix: &str, depth: usize, b: &mut Builder) {
    for (k, v) in map {
        if b.full {
            return;
        }
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            let mut key = String::with_capacity(prefix.len() + 1 + k.len());
            key.push_str(prefix);
            key.push('.');
            key.push_str(k);
            key
        };
        if key.len() > MAX_ARG_KEY_BYTES {
            b.truncated = true;
            continue;
        }
        match value_text(v) {
            Some(text) => b.insert(key.clone(), text),
            None => b.truncated = true,
        }
        if let Value::Object(inner) = v {
            if depth < MAX_ARG_DEPTH {
                walk(inner, &key, depth + 1, b);
            } else if !inner.is_empty() {
                b.truncated = true;
            }
        }
    }
}

/// The tags of the `User` entity for the token's claims: strings, numbers and
/// booleans; other claims are ignored. Returns whether a scalar claim was left out.
pub(crate) fn claim_tags(claims: Option<&Map<String, Value>>) -> Tags {
    let mut b = Builder::new();
    if let Some(claims) = claims {
        for (k, v) in claims {
            if b.full {
                break;
            }
            if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                continue;
            }
            if k.len() > MAX_ARG_KEY_BYTES {
                b.truncated = true;
                continue;
            }
            match value_text(v) {
                Some(text) => b.insert(k.clone(), text),
                None => b.truncated = true,
            }
        }
    }
    b.finish()
}

/// The text of one value, or `None` when it is too long (or too deep) to expose.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => (s.len() <= MAX_ARG_VALUE_BYTES).then(|| s.clone()),
        Value::Bool(b) => Some(if *b { "true" } else { "false" }.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some("null".to_string()),
        Value::Array(_) | Value::Object(_) => {
            let mut out = String::new();
            compact(v, 0, &mut out).then_some(out)
        }
    }
}

/// Compact JSON text of `v`, giving up (false) past the byte or depth budget.
fn compact(v: &Value, depth: usize, out: &mut String) -> bool {
    if depth > MAX_JSON_DEPTH {
        return false;
    }
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            if !push_json_string(s, out) {
                return false;
            }
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if out.len() > MAX_ARG_VALUE_BYTES || !compact(item, depth + 1, out) {
                    return false;
                }
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if out.len() > MAX_ARG_VALUE_BYTES || !push_json_string(k, out) {
                    return false;
                }
                out.push(':');
                if !compact(item, depth + 1, out) {
                    return false;
                }
            }
            out.push('}');
        }
    }
    out.len() <= MAX_ARG_VALUE_BYTES
}

fn push_json_string(s: &str, out: &mut String) -> bool {
    // The escaped text is at least as long as the raw one: check before copying.
    if out.len() + s.len() + 2 > MAX_ARG_VALUE_BYTES {
        return false;
    }
    match serde_json::to_string(s) {
        Ok(quoted) => {
            out.push_str(&quoted);
            out.len() <= MAX_ARG_VALUE_BYTES
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get<'a>(t: &'a Tags, k: &str) -> Option<&'a str> {
        t.tags.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn scalars_nested_keys_and_compact_json() {
        let a = json!({"path": "/srv/x", "n": 5, "f": 1.5, "b": true, "z": null,
                       "list": [1, "a"], "o": {"p": {"q": "deep"}}});
        let t = argument_tags(Some(&a));
        assert!(!t.truncated);
        assert_eq!(get(&t, "path"), Some("/srv/x"));
        assert_eq!(get(&t, "n"), Some("5"));
        assert_eq!(get(&t, "f"), Some("1.5"));
        assert_eq!(get(&t, "b"), Some("true"));
        assert_eq!(get(&t, "z"), Some("null"));
        assert_eq!(get(&t, "list"), Some(r#"[1,"a"]"#));
        assert_eq!(get(&t, "o"), Some(r#"{"p":{"q":"deep"}}"#));
        assert_eq!(get(&t, "o.p"), Some(r#"{"q":"deep"}"#));
        assert_eq!(get(&t, "o.p.q"), Some("deep"));
    }

    #[test]
    fn no_arguments_and_non_objects() {
        assert!(!argument_tags(None).truncated);
        assert!(!argument_tags(Some(&Value::Null)).truncated);
        let t = argument_tags(Some(&json!(["x"])));
        assert!(t.truncated && t.tags.is_empty());
    }

    #[test]
    fn ambiguous_names_are_left_out() {
        let t = argument_tags(Some(&json!({"a.b": "safe", "a": {"b": "evil"}, "c": 1})));
        assert!(t.truncated);
        assert_eq!(get(&t, "a.b"), None);
        assert_eq!(get(&t, "c"), Some("1"));
        assert_eq!(get(&t, "a"), Some(r#"{"b":"evil"}"#));
    }

    #[test]
    fn long_values_are_left_out_not_shortened() {
        let long = "x".repeat(MAX_ARG_VALUE_BYTES + 1);
        let t = argument_tags(Some(&json!({"a": long, "b": [long], "ok": "y"})));
        assert!(t.truncated);
        assert_eq!(get(&t, "a"), None);
        assert_eq!(get(&t, "b"), None);
        assert_eq!(get(&t, "ok"), Some("y"));
        let exact = "x".repeat(MAX_ARG_VALUE_BYTES);
        let t = argument_tags(Some(&json!({ "a": exact })));
        assert!(!t.truncated);
        assert_eq!(get(&t, "a").map(str::len), Some(MAX_ARG_VALUE_BYTES));
    }

    #[test]
    fn too_deep_keys_set_the_flag() {
        let t = argument_tags(Some(&json!({"a": {"b": {"c": {"d": {"e": 1}}}}})));
        assert!(t.truncated);
        assert_eq!(get(&t, "a.b.c.d"), Some(r#"{"e":1}"#));
        assert_eq!(get(&t, "a.b.c.d.e"), None);
    }

    #[test]
    fn claims_only_scalars() {
        let c = json!({"dept": "sales", "level": 3, "admin": false, "groups": ["a"], "x": {"y": 1}});
        let t = claim_tags(c.as_object());
        assert!(!t.truncated);
        assert_eq!(t.tags.len(), 3);
        assert_eq!(get(&t, "level"), Some("3"));
        assert_eq!(get(&t, "admin"), Some("false"));
    }
}
