//! The checks run on every configured server.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::extract::{Field, ServerEntry, Transport};
use crate::packages::{self, Package, base};

/// How bad a finding is. High findings make `palisade scan config` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    /// The SARIF `level`.
    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::Low => "note",
            Severity::Medium => "warning",
            Severity::High => "error",
        }
    }
}

/// A rule, as documented in SARIF and `docs/discovery.md`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    /// The usual severity (some findings of a rule are raised or lowered).
    pub severity: Severity,
    pub short: &'static str,
    pub help: &'static str,
}

pub const UNPINNED: &str = "unpinned-package";
pub const SECRET: &str = "plain-secret";
pub const DANGEROUS: &str = "dangerous-command";
pub const INSECURE: &str = "insecure-transport";
pub const URL_SECRET: &str = "secret-in-url";
pub const NO_SANDBOX: &str = "no-sandbox";
pub const DRIFT: &str = "config-drift";
pub const REMOTE: &str = "unknown-remote";
pub const AUTO_APPROVE: &str = "auto-approve";
pub const TOOL_POISONING: &str = "tool-poisoning";
pub const CONNECT_FAILED: &str = "connect-failed";

pub const RULES: &[Rule] = &[
    Rule {
        id: UNPINNED,
        name: "UnpinnedPackage",
        severity: Severity::Medium,
        short: "Server package without an exact version",
        help: "The server is fetched by a launcher (npx, uvx, pipx, docker run, ...) without an exact version or digest, or with a moving tag such as @latest. Each start may run different code than the one you reviewed. Pin an exact version (pkg@1.2.3, pkg==1.2.3, image@sha256:...), or pin it with `palisade pin add`.",
    },
    Rule {
        id: SECRET,
        name: "PlainSecret",
        severity: Severity::High,
        short: "Secret written in plain text in the configuration",
        help: "A credential is written in the configuration file (env, headers or arguments). Anyone who can read the file, its backups or a repository it is committed to has it. Rotate it, then reference it instead: ${VAR}, ${env:VAR}, ${input:id} (VS Code) or a secret store.",
    },
    Rule {
        id: DANGEROUS,
        name: "DangerousCommand",
        severity: Severity::High,
        short: "Server launched through a dangerous command",
        help: "The launch command elevates privileges (sudo), runs a shell or interpreter on an inline string, pipes a download into a shell, deletes files recursively, decodes hidden commands, or gives a container host privileges. Launch the server binary directly, with fixed arguments.",
    },
    Rule {
        id: INSECURE,
        name: "InsecureTransport",
        severity: Severity::High,
        short: "Remote server over plain HTTP",
        help: "The server is reached over http:// on a host that is not loopback: requests, tool results and credentials travel unencrypted and can be changed on the way. Use https://.",
    },
    Rule {
        id: URL_SECRET,
        name: "SecretInUrl",
        severity: Severity::High,
        short: "Credential in a URL",
        help: "A token, key or password is part of a URL (query string or user:password@). URLs end up in logs, proxies and browser history. Send it in a header taken from the environment instead.",
    },
    Rule {
        id: NO_SANDBOX,
        name: "NoSandbox",
        severity: Severity::Low,
        short: "Local server runs without a sandbox",
        help: "The server runs as a plain process of your user, with all your files, credentials and network. A container counts as a sandbox only with --network none and --read-only. Run it behind `palisade` (stdio upstream with a strict sandbox).",
    },
    Rule {
        id: DRIFT,
        name: "ConfigDrift",
        severity: Severity::Medium,
        short: "Same server configured differently in two places",
        help: "A server with the same name or the same package is configured with a different command, arguments, environment or URL in another file or scope. One of them is probably stale or was changed by someone else; which one runs depends on the client.",
    },
    Rule {
        id: REMOTE,
        name: "UnknownRemote",
        severity: Severity::Low,
        short: "Remote server on a host Palisade does not know",
        help: "The server is a remote endpoint on a host outside the short list of well-known MCP providers. Check that you trust its operator: it receives everything the client sends to its tools.",
    },
    Rule {
        id: AUTO_APPROVE,
        name: "AutoApprove",
        severity: Severity::Medium,
        short: "Tool calls run without confirmation",
        help: "The client is told to run this server's tools without asking (Gemini CLI `trust: true`, Cline `autoApprove`/`alwaysAllow`). A poisoned tool description or a prompt injection can then act without a human in the loop.",
    },
    Rule {
        id: TOOL_POISONING,
        name: "ToolPoisoning",
        severity: Severity::High,
        short: "Tool metadata with hidden instructions (--connect)",
        help: "With --connect, the server's tools/list was fetched and a tool's name, description or schema carries hidden instructions, concealment, exfiltration directions or invisible text. Do not use the server until the tool is explained.",
    },
    Rule {
        id: CONNECT_FAILED,
        name: "ConnectFailed",
        severity: Severity::Low,
        short: "Server could not be reached (--connect)",
        help: "With --connect, the server did not start, did not answer initialize or tools/list in time, or refused the connection. Its tools were not scanned.",
    },
];

pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// Where a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    /// JSON pointer (RFC 6901) into the file's document.
    pub pointer: String,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub message: String,
    pub location: Location,
    /// Stable across runs (rule, file, pointer and kind of problem; never a secret).
    pub fingerprint: String,
}

/// Builds findings for one server.
pub struct Sink<'a> {
    pub file: &'a str,
    pub findings: Vec<Finding>,
}

impl Sink<'_> {
    pub fn add(&mut self, rule: &'static str, severity: Severity, at: (&str, u32), kind: &str, message: String) {
        let fingerprint = fingerprint(&[rule, self.file, at.0, kind]);
        if self.findings.iter().any(|f| f.fingerprint == fingerprint) {
            return;
        }
        self.findings.push(Finding {
            rule,
            severity,
            message,
            location: Location {
                file: self.file.to_string(),
                pointer: at.0.to_string(),
                line: (at.1 > 0).then_some(at.1),
            },
            fingerprint,
        });
    }
}

/// FNV-1a (64-bit) over the parts, twice with different seeds: 32 hex digits.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut out = String::new();
    for seed in [0xcbf29ce484222325u64, 0x84222325cbf29ce4u64] {
        let mut h = seed;
        for p in parts {
            for b in p.bytes().chain(std::iter::once(0xff)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

fn at(f: &Field) -> (&str, u32) {
    (&f.pointer, f.line)
}

/// All per-server checks (everything except drift, which needs every file).
pub fn check(s: &ServerEntry, file: &str) -> (Vec<Finding>, Option<Package>) {
    let mut sink = Sink {
        file,
        findings: Vec::new(),
    };
    let argv = packages::argv(s.command.as_ref(), &s.args);
    let pkg = packages::package(&argv);
    if let Some(p) = &pkg {
        check_pinned(p, &mut sink);
    }
    check_dangerous(&argv, &mut sink);
    check_secrets(s, &argv, &mut sink);
    check_urls(s, &argv, &mut sink);
    check_sandbox(s, &argv, &mut sink);
    if let Some(a) = &s.auto_approve {
        sink.add(
            AUTO_APPROVE,
            Severity::Medium,
            at(a),
            "auto",
            format!("'{}' runs tools without confirmation ({})", s.name, a.value),
        );
    }
    (sink.findings, pkg)
}

fn check_pinned(p: &Package, sink: &mut Sink) {
    if p.pinned {
        return;
    }
    let what = match p.ecosystem {
        "oci" => "container image",
        "pypi" => "PyPI package",
        _ => "npm package",
    };
    let msg = match p.version.as_deref() {
        None => format!(
            "{what} '{}' has no version: every start may fetch different code",
            p.name
        ),
        Some(v)
            if [
                "latest", "next", "main", "master", "edge", "nightly", "canary", "beta", "stable",
            ]
            .contains(&v.to_ascii_lowercase().as_str()) =>
        {
            format!("{what} '{}' uses the moving tag '{v}'", p.name)
        }
        Some(v) => format!("{what} '{}' is not pinned to an exact version ('{v}')", p.name),
    };
    sink.add(UNPINNED, Severity::Medium, at(&p.spec), "unpinned", msg);
}

// ---------------------------------------------------------------- commands

const SHELLS: &[&str] = &[
    "sh", "bash", "zsh", "dash", "ksh", "fish", "ash", "csh", "tcsh", "busybox",
];
const ELEVATE: &[&str] = &["sudo", "doas", "pkexec", "su", "runas", "gsudo"];

struct Pattern {
    re: Regex,
    kind: &'static str,
    severity: Severity,
    what: &'static str,
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    let p = |re: &str, kind, severity, what| Pattern {
        re: Regex::new(re).expect("regex"),
        kind,
        severity,
        what,
    };
    vec![
        p(
            r"(?i)\b(curl|wget|fetch|iwr|invoke-webrequest|irm|invoke-restmethod)\b[^|;&]*\|\s*(sudo\s+)?(\S*/)?(ba|z|da|k|fi)?sh\b|\b(curl|wget)\b[^|;&]*\|\s*(sudo\s+)?(\S*/)?(python[0-9.]*|perl|ruby|node|iex)\b",
            "pipe-to-shell",
            Severity::High,
            "pipes a download into a shell",
        ),
        p(
            r"(?i)\b(iex|invoke-expression)\b.*\b(curl|wget|iwr|irm|invoke-webrequest|invoke-restmethod|downloadstring)\b",
            "pipe-to-shell",
            Severity::High,
            "runs downloaded code",
        ),
        p(
            r"\brm\s+(-[A-Za-z]*[rR][A-Za-z]*\s+(-[A-Za-z]*\s+)*-?[A-Za-z]*f|-[A-Za-z]*f[A-Za-z]*\s+(-[A-Za-z]*\s+)*-?[A-Za-z]*[rR]|-[A-Za-z]*[rR][A-Za-z]*f|-[A-Za-z]*f[A-Za-z]*[rR]|--recursive\s+--force|--force\s+--recursive)",
            "rm-rf",
            Severity::High,
            "deletes files recursively (rm -rf)",
        ),
        p(
            r"\beval\b",
            "eval",
            Severity::High,
            "evaluates a constructed string (eval)",
        ),
        p(
            r"(?i)\bbase64\s+(-d|--decode|-D)\b.*\|",
            "decode-exec",
            Severity::High,
            "decodes and runs a hidden command",
        ),
        p(
            r"/dev/(tcp|udp)/",
            "dev-tcp",
            Severity::High,
            "opens a raw network connection (/dev/tcp)",
        ),
        p(
            r"\b(nc|ncat|netcat)\b.*\s-(e|c)\s",
            "netcat-exec",
            Severity::High,
            "binds a shell to a network socket",
        ),
        p(r"\b(sudo|doas|pkexec)\b", "sudo", Severity::High, "elevates privileges"),
        p(
            r"\bchmod\s+(-R\s+)?[0-7]?777\b",
            "chmod-777",
            Severity::Medium,
            "makes files world-writable",
        ),
        p(
            r"\bmkfifo\b",
            "mkfifo",
            Severity::Medium,
            "creates a named pipe (a reverse-shell building block)",
        ),
    ]
});

fn check_dangerous(argv: &[Field], sink: &mut Sink) {
    let Some(cmd) = argv.first() else { return };
    let a0 = base(&cmd.value);
    let rest = &argv[1..];
    if ELEVATE.contains(&a0.as_str()) {
        sink.add(
            DANGEROUS,
            Severity::High,
            at(cmd),
            "sudo",
            format!("the server is started with '{a0}': it runs with elevated privileges"),
        );
    }
    // Shells and interpreters on inline code.
    let inline = if SHELLS.contains(&a0.as_str()) {
        rest.iter().find(|f| {
            let v = f.value.as_str();
            v == "-c" || (v.starts_with('-') && !v.starts_with("--") && v.len() <= 5 && v.contains('c'))
        })
    } else if a0 == "cmd" {
        rest.iter()
            .find(|f| f.value.eq_ignore_ascii_case("/c") || f.value.eq_ignore_ascii_case("/k"))
    } else {
        None
    };
    if let Some(flag) = inline {
        sink.add(
            DANGEROUS,
            Severity::Medium,
            at(flag),
            "shell-c",
            format!(
                "the server is started through '{a0} {}': a shell runs an inline command string",
                flag.value
            ),
        );
    }
    if a0 == "powershell" || a0 == "pwsh" {
        for f in rest {
            let v = f.value.to_ascii_lowercase();
            if ["-enc", "-e", "-ec", "-encodedcommand", "-en", "-encoded"].contains(&v.as_str())
                || (v.starts_with("-enc") && "-encodedcommand".starts_with(&v))
            {
                sink.add(
                    DANGEROUS,
                    Severity::High,
                    at(f),
                    "ps-enc",
                    format!("'{a0} {}' runs a base64-encoded (hidden) command", f.value),
                );
            } else if v == "-c" || v == "-command" || v == "-com" {
                sink.add(
                    DANGEROUS,
                    Severity::Medium,
                    at(f),
                    "shell-c",
                    format!(
                        "the server is started through '{a0} {}': a shell runs an inline command string",
                        f.value
                    ),
                );
            }
        }
    }
    let interp = matches!(a0.as_str(), "node" | "deno" | "bun" | "perl" | "ruby" | "php") || a0.starts_with("python");
    if interp
        && let Some(f) = rest
            .iter()
            .find(|f| matches!(f.value.as_str(), "-e" | "--eval" | "-c" | "-p" | "--print" | "-r"))
        && !(a0 == "php" && f.value == "-c")
    {
        sink.add(
            DANGEROUS,
            Severity::Medium,
            at(f),
            "inline-code",
            format!("'{a0} {}' runs inline code instead of a script or package", f.value),
        );
    }
    // Patterns anywhere in the command line.
    let line: String = argv.iter().map(|f| f.value.as_str()).collect::<Vec<_>>().join(" ");
    for p in PATTERNS.iter() {
        if p.kind == "sudo" && ELEVATE.contains(&a0.as_str()) {
            continue;
        }
        if p.re.is_match(&line) {
            let f = argv.iter().find(|f| p.re.is_match(&f.value)).unwrap_or(cmd);
            sink.add(
                DANGEROUS,
                p.severity,
                at(f),
                p.kind,
                format!("the launch command {}", p.what),
            );
        }
    }
    // Containers given host privileges.
    if matches!(a0.as_str(), "docker" | "podman" | "nerdctl") && rest.first().map(|f| f.value.as_str()) == Some("run") {
        let (opts, _) = packages::docker_run_parts(&rest[1..]);
        for (k, v) in &opts {
            let v = v.as_deref().unwrap_or("");
            let bad = match k.as_str() {
                "--privileged" => Some("--privileged gives the container full access to the host"),
                "--pid" | "--ipc" | "--uts" | "--userns" if v == "host" => Some("shares a host namespace"),
                "--network" | "--net" if v == "host" => Some("--network host gives the container the host's network"),
                "--cap-add" if v.eq_ignore_ascii_case("all") || v.to_ascii_uppercase().contains("SYS_ADMIN") => {
                    Some("adds powerful capabilities (--cap-add)")
                }
                "--security-opt" if v.contains("unconfined") => Some("turns off seccomp or AppArmor confinement"),
                "-v" | "--volume" | "--mount" if v.contains("docker.sock") => {
                    Some("mounts the container engine's socket (host root)")
                }
                "-v" | "--volume" if v.starts_with("/:") || v == "/" => Some("mounts the host's root filesystem"),
                _ => None,
            };
            if let Some(why) = bad {
                let f = argv.iter().find(|f| f.value.contains(k.as_str())).unwrap_or(cmd);
                sink.add(DANGEROUS, Severity::High, at(f), k, format!("the container {why}"));
            }
        }
    }
}

// ---------------------------------------------------------------- secrets

static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\$\{\{[^}]*\}\}|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\{env:[^}]*\}|%[A-Za-z_][A-Za-z0-9_]*%|\{\{[^}]*\}\}",
    )
    .expect("regex")
});
static AUTH_SCHEME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(bearer|basic|token|apikey|api-key|key|digest)\s+").expect("regex"));
static SECRET_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(token|secret|passw|pwd|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential|auth|bearer|cookie|session|signing[_-]?key|encryption[_-]?key|(^|[_-])pat($|[_-])|(^|[_-])dsn$|conn(ection)?[_-]?str)",
    )
    .expect("regex")
});
static NOT_SECRET_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)([_-](file|path|dir|url|uri|endpoint|host|port|type|mode|method|header|name|id|enabled|disabled|timeout|expiry|expires|ttl|scope|scopes|region|version|provider|issuer|audience|env|var|location)$|^(auth[_-]?(type|mode|method|provider))$)",
    )
    .expect("regex")
});
static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(<[^>]*>|\[[^\]]*\]|your[-_ .].*|.*your[-_]?(api[-_]?)?(key|token|secret|password).*|x{4,}|\*{3,}|\.{3,}|changeme|change[-_]me|replace[-_]?me|todo|example|dummy|placeholder|redacted|none|null|undefined|test|secret|password)$")
        .expect("regex")
});
static URL_WITH_PASSWORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:([^/\s@]+)@").expect("regex"));

