//! `palisade policy schema|check|test`: the Cedar schema, policy validation,
//! and decision cases (see docs/policy.md).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use palisade_policy::cases::{CasesFile, MAX_CASES_BYTES, run_cases};
use palisade_policy::{PolicyEngine, PolicyError, SCHEMA, check_dir};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print the Cedar schema that policies are validated against.
    Schema,
    /// Validate the policy files of a directory (strict validation against the schema).
    /// Exit 0 valid, 1 invalid, 2 unreadable.
    Check {
        /// The policy directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Run decision cases from a YAML file. Exit 0 all pass, 1 a case failed, 2 bad input.
    Test {
        /// The cases file.
        cases: PathBuf,
        /// The policy directory (default: the file's `policies:` key, relative to the file).
        #[arg(long)]
        policies: Option<PathBuf>,
    },
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Schema => {
            print!("{SCHEMA}");
            ExitCode::SUCCESS
        }
        PolicyCommand::Check { dir } => check(&dir),
        PolicyCommand::Test { cases, policies } => test(&cases, policies.as_deref()),
    }
}

fn exit_for(e: &PolicyError) -> ExitCode {
    if e.is_invalid_policy() {
        ExitCode::from(1)
    } else {
        ExitCode::from(2)
    }
}

fn check(dir: &Path) -> ExitCode {
    match check_dir(dir) {
        Ok(n) => {
            println!("{}: ok ({n} polic{})", dir.display(), if n == 1 { "y" } else { "ies" });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("palisade policy check: {e}");
            exit_for(&e)
        }
    }
}

fn read_cases(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    // Read one byte past the limit to tell "too large" from "exactly at the limit".
    file.take(MAX_CASES_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() > MAX_CASES_BYTES {
        return Err(format!("{}: larger than {MAX_CASES_BYTES} bytes", path.display()));
    }
    Ok(text)
}

fn test(cases_path: &Path, policies: Option<&Path>) -> ExitCode {
    let bad = |msg: &dyn std::fmt::Display| {
        eprintln!("palisade policy test: {msg}");
        ExitCode::from(2)
    };
    let yaml = match read_cases(cases_path) {
        Ok(t) => t,
        Err(e) => return bad(&e),
    };
    let file = match CasesFile::parse(&yaml) {
        Ok(f) => f,
        Err(e) => return bad(&format_args!("{}: {e}", cases_path.display())),
    };
    let dir = match (policies, &file.policies) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(rel)) => cases_path.parent().unwrap_or(Path::new(".")).join(rel),
        (None, None) => {
            return bad(&format_args!(
                "{}: no `policies:` key; give the policy directory with --policies",
                cases_path.display()
            ));
        }
    };
    let engine = match PolicyEngine::load_dir(&dir, file.server_infos()) {
        Ok(e) => e,
        Err(e) => return bad(&e),
    };
    let report = match run_cases(&engine, &yaml) {
        Ok(r) => r,
        Err(e) => return bad(&format_args!("{}: {e}", cases_path.display())),
    };
    println!("{report}");
    if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
