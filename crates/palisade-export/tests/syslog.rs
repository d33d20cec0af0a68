//! Syslog over real local sockets.

mod common;

use std::time::Duration;

use common::{cfg, event, no_secrets, rec, sample, wait_until};
use palisade_config::{SinkKind, SyslogFormat, SyslogProtocol};
use palisade_export::Sinks;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

fn syslog(address: String, protocol: SyslogProtocol, format: SyslogFormat) -> SinkKind {
    SinkKind::Syslog {
        address,
        protocol,
        format,
        facility: 13,
        app_name: "palisade".into(),
    }
}

/// Reads one RFC 6587 octet-counted frame (`LEN SP MSG`); `None` at end of stream.
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(sp) = buf.iter().position(|&b| b == b' ') {
            let len: usize = std::str::from_utf8(&buf[..sp]).ok()?.parse().ok()?;
            if buf.len() >= sp + 1 + len {
                let msg = buf[sp + 1..sp + 1 + len].to_vec();
                buf.drain(..sp + 1 + len);
                return String::from_utf8(msg).ok();
            }
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_carry_cef() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    let sinks = Sinks::start(
        &[cfg("udp", syslog(addr, SyslogProtocol::Udp, SyslogFormat::Cef))],
        &no_secrets,
    )
    .unwrap();
    for seq in 1..=3 {
        sinks.offer(&event("tool.call", seq));
    }
    let mut buf = vec![0u8; 65_536];
    for seq in 1..=3 {
        let n = timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let d = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(d.starts_with("<110>1 2026-11-22T10:00:00.123456Z "), "{d}");
        assert!(
            d.contains(&format!(" palisade - tool.call [palisade@32473 seq=\"{seq}\" mac=\"")),
            "{d}"
        );
        assert!(d.contains("] CEF:0|Palisade|palisade|"), "{d}");
        assert!(d.contains(&format!("externalId={seq} ")), "{d}");
    }
    assert!(
        wait_until(5, || sinks.counts("udp") == Some((3, 0, 0))).await,
        "{:?}",
        sinks.counts("udp")
    );
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagram_is_truncated_on_a_char_boundary() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    let sinks = Sinks::start(
        &[cfg("udp", syslog(addr, SyslogProtocol::Udp, SyslogFormat::Json))],
        &no_secrets,
    )
    .unwrap();
    for pad in 0..3 {
        let mut v = sample();
        // 3-byte characters, shifted by `pad` so the cut falls at each offset within one.
        v["msg"] = json!(format!("{}{}", "x".repeat(pad), "€".repeat(10_000)));
        sinks.offer(&rec(v));
    }
    let mut buf = vec![0u8; 65_536];
    let mut lens = Vec::new();
    for _ in 0..3 {
        let n = timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n <= 8192, "{n}");
        assert!(n > 8192 - 3, "{n}");
        let d = std::str::from_utf8(&buf[..n]).expect("a datagram cut inside a character");
        assert!(d.ends_with('€') || d.ends_with('x'), "{}", &d[d.len() - 10..]);
        lens.push(n);
    }
    // At least one of the three had to be cut short of 8192 to stay on a boundary.
    assert!(lens.iter().any(|&n| n < 8192), "{lens:?}");
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_octet_counted_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sinks = Sinks::start(
        &[cfg("tcp", syslog(addr, SyslogProtocol::Tcp, SyslogFormat::Json))],
        &no_secrets,
    )
    .unwrap();
    let records: Vec<_> = (1..=5).map(|seq| event("auth.failure", seq)).collect();
    for r in &records {
        sinks.offer(r);
    }
    let (mut conn, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = Vec::new();
    for r in &records {
        let frame = timeout(Duration::from_secs(10), read_frame(&mut conn, &mut buf))
            .await
            .unwrap()
            .expect("a frame");
        assert!(frame.starts_with("<110>1 "), "{frame}");
        assert!(frame.contains(" palisade - auth.failure [palisade@32473 "), "{frame}");
        // JSON format: MSG is the exact chain line.
        assert!(frame.ends_with(&format!("] {}", r.line)), "{frame}");
    }
    assert!(
        wait_until(5, || sinks.counts("tcp") == Some((5, 0, 0))).await,
        "{:?}",
        sinks.counts("tcp")
    );
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reconnects_after_the_collector_drops_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sinks = Sinks::start(
        &[cfg("tcp", syslog(addr, SyslogProtocol::Tcp, SyslogFormat::Cef))],
        &no_secrets,
    )
    .unwrap();

    sinks.offer(&event("tool.call", 1));
    let (mut first, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = Vec::new();
    let frame = timeout(Duration::from_secs(10), read_frame(&mut first, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(frame.contains("externalId=1 "), "{frame}");
    assert!(wait_until(5, || sinks.counts("tcp").is_some_and(|c| c.0 == 1)).await);
    drop(first);
    // Let the close reach the sink's socket before the next record.
    tokio::time::sleep(Duration::from_millis(50)).await;

    sinks.offer(&event("tool.call", 2));
    let (mut second, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the sink reconnects")
        .unwrap();
    let mut buf = Vec::new();
    let frame = timeout(Duration::from_secs(10), read_frame(&mut second, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(frame.contains("externalId=2 "), "{frame}");
    assert!(
        wait_until(5, || sinks.counts("tcp").is_some_and(|c| c.0 == 2)).await,
        "{:?}",
        sinks.counts("tcp")
    );
    assert_eq!(sinks.counts("tcp").map(|c| c.1), Some(0));
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_a_closed_port_fails_retries_and_gives_up() {
    // Bind then drop to get a port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sinks = Sinks::start(
        &[cfg(
            "tcp",
            syslog(format!("127.0.0.1:{port}"), SyslogProtocol::Tcp, SyslogFormat::Cef),
        )],
        &no_secrets,
    )
    .unwrap();
    sinks.offer(&event("tool.call", 1));
    // 4 attempts (100 + 400 + 1600 ms apart), then the record is given up.
    assert!(
        wait_until(15, || sinks.counts("tcp") == Some((0, 1, 4))).await,
        "{:?}",
        sinks.counts("tcp")
    );
    sinks.shutdown(Duration::from_secs(1)).await;
}
