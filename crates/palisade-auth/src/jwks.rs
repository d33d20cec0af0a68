//! Signing keys of one issuer: fetched by discovery or from a configured URL, cached,
//! refreshed on an unknown `kid` at most once per interval (a flood of random kids
//! cannot hammer the identity provider).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::fetch;

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// `alg` the JWK pins, if any.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub key: DecodingKey,
}

/// Key families; a token's `alg` must match the key's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::EcP384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// Parses one public JWK. Symmetric keys, private keys and keys not for signing are skipped.
pub fn parse_jwk(v: &Value) -> Option<Key> {
    let obj = v.as_object()?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| obj.contains_key(*m))
    {
        return None;
    }
    if obj.get("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let kind = match (obj.get("kty")?.as_str()?, obj.get("crv").and_then(Value::as_str)) {
        ("RSA", _) => KeyKind::Rsa,
        ("EC", Some("P-256")) => KeyKind::EcP256,
        ("EC", Some("P-384")) => KeyKind::EcP384,
        ("OKP", Some("Ed25519")) => KeyKind::Ed25519,
        _ => return None,
    };
    let alg = match obj.get("alg") {
        None => None,
        Some(a) => Some(a.as_str()?.parse::<Algorithm>().ok()?),
    };
    if alg.is_some_and(|a| !kind.fits(a)) {
        return None;
    }
    let jwk: Jwk = serde_json::from_value(v.clone()).ok()?;
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: obj.get("kid").and_then(Value::as_str).map(str::to_owned),
        alg,
        kind,
        key,
    })
}

/// Parses a JWK Set document, keeping the usable keys.
pub fn parse_set(doc: &Value) -> Vec<Key> {
    doc.get("keys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().take(100).filter_map(parse_jwk).collect())
        .unwrap_or_default()
}

/// Where the keys come from.
pub enum Source {
    /// Keys given in process (the development issuer).
    Static,
    /// A JWKS URL, known or found by discovery.
    Remote {
        issuer: String,
        jwks_uri: Option<String>,
        client: reqwest::Client,
    },
}

struct State {
    keys: Arc<Vec<Key>>,
    fetched: Option<Instant>,
    jwks_uri: Option<String>,
}

/// The cached key set of one issuer.
pub struct KeyCache {
    source: Source,
    state: RwLock<State>,
    /// Last refresh attempt (success or not): the flood guard.
    last_attempt: Mutex<Option<Instant>>,
    refreshing: tokio::sync::Mutex<()>,
    min_refresh: Duration,
    ttl: Duration,
}

/// What a lookup found.
pub enum Lookup {
    Found(Key),
    /// No key with that id even after a refresh (or the refresh was rate-limited).
    Unknown,
    /// Keys could not be loaded at all.
    Unavailable,
}

impl KeyCache {
    pub fn new_static(keys: Vec<Key>) -> Self {
        Self::build(Source::Static, keys, Duration::MAX, Duration::MAX)
    }

    pub fn new_remote(
        issuer: String,
        jwks_uri: Option<String>,
        client: reqwest::Client,
        min_refresh: Duration,
        ttl: Duration,
    ) -> Self {
        let source = Source::Remote {
            issuer,
            jwks_uri,
            client,
        };
        Self::build(source, Vec::new(), min_refresh, ttl)
    }

    fn build(source: Source, keys: Vec<Key>, min_refresh: Duration, ttl: Duration) -> Self {
        let jwks_uri = match &source {
            Source::Remote { jwks_uri, .. } => jwks_uri.clone(),
            Source::Static => None,
        };
        KeyCache {
            source,
            state: RwLock::new(State {
                keys: Arc::new(keys),
                fetched: None,
                jwks_uri,
            }),
            last_attempt: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            min_refresh,
            ttl,
        }
    }

    fn snapshot(&self) -> (Arc<Vec<Key>>, Option<Instant>) {
        match self.state.read() {
            Ok(s) => (s.keys.clone(), s.fetched),
            Err(p) => (p.get_ref().keys.clone(), p.get_ref().fetched),
        }
    }

    /// Finds the key for a token header. Refreshes when the set is stale or the `kid`
    /// is unknown, within the rate limit.
    pub async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let (keys, fetched) = self.snapshot();
        let stale = fetched.is_none_or(|t| t.elapsed() >= self.ttl);
        if let Some(k) = find(&keys, kid, alg)
            && !(stale && matches!(self.source, Source::Remote { .. }))
        {
            return Lookup::Found(k);
        }
        if matches!(self.source, Source::Static) {
            return Lookup::Unknown;
        }
        self.refresh().await;
        let (keys, fetched) = self.snapshot();
        match find(&keys, kid, alg) {
            Some(k) => Lookup::Found(k),
            None if fetched.is_none() => Lookup::Unavailable,
            None => Lookup::Unknown,
        }
    }

    /// Refreshes unless one was attempted within `min_refresh`. Returns whether a fetch succeeded.
    pub async fn refresh(&self) -> bool {
        if !self.may_attempt() {
            // Within the flood guard no new fetch starts, but one in flight (the start-up
            // fetch, say) is awaited, so its keys are seen.
            drop(self.refreshing.lock().await);
            return false;
        }
        let _one = self.refreshing.lock().await;
        // Another caller may have refreshed while this one waited.
        if !self.may_attempt() {
            return false;
        }
        self.mark_attempt();
        match self.fetch().await {
            Ok((keys, uri)) => {
                tracing::info!(target: "palisade::audit", event = "auth.jwks_refresh", keys = keys.len(), jwks_uri = %uri, "signing keys loaded");
                if let Ok(mut s) = self.state.write() {
                    s.keys = Arc::new(keys);
                    s.fetched = Some(Instant::now());
                    s.jwks_uri = Some(uri);
                }
                true
            }
            Err(e) => {
                tracing::warn!(target: "palisade::audit", event = "auth.jwks_refresh_failed", error = %e, "could not load signing keys");
                false
            }
        }
    }

    fn may_attempt(&self) -> bool {
        let last = match self.last_attempt.lock() {
            Ok(g) => *g,
            Err(p) => **p.get_ref(),
        };
        last.is_none_or(|t| t.elapsed() >= self.min_refresh)
    }

    fn mark_attempt(&self) {
        if let Ok(mut g) = self.last_attempt.lock() {
            *g = Some(Instant::now());
        }
    }

    async fn fetch(&self) -> Result<(Vec<Key>, String), String> {
        let Source::Remote { issuer, client, .. } = &self.source else {
            return Err("static key set".into());
        };
        let known = match self.state.read() {
            Ok(s) => s.jwks_uri.clone(),
            Err(p) => p.get_ref().jwks_uri.clone(),
        };
        let uri = match known {
            Some(u) => u,
            None => discover(client, issuer).await?,
        };
        let doc = fetch::get_json(client, &uri).await?;
        let keys = parse_set(&doc);
        if keys.is_empty() {
            return Err(format!("{uri}: no usable signing keys"));
        }
        Ok((keys, uri))
    }
}

