//! JWT access tokens (RFC 9068): strict header checks, then signature and claims.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use palisade_config::IssuerConfig;
use serde_json::{Map, Value};

use crate::error::{AuthError, Reason};
use crate::identity::{self, ClaimMap, Identity, Verified};
use crate::jwks::{KeyCache, Lookup};

/// The parts of a compact JWS, decoded but not verified.
pub struct Parts {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

fn bad(reason: Reason, description: &'static str) -> AuthError {
    AuthError::new(reason, description)
}

/// Splits and decodes a compact JWS. Five segments (JWE) and anything else are refused.
pub fn split(token: &str) -> Result<Parts, AuthError> {
    let mut segs = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (segs.next(), segs.next(), segs.next(), segs.next()) else {
        return Err(bad(Reason::MalformedToken, "not a signed JWT"));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(bad(Reason::MalformedToken, "not a signed JWT"));
    }
    let header = decode_object(h)?;
    // Named before the payload is parsed: a nested JWT's payload is not JSON.
    if header
        .get("cty")
        .and_then(Value::as_str)
        .is_some_and(|c| c.eq_ignore_ascii_case("jwt"))
    {
        return Err(bad(Reason::NestedJwt, "nested JWTs are not accepted"));
    }
    Ok(Parts {
        header,
        claims: decode_object(p)?,
    })
}

fn decode_object(seg: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| bad(Reason::MalformedToken, "malformed base64url"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad(Reason::MalformedToken, "JWT segment is not a JSON object")),
    }
}

/// Header checks that do not depend on the key: refuses `none`, symmetric algorithms,
/// key-carrying headers (`jku`, `x5u`, `jwk`, `x5c`), `crit`, and nested JWTs.
pub fn check_header(header: &Map<String, Value>) -> Result<Algorithm, AuthError> {
    for h in ["jku", "x5u", "jwk", "x5c", "crit"] {
        if header.contains_key(h) {
            return Err(bad(
                Reason::ForbiddenHeader,
                "token header names its own keys or extensions",
            ));
        }
    }
    if header
        .get("cty")
        .and_then(Value::as_str)
        .is_some_and(|c| c.eq_ignore_ascii_case("jwt"))
    {
        return Err(bad(Reason::NestedJwt, "nested JWTs are not accepted"));
    }
    if header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(bad(Reason::WrongTyp, "a DPoP proof is not an access token"));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(Reason::MalformedToken, "token header has no alg"))?;
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| bad(Reason::AlgNotAllowed, "signature algorithm not allowed"))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(bad(Reason::AlgNotAllowed, "signature algorithm not allowed"));
    }
    Ok(alg)
}

/// One trusted issuer.
pub struct Issuer {
    pub config: IssuerConfig,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeyCache,
    pub claims: ClaimMap,
}

impl Issuer {
    /// Whether `iss` is this issuer; returns the tenant for a `{tenant}` issuer.
    pub fn matches(&self, iss: &str, claims: &Map<String, Value>) -> Option<Option<String>> {
        let pattern = &self.config.issuer;
        if !pattern.contains("{tenant}") {
            return (pattern == iss).then_some(None);
        }
        let tid = claims.get("tid").and_then(Value::as_str)?;
        let tenant_ok = self.config.tenants.iter().any(|t| t == "*" || t == tid);
        let valid_tid = !tid.is_empty() && tid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        (valid_tid && tenant_ok && pattern.replace("{tenant}", tid) == iss).then(|| Some(tid.to_owned()))
    }
}

/// Verifies a JWT access token (everything but the endpoint's audience and scopes).
pub async fn verify(token: &str, issuers: &[Issuer], leeway: Duration, now: u64) -> Result<Identity, AuthError> {
    let parts = split(token)?;
    let alg = check_header(&parts.header)?;
    let iss = parts
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(Reason::WrongIssuer, "token has no issuer"))?;
    let (issuer, tenant) = issuers
        .iter()
        .find_map(|i| i.matches(iss, &parts.claims).map(|t| (i, t)))
        .ok_or_else(|| bad(Reason::WrongIssuer, "token issuer is not trusted"))?;
    if !issuer.algorithms.contains(&alg) {
        return Err(bad(Reason::AlgNotAllowed, "signature algorithm not allowed"));
    }
    if let Some(want) = &issuer.config.typ {
        let typ = parts.header.get("typ").and_then(Value::as_str).unwrap_or("");
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        if !typ.eq_ignore_ascii_case(want) {
            return Err(bad(Reason::WrongTyp, "token type is not accepted"));
        }
    }
    let kid = parts.header.get("kid").and_then(Value::as_str);
    let key = match issuer.keys.lookup(kid, alg).await {
        Lookup::Found(k) => k,
        Lookup::Unknown => return Err(bad(Reason::UnknownKid, "signing key not found")),
        Lookup::Unavailable => return Err(bad(Reason::KeysUnavailable, "signing keys unavailable")),
    };
    let mut v = Validation::new(alg);
    v.leeway = leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.required_spec_claims = ["exp".to_owned()].into_iter().collect();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v).map_err(|e| map_error(e.kind()))?;
    let claims = data.claims;
    check_times(&claims, leeway, now)?;
    let audiences = identity::strings(claims.get("aud"));
    if audiences.is_empty() {
        return Err(bad(Reason::MissingAudience, "token has no audience"));
    }
    let static_audience = audiences.iter().any(|a| issuer.config.audiences.contains(a));
    identity::build(
        claims,
        &issuer.claims,
        Verified {
            issuer: iss.to_owned(),
            token: token.to_owned(),
            static_audience,
            tenant,
        },
    )
    .ok_or_else(|| bad(Reason::MissingClaim, "token has no user id claim"))
}

