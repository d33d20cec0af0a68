//! `[upstreams.NAME.sandbox]`: confinement of a launched stdio server (X1, X2).

use std::path::PathBuf;

use serde::Deserialize;

use crate::{ConfigError, err_at};

/// How a launched server is confined. The default is `strict`: every
/// mechanism must be available or the server does not start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    #[serde(default)]
    pub mode: SandboxMode,
    /// Paths the server may read and execute (directories include their contents).
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// Paths the server may read, write, create and delete in.
    #[serde(default)]
    pub read_write: Vec<PathBuf>,
    /// Grant read-only access to what a runtime needs to start: system
    /// libraries and binaries, a few files of `/etc`, `/proc`, the command's
    /// install prefix and the package root of path arguments.
    #[serde(default = "yes")]
    pub auto_paths: bool,
    /// `none` (a network namespace with loopback only), `egress` (TCP only to
    /// the built-in filtering proxy, which admits the `egress` list) or `host`.
    #[serde(default)]
    pub network: NetworkMode,
    /// `host:port` pairs the server may reach through the proxy (`network = "egress"`).
    /// A leading `*.` admits subdomains.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Unprivileged user (name or numeric uid) to run as when the gateway runs as root.
    #[serde(default)]
    pub user: Option<String>,
    /// Group (name or gid); default: the user's primary group.
    #[serde(default)]
    pub group: Option<String>,
    /// The seccomp filter: `default` (denies the families listed in docs/sandbox.md) or `off`.
    #[serde(default)]
    pub seccomp: SeccompProfile,
    #[serde(default)]
    pub limits: SandboxLimits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            mode: SandboxMode::default(),
            read_only: Vec::new(),
            read_write: Vec::new(),
            auto_paths: true,
            network: NetworkMode::default(),
            egress: Vec::new(),
            user: None,
            group: None,
            seccomp: SeccompProfile::default(),
            limits: SandboxLimits::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// What happens when the host lacks a sandbox mechanism.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// Refuse to start unless every mechanism is in force.
    #[default]
    Strict,
    /// Start with what the host supports; warn and audit what is missing.
    BestEffort,
    /// No sandbox beyond the cleared environment and the process group.
    Off,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Strict => "strict",
            SandboxMode::BestEffort => "best-effort",
            SandboxMode::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    #[default]
    None,
    Egress,
    Host,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Egress => "egress",
            NetworkMode::Host => "host",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompProfile {
    #[default]
    Default,
    Off,
}

/// Resource limits; 0 means unlimited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxLimits {
    /// RLIMIT_AS in MiB. Off by default: JavaScript and WebAssembly runtimes
    /// reserve far more address space than they use; `memory_mb` bounds use.
    #[serde(default)]
    pub address_space_mb: u64,
    /// Resident memory of the whole process group, sampled; over it, the group is killed.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// RLIMIT_CPU in seconds of CPU time per process.
    #[serde(default)]
    pub cpu_seconds: u64,
    /// RLIMIT_NOFILE.
    #[serde(default = "default_open_files")]
    pub open_files: u64,
    /// RLIMIT_NPROC: processes and threads (counted inside the server's own user namespace).
    #[serde(default = "default_processes")]
    pub processes: u64,
    /// RLIMIT_FSIZE in MiB.
    #[serde(default = "default_file_size_mb")]
    pub file_size_mb: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            address_space_mb: 0,
            memory_mb: default_memory_mb(),
            cpu_seconds: 0,
            open_files: default_open_files(),
            processes: default_processes(),
            file_size_mb: default_file_size_mb(),
        }
    }
}

fn default_memory_mb() -> u64 {
    2048
}
fn default_open_files() -> u64 {
    1024
}
fn default_processes() -> u64 {
    256
}
fn default_file_size_mb() -> u64 {
    1024
}

impl SandboxConfig {
    pub(crate) fn validate(&self, key: &str, line: Option<usize>, errs: &mut Vec<ConfigError>) {
        for p in self.read_only.iter().chain(&self.read_write) {
            if !p.is_absolute() {
                errs.push(err_at(
                    &format!("{key}.sandbox"),
                    line,
                    format!("path {p:?} must be absolute"),
                ));
            }
        }
        for e in &self.egress {
            if let Err(why) = parse_egress(e) {
                errs.push(err_at(&format!("{key}.sandbox.egress"), line, why));
            }
        }
        if !self.egress.is_empty() && self.network != NetworkMode::Egress {
            errs.push(err_at(
                &format!("{key}.sandbox.egress"),
                line,
                "an egress list needs network = \"egress\"".into(),
            ));
        }
        if self.limits.processes == 1 {
            errs.push(err_at(
                &format!("{key}.sandbox.limits.processes"),
                line,
                "must be 0 (unlimited) or at least 2".into(),
            ));
        }
        if self.limits.open_files != 0 && self.limits.open_files < 16 {
            errs.push(err_at(
                &format!("{key}.sandbox.limits.open_files"),
                line,
                "must be 0 (unlimited) or at least 16".into(),
            ));
        }
    }
}

/// One egress rule: a host (exact, or `*.` for subdomains) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    pub host: String,
    pub subdomains: bool,
    pub port: u16,
}

impl EgressRule {
    /// Whether `host:port` (host already lower-cased, without a trailing dot) is admitted.
    pub fn admits(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        if self.subdomains {
            host.len() > self.host.len() + 1
                && host.ends_with(self.host.as_str())
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// Parses `host:port`, `[v6]:port` or `*.domain:port`.
pub fn parse_egress(s: &str) -> Result<EgressRule, String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{s:?}: expected [address]:port"))?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected host:port"))?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: port must be 1-65535"))?;
    let (host, subdomains) = match host.strip_prefix("*.") {
        Some(h) => (h, true),
        None => (host, false),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_');
    if host.is_empty() || host.len() > 253 || !host.chars().all(ok_char) || host.contains('*') {
        return Err(format!("{s:?}: invalid host"));
    }
    Ok(EgressRule { host, subdomains, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_parse_and_match_exactly() {
        let r = parse_egress("api.github.com:443").unwrap();
        assert!(r.admits("api.github.com", 443));
        assert!(!r.admits("api.github.com", 80));
        assert!(!r.admits("evil-api.github.com", 443));
        let w = parse_egress("*.example.org:443").unwrap();
        assert!(w.admits("a.example.org", 443));
        assert!(!w.admits("example.org", 443));
        assert!(!w.admits("aexample.org", 443));
        assert!(parse_egress("[::1]:8080").unwrap().admits("::1", 8080));
        for bad in [
            "",
            "host",
            "host:0",
            "host:70000",
            ":443",
            "*.:443",
            "a b:1",
            "*.*.x:1",
            "h:-1",
        ] {
            assert!(parse_egress(bad).is_err(), "{bad:?} accepted");
        }
    }
}