struct TokenShape {
    re: Regex,
    what: &'static str,
}

static TOKENS: LazyLock<Vec<TokenShape>> = LazyLock::new(|| {
    let t = |re: &str, what| TokenShape {
        re: Regex::new(re).expect("regex"),
        what,
    };
    vec![
        t(r"\bgh[pousr]_[A-Za-z0-9]{30,}", "GitHub token"),
        t(r"\bgithub_pat_[A-Za-z0-9_]{20,}", "GitHub token"),
        t(r"\bsk-ant-[A-Za-z0-9_-]{20,}", "Anthropic API key"),
        t(r"\bsk-(proj-|svcacct-)?[A-Za-z0-9_-]{20,}", "OpenAI-style API key"),
        t(r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "Slack token"),
        t(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "AWS access key id"),
        t(r"\bAIza[0-9A-Za-z_-]{35}", "Google API key"),
        t(r"\bglpat-[A-Za-z0-9_-]{20,}", "GitLab token"),
        t(r"\bnpm_[A-Za-z0-9]{36}", "npm token"),
        t(r"\b[rs]k_live_[A-Za-z0-9]{16,}", "Stripe secret key"),
        t(r"\bhf_[A-Za-z0-9]{30,}", "Hugging Face token"),
        t(r"\bshp(at|ss|ca)_[a-fA-F0-9]{32}", "Shopify token"),
        t(
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            "JSON Web Token",
        ),
        t(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", "private key"),
    ]
});

/// True when the value only references a secret kept elsewhere
/// (`${VAR}`, `$VAR`, `${env:VAR}`, `${input:id}`, `${{ secrets.X }}`, ...).
pub fn is_reference(value: &str) -> bool {
    let rest = AUTH_SCHEME.replace(value.trim(), "");
    let rest = REFERENCE.replace_all(&rest, "");
    rest.trim().is_empty() && REFERENCE.is_match(value)
}

/// The hint printed instead of a secret: what it looks like and its length, never its content.
pub fn redacted_hint(what: &str, value: &str) -> String {
    format!("{what}, {} characters, redacted", value.chars().count())
}

/// A known token shape inside `value`.
fn token_shape(value: &str) -> Option<&'static TokenShape> {
    TOKENS.iter().find(|t| t.re.is_match(value))
}

