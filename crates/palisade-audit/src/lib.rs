//! Palisade's audit trail (L1–L3).
//!
//! - [`chain`]: the record format, an HMAC-SHA256 hash chain.
//! - [`writer`]: the writer thread, segments, fsync policies, checkpoints.
//! - [`verify`]: offline verification that names the first break.
//! - [`index`]: the SQLite query index beside the chain.
//! - [`layer`]: the tracing layer that turns audit events into records.

pub mod chain;
pub mod index;
pub mod layer;
pub mod verify;
pub mod writer;

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub use chain::AuditKey;
pub use layer::{AUDIT_TARGET, AuditLayer, AuditSlot, REQUEST_TARGET, Redactor};
pub use writer::{AuditLog, Fsync, Hook, Options, Stats, Written};

/// The record format, written in each segment's first record.
pub const FORMAT: &str = "palisade-audit/1";

/// File name of a generated key in the chain folder.
pub const KEY_FILE: &str = "audit.key";

/// A unique event id: a random per-process prefix and a counter (no
/// syscall per event, no collision across restarts).
pub fn event_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut b);
        hex::encode(b)
    });
    format!("{prefix}{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The digest of a session id used in records and queries: sessions are
/// bearer secrets, so logs carry a short, non-reversible tag instead.
pub fn session_digest(sid: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sid.as_bytes());
    hex::encode(&d.as_ref()[..6])
}

/// Reads the key file of a chain folder, creating it (32 random bytes,
/// mode 0600) when absent.
pub fn load_or_create_key(dir: &Path) -> Result<AuditKey, String> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = zeroize::Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| format!("{}: not a hex key", path.display()))?,
            );
            AuditKey::new(&bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let mut b = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(b.as_mut()).map_err(|_| "no randomness for the audit key".to_owned())?;
            let text = zeroize::Zeroizing::new(hex::encode(b.as_ref()));
            write_private(&path, text.as_bytes())?;
            AuditKey::new(b.as_ref())
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Reads a key given as text: hex (64+ digits) or, failing that, the bytes.
pub fn key_from_text(text: &str) -> Result<AuditKey, String> {
    let t = text.trim();
    match hex::decode(t) {
        Ok(b) if b.len() >= 16 => AuditKey::new(&zeroize::Zeroizing::new(b)),
        _ => AuditKey::new(t.as_bytes()),
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
