//! Hostile and broken files: a clear per-file error, never a panic, and the
//! other files still scanned.

use std::fs;
use std::path::{Path, PathBuf};

use palisade_discover::{Options, Report, run};

const GOOD: &str = r#"{"mcpServers": {"ok": {"url": "https://mcp.linear.app/sse"}}}"#;

/// Scans `bad` next to a good file; returns the report and `bad`'s error.
fn scan_with_good(dir: &Path, bad: PathBuf) -> (Report, String) {
    let good = dir.join("good.json");
    fs::write(&good, GOOD).unwrap();
    let r = run(
        &Options {
            paths: vec![bad.clone(), good],
            ..Options::default()
        },
        &mut |_, _| {},
    );
    assert_eq!(r.files.len(), 2, "{:?}", r.files);
    assert_eq!(r.scanned(), 1, "{:?}", r.files);
    assert_eq!(r.servers.len(), 1);
    assert_eq!(r.servers[0].name, "ok");
    let err = r
        .files
        .iter()
        .find(|f| Path::new(&f.path) == bad)
        .unwrap()
        .error
        .clone()
        .expect("an error");
    (r, err)
}

fn bad_file(name: &str, content: &[u8]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    fs::write(&p, content).unwrap();
    let (_, err) = scan_with_good(dir.path(), p);
    (dir, err)
}

#[test]
fn malformed_json() {
    let (_d, e) = bad_file("mcp.json", br#"{"mcpServers": {"a": {"command": "npx",}"#);
    assert!(e.contains("line 1"), "{e}");
    let (_d, e) = bad_file("mcp.json", b"{\n\"mcpServers\": {\n  \"a\": [1 2]\n}}");
    assert!(e.starts_with("line 3"), "{e}");
    let (_d, e) = bad_file("mcp.json", b"{\"a\": \"unterminated");
    assert!(e.contains("unterminated string"), "{e}");
}

#[test]
fn malformed_yaml_and_toml() {
    let (_d, e) = bad_file("config.yaml", b"mcpServers:\n  - name: x\n   command: [unclosed\n");
    assert!(!e.is_empty());
    let (_d, e) = bad_file("config.toml", b"[mcp_servers.x]\ncommand = \"npx\nargs = [");
    assert!(!e.is_empty());
    let (_d, e) = bad_file("config.toml", b"[mcp_servers.x]\ncommand = 1\ncommand = 2\n");
    assert!(e.to_lowercase().contains("duplicate"), "{e}");
}

#[test]
fn oversized_file() {
    let mut big = br#"{"mcpServers": {}, "pad": ""#.to_vec();
    big.resize(5 * 1024 * 1024, b'a');
    big.extend_from_slice(b"\"}");
    let (_d, e) = bad_file("mcp.json", &big);
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn deep_nesting() {
    let n = 100_000;
    let json = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let (_d, e) = bad_file("mcp.json", json.as_bytes());
    assert!(e.contains("deeper than"), "{e}");
    let json = format!("{{\"mcpServers\": {}1{}}}", "{\"a\":".repeat(n), "}".repeat(n));
    let (_d, e) = bad_file("mcp.json", json.as_bytes());
    assert!(e.contains("deeper than"), "{e}");
    let yaml = format!("mcpServers: {}{}", "[".repeat(n), "]".repeat(n));
    let (_d, _) = bad_file("config.yaml", yaml.as_bytes());
    let toml = format!("a = {}{}", "[".repeat(n), "]".repeat(n));
    let (_d, _) = bad_file("config.toml", toml.as_bytes());
    let toml: String = (0..5000)
        .map(|i| {
            format!(
                "[{}]\n",
                (0..=i % 200).map(|j| format!("k{j}")).collect::<Vec<_>>().join(".")
            )
        })
        .collect();
    // Dotted keys 200 deep: refused by depth, not by the stack.
    let (_d, e) = bad_file("config.toml", toml.as_bytes());
    assert!(!e.is_empty());
}

#[test]
fn yaml_alias_bomb() {
    let mut y = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    let mut prev = 'a';
    for c in 'b'..='k' {
        y.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = c;
    }
    y.push_str("mcpServers: []\n");
    let (_d, e) = bad_file("config.yaml", y.as_bytes());
    assert!(!e.is_empty());
}

#[test]
fn binary_and_non_utf8() {
    let junk: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (_d, e) = bad_file("mcp.json", &junk);
    assert!(e.contains("UTF-8") || e.contains("binary"), "{e}");
    let (_d, e) = bad_file("settings.json", b"{\"a\": \"\xff\xfe\"}");
    assert!(e.contains("not UTF-8"), "{e}");
    let (_d, e) = bad_file("mcp.json", b"{\"a\": \"\0\"}");
    assert!(e.contains("binary"), "{e}");
    let (_d, e) = bad_file("mcp.json", b"");
    assert!(e.contains("end of input"), "{e}");
}

#[test]
fn wrong_shapes_are_not_servers() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        r#"[1, 2, 3]"#,
        r#"{"mcpServers": "npx evil"}"#,
        r#"{"mcpServers": [1, null, "x"]}"#,
        r#"{"mcpServers": {"a": 1, "b": null, "c": [], "d": {"command": 7, "args": "x", "env": [1]}}}"#,
        r#"{"context_servers": {"z": {"command": {"path": ["x"], "args": {"a": 1}}}}}"#,
        r#"{"servers": {"s": {"url": 12, "headers": "Authorization: x"}}}"#,
    ];
    for (i, c) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.json"));
        fs::write(&p, c).unwrap();
        let r = run(
            &Options {
                paths: vec![p],
                ..Options::default()
            },
            &mut |_, _| {},
        );
        // Either an error for the file or servers without findings that crash: never a panic.
        let _ = palisade_discover::to_text(&r);
        let _ = palisade_discover::to_sarif(&r, None);
        assert_eq!(r.files.len(), 1);
    }
}

#[cfg(unix)]
#[test]
fn symlink_loop_directory_and_missing() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    symlink(dir.path().join("b.json"), dir.path().join("a.json")).unwrap();
    symlink(dir.path().join("a.json"), dir.path().join("b.json")).unwrap();
    let (_, e) = scan_with_good(dir.path(), dir.path().join("a.json"));
    assert!(e.contains("cannot open"), "{e}");
    let sub = dir.path().join("sub.json");
    fs::create_dir(&sub).unwrap();
    let (_, e) = scan_with_good(dir.path(), sub);
    assert!(e.contains("not a regular file") || e.contains("cannot"), "{e}");
    let (_, e) = scan_with_good(dir.path(), dir.path().join("missing.json"));
    assert!(e.contains("cannot open"), "{e}");
    // The FIFO case: opening it would block forever; it is refused without reading.
    let fifo = dir.path().join("fifo.json");
    if std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        let (_, e) = scan_with_good(dir.path(), fifo);
        assert!(e.contains("not a regular file"), "{e}");
    }
}
