//! What this host supports, probed once.

use std::sync::OnceLock;

/// One sandbox mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    /// Landlock filesystem rules.
    Landlock,
    /// Landlock TCP rules (ABI 4): no connect/bind except where allowed.
    LandlockNet,
    /// Landlock scoping of abstract Unix sockets and signals (ABI 6).
    LandlockScope,
    /// seccomp-bpf filters.
    Seccomp,
    /// Unprivileged user namespaces (needed for the network namespace and
    /// for counting processes per server).
    UserNamespace,
    /// A network namespace with loopback only.
    NetworkNamespace,
    /// Switching to an unprivileged user (needs root).
    SetUser,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Landlock => "landlock",
            Mechanism::LandlockNet => "landlock_net",
            Mechanism::LandlockScope => "landlock_scope",
            Mechanism::Seccomp => "seccomp",
            Mechanism::UserNamespace => "user_namespace",
            Mechanism::NetworkNamespace => "network_namespace",
            Mechanism::SetUser => "set_user",
        }
    }
}

/// What the host supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// Landlock ABI version, 0 when unavailable.
    pub landlock_abi: i32,
    pub seccomp: bool,
    pub user_namespace: bool,
    pub network_namespace: bool,
    pub root: bool,
    /// Highest capability number the kernel knows.
    pub last_cap: u32,
    pub kernel: String,
}

impl Features {
    /// Probed once per process. In debug builds, `PALISADE_SANDBOX_PRETEND_MISSING`
    /// (comma-separated mechanism names) hides mechanisms, so tests can exercise
    /// the refusal and best-effort paths on a capable host. Release builds ignore it.
    pub fn get() -> &'static Features {
        static F: OnceLock<Features> = OnceLock::new();
        F.get_or_init(|| {
            let mut f = Features::probe();
            if cfg!(debug_assertions)
                && let Ok(v) = std::env::var("PALISADE_SANDBOX_PRETEND_MISSING")
            {
                f.pretend_missing(&v);
            }
            f
        })
    }

    fn pretend_missing(&mut self, list: &str) {
        for m in list.split(',').map(str::trim) {
            match m {
                "landlock" => self.landlock_abi = 0,
                "seccomp" => self.seccomp = false,
                "user_namespace" => {
                    self.user_namespace = false;
                    self.network_namespace = self.root && self.network_namespace;
                }
                "network_namespace" => self.network_namespace = false,
                _ => {}
            }
        }
    }

    /// Probes the running kernel.
    pub fn probe() -> Features {
        let landlock_abi = landlock_abi();
        let seccomp = seccomp_available();
        let root = unsafe { libc::geteuid() } == 0;
        let user_namespace = probe_unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET);
        let network_namespace = user_namespace || (root && probe_unshare(libc::CLONE_NEWNET));
        Features {
            landlock_abi,
            seccomp,
            user_namespace,
            network_namespace,
            root,
            last_cap: last_cap(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }

    pub fn has(&self, m: Mechanism) -> bool {
        match m {
            Mechanism::Landlock => self.landlock_abi >= 1,
            Mechanism::LandlockNet => self.landlock_abi >= 4,
            Mechanism::LandlockScope => self.landlock_abi >= 6,
            Mechanism::Seccomp => self.seccomp,
            Mechanism::UserNamespace => self.user_namespace,
            Mechanism::NetworkNamespace => self.network_namespace,
            Mechanism::SetUser => self.root,
        }
    }
}

fn landlock_abi() -> i32 {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    i32::try_from(r).unwrap_or(0).max(0)
}

fn seccomp_available() -> bool {
    // PR_GET_SECCOMP answers 0 (or 2 when already filtered) where seccomp is built in.
    let r = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    r >= 0 && std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists()
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Whether a child can `unshare(flags)`: tried in a forked child that only
/// makes the system call and exits (safe in a threaded process).
fn probe_unshare(flags: libc::c_int) -> bool {
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return false;
        }
        if pid == 0 {
            let ok = libc::unshare(flags) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) != pid {
            return false;
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}