fn find(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Option<Key> {
    let fits = |k: &&Key| k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg);
    match kid {
        Some(kid) => keys
            .iter()
            .filter(fits)
            .find(|k| k.kid.as_deref() == Some(kid))
            .cloned(),
        // Without a kid, only an unambiguous key is used.
        None => {
            let mut it = keys.iter().filter(fits);
            let first = it.next()?;
            if it.next().is_some() { None } else { Some(first.clone()) }
        }
    }
}

/// Metadata URLs for an issuer, in the order the MCP authorization spec lists them:
/// RFC 8414 (path inserted), OpenID Connect with the path inserted, then appended.
pub fn discovery_urls(issuer: &str) -> Vec<String> {
    let Ok(u) = reqwest::Url::parse(issuer) else {
        return Vec::new();
    };
    let origin = u.origin().ascii_serialization();
    let path = u.path().trim_end_matches('/');
    if path.is_empty() {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server"),
            format!("{origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ]
    }
}

/// Finds the issuer's `jwks_uri`. The metadata's `issuer` must equal the configured one
/// (RFC 8414 §3.3), or a look-alike document could redirect key loading.
pub async fn discover(client: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let mut errors = Vec::new();
    for url in discovery_urls(issuer) {
        match fetch::get_json(client, &url).await {
            Ok(doc) => {
                if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
                    errors.push(format!("{url}: issuer does not match"));
                    continue;
                }
                match doc.get("jwks_uri").and_then(Value::as_str) {
                    Some(j) if fetch::allowed_url(j) => return Ok(j.to_owned()),
                    Some(j) => errors.push(format!("{url}: jwks_uri {j} is not https")),
                    None => errors.push(format!("{url}: no jwks_uri")),
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Err(format!("discovery failed for {issuer}: {}", errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn discovery_order_follows_the_spec() {
        assert_eq!(
            discovery_urls("https://idp.example.com/tenant1"),
            [
                "https://idp.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://idp.example.com/.well-known/openid-configuration/tenant1",
                "https://idp.example.com/tenant1/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            discovery_urls("https://idp.example.com/"),
            [
                "https://idp.example.com/.well-known/oauth-authorization-server",
                "https://idp.example.com/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn symmetric_private_and_encryption_keys_are_skipped() {
        let set = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "EC", "crv": "P-256", "kid": "priv", "d": "AAAA",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRKEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRKEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "ok",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRKEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "wrongalg", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRKEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            "garbage", {"kty": "RSA"}
        ]});
        let keys = parse_set(&set);
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap_or_default()).collect();
        assert_eq!(kids, ["ok"]);
        assert!(find(&keys, Some("ok"), Algorithm::ES256).is_some());
        assert!(find(&keys, Some("ok"), Algorithm::RS256).is_none());
        assert!(find(&keys, None, Algorithm::ES256).is_some());
        assert!(find(&keys, Some("other"), Algorithm::ES256).is_none());
    }
}
