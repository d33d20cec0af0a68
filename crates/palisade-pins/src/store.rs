//! SQLite persistence: every observed version, an append-only approval history,
//! and quarantines. One file is shared by the gateway and the admin CLI; the
//! gateway notices CLI writes through [`PinStore::data_version`].

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;

use crate::canonical::{canonical_string, digest_of};
use crate::diff::{pretty, unified};
use crate::{
    Approval, ApprovalAction, Decision, Digest, ItemKind, Mode, Observation, ParseError, Pin, PinError, Snapshot,
    State, decide,
};

/// The newest schema this build reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// Who trust-on-first-use approvals are recorded as.
const TOFU_ACTOR: &str = "tofu";

/// How long a writer waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE versions (
    upstream    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('tool', 'instructions')),
    name        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    definition  TEXT NOT NULL,
    findings    TEXT NOT NULL,
    high_risk   INTEGER NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    held_state  TEXT,
    PRIMARY KEY (upstream, kind, name, digest)
);
CREATE TABLE items (
    upstream      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    latest_digest TEXT NOT NULL,
    mode          TEXT NOT NULL CHECK (mode IN ('approve', 'tofu', 'off')),
    first_seen    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    PRIMARY KEY (upstream, kind, name),
    FOREIGN KEY (upstream, kind, name, latest_digest) REFERENCES versions (upstream, kind, name, digest)
);
CREATE TABLE approvals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    upstream     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    digest       TEXT NOT NULL,
    approved_by  TEXT NOT NULL,
    approved_at  INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL,
    action       TEXT NOT NULL CHECK (action IN ('approve', 'tofu', 'rollback')),
    FOREIGN KEY (upstream, kind, name, digest) REFERENCES versions (upstream, kind, name, digest)
);
CREATE INDEX approvals_by_item ON approvals (upstream, kind, name, id);
CREATE TABLE quarantines (
    upstream       TEXT NOT NULL,
    scope          TEXT NOT NULL CHECK (scope IN ('server', 'item')),
    name           TEXT NOT NULL,
    quarantined_by TEXT NOT NULL,
    reason         TEXT NOT NULL,
    quarantined_at INTEGER NOT NULL,
    PRIMARY KEY (upstream, scope, name)
);
CREATE TABLE quarantine_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    action   TEXT NOT NULL CHECK (action IN ('quarantine', 'release')),
    upstream TEXT NOT NULL,
    scope    TEXT NOT NULL,
    name     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    reason   TEXT NOT NULL,
    at       INTEGER NOT NULL
);
";

const SELECT_APPROVAL: &str =
    "SELECT upstream, kind, name, digest, approved_by, approved_at, acknowledged, action FROM approvals";

const SELECT_ITEM: &str = "SELECT i.upstream, i.kind, i.name, i.latest_digest, i.mode, i.first_seen, i.last_seen,
        v.high_risk, v.findings
    FROM items i JOIN versions v
      ON v.upstream = i.upstream AND v.kind = i.kind AND v.name = i.name AND v.digest = i.latest_digest";

/// Pin database shared by the gateway and the CLI. Methods block; call them
/// from `spawn_blocking` in async code.
pub struct PinStore {
    conn: Mutex<Connection>,
}

/// A quarantine in force: the whole server (`name` = None) or one item name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quarantine {
    /// The upstream server's configured name.
    pub upstream: String,
    /// The item name, or None for the whole server.
    pub name: Option<String>,
    /// Who quarantined it.
    pub by: String,
    /// Why, as the admin wrote it.
    pub reason: String,
    /// When, in Unix seconds.
    pub at_unix: i64,
}

