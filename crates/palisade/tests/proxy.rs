//! End-to-end behaviour of the proxy in front of real stdio servers.

mod common;

use common::*;
use serde_json::{Value, json};

fn two_demo_upstreams() -> String {
    format!(
        "{}\n{}",
        demo_upstream("alpha", "shared"),
        demo_upstream("beta", "per_session")
    )
}

#[tokio::test]
async fn initialize_list_and_call_through_a_stdio_upstream() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let init = json!({"jsonrpc":"2.0","id":"init-1","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = post_raw(
        &url,
        init.to_string(),
        &[("content-type", "application/json"), ("accept", ACCEPT)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], "init-1");
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(v["result"]["serverInfo"]["name"], "palisade-demo");
    let sid = r.header("mcp-session-id").expect("session header");
    assert!(sid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    assert!(sid.len() >= 40, "session id too short to carry 128 bits: {sid}");
    // Security headers on every response.
    assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));

    let mut s = post_raw(
        &url,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(),
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
    )
    .await;
    assert_eq!(s.status, 202);
    s = post_raw(
        &url,
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string(),
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    let tools = s.response();
    assert_eq!(tools["id"], 1);
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo") && names.contains(&"countdown"), "{names:?}");

    let r = post_raw(
        &url,
        call(2, "add", json!({"a": 2, "b": 40})).to_string(),
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", "2025-06-18"),
        ],
    )
    .await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "42");
}

#[tokio::test]
async fn progress_arrives_on_the_request_stream_with_the_clients_token() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let sid = initialize(&url).await;
    let mut msg = call(7, "countdown", json!({"n": 3}));
    msg["params"]["_meta"] = json!({"progressToken": "my-token"});
    let r = post(&url, Some(&sid), &msg).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().starts_with("text/event-stream"),
        "{}",
        r.body
    );
    let msgs = r.messages();
    let progress: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{}", r.body);
    assert!(progress.iter().all(|p| p["params"]["progressToken"] == "my-token"));
    assert_eq!(r.response()["id"], 7);
    assert_eq!(r.response()["result"]["content"][0]["text"], "liftoff");
    // 2025-11-25 streams are primed with an id and a retry hint.
    assert!(r.body.starts_with("retry: "), "{}", r.body);
}

#[tokio::test]
async fn sessions_are_bound_to_their_endpoint_and_end_on_delete() {
    let gw = Gateway::start(&two_demo_upstreams());
    gw.wait_ready().await;
    let alpha = gw.url("/mcp/alpha");
    let beta = gw.url("/mcp/beta");
    let sid = initialize(&alpha).await;
    // Another upstream's endpoint does not accept this session.
    let r = post(
        &beta,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // A forged or mangled id is unknown.
    let mut forged = sid.clone();
    forged.pop();
    forged.push(if sid.ends_with('A') { 'B' } else { 'A' });
    let r = post(
        &alpha,
        Some(&forged),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    )
    .await;
    assert_eq!(r.status, 404);
    // Missing session header on a non-initialize request.
    let r = post(&alpha, None, &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).await;
    assert_eq!(r.status, 400);
    // DELETE ends it; afterwards it is unknown.
    let d = client()
        .delete(&alpha)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(d.status().is_success());
    let r = post(
        &alpha,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn protocol_version_header_is_enforced() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let sid = initialize(&url).await;
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string();
    for version in [
        None,
        Some("2024-11-05"),
        Some("2025-03-26"),
        Some("garbage"),
        Some("2025-06-18"),
    ] {
        let mut h = vec![
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("mcp-session-id", sid.as_str()),
        ];
        if let Some(v) = version {
            h.push(("mcp-protocol-version", v));
        }
        let r = post_raw(&url, list.clone(), &h).await;
        assert_eq!(r.status, 400, "version {version:?}: {}", r.body);
    }
}

#[tokio::test]
async fn unsupported_initialize_version_negotiates_the_latest() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1999-01-01","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = post_raw(
        &url,
        init.to_string(),
        &[("content-type", "application/json"), ("accept", ACCEPT)],
    )
    .await;
    assert_eq!(r.json()["result"]["protocolVersion"], "2025-11-25");
}

#[tokio::test]
async fn per_session_mode_gives_each_session_its_own_process() {
    let gw = Gateway::start(&demo_upstream("solo", "per_session"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/solo");
    let a = initialize(&url).await;
    let b = initialize(&url).await;
    assert_ne!(a, b);
    for (i, s) in [&a, &b].iter().enumerate() {
        let r = post(
            &url,
            Some(s),
            &call(i as u64, "echo", json!({"text": format!("hi {i}")})),
        )
        .await;
        assert_eq!(r.response()["result"]["content"][0]["text"], format!("hi {i}"));
    }
}

#[tokio::test]
async fn aggregated_endpoint_prefixes_and_routes_tools() {
    let upstreams = format!(
        "{}\n{}\n[upstreams.gamma.aliases]\necho = \"shout\"\n",
        demo_upstream("alpha", "shared"),
        demo_upstream("gamma", "shared")
    );
    let gw = Gateway::start(&upstreams);
    gw.wait_ready().await;
    let url = gw.url("/mcp");
    let sid = initialize(&url).await;
    let r = post(&url, Some(&sid), &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})).await;
    let names: Vec<String> = r.response()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"alpha__echo".to_owned()), "{names:?}");
    assert!(names.contains(&"shout".to_owned()), "{names:?}");
    assert!(!names.contains(&"gamma__echo".to_owned()), "{names:?}");
    assert!(names.contains(&"gamma__add".to_owned()), "{names:?}");
    let r = post(&url, Some(&sid), &call(2, "shout", json!({"text": "via alias"}))).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "via alias");
    let r = post(&url, Some(&sid), &call(3, "alpha__add", json!({"a": 1, "b": 2}))).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "3");
    let r = post(&url, Some(&sid), &call(4, "nosuch__echo", json!({}))).await;
    assert_eq!(r.response()["error"]["code"], -32602);
    // Resources route by the URI learned from the merged list.
    let r = post(
        &url,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"resources/list"}),
    )
    .await;
    assert!(!r.response()["result"]["resources"].as_array().unwrap().is_empty());
    let r = post(
        &url,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"demo://readme"}}),
    )
    .await;
    assert!(
        r.response()["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .contains("demo server")
    );
    // Ping is answered by the gateway.
    let r = post(&url, Some(&sid), &json!({"jsonrpc":"2.0","id":7,"method":"ping"})).await;
    assert_eq!(r.response()["result"], json!({}));
}

