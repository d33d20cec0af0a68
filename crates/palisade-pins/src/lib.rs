//! Tool pinning for the gateway: protection against "rug pulls", where an MCP
//! server quietly changes a tool's description or schema after it was trusted.
//!
//! Each tool (and each server's `instructions`) is reduced to a canonical form
//! and hashed ([`pin_tool`], [`pin_instructions`]). [`PinStore`] keeps every
//! observed version, the append-only approval history and quarantines in SQLite;
//! [`Snapshot`] is an in-memory copy the gateway consults on the hot path.

mod canonical;
mod diff;
mod store;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use canonical::{
    PINNED_FIELDS, canonical_bytes, canonical_tool, digest_of, instructions_definition, pin_instructions, pin_tool,
};
pub use diff::pretty_canonical;
pub use store::{ApproveHeldReport, ItemStatus, PinStore, Quarantine, SkipReason, Skipped};

/// How an upstream's tools are pinned, chosen per upstream in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// New or changed items are held until an admin approves them.
    Approve,
    /// Trust on first use: first sight pins automatically, a later change holds.
    Tofu,
    /// No pinning: everything is allowed (quarantine still applies).
    Off,
}

impl Mode {
    /// The lowercase name used in config, the database and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Approve => "approve",
            Mode::Tofu => "tofu",
            Mode::Off => "off",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(Mode::Approve),
            "tofu" => Ok(Mode::Tofu),
            "off" => Ok(Mode::Off),
            _ => Err(ParseError("pin mode (expected approve, tofu or off)")),
        }
    }
}

/// What is pinned: a tool, or the server's `instructions` (name "").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// A tool from `tools/list`.
    Tool,
    /// The `instructions` string from `initialize`.
    Instructions,
}

impl ItemKind {
    /// The lowercase name used in the database and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Tool => "tool",
            ItemKind::Instructions => "instructions",
        }
    }
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ItemKind {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tool" => Ok(ItemKind::Tool),
            "instructions" => Ok(ItemKind::Instructions),
            _ => Err(ParseError("item kind (expected tool or instructions)")),
        }
    }
}

/// A value that could not be parsed; names what was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError(&'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// SHA-256 of a canonical definition; shown and stored as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The first 12 hex digits, for headers and log lines.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = ParseError;

    /// Accepts exactly 64 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(ParseError("digest (expected 64 hex digits)"));
        }
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One item as seen in a server's answer, ready to be recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The upstream server's configured name.
    pub upstream: String,
    /// Tool or instructions.
    pub kind: ItemKind,
    /// Tool name; "" for instructions.
    pub name: String,
    /// Digest of `definition` ([`digest_of`]); checked by [`PinStore::observe`].
    pub digest: Digest,
    /// The canonical object ([`canonical_tool`] or [`instructions_definition`]).
    pub definition: serde_json::Value,
    /// Opaque JSON array from the scanner, kept for the admin.
    pub findings: serde_json::Value,
    /// The scan found something high-severity: hold until acknowledged.
    pub high_risk: bool,
}

impl Observation {
    /// Builds the observation of a raw tool object; `None` when it has no string `name`.
    pub fn tool(
        upstream: impl Into<String>,
        tool: &serde_json::Value,
        findings: serde_json::Value,
        high_risk: bool,
    ) -> Option<Self> {
        let name = tool.get("name")?.as_str()?.to_owned();
        let definition = canonical_tool(tool);
        Some(Observation {
            upstream: upstream.into(),
            kind: ItemKind::Tool,
            name,
            digest: digest_of(&definition),
            definition,
            findings,
            high_risk,
        })
    }

    /// Builds the observation of a server's `instructions` text.
    pub fn instructions(upstream: impl Into<String>, text: &str, findings: serde_json::Value, high_risk: bool) -> Self {
        let definition = instructions_definition(text);
        Observation {
            upstream: upstream.into(),
            kind: ItemKind::Instructions,
            name: String::new(),
            digest: digest_of(&definition),
            definition,
            findings,
            high_risk,
        }
    }
}

/// Whether an item may be shown to clients and called, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The served version is the approved one.
    Approved,
    /// Never approved; waiting for an admin (mode approve).
    HeldNew,
    /// Differs from the approved version (a possible rug pull).
    HeldChanged,
    /// The scan found a high-risk issue that no admin has acknowledged.
    HeldFinding,
    /// An admin quarantined the item or its whole server.
    Quarantined,
    /// Pinning is off for the server.
    Unpinned,
}

impl State {
    /// The item may be listed and called.
    pub fn is_allowed(&self) -> bool {
        matches!(self, State::Approved | State::Unpinned)
    }

    /// Waiting for an admin decision (not a quarantine, which the admin chose).
    pub fn is_held(&self) -> bool {
        matches!(self, State::HeldNew | State::HeldChanged | State::HeldFinding)
    }