fn looks_like_credential(value: &str) -> bool {
    let v = AUTH_SCHEME.replace(value.trim(), "");
    let v = v.trim();
    if v.chars().count() < 8 || v.contains(char::is_whitespace) {
        return false;
    }
    if PLACEHOLDER.is_match(v) || v.starts_with(['/', '~', '.']) || v.contains(":\\") || v.starts_with("http") {
        return false;
    }
    if REFERENCE.is_match(v) {
        return false;
    }
    let classes = [
        v.chars().any(|c| c.is_ascii_lowercase()),
        v.chars().any(|c| c.is_ascii_uppercase()),
        v.chars().any(|c| c.is_ascii_digit()),
        v.chars().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    classes >= 2 || v.len() >= 20
}

/// Whether a (key, value) pair holds a plain secret; the description of what it is.
pub fn secret_in(key: Option<&str>, value: &str) -> Option<&'static str> {
    if value.trim().is_empty() || is_reference(value) {
        return None;
    }
    if let Some(t) = token_shape(value) {
        return Some(t.what);
    }
    if let Some(c) = URL_WITH_PASSWORD.captures(value)
        && !REFERENCE.is_match(&c[1])
    {
        return Some("URL with a password");
    }
    let key = key?;
    if SECRET_KEY.is_match(key) && !NOT_SECRET_KEY.is_match(key) && looks_like_credential(value) {
        return Some("credential");
    }
    None
}

