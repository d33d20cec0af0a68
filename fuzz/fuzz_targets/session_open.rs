//! Sealed session tokens (`palisade_session::SessionSealer`): opening
//! attacker-supplied tokens, the key-spec parser, and seal/open round trips
//! with tampering, another principal and another route.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use palisade_session::{MAX_TOKEN_LEN, Principal, SessionError, SessionRecord, SessionSealer};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Presented as a token as-is.
    token: String,
    /// Parsed as a `kid:base64[,kid:base64…]` key list.
    key_spec: String,
    sid: String,
    route: String,
    version: String,
    upstreams: Vec<(String, String)>,
    caps: u8,
    iat: u32,
    exp: u32,
    now: u32,
    issuer: String,
    subject: String,
    /// Seal with the second (rotated-out) key instead of the first.
    old_key: bool,
    /// Position and replacement for one character of the sealed token.
    flip_at: u16,
    flip_to: u8,
}

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8,\
                    k0:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";

fn sealers() -> &'static (SessionSealer, SessionSealer) {
    static S: OnceLock<(SessionSealer, SessionSealer)> = OnceLock::new();
    S.get_or_init(|| {
        let current = SessionSealer::new(SessionSealer::parse_keys(KEYS).expect("keys"), "https://gw.example/mcp");
        let mut old = SessionSealer::parse_keys(KEYS).expect("keys");
        old.reverse();
        let old = SessionSealer::new(old, "https://gw.example/mcp");
        (current.expect("sealer"), old.expect("sealer"))
    })
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fuzz_target!(|input: Input| {
    let (sealer, old) = sealers();
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(input.now));
    let principal = Principal::verified(input.issuer.clone(), input.subject.clone());

    let _ = SessionSealer::parse_keys(&input.key_spec);
    let _ = sealer.open(&input.token, &principal, &input.route, now);

    let record = SessionRecord {
        sid: input.sid,
        route: input.route,
        version: input.version,
        upstreams: input.upstreams.into_iter().collect(),
        caps: input.caps,
        iat: u64::from(input.iat),
        exp: u64::from(input.exp),
    };
    let sealing = if input.old_key { old } else { sealer };
    let token = sealing.seal(&record, &principal).expect("sealing never fails");
    assert!(token.is_ascii());
    let opened = sealer.open(&token, &principal, &record.route, now);
    if token.len() > MAX_TOKEN_LEN {
        assert_eq!(opened, Err(SessionError::Invalid));
        return;
    }
    if u64::from(input.now) >= record.exp {
        assert_eq!(opened, Err(SessionError::Expired));
    } else {
        assert_eq!(opened.as_ref(), Ok(&record));
    }

    // Another principal: told apart from a forgery (checked before expiry).
    let other = Principal::verified(input.issuer.clone(), format!("{}!", input.subject));
    assert_eq!(
        sealer.open(&token, &other, &record.route, now),
        Err(SessionError::WrongPrincipal)
    );
    // Another route is bound into the AAD.
    let route = format!("{}/", record.route);
    assert_eq!(sealer.open(&token, &principal, &route, now), Err(SessionError::Invalid));

    // One character of the token changed: never opens.
    let mut bytes = token.into_bytes();
    let at = usize::from(input.flip_at) % bytes.len();
    let to = B64URL[usize::from(input.flip_to) % 64];
    if bytes[at] != to {
        bytes[at] = to;
        let tampered = String::from_utf8(bytes).expect("ASCII");
        // Opened at the epoch, so an expiry cannot hide a tampered token that opened.
        let opened = sealer.open(&tampered, &principal, &record.route, UNIX_EPOCH);
        assert_eq!(opened, Err(SessionError::Invalid));
    }
});
