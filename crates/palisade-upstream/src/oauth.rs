//! OAuth 2 tokens for the gateway's own calls to an upstream (M5).
//!
//! Two grants, chosen per upstream by `UpstreamOAuth::grant`:
//! - client credentials (RFC 6749 §4.4): one gateway token shared by all users,
//!   cached and refreshed `refresh_skew_s` before it expires;
//! - token exchange (RFC 8693): each inbound token is exchanged for one aimed at
//!   the upstream, cached per subject token (by SHA-256) until shortly before it
//!   expires.
//!
//! The client authenticates with HTTP Basic (`client_secret_basic`). Tokens and
//! the client secret are held as [`Secret`]s and never appear in `Debug`,
//! `Display`, errors or logs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderValue, StatusCode, header};
use palisade_config::{OAuthGrant, UpstreamOAuth};
use palisade_secrets::Secret;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Largest token endpoint response read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Lifetime assumed when a response has no `expires_in`.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(300);
/// Subject tokens cached at most (token exchange).
pub const EXCHANGE_CACHE_CAPACITY: u64 = 10_000;
/// Longest lifetime believed (keeps `Instant` arithmetic far from overflow).
const MAX_EXPIRES_IN_S: u64 = 366 * 24 * 3600;
/// Longest subject token sent for exchange.
const MAX_SUBJECT_TOKEN_BYTES: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why no token could be had. Never carries a token or the client secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// Invalid settings (endpoint, CA file, client credentials).
    #[error("oauth configuration: {0}")]
    Config(String),
    /// `token()` on a token-exchange client or `exchange()` on a client-credentials one.
    #[error("{0}")]
    WrongGrant(&'static str),
    /// The subject token cannot be sent.
    #[error("invalid subject token: {0}")]
    InvalidSubject(&'static str),
    /// The token endpoint could not be reached.
    #[error("token endpoint unreachable: {0}")]
    Unavailable(String),
    /// The token endpoint did not answer in time.
    #[error("token endpoint timed out")]
    Timeout,
    /// An RFC 6749 §5.2 error response (`invalid_client`, `invalid_scope`…).
    #[error("token endpoint refused: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected { error: String, description: Option<String> },
    /// An error status without an OAuth error body.
    #[error("token endpoint answered HTTP {0}")]
    Status(u16),
    /// A success status with an unusable body.
    #[error("invalid token endpoint response: {0}")]
    InvalidResponse(String),
}

/// An access token and when to stop using it.
#[derive(Clone)]
struct Issued {
    token: Secret,
    /// From here on, get a new one.
    refresh_at: Instant,
    /// After this the token is useless even as a fallback.
    expires_at: Instant,
}

/// Exchanged tokens leave the cache when they are due for refresh.
struct UntilRefresh;

impl moka::Expiry<[u8; 32], Issued> for UntilRefresh {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Issued, created_at: Instant) -> Option<Duration> {
        Some(value.refresh_at.saturating_duration_since(created_at))
    }
}

/// Gets access tokens for one upstream. Cheap to clone (shared state).
#[derive(Clone)]
pub struct TokenClient {
    inner: Arc<Inner>,
}

