//! The HashiCorp Vault KV v2 backend.
//!
//! All secrets live in one KV v2 secret (`{mount}/data/{path}`), one key per
//! secret name. The whole map is fetched at once and kept for a short while, so
//! resolving many names at start costs one request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use palisade_config::VaultConfig;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{Secret, SecretError, validate_name};

/// How long a fetched secret map is reused.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);
/// Largest Vault response read.
const MAX_BODY_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Name → value; `None` where Vault holds something other than a string.
type Values = BTreeMap<String, Option<Secret>>;

struct Cached {
    at: Instant,
    values: Arc<Values>,
}

/// Secrets read from one Vault KV v2 secret.
pub struct VaultStore {
    url: reqwest::Url,
    /// `mount/path`, for messages.
    location: String,
    token: Secret,
    namespace: Option<HeaderValue>,
    client: reqwest::Client,
    ttl: Duration,
    /// Held across a fetch, so concurrent readers share one request.
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultStore")
            .field("url", &self.url.as_str())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl VaultStore {
    /// Builds the client; the token is read now from the variable `token_env`.
    pub fn from_config(cfg: &VaultConfig) -> Result<Self, SecretError> {
        let token = std::env::var(&cfg.token_env)
            .map_err(|_| SecretError::Config(format!("vault token variable {} is not set", cfg.token_env)))?;
        Self::with_token(cfg, Secret::from(token))
    }

    /// Builds the client with an explicit token.
    pub fn with_token(cfg: &VaultConfig, token: Secret) -> Result<Self, SecretError> {
        if token.is_empty() || HeaderValue::from_bytes(token.expose()).is_err() {
            return Err(SecretError::Config(
                "the vault token is empty or not a valid header value".into(),
            ));
        }
        let url = kv_url(cfg)?;
        let namespace = cfg
            .namespace
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| SecretError::Config("vault.namespace is not a valid header value".into()))?;
        Ok(VaultStore {
            url,
            location: format!("{}/{}", cfg.mount.trim_matches('/'), cfg.path.trim_matches('/')),
            token,
            namespace,
            client: client(cfg)?,
            ttl: DEFAULT_CACHE_TTL,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Replaces the cache lifetime (zero: fetch on every call).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The secret called `name`.
    pub async fn get(&self, name: &str) -> Result<Secret, SecretError> {
        validate_name(name)?;
        match self.values().await?.get(name) {
            Some(Some(v)) => Ok(v.clone()),
            Some(None) => Err(SecretError::Vault(format!(
                "{}: the value of {name:?} is not a string",
                self.location
            ))),
            None => Err(SecretError::NotFound(name.to_owned())),
        }
    }

    /// Names with string values that are valid secret names, sorted.
    pub async fn list(&self) -> Result<Vec<String>, SecretError> {
        let values = self.values().await?;
        Ok(values
            .iter()
            .filter(|(k, v)| v.is_some() && validate_name(k).is_ok())
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn values(&self) -> Result<Arc<Values>, SecretError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.at.elapsed() < self.ttl
        {
            return Ok(c.values.clone());
        }
        let values = Arc::new(self.fetch().await?);
        *cache = Some(Cached {
            at: Instant::now(),
            values: values.clone(),
        });
        Ok(values)
    }

    async fn fetch(&self) -> Result<Values, SecretError> {
        let mut token = HeaderValue::from_bytes(self.token.expose())
            .map_err(|_| SecretError::Config("the vault token is not a valid header value".into()))?;
        token.set_sensitive(true);
        let mut req = self
            .client
            .get(self.url.clone())
            .header("x-vault-token", token)
            .header("x-vault-request", "true")
            .header(http::header::ACCEPT, "application/json");
        if let Some(ns) = &self.namespace {
            req = req.header("x-vault-namespace", ns.clone());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SecretError::Vault(palisade_fetch::describe(&e)))?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(self.status_error(status));
        }
        let body = read_bounded(resp).await?;
        parse_kv(&body).map_err(|why| SecretError::Vault(format!("{}: {why}", self.location)))
    }

    fn status_error(&self, status: StatusCode) -> SecretError {
        let loc = &self.location;
        SecretError::Vault(match status.as_u16() {
            401 | 403 => format!(
                "permission denied on {loc} (HTTP {status}): the token is invalid, expired or lacks read access"
            ),
            404 => format!("no secret at {loc} (HTTP 404): check mount and path"),
            s if s >= 500 => format!("server error reading {loc} (HTTP {s}): Vault may be sealed or unavailable"),
            s => format!("unexpected HTTP {s} reading {loc}"),
        })
    }
}

/// `{address}/v1/{mount}/data/{path}`, with the transport checked.
fn kv_url(cfg: &VaultConfig) -> Result<reqwest::Url, SecretError> {
    let bad = |why: &str| SecretError::Config(format!("vault.address {:?}: {why}", cfg.address));
    let mut url = reqwest::Url::parse(&cfg.address).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if cfg.allow_insecure_http || is_loopback(&url) => {}
        "http" => {
            return Err(bad(
                "plain http is allowed only to loopback (or set allow_insecure_http)",
            ));
        }
        _ => return Err(bad("must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    url.set_query(None);
    url.set_fragment(None);
    let mount = segments("vault.mount", &cfg.mount)?;
    let path = segments("vault.path", &cfg.path)?;
    url.path_segments_mut()
        .map_err(|()| bad("cannot be a base URL"))?
        .pop_if_empty()
        .push("v1")
        .extend(mount)
        .push("data")
        .extend(path);
    Ok(url)
}

/// Splits a Vault path on `/`, refusing empty and dot segments (which would
/// change the path the token is used on).
fn segments<'a>(what: &str, path: &'a str) -> Result<Vec<&'a str>, SecretError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(SecretError::Config(format!("{what} {path:?} is not a valid path")));
    }
    Ok(segs)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn client(cfg: &VaultConfig) -> Result<reqwest::Client, SecretError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| SecretError::Io {
            context: format!("vault.ca_file {}", path.display()),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SecretError::Config(format!("vault.ca_file {}: {e}", path.display())))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| SecretError::Config(format!("vault client: {e}")))
}

async fn read_bounded(resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    palisade_fetch::read_limited(resp, MAX_BODY_BYTES)
        .await
        .map(Zeroizing::new)
        .map_err(|e| SecretError::Vault(e.to_string()))
}

#[derive(Deserialize)]
struct KvResponse {
    data: KvData,
}

#[derive(Deserialize)]
struct KvData {
    data: serde_json::Map<String, serde_json::Value>,
}

/// Parses a KV v2 read response (`{"data": {"data": {...}, "metadata": {...}}}`).
fn parse_kv(body: &[u8]) -> Result<Values, String> {
    let resp: KvResponse = serde_json::from_slice(body)
        .map_err(|_| "malformed response: expected KV v2 JSON with data.data".to_owned())?;
    Ok(resp
        .data
        .data
        .into_iter()
        .map(|(k, v)| match v {
            // Moves the string's buffer into the Secret.
            serde_json::Value::String(s) => (k, Some(Secret::from(s))),
            _ => (k, None),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;

    use super::*;

    const TOKEN: &str = "s.test-token-123";

    #[derive(Default)]
    struct Seen {
        hits: AtomicUsize,
        namespace: std::sync::Mutex<Option<String>>,
    }

    async fn kv(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> (StatusCode, String) {
        seen.hits.fetch_add(1, Ordering::SeqCst);
        *seen.namespace.lock().unwrap() = headers.get("x-vault-namespace").map(|v| v.to_str().unwrap().to_owned());
        if headers.get("x-vault-token").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
            return (StatusCode::FORBIDDEN, r#"{"errors":["permission denied"]}"#.into());
        }
        let body = serde_json::json!({
            "request_id": "x",
            "data": {
                "data": {"db_password": "hunter2", "api.key": "abc", "count": 3, "bad name": "x"},
                "metadata": {"version": 4, "destroyed": false}
            }
        });
        (StatusCode::OK, body.to_string())
    }

    async fn serve() -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/v1/secret/data/palisade", get(kv))
            .route("/v1/secret/data/team/app", get(kv))
            .route("/v1/secret/data/broken", get(|| async { "{\"data\": {\"data\": " }))
            .route("/v1/secret/data/shape", get(|| async { r#"{"data": {"keys": []}}"# }))
            .route(
                "/v1/secret/data/huge",
                get(|| async { "x".repeat(MAX_BODY_BYTES + 10) }),
            )
            .route(
                "/v1/secret/data/down",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "{\"errors\":[\"Vault is sealed\"]}") }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn cfg(address: &str, path: &str) -> VaultConfig {
        VaultConfig {
            address: address.to_owned(),
            mount: "secret".into(),
            path: path.into(),
            token_env: "PALISADE_TEST_UNUSED_VAULT_TOKEN".into(),
            namespace: Some("team-a".into()),
            ca_file: None,
            allow_insecure_http: false,
        }
    }

    fn store(address: &str, path: &str, token: &str) -> VaultStore {
        VaultStore::with_token(&cfg(address, path), Secret::from(token)).unwrap()
    }

    #[tokio::test]
    async fn reads_and_caches() {
        let (addr, seen) = serve().await;
        let s = store(&addr, "palisade", TOKEN);
        assert_eq!(s.get("db_password").await.unwrap().expose(), b"hunter2");
        assert_eq!(s.get("api.key").await.unwrap().expose(), b"abc");
        assert_eq!(s.list().await.unwrap(), vec!["api.key", "db_password"]);
        assert!(matches!(s.get("missing").await, Err(SecretError::NotFound(_))));
        assert!(matches!(s.get("count").await, Err(SecretError::Vault(m)) if m.contains("not a string")));
        assert_eq!(seen.hits.load(Ordering::SeqCst), 1, "one fetch, then the cache");
        assert_eq!(seen.namespace.lock().unwrap().as_deref(), Some("team-a"));

        let uncached = store(&addr, "palisade", TOKEN).with_cache_ttl(Duration::ZERO);
        uncached.get("db_password").await.unwrap();
        uncached.get("db_password").await.unwrap();
        assert_eq!(seen.hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn nested_path() {
        let (addr, _) = serve().await;
        let s = store(&format!("{addr}/"), "/team/app/", TOKEN);
        assert_eq!(s.get("db_password").await.unwrap().expose(), b"hunter2");
    }

    #[tokio::test]
    async fn wrong_token_is_denied_without_echoing_it() {
        let (addr, _) = serve().await;
        let s = store(&addr, "palisade", "s.wrong-token-xyz");
        let err = s.get("db_password").await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("permission denied") && msg.contains("403"), "{msg}");
        assert!(!msg.contains("wrong-token"), "{msg}");
        assert!(!format!("{s:?}").contains("wrong-token"));
    }

    #[tokio::test]
    async fn bad_responses_are_errors() {
        let (addr, _) = serve().await;
        for (path, expect) in [
            ("broken", "malformed"),
            ("shape", "malformed"),
            ("huge", "larger than"),
            ("down", "HTTP 503"),
            ("nothing", "HTTP 404"),
        ] {
            let err = store(&addr, path, TOKEN).get("db_password").await.unwrap_err();
            assert!(err.to_string().contains(expect), "{path}: {err}");
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = store(&format!("http://{addr}"), "palisade", TOKEN)
            .list()
            .await
            .unwrap_err();
        assert!(matches!(err, SecretError::Vault(_)), "{err}");
    }

    #[test]
    fn transport_rules() {
        let t = || Secret::from(TOKEN);
        assert!(VaultStore::with_token(&cfg("https://vault.example.com:8200", "p"), t()).is_ok());
        assert!(VaultStore::with_token(&cfg("http://localhost:8200", "p"), t()).is_ok());
        assert!(VaultStore::with_token(&cfg("http://[::1]:8200", "p"), t()).is_ok());
        let plain = cfg("http://vault.example.com:8200", "p");
        assert!(matches!(
            VaultStore::with_token(&plain, t()),
            Err(SecretError::Config(_))
        ));
        let allowed = VaultConfig {
            allow_insecure_http: true,
            ..plain
        };
        assert!(VaultStore::with_token(&allowed, t()).is_ok());
        assert!(VaultStore::with_token(&cfg("ftp://vault", "p"), t()).is_err());
        assert!(VaultStore::with_token(&cfg("https://u:p@vault", "p"), t()).is_err());
        assert!(VaultStore::with_token(&cfg("https://vault", "a/../b"), t()).is_err());
        assert!(VaultStore::with_token(&cfg("https://vault", ""), t()).is_err());
        assert!(VaultStore::with_token(&cfg("https://vault", "p"), Secret::from("")).is_err());
        assert!(VaultStore::with_token(&cfg("https://vault", "p"), Secret::from("a\nb")).is_err());
        let url = kv_url(&cfg("https://vault:8200/prefix/", "team/app")).unwrap();
        assert_eq!(url.as_str(), "https://vault:8200/prefix/v1/secret/data/team/app");
    }
}
