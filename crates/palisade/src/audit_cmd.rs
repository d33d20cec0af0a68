//! `palisade audit verify|query|export`: offline work on the audit chain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use palisade_audit::AuditKey;
use palisade_audit::index::{Filter, Index};
use palisade_config::Config;
use serde_json::{Value, json};

/// Where the chain is and which key checks it.
#[derive(Args, Clone)]
pub struct ChainArgs {
    /// The configuration whose `[audit]` names the folder and the key.
    #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
    config: PathBuf,
    /// The chain folder (default: the configured `[audit] dir`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Read the key (hex) from this file instead of the configuration.
    #[arg(long, conflicts_with = "key_env")]
    key_file: Option<PathBuf>,
    /// Read the key (hex) from this environment variable.
    #[arg(long)]
    key_env: Option<String>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify a chain folder or one segment; names the first break (exit 1).
    Verify {
        /// A chain folder or a segment file (default: the configured folder).
        path: Option<PathBuf>,
        #[command(flatten)]
        chain: ChainArgs,
        /// The checkpoint witness file (default: the folder's checkpoints.jsonl).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Search the chain through its index.
    Query {
        #[command(flatten)]
        chain: ChainArgs,
        /// RFC 3339 time, or a span back from now: 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// `principal.sub`.
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        /// allow, deny, block, redact, ok, error, ...
        #[arg(long)]
        decision: Option<String>,
        /// prompt_injection, secret, pii, hidden_text
        #[arg(long)]
        category: Option<String>,
        /// An event name or `prefix.*`.
        #[arg(long)]
        event: Option<String>,
        /// A session id (as the client sent it) or its 12-hex digest.
        #[arg(long)]
        session: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Every record of one session, in chain order, as JSON lines.
    Export {
        #[command(flatten)]
        chain: ChainArgs,
        /// A session id (as the client sent it) or its 12-hex digest.
        #[arg(long)]
        session: String,
    },
}

pub fn run(cmd: AuditCommand) -> ExitCode {
    let r = match cmd {
        AuditCommand::Verify {
            path,
            chain,
            checkpoints,
            format,
        } => verify(path, &chain, checkpoints.as_deref(), &format),
        AuditCommand::Query {
            chain,
            since,
            until,
            principal,
            server,
            tool,
            decision,
            category,
            event,
            session,
            limit,
            format,
        } => (|| {
            let filter = Filter {
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
                principal,
                server,
                tool,
                decision,
                category,
                event,
                session: session.as_deref().map(session_digest),
                request_id: None,
                limit: Some(limit),
                newest_first: false,
            };
            query(&chain, &filter, &format)
        })(),
        AuditCommand::Export { chain, session } => {
            let filter = Filter {
                session: Some(session_digest(&session)),
                ..Default::default()
            };
            query(&chain, &filter, "jsonl")
        }
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// A digest as is, or the digest of a session id.
fn session_digest(s: &str) -> String {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        s.to_owned()
    } else {
        palisade_audit::session_digest(s)
    }
}

/// RFC 3339, or `<n>s|m|h|d` back from now, as a record timestamp.
fn parse_time(s: &str) -> Result<String, String> {
    let now = time::OffsetDateTime::now_utc();
    let unit = s.chars().last().unwrap_or(' ');
    let n = s[..s.len().saturating_sub(1)].parse::<i64>().ok();
    let secs = match (n, unit) {
        (Some(n), 's') => Some(n),
        (Some(n), 'm') => Some(n * 60),
        (Some(n), 'h') => Some(n * 3600),
        (Some(n), 'd') => Some(n * 86_400),
        _ => None,
    };
    if let Some(secs) = secs.filter(|s| *s >= 0) {
        return Ok(palisade_audit::chain::timestamp(now - time::Duration::seconds(secs)));
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(palisade_audit::chain::timestamp)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a span like 15m, 2h, 7d"))
}

fn load_config(path: &Path) -> Result<Config, String> {
    let mut c = Config::load(path).map_err(|e| format!("configuration error in {}:\n{e}", path.display()))?;
    let base = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::audit_setup::resolve_paths(&mut c, base);
    Ok(c)
}

fn chain_dir(a: &ChainArgs) -> Result<PathBuf, String> {
    match &a.dir {
        Some(d) => Ok(d.clone()),
        None => Ok(load_config(&a.config)?.audit.dir),
    }
}

fn key(a: &ChainArgs, dir: &Path) -> Result<AuditKey, String> {
    if let Some(f) = &a.key_file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?,
        );
        return palisade_audit::key_from_text(&text);
    }
    if let Some(v) = &a.key_env {
        let text = zeroize::Zeroizing::new(std::env::var(v).map_err(|_| format!("{v} is not set"))?);
        return palisade_audit::key_from_text(&text);
    }
    let config = if a.config.exists() {
        Some(load_config(&a.config)?)
    } else {
        None
    };
    match config.as_ref().and_then(|c| c.audit.key.as_ref().map(|r| (c, r))) {
        Some((config, r)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let text = zeroize::Zeroizing::new(rt.block_on(async {
                let store = crate::secret_store(config)?;
                crate::audit_setup::resolve(&store, r, "audit.key").await
            })?);
            palisade_audit::key_from_text(&text)
        }
        None => {
            let path = dir.join(palisade_audit::KEY_FILE);
            if !path.exists() {
                return Err(format!(
                    "no key: {} does not exist; pass --key-file or --key-env",
                    path.display()
                ));
            }
            palisade_audit::load_or_create_key(dir)
        }
    }
}

fn verify(path: Option<PathBuf>, a: &ChainArgs, checkpoints: Option<&Path>, format: &str) -> Result<ExitCode, String> {
    let path = match path {
        Some(p) => p,
        None => chain_dir(a)?,
    };
    let key_dir = if path.is_dir() {
        path.clone()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let key = key(a, &key_dir)?;
    // A witness file moved by `[audit] checkpoint_file` is read from there.
    let configured = match (checkpoints, a.config.exists()) {
        (None, true) => load_config(&a.config)?.audit.checkpoint_file,
        _ => None,
    };
    let r = palisade_audit::verify::verify(&path, &key, checkpoints.or(configured.as_deref()))?;
    if format == "json" {
        let out = json!({
            "ok": r.ok(),
            "segments": r.segments,
            "records": r.records,
            "first_seq": r.first_seq,
            "last_seq": r.last_seq,
            "head": r.head,
            "checkpoints": r.checkpoints,
            "last_checkpoint": r.last_checkpoint.as_ref().map(|(s, t)| json!({"seq": s, "ts": t})),
            "break": r.broken.as_ref().map(|b| json!({
                "kind": b.kind.as_str(),
                "file": b.file.display().to_string(),
                "line": b.line,
                "seq": b.seq,
                "detail": b.detail,
            })),
            "warnings": r.warnings,
        });
        println!("{out}");
    } else {
        for w in &r.warnings {
            println!("warning: {w}");
        }
        match &r.broken {
            None => println!(
                "ok: {} record(s) in {} segment(s), seq {}..{}, {} checkpoint(s){}",
                r.records,
                r.segments,
                r.first_seq.unwrap_or(0),
                r.last_seq.unwrap_or(0),
                r.checkpoints,
                r.last_checkpoint
                    .as_ref()
                    .map(|(s, t)| format!(", last at seq {s} ({t})"))
                    .unwrap_or_default()
            ),
            Some(b) => println!("BROKEN: {b}"),
        }
    }
    Ok(if r.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn query(a: &ChainArgs, f: &Filter, format: &str) -> Result<ExitCode, String> {
    let dir = chain_dir(a)?;
    if !dir.is_dir() {
        return Err(format!("{}: no audit chain here", dir.display()));
    }
    let mut ix = Index::open(&dir)?;
    ix.catch_up()?;
    let lines = ix.query(f)?;
    match format {
        "text" => {
            for l in &lines {
                println!("{}", text_line(l));
            }
        }
        _ => {
            for l in &lines {
                println!("{l}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text_line(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let who = v
        .get("principal")
        .and_then(|p| p.get("sub"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    let target = match (s("upstream"), s("tool")) {
        ("", _) => "-".to_owned(),
        (u, "") => u.to_owned(),
        (u, t) => format!("{u}/{t}"),
    };
    let what = [s("decision"), s("action"), s("outcome"), s("category")]
        .into_iter()
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{:>8} {} {:<24} {:<16} {:<24} {:<16} {}",
        v.get("seq").and_then(Value::as_u64).unwrap_or(0),
        s("ts"),
        s("event"),
        who,
        target,
        if what.is_empty() { "-" } else { &what },
        s("msg")
    )
}
