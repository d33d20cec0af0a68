//! `[upstreams.NAME.pin]`: supply-chain pins of a launched stdio server (P1).
//!
//! A pin names what may be launched: the SHA-256 of the resolved executable,
//! an npm package (exact version, the registry's `integrity` of its tarball and
//! a digest of the installed tree) or a PyPI package (exact version, the wheel's
//! SHA-256 and a digest of the installed files). The checks themselves live in
//! the `palisade-supply` crate; this module holds the types and the syntax
//! checks done when the configuration is loaded.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{ConfigError, err_at};

/// What a stdio upstream may launch. At least one of the three must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchPin {
    /// `sha256:<64 hex>` of the file `command` resolves to (through the
    /// server's `PATH`, relative to `cwd`).
    #[serde(default)]
    pub executable: Option<String>,
    #[serde(default)]
    pub npm: Option<NpmPin>,
    #[serde(default)]
    pub pypi: Option<PypiPin>,
}

/// An npm package run from a local install (never `npx pkg@latest`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpmPin {
    /// Package name, for example `@modelcontextprotocol/server-filesystem`.
    pub package: String,
    /// Exact version (`1.2.3`, `1.2.3-rc.1`); ranges and tags are refused.
    pub version: String,
    /// The registry's Subresource Integrity string of the tarball (`sha512-<base64>`).
    pub integrity: String,
    /// The install root: the folder holding `node_modules/`.
    pub prefix: PathBuf,
    /// `sha256:<64 hex>` digest of every entry under `prefix/node_modules`.
    pub tree: String,
}

/// A PyPI package run from a virtual environment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiPin {
    /// Distribution name, for example `mcp-server-fetch`.
    pub package: String,
    /// Exact version (`1.2.3`, `2.0.0rc1`); specifiers are refused.
    pub version: String,
    /// `sha256:<64 hex>` of the wheel file as published.
    pub wheel: String,
    /// The virtual environment holding the install.
    pub venv: PathBuf,
    /// `sha256:<64 hex>` digest of the files listed in the package's `RECORD`.
    pub tree: String,
}

/// Checks `sha256:<64 lowercase hex>`.
pub fn check_sha256_pin(s: &str) -> Result<(), String> {
    let Some(hex) = s.strip_prefix("sha256:") else {
        return Err(format!("{s:?}: expected \"sha256:<64 hex digits>\""));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("{s:?}: expected \"sha256:<64 lowercase hex digits>\""));
    }
    Ok(())
}

/// Checks an npm package name (`name` or `@scope/name`).
pub fn check_npm_name(s: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('_')
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    };
    let valid = s.len() <= 214
        && match s.strip_prefix('@') {
            Some(rest) => rest
                .split_once('/')
                .is_some_and(|(scope, name)| ok_part(scope) && ok_part(name)),
            None => ok_part(s),
        };
    if valid {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid npm package name"))
    }
}

/// Checks an exact semantic version (`MAJOR.MINOR.PATCH[-pre][+build]`):
/// ranges (`^1.2.3`, `~1`, `>=1`, `1.x`, `*`), tags (`latest`) and partial
/// versions are refused.
pub fn check_exact_semver(s: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{s:?} is not an exact version (MAJOR.MINOR.PATCH); ranges and tags such as \"latest\" are refused"
        ))
    };
    let (core, build) = match s.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (s, None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    let num_ok = |n: &str| {
        !n.is_empty() && n.len() <= 16 && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
    };
    if nums.len() != 3 || !nums.iter().all(|n| num_ok(n)) {
        return bad();
    }
    let ident_ok = |p: &str| {
        !p.is_empty()
            && p.split('.')
                .all(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    if pre.is_some_and(|p| !ident_ok(p)) || build.is_some_and(|b| !ident_ok(b)) {
        return bad();
    }
    Ok(())
}

/// Checks a PyPI distribution name (PEP 508).
pub fn check_pypi_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 200
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid PyPI distribution name"))
    }
}

/// Checks an exact PEP 440 version (`1.2.3`, `1!2.0`, `2.0.0rc1`,
/// `1.0.post1`, `1.0+local`): specifiers (`==`, `>=`, `~=`, `*`, commas) and
/// words such as `latest` are refused.
pub fn check_exact_pep440(s: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{s:?} is not an exact version (for example 1.2.3); specifiers and tags such as \"latest\" are refused"
        ))
    };
    let body = match s.split_once('!') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => rest,
        Some(_) => return bad(),
        None => s,
    };
    let (public, local) = match body.split_once('+') {
        Some((p, l)) => (p, Some(l)),
        None => (body, None),
    };
    if s.len() > 64 || !public.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return bad();
    }
    if !public
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b.is_ascii_lowercase() || b == b'-' || b == b'_')
    {
        return bad();
    }
    // Letters only as PEP 440 suffixes.
    let letters: String = public.chars().filter(|c| c.is_ascii_lowercase()).collect();
    let words = [
        "a", "b", "c", "rc", "alpha", "beta", "pre", "preview", "post", "rev", "r", "dev",
    ];
    let mut rest = letters.as_str();
    while !rest.is_empty() {
        match words.iter().filter(|w| rest.starts_with(**w)).max_by_key(|w| w.len()) {
            Some(w) => rest = &rest[w.len()..],
            None => return bad(),
        }
    }
    if public.contains("..") || public.ends_with('.') {
        return bad();
    }
    if local.is_some_and(|l| {
        l.is_empty()
            || !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    }) {
        return bad();
    }
    Ok(())
}

