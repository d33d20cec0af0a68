//! Reading and parsing configuration files: JSON and JSONC (comments and
//! trailing commas) with a parser of our own that records lines, YAML through
//! `serde-saphyr` and TOML through `toml`, both with spans. Every input is
//! bounded: size, nesting depth, UTF-8.

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::tree::{Node, Value};

/// Files larger than this are not parsed.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Deeper documents are refused (real client configs are under 10 levels).
pub const MAX_DEPTH: usize = 64;

/// The syntax of a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// JSON, with JSONC extensions accepted (comments, trailing commas).
    Json,
    Yaml,
    Toml,
}

impl Syntax {
    /// From the file name: `.yaml`/`.yml`, `.toml`, anything else JSON.
    pub fn from_path(path: &Path) -> Syntax {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("yaml" | "yml") => Syntax::Yaml,
            Some("toml") => Syntax::Toml,
            _ => Syntax::Json,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Syntax::Json => "json",
            Syntax::Yaml => "yaml",
            Syntax::Toml => "toml",
        }
    }
}

/// Reads a file as UTF-8 text, at most [`MAX_FILE_BYTES`]; a leading BOM is dropped.
pub fn read_text(path: &Path) -> Result<String, String> {
    // Checked before opening: opening a FIFO or a device could block or never end.
    let pre = std::fs::metadata(path).map_err(|e| format!("cannot open: {e}"))?;
    if !pre.is_file() {
        return Err("not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, larger than the {MAX_FILE_BYTES}-byte limit",
            meta.len()
        ));
    }
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("file is larger than the {MAX_FILE_BYTES}-byte limit"));
    }
    let text = String::from_utf8(buf).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.contains('\0') {
        return Err("binary content (NUL bytes)".into());
    }
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Parses text in the given syntax.
pub fn parse(text: &str, syntax: Syntax) -> Result<Node, String> {
    match syntax {
        Syntax::Json => parse_json(text),
        Syntax::Yaml => parse_yaml(text),
        Syntax::Toml => parse_toml(text),
    }
}

// ---------------------------------------------------------------- JSON / JSONC

/// Parses JSON, accepting `//` and `/* */` comments and trailing commas.
pub fn parse_json(text: &str) -> Result<Node, String> {
    let mut p = JsonParser {
        s: text.as_bytes(),
        i: 0,
        line: 1,
    };
    p.skip_ws()?;
    let v = p.value(0)?;
    p.skip_ws()?;
    if p.i < p.s.len() {
        return Err(p.err("unexpected content after the document"));
    }
    Ok(v)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
    line: u32,
}

