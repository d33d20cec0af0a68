//! Which package a launcher command runs, and whether its version is pinned:
//! npm (`npx`, `npm exec`, `bunx`, `pnpm dlx`, `yarn dlx`), PyPI (`uvx`,
//! `uv tool run`, `pipx run`) and container images (`docker run`, `podman run`).

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::extract::Field;

/// A package a server is launched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    /// `npm`, `pypi` or `oci`.
    pub ecosystem: &'static str,
    pub name: String,
    /// The version, tag or digest as written, if any.
    pub version: Option<String>,
    /// An exact version or a digest.
    pub pinned: bool,
    #[serde(skip)]
    pub spec: Field,
}

impl Package {
    /// `ecosystem:name`, the identity used to match the same package across files.
    pub fn id(&self) -> String {
        format!("{}:{}", self.ecosystem, self.name.to_ascii_lowercase())
    }
}

static EXACT_SEMVER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$").expect("regex"));
static VERSION_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^v?\d+(\.\d+){1,3}([-_.+][0-9A-Za-z._-]+)?$").expect("regex"));
static GIT_SHA: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[#@]([0-9a-f]{40})$").expect("regex"));
static PEP440_EXACT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$").expect("regex"));

/// The lowercase file name of a command, without `.exe`/`.cmd`/`.bat`.
pub fn base(cmd: &str) -> String {
    let name = cmd.rsplit(['/', '\\']).next().unwrap_or(cmd).to_ascii_lowercase();
    for ext in [".exe", ".cmd", ".bat", ".ps1"] {
        if let Some(s) = name.strip_suffix(ext) {
            return s.to_string();
        }
    }
    name
}

/// The command line: the command then its arguments. A command written as one
/// string with spaces and no `args` is split on whitespace; a leading
/// `cmd /c` (Windows) is removed.
pub fn argv(command: Option<&Field>, args: &[Field]) -> Vec<Field> {
    let Some(cmd) = command else {
        return Vec::new();
    };
    let mut out: Vec<Field> = if args.is_empty() && cmd.value.trim().contains(char::is_whitespace) {
        cmd.value
            .split_whitespace()
            .map(|w| Field {
                value: w.to_string(),
                pointer: cmd.pointer.clone(),
                line: cmd.line,
            })
            .collect()
    } else {
        let mut v = vec![cmd.clone()];
        v.extend(args.iter().cloned());
        v
    };
    if out.len() > 2 && base(&out[0].value) == "cmd" && out[1].value.eq_ignore_ascii_case("/c") {
        out.drain(..2);
    }
    out
}

/// The package the command line runs, if it is a known launcher.
pub fn package(argv: &[Field]) -> Option<Package> {
    let first = argv.first()?;
    let a0 = base(&first.value);
    let rest = &argv[1..];
    // Wrappers that run another command: look through them.
    if matches!(
        a0.as_str(),
        "sudo" | "doas" | "env" | "exec" | "nice" | "nohup" | "time" | "stdbuf"
    ) {
        let skip = rest
            .iter()
            .take_while(|f| f.value.starts_with('-') || (a0 == "env" && f.value.contains('=')))
            .count();
        return package(&rest[skip..]);
    }
    let sub = rest.first().map(|f| f.value.as_str());
    match (a0.as_str(), sub) {
        ("npx" | "bunx", _) => npm_launcher(rest),
        ("npm", Some("exec" | "x")) | ("pnpm" | "yarn", Some("dlx")) | ("bun", Some("x")) => npm_launcher(&rest[1..]),
        ("uvx", _) => pypi_launcher(rest, &["--from"], UV_VALUE_FLAGS),
        ("uv", Some("tool")) if rest.get(1).map(|f| f.value.as_str()) == Some("run") => {
            pypi_launcher(&rest[2..], &["--from"], UV_VALUE_FLAGS)
        }
        ("pipx", Some("run")) => pypi_launcher(&rest[1..], &["--spec"], PIPX_VALUE_FLAGS),
        ("docker" | "podman" | "nerdctl", Some("run")) => oci_image(&rest[1..]),
        ("docker" | "podman", Some("container")) if rest.get(1).map(|f| f.value.as_str()) == Some("run") => {
            oci_image(&rest[2..])
        }
        _ => None,
    }
}

const NPX_VALUE_FLAGS: &[&str] = &[
    "-c",
    "--call",
    "--cache",
    "--registry",
    "--userconfig",
    "-w",
    "--workspace",
    "--node-options",
];
const UV_VALUE_FLAGS: &[&str] = &[
    "--with",
    "--with-editable",
    "--with-requirements",
    "--python",
    "-p",
    "--index",
    "--index-url",
    "--extra-index-url",
    "--default-index",
    "--directory",
    "--project",
    "--constraints",
    "--overrides",
];
const PIPX_VALUE_FLAGS: &[&str] = &["--python", "--pip-args", "--index-url"];

/// Positional arguments after the launcher's options, and the values of `wanted` options.
fn positionals<'a>(args: &'a [Field], value_flags: &[&str], wanted: &[&str]) -> (Vec<&'a Field>, Vec<&'a Field>) {
    let mut pos = Vec::new();
    let mut found = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].value.as_str();
        if a == "--" {
            pos.extend(args[i + 1..].iter());
            break;
        }
        if let Some(flag) = a.strip_prefix('-').map(|_| a) {
            if let Some((name, _)) = flag.split_once('=') {
                if wanted.contains(&name) {
                    found.push(&args[i]);
                }
            } else if wanted.contains(&flag) {
                if let Some(v) = args.get(i + 1) {
                    found.push(v);
                }
                i += 1;
            } else if value_flags.contains(&flag) {
                i += 1;
            }
            i += 1;
            continue;
        }
        // The first positional ends the launcher's own options.
        pos.extend(args[i..].iter());
        break;
    }
    (pos, found)
}

