//! npm pins: the installed version, the lockfile's integrity, the tree digest,
//! and the comparison of an install with the registry tarball in npm's cache.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use palisade_config::NpmPin;

use crate::PinError;
use crate::fsutil::{Algo, hash_file, hash_reader, open_regular, read_small};
use crate::tree::{Limits, tree_digest};

const MAX_MANIFEST: u64 = 1 << 20;
const MAX_LOCKFILE: u64 = 64 << 20;
const MAX_TARBALL: u64 = 512 << 20;

/// The folder of an installed package.
pub fn package_dir(prefix: &Path, package: &str) -> PathBuf {
    prefix.join("node_modules").join(package)
}

/// The version in `prefix/node_modules/<package>/package.json`.
pub fn installed_version(prefix: &Path, package: &str) -> Result<String, PinError> {
    let path = package_dir(prefix, package).join("package.json");
    let text = read_small(&path, MAX_MANIFEST).map_err(|e| match e {
        PinError::Io(m) if !path.exists() => {
            PinError::Missing(format!("{package} is not installed under {}: {m}", prefix.display()))
        }
        other => other,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| PinError::Mismatch(format!("{}: not valid JSON: {e}", path.display())))?;
    if v.get("name").and_then(|n| n.as_str()) != Some(package) {
        return Err(PinError::Mismatch(format!(
            "{} names the package {:?}, not {package:?}",
            path.display(),
            v.get("name").and_then(|n| n.as_str()).unwrap_or("")
        )));
    }
    v.get("version")
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .ok_or_else(|| PinError::Mismatch(format!("{} has no version", path.display())))
}

/// The integrity npm recorded for the package: in the hidden lockfile
/// `node_modules/.package-lock.json`, else in `package-lock.json`.
/// Returns the integrity and the version recorded next to it.
pub fn locked_integrity(prefix: &Path, package: &str) -> Result<(String, String, PathBuf), PinError> {
    let key = format!("node_modules/{package}");
    let mut tried = Vec::new();
    for path in [
        prefix.join("node_modules/.package-lock.json"),
        prefix.join("package-lock.json"),
    ] {
        if !path.exists() {
            tried.push(format!("{} (absent)", path.display()));
            continue;
        }
        let text = read_small(&path, MAX_LOCKFILE)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| PinError::Mismatch(format!("{}: not valid JSON: {e}", path.display())))?;
        let Some(entry) = v.get("packages").and_then(|p| p.get(&key)) else {
            tried.push(format!("{} (no entry {key:?})", path.display()));
            continue;
        };
        let integrity = entry.get("integrity").and_then(|i| i.as_str());
        let version = entry.get("version").and_then(|i| i.as_str()).unwrap_or("");
        match integrity {
            Some(i) => return Ok((i.to_owned(), version.to_owned(), path)),
            None => tried.push(format!("{} (entry {key:?} has no integrity)", path.display())),
        }
    }
    Err(PinError::Missing(format!(
        "no integrity recorded for {package}: {}",
        tried.join("; ")
    )))
}

/// The sha512 bytes of a `sha512-<base64>` integrity string.
pub fn integrity_bytes(integrity: &str) -> Result<Vec<u8>, PinError> {
    palisade_config::check_npm_integrity(integrity).map_err(PinError::Invalid)?;
    base64::engine::general_purpose::STANDARD
        .decode(&integrity["sha512-".len()..])
        .map_err(|e| PinError::Invalid(format!("{integrity:?}: {e}")))
}

/// `sha512-<base64>` of bytes already hashed.
pub fn integrity_string(sha512: &[u8]) -> String {
    format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(sha512))
}

