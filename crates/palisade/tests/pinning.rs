//! Tool pinning against a real MCP server (the rmcp test server) that pulls
//! the rug: after its first `tools/list` it changes `echo`'s description and
//! adds a poisoned tool. The gateway must hold both, refuse calls, and let an
//! admin approve, quarantine and roll back with `palisade tools`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn upstream(mode: &str) -> String {
    format!(
        "[integrity]\npoll_interval_ms = 50\n\n\
         [upstreams.fixture]\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"stdio\"]\nmode = \"shared\"\npinning = \"{mode}\"\n\
         env = {{ PALISADE_TESTSERVER_RUG_PULL = \"1\" }}\n",
        testserver_bin().display()
    )
}

fn tools_cmd(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(palisade_bin())
        .arg("tools")
        .arg("--config")
        .arg(gw.config_path())
        .args(args)
        .output()
        .expect("run palisade tools");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn list(url: &str, sid: &str, id: u64) -> Vec<String> {
    let r = post(
        url,
        Some(sid),
        &json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}),
    )
    .await;
    let v = r.response();
    v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {v}"))
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

async fn call_tool(url: &str, sid: &str, id: u64, tool: &str) -> Value {
    let args = match tool {
        "echo" => json!({"text": "hi"}),
        "add" => json!({"a": 1, "b": 2}),
        _ => json!({}),
    };
    post(url, Some(sid), &call(id, tool, args)).await.response()
}

/// Calls until the answer has `want` ("result" or "error"): approvals and
/// quarantines reach the running gateway by polling.
async fn call_until(url: &str, sid: &str, tool: &str, want: &str) -> Value {
    for i in 0..100 {
        let v = call_tool(url, sid, 1000 + i, tool).await;
        if v.get(want).is_some() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{tool} never answered with {want}");
}

async fn call_until_allowed(url: &str, sid: &str, tool: &str) -> Value {
    call_until(url, sid, tool, "result").await
}

async fn call_until_refused(url: &str, sid: &str, tool: &str) -> Value {
    call_until(url, sid, tool, "error").await
}

#[tokio::test]
async fn rug_pull_is_held_until_approved() {
    let gw = Gateway::start(&upstream("tofu"));
    let url = gw.url("/mcp/fixture");
    let sid = initialize(&url).await;

    // First sight: pinned on trust.
    let first = list(&url, &sid, 1).await;
    assert!(first.contains(&"echo".to_owned()), "{first:?}");
    assert!(!first.contains(&"get_fact_of_the_day".to_owned()));
    let v = call_tool(&url, &sid, 2, "echo").await;
    assert_eq!(v["result"]["content"][0]["text"], "hi", "{v}");

    // The server changes echo and adds a poisoned tool: both held.
    let second = list(&url, &sid, 3).await;
    assert!(
        !second.contains(&"echo".to_owned()),
        "changed tool still listed: {second:?}"
    );
    assert!(
        !second.contains(&"get_fact_of_the_day".to_owned()),
        "poisoned tool listed: {second:?}"
    );
    assert!(second.contains(&"add".to_owned()), "unchanged tools stay: {second:?}");
    let v = call_tool(&url, &sid, 4, "echo").await;
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("changed since approval"), "{v}");
    let v = call_tool(&url, &sid, 5, "get_fact_of_the_day").await;
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("high-risk"), "{v}");

    // The admin sees both, with a readable diff.
    let (code, out, _) = tools_cmd(&gw, &["list", "--server", "fixture"]);
    assert_eq!(code, 1, "held items make `tools list` exit 1: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("fixture/echo") && l.contains("held_changed")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("fixture/get_fact_of_the_day") && l.contains("held_finding")),
        "{out}"
    );
    let (code, diff, _) = tools_cmd(&gw, &["diff", "fixture/echo"]);
    assert_eq!(code, 1);
    assert!(
        diff.contains("+  \"description\": \"Echo the text argument back, now with extra logging.\""),
        "{diff}"
    );
    assert!(diff.lines().any(|l| l.starts_with("-  \"description\"")), "{diff}");

    // Approval restores the changed tool.
    let (code, out, err) = tools_cmd(&gw, &["approve", "fixture/echo", "--by", "alice"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = call_until_allowed(&url, &sid, "echo").await;
    assert_eq!(v["result"]["content"][0]["text"], "hi");
    assert!(list(&url, &sid, 6).await.contains(&"echo".to_owned()));

    // The poisoned tool needs its findings acknowledged.
    let (code, _, err) = tools_cmd(&gw, &["approve", "fixture/get_fact_of_the_day"]);
    assert_ne!(code, 0);
    assert!(err.contains("--acknowledge-findings"), "{err}");
    assert!(
        call_tool(&url, &sid, 7, "get_fact_of_the_day")
            .await
            .get("error")
            .is_some()
    );

    // Quarantine and release.
    let (code, _, _) = tools_cmd(&gw, &["quarantine", "fixture/echo", "--reason", "incident 42"]);
    assert_eq!(code, 0);
    let v = call_until_refused(&url, &sid, "echo").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("quarantined"),
        "{v}"
    );
    assert!(!list(&url, &sid, 8).await.contains(&"echo".to_owned()));
    let (code, _, _) = tools_cmd(&gw, &["release", "fixture/echo"]);
    assert_eq!(code, 0);
    call_until_allowed(&url, &sid, "echo").await;

    // Rollback to the first version: the server's current echo is held again.
    let (code, out, err) = tools_cmd(&gw, &["rollback", "fixture/echo"]);
    assert_eq!(code, 0, "{out}{err}");
    let v = call_until_refused(&url, &sid, "echo").await;
    assert!(
        v["error"]["message"].as_str().unwrap_or_default().contains("changed"),
        "{v}"
    );
    let (_, hist, _) = tools_cmd(&gw, &["history", "fixture/echo"]);
    assert!(
        hist.contains("tofu") && hist.contains("alice") && hist.contains("rollback"),
        "{hist}"
    );

    // A whole server in one command.
    let (code, _, _) = tools_cmd(&gw, &["quarantine", "fixture"]);
    assert_eq!(code, 0);
    let v = call_until_refused(&url, &sid, "add").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("quarantined"),
        "{v}"
    );

    // The inventory has servers, pins and approvals.
    let (code, out, _) = tools_cmd(&gw, &["export"]);
    assert_eq!(code, 0);
    let inv: Value = serde_json::from_str(&out).expect("export is JSON");
    assert!(inv["servers"]["fixture"].is_object(), "{inv}");
}

