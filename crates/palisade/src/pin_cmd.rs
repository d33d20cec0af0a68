//! `palisade pin add|verify|show`: supply-chain pins of launched stdio servers
//! (see docs/supply-chain.md). Exit codes: 0 ok, 1 a pin does not verify (or
//! an install differs from its registry artifact), 2 bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Subcommand;
use palisade_config::{Config, LaunchPin, NpmPin, PypiPin, StdioConfig, Transport};
use palisade_supply::{Limits, PinError, check_launch, edit, executable_digest, npm, pypi, tree_digest};

#[derive(Subcommand)]
pub enum PinCmd {
    /// Compute the current pin of a configured stdio server and record it in
    /// the configuration file (comments and layout are kept). With no
    /// --npm/--pypi/--executable, the kinds of the existing pin are refreshed
    /// (or the executable is pinned).
    Add {
        /// The upstream's name in the configuration.
        upstream: String,
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
        /// Pin an npm package installed under --prefix.
        #[arg(long, requires = "prefix", conflicts_with = "pypi")]
        npm: Option<String>,
        /// The npm install root (the folder holding node_modules/).
        #[arg(long)]
        prefix: Option<PathBuf>,
        /// Pin a PyPI package installed in --venv.
        #[arg(long, requires = "venv")]
        pypi: Option<String>,
        /// The virtual environment.
        #[arg(long)]
        venv: Option<PathBuf>,
        /// Pin the SHA-256 of the resolved command.
        #[arg(long)]
        executable: bool,
        /// Record an npm pin even when the installed files cannot be compared
        /// with the registry tarball (noted in a comment above the pin).
        #[arg(long)]
        trust_installed: bool,
        /// Print the pin without writing the file.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the pins of every stdio server (or one) now. Exit 1 on a mismatch.
    Verify {
        upstream: Option<String>,
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
    },
    /// Print the pins in the configuration.
    Show {
        upstream: Option<String>,
        #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: PinCmd) -> ExitCode {
    match cmd {
        PinCmd::Add {
            upstream,
            config,
            npm,
            prefix,
            pypi,
            venv,
            executable,
            trust_installed,
            dry_run,
        } => {
            let req = AddRequest {
                npm: npm.zip(prefix),
                pypi: pypi.zip(venv),
                executable,
                trust_installed,
                dry_run,
            };
            match add(&config, &upstream, req) {
                Ok(()) => ExitCode::SUCCESS,
                Err(Fail::Input(m)) => {
                    eprintln!("palisade pin add: {m}");
                    ExitCode::from(2)
                }
                Err(Fail::Mismatch(m)) => {
                    eprintln!("palisade pin add: {m}");
                    ExitCode::from(1)
                }
            }
        }
        PinCmd::Verify { upstream, config } => verify(&config, upstream.as_deref()),
        PinCmd::Show { upstream, config, json } => show(&config, upstream.as_deref(), json),
    }
}

enum Fail {
    Input(String),
    Mismatch(String),
}

impl From<PinError> for Fail {
    fn from(e: PinError) -> Self {
        match e {
            PinError::Mismatch(_) | PinError::Hostile(_) => Fail::Mismatch(e.to_string()),
            _ => Fail::Input(e.to_string()),
        }
    }
}

struct AddRequest {
    npm: Option<(String, PathBuf)>,
    pypi: Option<(String, PathBuf)>,
    executable: bool,
    trust_installed: bool,
    dry_run: bool,
}

fn load(config: &Path) -> Result<Config, String> {
    Config::load(config).map_err(|errs| {
        let mut s = format!("configuration error in {}:", config.display());
        for e in &errs.0 {
            s.push_str(&format!("\n  {e}"));
        }
        s
    })
}

fn stdio_of<'a>(config: &'a Config, name: &str) -> Result<&'a StdioConfig, String> {
    let up = config.upstreams.get(name).ok_or_else(|| {
        let names: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
        format!(
            "no upstream {name:?} in the configuration (upstreams: {})",
            names.join(", ")
        )
    })?;
    match &up.get_ref().transport {
        Transport::Stdio(s) => Ok(s),
        Transport::Http(_) => Err(format!(
            "upstream {name:?} is an HTTP server: only launched (stdio) servers are pinned; HTTP upstreams are pinned by TLS certificate (tls_pins)"
        )),
    }
}

fn absolute(p: &Path) -> Result<PathBuf, Fail> {
    std::fs::canonicalize(p).map_err(|e| Fail::Input(format!("{}: {e}", p.display())))
}