struct Inner {
    grant: OAuthGrant,
    endpoint: reqwest::Url,
    client: reqwest::Client,
    /// The whole `Authorization` header value (`Basic …`).
    authorization: Secret,
    scope: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    skew: Duration,
    /// The client-credentials token (std mutex: held only to copy in or out).
    current: Mutex<Option<Issued>>,
    /// Held around a client-credentials fetch so that concurrent callers share it.
    refresh: tokio::sync::Mutex<()>,
    /// Exchanged tokens by SHA-256 of the subject token; `try_get_with` also
    /// makes concurrent exchanges of one subject share a request.
    exchanged: moka::future::Cache<[u8; 32], Issued>,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("grant", &self.inner.grant)
            .field("token_endpoint", &self.inner.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// Builds a client for `cfg`; `client_secret` is the resolved `cfg.client_secret`.
    pub fn new(cfg: &UpstreamOAuth, client_secret: Secret) -> Result<Self, OAuthError> {
        let endpoint = endpoint_url(&cfg.token_endpoint)?;
        if cfg.client_id.is_empty() || client_secret.is_empty() {
            return Err(OAuthError::Config(
                "client_id and client_secret must not be empty".into(),
            ));
        }
        let authorization = basic_authorization(&cfg.client_id, &client_secret);
        if HeaderValue::from_bytes(authorization.expose()).is_err() {
            return Err(OAuthError::Config(
                "client credentials do not form a valid header".into(),
            ));
        }
        let exchanged = moka::future::Cache::builder()
            .max_capacity(EXCHANGE_CACHE_CAPACITY)
            .expire_after(UntilRefresh)
            .build();
        Ok(TokenClient {
            inner: Arc::new(Inner {
                grant: cfg.grant,
                client: http_client(cfg)?,
                endpoint,
                authorization,
                scope: cfg.scope.clone(),
                audience: cfg.audience.clone(),
                resource: cfg.resource.clone(),
                skew: Duration::from_secs(cfg.refresh_skew_s),
                current: Mutex::new(None),
                refresh: tokio::sync::Mutex::new(()),
                exchanged,
            }),
        })
    }

    /// The configured grant.
    pub fn grant(&self) -> OAuthGrant {
        self.inner.grant
    }

    /// The gateway's own access token (client credentials grant), from the cache
    /// unless it is within `refresh_skew_s` of expiring. If a refresh fails while
    /// the cached token has not yet expired, the cached token is returned.
    pub async fn token(&self) -> Result<Secret, OAuthError> {
        if self.inner.grant != OAuthGrant::ClientCredentials {
            return Err(OAuthError::WrongGrant("token() needs grant = \"client_credentials\""));
        }
        if let Some(t) = self.cached(|i| i.refresh_at) {
            return Ok(t);
        }
        let _flight = self.inner.refresh.lock().await;
        // Whoever held the lock before us may have refreshed already.
        if let Some(t) = self.cached(|i| i.refresh_at) {
            return Ok(t);
        }
        match self.request(self.client_credentials_form()).await {
            Ok(issued) => {
                let token = issued.token.clone();
                *self.current() = Some(issued);
                Ok(token)
            }
            Err(e) => match self.cached(|i| i.expires_at) {
                Some(t) => {
                    tracing::warn!(endpoint = %self.inner.endpoint, error = %e, "token refresh failed; using the current token until it expires");
                    Ok(t)
                }
                None => Err(e),
            },
        }
    }

    /// Exchanges the caller's `subject_token` for a token aimed at the upstream
    /// (RFC 8693). Results are cached per subject token until `refresh_skew_s`
    /// before they expire; concurrent exchanges of one subject share a request.
    pub async fn exchange(&self, subject_token: &str) -> Result<Secret, OAuthError> {
        if self.inner.grant != OAuthGrant::TokenExchange {
            return Err(OAuthError::WrongGrant("exchange() needs grant = \"token_exchange\""));
        }
        if subject_token.is_empty() {
            return Err(OAuthError::InvalidSubject("empty"));
        }
        if subject_token.len() > MAX_SUBJECT_TOKEN_BYTES {
            return Err(OAuthError::InvalidSubject("too long"));
        }
        let key = sha256(subject_token.as_bytes());
        let issued = self
            .inner
            .exchanged
            .try_get_with(key, self.request(self.exchange_form(subject_token)))
            .await
            .map_err(|e| (*e).clone())?;
        Ok(issued.token)
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Issued>> {
        self.inner.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token if `deadline(token)` is still ahead.
    fn cached(&self, deadline: impl Fn(&Issued) -> Instant) -> Option<Secret> {
        let now = Instant::now();
        self.current()
            .as_ref()
            .filter(|i| now < deadline(i))
            .map(|i| i.token.clone())
    }

    fn client_credentials_form(&self) -> Zeroizing<String> {
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(512));
        form.append_pair("grant_type", "client_credentials");
        self.append_target(&mut form);
        Zeroizing::new(form.finish())
    }

    fn exchange_form(&self, subject_token: &str) -> Zeroizing<String> {
        // Room for the encoded token up front: regrowing would leave copies behind.
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(subject_token.len() * 3 + 1024));
        form.append_pair("grant_type", GRANT_TOKEN_EXCHANGE)
            .append_pair("subject_token", subject_token)
            .append_pair("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN)
            .append_pair("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN);
        self.append_target(&mut form);
        Zeroizing::new(form.finish())
    }

    /// `scope`, `resource` (RFC 8707) and `audience` (RFC 8693), where configured.
    fn append_target(&self, form: &mut form_urlencoded::Serializer<'_, String>) {
        let fields = [
            ("scope", &self.inner.scope),
            ("resource", &self.inner.resource),
            ("audience", &self.inner.audience),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                form.append_pair(k, v);
            }
        }
    }

    /// POSTs `form` to the token endpoint and parses the answer.
    async fn request(&self, form: Zeroizing<String>) -> Result<Issued, OAuthError> {
        let mut auth = HeaderValue::from_bytes(self.inner.authorization.expose())
            .map_err(|_| OAuthError::Config("client credentials do not form a valid header".into()))?;
        auth.set_sensitive(true);
        let resp = self
            .inner
            .client
            .post(self.inner.endpoint.clone())
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form.as_bytes().to_vec())
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        let body = read_bounded(resp).await?;
        parse_response(status, &body, self.inner.grant, self.inner.skew)
    }
}

/// The token endpoint: https, or http to a loopback address.
fn endpoint_url(raw: &str) -> Result<reqwest::Url, OAuthError> {
    let bad = |why: &str| OAuthError::Config(format!("token_endpoint {raw:?}: {why}"));
    let url = reqwest::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err(bad("must be https (plain http only to loopback)")),
        _ => return Err(bad("must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if url.fragment().is_some() {
        return Err(bad("must not have a fragment"));
    }
    Ok(url)
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

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_authorization(client_id: &str, secret: &Secret) -> Secret {
    let mut pair = Zeroizing::new(String::with_capacity(3 * (client_id.len() + secret.len()) + 1));
    pair.extend(form_urlencoded::byte_serialize(client_id.as_bytes()));
    pair.push(':');
    pair.extend(form_urlencoded::byte_serialize(secret.expose()));
    let mut value = String::with_capacity(6 + pair.len().div_ceil(3) * 4);
    value.push_str("Basic ");
    B64.encode_string(pair.as_bytes(), &mut value);
    Secret::from(value)
}

fn http_client(cfg: &UpstreamOAuth) -> Result<reqwest::Client, OAuthError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| OAuthError::Config(format!("ca_file: cannot read {}: {e}", path.display())))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| OAuthError::Config(format!("ca_file: {e}")))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| OAuthError::Config(format!("http client: {e}")))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