impl JsonParser<'_> {
    fn err(&self, what: &str) -> String {
        format!("line {}: {what}", self.line)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_ws(&mut self) -> Result<(), String> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => {
                    self.bump();
                }
                Some(b'/') => match self.s.get(self.i + 1) {
                    Some(b'/') => {
                        while let Some(c) = self.peek() {
                            if c == b'\n' {
                                break;
                            }
                            self.bump();
                        }
                    }
                    Some(b'*') => {
                        let start = self.line;
                        self.i += 2;
                        loop {
                            match self.bump() {
                                None => return Err(format!("line {start}: unterminated comment")),
                                Some(b'*') if self.peek() == Some(b'/') => {
                                    self.i += 1;
                                    break;
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => return Err(self.err("unexpected '/'")),
                },
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let line = self.line;
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => {
                self.bump();
                let mut entries = Vec::new();
                loop {
                    self.skip_ws()?;
                    match self.peek() {
                        Some(b'}') => {
                            self.bump();
                            break;
                        }
                        Some(b'"') => {}
                        _ => return Err(self.err("expected a string key or '}'")),
                    }
                    let key = self.string()?;
                    self.skip_ws()?;
                    if self.bump() != Some(b':') {
                        return Err(self.err("expected ':' after an object key"));
                    }
                    self.skip_ws()?;
                    let v = self.value(depth + 1)?;
                    entries.push((key, v));
                    self.skip_ws()?;
                    match self.bump() {
                        Some(b',') => {}
                        Some(b'}') => break,
                        _ => return Err(self.err("expected ',' or '}' in an object")),
                    }
                }
                Ok(Node::new(Value::Object(entries), line))
            }
            Some(b'[') => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_ws()?;
                    if self.peek() == Some(b']') {
                        self.bump();
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_ws()?;
                    match self.bump() {
                        Some(b',') => {}
                        Some(b']') => break,
                        _ => return Err(self.err("expected ',' or ']' in an array")),
                    }
                }
                Ok(Node::new(Value::Array(items), line))
            }
            Some(b'"') => Ok(Node::new(Value::String(self.string()?), line)),
            Some(b't') => self.literal("true", Value::Bool(true), line),
            Some(b'f') => self.literal("false", Value::Bool(false), line),
            Some(b'n') => self.literal("null", Value::Null, line),
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while matches!(self.peek(), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
                    self.bump();
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("0");
                if text.parse::<f64>().is_err() {
                    return Err(self.err("invalid number"));
                }
                Ok(Node::new(Value::Number(text.to_string()), line))
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn literal(&mut self, word: &str, v: Value, line: u32) -> Result<Node, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(Node::new(v, line))
        } else {
            Err(self.err("unexpected word"))
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let h = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, String> {
        let start_line = self.line;
        self.bump(); // opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(format!("line {start_line}: unterminated string"));
            };
            match c {
                b'"' => {
                    self.bump();
                    break;
                }
                b'\\' => {
                    self.bump();
                    let e = self.bump().ok_or_else(|| self.err("unterminated escape"))?;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) == Some(b"\\u") {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return Err(self.err("unpaired surrogate"));
                                    }
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    return Err(self.err("unpaired surrogate"));
                                }
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("unpaired surrogate"));
                            } else {
                                hi
                            };
                            let ch = char::from_u32(cp).ok_or_else(|| self.err("bad \\u escape"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.err("unknown escape")),
                    }
                }
                b'\n' => return Err(self.err("newline inside a string")),
                _ => {
                    self.bump();
                    out.push(c);
                }
            }
        }
        // Input is a &str and escapes produce valid UTF-8, so this cannot fail.
        String::from_utf8(out).map_err(|_| self.err("invalid UTF-8 in a string"))
    }
}

// ---------------------------------------------------------------- YAML / TOML

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// A child value that knows where it came from.
trait Child: for<'de> Deserialize<'de> {
    fn into_node(self) -> Node;
}

/// Any value, with children deserialized as `W` (which adds the location).
struct Loose<W> {
    value: Value,
    _w: PhantomData<W>,
}

struct LooseVisitor<W>(PhantomData<W>);

