//! Sealed, user-bound session ids (M2, M4).
//!
//! The `Mcp-Session-Id` a client sees is an AEAD-sealed token: the payload is
//! the gateway's session record (internal id, route, upstream session ids,
//! expiry) and a digest of its owner (issuer and subject), checked on every
//! open so another user's token cannot use it (and the mismatch can be audited);
//! audience and route are bound in the associated data. Any replica holding the key
//! can open it; no per-request key stretching. Upstream session ids never
//! leave the gateway in the clear.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const TOKEN_PREFIX: &str = "ps1.";
const AAD_LABEL: &[u8] = b"palisade/session/v2";

/// The sealed payload: the record and a digest of its owner. The owner is inside the
/// authenticated plaintext (not only in the AAD) so a mismatch is told apart from a
/// forgery and can be audited (M4).
#[derive(Serialize, Deserialize)]
struct Sealed<R> {
    #[serde(flatten)]
    record: R,
    owner: String,
}

/// SHA-256 of the length-prefixed issuer and subject, hex.
const HEX: &[u8; 16] = b"0123456789abcdef";

fn owner_digest(p: &Principal) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [&p.issuer, &p.subject] {
        ctx.update(&(part.len() as u32).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let digest = ctx.finish();
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}
/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// An authenticated caller. Only the authentication layer creates these from
/// verified credentials (`palisade-auth`); with `auth.mode = "none"` every caller is
/// [`Principal::anonymous`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    issuer: String,
    subject: String,
}

impl Principal {
    /// The principal of unauthenticated deployments.
    pub fn anonymous() -> Self {
        Principal {
            issuer: "urn:palisade:anonymous".into(),
            subject: "anonymous".into(),
        }
    }

    /// A principal from a verified identity (issuer and subject).
    pub fn verified(issuer: impl Into<String>, subject: impl Into<String>) -> Self {
        Principal {
            issuer: issuer.into(),
            subject: subject.into(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// What a session token carries, sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Internal session id (128 random bits, hex); the key for revocation and live state.
    pub sid: String,
    /// The endpoint the session belongs to (`demo`, or `*` for the aggregated endpoint).
    pub route: String,
    /// Negotiated protocol version.
    pub version: String,
    /// Upstream name → the upstream's own session id (absent for stdio upstreams).
    #[serde(default)]
    pub upstreams: BTreeMap<String, String>,
    /// Client capability bits declared at `initialize` (sampling, elicitation, roots).
    #[serde(default)]
    pub caps: u8,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Absolute expiry, seconds since the epoch.
    pub exp: u64,
}

/// A 256-bit sealing key with its id. Never printed.
pub struct SessionKey {
    kid: String,
    key: LessSafeKey,
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SessionKey {
    /// A key from 32 bytes of secret material.
    pub fn new(kid: &str, material: &[u8]) -> Result<Self, SessionError> {
        if kid.is_empty() || kid.len() > 32 || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SessionError::BadKey("key id must be 1-32 characters of [A-Za-z0-9_-]"));
        }
        if material.len() != 32 {
            return Err(SessionError::BadKey("session keys must be 32 bytes"));
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, material).map_err(|_| SessionError::BadKey("invalid key material"))?;
        Ok(SessionKey {
            kid: kid.to_owned(),
            key: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random key.
    pub fn generate(kid: &str) -> Result<Self, SessionError> {
        let mut material = [0u8; 32];
        SystemRandom::new().fill(&mut material).map_err(|_| SessionError::Rng)?;
        let key = SessionKey::new(kid, &material);
        material.fill(0);
        key
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// Errors from sealing and opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The token is malformed, forged, for another principal or route, or sealed
    /// with an unknown key. Deliberately one case: the caller learns nothing more.
    Invalid,
    /// A genuine session of another user (M4): refused, and worth an audit event.
    WrongPrincipal,
    Expired,
    Revoked,
    BadKey(&'static str),
    Rng,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Invalid => f.write_str("invalid session id"),
            SessionError::WrongPrincipal => f.write_str("session belongs to another principal"),
            SessionError::Expired => f.write_str("session expired"),
            SessionError::Revoked => f.write_str("session terminated"),
            SessionError::BadKey(m) => write!(f, "bad session key: {m}"),
            SessionError::Rng => f.write_str("random number generator failed"),
        }
    }
}

impl std::error::Error for SessionError {}

/// Seals and opens session tokens. The first key seals; every key opens (rotation).
#[derive(Debug)]
pub struct SessionSealer {
    keys: Vec<SessionKey>,
    audience: String,
    rng: SystemRandom,
}

impl SessionSealer {
    /// `audience` is the gateway's canonical identity, bound into every token.
    pub fn new(keys: Vec<SessionKey>, audience: impl Into<String>) -> Result<Self, SessionError> {
        if keys.is_empty() {
            return Err(SessionError::BadKey("at least one session key is required"));
        }
        Ok(SessionSealer {
            keys,
            audience: audience.into(),
            rng: SystemRandom::new(),
        })
    }

    /// Parses keys from `kid:base64[,kid:base64…]`.
    pub fn parse_keys(spec: &str) -> Result<Vec<SessionKey>, SessionError> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let (kid, b64) = entry
                    .split_once(':')
                    .ok_or(SessionError::BadKey("expected kid:base64key"))?;
                let mut material = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim()))
                    .map_err(|_| SessionError::BadKey("key is not valid base64"))?;
                let key = SessionKey::new(kid.trim(), &material);
                material.fill(0);
                key
            })
            .collect()
    }

