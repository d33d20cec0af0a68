//! The stateless revision 2026-07-28: headers mirror the body, no sessions.

mod common;

use common::*;
use serde_json::{Value, json};

const V: &str = "2026-07-28";

fn req(id: u64, method: &str, params: Value) -> Value {
    let mut p = params.as_object().cloned().unwrap_or_default();
    p.insert(
        "_meta".into(),
        json!({
            "io.modelcontextprotocol/protocolVersion": V,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}
        }),
    );
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": p})
}

async fn send(url: &str, body: &Value, method: Option<&str>, name: Option<&str>, version: Option<&str>) -> Resp {
    let mut h = vec![("content-type", "application/json"), ("accept", ACCEPT)];
    if let Some(v) = version {
        h.push(("mcp-protocol-version", v));
    }
    if let Some(m) = method {
        h.push(("mcp-method", m));
    }
    if let Some(n) = name {
        h.push(("mcp-name", n));
    }
    post_raw(url, body.to_string(), &h).await
}

#[tokio::test]
async fn stateless_requests_are_served_and_checked() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");

    let r = send(
        &url,
        &req(1, "server/discover", json!({})),
        Some("server/discover"),
        None,
        Some(V),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = r.json()["result"].clone();
    assert_eq!(d["resultType"], "complete");
    assert!(d["supportedVersions"].as_array().unwrap().contains(&json!(V)));
    assert!(d["capabilities"]["tools"].is_object(), "{d}");
    assert!(r.header("mcp-session-id").is_none());

    let r = send(
        &url,
        &req(2, "tools/list", json!({})),
        Some("tools/list"),
        None,
        Some(V),
    )
    .await;
    let v = r.response();
    assert_eq!(v["result"]["resultType"], "complete");
    assert!(v["result"]["tools"].as_array().unwrap().len() >= 4);

    let call = req(
        3,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "stateless"}}),
    );
    let r = send(&url, &call, Some("tools/call"), Some("echo"), Some(V)).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "stateless");
    // Base64 form of the name header.
    let r = send(&url, &call, Some("tools/call"), Some("=?base64?ZWNobw==?="), Some(V)).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "stateless");
}

#[tokio::test]
async fn header_body_mismatches_are_refused() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    let call = req(1, "tools/call", json!({"name": "echo", "arguments": {"text": "x"}}));
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("method header missing", None, Some("echo"), Some(V)),
        ("method header differs", Some("tools/list"), Some("echo"), Some(V)),
        ("name header missing", Some("tools/call"), None, Some(V)),
        ("name header differs", Some("tools/call"), Some("add"), Some(V)),
        (
            "name header bad base64",
            Some("tools/call"),
            Some("=?base64?@@@?="),
            Some(V),
        ),
        ("version header missing", Some("tools/call"), Some("echo"), None),
    ];
    for (what, m, n, v) in cases {
        let r = send(&url, &call, m, n, v).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], -32020, "{what}: {}", r.body);
    }
    // Header version differs from _meta version.
    let r = send(&url, &call, Some("tools/call"), Some("echo"), Some("2025-11-25")).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn meta_and_version_rules() {
    let gw = Gateway::start(&demo_upstream("demo", "shared"));
    gw.wait_ready().await;
    let url = gw.url("/mcp/demo");
    // _meta missing the capabilities.
    let mut bad = req(1, "tools/list", json!({}));
    bad["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientCapabilities");
    let r = send(&url, &bad, Some("tools/list"), None, Some(V)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32602);
    // An unknown version.
    let mut old = req(2, "tools/list", json!({}));
    old["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let r = send(&url, &old, Some("tools/list"), None, Some("2099-01-01")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], -32022);
    assert_eq!(e["data"]["requested"], "2099-01-01");
    assert!(e["data"]["supported"].as_array().unwrap().contains(&json!(V)));
    // Unknown method: 404 with -32601.
    let r = send(&url, &req(3, "no/such", json!({})), Some("no/such"), None, Some(V)).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32601);
    // GET and DELETE have no meaning here.
    let g = client()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", V)
        .send()
        .await
        .unwrap();
    assert_eq!(g.status(), 405);
    let d = client()
        .delete(&url)
        .header("mcp-protocol-version", V)
        .send()
        .await
        .unwrap();
    assert_eq!(d.status(), 405);
    // Clients must not send responses.
    let r = send(&url, &json!({"jsonrpc":"2.0","id":1,"result":{}}), None, None, Some(V)).await;
    assert_eq!(r.status, 400);
}