fn add(config_path: &Path, name: &str, mut req: AddRequest) -> Result<(), Fail> {
    let config = load(config_path).map_err(Fail::Input)?;
    let stdio = stdio_of(&config, name).map_err(Fail::Input)?;
    // Nothing asked: refresh what is pinned, or pin the executable.
    if req.npm.is_none() && req.pypi.is_none() && !req.executable {
        match &stdio.pin {
            Some(p) => {
                req.executable = p.executable.is_some();
                req.npm = p.npm.as_ref().map(|n| (n.package.clone(), n.prefix.clone()));
                req.pypi = p.pypi.as_ref().map(|y| (y.package.clone(), y.venv.clone()));
            }
            None => req.executable = true,
        }
    }
    let mut pin = LaunchPin::default();
    let mut notes: Vec<String> = Vec::new();
    let mut report: Vec<String> = Vec::new();
    if req.executable {
        let (path, digest) = executable_digest(stdio, &Limits::default())?;
        report.push(format!("executable {} {digest}", path.display()));
        pin.executable = Some(digest);
    }
    if let Some((package, prefix)) = &req.npm {
        palisade_config::check_npm_name(package).map_err(Fail::Input)?;
        let prefix = absolute(prefix)?;
        let (p, note, lines) = npm_pin(package, &prefix, req.trust_installed)?;
        notes.extend(note);
        report.extend(lines);
        pin.npm = Some(p);
    }
    if let Some((package, venv)) = &req.pypi {
        palisade_config::check_pypi_name(package).map_err(Fail::Input)?;
        let venv = std::path::absolute(venv).map_err(|e| Fail::Input(format!("{}: {e}", venv.display())))?;
        let (p, lines) = pypi_pin(package, &venv)?;
        report.extend(lines);
        pin.pypi = Some(p);
    }
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| Fail::Input(format!("cannot read {}: {e}", config_path.display())))?;
    let mut note = format!("pinned by `palisade pin add` at {}", now());
    for n in &notes {
        note.push('\n');
        note.push_str(n);
    }
    let new_text = edit::write_pin(&text, name, &pin, Some(&note)).map_err(Fail::Input)?;
    // The result must load, and the new pin must verify against the install.
    let new_config = Config::from_toml(&new_text)
        .map_err(|e| Fail::Input(format!("the pinned configuration does not load: {e}")))?;
    let new_stdio = stdio_of(&new_config, name).map_err(Fail::Input)?;
    palisade_supply::verify_launch(new_stdio)?;
    for l in &report {
        println!("{name}: {l}");
    }
    if req.dry_run {
        let snippet = edit::write_pin("[upstreams.x]\n", "x", &pin, None).map_err(Fail::Input)?;
        print!(
            "{}",
            snippet
                .replace("[upstreams.x.", &format!("[upstreams.{name}."))
                .replacen("[upstreams.x]\n", "", 1)
        );
        println!("(dry run: {} not changed)", config_path.display());
        return Ok(());
    }
    write_atomic(config_path, &new_text).map_err(Fail::Input)?;
    println!("{name}: pin recorded in {}", config_path.display());
    Ok(())
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.pin-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("config"),
        std::process::id()
    ));
    let perms = std::fs::metadata(path).map(|m| m.permissions()).ok();
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Some(p) = perms.clone() {
            std::fs::set_permissions(&tmp, p)?;
        }
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// npm's cache folder: `npm config get cache`, else `$npm_config_cache` / `~/.npm`.
fn npm_cache() -> Option<PathBuf> {
    if let Some(c) = npm::cache_dir().filter(|_| std::env::var_os("npm_config_cache").is_some()) {
        return Some(c);
    }
    let out = Command::new("npm")
        .args(["config", "get", "cache"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success());
    out.and_then(|o| {
        let s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        (!s.is_empty() && Path::new(&s).is_absolute()).then(|| PathBuf::from(s))
    })
    .or_else(npm::cache_dir)
}

type NpmResult = (NpmPin, Option<String>, Vec<String>);

fn npm_pin(package: &str, prefix: &Path, trust_installed: bool) -> Result<NpmResult, Fail> {
    let version = npm::installed_version(prefix, package)?;
    palisade_config::check_exact_semver(&version).map_err(Fail::Input)?;
    let (integrity, locked_version, lockfile) = npm::locked_integrity(prefix, package)?;
    if !locked_version.is_empty() && locked_version != version {
        return Err(Fail::Mismatch(format!(
            "{} records {package}@{locked_version} but {version} is installed",
            lockfile.display()
        )));
    }
    palisade_config::check_npm_integrity(&integrity)
        .map_err(|e| Fail::Input(format!("{}: {package}: {e}", lockfile.display())))?;
    let mut lines = vec![format!("npm {package}@{version} {}", integrity)];
    let mut note = None;
    let cache = npm_cache();
    let mut tarball = cache.as_deref().and_then(|c| npm::cached_tarball(c, &integrity));
    if tarball.is_none() {
        // Fetch it into npm's cache once (the registry checks the integrity on the way in).
        let spec = format!("{package}@{version}");
        let status = Command::new("npm")
            .args(["cache", "add", &spec])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            tarball = cache.as_deref().and_then(|c| npm::cached_tarball(c, &integrity));
        }
    }
    let pkg_dir = npm::package_dir(prefix, package);
    match tarball {
        Some(tgz) => {
            let cmp = npm::compare_with_tarball(&tgz, &integrity, &pkg_dir)?;
            if !cmp.differences.is_empty() {
                return Err(Fail::Mismatch(format!(
                    "the installed files of {package}@{version} differ from its registry tarball: {}",
                    cmp.summary(10)
                )));
            }
            lines.push(format!("npm {package}: {} files match the registry tarball", cmp.files));
        }
        None if trust_installed => {
            note = Some(format!(
                "--trust-installed: the files of {package}@{version} were NOT compared with the registry tarball (not in the npm cache)"
            ));
            lines.push(format!(
                "npm {package}: NOT compared with the registry tarball (--trust-installed)"
            ));
        }
        None => {
            return Err(Fail::Input(format!(
                "the registry tarball of {package}@{version} ({}) is not in the npm cache ({}) and `npm cache add` could not fetch it; \
                 the install cannot be verified (use --trust-installed to pin it anyway)",
                npm::short_sri(&integrity),
                cache
                    .map(|c| c.display().to_string())
                    .unwrap_or_else(|| "unknown".into())
            )));
        }
    }
    // Dependencies: compare those whose tarballs are in the cache.
    if let Some(cache) = &cache {
        let (checked, uncached) = verify_dependencies(prefix, package, cache)?;
        lines.push(format!(
            "npm dependencies: {checked} compared with their registry tarballs, {uncached} not in the npm cache (covered by the tree digest only)"
        ));
    }
    let root = prefix.join("node_modules");
    let started = std::time::Instant::now();
    let tree = tree_digest(&root, &Limits::default())?;
    lines.push(format!(
        "tree {} ({} files, {} bytes, {} symlinks, {} ms)",
        tree.digest,
        tree.files,
        tree.bytes,
        tree.symlinks,
        started.elapsed().as_millis()
    ));
    Ok((
        NpmPin {
            package: package.to_owned(),
            version,
            integrity,
            prefix: prefix.to_path_buf(),
            tree: tree.digest,
        },
        note,
        lines,
    ))
}