#[tokio::test]
async fn alias_collision_is_an_error_at_load() {
    let upstreams = format!(
        "{}[upstreams.alpha.aliases]\necho = \"same\"\n{}[upstreams.gamma.aliases]\nadd = \"same\"\n",
        demo_upstream("alpha", "shared"),
        demo_upstream("gamma", "shared")
    );
    let dir = std::env::temp_dir().join(format!("palisade-collide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.toml");
    std::fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:0\"\n{upstreams}")).unwrap();
    let out = std::process::Command::new(palisade_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collision"), "{err}");
}

#[tokio::test]
async fn health_endpoints_answer() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let r = client().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .get(gw.url("/mcp/unknown"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn config_check_reports_errors_with_lines() {
    let dir = std::env::temp_dir().join(format!("palisade-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.x]\ntransport = \"http\"\nurl = \"http://example.com/mcp\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(palisade_bin())
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstreams.x.url (line 4)"), "{err}");
    let good = dir.join("good.toml");
    std::fs::write(&good, demo_upstream("demo", "shared")).unwrap();
    let out = std::process::Command::new(palisade_bin())
        .args(["config", "check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_dropped_sse_stream_resumes_with_last_event_id() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let sid = initialize(&url).await;
    let mut msg = call(5, "countdown", json!({"n": 6}));
    msg["params"]["_meta"] = json!({"progressToken": "t"});
    let mut resp = post_streaming(&url, &sid, &msg).await;
    // Read until the first progress event, remember its id, then hang up.
    let mut buf = String::new();
    let last_id = loop {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        let ids: Vec<String> = buf
            .split("\n\n")
            .filter(|ev| ev.contains("notifications/progress"))
            .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("id: ")).map(str::to_owned))
            .collect();
        if let Some(id) = ids.first() {
            break id.clone();
        }
    };
    drop(resp);
    let r = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &sid)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = Resp {
        status: 200,
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    };
    let msgs = body.messages();
    let progress: Vec<f64> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| m["params"]["progress"].as_f64().unwrap())
        .collect();
    // Everything after the last seen event, nothing before it, then the answer.
    assert_eq!(progress, vec![2.0, 3.0, 4.0, 5.0, 6.0], "{}", body.body);
    assert_eq!(body.response()["id"], 5);
    assert_eq!(body.response()["result"]["content"][0]["text"], "liftoff");
}