#[tokio::test]
async fn approve_mode_holds_everything_new() {
    let gw = Gateway::start(&upstream("approve"));
    let url = gw.url("/mcp/fixture");
    let sid = initialize(&url).await;

    // A call before any listing: the gateway lists for itself, and nothing is approved yet.
    let v = call_tool(&url, &sid, 1, "echo").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not yet approved"),
        "{v}"
    );
    assert!(list(&url, &sid, 2).await.is_empty());

    // Approving every held tool of the server: the clean ones pass, the poisoned one is skipped.
    let (code, out, _) = tools_cmd(&gw, &["approve", "--all", "fixture", "--by", "bob"]);
    assert_eq!(code, 1, "a skipped item makes approve --all exit 1: {out}");
    assert!(out.contains("approved fixture/echo"), "{out}");
    assert!(out.contains("skipped  fixture/get_fact_of_the_day"), "{out}");
    call_until_allowed(&url, &sid, "echo").await;
    let names = list(&url, &sid, 3).await;
    assert!(names.contains(&"echo".to_owned()) && !names.contains(&"get_fact_of_the_day".to_owned()));

    // A name the server does not have is refused without reaching it.
    let v = call_tool(&url, &sid, 4, "no_such_tool").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not available"),
        "{v}"
    );
}

#[tokio::test]
async fn pins_survive_a_crash_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("pins.db");
    let config = upstream("tofu").replace(
        "poll_interval_ms = 50",
        &format!("poll_interval_ms = 50\nstore = \"{}\"", store.display()),
    );
    {
        let gw = Gateway::start(&config);
        let url = gw.url("/mcp/fixture");
        let sid = initialize(&url).await;
        assert!(list(&url, &sid, 1).await.contains(&"echo".to_owned()));
        // Dropping the harness kills the gateway with SIGKILL.
    }
    let gw = Gateway::start(&config);
    let (code, out, _) = tools_cmd(&gw, &["list", "--json"]);
    assert_eq!(code, 0, "{out}");
    let items: Value = serde_json::from_str(&out).unwrap();
    assert!(
        items
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["name"] == "echo" && i["state"] == "approved")),
        "{items}"
    );
    // A fresh server process serves the original list first, then the rug pull,
    // which is held against the pin recorded before the crash.
    let url = gw.url("/mcp/fixture");
    let sid = initialize(&url).await;
    assert!(list(&url, &sid, 1).await.contains(&"echo".to_owned()));
    assert!(!list(&url, &sid, 2).await.contains(&"echo".to_owned()));
}
