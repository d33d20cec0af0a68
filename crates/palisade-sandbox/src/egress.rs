//! The egress proxy for `network = "egress"`: an HTTP `CONNECT` proxy on
//! 127.0.0.1 that admits only the configured `host:port` pairs. The server's
//! Landlock domain lets it open TCP connections to this proxy's port only, and
//! its seccomp filter refuses UDP sockets, so the proxy is its one way out.
//!
//! Names resolving to loopback, private-use, link-local or unspecified
//! addresses are refused unless the rule names that address literally (DNS
//! rebinding must not reach the gateway's own services).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use palisade_config::EgressRule;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 256;

/// Starts the proxy; it runs until `stop` is cancelled. Returns its port.
pub async fn start(upstream: String, rules: Vec<EgressRule>, stop: CancellationToken) -> std::io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let rules = Arc::new(rules);
    let upstream: Arc<str> = upstream.into();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = stop.cancelled() => return,
            };
            let Ok((sock, _)) = accepted else { continue };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(sock);
                continue;
            };
            let rules = rules.clone();
            let upstream = upstream.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = handle(sock, &rules, &upstream) => {}
                    () = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
    });
    Ok(port)
}

async fn handle(mut client: TcpStream, rules: &[EgressRule], upstream: &str) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(h)) => h,
        _ => {
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            return;
        }
    };
    let target = match parse_connect(&head) {
        Ok(t) => t,
        Err(status) => {
            let _ = client.write_all(status.as_bytes()).await;
            return;
        }
    };
    let (host, port) = target;
    if !rules.iter().any(|r| r.admits(&host, port)) {
        deny(upstream, &host, port, "not in the egress list");
        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        return;
    }
    let literal = host.parse::<IpAddr>().ok();
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.filter(|a| public(a.ip())).collect(),
            Err(_) => Vec::new(),
        },
    };
    if addrs.is_empty() {
        deny(upstream, &host, port, "no public address");
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    }
    let mut remote = None;
    for a in addrs {
        if let Ok(Ok(s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            remote = Some(s);
            break;
        }
    }
    let Some(mut remote) = remote else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    tracing::debug!(upstream, host = %host, port, "egress admitted");
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut remote).await;
}

fn deny(upstream: &str, host: &str, port: u16, why: &str) {
    tracing::warn!(
        target: "palisade::audit",
        event = "sandbox.egress_denied",
        upstream,
        host,
        port,
        reason = why,
        "egress refused"
    );
}

async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// `CONNECT host:port HTTP/1.x` → lower-cased host and port; else an HTTP error line.
fn parse_connect(head: &[u8]) -> Result<(String, u16), &'static str> {
    const BAD: &str = "HTTP/1.1 400 Bad Request\r\n\r\n";
    let line_end = head.windows(2).position(|w| w == b"\r\n").ok_or(BAD)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| BAD)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BAD);
    }
    if method != "CONNECT" {
        return Err("HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n\r\n");
    }
    let rule = palisade_config::parse_egress(target).map_err(|_| BAD)?;
    if rule.subdomains {
        return Err(BAD);
    }
    Ok((rule.host, rule.port))
}

fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            !(v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            !(v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some_and(|m| !public(IpAddr::V4(m))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(
            parse_connect(b"CONNECT Api.Example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            ("api.example.com".into(), 443)
        );
        assert!(
            parse_connect(b"GET http://x/ HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .contains("405")
        );
        for bad in [
            &b"CONNECT x HTTP/1.1\r\n\r\n"[..],
            b"CONNECT x:1 HTTP/2\r\n\r\n",
            b"CONNECT *.x:1 HTTP/1.1\r\n\r\n",
            b"CONNECT  x:1 HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"no line end",
        ] {
            assert!(parse_connect(bad).unwrap_err().contains("400"), "{bad:?}");
        }
    }

    #[test]
    fn private_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!public(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "2606:4700::1111"] {
            assert!(public(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn refuses_what_is_not_listed_and_loopback_names() {
        let stop = CancellationToken::new();
        let rules = vec![palisade_config::parse_egress("localhost:80").unwrap()];
        let port = start("t".into(), rules, stop.clone()).await.unwrap();
        for (req, want) in [
            ("CONNECT example.com:443 HTTP/1.1\r\n\r\n", "403"),
            // Listed, but resolves to loopback.
            ("CONNECT localhost:80 HTTP/1.1\r\n\r\n", "502"),
            ("GET / HTTP/1.1\r\n\r\n", "405"),
        ] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.contains(want), "{req:?} -> {out:?}");
        }
        // An oversized head is refused.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = s.write_all(&vec![b'A'; 20_000]).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        // Either the 400 arrives or the unread excess resets the connection first.
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out:?}");
        stop.cancel();
    }
}