async fn read_bounded(resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, OAuthError> {
    match palisade_fetch::read_limited(resp, MAX_RESPONSE_BYTES).await {
        Ok(body) => Ok(Zeroizing::new(body)),
        Err(palisade_fetch::BodyError::Transport(e)) => Err(transport_error(e)),
        Err(e) => Err(OAuthError::InvalidResponse(e.to_string())),
    }
}

/// A token endpoint response: RFC 6749 §5.1 success or §5.2 error fields.
#[derive(Deserialize)]
struct Wire {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
}

fn parse_response(status: StatusCode, body: &[u8], grant: OAuthGrant, skew: Duration) -> Result<Issued, OAuthError> {
    let wire = serde_json::from_slice::<Wire>(body);
    match wire {
        Ok(Wire {
            error: Some(error),
            error_description,
            ..
        }) => Err(OAuthError::Rejected {
            error: printable(&error),
            description: error_description.as_deref().map(printable),
        }),
        _ if !status.is_success() => Err(OAuthError::Status(status.as_u16())),
        Err(_) => Err(OAuthError::InvalidResponse("not a JSON token response".into())),
        Ok(w) => issued(w, grant, skew),
    }
}

fn issued(w: Wire, grant: OAuthGrant, skew: Duration) -> Result<Issued, OAuthError> {
    let invalid = |why: &str| OAuthError::InvalidResponse(why.to_owned());
    let token_type = w.token_type.ok_or_else(|| invalid("no token_type"))?;
    // RFC 8693 §2.2.1: "N_A" when the issued token is not an access token type.
    let type_ok = token_type.eq_ignore_ascii_case("bearer")
        || (grant == OAuthGrant::TokenExchange && token_type.eq_ignore_ascii_case("N_A"));
    if !type_ok {
        return Err(OAuthError::InvalidResponse(format!(
            "unsupported token_type {:?}",
            printable(&token_type)
        )));
    }
    let lifetime = expires_in(w.expires_in.as_ref())?;
    let token = Secret::from(w.access_token.ok_or_else(|| invalid("no access_token"))?);
    // It goes into an Authorization header: visible ASCII only (RFC 6750 b64token is narrower still).
    if token.is_empty() || !token.expose().iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(invalid(
            "access_token is empty or has characters not allowed in a header",
        ));
    }
    let now = Instant::now();
    Ok(Issued {
        token,
        refresh_at: now + lifetime.saturating_sub(skew),
        expires_at: now + lifetime,
    })
}

