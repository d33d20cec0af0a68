//! The stdio sandbox against a hostile server (X1–X3): the rmcp test server's
//! attack tools run through the real gateway. Each attack is also run without
//! the sandbox, so a test that passes proves the sandbox stopped it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

fn hostile_upstream(name: &str, sandbox: &str) -> String {
    format!(
        "[upstreams.{name}]\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"stdio\"]\nrequest_timeout_ms = 20000\nrestart_backoff_initial_ms = 50\nenv = {{ PALISADE_TESTSERVER_HOSTILE = \"1\" }}\n[upstreams.{name}.sandbox]\n{sandbox}\n",
        testserver_bin().display()
    )
}

/// World-readable and world-writable places outside the sandbox, so that only
/// the sandbox (not file permissions) can stop the server.
struct Bait {
    _dir: tempfile::TempDir,
    ssh_key: PathBuf,
    outside: PathBuf,
    work: PathBuf,
}

fn bait() -> Bait {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    open(dir.path(), 0o755);
    let ssh = dir.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    open(&dir.path().join("home"), 0o755);
    open(&ssh, 0o755);
    let ssh_key = ssh.join("id_ed25519");
    std::fs::write(&ssh_key, "-----BEGIN OPENSSH PRIVATE KEY-----\nbait\n").unwrap();
    open(&ssh_key, 0o644);
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    open(&outside, 0o777);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    open(&work, 0o777);
    std::fs::write(work.join("notes.txt"), "hello").unwrap();
    open(&work.join("notes.txt"), 0o644);
    Bait {
        _dir: dir,
        ssh_key,
        outside,
        work,
    }
}

