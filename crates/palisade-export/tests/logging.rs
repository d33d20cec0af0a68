//! What the crate logs when a queue overflows: the sink, never the record.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cfg, no_secrets, rec, sample};
use palisade_config::{SinkKind, SyslogFormat, SyslogProtocol};
use palisade_export::Sinks;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn warnings_name_the_sink_never_the_record() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    // A port nothing listens on: the worker is stuck in retries, the queue of 1 overflows.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = cfg(
        "siem",
        SinkKind::Syslog {
            address: format!("127.0.0.1:{port}"),
            protocol: SyslogProtocol::Tcp,
            format: SyslogFormat::Cef,
            facility: 13,
            app_name: "palisade".into(),
        },
    );
    c.queue = 1;
    let sinks = Sinks::start(&[c], &no_secrets).unwrap();

    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let mut v = sample();
    v["msg"] = serde_json::json!("PLANTED-RECORD-CONTENT");
    let r = rec(v);
    // Global (the only test in this binary) so the worker threads' logs are caught too.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    for _ in 0..1000 {
        sinks.offer(&r);
    }
    let (_, dropped, _) = sinks.counts("siem").unwrap();
    assert!(dropped >= 998, "{dropped}");
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("palisade::export"), "{text}");
    assert!(
        warnings[0].contains("siem") && warnings[0].contains("queue full"),
        "{text}"
    );

    // The first record is given up after 4 attempts: one more warning, naming the error.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while sinks.counts("siem").is_some_and(|c| c.2 < 4) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings[1].contains("given up") && warnings[1].contains("connecting"),
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.contains("export attempt failed")).count() >= 4,
        "{text}"
    );
    assert!(!text.contains("PLANTED-RECORD-CONTENT"), "{text}");
    assert!(!text.contains("palisade::audit"), "{text}");
    rt.block_on(sinks.shutdown(Duration::from_millis(100)));
}
