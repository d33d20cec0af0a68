//! Supply-chain pins of launched stdio servers (P1) and the inventory (P2).
//!
//! [`verify_launch`] runs before every start of a pinned server: the SHA-256 of
//! the resolved executable, an npm install (version, lockfile integrity, tree
//! digest) and a PyPI install (version, every RECORD hash, digest) must match
//! the pin in the configuration. It reads files only (no subprocess, no
//! network), never follows a symlink out of an install, refuses FIFOs and
//! devices, and is bounded by [`Limits`]. Call it from a blocking thread.
//!
//! See docs/supply-chain.md.

use std::fmt;
use std::path::{Path, PathBuf};

use palisade_config::StdioConfig;

pub mod edit;
mod fsutil;
pub mod inventory;
pub mod npm;
pub mod pypi;
mod tree;

pub use fsutil::sha256;
pub use tree::{Limits, TreeSummary, tree_digest};

/// `PATH` for launched servers that declare none (the supervisor's default).
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why a launch was refused, or a pin could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The install differs from the pin.
    #[error("{0}")]
    Mismatch(String),
    /// What the pin names is not there.
    #[error("{0}")]
    Missing(String),
    /// The install holds something no install should (a symlink out of it, a FIFO, a loop).
    #[error("refused: {0}")]
    Hostile(String),
    /// The install is larger than the bounds of a check.
    #[error("limit: {0}")]
    Limit(String),
    /// A file could not be read.
    #[error("{0}")]
    Io(String),
    /// The pin itself is malformed (normally caught when the configuration loads).
    #[error("invalid pin: {0}")]
    Invalid(String),
    /// `integrity.require_launch_pins` is set and the server has no pin.
    #[error("the server has no pin and integrity.require_launch_pins is set")]
    Unpinned,
}

/// What a successful check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// One item per pin kind: `executable:/usr/bin/node`, `npm:@scope/pkg@1.2.3`, `pypi:pkg@1.0`.
    pub items: Vec<String>,
}

impl Verified {
    /// The items joined by `, `.
    pub fn summary(&self) -> String {
        self.items.join(", ")
    }
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Checks every pin of a stdio server before it is launched: `Ok(None)` when
/// it has no pin, `Ok(Some(_))` when every pin matches, `Err` with the reason
/// otherwise (the server must then not be started). Blocking; bounded by
/// [`Limits::default`].
pub fn verify_launch(cfg: &StdioConfig) -> Result<Option<Verified>, PinError> {
    verify_launch_with(cfg, &Limits::default())
}

/// [`verify_launch`] with explicit bounds.
pub fn verify_launch_with(cfg: &StdioConfig, limits: &Limits) -> Result<Option<Verified>, PinError> {
    let Some(pin) = &cfg.pin else { return Ok(None) };
    if pin.executable.is_none() && pin.npm.is_none() && pin.pypi.is_none() {
        return Err(PinError::Invalid(
            "the pin names nothing (set executable, npm or pypi)".into(),
        ));
    }
    let mut items = Vec::new();
    if let Some(want) = &pin.executable {
        palisade_config::check_sha256_pin(want).map_err(PinError::Invalid)?;
        let (path, got) = executable_digest(cfg, limits)?;
        if &got != want {
            return Err(PinError::Mismatch(format!(
                "executable {}: SHA-256 is {}, the pin is {}",
                path.display(),
                npm::short_digest(&got),
                npm::short_digest(want)
            )));
        }
        items.push(format!("executable:{}", path.display()));
    }
    if let Some(n) = &pin.npm {
        items.push(npm::verify(n, limits)?);
    }
    if let Some(p) = &pin.pypi {
        items.push(pypi::verify(p, limits)?);
    }
    Ok(Some(Verified { items }))
}

/// The policy of `integrity.require_launch_pins`: with `require_launch_pins`
/// an unpinned server is refused ([`PinError::Unpinned`]); otherwise this is
/// [`verify_launch`]. The supervisor can call this before every start instead
/// of `verify_launch`.
pub fn check_launch(cfg: &StdioConfig, require_launch_pins: bool) -> Result<Option<Verified>, PinError> {
    if cfg.pin.is_none() {
        return if require_launch_pins {
            Err(PinError::Unpinned)
        } else {
            Ok(None)
        };
    }
    verify_launch(cfg)
}

/// The file `cfg.command` resolves to, as the supervisor launches it: a name
/// without `/` is looked up in the server's `PATH` (its `env.PATH`, else the
/// gateway's own when `env_passthrough` lists `PATH`, else [`SAFE_PATH`]);
/// relative paths are taken from `cwd`. Symlinks are resolved.
pub fn resolve_command(cfg: &StdioConfig) -> Result<PathBuf, PinError> {
    use std::os::unix::fs::PermissionsExt;
    let base = match &cfg.cwd {
        Some(d) => d.clone(),
        None => std::env::current_dir().map_err(|e| PinError::Io(format!("current folder: {e}")))?,
    };
    let cmd = Path::new(&cfg.command);
    let candidate = if cfg.command.contains('/') {
        Some(base.join(cmd))
    } else {
        let path_var = match cfg.env.get("PATH") {
            Some(p) => p.clone(),
            None if cfg.env_passthrough.iter().any(|k| k == "PATH") => {
                std::env::var("PATH").unwrap_or_else(|_| SAFE_PATH.to_owned())
            }
            None => SAFE_PATH.to_owned(),
        };
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| base.join(d).join(cmd))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    };
    let Some(p) = candidate else {
        return Err(PinError::Missing(format!(
            "command {:?} is not found in the server's PATH",
            cfg.command
        )));
    };
    std::fs::canonicalize(&p).map_err(|e| PinError::Missing(format!("command {}: {e}", p.display())))
}

