//! The gitleaks-format rule file parser (`inspect.secrets_rules` in the
//! configuration; `SecretsPack::with_gitleaks`): TOML with user-written
//! regular expressions and allowlists. A file that loads is built into an
//! engine and run once over a short text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_inspect::secrets::SecretsPack;
use palisade_inspect::{Engine, Limits, Pack};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // Rules, then optionally a NUL byte and a text to scan with them.
    let (rules, sample) = input
        .split_once('\0')
        .unwrap_or((input, "key = AKIAIOSFODNN7EXAMPLE token=abc"));
    let Ok(pack) = SecretsPack::with_gitleaks(rules) else {
        return;
    };
    let _ = pack.skipped_rules();
    let packs: Vec<Box<dyn Pack>> = vec![Box::new(pack)];
    if let Ok(engine) = Engine::new(packs, Limits::default()) {
        let _ = engine.scan(sample);
    }
});
