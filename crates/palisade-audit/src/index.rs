//! The query index: an SQLite file beside the chain mapping the fields
//! people search by to each record's place in its segment. The index is
//! derived data: it is caught up from the segments before each query (and
//! periodically by the gateway), rebuilt when it does not match, and never
//! trusted for content — records are read from the chain itself.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::writer::{segment_name, segments};

/// File name of the index in the chain folder.
pub const INDEX: &str = "index.db";

/// What to look for; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Times as written in records (see [`crate::chain::timestamp`]).
    pub since: Option<String>,
    pub until: Option<String>,
    /// `principal.sub`.
    pub principal: Option<String>,
    pub server: Option<String>,
    pub tool: Option<String>,
    /// `decision`, else `action`, else `outcome` of the event.
    pub decision: Option<String>,
    pub category: Option<String>,
    /// Exact name or `prefix.*`.
    pub event: Option<String>,
    /// The session digest.
    pub session: Option<String>,
    pub request_id: Option<String>,
    pub limit: Option<u64>,
    /// Newest first.
    pub newest_first: bool,
}

/// An open index.
pub struct Index {
    db: Connection,
    dir: PathBuf,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("dir", &self.dir).finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY,
  ts TEXT NOT NULL,
  event TEXT NOT NULL,
  principal TEXT,
  server TEXT,
  tool TEXT,
  decision TEXT,
  category TEXT,
  session TEXT,
  request_id TEXT,
  segment INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  len INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_principal ON events (principal, ts);
CREATE INDEX IF NOT EXISTS events_session ON events (session, seq);
CREATE INDEX IF NOT EXISTS events_event ON events (event, ts);
CREATE INDEX IF NOT EXISTS events_tool ON events (server, tool, ts);
CREATE INDEX IF NOT EXISTS events_category ON events (category, ts);
";

fn db_err(e: rusqlite::Error) -> String {
    format!("audit index: {e}")
}

impl Index {
    /// Opens (creating) the index of a chain folder.
    pub fn open(dir: &Path) -> Result<Index, String> {
        let db = Connection::open(dir.join(INDEX)).map_err(db_err)?;
        // Derived data: losing the tail in a crash only means re-indexing it.
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;")
            .map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Index {
            db,
            dir: dir.to_path_buf(),
        })
    }

    fn position(&self) -> Result<(u64, u64), String> {
        let get = |k: &str| -> Result<u64, String> {
            self.db
                .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(db_err)
                .map(|v| v.unwrap_or(0).max(0) as u64)
        };
        Ok((get("segment")?, get("offset")?))
    }

