//! The chain writer: one OS thread owns the files, so the request path only
//! hands events over (a bounded queue) and never does file I/O.
//!
//! Durability: under [`Fsync::Always`] a caller awaits [`AuditLog::durable`]
//! before answering; the writer syncs once per batch (group commit), so the
//! cost of fsync is shared by every request waiting on it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::chain::{self, AuditKey, GENESIS};

/// When records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Interval(Duration),
    Never,
}

/// How the log is kept.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    /// None: checkpoints only at rotation and shutdown.
    pub checkpoint_interval: Option<Duration>,
    /// Default `<dir>/checkpoints.jsonl`.
    pub checkpoint_file: Option<PathBuf>,
    pub queue: usize,
    /// A full queue makes the caller wait instead of dropping the event.
    pub fail_closed: bool,
}

impl Options {
    /// Defaults for a folder: interval fsync (10 ms), 64 MiB segments.
    pub fn new(dir: impl Into<PathBuf>) -> Options {
        Options {
            dir: dir.into(),
            fsync: Fsync::Interval(Duration::from_millis(10)),
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(86_400),
            checkpoint_interval: Some(Duration::from_secs(60)),
            checkpoint_file: None,
            queue: 65_536,
            fail_closed: true,
        }
    }

    /// The checkpoint witness file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint_file
            .clone()
            .unwrap_or_else(|| self.dir.join(CHECKPOINTS))
    }
}

/// Default name of the checkpoint file in the chain folder.
pub const CHECKPOINTS: &str = "checkpoints.jsonl";

/// A record as written, for hooks (sinks, alert rules).
#[derive(Debug)]
pub struct Written<'a> {
    pub seq: u64,
    /// The chain line (no newline).
    pub line: &'a str,
    /// The event's fields (without seq, prev, mac).
    pub fields: &'a Map<String, Value>,
    pub mac: &'a str,
    /// A checkpoint (written to the witness file, not the chain).
    pub checkpoint: bool,
}

/// Called on the writer thread after each record; must not block.
pub type Hook = Box<dyn FnMut(&Written<'_>) + Send>;

enum Msg {
    Event(Map<String, Value>),
    Shutdown,
}

#[derive(Default)]
struct Shared {
    /// Events handed to the queue (or refused at it).
    enqueued: AtomicU64,
    /// Events refused at a full or closed queue.
    rejected: AtomicU64,
    /// Events lost to write errors.
    lost: AtomicU64,
    written: AtomicU64,
    failed: AtomicBool,
}

/// A point-in-time view of the log, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub enqueued: u64,
    pub written: u64,
    pub dropped: u64,
    pub queue_depth: u64,
    pub failed: bool,
}

