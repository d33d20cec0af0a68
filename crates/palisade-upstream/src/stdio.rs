//! A supervised stdio MCP server: spawn, handshake, frame, restart, stop (X3).
//!
//! The process gets a cleared environment plus what the configuration declares,
//! its own process group (so the whole tree is signalled together), and stdout
//! framed as newline-delimited JSON with a line-length limit. Lines that are not
//! JSON-RPC are logged and dropped, never forwarded. When the process dies,
//! every request in flight is answered with an error and the process is
//! restarted with exponential backoff; each start is followed by the
//! `initialize` handshake with the parameters the connection was created with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_config::StdioConfig;
use palisade_wire::{Id, Kind, Limits, Message, parse_message};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::UpstreamError;
use crate::launch::{Applied, Launcher, ProcessStats, Refusal, spawn_monitor};

/// Default `PATH` for launched servers when the configuration declares none.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const OUTBOX: usize = 1024;
/// A process that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The result of the `initialize` handshake with the current process.
#[derive(Debug)]
pub struct Ready {
    /// The raw `InitializeResult`.
    pub result: Box<RawValue>,
    /// Increments on every (re)start.
    pub generation: u64,
}

/// A message from the server that is not the answer to a pending request.
#[derive(Debug)]
pub enum Event {
    /// A request or notification from the server.
    Message(Message),
    /// A response to a request sent with [`StdioConnection::request`]. It travels
    /// through the event queue, behind the notifications that preceded it, so a
    /// request's progress is always relayed before its answer. Hand it to
    /// [`StdioConnection::resolve`].
    Response(Message),
    /// The process exited; every pending request has been failed.
    Down { reason: String },
    /// A new process finished its handshake.
    Up { generation: u64 },
}

type Pending = HashMap<String, oneshot::Sender<Message>>;

/// A handle on one supervised process. Cheap to share; dropping the last
/// handle does not stop the process: call [`StdioConnection::shutdown`].
#[derive(Debug)]
pub struct StdioConnection {
    name: String,
    outbox: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
    ready: watch::Receiver<Option<Arc<Ready>>>,
    stop: CancellationToken,
    done: watch::Receiver<bool>,
    pid: Arc<AtomicU64>,
    stats: Arc<ProcessStats>,
}

/// Everything needed to start a server.
#[derive(Debug, Clone)]
pub struct StdioSpec {
    pub name: String,
    pub config: StdioConfig,
    pub limits: Limits,
    /// Parameters of the `initialize` request sent after every start.
    pub init_params: Box<RawValue>,
    /// Refuse to start without a supply-chain pin (`integrity.require_launch_pins`).
    pub require_launch_pins: bool,
}