    /// Indexes records written since the last call; returns how many.
    pub fn catch_up(&mut self) -> Result<u64, String> {
        let segs = segments(&self.dir)?;
        let (mut seg, mut offset) = self.position()?;
        // The chain was replaced or cut under the index: start over.
        let known = segs.iter().find(|(n, _)| *n == seg);
        let stale = seg != 0
            && match known {
                None => true,
                Some((_, p)) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) < offset,
            };
        if stale {
            self.db
                .execute_batch("DELETE FROM events; DELETE FROM meta;")
                .map_err(db_err)?;
            (seg, offset) = (0, 0);
        }
        let mut added = 0;
        let from = seg;
        for (n, path) in segs.iter().filter(|(n, _)| *n >= from) {
            let start = if *n == seg { offset } else { 0 };
            let (count, end) = self.index_segment(*n, path, start)?;
            added += count;
            (seg, offset) = (*n, end);
        }
        Ok(added)
    }

    fn index_segment(&mut self, n: u64, path: &Path, start: u64) -> Result<(u64, u64), String> {
        let mut f = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut r = BufReader::with_capacity(256 * 1024, f);
        let tx = self.db.transaction().map_err(db_err)?;
        let mut pos = start;
        let mut count = 0;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO events (seq, ts, event, principal, server, tool, decision, category, session, request_id, segment, offset, len)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(db_err)?;
            let mut line = String::new();
            loop {
                line.clear();
                let got = r
                    .read_line(&mut line)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                // Stop at the end or at a line still being written.
                if got == 0 || !line.ends_with('\n') {
                    break;
                }
                let len = got as u64;
                if let Ok(Value::Object(v)) = serde_json::from_str::<Value>(line.trim_end()) {
                    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                    let decision = s("decision").or_else(|| s("action")).or_else(|| s("outcome"));
                    let principal = v
                        .get("principal")
                        .and_then(|p| p.get("sub"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                        ins.execute(params![
                            seq as i64,
                            s("ts").unwrap_or_default(),
                            s("event").unwrap_or_default(),
                            principal,
                            s("upstream"),
                            s("tool"),
                            decision,
                            s("category"),
                            s("session"),
                            s("request_id"),
                            n as i64,
                            pos as i64,
                            len as i64
                        ])
                        .map_err(db_err)?;
                        count += 1;
                    }
                }
                pos += len;
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('segment', ?1), ('offset', ?2)",
                params![n as i64, pos as i64],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok((count, pos))
    }

    /// Records matching `f`, as their chain lines, read from the segments.
    pub fn query(&self, f: &Filter) -> Result<Vec<String>, String> {
        let mut sql = String::from("SELECT segment, offset, len FROM events WHERE 1=1");
        let mut args: Vec<String> = vec![];
        let mut eq = |col: &str, v: &Option<String>, op: &str| {
            if let Some(v) = v {
                args.push(v.clone());
                sql.push_str(&format!(" AND {col} {op} ?{}", args.len()));
            }
        };
        eq("ts", &f.since, ">=");
        eq("ts", &f.until, "<");
        eq("principal", &f.principal, "=");
        eq("server", &f.server, "=");
        eq("tool", &f.tool, "=");
        eq("decision", &f.decision, "=");
        eq("category", &f.category, "=");
        eq("session", &f.session, "=");
        eq("request_id", &f.request_id, "=");
        match f.event.as_deref().map(|e| (e, e.strip_suffix(".*"))) {
            Some((_, Some(prefix))) => {
                // `prefix.` as a range keeps the index usable (no LIKE escaping).
                args.push(format!("{prefix}."));
                args.push(format!("{prefix}/"));
                sql.push_str(&format!(
                    " AND event >= ?{} AND event < ?{}",
                    args.len() - 1,
                    args.len()
                ));
            }
            Some((e, None)) => {
                args.push(e.to_owned());
                sql.push_str(&format!(" AND event = ?{}", args.len()));
            }
            None => {}
        }
        sql.push_str(if f.newest_first {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq"
        });
        if let Some(l) = f.limit {
            sql.push_str(&format!(" LIMIT {}", l.min(i64::MAX as u64)));
        }
        let mut st = self.db.prepare(&sql).map_err(db_err)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(db_err)?;
        let mut out = vec![];
        let mut open: Option<(i64, File)> = None;
        for row in rows {
            let (seg, off, len) = row.map_err(db_err)?;
            if open.as_ref().is_none_or(|(s, _)| *s != seg) {
                let path = self.dir.join(segment_name(seg.max(0) as u64));
                match File::open(&path) {
                    Ok(file) => open = Some((seg, file)),
                    // Removed by retention: its rows are skipped, the rest answered.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        open = None;
                        continue;
                    }
                    Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
                }
            }
            if let Some((_, file)) = &open {
                out.push(read_at(file, off.max(0) as u64, len.clamp(0, 16 << 20) as usize)?);
            }
        }
        Ok(out)
    }

    /// Records indexed.
    pub fn count(&self) -> Result<u64, String> {
        self.db
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(db_err)
    }
}

fn read_at(file: &File, off: u64, len: usize) -> Result<String, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off)
        .map_err(|e| format!("audit: record outside its segment (reindex): {e}"))?;
    let s = String::from_utf8(buf).map_err(|_| "audit: record is not UTF-8".to_owned())?;
    Ok(s.trim_end_matches('\n').to_owned())
}