/// Everything an admin needs to decide about one item.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ItemStatus {
    /// The upstream server's configured name.
    pub upstream: String,
    /// Tool or instructions.
    pub kind: ItemKind,
    /// Tool name; "" for instructions.
    pub name: String,
    /// The mode the item was last observed under.
    pub mode: Mode,
    /// State of the latest observed version under that mode.
    pub state: State,
    /// The latest observed version.
    pub latest: Digest,
    /// The approval in force, if any.
    pub approved: Option<Approval>,
    /// The quarantine that applies (item first, then server), if any.
    pub quarantine: Option<Quarantine>,
    /// The latest version's scan had a high-severity finding.
    pub high_risk: bool,
    /// The latest version's scanner findings.
    pub findings: Value,
    /// When the item was first seen, in Unix seconds.
    pub first_seen_unix: i64,
    /// When the item was last seen, in Unix seconds.
    pub last_seen_unix: i64,
}

/// One stored version of an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The version's digest.
    pub digest: Digest,
    /// Its scan had a high-severity finding (as of the last time it was served).
    pub high_risk: bool,
    /// First served, in Unix seconds.
    pub first_seen_unix: i64,
    /// Last served, in Unix seconds.
    pub last_seen_unix: i64,
}

/// Why [`PinStore::approve_held`] left an item held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The item or its server is quarantined.
    Quarantined,
    /// High-risk findings and the call did not acknowledge them.
    FindingsNotAcknowledged,
}

/// An item [`PinStore::approve_held`] did not approve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The upstream server's configured name.
    pub upstream: String,
    /// Tool or instructions.
    pub kind: ItemKind,
    /// Tool name; "" for instructions.
    pub name: String,
    /// The latest observed version, which stays held.
    pub digest: Digest,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// What a bulk approval did: the new approvals and the items left held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApproveHeldReport {
    /// New approval rows.
    pub approved: Vec<Approval>,
    /// Items that still need attention.
    pub skipped: Vec<Skipped>,
}

#[derive(Serialize)]
struct ExportItem {
    #[serde(flatten)]
    status: ItemStatus,
    versions: Vec<VersionInfo>,
    approvals: Vec<Approval>,
}

#[derive(Default, Serialize)]
struct ExportServer {
    quarantine: Option<Quarantine>,
    item_quarantines: Vec<Quarantine>,
    items: Vec<ExportItem>,
}

#[derive(Serialize)]
struct Export {
    format: &'static str,
    schema_version: i64,
    servers: BTreeMap<String, ExportServer>,
}

impl From<rusqlite::Error> for PinError {
    /// rusqlite errors carry SQLite's message, never the statement text.
    fn from(e: rusqlite::Error) -> Self {
        PinError::Db(e.to_string())
    }
}

fn parse_column<T: std::str::FromStr<Err = ParseError>>(value: ValueRef<'_>) -> FromSqlResult<T> {
    value
        .as_str()?
        .parse()
        .map_err(|e: ParseError| FromSqlError::Other(Box::new(e)))
}

/// Types stored as their text form (`Display`/`as_str` out, `FromStr` in).
macro_rules! text_column {
    ($($t:ty => $to:expr),* $(,)?) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from($to(self)))
            }
        }

        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                parse_column(value)
            }
        }
    )*};
}

text_column! {
    Digest => |d: &Digest| d.to_string(),
    ItemKind => |k: &ItemKind| k.as_str(),
    Mode => |m: &Mode| m.as_str(),
    ApprovalAction => |a: &ApprovalAction| a.as_str(),
}

/// Creates the file owner-only before SQLite touches it; refuses symlinks.
fn prepare_file(path: &Path) -> Result<(), PinError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(PinError::Symlink(path.display().to_string())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => create_private(path),
        Err(e) => Err(PinError::Io(e.to_string())),
    }
}

fn create_private(path: &Path) -> Result<(), PinError> {
    let mut opts = OpenOptions::new();
    // create_new (O_EXCL) also refuses a symlink planted since the check.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(PinError::Symlink(path.display().to_string())),
            _ => Ok(()),
        },
        Err(e) => Err(PinError::Io(e.to_string())),
    }
}

