//! Finding the credential in a request (RFC 6750 §2.1, RFC 9449 §7).

use http::HeaderMap;

use crate::error::{AuthError, Reason};

/// The authorization scheme the token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// A credential as presented: nothing about it is verified yet.
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
    /// The `DPoP` proof header, if any.
    pub proof: Option<&'a str>,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("scheme", &self.scheme)
            .field("token", &"***")
            .finish()
    }
}

/// Longest DPoP proof accepted.
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Takes the token from the single `Authorization` header. Tokens in the query
/// string are refused outright (they end up in logs and browser history).
pub fn extract<'a>(headers: &'a HeaderMap, query: Option<&str>, max_bytes: usize) -> Result<Presented<'a>, AuthError> {
    if query.is_some_and(has_query_token) {
        return Err(AuthError::new(
            Reason::TokenInQuery,
            "access tokens are not accepted in the query string",
        ));
    }
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::new(Reason::MissingToken, "authorization required"));
    };
    if values.next().is_some() {
        return Err(AuthError::new(
            Reason::MalformedToken,
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::new(Reason::MalformedToken, "Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::new(Reason::MalformedToken, "Authorization header has no scheme"))?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(AuthError::new(Reason::MissingToken, "unsupported authorization scheme"));
    };
    let token = token.trim_matches(' ');
    if token.len() > max_bytes {
        return Err(AuthError::new(Reason::TokenTooLarge, "access token too large"));
    }
    if !is_b64token(token) {
        return Err(AuthError::new(Reason::MalformedToken, "malformed access token"));
    }
    let proof = dpop_header(headers)?;
    Ok(Presented { scheme, token, proof })
}

fn dpop_header(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut proofs = headers.get_all("dpop").iter();
    let Some(p) = proofs.next() else { return Ok(None) };
    if proofs.next().is_some() {
        return Err(AuthError::new(Reason::DpopInvalid, "more than one DPoP header"));
    }
    let p = p
        .to_str()
        .map_err(|_| AuthError::new(Reason::DpopInvalid, "DPoP header is not ASCII"))?;
    if p.len() > MAX_PROOF_BYTES {
        return Err(AuthError::new(Reason::DpopInvalid, "DPoP proof too large"));
    }
    Ok(Some(p))
}

fn has_query_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or("");
        key.eq_ignore_ascii_case("access_token") || key.eq_ignore_ascii_case("access%5Ftoken")
    })
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn bearer_and_dpop_schemes() {
        let m = h(&[("authorization", "Bearer abc.def.ghi")]);
        let p = extract(&m, None, 100).unwrap();
        assert_eq!((p.scheme, p.token), (Scheme::Bearer, "abc.def.ghi"));
        let m = h(&[("authorization", "dpop abc"), ("dpop", "x.y.z")]);
        let p = extract(&m, None, 100).unwrap();
        assert_eq!((p.scheme, p.proof), (Scheme::Dpop, Some("x.y.z")));
    }

    #[test]
    fn refusals() {
        let cases: Vec<(HeaderMap, Option<&str>, Reason)> = vec![
            (h(&[]), None, Reason::MissingToken),
            (
                h(&[("authorization", "Basic dXNlcjpwdw==")]),
                None,
                Reason::MissingToken,
            ),
            (h(&[("authorization", "Bearer")]), None, Reason::MalformedToken),
            (h(&[("authorization", "Bearer a b")]), None, Reason::MalformedToken),
            (h(&[("authorization", "Bearer a\"b")]), None, Reason::MalformedToken),
            (h(&[("authorization", "Bearer ===")]), None, Reason::MalformedToken),
            (
                h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
                None,
                Reason::MalformedToken,
            ),
            (h(&[("authorization", "Bearer  ")]), None, Reason::MalformedToken),
            (
                h(&[("authorization", &format!("Bearer {}", "a".repeat(101)))]),
                None,
                Reason::TokenTooLarge,
            ),
            (h(&[]), Some("x=1&access_token=abc"), Reason::TokenInQuery),
            (
                h(&[("authorization", "Bearer a")]),
                Some("ACCESS_TOKEN=abc"),
                Reason::TokenInQuery,
            ),
            (
                h(&[("authorization", "DPoP a"), ("dpop", "p"), ("dpop", "q")]),
                None,
                Reason::DpopInvalid,
            ),
        ];
        for (m, q, want) in cases {
            assert_eq!(extract(&m, q, 100).unwrap_err().reason, want, "{m:?} {q:?}");
        }
    }

    #[test]
    fn other_query_parameters_are_fine() {
        let m = h(&[("authorization", "Bearer abc")]);
        assert!(extract(&m, Some("access=1&token=2"), 100).is_ok());
    }
}
