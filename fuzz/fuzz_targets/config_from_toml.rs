//! The gateway's TOML configuration parser and validator
//! (`palisade_config::Config::from_toml_with_env`).
//!
//! Input: the configuration text, optionally followed by a NUL byte and
//! environment-style overrides, one `KEY__PATH=value` per line (the
//! `PALISADE__` prefix is added).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_config::{Config, ENV_PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (text, env) = input.split_once('\0').unwrap_or((input, ""));
    let overrides: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        // `Config::load` passes only variables named `PALISADE__…`.
        .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_owned()))
        .take(8)
        .collect();
    match Config::from_toml_with_env(text, &overrides) {
        Ok(config) => {
            let _ = config.aggregate_upstreams().count();
        }
        // Error messages point into the text (line numbers): render them.
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
