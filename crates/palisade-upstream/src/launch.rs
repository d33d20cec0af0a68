//! Building the command for a launched server: environment, sandbox (X1, X2),
//! and the process monitor (X3).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use palisade_config::{NetworkMode, SandboxMode, StdioConfig};
use palisade_sandbox::{Features, Launch, Prepared};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::stdio::SAFE_PATH;

/// How often a running server's resource use is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Counters of one supervised server, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct ProcessStats {
    pub starts: AtomicU64,
    pub exits: AtomicU64,
    /// Last exit code, or -1 when the process was killed by a signal.
    pub last_exit_code: AtomicI64,
    /// Last terminating signal, 0 if none.
    pub last_signal: AtomicI64,
    /// Processes killed for exceeding a limit.
    pub limit_kills: AtomicU64,
    /// Starts refused (sandbox unavailable or pin mismatch).
    pub refused: AtomicU64,
    /// CPU time of the current process tree, ms.
    pub cpu_ms: AtomicU64,
    /// Resident memory of the current process tree, bytes.
    pub rss_bytes: AtomicU64,
    /// Highest resident memory seen for this server, bytes.
    pub peak_rss_bytes: AtomicU64,
}

/// A folder only this server may write; its `HOME` and `TMPDIR`. Removed on drop.
#[derive(Debug)]
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(name: &str, owner: Option<(u32, u32)>) -> std::io::Result<PrivateDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .take(40)
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "palisade-{}-{safe}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(PrivateDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why a start was refused before any process existed.
#[derive(Debug)]
pub enum Refusal {
    Sandbox(String),
    Pin(String),
    Spawn(String),
}

/// Per-supervisor launch state, kept across restarts.
#[derive(Debug)]
pub struct Launcher {
    name: String,
    private: Option<PrivateDir>,
    egress_port: Option<u16>,
    stop: CancellationToken,
    degraded_reported: bool,
}

/// What a successful launch applied.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub sandbox: Vec<&'static str>,
    pub uid: Option<u32>,
}

impl Launcher {
    pub fn new(name: String, stop: CancellationToken) -> Launcher {
        Launcher {
            name,
            private: None,
            egress_port: None,
            stop,
            degraded_reported: false,
        }
    }

