//! TLS on the gateway's listener (T1, T4): TLS 1.3 by default, 1.2 only when enabled,
//! mutual TLS, certificate rotation under load, HSTS. Certificates are generated here.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A test CA that issues certificates for localhost / 127.0.0.1.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf certificate and key (PEM) for `names`, with `cn` as its subject.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// Replaces a file atomically (as certbot and kubelet do).
    fn replace(&self, name: &str, text: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }
}

fn tls_section(f: &Files, extra: &str) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval_s = 1\n{extra}\n",
        f.path("cert.pem").display(),
        f.path("key.pem").display()
    )
}

fn client(ca: &str, tls12_only: bool, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0);
    if tls12_only {
        b = b.max_tls_version(reqwest::tls::Version::TLS_1_2);
    }
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Handshakes with rustls and returns (protocol version, ALPN, server certificate DER).
async fn handshake(addr: &str, ca: &str) -> (rustls::ProtocolVersion, Option<Vec<u8>>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let conn = tls.get_ref().1;
    (
        conn.protocol_version().unwrap(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.peer_certificates().unwrap()[0].to_vec(),
    )
}

use rustls::pki_types::pem::PemObject;

fn addr(gw: &Gateway) -> String {
    gw.base.trim_start_matches("https://").to_owned()
}

fn der_of(pem: &str) -> Vec<u8> {
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn setup(extra: &str) -> (Ca, Files, Gateway) {
    let ca = Ca::new("Palisade Test CA");
    let f = Files::new();
    let (cert, key) = ca.issue("gateway", &["localhost", "127.0.0.1"]);
    f.write("cert.pem", &cert);
    f.write("key.pem", &key);
    let gw = Gateway::start_with(&demo_upstream("demo", "shared"), &tls_section(&f, extra), &[]);
    (ca, f, gw)
}

#[tokio::test]
async fn tls13_with_alpn_and_hsts_and_tls12_refused_by_default() {
    let (ca, _f, gw) = setup("");
    assert!(gw.base.starts_with("https://"), "{}", gw.base);
    let (version, alpn, _) = handshake(&addr(&gw), &ca.pem).await;
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    let r = client(&ca.pem, false, None)
        .get(gw.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hsts = r.headers().get("strict-transport-security").unwrap().to_str().unwrap();
    assert!(hsts.starts_with("max-age="), "{hsts}");
    // An MCP session over TLS.
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = client(&ca.pem, false, None)
        .post(gw.url("/mcp/demo"))
        .header("content-type", "application/json")
        .header("accept", ACCEPT)
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("mcp-session-id"));

    let refused = client(&ca.pem, true, None).get(gw.url("/healthz")).send().await;
    assert!(refused.is_err(), "TLS 1.2 must be refused by default");
}

#[tokio::test]
async fn tls12_is_accepted_only_when_configured() {
    let (ca, _f, gw) = setup("min_version = \"1.2\"");
    let r = client(&ca.pem, true, None)
        .get(gw.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn mutual_tls_refuses_missing_and_foreign_client_certificates() {
    let clients = Ca::new("Client CA");
    let f0 = Files::new();
    let ca_path = f0.write("clients.pem", &clients.pem);
    let (_ca, _f, gw) = setup(&format!(
        "client_auth = \"required\"\nclient_ca_file = \"{}\"",
        ca_path.display()
    ));
    let server_ca = _ca.pem.clone();

    let none = client(&server_ca, false, None).get(gw.url("/healthz")).send().await;
    assert!(none.is_err(), "no client certificate must be refused");

    let other = Ca::new("Other CA");
    let (oc, ok_) = other.issue("intruder", &["intruder.example"]);
    let foreign = client(&server_ca, false, Some((&oc, &ok_)))
        .get(gw.url("/healthz"))
        .send()
        .await;
    assert!(foreign.is_err(), "a certificate from another CA must be refused");

    let (cc, ck) = clients.issue("billing-service", &["billing.internal"]);
    let r = client(&server_ca, false, Some((&cc, &ck)))
        .get(gw.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn certificates_rotate_under_load_without_failed_requests() {
    let (ca, f, gw) = setup("");
    let (_, _, first) = handshake(&addr(&gw), &ca.pem).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (ok, failed, stop, url, ca) = (
            ok.clone(),
            failed.clone(),
            stop.clone(),
            gw.url("/healthz"),
            ca.pem.clone(),
        );
        load.push(tokio::spawn(async move {
            // A fresh client per request: every request is a new TLS handshake.
            while !stop.load(Ordering::Relaxed) {
                match client(&ca, false, None).get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let (cert, key) = ca.issue("gateway-renewed", &["localhost", "127.0.0.1"]);
    // Key first, then certificate: in between, the pair does not match and must be refused.
    f.replace("key.pem", &key);
    f.replace("cert.pem", &cert);
    let want = der_of(&cert);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, now) = handshake(&addr(&gw), &ca.pem).await;
        if now == want {
            break;
        }
        assert_eq!(now, first, "an unexpected certificate was served");
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Keep the load running a little past the switch.
    let after = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < after + 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during rotation");
    assert!(ok.load(Ordering::Relaxed) > 20);
}

#[tokio::test]
async fn a_broken_renewal_keeps_the_old_certificate_serving() {
    let (ca, f, gw) = setup("");
    let (_, _, first) = handshake(&addr(&gw), &ca.pem).await;
    f.replace(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    );
    // Force a reload now and wait until the gateway has handled it: a further good
    // renewal is then picked up, which proves the watcher survived the bad one.
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status();
    for _ in 0..20 {
        let (_, _, now) = handshake(&addr(&gw), &ca.pem).await;
        assert_eq!(now, first, "the old certificate must keep serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (cert, key) = ca.issue("gateway-fixed", &["localhost", "127.0.0.1"]);
    f.replace("key.pem", &key);
    f.replace("cert.pem", &cert);
    let want = der_of(&cert);
    let deadline = Instant::now() + Duration::from_secs(20);
    while handshake(&addr(&gw), &ca.pem).await.2 != want {
        assert!(Instant::now() < deadline, "the fixed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn plain_http_on_a_public_address_needs_a_flag_and_tls_check_reports() {
    let f = Files::new();
    let ca = Ca::new("Palisade Test CA");
    let (cert, key) = ca.issue("gateway", &["localhost"]);
    f.write("cert.pem", &cert);
    f.write("key.pem", &key);
    let cfg = f.write(
        "p.toml",
        &format!("[server]\nlisten = \"0.0.0.0:0\"\n{}", demo_upstream("demo", "shared")),
    );
    let out = std::process::Command::new(palisade_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain HTTP on non-loopback"));

    let check = |cfg: &Path| {
        std::process::Command::new(palisade_bin())
            .args(["tls", "check", "--config"])
            .arg(cfg)
            .output()
            .unwrap()
    };
    let out = check(&cfg);
    assert!(!out.status.success(), "tls check must flag the refused listener");
    let cfg = f.write(
        "q.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}{}",
            tls_section(&f, ""),
            demo_upstream("demo", "shared")
        ),
    );
    let out = check(&cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("CN=gateway") && text.contains("DNS:localhost") && text.contains("spki pin"),
        "{text}"
    );
}

#[tokio::test]
async fn admin_listener_requires_client_certificates_and_exports_certificate_expiry() {
    let operators = Ca::new("Operator CA");
    let f0 = Files::new();
    let op_ca = f0.write("operators.pem", &operators.pem);
    let ca = Ca::new("Palisade Test CA");
    let f = Files::new();
    let (cert, key) = ca.issue("gateway", &["localhost", "127.0.0.1"]);
    f.write("cert.pem", &cert);
    f.write("key.pem", &key);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let admin = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\n[admin.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_auth = \"required\"\nclient_ca_file = \"{}\"\n",
        f.path("cert.pem").display(),
        f.path("key.pem").display(),
        op_ca.display()
    );
    let gw = Gateway::start_with(
        &format!("{admin}\n{}", demo_upstream("demo", "shared")),
        &tls_section(&f, ""),
        &[],
    );
    let metrics = format!("https://127.0.0.1:{port}/metrics");
    // The admin listener starts right after the MCP one; wait for it.
    let (oc, ok_) = operators.issue("prometheus", &["prometheus.internal"]);
    let operator = client(&ca.pem, false, Some((&oc, &ok_)));
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        match operator.get(&metrics).send().await {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                assert!(r.headers().contains_key("strict-transport-security"));
                break r.text().await.unwrap();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "admin listener unreachable: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let not_after = palisade_tls::cert_info(&der_of(&cert)).unwrap().not_after;
    for l in ["mcp", "admin"] {
        let line = format!("palisade_tls_certificate_not_after_seconds{{listener=\"{l}\"}} {not_after}");
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("palisade_sessions"), "{text}");
    // Without a client certificate, or with the MCP CA's: refused.
    assert!(client(&ca.pem, false, None).get(&metrics).send().await.is_err());
    let (sc, sk) = ca.issue("not-an-operator", &["x.internal"]);
    assert!(
        client(&ca.pem, false, Some((&sc, &sk)))
            .get(&metrics)
            .send()
            .await
            .is_err()
    );
    drop(gw);
}
