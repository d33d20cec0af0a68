//! Palisade as an OAuth 2.1 resource server.
//!
//! Every MCP request carries an access token; [`Authenticator::authenticate`] turns it
//! into a verified [`Identity`] or an [`AuthError`] that becomes a `WWW-Authenticate`
//! challenge. JWTs are verified against issuer keys (JWKS by discovery, refreshed on an
//! unknown `kid` at a bounded rate); opaque tokens are introspected (RFC 7662). Tokens
//! must name the endpoint's canonical resource URI in `aud` (M1). DPoP-bound tokens need
//! a fresh proof per request (K4). Verified tokens are cached by SHA-256 until expiry.

mod dev;
mod dpop;
mod error;
mod extract;
mod fetch;
mod identity;
mod introspect;
mod jwks;
mod jwt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use palisade_config::{AuthConfig, SecretRef, StepUp};
use serde_json::{Value, json};

pub use dev::{DEV_ISSUER_PATH, DevIssuer, MintRequest, issuer_url as dev_issuer_url};
pub use dpop::thumbprint as jwk_thumbprint;
pub use error::{AuthError, Reason};
pub use extract::Scheme;
pub use identity::{ClaimMap, Identity};

use crate::dpop::{DpopChecker, ProofTarget};
use crate::introspect::Introspector;
use crate::jwks::KeyCache;
use crate::jwt::Issuer;

/// Path prefix of RFC 9728 Protected Resource Metadata.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// What one MCP endpoint demands.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// The endpoint's path (`/mcp/github`); with the public URL it is the resource URI.
    pub path: &'a str,
    /// Scopes required on top of the global ones.
    pub scopes: &'a [String],
    pub require_dpop: bool,
}

/// The parts of an HTTP request authentication looks at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Expires cached identities when their token does.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Identity>> for UntilExpiry {
    fn expire_after_create(&self, _: &[u8; 32], id: &Arc<Identity>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(
            id.expires_at
                .saturating_sub(palisade_session::unix(std::time::SystemTime::now())),
        ))
    }
}