impl StdioConnection {
    /// Starts supervising; the first start happens in the background.
    pub fn start(spec: StdioSpec) -> (Arc<StdioConnection>, mpsc::Receiver<Event>) {
        let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX);
        let (events_tx, events_rx) = mpsc::channel(OUTBOX);
        let (ready_tx, ready_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let pending = Arc::new(Mutex::new(Pending::new()));
        let stop = CancellationToken::new();
        let pid = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(ProcessStats::default());
        let conn = Arc::new(StdioConnection {
            stats: stats.clone(),
            name: spec.name.clone(),
            outbox: outbox_tx,
            pending: pending.clone(),
            ready: ready_rx,
            stop: stop.clone(),
            done: done_rx,
            pid: pid.clone(),
        });
        let sup = Supervisor {
            launcher: Launcher::new(spec.name.clone(), stop.clone()),
            stats: stats.clone(),
            spec,
            outbox: outbox_rx,
            events: events_tx,
            pending,
            ready: ready_tx,
            stop,
            pid,
        };
        tokio::spawn(async move {
            sup.run().await;
            let _ = done_tx.send(true);
        });
        (conn, events_rx)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Restarts, exits and resource use of the supervised process (X3).
    pub fn stats(&self) -> &ProcessStats {
        &self.stats
    }

    /// The current handshake result, if the process is up.
    pub fn ready(&self) -> Option<Arc<Ready>> {
        self.ready.borrow().clone()
    }

    /// Waits until the process is up, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Arc<Ready>, UpstreamError> {
        let mut rx = self.ready.clone();
        let wait = async {
            loop {
                if let Some(r) = rx.borrow_and_update().clone() {
                    return Ok(r);
                }
                if rx.changed().await.is_err() {
                    return Err(UpstreamError::Unavailable("supervisor stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| UpstreamError::Unavailable(format!("{} is not running", self.name)))?
    }

    /// The process id of the current process, or 0.
    pub fn pid(&self) -> u32 {
        u32::try_from(self.pid.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Sends a request and waits for its response (the id is the caller's, unchanged).
    ///
    /// On timeout the request is cancelled upstream. If the caller's future is
    /// dropped, the pending entry is removed.
    pub async fn request(&self, msg: Message, timeout: Duration) -> Result<Message, UpstreamError> {
        let id = msg
            .id
            .clone()
            .ok_or_else(|| UpstreamError::Protocol("request without id".into()))?;
        let deadline = Instant::now() + timeout;
        self.wait_ready(timeout).await?;
        let (tx, rx) = oneshot::channel();
        let key = id.as_str().to_owned();
        {
            let mut p = self.lock_pending()?;
            if p.contains_key(&key) {
                return Err(UpstreamError::Protocol("duplicate request id".into()));
            }
            p.insert(key.clone(), tx);
        }
        let guard = PendingGuard {
            pending: &self.pending,
            key,
        };
        self.send(&msg)?;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(resp)) => {
                std::mem::forget(guard);
                Ok(resp)
            }
            Ok(Err(_)) => Err(UpstreamError::Unavailable(format!("{} exited", self.name))),
            Err(_) => {
                drop(guard);
                let _ = self.send(&cancelled(&id, "timed out at the gateway"));
                Err(UpstreamError::Timeout)
            }
        }
    }

    /// Writes a notification or response to the process.
    pub fn send(&self, msg: &Message) -> Result<(), UpstreamError> {
        if self.ready.borrow().is_none() {
            return Err(UpstreamError::Unavailable(format!("{} is not running", self.name)));
        }
        let mut line = msg.to_bytes();
        line.push(b'\n');
        self.outbox.try_send(line).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => UpstreamError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => UpstreamError::Unavailable("supervisor stopped".into()),
        })
    }

    /// Stops the process (close stdin, SIGTERM, SIGKILL to the group) and waits.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let mut done = self.done.clone();
        while !*done.borrow_and_update() {
            if done.changed().await.is_err() {
                break;
            }
        }
    }

    /// Completes the pending request a response answers (see [`Event::Response`]).
    pub fn resolve(&self, msg: Message) {
        resolve_pending(&self.pending, &self.name, msg);
    }

    fn lock_pending(&self) -> Result<std::sync::MutexGuard<'_, Pending>, UpstreamError> {
        self.pending
            .lock()
            .map_err(|_| UpstreamError::Unavailable("internal state poisoned".into()))
    }
}

fn resolve_pending(pending: &Mutex<Pending>, name: &str, msg: Message) {
    let key = msg.id.as_ref().map(|i| i.as_str().to_owned()).unwrap_or_default();
    let waiter = pending.lock().ok().and_then(|mut p| p.remove(&key));
    match waiter {
        Some(tx) => {
            let _ = tx.send(msg);
        }
        // A response to a request the gateway did not send or already gave up on.
        None => tracing::debug!(upstream = %name, id = %key, "unmatched response dropped"),
    }
}

struct PendingGuard<'a> {
    pending: &'a Mutex<Pending>,
    key: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.key);
        }
    }
}

fn cancelled(id: &Id, reason: &str) -> Message {
    let params = serde_json::json!({ "requestId": id, "reason": reason });
    Message::notification("notifications/cancelled", serde_json::value::to_raw_value(&params).ok())
}

struct Supervisor {
    spec: StdioSpec,
    outbox: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<Event>,
    pending: Arc<Mutex<Pending>>,
    ready: watch::Sender<Option<Arc<Ready>>>,
    stop: CancellationToken,
    pid: Arc<AtomicU64>,
    launcher: Launcher,
    stats: Arc<ProcessStats>,
}

enum Exit {
    Stopped,
    Died(String),
}

