//! Duplicate object keys: `serde_json` keeps the last of two equal keys,
//! other parsers keep the first. What the gateway authorizes and validates
//! must be what the upstream reads, so parameters it decides on are refused
//! when any object in them repeats a key (escaped spellings included).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Whether every object in `json` has distinct keys (false also for invalid JSON).
pub fn has_unique_keys(json: &str) -> bool {
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_any(Unique).is_ok() && de.end().is_ok()
}

struct Unique;

impl<'de> de::Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Unique)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON without duplicate object keys")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k) {
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_at_any_depth_are_found() {
        assert!(has_unique_keys(r#"{"a":1,"b":{"a":2},"c":[{"a":1,"b":2}]}"#));
        assert!(!has_unique_keys(r#"{"a":1,"a":2}"#));
        assert!(!has_unique_keys(r#"{"x":{"p":"/ok","p":"/etc"}}"#));
        assert!(!has_unique_keys(r#"[{"k":1,"k":1}]"#));
        // An escaped spelling is the same key.
        assert!(!has_unique_keys(r#"{"path":"/srv","pa\u0074h":"/etc"}"#));
        assert!(!has_unique_keys("{"));
        assert!(!has_unique_keys(r#"{"a":1} x"#));
        assert!(has_unique_keys("null"));
    }
}