/// Checks an install against its pin at start: version, integrity, tree.
pub fn verify(pin: &NpmPin, limits: &Limits) -> Result<String, PinError> {
    let found = installed_version(&pin.prefix, &pin.package)?;
    if found != pin.version {
        return Err(PinError::Mismatch(format!(
            "npm {}: version {found} is installed under {}, the pin is {}",
            pin.package,
            pin.prefix.display(),
            pin.version
        )));
    }
    let (integrity, locked_version, lockfile) = locked_integrity(&pin.prefix, &pin.package)?;
    if integrity != pin.integrity {
        return Err(PinError::Mismatch(format!(
            "npm {}@{}: {} records integrity {}, the pin is {}",
            pin.package,
            pin.version,
            lockfile.display(),
            short_sri(&integrity),
            short_sri(&pin.integrity)
        )));
    }
    if !locked_version.is_empty() && locked_version != pin.version {
        return Err(PinError::Mismatch(format!(
            "npm {}: {} records version {locked_version}, the pin is {}",
            pin.package,
            lockfile.display(),
            pin.version
        )));
    }
    let root = pin.prefix.join("node_modules");
    let tree = tree_digest(&root, limits)?;
    if tree.digest != pin.tree {
        let mut msg = format!(
            "npm {}@{}: the installed tree under {} changed (digest {}, pinned {}; {} files)",
            pin.package,
            pin.version,
            root.display(),
            short_digest(&tree.digest),
            short_digest(&pin.tree),
            tree.files
        );
        // Name the changed files where the registry tarball is at hand.
        match cache_dir().and_then(|c| cached_tarball(&c, &pin.integrity)) {
            Some(tgz) => match compare_with_tarball(&tgz, &pin.integrity, &package_dir(&pin.prefix, &pin.package)) {
                Ok(cmp) if !cmp.differences.is_empty() => {
                    msg.push_str(&format!(": {}", cmp.summary(8)));
                }
                Ok(_) => msg.push_str(&format!(
                    ": the files of {} match its registry tarball, so a dependency or another file under node_modules changed",
                    pin.package
                )),
                Err(e) => msg.push_str(&format!(" (the registry tarball could not be compared: {e})")),
            },
            None => msg.push_str(" (the registry tarball is not in the npm cache, so the changed file cannot be named)"),
        }
        return Err(PinError::Mismatch(msg));
    }
    Ok(format!("npm:{}@{}", pin.package, pin.version))
}

/// The first characters of an integrity string, for messages.
pub fn short_sri(s: &str) -> String {
    if s.len() > 24 {
        format!("{}…", &s[..24])
    } else {
        s.to_owned()
    }
}

/// The first characters of a digest, for messages.
pub fn short_digest(s: &str) -> String {
    if s.len() > 19 {
        format!("{}…", &s[..19])
    } else {
        s.to_owned()
    }
}

/// npm's cache folder: `$npm_config_cache`, else `$HOME/.npm`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("npm_config_cache").filter(|c| !c.is_empty()) {
        return Some(PathBuf::from(c));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".npm"))
}

/// The tarball with this integrity in npm's content-addressed cache, if there.
pub fn cached_tarball(cache: &Path, integrity: &str) -> Option<PathBuf> {
    let bytes = integrity_bytes(integrity).ok()?;
    let hexd = hex::encode(bytes);
    let p = cache
        .join("_cacache/content-v2/sha512")
        .join(&hexd[0..2])
        .join(&hexd[2..4])
        .join(&hexd[4..]);
    p.is_file().then_some(p)
}

/// The result of comparing an installed package with its tarball.
#[derive(Debug, Default, Clone)]
pub struct TarballComparison {
    /// Files of the tarball checked.
    pub files: usize,
    /// `changed: path`, `missing: path`, `added: path`.
    pub differences: Vec<String>,
}

impl TarballComparison {
    /// The first `n` differences, and how many more.
    pub fn summary(&self, n: usize) -> String {
        let mut s = self.differences.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
        if self.differences.len() > n {
            s.push_str(&format!(" and {} more", self.differences.len() - n));
        }
        s
    }
}

