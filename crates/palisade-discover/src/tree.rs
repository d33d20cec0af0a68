//! A parsed configuration document: JSON-like values that remember the line
//! they started on, whatever the source syntax (JSON, JSONC, YAML, TOML).

/// One value and the 1-based line it starts on (0: unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Numbers keep their source text.
    Number(String),
    String(String),
    Array(Vec<Node>),
    /// Entries in source order; duplicate keys are kept (lookups take the last).
    Object(Vec<(String, Node)>),
}

impl Node {
    pub fn new(value: Value, line: u32) -> Node {
        Node { value, line }
    }

    /// The member `key` of an object (the last one when the key repeats).
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Object(entries) => Some(entries),
            _ => None,
        }
    }

    /// A scalar as text (strings as is, numbers and booleans in their source form).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.clone()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The entries of an object with duplicate keys collapsed (the last wins,
    /// at the position of the first), as the clients themselves read them.
    pub fn entries(&self) -> Vec<(&str, &Node)> {
        let Some(entries) = self.as_object() else {
            return Vec::new();
        };
        let mut out: Vec<(&str, &Node)> = Vec::new();
        for (k, v) in entries {
            if let Some(slot) = out.iter_mut().find(|(ok, _)| *ok == k.as_str()) {
                slot.1 = v;
            } else {
                out.push((k.as_str(), v));
            }
        }
        out
    }
}

/// Appends one reference token to a JSON pointer (RFC 6901 escaping).
pub fn pointer_push(base: &str, token: &str) -> String {
    let mut out = String::with_capacity(base.len() + token.len() + 1);
    out.push_str(base);
    out.push('/');
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_escapes() {
        assert_eq!(pointer_push("", "a/b~c"), "/a~1b~0c");
        assert_eq!(pointer_push("/x", "0"), "/x/0");
    }

    #[test]
    fn last_duplicate_wins() {
        let n = Node::new(
            Value::Object(vec![
                ("a".into(), Node::new(Value::Number("1".into()), 1)),
                ("b".into(), Node::new(Value::Number("2".into()), 2)),
                ("a".into(), Node::new(Value::Number("3".into()), 3)),
            ]),
            1,
        );
        assert_eq!(n.get("a").unwrap().line, 3);
        let e = n.entries();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "a");
        assert_eq!(e[0].1.line, 3);
    }
}
