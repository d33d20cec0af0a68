//! Which paths a server may touch: the configured lists plus, with
//! `auto_paths`, what its runtime needs to start.

use std::path::{Component, Path, PathBuf};

/// Read-only (and executable) system locations granted with `auto_paths`.
/// Missing ones are skipped. `/etc` is granted file by file: it holds
/// `shadow` and other secrets readable by root.
pub const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/passwd",
    "/etc/group",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/os-release",
    "/etc/mime.types",
    "/etc/python3",
    "/etc/node",
    "/proc",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
    "/dev/random",
];

/// Device files every process may read and write.
pub const DEVICES_RW: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// The resolved grant lists.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Grants {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
}

impl Grants {
    fn add_read(&mut self, p: PathBuf) {
        if !self.read.contains(&p) {
            self.read.push(p);
        }
    }
}

/// What the runtime needs, inferred from the command line.
pub fn inferred(command: &Path, args: &[String], cwd: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut push = |p: PathBuf| {
        if acceptable(&p) && !out.contains(&p) {
            out.push(p);
        }
    };
    // The command's install prefix: for .../bin/x the folder above bin/,
    // for both the path as named and the file it resolves to (a venv's
    // python is a link into the interpreter's own prefix).
    let mut cmds = vec![command.to_path_buf()];
    if let Ok(c) = command.canonicalize() {
        cmds.push(c);
    }
    for c in cmds {
        if let Some(p) = install_prefix(&c) {
            push(p);
        }
    }
    for a in args {
        let p = Path::new(a);
        if a.starts_with('-') || a.is_empty() {
            continue;
        }
        let full = match (p.is_absolute(), cwd) {
            (true, _) => p.to_path_buf(),
            (false, Some(d)) => d.join(p),
            (false, None) => match std::env::current_dir() {
                Ok(d) => d.join(p),
                Err(_) => continue,
            },
        };
        if !full.is_file() {
            continue;
        }
        if let Some(root) = package_root(&full) {
            push(root);
        }
    }
    out
}

/// Whether a path may be granted automatically: never `/` or a top-level folder
/// such as `/home` or `/root`, which would expose every user's files.
fn acceptable(p: &Path) -> bool {
    p.is_absolute() && p.components().filter(|c| matches!(c, Component::Normal(_))).count() >= 2
}

fn install_prefix(cmd: &Path) -> Option<PathBuf> {
    let dir = cmd.parent()?;
    if dir.file_name().is_some_and(|n| n == "bin" || n == "sbin") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

/// For a script inside `node_modules`, the folder holding the outermost
/// `node_modules` (the script's dependencies live there). Otherwise the nearest
/// ancestor with a project marker, else the script's own folder.
fn package_root(file: &Path) -> Option<PathBuf> {
    let mut acc = PathBuf::new();
    for c in file.components() {
        if c.as_os_str() == "node_modules" {
            return Some(acc);
        }
        acc.push(c);
    }
    let dir = file.parent()?;
    for anc in dir.ancestors().take(4) {
        if ["pyproject.toml", "package.json", ".venv", "Cargo.toml"]
            .iter()
            .any(|m| anc.join(m).exists())
            && acceptable(anc)
        {
            return Some(anc.to_path_buf());
        }
    }
    Some(dir.to_path_buf())
}

/// Combines configured paths, inferred paths and the private folder.
pub fn grants(
    read_only: &[PathBuf],
    read_write: &[PathBuf],
    auto: bool,
    command: &Path,
    args: &[String],
    cwd: Option<&Path>,
    private: Option<&Path>,
) -> Grants {
    let mut g = Grants::default();
    if auto {
        for p in SYSTEM_READ {
            let p = Path::new(p);
            if p.exists() {
                g.add_read(p.to_path_buf());
            }
        }
        for p in inferred(command, args, cwd) {
            g.add_read(p);
        }
        if let Some(d) = cwd.filter(|d| acceptable(d)) {
            g.add_read(d.to_path_buf());
        }
        for d in DEVICES_RW {
            if Path::new(d).exists() {
                g.write.push(PathBuf::from(d));
            }
        }
    }
    for p in read_only {
        g.add_read(p.clone());
    }
    g.write.extend(read_write.iter().cloned());
    if let Some(p) = private {
        g.write.push(p.to_path_buf());
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_scripts_get_their_node_modules_root() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("app/node_modules/@x/srv/dist/index.js");
        std::fs::create_dir_all(script.parent().unwrap()).unwrap();
        std::fs::write(&script, "").unwrap();
        let got = inferred(
            Path::new("/usr/bin/node"),
            &[script.display().to_string(), "--flag".into()],
            None,
        );
        assert_eq!(got, vec![d.path().join("app")], "/usr is a system path, not inferred");
    }

    #[test]
    fn never_grants_the_root_or_a_top_level_folder() {
        assert!(!acceptable(Path::new("/")));
        assert!(!acceptable(Path::new("/root")));
        assert!(!acceptable(Path::new("/home")));
        assert!(acceptable(Path::new("/home/alice")));
        let got = inferred(Path::new("/x"), &["/etc/hostname".into()], None);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn directories_and_missing_files_are_not_granted() {
        let got = inferred(
            Path::new("/usr/bin/python3"),
            &["/home/nobody/missing.py".into(), "/tmp".into()],
            None,
        );
        assert!(got.is_empty(), "{got:?}");
    }
}
