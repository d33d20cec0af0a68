//! Malformed and hostile input from clients and from upstreams.

mod common;

use common::*;
use serde_json::json;

const JSON_HEADERS: [(&str, &str); 3] = [
    ("content-type", "application/json"),
    ("accept", ACCEPT),
    ("mcp-protocol-version", "2025-11-25"),
];

async fn with_session(url: &str, sid: &str, body: impl Into<reqwest::Body>) -> Resp {
    let mut h = JSON_HEADERS.to_vec();
    h.push(("mcp-session-id", sid));
    post_raw(url, body, &h).await
}

#[tokio::test]
async fn malformed_json_rpc_gets_errors_not_crashes() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let sid = initialize(&url).await;
    let cases: Vec<(&str, Vec<u8>, u16, i64)> = vec![
        ("invalid json", b"{not json".to_vec(), 400, -32700),
        ("empty body", Vec::new(), 400, -32700),
        (
            "wrong version",
            br#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#.to_vec(),
            400,
            -32600,
        ),
        ("no version", br#"{"id":1,"method":"tools/list"}"#.to_vec(), 400, -32600),
        (
            "batch",
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#.to_vec(),
            400,
            -32600,
        ),
        (
            "null id",
            br#"{"jsonrpc":"2.0","id":null,"method":"tools/list"}"#.to_vec(),
            400,
            -32600,
        ),
        (
            "object id",
            br#"{"jsonrpc":"2.0","id":{"a":1},"method":"tools/list"}"#.to_vec(),
            400,
            -32600,
        ),
        ("scalar", b"42".to_vec(), 400, -32600),
        (
            "invalid utf-8",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/\xff\"}".to_vec(),
            400,
            -32700,
        ),
        (
            "duplicate key",
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#.to_vec(),
            400,
            -32600,
        ),
    ];
    for (what, body, status, code) in cases {
        let r = with_session(&url, &sid, body).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{what}: {}", r.body);
    }
    // The session still works afterwards.
    let r = with_session(&url, &sid, call(9, "echo", json!({"text": "alive"})).to_string()).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "alive");
}