/// Compares every other package of the hidden lockfile whose tarball npm has
/// cached with its install; returns (compared, not cached).
fn verify_dependencies(prefix: &Path, top: &str, cache: &Path) -> Result<(usize, usize), Fail> {
    let lock = prefix.join("node_modules/.package-lock.json");
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return Ok((0, 0));
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Fail::Mismatch(format!("{}: {e}", lock.display())))?;
    let Some(pkgs) = v.get("packages").and_then(|p| p.as_object()) else {
        return Ok((0, 0));
    };
    let (mut checked, mut uncached) = (0, 0);
    for (key, entry) in pkgs {
        let Some(rel) = key.strip_prefix("node_modules/") else {
            continue;
        };
        if rel == top || entry.get("link").and_then(|l| l.as_bool()) == Some(true) {
            continue;
        }
        let dir = prefix.join(key);
        if !dir.is_dir() {
            continue;
        }
        let Some(integrity) = entry.get("integrity").and_then(|i| i.as_str()) else {
            uncached += 1;
            continue;
        };
        match npm::cached_tarball(cache, integrity) {
            Some(tgz) => {
                let cmp = npm::compare_with_tarball(&tgz, integrity, &dir)?;
                if !cmp.differences.is_empty() {
                    return Err(Fail::Mismatch(format!(
                        "the installed files of the dependency {rel} differ from its registry tarball: {}",
                        cmp.summary(10)
                    )));
                }
                checked += 1;
            }
            None => uncached += 1,
        }
    }
    Ok((checked, uncached))
}