/// The resource server.
pub struct Authenticator {
    public_url: String,
    required_scopes: Vec<String>,
    scopes_supported: Vec<String>,
    require_dpop: bool,
    leeway: Duration,
    max_token_bytes: usize,
    issuers: Vec<Issuer>,
    introspector: Option<Introspector>,
    introspection_issuer: Option<String>,
    dev: Option<Arc<DevIssuer>>,
    cache: moka::sync::Cache<[u8; 32], Arc<Identity>>,
    dpop: DpopChecker,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("public_url", &self.public_url)
            .field("issuers", &self.issuers.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the authenticator. `public_url` is the gateway's external base URL;
    /// `resolve` reads secrets (the introspection client secret).
    pub fn new(
        cfg: &AuthConfig,
        public_url: &str,
        resolve: &dyn Fn(&SecretRef) -> Result<String, String>,
    ) -> Result<Self, String> {
        let public_url = public_url.trim_end_matches('/').to_owned();
        let mut issuers = Vec::new();
        for (i, ic) in cfg.issuers.iter().enumerate() {
            issuers.push(build_issuer(ic).map_err(|e| format!("auth.issuers[{i}]: {e}"))?);
        }
        let dev = match &cfg.dev_issuer {
            Some(d) => {
                let dev = DevIssuer::load_or_create(&d.key_file, &public_url, d.token_ttl_s)
                    .map_err(|e| format!("auth.dev_issuer: {e}"))?;
                issuers.push(dev_issuer_entry(&dev));
                Some(Arc::new(dev))
            }
            None => None,
        };
        let introspector = match &cfg.introspection {
            Some(ic) => {
                let secret =
                    resolve(&ic.client_secret).map_err(|e| format!("auth.introspection.client_secret: {e}"))?;
                Some(Introspector::new(ic.clone(), &secret)?)
            }
            None => None,
        };
        if issuers.is_empty() && introspector.is_none() {
            return Err("auth: mode = \"oauth\" needs at least one issuer, introspection or dev_issuer".into());
        }
        let cache = moka::sync::Cache::builder()
            .max_capacity(cfg.cache_max_entries)
            .expire_after(UntilExpiry)
            .build();
        let leeway = Duration::from_secs(cfg.leeway_s);
        Ok(Authenticator {
            public_url,
            required_scopes: cfg.required_scopes.clone(),
            scopes_supported: cfg.scopes_supported.clone(),
            require_dpop: cfg.require_dpop,
            leeway,
            max_token_bytes: cfg.max_token_bytes,
            issuers,
            introspection_issuer: cfg.introspection.as_ref().map(|i| i.issuer.clone()),
            introspector,
            dev,
            cache,
            dpop: DpopChecker::new(Duration::from_secs(cfg.dpop_max_age_s), leeway, 1_000_000),
        })
    }

    /// Loads every issuer's keys now, so the first request does not wait (failures are logged).
    pub async fn warm_up(&self) {
        for i in &self.issuers {
            i.keys.refresh().await;
        }
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    pub fn dev_issuer(&self) -> Option<&Arc<DevIssuer>> {
        self.dev.as_ref()
    }

    /// The canonical resource URI of an endpoint.
    pub fn resource_uri(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }

    /// Where the endpoint's Protected Resource Metadata lives.
    pub fn metadata_url(&self, path: &str) -> String {
        format!("{}{METADATA_PATH}{path}", self.public_url)
    }

    /// Verifies the request's credential for `ep`.
    pub async fn authenticate(
        &self,
        req: &Request<'_>,
        ep: &Endpoint<'_>,
        now: u64,
    ) -> Result<Arc<Identity>, AuthError> {
        let presented = extract::extract(req.headers, req.query, self.max_token_bytes)?;
        let id = self.verify_token(presented.token, now).await?;
        self.check_audience(&id, ep)?;
        self.check_binding(&id, &presented, req, ep, now)?;
        self.check_scopes(&id, ep, &[])?;
        Ok(id)
    }

    async fn verify_token(&self, token: &str, now: u64) -> Result<Arc<Identity>, AuthError> {
        let key = sha256(token.as_bytes());
        if let Some(id) = self.cache.get(&key) {
            if id.expires_at > now {
                return Ok(id);
            }
            // Past the cached deadline (the token's exp, or an introspection answer's
            // cache limit): verify again; an expired JWT then fails with its real reason.
            self.cache.invalidate(&key);
        }
        let looks_jwt = token.bytes().filter(|&b| b == b'.').count() == 2;
        let id = if looks_jwt && !self.issuers.is_empty() {
            jwt::verify(token, &self.issuers, self.leeway, now).await?
        } else if let Some(intro) = &self.introspector {
            let mut id = intro.introspect(token, now).await?;
            // Cache an introspection answer at most `cache_max_s`, never past expiry.
            id.expires_at = id.expires_at.min(now.saturating_add(intro.cache_max_s()));
            id
        } else {
            return Err(AuthError::new(Reason::MalformedToken, "malformed access token"));
        };
        let id = Arc::new(id);
        tracing::info!(
            target: "palisade::audit",
            event = "auth.success",
            issuer = %id.principal.issuer(),
            subject = %id.principal.subject(),
            client_id = id.client_id.as_deref().unwrap_or(""),
            token = %token_digest(token),
            "token verified"
        );
        self.cache.insert(key, id.clone());
        Ok(id)
    }

    fn check_audience(&self, id: &Identity, ep: &Endpoint<'_>) -> Result<(), AuthError> {
        // public_url + path, compared in place (this runs on every request).
        let is_resource = |a: &String| a.trim_end_matches('/').strip_prefix(self.public_url.as_str()) == Some(ep.path);
        if id.static_audience || id.audiences.iter().any(is_resource) {
            Ok(())
        } else {
            Err(AuthError::new(Reason::WrongAudience, "token is not for this resource"))
        }
    }

    fn check_binding(
        &self,
        id: &Identity,
        p: &extract::Presented<'_>,
        req: &Request<'_>,
        ep: &Endpoint<'_>,
        now: u64,
    ) -> Result<(), AuthError> {
        let required = self.require_dpop || ep.require_dpop;
        if id.jkt.is_none() && p.scheme == Scheme::Bearer && !required {
            return Ok(());
        }
        if p.scheme != Scheme::Dpop {
            return Err(AuthError::new(
                Reason::DpopMissing,
                "a DPoP-bound token needs the DPoP scheme and a proof",
            ));
        }
        let Some(want) = id.jkt.as_deref() else {
            return Err(AuthError::new(Reason::TokenNotBound, "token is not DPoP-bound"));
        };
        let proof = p
            .proof
            .ok_or_else(|| AuthError::new(Reason::DpopMissing, "DPoP proof missing"))?;
        let url = self.resource_uri(req.path);
        let target = ProofTarget {
            method: req.method,
            url: &url,
            token: p.token,
        };
        self.dpop.check(proof, &target, want, now)
    }

    fn check_scopes(&self, id: &Identity, ep: &Endpoint<'_>, extra: &[String]) -> Result<(), AuthError> {
        let mut required = self.required_scopes.iter().chain(ep.scopes).chain(extra);
        if required.all(|s| id.has_scope(s)) {
            return Ok(());
        }
        let needed = self.needed_scopes(ep, extra);
        let mut e = AuthError::new(Reason::InsufficientScope, "token lacks a required scope");
        e.scope = Some(needed.join(" "));
        Err(e)
    }

    fn needed_scopes<'s>(&'s self, ep: &Endpoint<'s>, extra: &'s [String]) -> Vec<&'s str> {
        let mut v: Vec<&str> = Vec::new();
        for s in self.required_scopes.iter().chain(ep.scopes).chain(extra) {
            if !v.contains(&s.as_str()) {
                v.push(s);
            }
        }
        v
    }

