//! `palisade scan config` on hostile client configurations: the JSON/JSONC,
//! YAML and TOML readers, server extraction for every client layout, and the
//! audit rules. Secrets found must never appear in a finding's text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_discover::parse::{Syntax, parse};
use palisade_discover::{Layout, extract, rules};

const LAYOUTS: [Layout; 9] = [
    Layout::McpServers,
    Layout::ClaudeCodeUser,
    Layout::VsCodeSettings,
    Layout::VsCodeMcp,
    Layout::Zed,
    Layout::ContinueYaml,
    Layout::ContinueJson,
    Layout::Codex,
    Layout::Auto,
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let syntax = match sel % 3 {
        0 => Syntax::Json,
        1 => Syntax::Yaml,
        _ => Syntax::Toml,
    };
    let Ok(root) = parse(text, syntax) else { return };
    let layout = LAYOUTS[usize::from(sel / 3) % LAYOUTS.len()];
    for server in extract::servers(&root, layout) {
        let _ = rules::check(&server, "fuzz.json");
    }
});
