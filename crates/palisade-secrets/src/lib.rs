//! Named secrets for the gateway (`[secrets]`): an encrypted file, environment
//! variables, or HashiCorp Vault KV v2.
//!
//! Configuration refers to secrets by name (`SecretRef::Secret("db_password")`)
//! or by environment variable (`SecretRef::Env("TOKEN")`); [`resolve`] turns
//! either into a [`Secret`]. Values never appear in `Debug`/`Display` output or
//! in error messages.

pub mod cli;
mod env;
mod file;
mod secret;
mod vault;

use palisade_config::{SecretRef, SecretsBackend, SecretsConfig};

pub use env::EnvStore;
pub use file::{FileStore, Keyring};
pub use secret::Secret;
pub use vault::VaultStore;

/// Longest secret name, characters.
pub const MAX_NAME_LEN: usize = 128;

/// Why a secret could not be read or written. Messages name secrets, files and
/// variables, never values, keys or tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The name is not 1–128 characters of `[A-Za-z0-9_.-]`.
    #[error("invalid secret name {0:?}: use 1-128 characters of A-Z a-z 0-9 _ . -")]
    InvalidName(String),
    /// No secret of that name.
    #[error("secret {0:?} not found")]
    NotFound(String),
    /// An environment variable named by `SecretRef::Env` or the configuration is not set.
    #[error("environment variable {0} is not set")]
    EnvNotSet(String),
    /// The operation needs another backend (e.g. `set` on Vault).
    #[error("{0}")]
    Unsupported(&'static str),
    /// Invalid `[secrets]` settings.
    #[error("secrets configuration: {0}")]
    Config(String),
    /// The file store keys are missing or malformed.
    #[error("secret store keys: {0}")]
    Keys(String),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The store file is not a valid store (garbage, truncated, too large).
    #[error("secret store file {path}: {why}")]
    Corrupt { path: String, why: String },
    /// An entry does not decrypt: wrong key, or the file was tampered with.
    #[error("secret {0:?} cannot be decrypted: wrong key or tampered store file")]
    Decrypt(String),
    /// An entry was sealed with a key id that is not configured.
    #[error("secret {name:?} is sealed with key {kid:?}, which is not configured")]
    UnknownKey { name: String, kid: String },
    /// The value is larger than the store accepts.
    #[error("secret value too large ({0} bytes)")]
    TooLarge(usize),
    /// The value is empty.
    #[error("secret value is empty")]
    Empty,
    /// A Vault request failed.
    #[error("vault: {0}")]
    Vault(String),
    /// The secret is not UTF-8 text.
    #[error("secret is not valid UTF-8")]
    NotUtf8,
}

/// Checks a secret name: 1–128 characters of `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        // Bound what is echoed back: the name may be anything a user typed.
        let shown: String = name.chars().take(MAX_NAME_LEN).collect();
        Err(SecretError::InvalidName(shown))
    }
}

/// A configured secret store.
#[derive(Debug)]
pub enum SecretStore {
    /// AES-256-GCM encrypted JSON file.
    File(FileStore),
    /// Process environment variables with a prefix.
    Env(EnvStore),
    /// HashiCorp Vault KV v2 (boxed: it is much larger than the others).
    Vault(Box<VaultStore>),
}

impl SecretStore {
    /// Builds the store `cfg` selects. Keys (file) and the token (Vault) are read
    /// now, so a missing one fails at start rather than on first use.
    pub fn from_config(cfg: &SecretsConfig) -> Result<Self, SecretError> {
        Ok(match cfg.backend {
            SecretsBackend::File => SecretStore::File(FileStore::new(cfg.file.clone(), Keyring::from_config(cfg)?)),
            SecretsBackend::Env => SecretStore::Env(EnvStore::new(&cfg.env_prefix)),
            SecretsBackend::Vault => {
                let vault = cfg
                    .vault
                    .as_ref()
                    .ok_or_else(|| SecretError::Config("backend = \"vault\" needs a [secrets.vault] table".into()))?;
                SecretStore::Vault(Box::new(VaultStore::from_config(vault)?))
            }
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> SecretsBackend {
        match self {
            SecretStore::File(_) => SecretsBackend::File,
            SecretStore::Env(_) => SecretsBackend::Env,
            SecretStore::Vault(_) => SecretsBackend::Vault,
        }
    }

    /// The secret called `name`.
    ///
    /// The file backend reads its (small) file synchronously; secrets are meant
    /// to be resolved at start or reload, not per request.
    pub async fn get(&self, name: &str) -> Result<Secret, SecretError> {
        match self {
            SecretStore::File(f) => f.get(name),
            SecretStore::Env(e) => e.get(name),
            SecretStore::Vault(v) => v.get(name).await,
        }
    }

    /// Names of the stored secrets, sorted.
    pub async fn list(&self) -> Result<Vec<String>, SecretError> {
        match self {
            SecretStore::File(f) => f.list(),
            SecretStore::Env(e) => Ok(e.list()),
            SecretStore::Vault(v) => v.list().await,
        }
    }

    /// Stores `value` under `name` (file backend only).
    pub fn set(&self, name: &str, value: &[u8]) -> Result<(), SecretError> {
        self.file()?.set(name, value)
    }

    /// Deletes `name`; `Ok(false)` if it did not exist (file backend only).
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        self.file()?.remove(name)
    }

    /// Re-encrypts every entry under the first key; returns how many (file backend only).
    pub fn rotate(&self) -> Result<usize, SecretError> {
        self.file()?.rotate()
    }

    fn file(&self) -> Result<&FileStore, SecretError> {
        match self {
            SecretStore::File(f) => Ok(f),
            _ => Err(SecretError::Unsupported(
                "only the file backend can be changed by palisade; use the backend's own tools",
            )),
        }
    }
}

/// Resolves a configuration reference: `Env(var)` reads the gateway's process
/// environment, `Secret(name)` asks `store`.
pub async fn resolve(store: &SecretStore, r: &SecretRef) -> Result<Secret, SecretError> {
    match r {
        SecretRef::Env(var) => env::read_var(var),
        SecretRef::Secret(name) => store.get(name).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "db_password", "A.b-c_9", &"x".repeat(128)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ä", "a\n", &"x".repeat(129), "../x"] {
            assert!(
                matches!(validate_name(bad), Err(SecretError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }
}