fn after_eq(f: &Field) -> Field {
    match f.value.split_once('=') {
        Some((k, v)) if k.starts_with('-') => Field {
            value: v.to_string(),
            ..f.clone()
        },
        _ => f.clone(),
    }
}

fn npm_launcher(args: &[Field]) -> Option<Package> {
    let (pos, pkgs) = positionals(args, NPX_VALUE_FLAGS, &["-p", "--package"]);
    let spec = match pkgs.first() {
        Some(f) => after_eq(f),
        None => (*pos.first()?).clone(),
    };
    npm_spec(spec)
}

/// `name`, `name@range`, `@scope/name@version`, `npm:...`, git and tarball URLs.
pub fn npm_spec(spec: Field) -> Option<Package> {
    let s = spec.value.strip_prefix("npm:").unwrap_or(&spec.value).to_string();
    if s.is_empty() || s.starts_with(['.', '/', '~']) || s.starts_with("file:") || s.contains('\\') {
        return None; // a local path: nothing to pin by version
    }
    if s.contains("://") || s.starts_with("git") || s.starts_with("github:") {
        let sha = GIT_SHA.captures(&s).map(|c| c[1].to_string());
        return Some(Package {
            ecosystem: "npm",
            name: s.split('#').next().unwrap_or(&s).to_string(),
            pinned: sha.is_some(),
            version: sha,
            spec,
        });
    }
    let (name, version) = match s.strip_prefix('@') {
        Some(rest) => match rest.split_once('@') {
            Some((n, v)) => (format!("@{n}"), Some(v.to_string())),
            None => (s.clone(), None),
        },
        None => match s.split_once('@') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (s.clone(), None),
        },
    };
    let pinned = version.as_deref().is_some_and(|v| EXACT_SEMVER.is_match(v));
    Some(Package {
        ecosystem: "npm",
        name,
        version,
        pinned,
        spec,
    })
}

fn pypi_launcher(args: &[Field], spec_flags: &[&str], value_flags: &[&str]) -> Option<Package> {
    let (pos, from) = positionals(args, value_flags, spec_flags);
    let spec = match from.first() {
        Some(f) => after_eq(f),
        None => (*pos.first()?).clone(),
    };
    pypi_spec(spec)
}

