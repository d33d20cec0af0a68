//! The seccomp profile: a deny-list of syscall families an MCP server has no
//! business calling. Denied calls fail with `EPERM` (the process sees an
//! ordinary error and keeps serving); `clone3` and `io_uring_setup` fail with
//! `ENOSYS` so that libc and libuv fall back to calls the filter can inspect.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Syscalls denied outright, by family (the list docs/sandbox.md documents).
pub const DENIED: &[(&str, &[(&str, i64)])] = &[
    (
        "process tracing and memory access",
        &[
            ("ptrace", libc::SYS_ptrace),
            ("process_vm_readv", libc::SYS_process_vm_readv),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("kcmp", libc::SYS_kcmp),
            ("pidfd_getfd", libc::SYS_pidfd_getfd),
        ],
    ),
    (
        "mounts and namespaces",
        &[
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("pivot_root", libc::SYS_pivot_root),
            ("chroot", libc::SYS_chroot),
            ("unshare", libc::SYS_unshare),
            ("setns", libc::SYS_setns),
            ("open_tree", libc::SYS_open_tree),
            ("move_mount", libc::SYS_move_mount),
            ("fsopen", libc::SYS_fsopen),
            ("fsconfig", libc::SYS_fsconfig),
            ("fsmount", libc::SYS_fsmount),
            ("fspick", libc::SYS_fspick),
            ("mount_setattr", libc::SYS_mount_setattr),
        ],
    ),
    (
        "kernel modules and kexec",
        &[
            ("init_module", libc::SYS_init_module),
            ("finit_module", libc::SYS_finit_module),
            ("delete_module", libc::SYS_delete_module),
            ("kexec_load", libc::SYS_kexec_load),
            ("kexec_file_load", libc::SYS_kexec_file_load),
            ("reboot", libc::SYS_reboot),
        ],
    ),
    (
        "kernel keyring",
        &[
            ("keyctl", libc::SYS_keyctl),
            ("add_key", libc::SYS_add_key),
            ("request_key", libc::SYS_request_key),
        ],
    ),
    (
        "bpf, perf and tracing",
        &[
            ("bpf", libc::SYS_bpf),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("fanotify_init", libc::SYS_fanotify_init),
            ("syslog", libc::SYS_syslog),
            ("acct", libc::SYS_acct),
        ],
    ),
    (
        "clock, swap and system state",
        &[
            ("settimeofday", libc::SYS_settimeofday),
            ("clock_settime", libc::SYS_clock_settime),
            ("clock_adjtime", libc::SYS_clock_adjtime),
            ("adjtimex", libc::SYS_adjtimex),
            ("swapon", libc::SYS_swapon),
            ("swapoff", libc::SYS_swapoff),
            ("sethostname", libc::SYS_sethostname),
            ("setdomainname", libc::SYS_setdomainname),
            ("quotactl", libc::SYS_quotactl),
            ("vhangup", libc::SYS_vhangup),
        ],
    ),
    (
        "file handles (bypass path checks)",
        &[
            ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ],
    ),
    (
        "io_uring (bypasses seccomp)",
        &[
            ("io_uring_enter", libc::SYS_io_uring_enter),
            ("io_uring_register", libc::SYS_io_uring_register),
        ],
    ),
];

#[cfg(target_arch = "x86_64")]
const ARCH_ONLY: &[(&str, i64)] = &[
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("modify_ldt", libc::SYS_modify_ldt),
];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_ONLY: &[(&str, i64)] = &[];

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e}"))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// Builds the two programs to install: the EPERM deny-list, then the ENOSYS list.
/// `udp` false also denies UDP sockets (used with the egress proxy, so that DNS
/// cannot carry data out).
pub fn programs(udp: bool) -> Result<Vec<BpfProgram>, String> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, calls) in DENIED {
        for (_, nr) in *calls {
            rules.insert(*nr, Vec::new());
        }
    }
    for (_, nr) in ARCH_ONLY {
        rules.insert(*nr, Vec::new());
    }
    // clone() that would create namespaces.
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|f| rule(vec![cond(0, SeccompCmpOp::MaskedEq(*f), *f)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // Raw and packet sockets; optionally datagram sockets on IP.
    let sock_type_mask = 0xf;
    let mut socket_rules = vec![
        rule(vec![cond(
            1,
            SeccompCmpOp::MaskedEq(sock_type_mask),
            libc::SOCK_RAW as u64,
        )?])?,
        rule(vec![cond(0, SeccompCmpOp::Eq, libc::AF_PACKET as u64)?])?,
    ];
    if !udp {
        for family in [libc::AF_INET, libc::AF_INET6] {
            socket_rules.push(rule(vec![
                cond(0, SeccompCmpOp::Eq, family as u64)?,
                cond(1, SeccompCmpOp::MaskedEq(sock_type_mask), libc::SOCK_DGRAM as u64)?,
            ])?);
        }
    }
    rules.insert(libc::SYS_socket, socket_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;

    let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, Vec::new());
    enosys.insert(libc::SYS_io_uring_setup, Vec::new());
    let fallback = SeccompFilter::new(
        enosys,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;

    let a: BpfProgram = deny.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    let b: BpfProgram = fallback
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    Ok(vec![a, b])
}

/// Names of every denied syscall, for `palisade sandbox check` and the docs.
pub fn denied_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = DENIED
        .iter()
        .flat_map(|(_, c)| c.iter().map(|(n, _)| *n))
        .chain(ARCH_ONLY.iter().map(|(n, _)| *n))
        .collect();
    v.push("clone (namespace flags)");
    v.push("socket (raw, packet)");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_profiles_compile() {
        for udp in [true, false] {
            let p = programs(udp).unwrap();
            assert_eq!(p.len(), 2);
            assert!(p[0].len() > 40);
        }
        assert!(denied_names().contains(&"ptrace"));
    }
}