/// `expires_in` as seconds: a non-negative integer (some servers send a string).
fn expires_in(v: Option<&serde_json::Value>) -> Result<Duration, OAuthError> {
    let secs = match v {
        None | Some(serde_json::Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| OAuthError::InvalidResponse("expires_in is not a non-negative integer".into()))?;
    Ok(Duration::from_secs(secs.min(MAX_EXPIRES_IN_S)))
}

/// Server-chosen text for messages: printable ASCII, bounded.
fn printable(s: &str) -> String {
    s.chars().filter(|c| (' '..='~').contains(c)).take(256).collect()
}

/// A transport error without URL or headers.
fn transport_error(e: reqwest::Error) -> OAuthError {
    if e.is_timeout() {
        OAuthError::Timeout
    } else {
        OAuthError::Unavailable(palisade_fetch::describe(&e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::post;
    use palisade_config::SecretRef;

    use super::*;

    const CLIENT_ID: &str = "my client";
    const CLIENT_SECRET: &str = "s3cr:t&x";

    /// What the test endpoint answers.
    #[derive(Clone)]
    enum Answer {
        /// A fresh token `tok-N` (N = hit count).
        Token {
            token_type: &'static str,
            expires_in: Option<u64>,
        },
        /// Exactly this status and body.
        Raw(u16, String),
    }

    struct Endpoint {
        hits: AtomicUsize,
        forms: Mutex<Vec<Vec<(String, String)>>>,
        answer: Mutex<Answer>,
        delay: Duration,
    }

    impl Endpoint {
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
        fn set(&self, a: Answer) {
            *self.answer.lock().unwrap() = a;
        }
        fn last_form(&self) -> Vec<(String, String)> {
            self.forms.lock().unwrap().last().cloned().unwrap()
        }
    }

    fn field<'a>(form: &'a [(String, String)], k: &str) -> Option<&'a str> {
        form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    async fn token_endpoint(State(ep): State<Arc<Endpoint>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
        let n = ep.hits.fetch_add(1, Ordering::SeqCst) + 1;
        // client_secret_basic with form-urlencoded id and secret.
        let expected = format!("Basic {}", B64.encode("my+client:s3cr%3At%26x"));
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        let ctype = headers.get("content-type").and_then(|v| v.to_str().ok());
        if auth != Some(expected.as_str()) || ctype != Some("application/x-www-form-urlencoded") {
            return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#.into());
        }
        ep.forms
            .lock()
            .unwrap()
            .push(form_urlencoded::parse(&body).into_owned().collect());
        tokio::time::sleep(ep.delay).await;
        let answer = ep.answer.lock().unwrap().clone();
        match answer {
            Answer::Token { token_type, expires_in } => {
                let mut v = serde_json::json!({"access_token": format!("tok-{n}"), "token_type": token_type});
                if let Some(e) = expires_in {
                    v["expires_in"] = e.into();
                }
                (StatusCode::OK, v.to_string())
            }
            Answer::Raw(status, body) => (StatusCode::from_u16(status).unwrap(), body),
        }
    }

    async fn endpoint(answer: Answer, delay: Duration) -> (String, Arc<Endpoint>) {
        let ep = Arc::new(Endpoint {
            hits: AtomicUsize::new(0),
            forms: Mutex::new(Vec::new()),
            answer: Mutex::new(answer),
            delay,
        });
        let app = Router::new()
            .route("/token", post(token_endpoint))
            .with_state(ep.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/token"), ep)
    }

    fn bearer(expires_in: Option<u64>) -> Answer {
        Answer::Token {
            token_type: "Bearer",
            expires_in,
        }
    }

    fn config(grant: OAuthGrant, url: &str, skew: u64) -> UpstreamOAuth {
        UpstreamOAuth {
            grant,
            token_endpoint: url.to_owned(),
            client_id: CLIENT_ID.into(),
            client_secret: SecretRef::Env("UNUSED".into()),
            scope: Some("read write".into()),
            audience: Some("https://api.example.com".into()),
            resource: Some("https://mcp.example.com/mcp".into()),
            ca_file: None,
            refresh_skew_s: skew,
        }
    }

    fn client(grant: OAuthGrant, url: &str, skew: u64) -> TokenClient {
        TokenClient::new(&config(grant, url, skew), Secret::from(CLIENT_SECRET)).unwrap()
    }

    fn token_str(s: &Secret) -> String {
        s.expose_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn client_credentials_request() {
        let (url, ep) = endpoint(bearer(Some(3600)), Duration::ZERO).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-1");
        let form = ep.last_form();
        assert_eq!(field(&form, "grant_type"), Some("client_credentials"));
        assert_eq!(field(&form, "scope"), Some("read write"));
        assert_eq!(field(&form, "resource"), Some("https://mcp.example.com/mcp"));
        assert_eq!(field(&form, "audience"), Some("https://api.example.com"));
        assert_eq!(
            field(&form, "client_secret"),
            None,
            "the secret goes in the header only"
        );
    }

    #[tokio::test]
    async fn cached_until_refresh_is_due() {
        let (url, ep) = endpoint(bearer(Some(3600)), Duration::ZERO).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        for _ in 0..3 {
            assert_eq!(token_str(&c.token().await.unwrap()), "tok-1");
        }
        assert_eq!(ep.hits(), 1);
        // No expires_in: the 300 s default, still beyond the skew.
        let (url, ep) = endpoint(bearer(None), Duration::ZERO).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        c.token().await.unwrap();
        c.token().await.unwrap();
        assert_eq!(ep.hits(), 1);
    }

    #[tokio::test]
    async fn refreshes_within_skew() {
        // expires_in below the skew: every call is already due for refresh.
        let (url, ep) = endpoint(bearer(Some(10)), Duration::ZERO).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-1");
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-2");
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-3");
        assert_eq!(ep.hits(), 3);
    }

    #[tokio::test]
    async fn really_expires() {
        // A one-second token, no skew: reused at once, fetched again after it expires.
        let (url, ep) = endpoint(bearer(Some(1)), Duration::ZERO).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 0);
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-1");
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-2");
        assert_eq!(ep.hits(), 2);
    }

    #[tokio::test]
    async fn failed_refresh_falls_back_to_an_unexpired_token() {
        // Due for refresh at once (30 < 60) but valid for 30 s.
        let (url, ep) = endpoint(bearer(Some(30)), Duration::ZERO).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-1");
        ep.set(Answer::Raw(503, "down".into()));
        assert_eq!(token_str(&c.token().await.unwrap()), "tok-1");
        assert_eq!(ep.hits(), 2, "the refresh was attempted");
        // An already expired token is no fallback.
        let (url, ep) = endpoint(bearer(Some(0)), Duration::ZERO).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 0);
        c.token().await.unwrap();
        ep.set(Answer::Raw(503, "down".into()));
        assert_eq!(c.token().await.unwrap_err(), OAuthError::Status(503));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let (url, ep) = endpoint(bearer(Some(3600)), Duration::from_millis(200)).await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.token().await })
            })
            .collect();
        for t in tasks {
            assert_eq!(token_str(&t.await.unwrap().unwrap()), "tok-1");
        }
        assert_eq!(ep.hits(), 1);
    }

    #[tokio::test]
    async fn error_responses() {
        let (url, ep) = endpoint(
            Answer::Raw(
                400,
                r#"{"error":"invalid_scope","error_description":"scope \"admin\" not allowed"}"#.into(),
            ),
            Duration::ZERO,
        )
        .await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        let err = c.token().await.unwrap_err();
        assert_eq!(
            err,
            OAuthError::Rejected {
                error: "invalid_scope".into(),
                description: Some("scope \"admin\" not allowed".into())
            }
        );
        assert!(err.to_string().contains("invalid_scope"));

        ep.set(Answer::Raw(500, "<html>oops</html>".into()));
        assert_eq!(c.token().await.unwrap_err(), OAuthError::Status(500));

        // A wrong secret: the endpoint answers invalid_client; the secret is nowhere.
        let wrong = TokenClient::new(
            &config(OAuthGrant::ClientCredentials, &url, 60),
            Secret::from("not-the-secret"),
        )
        .unwrap();
        let err = wrong.token().await.unwrap_err();
        assert!(matches!(&err, OAuthError::Rejected { error, .. } if error == "invalid_client"));
        for shown in [err.to_string(), format!("{err:?}"), format!("{wrong:?}")] {
            assert!(!shown.contains("not-the-secret"), "{shown}");
        }
    }

    #[tokio::test]
    async fn malformed_responses() {
        let cases = [
            (Answer::Raw(200, "not json".into()), "not a JSON"),
            (Answer::Raw(200, r#"{"token_type":"Bearer"}"#.into()), "no access_token"),
            (Answer::Raw(200, r#"{"access_token":"abc"}"#.into()), "no token_type"),
            (
                Answer::Raw(200, r#"{"access_token":"abc","token_type":"mac"}"#.into()),
                "token_type",
            ),
            (
                Answer::Raw(200, r#"{"access_token":"abc","token_type":"N_A"}"#.into()),
                "token_type",
            ),
            (
                Answer::Raw(200, r#"{"access_token":"a b","token_type":"Bearer"}"#.into()),
                "characters",
            ),
            (
                Answer::Raw(200, r#"{"access_token":"","token_type":"Bearer"}"#.into()),
                "empty",
            ),
            (
                Answer::Raw(200, r#"{"access_token":7,"token_type":"Bearer"}"#.into()),
                "not a JSON",
            ),
            (
                Answer::Raw(
                    200,
                    r#"{"access_token":"abc","token_type":"bearer","expires_in":-5}"#.into(),
                ),
                "expires_in",
            ),
            (
                Answer::Raw(
                    200,
                    r#"{"access_token":"abc","token_type":"bearer","expires_in":"soon"}"#.into(),
                ),
                "expires_in",
            ),
            (
                Answer::Raw(
                    200,
                    format!(r#"{{"access_token":"{}","token_type":"Bearer"}}"#, "a".repeat(70_000)),
                ),
                "larger than",
            ),
        ];
        for (answer, expect) in cases {
            let (url, _) = endpoint(answer, Duration::ZERO).await;
            let err = client(OAuthGrant::ClientCredentials, &url, 60)
                .token()
                .await
                .unwrap_err();
            assert!(matches!(err, OAuthError::InvalidResponse(_)), "{expect}: {err:?}");
            assert!(err.to_string().contains(expect), "{expect}: {err}");
        }
        // expires_in as a numeric string is tolerated.
        let (url, ep) = endpoint(
            Answer::Raw(
                200,
                r#"{"access_token":"abc","token_type":"bearer","expires_in":"3600"}"#.into(),
            ),
            Duration::ZERO,
        )
        .await;
        let c = client(OAuthGrant::ClientCredentials, &url, 60);
        assert_eq!(token_str(&c.token().await.unwrap()), "abc");
        c.token().await.unwrap();
        assert_eq!(ep.hits(), 1);
    }

    #[tokio::test]
    async fn token_exchange_per_subject() {
        let answer = Answer::Token {
            token_type: "N_A",
            expires_in: Some(3600),
        };
        let (url, ep) = endpoint(answer, Duration::ZERO).await;
        let c = client(OAuthGrant::TokenExchange, &url, 60);
        assert_eq!(token_str(&c.exchange("subject-a").await.unwrap()), "tok-1");
        let form = ep.last_form();
        assert_eq!(field(&form, "grant_type"), Some(GRANT_TOKEN_EXCHANGE));
        assert_eq!(field(&form, "subject_token"), Some("subject-a"));
        assert_eq!(field(&form, "subject_token_type"), Some(TOKEN_TYPE_ACCESS_TOKEN));
        assert_eq!(field(&form, "requested_token_type"), Some(TOKEN_TYPE_ACCESS_TOKEN));
        assert_eq!(field(&form, "audience"), Some("https://api.example.com"));
        assert_eq!(field(&form, "resource"), Some("https://mcp.example.com/mcp"));
        assert_eq!(field(&form, "scope"), Some("read write"));

        assert_eq!(token_str(&c.exchange("subject-a").await.unwrap()), "tok-1");
        assert_eq!(ep.hits(), 1, "cached per subject");
        assert_eq!(token_str(&c.exchange("subject-b").await.unwrap()), "tok-2");
        assert_eq!(field(&ep.last_form(), "subject_token"), Some("subject-b"));
        assert_eq!(token_str(&c.exchange("subject-a").await.unwrap()), "tok-1");
        assert_eq!(ep.hits(), 2);

        assert!(matches!(c.exchange("").await, Err(OAuthError::InvalidSubject(_))));
        let huge = "x".repeat(MAX_SUBJECT_TOKEN_BYTES + 1);
        assert!(matches!(c.exchange(&huge).await, Err(OAuthError::InvalidSubject(_))));
    }

    #[tokio::test]
    async fn token_exchange_not_cached_past_refresh() {
        let (url, ep) = endpoint(bearer(Some(10)), Duration::ZERO).await;
        let c = client(OAuthGrant::TokenExchange, &url, 60);
        assert_eq!(token_str(&c.exchange("s").await.unwrap()), "tok-1");
        assert_eq!(token_str(&c.exchange("s").await.unwrap()), "tok-2");
        assert_eq!(ep.hits(), 2);
    }

    #[tokio::test]
    async fn concurrent_exchanges_of_one_subject_share_a_request() {
        let (url, ep) = endpoint(bearer(Some(3600)), Duration::from_millis(200)).await;
        let c = client(OAuthGrant::TokenExchange, &url, 60);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.exchange("same-subject").await })
            })
            .collect();
        for t in tasks {
            assert_eq!(token_str(&t.await.unwrap().unwrap()), "tok-1");
        }
        assert_eq!(ep.hits(), 1);
    }

    #[tokio::test]
    async fn exchange_errors_are_not_cached() {
        let (url, ep) = endpoint(Answer::Raw(400, r#"{"error":"invalid_target"}"#.into()), Duration::ZERO).await;
        let c = client(OAuthGrant::TokenExchange, &url, 60);
        assert!(matches!(c.exchange("s").await, Err(OAuthError::Rejected { .. })));
        ep.set(bearer(Some(3600)));
        assert_eq!(token_str(&c.exchange("s").await.unwrap()), "tok-2");
    }

    #[tokio::test]
    async fn wrong_grant_and_unreachable() {
        let c = client(OAuthGrant::TokenExchange, "http://127.0.0.1:9/token", 60);
        assert!(matches!(c.token().await, Err(OAuthError::WrongGrant(_))));
        let c = client(OAuthGrant::ClientCredentials, "http://127.0.0.1:9/token", 60);
        assert!(matches!(c.exchange("s").await, Err(OAuthError::WrongGrant(_))));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = client(OAuthGrant::ClientCredentials, &format!("http://{addr}/token"), 60);
        assert!(matches!(c.token().await, Err(OAuthError::Unavailable(_))));
    }

    #[test]
    fn endpoint_and_credential_rules() {
        let make = |url: &str| TokenClient::new(&config(OAuthGrant::ClientCredentials, url, 60), Secret::from("s"));
        assert!(make("https://login.example.com/oauth2/token").is_ok());
        assert!(make("http://localhost:8080/token").is_ok());
        assert!(make("http://[::1]:8080/token").is_ok());
        for bad in [
            "http://login.example.com/token",
            "ftp://login.example.com/token",
            "https://user:pw@login.example.com/token",
            "https://login.example.com/token#frag",
            "not a url",
        ] {
            assert!(matches!(make(bad), Err(OAuthError::Config(_))), "{bad}");
        }
        let cfg = config(OAuthGrant::ClientCredentials, "https://a.example/token", 60);
        assert!(matches!(
            TokenClient::new(&cfg, Secret::from("")),
            Err(OAuthError::Config(_))
        ));
        let with_ca = UpstreamOAuth {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..cfg
        };
        assert!(matches!(
            TokenClient::new(&with_ca, Secret::from("s")),
            Err(OAuthError::Config(_))
        ));
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        let h = basic_authorization("a b/é", &Secret::from("p:w+%"));
        let expected = format!("Basic {}", B64.encode("a+b%2F%C3%A9:p%3Aw%2B%25"));
        assert_eq!(h.expose_str().unwrap(), expected);
    }
}
