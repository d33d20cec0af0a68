//! One worker task per sink: takes records off the sink's queue and delivers
//! them, with a timeout per attempt and a short backoff between attempts.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use http::{HeaderName, HeaderValue, header};
use palisade_config::{SyslogFormat, SyslogProtocol};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use crate::ExportRecord;
use crate::format::{cef, event_name, hostname, syslog_5424, syslog_datagram};
use crate::otlp::otlp_logs_request;

/// Log target of everything this crate logs.
pub(crate) const TARGET: &str = "palisade::export";

/// Pause after the 1st, 2nd and 3rd failed attempt; after the 4th the records are given up.
pub(crate) const BACKOFF_MS: [u64; 3] = [100, 400, 1_600];

/// Records sent in one OTLP request or one file write ...
const MAX_BATCH: usize = 512;

/// ... and their bytes (chain lines), so a run of large records cannot build a huge request.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Minimum spacing of repeated warnings about one sink.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Response bodies read (and discarded) so connections can be reused.
const RESPONSE_LIMIT: usize = 64 * 1024;

/// Counters of one sink (shared with the metric families) and its warning limiter.
pub(crate) struct Stats {
    pub(crate) name: String,
    pub(crate) sent: Counter,
    pub(crate) dropped: Counter,
    pub(crate) failures: Counter,
    pub(crate) depth: Gauge,
    base: Instant,
    last_full_warn: AtomicU64,
    pub(crate) last_fail_warn: AtomicU64,
}

impl Stats {
    pub(crate) fn new(name: String, sent: Counter, dropped: Counter, failures: Counter, depth: Gauge) -> Self {
        Stats {
            name,
            sent,
            dropped,
            failures,
            depth,
            base: Instant::now(),
            last_full_warn: AtomicU64::new(0),
            last_fail_warn: AtomicU64::new(0),
        }
    }

