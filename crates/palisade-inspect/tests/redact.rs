//! `redact`: spans of the chosen categories are replaced, the rest kept.

use palisade_inspect::{Category, EngineOptions, PackSet, build, redact};

fn engine() -> palisade_inspect::Engine {
    build(&EngineOptions {
        packs: PackSet::parse("secrets,pii").unwrap(),
        limits: Default::default(),
        pii: Default::default(),
        gitleaks_rules: None,
    })
    .unwrap()
}

#[test]
fn secrets_and_pii_are_replaced_in_place() {
    let e = engine();
    let key = concat!("sk_live_", "4eC39HqLyjWDarjtT1zdp7dc");
    let text = format!("key {key} for mail bob.smith@example.org, done");
    let out = redact(&e, &text, &[Category::Secret, Category::Pii]).unwrap();
    assert!(!out.contains(key), "{out}");
    assert!(!out.contains("bob.smith@example.org"), "{out}");
    assert!(out.starts_with("key [REDACTED:secret:"), "{out}");
    assert!(out.ends_with(", done"), "{out}");
    // Only secrets: the email stays.
    let out = redact(&e, &text, &[Category::Secret]).unwrap();
    assert!(out.contains("bob.smith@example.org") && !out.contains(key), "{out}");
}

#[test]
fn clean_and_hostile_text_are_left_alone() {
    let e = engine();
    assert!(redact(&e, "nothing to see here", &[Category::Secret]).is_none());
    assert!(redact(&e, "", &[Category::Secret]).is_none());
    let odd = "\u{202e}\u{200b}é".repeat(5000);
    let _ = redact(&e, &odd, &[Category::Secret, Category::Pii]);
}
