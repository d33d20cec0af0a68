//! Queues, filters, the file sink, metrics and shutdown.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use common::{cfg, event, no_secrets, rec, wait_until};
use http::StatusCode;
use palisade_config::{SinkKind, SyslogFormat, SyslogProtocol};
use palisade_export::{ExportRecord, Sinks};
use serde_json::json;

fn file(path: &Path) -> SinkKind {
    SinkKind::File { path: path.to_owned() }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An HTTP receiver that never answers in time.
async fn sleepy_receiver() -> String {
    let app = Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_sinks_never_slow_the_caller_or_the_healthy_sink() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.jsonl");

    // A TCP collector that accepts and never reads.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let blackhole_addr = blackhole.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            held.push(s);
        }
    });
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();

    let dead = |name: &str, kind: SinkKind| {
        let mut c = cfg(name, kind);
        c.queue = 10;
        c.timeout_ms = 200;
        c
    };
    let mut healthy = cfg("file", file(&out));
    healthy.queue = 20_000;
    let configs = [
        dead(
            "blackhole",
            SinkKind::Syslog {
                address: blackhole_addr,
                protocol: SyslogProtocol::Tcp,
                format: SyslogFormat::Cef,
                facility: 13,
                app_name: "palisade".into(),
            },
        ),
        dead(
            "closed",
            SinkKind::Syslog {
                address: closed.to_string(),
                protocol: SyslogProtocol::Tcp,
                format: SyslogFormat::Json,
                facility: 13,
                app_name: "palisade".into(),
            },
        ),
        dead(
            "sleepy",
            SinkKind::Webhook {
                url: sleepy_receiver().await,
                secret: None,
                allow_insecure_http: false,
            },
        ),
        healthy,
    ];
    let sinks = Arc::new(Sinks::start(&configs, &no_secrets).unwrap());

    // The audit writer is a plain thread: offer from one.
    let records: Vec<_> = (0..10_000).map(|seq| event("tool.call", seq)).collect();
    let s = Arc::clone(&sinks);
    std::thread::spawn(move || {
        for r in &records {
            s.offer(r);
        }
    })
    .join()
    .unwrap();

    for name in ["blackhole", "closed", "sleepy"] {
        let (_, dropped, _) = sinks.counts(name).unwrap();
        assert!(dropped > 0, "{name}: {:?}", sinks.counts(name));
    }
    assert!(
        wait_until(60, || sinks.counts("file").is_some_and(|c| c.0 == 10_000)).await,
        "{:?}",
        sinks.counts("file")
    );
    assert_eq!(sinks.counts("file").map(|c| c.1), Some(0));
    let got = lines(&out);
    assert_eq!(got.len(), 10_000);
    assert!(got.iter().enumerate().all(|(i, v)| v["seq"] == json!(i)));
    sinks.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_filters_and_send_to() {
    let dir = tempfile::tempdir().unwrap();
    let alerts_path = dir.path().join("alerts.jsonl");
    let all_path = dir.path().join("all.jsonl");
    let mut alerts = cfg("alerts", file(&alerts_path));
    alerts.events = vec!["alert.*".into()];
    let all = cfg("all", file(&all_path));
    let sinks = Sinks::start(&[alerts, all], &no_secrets).unwrap();
    assert_eq!(sinks.names(), ["alerts", "all"]);

    sinks.offer(&event("tool.call", 1));
    sinks.offer(&event("alert.fired", 2));
    sinks.offer(&event("auth.failure", 3));
    sinks.offer(&event("alerts", 4)); // not under `alert.`
    assert!(sinks.send_to("alerts", event("tool.call", 5)));
    assert!(!sinks.send_to("nope", event("tool.call", 6)));
    sinks.shutdown(Duration::from_secs(5)).await;

    let seqs = |p: &Path| lines(p).iter().map(|v| v["seq"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(seqs(&alerts_path), [2, 5]);
    assert_eq!(seqs(&all_path), [1, 2, 3, 4]);
    assert_eq!(sinks.counts("alerts"), Some((2, 0, 0)));
    assert_eq!(sinks.counts("all"), Some((4, 0, 0)));
    assert_eq!(sinks.counts("nope"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_full_queue_is_refused_and_counted() {
    let mut c = cfg(
        "sleepy",
        SinkKind::Webhook {
            url: sleepy_receiver().await,
            secret: None,
            allow_insecure_http: false,
        },
    );
    c.queue = 1;
    c.timeout_ms = 10_000;
    let sinks = Sinks::start(&[c], &no_secrets).unwrap();
    let results: Vec<bool> = (0..20)
        .map(|i| sinks.send_to("sleepy", event("alert.fired", i)))
        .collect();
    assert!(results[0]);
    let refused = results.iter().filter(|ok| !**ok).count() as u64;
    assert!(refused > 0, "{results:?}");
    assert_eq!(sinks.counts("sleepy").map(|c| c.1), Some(refused));
    sinks.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_queue_and_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let mut c = cfg("file", file(&path));
    c.queue = 5000;
    let sinks = Sinks::start(&[c], &no_secrets).unwrap();
    for seq in 0..3000 {
        sinks.offer(&event("tool.call", seq));
    }
    sinks.shutdown(Duration::from_secs(10)).await;
    assert_eq!(lines(&path).len(), 3000);
    sinks.offer(&event("tool.call", 3000));
    assert!(!sinks.send_to("file", event("tool.call", 3001)));
    assert_eq!(sinks.counts("file"), Some((3000, 2, 0)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(lines(&path).len(), 3000);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_is_private_and_appended() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "{\"seq\":0}\n").unwrap();
    let new_path = dir.path().join("new.jsonl");
    let sinks = Sinks::start(&[cfg("old", file(&path)), cfg("new", file(&new_path))], &no_secrets).unwrap();
    let r = event("tool.call", 1);
    sinks.offer(&r);
    sinks.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{{\"seq\":0}}\n{}\n", r.line)
    );
    assert_eq!(std::fs::read_to_string(&new_path).unwrap(), format!("{}\n", r.line));
    let mode = std::fs::metadata(&new_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_file_counts_failures_then_drops() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be opened for appending.
    let sinks = Sinks::start(&[cfg("file", file(dir.path()))], &no_secrets).unwrap();
    sinks.offer(&event("tool.call", 1));
    assert!(
        wait_until(15, || sinks.counts("file") == Some((0, 1, 4))).await,
        "{:?}",
        sinks.counts("file")
    );
    sinks.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_registered_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = Sinks::start(
        &[
            cfg("a", file(&dir.path().join("a"))),
            cfg("b", file(&dir.path().join("b"))),
        ],
        &no_secrets,
    )
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::with_prefix("palisade");
    sinks.register(&mut registry);
    sinks.offer(&event("tool.call", 1));
    sinks.offer(&event("tool.call", 2));
    assert!(
        wait_until(10, || sinks.counts("a") == Some((2, 0, 0))
            && sinks.counts("b") == Some((2, 0, 0)))
        .await
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "palisade_sink_sent_total{sink=\"a\"} 2",
        "palisade_sink_sent_total{sink=\"b\"} 2",
        "palisade_sink_dropped_total{sink=\"a\"} 0",
        "palisade_sink_failures_total{sink=\"b\"} 0",
        "palisade_sink_queue_depth{sink=\"a\"} 0",
        "# TYPE palisade_sink_queue_depth gauge",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_shipped_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_sink = cfg(
        "udp",
        SinkKind::Syslog {
            address: udp.local_addr().unwrap().to_string(),
            protocol: SyslogProtocol::Udp,
            format: SyslogFormat::Cef,
            facility: 13,
            app_name: "palisade".into(),
        },
    );
    let sinks = Sinks::start(&[cfg("file", file(&path)), udp_sink], &no_secrets).unwrap();
    let records = [
        rec(json!({})),
        rec(json!({"event": 42, "seq": "x"})),
        rec(json!({"event": "tool.call", "msg": "m".repeat(1 << 20)})),
        Arc::new(ExportRecord {
            line: "not json".into(),
            value: json!("not json"),
        }),
    ];
    for r in &records {
        sinks.offer(r);
    }
    let mut buf = vec![0u8; 65_536];
    for _ in 0..records.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), udp.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n <= 8192);
        assert!(std::str::from_utf8(&buf[..n]).unwrap().starts_with("<110>1 "));
    }
    sinks.shutdown(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert_eq!(sinks.counts("file"), Some((4, 0, 0)));
    assert_eq!(sinks.counts("udp"), Some((4, 0, 0)));
}

#[test]
fn parse_keeps_the_exact_line() {
    let line = "{\"seq\":1,  \"event\":\"tool.call\"}".to_owned();
    let r = ExportRecord::parse(line.clone()).unwrap();
    assert_eq!(r.line, line);
    assert_eq!(r.value["event"], "tool.call");
    assert!(ExportRecord::parse("{".into()).is_err());
}
