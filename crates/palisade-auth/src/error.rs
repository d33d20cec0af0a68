//! Why a request was refused, and how that becomes an HTTP challenge.

use std::fmt;

use http::StatusCode;

/// The reason a credential was refused. Logged as `reason` on `auth.failure` audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    TokenInQuery,
    MalformedToken,
    TokenTooLarge,
    AlgNotAllowed,
    ForbiddenHeader,
    UnknownKid,
    KeysUnavailable,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    MissingAudience,
    MissingClaim,
    Expired,
    NotYetValid,
    NestedJwt,
    WrongTyp,
    WrongTenant,
    InactiveToken,
    IntrospectionFailed,
    InsufficientScope,
    InsufficientAuthentication,
    DpopMissing,
    DpopInvalid,
    DpopReplay,
    DpopMismatch,
    TokenNotBound,
    SessionPrincipalMismatch,
}

impl Reason {
    /// The snake_case name used in logs and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::TokenInQuery => "token_in_query",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::ForbiddenHeader => "forbidden_header",
            Reason::UnknownKid => "unknown_kid",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::BadSignature => "bad_signature",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingAudience => "missing_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::NestedJwt => "nested_jwt",
            Reason::WrongTyp => "wrong_typ",
            Reason::WrongTenant => "wrong_tenant",
            Reason::InactiveToken => "inactive_token",
            Reason::IntrospectionFailed => "introspection_failed",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::InsufficientAuthentication => "insufficient_user_authentication",
            Reason::DpopMissing => "dpop_missing",
            Reason::DpopInvalid => "dpop_invalid",
            Reason::DpopReplay => "dpop_replay",
            Reason::DpopMismatch => "dpop_mismatch",
            Reason::TokenNotBound => "token_not_bound",
            Reason::SessionPrincipalMismatch => "session_principal_mismatch",
        }
    }

    /// The OAuth `error` code of the challenge (RFC 6750, RFC 9449, RFC 9470).
    pub fn oauth_error(self) -> Option<&'static str> {
        match self {
            Reason::MissingToken => None,
            Reason::TokenInQuery => Some("invalid_request"),
            Reason::InsufficientScope => Some("insufficient_scope"),
            Reason::InsufficientAuthentication => Some("insufficient_user_authentication"),
            Reason::DpopMissing | Reason::DpopInvalid | Reason::DpopReplay | Reason::DpopMismatch => {
                Some("invalid_dpop_proof")
            }
            _ => Some("invalid_token"),
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::TokenInQuery => StatusCode::BAD_REQUEST,
            Reason::InsufficientScope => StatusCode::FORBIDDEN,
            Reason::SessionPrincipalMismatch => StatusCode::NOT_FOUND,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn is_dpop(self) -> bool {
        matches!(
            self,
            Reason::DpopMissing
                | Reason::DpopInvalid
                | Reason::DpopReplay
                | Reason::DpopMismatch
                | Reason::TokenNotBound
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the reason, a short description safe to show the client, and what
/// the challenge must ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub reason: Reason,
    pub description: &'static str,
    /// Scopes to ask for (`insufficient_scope`).
    pub scope: Option<String>,
    /// `acr_values` to ask for (`insufficient_user_authentication`).
    pub acr_values: Option<String>,
    /// `max_age` to ask for (`insufficient_user_authentication`).
    pub max_age: Option<u64>,
}

impl AuthError {
    pub fn new(reason: Reason, description: &'static str) -> Self {
        AuthError {
            reason,
            description,
            scope: None,
            acr_values: None,
            max_age: None,
        }
    }

    /// Whether the challenge should use the `DPoP` scheme.
    pub fn wants_dpop(&self) -> bool {
        self.reason.is_dpop()
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.description)
    }
}

impl std::error::Error for AuthError {}

/// Builds a `WWW-Authenticate` value. Parameter values never contain `"` or `\`
/// (they come from configuration or fixed strings), but are escaped anyway.
pub fn challenge(scheme: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(scheme);
    for (i, (k, v)) in params.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            if !c.is_control() {
                out.push(c);
            }
        }
        out.push('"');
    }
    out
}
