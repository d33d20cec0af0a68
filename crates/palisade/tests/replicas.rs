//! Two gateway replicas sharing state in a real `redis-server` (G2, R1):
//! sessions move between replicas, one DELETE revokes everywhere, a user's
//! rate limit is shared, and a Redis outage fails closed and recovers.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A `redis-server` on a loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Redis::start_on(port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

const KEYS: &str = "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";

fn replica(redis_port: u16, limits: &str) -> Gateway {
    let server = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\nop_timeout_ms = 300\n{limits}\n"
    );
    Gateway::start_with(
        &demo_upstream("demo", "shared"),
        &server,
        &[("PALISADE_SESSION_KEYS", KEYS)],
    )
}

#[tokio::test]
async fn a_session_moves_between_replicas_and_one_delete_revokes_it_everywhere() {
    let redis = Redis::start();
    let a = replica(redis.port, "");
    let b = replica(redis.port, "");
    let (ua, ub) = (a.url("/mcp/demo"), b.url("/mcp/demo"));
    let sid = initialize(&ua).await;
    let r = post(&ub, Some(&sid), &call(1, "echo", json!({"text": "on b"}))).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "on b", "{}", r.body);
    let r = post(&ua, Some(&sid), &call(2, "echo", json!({"text": "on a"}))).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "on a", "{}", r.body);

    let del = client()
        .delete(&ub)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status().as_u16(), 204);
    for url in [&ua, &ub] {
        let r = post(url, Some(&sid), &call(3, "echo", json!({"text": "x"}))).await;
        assert_eq!(r.status, 404, "revoked session accepted at {url}: {}", r.body);
    }
}

#[tokio::test]
async fn a_users_rate_limit_is_shared_by_the_replicas() {
    let redis = Redis::start();
    let limits = "[limits]\nuser = { per_second = 0.01, burst = 6 }\n";
    let a = replica(redis.port, limits);
    let b = replica(redis.port, limits);
    let (ua, ub) = (a.url("/mcp/demo"), b.url("/mcp/demo"));
    // initialize on A (1), then calls alternate between the replicas.
    let sid = initialize(&ua).await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let url = if i % 2 == 0 { &ub } else { &ua };
        let r = post(url, Some(&sid), &call(i, "echo", json!({"text": "x"}))).await;
        statuses.push(r.status);
    }
    // 6 in the shared burst: initialize + 5 calls; a replica alone would allow 6 each.
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "{statuses:?}");
}

#[tokio::test]
async fn redis_down_fails_closed_and_service_returns_with_it() {
    let mut redis = Redis::start();
    let port = redis.port;
    let a = replica(port, "[limits]\nuser = { per_second = 100, burst = 100 }\n");
    let ua = a.url("/mcp/demo");
    let sid = initialize(&ua).await;
    let r = post(&ua, Some(&sid), &call(1, "echo", json!({"text": "up"}))).await;
    assert_eq!(r.status, 200, "{}", r.body);

    redis.stop();
    let started = Instant::now();
    let r = post(&ua, Some(&sid), &call(2, "echo", json!({"text": "down"}))).await;
    assert_eq!(r.status, 503, "fail closed expected: {}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(!r.body.contains("\"down\""), "the call went through: {}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a dead Redis blocked the request"
    );

    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&ua, Some(&sid), &call(3, "echo", json!({"text": "back"}))).await;
        if r.status == 200 {
            assert_eq!(r.response()["result"]["content"][0]["text"], "back", "{}", r.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis returned: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_gateway_starts_while_redis_is_down_and_refuses_until_it_is_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let a = replica(port, "[limits]\nuser = { per_second = 100, burst = 100 }\n");
    let ua = a.url("/mcp/demo");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = post_raw(
        &ua,
        init.to_string(),
        &[("content-type", "application/json"), ("accept", ACCEPT)],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post_raw(
            &ua,
            init.to_string(),
            &[("content-type", "application/json"), ("accept", ACCEPT)],
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One command to Redis over RESP; returns the first reply line.
fn redis_cmd(port: u16, args: &[&str]) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).expect("write");
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).expect("read");
    line.trim_end().to_owned()
}

/// Polls `url` with an echo call until its status is `want` (30 s at most).
async fn until_status(url: &str, sid: &str, want: u16) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post(url, Some(sid), &call(99, "echo", json!({"text": "probe"}))).await;
        if r.status == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn containment_decided_on_one_replica_holds_on_every_replica() {
    let redis = Redis::start();
    // Replica A contains; B has no rules of its own.
    let rules = "[[alerts]]\nname = \"block-on-add\"\non = [\"tool.call\"]\nwhere = { tool = \"add\" }\n\
                 actions = [{ type = \"block_principal\", for_s = 600 }]\n\
                 [[alerts]]\nname = \"stop-on-count\"\non = [\"tool.call\"]\nwhere = { tool = \"word_count\" }\n\
                 actions = [{ type = \"kill_switch\" }]\n";
    let a = replica(redis.port, rules);
    let b = replica(redis.port, "");
    let (ua, ub) = (a.url("/mcp/demo"), b.url("/mcp/demo"));
    let sid = initialize(&ua).await;
    let r = post(&ub, Some(&sid), &call(1, "echo", json!({"text": "before"}))).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A blocks the caller; B refuses it too.
    let r = post(&ua, Some(&sid), &call(2, "add", json!({"a": 1, "b": 2}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = until_status(&ub, &sid, 403).await;
    assert_eq!(r.status, 403, "the block did not reach replica B: {}", r.body);
    assert!(r.body.contains("incident response"), "{}", r.body);
    let blocked = redis_cmd(redis.port, &["HLEN", "palisade:containment:blocked"]);
    assert_eq!(blocked, ":1");
    // Lifted in the shared store (as another replica's admin API would): both serve again.
    redis_cmd(redis.port, &["DEL", "palisade:containment:blocked"]);
    for url in [&ub, &ua] {
        let r = until_status(url, &sid, 200).await;
        assert_eq!(r.status, 200, "still blocked at {url}: {}", r.body);
    }

    // A engages the kill switch; B stops all MCP traffic too.
    let r = post(&ua, Some(&sid), &call(3, "word_count", json!({"text": "a b c"}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = until_status(&ub, &sid, 503).await;
    assert_eq!(r.status, 503, "the kill switch did not reach replica B: {}", r.body);
    assert_eq!(redis_cmd(redis.port, &["GET", "palisade:containment:kill"]), "$1");
    redis_cmd(redis.port, &["SET", "palisade:containment:kill", "0"]);
    for url in [&ub, &ua] {
        let r = until_status(url, &sid, 200).await;
        assert_eq!(r.status, 200, "kill switch still on at {url}: {}", r.body);
    }
}
