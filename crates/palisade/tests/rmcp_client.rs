//! The `rmcp` crate's client talking to Palisade in front of the rmcp-based
//! test server (over stdio and over Streamable HTTP) and, where installed,
//! server-everything over stdio.
// Sampling is deprecated in 2026-07-28 but still part of the session revisions tested here.
#![allow(deprecated)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, ErrorData, GetPromptRequestParams, Implementation, InitializeRequestParams,
    ProgressNotificationParam, ProtocolVersion, ReadResourceRequestParams, Request,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RoleClient, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct TestClient {
    progress: Arc<Mutex<Vec<f64>>>,
    sampled: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for TestClient {
    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let v = serde_json::to_value(&params).unwrap_or_default();
        let prompt = v["messages"][0]["content"]["text"].as_str().unwrap_or("").to_owned();
        self.sampled.lock().unwrap().push(prompt.clone());
        Ok(serde_json::from_value(json!({
            "model": "rmcp-test-model",
            "role": "assistant",
            "content": { "type": "text", "text": format!("sampled:{prompt}") }
        }))
        .expect("CreateMessageResult"))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        Ok(serde_json::from_value(json!({
            "action": "accept",
            "content": { "username": "rmcp-user", "email": "rmcp@example.com" }
        }))
        .expect("ElicitResult"))
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _ctx: NotificationContext<RoleClient>) {
        self.progress.lock().unwrap().push(params.progress);
    }

    fn get_info(&self) -> InitializeRequestParams {
        let caps: ClientCapabilities =
            serde_json::from_value(json!({ "sampling": {}, "elicitation": { "form": {} } })).expect("caps");
        InitializeRequestParams::new(caps, Implementation::new("palisade-rmcp-test", "1"))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }
}

fn everything_entry() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    p.exists().then_some(p)
}

fn upstreams(fixture_url: &str) -> String {
    let mut s = format!(
        "[upstreams.fixture-stdio]\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"stdio\"]\nmode = \"per_session\"\n\n\
         [upstreams.fixture-http]\ntransport = \"http\"\nurl = \"{fixture_url}\"\n\n",
        testserver_bin().display()
    );
    if let Some(entry) = everything_entry() {
        s.push_str(&format!(
            "[upstreams.everything-stdio]\ntransport = \"stdio\"\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\nmode = \"per_session\"\nenv_passthrough = [\"PATH\", \"HOME\"]\n",
            entry.display()
        ));
    }
    s
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    let v = serde_json::to_value(result).unwrap_or_default();
    v["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

async fn exercise_fixture(url: &str) {
    let handler = TestClient::default();
    let client = handler
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("rmcp client could not connect to {url}: {e}"));
    let info = client.peer_info().expect("server info");
    assert_eq!(info.protocol_version, ProtocolVersion::V_2025_11_25, "{url}");

    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(names.contains(&"echo") && names.contains(&"test_sampling"), "{names:?}");

    let r = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({"text": "through palisade"}))))
        .await
        .expect("echo");
    assert_eq!(text_of(&r), "through palisade");

    let r = client
        .read_resource(ReadResourceRequestParams::new("test://static-text"))
        .await
        .expect("resources/read");
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["contents"][0]["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");

    let p = client
        .get_prompt(GetPromptRequestParams::new("test_simple_prompt"))
        .await
        .expect("prompts/get");
    assert!(!p.messages.is_empty());

    // Sampling: the server asks this client, through the gateway, mid-call.
    let r = client
        .call_tool(CallToolRequestParams::new("test_sampling").with_arguments(args(json!({"prompt": "ping-sample"}))))
        .await
        .expect("test_sampling");
    assert!(text_of(&r).contains("sampled:ping-sample"), "{}", text_of(&r));
    assert_eq!(handler.sampled.lock().unwrap().as_slice(), ["ping-sample"]);

    // Elicitation.
    let r = client
        .call_tool(CallToolRequestParams::new("test_elicitation").with_arguments(args(json!({"message": "who?"}))))
        .await
        .expect("test_elicitation");
    assert!(text_of(&r).contains("rmcp-user"), "{}", text_of(&r));

    // Progress on a long call.
    let r = client
        .call_tool(CallToolRequestParams::new("slow").with_arguments(args(json!({"ms": 400}))))
        .await
        .expect("slow");
    assert_eq!(text_of(&r), "slept 400 ms");
    assert!(!handler.progress.lock().unwrap().is_empty(), "no progress relayed");

    // Cancellation: a call that times out on the client is cancelled through the gateway,
    // and the session stays usable.
    let req = ClientRequest::CallToolRequest(Request::new(
        CallToolRequestParams::new("slow").with_arguments(args(json!({"ms": 20000}))),
    ));
    let options = PeerRequestOptions::with_timeout(Duration::from_millis(500));
    let handle = client
        .peer()
        .send_cancellable_request(req, options)
        .await
        .expect("send");
    let err = handle.await_response().await.expect_err("should time out");
    assert!(matches!(err, ServiceError::Timeout { .. }), "{err}");
    let r = client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args(json!({"a": 20, "b": 22}))))
        .await
        .expect("add after cancel");
    assert_eq!(text_of(&r), "42");

    client.cancel().await.expect("close");
}

