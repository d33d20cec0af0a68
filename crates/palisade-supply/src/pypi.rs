//! PyPI pins: the installed version (`METADATA`), every `RECORD` hash of the
//! package and of its installed dependencies, a digest over them, and the
//! comparison of the installed `RECORD` with the published wheel's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use aws_lc_rs::digest::{Context, SHA256};
use base64::Engine;
use palisade_config::PypiPin;

use crate::PinError;
use crate::fsutil::{Algo, hash_file, read_small, sha256_pin};
use crate::tree::Limits;

const MAX_META: u64 = 4 << 20;
const MAX_RECORD: u64 = 16 << 20;

/// PEP 503 normalized name.
pub fn normalize(name: &str) -> String {
    let mut out = String::new();
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The `site-packages` folders of a virtual environment.
pub fn site_packages(venv: &Path) -> Result<Vec<PathBuf>, PinError> {
    let lib = venv.join("lib");
    let rd = std::fs::read_dir(&lib)
        .map_err(|e| PinError::Missing(format!("{} is not a virtual environment: {e}", venv.display())))?;
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(PinError::Missing(format!(
            "no lib/python*/site-packages in {}",
            venv.display()
        )));
    }
    Ok(out)
}

/// An installed distribution.
#[derive(Debug, Clone)]
pub struct Dist {
    pub name: String,
    pub version: String,
    pub dist_info: PathBuf,
    pub site: PathBuf,
    pub requires: Vec<String>,
}

