//! The record format of the chain.
//!
//! A record is one JSON line:
//! `{"seq":N,"ts":…,"id":…,"event":…,<fields>,"prev":"<hex>","mac":"<hex>"}`.
//! The MAC is HMAC-SHA256 under the chain key over the exact bytes before
//! `,"mac":"` (the body, which holds `prev`, the previous record's MAC), so
//! verification never re-serializes: what was written is what is checked.

use aws_lc_rs::hmac;
use serde_json::{Map, Value};

/// The separator before the MAC. It cannot occur inside a JSON string (the
/// quotes would be escaped), and the MAC is the last member, so the last
/// occurrence on a line is the real one.
pub const MAC_SEP: &str = ",\"mac\":\"";

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Fields written first, in this order, when present.
const LEADING: [&str; 5] = ["ts", "id", "event", "level", "msg"];

/// The chain key. Never printed.
pub struct AuditKey {
    key: hmac::Key,
    kid: String,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey(kid {})", self.kid)
    }
}

impl AuditKey {
    /// A key from secret bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<AuditKey, String> {
        if secret.len() < 16 {
            return Err("the audit key must be at least 16 bytes".into());
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        // A key id lets verification say "another key" instead of "edited";
        // it is a MAC of a constant, so it reveals nothing about the key.
        let tag = hmac::sign(&key, b"palisade-audit-key-id");
        let kid = hex::encode(&tag.as_ref()[..8]);
        Ok(AuditKey { key, kid })
    }

    /// The key id written in each segment's first record.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The MAC of a record body, hex.
    pub fn mac(&self, body: &[u8]) -> String {
        hex::encode(hmac::sign(&self.key, body).as_ref())
    }

    /// Whether `mac_hex` is the MAC of `body` (constant time).
    pub fn verify(&self, body: &[u8], mac_hex: &str) -> bool {
        match hex::decode(mac_hex) {
            Ok(tag) => hmac::verify(&self.key, body, &tag).is_ok(),
            Err(_) => false,
        }
    }

    /// A keyed hash of a payload (arguments, matched text) for logs: lets an
    /// investigator with the key test a guess, and no one else.
    pub fn keyed_hash(&self, data: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"palisade-audit-payload\0");
        ctx.update(data);
        hex::encode(&ctx.sign().as_ref()[..16])
    }
}

/// Splits a line into its body and MAC.
pub fn split(line: &str) -> Option<(&str, &str)> {
    let at = line.rfind(MAC_SEP)?;
    let mac = line[at + MAC_SEP.len()..].strip_suffix("\"}")?;
    if mac.len() != 64 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((&line[..at], mac))
}

/// Writes a record line for `fields` at `seq` after `prev`; returns the line
/// (no newline) and its MAC.
pub fn seal(key: &AuditKey, seq: u64, prev: &str, fields: &Map<String, Value>) -> (String, String) {
    let mut line = String::with_capacity(256);
    line.push_str("{\"seq\":");
    line.push_str(&seq.to_string());
    for k in LEADING {
        if let Some(v) = fields.get(k) {
            push_member(&mut line, k, v);
        }
    }
    for (k, v) in fields {
        if LEADING.contains(&k.as_str()) || matches!(k.as_str(), "seq" | "prev" | "mac") {
            continue;
        }
        push_member(&mut line, k, v);
    }
    line.push_str(",\"prev\":\"");
    line.push_str(prev);
    line.push('"');
    let mac = key.mac(line.as_bytes());
    line.push_str(MAC_SEP);
    line.push_str(&mac);
    line.push_str("\"}");
    (line, mac)
}

fn push_member(line: &mut String, k: &str, v: &Value) {
    line.push(',');
    // Serializing a string or a Value to a String cannot fail.
    line.push_str(&serde_json::to_string(k).unwrap_or_default());
    line.push(':');
    line.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into()));
}

/// What a verifier reads from a line.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub seq: u64,
    pub prev: String,
    pub mac: String,
    pub event: String,
    pub value: Map<String, Value>,
}

/// Parses a record line (no MAC check).
pub fn parse(line: &str) -> Result<Parsed, String> {
    let (_, mac) = split(line).ok_or("no MAC at the end of the record")?;
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(value) = value else {
        return Err("not a JSON object".into());
    };
    let seq = value.get("seq").and_then(Value::as_u64).ok_or("no seq")?;
    let prev = value.get("prev").and_then(Value::as_str).ok_or("no prev")?.to_owned();
    let event = value.get("event").and_then(Value::as_str).unwrap_or("").to_owned();
    Ok(Parsed {
        seq,
        prev,
        mac: mac.to_owned(),
        event,
        value,
    })
}

/// RFC 3339 UTC with microseconds: fixed width, so strings sort as times.
pub fn timestamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The current time as [`timestamp`].
pub fn now() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::new(&[7u8; 32]).unwrap()
    }

    #[test]
    fn seal_and_split_round_trip() {
        let k = key();
        let mut f = Map::new();
        f.insert("event".into(), "tool.call".into());
        f.insert("ts".into(), "2026-11-22T10:00:00.000001Z".into());
        f.insert("nested".into(), serde_json::json!({"mac": "x", "s": ",\"mac\":\""}));
        let (line, mac) = seal(&k, 7, GENESIS, &f);
        assert!(line.starts_with("{\"seq\":7,\"ts\":"), "{line}");
        let (body, m) = split(&line).unwrap();
        assert_eq!(m, mac);
        assert!(k.verify(body.as_bytes(), m));
        let p = parse(&line).unwrap();
        assert_eq!((p.seq, p.prev.as_str(), p.event.as_str()), (7, GENESIS, "tool.call"));
        // One changed byte breaks the MAC.
        let edited = line.replacen("tool.call", "tool.cal1", 1);
        let (b2, m2) = split(&edited).unwrap();
        assert!(!k.verify(b2.as_bytes(), m2));
        // Another key does not verify it either.
        let other = AuditKey::new(&[8u8; 32]).unwrap();
        assert!(!other.verify(body.as_bytes(), m));
        assert_ne!(other.kid(), k.kid());
    }

    #[test]
    fn reserved_fields_cannot_be_injected() {
        let k = key();
        let mut f = Map::new();
        f.insert("mac".into(), "f".repeat(64).into());
        f.insert("prev".into(), "e".repeat(64).into());
        f.insert("seq".into(), 99.into());
        let (line, _) = seal(&k, 1, GENESIS, &f);
        let p = parse(&line).unwrap();
        assert_eq!(p.seq, 1);
        assert_eq!(p.prev, GENESIS);
    }

    #[test]
    fn malformed_lines_are_refused() {
        for l in [
            "",
            "{}",
            "not json",
            "{\"seq\":1,\"prev\":\"00\",\"mac\":\"zz\"}",
            &"{".repeat(10_000),
        ] {
            assert!(parse(l).is_err(), "{l:.40}");
        }
        assert!(AuditKey::new(b"short").is_err());
    }

    #[test]
    fn timestamps_are_fixed_width() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000007 UTC);
        assert_eq!(timestamp(t), "2026-01-02T03:04:05.000007Z");
    }
}