/// `name`, `name==1.2.3`, `name>=1`, `name@1.2.3` (uvx), `name[extra]==1`, git URLs.
pub fn pypi_spec(spec: Field) -> Option<Package> {
    let s = spec.value.trim().to_string();
    if s.is_empty() || s.starts_with(['.', '/', '~']) || s.ends_with(".whl") || s.ends_with(".py") {
        return None;
    }
    if s.contains("://") || s.starts_with("git+") {
        let sha = GIT_SHA.captures(&s).map(|c| c[1].to_string());
        return Some(Package {
            ecosystem: "pypi",
            name: s.clone(),
            pinned: sha.is_some(),
            version: sha,
            spec,
        });
    }
    let idx = s.find(['=', '<', '>', '~', '!', '@', ';', ' ']).unwrap_or(s.len());
    let name_part = &s[..idx];
    let name = name_part.split('[').next().unwrap_or(name_part).to_string();
    let constraint = s[idx..].trim();
    let (version, pinned) = if let Some(v) = constraint.strip_prefix("===").or_else(|| constraint.strip_prefix("==")) {
        (Some(v.trim().to_string()), PEP440_EXACT.is_match(v.trim()))
    } else if let Some(v) = constraint.strip_prefix('@') {
        let v = v.trim();
        (Some(v.to_string()), PEP440_EXACT.is_match(v))
    } else if constraint.is_empty() {
        (None, false)
    } else {
        (Some(constraint.to_string()), false)
    };
    Some(Package {
        ecosystem: "pypi",
        name,
        version,
        pinned,
        spec,
    })
}

/// Options of `docker run` that take a value (the image is the first positional).
const DOCKER_VALUE_FLAGS: &[&str] = &[
    "-e",
    "--env",
    "--env-file",
    "-v",
    "--volume",
    "--mount",
    "--name",
    "--network",
    "--net",
    "-p",
    "--publish",
    "-u",
    "--user",
    "-w",
    "--workdir",
    "--entrypoint",
    "-l",
    "--label",
    "--platform",
    "--cap-add",
    "--cap-drop",
    "--security-opt",
    "--pull",
    "-m",
    "--memory",
    "--cpus",
    "--add-host",
    "-h",
    "--hostname",
    "--device",
    "--tmpfs",
    "--ulimit",
    "--restart",
    "--pid",
    "--ipc",
    "--uts",
    "--userns",
    "--log-driver",
    "--log-opt",
    "--dns",
    "--shm-size",
    "--stop-signal",
    "--stop-timeout",
    "--health-cmd",
    "--cgroupns",
    "--runtime",
    "--group-add",
    "--label-file",
    "--cidfile",
    "--expose",
    "--link",
    "--memory-swap",
    "--cpu-shares",
    "--pids-limit",
    "--gpus",
    "--init-path",
    "--volumes-from",
    "--ip",
    "--ip6",
    "--mac-address",
];

/// Splits `docker run` arguments into options (name, value) and the image.
pub fn docker_run_parts(args: &[Field]) -> (Vec<(String, Option<String>)>, Option<Field>) {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].value.as_str();
        if !a.starts_with('-') || a == "-" {
            return (opts, Some(args[i].clone()));
        }
        if let Some((k, v)) = a.split_once('=') {
            opts.push((k.to_string(), Some(v.to_string())));
        } else if DOCKER_VALUE_FLAGS.contains(&a) {
            opts.push((a.to_string(), args.get(i + 1).map(|f| f.value.clone())));
            i += 1;
        } else {
            opts.push((a.to_string(), None));
        }
        i += 1;
    }
    (opts, None)
}