fn find_dist(sites: &[PathBuf], name: &str) -> Result<Option<Dist>, PinError> {
    let want = normalize(name);
    let mut found: Vec<(PathBuf, PathBuf)> = Vec::new();
    for site in sites {
        let Ok(rd) = std::fs::read_dir(site) else { continue };
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = f.strip_suffix(".dist-info") else {
                continue;
            };
            let Some((n, _)) = stem.rsplit_once('-') else { continue };
            if normalize(n) == want {
                found.push((site.clone(), e.path()));
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => {
            let (site, dist_info) = found.remove(0);
            let meta = read_small(&dist_info.join("METADATA"), MAX_META)?;
            let mut version = None;
            let mut dname = None;
            let mut requires = Vec::new();
            for line in meta.lines() {
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Version:") {
                    version = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("Name:") {
                    dname = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("Requires-Dist:") {
                    requires.push(v.trim().to_owned());
                }
            }
            let version = version
                .ok_or_else(|| PinError::Mismatch(format!("{}: METADATA has no Version", dist_info.display())))?;
            if dname.as_deref().map(normalize) != Some(want.clone()) {
                return Err(PinError::Mismatch(format!(
                    "{}: METADATA names {:?}, not {name:?}",
                    dist_info.display(),
                    dname.unwrap_or_default()
                )));
            }
            Ok(Some(Dist {
                name: want,
                version,
                dist_info,
                site,
                requires,
            }))
        }
        _ => Err(PinError::Hostile(format!(
            "{name} is installed more than once: {}",
            found
                .iter()
                .map(|(_, d)| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The name a `Requires-Dist` names, unless it only applies to an extra.
fn requirement_name(req: &str) -> Option<String> {
    let (spec, marker) = match req.split_once(';') {
        Some((s, m)) => (s, m),
        None => (req, ""),
    };
    if marker.contains("extra") {
        return None;
    }
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(spec.len());
    let name = spec[..end].trim();
    (!name.is_empty()).then(|| normalize(name))
}

/// One row of a `RECORD` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    pub path: String,
    pub hash: String,
}

/// Parses `RECORD` (CSV: path, `algo=urlsafe-base64`, size).
pub fn parse_record(text: &str) -> Vec<RecordRow> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.first().is_some_and(|p| !p.is_empty()) {
            rows.push(RecordRow {
                path: fields[0].clone(),
                hash: fields.get(1).cloned().unwrap_or_default(),
            });
        }
    }
    rows
}

/// What was found in a virtual environment for one package.
#[derive(Debug, Clone)]
pub struct Install {
    pub version: String,
    /// `sha256:<hex>` over the RECORD-listed files of the package and its installed dependencies.
    pub tree: String,
    /// Distributions covered (normalized names with versions).
    pub dists: Vec<String>,
    /// Files whose contents differ from their RECORD hash (`changed: …`, `missing: …`).
    pub differences: Vec<String>,
    pub files: u64,
    pub dist_info: PathBuf,
}

/// Reads the install of `package` and checks every RECORD hash.
pub fn inspect(venv: &Path, package: &str, limits: &Limits) -> Result<Install, PinError> {
    let sites = site_packages(venv)?;
    let top = find_dist(&sites, package)?
        .ok_or_else(|| PinError::Missing(format!("{package} is not installed in {}", venv.display())))?;
    let venv_canon = std::fs::canonicalize(venv).map_err(|e| PinError::Io(format!("{}: {e}", venv.display())))?;
    // The package and the installed part of its dependency closure.
    let mut dists: BTreeMap<String, Dist> = BTreeMap::new();
    let mut queue = vec![top.clone()];
    while let Some(d) = queue.pop() {
        if dists.contains_key(&d.name) {
            continue;
        }
        if dists.len() >= 2000 {
            return Err(PinError::Limit(
                "more than 2000 distributions in the dependency closure".into(),
            ));
        }
        for r in &d.requires {
            if let Some(n) = requirement_name(r)
                && !dists.contains_key(&n)
                && let Some(dep) = find_dist(&sites, &n)?
            {
                queue.push(dep);
            }
        }
        dists.insert(d.name.clone(), d);
    }
    let mut ctx = Context::new(&SHA256);
    ctx.update(b"palisade-pypi-tree-v1\n");
    let mut install = Install {
        version: top.version.clone(),
        tree: String::new(),
        dists: Vec::new(),
        differences: Vec::new(),
        files: 0,
        dist_info: top.dist_info.clone(),
    };
    let mut bytes: u64 = 0;
    for d in dists.values() {
        install.dists.push(format!("{}@{}", d.name, d.version));
        let record_path = d.dist_info.join("RECORD");
        let text = read_small(&record_path, MAX_RECORD)?;
        ctx.update(
            format!(
                "R\0{}\0{}\0{}\n",
                d.name,
                d.version,
                hex::encode(crate::fsutil::sha256(text.as_bytes()))
            )
            .as_bytes(),
        );
        let mut rows = parse_record(&text);
        rows.sort_by(|a, b| a.path.cmp(&b.path));
        for row in rows {
            if row.hash.is_empty() {
                continue;
            }
            install.files += 1;
            if install.files > limits.max_entries {
                return Err(PinError::Limit(format!(
                    "more than {} files in RECORDs",
                    limits.max_entries
                )));
            }
            let path = inside(&d.site, &row.path, &venv_canon)?;
            let (algo, want) = row
                .hash
                .split_once('=')
                .ok_or_else(|| PinError::Mismatch(format!("{}: bad hash for {}", record_path.display(), row.path)))?;
            let algo = match algo {
                "sha256" => Algo::Sha256,
                "sha512" => Algo::Sha512,
                other => {
                    return Err(PinError::Mismatch(format!(
                        "{}: unsupported hash {other} for {}",
                        record_path.display(),
                        row.path
                    )));
                }
            };
            if std::fs::symlink_metadata(&path).is_err() {
                install.differences.push(format!("missing: {} ({})", row.path, d.name));
                continue;
            }
            let (got, n, exec) = hash_file(&path, algo, limits.max_file_bytes)?;
            bytes += n;
            if bytes > limits.max_total_bytes {
                return Err(PinError::Limit(format!(
                    "more than {} bytes in RECORDs",
                    limits.max_total_bytes
                )));
            }
            let got_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&got);
            if got_b64 != want.trim_end_matches('=') {
                install.differences.push(format!("changed: {} ({})", row.path, d.name));
            }
            ctx.update(
                format!(
                    "F\0{}\0{}\0{}\0{}\0{}\n",
                    d.name,
                    row.path,
                    if exec { "x" } else { "-" },
                    n,
                    hex::encode(&got)
                )
                .as_bytes(),
            );
        }
    }
    install.tree = sha256_pin(ctx.finish().as_ref());
    Ok(install)
}

/// A RECORD path, relative to site-packages, must stay inside the venv.
fn inside(site: &Path, rel: &str, venv_canon: &Path) -> Result<PathBuf, PinError> {
    if Path::new(rel).is_absolute() {
        return Err(PinError::Hostile(format!("RECORD lists an absolute path {rel:?}")));
    }
    let site_canon = std::fs::canonicalize(site).map_err(|e| PinError::Io(format!("{}: {e}", site.display())))?;
    let mut out = site_canon.clone();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            _ => return Err(PinError::Hostile(format!("RECORD path {rel:?} is not relative"))),
        }
    }
    if !out.starts_with(venv_canon) {
        return Err(PinError::Hostile(format!(
            "RECORD path {rel:?} leaves the virtual environment"
        )));
    }
    Ok(out)
}

/// Checks an install against its pin at start: version, RECORD hashes, tree.
pub fn verify(pin: &PypiPin, limits: &Limits) -> Result<String, PinError> {
    let inst = inspect(&pin.venv, &pin.package, limits)?;
    if inst.version != pin.version {
        return Err(PinError::Mismatch(format!(
            "pypi {}: version {} is installed in {}, the pin is {}",
            pin.package,
            inst.version,
            pin.venv.display(),
            pin.version
        )));
    }
    if !inst.differences.is_empty() {
        let mut s: Vec<String> = inst.differences.iter().take(8).cloned().collect();
        if inst.differences.len() > 8 {
            s.push(format!("and {} more", inst.differences.len() - 8));
        }
        return Err(PinError::Mismatch(format!(
            "pypi {}@{}: installed files differ from their RECORD hashes: {}",
            pin.package,
            pin.version,
            s.join(", ")
        )));
    }
    if inst.tree != pin.tree {
        return Err(PinError::Mismatch(format!(
            "pypi {}@{}: the installed RECORDs changed (digest {}, pinned {}; covers {})",
            pin.package,
            pin.version,
            crate::npm::short_digest(&inst.tree),
            crate::npm::short_digest(&pin.tree),
            inst.dists.join(", ")
        )));
    }
    Ok(format!("pypi:{}@{}", pin.package, pin.version))
}

/// `pip download --no-deps` of the exact version into `dir`, with the venv's
/// own pip; returns the wheel's path.
pub fn download_wheel(venv: &Path, package: &str, version: &str, dir: &Path) -> Result<PathBuf, PinError> {
    let python = venv.join("bin/python");
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(format!("{package}=={version}"))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| PinError::Io(format!("cannot run {} -m pip: {e}", python.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        return Err(PinError::Io(format!(
            "pip download {package}=={version} failed: {tail}"
        )));
    }
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PinError::Io(e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        0 => Err(PinError::Missing(format!(
            "pip download {package}=={version} gave no wheel"
        ))),
        _ => Err(PinError::Io(format!(
            "pip download {package}=={version} gave several wheels"
        ))),
    }
}

/// The published wheel of an install, fetched and compared.
#[derive(Debug, Clone)]
pub struct WheelCheck {
    /// `sha256:<hex>` of the wheel file.
    pub wheel: String,
    pub file_name: String,
    /// Differences between the wheel's RECORD and the installed one.
    pub differences: Vec<String>,
}

/// Downloads the exact version's wheel into a temporary folder with the
/// venv's pip, hashes it and compares its RECORD with the install's.
pub fn check_published_wheel(
    venv: &Path,
    package: &str,
    version: &str,
    dist_info: &Path,
) -> Result<WheelCheck, PinError> {
    let tmp = tempfile::tempdir().map_err(|e| PinError::Io(format!("temporary folder: {e}")))?;
    let wheel = download_wheel(venv, package, version, tmp.path())?;
    let (digest, _, _) = hash_file(&wheel, Algo::Sha256, 1 << 30)?;
    let differences = compare_wheel(&wheel, dist_info)?;
    Ok(WheelCheck {
        wheel: sha256_pin(&digest),
        file_name: wheel.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned(),
        differences,
    })
}

/// Compares the published wheel's `RECORD` with the installed one: every
/// hashed file of the wheel (outside `.data/`) must be installed with the same hash.
pub fn compare_wheel(wheel: &Path, installed_dist_info: &Path) -> Result<Vec<String>, PinError> {
    let file = std::fs::File::open(wheel).map_err(|e| PinError::Io(format!("{}: {e}", wheel.display())))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| PinError::Io(format!("{}: not a wheel: {e}", wheel.display())))?;
    let record_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with(".dist-info/RECORD") && n.matches('/').count() == 1)
        .ok_or_else(|| PinError::Mismatch(format!("{}: no .dist-info/RECORD", wheel.display())))?;
    let mut text = String::new();
    zip.by_name(&record_name)
        .map_err(|e| PinError::Io(format!("{}: {e}", wheel.display())))?
        .take(MAX_RECORD)
        .read_to_string(&mut text)
        .map_err(|e| PinError::Io(format!("{}: RECORD: {e}", wheel.display())))?;
    let installed = read_small(&installed_dist_info.join("RECORD"), MAX_RECORD)?;
    let have: BTreeMap<String, String> = parse_record(&installed).into_iter().map(|r| (r.path, r.hash)).collect();
    let mut diffs = Vec::new();
    let mut checked: BTreeSet<String> = BTreeSet::new();
    for row in parse_record(&text) {
        if row.hash.is_empty() || row.path.split('/').next().is_some_and(|c| c.ends_with(".data")) {
            continue;
        }
        checked.insert(row.path.clone());
        match have.get(&row.path) {
            Some(h) if h.trim_end_matches('=') == row.hash.trim_end_matches('=') => {}
            Some(_) => diffs.push(format!("changed: {}", row.path)),
            None => diffs.push(format!("missing: {}", row.path)),
        }
    }
    if checked.is_empty() {
        diffs.push("the wheel's RECORD lists no hashed file".into());
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::fsutil::sha256(data))
    }

    fn venv() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let site = t.path().join("lib/python3.11/site-packages");
        fs::create_dir_all(site.join("srv")).unwrap();
        fs::create_dir_all(site.join("srv-1.2.3.dist-info")).unwrap();
        fs::create_dir_all(site.join("dep")).unwrap();
        fs::create_dir_all(site.join("dep-0.1.dist-info")).unwrap();
        fs::write(site.join("srv/__init__.py"), b"print('srv')\n").unwrap();
        fs::write(
            site.join("srv-1.2.3.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: srv\nVersion: 1.2.3\nRequires-Dist: dep>=0.1\nRequires-Dist: extra-thing; extra == \"x\"\n\nbody\n",
        )
        .unwrap();
        fs::write(
            site.join("srv-1.2.3.dist-info/RECORD"),
            format!(
                "srv/__init__.py,sha256={},13\nsrv-1.2.3.dist-info/RECORD,,\n\"srv/__pycache__/x.pyc\",,\n",
                b64(b"print('srv')\n")
            ),
        )
        .unwrap();
        fs::write(site.join("dep/__init__.py"), b"x = 1\n").unwrap();
        fs::write(site.join("dep-0.1.dist-info/METADATA"), "Name: dep\nVersion: 0.1\n").unwrap();
        fs::write(
            site.join("dep-0.1.dist-info/RECORD"),
            format!("dep/__init__.py,sha256={},6\n", b64(b"x = 1\n")),
        )
        .unwrap();
        t
    }

    #[test]
    fn record_hashes_and_dependencies() {
        let t = venv();
        let l = Limits::default();
        let a = inspect(t.path(), "srv", &l).unwrap();
        assert_eq!(a.version, "1.2.3");
        assert_eq!(a.dists, vec!["dep@0.1".to_string(), "srv@1.2.3".to_string()]);
        assert!(a.differences.is_empty());
        assert_eq!(a.files, 2);
        let pin = PypiPin {
            package: "srv".into(),
            version: "1.2.3".into(),
            wheel: format!("sha256:{}", "0".repeat(64)),
            venv: t.path().to_path_buf(),
            tree: a.tree.clone(),
        };
        assert_eq!(verify(&pin, &l).unwrap(), "pypi:srv@1.2.3");
        // A dependency's file changed: named.
        let site = t.path().join("lib/python3.11/site-packages");
        fs::write(site.join("dep/__init__.py"), b"x = 2\n").unwrap();
        let e = verify(&pin, &l).unwrap_err().to_string();
        assert!(e.contains("changed: dep/__init__.py (dep)"), "{e}");
        // File and RECORD both changed: the tree digest catches it.
        fs::write(
            site.join("dep-0.1.dist-info/RECORD"),
            format!("dep/__init__.py,sha256={},6\n", b64(b"x = 2\n")),
        )
        .unwrap();
        let e = verify(&pin, &l).unwrap_err().to_string();
        assert!(e.contains("RECORDs changed"), "{e}");
        // Wrong version.
        let mut p2 = pin.clone();
        p2.version = "1.2.4".into();
        assert!(
            verify(&p2, &l)
                .unwrap_err()
                .to_string()
                .contains("version 1.2.3 is installed")
        );
    }

    #[test]
    fn record_paths_cannot_leave_the_venv() {
        let t = venv();
        let site = t.path().join("lib/python3.11/site-packages");
        fs::write(
            site.join("dep-0.1.dist-info/RECORD"),
            "../../../../etc/passwd,sha256=AAAA,1\n",
        )
        .unwrap();
        let e = inspect(t.path(), "srv", &Limits::default()).unwrap_err();
        assert!(matches!(e, PinError::Hostile(_)), "{e}");
    }

    #[test]
    fn names_and_requirements() {
        assert_eq!(normalize("Mcp_Server.Fetch"), "mcp-server-fetch");
        assert_eq!(requirement_name("httpx>=0.27"), Some("httpx".into()));
        assert_eq!(requirement_name("pydantic[email] (>=2)"), Some("pydantic".into()));
        assert_eq!(requirement_name("pytest; extra == 'dev'"), None);
        let rows = parse_record("a.py,sha256=x,1\n\"b,c.py\",sha256=y,2\n");
        assert_eq!(rows[1].path, "b,c.py");
    }
}
