//! Confinement of launched stdio MCP servers on a plain Linux host (X1, X2).
//!
//! [`prepare`] does everything that may allocate or fail slowly in the parent:
//! it probes the host, resolves the path grants, builds the Landlock ruleset
//! and compiles the seccomp programs. [`Prepared::hook`] returns the code that
//! runs in the forked child before `exec`; it only makes system calls:
//!
//! 1. a new user namespace (and, for `network = "none"`, a network namespace
//!    whose loopback is brought up),
//! 2. rlimits (after the user namespace, so processes are counted per server),
//! 3. every capability dropped (bounding, ambient, effective, permitted),
//! 4. `no_new_privs`,
//! 5. the Landlock domain (files, TCP ports, abstract sockets and signals),
//! 6. the seccomp filters.
//!
//! The process group and the cleared environment are set by the supervisor.

pub mod egress;
pub mod features;
pub mod monitor;
pub mod paths;
pub mod seccomp;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr,
    Scope, path_beneath_rules,
};
use palisade_config::{NetworkMode, SandboxConfig, SandboxMode, SeccompProfile};

pub use features::{Features, Mechanism};
pub use paths::Grants;

/// Why a server was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxError {
    /// `strict` mode and the host lacks these mechanisms.
    Unsupported(Vec<Mechanism>),
    /// The configuration cannot be applied (unknown user, bad path, ...).
    Invalid(String),
}

impl std::fmt::Display for SandboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SandboxError::Unsupported(m) => {
                let names: Vec<&str> = m.iter().map(|m| m.as_str()).collect();
                write!(
                    f,
                    "sandbox mode is strict and this host lacks: {} (set sandbox.mode = \"best-effort\" to start anyway)",
                    names.join(", ")
                )
            }
            SandboxError::Invalid(s) => write!(f, "sandbox: {s}"),
        }
    }
}

impl std::error::Error for SandboxError {}

/// The command line being launched, as the supervisor resolved it.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The executable, resolved against `PATH`.
    pub command: &'a Path,
    pub args: &'a [String],
    pub cwd: Option<&'a Path>,
    /// A private writable folder (also the server's `HOME` and `TMPDIR`).
    pub private_dir: Option<&'a Path>,
    /// Port of the egress proxy on 127.0.0.1 (`network = "egress"`).
    pub egress_port: Option<u16>,
}

/// A sandbox ready to apply to one process.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Mechanisms that are configured but not in force (best-effort only).
    pub missing: Vec<Mechanism>,
    /// Mechanisms in force, for logs and the audit trail.
    pub applied: Vec<&'static str>,
    /// Switch to this user and group (the gateway runs as root).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Variables to add to the server's environment (proxy settings).
    pub env: Vec<(String, String)>,
    /// The filesystem grants.
    pub grants: Grants,
    child: Arc<ChildPlan>,
}

#[derive(Debug)]
struct ChildPlan {
    /// Resource limits set before the namespaces (all but RLIMIT_NPROC).
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// RLIMIT_NPROC, set inside the new user namespace so it counts this server only.
    nproc: Option<u64>,
    userns: Option<IdMaps>,
    netns: bool,
    drop_caps: bool,
    last_cap: u32,
    landlock: Option<OwnedFd>,
    seccomp: Vec<seccompiler::BpfProgram>,
}

#[derive(Debug)]
struct IdMaps {
    uid_map: CString,
    gid_map: CString,
}

impl Prepared {
    /// The code to run in the child between `fork` and `exec`
    /// (`CommandExt::pre_exec`). It only makes system calls.
    pub fn hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let plan = self.child.clone();
        move || {
            // SAFETY: runs in the forked child; only async-signal-safe calls.
            unsafe { apply(&plan) }
        }
    }
}

/// The mechanisms a configuration cannot do without: strict mode refuses to
/// start when one is missing, best-effort reports it. Landlock TCP rules under
/// a network namespace and Landlock scoping are added where the kernel has them.
pub fn required(cfg: &SandboxConfig) -> Vec<Mechanism> {
    let mut v = vec![Mechanism::Landlock, Mechanism::UserNamespace];
    if cfg.seccomp == SeccompProfile::Default {
        v.push(Mechanism::Seccomp);
    }
    match cfg.network {
        NetworkMode::None => v.push(Mechanism::NetworkNamespace),
        NetworkMode::Egress => v.push(Mechanism::LandlockNet),
        NetworkMode::Host => {}
    }
    v
}