    /// True at most once per [`WARN_EVERY`] for one limiter (lock-free; callable from any thread).
    pub(crate) fn may_warn(&self, last: &AtomicU64) -> bool {
        // +1 so that 0 can mean "never warned".
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let prev = last.load(Ordering::Relaxed);
        if prev != 0 && now.saturating_sub(prev) < WARN_EVERY.as_millis() as u64 {
            return false;
        }
        last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// A full queue dropped a record.
    pub(crate) fn queue_full(&self) {
        self.dropped.inc();
        if self.may_warn(&self.last_full_warn) {
            tracing::warn!(
                target: TARGET,
                sink = %self.name,
                dropped_total = self.dropped.get(),
                "export queue full; dropping records"
            );
        }
    }
}

/// How a sink delivers.
pub(crate) enum Transport {
    Syslog(SyslogTx),
    Otlp(HttpTx),
    Webhook(HttpTx),
    File(FileTx),
}

pub(crate) struct SyslogTx {
    pub(crate) address: String,
    pub(crate) protocol: SyslogProtocol,
    pub(crate) format: SyslogFormat,
    pub(crate) facility: u8,
    pub(crate) app_name: String,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
}

impl SyslogTx {
    pub(crate) fn new(
        address: String,
        protocol: SyslogProtocol,
        format: SyslogFormat,
        facility: u8,
        app_name: String,
    ) -> Self {
        SyslogTx {
            address,
            protocol,
            format,
            facility,
            app_name,
            udp: None,
            tcp: None,
        }
    }
}

/// An HTTP sink. Secrets (OTLP header values, the webhook key) stay in
/// `Zeroizing` strings and are turned into header values / keys per request.
pub(crate) struct HttpTx {
    pub(crate) client: reqwest::Client,
    pub(crate) url: String,
    pub(crate) headers: Vec<(HeaderName, Zeroizing<String>)>,
    pub(crate) secret: Option<Zeroizing<String>>,
}

pub(crate) struct FileTx {
    pub(crate) path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl FileTx {
    pub(crate) fn new(path: PathBuf) -> Self {
        FileTx { path, file: None }
    }
}

fn io_err(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

impl Transport {
    fn batch_max(&self) -> usize {
        match self {
            Transport::Otlp(_) | Transport::File(_) => MAX_BATCH,
            Transport::Syslog(_) | Transport::Webhook(_) => 1,
        }
    }

    /// Forgets connections and handles after a failure so the next attempt starts clean
    /// (a timed-out TCP write may have left half a frame on the wire).
    fn reset(&mut self) {
        match self {
            Transport::Syslog(s) => {
                s.udp = None;
                s.tcp = None;
            }
            Transport::File(f) => f.file = None,
            Transport::Otlp(_) | Transport::Webhook(_) => {}
        }
    }

    async fn deliver(&mut self, batch: &[Arc<ExportRecord>]) -> Result<(), String> {
        match self {
            Transport::Syslog(s) => {
                for rec in batch {
                    s.send(rec).await?;
                }
                Ok(())
            }
            Transport::Otlp(h) => h.otlp(batch).await,
            Transport::Webhook(h) => {
                for rec in batch {
                    h.webhook(rec).await?;
                }
                Ok(())
            }
            Transport::File(f) => f.append(batch).await,
        }
    }
}

async fn resolve(address: &str) -> Result<std::net::SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| io_err("resolving the address", e))?
        .next()
        .ok_or_else(|| "the address resolved to nothing".to_owned())
}

/// Whether a kept TCP connection is still open: the collector never sends, so
/// end-of-stream or an error means it went away. Without this check the first
/// record after a peer close would vanish into a dead socket's buffer.
///
/// Reads go straight to the socket (not through tokio's cached readiness, which
/// may not have seen the peer's FIN yet).
fn tcp_alive(s: &TcpStream) -> bool {
    use std::io::Read as _;
    let sock = socket2::SockRef::from(s);
    let mut buf = [0u8; 512];
    // Bounded, in case a peer does send a stream of data (it is discarded).
    for _ in 0..64 {
        match (&*sock).read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

impl SyslogTx {
    fn message(&self, rec: &ExportRecord) -> String {
        match self.format {
            SyslogFormat::Cef => cef(&rec.value, env!("CARGO_PKG_VERSION")),
            SyslogFormat::Json => rec.line.clone(),
        }
    }

    async fn send(&mut self, rec: &ExportRecord) -> Result<(), String> {
        let msg = self.message(rec);
        match self.protocol {
            SyslogProtocol::Udp => {
                let datagram = syslog_datagram(&rec.value, self.facility, &self.app_name, hostname(), &msg);
                if self.udp.is_none() {
                    let addr = resolve(&self.address).await?;
                    let local = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    let sock = UdpSocket::bind(local).await.map_err(|e| io_err("binding", e))?;
                    sock.connect(addr).await.map_err(|e| io_err("connecting", e))?;
                    self.udp = Some(sock);
                }
                let sock = self.udp.as_ref().ok_or("no socket")?;
                sock.send(datagram.as_bytes()).await.map_err(|e| io_err("sending", e))?;
                Ok(())
            }
            SyslogProtocol::Tcp => {
                let line = syslog_5424(&rec.value, self.facility, &self.app_name, hostname(), &msg);
                if self.tcp.as_ref().is_some_and(|s| !tcp_alive(s)) {
                    self.tcp = None;
                }
                if self.tcp.is_none() {
                    let addr = resolve(&self.address).await?;
                    let stream = TcpStream::connect(addr).await.map_err(|e| io_err("connecting", e))?;
                    let _ = stream.set_nodelay(true);
                    self.tcp = Some(stream);
                }
                let stream = self.tcp.as_mut().ok_or("no connection")?;
                // RFC 6587 octet counting: `LEN SP MSG`.
                let mut frame = Vec::with_capacity(line.len() + 12);
                frame.extend_from_slice(line.len().to_string().as_bytes());
                frame.push(b' ');
                frame.extend_from_slice(line.as_bytes());
                stream.write_all(&frame).await.map_err(|e| io_err("writing", e))?;
                Ok(())
            }
        }
    }
}

impl HttpTx {
    async fn finish(resp: reqwest::Response) -> Result<(), String> {
        let status = resp.status();
        let _ = palisade_fetch::read_limited(resp, RESPONSE_LIMIT).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP status {}", status.as_u16()))
        }
    }

    async fn otlp(&self, batch: &[Arc<ExportRecord>]) -> Result<(), String> {
        self.post_protobuf(otlp_logs_request(batch, "palisade").encode_to_vec())
            .await
    }

    /// POSTs an OTLP protobuf body with the configured headers.
    pub(crate) async fn post_protobuf(&self, body: Vec<u8>) -> Result<(), String> {
        let mut req = self
            .client
            .post(&self.url)
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(body);
        for (name, value) in &self.headers {
            let mut v = HeaderValue::from_str(value).map_err(|_| format!("header {name}: invalid value"))?;
            v.set_sensitive(true);
            req = req.header(name.clone(), v);
        }
        let resp = req.send().await.map_err(|e| palisade_fetch::describe(&e))?;
        Self::finish(resp).await
    }

    async fn webhook(&self, rec: &ExportRecord) -> Result<(), String> {
        let event = HeaderValue::from_str(event_name(&rec.value)).unwrap_or(HeaderValue::from_static("unknown"));
        let mut req = self
            .client
            .post(&self.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-palisade-event", event);
        if let Some(secret) = &self.secret {
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
            let tag = hmac::sign(&key, rec.line.as_bytes());
            req = req.header("x-palisade-signature", format!("sha256={}", hex::encode(tag.as_ref())));
        }
        let resp = req
            .body(rec.line.clone())
            .send()
            .await
            .map_err(|e| palisade_fetch::describe(&e))?;
        Self::finish(resp).await
    }
}

impl FileTx {
    async fn append(&mut self, batch: &[Arc<ExportRecord>]) -> Result<(), String> {
        if self.file.is_none() {
            let mut o = tokio::fs::OpenOptions::new();
            o.create(true).append(true);
            #[cfg(unix)]
            o.mode(0o600);
            self.file = Some(o.open(&self.path).await.map_err(|e| io_err("opening", e))?);
        }
        let file = self.file.as_mut().ok_or("no file")?;
        let mut buf = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 1).sum());
        for rec in batch {
            buf.extend_from_slice(rec.line.as_bytes());
            buf.push(b'\n');
        }
        // One write per batch, so a retry repeats whole lines at worst.
        file.write_all(&buf).await.map_err(|e| io_err("writing", e))?;
        file.flush().await.map_err(|e| io_err("flushing", e))?;
        Ok(())
    }
}

/// The state of one worker. Dropping it (the task ends or is aborted at the
/// shutdown deadline) counts what it still held as dropped.
pub(crate) struct Worker {
    pub(crate) rx: mpsc::Receiver<Arc<ExportRecord>>,
    pub(crate) transport: Transport,
    pub(crate) stats: Arc<Stats>,
    pub(crate) timeout: Duration,
    inflight: u64,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let lost = self.rx.len() as u64 + self.inflight;
        if lost > 0 {
            self.stats.dropped.inc_by(lost);
        }
        self.stats.depth.set(0);
    }
}