/// Checks a Subresource Integrity string as npm records it: one `sha512-`
/// hash of 64 bytes in standard base64. Weaker algorithms (`sha1-`) are refused.
pub fn check_npm_integrity(s: &str) -> Result<(), String> {
    let Some(b64) = s.strip_prefix("sha512-") else {
        return Err(format!(
            "{s:?}: expected a \"sha512-<base64>\" integrity string (sha1 and other algorithms are refused)"
        ));
    };
    let valid = b64.len() == 88
        && b64.ends_with("==")
        && b64[..86].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        // The last data character holds 2 bits: its low 4 bits must be zero.
        && b"AQgw".contains(&b64.as_bytes()[85]);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{s:?}: malformed sha512 integrity (expected 88 base64 characters)"
        ))
    }
}

impl LaunchPin {
    pub(crate) fn validate(&self, key: &str, line: Option<usize>, errs: &mut Vec<ConfigError>) {
        let mut push = |k: &str, msg: String| errs.push(err_at(&format!("{key}.pin{k}"), line, msg));
        if self.executable.is_none() && self.npm.is_none() && self.pypi.is_none() {
            push("", "set at least one of executable, npm or pypi".into());
        }
        if let Some(e) = &self.executable
            && let Err(m) = check_sha256_pin(e)
        {
            push(".executable", m);
        }
        if let Some(n) = &self.npm {
            let checks = [
                (".npm.package", check_npm_name(&n.package)),
                (".npm.version", check_exact_semver(&n.version)),
                (".npm.integrity", check_npm_integrity(&n.integrity)),
                (".npm.tree", check_sha256_pin(&n.tree)),
            ];
            for (k, r) in checks {
                if let Err(m) = r {
                    push(k, m);
                }
            }
            if !n.prefix.is_absolute() {
                push(".npm.prefix", format!("{:?} must be an absolute path", n.prefix));
            }
        }
        if let Some(p) = &self.pypi {
            let checks = [
                (".pypi.package", check_pypi_name(&p.package)),
                (".pypi.version", check_exact_pep440(&p.version)),
                (".pypi.wheel", check_sha256_pin(&p.wheel)),
                (".pypi.tree", check_sha256_pin(&p.tree)),
            ];
            for (k, r) in checks {
                if let Err(m) = r {
                    push(k, m);
                }
            }
            if !p.venv.is_absolute() {
                push(".pypi.venv", format!("{:?} must be an absolute path", p.venv));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_semver_only() {
        for ok in [
            "1.2.3",
            "0.0.0",
            "2026.8.31",
            "1.2.3-rc.1",
            "1.2.3+build.5",
            "1.0.0-alpha-1",
        ] {
            assert!(check_exact_semver(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "latest",
            "next",
            "^1.2.3",
            "~1.2.3",
            ">=1.2.3",
            "1.2",
            "1",
            "1.x",
            "1.2.x",
            "*",
            "",
            "1.2.3 - 2.0.0",
            "1.2.3 || 2.0.0",
            "=1.2.3",
            "v1.2.3",
            "01.2.3",
            "1.2.3-",
            "1.2.3-a..b",
            "1.2.3.4",
        ] {
            assert!(check_exact_semver(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn exact_pep440_only() {
        for ok in [
            "1.2.3",
            "2.0.0rc1",
            "1.0.post1",
            "1.0.dev3",
            "1!2.0",
            "1.0+local.7",
            "2026.1",
        ] {
            assert!(check_exact_pep440(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "latest", "==1.2.3", ">=1.0", "~=1.0", "1.*", "1.0,<2", "", "x1", "1..2", "1.0+", "1.0 ",
        ] {
            assert!(check_exact_pep440(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn integrity_strings() {
        let good = "sha512-kKaFkyAh6oipvc9+EAbJ552JafnMnOq5nzmzWkp1jJdBhTAAGpmIpWihUG1+rfNhmEFM98gUZDdCHCDD4v6a7Q==";
        assert!(check_npm_integrity(good).is_ok());
        for bad in [
            "sha1-abc=",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "sha512-",
            "sha512-kKaFkyAh6oipvc9+EAbJ552JafnMnOq5nzmzWkp1jJdBhTAAGpmIpWihUG1+rfNhmEFM98gUZDdCHCDD4v6a7Q=",
            "sha512-kKaFkyAh6oipvc9+EAbJ552JafnMnOq5nzmzWkp1jJdBhTAAGpmIpWihUG1+rfNhmEFM98gUZDdCHCDD4v6a7R==",
            "sha512-kKaFkyAh6oipvc9+EAbJ552JafnMnOq5nzmzWkp1jJdBhTAAGpmIpWihUG1+rfNhmEFM98gUZDdCHCDD4v6a7Q== sha1-x",
            "SHA512-kKaFkyAh6oipvc9+EAbJ552JafnMnOq5nzmzWkp1jJdBhTAAGpmIpWihUG1+rfNhmEFM98gUZDdCHCDD4v6a7Q==",
        ] {
            assert!(check_npm_integrity(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_and_digests() {
        assert!(check_npm_name("@modelcontextprotocol/server-filesystem").is_ok());
        assert!(check_npm_name("left-pad").is_ok());
        for bad in ["", "@scope", "@/x", "Upper", "../x", ".hidden", "a b", "@a/b/c"] {
            assert!(check_npm_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_pypi_name("mcp-server-fetch").is_ok());
        assert!(check_pypi_name("-x").is_err());
        assert!(check_sha256_pin(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_sha256_pin(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(check_sha256_pin(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(check_sha256_pin("sha256:abc").is_err());
    }
}