impl Supervisor {
    async fn run(mut self) {
        let cfg = self.spec.config.clone();
        let mut failures: u32 = 0;
        let mut generation = 0u64;
        loop {
            generation += 1;
            let started = Instant::now();
            let exit = match self.spawn().await {
                Ok((child, applied)) => self.serve(child, generation, applied).await,
                Err(refusal) => self.refused(refusal),
            };
            self.pid.store(0, Ordering::Relaxed);
            let _ = self.ready.send(None);
            self.fail_pending();
            match exit {
                Exit::Stopped => return,
                Exit::Died(reason) => {
                    tracing::warn!(upstream = %self.spec.name, %reason, "stdio upstream down");
                    let _ = self.events.try_send(Event::Down { reason });
                }
            }
            if started.elapsed() > STABLE_AFTER {
                failures = 0;
            }
            let backoff = backoff(cfg.restart_backoff_initial_ms, cfg.restart_backoff_max_ms, failures);
            failures = failures.saturating_add(1);
            // Drop whatever was queued for the dead process.
            while self.outbox.try_recv().is_ok() {}
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    async fn spawn(&mut self) -> Result<(Child, Applied), Refusal> {
        let cfg = &self.spec.config;
        let require = self.spec.require_launch_pins;
        if cfg.pin.is_some() || require {
            let c = cfg.clone();
            match tokio::task::spawn_blocking(move || palisade_supply::check_launch(&c, require)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Refusal::Pin(e.to_string())),
                Err(e) => return Err(Refusal::Pin(format!("verification failed: {e}"))),
            }
        }
        let (mut cmd, applied) = self.launcher.command(cfg).await?;
        let child = cmd.spawn().map_err(|e| Refusal::Spawn(e.to_string()))?;
        Ok((child, applied))
    }

    fn refused(&self, refusal: Refusal) -> Exit {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        let name = &self.spec.name;
        let (event, what, why) = match refusal {
            Refusal::Sandbox(why) => ("upstream.sandbox_refused", "sandbox", why),
            Refusal::Pin(why) => ("upstream.pin_mismatch", "pin mismatch", why),
            Refusal::Spawn(why) => {
                return Exit::Died(format!("cannot start {:?}: {why}", self.spec.config.command));
            }
        };
        tracing::error!(
            target: "palisade::audit",
            event,
            upstream = %name,
            reason = %why,
            "server not started: {what}"
        );
        let reason = format!("{what}: {why}");
        Exit::Died(reason)
    }

    async fn serve(&mut self, mut child: Child, generation: u64, applied: Applied) -> Exit {
        let name = self.spec.name.clone();
        let pid = child.id().unwrap_or(0);
        self.pid.store(u64::from(pid), Ordering::Relaxed);
        self.stats.starts.fetch_add(1, Ordering::Relaxed);
        let up_since = Instant::now();
        tracing::info!(
            target: "palisade::audit",
            event = "upstream.started",
            upstream = %name,
            pid,
            generation,
            sandbox = %applied.sandbox.join(","),
            uid = applied.uid.map_or_else(|| "inherited".to_owned(), |u| u.to_string()),
            "stdio server started"
        );
        let monitor_done = CancellationToken::new();
        let monitor = spawn_monitor(
            name.clone(),
            pid,
            if self.spec.config.sandbox.mode == palisade_config::SandboxMode::Off {
                0
            } else {
                self.spec.config.sandbox.limits.memory_mb
            },
            self.stats.clone(),
            monitor_done.clone(),
        );
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Exit::Died("stdio pipes unavailable".into());
        };
        let stderr_task = tokio::spawn(log_stderr(name.clone(), stderr));
        let mut stdin = Some(stdin);
        let mut reader = LineReader::new(
            BufReader::with_capacity(64 * 1024, stdout),
            self.spec.config.max_line_bytes,
        );

        // Handshake first: nothing else is written until the server has answered.
        let init_id = format!("\"palisade-init-{generation}\"");
        let hs = self.handshake(stdin.as_mut(), &mut reader, &init_id).await;
        let exit = match hs {
            Err(reason) => Some(Exit::Died(reason)),
            Ok(result) => {
                let _ = self.ready.send(Some(Arc::new(Ready { result, generation })));
                let _ = self.events.try_send(Event::Up { generation });
                None
            }
        };
        let exit = match exit {
            Some(e) => e,
            None => loop {
                tokio::select! {
                    read = reader.next_line() => match read {
                        Ok(true) => self.dispatch(reader.line()),
                        Ok(false) => break Exit::Died("stdout closed".into()),
                        Err(e) => break Exit::Died(format!("reading stdout: {e}")),
                    },
                    out = self.outbox.recv() => match (out, stdin.as_mut()) {
                        (Some(bytes), Some(w)) => {
                            if let Err(e) = w.write_all(&bytes).await {
                                break Exit::Died(format!("writing stdin: {e}"));
                            }
                        }
                        _ => break Exit::Stopped,
                    },
                    status = child.wait() => {
                        break Exit::Died(match status {
                            Ok(s) => format!("exited with {s}"),
                            Err(e) => format!("wait failed: {e}"),
                        });
                    }
                    () = self.stop.cancelled() => break Exit::Stopped,
                }
            },
        };
        terminate(&mut child, stdin.take(), pid, self.spec.config.shutdown_grace_ms).await;
        monitor_done.cancel();
        let _ = monitor.await;
        if let Ok(Some(status)) = child.try_wait() {
            self.exited(pid, status, up_since);
        }
        stderr_task.abort();
        exit
    }

