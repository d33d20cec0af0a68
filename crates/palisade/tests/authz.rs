//! Authorization (Cedar), pinned-schema validation, rate limits and quotas,
//! through the real binary with tokens from the development issuer.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Test policies: everyone authenticated may connect and list; "readers" may
/// call `echo` only; "admins" may call anything with MFA; `word_count`
/// needs the user's confirmation; `add` only with a < 100.
const POLICIES: &str = r#"
@id("connect")
permit (principal, action in Palisade::Action::"connect", resource) when { principal.authenticated };
@id("list")
permit (principal, action in Palisade::Action::"list", resource) when { principal.authenticated };
@id("readers-echo")
permit (principal in Palisade::Group::"readers", action == Palisade::Action::"call_tool", resource)
when { resource.name == "echo" || resource.name == "word_count" || resource.name == "countdown" };
@id("readers-read")
permit (principal in Palisade::Group::"readers", action in Palisade::Action::"read", resource);
@id("admins")
@mfa("true")
permit (principal in Palisade::Group::"admins", action, resource);
@id("confirm-word-count")
@confirm("true")
permit (principal in Palisade::Group::"readers", action == Palisade::Action::"call_tool", resource)
when { resource.name == "word_count" };
@id("add-small")
permit (principal in Palisade::Group::"readers", action == Palisade::Action::"call_tool", resource)
when { resource.name == "add" && context.args.hasTag("a") && context.args.getTag("a") == "5" };
"#;

struct Setup {
    gw: Gateway,
    policies: tempfile::TempDir,
    _keys: tempfile::TempDir,
}

fn start(extra: &str) -> Setup {
    let keys = tempfile::tempdir().expect("tempdir");
    let policies = tempfile::tempdir().expect("tempdir");
    std::fs::write(policies.path().join("test.cedar"), POLICIES).expect("write policy");
    let server = format!(
        "[auth]\nmode = \"oauth\"\npublic_url = \"http://gw.test\"\n[auth.dev_issuer]\nkey_file = \"{}\"\n\
         [policy]\ndir = \"{}\"\nreload_interval_ms = 200\n{extra}\n",
        keys.path().join("dev.pem").display(),
        policies.path().display()
    );
    let gw = Gateway::start_with(&demo_upstream("demo", "shared"), &server, &[]);
    Setup {
        gw,
        policies,
        _keys: keys,
    }
}

async fn send(url: &str, token: &str, session: Option<&str>, msg: &Value) -> Resp {
    let bearer = format!("Bearer {token}");
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("mcp-protocol-version", "2025-11-25"),
        ("authorization", bearer.as_str()),
    ];
    if let Some(s) = session {
        h.push(("mcp-session-id", s));
    }
    post_raw(url, msg.to_string(), &h).await
}

async fn open(url: &str, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = send(url, token, None, &init).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sid = r.header("mcp-session-id").expect("session id");
    let n = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(send(url, token, Some(&sid), &n).await.status, 202);
    sid
}

fn list(id: u64, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})
}

