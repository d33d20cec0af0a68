//! `palisade inventory`: servers, versions, pins, tools, sandbox profiles (P2),
//! as JSON or CycloneDX 1.6 (see docs/supply-chain.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use palisade_config::Config;
use palisade_supply::inventory::{self, Tool};

use crate::tools_cmd;

#[derive(clap::Args)]
pub struct InventoryArgs {
    #[arg(long, short, env = "PALISADE_CONFIG", default_value = "palisade.toml")]
    config: PathBuf,
    /// `json` (Palisade's own shape) or `cyclonedx` (CycloneDX 1.6 JSON).
    #[arg(long, default_value = "json", value_parser = ["json", "cyclonedx"])]
    format: String,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Do not check the launch pins now (they are checked by default).
    #[arg(long)]
    no_verify: bool,
}

pub fn run(args: InventoryArgs) -> ExitCode {
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("configuration error in {}:", args.config.display());
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    tools_cmd::resolve_store(&mut config, &args.config);
    let (store_note, tools) = read_tools(&config);
    let inv = inventory::build(&config, &args.config, !args.no_verify, store_note, tools);
    let value = match args.format.as_str() {
        "cyclonedx" => inventory::cyclonedx(&inv),
        _ => serde_json::to_value(&inv).unwrap_or_default(),
    };
    let text = match serde_json::to_string_pretty(&value) {
        Ok(t) => t + "\n",
        Err(e) => {
            eprintln!("palisade inventory: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &args.output {
        Some(p) => {
            if let Err(e) = std::fs::write(p, text) {
                eprintln!("palisade inventory: cannot write {}: {e}", p.display());
                return ExitCode::from(2);
            }
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

/// The tools of every upstream from the pin store, read only: a store that
/// does not exist is not created.
fn read_tools(config: &Config) -> (String, BTreeMap<String, Vec<Tool>>) {
    let store = &config.integrity.store;
    if store == ":memory:" {
        return ("none (integrity.store is :memory:)".into(), BTreeMap::new());
    }
    if !Path::new(store).exists() {
        return (format!("{store} (absent: no tool seen yet)"), BTreeMap::new());
    }
    let items = match tools_cmd::open_store(config).and_then(|s| s.items(None).map_err(|e| e.to_string())) {
        Ok(i) => i,
        Err(e) => return (format!("{store} (unreadable: {e})"), BTreeMap::new()),
    };
    let mut out: BTreeMap<String, Vec<Tool>> = BTreeMap::new();
    for i in items {
        out.entry(i.upstream.clone()).or_default().push(Tool {
            kind: i.kind.as_str().to_owned(),
            name: i.name.clone(),
            state: i.state.as_str().to_owned(),
            digest: i.latest.to_string(),
            approved_digest: i.approved.as_ref().map(|a| a.digest.to_string()),
            approved_by: i.approved.as_ref().map(|a| a.by.clone()),
            approved_at_unix: i.approved.as_ref().map(|a| a.at_unix),
            quarantined: i.quarantine.is_some(),
            high_risk: i.high_risk,
        });
    }
    (store.clone(), out)
}