impl<'de, W: Child> Visitor<'de> for LooseVisitor<W> {
    type Value = Loose<W>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(loose(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(loose(Value::Number(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(loose(Value::Number(v.to_string())))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Self::Value, E> {
        Ok(loose(Value::Number(v.to_string())))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Self::Value, E> {
        Ok(loose(Value::Number(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(loose(Value::Number(v.to_string())))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(loose(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(loose(Value::String(v)))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(loose(Value::String(String::from_utf8_lossy(v).into_owned())))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(loose(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(loose(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Loose::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(c) = seq.next_element::<W>()? {
            items.push(c.into_node());
        }
        Ok(loose(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Key, W>()? {
            entries.push((k.0, v.into_node()));
        }
        Ok(loose(Value::Object(entries)))
    }
}

fn loose<W>(value: Value) -> Loose<W> {
    Loose { value, _w: PhantomData }
}

impl<'de, W: Child> Deserialize<'de> for Loose<W> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let depth = DEPTH.with(|c| {
            let v = c.get() + 1;
            c.set(v);
            v
        });
        let out = if depth > MAX_DEPTH {
            Err(de::Error::custom(format!("nested deeper than {MAX_DEPTH} levels")))
        } else {
            d.deserialize_any(LooseVisitor::<W>(PhantomData))
        };
        DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
        out
    }
}

/// A mapping key of any scalar type, as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Key, E> {
                Ok(Key(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML child: the value and the line saphyr reports for it.
struct YamlChild(serde_saphyr::Spanned<Loose<YamlChild>>);

impl<'de> Deserialize<'de> for YamlChild {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_saphyr::Spanned::deserialize(d).map(YamlChild)
    }
}

impl Child for YamlChild {
    fn into_node(self) -> Node {
        let line = u32::try_from(self.0.referenced.line()).unwrap_or(0);
        Node::new(self.0.value.value, line)
    }
}

/// A TOML child: the value and its byte offset (turned into a line later).
struct TomlChild(toml::Spanned<Loose<TomlChild>>);

impl<'de> Deserialize<'de> for TomlChild {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        toml::Spanned::deserialize(d).map(TomlChild)
    }
}

impl Child for TomlChild {
    fn into_node(self) -> Node {
        let offset = u32::try_from(self.0.span().start).unwrap_or(u32::MAX);
        let inner = self.0.into_inner();
        Node::new(inner.value, offset)
    }
}

fn first_line(msg: &str) -> String {
    let m: String = msg.lines().take(3).collect::<Vec<_>>().join(" ");
    if m.chars().count() > 300 {
        m.chars().take(300).collect::<String>() + "…"
    } else {
        m
    }
}

fn parse_yaml(text: &str) -> Result<Node, String> {
    DEPTH.with(|c| c.set(0));
    // YAML 1.2 booleans only (`y`, `no`, `on` stay strings), `0755` stays a string.
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
    };
    // Messages only, never a snippet of the file (it may hold secrets).
    let root: YamlChild =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| first_line(&e.without_snippet().to_string()))?;
    let mut node = root.into_node();
    if node.line == 0 {
        node.line = 1;
    }
    Ok(node)
}

fn parse_toml(text: &str) -> Result<Node, String> {
    DEPTH.with(|c| c.set(0));
    let root: Loose<TomlChild> = toml::from_str(text).map_err(|e| {
        // The message and the line, never the excerpt of the file.
        let line = e
            .span()
            .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
        let msg = first_line(e.message());
        match line {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        }
    })?;
    let mut node = Node::new(root.value, 0);
    let starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    fix_lines(&mut node, &starts);
    node.line = 1;
    Ok(node)
}

/// Turns byte offsets stored in `line` into 1-based line numbers.
fn fix_lines(node: &mut Node, starts: &[usize]) {
    node.line = if node.line == u32::MAX {
        0
    } else {
        let off = node.line as usize;
        u32::try_from(starts.partition_point(|&s| s <= off)).unwrap_or(0)
    };
    match &mut node.value {
        Value::Array(items) => items.iter_mut().for_each(|n| fix_lines(n, starts)),
        Value::Object(entries) => entries.iter_mut().for_each(|(_, n)| fix_lines(n, starts)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc_comments_trailing_commas_and_lines() {
        let text =
            "{\n  // a comment\n  \"a\": [1, 2,],\n  /* block\n */ \"b\": {\"c\": \"x\\u00e9\\ud83d\\ude00\",},\n}\n";
        let n = parse_json(text).unwrap();
        assert_eq!(n.get("a").unwrap().line, 3);
        assert_eq!(n.get("b").unwrap().line, 5);
        assert_eq!(n.get("b").unwrap().get("c").unwrap().as_str(), Some("xé😀"));
    }

    #[test]
    fn json_errors() {
        assert!(parse_json("{\"a\": }").is_err());
        assert!(parse_json("{\"a\": 1} x").is_err());
        assert!(parse_json("\"\\ud800\"").is_err());
        assert!(parse_json(&"[".repeat(100_000)).unwrap_err().contains("deeper"));
        assert!(parse_json("/* open").is_err());
        assert!(parse_json("").is_err());
    }

    #[test]
    fn yaml_lines() {
        let n = parse_yaml("a: 1\nb:\n  - name: x\n    command: y\n").unwrap();
        let b = n.get("b").unwrap();
        let item = &b.as_array().unwrap()[0];
        assert_eq!(item.get("command").unwrap().line, 4);
        assert_eq!(
            item.get("command").unwrap().value,
            Value::String("y".into()),
            "{item:?}"
        );
    }

    #[test]
    fn toml_lines() {
        let n = parse_toml("x = 1\n\n[mcp_servers.a]\ncommand = \"npx\"\nargs = [\"-y\", \"p\"]\n").unwrap();
        let a = n.get("mcp_servers").unwrap().get("a").unwrap();
        assert_eq!(a.get("command").unwrap().line, 4);
        assert_eq!(a.get("args").unwrap().as_array().unwrap()[1].line, 5);
    }

    #[test]
    fn deep_yaml_and_toml_refused() {
        assert!(parse_yaml(&format!("a: {}{}", "[".repeat(5000), "]".repeat(5000))).is_err());
        assert!(parse_toml(&format!("a = {}{}", "[".repeat(5000), "]".repeat(5000))).is_err());
    }
}