fn check_secrets(s: &ServerEntry, argv: &[Field], sink: &mut Sink) {
    for (k, f) in &s.env {
        if let Some(what) = secret_in(Some(k), &f.value) {
            sink.add(
                SECRET,
                Severity::High,
                at(f),
                &format!("env:{k}"),
                format!("env {k} holds a plain {} ({})", what, redacted_hint(what, &f.value)),
            );
        }
    }
    for (k, f) in &s.headers {
        if let Some(what) = secret_in(Some(k), &f.value) {
            sink.add(
                SECRET,
                Severity::High,
                at(f),
                &format!("header:{k}"),
                format!("header {k} holds a plain {} ({})", what, redacted_hint(what, &f.value)),
            );
        }
    }
    if let Some(f) = &s.inline_token
        && let Some(what) = secret_in(Some("bearer_token"), &f.value)
    {
        sink.add(
            SECRET,
            Severity::High,
            at(f),
            "bearer_token",
            format!("bearer_token holds a plain {what} ({})", redacted_hint(what, &f.value)),
        );
    }
    for i in secret_args(argv) {
        let f = &argv[i];
        let what = secret_in(None, &f.value).unwrap_or("credential");
        sink.add(
            SECRET,
            Severity::High,
            at(f),
            &format!("arg:{}", f.pointer),
            format!(
                "a command-line argument holds a plain {what} ({})",
                redacted_hint(what, &f.value)
            ),
        );
    }
}