fn oci_image(args: &[Field]) -> Option<Package> {
    let (_, image) = docker_run_parts(args);
    let image = image?;
    let s = image.value.clone();
    if let Some((name, digest)) = s.split_once('@') {
        let pinned = digest.starts_with("sha256:") && digest.len() == 71;
        return Some(Package {
            ecosystem: "oci",
            name: strip_tag(name),
            version: Some(digest.to_string()),
            pinned,
            spec: image,
        });
    }
    // A tag follows the last ':' after the last '/' (a registry port comes before a '/').
    let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match s[last_slash..].rfind(':') {
        Some(i) => (
            s[..last_slash + i].to_string(),
            Some(s[last_slash + i + 1..].to_string()),
        ),
        None => (s.clone(), None),
    };
    let pinned = tag.as_deref().is_some_and(|t| VERSION_TAG.is_match(t));
    Some(Package {
        ecosystem: "oci",
        name,
        version: tag,
        pinned,
        spec: image,
    })
}

fn strip_tag(name: &str) -> String {
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[last_slash..].rfind(':') {
        Some(i) => name[..last_slash + i].to_string(),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Field {
        Field {
            value: s.into(),
            pointer: String::new(),
            line: 0,
        }
    }
    fn run(words: &[&str]) -> Option<Package> {
        let v: Vec<Field> = words.iter().map(|w| f(w)).collect();
        package(&v)
    }

    #[test]
    fn npm_specs() {
        let p = run(&["npx", "-y", "@scope/server@1.2.3", "--flag"]).unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_deref(), p.pinned),
            ("@scope/server", Some("1.2.3"), true)
        );
        let p = run(&["npx", "-y", "@scope/server"]).unwrap();
        assert!(!p.pinned);
        assert!(!run(&["npx", "pkg@latest"]).unwrap().pinned);
        assert!(!run(&["npx", "pkg@^1.2.0"]).unwrap().pinned);
        assert!(run(&["/usr/bin/npx", "--yes", "pkg@0.6.2"]).unwrap().pinned);
        assert_eq!(run(&["npx", "-p", "a@1.0.0", "bin"]).unwrap().name, "a");
        assert_eq!(
            run(&["npx", "--package=b@2", "bin"]).unwrap().version.as_deref(),
            Some("2")
        );
        assert!(run(&["npx", "./local"]).is_none());
        assert!(run(&["pnpm", "dlx", "x@1.0.0"]).unwrap().pinned);
        assert!(!run(&["npm", "exec", "--", "x"]).unwrap().pinned);
        assert!(
            run(&["cmd", "/c", "npx", "x@1.0.0"]).is_none(),
            "cmd /c is unwrapped by argv(), not here"
        );
    }

    #[test]
    fn pypi_specs() {
        assert!(run(&["uvx", "mcp-server-git==0.6.2"]).unwrap().pinned);
        assert!(run(&["uvx", "mcp-server-git@0.6.2"]).unwrap().pinned);
        assert!(!run(&["uvx", "mcp-server-git"]).unwrap().pinned);
        assert!(!run(&["uvx", "mcp-server-git>=0.6"]).unwrap().pinned);
        let p = run(&["uvx", "--from", "pkg[cli]==1.0", "tool"]).unwrap();
        assert_eq!((p.name.as_str(), p.pinned), ("pkg", true));
        assert!(!run(&["pipx", "run", "--spec", "pkg", "tool"]).unwrap().pinned);
        assert!(run(&["uv", "tool", "run", "x==1"]).unwrap().pinned);
    }

    #[test]
    fn images() {
        let p = run(&["docker", "run", "-i", "--rm", "-e", "TOKEN", "ghcr.io/org/img"]).unwrap();
        assert_eq!((p.name.as_str(), p.pinned), ("ghcr.io/org/img", false));
        assert!(!run(&["docker", "run", "img:latest"]).unwrap().pinned);
        assert!(run(&["docker", "run", "reg:5000/img:1.4.2"]).unwrap().pinned);
        let digest = format!("img@sha256:{}", "a".repeat(64));
        assert!(run(&["podman", "run", &digest]).unwrap().pinned);
        assert_eq!(run(&["docker", "run", "reg:5000/img"]).unwrap().version, None);
    }
}