/// Builds the sandbox for one launch. Strict mode fails with
/// [`SandboxError::Unsupported`] when a [`required`] mechanism is missing.
pub fn prepare(cfg: &SandboxConfig, launch: &Launch<'_>, host: &Features) -> Result<Prepared, SandboxError> {
    let missing: Vec<Mechanism> = required(cfg).into_iter().filter(|m| !host.has(*m)).collect();
    if cfg.mode == SandboxMode::Strict && !missing.is_empty() {
        return Err(SandboxError::Unsupported(missing));
    }
    let mut applied = Vec::new();

    // User switch.
    let (uid, gid) = resolve_user(cfg)?;
    if uid.is_some() && !host.root {
        let me = unsafe { libc::geteuid() };
        if uid != Some(me) {
            return Err(SandboxError::Invalid(
                "sandbox.user needs the gateway to run as root".into(),
            ));
        }
    }
    let target_uid = uid.unwrap_or_else(|| unsafe { libc::geteuid() });
    let target_gid = gid.unwrap_or_else(|| unsafe { libc::getegid() });

    // Namespaces.
    let userns = host.has(Mechanism::UserNamespace);
    let netns = cfg.network == NetworkMode::None && host.has(Mechanism::NetworkNamespace);
    if userns {
        applied.push("user_namespace");
    }
    if netns {
        applied.push("network_namespace");
    }
    let id_maps = if userns {
        Some(IdMaps {
            uid_map: CString::new(format!("{target_uid} {target_uid} 1"))
                .map_err(|e| SandboxError::Invalid(e.to_string()))?,
            gid_map: CString::new(format!("{target_gid} {target_gid} 1"))
                .map_err(|e| SandboxError::Invalid(e.to_string()))?,
        })
    } else {
        None
    };

    // Landlock.
    let grants = paths::grants(
        &cfg.read_only,
        &cfg.read_write,
        cfg.auto_paths,
        launch.command,
        launch.args,
        launch.cwd,
        launch.private_dir,
    );
    for p in cfg.read_only.iter().chain(&cfg.read_write) {
        if !p.exists() {
            return Err(SandboxError::Invalid(format!("path {} does not exist", p.display())));
        }
    }
    let landlock = if host.has(Mechanism::Landlock) {
        let net = cfg.network != NetworkMode::Host && host.has(Mechanism::LandlockNet);
        let scope = host.has(Mechanism::LandlockScope);
        applied.push("landlock");
        Some(build_landlock(
            host.landlock_abi,
            &grants,
            net,
            scope,
            launch.egress_port,
        )?)
    } else {
        None
    };

    // seccomp.
    let seccomp = if cfg.seccomp == SeccompProfile::Default && host.has(Mechanism::Seccomp) {
        applied.push("seccomp");
        seccomp::programs(cfg.network == NetworkMode::Host).map_err(SandboxError::Invalid)?
    } else {
        Vec::new()
    };

    // Resource limits.
    let l = &cfg.limits;
    let mib = |v: u64| v.saturating_mul(1024 * 1024);
    let mut rlimits = Vec::new();
    if l.address_space_mb > 0 {
        rlimits.push((libc::RLIMIT_AS, mib(l.address_space_mb)));
    }
    if l.cpu_seconds > 0 {
        rlimits.push((libc::RLIMIT_CPU, l.cpu_seconds));
    }
    if l.open_files > 0 {
        rlimits.push((libc::RLIMIT_NOFILE, l.open_files));
    }
    if l.file_size_mb > 0 {
        rlimits.push((libc::RLIMIT_FSIZE, mib(l.file_size_mb)));
    }
    rlimits.push((libc::RLIMIT_CORE, 0));
    // The kernel never applies RLIMIT_NPROC to uid 0, and outside a user
    // namespace it would count every process of the user.
    let nproc = (l.processes > 0 && userns).then_some(l.processes);
    applied.push("rlimits");
    applied.push("no_new_privs");
    applied.push("capabilities_dropped");

    let mut env = Vec::new();
    if let Some(port) = launch.egress_port {
        let url = format!("http://127.0.0.1:{port}");
        for k in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
            env.push((k.to_owned(), url.clone()));
        }
        env.push(("NO_PROXY".to_owned(), String::new()));
        env.push(("NODE_USE_ENV_PROXY".to_owned(), "1".to_owned()));
    }

    if uid.is_some() {
        applied.push("set_user");
    }
    Ok(Prepared {
        missing,
        applied,
        uid,
        gid: uid.map(|_| target_gid),
        env,
        grants,
        child: Arc::new(ChildPlan {
            rlimits,
            nproc,
            userns: id_maps,
            netns,
            drop_caps: true,
            last_cap: host.last_cap,
            landlock,
            seccomp,
        }),
    })
}