fn names(r: &Resp, key: &str) -> Vec<String> {
    let mut v: Vec<String> = r.response()["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {}", r.body))
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn lists_show_only_what_the_caller_may_use_and_a_denied_call_looks_unknown() {
    let s = start("");
    let url = s.gw.url("/mcp/demo");
    let reader = mint(&s.gw, &["--sub", "alice", "--group", "readers"]);
    let nobody = mint(&s.gw, &["--sub", "bob"]);

    let sid = open(&url, &reader).await;
    let tools = send(&url, &reader, Some(&sid), &list(1, "tools/list")).await;
    // `add` is allowed only with some arguments, so it is not offered to call blindly.
    assert_eq!(
        names(&tools, "tools"),
        ["countdown", "echo", "word_count"],
        "{}",
        tools.body
    );
    let ok = send(&url, &reader, Some(&sid), &call(2, "echo", json!({"text": "hi"}))).await;
    assert_eq!(ok.response()["result"]["content"][0]["text"], "hi", "{}", ok.body);

    // Bob is authenticated but in no group: he sees no tools, no prompts, no resources.
    let bsid = open(&url, &nobody).await;
    let t = send(&url, &nobody, Some(&bsid), &list(3, "tools/list")).await;
    assert!(names(&t, "tools").is_empty(), "{}", t.body);
    let p = send(&url, &nobody, Some(&bsid), &list(4, "prompts/list")).await;
    assert!(names(&p, "prompts").is_empty(), "{}", p.body);
    let rs = send(&url, &nobody, Some(&bsid), &list(5, "resources/list")).await;
    assert!(
        rs.response()["result"]["resources"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{}",
        rs.body
    );

    // A denied call of a real tool is answered exactly like a call of a tool that does not exist.
    let denied = send(&url, &nobody, Some(&bsid), &call(6, "echo", json!({"text": "x"}))).await;
    let missing = send(&url, &nobody, Some(&bsid), &call(7, "no_such_tool", json!({}))).await;
    let (d, m) = (&denied.response()["error"], &missing.response()["error"]);
    assert_eq!(d["code"], m["code"], "{} / {}", denied.body, missing.body);
    assert_eq!(
        d["message"].as_str().unwrap().replace("\"echo\"", "\"X\""),
        m["message"].as_str().unwrap().replace("\"no_such_tool\"", "\"X\""),
    );
    assert_eq!(denied.status, missing.status);

    // Reading a resource and getting a prompt are decided too.
    let read = json!({"jsonrpc": "2.0", "id": 8, "method": "resources/read", "params": {"uri": "demo://readme"}});
    let r = send(&url, &nobody, Some(&bsid), &read).await;
    assert!(
        r.response()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unknown resource"),
        "{}",
        r.body
    );
    let r = send(&url, &reader, Some(&sid), &read).await;
    assert!(r.response()["result"]["contents"].is_array(), "{}", r.body);
}

#[tokio::test]
async fn argument_conditions_decide_calls() {
    let s = start("");
    let url = s.gw.url("/mcp/demo");
    let reader = mint(&s.gw, &["--sub", "alice", "--group", "readers"]);
    let sid = open(&url, &reader).await;
    let small = send(&url, &reader, Some(&sid), &call(1, "add", json!({"a": 5, "b": 1}))).await;
    assert_eq!(small.response()["result"]["content"][0]["text"], "6", "{}", small.body);
    let big = send(&url, &reader, Some(&sid), &call(2, "add", json!({"a": 500, "b": 1}))).await;
    assert!(
        big.response()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not available"),
        "{}",
        big.body
    );
}

#[tokio::test]
async fn duplicate_argument_keys_never_reach_a_decision() {
    let s = start("");
    let url = s.gw.url("/mcp/demo");
    let reader = mint(&s.gw, &["--sub", "alice", "--group", "readers"]);
    let sid = open(&url, &reader).await;
    // The policy would see a = 5 (serde keeps the last key); a server keeping the first sees 500.
    let body =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":500,"b":1,"a":5}}}"#;
    let bearer = format!("Bearer {reader}");
    let r = post_raw(
        &url,
        body,
        &[
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("mcp-protocol-version", "2025-11-25"),
            ("authorization", bearer.as_str()),
            ("mcp-session-id", sid.as_str()),
        ],
    )
    .await;
    let e = &r.response()["error"];
    assert!(
        e["message"].as_str().unwrap_or("").contains("duplicate keys"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn an_mfa_obligation_is_a_step_up_challenge() {
    let s = start("");
    let url = s.gw.url("/mcp/demo");
    let plain = mint(&s.gw, &["--sub", "root", "--group", "admins"]);
    let strong = mint(&s.gw, &["--sub", "root", "--group", "admins", "--amr", "mfa"]);
    let sid = open(&url, &plain).await;
    // Obligations hold outside tools/call too: without MFA the admin's list is withheld
    // and reading a resource is refused.
    let t = send(&url, &plain, Some(&sid), &list(10, "tools/list")).await;
    assert!(names(&t, "tools").is_empty(), "{}", t.body);
    let read = json!({"jsonrpc": "2.0", "id": 11, "method": "resources/read", "params": {"uri": "demo://readme"}});
    let r = send(&url, &plain, Some(&sid), &read).await;
    assert!(
        r.response()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("multi-factor"),
        "{}",
        r.body
    );
    let r = send(&url, &plain, Some(&sid), &call(1, "add", json!({"a": 1, "b": 2}))).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("insufficient_user_authentication"), "{challenge}");
    let sid2 = open(&url, &strong).await;
    let t = send(&url, &strong, Some(&sid2), &list(12, "tools/list")).await;
    assert_eq!(names(&t, "tools").len(), 4, "{}", t.body);
    let r = send(&url, &strong, Some(&sid2), &call(2, "add", json!({"a": 1, "b": 2}))).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "3", "{}", r.body);
}

#[tokio::test]
async fn arguments_are_validated_against_the_pinned_schema() {
    let s = start("");
    let url = s.gw.url("/mcp/demo");
    let admin = mint(&s.gw, &["--sub", "root", "--group", "admins", "--amr", "mfa"]);
    let sid = open(&url, &admin).await;
    let deep = (0..40).fold(json!(1), |v, _| json!({ "a": v }));
    for args in [
        json!({"a": "1", "b": 2}),
        json!({"a": 1}),
        json!({"a": [1], "b": 2}),
        json!({"a": deep, "b": 2}),
        json!({"a": "x".repeat(100_000), "b": 2}),
    ] {
        let r = send(&url, &admin, Some(&sid), &call(1, "add", args.clone())).await;
        let result = &r.response()["result"];
        assert_eq!(result["isError"], true, "{args}: {}", r.body);
        let text = result["content"][0]["text"].as_str().unwrap_or("");
        assert!(text.starts_with("invalid arguments"), "{text}");
        assert!(text.len() < 2_000, "the message echoes the value");
    }
    // countdown: integer 1..=10.
    for n in [json!(0), json!(11), json!(2.5), json!("3")] {
        let r = send(&url, &admin, Some(&sid), &call(2, "countdown", json!({"n": n}))).await;
        assert_eq!(r.response()["result"]["isError"], true, "{n}: {}", r.body);
    }
    let ok = send(&url, &admin, Some(&sid), &call(3, "add", json!({"a": 2, "b": 2}))).await;
    assert_eq!(ok.response()["result"]["content"][0]["text"], "4", "{}", ok.body);
}

#[tokio::test]
async fn a_confirmation_without_elicitation_is_refused() {
    let s = start("");
    let url = s.gw.url("/mcp/demo");
    let reader = mint(&s.gw, &["--sub", "alice", "--group", "readers"]);
    // The client declared no elicitation capability.
    let sid = open(&url, &reader).await;
    let r = send(
        &url,
        &reader,
        Some(&sid),
        &call(1, "word_count", json!({"text": "a b"})),
    )
    .await;
    let result = &r.response()["result"];
    assert_eq!(result["isError"], true, "{}", r.body);
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("does not support elicitation"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn a_changed_policy_takes_effect_and_an_invalid_one_never_does() {
    let s = start("");
    let url = s.gw.url("/mcp/demo");
    let reader = mint(&s.gw, &["--sub", "alice", "--group", "readers"]);
    let sid = open(&url, &reader).await;
    let file = s.policies.path().join("test.cedar");
    // An invalid set (type error): the old one stays.
    std::fs::write(
        &file,
        format!("{POLICIES}\npermit(principal, action, resource) when {{ principal.nope }};"),
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = send(&url, &reader, Some(&sid), &call(1, "echo", json!({"text": "still"}))).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "still", "{}", r.body);
    let r = send(&url, &reader, Some(&sid), &call(2, "add", json!({"a": 500, "b": 1}))).await;
    assert!(
        r.response().get("error").is_some(),
        "the invalid policy took effect: {}",
        r.body
    );
    // A valid change without the readers' echo grant: echo is now refused.
    write_without_echo(&file);
    let mut refused = false;
    for _ in 0..50 {
        let r = send(&url, &reader, Some(&sid), &call(3, "echo", json!({"text": "x"}))).await;
        if r.response().get("error").is_some() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the new policy set never took effect");
}

fn write_without_echo(file: &Path) {
    let text = POLICIES.replace("resource.name == \"echo\" || ", "");
    std::fs::write(file, text).expect("write");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let s = start("[limits]\nuser = { per_second = 0.05, burst = 3 }\n");
    let url = s.gw.url("/mcp/demo");
    let reader = mint(&s.gw, &["--sub", "alice", "--group", "readers"]);
    let other = mint(&s.gw, &["--sub", "carol", "--group", "readers"]);
    // initialize counts once; two more requests fit in the burst.
    let sid = open(&url, &reader).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = send(&url, &reader, Some(&sid), &call(i, "echo", json!({"text": "x"}))).await;
        statuses.push(r.status);
        if r.status == 429 {
            let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("seconds");
            assert!((1..=60).contains(&retry), "{retry}");
            let e = &r.response()["error"];
            assert_eq!(e["code"], -32005, "{}", r.body);
            assert_eq!(e["data"]["limit"], "user");
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429], "burst of 3 (initialize included)");
    // Another user has a bucket of their own.
    let osid = open(&url, &other).await;
    let r = send(&url, &other, Some(&osid), &call(9, "echo", json!({"text": "x"}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn adaptive_limits_make_denied_callers_slower() {
    // burst 6: a clean user makes 5 calls after initialize; a user whose calls
    // were denied pays more for each request.
    let s = start("[limits]\nuser = { per_second = 0.01, burst = 8 }\n[limits.adaptive]\ndenied = 3.0\n");
    let url = s.gw.url("/mcp/demo");
    let bob = mint(&s.gw, &["--sub", "bob"]);
    let sid = open(&url, &bob).await;
    // A denied call: its cost is 1, then Bob's score rises by 3.
    let r = send(&url, &bob, Some(&sid), &call(1, "echo", json!({"text": "x"}))).await;
    assert!(r.response().get("error").is_some(), "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now each request costs about 4 of the 6 left: the second is refused.
    let first = send(&url, &bob, Some(&sid), &list(2, "tools/list")).await;
    let second = send(&url, &bob, Some(&sid), &list(3, "tools/list")).await;
    assert_eq!(
        (first.status, second.status),
        (200, 429),
        "{} / {}",
        first.body,
        second.body
    );
}

#[tokio::test]
async fn a_per_tool_timeout_cancels_the_call() {
    // A 250 ms timeout for countdown (it takes about 1 s for n = 10).
    let keys = tempfile::tempdir().expect("tempdir");
    let policies = tempfile::tempdir().expect("tempdir");
    std::fs::write(policies.path().join("test.cedar"), POLICIES).expect("write policy");
    let server = format!(
        "[auth]\nmode = \"oauth\"\npublic_url = \"http://gw.test\"\n[auth.dev_issuer]\nkey_file = \"{}\"\n\
         [policy]\ndir = \"{}\"\n",
        keys.path().join("dev.pem").display(),
        policies.path().display()
    );
    let upstream = format!(
        "{}tool_timeouts_ms = {{ countdown = 250 }}\n",
        demo_upstream("demo", "shared")
    );
    let gw = Gateway::start_with(&upstream, &server, &[]);
    let url = gw.url("/mcp/demo");
    let reader = mint(&gw, &["--sub", "alice", "--group", "readers"]);
    let sid = open(&url, &reader).await;
    let r = send(&url, &reader, Some(&sid), &call(1, "countdown", json!({"n": 10}))).await;
    let e = &r.response()["error"];
    assert!(e["message"].as_str().unwrap_or("").contains("timed out"), "{}", r.body);
    // Other tools keep the upstream's own timeout.
    let r = send(&url, &reader, Some(&sid), &call(2, "echo", json!({"text": "after"}))).await;
    assert!(r.response().get("result").is_some(), "{}", r.body);
}

#[tokio::test]
async fn an_invalid_policy_folder_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource) when { 1 };",
    )
    .expect("write");
    let config = dir.path().join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n{}",
            dir.path().display(),
            demo_upstream("demo", "shared")
        ),
    )
    .expect("write");
    let out = std::process::Command::new(palisade_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cedar"), "{err}");
}
