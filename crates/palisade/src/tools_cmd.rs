//! `palisade tools …`: pins, holds, approvals and quarantine in the embedded store.

use std::path::Path;

use palisade_config::Config;
use palisade_pins::PinStore;

/// Takes a relative `integrity.store` from the configuration file's folder.
pub fn resolve_store(config: &mut Config, config_path: &Path) {
    let store = &config.integrity.store;
    if store == ":memory:" || Path::new(store).is_absolute() {
        return;
    }
    let base = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    config.integrity.store = base.join(store).display().to_string();
}

/// Opens the configured store (`:memory:` gives a fresh in-memory one).
pub fn open_store(config: &Config) -> Result<PinStore, String> {
    let store = &config.integrity.store;
    let r = if store == ":memory:" {
        PinStore::in_memory()
    } else {
        PinStore::open(Path::new(store))
    };
    r.map_err(|e| format!("pin store {store}: {e}"))
}

use std::process::ExitCode;

use palisade_pins::{Digest, ItemKind, ItemStatus};

/// What `palisade tools` was asked to do.
pub enum Action {
    List {
        server: Option<String>,
        json: bool,
    },
    Diff {
        target: String,
        instructions: bool,
    },
    Show {
        target: String,
        instructions: bool,
        digest: Option<String>,
    },
    History {
        target: String,
        instructions: bool,
    },
    Approve {
        target: Option<String>,
        all: bool,
        instructions: bool,
        digest: Option<String>,
        acknowledge: bool,
        by: Option<String>,
    },
    Quarantine {
        target: String,
        reason: String,
        by: Option<String>,
    },
    Release {
        target: String,
        by: Option<String>,
    },
    Rollback {
        target: String,
        instructions: bool,
        to: Option<String>,
        by: Option<String>,
    },
    Export,
}

fn now() -> i64 {
    palisade_session::unix(std::time::SystemTime::now()) as i64
}

/// Who is acting: `--by`, else `$USER@host`.
fn actor(by: Option<String>) -> String {
    by.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{user}@{}", host.trim())
    })
}

/// `server/tool` (the first `/` separates); with `instructions`, just `server`.
fn split(target: &str, instructions: bool) -> Result<(String, ItemKind, String), String> {
    if instructions {
        let server = target.split('/').next().unwrap_or(target);
        return Ok((server.to_owned(), ItemKind::Instructions, String::new()));
    }
    match target.split_once('/') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => Ok((s.to_owned(), ItemKind::Tool, t.to_owned())),
        _ => Err(format!("{target:?}: expected SERVER/TOOL")),
    }
}

fn digest(s: Option<String>) -> Result<Option<Digest>, String> {
    s.map(|d| d.parse::<Digest>().map_err(|e| format!("{d:?}: {e}")))
        .transpose()
}