    /// Step-up for one tool (Z4): more scope (403) or a stronger authentication (401).
    pub fn check_step_up(&self, id: &Identity, ep: &Endpoint<'_>, step: &StepUp, now: u64) -> Result<(), AuthError> {
        self.check_scopes(id, ep, &step.scopes)?;
        let acr_ok = step.acr.is_empty() || id.acr.as_ref().is_some_and(|a| step.acr.contains(a));
        let amr_ok = step.amr.is_empty() || id.amr.iter().any(|a| step.amr.contains(a));
        let age_ok = step
            .max_age_s
            .is_none_or(|max| id.auth_time.is_some_and(|t| now.saturating_sub(t) <= max));
        if acr_ok && amr_ok && age_ok {
            return Ok(());
        }
        let mut e = AuthError::new(
            Reason::InsufficientAuthentication,
            "a stronger or more recent authentication is required",
        );
        if !step.acr.is_empty() {
            e.acr_values = Some(step.acr.join(" "));
        }
        e.max_age = step.max_age_s;
        Err(e)
    }

    /// The `WWW-Authenticate` value for a refusal on `ep`.
    pub fn www_authenticate(&self, err: &AuthError, ep: &Endpoint<'_>) -> String {
        let dpop = err.wants_dpop() || self.require_dpop || ep.require_dpop;
        let metadata = self.metadata_url(ep.path);
        let needed = self.needed_scopes(ep, &[]).join(" ");
        let mut params: Vec<(&str, &str)> = Vec::with_capacity(6);
        if let Some(code) = err.reason.oauth_error() {
            params.push(("error", code));
            params.push(("error_description", err.description));
        }
        params.push(("resource_metadata", &metadata));
        match err.scope.as_deref() {
            Some(s) => params.push(("scope", s)),
            None if !needed.is_empty() => params.push(("scope", &needed)),
            None => {}
        }
        if let Some(a) = &err.acr_values {
            params.push(("acr_values", a));
        }
        let max_age = err.max_age.map(|m| m.to_string());
        if let Some(m) = &max_age {
            params.push(("max_age", m));
        }
        if dpop {
            params.push(("algs", dpop::PROOF_ALGS_STR));
            error::challenge("DPoP", &params)
        } else {
            error::challenge("Bearer", &params)
        }
    }

