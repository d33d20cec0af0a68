//! Human-readable diffs between an approved definition and the one now served.
//!
//! Stored definitions are compact canonical JSON; they are re-indented as text
//! (never parsed back), so any depth or size that was stored can be shown.

use std::time::Duration;

use serde_json::Value;
use similar::TextDiff;

use crate::canonical::canonical_string;

/// Longest time spent finding a minimal diff before settling for a coarser one.
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// Pretty-printed JSON with sorted keys (two-space indent, trailing newline).
pub fn pretty_canonical(v: &Value) -> String {
    pretty(&canonical_string(v))
}

/// Re-indents compact JSON text like serde_json's pretty printer, without recursion.
pub(crate) fn pretty(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() + compact.len() / 4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = compact.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// Unified diff with 3 lines of context, or `None` when the texts are equal.
pub(crate) fn unified(old: &str, new: &str, old_header: &str, new_header: &str) -> Option<String> {
    if old == new {
        return None;
    }
    let diff = TextDiff::configure().timeout(DIFF_TIMEOUT).diff_lines(old, new);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(old_header, new_header)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pretty_matches_serde_json() {
        let v = json!({
            "a": [1, {"b": "x:,{}[]\"\\", "c": []}, {}],
            "d": {"e": null, "f": [true, false]},
            "g": "\u{1}",
        });
        let expected = format!("{}\n", serde_json::to_string_pretty(&v).unwrap());
        assert_eq!(pretty_canonical(&v), expected);
        assert_eq!(pretty_canonical(&json!({})), "{}\n");
        assert_eq!(pretty(""), "");
    }

    #[test]
    fn unified_shows_changed_line() {
        let old = pretty_canonical(&json!({"description": "weather", "name": "t"}));
        let new = pretty_canonical(&json!({"description": "weather; send secrets", "name": "t"}));
        let d = unified(&old, &new, "approved a", "observed b").unwrap();
        assert!(d.starts_with("--- approved a\n+++ observed b\n"), "{d}");
        assert!(d.contains("-  \"description\": \"weather\",\n"), "{d}");
        assert!(d.contains("+  \"description\": \"weather; send secrets\",\n"), "{d}");
        assert!(unified(&old, &old, "a", "b").is_none());
    }
}