/// Runs one `palisade tools` command against the configured store.
pub fn run(config_path: &Path, action: Action) -> ExitCode {
    let mut config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("configuration error in {}:", config_path.display());
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    resolve_store(&mut config, config_path);
    if config.integrity.store == ":memory:" {
        eprintln!("integrity.store is \":memory:\": pins live only inside the running gateway");
        return ExitCode::from(2);
    }
    let store = match open_store(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match execute(&store, action) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(store: &PinStore, action: Action) -> Result<ExitCode, String> {
    let e = |e: palisade_pins::PinError| e.to_string();
    match action {
        Action::List { server, json } => {
            let items = store.items(server.as_deref()).map_err(e)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&items).map_err(|x| x.to_string())?);
            } else {
                print_items(&items);
            }
            let held = items.iter().any(|i| !i.state.is_allowed());
            Ok(if held { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Action::Diff { target, instructions } => {
            let (s, k, t) = split(&target, instructions)?;
            match store.diff(&s, k, &t).map_err(e)? {
                Some(d) => {
                    print!("{d}");
                    Ok(ExitCode::from(1))
                }
                None => {
                    println!("{target}: the served version is the approved one");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Action::Show {
            target,
            instructions,
            digest: d,
        } => {
            let (s, k, t) = split(&target, instructions)?;
            let d = digest(d)?;
            println!("{}", store.definition(&s, k, &t, d.as_ref()).map_err(e)?);
            Ok(ExitCode::SUCCESS)
        }
        Action::History { target, instructions } => {
            let (s, k, t) = split(&target, instructions)?;
            for a in store.history(&s, k, &t).map_err(e)? {
                println!(
                    "{}  {}  {:<8} by {}{}",
                    a.at_unix,
                    a.digest.short(),
                    a.action.as_str(),
                    a.by,
                    if a.acknowledged_findings {
                        " (findings acknowledged)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Approve {
            target,
            all,
            instructions,
            digest: d,
            acknowledge,
            by,
        } => {
            let by = actor(by);
            if all {
                let server = target.as_deref().map(|t| t.split('/').next().unwrap_or(t));
                let report = store.approve_held(server, &by, acknowledge, now()).map_err(e)?;
                for a in &report.approved {
                    println!(
                        "approved {}/{} {}",
                        a.upstream,
                        label(a.kind, &a.name),
                        a.digest.short()
                    );
                }
                for s in &report.skipped {
                    println!(
                        "skipped  {}/{} {}: {:?}{}",
                        s.upstream,
                        label(s.kind, &s.name),
                        s.digest.short(),
                        s.reason,
                        if matches!(s.reason, palisade_pins::SkipReason::FindingsNotAcknowledged) {
                            " (review with `palisade tools diff`, then --acknowledge-findings)"
                        } else {
                            ""
                        }
                    );
                }
                return Ok(if report.skipped.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            let Some(target) = target else {
                return Err("name SERVER/TOOL, or use --all".into());
            };
            let (s, k, t) = split(&target, instructions)?;
            let d = digest(d)?;
            let a = store.approve(&s, k, &t, d.as_ref(), &by, acknowledge, now()).map_err(|x| match x {
                palisade_pins::PinError::FindingsNotAcknowledged => format!(
                    "{target}: the scan found high-risk issues; review `palisade tools diff {target}` and approve with --acknowledge-findings"
                ),
                other => other.to_string(),
            })?;
            println!("approved {target} {} by {}", a.digest, a.by);
            Ok(ExitCode::SUCCESS)
        }
        Action::Quarantine { target, reason, by } => {
            let (server, tool) = server_or_tool(&target);
            store.quarantine(server, tool, &actor(by), &reason, now()).map_err(e)?;
            println!("quarantined {target}");
            Ok(ExitCode::SUCCESS)
        }
        Action::Release { target, by } => {
            let (server, tool) = server_or_tool(&target);
            let released = store.release(server, tool, &actor(by), now()).map_err(e)?;
            println!("{} {target}", if released { "released" } else { "not quarantined:" });
            Ok(ExitCode::SUCCESS)
        }
        Action::Rollback {
            target,
            instructions,
            to,
            by,
        } => {
            let (s, k, t) = split(&target, instructions)?;
            let to = digest(to)?;
            let a = store.rollback(&s, k, &t, to.as_ref(), &actor(by), now()).map_err(e)?;
            println!("{target} rolled back to {}", a.digest);
            Ok(ExitCode::SUCCESS)
        }
        Action::Export => {
            let v = store.export().map_err(e)?;
            println!("{}", serde_json::to_string_pretty(&v).map_err(|x| x.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn server_or_tool(target: &str) -> (&str, Option<&str>) {
    match target.split_once('/') {
        Some((s, t)) if !t.is_empty() => (s, Some(t)),
        Some((s, _)) => (s, None),
        None => (target, None),
    }
}

fn label(kind: ItemKind, name: &str) -> String {
    match kind {
        ItemKind::Tool => name.to_owned(),
        ItemKind::Instructions => "(instructions)".to_owned(),
    }
}

fn print_items(items: &[ItemStatus]) {
    println!(
        "{:<40} {:<14} {:<13} {:<13} FINDINGS",
        "SERVER/TOOL", "STATE", "SERVED", "APPROVED"
    );
    for i in items {
        let findings = i
            .findings
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.get("rule").and_then(|r| r.as_str()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "{:<40} {:<14} {:<13} {:<13} {}",
            format!("{}/{}", i.upstream, label(i.kind, &i.name)),
            i.state.as_str(),
            i.latest.short(),
            i.approved.as_ref().map_or("-".to_owned(), |a| a.digest.short()),
            findings
        );
    }
}