    /// A new random internal session id (128 bits, hex).
    pub fn new_sid(&self) -> Result<String, SessionError> {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b).map_err(|_| SessionError::Rng)?;
        Ok(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// Seals a record for a principal. The result is visible ASCII (base64url).
    pub fn seal(&self, record: &SessionRecord, principal: &Principal) -> Result<String, SessionError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SessionError::Rng)?;
        let sealed = Sealed {
            record,
            owner: owner_digest(principal),
        };
        let mut data = serde_json::to_vec(&sealed).map_err(|_| SessionError::Invalid)?;
        let aad = self.aad(&key.kid, &record.route);
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut data)
            .map_err(|_| SessionError::Invalid)?;
        let mut out = Vec::with_capacity(1 + key.kid.len() + NONCE_LEN + data.len());
        out.push(key.kid.len() as u8);
        out.extend_from_slice(key.kid.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens a token presented by `principal` on `route`, checking expiry at `now`.
    pub fn open(
        &self,
        token: &str,
        principal: &Principal,
        route: &str,
        now: SystemTime,
    ) -> Result<SessionRecord, SessionError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(SessionError::Invalid);
        }
        let body = token.strip_prefix(TOKEN_PREFIX).ok_or(SessionError::Invalid)?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| SessionError::Invalid)?;
        let (&kid_len, rest) = raw.split_first().ok_or(SessionError::Invalid)?;
        let kid_len = usize::from(kid_len);
        if rest.len() < kid_len + NONCE_LEN + 16 {
            return Err(SessionError::Invalid);
        }
        let (kid, rest) = rest.split_at(kid_len);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let kid = std::str::from_utf8(kid).map_err(|_| SessionError::Invalid)?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(SessionError::Invalid)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SessionError::Invalid)?;
        let aad = self.aad(kid, route);
        let mut buf = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(&aad), &mut buf)
            .map_err(|_| SessionError::Invalid)?;
        let Sealed { record, owner } =
            serde_json::from_slice::<Sealed<SessionRecord>>(plain).map_err(|_| SessionError::Invalid)?;
        if owner != owner_digest(principal) {
            return Err(SessionError::WrongPrincipal);
        }
        if record.route != route {
            return Err(SessionError::Invalid);
        }
        if unix(now) >= record.exp {
            return Err(SessionError::Expired);
        }
        Ok(record)
    }

    fn aad(&self, kid: &str, route: &str) -> Vec<u8> {
        // Length-prefixed fields, so no two different tuples encode the same bytes.
        let mut aad = Vec::with_capacity(64 + self.audience.len() + route.len());
        aad.extend_from_slice(AAD_LABEL);
        for part in [kid, &self.audience, route] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Seconds since the epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// Explicitly ended sessions, remembered until their tokens would have expired anyway.
#[derive(Debug, Default)]
pub struct RevocationList {
    // sid → absolute expiry (unix seconds). Lock held only for map operations.
    inner: Mutex<HashMap<String, u64>>,
}

impl RevocationList {
    pub fn revoke(&self, sid: &str, exp: u64) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(sid.to_owned(), exp);
        }
    }

    /// Fails closed: a poisoned lock reports every session as revoked.
    pub fn is_revoked(&self, sid: &str) -> bool {
        self.inner.lock().map(|m| m.contains_key(sid)).unwrap_or(true)
    }

    /// Forgets entries whose tokens have expired.
    pub fn purge(&self, now: SystemTime) {
        let now = unix(now);
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|_, exp| *exp > now);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> SessionSealer {
        SessionSealer::new(vec![SessionKey::generate("k1").unwrap()], "http://127.0.0.1:8787").unwrap()
    }

    fn record(s: &SessionSealer, exp_in: u64) -> SessionRecord {
        let now = unix(SystemTime::now());
        SessionRecord {
            sid: s.new_sid().unwrap(),
            route: "demo".into(),
            version: "2025-11-25".into(),
            upstreams: BTreeMap::from([("demo".into(), "upstream-secret-id".into())]),
            caps: 0,
            iat: now,
            exp: now + exp_in,
        }
    }

    #[test]
    fn round_trip() {
        let s = sealer();
        let r = record(&s, 60);
        let alice = Principal::verified("https://idp", "alice");
        let t = s.seal(&r, &alice).unwrap();
        assert!(t.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert!(!t.contains("upstream-secret-id"));
        assert_eq!(s.open(&t, &alice, "demo", SystemTime::now()).unwrap(), r);
    }

    #[test]
    fn another_user_cannot_use_it() {
        let s = sealer();
        let r = record(&s, 60);
        let t = s.seal(&r, &Principal::verified("https://idp", "alice")).unwrap();
        let bob = Principal::verified("https://idp", "bob");
        assert_eq!(
            s.open(&t, &bob, "demo", SystemTime::now()),
            Err(SessionError::WrongPrincipal)
        );
        let other_idp = Principal::verified("https://evil", "alice");
        assert_eq!(
            s.open(&t, &other_idp, "demo", SystemTime::now()),
            Err(SessionError::WrongPrincipal)
        );
        // A forged owner cannot be written: the owner is inside the sealed plaintext.
        let mut forged = t.clone().into_bytes();
        let last = forged.len() - 3;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            s.open(&forged, &bob, "demo", SystemTime::now()),
            Err(SessionError::Invalid)
        );
    }

    #[test]
    fn another_route_cannot_use_it() {
        let s = sealer();
        let p = Principal::anonymous();
        let t = s.seal(&record(&s, 60), &p).unwrap();
        assert_eq!(s.open(&t, &p, "other", SystemTime::now()), Err(SessionError::Invalid));
    }

    #[test]
    fn expired_and_tampered_tokens_fail() {
        let s = sealer();
        let p = Principal::anonymous();
        let t = s.seal(&record(&s, 60), &p).unwrap();
        let later = SystemTime::now() + Duration::from_secs(120);
        assert_eq!(s.open(&t, &p, "demo", later), Err(SessionError::Expired));
        // Flip one character of the ciphertext.
        let mut bytes = t.clone().into_bytes();
        let i = bytes.len() - 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert_eq!(
            s.open(&forged, &p, "demo", SystemTime::now()),
            Err(SessionError::Invalid)
        );
        for junk in ["", "ps1.", "ps1.!!!!", "abc", &"ps1.".repeat(2000), "ps1.AAAA"] {
            assert_eq!(
                s.open(junk, &p, "demo", SystemTime::now()),
                Err(SessionError::Invalid),
                "{junk}"
            );
        }
    }

    #[test]
    fn rotation_opens_old_tokens_and_other_gateways_cannot() {
        let old = SessionKey::new("old", &[7u8; 32]).unwrap();
        let s1 = SessionSealer::new(vec![old], "aud").unwrap();
        let p = Principal::anonymous();
        let t = s1.seal(&record(&s1, 60), &p).unwrap();
        let rotated = SessionSealer::new(
            vec![
                SessionKey::new("new", &[8u8; 32]).unwrap(),
                SessionKey::new("old", &[7u8; 32]).unwrap(),
            ],
            "aud",
        )
        .unwrap();
        assert!(rotated.open(&t, &p, "demo", SystemTime::now()).is_ok());
        let other_aud = SessionSealer::new(vec![SessionKey::new("old", &[7u8; 32]).unwrap()], "aud2").unwrap();
        assert_eq!(
            other_aud.open(&t, &p, "demo", SystemTime::now()),
            Err(SessionError::Invalid)
        );
    }

    #[test]
    fn parses_keys_and_refuses_bad_ones() {
        let spec = format!(
            "a:{},b:{}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
            URL_SAFE_NO_PAD.encode([2u8; 32])
        );
        let keys = SessionSealer::parse_keys(&spec).unwrap();
        assert_eq!(keys.iter().map(SessionKey::kid).collect::<Vec<_>>(), ["a", "b"]);
        assert!(SessionSealer::parse_keys("a:short").is_err());
        assert!(SessionSealer::parse_keys("nokid").is_err());
        assert!(format!("{:?}", keys[0]).contains("redacted"));
    }

    #[test]
    fn revocation() {
        let list = RevocationList::default();
        list.revoke("s1", unix(SystemTime::now()) + 10);
        assert!(list.is_revoked("s1"));
        assert!(!list.is_revoked("s2"));
        list.purge(SystemTime::now() + Duration::from_secs(20));
        assert!(list.is_empty());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No presented string opens, and none panics.
        #[test]
        fn arbitrary_tokens_never_open(token in ".{0,600}", b64 in "[A-Za-z0-9_-]{0,400}") {
            let s = SessionSealer::new(vec![SessionKey::new("k", &[3u8; 32]).unwrap()], "aud").unwrap();
            let p = Principal::anonymous();
            prop_assert!(s.open(&token, &p, "r", SystemTime::now()).is_err());
            let forged = format!("ps1.{b64}");
            prop_assert!(s.open(&forged, &p, "r", SystemTime::now()).is_err());
        }

        /// Flipping any single byte of a real token makes it unusable.
        #[test]
        fn any_bit_flip_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let s = SessionSealer::new(vec![SessionKey::new("k", &[3u8; 32]).unwrap()], "aud").unwrap();
            let p = Principal::anonymous();
            let now = unix(SystemTime::now());
            let rec = SessionRecord { sid: "00".repeat(16), route: "r".into(), version: "2025-11-25".into(),
                upstreams: BTreeMap::new(), caps: 0, iat: now, exp: now + 60 };
            let token = s.seal(&rec, &p).unwrap();
            let raw = URL_SAFE_NO_PAD.decode(&token[4..]).unwrap();
            let mut bad = raw.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            let forged = format!("ps1.{}", URL_SAFE_NO_PAD.encode(&bad));
            prop_assert!(s.open(&forged, &p, "r", SystemTime::now()).is_err());
        }
    }
}
