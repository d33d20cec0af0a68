//! The tree digest: one SHA-256 over every entry of an install folder.
//!
//! Entries are visited depth first with the names of each folder sorted by
//! their bytes, so the digest depends only on the tree. Each entry adds one
//! record to the outer hash (fields separated by NUL, which no path holds):
//!
//! - a folder: `D <path>`
//! - a file: `F <path> <x|-> <size> <sha256 of the contents>` (`x`: any execute bit)
//! - a symlink: `L <path> <target as written>`
//!
//! Symlinks are never followed; each must resolve (through any chain of
//! links) to something inside the root, or the tree is refused. FIFOs,
//! sockets and devices are refused. The walk is bounded by [`Limits`].

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{Context, SHA256};

use crate::PinError;
use crate::fsutil::{Algo, hash_file, kind_name};

/// Bounds on what one check may read.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Entries (files, folders, symlinks) in one tree.
    pub max_entries: u64,
    /// Bytes hashed in one tree.
    pub max_total_bytes: u64,
    /// Bytes of one file.
    pub max_file_bytes: u64,
    /// Folder nesting.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 200_000,
            max_total_bytes: 4 << 30,
            max_file_bytes: 512 << 20,
            max_depth: 64,
        }
    }
}

/// What a tree digest covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSummary {
    /// `sha256:<hex>`.
    pub digest: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

const HEADER: &[u8] = b"palisade-tree-v1\n";

/// Digest of every entry under `root` (which must be a real folder, not a symlink).
pub fn tree_digest(root: &Path, limits: &Limits) -> Result<TreeSummary, PinError> {
    let meta = fs::symlink_metadata(root).map_err(|e| PinError::Io(format!("cannot read {}: {e}", root.display())))?;
    if !meta.is_dir() {
        return Err(PinError::Hostile(format!(
            "{} is {}, not a folder",
            root.display(),
            kind_name(&meta.file_type())
        )));
    }
    let canon_root =
        fs::canonicalize(root).map_err(|e| PinError::Io(format!("cannot resolve {}: {e}", root.display())))?;
    let mut ctx = Context::new(&SHA256);
    ctx.update(HEADER);
    let mut sum = TreeSummary {
        digest: String::new(),
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
    };
    // Depth-first with explicit stack: (relative path, depth).
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    let mut entries: u64 = 0;
    while let Some((rel, depth)) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        let rd = fs::read_dir(&dir).map_err(|e| PinError::Io(format!("cannot list {}: {e}", dir.display())))?;
        for ent in rd {
            let ent = ent.map_err(|e| PinError::Io(format!("cannot list {}: {e}", dir.display())))?;
            entries += 1;
            if entries > limits.max_entries {
                return Err(PinError::Limit(format!(
                    "{} holds more than {} entries",
                    root.display(),
                    limits.max_entries
                )));
            }
            names.push(ent.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut subdirs = Vec::new();
        for name in names {
            let rel_child = rel.join(&name);
            let full = root.join(&rel_child);
            let m = fs::symlink_metadata(&full)
                .map_err(|e| PinError::Io(format!("cannot stat {}: {e}", full.display())))?;
            let ft = m.file_type();
            let path_bytes = rel_child.as_os_str().as_bytes();
            if ft.is_dir() {
                if depth + 1 > limits.max_depth {
                    return Err(PinError::Limit(format!(
                        "{} is nested deeper than {} folders",
                        full.display(),
                        limits.max_depth
                    )));
                }
                sum.dirs += 1;
                record(&mut ctx, &[b"D", path_bytes]);
                subdirs.push(rel_child);
            } else if ft.is_file() {
                let (d, n, exec) = hash_file(&full, Algo::Sha256, limits.max_file_bytes)?;
                sum.files += 1;
                sum.bytes += n;
                if sum.bytes > limits.max_total_bytes {
                    return Err(PinError::Limit(format!(
                        "{} holds more than {} bytes",
                        root.display(),
                        limits.max_total_bytes
                    )));
                }
                let size = n.to_string();
                let hexd = hex::encode(d);
                record(
                    &mut ctx,
                    &[
                        b"F",
                        path_bytes,
                        if exec { b"x" } else { b"-" },
                        size.as_bytes(),
                        hexd.as_bytes(),
                    ],
                );
            } else if ft.is_symlink() {
                let target = fs::read_link(&full)
                    .map_err(|e| PinError::Io(format!("cannot read link {}: {e}", full.display())))?;
                check_link(&full, &target, &canon_root)?;
                sum.symlinks += 1;
                record(&mut ctx, &[b"L", path_bytes, target.as_os_str().as_bytes()]);
            } else {
                return Err(PinError::Hostile(format!(
                    "{} is {}; only files, folders and symlinks may be in an install",
                    full.display(),
                    kind_name(&ft)
                )));
            }
        }
        for d in subdirs.into_iter().rev() {
            stack.push((d, depth + 1));
        }
    }
    sum.digest = crate::fsutil::sha256_pin(ctx.finish().as_ref());
    Ok(sum)
}

fn record(ctx: &mut Context, fields: &[&[u8]]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            ctx.update(b"\0");
        }
        ctx.update(f);
    }
    ctx.update(b"\n");
}