    /// Short human text for logs, audit records and error messages.
    pub fn reason(&self) -> &'static str {
        match self {
            State::Approved => "approved",
            State::HeldNew => "not yet approved; held until an admin approves",
            State::HeldChanged => "changed since approval; held until an admin approves",
            State::HeldFinding => {
                "security scan found a high-risk issue; held until an admin approves with the finding acknowledged"
            }
            State::Quarantined => "quarantined by an admin",
            State::Unpinned => "pinning is off for this server",
        }
    }

    /// The snake_case name used in the database and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Approved => "approved",
            State::HeldNew => "held_new",
            State::HeldChanged => "held_changed",
            State::HeldFinding => "held_finding",
            State::Quarantined => "quarantined",
            State::Unpinned => "unpinned",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`PinStore::observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What the gateway should do with the item now.
    pub state: State,
    /// The observed digest.
    pub digest: Digest,
    /// The currently approved digest, if any (including one just auto-pinned).
    pub approved: Option<Digest>,
    /// First time this digest is seen in this held state: audit/alert once.
    pub newly_held: bool,
    /// Trust-on-first-use pinned this digest just now.
    pub auto_pinned: bool,
}

/// Who recorded an approval row and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalAction {
    /// An admin approved the version.
    Approve,
    /// Trust on first use pinned it automatically.
    Tofu,
    /// An admin rolled back to a previously approved version.
    Rollback,
}

impl ApprovalAction {
    /// The lowercase name used in the database and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalAction::Approve => "approve",
            ApprovalAction::Tofu => "tofu",
            ApprovalAction::Rollback => "rollback",
        }
    }
}

impl FromStr for ApprovalAction {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(ApprovalAction::Approve),
            "tofu" => Ok(ApprovalAction::Tofu),
            "rollback" => Ok(ApprovalAction::Rollback),
            _ => Err(ParseError("approval action")),
        }
    }
}

/// One row of the append-only approval history; the newest row is in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// The upstream server's configured name.
    pub upstream: String,
    /// Tool or instructions.
    pub kind: ItemKind,
    /// Tool name; "" for instructions.
    pub name: String,
    /// The approved version.
    pub digest: Digest,
    /// Who approved ("tofu" for automatic pins).
    pub by: String,
    /// When, in Unix seconds.
    pub at_unix: i64,
    /// The approver acknowledged high-risk findings of this version.
    pub acknowledged_findings: bool,
    /// Approve, tofu or rollback.
    pub action: ApprovalAction,
}

/// Why a pin operation failed.
///
/// `Db`, `Io` and `Symlink` carry details for logs and the CLI; use
/// [`PinError::client_message`] for anything a remote client sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// SQLite failed (detail for logs only; never contains SQL text).
    #[error("pin store database error: {0}")]
    Db(String),
    /// Creating or inspecting the database file failed.
    #[error("pin store file error: {0}")]
    Io(String),
    /// The database path is a symbolic link, which could redirect writes.
    #[error("refusing to open the pin store through a symbolic link: {0}")]
    Symlink(String),
    /// The database was written by a newer Palisade.
    #[error("pin store schema version {found} is newer than this build supports ({supported}); upgrade palisade")]
    SchemaTooNew {
        /// The file's `user_version`.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
    /// No such item, or no such version of it, has been observed.
    #[error("no such tool or version has been observed")]
    NotObserved,
    /// The version has high-risk findings and the approval did not acknowledge them.
    #[error("this version has high-risk scan findings; approve it with the findings acknowledged")]
    FindingsNotAcknowledged,
    /// There is no earlier approved version (or the target is already in force).
    #[error("there is no earlier approved version to roll back to")]
    NothingToRollBack,
    /// Rollback target was never approved for this item.
    #[error("that version was never approved, so it cannot be rolled back to")]
    NeverApproved,
    /// The item or its server is quarantined; release it before approving.
    #[error("the item or its server is quarantined; release it before approving")]
    Quarantined,
    /// The observation's digest is not the digest of its definition (caller bug).
    #[error("observation digest does not match its definition")]
    DigestMismatch,
}

impl PinError {
    /// Text safe to show a remote client: no paths, no database details.
    pub fn client_message(&self) -> &'static str {
        match self {
            PinError::Db(_) | PinError::Io(_) | PinError::Symlink(_) | PinError::SchemaTooNew { .. } => {
                "pin store unavailable"
            }
            PinError::NotObserved => "no such tool or version has been observed",
            PinError::FindingsNotAcknowledged => "high-risk findings must be acknowledged",
            PinError::NothingToRollBack => "nothing to roll back to",
            PinError::NeverApproved => "that version was never approved",
            PinError::Quarantined => "quarantined",
            PinError::DigestMismatch => "internal pinning error",
        }
    }
}

/// An approval in force: the digest, and whether high-risk findings were acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pin {
    pub(crate) digest: Digest,
    pub(crate) acknowledged: bool,
}

/// The one place the state rules live; used by the store and the snapshot alike.
///
/// An approval only covers findings if it acknowledged them: a version pinned
/// before the scanner flagged it is held as `HeldFinding` until acknowledged.
pub(crate) fn decide(mode: Mode, quarantined: bool, approved: Option<Pin>, digest: &Digest, high_risk: bool) -> State {
    if quarantined {
        return State::Quarantined;
    }
    if mode == Mode::Off {
        return State::Unpinned;
    }
    match approved {
        Some(pin) if pin.digest == *digest => {
            if high_risk && !pin.acknowledged {
                State::HeldFinding
            } else {
                State::Approved
            }
        }
        Some(_) => State::HeldChanged,
        None if high_risk => State::HeldFinding,
        None if mode == Mode::Approve => State::HeldNew,
        None => State::Approved,
    }
}

/// In-memory copy of approvals and quarantines, for lock-free hot-path checks.
///
/// Rebuild it with [`PinStore::snapshot`] after writes (or when
/// [`PinStore::data_version`] changes) and swap it in.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    servers: HashMap<String, ServerPins>,
}

#[derive(Clone, Debug, Default)]
struct ServerPins {
    quarantined: bool,
    quarantined_names: HashSet<String>,
    tools: HashMap<String, Pin>,
    instructions: HashMap<String, Pin>,
}

impl ServerPins {
    fn pin(&self, kind: ItemKind, name: &str) -> Option<Pin> {
        match kind {
            ItemKind::Tool => self.tools.get(name).copied(),
            ItemKind::Instructions => self.instructions.get(name).copied(),
        }
    }

    fn is_quarantined(&self, name: &str) -> bool {
        self.quarantined || self.quarantined_names.contains(name)
    }
}

impl Snapshot {
    /// The state of one served item; pure and allocation-free.
    ///
    /// In tofu mode an item with no approval evaluates as `Approved` on the
    /// assumption that [`PinStore::observe`] pins it; quarantine always wins.
    pub fn evaluate(
        &self,
        mode: Mode,
        upstream: &str,
        kind: ItemKind,
        name: &str,
        digest: &Digest,
        high_risk: bool,
    ) -> State {
        let server = self.servers.get(upstream);
        let quarantined = server.is_some_and(|s| s.is_quarantined(name));
        let approved = server.and_then(|s| s.pin(kind, name));
        decide(mode, quarantined, approved, digest, high_risk)
    }

    /// The approved digest in force for an item.
    pub fn approved(&self, upstream: &str, kind: ItemKind, name: &str) -> Option<Digest> {
        self.servers.get(upstream)?.pin(kind, name).map(|p| p.digest)
    }

    /// Whether the server (`name` = None) or an item name on it is quarantined.
    pub fn is_quarantined(&self, upstream: &str, name: Option<&str>) -> bool {
        self.servers.get(upstream).is_some_and(|s| match name {
            None => s.quarantined,
            Some(n) => s.is_quarantined(n),
        })
    }

    fn server_mut(&mut self, upstream: &str) -> &mut ServerPins {
        self.servers.entry(upstream.to_owned()).or_default()
    }

    pub(crate) fn insert_pin(&mut self, upstream: &str, kind: ItemKind, name: String, pin: Pin) {
        let server = self.server_mut(upstream);
        match kind {
            ItemKind::Tool => server.tools.insert(name, pin),
            ItemKind::Instructions => server.instructions.insert(name, pin),
        };
    }

    pub(crate) fn insert_quarantine(&mut self, upstream: &str, name: Option<String>) {
        let server = self.server_mut(upstream);
        match name {
            None => server.quarantined = true,
            Some(n) => {
                server.quarantined_names.insert(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: Digest = Digest([1; 32]);
    const D2: Digest = Digest([2; 32]);

    fn pinned(d: Digest, acknowledged: bool) -> Option<Pin> {
        Some(Pin {
            digest: d,
            acknowledged,
        })
    }

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest([0xab; 32]);
        let s = d.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, "ab".repeat(32));
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert_eq!(s.to_uppercase().parse::<Digest>().unwrap(), d);
        assert_eq!(d.short(), "abababababab");
        assert!("abab".parse::<Digest>().is_err());
        assert!("zz".repeat(32).parse::<Digest>().is_err());
        assert!(format!("{s}00").parse::<Digest>().is_err());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"nothex\"").is_err());
    }

    #[test]
    fn enums_serialize_as_documented() {
        assert_eq!(serde_json::to_value(Mode::Tofu).unwrap(), "tofu");
        assert_eq!(serde_json::from_value::<Mode>("approve".into()).unwrap(), Mode::Approve);
        assert_eq!(serde_json::to_value(ItemKind::Instructions).unwrap(), "instructions");
        assert_eq!(serde_json::to_value(State::HeldChanged).unwrap(), "held_changed");
        for s in [
            State::Approved,
            State::HeldNew,
            State::HeldChanged,
            State::HeldFinding,
            State::Quarantined,
            State::Unpinned,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert!(!s.reason().is_empty());
            assert_eq!(s.is_allowed(), matches!(s, State::Approved | State::Unpinned));
        }
        assert_eq!("off".parse::<Mode>().unwrap(), Mode::Off);
        assert!("OFF".parse::<Mode>().is_err());
    }

    #[test]
    fn decide_off_mode() {
        assert_eq!(decide(Mode::Off, false, None, &D1, false), State::Unpinned);
        assert_eq!(decide(Mode::Off, false, None, &D1, true), State::Unpinned);
        assert_eq!(decide(Mode::Off, false, pinned(D2, false), &D1, false), State::Unpinned);
        assert_eq!(
            decide(Mode::Off, true, pinned(D1, false), &D1, false),
            State::Quarantined
        );
    }

    #[test]
    fn decide_approve_mode() {
        let m = Mode::Approve;
        assert_eq!(decide(m, false, None, &D1, false), State::HeldNew);
        assert_eq!(decide(m, false, None, &D1, true), State::HeldFinding);
        assert_eq!(decide(m, false, pinned(D1, false), &D1, false), State::Approved);
        assert_eq!(decide(m, false, pinned(D2, false), &D1, false), State::HeldChanged);
        assert_eq!(decide(m, false, pinned(D2, true), &D1, true), State::HeldChanged);
        assert_eq!(decide(m, false, pinned(D1, true), &D1, true), State::Approved);
        assert_eq!(decide(m, false, pinned(D1, false), &D1, true), State::HeldFinding);
        assert_eq!(decide(m, true, pinned(D1, true), &D1, false), State::Quarantined);
    }

    #[test]
    fn decide_tofu_mode() {
        let m = Mode::Tofu;
        assert_eq!(decide(m, false, None, &D1, false), State::Approved);
        assert_eq!(decide(m, false, None, &D1, true), State::HeldFinding);
        assert_eq!(decide(m, false, pinned(D1, false), &D1, false), State::Approved);
        assert_eq!(decide(m, false, pinned(D2, false), &D1, false), State::HeldChanged);
        assert_eq!(decide(m, false, pinned(D1, true), &D1, true), State::Approved);
        assert_eq!(decide(m, true, None, &D1, false), State::Quarantined);
    }

    #[test]
    fn snapshot_evaluates_pins_and_quarantines() {
        let mut snap = Snapshot::default();
        assert_eq!(
            snap.evaluate(Mode::Approve, "s", ItemKind::Tool, "t", &D1, false),
            State::HeldNew
        );
        snap.insert_pin(
            "s",
            ItemKind::Tool,
            "t".into(),
            Pin {
                digest: D1,
                acknowledged: false,
            },
        );
        assert_eq!(
            snap.evaluate(Mode::Approve, "s", ItemKind::Tool, "t", &D1, false),
            State::Approved
        );
        assert_eq!(
            snap.evaluate(Mode::Approve, "s", ItemKind::Tool, "t", &D2, false),
            State::HeldChanged
        );
        // kinds and servers do not share pins
        assert_eq!(
            snap.evaluate(Mode::Approve, "s", ItemKind::Instructions, "t", &D1, false),
            State::HeldNew
        );
        assert_eq!(
            snap.evaluate(Mode::Approve, "other", ItemKind::Tool, "t", &D1, false),
            State::HeldNew
        );
        assert_eq!(snap.approved("s", ItemKind::Tool, "t"), Some(D1));

        snap.insert_quarantine("s", Some("t".into()));
        assert_eq!(
            snap.evaluate(Mode::Approve, "s", ItemKind::Tool, "t", &D1, false),
            State::Quarantined
        );
        assert_eq!(
            snap.evaluate(Mode::Off, "s", ItemKind::Tool, "t", &D1, false),
            State::Quarantined
        );
        assert_eq!(
            snap.evaluate(Mode::Off, "s", ItemKind::Tool, "u", &D1, false),
            State::Unpinned
        );
        assert!(!snap.is_quarantined("s", None));
        snap.insert_quarantine("s", None);
        assert!(snap.is_quarantined("s", None));
        assert_eq!(
            snap.evaluate(Mode::Tofu, "s", ItemKind::Tool, "u", &D1, false),
            State::Quarantined
        );
        assert_eq!(
            snap.evaluate(Mode::Tofu, "x", ItemKind::Tool, "u", &D1, false),
            State::Approved
        );
    }
}