    /// Records how a process ended (X3).
    fn exited(&self, pid: u32, status: std::process::ExitStatus, since: Instant) {
        use std::os::unix::process::ExitStatusExt;
        let st = &self.stats;
        st.exits.fetch_add(1, Ordering::Relaxed);
        let code = status.code().map_or(-1, i64::from);
        let signal = status.signal().unwrap_or(0);
        st.last_exit_code.store(code, Ordering::Relaxed);
        st.last_signal.store(i64::from(signal), Ordering::Relaxed);
        let limit = match signal {
            libc::SIGXCPU => Some("cpu"),
            libc::SIGXFSZ => Some("file_size"),
            _ => None,
        };
        if let Some(limit) = limit {
            st.limit_kills.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "palisade::audit",
                event = "upstream.limit_exceeded",
                upstream = %self.spec.name,
                pid,
                limit,
                "server killed by the kernel for exceeding its limit"
            );
        }
        tracing::warn!(
            target: "palisade::audit",
            event = "upstream.exited",
            upstream = %self.spec.name,
            pid,
            code,
            signal,
            uptime_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            cpu_ms = st.cpu_ms.load(Ordering::Relaxed),
            peak_rss_kb = st.peak_rss_bytes.load(Ordering::Relaxed) / 1024,
            "stdio server exited"
        );
    }

    async fn handshake(
        &self,
        stdin: Option<&mut ChildStdin>,
        reader: &mut LineReader<BufReader<tokio::process::ChildStdout>>,
        init_id: &str,
    ) -> Result<Box<RawValue>, String> {
        let stdin = stdin.ok_or("no stdin")?;
        let id = RawValue::from_string(init_id.to_owned())
            .ok()
            .and_then(|r| Id::from_raw(r).ok())
            .ok_or("bad init id")?;
        let init = Message::request(id.clone(), "initialize", Some(self.spec.init_params.clone()));
        let mut bytes = init.to_bytes();
        bytes.push(b'\n');
        let exchange = async {
            stdin
                .write_all(&bytes)
                .await
                .map_err(|e| format!("writing initialize: {e}"))?;
            loop {
                if !reader.next_line().await.map_err(|e| format!("reading: {e}"))? {
                    return Err("stdout closed during initialize".to_owned());
                }
                let Ok(msg) = parse_message(reader.line(), &self.spec.limits) else {
                    tracing::warn!(upstream = %self.spec.name, "non-JSON-RPC line on stdout dropped");
                    continue;
                };
                if msg.id.as_ref() != Some(&id) || msg.method.is_some() {
                    // Logging or other chatter before the handshake completes.
                    continue;
                }
                if let Some(err) = msg.error_object() {
                    return Err(format!("initialize refused: {}", err.message));
                }
                let result = msg.result.ok_or("initialize without result")?;
                let done = Message::notification("notifications/initialized", None);
                let mut b = done.to_bytes();
                b.push(b'\n');
                stdin
                    .write_all(&b)
                    .await
                    .map_err(|e| format!("writing initialized: {e}"))?;
                return Ok(result);
            }
        };
        tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange) => r.map_err(|_| "initialize timed out".to_owned())?,
            () = self.stop.cancelled() => Err("stopped".into()),
        }
    }

    fn dispatch(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let msg = match parse_message(line, &self.spec.limits) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(upstream = %self.spec.name, error = %e, "invalid message on stdout dropped");
                return;
            }
        };
        match msg.kind() {
            Kind::Response | Kind::Error => match self.events.try_send(Event::Response(msg)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Event::Response(msg))) => {
                    // Never leave a caller hanging; order is lost only under overload.
                    tracing::warn!(upstream = %self.spec.name, "event queue full; response delivered out of order");
                    resolve_pending(&self.pending, &self.spec.name, msg);
                }
                Err(_) => {}
            },
            Kind::Request | Kind::Notification => {
                if self.events.try_send(Event::Message(msg)).is_err() {
                    tracing::warn!(upstream = %self.spec.name, "event queue full; server message dropped");
                }
            }
        }
    }

    fn fail_pending(&self) {
        // Dropping the senders wakes every waiter with an error.
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }
}

