//! `palisade sandbox check`: what this host supports for sandboxing launched
//! servers, and what a configuration's servers would get.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use palisade_config::{Config, SandboxMode, Transport};
use palisade_sandbox::{Features, Mechanism};

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Print the sandbox mechanisms this host supports. With --config, also
    /// say whether each stdio server would start (exit 1 if one would be refused).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: SandboxCommand) -> ExitCode {
    match cmd {
        SandboxCommand::Check { config, json } => check(config, json),
    }
}

fn check(config: Option<PathBuf>, json: bool) -> ExitCode {
    let host = Features::get();
    let rows = palisade_sandbox::describe(host);
    let mut servers = Vec::new();
    if let Some(path) = config {
        let cfg = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("palisade sandbox check: {e}");
                return ExitCode::from(2);
            }
        };
        for (name, up) in &cfg.upstreams {
            let Transport::Stdio(s) = &up.get_ref().transport else {
                continue;
            };
            let sb = &s.sandbox;
            let missing: Vec<&str> = palisade_sandbox::required(sb)
                .into_iter()
                .filter(|m| !host.has(*m))
                .map(Mechanism::as_str)
                .collect();
            let verdict = match (sb.mode, missing.is_empty()) {
                (SandboxMode::Off, _) => "unsandboxed",
                (_, true) => "sandboxed",
                (SandboxMode::Strict, false) => "refused",
                (SandboxMode::BestEffort, false) => "degraded",
            };
            servers.push((
                name.clone(),
                sb.mode.as_str(),
                sb.network.as_str(),
                verdict,
                missing,
                sb.user.clone(),
            ));
        }
    }
    let refused = servers.iter().any(|s| s.3 == "refused");
    if json {
        let v = serde_json::json!({
            "kernel": host.kernel,
            "root": host.root,
            "landlock_abi": host.landlock_abi,
            "mechanisms": rows.iter().map(|(n, ok, d)| serde_json::json!({"name": n, "available": ok, "detail": d})).collect::<Vec<_>>(),
            "servers": servers.iter().map(|(n, mode, net, verdict, missing, user)| serde_json::json!({
                "name": n, "mode": mode, "network": net, "verdict": verdict, "missing": missing, "user": user,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "kernel {}{}",
            host.kernel,
            if host.root { " (running as root)" } else { "" }
        );
        for (name, ok, detail) in &rows {
            println!("  {:<18} {:<4} {detail}", name, if *ok { "yes" } else { "NO" });
        }
        let all = rows.iter().take(6).all(|r| r.1);
        if all {
            println!("strict mode: every mechanism is available");
        } else {
            println!(
                "strict mode: servers that need a missing mechanism will refuse to start (sandbox.mode = \"best-effort\" starts them with a warning)"
            );
        }
        for (name, mode, net, verdict, missing, user) in &servers {
            let extra = if missing.is_empty() {
                String::new()
            } else {
                format!(" (missing: {})", missing.join(", "))
            };
            let user = user.as_deref().map(|u| format!(", user {u}")).unwrap_or_default();
            println!("server {name}: {verdict} (mode {mode}, network {net}{user}){extra}");
        }
    }
    if refused { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