impl Worker {
    pub(crate) fn new(
        rx: mpsc::Receiver<Arc<ExportRecord>>,
        transport: Transport,
        stats: Arc<Stats>,
        timeout: Duration,
    ) -> Self {
        Worker {
            rx,
            transport,
            stats,
            timeout,
            inflight: 0,
        }
    }

    /// Delivers until the queue is closed and drained: when every sender is gone
    /// or `stop` fires (then the queue is closed to new records and drained).
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut closing = false;
        loop {
            let next = tokio::select! {
                biased;
                r = self.rx.recv() => r,
                // A stop signal, or the `Sinks` (and with it the signal's sender) is gone.
                _ = stop.changed(), if !closing => {
                    closing = true;
                    self.rx.close();
                    continue;
                }
            };
            let Some(first) = next else { break };
            let max = self.transport.batch_max();
            let mut batch = Vec::with_capacity(max.min(self.rx.len() + 1));
            let mut bytes = first.line.len();
            batch.push(first);
            // Whatever is already queued, without waiting for more.
            while batch.len() < max && bytes < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(r) => {
                        bytes += r.line.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.stats.depth.set(self.rx.len() as i64);
            self.deliver(&batch).await;
        }
    }

    async fn deliver(&mut self, batch: &[Arc<ExportRecord>]) {
        let n = batch.len() as u64;
        self.inflight = n;
        for attempt in 0..=BACKOFF_MS.len() {
            let result = match tokio::time::timeout(self.timeout, self.transport.deliver(batch)).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {} ms", self.timeout.as_millis())),
            };
            match result {
                Ok(()) => {
                    self.stats.sent.inc_by(n);
                    break;
                }
                Err(error) => {
                    // Only the sink's name and the error: never record contents.
                    self.stats.failures.inc();
                    self.transport.reset();
                    tracing::debug!(target: TARGET, sink = %self.stats.name, attempt = attempt + 1, %error, "export attempt failed");
                    match BACKOFF_MS.get(attempt) {
                        Some(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                        None => {
                            self.stats.dropped.inc_by(n);
                            if self.stats.may_warn(&self.stats.last_fail_warn) {
                                tracing::warn!(
                                    target: TARGET,
                                    sink = %self.stats.name,
                                    %error,
                                    records = n,
                                    "export failed; records given up after retries"
                                );
                            }
                        }
                    }
                }
            }
        }
        self.inflight = 0;
    }
}