#[tokio::test]
async fn rmcp_client_through_gateway_to_rmcp_server_over_stdio_and_http() {
    let (_fixture, fixture_url) = start_http_fixture();
    let gw = Gateway::start(&upstreams(&fixture_url));
    gw.wait_ready().await;
    for route in ["fixture-stdio", "fixture-http"] {
        let url = gw.url(&format!("/mcp/{route}"));
        tokio::time::timeout(Duration::from_secs(60), exercise_fixture(&url))
            .await
            .unwrap_or_else(|_| panic!("{route}: timed out"));
    }
}

#[tokio::test]
async fn upstream_that_closes_its_sse_stream_mid_call_is_resumed() {
    // The fixture's test_reconnection closes the POST stream after the priming
    // event (2025-11-25 polling); the gateway must resume with Last-Event-ID.
    let (_fixture, fixture_url) = start_http_fixture();
    let gw = Gateway::start(&upstreams(&fixture_url));
    gw.wait_ready().await;
    let client = TestClient::default()
        .serve(StreamableHttpClientTransport::from_uri(gw.url("/mcp/fixture-http")))
        .await
        .expect("connect");
    let r = client
        .call_tool(CallToolRequestParams::new("test_reconnection"))
        .await
        .expect("test_reconnection through the gateway");
    assert_eq!(text_of(&r), "Reconnection test completed successfully");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn rmcp_client_through_gateway_to_server_everything_over_stdio() {
    if everything_entry().is_none() {
        eprintln!("skipped: run `npm ci` in tests/node to install server-everything");
        return;
    }
    let (_fixture, fixture_url) = start_http_fixture();
    let gw = Gateway::start(&upstreams(&fixture_url));
    gw.wait_ready().await;
    let handler = TestClient::default();
    let client = handler
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(gw.url("/mcp/everything-stdio")))
        .await
        .expect("connect");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(
        tools.iter().any(|t| t.name == "trigger-sampling-request"),
        "sampling tool hidden?"
    );
    let r = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({"message": "hi"}))))
        .await
        .expect("echo");
    assert_eq!(text_of(&r), "Echo: hi");
    let r = client
        .call_tool(
            CallToolRequestParams::new("trigger-sampling-request")
                .with_arguments(args(json!({"prompt": "from-everything", "maxTokens": 20}))),
        )
        .await
        .expect("sampling");
    let v = serde_json::to_value(&r).unwrap().to_string();
    assert!(v.contains("sampled:"), "{v}");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn rmcp_client_in_stateless_mode_discovers_and_calls() {
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    let (_fixture, fixture_url) = start_http_fixture();
    let gw = Gateway::start(&format!(
        "{}\n[upstreams.demo]\ntransport = \"stdio\"\ncommand = \"{}\"\nargs = [\"demo-server\"]\n",
        upstreams(&fixture_url),
        palisade_bin()
    ));
    gw.wait_ready().await;
    let client = ()
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(gw.url("/mcp/demo")),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("stateless connect");
    let info = client.peer_info().expect("discover result");
    assert_eq!(info.protocol_version, ProtocolVersion::V_2026_07_28);
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "word_count"));
    let r = client
        .call_tool(CallToolRequestParams::new("word_count").with_arguments(args(json!({"text": "one two three"}))))
        .await
        .expect("call");
    assert_eq!(text_of(&r), "3");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn client_credentials_never_reach_the_upstream_only_the_gateways_own() {
    // M5: the client's Authorization (and any other header) is not forwarded;
    // the upstream sees the credential configured for it, from the environment.
    let (_fixture, fixture_url) = start_http_fixture();
    let up = format!(
        "[upstreams.remote]\ntransport = \"http\"\nurl = \"{fixture_url}\"\nheaders = {{ \"X-Upstream-Key\" = {{ env = \"PALISADE_TEST_UPSTREAM_KEY\" }} }}\n"
    );
    let gw = Gateway::start_with(&up, "", &[("PALISADE_TEST_UPSTREAM_KEY", "gateway-own-credential")]);
    gw.wait_ready().await;
    let url = gw.url("/mcp/remote");
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let hostile = [
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("authorization", "Bearer client-token-must-not-leak"),
        ("cookie", "session=client-cookie-must-not-leak"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-upstream-key", "client-forged-key"),
    ];
    let r = post_raw(&url, init.to_string(), &hostile).await;
    let sid = r.header("mcp-session-id").expect("session");
    let mut h = hostile.to_vec();
    h.push(("mcp-session-id", &sid));
    h.push(("mcp-protocol-version", "2025-11-25"));
    let r = post_raw(&url, call(1, "request_headers", json!({})).to_string(), &h).await;
    let text = r.response()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen: Value = serde_json::from_str(&text).unwrap();
    assert!(
        !text.contains("must-not-leak"),
        "client secrets reached the upstream: {text}"
    );
    assert!(
        seen.get("authorization").is_none() && seen.get("cookie").is_none(),
        "{text}"
    );
    assert!(seen.get("x-forwarded-for").is_none(), "{text}");
    assert_eq!(seen["x-upstream-key"], "gateway-own-credential", "{text}");
    assert_ne!(
        seen["mcp-session-id"].as_str(),
        Some(sid.as_str()),
        "client session id forwarded: {text}"
    );
}