/// The uid and gid of `sandbox.user` / `sandbox.group`; `None` without a user.
pub fn resolve_user(cfg: &SandboxConfig) -> Result<(Option<u32>, Option<u32>), SandboxError> {
    let Some(name) = cfg.user.as_deref() else {
        return Ok((None, None));
    };
    let (uid, primary) = if let Ok(n) = name.parse::<u32>() {
        let u = nix::unistd::User::from_uid(n.into()).ok().flatten();
        (n, u.map(|u| u.gid.as_raw()).unwrap_or(n))
    } else {
        let u = nix::unistd::User::from_name(name)
            .map_err(|e| SandboxError::Invalid(format!("user {name:?}: {e}")))?
            .ok_or_else(|| SandboxError::Invalid(format!("unknown user {name:?}")))?;
        (u.uid.as_raw(), u.gid.as_raw())
    };
    if uid == 0 {
        return Err(SandboxError::Invalid("sandbox.user must not be root".into()));
    }
    let gid = match cfg.group.as_deref() {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g)
                .map_err(|e| SandboxError::Invalid(format!("group {g:?}: {e}")))?
                .ok_or_else(|| SandboxError::Invalid(format!("unknown group {g:?}")))?
                .gid
                .as_raw(),
        },
    };
    if gid == 0 {
        return Err(SandboxError::Invalid("sandbox.group must not be root".into()));
    }
    Ok((Some(uid), Some(gid)))
}

fn build_landlock(
    abi: i32,
    grants: &Grants,
    net: bool,
    scope: bool,
    egress_port: Option<u16>,
) -> Result<OwnedFd, SandboxError> {
    let abi = ABI::from(abi);
    let err = |e: landlock::RulesetError| SandboxError::Invalid(format!("landlock: {e}"));
    let mut rs = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?;
    if net {
        rs = rs
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(err)?;
    }
    if scope {
        rs = rs.scope(Scope::AbstractUnixSocket | Scope::Signal).map_err(err)?;
    }
    let mut created = rs.create().map_err(err)?;
    // Paths that vanished since they were listed are skipped, not fatal.
    let existing = |v: &[PathBuf]| -> Vec<PathBuf> { v.iter().filter(|p| p.exists()).cloned().collect() };
    created = created
        .add_rules(path_beneath_rules(existing(&grants.read), AccessFs::from_read(abi)))
        .map_err(err)?;
    created = created
        .add_rules(path_beneath_rules(existing(&grants.write), AccessFs::from_all(abi)))
        .map_err(err)?;
    if net && let Some(port) = egress_port {
        created = created
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let fd: Option<OwnedFd> = created.into();
    fd.ok_or_else(|| SandboxError::Invalid("landlock: no ruleset".into()))
}

// ---------------------------------------------------------------------------
// In the child, between fork and exec: system calls only.

unsafe fn apply(plan: &ChildPlan) -> io::Result<()> {
    unsafe {
        if let Some(maps) = &plan.userns {
            let mut flags = libc::CLONE_NEWUSER;
            if plan.netns {
                flags |= libc::CLONE_NEWNET;
            }
            check(libc::unshare(flags))?;
            // A uid change made the process non-dumpable, which leaves its
            // /proc files owned by root: the maps could not be written.
            check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))?;
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_file(c"/proc/self/uid_map", maps.uid_map.as_bytes())?;
            write_file(c"/proc/self/gid_map", maps.gid_map.as_bytes())?;
        } else if plan.netns {
            check(libc::unshare(libc::CLONE_NEWNET))?;
        }
        if plan.netns {
            loopback_up()?;
        }
        for (res, v) in &plan.rlimits {
            set_rlimit(*res, *v)?;
        }
        if let Some(n) = plan.nproc {
            set_rlimit(libc::RLIMIT_NPROC, n)?;
        }
        if plan.drop_caps {
            drop_capabilities(plan.last_cap)?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        if let Some(fd) = &plan.landlock {
            let r = libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32);
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for p in &plan.seccomp {
            if seccompiler::apply_filter(p).is_err() {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
    }
    Ok(())
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

unsafe fn set_rlimit(res: libc::__rlimit_resource_t, v: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: v,
        rlim_max: v,
    };
    check(unsafe { libc::setrlimit(res, &lim) })
}

unsafe fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = io::Error::last_os_error();
        libc::close(fd);
        if n < 0 || n as usize != data.len() {
            return Err(e);
        }
    }
    Ok(())
}