    /// RFC 9728 Protected Resource Metadata for the endpoint at `path` (or the gateway root).
    pub fn resource_metadata(&self, ep: &Endpoint<'_>) -> Value {
        let mut servers: Vec<String> = Vec::new();
        for i in &self.issuers {
            let iss = &i.config.issuer;
            if iss.contains("{tenant}") {
                for t in i.config.tenants.iter().filter(|t| *t != "*") {
                    servers.push(iss.replace("{tenant}", t));
                }
            } else {
                servers.push(iss.clone());
            }
        }
        if let Some(i) = &self.introspection_issuer {
            servers.push(i.clone());
        }
        servers.dedup();
        let scopes: Vec<&str> = if self.scopes_supported.is_empty() {
            self.needed_scopes(ep, &[])
        } else {
            self.scopes_supported.iter().map(String::as_str).collect()
        };
        let mut doc = json!({
            "resource": self.resource_uri(ep.path),
            "authorization_servers": servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": "Palisade MCP gateway",
            "dpop_signing_alg_values_supported": dpop::PROOF_ALGS_STR.split(' ').collect::<Vec<_>>(),
        });
        if self.require_dpop || ep.require_dpop {
            doc["dpop_bound_access_tokens_required"] = Value::Bool(true);
        }
        doc
    }
}

fn parse_algs(names: &[String]) -> Result<Vec<Algorithm>, String> {
    names
        .iter()
        .map(|n| {
            let a: Algorithm = n.parse().map_err(|_| format!("unknown algorithm {n:?}"))?;
            if matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!("{n} is symmetric; only public-key algorithms are accepted"));
            }
            Ok(a)
        })
        .collect()
}

fn build_issuer(ic: &palisade_config::IssuerConfig) -> Result<Issuer, String> {
    let algorithms = parse_algs(&ic.algorithms)?;
    if algorithms.is_empty() {
        return Err("algorithms must list at least one algorithm".into());
    }
    if ic.issuer.contains("{tenant}") {
        if ic.jwks_uri.is_none() {
            return Err("a {tenant} issuer needs an explicit jwks_uri".into());
        }
        if ic.tenants.is_empty() {
            return Err("a {tenant} issuer needs tenants (ids, or \"*\")".into());
        }
    } else if !fetch::allowed_url(&ic.issuer) {
        return Err(format!(
            "issuer {:?} must be an https URL (or http on loopback)",
            ic.issuer
        ));
    }
    if let Some(u) = &ic.jwks_uri
        && !fetch::allowed_url(u)
    {
        return Err(format!("jwks_uri {u:?} must be https (or http on loopback)"));
    }
    let client = fetch::client(ic.ca_file.as_deref())?;
    Ok(Issuer {
        algorithms,
        keys: KeyCache::new_remote(
            ic.issuer.clone(),
            ic.jwks_uri.clone(),
            client,
            Duration::from_secs(ic.jwks_min_refresh_s),
            Duration::from_secs(ic.jwks_ttl_s),
        ),
        claims: ClaimMap::from_issuer(ic),
        config: ic.clone(),
    })
}

fn dev_issuer_entry(dev: &DevIssuer) -> Issuer {
    let config = palisade_config::IssuerConfig {
        issuer: dev.issuer().to_owned(),
        jwks_uri: None,
        algorithms: vec!["ES256".into()],
        audiences: Vec::new(),
        typ: Some("at+jwt".into()),
        tenants: Vec::new(),
        subject_claim: "sub".into(),
        groups_claim: "groups".into(),
        roles_claim: "roles".into(),
        scope_claims: vec!["scope".into()],
        client_id_claims: vec!["client_id".into()],
        ca_file: None,
        jwks_min_refresh_s: 30,
        jwks_ttl_s: 3600,
    };
    Issuer {
        algorithms: vec![Algorithm::ES256],
        keys: KeyCache::new_static(dev.keys()),
        claims: ClaimMap::from_issuer(&config),
        config,
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, b).as_ref());
    out
}