#[tokio::test]
async fn oversized_and_deeply_nested_bodies_are_refused() {
    let gw = Gateway::start_with(
        &demo_upstream("demo", "shared"),
        "max_body_bytes = 65536\nmax_json_depth = 16\n",
        &[],
    );
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let sid = initialize(&url).await;
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "a".repeat(200_000)
    );
    let r = with_session(&url, &sid, huge).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{}1{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = with_session(&url, &sid, deep).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("depth"));
    // A body that claims a huge length but is small is still read safely.
    let r = with_session(&url, &sid, call(2, "echo", json!({"text": "ok"})).to_string()).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn transport_headers_are_checked() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string();
    // Accept must list both types.
    let r = post_raw(
        &url,
        init.clone(),
        &[("content-type", "application/json"), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status, 406);
    // Content-Type must be JSON.
    let r = post_raw(
        &url,
        init.clone(),
        &[("content-type", "text/plain"), ("accept", ACCEPT)],
    )
    .await;
    assert_eq!(r.status, 415);
    // DNS rebinding: a foreign Origin or Host is refused (403), before anything else runs.
    let r = post_raw(
        &url,
        init.clone(),
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.header("mcp-session-id").is_none());
    let r = post_raw(
        &url,
        init.clone(),
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("host", "evil.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    // A loopback page may call a loopback gateway.
    let r = post_raw(
        &url,
        init.clone(),
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("origin", "http://localhost:6274"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // initialize must not carry a session id.
    let r = post_raw(
        &url,
        init,
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("mcp-session-id", "ps1.AAAA"),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    // Unknown HTTP methods on the endpoint.
    let r = client().put(&url).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 405);
    // GET needs text/event-stream.
    let r = client()
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
}

#[tokio::test]
async fn unknown_session_and_responses_to_unknown_requests() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    for junk in ["ps1.AAAA", "not-a-session", &"x".repeat(5000), "ps1.!!!!"] {
        let r = with_session(&url, junk, call(1, "echo", json!({"text": "x"})).to_string()).await;
        assert_eq!(r.status, 404, "{junk}");
    }
    let sid = initialize(&url).await;
    // A response the gateway never asked for is refused and not forwarded.
    let r = with_session(&url, &sid, json!({"jsonrpc":"2.0","id":12345,"result":{}}).to_string()).await;
    assert_eq!(r.status, 400);
    // Reusing an id that is still in flight is refused.
    let url2 = url.clone();
    let sid2 = sid.clone();
    let slow =
        tokio::spawn(
            async move { with_session(&url2, &sid2, call(77, "countdown", json!({"n": 10})).to_string()).await },
        );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = with_session(&url, &sid, call(77, "echo", json!({"text": "dup"})).to_string()).await;
    assert_eq!(r.response()["error"]["code"], -32600, "{}", r.body);
    let done = slow.await.unwrap();
    assert_eq!(done.response()["result"]["content"][0]["text"], "liftoff");
}

#[tokio::test]
async fn upstream_garbage_on_stdout_is_dropped() {
    let gw = Gateway::start(&bad_upstream("bad", "garbage", ""));
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let r = with_session(&url, &sid, call(1, "probe", json!({})).to_string()).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "probe-ok", "{}", r.body);
    let r = with_session(&url, &sid, call(2, "probe", json!({})).to_string()).await;
    assert_eq!(r.response()["id"], 2);
}

#[tokio::test]
async fn upstream_answering_with_foreign_ids_cannot_confuse_clients() {
    let gw = Gateway::start(&bad_upstream("bad", "ids", ""));
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let r = with_session(&url, &sid, call(1, "probe", json!({})).to_string()).await;
    let msgs = r.messages();
    assert!(!r.body.contains("FOREIGN"), "{}", r.body);
    assert_eq!(msgs.last().unwrap()["result"]["content"][0]["text"], "probe-ok");
}

#[tokio::test]
async fn upstream_that_dies_mid_call_fails_the_call_and_restarts() {
    let gw = Gateway::start(&bad_upstream("bad", "die", ""));
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let r = with_session(&url, &sid, call(1, "probe", json!({})).to_string()).await;
    assert_eq!(r.response()["id"], 1);
    assert_eq!(r.response()["error"]["code"], -32001, "{}", r.body);
    // The supervisor restarts it: listing works again.
    let mut ok = false;
    for i in 0..100 {
        let r = with_session(
            &url,
            &sid,
            json!({"jsonrpc":"2.0","id":100 + i,"method":"tools/list"}).to_string(),
        )
        .await;
        if r.response().get("result").is_some() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "upstream was not restarted");
}

#[tokio::test]
async fn upstream_that_never_answers_times_out_with_an_error() {
    let gw = Gateway::start(&bad_upstream("bad", "hang", ""));
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let r = with_session(&url, &sid, call(1, "probe", json!({})).to_string()).await;
    assert_eq!(r.response()["id"], 1);
    assert_eq!(r.response()["error"]["code"], -32001);
    assert!(
        r.response()["error"]["message"].as_str().unwrap().contains("timed out"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn stdio_environment_is_cleared() {
    let gw = Gateway::start_with(
        &bad_upstream("bad", "env", "env = { DECLARED = \"yes\" }"),
        "",
        &[
            ("PALISADE_TEST_SECRET", "must-not-leak"),
            ("AWS_SECRET_ACCESS_KEY", "nope"),
        ],
    );
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let r = with_session(&url, &sid, call(1, "env", json!({})).to_string()).await;
    let text = r.response()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let env: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(env["DECLARED"], "yes");
    assert!(env.get("PALISADE_TEST_SECRET").is_none(), "{text}");
    assert!(env.get("AWS_SECRET_ACCESS_KEY").is_none(), "{text}");
    // HOME is the sandbox's private folder, never the gateway's own.
    let home = env["HOME"].as_str().unwrap_or_default();
    assert!(home.contains("/palisade-"), "{text}");
    assert_ne!(Some(home), std::env::var("HOME").ok().as_deref(), "{text}");
    assert_eq!(env["TMPDIR"].as_str(), Some(home), "{text}");
}

#[tokio::test]
async fn overload_is_shed_with_retry_after() {
    let gw = Gateway::start_with(&demo_upstream("demo", "shared"), "max_concurrent_requests = 1\n", &[]);
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let sid = initialize(&url).await;
    // Hold the only slot with a slow body upload, then try another request.
    // The upload must be in its handler first: wait, and start over if it lost the race.
    let mut attempt = 0;
    let (sender, held, r) = loop {
        attempt += 1;
        let (sender, body) = {
            let (s, r) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
            (s, reqwest::Body::wrap_stream(tokio_stream_from(r)))
        };
        let (url2, sid2) = (url.clone(), sid.clone());
        let held = tokio::spawn(async move { with_session(&url2, &sid2, body).await });
        sender.send(Ok(b"{\"jsonrpc\":\"2.0\",".to_vec())).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
        assert!(!held.is_finished() || attempt < 5, "the upload never got the slot");
        if held.is_finished() {
            continue;
        }
        let r = with_session(&url, &sid, call(2, "echo", json!({"text": "x"})).to_string()).await;
        break (sender, held, r);
    };
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    sender
        .send(Ok(b"\"id\":1,\"method\":\"ping\"}".to_vec()))
        .await
        .unwrap();
    drop(sender);
    let held = held.await.unwrap();
    assert_eq!(held.status, 200, "{}", held.body);
}

fn tokio_stream_from(
    mut r: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| r.poll_recv(cx))
}

/// Reads an SSE response incrementally, answering server requests with `answer`.
async fn drive_sse(
    url: &str,
    sid: &str,
    msg: &serde_json::Value,
    answer: impl Fn(&serde_json::Value) -> Option<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let mut resp = post_streaming(url, sid, msg).await;
    let mut seen = Vec::new();
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: String = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if data.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            // `answer` sees every message; only replies to requests are sent.
            let reply = answer(&v);
            if v.get("method").is_some()
                && v.get("id").is_some()
                && let Some(reply) = reply
            {
                let r = post(url, Some(sid), &reply).await;
                assert_eq!(r.status, 202, "{}", r.body);
            }
            seen.push(v);
        }
    }
    if seen.is_empty() && !buf.trim().is_empty() {
        seen.push(serde_json::from_str(buf.trim()).unwrap());
    }
    seen
}

#[tokio::test]
async fn shared_process_never_guesses_which_user_to_ask() {
    let fixture = std::path::PathBuf::from(palisade_bin()).with_file_name("palisade-testserver");
    let up = format!(
        "[upstreams.shared]\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"stdio\"]\nmode = \"shared\"\n",
        fixture.display()
    );
    let gw = Gateway::start(&up);
    gw.wait_ready().await;
    let url = gw.url("/mcp/shared");
    let alice = initialize(&url).await;
    let bob = initialize(&url).await;
    let sampling = |v: &serde_json::Value| {
        (v["method"] == "sampling/createMessage").then(|| {
            json!({"jsonrpc":"2.0","id":v["id"].clone(),"result":{"model":"m","role":"assistant","content":{"type":"text","text":"answer"}}})
        })
    };
    // Alice has a long call in flight on the shared process.
    // Her first progress event proves the call is in flight upstream.
    let (u2, a2) = (url.clone(), alice.clone());
    let (in_flight_tx, mut in_flight) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut alice_msg = call(1, "slow", json!({"ms": 3000}));
    alice_msg["params"]["_meta"] = json!({"progressToken": "alice"});
    let alice_call = tokio::spawn(async move {
        drive_sse(&u2, &a2, &alice_msg, |v| {
            if v["method"] == "notifications/progress" {
                let _ = in_flight_tx.send(());
            }
            None
        })
        .await
    });
    tokio::time::timeout(std::time::Duration::from_secs(20), in_flight.recv())
        .await
        .expect("alice's call never started");
    // Bob's tool asks for sampling while both are active: nobody is asked.
    let bob_msgs = drive_sse(&url, &bob, &call(2, "test_sampling", json!({"prompt": "p"})), sampling).await;
    assert!(
        !bob_msgs.iter().any(|m| m["method"] == "sampling/createMessage"),
        "{bob_msgs:?}"
    );
    let last = bob_msgs.last().unwrap();
    assert_eq!(last["id"], 2);
    assert!(last.to_string().to_lowercase().contains("error"), "{last}");
    let alice_msgs = alice_call.await.unwrap();
    assert!(
        !alice_msgs.iter().any(|m| m["method"] == "sampling/createMessage"),
        "{alice_msgs:?}"
    );
    assert_eq!(
        alice_msgs.last().unwrap()["result"]["content"][0]["text"],
        "slept 3000 ms"
    );
    // With only Bob active, his request reaches him and completes.
    let bob_msgs = drive_sse(&url, &bob, &call(3, "test_sampling", json!({"prompt": "p"})), sampling).await;
    assert!(
        bob_msgs.iter().any(|m| m["method"] == "sampling/createMessage"),
        "{bob_msgs:?}"
    );
    assert!(bob_msgs.last().unwrap().to_string().contains("answer"), "{bob_msgs:?}");
}

#[tokio::test]
async fn client_cancellation_reaches_the_upstream_and_ends_the_stream() {
    let gw = Gateway::start(&bad_upstream("bad", "hang", ""));
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let (u2, s2) = (url.clone(), sid.clone());
    let pending = tokio::spawn(async move { with_session(&u2, &s2, call(41, "probe", json!({})).to_string()).await });
    // Cancel only once the upstream has the call.
    let mut n = 100;
    loop {
        let r = with_session(&url, &sid, call(n, "probes", json!({})).to_string()).await;
        let seen: Vec<serde_json::Value> =
            serde_json::from_str(r.response()["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
        if !seen.is_empty() {
            break;
        }
        n += 1;
        assert!(n < 200, "the upstream never received the call");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let note = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":41,"reason":"user"}});
    assert_eq!(post(&url, Some(&sid), &note).await.status, 202);
    let r = pending.await.unwrap();
    // No response for a cancelled request, and the stream ended well before the 3 s upstream timeout.
    assert!(
        !r.messages()
            .iter()
            .any(|m| m.get("result").is_some() || m.get("error").is_some()),
        "{}",
        r.body
    );
    let r = with_session(&url, &sid, call(42, "cancelled", json!({})).to_string()).await;
    let ids: Vec<serde_json::Value> =
        serde_json::from_str(r.response()["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(ids.len(), 1, "upstream saw cancellations {ids:?}");
    // The upstream saw the gateway's own id, not the client's.
    assert_ne!(ids[0], json!(41));
}

#[tokio::test]
async fn upstream_overload_is_503_with_retry_after() {
    // One upstream slot, held by a call the upstream never answers (until its 3 s timeout).
    let gw = Gateway::start(&bad_upstream("bad", "hang", "max_in_flight = 1"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let mut attempt = 0u64;
    let (busy, r) = loop {
        attempt += 1;
        let (u2, s2) = (url.clone(), sid.clone());
        let busy = tokio::spawn(async move { with_session(&u2, &s2, call(1, "probe", json!({})).to_string()).await });
        tokio::time::sleep(std::time::Duration::from_millis(400 * attempt)).await;
        if busy.is_finished() {
            // It lost the slot race itself; on a loaded machine, try again.
            assert!(attempt < 5, "the hanging call never held the slot");
            continue;
        }
        let r = with_session(&url, &sid, call(2, "cancelled", json!({})).to_string()).await;
        break (busy, r);
    };
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(r.json()["error"]["code"], -32003);
    // The slot holder ends with the gateway's timeout error, not a hang.
    assert_eq!(busy.await.unwrap().response()["error"]["code"], -32001);
}

fn alive(pid: u64) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn stopping_the_gateway_kills_a_stubborn_server_and_its_children() {
    let gw = Gateway::start(&bad_upstream("bad", "stubborn", "shutdown_grace_ms = 1000"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/bad");
    let sid = initialize(&url).await;
    let r = with_session(&url, &sid, call(1, "pids", json!({})).to_string()).await;
    let pids: Vec<u64> = serde_json::from_str(r.response()["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    gw.terminate();
    let mut gone = false;
    for _ in 0..100 {
        if pids.iter().all(|p| !alive(*p)) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "server or its child survived the gateway: {pids:?}");
}
