//! The encrypted file backend.
//!
//! The store is a JSON file (mode 0600, replaced atomically on every change):
//!
//! ```json
//! { "version": 1,
//!   "entries": { "db_password": { "kid": "k1", "nonce": "<base64>", "ciphertext": "<base64>" } } }
//! ```
//!
//! Each entry is sealed on its own with AES-256-GCM under the key `kid`, with a
//! fresh random nonce. The associated data binds the ciphertext to the entry's
//! name and key id, so moving a ciphertext to another name (or relabelling its
//! key) makes it fail to open. Names and key ids are visible in the file; values
//! are not.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use palisade_config::SecretsConfig;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Secret, SecretError, validate_name};

/// Store file format version.
const FORMAT_VERSION: u32 = 1;
/// Largest store file read.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Most entries in one store.
const MAX_ENTRIES: usize = 10_000;
/// Largest secret value stored, bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Longest key id.
const MAX_KID_LEN: usize = 64;
/// AES-256 key length.
pub(crate) const KEY_LEN: usize = 32;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// One AES-256-GCM key and its id.
struct Key {
    kid: String,
    key: RandomizedNonceKey,
}

/// The file store's keys: the first seals, all of them open.
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("kids", &self.kids()).finish()
    }
}

impl Keyring {
    /// Reads the keys `cfg` names: `key_file` when set, else the variable `key_env`.
    pub fn from_config(cfg: &SecretsConfig) -> Result<Self, SecretError> {
        match &cfg.key_file {
            Some(path) => Self::from_file(path),
            None => {
                let text = Zeroizing::new(
                    std::env::var(&cfg.key_env)
                        .map_err(|_| SecretError::Keys(format!("no key_file and {} is not set", cfg.key_env)))?,
                );
                Self::parse(&text).map_err(|e| match e {
                    SecretError::Keys(why) => SecretError::Keys(format!("{}: {why}", cfg.key_env)),
                    other => other,
                })
            }
        }
    }

    /// Reads a key file of `kid:base64` lines.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let context = || format!("key file {}", path.display());
        let file = File::open(path).map_err(|source| SecretError::Io {
            context: context(),
            source,
        })?;
        warn_if_shared(&file, path);
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| SecretError::Io {
                context: context(),
                source,
            })?;
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(SecretError::Keys(format!("{} is too large", path.display())));
        }
        Self::parse(&text).map_err(|e| match e {
            SecretError::Keys(why) => SecretError::Keys(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    /// Parses `kid:base64(32 bytes)` entries separated by newlines or commas.
    /// Blank entries and lines starting with `#` are skipped. Errors never
    /// include key material.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let mut keys: Vec<Key> = Vec::new();
        let entries = text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let key = parse_key(entry).map_err(|why| SecretError::Keys(format!("key {}: {why}", i + 1)))?;
            if keys.iter().any(|k| k.kid == key.kid) {
                return Err(SecretError::Keys(format!("key id {:?} appears twice", key.kid)));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(SecretError::Keys("no keys given".into()));
        }
        Ok(Keyring { keys })
    }

    /// Key ids, the sealing key first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    fn sealing(&self) -> &Key {
        // `parse` refuses an empty keyring, so there is always a first key.
        &self.keys[0]
    }

    fn find(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

fn parse_key(entry: &str) -> Result<Key, String> {
    let (kid, b64) = entry.split_once(':').ok_or("expected kid:base64")?;
    validate_kid(kid)?;
    let bytes = Zeroizing::new(B64.decode(b64.trim()).map_err(|_| "the key is not valid base64")?);
    if bytes.len() != KEY_LEN {
        return Err(format!("the key must be {KEY_LEN} bytes"));
    }
    let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes).map_err(|_| "unusable key")?;
    Ok(Key {
        kid: kid.to_owned(),
        key,
    })
}

/// Key ids: 1–64 characters of `[A-Za-z0-9_.-]`.
pub(crate) fn validate_kid(kid: &str) -> Result<(), String> {
    let ok = !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid key id: use 1-{MAX_KID_LEN} characters of A-Z a-z 0-9 _ . -"
        ))
    }
}