/// The resolved command and its `sha256:<hex>`.
pub fn executable_digest(cfg: &StdioConfig, limits: &Limits) -> Result<(PathBuf, String), PinError> {
    let path = resolve_command(cfg)?;
    let (d, _, _) = fsutil::hash_file(&path, fsutil::Algo::Sha256, limits.max_file_bytes.max(1 << 30))?;
    Ok((path, fsutil::sha256_pin(&d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::{Config, LaunchPin, Transport};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn stdio(text: &str) -> StdioConfig {
        let c = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        match c.upstreams.into_values().next().unwrap().into_inner().transport {
            Transport::Stdio(s) => s,
            Transport::Http(_) => unreachable!(),
        }
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("server.sh");
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn executable_pin_matches_and_detects_change() {
        let t = tempfile::tempdir().unwrap();
        let p = script(t.path(), "#!/bin/sh\necho hi\n");
        let want = format!("sha256:{}", hex::encode(sha256(b"#!/bin/sh\necho hi\n")));
        let mut cfg = stdio(&format!(
            "[upstreams.s]\ntransport = \"stdio\"\ncommand = \"server.sh\"\nenv = {{ PATH = \"{}\" }}\n[upstreams.s.pin]\nexecutable = \"{want}\"\n",
            t.path().display()
        ));
        let v = verify_launch(&cfg).unwrap().unwrap();
        assert_eq!(
            v.items,
            vec![format!("executable:{}", fs::canonicalize(&p).unwrap().display())]
        );
        fs::write(&p, "#!/bin/sh\necho evil\n").unwrap();
        let e = verify_launch(&cfg).unwrap_err();
        assert!(matches!(e, PinError::Mismatch(_)), "{e}");
        assert!(
            e.to_string().contains("server.sh") && e.to_string().contains("SHA-256"),
            "{e}"
        );
        // Relative to cwd.
        fs::write(&p, "#!/bin/sh\necho hi\n").unwrap();
        cfg.command = "./server.sh".into();
        cfg.env.clear();
        cfg.cwd = Some(t.path().to_path_buf());
        assert!(verify_launch(&cfg).unwrap().is_some());
        // Not found in the default PATH.
        cfg.command = "server.sh".into();
        assert!(matches!(verify_launch(&cfg).unwrap_err(), PinError::Missing(_)));
    }

    #[test]
    fn unpinned_and_required() {
        let cfg = stdio("[upstreams.s]\ntransport = \"stdio\"\ncommand = \"true\"\n");
        assert_eq!(verify_launch(&cfg).unwrap(), None);
        assert_eq!(check_launch(&cfg, false).unwrap(), None);
        assert_eq!(check_launch(&cfg, true).unwrap_err(), PinError::Unpinned);
        let mut pinned = cfg.clone();
        pinned.pin = Some(LaunchPin::default());
        assert!(matches!(verify_launch(&pinned).unwrap_err(), PinError::Invalid(_)));
    }

    #[test]
    fn malformed_pins_are_config_errors_naming_the_key() {
        let base = "[upstreams.s]\ntransport = \"stdio\"\ncommand = \"node\"\n";
        let cases = [
            ("[upstreams.s.pin]\n", "upstreams.s.pin"),
            (
                "[upstreams.s.pin]\nexecutable = \"md5:abc\"\n",
                "upstreams.s.pin.executable",
            ),
            (
                "[upstreams.s.pin.npm]\npackage = \"x\"\nversion = \"latest\"\nintegrity = \"sha512-AAAA\"\nprefix = \"rel\"\ntree = \"sha256:00\"\n",
                "upstreams.s.pin.npm.version",
            ),
            (
                "[upstreams.s.pin.npm]\npackage = \"x\"\nversion = \"^1.2.3\"\nintegrity = \"sha1-AAAA\"\nprefix = \"/p\"\ntree = \"sha256:00\"\n",
                "upstreams.s.pin.npm.integrity",
            ),
            (
                "[upstreams.s.pin.pypi]\npackage = \"x\"\nversion = \">=1\"\nwheel = \"sha256:00\"\nvenv = \"/v\"\ntree = \"sha256:00\"\n",
                "upstreams.s.pin.pypi.version",
            ),
        ];
        for (extra, key) in cases {
            let errs = Config::from_toml(&format!("{base}{extra}")).unwrap_err();
            assert!(errs.0.iter().any(|e| e.key == key), "{key} not named in {errs}");
        }
        let errs = Config::from_toml(&format!(
            "{base}[upstreams.s.pin.npm]\npackage = \"x\"\nversion = \"1.0.0\"\nintegrity = \"sha512-AAAA\"\nprefix = \"rel\"\ntree = \"sha256:00\"\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "upstreams.s.pin.npm.integrity",
            "upstreams.s.pin.npm.prefix",
            "upstreams.s.pin.npm.tree",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        // Unknown keys inside the pin are refused.
        assert!(
            Config::from_toml(&format!(
                "{base}[upstreams.s.pin]\nexecutable = \"sha256:{}\"\nsha1 = \"x\"\n",
                "0".repeat(64)
            ))
            .is_err()
        );
    }
}
