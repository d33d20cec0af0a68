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
    let port = tls_front_with(backend, der.clone(), cert.signing_key.serialize_der(), None).await;
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

/// A TLS terminator presenting `cert`/`key` (DER) and, with `client_ca`, requiring a
/// client certificate from that CA; forwards to the plaintext fixture.
async fn tls_front_with(backend: u16, cert: Vec<u8>, key: Vec<u8>, client_ca: Option<Vec<u8>>) -> u16 {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.into()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(vec![cert.into()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()))
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
    port
}

async fn opens(gw: &Gateway, route: &str) -> bool {
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = post_raw(
        &gw.url(&format!("/mcp/{route}")),
        init.to_string(),
        &[("content-type", "application/json"), ("accept", ACCEPT)],
    )
    .await;
    r.header("mcp-session-id").is_some()
}

#[tokio::test]
async fn spki_pins_and_client_certificates_towards_upstreams() {
    let (_fixture, backend) = start_fixture();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };

    // Upstream A: a self-signed certificate; its key is what gets pinned.
    let a = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let a_pin = hex(&palisade_tls::spki_sha256(a.cert.der()).unwrap());
    let port_a = tls_front_with(backend, a.cert.der().to_vec(), a.signing_key.serialize_der(), None).await;

    // Upstream B: requires a client certificate from a client CA.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let gw_key = rcgen::KeyPair::generate().unwrap();
    let gw_cert = rcgen::CertificateParams::new(vec!["palisade.internal".to_owned()])
        .unwrap()
        .signed_by(&gw_key, &issuer)
        .unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let b_pin = hex(&palisade_tls::spki_sha256(b.cert.der()).unwrap());
    let port_b = tls_front_with(
        backend,
        b.cert.der().to_vec(),
        b.signing_key.serialize_der(),
        Some(ca_cert.der().to_vec()),
    )
    .await;
    let (cert_file, key_file) = (
        write("gw.pem", &gw_cert.pem()),
        write("gw.key", &gw_key.serialize_pem()),
    );

    let wrong = "ab".repeat(32);
    let upstreams = format!(
        "[upstreams.spki]\ntransport = \"http\"\nurl = \"https://localhost:{port_a}/mcp\"\npinned_spki_sha256 = [\"{a_pin}\"]\n\n\
         [upstreams.spki-rotating]\ntransport = \"http\"\nurl = \"https://localhost:{port_a}/mcp\"\npinned_spki_sha256 = [\"{wrong}\", \"{a_pin}\"]\n\n\
         [upstreams.spki-wrong]\ntransport = \"http\"\nurl = \"https://localhost:{port_a}/mcp\"\npinned_spki_sha256 = [\"{wrong}\"]\n\n\
         [upstreams.mtls]\ntransport = \"http\"\nurl = \"https://localhost:{port_b}/mcp\"\npinned_spki_sha256 = [\"{b_pin}\"]\nclient_cert_file = \"{cert_file}\"\nclient_key_file = \"{key_file}\"\n\n\
         [upstreams.mtls-nocert]\ntransport = \"http\"\nurl = \"https://localhost:{port_b}/mcp\"\npinned_spki_sha256 = [\"{b_pin}\"]\n"
    );
    let gw = Gateway::start(&upstreams);
    gw.wait_ready().await;
    assert!(opens(&gw, "spki").await, "the pinned key must be accepted");
    assert!(
        opens(&gw, "spki-rotating").await,
        "any of several pins is accepted (rotation)"
    );
    assert!(
        !opens(&gw, "spki-wrong").await,
        "a key that is not pinned must be refused"
    );
    assert!(
        opens(&gw, "mtls").await,
        "the gateway's client certificate must be presented"
    );
    assert!(
        !opens(&gw, "mtls-nocert").await,
        "without a client certificate the upstream refuses"
    );

    let url = gw.url("/mcp/mtls");
    let sid = initialize(&url).await;
    let r = post(&url, Some(&sid), &call(2, "echo", json!({"text": "mutual"}))).await;
    assert_eq!(r.response()["result"]["content"][0]["text"], "mutual", "{}", r.body);
}