/// The handle to the chain: cheap to share, safe from any thread.
pub struct AuditLog {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    key: Arc<AuditKey>,
    durable: watch::Receiver<u64>,
    fail_closed: bool,
    fsync: Fsync,
    dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("fsync", &self.fsync)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or starts) the chain in `opts.dir`, continuing from its head in
    /// a new segment, and starts the writer thread.
    pub fn open(opts: Options, key: AuditKey, hook: Option<Hook>) -> Result<Arc<AuditLog>, String> {
        let key = Arc::new(key);
        let (tx, rx) = std::sync::mpsc::sync_channel(opts.queue.max(1));
        let (durable_tx, durable) = watch::channel(0u64);
        let shared = Arc::new(Shared::default());
        let mut w = Writer::start(opts.clone(), key.clone(), durable_tx, hook, shared.clone())?;
        let thread = std::thread::Builder::new()
            .name("palisade-audit".into())
            .spawn(move || w.run(rx))
            .map_err(|e| format!("audit: cannot start the writer thread: {e}"))?;
        Ok(Arc::new(AuditLog {
            tx,
            shared,
            key,
            durable,
            fail_closed: opts.fail_closed,
            fsync: opts.fsync,
            dir: opts.dir,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Hands one event to the writer. Never does I/O; with `fail_closed` a
    /// full queue makes the caller wait for room, otherwise the event is
    /// dropped and counted.
    pub fn append(&self, fields: Map<String, Value>) {
        self.shared.enqueued.fetch_add(1, Ordering::SeqCst);
        let sent = if self.fail_closed {
            self.tx.send(Msg::Event(fields)).is_ok()
        } else {
            match self.tx.try_send(Msg::Event(fields)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            }
        };
        if !sent {
            self.shared.rejected.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Waits until every event appended before this call is on disk (or
    /// processed, under policies other than `Always`). `Err` when the log has
    /// failed: the caller decides whether to answer anyway.
    pub async fn durable(&self) -> Result<(), ()> {
        let target = self.shared.enqueued.load(Ordering::SeqCst);
        let mut rx = self.durable.clone();
        loop {
            let done = *rx.borrow_and_update() + self.shared.rejected.load(Ordering::SeqCst);
            if done >= target {
                break;
            }
            if rx.changed().await.is_err() {
                return Err(());
            }
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Whether every response must wait for [`AuditLog::durable`].
    pub fn sync_each_event(&self) -> bool {
        self.fsync == Fsync::Always
    }

    /// False after a write error until the writer recovers, or once events were refused.
    pub fn healthy(&self) -> bool {
        !self.shared.failed.load(Ordering::SeqCst)
    }

    /// Whether a failure should stop traffic.
    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let enqueued = s.enqueued.load(Ordering::SeqCst);
        let rejected = s.rejected.load(Ordering::SeqCst);
        let processed = *self.durable.borrow();
        Stats {
            enqueued,
            written: s.written.load(Ordering::SeqCst),
            dropped: rejected + s.lost.load(Ordering::SeqCst),
            queue_depth: enqueued.saturating_sub(rejected).saturating_sub(processed),
            failed: s.failed.load(Ordering::SeqCst),
        }
    }

    /// Writes what is queued, a final checkpoint, and stops the writer.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// The file name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("audit-{n:08}.jsonl")
}

/// Segment files of a folder, in order, with their numbers.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = vec![];
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(n) = name
            .strip_prefix("audit-")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((n, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Where the chain stood when the log was opened.
struct Head {
    seq: u64,
    mac: String,
    next_segment: u64,
    torn_bytes: u64,
}

/// Finds the head of an existing chain, cutting a torn last line (a crash
/// while writing: never acknowledged, since acknowledgement waits for the
/// complete line to be synced).
fn recover(dir: &Path, key: &AuditKey) -> Result<Head, String> {
    let segs = segments(dir)?;
    let next_segment = segs.last().map_or(1, |(n, _)| n + 1);
    let mut torn_bytes = 0;
    for (i, (_, path)) in segs.iter().enumerate().rev() {
        let mut text = String::new();
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| format!("audit: cannot read {}: {e}", path.display()))?;
        if i + 1 == segs.len() && !text.is_empty() && !text.ends_with('\n') {
            let keep = text.rfind('\n').map_or(0, |p| p + 1);
            torn_bytes = (text.len() - keep) as u64;
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(keep as u64))
                .map_err(|e| format!("audit: cannot cut the torn record of {}: {e}", path.display()))?;
            text.truncate(keep);
        }
        let Some(last) = text.lines().next_back() else {
            continue;
        };
        let first = text.lines().next().unwrap_or(last);
        if let Ok(p) = chain::parse(first)
            && let Some(kid) = p.value.get("kid").and_then(Value::as_str)
            && kid != key.kid()
        {
            return Err(format!(
                "audit: the chain in {} was written with another key (key id {kid}, configured key {}); move it away to start a new chain",
                dir.display(),
                key.kid()
            ));
        }
        let p = chain::parse(last).map_err(|e| format!("audit: last record of {} unreadable: {e}", path.display()))?;
        let (body, mac) = chain::split(last).ok_or("audit: last record has no MAC")?;
        if !key.verify(body.as_bytes(), mac) {
            return Err(format!(
                "audit: the last record of {} does not verify with the configured key; run `palisade audit verify`",
                path.display()
            ));
        }
        return Ok(Head {
            seq: p.seq,
            mac: p.mac,
            next_segment,
            torn_bytes,
        });
    }
    Ok(Head {
        seq: 0,
        mac: GENESIS.into(),
        next_segment,
        torn_bytes,
    })
}

struct Writer {
    opts: Options,
    key: Arc<AuditKey>,
    shared: Arc<Shared>,
    durable_tx: watch::Sender<u64>,
    hook: Option<Hook>,
    seg_no: u64,
    file: Option<BufWriter<File>>,
    seg_bytes: u64,
    seg_started: Instant,
    seq: u64,
    head: String,
    processed: u64,
    unsynced: bool,
    last_sync: Instant,
    checkpointed_seq: u64,
    last_checkpoint: Instant,
    lost_since_failure: u64,
}

impl Writer {
    fn start(
        opts: Options,
        key: Arc<AuditKey>,
        durable_tx: watch::Sender<u64>,
        hook: Option<Hook>,
        shared: Arc<Shared>,
    ) -> Result<Writer, String> {
        create_private_dir(&opts.dir)?;
        let head = recover(&opts.dir, &key)?;
        let now = Instant::now();
        let mut w = Writer {
            opts,
            key,
            shared,
            durable_tx,
            hook,
            seg_no: head.next_segment.saturating_sub(1),
            file: None,
            seg_bytes: 0,
            seg_started: now,
            seq: head.seq,
            head: head.mac,
            processed: 0,
            unsynced: false,
            last_sync: now,
            checkpointed_seq: head.seq,
            last_checkpoint: now,
            lost_since_failure: 0,
        };
        let mut extra = Map::new();
        if head.torn_bytes > 0 {
            extra.insert("torn_bytes".into(), head.torn_bytes.into());
        }
        w.new_segment("start", extra)
            .map_err(|e| format!("audit: cannot start a segment: {e}"))?;
        w.sync().map_err(|e| format!("audit: cannot sync: {e}"))?;
        Ok(w)
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        let mut stop = false;
        while !stop {
            let first = match self.next_deadline() {
                Some(d) => match rx.recv_timeout(d) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
            };
            if first.is_none() && self.file.is_none() {
                // Failed earlier and idle since: try a fresh segment now, so a
                // fail-closed gateway reopens without waiting for an event.
                self.reopen();
            }
            let mut batch = 0;
            let mut next = first;
            while let Some(m) = next {
                match m {
                    Msg::Event(fields) => self.event(fields),
                    Msg::Shutdown => stop = true,
                }
                batch += 1;
                next = if batch < 4096 && !stop {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.after_batch();
        }
        self.checkpoint();
        let _ = self.sync();
        self.durable_tx.send_replace(self.processed);
    }

    /// When the loop must wake without events: a pending interval sync, a
    /// due checkpoint, or the segment's age limit.
    fn next_deadline(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut d = self.seg_started + self.opts.segment_max_age;
        if let Fsync::Interval(i) = self.opts.fsync
            && self.unsynced
        {
            d = d.min(self.last_sync + i);
        }
        if let Some(i) = self.opts.checkpoint_interval
            && self.seq > self.checkpointed_seq
        {
            d = d.min(self.last_checkpoint + i);
        }
        if self.file.is_none() {
            d = d.min(now + Duration::from_secs(1));
        }
        Some(d.saturating_duration_since(now))
    }

    fn event(&mut self, fields: Map<String, Value>) {
        self.processed += 1;
        if self.file.is_none() && !self.reopen() {
            self.lose(1);
            return;
        }
        if let Err(e) = self.write_record(&fields, false) {
            self.fail(&e);
            self.lose(1);
            return;
        }
        if self.seg_bytes >= self.opts.segment_max_bytes {
            self.rotate("size");
        }
    }

    /// After a failure: a fresh segment noting what was lost; true on success.
    fn reopen(&mut self) -> bool {
        let mut extra = Map::new();
        extra.insert("lost".into(), self.lost_since_failure.into());
        if self.new_segment("recovered", extra).is_err() {
            return false;
        }
        self.shared.failed.store(false, Ordering::SeqCst);
        self.lost_since_failure = 0;
        true
    }

    fn lose(&mut self, n: u64) {
        self.lost_since_failure += n;
        self.shared.lost.fetch_add(n, Ordering::SeqCst);
    }

    fn fail(&mut self, e: &std::io::Error) {
        tracing::error!(target: "palisade::chain_writer", error = %e, dir = %self.opts.dir.display(), "audit chain write failed");
        self.shared.failed.store(true, Ordering::SeqCst);
        self.file = None;
    }

    fn write_record(&mut self, fields: &Map<String, Value>, checkpoint: bool) -> std::io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no open segment"))?;
        let seq = self.seq + 1;
        let (line, mac) = chain::seal(&self.key, seq, &self.head, fields);
        file.write_all(line.as_bytes())?;
        file.write_all(b"\n")?;
        self.seg_bytes += line.len() as u64 + 1;
        self.seq = seq;
        self.head.clone_from(&mac);
        self.unsynced = true;
        self.shared.written.fetch_add(1, Ordering::SeqCst);
        if let Some(h) = self.hook.as_mut() {
            h(&Written {
                seq,
                line: &line,
                fields,
                mac: &mac,
                checkpoint,
            });
        }
        Ok(())
    }

    fn after_batch(&mut self) {
        if let Some(f) = self.file.as_mut()
            && let Err(e) = f.flush()
        {
            self.fail(&e);
        }
        let sync_now = match self.opts.fsync {
            Fsync::Always => self.unsynced,
            Fsync::Interval(i) => self.unsynced && self.last_sync.elapsed() >= i,
            Fsync::Never => false,
        };
        if sync_now && let Err(e) = self.sync() {
            self.fail(&e);
        }
        self.durable_tx.send_replace(self.processed);
        if let Some(i) = self.opts.checkpoint_interval
            && self.seq > self.checkpointed_seq
            && self.last_checkpoint.elapsed() >= i
        {
            self.checkpoint();
        }
        if self.seg_started.elapsed() >= self.opts.segment_max_age {
            self.rotate("age");
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
            f.get_ref().sync_data()?;
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn rotate(&mut self, reason: &str) {
        self.checkpoint();
        if let Err(e) = self.sync() {
            self.fail(&e);
            return;
        }
        if let Err(e) = self.new_segment(reason, Map::new()) {
            self.fail(&e);
        }
    }

    fn new_segment(&mut self, reason: &str, extra: Map<String, Value>) -> std::io::Result<()> {
        let n = self.seg_no + 1;
        let path = self.opts.dir.join(segment_name(n));
        let file = open_append(&path)?;
        sync_dir(&self.opts.dir);
        self.file = Some(BufWriter::with_capacity(64 * 1024, file));
        self.seg_no = n;
        self.seg_bytes = 0;
        self.seg_started = Instant::now();
        let mut f = Map::new();
        f.insert("ts".into(), chain::now().into());
        f.insert("id".into(), crate::event_id().into());
        f.insert("event".into(), "audit.segment".into());
        f.insert("level".into(), "info".into());
        f.insert("format".into(), crate::FORMAT.into());
        f.insert("segment".into(), n.into());
        f.insert("kid".into(), self.key.kid().into());
        f.insert("reason".into(), reason.into());
        f.extend(extra);
        let r = self.write_record(&f, false);
        if r.is_err() {
            self.file = None;
        }
        r
    }

    /// Appends the head (seq, MAC) to the witness file, itself MACed.
    fn checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        if self.seq == self.checkpointed_seq {
            return;
        }
        if self.file.is_some()
            && let Err(e) = self.sync()
        {
            self.fail(&e);
            return;
        }
        let mut f = Map::new();
        f.insert("ts".into(), chain::now().into());
        f.insert("event".into(), "audit.checkpoint".into());
        f.insert("segment".into(), self.seg_no.into());
        f.insert("kid".into(), self.key.kid().into());
        f.insert("head".into(), self.head.clone().into());
        // A checkpoint is sealed like a record: seq is the head's, prev its MAC.
        let (line, mac) = chain::seal(&self.key, self.seq, &self.head, &f);
        let path = self.opts.checkpoint_path();
        let res = open_append(&path).and_then(|mut file| {
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_data()
        });
        match res {
            Ok(()) => {
                self.checkpointed_seq = self.seq;
                if let Some(h) = self.hook.as_mut() {
                    h(&Written {
                        seq: self.seq,
                        line: &line,
                        fields: &f,
                        mac: &mac,
                        checkpoint: true,
                    });
                }
            }
            Err(e) => {
                tracing::error!(target: "palisade::chain_writer", error = %e, path = %path.display(), "audit checkpoint write failed");
            }
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| format!("audit: cannot create {}: {e}", dir.display()))
}