async fn tool_text(url: &str, sid: &str, id: u64, tool: &str, args: Value) -> String {
    let r = post(url, Some(sid), &call(id, tool, args)).await.response();
    if let Some(e) = r.get("error") {
        return format!("ERROR {e}");
    }
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The gateway's log without terminal colour codes.
fn log_of(gw: &Gateway) -> String {
    let raw = std::fs::read_to_string(gw.dir().join("stderr.log")).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether one line of the log contains every part.
fn logged(log: &str, parts: &[&str]) -> bool {
    log.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// The log once a line satisfies `pred` (events are written after the
/// response that revealed them), or after 10 s.
async fn log_when(gw: &Gateway, pred: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let log = log_of(gw);
        if log.lines().any(&pred) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    log_of(gw)
}

struct Attacks {
    read_key: String,
    read_work: String,
    write_outside: String,
    write_work: String,
    connect: String,
    fork: String,
    alloc: String,
    ptrace: String,
}

async fn attack(gw: &Gateway, b: &Bait, up: &str) -> Attacks {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = gw.url(&format!("/mcp/{up}"));
    let sid = initialize(&url).await;
    let t = |id, tool: &'static str, args| {
        let url = url.clone();
        let sid = sid.clone();
        async move {
            let r = tool_text(&url, &sid, id, tool, args).await;
            eprintln!("{tool}: {r}");
            r
        }
    };
    let a = Attacks {
        read_key: t(1, "attack_read", json!({"path": b.ssh_key})).await,
        read_work: t(2, "attack_read", json!({"path": b.work.join("notes.txt")})).await,
        write_outside: t(3, "attack_write", json!({"path": b.outside.join("dropped.sh")})).await,
        write_work: t(4, "attack_write", json!({"path": b.work.join("out.txt")})).await,
        connect: t(5, "attack_connect", json!({"port": port})).await,
        fork: t(6, "attack_fork", json!({"count": 300})).await,
        alloc: t(7, "attack_alloc", json!({"count": 2048})).await,
        ptrace: t(8, "attack_ptrace", json!({})).await,
    };
    // The server's legitimate tools still work afterwards.
    let echo = t(9, "echo", json!({"text": "still here"})).await;
    assert_eq!(echo, "still here", "{up}: legitimate tool after the attacks");
    drop(listener);
    a
}

#[tokio::test]
async fn hostile_server_is_contained_in_strict_mode_and_keeps_serving() {
    let b = bait();
    let strict = hostile_upstream(
        "jail",
        &format!(
            "mode = \"strict\"\nuser = \"nobody\"\nread_write = [\"{}\"]\nlimits = {{ processes = 64, address_space_mb = 1024 }}\n",
            b.work.display()
        ),
    );
    let gw = Gateway::start_logged(&strict, "");
    gw.wait_ready().await;
    let a = attack(&gw, &b, "jail").await;

    assert!(a.read_key.starts_with("BLOCKED read"), "read ~/.ssh: {}", a.read_key);
    assert!(
        a.read_work.starts_with("ALLOWED read"),
        "read own folder: {}",
        a.read_work
    );
    assert!(
        a.write_outside.starts_with("BLOCKED write"),
        "write outside: {}",
        a.write_outside
    );
    assert!(!b.outside.join("dropped.sh").exists());
    assert!(
        a.write_work.starts_with("ALLOWED write"),
        "write own folder: {}",
        a.write_work
    );
    assert!(a.connect.starts_with("BLOCKED connect"), "connect: {}", a.connect);
    assert!(a.fork.starts_with("BLOCKED fork: after "), "fork bomb: {}", a.fork);
    let forked: u32 = a.fork["BLOCKED fork: after ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX);
    assert!(forked < 64, "fork bomb got {forked} processes: {}", a.fork);
    assert!(
        a.alloc.starts_with("BLOCKED alloc"),
        "unbounded allocation: {}",
        a.alloc
    );
    assert!(a.ptrace.starts_with("BLOCKED ptrace"), "ptrace: {}", a.ptrace);

    // The gateway reported how the server was confined.
    let log = log_of(&gw);
    let started = log
        .lines()
        .find(|l| l.contains("upstream.started") && l.contains("jail"))
        .unwrap_or_else(|| panic!("no upstream.started in the log:\n{log}"));
    for m in ["landlock", "seccomp", "network_namespace", "user_namespace", "set_user"] {
        assert!(started.contains(m), "{m} missing from {started}");
    }
}

#[tokio::test]
async fn without_the_sandbox_the_same_attacks_succeed() {
    // The control: the attacks are real, so the strict test can fail.
    let b = bait();
    let gw = Gateway::start_logged(&hostile_upstream("open", "mode = \"off\"\n"), "");
    gw.wait_ready().await;
    let a = attack(&gw, &b, "open").await;
    assert!(a.read_key.starts_with("ALLOWED read"), "{}", a.read_key);
    assert!(a.write_outside.starts_with("ALLOWED write"), "{}", a.write_outside);
    assert!(a.connect.starts_with("ALLOWED connect"), "{}", a.connect);
    assert!(a.fork.starts_with("ALLOWED fork: 300"), "{}", a.fork);
    assert!(a.alloc.starts_with("ALLOWED alloc"), "{}", a.alloc);
    assert!(a.ptrace.starts_with("ALLOWED ptrace"), "{}", a.ptrace);
}

#[tokio::test]
async fn strict_refuses_a_host_without_landlock_and_best_effort_starts_loudly() {
    let ups = format!(
        "{}{}",
        hostile_upstream("strictjail", "mode = \"strict\"\n"),
        hostile_upstream("lenient", "mode = \"best-effort\"\n")
    );
    let gw = Gateway::start_full_env_logged(&ups, &[("PALISADE_SANDBOX_PRETEND_MISSING", "landlock")]);
    // Not /readyz: a refused upstream keeps the gateway not ready.
    for _ in 0..100 {
        if log_of(&gw).contains("upstream.sandbox_refused") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let url = gw.url("/mcp/strictjail");
    let r = post(&url, None, &init_msg()).await;
    assert!(
        r.status != 200 || r.body.contains("\"error\""),
        "strict server answered without its sandbox: {} {}",
        r.status,
        r.body
    );

    let url = gw.url("/mcp/lenient");
    let sid = initialize(&url).await;
    assert_eq!(tool_text(&url, &sid, 2, "echo", json!({"text": "y"})).await, "y");
    let log = log_when(&gw, |l| l.contains("upstream.sandbox_degraded")).await;
    assert!(
        logged(&log, &["upstream.sandbox_refused", "strictjail", "landlock"]),
        "no sandbox_refused event:\n{log}"
    );
    assert!(
        logged(&log, &["upstream.sandbox_degraded", "lenient", "landlock"]),
        "no sandbox_degraded event:\n{log}"
    );
}

#[tokio::test]
async fn a_server_over_its_memory_limit_is_killed_reported_and_restarted() {
    let gw = Gateway::start_logged(&hostile_upstream("hog", "limits = { memory_mb = 64 }\n"), "");
    gw.wait_ready().await;
    let url = gw.url("/mcp/hog");
    let sid = initialize(&url).await;
    // Touches up to 4 GiB slowly enough for the 1 s sampler to see it.
    let r = tool_text(&url, &sid, 1, "attack_alloc", json!({"count": 4096})).await;
    assert!(r.starts_with("ERROR"), "allocation finished: {r}");
    let log = log_when(&gw, |l| l.contains("upstream.exited")).await;
    assert!(
        logged(&log, &["upstream.limit_exceeded", "memory", "hog"]),
        "no limit_exceeded event:\n{log}"
    );
    assert!(logged(&log, &["upstream.exited", "signal=9"]), "no exit record:\n{log}");
    // Restarted with backoff: the next session works.
    for _ in 0..50 {
        let sid = initialize(&url).await;
        if tool_text(&url, &sid, 2, "echo", json!({"text": "back"})).await == "back" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("server not restarted");
}

#[tokio::test]
async fn egress_goes_only_through_the_proxy_and_only_to_listed_ports() {
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, po) = (allowed.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    let gw = Gateway::start_logged(
        &hostile_upstream("net", &format!("network = \"egress\"\negress = [\"127.0.0.1:{pa}\"]\n")),
        "",
    );
    gw.wait_ready().await;
    let url = gw.url("/mcp/net");
    let sid = initialize(&url).await;
    let ok = tool_text(
        &url,
        &sid,
        1,
        "egress_via_proxy",
        json!({"host": "127.0.0.1", "port": pa}),
    )
    .await;
    assert!(ok.starts_with("ALLOWED proxy"), "listed destination: {ok}");
    let no = tool_text(
        &url,
        &sid,
        2,
        "egress_via_proxy",
        json!({"host": "127.0.0.1", "port": po}),
    )
    .await;
    assert!(
        no.starts_with("BLOCKED proxy") && no.contains("403"),
        "unlisted destination: {no}"
    );
    let direct = tool_text(&url, &sid, 3, "attack_connect", json!({"port": pa})).await;
    assert!(direct.starts_with("BLOCKED connect"), "direct connection: {direct}");
    let log = log_when(&gw, |l| l.contains("sandbox.egress_denied")).await;
    assert!(
        logged(&log, &["sandbox.egress_denied", &po.to_string()]),
        "no egress_denied event:\n{log}"
    );
}

fn verdicts(check: &Value) -> Vec<&str> {
    check["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["verdict"].as_str().unwrap())
        .collect()
}

#[test]
fn sandbox_check_reports_the_host_and_which_servers_would_be_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.a]\ntransport = \"stdio\"\ncommand = \"true\"\n\
         [upstreams.b]\ntransport = \"stdio\"\ncommand = \"true\"\nsandbox = { mode = \"best-effort\" }\n\
         [upstreams.c]\ntransport = \"stdio\"\ncommand = \"true\"\nsandbox = { mode = \"off\" }\n",
    )
    .unwrap();
    let run = |hide: &str| {
        let out = std::process::Command::new(palisade_bin())
            .args(["sandbox", "check", "--json", "--config"])
            .arg(&cfg)
            .env("PALISADE_SANDBOX_PRETEND_MISSING", hide)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        (out.status.code(), v)
    };
    let (code, v) = run("");
    assert_eq!(code, Some(0), "{v}");
    assert!(v["landlock_abi"].as_i64().unwrap() >= 1, "{v}");
    assert_eq!(verdicts(&v), ["sandboxed", "sandboxed", "unsandboxed"]);

    let (code, v) = run("landlock");
    assert_eq!(code, Some(1), "a strict server would be refused: {v}");
    assert_eq!(verdicts(&v), ["refused", "degraded", "unsandboxed"]);
    assert_eq!(v["servers"][0]["missing"], json!(["landlock"]));
    let landlock = v["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "landlock")
        .unwrap();
    assert_eq!(landlock["available"], false);
}
