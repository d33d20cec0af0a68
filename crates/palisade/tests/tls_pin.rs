//! Certificate pinning towards an HTTPS upstream, over a real TLS handshake.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

fn start_fixture() -> (Fixture, u16) {
    let (fixture, url) = start_http_fixture();
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    (fixture, port)
}

/// A TLS terminator with a fresh self-signed certificate for `localhost`,
/// forwarding to the plaintext fixture. Returns its port and the certificate DER.
async fn tls_front(backend: u16) -> (u16, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(("127.0.0.1", backend)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, der)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn pinned_upstream_is_reached_and_other_certificates_are_refused() {
    let (_fixture, backend) = start_fixture();
    let (port, der) = tls_front(backend).await;
    let pin = hex(&palisade_upstream::pin::fingerprint(&der));
    let wrong = "00".repeat(32);
    let upstreams = format!(
        "[upstreams.pinned]\ntransport = \"http\"\nurl = \"https://localhost:{port}/mcp\"\npinned_cert_sha256 = [\"{pin}\"]\n\n\
         [upstreams.wrongpin]\ntransport = \"http\"\nurl = \"https://localhost:{port}/mcp\"\npinned_cert_sha256 = [\"{wrong}\"]\n\n\
         [upstreams.nopin]\ntransport = \"http\"\nurl = \"https://localhost:{port}/mcp\"\n"
    );
    let gw = Gateway::start(&upstreams);
    gw.wait_ready().await;

    let url = gw.url("/mcp/pinned");
    let sid = initialize(&url).await;
    let r = post(&url, Some(&sid), &call(1, "echo", json!({"text": "over pinned tls"}))).await;
    assert_eq!(
        r.response()["result"]["content"][0]["text"],
        "over pinned tls",
        "{}",
        r.body
    );

    for route in ["wrongpin", "nopin"] {
        let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
        let r = post_raw(
            &gw.url(&format!("/mcp/{route}")),
            init.to_string(),
            &[("content-type", "application/json"), ("accept", ACCEPT)],
        )
        .await;
        assert!(
            r.header("mcp-session-id").is_none(),
            "{route}: session opened over an untrusted certificate"
        );
        assert_eq!(r.json()["error"]["code"], -32001, "{route}: {}", r.body);
    }
}
