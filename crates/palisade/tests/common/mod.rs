//! Test harness: runs the real `palisade` binary as a child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const ACCEPT: &str = "application/json, text/event-stream";

/// A running gateway; killed on drop.
pub struct Gateway {
    child: Child,
    pub base: String,
    _dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

pub fn palisade_bin() -> &'static str {
    env!("CARGO_BIN_EXE_palisade")
}

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// TOML for a stdio upstream running the bundled demo server.
pub fn demo_upstream(name: &str, mode: &str) -> String {
    format!(
        "[upstreams.{name}]\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"demo-server\"]\nmode = \"{mode}\"\n",
        palisade_bin()
    )
}

/// TOML for a stdio upstream running the misbehaving Python server.
pub fn bad_upstream(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "[upstreams.{name}]\ntransport = \"stdio\"\ncommand = \"python3\"\nargs = [\"{}\", \"{mode}\"]\nrequest_timeout_ms = 3000\nrestart_backoff_initial_ms = 50\n{extra}\n",
        fixture("bad_server.py")
    )
}

impl Gateway {
    /// Starts `palisade serve` on a free loopback port with the given upstream sections.
    pub fn start(upstreams: &str) -> Gateway {
        Gateway::start_with(upstreams, "", &[])
    }

    pub fn start_with(upstreams: &str, server_extra: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_full(upstreams, server_extra, env, false)
    }

    /// As [`Gateway::start_with`], with the process log (stderr) kept in
    /// `<dir>/stderr.log` for tests that grep it.
    pub fn start_logged(upstreams: &str, server_extra: &str) -> Gateway {
        Gateway::start_full(upstreams, server_extra, &[], true)
    }

    /// As [`Gateway::start_logged`], with extra environment variables.
    pub fn start_full_env_logged(upstreams: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_full(upstreams, "", env, true)
    }

    fn start_full(upstreams: &str, server_extra: &str, env: &[(&str, &str)], keep_log: bool) -> Gateway {
        let dir = std::env::temp_dir().join(format!("palisade-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n{upstreams}");
        let path = dir.join("palisade.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(palisade_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .env("PALISADE_LOG", "info,palisade=debug");
        if keep_log {
            let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
            cmd.stderr(Stdio::from(log));
        } else {
            cmd.stderr(Stdio::inherit());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn palisade");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut base = String::new();
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if let Some(rest) = line.strip_prefix("palisade listening on ") {
                base = rest.trim().to_owned();
                break;
            }
        }
        assert!(!base.is_empty(), "gateway did not report its address");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Gateway { child, base, _dir: dir }
    }

    /// Sends SIGTERM (graceful stop) and waits for the gateway to exit.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The gateway's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self._dir.join("palisade.toml")
    }

    /// The gateway's private temporary directory.
    pub fn dir(&self) -> &PathBuf {
        &self._dir
    }

    /// Waits until `/readyz` says ready.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway not ready");
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (n as u64) ^ u64::from(std::process::id()).rotate_left(17)
}

/// A response read in full.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Every JSON message in an SSE body, or the JSON body itself.
    pub fn messages(&self) -> Vec<Value> {
        let ctype = self.header("content-type").unwrap_or_default();
        if ctype.starts_with("text/event-stream") {
            self.body
                .split("\n\n")
                .filter_map(|ev| {
                    let data: Vec<&str> = ev
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    let data = data.join("\n");
                    (!data.trim().is_empty()).then(|| serde_json::from_str(&data).expect("SSE data is JSON"))
                })
                .collect()
        } else if self.body.is_empty() {
            Vec::new()
        } else {
            vec![self.json()]
        }
    }

    /// The final JSON-RPC response among the messages.
    pub fn response(&self) -> Value {
        self.messages()
            .into_iter()
            .rev()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no response in: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// POSTs raw bytes with the given headers.
pub async fn post_raw(url: &str, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> Resp {
    let mut req = client().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Resp { status, headers, body }
}

/// POSTs a JSON-RPC message within a session with the standard headers.
pub async fn post(url: &str, session: Option<&str>, msg: &Value) -> Resp {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    post_raw(url, msg.to_string(), &headers).await
}

/// Runs `initialize` + `notifications/initialized`; returns the session id.
pub async fn initialize(url: &str) -> String {
    let init = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": { "protocolVersion": "2025-11-25", "capabilities": { "sampling": {} }, "clientInfo": { "name": "test", "version": "1" } }
    });
    let r = post_raw(
        url,
        init.to_string(),
        &[("content-type", "application/json"), ("accept", ACCEPT)],
    )
    .await;
    assert_eq!(r.status, 200, "initialize failed: {}", r.body);
    let sid = r.header("mcp-session-id").expect("session id");
    let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let n = post(url, Some(&sid), &note).await;
    assert_eq!(n.status, 202, "{}", n.body);
    sid
}

pub fn call(id: u64, tool: &str, args: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool, "arguments": args } })
}

/// A running palisade-testserver; killed on drop.
pub struct Fixture(Child);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn testserver_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(palisade_bin()).with_file_name("palisade-testserver")
}

/// Starts the fixture over HTTP; returns it and its URL.
pub fn start_http_fixture() -> (Fixture, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(testserver_bin())
        .args(["http", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start palisade-testserver (built by cargo build --workspace)");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("fixture exited").expect("read");
        if let Some(u) = line.strip_prefix("listening ") {
            break u.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Fixture(child), url)
}

/// POSTs a message within a session and returns the response unread (for SSE).
pub async fn post_streaming(url: &str, sid: &str, msg: &Value) -> reqwest::Response {
    client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", ACCEPT)
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", sid)
        .body(msg.to_string())
        .send()
        .await
        .expect("request")
}

/// Mints a token from the gateway's development issuer (`palisade token mint`).
pub fn mint(gw: &Gateway, args: &[&str]) -> String {
    let out = Command::new(palisade_bin())
        .args(["token", "mint", "--config"])
        .arg(gw.config_path())
        .args(args)
        .output()
        .expect("run token mint");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// A request with an optional bearer token and session.
pub async fn send(url: &str, token: Option<&str>, session: Option<&str>, msg: &Value) -> Resp {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    if let Some(b) = &bearer {
        h.push(("authorization", b));
    }
    if let Some(s) = session {
        h.push(("mcp-session-id", s));
    }
    post_raw(url, msg.to_string(), &h).await
}

/// An `initialize` request at 2025-11-25.
pub fn init_msg() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

/// Every record of an audit chain folder, parsed, in order (empty when the
/// folder does not exist yet).
pub fn audit_records(dir: &Path) -> Vec<Value> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut segs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-"))
        })
        .collect();
    segs.sort();
    segs.iter()
        .flat_map(|s| {
            std::fs::read_to_string(s)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}
