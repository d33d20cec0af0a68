//! DPoP proofs (RFC 9449): a token bound to a key is only accepted with a fresh proof
//! of possession of that key, for this request, seen once.

use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::error::{AuthError, Reason};
use crate::jwks;
use crate::jwt;

/// Algorithms accepted for proofs.
pub const PROOF_ALGS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// Space-separated, for the `algs` challenge parameter.
pub const PROOF_ALGS_STR: &str = "ES256 ES384 RS256 PS256 EdDSA";

/// Checks proofs and remembers their `jti`s for the proof lifetime.
pub struct DpopChecker {
    seen: moka::sync::Cache<[u8; 32], ()>,
    max_age: Duration,
    leeway: Duration,
}

/// The request a proof must be for.
pub struct ProofTarget<'a> {
    pub method: &'a str,
    /// The request URL as the client addressed it, without query or fragment.
    pub url: &'a str,
    pub token: &'a str,
}

fn bad(reason: Reason, d: &'static str) -> AuthError {
    AuthError::new(reason, d)
}

impl DpopChecker {
    pub fn new(max_age: Duration, leeway: Duration, capacity: u64) -> Self {
        let seen = moka::sync::Cache::builder()
            .max_capacity(capacity)
            // Whole-second clocks: keep entries a little longer than any proof is accepted.
            .time_to_live(max_age + leeway + leeway + Duration::from_secs(5))
            .build();
        DpopChecker { seen, max_age, leeway }
    }

    /// Verifies `proof` for `target`, made with the key whose thumbprint is `jkt`.
    /// The `jti` is remembered only for proofs that pass every other check, so proofs
    /// signed with other keys cannot fill the replay cache.
    pub fn check(&self, proof: &str, target: &ProofTarget<'_>, jkt: &str, now: u64) -> Result<(), AuthError> {
        let parts = jwt::split(proof).map_err(|_| bad(Reason::DpopInvalid, "malformed DPoP proof"))?;
        let alg = proof_alg(&parts.header)?;
        let jwk = parts
            .header
            .get("jwk")
            .ok_or_else(|| bad(Reason::DpopInvalid, "DPoP proof has no jwk"))?;
        let key = jwks::parse_jwk(jwk).ok_or_else(|| bad(Reason::DpopInvalid, "DPoP proof key is not a public key"))?;
        if !key.kind.fits(alg) {
            return Err(bad(Reason::DpopInvalid, "DPoP proof key does not fit its alg"));
        }
        let mut v = Validation::new(alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Map<String, Value>>(proof, &key.key, &v)
            .map_err(|_| bad(Reason::DpopInvalid, "DPoP proof signature does not verify"))?
            .claims;
        self.check_claims(&claims, target, now)?;
        let got = thumbprint(jwk).ok_or_else(|| bad(Reason::DpopInvalid, "DPoP proof key has no thumbprint"))?;
        if got != jkt {
            return Err(bad(Reason::DpopMismatch, "DPoP proof key is not the token's key"));
        }
        self.check_fresh(jkt, &claims)
    }

    fn check_claims(&self, c: &Map<String, Value>, t: &ProofTarget<'_>, now: u64) -> Result<(), AuthError> {
        let s = |k: &str| c.get(k).and_then(Value::as_str);
        let jti = s("jti").ok_or_else(|| bad(Reason::DpopInvalid, "DPoP proof has no jti"))?;
        if jti.is_empty() || jti.len() > 256 {
            return Err(bad(Reason::DpopInvalid, "DPoP proof jti is invalid"));
        }
        if s("htm") != Some(t.method) {
            return Err(bad(Reason::DpopMismatch, "DPoP proof is for another method"));
        }
        if !same_url(s("htu").unwrap_or(""), t.url) {
            return Err(bad(Reason::DpopMismatch, "DPoP proof is for another URL"));
        }
        let iat = c
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(Reason::DpopInvalid, "DPoP proof has no iat"))?;
        let window = self.max_age.as_secs().saturating_add(self.leeway.as_secs());
        if iat > now.saturating_add(self.leeway.as_secs()) || now.saturating_sub(iat) > window {
            return Err(bad(Reason::DpopInvalid, "DPoP proof is stale or from the future"));
        }
        let ath = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, t.token.as_bytes()));
        if s("ath") != Some(ath.as_str()) {
            return Err(bad(Reason::DpopMismatch, "DPoP proof is for another access token"));
        }
        Ok(())
    }

    /// Records the `jti` (scoped to the key) and refuses one seen before.
    fn check_fresh(&self, jkt: &str, c: &Map<String, Value>) -> Result<(), AuthError> {
        let jti = c.get("jti").and_then(Value::as_str).unwrap_or("");
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(jkt.as_bytes());
        ctx.update(&[0]);
        ctx.update(jti.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        let entry = self.seen.entry(key).or_insert(());
        if entry.is_fresh() {
            Ok(())
        } else {
            Err(bad(Reason::DpopReplay, "DPoP proof was already used"))
        }
    }
}

fn proof_alg(h: &Map<String, Value>) -> Result<Algorithm, AuthError> {
    if h.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(bad(Reason::DpopInvalid, "DPoP proof typ must be dpop+jwt"));
    }
    let alg: Algorithm = h
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| bad(Reason::DpopInvalid, "DPoP proof alg not allowed"))?;
    if !PROOF_ALGS.contains(&alg) {
        return Err(bad(Reason::DpopInvalid, "DPoP proof alg not allowed"));
    }
    Ok(alg)
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members in order.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let canonical = match s("kty")? {
        "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, q(s("e")?), q(s("n")?)),
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            q(s("crv")?),
            q(s("x")?),
            q(s("y")?)
        ),
        "OKP" => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, q(s("crv")?), q(s("x")?)),
        _ => return None,
    };
    Some(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

fn q(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// Compares `htu` with the request URL: scheme and host case-insensitively, default
/// ports normalised, path exactly; query and fragment of `htu` are ignored (RFC 9449 §4.3).
pub fn same_url(htu: &str, request: &str) -> bool {
    let (Ok(a), Ok(b)) = (url::Url::parse(htu), url::Url::parse(request)) else {
        return false;
    };
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path() == b.path()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_example_thumbprint() {
        // The RSA key of RFC 7638 §3.1 and its published thumbprint.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn url_comparison() {
        assert!(same_url(
            "https://GW.example.com:443/mcp/x?q=1",
            "https://gw.example.com/mcp/x"
        ));
        assert!(!same_url(
            "https://gw.example.com/mcp/y",
            "https://gw.example.com/mcp/x"
        ));
        assert!(!same_url("http://gw.example.com/mcp/x", "https://gw.example.com/mcp/x"));
        assert!(!same_url(
            "https://gw.example.com:8443/mcp/x",
            "https://gw.example.com/mcp/x"
        ));
        assert!(!same_url("", "https://gw.example.com/mcp/x"));
    }

    #[test]
    fn proof_header_refusals() {
        for h in [
            json!({"typ": "JWT", "alg": "ES256"}),
            json!({"typ": "dpop+jwt", "alg": "HS256"}),
            json!({"typ": "dpop+jwt", "alg": "none"}),
            json!({"typ": "dpop+jwt"}),
        ] {
            assert_eq!(
                proof_alg(h.as_object().unwrap()).unwrap_err().reason,
                Reason::DpopInvalid
            );
        }
    }
}
