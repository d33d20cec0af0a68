//! Offline verification of a chain: every MAC, every link, every sequence
//! number, segment continuity, and the end of the chain against the last
//! checkpoint. Reports the first break and what it looks like.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chain::{self, AuditKey, GENESIS};
use crate::writer::{CHECKPOINTS, segment_name, segments};

/// What kind of tampering (or damage) a break looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// Not a record at all.
    Malformed,
    /// The MAC does not match the content.
    Edited,
    /// Sequence numbers jump: records are missing.
    Deleted,
    /// Records out of order, or a record replayed.
    Reordered,
    /// A record that does not belong (no valid MAC, or not linked).
    Inserted,
    /// The chain ends before a checkpoint that was taken of it.
    Truncated,
    /// The chain was written with another key.
    WrongKey,
    /// A whole segment file is gone.
    SegmentMissing,
    /// The record at a checkpoint's position is not the one checkpointed.
    CheckpointMismatch,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Malformed => "malformed",
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Reordered => "reordered",
            BreakKind::Inserted => "inserted",
            BreakKind::Truncated => "truncated",
            BreakKind::WrongKey => "wrong_key",
            BreakKind::SegmentMissing => "segment_missing",
            BreakKind::CheckpointMismatch => "checkpoint_mismatch",
        }
    }
}

/// The first place the chain does not verify.
#[derive(Debug, Clone)]
pub struct Break {
    pub kind: BreakKind,
    pub file: PathBuf,
    /// 1-based line in `file` (0 when the break is about the file as a whole).
    pub line: usize,
    pub seq: Option<u64>,
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.kind.as_str(), self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(s) = self.seq {
            write!(f, " (seq {s})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub head: Option<String>,
    /// Valid checkpoints read.
    pub checkpoints: usize,
    /// The last valid checkpoint: (seq, time).
    pub last_checkpoint: Option<(u64, String)>,
    pub broken: Option<Break>,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

struct Checkpoint {
    seq: u64,
    head: String,
    ts: String,
}

/// Verifies a chain folder (or one segment file). `checkpoints` defaults to
/// the folder's `checkpoints.jsonl` when it exists.
pub fn verify(path: &Path, key: &AuditKey, checkpoints: Option<&Path>) -> Result<Report, String> {
    let (segs, whole) = if path.is_dir() {
        (segments(path)?, true)
    } else if path.is_file() {
        (vec![(0, path.to_path_buf())], false)
    } else {
        return Err(format!("{}: no such file or folder", path.display()));
    };
    let mut report = Report::default();
    let cp_path = checkpoints
        .map(Path::to_path_buf)
        .or_else(|| whole.then(|| path.join(CHECKPOINTS)).filter(|p| p.exists()));
    let cps = match &cp_path {
        Some(p) => read_checkpoints(p, key, &mut report)?,
        None => vec![],
    };
    if segs.is_empty() {
        report.warnings.push("no segments: the chain is empty".into());
    }
    let mut walk = Walk::new(key, &cps);
    if whole && segs.first().is_some_and(|(n, _)| *n == 1) {
        walk.expect = Some(1);
        walk.head = Some(GENESIS.to_owned());
    } else if let Some((n, _)) = segs.first()
        && whole
    {
        report.warnings.push(format!(
            "segments before {} are absent (removed by retention?)",
            segment_name(*n)
        ));
    }
    let mut prev_no: Option<u64> = None;
    for (i, (n, file)) in segs.iter().enumerate() {
        report.segments += 1;
        if whole
            && let Some(p) = prev_no
            && *n != p + 1
        {
            report.broken = Some(Break {
                kind: BreakKind::SegmentMissing,
                file: file.clone(),
                line: 0,
                seq: None,
                detail: format!("segment {} is missing", segment_name(p + 1)),
            });
            return Ok(report);
        }
        prev_no = Some(*n);
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let last_segment = i + 1 == segs.len();
        if let Some(b) = walk.segment(file, whole.then_some(*n), &text, last_segment, &mut report) {
            report.broken = Some(b);
            return Ok(report);
        }
    }
    report.records = walk.records;
    report.last_seq = walk.expect.and_then(|e| e.checked_sub(1)).filter(|_| walk.records > 0);
    report.head = walk.head.filter(|_| walk.records > 0);
    if let Some(cp) = cps.last() {
        let last = report.last_seq.unwrap_or(0);
        if cp.seq > last {
            let file = segs
                .last()
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| path.to_path_buf());
            report.broken = Some(Break {
                kind: BreakKind::Truncated,
                file,
                line: 0,
                seq: Some(last),
                detail: format!(
                    "the chain ends at seq {last}, but a checkpoint at {} recorded seq {}",
                    cp.ts, cp.seq
                ),
            });
            return Ok(report);
        }
    }
    if let Some(b) = walk.mismatch.take() {
        report.broken = Some(b);
    }
    Ok(report)
}

fn read_checkpoints(path: &Path, key: &AuditKey, report: &mut Report) -> Result<Vec<Checkpoint>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out: Vec<Checkpoint> = vec![];
    for (i, line) in text.lines().enumerate() {
        let valid = chain::split(line).is_some_and(|(b, m)| key.verify(b.as_bytes(), m));
        let parsed = chain::parse(line).ok();
        match (valid, parsed) {
            (true, Some(p)) if p.event == "audit.checkpoint" => {
                let head = p.value.get("head").and_then(Value::as_str).unwrap_or("").to_owned();
                let ts = p.value.get("ts").and_then(Value::as_str).unwrap_or("").to_owned();
                if out.last().is_some_and(|c| c.seq > p.seq) {
                    report
                        .warnings
                        .push(format!("{}:{}: checkpoint goes backwards", path.display(), i + 1));
                }
                out.push(Checkpoint { seq: p.seq, head, ts });
            }
            _ => report.warnings.push(format!(
                "{}:{}: not a valid checkpoint (ignored)",
                path.display(),
                i + 1
            )),
        }
    }
    report.checkpoints = out.len();
    report.last_checkpoint = out.last().map(|c| (c.seq, c.ts.clone()));
    Ok(out)
}

struct Walk<'a> {
    key: &'a AuditKey,
    expect: Option<u64>,
    head: Option<String>,
    records: u64,
    /// Checkpointed MAC per seq, checked as the walk passes it.
    wanted: HashMap<u64, (&'a str, &'a str)>,
    mismatch: Option<Break>,
}