/// Checks the tarball's sha512 against `integrity`, then compares every file
/// in it with the installed package folder (contents by SHA-256). Files in the
/// folder that the tarball lacks (outside its nested `node_modules`) are reported
/// as added.
pub fn compare_with_tarball(tarball: &Path, integrity: &str, pkg_dir: &Path) -> Result<TarballComparison, PinError> {
    let want = integrity_bytes(integrity)?;
    let (got, _, _) = hash_file(tarball, Algo::Sha512, MAX_TARBALL)?;
    if got != want {
        return Err(PinError::Mismatch(format!(
            "the cached tarball {} does not have the integrity {}",
            tarball.display(),
            short_sri(integrity)
        )));
    }
    let (file, _) = open_regular(tarball)?;
    // Bound the decompressed size as well.
    let gz = flate2::read::GzDecoder::new(file).take(4 * MAX_TARBALL);
    let mut archive = tar::Archive::new(gz);
    let mut expected: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| PinError::Io(format!("{}: not a tar archive: {e}", tarball.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| PinError::Io(format!("{}: bad tar entry: {e}", tarball.display())))?;
        if entry.header().entry_type() != tar::EntryType::Regular
            && entry.header().entry_type() != tar::EntryType::Continuous
        {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| PinError::Io(format!("{}: bad path in tarball: {e}", tarball.display())))?
            .into_owned();
        // npm strips the first component (usually `package/`).
        let mut comps = path.components();
        comps.next();
        let rel: PathBuf = comps.as_path().to_path_buf();
        if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            continue;
        }
        if expected.len() >= 100_000 {
            return Err(PinError::Limit(format!(
                "{}: more than 100000 files",
                tarball.display()
            )));
        }
        let name = rel.display().to_string();
        let (d, _) = hash_reader(entry, Algo::Sha256, MAX_TARBALL, &|| format!("{name} in the tarball"))?;
        expected.insert(rel, d);
    }
    let mut cmp = TarballComparison {
        files: expected.len(),
        differences: Vec::new(),
    };
    for (rel, want) in &expected {
        let p = pkg_dir.join(rel);
        match std::fs::symlink_metadata(&p) {
            Err(_) => cmp.differences.push(format!("missing: {}", rel.display())),
            Ok(_) => match hash_file(&p, Algo::Sha256, MAX_TARBALL) {
                Ok((got, _, _)) if &got == want => {}
                Ok(_) => cmp.differences.push(format!("changed: {}", rel.display())),
                Err(e) => cmp.differences.push(format!("unreadable: {} ({e})", rel.display())),
            },
        }
    }
    // Files npm would not have put there.
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0usize;
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(pkg_dir.join(&rel)) else {
            continue;
        };
        for ent in rd.flatten() {
            seen += 1;
            if seen > 200_000 {
                return Err(PinError::Limit(format!("{}: too many entries", pkg_dir.display())));
            }
            let child = rel.join(ent.file_name());
            if rel.as_os_str().is_empty() && ent.file_name() == "node_modules" {
                continue;
            }
            match ent.file_type() {
                Ok(t) if t.is_dir() => stack.push(child),
                Ok(_) if !expected.contains_key(&child) => cmp.differences.push(format!("added: {}", child.display())),
                _ => {}
            }
        }
    }
    Ok(cmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn integrity_round_trip() {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, b"x");
        let s = integrity_string(d.as_ref());
        assert_eq!(integrity_bytes(&s).unwrap(), d.as_ref());
        assert!(integrity_bytes("sha1-AAAA").is_err());
        assert!(integrity_bytes("sha512-!!!").is_err());
    }

    #[test]
    fn lockfile_lookup() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("node_modules/@s/p")).unwrap();
        fs::write(
            t.path().join("node_modules/@s/p/package.json"),
            r#"{"name":"@s/p","version":"1.2.3"}"#,
        )
        .unwrap();
        assert_eq!(installed_version(t.path(), "@s/p").unwrap(), "1.2.3");
        assert!(matches!(installed_version(t.path(), "@s/q"), Err(PinError::Missing(_))));
        assert!(matches!(locked_integrity(t.path(), "@s/p"), Err(PinError::Missing(_))));
        fs::write(
            t.path().join("package-lock.json"),
            r#"{"packages":{"node_modules/@s/p":{"version":"1.2.3","integrity":"sha512-x"}}}"#,
        )
        .unwrap();
        assert_eq!(locked_integrity(t.path(), "@s/p").unwrap().0, "sha512-x");
        // The hidden lockfile wins.
        fs::write(
            t.path().join("node_modules/.package-lock.json"),
            r#"{"packages":{"node_modules/@s/p":{"version":"1.2.3","integrity":"sha512-y"}}}"#,
        )
        .unwrap();
        assert_eq!(locked_integrity(t.path(), "@s/p").unwrap().0, "sha512-y");
        // A manifest naming another package is refused.
        fs::write(
            t.path().join("node_modules/@s/p/package.json"),
            r#"{"name":"evil","version":"1.2.3"}"#,
        )
        .unwrap();
        assert!(installed_version(t.path(), "@s/p").is_err());
    }

    fn tarball(dir: &Path, files: &[(&str, &[u8])]) -> (PathBuf, String) {
        let path = dir.join("p.tgz");
        let f = fs::File::create(&path).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut b = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("package/{name}"), *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &fs::read(&path).unwrap());
        (path, integrity_string(d.as_ref()))
    }

    #[test]
    fn tarball_comparison_names_files() {
        let t = tempfile::tempdir().unwrap();
        let (tgz, sri) = tarball(
            t.path(),
            &[("package.json", b"{}"), ("dist/a.js", b"a"), ("dist/b.js", b"b")],
        );
        let pkg = t.path().join("pkg");
        fs::create_dir_all(pkg.join("dist")).unwrap();
        fs::create_dir_all(pkg.join("node_modules/dep")).unwrap();
        fs::write(pkg.join("node_modules/dep/x.js"), b"dep").unwrap();
        fs::write(pkg.join("package.json"), b"{}").unwrap();
        fs::write(pkg.join("dist/a.js"), b"a").unwrap();
        fs::write(pkg.join("dist/b.js"), b"b").unwrap();
        let c = compare_with_tarball(&tgz, &sri, &pkg).unwrap();
        assert_eq!(c.files, 3);
        assert!(c.differences.is_empty(), "{:?}", c.differences);
        fs::write(pkg.join("dist/a.js"), b"a\nevil()").unwrap();
        fs::remove_file(pkg.join("dist/b.js")).unwrap();
        fs::write(pkg.join("dist/c.js"), b"c").unwrap();
        let c = compare_with_tarball(&tgz, &sri, &pkg).unwrap();
        assert!(
            c.differences.contains(&"changed: dist/a.js".to_string()),
            "{:?}",
            c.differences
        );
        assert!(c.differences.contains(&"missing: dist/b.js".to_string()));
        assert!(c.differences.contains(&"added: dist/c.js".to_string()));
        // A tarball that does not match the integrity is refused.
        let other = integrity_string(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, b"other").as_ref());
        assert!(compare_with_tarball(&tgz, &other, &pkg).is_err());
    }

    #[test]
    fn cache_path_layout() {
        let t = tempfile::tempdir().unwrap();
        let (tgz, sri) = tarball(t.path(), &[("package.json", b"{}")]);
        let hexd = hex::encode(integrity_bytes(&sri).unwrap());
        let dir = t
            .path()
            .join("_cacache/content-v2/sha512")
            .join(&hexd[0..2])
            .join(&hexd[2..4]);
        fs::create_dir_all(&dir).unwrap();
        assert!(cached_tarball(t.path(), &sri).is_none());
        fs::copy(&tgz, dir.join(&hexd[4..])).unwrap();
        assert_eq!(cached_tarball(t.path(), &sri).unwrap(), dir.join(&hexd[4..]));
    }
}