fn migrate(conn: &mut Connection) -> Result<(), PinError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(PinError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(PinError::Db(format!("unknown pin store schema version {found}")));
    }
    if found == 0 {
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

fn approval_from_row(row: &Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        upstream: row.get(0)?,
        kind: row.get(1)?,
        name: row.get(2)?,
        digest: row.get(3)?,
        by: row.get(4)?,
        at_unix: row.get(5)?,
        acknowledged_findings: row.get(6)?,
        action: row.get(7)?,
    })
}

fn pin_of(a: &Approval) -> Pin {
    Pin {
        digest: a.digest,
        acknowledged: a.acknowledged_findings,
    }
}

/// Findings are stored as JSON text; a value serde_json cannot read back
/// (deeper than its limit) is returned as the raw text rather than failing.
fn parse_findings(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

fn current_approval(
    conn: &Connection,
    upstream: &str,
    kind: ItemKind,
    name: &str,
) -> Result<Option<Approval>, PinError> {
    let sql = format!("{SELECT_APPROVAL} WHERE upstream = ?1 AND kind = ?2 AND name = ?3 ORDER BY id DESC LIMIT 1");
    let mut stmt = conn.prepare_cached(&sql)?;
    Ok(stmt
        .query_row(params![upstream, kind, name], approval_from_row)
        .optional()?)
}

fn approval_history(conn: &Connection, upstream: &str, kind: ItemKind, name: &str) -> Result<Vec<Approval>, PinError> {
    let sql = format!("{SELECT_APPROVAL} WHERE upstream = ?1 AND kind = ?2 AND name = ?3 ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![upstream, kind, name], approval_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The quarantine that applies to an item name: its own first, else its server's.
fn quarantine_of(conn: &Connection, upstream: &str, name: &str) -> Result<Option<Quarantine>, PinError> {
    let mut stmt = conn.prepare_cached(
        "SELECT upstream, scope, name, quarantined_by, reason, quarantined_at FROM quarantines
         WHERE upstream = ?1 AND ((scope = 'item' AND name = ?2) OR scope = 'server')
         ORDER BY scope = 'server' LIMIT 1",
    )?;
    Ok(stmt
        .query_row(params![upstream, name], quarantine_from_row)
        .optional()?)
}

fn quarantine_from_row(row: &Row<'_>) -> rusqlite::Result<Quarantine> {
    let scope: String = row.get(1)?;
    let name: String = row.get(2)?;
    Ok(Quarantine {
        upstream: row.get(0)?,
        name: (scope == "item").then_some(name),
        by: row.get(3)?,
        reason: row.get(4)?,
        at_unix: row.get(5)?,
    })
}

fn all_quarantines(conn: &Connection) -> Result<Vec<Quarantine>, PinError> {
    let mut stmt = conn.prepare_cached(
        "SELECT upstream, scope, name, quarantined_by, reason, quarantined_at FROM quarantines
         ORDER BY upstream, scope DESC, name",
    )?;
    let rows = stmt.query_map([], quarantine_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn latest_digest(conn: &Connection, upstream: &str, kind: ItemKind, name: &str) -> Result<Option<Digest>, PinError> {
    let mut stmt =
        conn.prepare_cached("SELECT latest_digest FROM items WHERE upstream = ?1 AND kind = ?2 AND name = ?3")?;
    Ok(stmt.query_row(params![upstream, kind, name], |r| r.get(0)).optional()?)
}

/// Whether the version exists, and if so whether it is high-risk.
fn version_high_risk(
    conn: &Connection,
    upstream: &str,
    kind: ItemKind,
    name: &str,
    digest: &Digest,
) -> Result<Option<bool>, PinError> {
    let mut stmt = conn.prepare_cached(
        "SELECT high_risk FROM versions WHERE upstream = ?1 AND kind = ?2 AND name = ?3 AND digest = ?4",
    )?;
    Ok(stmt
        .query_row(params![upstream, kind, name, digest], |r| r.get(0))
        .optional()?)
}

fn definition_text(
    conn: &Connection,
    upstream: &str,
    kind: ItemKind,
    name: &str,
    digest: &Digest,
) -> Result<Option<String>, PinError> {
    let mut stmt = conn.prepare_cached(
        "SELECT definition FROM versions WHERE upstream = ?1 AND kind = ?2 AND name = ?3 AND digest = ?4",
    )?;
    Ok(stmt
        .query_row(params![upstream, kind, name, digest], |r| r.get(0))
        .optional()?)
}

fn list_versions(conn: &Connection, upstream: &str, kind: ItemKind, name: &str) -> Result<Vec<VersionInfo>, PinError> {
    let mut stmt = conn.prepare_cached(
        "SELECT digest, high_risk, first_seen, last_seen FROM versions
         WHERE upstream = ?1 AND kind = ?2 AND name = ?3 ORDER BY first_seen, digest",
    )?;
    let rows = stmt.query_map(params![upstream, kind, name], |r| {
        Ok(VersionInfo {
            digest: r.get(0)?,
            high_risk: r.get(1)?,
            first_seen_unix: r.get(2)?,
            last_seen_unix: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[allow(clippy::too_many_arguments)]
fn insert_approval(
    conn: &Connection,
    upstream: &str,
    kind: ItemKind,
    name: &str,
    digest: &Digest,
    by: &str,
    at_unix: i64,
    acknowledged_findings: bool,
    action: ApprovalAction,
) -> Result<Approval, PinError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO approvals (upstream, kind, name, digest, approved_by, approved_at, acknowledged, action)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    stmt.execute(params![
        upstream,
        kind,
        name,
        digest,
        by,
        at_unix,
        acknowledged_findings,
        action
    ])?;
    Ok(Approval {
        upstream: upstream.to_owned(),
        kind,
        name: name.to_owned(),
        digest: *digest,
        by: by.to_owned(),
        at_unix,
        acknowledged_findings,
        action,
    })
}

/// Records the version and makes it the item's latest.
fn record_observation(conn: &Connection, mode: Mode, obs: &Observation, now_unix: i64) -> Result<(), PinError> {
    let definition = canonical_string(&obs.definition);
    let findings = canonical_string(&obs.findings);
    conn.prepare_cached(
        "INSERT INTO versions (upstream, kind, name, digest, definition, findings, high_risk, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (upstream, kind, name, digest) DO UPDATE SET
             findings = excluded.findings, high_risk = excluded.high_risk,
             last_seen = MAX(last_seen, excluded.last_seen)",
    )?
    .execute(params![
        obs.upstream,
        obs.kind,
        obs.name,
        obs.digest,
        definition,
        findings,
        obs.high_risk,
        now_unix
    ])?;
    conn.prepare_cached(
        "INSERT INTO items (upstream, kind, name, latest_digest, mode, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (upstream, kind, name) DO UPDATE SET
             latest_digest = excluded.latest_digest, mode = excluded.mode,
             last_seen = MAX(last_seen, excluded.last_seen)",
    )?
    .execute(params![obs.upstream, obs.kind, obs.name, obs.digest, mode, now_unix])?;
    Ok(())
}

/// Remembers that this version was held in `state`; true if that is news.
fn mark_held(conn: &Connection, obs: &Observation, state: State) -> Result<bool, PinError> {
    let changed = conn
        .prepare_cached(
            "UPDATE versions SET held_state = ?5
             WHERE upstream = ?1 AND kind = ?2 AND name = ?3 AND digest = ?4
               AND (held_state IS NULL OR held_state <> ?5)",
        )?
        .execute(params![obs.upstream, obs.kind, obs.name, obs.digest, state.as_str()])?;
    Ok(changed > 0)
}

/// Records one observation and decides its state, inside the caller's transaction.
fn observe_in(conn: &Connection, mode: Mode, obs: &Observation, now_unix: i64) -> Result<Decision, PinError> {
    record_observation(conn, mode, obs, now_unix)?;
    let quarantined = quarantine_of(conn, &obs.upstream, &obs.name)?.is_some();
    let mut approved = current_approval(conn, &obs.upstream, obs.kind, &obs.name)?.map(|a| pin_of(&a));
    let auto_pinned = mode == Mode::Tofu && approved.is_none() && !obs.high_risk && !quarantined;
    if auto_pinned {
        let a = insert_approval(
            conn,
            &obs.upstream,
            obs.kind,
            &obs.name,
            &obs.digest,
            TOFU_ACTOR,
            now_unix,
            false,
            ApprovalAction::Tofu,
        )?;
        approved = Some(pin_of(&a));
    }
    let state = decide(mode, quarantined, approved, &obs.digest, obs.high_risk);
    let newly_held = state.is_held() && mark_held(conn, obs, state)?;
    Ok(Decision {
        state,
        digest: obs.digest,
        approved: approved.map(|p| p.digest),
        newly_held,
        auto_pinned,
    })
}

fn list_items(conn: &Connection, upstream: Option<&str>) -> Result<Vec<ItemStatus>, PinError> {
    let sql = format!("{SELECT_ITEM} WHERE ?1 IS NULL OR i.upstream = ?1 ORDER BY i.upstream, i.kind, i.name");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![upstream], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, ItemKind>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Digest>(3)?,
            r.get::<_, Mode>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, bool>(7)?,
            r.get::<_, String>(8)?,
        ))
    })?;
    let mut items = Vec::new();
    for row in rows {
        let (upstream, kind, name, latest, mode, first_seen_unix, last_seen_unix, high_risk, findings) = row?;
        let approved = current_approval(conn, &upstream, kind, &name)?;
        let quarantine = quarantine_of(conn, &upstream, &name)?;
        let state = decide(
            mode,
            quarantine.is_some(),
            approved.as_ref().map(pin_of),
            &latest,
            high_risk,
        );
        items.push(ItemStatus {
            upstream,
            kind,
            name,
            mode,
            state,
            latest,
            approved,
            quarantine,
            high_risk,
            findings: parse_findings(findings),
            first_seen_unix,
            last_seen_unix,
        });
    }
    Ok(items)
}

/// Whether a bulk approval should touch the item: its latest version is not
/// covered by the approval in force.
fn needs_approval(item: &ItemStatus) -> bool {
    match &item.approved {
        None => true,
        Some(a) => a.digest != item.latest || (item.high_risk && !a.acknowledged_findings),
    }
}

fn scope_and_name(name: Option<&str>) -> (&'static str, &str) {
    match name {
        None => ("server", ""),
        Some(n) => ("item", n),
    }
}

fn log_quarantine(
    conn: &Connection,
    action: &str,
    upstream: &str,
    name: Option<&str>,
    by: &str,
    reason: &str,
    now_unix: i64,
) -> Result<(), PinError> {
    let (scope, name) = scope_and_name(name);
    conn.prepare_cached(
        "INSERT INTO quarantine_log (action, upstream, scope, name, actor, reason, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![action, upstream, scope, name, by, reason, now_unix])?;
    Ok(())
}

impl PinStore {
    /// Opens (creating if needed) the pin database at `path`.
    ///
    /// A new file is created mode 0600 before SQLite opens it; a symlink is
    /// refused; a schema from a newer Palisade is refused rather than misread.
    pub fn open(path: &Path) -> Result<Self, PinError> {
        prepare_file(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        Self::init(conn)
    }

    /// A private in-memory store, for tests and ephemeral gateways.
    pub fn in_memory() -> Result<Self, PinError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, PinError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrate(&mut conn)?;
        Ok(PinStore { conn: Mutex::new(conn) })
    }

    /// The connection; a panic in another thread cannot leave a transaction
    /// open (it rolls back on drop), so a poisoned lock is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a served version and decides whether it may be used.
    ///
    /// In tofu mode the first clean sighting of an item (no approval yet, not
    /// quarantined) is approved as "tofu". `newly_held` is true only the first
    /// time this digest is seen in this held state, so callers alert once.
    pub fn observe(&self, mode: Mode, obs: &Observation, now_unix: i64) -> Result<Decision, PinError> {
        let mut decisions = self.observe_many(mode, std::slice::from_ref(obs), now_unix)?;
        decisions.pop().ok_or(PinError::NotObserved)
    }

    /// [`observe`](Self::observe) for a whole `tools/list` answer in one
    /// transaction (one disk sync instead of one per tool); all or nothing.
    pub fn observe_many(
        &self,
        mode: Mode,
        observations: &[Observation],
        now_unix: i64,
    ) -> Result<Vec<Decision>, PinError> {
        if observations.iter().any(|o| digest_of(&o.definition) != o.digest) {
            return Err(PinError::DigestMismatch);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let decisions = observations
            .iter()
            .map(|obs| observe_in(&tx, mode, obs, now_unix))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(decisions)
    }

    /// Current approvals and quarantines, read consistently, for the hot path.
    pub fn snapshot(&self) -> Result<Snapshot, PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut snap = Snapshot::default();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT a.upstream, a.kind, a.name, a.digest, a.acknowledged FROM approvals a
                 WHERE a.id = (SELECT MAX(b.id) FROM approvals b
                               WHERE b.upstream = a.upstream AND b.kind = a.kind AND b.name = a.name)",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, ItemKind>(1)?,
                    r.get::<_, String>(2)?,
                    Pin {
                        digest: r.get(3)?,
                        acknowledged: r.get(4)?,
                    },
                ))
            })?;
            for row in rows {
                let (upstream, kind, name, pin) = row?;
                snap.insert_pin(&upstream, kind, name, pin);
            }
        }
        for q in all_quarantines(&tx)? {
            snap.insert_quarantine(&q.upstream, q.name);
        }
        tx.commit()?;
        Ok(snap)
    }

    /// SQLite's `data_version`: changes when another connection (the CLI) commits,
    /// telling the gateway to rebuild its [`Snapshot`].
    pub fn data_version(&self) -> Result<i64, PinError> {
        Ok(self.lock().query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// Approves one version (`digest` None = the latest observed).
    ///
    /// High-risk versions need `acknowledge_findings`; quarantined items must be
    /// released first. Approving the version already in force adds no row.
    #[allow(clippy::too_many_arguments)]
    pub fn approve(
        &self,
        upstream: &str,
        kind: ItemKind,
        name: &str,
        digest: Option<&Digest>,
        by: &str,
        acknowledge_findings: bool,
        now_unix: i64,
    ) -> Result<Approval, PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if quarantine_of(&tx, upstream, name)?.is_some() {
            return Err(PinError::Quarantined);
        }
        let target = match digest {
            Some(d) => *d,
            None => latest_digest(&tx, upstream, kind, name)?.ok_or(PinError::NotObserved)?,
        };
        let high_risk = version_high_risk(&tx, upstream, kind, name, &target)?.ok_or(PinError::NotObserved)?;
        if high_risk && !acknowledge_findings {
            return Err(PinError::FindingsNotAcknowledged);
        }
        if let Some(current) = current_approval(&tx, upstream, kind, name)?
            && current.digest == target
            && (!high_risk || current.acknowledged_findings)
        {
            return Ok(current);
        }
        let approval = insert_approval(
            &tx,
            upstream,
            kind,
            name,
            &target,
            by,
            now_unix,
            high_risk && acknowledge_findings,
            ApprovalAction::Approve,
        )?;
        tx.commit()?;
        Ok(approval)
    }

    /// Approves the latest version of every item it does not cover, on one
    /// upstream or everywhere; quarantined and (unless acknowledged) high-risk
    /// items are skipped and reported.
    pub fn approve_held(
        &self,
        upstream: Option<&str>,
        by: &str,
        acknowledge_findings: bool,
        now_unix: i64,
    ) -> Result<ApproveHeldReport, PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut report = ApproveHeldReport::default();
        for item in list_items(&tx, upstream)? {
            if !needs_approval(&item) {
                continue;
            }
            let skip = if item.quarantine.is_some() {
                Some(SkipReason::Quarantined)
            } else if item.high_risk && !acknowledge_findings {
                Some(SkipReason::FindingsNotAcknowledged)
            } else {
                None
            };
            match skip {
                Some(reason) => report.skipped.push(Skipped {
                    upstream: item.upstream,
                    kind: item.kind,
                    name: item.name,
                    digest: item.latest,
                    reason,
                }),
                None => report.approved.push(insert_approval(
                    &tx,
                    &item.upstream,
                    item.kind,
                    &item.name,
                    &item.latest,
                    by,
                    now_unix,
                    item.high_risk,
                    ApprovalAction::Approve,
                )?),
            }
        }
        tx.commit()?;
        Ok(report)
    }

    /// Puts an earlier approved version back in force by appending an approval
    /// row (`to` None = the approved version before the current one).
    ///
    /// The rolled-back-to row keeps that version's earlier acknowledgement.
    pub fn rollback(
        &self,
        upstream: &str,
        kind: ItemKind,
        name: &str,
        to: Option<&Digest>,
        by: &str,
        now_unix: i64,
    ) -> Result<Approval, PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let history = approval_history(&tx, upstream, kind, name)?;
        let current = history.last().ok_or(PinError::NothingToRollBack)?;
        let target = match to {
            Some(d) if *d == current.digest => return Err(PinError::NothingToRollBack),
            Some(d) => history
                .iter()
                .rev()
                .find(|a| a.digest == *d)
                .ok_or(PinError::NeverApproved)?,
            None => history
                .iter()
                .rev()
                .find(|a| a.digest != current.digest)
                .ok_or(PinError::NothingToRollBack)?,
        };
        let approval = insert_approval(
            &tx,
            upstream,
            kind,
            name,
            &target.digest,
            by,
            now_unix,
            target.acknowledged_findings,
            ApprovalAction::Rollback,
        )?;
        tx.commit()?;
        Ok(approval)
    }

    /// Holds an item name (any kind; "" is the instructions) or, with `name`
    /// None, the whole server, whatever the mode and approvals. Re-quarantining
    /// updates who/why/when.
    pub fn quarantine(
        &self,
        upstream: &str,
        name: Option<&str>,
        by: &str,
        reason: &str,
        now_unix: i64,
    ) -> Result<(), PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (scope, item) = scope_and_name(name);
        tx.prepare_cached(
            "INSERT INTO quarantines (upstream, scope, name, quarantined_by, reason, quarantined_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (upstream, scope, name) DO UPDATE SET
                 quarantined_by = excluded.quarantined_by, reason = excluded.reason,
                 quarantined_at = excluded.quarantined_at",
        )?
        .execute(params![upstream, scope, item, by, reason, now_unix])?;
        log_quarantine(&tx, "quarantine", upstream, name, by, reason, now_unix)?;
        tx.commit()?;
        Ok(())
    }

    /// Lifts a quarantine; false if there was none. A server release does not
    /// lift item quarantines on that server (and vice versa).
    pub fn release(&self, upstream: &str, name: Option<&str>, by: &str, now_unix: i64) -> Result<bool, PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (scope, item) = scope_and_name(name);
        let removed = tx
            .prepare_cached("DELETE FROM quarantines WHERE upstream = ?1 AND scope = ?2 AND name = ?3")?
            .execute(params![upstream, scope, item])?;
        if removed > 0 {
            log_quarantine(&tx, "release", upstream, name, by, "", now_unix)?;
        }
        tx.commit()?;
        Ok(removed > 0)
    }

    /// Every quarantine in force, servers before items.
    pub fn quarantines(&self) -> Result<Vec<Quarantine>, PinError> {
        all_quarantines(&self.lock())
    }

    /// One status per observed item, on one upstream or all, sorted.
    pub fn items(&self, upstream: Option<&str>) -> Result<Vec<ItemStatus>, PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let items = list_items(&tx, upstream)?;
        tx.commit()?;
        Ok(items)
    }

    /// The approval history of an item, oldest first.
    pub fn history(&self, upstream: &str, kind: ItemKind, name: &str) -> Result<Vec<Approval>, PinError> {
        approval_history(&self.lock(), upstream, kind, name)
    }

    /// Every stored version of an item, oldest first.
    pub fn versions(&self, upstream: &str, kind: ItemKind, name: &str) -> Result<Vec<VersionInfo>, PinError> {
        list_versions(&self.lock(), upstream, kind, name)
    }

    /// A stored definition pretty-printed with sorted keys (`digest` None = latest).
    pub fn definition(
        &self,
        upstream: &str,
        kind: ItemKind,
        name: &str,
        digest: Option<&Digest>,
    ) -> Result<String, PinError> {
        let text = {
            let conn = self.lock();
            let target = match digest {
                Some(d) => *d,
                None => latest_digest(&conn, upstream, kind, name)?.ok_or(PinError::NotObserved)?,
            };
            definition_text(&conn, upstream, kind, name, &target)?.ok_or(PinError::NotObserved)?
        };
        Ok(pretty(&text))
    }

    /// Unified diff from the approved definition to the latest observed one
    /// (against empty if never approved); None when they are the same.
    pub fn diff(&self, upstream: &str, kind: ItemKind, name: &str) -> Result<Option<String>, PinError> {
        let (approved, latest, old, new) = {
            let conn = self.lock();
            let latest = latest_digest(&conn, upstream, kind, name)?.ok_or(PinError::NotObserved)?;
            let approved = current_approval(&conn, upstream, kind, name)?.map(|a| a.digest);
            if approved == Some(latest) {
                return Ok(None);
            }
            let new = definition_text(&conn, upstream, kind, name, &latest)?.ok_or(PinError::NotObserved)?;
            let old = match &approved {
                Some(d) => definition_text(&conn, upstream, kind, name, d)?.unwrap_or_default(),
                None => String::new(),
            };
            (approved, latest, old, new)
        };
        let old_header = approved.map_or_else(|| "approved (none)".to_owned(), |d| format!("approved {}", d.short()));
        let new_header = format!("observed {}", latest.short());
        Ok(unified(&pretty(&old), &pretty(&new), &old_header, &new_header))
    }

    /// The whole inventory as JSON: servers, their quarantines, and per item the
    /// status, stored versions and approval history (who approved what, when).
    pub fn export(&self) -> Result<Value, PinError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut servers: BTreeMap<String, ExportServer> = BTreeMap::new();
        for q in all_quarantines(&tx)? {
            let server = servers.entry(q.upstream.clone()).or_default();
            if q.name.is_some() {
                server.item_quarantines.push(q);
            } else {
                server.quarantine = Some(q);
            }
        }
        for status in list_items(&tx, None)? {
            let versions = list_versions(&tx, &status.upstream, status.kind, &status.name)?;
            let approvals = approval_history(&tx, &status.upstream, status.kind, &status.name)?;
            servers
                .entry(status.upstream.clone())
                .or_default()
                .items
                .push(ExportItem {
                    status,
                    versions,
                    approvals,
                });
        }
        tx.commit()?;
        let export = Export {
            format: "palisade-pins",
            schema_version: SCHEMA_VERSION,
            servers,
        };
        serde_json::to_value(export).map_err(|e| PinError::Db(format!("export failed: {e}")))
    }
}

#[cfg(test)]
mod tests;