impl<'a> Walk<'a> {
    fn new(key: &'a AuditKey, cps: &'a [Checkpoint]) -> Walk<'a> {
        Walk {
            key,
            expect: None,
            head: None,
            records: 0,
            wanted: cps.iter().map(|c| (c.seq, (c.head.as_str(), c.ts.as_str()))).collect(),
            mismatch: None,
        }
    }

    fn segment(
        &mut self,
        file: &Path,
        number: Option<u64>,
        text: &str,
        last_segment: bool,
        report: &mut Report,
    ) -> Option<Break> {
        let mut lines: Vec<&str> = text.split('\n').collect();
        // split leaves "" after a final newline; anything else is a torn line.
        match lines.pop() {
            Some("") | None => {}
            Some(_) if last_segment => report.warnings.push(format!(
                "{}: incomplete last record (written during a crash)",
                file.display()
            )),
            Some(_) => {
                return Some(brk(
                    BreakKind::Malformed,
                    file,
                    lines.len() + 1,
                    None,
                    "incomplete record",
                ));
            }
        }
        for (i, line) in lines.iter().enumerate() {
            let at = i + 1;
            let p = match chain::parse(line) {
                Ok(p) => p,
                Err(e) => return Some(brk(BreakKind::Malformed, file, at, None, &e)),
            };
            if i == 0
                && let Some(b) = self.segment_start(file, number, &p)
            {
                return Some(b);
            }
            let valid = chain::split(line).is_some_and(|(b, m)| self.key.verify(b.as_bytes(), m));
            if !valid {
                let next_links = lines
                    .get(i + 1)
                    .and_then(|l| chain::parse(l).ok())
                    .is_some_and(|n| Some(n.seq) == self.expect && self.head.as_deref() == Some(n.prev.as_str()));
                let (kind, detail) = if next_links {
                    (
                        BreakKind::Inserted,
                        "a record that does not belong to the chain (the next one links past it)",
                    )
                } else {
                    (BreakKind::Edited, "MAC mismatch: the record was changed")
                };
                return Some(brk(kind, file, at, Some(p.seq), detail));
            }
            if let Some(e) = self.expect {
                if p.seq > e {
                    let later = lines[i..].iter().any(|l| chain::parse(l).is_ok_and(|q| q.seq == e));
                    let (kind, detail) = if later {
                        (BreakKind::Reordered, format!("seq {} comes before seq {e}", p.seq))
                    } else {
                        (
                            BreakKind::Deleted,
                            format!("{} record(s) missing (expected seq {e}, found {})", p.seq - e, p.seq),
                        )
                    };
                    return Some(brk(kind, file, at, Some(p.seq), &detail));
                }
                if p.seq < e {
                    let detail = format!("seq {} after seq {}: reordered or replayed", p.seq, e - 1);
                    return Some(brk(BreakKind::Reordered, file, at, Some(p.seq), &detail));
                }
            }
            if let Some(h) = &self.head
                && *h != p.prev
            {
                return Some(brk(
                    BreakKind::Inserted,
                    file,
                    at,
                    Some(p.seq),
                    "does not link to the previous record (spliced from another chain)",
                ));
            }
            if let Some((want, ts)) = self.wanted.get(&p.seq)
                && *want != p.mac
                && self.mismatch.is_none()
            {
                self.mismatch = Some(brk(
                    BreakKind::CheckpointMismatch,
                    file,
                    at,
                    Some(p.seq),
                    &format!("not the record checkpointed at {ts}"),
                ));
            }
            if report.first_seq.is_none() {
                report.first_seq = Some(p.seq);
            }
            self.expect = Some(p.seq + 1);
            self.head = Some(p.mac);
            self.records += 1;
        }
        None
    }

    /// A segment starts with its `audit.segment` record, under our key.
    fn segment_start(&self, file: &Path, number: Option<u64>, p: &chain::Parsed) -> Option<Break> {
        if p.event != "audit.segment" {
            return Some(brk(
                BreakKind::Inserted,
                file,
                1,
                Some(p.seq),
                "the segment does not start with its audit.segment record",
            ));
        }
        if let Some(kid) = p.value.get("kid").and_then(Value::as_str)
            && kid != self.key.kid()
        {
            return Some(brk(
                BreakKind::WrongKey,
                file,
                1,
                Some(p.seq),
                &format!("written with key id {kid}; the key given has id {}", self.key.kid()),
            ));
        }
        let n = p.value.get("segment").and_then(Value::as_u64);
        if let Some(want) = number
            && n != Some(want)
        {
            return Some(brk(
                BreakKind::Reordered,
                file,
                1,
                Some(p.seq),
                &format!("the file is segment {want} but its record says {n:?}"),
            ));
        }
        None
    }
}

fn brk(kind: BreakKind, file: &Path, line: usize, seq: Option<u64>, detail: &str) -> Break {
    Break {
        kind,
        file: file.to_path_buf(),
        line,
        seq,
        detail: detail.to_owned(),
    }
}
