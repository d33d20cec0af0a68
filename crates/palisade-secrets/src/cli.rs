//! Plain functions behind the `palisade secrets …` subcommands. The binary owns
//! argument parsing and printing; these do the work and return errors.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use palisade_config::{SecretsBackend, SecretsConfig};
use zeroize::Zeroizing;

use crate::file::{KEY_LEN, MAX_VALUE_BYTES, validate_kid};
use crate::{FileStore, Keyring, SecretError, SecretStore};

/// `palisade secrets set NAME`: reads the value from `input` (normally stdin, so
/// it stays out of the shell history and process list) and stores it in the file
/// store. One trailing newline (`\n` or `\r\n`) is dropped, so `echo value |`
/// works; an empty value is refused. Fails for backends other than `file`.
pub fn cmd_set(cfg: &SecretsConfig, name: &str, input: &mut dyn Read) -> Result<(), SecretError> {
    crate::validate_name(name)?;
    let store = file_store(cfg)?;
    let mut value = Zeroizing::new(Vec::new());
    input
        .take(MAX_VALUE_BYTES as u64 + 3)
        .read_to_end(&mut value)
        .map_err(|source| SecretError::Io {
            context: "reading the secret value".into(),
            source,
        })?;
    strip_newline(&mut value);
    store.set(name, &value)
}

/// `palisade secrets remove NAME` (file backend): `Ok(false)` if it did not exist.
pub fn cmd_remove(cfg: &SecretsConfig, name: &str) -> Result<bool, SecretError> {
    file_store(cfg)?.remove(name)
}

/// `palisade secrets list`: the names the configured backend holds, sorted.
/// Never values. Async because the Vault backend asks the server.
pub async fn cmd_list(cfg: &SecretsConfig) -> Result<Vec<String>, SecretError> {
    SecretStore::from_config(cfg)?.list().await
}

/// `palisade secrets rotate` (file backend): re-encrypts every entry under the
/// first configured key and returns how many entries there are. To rotate: put
/// a new key (see [`generate_key`]) first in the key file, keep the old one
/// after it, run this, then delete the old key.
pub fn cmd_rotate(cfg: &SecretsConfig) -> Result<usize, SecretError> {
    file_store(cfg)?.rotate()
}

/// `palisade secrets keygen KID`: a fresh random key as one `kid:base64` line
/// (no newline), ready for the key file or the key variable. The caller prints it.
pub fn generate_key(kid: &str) -> Result<String, SecretError> {
    validate_kid(kid).map_err(SecretError::Keys)?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(&mut *key).map_err(|_| SecretError::Keys("no randomness available".into()))?;
    Ok(format!("{kid}:{}", B64.encode(*key)))
}

fn file_store(cfg: &SecretsConfig) -> Result<FileStore, SecretError> {
    if cfg.backend != SecretsBackend::File {
        return Err(SecretError::Unsupported(
            "only the file backend (secrets.backend = \"file\") can be changed by palisade",
        ));
    }
    Ok(FileStore::new(cfg.file.clone(), Keyring::from_config(cfg)?))
}

fn strip_newline(v: &mut Vec<u8>) {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path, keys: &[String]) -> SecretsConfig {
        let key_file = dir.join("keys");
        std::fs::write(&key_file, keys.join("\n")).unwrap();
        SecretsConfig {
            backend: SecretsBackend::File,
            file: dir.join("store.json"),
            key_file: Some(key_file),
            ..SecretsConfig::default()
        }
    }

    #[tokio::test]
    async fn set_list_rotate_remove() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = generate_key("k1").unwrap();
        let c = cfg(dir.path(), std::slice::from_ref(&k1));
        cmd_set(&c, "db", &mut &b"hunter2\n"[..]).unwrap();
        cmd_set(&c, "win", &mut &b"line\r\n"[..]).unwrap();
        cmd_set(&c, "raw", &mut &b"two\n\n"[..]).unwrap();
        assert!(matches!(cmd_set(&c, "empty", &mut &b"\n"[..]), Err(SecretError::Empty)));
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        assert!(matches!(
            cmd_set(&c, "big", &mut &big[..]),
            Err(SecretError::TooLarge(_))
        ));
        assert_eq!(cmd_list(&c).await.unwrap(), vec!["db", "raw", "win"]);

        let store = SecretStore::from_config(&c).unwrap();
        assert_eq!(store.get("db").await.unwrap().expose(), b"hunter2");
        assert_eq!(store.get("win").await.unwrap().expose(), b"line");
        assert_eq!(store.get("raw").await.unwrap().expose(), b"two\n");

        let k2 = generate_key("k2").unwrap();
        let both = cfg(dir.path(), &[k2.clone(), k1]);
        assert_eq!(cmd_rotate(&both).unwrap(), 3);
        let only_new = cfg(dir.path(), &[k2]);
        assert_eq!(
            SecretStore::from_config(&only_new)
                .unwrap()
                .get("db")
                .await
                .unwrap()
                .expose(),
            b"hunter2"
        );
        assert!(cmd_remove(&only_new, "db").unwrap());
        assert_eq!(cmd_list(&only_new).await.unwrap(), vec!["raw", "win"]);
    }

    #[test]
    fn keys_are_random_and_parse() {
        let a = generate_key("main-2026").unwrap();
        let b = generate_key("main-2026").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("main-2026:"));
        assert_eq!(Keyring::parse(&a).unwrap().kids(), vec!["main-2026"]);
        assert!(generate_key("bad kid").is_err());
    }

    #[test]
    fn other_backends_cannot_be_changed() {
        let c = SecretsConfig::default();
        assert!(matches!(
            cmd_set(&c, "a", &mut &b"x"[..]),
            Err(SecretError::Unsupported(_))
        ));
        assert!(matches!(cmd_rotate(&c), Err(SecretError::Unsupported(_))));
    }
}
