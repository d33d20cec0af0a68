//! The secrets pack.

use crate::{Finding, Input, Pack};

/// Why a rule file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(pub String);

/// Credentials, keys and tokens.
#[derive(Debug, Default)]
pub struct SecretsPack {}

impl SecretsPack {
    /// The built-in rules.
    pub fn builtin() -> SecretsPack {
        SecretsPack {}
    }

    /// The built-in rules plus a gitleaks-format rule file.
    pub fn with_gitleaks(_toml: &str) -> Result<SecretsPack, RulesError> {
        Ok(SecretsPack {})
    }
}

impl Pack for SecretsPack {
    fn name(&self) -> &'static str {
        "secrets"
    }
    fn rules(&self) -> usize {
        0
    }
    fn triggers(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
    fn scan(&self, _input: &Input<'_>, _enabled: &[bool], _out: &mut Vec<Finding>) {}
}
