//! The environment backend: secret `db_password` is `PREFIX` + `DB_PASSWORD`.

use std::os::unix::ffi::OsStringExt;

use crate::{Secret, SecretError, validate_name};

/// Secrets held in the gateway's environment variables.
#[derive(Debug, Clone)]
pub struct EnvStore {
    prefix: String,
}

impl EnvStore {
    /// A store reading variables that start with `prefix`.
    pub fn new(prefix: &str) -> Self {
        EnvStore {
            prefix: prefix.to_owned(),
        }
    }

    /// The variable holding secret `name`: the prefix, then the name upper-cased
    /// with every character other than a letter or digit replaced by `_`.
    pub fn var_name(&self, name: &str) -> String {
        let suffix: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}{suffix}", self.prefix)
    }

    /// The secret called `name`.
    pub fn get(&self, name: &str) -> Result<Secret, SecretError> {
        validate_name(name)?;
        match std::env::var_os(self.var_name(name)) {
            Some(v) => Ok(Secret::new(v.into_vec())),
            None => Err(SecretError::NotFound(name.to_owned())),
        }
    }

    /// Secrets present, named by the lower-cased rest of each variable name after
    /// the prefix (`PREFIX_DB_PASSWORD` → `db_password`), sorted. Each name so
    /// listed reads back with [`EnvStore::get`].
    pub fn list(&self) -> Vec<String> {
        self.list_from(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    }

    fn list_from(&self, vars: impl Iterator<Item = String>) -> Vec<String> {
        let mut names: Vec<String> = vars
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_ascii_lowercase))
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Reads an environment variable as a secret (for `SecretRef::Env`).
pub(crate) fn read_var(var: &str) -> Result<Secret, SecretError> {
    match std::env::var_os(var) {
        Some(v) => Ok(Secret::new(v.into_vec())),
        None => Err(SecretError::EnvNotSet(var.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names() {
        let s = EnvStore::new("PALISADE_SECRET_");
        assert_eq!(s.var_name("db_password"), "PALISADE_SECRET_DB_PASSWORD");
        assert_eq!(s.var_name("api.key-2"), "PALISADE_SECRET_API_KEY_2");
    }

    #[test]
    fn listing_keeps_prefixed_valid_names() {
        let s = EnvStore::new("P_");
        let vars = ["P_DB_PASSWORD", "PATH", "P_", "P_API_KEY", "X_P_OTHER"].map(String::from);
        assert_eq!(s.list_from(vars.into_iter()), vec!["api_key", "db_password"]);
    }

    #[test]
    fn invalid_name_is_refused() {
        assert!(matches!(
            EnvStore::new("P_").get("a b"),
            Err(SecretError::InvalidName(_))
        ));
    }
}