/// `iat` must not be in the future; `exp` must be a number (the library checked its value).
fn check_times(claims: &Map<String, Value>, leeway: Duration, now: u64) -> Result<(), AuthError> {
    if !claims.get("exp").is_some_and(Value::is_u64) {
        return Err(bad(Reason::MissingClaim, "token has no valid exp"));
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat
            .as_u64()
            .ok_or_else(|| bad(Reason::MalformedToken, "iat is not a number"))?;
        if iat > now.saturating_add(leeway.as_secs()) {
            return Err(bad(Reason::NotYetValid, "token issued in the future"));
        }
    }
    Ok(())
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => bad(Reason::BadSignature, "signature does not verify"),
        ErrorKind::ExpiredSignature => bad(Reason::Expired, "token expired"),
        ErrorKind::ImmatureSignature => bad(Reason::NotYetValid, "token not yet valid"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            bad(Reason::AlgNotAllowed, "signature algorithm not allowed")
        }
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            bad(Reason::MissingClaim, "token lacks a required claim")
        }
        _ => bad(Reason::MalformedToken, "malformed token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seg(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn tok(h: Value) -> String {
        format!("{}.{}.c2ln", seg(&h), seg(&json!({"iss": "x"})))
    }

    #[test]
    fn header_refusals() {
        let cases = [
            (json!({"alg": "none"}), Reason::AlgNotAllowed),
            (json!({"alg": "None"}), Reason::AlgNotAllowed),
            (json!({"alg": "HS256"}), Reason::AlgNotAllowed),
            (
                json!({"alg": "RS256", "jku": "https://evil/jwks"}),
                Reason::ForbiddenHeader,
            ),
            (
                json!({"alg": "RS256", "x5u": "https://evil/cert"}),
                Reason::ForbiddenHeader,
            ),
            (json!({"alg": "ES256", "jwk": {"kty": "EC"}}), Reason::ForbiddenHeader),
            (json!({"alg": "RS256", "crit": ["exp"]}), Reason::ForbiddenHeader),
            (json!({"alg": "RS256", "cty": "JWT"}), Reason::NestedJwt),
            (json!({"alg": "ES256", "typ": "dpop+jwt"}), Reason::WrongTyp),
            (json!({"typ": "JWT"}), Reason::MalformedToken),
        ];
        for (h, want) in cases {
            let got = split(&tok(h.clone())).and_then(|parts| check_header(&parts.header));
            assert_eq!(got.unwrap_err().reason, want, "{h}");
        }
        // A nested JWT whose payload is itself a compact JWT (not JSON).
        let inner = tok(json!({"alg": "RS256"}));
        let nested = format!(
            "{}.{}.c2ln",
            seg(&json!({"alg": "RS256", "cty": "JWT"})),
            URL_SAFE_NO_PAD.encode(inner)
        );
        assert_eq!(split(&nested).err().map(|e| e.reason), Some(Reason::NestedJwt));
        let parts = split(&tok(json!({"alg": "ES256", "typ": "at+jwt", "kid": "k"}))).unwrap();
        assert_eq!(check_header(&parts.header).unwrap(), Algorithm::ES256);
    }

    #[test]
    fn malformed_shapes() {
        for t in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            "..",
            "e30.e30.",
            "!!.e30.c2ln",
            "e30.W10.c2ln",
        ] {
            assert!(split(t).is_err(), "{t}");
        }
    }

    #[test]
    fn tenant_issuer_needs_an_allowed_tid() {
        let mut cfg: IssuerConfig = toml::from_str(
            r#"issuer = "https://login.microsoftonline.com/{tenant}/v2.0"
               algorithms = ["RS256"]
               jwks_uri = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
               tenants = ["t-1"]"#,
        )
        .unwrap();
        let mk = |cfg: IssuerConfig| Issuer {
            algorithms: vec![Algorithm::RS256],
            keys: KeyCache::new_static(Vec::new()),
            claims: ClaimMap::from_issuer(&cfg),
            config: cfg,
        };
        let i = mk(cfg.clone());
        let c = |tid: &str| json!({ "tid": tid }).as_object().unwrap().clone();
        assert_eq!(
            i.matches("https://login.microsoftonline.com/t-1/v2.0", &c("t-1")),
            Some(Some("t-1".into()))
        );
        assert_eq!(i.matches("https://login.microsoftonline.com/t-2/v2.0", &c("t-2")), None);
        assert_eq!(i.matches("https://login.microsoftonline.com/t-1/v2.0", &c("t-2")), None);
        assert_eq!(i.matches("https://login.microsoftonline.com/../v2.0", &c("..")), None);
        cfg.tenants = vec!["*".into()];
        let any = mk(cfg);
        assert!(
            any.matches("https://login.microsoftonline.com/t-9/v2.0", &c("t-9"))
                .is_some()
        );
    }
}
