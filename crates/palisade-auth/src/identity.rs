//! The verified caller, and how token claims map onto it.

use palisade_session::Principal;
use serde_json::{Map, Value};

/// A caller whose token passed every check. Only the authenticator makes these.
#[derive(Clone)]
pub struct Identity {
    pub principal: Principal,
    /// The OAuth client the token was issued to.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: Option<u64>,
    /// Entra ID tenant (`tid`).
    pub tenant: Option<String>,
    /// The token's audiences.
    pub audiences: Vec<String>,
    /// Whether `aud` names one of the issuer's configured extra audiences (valid on every endpoint).
    pub(crate) static_audience: bool,
    /// Unix time the token expires.
    pub expires_at: u64,
    /// DPoP key thumbprint the token is bound to (`cnf.jkt`).
    pub jkt: Option<String>,
    /// The verified claims, for policy.
    pub claims: Map<String, Value>,
    /// The presented token, kept for RFC 8693 token exchange; never printed.
    token: RawToken,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("issuer", &self.principal.issuer())
            .field("subject", &self.principal.subject())
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The presented access token (for token exchange towards an upstream; never forward it).
    pub fn subject_token(&self) -> &str {
        &self.token.0
    }

    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|x| x == s)
    }
}

/// An access token held in memory; `Debug` never shows it.
#[derive(Clone)]
struct RawToken(String);

/// Which claims hold what (per issuer; Entra, Keycloak, Auth0 and Okta differ).
#[derive(Debug, Clone)]
pub struct ClaimMap {
    pub subject: String,
    pub groups: String,
    pub roles: String,
    pub scopes: Vec<String>,
    pub client_ids: Vec<String>,
}

impl ClaimMap {
    pub fn from_issuer(c: &palisade_config::IssuerConfig) -> Self {
        ClaimMap {
            subject: c.subject_claim.clone(),
            groups: c.groups_claim.clone(),
            roles: c.roles_claim.clone(),
            scopes: c.scope_claims.clone(),
            client_ids: c.client_id_claims.clone(),
        }
    }

    /// The mapping of RFC 7662 introspection answers.
    pub fn introspection() -> Self {
        ClaimMap {
            subject: "sub".into(),
            groups: "groups".into(),
            roles: "roles".into(),
            scopes: vec!["scope".into()],
            client_ids: vec!["client_id".into()],
        }
    }
}

/// Inputs to [`build`] that are not claims.
pub(crate) struct Verified {
    pub issuer: String,
    pub token: String,
    pub static_audience: bool,
    pub tenant: Option<String>,
}

/// Builds the identity from verified claims. Fails when the user id claim is missing.
pub(crate) fn build(claims: Map<String, Value>, map: &ClaimMap, v: Verified) -> Option<Identity> {
    let subject = claims.get(&map.subject).and_then(Value::as_str)?.to_owned();
    if subject.is_empty() {
        return None;
    }
    let scopes = map.scopes.iter().flat_map(|c| strings(claims.get(c))).collect();
    let client_id = map
        .client_ids
        .iter()
        .find_map(|c| claims.get(c).and_then(Value::as_str))
        .map(str::to_owned);
    let jkt = claims
        .get("cnf")
        .and_then(|c| c.get("jkt"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(Identity {
        principal: Principal::verified(v.issuer, subject),
        client_id,
        scopes,
        groups: strings(claims.get(&map.groups)),
        roles: strings(claims.get(&map.roles)),
        acr: claims.get("acr").and_then(Value::as_str).map(str::to_owned),
        amr: strings(claims.get("amr")),
        auth_time: claims.get("auth_time").and_then(Value::as_u64),
        tenant: v.tenant,
        audiences: strings(claims.get("aud")),
        static_audience: v.static_audience,
        expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        jkt,
        claims,
        token: RawToken(v.token),
    })
}

/// A claim that is a space-separated string or an array of strings.
pub(crate) fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split(' ').filter(|x| !x.is_empty()).map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verified() -> Verified {
        Verified {
            issuer: "https://idp".into(),
            token: "t".into(),
            static_audience: false,
            tenant: None,
        }
    }

    #[test]
    fn entra_v1_shape() {
        // Entra v1: user in `oid`, delegated scopes in `scp` (space-separated), app roles in `roles`, client in `appid`.
        let claims = json!({"oid": "u-1", "sub": "pairwise", "scp": "Files.Read User.Read", "roles": ["Admin"], "appid": "c-1", "aud": "api://palisade", "exp": 10});
        let map = ClaimMap {
            subject: "oid".into(),
            groups: "groups".into(),
            roles: "roles".into(),
            scopes: vec!["scope".into(), "scp".into()],
            client_ids: vec!["client_id".into(), "azp".into(), "appid".into()],
        };
        let id = build(claims.as_object().unwrap().clone(), &map, verified()).unwrap();
        assert_eq!(id.principal.subject(), "u-1");
        assert_eq!(id.scopes, ["Files.Read", "User.Read"]);
        assert_eq!(id.roles, ["Admin"]);
        assert_eq!(id.client_id.as_deref(), Some("c-1"));
        assert_eq!(id.audiences, ["api://palisade"]);
        assert!(!format!("{id:?}").contains("\"t\""));
    }

    #[test]
    fn keycloak_and_auth0_shapes() {
        // Keycloak: scope string, azp client, groups array. Auth0: scope string + permissions-style arrays.
        let kc = json!({"sub": "k", "scope": "openid mcp", "azp": "cli", "groups": ["/eng"], "exp": 1});
        let id = build(kc.as_object().unwrap().clone(), &ClaimMap::introspection(), verified()).unwrap();
        assert_eq!(id.scopes, ["openid", "mcp"]);
        assert_eq!(id.groups, ["/eng"]);
        let missing_sub = json!({"scope": "mcp"});
        assert!(
            build(
                missing_sub.as_object().unwrap().clone(),
                &ClaimMap::introspection(),
                verified()
            )
            .is_none()
        );
    }
}