/// Keys readable by others defeat the encryption; say so (but still start, as
/// the operator may rely on other controls such as a private mount).
fn warn_if_shared(file: &File, path: &Path) {
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "secret store key file is readable by group or others; chmod 600 it");
    }
}

/// The on-disk store.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

impl Default for StoreFile {
    fn default() -> Self {
        StoreFile {
            version: FORMAT_VERSION,
            entries: BTreeMap::new(),
        }
    }
}

/// One sealed secret.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    kid: String,
    nonce: String,
    /// Ciphertext followed by the GCM tag.
    ciphertext: String,
}

/// Associated data: binds a ciphertext to its entry name and key id.
fn aad(kid: &str, name: &str) -> Vec<u8> {
    format!("palisade-secrets/v{FORMAT_VERSION}\0{kid}\0{name}").into_bytes()
}

/// The encrypted file store.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    keys: Keyring,
    /// Serializes read-modify-write cycles within this process. Another process
    /// writing at the same time can still win (last rename wins), never corrupt.
    write_lock: Mutex<()>,
}

impl FileStore {
    /// A store at `path` (created on first `set`) using `keys`.
    pub fn new(path: PathBuf, keys: Keyring) -> Self {
        FileStore {
            path,
            keys,
            write_lock: Mutex::new(()),
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The secret called `name`.
    pub fn get(&self, name: &str) -> Result<Secret, SecretError> {
        validate_name(name)?;
        let store = self.load()?;
        let entry = store
            .entries
            .get(name)
            .ok_or_else(|| SecretError::NotFound(name.to_owned()))?;
        self.open(name, entry)
    }

    /// Names of the stored secrets, sorted. Needs no decryption.
    pub fn list(&self) -> Result<Vec<String>, SecretError> {
        Ok(self.load()?.entries.into_keys().collect())
    }

    /// Seals `value` under the first key and stores it as `name`, replacing any
    /// previous value.
    pub fn set(&self, name: &str, value: &[u8]) -> Result<(), SecretError> {
        validate_name(name)?;
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(SecretError::TooLarge(value.len()));
        }
        let _guard = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut store = self.load()?;
        if !store.entries.contains_key(name) && store.entries.len() >= MAX_ENTRIES {
            return Err(SecretError::Config(format!(
                "the store holds at most {MAX_ENTRIES} secrets"
            )));
        }
        let entry = self.seal(name, value)?;
        store.entries.insert(name.to_owned(), entry);
        self.save(&store)
    }

    /// Deletes `name`; `Ok(false)` if there was no such secret.
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        validate_name(name)?;
        let _guard = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut store = self.load()?;
        if store.entries.remove(name).is_none() {
            return Ok(false);
        }
        self.save(&store)?;
        Ok(true)
    }

    /// Re-encrypts every entry under the first key and returns how many there
    /// are. All entries are opened first: if any fails, nothing is written.
    pub fn rotate(&self) -> Result<usize, SecretError> {
        let _guard = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut store = self.load()?;
        let mut resealed = BTreeMap::new();
        for (name, entry) in &store.entries {
            let value = self.open(name, entry)?;
            resealed.insert(name.clone(), self.seal(name, value.expose())?);
        }
        let count = resealed.len();
        store.entries = resealed;
        self.save(&store)?;
        Ok(count)
    }

    fn seal(&self, name: &str, value: &[u8]) -> Result<Entry, SecretError> {
        let key = self.keys.sealing();
        let mut buf = Zeroizing::new(Vec::with_capacity(value.len() + TAG_LEN));
        buf.extend_from_slice(value);
        let nonce = key
            .key
            .seal_in_place_append_tag(Aad::from(aad(&key.kid, name)), &mut *buf)
            .map_err(|_| SecretError::Keys("encryption failed".into()))?;
        Ok(Entry {
            kid: key.kid.clone(),
            nonce: B64.encode(nonce.as_ref()),
            ciphertext: B64.encode(&*buf),
        })
    }

