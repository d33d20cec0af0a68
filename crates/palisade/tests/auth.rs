//! Authentication wiring (M1, M2, M4, Z4, Z5) with tokens from the development issuer.
//! Token-format attacks with independently minted tokens live in `tests/auth` (Python).

mod common;

use common::*;
use serde_json::{Value, json};

const PUBLIC: &str = "http://gw.test";

/// A gateway requiring tokens from a development issuer whose key lives in `key_dir`.
fn start(key_dir: &std::path::Path, extra_upstream: &str) -> Gateway {
    let auth = format!(
        "[auth]\nmode = \"oauth\"\npublic_url = \"{PUBLIC}\"\n[auth.dev_issuer]\nkey_file = \"{}\"\n",
        key_dir.join("dev.pem").display()
    );
    Gateway::start_with(
        &format!("{}{extra_upstream}", demo_upstream("demo", "shared")),
        &auth,
        &[],
    )
}

async fn open(url: &str, token: &str) -> String {
    let r = send(url, Some(token), None, &init_msg()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sid = r.header("mcp-session-id").expect("session id");
    let n = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(send(url, Some(token), Some(&sid), &n).await.status, 202);
    sid
}

fn challenge(r: &Resp) -> String {
    r.header("www-authenticate").unwrap_or_default()
}

#[tokio::test]
async fn requests_without_a_valid_token_get_a_challenge() {
    let keys = tempfile::tempdir().unwrap();
    let gw = start(keys.path(), "");
    let url = gw.url("/mcp/demo");
    let meta = format!("resource_metadata=\"{PUBLIC}/.well-known/oauth-protected-resource/mcp/demo\"");

    let r = send(&url, None, None, &init_msg()).await;
    assert_eq!(r.status, 401);
    assert!(challenge(&r).starts_with("Bearer "), "{}", challenge(&r));
    assert!(challenge(&r).contains(&meta), "{}", challenge(&r));
    assert!(
        !challenge(&r).contains("error="),
        "a missing token is not an error: {}",
        challenge(&r)
    );

    for bad in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "x.y.z.w.v"] {
        let r = send(&url, Some(bad), None, &init_msg()).await;
        assert_eq!(r.status, 401, "{bad}");
        assert!(
            challenge(&r).contains("error=\"invalid_token\""),
            "{bad}: {}",
            challenge(&r)
        );
    }

    // Tokens in the query string are refused even when the header is fine.
    let good = mint(&gw, &["--sub", "alice"]);
    let r = send(&format!("{url}?access_token={good}"), Some(&good), None, &init_msg()).await;
    assert_eq!(r.status, 400);
    assert!(challenge(&r).contains("error=\"invalid_request\""));

    // A token for another endpoint of the same gateway is refused here (M1).
    let other = mint(&gw, &["--sub", "alice", "--endpoint", "other"]);
    let r = send(&url, Some(&other), None, &init_msg()).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Every method of the endpoint is protected.
    let c = client();
    for req in [c.get(&url), c.delete(&url)] {
        let r = req.header("accept", "text/event-stream").send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
}

#[tokio::test]
async fn protected_resource_metadata_names_the_issuer() {
    let keys = tempfile::tempdir().unwrap();
    let gw = start(keys.path(), "");
    let doc: Value = client()
        .get(gw.url("/.well-known/oauth-protected-resource/mcp/demo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["resource"], format!("{PUBLIC}/mcp/demo"));
    assert_eq!(doc["authorization_servers"], json!([format!("{PUBLIC}/dev-issuer")]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    let missing = client()
        .get(gw.url("/.well-known/oauth-protected-resource/mcp/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let jwks: Value = client()
        .get(gw.url("/dev-issuer/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "the private key must never be served"
    );
}

#[tokio::test]
async fn a_session_is_bound_to_the_user_who_opened_it() {
    let keys = tempfile::tempdir().unwrap();
    let gw = start(keys.path(), "");
    let url = gw.url("/mcp/demo");
    let alice = mint(&gw, &["--sub", "alice"]);
    let bob = mint(&gw, &["--sub", "bob"]);
    let sid = open(&url, &alice).await;
    let call = call(1, "echo", json!({"text": "hi"}));

    assert_eq!(send(&url, Some(&alice), Some(&sid), &call).await.status, 200);
    // Bob's valid token with Alice's session: the session does not exist for him.
    assert_eq!(send(&url, Some(&bob), Some(&sid), &call).await.status, 404);
    // The session id alone is not a credential (M2).
    assert_eq!(send(&url, None, Some(&sid), &call).await.status, 401);
    // Alice is unaffected.
    assert_eq!(send(&url, Some(&alice), Some(&sid), &call).await.status, 200);
    // A fresh token for Alice (e.g. after refresh) keeps the session.
    let alice2 = mint(&gw, &["--sub", "alice", "--ttl", "600"]);
    assert_eq!(send(&url, Some(&alice2), Some(&sid), &call).await.status, 200);
}

#[tokio::test]
async fn step_up_demands_scope_or_mfa_per_tool() {
    let keys = tempfile::tempdir().unwrap();
    let step = "[upstreams.demo.auth.step_up.add]\nscopes = [\"math:write\"]\n[upstreams.demo.auth.step_up.word_count]\namr = [\"mfa\"]\nacr = [\"urn:palisade:mfa\"]\n";
    let gw = start(keys.path(), step);
    let url = gw.url("/mcp/demo");
    let plain = mint(&gw, &["--sub", "alice"]);
    let sid = open(&url, &plain).await;

    let echo = call(1, "echo", json!({"text": "x"}));
    assert_eq!(send(&url, Some(&plain), Some(&sid), &echo).await.status, 200);

    let add = call(2, "add", json!({"a": 1, "b": 2}));
    let r = send(&url, Some(&plain), Some(&sid), &add).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        challenge(&r).contains("error=\"insufficient_scope\""),
        "{}",
        challenge(&r)
    );
    assert!(challenge(&r).contains("scope=\"math:write\""), "{}", challenge(&r));
    let scoped = mint(&gw, &["--sub", "alice", "--scope", "math:write"]);
    let r = send(&url, Some(&scoped), Some(&sid), &add).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains('3'), "{}", r.body);

    // Duplicate `name` keys: serde would see one, upstream parsers the other. Refused,
    // never forwarded (the upstream would otherwise run `add` unchecked).
    for dup in [
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","name":"add","arguments":{"a":1,"b":2,"text":"x"}}}"#,
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","n\u0061me":"add","arguments":{"a":1,"b":2,"text":"x"}}}"#,
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":["add"],"arguments":{}}}"#,
    ] {
        let bearer = format!("Bearer {plain}");
        let r = post_raw(
            &url,
            dup.to_owned(),
            &[
                ("content-type", "application/json"),
                ("accept", ACCEPT),
                ("mcp-protocol-version", "2025-11-25"),
                ("authorization", &bearer),
                ("mcp-session-id", &sid),
            ],
        )
        .await;
        // Refused by the gateway itself (the demo server would also refuse duplicates,
        // but a Python or JS upstream keeps the last key and runs `add`).
        assert!(
            r.body.contains("-32602") && r.body.contains("no duplicate keys"),
            "{dup}: {}",
            r.body
        );
        assert!(!r.body.contains("\"3\""), "{dup}: the upstream ran add: {}", r.body);
    }

    // amr and acr both configured: the acr is missing from dev tokens, so even `mfa` is refused.
    let wc = call(3, "word_count", json!({"text": "a b"}));
    let r = send(&url, Some(&plain), Some(&sid), &wc).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        challenge(&r).contains("error=\"insufficient_user_authentication\""),
        "{}",
        challenge(&r)
    );
    assert!(
        challenge(&r).contains("acr_values=\"urn:palisade:mfa\""),
        "{}",
        challenge(&r)
    );
}

#[tokio::test]
async fn mfa_step_up_passes_with_the_right_amr() {
    let keys = tempfile::tempdir().unwrap();
    let gw = start(
        keys.path(),
        "[upstreams.demo.auth.step_up.word_count]\namr = [\"mfa\"]\n",
    );
    let url = gw.url("/mcp/demo");
    let plain = mint(&gw, &["--sub", "alice"]);
    let mfa = mint(&gw, &["--sub", "alice", "--amr", "mfa"]);
    let sid = open(&url, &plain).await;
    let wc = call(3, "word_count", json!({"text": "a b"}));
    assert_eq!(send(&url, Some(&plain), Some(&sid), &wc).await.status, 401);
    let r = send(&url, Some(&mfa), Some(&sid), &wc).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn endpoint_scopes_are_required() {
    let keys = tempfile::tempdir().unwrap();
    let gw = start(keys.path(), "[upstreams.demo.auth]\nrequired_scopes = [\"demo\"]\n");
    let url = gw.url("/mcp/demo");
    let r = send(&url, None, None, &init_msg()).await;
    assert!(challenge(&r).contains("scope=\"demo\""), "{}", challenge(&r));
    let without = mint(&gw, &["--sub", "alice", "--scope", "other"]);
    let r = send(&url, Some(&without), None, &init_msg()).await;
    assert_eq!(r.status, 403);
    assert!(challenge(&r).contains("error=\"insufficient_scope\""));
    let with = mint(&gw, &["--sub", "alice", "--scope", "other demo"]);
    assert_eq!(send(&url, Some(&with), None, &init_msg()).await.status, 200);
    // The aggregated endpoint reaches the same upstream, so it demands the same scope.
    let agg = gw.url("/mcp");
    let r = send(&agg, Some(&without), None, &init_msg()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(challenge(&r).contains("scope=\"demo\""), "{}", challenge(&r));
    assert_eq!(send(&agg, Some(&with), None, &init_msg()).await.status, 200);
}

#[test]
fn anonymous_or_development_issuer_on_a_public_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", "auth.mode = \"none\" on non-loopback"),
        (
            "[auth]\nmode = \"oauth\"\n[auth.dev_issuer]\nkey_file = \"KEY\"\n",
            "development only",
        ),
    ];
    for (auth, want) in cases {
        let auth = auth.replace("KEY", &dir.path().join("k.pem").display().to_string());
        let cfg = format!(
            "[server]\nlisten = \"0.0.0.0:0\"\nallow_plain_http_non_loopback = true\n{auth}\n{}",
            demo_upstream("demo", "shared")
        );
        let path = dir.path().join("p.toml");
        std::fs::write(&path, cfg).unwrap();
        let out = std::process::Command::new(palisade_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
}

/// A minimal OAuth token endpoint: answers every POST with a token derived from the
/// grant (`cc-token`, or `xchg-<n>` for the n-th token exchange), and records bodies.
struct TokenEndpoint {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn token_endpoint() -> TokenEndpoint {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers, then Content-Length bytes of body.
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                let token = if body.contains("token-exchange") {
                    let n = seen
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|b| b.contains("token-exchange"))
                        .count();
                    format!("xchg-{n}")
                } else {
                    "cc-token".to_owned()
                };
                seen.lock().unwrap().push(body);
                let json = format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    TokenEndpoint { url, bodies }
}

async fn upstream_headers(url: &str, token: &str, sid: &str) -> Value {
    let r = send(url, Some(token), Some(sid), &call(7, "request_headers", json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body: Value = serde_json::from_str(&r.body).expect("JSON response");
    let text = body["result"]["content"][0]["text"].as_str().expect("text content");
    serde_json::from_str(text).expect("headers object")
}

#[tokio::test]
async fn upstreams_get_the_gateways_own_token_never_the_clients() {
    let keys = tempfile::tempdir().unwrap();
    let (_fixture, fixture_url) = start_http_fixture();
    let idp = token_endpoint().await;
    let upstreams = format!(
        "[upstreams.cc]\ntransport = \"http\"\nurl = \"{fixture_url}\"\n\
         [upstreams.cc.oauth]\ngrant = \"client_credentials\"\ntoken_endpoint = \"{0}\"\nclient_id = \"gw\"\nclient_secret = {{ env = \"TEST_CLIENT_SECRET\" }}\nscope = \"upstream\"\n\
         [upstreams.xchg]\ntransport = \"http\"\nurl = \"{fixture_url}\"\n\
         [upstreams.xchg.oauth]\ngrant = \"token_exchange\"\ntoken_endpoint = \"{0}\"\nclient_id = \"gw\"\nclient_secret = {{ env = \"TEST_CLIENT_SECRET\" }}\naudience = \"https://upstream.example\"\n",
        idp.url
    );
    let auth = format!(
        "[auth]\nmode = \"oauth\"\npublic_url = \"{PUBLIC}\"\n[auth.dev_issuer]\nkey_file = \"{}\"\n",
        keys.path().join("dev.pem").display()
    );
    let gw = Gateway::start_with(&upstreams, &auth, &[("TEST_CLIENT_SECRET", "s3cret")]);
    let alice = mint(&gw, &["--sub", "alice"]);

    let cc = gw.url("/mcp/cc");
    let sid = open(&cc, &alice).await;
    let seen = upstream_headers(&cc, &alice, &sid).await;
    assert_eq!(seen["authorization"], "Bearer cc-token", "{seen}");
    assert!(
        !seen.to_string().contains(&alice),
        "the client's token reached the upstream: {seen}"
    );

    let xchg = gw.url("/mcp/xchg");
    let sid = open(&xchg, &alice).await;
    let seen = upstream_headers(&xchg, &alice, &sid).await;
    let auth_header = seen["authorization"].as_str().unwrap_or_default();
    assert!(auth_header.starts_with("Bearer xchg-"), "{seen}");
    assert!(
        !seen.to_string().contains(&alice),
        "the client's token reached the upstream: {seen}"
    );

    // The authorization server saw the grant requests; the exchange carried Alice's token
    // as the subject, and the client secret went in the Basic header, not the body.
    let bodies = idp.bodies.lock().unwrap().clone();
    assert!(
        bodies.iter().any(|b| b.contains("grant_type=client_credentials")),
        "{bodies:?}"
    );
    let exchange = bodies
        .iter()
        .find(|b| b.contains("token-exchange"))
        .expect("an exchange request");
    assert!(exchange.contains(&format!("subject_token={alice}")), "{exchange}");
    assert!(
        exchange.contains("audience=https%3A%2F%2Fupstream.example"),
        "{exchange}"
    );
    assert!(bodies.iter().all(|b| !b.contains("s3cret")), "{bodies:?}");
}

#[tokio::test]
async fn a_relative_dev_issuer_key_lives_beside_the_config_for_serve_and_mint() {
    let cfg = format!(
        "[auth]\nmode = \"oauth\"\npublic_url = \"{PUBLIC}\"\n[auth.dev_issuer]\nkey_file = \"dev-issuer.pem\"\n"
    );
    let gw = Gateway::start_with(&demo_upstream("demo", "shared"), &cfg, &[]);
    gw.wait_ready().await;
    // Minted from another working directory: the same key must be found.
    let elsewhere = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(palisade_bin())
        .current_dir(elsewhere.path())
        .args(["token", "mint", "--config"])
        .arg(gw.config_path())
        .args(["--sub", "alice"])
        .output()
        .expect("mint");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
    assert!(
        gw.dir().join("dev-issuer.pem").exists(),
        "the key is beside the configuration"
    );
    assert!(
        !elsewhere.path().join("dev-issuer.pem").exists(),
        "no key in the working directory"
    );
    let r = send(&gw.url("/mcp/demo"), Some(&token), None, &init_msg()).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
