//! SARIF output validated against the official SARIF 2.1.0 JSON schema (from
//! the `@microsoft/jest-sarif` npm package that `scripts/test-deps` installs),
//! and the properties code-scanning services rely on.

use std::path::{Path, PathBuf};

use palisade_discover::{Options, Severity, run, to_sarif};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validator() -> jsonschema::Validator {
    let path = repo_root().join("tests/node/node_modules/@microsoft/jest-sarif/lib/schemas/sarif-2.1.0-rtm.5.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the SARIF 2.1.0 schema is missing ({}: {e}); run `bash scripts/test-deps` to install the test dependencies",
            path.display()
        )
    });
    let mut schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    // The published schema's `language` patterns have an unbalanced `]` that
    // ECMAScript reads as a literal and Rust's regex engine refuses, so the
    // schema would not compile. Only those patterns are changed, to the same
    // meaning with the `]` escaped; everything else is checked as published.
    let fixed = escape_stray_brackets(&mut schema);
    assert!(fixed >= 1, "the schema changed: revisit this workaround");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .expect("the schema compiles")
}

const STRAY: &str = "^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$";

fn escape_stray_brackets(v: &mut Value) -> usize {
    match v {
        Value::Object(m) => {
            let mut n = 0;
            for (k, child) in m.iter_mut() {
                if k == "pattern" && child.as_str() == Some(STRAY) {
                    *child = Value::String(STRAY.replace("]?$", "\\]?$"));
                    n += 1;
                } else {
                    n += escape_stray_brackets(child);
                }
            }
            n
        }
        Value::Array(a) => a.iter_mut().map(escape_stray_brackets).sum(),
        _ => 0,
    }
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

fn full_report() -> palisade_discover::Report {
    let broken = tempfile::NamedTempFile::with_suffix(".json").unwrap();
    std::fs::write(broken.path(), "{ not json").unwrap();
    let opts = Options {
        home: Some(fixture("home")),
        projects: vec![fixture("project")],
        ..Options::default()
    };
    let mut r = run(&opts, &mut |_, _| {});
    // One unreadable file too, reported as a tool notification.
    let extra = run(
        &Options {
            paths: vec![broken.path().into()],
            ..Options::default()
        },
        &mut |_, _| {},
    );
    r.files.extend(extra.files);
    r
}

#[test]
fn sarif_validates_against_the_schema() {
    let v = validator();
    let r = full_report();
    assert!(r.count(Severity::High) > 0);
    for base in [None, Some(repo_root().canonicalize().unwrap())] {
        let doc = to_sarif(&r, base.as_deref());
        let errs = errors(&v, &doc);
        assert!(errs.is_empty(), "{errs:#?}");
        assert_eq!(doc["version"], "2.1.0");
    }
    // An empty run validates too.
    let empty = to_sarif(&palisade_discover::Report::default(), None);
    assert!(errors(&v, &empty).is_empty());
}

#[test]
fn the_schema_rejects_broken_sarif() {
    // The validation above could pass vacuously; it does not.
    let v = validator();
    let r = full_report();
    let mut doc = to_sarif(&r, None);
    doc["runs"][0]["results"][0]["level"] = "fatal".into();
    assert!(!errors(&v, &doc).is_empty());
    let mut doc = to_sarif(&r, None);
    doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0.into();
    assert!(!errors(&v, &doc).is_empty());
}

#[test]
fn results_carry_rules_locations_and_fingerprints() {
    let r = full_report();
    let base = fixture("").canonicalize().unwrap();
    let doc = to_sarif(&r, Some(&base));
    let run = &doc["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), r.findings().count());
    let mut prints = std::collections::BTreeSet::new();
    for res in results {
        let idx = res["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], res["ruleId"]);
        assert!(rules[idx]["help"]["text"].as_str().unwrap().len() > 40);
        assert!(["error", "warning", "note"].contains(&res["level"].as_str().unwrap()));
        let loc = &res["locations"][0]["physicalLocation"];
        assert_eq!(loc["artifactLocation"]["uriBaseId"], "%SRCROOT%");
        let uri = loc["artifactLocation"]["uri"].as_str().unwrap();
        assert!(uri.starts_with("home/") || uri.starts_with("project/"), "{uri}");
        assert!(!uri.contains(' '), "{uri}");
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1, "{res}");
        let fp = res["partialFingerprints"]["palisadeConfigFinding/v1"].as_str().unwrap();
        assert!(prints.insert(fp.to_string()), "duplicate fingerprint {fp}");
    }
    // A path with spaces is percent-encoded.
    assert!(results.iter().any(|r| {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .contains("Code%20-%20Insiders")
    }));
    // The broken file is a notification, not a result.
    let notes = run["invocations"][0]["toolExecutionNotifications"].as_array().unwrap();
    assert_eq!(notes.len(), 1);
    // Fingerprints are stable from run to run.
    let again = to_sarif(&full_report(), Some(&base));
    let fps = |d: &Value| -> Vec<Value> {
        d["runs"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["partialFingerprints"].clone())
            .collect()
    };
    assert_eq!(fps(&doc), fps(&again));
}