    fn open(&self, name: &str, entry: &Entry) -> Result<Secret, SecretError> {
        let key = self.keys.find(&entry.kid).ok_or_else(|| SecretError::UnknownKey {
            name: name.to_owned(),
            kid: entry.kid.clone(),
        })?;
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&entry.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| self.corrupt(format!("entry {name:?}: bad nonce")))?;
        let mut buf = Zeroizing::new(
            B64.decode(&entry.ciphertext)
                .map_err(|_| self.corrupt(format!("entry {name:?}: ciphertext is not base64")))?,
        );
        let len = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&entry.kid, name)),
                &mut buf,
            )
            .map_err(|_| SecretError::Decrypt(name.to_owned()))?
            .len();
        buf.truncate(len);
        // Move the plaintext buffer into the Secret rather than copying it.
        Ok(Secret::new(std::mem::take(&mut *buf)))
    }

    fn corrupt(&self, why: String) -> SecretError {
        SecretError::Corrupt {
            path: self.path.display().to_string(),
            why,
        }
    }

    /// Reads and checks the store; a missing file is an empty store.
    fn load(&self) -> Result<StoreFile, SecretError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(StoreFile::default()),
            Err(source) => return Err(self.io_error(source)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_error(e))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(self.corrupt(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let store: StoreFile =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(format!("not a secret store: {e}")))?;
        self.check(&store)?;
        Ok(store)
    }

    /// Structural checks, so that a garbled file fails as a whole and early.
    fn check(&self, store: &StoreFile) -> Result<(), SecretError> {
        if store.version != FORMAT_VERSION {
            return Err(self.corrupt(format!("unsupported version {}", store.version)));
        }
        if store.entries.len() > MAX_ENTRIES {
            return Err(self.corrupt(format!("more than {MAX_ENTRIES} entries")));
        }
        for (name, entry) in &store.entries {
            validate_name(name).map_err(|_| self.corrupt("invalid entry name".into()))?;
            validate_kid(&entry.kid).map_err(|why| self.corrupt(format!("entry {name:?}: {why}")))?;
            // Base64 of at most MAX_VALUE_BYTES + TAG_LEN bytes.
            if entry.ciphertext.len() > (MAX_VALUE_BYTES + TAG_LEN).div_ceil(3) * 4 {
                return Err(self.corrupt(format!("entry {name:?}: ciphertext too large")));
            }
        }
        Ok(())
    }

    fn save(&self, store: &StoreFile) -> Result<(), SecretError> {
        let mut bytes = serde_json::to_vec_pretty(store).map_err(|e| self.corrupt(e.to_string()))?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes).map_err(|e| self.io_error(e))
    }

    fn io_error(&self, source: std::io::Error) -> SecretError {
        SecretError::Io {
            context: format!("secret store file {}", self.path.display()),
            source,
        }
    }
}

