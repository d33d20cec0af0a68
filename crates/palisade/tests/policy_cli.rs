//! `palisade policy schema|check|test`: output and exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn palisade(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env_remove("PALISADE_CONFIG")
        .output()
        .expect("run palisade");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn schema_prints_the_cedar_schema() {
    let (code, out, err) = palisade(&["policy", "schema"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("namespace Palisade"), "{out}");
    for decl in [
        "entity User",
        "entity Tool",
        "entity Args tags String",
        "action call_tool",
    ] {
        assert!(out.contains(decl), "{decl} missing");
    }
    assert_eq!(out, palisade_policy::SCHEMA);
}

#[test]
fn check_accepts_the_examples() {
    let (code, out, err) = palisade(&["policy", "check", arg(&examples())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok ("), "{out}");
}

#[test]
fn check_rejects_an_invalid_policy_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.cedar"), "permit (principal, action, resource);\n").unwrap();
    std::fs::write(
        dir.path().join("broken.cedar"),
        "// a comment\npermit (principal, action, resource)\nwhen { principal.no_such_attr };\n",
    )
    .unwrap();
    let (code, out, err) = palisade(&["policy", "check", arg(dir.path())]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("broken.cedar:3:"), "{err}");
    assert!(err.contains("no_such_attr"), "{err}");

    // A syntax error: exit 1 as well.
    std::fs::write(dir.path().join("broken.cedar"), "permit (principal, action, resource\n").unwrap();
    let (code, _, err) = palisade(&["policy", "check", arg(dir.path())]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broken.cedar"), "{err}");

    // Unreadable: exit 2.
    let (code, _, err) = palisade(&["policy", "check", arg(&dir.path().join("missing"))]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn test_runs_the_example_cases() {
    let (code, out, err) = palisade(&["policy", "test", arg(&examples().join("cases.yaml"))]);
    assert_eq!(code, 0, "{out}{err}");
    let last = out.lines().last().unwrap_or_default();
    let passed: usize = last
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary: {last}"));
    assert!(passed >= 25, "{last}");
    assert_eq!(out.lines().filter(|l| l.starts_with("PASS ")).count(), passed);
}

const CASES: &str = r#"
servers: { github: { classification: internal } }
cases:
  - name: reader calls a read-only tool
    principal: { subject: alice, groups: [readers] }
    action: call_tool
    resource: { server: github, tool: get_issue, annotations: { readOnlyHint: true } }
    context: { arguments: { owner: acme } }
    expect: EXPECT
"#;

#[test]
fn test_fails_on_a_wrong_expectation_and_uses_the_policies_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(&cases, CASES.replace("EXPECT", "deny")).unwrap();
    let (code, out, err) = palisade(&["policy", "test", arg(&cases), "--policies", arg(&examples())]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL reader calls a read-only tool: expected deny, got allow [readers-read-only-tools]"),
        "{out}"
    );
    assert!(out.contains("0 passed, 1 failed"), "{out}");

    std::fs::write(&cases, CASES.replace("EXPECT", "allow")).unwrap();
    let (code, out, err) = palisade(&["policy", "test", arg(&cases), "--policies", arg(&examples())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");

    // Without --policies and without a `policies:` key: bad input.
    let (code, _, err) = palisade(&["policy", "test", arg(&cases)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--policies"), "{err}");
}

#[test]
fn test_refuses_bad_input_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let policies = format!("policies: {}\n", arg(&examples()));
    let inputs = [
        write("malformed.yaml", "cases: [ {name: x"),
        write(
            "unknown.yaml",
            &format!("{policies}{}", CASES.replace("EXPECT", "allow\n    why: because")),
        ),
        write(
            "action.yaml",
            &format!(
                "{policies}{}",
                CASES.replace("call_tool", "fly").replace("EXPECT", "allow")
            ),
        ),
        write("large.yaml", &format!("cases: []\n# {}\n", "x".repeat(4 * 1024 * 1024))),
        write(
            "nodir.yaml",
            &format!("policies: nowhere\n{}", CASES.replace("EXPECT", "allow")),
        ),
        dir.path().join("missing.yaml"),
    ];
    for input in &inputs {
        let (code, out, err) = palisade(&["policy", "test", arg(input)]);
        assert_eq!(code, 2, "{}: {out}{err}", input.display());
        assert!(err.starts_with("palisade policy test: "), "{err}");
    }
}