fn backoff(initial_ms: u64, max_ms: u64, failures: u32) -> Duration {
    let factor = 1u64.checked_shl(failures.min(20)).unwrap_or(u64::MAX);
    Duration::from_millis(initial_ms.saturating_mul(factor).min(max_ms))
}

async fn terminate(child: &mut Child, stdin: Option<ChildStdin>, pid: u32, grace_ms: u64) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    drop(stdin);
    let half = Duration::from_millis(grace_ms / 2);
    if tokio::time::timeout(half, child.wait()).await.is_ok() {
        // The leader exited; still clear out anything left in its group.
        if pid != 0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        return;
    }
    if pid != 0 {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(half, child.wait()).await.is_ok() {
        if pid != 0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        return;
    }
    if pid != 0 {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut reader = LineReader::new(BufReader::new(stderr), 16 * 1024);
    while let Ok(true) = reader.next_line().await {
        let text = String::from_utf8_lossy(reader.line());
        tracing::info!(target: "palisade::upstream::stderr", upstream = %name, "{}", text.trim_end());
    }
}

/// Newline-delimited framing with a line-length limit. Lines longer than the
/// limit are skipped whole. Cancel-safe: all state lives in the struct, and the
/// only await is `fill_buf`, so a `select!` may drop a call at any point.
pub struct LineReader<R> {
    reader: R,
    line: Vec<u8>,
    limit: usize,
    discarding: bool,
    complete: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(reader: R, limit: usize) -> Self {
        LineReader {
            reader,
            line: Vec::new(),
            limit,
            discarding: false,
            complete: false,
        }
    }

    /// The last complete line (without its newline).
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Reads the next line. `Ok(false)` at end of stream.
    pub async fn next_line(&mut self) -> std::io::Result<bool> {
        if self.complete {
            self.line.clear();
            self.complete = false;
        }
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                // EOF: a final unterminated line still counts, once.
                let have = !self.line.is_empty() && !self.discarding;
                self.complete = true;
                self.discarding = false;
                if !have {
                    self.line.clear();
                }
                return Ok(have);
            }
            let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if !self.discarding {
                if self.line.len() + chunk.len() > self.limit {
                    tracing::warn!(limit = self.limit, "over-long line from upstream skipped");
                    self.discarding = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let used = found.unwrap_or(available.len());
            self.reader.consume(used);
            if found.is_some() {
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                self.complete = true;
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_oversized_lines_skipped() {
        let data = format!("short\n{}\nnext\r\nlast", "x".repeat(100));
        let mut r = LineReader::new(BufReader::with_capacity(8, data.as_bytes()), 16);
        assert!(r.next_line().await.unwrap());
        assert_eq!(r.line(), b"short");
        assert!(r.next_line().await.unwrap());
        assert_eq!(r.line(), b"next");
        assert!(r.next_line().await.unwrap());
        assert_eq!(r.line(), b"last");
        assert!(!r.next_line().await.unwrap());
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(100, 1000, 0), Duration::from_millis(100));
        assert_eq!(backoff(100, 1000, 2), Duration::from_millis(400));
        assert_eq!(backoff(100, 1000, 10), Duration::from_millis(1000));
        assert_eq!(backoff(100, 1000, 200), Duration::from_millis(1000));
    }
}