/// Writes `bytes` to a new 0600 file beside `path`, syncs it and renames it over
/// `path`, so readers see the old or the new store, never a partial one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| std::io::Error::other("no randomness"))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{}.{suffix}.tmp", file_name.to_string_lossy()));
    let result = write_new(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    // The umask can only narrow the mode; set it exactly all the same.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(kid: &str, byte: u8) -> String {
        format!("{kid}:{}", B64.encode([byte; KEY_LEN]))
    }

    fn store(dir: &Path, keys: &str) -> FileStore {
        FileStore::new(dir.join("secrets.json"), Keyring::parse(keys).unwrap())
    }

    fn read_json(s: &FileStore) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(s.path()).unwrap()).unwrap()
    }

    fn write_json(s: &FileStore, v: &serde_json::Value) {
        std::fs::write(s.path(), serde_json::to_vec(v).unwrap()).unwrap();
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &key_line("k1", 1));
        assert!(matches!(s.get("db"), Err(SecretError::NotFound(_))));
        assert!(s.list().unwrap().is_empty());
        s.set("db", b"hunter2").unwrap();
        s.set("api.key", b"abc").unwrap();
        assert_eq!(s.get("db").unwrap().expose(), b"hunter2");
        assert_eq!(s.get("api.key").unwrap().expose(), b"abc");
        assert_eq!(s.list().unwrap(), vec!["api.key", "db"]);
        // The plaintext is nowhere in the file.
        let raw = std::fs::read_to_string(s.path()).unwrap();
        assert!(!raw.contains("hunter2"));
        s.set("db", b"new").unwrap();
        assert_eq!(s.get("db").unwrap().expose(), b"new");
        assert!(s.remove("db").unwrap());
        assert!(!s.remove("db").unwrap());
        assert!(matches!(s.get("db"), Err(SecretError::NotFound(_))));
    }

    #[test]
    fn file_is_private_and_no_temp_files_remain() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &key_line("k1", 1));
        s.set("a", b"1").unwrap();
        s.set("b", b"2").unwrap();
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secrets.json")]);
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &key_line("k1", 1));
        s.set("db", b"hunter2").unwrap();
        let mut v = read_json(&s);
        let ct = v["entries"]["db"]["ciphertext"].as_str().unwrap();
        let mut bytes = B64.decode(ct).unwrap();
        bytes[0] ^= 1;
        v["entries"]["db"]["ciphertext"] = B64.encode(&bytes).into();
        write_json(&s, &v);
        assert!(matches!(s.get("db"), Err(SecretError::Decrypt(n)) if n == "db"));
        // So does a flipped nonce.
        s.set("db", b"hunter2").unwrap();
        let mut v = read_json(&s);
        let mut nonce = B64.decode(v["entries"]["db"]["nonce"].as_str().unwrap()).unwrap();
        nonce[3] ^= 0x80;
        v["entries"]["db"]["nonce"] = B64.encode(&nonce).into();
        write_json(&s, &v);
        assert!(matches!(s.get("db"), Err(SecretError::Decrypt(_))));
    }

    #[test]
    fn swapped_entries_fail() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &key_line("k1", 1));
        s.set("a", b"value-a").unwrap();
        s.set("b", b"value-b").unwrap();
        let mut v = read_json(&s);
        let a = v["entries"]["a"].clone();
        v["entries"]["a"] = v["entries"]["b"].clone();
        v["entries"]["b"] = a;
        write_json(&s, &v);
        assert!(matches!(s.get("a"), Err(SecretError::Decrypt(_))));
        assert!(matches!(s.get("b"), Err(SecretError::Decrypt(_))));
    }

    #[test]
    fn relabelled_key_id_fails() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &format!("{},{}", key_line("k1", 1), key_line("k2", 1)));
        s.set("a", b"value").unwrap();
        let mut v = read_json(&s);
        v["entries"]["a"]["kid"] = "k2".into();
        write_json(&s, &v);
        // Same key bytes, but the key id is bound too.
        assert!(matches!(s.get("a"), Err(SecretError::Decrypt(_))));
    }

    #[test]
    fn wrong_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &key_line("k1", 1)).set("db", b"hunter2").unwrap();
        let other = store(dir.path(), &key_line("k1", 2));
        let err = other.get("db").unwrap_err();
        assert!(matches!(err, SecretError::Decrypt(_)));
        assert!(err.to_string().contains("wrong key or tampered"));
        let unknown = store(dir.path(), &key_line("k9", 1));
        assert!(matches!(unknown.get("db"), Err(SecretError::UnknownKey { kid, .. }) if kid == "k1"));
        assert!(unknown.rotate().is_err());
    }

    #[test]
    fn rotation_moves_everything_to_the_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let old = key_line("k1", 1);
        let new = key_line("k2", 2);
        let s = store(dir.path(), &old);
        s.set("a", b"value-a").unwrap();
        s.set("b", b"value-b").unwrap();

        let both = store(dir.path(), &format!("{new}\n{old}\n"));
        // Old entries still open with the old key listed second.
        assert_eq!(both.get("a").unwrap().expose(), b"value-a");
        assert_eq!(both.rotate().unwrap(), 2);
        let v = read_json(&both);
        assert_eq!(v["entries"]["a"]["kid"], "k2");
        assert_eq!(v["entries"]["b"]["kid"], "k2");

        let only_new = store(dir.path(), &new);
        assert_eq!(only_new.get("a").unwrap().expose(), b"value-a");
        assert_eq!(only_new.get("b").unwrap().expose(), b"value-b");
        assert!(matches!(
            store(dir.path(), &old).get("a"),
            Err(SecretError::UnknownKey { .. })
        ));
    }

    #[test]
    fn garbage_and_oversized_files_fail() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &key_line("k1", 1));
        for garbage in [
            &b"not json"[..],
            b"",
            b"{\"version\":2,\"entries\":{}}",
            b"[1,2,3]",
            b"\xff\xfe",
        ] {
            std::fs::write(s.path(), garbage).unwrap();
            assert!(matches!(s.list(), Err(SecretError::Corrupt { .. })), "{garbage:?}");
            assert!(matches!(s.get("a"), Err(SecretError::Corrupt { .. })));
            // A broken store is never silently replaced.
            assert!(s.set("a", b"x").is_err());
        }
        let bad_nonce = serde_json::json!({"version": 1, "entries": {"a": {"kid": "k1", "nonce": "AAAA", "ciphertext": "AAAAAAAAAAAAAAAAAAAAAA=="}}});
        write_json(&s, &bad_nonce);
        assert!(matches!(s.get("a"), Err(SecretError::Corrupt { .. })));
        let bad_name =
            serde_json::json!({"version": 1, "entries": {"a b": {"kid": "k1", "nonce": "", "ciphertext": ""}}});
        write_json(&s, &bad_name);
        assert!(matches!(s.list(), Err(SecretError::Corrupt { .. })));

        let big = vec![b' '; MAX_FILE_BYTES as usize + 1];
        std::fs::write(s.path(), big).unwrap();
        assert!(matches!(s.list(), Err(SecretError::Corrupt { why, .. }) if why.contains("larger")));
    }

    #[test]
    fn value_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), &key_line("k1", 1));
        assert!(matches!(s.set("a", b""), Err(SecretError::Empty)));
        assert!(matches!(
            s.set("a", &vec![0; MAX_VALUE_BYTES + 1]),
            Err(SecretError::TooLarge(_))
        ));
        s.set("a", &vec![7; MAX_VALUE_BYTES]).unwrap();
        assert_eq!(s.get("a").unwrap().len(), MAX_VALUE_BYTES);
        assert!(matches!(s.set("bad/name", b"x"), Err(SecretError::InvalidName(_))));
    }

    #[test]
    fn key_parsing() {
        assert_eq!(
            Keyring::parse(&format!("# comment\n{}\n\n{}\n", key_line("a", 1), key_line("b", 2)))
                .unwrap()
                .kids(),
            vec!["a", "b"]
        );
        assert_eq!(
            Keyring::parse(&format!("{}, {}", key_line("a", 1), key_line("b", 2)))
                .unwrap()
                .kids(),
            vec!["a", "b"]
        );
        let short = format!("a:{}", B64.encode([1u8; 16]));
        let secretish = B64.encode([9u8; KEY_LEN]);
        for bad in [
            String::new(),
            "nokid".into(),
            short,
            "a:!!!".into(),
            format!("bad kid:{secretish}"),
            format!("{},{}", key_line("a", 1), key_line("a", 2)),
        ] {
            let err = Keyring::parse(&bad).unwrap_err();
            assert!(matches!(err, SecretError::Keys(_)), "{bad}");
            assert!(!err.to_string().contains(&secretish), "key material in error");
        }
    }

    #[test]
    fn key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("{}\n", key_line("k1", 1))).unwrap();
        assert_eq!(Keyring::from_file(&path).unwrap().kids(), vec!["k1"]);
        assert!(matches!(
            Keyring::from_file(&dir.path().join("missing")),
            Err(SecretError::Io { .. })
        ));
    }
}