/// A symlink must resolve, through every link on the way, inside `canon_root`.
fn check_link(link: &Path, target: &Path, canon_root: &Path) -> Result<(), PinError> {
    match fs::canonicalize(link) {
        Ok(p) if p.starts_with(canon_root) => Ok(()),
        Ok(p) => Err(PinError::Hostile(format!(
            "symlink {} -> {} escapes the install folder (resolves to {})",
            link.display(),
            target.display(),
            p.display()
        ))),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(PinError::Hostile(format!(
            "symlink loop at {} -> {}",
            link.display(),
            target.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PinError::Hostile(format!(
            "dangling symlink {} -> {}",
            link.display(),
            target.display()
        ))),
        Err(e) => Err(PinError::Io(format!("cannot resolve symlink {}: {e}", link.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn sample() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("pkg/dist")).unwrap();
        fs::write(r.join("pkg/package.json"), b"{\"version\":\"1.0.0\"}").unwrap();
        fs::write(r.join("pkg/dist/index.js"), b"console.log(1)\n").unwrap();
        fs::create_dir_all(r.join(".bin")).unwrap();
        symlink("../pkg/dist/index.js", r.join(".bin/pkg")).unwrap();
        t
    }

    fn digest(p: &Path) -> String {
        tree_digest(p, &Limits::default()).unwrap().digest
    }

    #[test]
    fn stable_and_sensitive() {
        let t = sample();
        let r = t.path();
        let d0 = digest(r);
        assert_eq!(d0, digest(r), "same tree, same digest");
        assert!(d0.starts_with("sha256:") && d0.len() == 71);
        // A copy elsewhere has the same digest (paths are relative).
        let t2 = sample();
        assert_eq!(d0, digest(t2.path()));

        // Content.
        fs::write(r.join("pkg/dist/index.js"), b"console.log(2)\n").unwrap();
        let d1 = digest(r);
        assert_ne!(d0, d1);
        fs::write(r.join("pkg/dist/index.js"), b"console.log(1)\n").unwrap();
        assert_eq!(d0, digest(r), "restoring the content restores the digest");

        // Mode (execute bit).
        fs::set_permissions(r.join("pkg/dist/index.js"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(d0, digest(r));
        fs::set_permissions(r.join("pkg/dist/index.js"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(d0, digest(r));

        // Added and removed file, empty folder.
        fs::write(r.join("pkg/dist/extra.js"), b"").unwrap();
        assert_ne!(d0, digest(r));
        fs::remove_file(r.join("pkg/dist/extra.js")).unwrap();
        assert_eq!(d0, digest(r));
        fs::create_dir(r.join("pkg/empty")).unwrap();
        assert_ne!(d0, digest(r));
        fs::remove_dir(r.join("pkg/empty")).unwrap();

        // Symlink target.
        fs::remove_file(r.join(".bin/pkg")).unwrap();
        symlink("../pkg/package.json", r.join(".bin/pkg")).unwrap();
        assert_ne!(d0, digest(r));
        fs::remove_file(r.join(".bin/pkg")).unwrap();
        symlink("../pkg/dist/index.js", r.join(".bin/pkg")).unwrap();
        assert_eq!(d0, digest(r));

        // Renaming a file.
        fs::rename(r.join("pkg/package.json"), r.join("pkg/package.jsoN")).unwrap();
        assert_ne!(d0, digest(r));
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let t = sample();
        symlink("b", t.path().join("a")).unwrap();
        symlink("a", t.path().join("b")).unwrap();
        let e = tree_digest(t.path(), &Limits::default()).unwrap_err();
        assert!(matches!(e, PinError::Hostile(_)), "{e}");
        assert!(e.to_string().contains("symlink loop"), "{e}");
    }

    #[test]
    fn escaping_symlink_is_an_error() {
        let t = sample();
        symlink("/etc/passwd", t.path().join("pkg/passwd")).unwrap();
        let e = tree_digest(t.path(), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("escapes the install folder"), "{e}");

        let t = sample();
        symlink("../..", t.path().join("pkg/up")).unwrap();
        let e = tree_digest(t.path(), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("escapes"), "{e}");

        // A link into the tree through a link pointing out of it.
        let t = sample();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("x.js"), b"evil").unwrap();
        symlink(outside.path(), t.path().join("out")).unwrap();
        let e = tree_digest(t.path(), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("escapes"), "{e}");
    }

    #[test]
    fn root_symlink_and_dangling_link_refused() {
        let t = sample();
        let link = tempfile::tempdir().unwrap();
        symlink(t.path(), link.path().join("root")).unwrap();
        assert!(tree_digest(&link.path().join("root"), &Limits::default()).is_err());
        symlink("nowhere", t.path().join("dangling")).unwrap();
        let e = tree_digest(t.path(), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("dangling"), "{e}");
    }

    #[test]
    fn fifo_is_an_error_not_a_hang() {
        let t = sample();
        let p = t.path().join("pkg/dist/fifo.js");
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let started = std::time::Instant::now();
        let e = tree_digest(t.path(), &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn limits_are_enforced() {
        let t = sample();
        fs::write(t.path().join("pkg/big.bin"), vec![7u8; 4096]).unwrap();
        let small = Limits {
            max_file_bytes: 1024,
            ..Limits::default()
        };
        let e = tree_digest(t.path(), &small).unwrap_err();
        assert!(
            matches!(e, PinError::Limit(_)) && e.to_string().contains("big.bin"),
            "{e}"
        );
        let few = Limits {
            max_entries: 3,
            ..Limits::default()
        };
        assert!(matches!(tree_digest(t.path(), &few).unwrap_err(), PinError::Limit(_)));
        let total = Limits {
            max_total_bytes: 2048,
            ..Limits::default()
        };
        assert!(matches!(tree_digest(t.path(), &total).unwrap_err(), PinError::Limit(_)));
        let mut deep = t.path().to_path_buf();
        for _ in 0..5 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let shallow = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        assert!(matches!(
            tree_digest(t.path(), &shallow).unwrap_err(),
            PinError::Limit(_)
        ));
    }
}