fn pypi_pin(package: &str, venv: &Path) -> Result<(PypiPin, Vec<String>), Fail> {
    let inst = pypi::inspect(venv, package, &Limits::default())?;
    palisade_config::check_exact_pep440(&inst.version).map_err(Fail::Input)?;
    if !inst.differences.is_empty() {
        return Err(Fail::Mismatch(format!(
            "installed files differ from their RECORD hashes: {}",
            inst.differences.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let check = pypi::check_published_wheel(venv, package, &inst.version, &inst.dist_info)?;
    if !check.differences.is_empty() {
        return Err(Fail::Mismatch(format!(
            "the install of {package} {} differs from the published wheel {}: {}",
            inst.version,
            check.file_name,
            check.differences.into_iter().take(10).collect::<Vec<_>>().join(", ")
        )));
    }
    let wheel_pin = check.wheel;
    let lines = vec![
        format!("pypi {package}=={} wheel {wheel_pin}", inst.version),
        format!("pypi covers {} ({} files)", inst.dists.join(", "), inst.files),
    ];
    Ok((
        PypiPin {
            package: package.to_owned(),
            version: inst.version,
            wheel: wheel_pin,
            venv: venv.to_path_buf(),
            tree: inst.tree,
        },
        lines,
    ))
}

/// Loads the configuration and checks that `only`, if given, is a stdio upstream.
fn load_for(config_path: &Path, only: Option<&str>, verb: &str) -> Result<Config, ExitCode> {
    let config = load(config_path).map_err(|m| {
        eprintln!("{m}");
        ExitCode::from(2)
    })?;
    if let Some(name) = only
        && let Err(m) = stdio_of(&config, name)
    {
        eprintln!("palisade pin {verb}: {m}");
        return Err(ExitCode::from(2));
    }
    Ok(config)
}

fn verify(config_path: &Path, only: Option<&str>) -> ExitCode {
    let config = match load_for(config_path, only, "verify") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let require = config.integrity.require_launch_pins;
    let mut failed = false;
    for (name, up) in &config.upstreams {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Transport::Stdio(s) = &up.get_ref().transport else {
            continue;
        };
        let started = std::time::Instant::now();
        match check_launch(s, require) {
            Ok(Some(v)) => println!("{name}: ok ({v}; {} ms)", started.elapsed().as_millis()),
            Ok(None) => {
                if only.is_some() {
                    println!("{name}: no pin");
                    failed = true;
                } else {
                    println!("{name}: unpinned");
                }
            }
            Err(e) => {
                println!("{name}: FAILED: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn show(config_path: &Path, only: Option<&str>, json: bool) -> ExitCode {
    let config = match load_for(config_path, only, "show") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut all = serde_json::Map::new();
    for (name, up) in &config.upstreams {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Transport::Stdio(s) = &up.get_ref().transport else {
            continue;
        };
        let v = match &s.pin {
            None => serde_json::Value::Null,
            Some(p) => serde_json::json!({
                "executable": p.executable,
                "npm": p.npm.as_ref().map(|n| serde_json::json!({
                    "package": n.package, "version": n.version, "integrity": n.integrity,
                    "prefix": n.prefix, "tree": n.tree,
                })),
                "pypi": p.pypi.as_ref().map(|y| serde_json::json!({
                    "package": y.package, "version": y.version, "wheel": y.wheel,
                    "venv": y.venv, "tree": y.tree,
                })),
            }),
        };
        if !json {
            match &s.pin {
                None => println!("{name}: unpinned"),
                Some(p) => {
                    println!("{name}:");
                    if let Some(e) = &p.executable {
                        println!("  executable  {e}");
                    }
                    if let Some(n) = &p.npm {
                        println!("  npm         {}@{} in {}", n.package, n.version, n.prefix.display());
                        println!("  integrity   {}", n.integrity);
                        println!("  tree        {}", n.tree);
                    }
                    if let Some(y) = &p.pypi {
                        println!("  pypi        {}=={} in {}", y.package, y.version, y.venv.display());
                        println!("  wheel       {}", y.wheel);
                        println!("  tree        {}", y.tree);
                    }
                }
            }
        }
        all.insert(name.clone(), v);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    }
    ExitCode::SUCCESS
}
