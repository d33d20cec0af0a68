//! Attack tools for the sandbox tests, listed only when
//! `PALISADE_TESTSERVER_HOSTILE` is set. Each reports what the attempt got:
//! `ALLOWED ...` when it worked, `BLOCKED ...` with the error when it failed.

use std::io::Write;
use std::time::Duration;

use rmcp::model::JsonObject;
use serde_json::{Value, json};

pub const HOSTILE_ENV: &str = "PALISADE_TESTSERVER_HOSTILE";

pub fn enabled() -> bool {
    std::env::var_os(HOSTILE_ENV).is_some()
}

pub fn definitions() -> Vec<Value> {
    let path = json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]});
    let port = json!({"type": "object", "properties": {"port": {"type": "integer"}}, "required": ["port"]});
    let count = json!({"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]});
    let none = json!({"type": "object", "properties": {}});
    [
        ("attack_read", "Read a file", path.clone()),
        ("attack_write", "Write a file", path),
        ("attack_connect", "Open a TCP connection to 127.0.0.1", port),
        ("attack_fork", "Fork up to count processes", count.clone()),
        ("attack_alloc", "Allocate count MiB", count),
        ("attack_ptrace", "PTRACE_TRACEME in a forked child", none.clone()),
        ("attack_exec", "Run /bin/sh -c id", none),
        ("egress_via_proxy", "CONNECT host:port through $HTTPS_PROXY", json!({"type": "object", "properties": {"host": {"type": "string"}, "port": {"type": "integer"}}, "required": ["host", "port"]})),
    ]
    .into_iter()
    .map(|(n, d, s)| json!({"name": n, "description": d, "inputSchema": s}))
    .collect()
}

fn verdict(what: &str, r: Result<String, String>) -> String {
    match r {
        Ok(s) => format!("ALLOWED {what}: {s}"),
        Err(e) => format!("BLOCKED {what}: {e}"),
    }
}

/// Runs an attack tool; `None` for other names.
pub fn call(name: &str, args: &JsonObject) -> Option<String> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let n = |k: &str| args.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(match name {
        "attack_read" => verdict(
            "read",
            std::fs::read(s("path"))
                .map(|b| format!("{} bytes", b.len()))
                .map_err(|e| e.to_string()),
        ),
        "attack_write" => verdict(
            "write",
            std::fs::File::create(s("path"))
                .and_then(|mut f| f.write_all(b"written by the sandboxed server\n"))
                .map(|()| "written".into())
                .map_err(|e| e.to_string()),
        ),
        "attack_connect" => {
            let port = u16::try_from(n("port")).unwrap_or(0);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            verdict(
                "connect",
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                    .map(|_| "connected".into())
                    .map_err(|e| e.to_string()),
            )
        }
        "attack_fork" => verdict("fork", fork_many(n("count").min(100_000))),
        "attack_alloc" => verdict("alloc", alloc(n("count"))),
        "attack_ptrace" => verdict("ptrace", ptrace()),
        "attack_exec" => verdict(
            "exec",
            std::process::Command::new("/bin/sh")
                .args(["-c", "id"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .map_err(|e| e.to_string()),
        ),
        "egress_via_proxy" => verdict("proxy", via_proxy(&s("host"), n("port"))),
        _ => return None,
    })
}

/// Forks children that sleep, until `count` or the first failure; then kills them.
fn fork_many(count: u64) -> Result<String, String> {
    let mut pids = Vec::new();
    let mut failure = None;
    for _ in 0..count {
        // SAFETY: the child only sleeps and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                libc::sleep(30);
                libc::_exit(0);
            }
        }
        if pid < 0 {
            failure = Some(std::io::Error::last_os_error().to_string());
            break;
        }
        pids.push(pid);
    }
    for p in &pids {
        unsafe {
            libc::kill(*p, libc::SIGKILL);
            libc::waitpid(*p, std::ptr::null_mut(), 0);
        }
    }
    match failure {
        Some(e) => Err(format!("after {} processes: {e}", pids.len())),
        None => Ok(format!("{} processes", pids.len())),
    }
}

fn alloc(mib: u64) -> Result<String, String> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib.div_ceil(64) {
        let mut v: Vec<u8> = Vec::new();
        if let Err(e) = v.try_reserve_exact(64 << 20) {
            return Err(format!("after {} MiB: {e}", i * 64));
        }
        v.resize(64 << 20, 1);
        blocks.push(v);
        // Slow enough for the gateway's 1 s memory sampler to see the growth.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!("{} MiB", blocks.len() * 64))
}

/// A forked child asks to be traced by this process (PTRACE_TRACEME); its
/// exit status carries the answer. Harmless when allowed.
fn ptrace() -> Result<String, String> {
    // SAFETY: the child only makes the call and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let r = libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            let code = if r == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
            };
            libc::_exit(code);
        }
    }
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 => Ok("traceme succeeded".into()),
        e => Err(format!("traceme: {}", std::io::Error::from_raw_os_error(e))),
    }
}

/// Asks the proxy named in `HTTPS_PROXY` for a tunnel; returns its status line.
fn via_proxy(host: &str, port: u64) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    let proxy = std::env::var("HTTPS_PROXY").map_err(|_| "no HTTPS_PROXY".to_owned())?;
    let addr = proxy.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("proxy: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim().to_owned();
    if line.contains(" 200 ") { Ok(line) } else { Err(line) }
}
