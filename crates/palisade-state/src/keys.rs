//! Key normalization, shared by both backends.

use std::borrow::Cow;

use aws_lc_rs::digest;

/// Keys (rate-limit keys, session ids, replay keys, principals) longer than
/// this many bytes are replaced by their SHA-256 (see [`normalize`]).
pub const MAX_KEY_LEN: usize = 512;

/// The stored form of a caller's key.
///
/// A key of at most [`MAX_KEY_LEN`] bytes that does not start with `#` is
/// stored as is. Any other key is stored as `#` followed by the hex SHA-256 of
/// its bytes (65 bytes). The mapping is injective up to SHA-256 collisions: a
/// plain key never starts with `#` and a hashed one always does, so a caller
/// cannot pick a short key that lands on a long key's bucket. Storage per key
/// stays bounded whatever the caller sends.
pub fn normalize(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_KEY_LEN && !key.starts_with('#') {
        Cow::Borrowed(key)
    } else {
        let d = digest::digest(&digest::SHA256, key.as_bytes());
        Cow::Owned(format!("#{}", hex::encode(d.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_kept_long_and_marked_ones_hashed() {
        assert_eq!(normalize("user:a|b"), "user:a|b");
        assert_eq!(normalize(""), "");
        let long = "x".repeat(MAX_KEY_LEN + 1);
        let h = normalize(&long);
        assert!(h.starts_with('#') && h.len() == 65, "{h}");
        assert_eq!(normalize(&"x".repeat(MAX_KEY_LEN)).len(), MAX_KEY_LEN);
        // A caller cannot name the hashed form directly.
        assert_ne!(normalize(&h), h);
        assert!(normalize("#short").starts_with('#') && normalize("#short").len() == 65);
        assert_ne!(normalize(&long), normalize(&"x".repeat(MAX_KEY_LEN + 2)));
    }
}