/// A short, non-reversible name for a token in logs.
pub fn token_digest(token: &str) -> String {
    sha256(token.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn dev_auth(dir: &std::path::Path) -> Authenticator {
        let cfg: AuthConfig = toml::from_str(&format!(
            "mode = \"oauth\"\n[dev_issuer]\nkey_file = \"{}\"\n",
            dir.join("k.pem").display()
        ))
        .unwrap();
        Authenticator::new(&cfg, "http://127.0.0.1:1", &|_| Err("none".into())).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Hostile Authorization and DPoP values are refused with an error, never a panic.
        #[test]
        fn arbitrary_credentials_are_refused(
            token in "[A-Za-z0-9._~+/=-]{0,300}",
            proof in "[ -~]{0,300}",
            dpop in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let auth = dev_auth(dir.path());
            let mut h = HeaderMap::new();
            let scheme = if dpop { "DPoP" } else { "Bearer" };
            h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(&format!("{scheme} {token}")).unwrap());
            if let Ok(v) = http::HeaderValue::from_str(&proof) {
                h.insert("dpop", v);
            }
            let req = Request { method: "POST", path: "/mcp/x", query: None, headers: &h };
            let ep = Endpoint { path: "/mcp/x", scopes: &[], require_dpop: dpop };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            prop_assert!(rt.block_on(auth.authenticate(&req, &ep, 1_000)).is_err());
        }

        /// Structured but forged tokens (valid base64url JSON segments) never verify.
        #[test]
        fn forged_jwts_are_refused(
            header in prop::collection::btree_map("[a-z]{1,5}", "[a-zA-Z0-9]{0,8}", 0..5),
            claims in prop::collection::btree_map("[a-z]{1,5}", "[a-zA-Z0-9]{0,8}", 0..5),
            sig in "[A-Za-z0-9_-]{1,90}",
        ) {
            use base64::Engine;
            let b = |v: &std::collections::BTreeMap<String, String>| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
            };
            let token = format!("{}.{}.{sig}", b(&header), b(&claims));
            let dir = tempfile::tempdir().unwrap();
            let auth = dev_auth(dir.path());
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
            let req = Request { method: "POST", path: "/mcp/x", query: None, headers: &h };
            let ep = Endpoint { path: "/mcp/x", scopes: &[], require_dpop: false };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            prop_assert!(rt.block_on(auth.authenticate(&req, &ep, 1_000)).is_err());
        }
    }

    #[test]
    fn dev_tokens_verify_for_their_audience_only() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dev_auth(dir.path());
        let dev = auth.dev_issuer().unwrap().clone();
        let now = palisade_session::unix(std::time::SystemTime::now());
        let mint = |aud: &str, scopes: &[&str]| {
            dev.mint(
                &MintRequest {
                    subject: "alice".into(),
                    audiences: vec![aud.into()],
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                now,
            )
            .unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let run = |token: &str, scopes: &[String]| {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            let req = Request {
                method: "POST",
                path: "/mcp/x",
                query: None,
                headers: &h,
            };
            let ep = Endpoint {
                path: "/mcp/x",
                scopes,
                require_dpop: false,
            };
            rt.block_on(auth.authenticate(&req, &ep, now))
        };
        let ok = mint("http://127.0.0.1:1/mcp/x", &["read"]);
        let id = run(&ok, &[]).unwrap();
        assert_eq!(id.principal.subject(), "alice");
        assert!(!format!("{id:?}").contains(&ok), "Debug must not print the token");
        // Served from the cache the second time; audience and scopes are still checked.
        assert_eq!(
            run(&ok, &["write".into()]).unwrap_err().reason,
            Reason::InsufficientScope
        );
        let other = mint("http://127.0.0.1:1/mcp/y", &[]);
        assert_eq!(run(&other, &[]).unwrap_err().reason, Reason::WrongAudience);
        // An absurd expiry neither overflows nor panics, on first use or from the cache.
        let forever = dev
            .mint(
                &MintRequest {
                    subject: "alice".into(),
                    audiences: vec!["http://127.0.0.1:1/mcp/x".into()],
                    ttl_s: Some(u64::MAX),
                    ..Default::default()
                },
                now,
            )
            .unwrap();
        for _ in 0..2 {
            assert!(run(&forever, &[]).is_ok());
        }
        // A flipped signature byte fails.
        let mut bad = ok.clone().into_bytes();
        let i = bad.len() - 5;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(run(&bad, &[]).unwrap_err().reason, Reason::BadSignature);
    }
}