    /// Builds the command; the caller sets pipes and spawns it.
    pub async fn command(&mut self, cfg: &StdioConfig) -> Result<(Command, Applied), Refusal> {
        let path_var = cfg
            .env
            .get("PATH")
            .cloned()
            .or_else(|| {
                cfg.env_passthrough
                    .iter()
                    .any(|k| k == "PATH")
                    .then(|| std::env::var("PATH").ok())
                    .flatten()
            })
            .unwrap_or_else(|| SAFE_PATH.to_owned());
        let resolved = resolve_command(&cfg.command, &path_var, cfg.cwd.as_deref())
            .ok_or_else(|| Refusal::Spawn(format!("command {:?} not found", cfg.command)))?;

        let mut cmd = Command::new(&resolved);
        cmd.arg0(&cfg.command)
            .args(&cfg.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !cfg.env.contains_key("PATH") && !cfg.env_passthrough.iter().any(|k| k == "PATH") {
            cmd.env("PATH", SAFE_PATH);
        }
        for name in &cfg.env_passthrough {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        if let Some(dir) = &cfg.cwd {
            cmd.current_dir(dir);
        }
        let sb = &cfg.sandbox;
        if sb.mode == SandboxMode::Off {
            cmd.envs(&cfg.env);
            return Ok((cmd, Applied::default()));
        }

        if sb.network == NetworkMode::Egress && self.egress_port.is_none() {
            let rules = sb
                .egress
                .iter()
                .filter_map(|e| palisade_config::parse_egress(e).ok())
                .collect();
            let port = palisade_sandbox::egress::start(self.name.clone(), rules, self.stop.clone())
                .await
                .map_err(|e| Refusal::Sandbox(format!("egress proxy: {e}")))?;
            self.egress_port = Some(port);
        }
        let host = Features::get();
        // The private folder is created once the user is known.
        let owner = match palisade_sandbox::resolve_user(sb) {
            Ok((Some(uid), Some(gid))) => Some((uid, gid)),
            Ok(_) => None,
            Err(e) => return Err(Refusal::Sandbox(e.to_string())),
        };
        if self.private.is_none() {
            self.private = Some(
                PrivateDir::create(&self.name, owner).map_err(|e| Refusal::Sandbox(format!("private folder: {e}")))?,
            );
        }
        let private = self.private.as_ref().map(PrivateDir::path);
        let launch = Launch {
            command: &resolved,
            args: &cfg.args,
            cwd: cfg.cwd.as_deref(),
            private_dir: private,
            egress_port: self.egress_port,
        };
        let prepared: Prepared =
            palisade_sandbox::prepare(sb, &launch, host).map_err(|e| Refusal::Sandbox(e.to_string()))?;
        if !prepared.missing.is_empty() && !self.degraded_reported {
            self.degraded_reported = true;
            let missing: Vec<&str> = prepared.missing.iter().map(|m| m.as_str()).collect();
            tracing::warn!(
                target: "palisade::audit",
                event = "upstream.sandbox_degraded",
                upstream = %self.name,
                missing = %missing.join(","),
                "SANDBOX DEGRADED: this host lacks mechanisms the configuration asks for; the server starts with less confinement (sandbox.mode = \"best-effort\")"
            );
        }
        if prepared.uid.is_none() && host.root {
            tracing::warn!(upstream = %self.name, "stdio server runs as uid 0 without capabilities; set sandbox.user to an unprivileged user");
        }
        if let Some(p) = private {
            cmd.env("HOME", p).env("TMPDIR", p);
        }
        cmd.envs(prepared.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // Declared variables win over the defaults above.
        cmd.envs(&cfg.env);
        if let (Some(uid), Some(gid)) = (prepared.uid, prepared.gid) {
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: the hook only makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(prepared.hook());
        }
        Ok((
            cmd,
            Applied {
                sandbox: prepared.applied.clone(),
                uid: prepared.uid,
            },
        ))
    }
}

/// Resolves a command the way `execvp` would, against the server's `PATH`.
pub fn resolve_command(command: &str, path_var: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let p = Path::new(command);
        let full = match (p.is_absolute(), cwd) {
            (true, _) => p.to_path_buf(),
            (false, Some(d)) => d.join(p),
            (false, None) => std::env::current_dir().ok()?.join(p),
        };
        return is_exec(&full).then_some(full);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(command))
        .find(|p| is_exec(p))
}

/// Samples the process tree every second; kills the group when it exceeds
/// `memory_mb`. Ends when `done` is cancelled.
pub fn spawn_monitor(
    name: String,
    pid: u32,
    memory_mb: u64,
    stats: Arc<ProcessStats>,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let max = memory_mb.saturating_mul(1024 * 1024);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = done.cancelled() => return,
            }
            let Ok(Some(u)) = tokio::task::spawn_blocking(move || palisade_sandbox::monitor::sample(pid)).await else {
                continue;
            };
            stats.cpu_ms.store(u.cpu_ms, Ordering::Relaxed);
            stats.rss_bytes.store(u.rss_bytes, Ordering::Relaxed);
            stats.peak_rss_bytes.fetch_max(u.rss_bytes, Ordering::Relaxed);
            if max > 0 && u.rss_bytes > max {
                stats.limit_kills.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "palisade::audit",
                    event = "upstream.limit_exceeded",
                    upstream = %name,
                    pid,
                    limit = "memory",
                    value = u.rss_bytes / (1024 * 1024),
                    max = memory_mb,
                    "server exceeded its memory limit; process group killed"
                );
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert_eq!(
            resolve_command("sh", "/nonexistent:/bin", None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve_command("no-such-command-x", "/bin:/usr/bin", None), None);
        assert_eq!(resolve_command("/bin/sh", "", None), Some(PathBuf::from("/bin/sh")));
        let plain = std::env::temp_dir().join(format!("palisade-not-exec-{}", std::process::id()));
        std::fs::write(&plain, "x").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            resolve_command(plain.to_str().unwrap(), "", None),
            None,
            "not executable"
        );
        let _ = std::fs::remove_file(&plain);
        assert_eq!(resolve_command("sh", "", None), None);
    }
}