unsafe fn loopback_up() -> io::Result<()> {
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            let r2 = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
            let e = io::Error::last_os_error();
            libc::close(s);
            if r2 != 0 {
                return Err(e);
            }
            return Ok(());
        }
        let e = io::Error::last_os_error();
        libc::close(s);
        Err(e)
    }
}

const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

unsafe fn drop_capabilities(last_cap: u32) -> io::Result<()> {
    unsafe {
        // With CAP_SETPCAP (root, or inside the new user namespace): uid 0 gains
        // nothing on exec, and the bounding set is emptied.
        let bits = SECBIT_NOROOT
            | SECBIT_NOROOT_LOCKED
            | SECBIT_NO_SETUID_FIXUP
            | SECBIT_NO_SETUID_FIXUP_LOCKED
            | SECBIT_KEEP_CAPS_LOCKED
            | SECBIT_NO_CAP_AMBIENT_RAISE
            | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        let privileged = libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) == 0;
        if privileged {
            for cap in 0..=last_cap {
                check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0))?;
            }
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        let mut hdr = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        let r = libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr());
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One line per mechanism for `palisade sandbox check`.
pub fn describe(host: &Features) -> Vec<(&'static str, bool, String)> {
    let abi = host.landlock_abi;
    vec![
        (
            "landlock",
            host.has(Mechanism::Landlock),
            if abi > 0 {
                format!("ABI {abi}: filesystem rules")
            } else {
                "not available".into()
            },
        ),
        (
            "landlock_net",
            host.has(Mechanism::LandlockNet),
            "TCP connect/bind rules (ABI 4+), used for network = \"egress\"".into(),
        ),
        (
            "landlock_scope",
            host.has(Mechanism::LandlockScope),
            "abstract Unix socket and signal scoping (ABI 6+)".into(),
        ),
        (
            "seccomp",
            host.has(Mechanism::Seccomp),
            format!(
                "{} syscalls denied by the default profile",
                seccomp::denied_names().len()
            ),
        ),
        (
            "user_namespace",
            host.has(Mechanism::UserNamespace),
            "per-server user namespace (process limit counted per server)".into(),
        ),
        (
            "network_namespace",
            host.has(Mechanism::NetworkNamespace),
            "loopback-only network for network = \"none\"".into(),
        ),
        (
            "set_user",
            host.has(Mechanism::SetUser),
            if host.root {
                "running as root: sandbox.user switches to an unprivileged user".into()
            } else {
                "not root: servers run as the gateway's user".into()
            },
        ),
    ]
}

/// Whether `path` is inside any of `grants` (for tests and `inventory`).
pub fn is_granted(grants: &[PathBuf], path: &Path) -> bool {
    grants.iter().any(|g| path.starts_with(g))
}
