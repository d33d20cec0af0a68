//! Supply-chain pins (P1) and the inventory (P2) through the real binary:
//! `palisade pin add|verify|show`, a gateway launching a pinned npm server
//! (`@modelcontextprotocol/server-filesystem`, installed by scripts/test-deps
//! into tests/node), the same install tampered with, and `palisade inventory`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const PKG: &str = "@modelcontextprotocol/server-filesystem";

fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/node/node_modules")
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(palisade_bin()).args(args).output().expect("run palisade");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lockfile keys (`node_modules/...`) of `top` and everything it needs,
/// resolved as node does (nearest `node_modules` upward).
fn closure(lock: &Value, top: &str) -> BTreeSet<String> {
    let pkgs = lock["packages"].as_object().expect("lockfile packages");
    let resolve = |from: &str, name: &str| -> Option<String> {
        let mut base = from.to_owned();
        loop {
            let cand = if base.is_empty() {
                format!("node_modules/{name}")
            } else {
                format!("{base}/node_modules/{name}")
            };
            if pkgs.contains_key(&cand) {
                return Some(cand);
            }
            if base.is_empty() {
                return None;
            }
            base = base
                .rfind("/node_modules/")
                .map(|i| base[..i].to_owned())
                .unwrap_or_default();
        }
    };
    let mut need = BTreeSet::new();
    let mut todo = vec![format!("node_modules/{top}")];
    while let Some(k) = todo.pop() {
        if !need.insert(k.clone()) {
            continue;
        }
        for field in ["dependencies", "optionalDependencies", "peerDependencies"] {
            if let Some(deps) = pkgs[&k][field].as_object() {
                for d in deps.keys() {
                    if let Some(r) = resolve(&k, d) {
                        todo.push(r);
                    }
                }
            }
        }
    }
    need
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if t.is_dir() {
            copy_dir(&e.path(), &dst);
        } else if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A private install of the filesystem server and its dependencies (with
/// npm's hidden lockfile) under `prefix`.
fn install(prefix: &Path) {
    let src = node_modules();
    let lock_text = std::fs::read_to_string(src.join(".package-lock.json"))
        .expect("tests/node is not installed: run scripts/test-deps");
    let lock: Value = serde_json::from_str(&lock_text).unwrap();
    let keys = closure(&lock, PKG);
    assert!(keys.len() > 20, "the closure of {PKG} looks too small: {keys:?}");
    for k in &keys {
        // Nested packages come with their parent.
        if keys.iter().any(|o| o != k && k.starts_with(&format!("{o}/"))) {
            continue;
        }
        copy_dir(&src.join("..").join(k), &prefix.join(k));
    }
    std::fs::write(prefix.join("node_modules/.package-lock.json"), lock_text).unwrap();
}

fn server_js(prefix: &Path) -> PathBuf {
    prefix.join("node_modules").join(PKG).join("dist/index.js")
}

/// An upstream section for the pinned server (the file keeps its comments).
fn fs_upstream(prefix: &Path, data: &Path) -> String {
    format!(
        "# The filesystem server, from a private install.\n\
         [upstreams.fs]\n\
         transport = \"stdio\" # launched by the gateway\n\
         command = \"node\"\n\
         args = [\"{js}\", \"{data}\"]\n\
         pinning = \"off\"\n\
         restart_backoff_initial_ms = 100\n\
         restart_backoff_max_ms = 500\n\
         sandbox = {{ read_write = [\"{data}\"] }}\n",
        js = server_js(prefix).display(),
        data = data.display(),
    )
}

async fn tool_names(url: &str) -> Option<Vec<String>> {
    let init = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": { "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }
    });
    let r = post_raw(
        url,
        init.to_string(),
        &[("content-type", "application/json"), ("accept", ACCEPT)],
    )
    .await;
    if r.status != 200 {
        return None;
    }
    let sid = r.header("mcp-session-id")?;
    post(
        url,
        Some(&sid),
        &json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;
    let r = post(url, Some(&sid), &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).await;
    let resp = r.messages().into_iter().rev().find(|m| m.get("result").is_some())?;
    Some(
        resp["result"]["tools"]
            .as_array()?
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_npm_server_starts_and_a_tampered_install_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("install");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hi").unwrap();
    install(&prefix);
    let cfg = tmp.path().join("palisade.toml");
    std::fs::write(&cfg, format!("# Operator notes stay.\n{}", fs_upstream(&prefix, &data))).unwrap();
    let cfg_s = cfg.to_str().unwrap();

    // Record the pin.
    let (code, out, err) = cli(&[
        "pin",
        "add",
        "fs",
        "--config",
        cfg_s,
        "--npm",
        PKG,
        "--prefix",
        prefix.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "pin add failed: {out}{err}");
    assert!(out.contains("match the registry tarball"), "{out}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for kept in [
        "# Operator notes stay.",
        "# The filesystem server",
        "# launched by the gateway",
    ] {
        assert!(text.contains(kept), "{kept:?} lost:\n{text}");
    }
    for recorded in [
        "[upstreams.fs.pin.npm]",
        &format!("package = \"{PKG}\""),
        "version = \"2026.8.31\"",
        "integrity = \"sha512-",
        "tree = \"sha256:",
    ] {
        assert!(text.contains(recorded), "{recorded:?} not recorded:\n{text}");
    }
    let (code, out, err) = cli(&["pin", "verify", "--config", cfg_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("fs: ok (npm:@modelcontextprotocol/server-filesystem@2026.8.31"),
        "{out}"
    );
    let (code, out, _) = cli(&["pin", "show", "fs", "--config", cfg_s, "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["fs"]["npm"]["version"], "2026.8.31");

    // The gateway launches the pinned server and serves its tools.
    let upstreams = format!("{text}\n{}", demo_upstream("demo", "shared"));
    {
        let gw = Gateway::start_logged(&upstreams, "");
        let url = gw.url("/mcp");
        let deadline = Instant::now() + Duration::from_secs(30);
        let names = loop {
            let names = tool_names(&url).await.unwrap_or_default();
            if names.iter().any(|n| n == "fs__list_directory") || Instant::now() > deadline {
                break names;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            names.iter().any(|n| n == "fs__list_directory"),
            "the pinned server's tools are not served: {names:?}\n{}",
            std::fs::read_to_string(gw.dir().join("stderr.log")).unwrap_or_default()
        );
    }

    // Tamper with one file of the package.
    let js = server_js(&prefix);
    let mut body = std::fs::read_to_string(&js).unwrap();
    body.push_str("\n// injected\n");
    std::fs::write(&js, body).unwrap();

    let (code, out, err) = cli(&["pin", "verify", "fs", "--config", cfg_s]);
    assert_eq!(code, 1, "a tampered install must fail verification: {out}{err}");
    assert!(out.contains("dist/index.js"), "the changed file is not named: {out}");
    assert!(!out.contains("injected"), "file contents must not be printed: {out}");

    let gw = Gateway::start_logged(&upstreams, "[audit]\nfsync = \"always\"\n");
    let url = gw.url("/mcp");
    // The demo upstream comes up; fs does not.
    let deadline = Instant::now() + Duration::from_secs(20);
    let names = loop {
        let names = tool_names(&url).await.unwrap_or_default();
        if names.iter().any(|n| n.starts_with("demo__")) || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(names.iter().any(|n| n.starts_with("demo__")), "{names:?}");
    // Give the supervisor time for a few restart attempts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let names = tool_names(&url).await.unwrap_or_default();
    assert!(
        !names.iter().any(|n| n.starts_with("fs__")),
        "the tampered server was started: {names:?}"
    );
    let sid = initialize(&url).await;
    let r = post(
        &url,
        Some(&sid),
        &call(9, "fs__list_directory", json!({"path": data.to_str().unwrap()})),
    )
    .await;
    let resp = r.response();
    assert!(
        resp.get("error").is_some() || resp["result"]["isError"] == true,
        "a call to the refused server must fail: {resp}"
    );
    // The refusal is audited (upstream.pin_mismatch with the reason).
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let recs = audit_records(&gw.dir().join("audit"));
        let hit = recs.into_iter().find(|r| r["event"] == "upstream.pin_mismatch");
        if hit.is_some() || Instant::now() > deadline {
            break hit;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = std::fs::read_to_string(gw.dir().join("stderr.log")).unwrap_or_default();
    let rec = found.unwrap_or_else(|| panic!("no upstream.pin_mismatch audit record; log:\n{log}"));
    let rec_text = rec.to_string();
    assert!(rec_text.contains("fs"), "{rec_text}");
    assert!(
        rec_text.contains("dist/index.js") || rec_text.contains("tree"),
        "{rec_text}"
    );
}

#[test]
fn pin_add_refuses_bad_targets_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[upstreams.local]\ntransport = \"stdio\"\ncommand = \"node\"\n\
         [upstreams.remote]\ntransport = \"http\"\nurl = \"https://mcp.example.com/mcp\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let missing = tmp.path().join("nothing-here");
    std::fs::create_dir_all(missing.join("node_modules")).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["pin", "add", "nope", "--config", c], "no upstream \"nope\""),
        (vec!["pin", "add", "remote", "--config", c], "HTTP"),
        (
            vec![
                "pin",
                "add",
                "local",
                "--config",
                c,
                "--npm",
                PKG,
                "--prefix",
                missing.to_str().unwrap(),
            ],
            "is not installed",
        ),
        (
            vec![
                "pin",
                "add",
                "local",
                "--config",
                c,
                "--npm",
                "Not A Name",
                "--prefix",
                missing.to_str().unwrap(),
            ],
            "not a valid npm package name",
        ),
        (vec!["pin", "verify", "nope", "--config", c], "no upstream"),
    ];
    let before = std::fs::read_to_string(&cfg).unwrap();
    for (args, want) in cases {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(
        before,
        std::fs::read_to_string(&cfg).unwrap(),
        "a refused pin add changed the file"
    );

    // Malformed pins are configuration errors that name the key.
    std::fs::write(
        &cfg,
        "[upstreams.local]\ntransport = \"stdio\"\ncommand = \"node\"\n\
         [upstreams.local.pin.npm]\npackage = \"x\"\nversion = \"latest\"\nintegrity = \"sha1-abc\"\nprefix = \"/p\"\ntree = \"sha256:00\"\n",
    )
    .unwrap();
    let (code, _, err) = cli(&["pin", "verify", "--config", c]);
    assert_eq!(code, 2);
    for key in [
        "upstreams.local.pin.npm.version",
        "upstreams.local.pin.npm.integrity",
        "upstreams.local.pin.npm.tree",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
    let (code, _, err) = cli(&["config", "check", "--config", c]);
    assert_ne!(code, 0);
    assert!(err.contains("upstreams.local.pin.npm.version"), "{err}");
}

#[test]
fn require_launch_pins_fails_verify_for_unpinned_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[integrity]\nrequire_launch_pins = true\n[upstreams.local]\ntransport = \"stdio\"\ncommand = \"node\"\n",
    )
    .unwrap();
    let (code, out, _) = cli(&["pin", "verify", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("require_launch_pins"), "{out}");
}

#[test]
fn inventory_lists_servers_pins_sandbox_and_no_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("install");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    install(&prefix);
    let cfg = tmp.path().join("palisade.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\
             [upstreams.plain]\ntransport = \"stdio\"\ncommand = \"python3\"\n\
             args = [\"server.py\", \"--api-key\", \"argsecret123\"]\n\
             env = {{ SERVICE_TOKEN = \"envsecret456\" }}\n\
             sandbox = {{ network = \"egress\", egress = [\"api.github.com:443\"], read_only = [\"/srv/ro\"] }}\n\
             [upstreams.remote]\ntransport = \"http\"\nurl = \"https://mcp.example.com/mcp?key=urlsecret789\"\n\
             headers = {{ Authorization = {{ env = \"REMOTE_TOKEN\" }} }}\n",
            fs_upstream(&prefix, &data)
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out, err) = cli(&[
        "pin",
        "add",
        "fs",
        "--config",
        c,
        "--npm",
        PKG,
        "--prefix",
        prefix.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = cli(&["inventory", "--config", c]);
    assert_eq!(code, 0, "{err}");
    for secret in ["argsecret123", "envsecret456", "urlsecret789"] {
        assert!(!out.contains(secret), "{secret} leaked: {out}");
    }
    let inv: Value = serde_json::from_str(&out).unwrap();
    let ups: BTreeMap<String, Value> = inv["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap().to_owned(), u.clone()))
        .collect();
    assert_eq!(ups.len(), 3);
    let fs = &ups["fs"];
    assert_eq!(fs["transport"], "stdio");
    assert_eq!(fs["pin"]["status"], "verified", "{fs}");
    assert_eq!(fs["packages"][0]["version"], "2026.8.31");
    assert_eq!(
        fs["packages"][0]["purl"],
        "pkg:npm/%40modelcontextprotocol/server-filesystem@2026.8.31"
    );
    assert_eq!(fs["sandbox"]["mode"], "strict");
    let plain = &ups["plain"];
    assert_eq!(plain["pin"]["status"], "unpinned");
    assert_eq!(plain["env_keys"], json!(["SERVICE_TOKEN"]));
    assert_eq!(plain["args"], json!(["server.py", "--api-key", "<redacted>"]));
    assert_eq!(plain["sandbox"]["network"], "egress");
    assert_eq!(plain["sandbox"]["egress"], json!(["api.github.com:443"]));
    assert_eq!(plain["sandbox"]["read_only"], json!(["/srv/ro"]));
    assert_eq!(plain["sandbox"]["limits"]["processes"], 256);
    let remote = &ups["remote"];
    assert_eq!(remote["transport"], "http");
    assert_eq!(remote["url"], "https://mcp.example.com/mcp");
    assert_eq!(remote["header_names"], json!(["Authorization"]));

    // CycloneDX to a file.
    let bom_path = tmp.path().join("bom.json");
    let (code, _, err) = cli(&[
        "inventory",
        "--config",
        c,
        "--format",
        "cyclonedx",
        "--output",
        bom_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&bom_path).unwrap();
    for secret in ["argsecret123", "envsecret456", "urlsecret789"] {
        assert!(!text.contains(secret), "{secret} leaked into the BOM");
    }
    let bom: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.6");
    let comps = bom["components"].as_array().unwrap();
    assert_eq!(comps.len(), 2, "two stdio servers");
    let fs = comps.iter().find(|c| c["name"] == "fs").unwrap();
    assert_eq!(fs["type"], "application");
    assert_eq!(fs["components"][0]["type"], "library");
    assert_eq!(fs["components"][0]["hashes"][0]["alg"], "SHA-512");
    assert_eq!(bom["services"][0]["endpoints"][0], "https://mcp.example.com/mcp");

    // After tampering the inventory reports the mismatch.
    let js = server_js(&prefix);
    std::fs::write(&js, format!("{}\n// x\n", std::fs::read_to_string(&js).unwrap())).unwrap();
    let (_, out, _) = cli(&["inventory", "--config", c]);
    let inv: Value = serde_json::from_str(&out).unwrap();
    let fs = inv["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "fs")
        .unwrap()
        .clone();
    assert_eq!(fs["pin"]["status"], "mismatch", "{fs}");
    assert!(fs["pin"]["detail"].as_str().unwrap().contains("dist/index.js"));
}