/// Indexes of arguments that are plain secrets: known token shapes,
/// `--token=VALUE`, `--api-key VALUE`, `--header "Authorization: Bearer VALUE"`.
pub fn secret_args(argv: &[Field]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, f) in argv.iter().enumerate().skip(1) {
        let v = f.value.as_str();
        if is_reference(v) {
            continue;
        }
        if secret_in(None, v).is_some() {
            out.push(i);
            continue;
        }
        if v.starts_with('-') {
            let name = v.trim_start_matches('-');
            if let Some((k, val)) = name.split_once('=') {
                if secret_in(Some(k), val).is_some() {
                    out.push(i);
                }
                continue;
            }
            if SECRET_KEY.is_match(name)
                && !NOT_SECRET_KEY.is_match(name)
                && let Some(next) = argv.get(i + 1)
                && !next.value.starts_with('-')
                && secret_in(Some(name), &next.value).is_some()
            {
                out.push(i + 1);
            }
            continue;
        }
        // "Header: value" (mcp-remote --header, curl -H).
        if let Some((k, val)) = v.split_once(':')
            && !k.contains(char::is_whitespace)
            && !k.is_empty()
            && !val.starts_with("//")
            && secret_in(Some(k), val.trim()).is_some()
        {
            out.push(i);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

// ---------------------------------------------------------------- URLs

/// Hosts of well-known MCP providers; other remote hosts get a low finding.
pub const KNOWN_HOSTS: &[&str] = &[
    "api.githubcopilot.com",
    "mcp.notion.com",
    "mcp.linear.app",
    "mcp.sentry.dev",
    "mcp.atlassian.com",
    "mcp.stripe.com",
    "mcp.supabase.com",
    "mcp.vercel.com",
    "mcp.cloudflare.com",
    "mcp.asana.com",
    "mcp.paypal.com",
    "mcp.zapier.com",
    "mcp.context7.com",
    "huggingface.co",
    "mcp.deepwiki.com",
];

pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || h.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_private(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
        return ip.is_private() || ip.is_link_local();
    }
    if let Ok(ip) = h.parse::<std::net::Ipv6Addr>() {
        let s = ip.segments()[0];
        return (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80;
    }
    h.ends_with(".local")
        || h.ends_with(".internal")
        || h.ends_with(".lan")
        || h.ends_with(".home.arpa")
        || !h.contains('.')
}

fn known_host(host: &str) -> bool {
    let h = host.to_ascii_lowercase();
    KNOWN_HOSTS.iter().any(|k| h == *k || h.ends_with(&format!(".{k}")))
}

fn secret_query_key(k: &str) -> bool {
    (SECRET_KEY.is_match(k) && !NOT_SECRET_KEY.is_match(k))
        || matches!(
            k.to_ascii_lowercase().as_str(),
            "key" | "sig" | "signature" | "code" | "access_token" | "api_key" | "apikey"
        )
}

/// What in a URL is a secret: descriptions (never values).
fn url_secrets(u: &url::Url) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(pw) = u.password() {
        let pw = percent_decode(pw);
        if !pw.is_empty() && !is_reference(&pw) {
            out.push("a password in user:password@".to_string());
        }
    } else if !u.username().is_empty() && token_shape(&percent_decode(u.username())).is_some() {
        out.push("a token as the user name".to_string());
    }
    for (k, v) in u.query_pairs() {
        if v.is_empty() || is_reference(&v) {
            continue;
        }
        if secret_query_key(&k) || token_shape(&v).is_some() {
            out.push(format!("query parameter '{k}' ({} characters)", v.chars().count()));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The URL with credentials replaced by `***`, for display.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut u) = url::Url::parse(raw) else {
        return if secret_in(None, raw).is_some() {
            "***".into()
        } else {
            raw.to_string()
        };
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    } else if !u.username().is_empty() && token_shape(u.username()).is_some() {
        let _ = u.set_username("***");
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let hide = !v.is_empty() && !is_reference(&v) && (secret_query_key(&k) || token_shape(&v).is_some());
                (k.into_owned(), if hide { "***".into() } else { v.into_owned() })
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string().replace("%2A%2A%2A", "***")
}

fn check_url(f: &Field, server: &str, is_endpoint: bool, sink: &mut Sink) {
    let Ok(u) = url::Url::parse(f.value.trim()) else {
        if is_endpoint && !is_reference(&f.value) {
            sink.add(
                REMOTE,
                Severity::Low,
                at(f),
                "bad-url",
                format!("'{server}' has a URL that does not parse"),
            );
        }
        return;
    };
    let Some(host) = u.host_str().map(str::to_string) else {
        return;
    };
    if matches!(u.scheme(), "http" | "ws") && !is_loopback(&host) {
        let (sev, where_) = if is_private(&host) {
            (Severity::Medium, "a local-network")
        } else {
            (Severity::High, "a remote")
        };
        sink.add(
            INSECURE,
            sev,
            at(f),
            "plain-http",
            format!(
                "'{server}' talks to {where_} host ({host}) over unencrypted {}://",
                u.scheme()
            ),
        );
    }
    for what in url_secrets(&u) {
        sink.add(
            URL_SECRET,
            Severity::High,
            at(f),
            &what,
            format!("'{server}' has a credential in its URL: {what}"),
        );
    }
    if is_endpoint && matches!(u.scheme(), "http" | "https" | "ws" | "wss") && !is_loopback(&host) && !known_host(&host)
    {
        sink.add(
            REMOTE,
            Severity::Low,
            at(f),
            "unknown-host",
            format!("'{server}' is a remote server on {host}, not a well-known MCP provider: check that you trust it"),
        );
    }
}

fn check_urls(s: &ServerEntry, argv: &[Field], sink: &mut Sink) {
    if let Some(u) = &s.url {
        check_url(u, &s.name, true, sink);
    }
    // URLs in arguments (mcp-remote, supergateway, ...).
    let bridge = argv.iter().any(|f| {
        let v = f.value.to_ascii_lowercase();
        v.starts_with("mcp-remote") || v.contains("/mcp-remote") || v.starts_with("supergateway")
    });
    for f in argv.iter().skip(1) {
        let v = f.value.trim();
        let v = v
            .split_once('=')
            .filter(|(k, _)| k.starts_with('-'))
            .map(|(_, v)| v)
            .unwrap_or(v);
        if ["http://", "https://", "ws://", "wss://"]
            .iter()
            .any(|p| v.to_ascii_lowercase().starts_with(p))
        {
            let field = Field {
                value: v.to_string(),
                ..f.clone()
            };
            check_url(&field, &s.name, bridge, sink);
        }
    }
}

// ---------------------------------------------------------------- sandbox

const SANDBOXES: &[&str] = &[
    "palisade",
    "bwrap",
    "firejail",
    "nsjail",
    "minijail0",
    "sandbox-exec",
    "landrun",
];

fn check_sandbox(s: &ServerEntry, argv: &[Field], sink: &mut Sink) {
    if s.transport != Transport::Stdio {
        return;
    }
    let Some(cmd) = argv.first() else { return };
    let a0 = base(&cmd.value);
    if SANDBOXES.contains(&a0.as_str()) {
        return;
    }
    if matches!(a0.as_str(), "docker" | "podman" | "nerdctl") && argv.get(1).map(|f| f.value.as_str()) == Some("run") {
        let (opts, _) = packages::docker_run_parts(&argv[2..]);
        let no_net = opts
            .iter()
            .any(|(k, v)| (k == "--network" || k == "--net") && v.as_deref() == Some("none"));
        let ro = opts
            .iter()
            .any(|(k, v)| k == "--read-only" && v.as_deref() != Some("false"));
        let mut missing = Vec::new();
        if !no_net {
            missing.push("network access (no --network none)");
        }
        if !ro {
            missing.push("a writable root filesystem (no --read-only)");
        }
        if !missing.is_empty() {
            sink.add(
                NO_SANDBOX,
                Severity::Low,
                at(cmd),
                "container",
                format!(
                    "'{}' runs in a container with {}: not a sandbox",
                    s.name,
                    missing.join(" and ")
                ),
            );
        }
        return;
    }
    sink.add(
        NO_SANDBOX,
        Severity::Low,
        at(cmd),
        "direct",
        format!("'{}' runs '{}' directly, with your user's files, credentials and network: launch it through palisade with a sandbox", s.name, a0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_not_secrets() {
        for v in [
            "${GITHUB_TOKEN}",
            "$TOKEN",
            "${env:X}",
            "${input:api-key}",
            "Bearer ${TOKEN}",
            "${{ secrets.KEY }}",
            "{env:X}",
        ] {
            assert!(is_reference(v), "{v}");
            assert_eq!(secret_in(Some("API_TOKEN"), v), None, "{v}");
        }
        assert!(!is_reference("abc${X}"));
    }

    #[test]
    fn secrets_by_shape_and_key() {
        assert_eq!(
            secret_in(Some("X"), &format!("ghp_{}", "a1B2".repeat(9))),
            Some("GitHub token")
        );
        assert_eq!(
            secret_in(Some("DATABASE_URL"), "postgres://app:hunter2pw@db/x"),
            Some("URL with a password")
        );
        assert_eq!(secret_in(Some("DATABASE_URL"), "postgres://app:${PW}@db/x"), None);
        assert_eq!(secret_in(Some("MY_API_KEY"), "Zx81-q0Lm2"), Some("credential"));
        assert_eq!(secret_in(Some("MY_API_KEY"), "<your-api-key>"), None);
        assert_eq!(secret_in(Some("MY_API_KEY"), "YOUR_API_KEY_HERE"), None);
        assert_eq!(secret_in(Some("TOKEN_FILE"), "/run/secrets/tok3n-Abc"), None);
        assert_eq!(secret_in(Some("AUTH_TYPE"), "OAuth2Bearer"), None);
        assert_eq!(secret_in(Some("LOG_LEVEL"), "Debug-1234567"), None);
        assert_eq!(
            secret_in(Some("Authorization"), "Bearer s3cr3t-Value-99"),
            Some("credential")
        );
    }

    #[test]
    fn url_redaction() {
        let r = redact_url("https://u:pw@h.example/p?token=abcdef&x=1");
        assert!(!r.contains("pw@") && !r.contains("abcdef"), "{r}");
        assert!(r.contains("x=1"));
        assert_eq!(redact_url("https://h.example/mcp"), "https://h.example/mcp");
    }

    #[test]
    fn fingerprints_are_stable() {
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["ab", ""]), fingerprint(&["a", "b"]));
        assert_eq!(fingerprint(&["x"]).len(), 32);
    }
}
