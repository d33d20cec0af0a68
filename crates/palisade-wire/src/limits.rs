//! Structural limits on untrusted JSON, enforced before parsing.

use std::fmt;

/// Bounds applied to every JSON document the gateway decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of one message in bytes.
    pub max_bytes: usize,
    /// Maximum nesting depth of objects and arrays (at most [`Limits::DEPTH_CAP`]).
    pub max_depth: usize,
    /// Maximum length in bytes of one string (keys included), as written on the wire.
    pub max_string: usize,
    /// Maximum number of members of one object or elements of one array.
    pub max_items: usize,
}

impl Limits {
    /// Hard ceiling on `max_depth`, so the pre-scan never allocates.
    pub const DEPTH_CAP: usize = 256;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
            max_depth: 64,
            max_string: 1024 * 1024,
            max_items: 10_000,
        }
    }
}

/// Why a document was refused by [`prescan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    TooLarge { limit: usize },
    TooDeep { limit: usize },
    StringTooLong { limit: usize },
    TooManyItems { limit: usize },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::TooLarge { limit } => write!(f, "message exceeds {limit} bytes"),
            LimitError::TooDeep { limit } => write!(f, "JSON nesting exceeds depth {limit}"),
            LimitError::StringTooLong { limit } => {
                write!(f, "JSON string exceeds {limit} bytes")
            }
            LimitError::TooManyItems { limit } => {
                write!(f, "JSON object or array exceeds {limit} items")
            }
        }
    }
}

impl std::error::Error for LimitError {}

/// One linear pass over the bytes that enforces [`Limits`] without parsing.
///
/// Syntax errors are left to the real parser; this only has to be conservative
/// about structure, so it tracks strings (with escapes), nesting and commas.
pub fn prescan(bytes: &[u8], limits: &Limits) -> Result<(), LimitError> {
    scan(bytes, limits).map(drop)
}

/// [`prescan`], also telling whether the text may hold what parses as JSON
/// but not as a `serde_json::Value`: a `\uD...` escape in a string (a lone
/// surrogate), or a number with an exponent or of more than 300 digits (out of
/// `f64` range). False positives only cost the caller a second parse.
pub(crate) fn scan(bytes: &[u8], limits: &Limits) -> Result<bool, LimitError> {
    if bytes.len() > limits.max_bytes {
        return Err(LimitError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let max_depth = limits.max_depth.min(Limits::DEPTH_CAP);
    // Item counters per open container; index 0 is depth 1.
    let mut items = [0usize; Limits::DEPTH_CAP];
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_len = 0usize;
    let mut unicode_escape = false;
    let mut digits = 0usize;
    let mut suspect = false;
    for &b in bytes {
        if in_string {
            if unicode_escape {
                unicode_escape = false;
                suspect |= b | 0x20 == b'd';
            }
            if escaped {
                escaped = false;
                unicode_escape = b == b'u';
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                continue;
            }
            string_len += 1;
            if string_len > limits.max_string {
                return Err(LimitError::StringTooLong {
                    limit: limits.max_string,
                });
            }
            continue;
        }
        if b.is_ascii_digit() {
            digits += 1;
            suspect |= digits > 300;
            continue;
        }
        suspect |= digits > 0 && b | 0x20 == b'e';
        digits = 0;
        match b {
            b'"' => {
                in_string = true;
                string_len = 0;
            }
            b'{' | b'[' => {
                if depth >= max_depth {
                    return Err(LimitError::TooDeep { limit: max_depth });
                }
                items[depth] = 1;
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
            }
            b',' if depth > 0 => {
                let slot = &mut items[depth - 1];
                *slot += 1;
                if *slot > limits.max_items {
                    return Err(LimitError::TooManyItems {
                        limit: limits.max_items,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(suspect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            max_bytes: 1000,
            max_depth: 4,
            max_string: 10,
            max_items: 3,
        }
    }

    #[test]
    fn accepts_within_limits() {
        assert_eq!(prescan(br#"{"a":[1,2,3],"b":{"c":"0123456789"}}"#, &lim()), Ok(()));
    }

    #[test]
    fn refuses_depth() {
        assert_eq!(prescan(b"[[[[[1]]]]]", &lim()), Err(LimitError::TooDeep { limit: 4 }));
        assert_eq!(prescan(b"[[[[1]]]]", &lim()), Ok(()));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(prescan(br#"["[[[[[[[[["]"#, &lim()), Ok(()));
        assert_eq!(prescan(br#"["\"[[[[[["]"#, &lim()), Ok(()));
    }

    #[test]
    fn refuses_long_string_and_many_items() {
        assert_eq!(
            prescan(br#"{"k":"01234567890"}"#, &lim()),
            Err(LimitError::StringTooLong { limit: 10 })
        );
        assert_eq!(
            prescan(b"[1,2,3,4]", &lim()),
            Err(LimitError::TooManyItems { limit: 3 })
        );
    }

    #[test]
    fn refuses_size() {
        let big = vec![b' '; 1001];
        assert_eq!(prescan(&big, &lim()), Err(LimitError::TooLarge { limit: 1000 }));
    }

    #[test]
    fn deep_hostile_input_is_cheap() {
        let deep = "[".repeat(1_000_000);
        let l = Limits {
            max_bytes: 2_000_000,
            ..Limits::default()
        };
        assert!(matches!(prescan(deep.as_bytes(), &l), Err(LimitError::TooDeep { .. })));
    }

    #[test]
    fn scan_flags_only_what_a_value_may_not_hold() {
        let l = Limits::default();
        for clean in [
            &br#"{"h":"a1e4","n":12,"t":"\n\u00e9","b":true}"#[..],
            br#"[1.5,-2,"1e400"]"#,
        ] {
            assert_eq!(scan(clean, &l), Ok(false), "{}", String::from_utf8_lossy(clean));
        }
        for suspect in [
            &br#"{"n":1e400}"#[..],
            br#"{"n":2E-3}"#,
            br#"{"s":"\uD800"}"#,
            br#"{"s":"\ud83d\ude00"}"#,
        ] {
            assert_eq!(scan(suspect, &l), Ok(true), "{}", String::from_utf8_lossy(suspect));
        }
        let long = format!("[{}]", "9".repeat(301));
        assert_eq!(scan(long.as_bytes(), &l), Ok(true));
    }
}
