//! A remote Streamable HTTP MCP server.
//!
//! Every hop is built from scratch: no header of the client's request is
//! forwarded (in particular not `Authorization`, M5). The gateway sets the
//! upstream's own session id, protocol version and credential headers.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use palisade_config::HttpConfig;
use palisade_wire::{Limits, Message, parse_message};

use crate::UpstreamError;
use crate::oauth::TokenClient;
use crate::pin::PinKind;
use crate::sse::{SseDecoder, SseEvent};
use palisade_config::OAuthGrant;
use palisade_secrets::SecretStore;

/// A stream of messages from an SSE response.
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<Message, UpstreamError>> + Send>>;

/// What the upstream answered to a POST.
pub enum Reply {
    /// 202: a notification or response was accepted.
    Accepted,
    /// A single JSON message.
    Message(Message),
    /// An SSE stream of messages (related requests and notifications, then the response).
    Stream(MessageStream),
}

/// An upstream reply with the session id the upstream assigned, if any.
pub struct Answer {
    pub reply: Reply,
    pub session_id: Option<String>,
}

/// A client for one remote upstream.
#[derive(Debug, Clone)]
pub struct HttpUpstream {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    /// The gateway's own credential headers for this upstream. Values are secret.
    credentials: HeaderMap,
    /// An OAuth token the gateway obtains for this upstream (M5).
    oauth: Option<TokenClient>,
    limits: Limits,
}

/// The gateway's own credentials for one upstream, resolved from the secret store.
#[derive(Debug, Clone, Default)]
pub struct UpstreamCredentials {
    /// Static headers (`headers = { X-Api-Key = { secret = "..." } }`), marked sensitive.
    pub headers: HeaderMap,
    pub oauth: Option<TokenClient>,
}

impl UpstreamCredentials {
    /// Resolves `headers` and `oauth` of an HTTP upstream (at start, so a missing
    /// secret fails there and not on the first call).
    pub async fn resolve(name: &str, cfg: &HttpConfig, store: &SecretStore) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (header, source) in &cfg.headers {
            let hname = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("upstreams.{name}.headers: invalid header name {header:?}"))?;
            let value = palisade_secrets::resolve(store, source)
                .await
                .map_err(|e| format!("upstreams.{name}.headers.{header}: {e}"))?;
            let mut hv = HeaderValue::from_bytes(value.expose())
                .map_err(|_| format!("upstreams.{name}.headers.{header}: value is not a valid header value"))?;
            hv.set_sensitive(true);
            headers.insert(hname, hv);
        }
        let oauth = match &cfg.oauth {
            Some(o) => {
                let secret = palisade_secrets::resolve(store, &o.client_secret)
                    .await
                    .map_err(|e| format!("upstreams.{name}.oauth.client_secret: {e}"))?;
                Some(TokenClient::new(o, secret).map_err(|e| format!("upstreams.{name}.oauth: {e}"))?)
            }
            None => None,
        };
        Ok(UpstreamCredentials { headers, oauth })
    }
}

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// Trust and identity towards one upstream: CA bundle, certificate or key pins, and
/// the gateway's client certificate (mutual TLS).
fn tls_settings(
    name: &str,
    cfg: &HttpConfig,
    url: &reqwest::Url,
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::ClientBuilder, String> {
    let (pins, kind, key) = if !cfg.pinned_spki_sha256.is_empty() {
        (&cfg.pinned_spki_sha256, PinKind::PublicKey, "pinned_spki_sha256")
    } else {
        (&cfg.pinned_cert_sha256, PinKind::Certificate, "pinned_cert_sha256")
    };
    let client = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(c), Some(k)) => Some((
            palisade_tls::load_certs(c).map_err(|e| format!("upstreams.{name}.client_cert_file: {e}"))?,
            palisade_tls::load_key(k).map_err(|e| format!("upstreams.{name}.client_key_file: {e}"))?,
        )),
        (None, None) => None,
        _ => {
            return Err(format!(
                "upstreams.{name}: client_cert_file and client_key_file go together"
            ));
        }
    };
    let ca = match &cfg.ca_file {
        Some(path) => Some(palisade_tls::load_certs(path).map_err(|e| format!("upstreams.{name}.ca_file: {e}"))?),
        None => None,
    };
    if pins.is_empty() && client.is_none() {
        return Ok(match ca {
            Some(certs) => {
                let certs: Vec<reqwest::Certificate> = certs
                    .iter()
                    .map(|c| reqwest::Certificate::from_der(c.as_ref()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("upstreams.{name}.ca_file: {e}"))?;
                if cfg.only_custom_ca {
                    builder.tls_certs_only(certs)
                } else {
                    builder.tls_certs_merge(certs)
                }
            }
            None => builder,
        });
    }
    if pins.is_empty() {
        // A client certificate without pins: the server is validated against the CA
        // bundle, which is required here (this configuration carries no system roots).
        let Some(ca) = ca else {
            return Err(format!(
                "upstreams.{name}: a client certificate needs ca_file or pins to verify the server"
            ));
        };
        return Ok(builder.use_preconfigured_tls(crate::pin::ca_client_config(ca, client)?));
    }
    if url.scheme() != "https" {
        return Err(format!("upstreams.{name}.{key}: the url must be https"));
    }
    if kind == PinKind::Certificate && ca.is_some() {
        return Err(format!(
            "upstreams.{name}: set either ca_file or pinned_cert_sha256, not both"
        ));
    }
    let pins = pins
        .iter()
        .map(|p| crate::pin::parse_pin(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("upstreams.{name}.{key}: {e}"))?;
    Ok(builder.use_preconfigured_tls(crate::pin::pinned_client_config(pins, kind, ca, client)?))
}

impl HttpUpstream {
    /// Builds the client with the gateway's resolved credentials for this upstream.
    pub fn new(name: &str, cfg: &HttpConfig, limits: Limits, creds: UpstreamCredentials) -> Result<Self, String> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| format!("upstreams.{name}.url: {e}"))?;
        let UpstreamCredentials {
            headers: credentials,
            oauth,
        } = creds;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        builder = tls_settings(name, cfg, &url, builder)?;
        let client = builder.build().map_err(|e| format!("upstreams.{name}: {e}"))?;
        Ok(HttpUpstream {
            name: name.to_owned(),
            url,
            client,
            credentials,
            oauth,
            limits,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Headers of one hop: the gateway's credential (never the client's), session, version.
    /// `subject` is the caller's own token, used only as the RFC 8693 subject token.
    async fn headers(
        &self,
        session: Option<&str>,
        version: Option<&str>,
        subject: Option<&str>,
    ) -> Result<HeaderMap, UpstreamError> {
        let mut h = self.credentials.clone();
        if let Some(oauth) = &self.oauth {
            let token = match oauth.grant() {
                OAuthGrant::ClientCredentials => oauth.token().await,
                OAuthGrant::TokenExchange => match subject {
                    Some(s) => oauth.exchange(s).await,
                    None => {
                        return Err(UpstreamError::Unavailable(
                            "token exchange needs an authenticated caller".into(),
                        ));
                    }
                },
            }
            .map_err(|e| UpstreamError::Unavailable(format!("upstream credential: {e}")))?;
            let mut v = HeaderValue::from_bytes(format!("Bearer {}", token.expose_str().unwrap_or("")).as_bytes())
                .map_err(|_| UpstreamError::Unavailable("upstream credential is not header text".into()))?;
            v.set_sensitive(true);
            h.insert(http::header::AUTHORIZATION, v);
        }
        if let Some(s) = session {
            h.insert(
                SESSION_HEADER,
                HeaderValue::from_str(s).map_err(|_| UpstreamError::Protocol("bad upstream session id".into()))?,
            );
        }
        if let Some(v) = version {
            h.insert(
                VERSION_HEADER,
                HeaderValue::from_str(v).map_err(|_| UpstreamError::Protocol("bad version".into()))?,
            );
        }
        Ok(h)
    }

    /// POSTs one message. `extra` carries headers the gateway derived and
    /// validated itself (e.g. `Mcp-Method` for stateless requests).
    pub async fn post(
        &self,
        msg: &Message,
        session: Option<&str>,
        version: Option<&str>,
        extra: &[(HeaderName, HeaderValue)],
        timeout: Duration,
        subject: Option<&str>,
    ) -> Result<Answer, UpstreamError> {
        let mut headers = self.headers(session, version, subject).await?;
        for (k, v) in extra {
            headers.insert(k.clone(), v.clone());
        }
        let req = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(msg.to_bytes());
        let resp = tokio::time::timeout(timeout, req.send())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(|e| UpstreamError::Unavailable(redact(&e)))?;
        let status = resp.status();
        let session_id = resp
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .map(str::to_owned);
        if status == StatusCode::NOT_FOUND && session.is_some() {
            return Err(UpstreamError::SessionExpired);
        }
        if status == StatusCode::ACCEPTED {
            return Ok(Answer {
                reply: Reply::Accepted,
                session_id,
            });
        }
        let ctype = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ctype.starts_with("text/event-stream") && status.is_success() {
            return Ok(Answer {
                reply: Reply::Stream(self.sse(resp, session, version, subject)),
                session_id,
            });
        }
        if ctype.starts_with("application/json") {
            // Error statuses may still carry a JSON-RPC error for the request.
            let body = read_limited(resp, self.limits.max_bytes, timeout).await?;
            return match parse_message(&body, &self.limits) {
                Ok(m) => Ok(Answer {
                    reply: Reply::Message(m),
                    session_id,
                }),
                Err(_) if !status.is_success() => Err(UpstreamError::Status(status.as_u16())),
                Err(e) => Err(UpstreamError::Protocol(format!("invalid JSON-RPC from upstream: {e}"))),
            };
        }
        if !status.is_success() {
            return Err(UpstreamError::Status(status.as_u16()));
        }
        Err(UpstreamError::Protocol(format!("unexpected content type {ctype:?}")))
    }

    /// Opens the standalone GET stream. `Ok(None)` if the upstream offers none (405).
    pub async fn listen(
        &self,
        session: Option<&str>,
        version: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Option<MessageStream>, UpstreamError> {
        let resp = self.get_sse(session, version, None, subject).await?;
        match resp.status() {
            StatusCode::METHOD_NOT_ALLOWED => Ok(None),
            StatusCode::NOT_FOUND => Err(UpstreamError::SessionExpired),
            s if s.is_success() => Ok(Some(self.sse(resp, session, version, subject))),
            s => Err(UpstreamError::Status(s.as_u16())),
        }
    }

    /// Ends the upstream session (DELETE); errors are only logged by callers.
    pub async fn delete(
        &self,
        session: &str,
        version: Option<&str>,
        subject: Option<&str>,
    ) -> Result<(), UpstreamError> {
        let headers = self.headers(Some(session), version, subject).await?;
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.delete(self.url.clone()).headers(headers).send(),
        )
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(|e| UpstreamError::Unavailable(redact(&e)))?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::METHOD_NOT_ALLOWED || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(UpstreamError::Status(s.as_u16())),
        }
    }

    /// Follows an SSE response. When the upstream closes the connection before
    /// the consumer is done (2025-11-25 polling, or a dropped connection), the
    /// stream resumes with `GET` + `Last-Event-ID` after the upstream's `retry`
    /// delay; a stream that never carried an event id ends instead. The
    /// consumer ends it by dropping it once it has what it waited for.
    fn sse(
        &self,
        resp: reqwest::Response,
        session: Option<&str>,
        version: Option<&str>,
        subject: Option<&str>,
    ) -> MessageStream {
        let state = SseState {
            up: self.clone(),
            session: session.map(str::to_owned),
            version: version.map(str::to_owned),
            subject: subject.map(str::to_owned),
            body: Some(Box::pin(resp.bytes_stream())),
            decoder: SseDecoder::new(self.limits.max_bytes.saturating_add(4096)),
            queue: std::collections::VecDeque::new(),
            last_id: None,
            retry_ms: 1_000,
            reconnects: 0,
        };
        Box::pin(futures_util::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.queue.pop_front() {
                    return Some((item, st));
                }
                if let Some(body) = st.body.as_mut() {
                    match body.next().await {
                        Some(Ok(chunk)) => st.feed(&chunk),
                        Some(Err(e)) => {
                            tracing::debug!(upstream = %st.up.name, error = %redact(&e), "upstream SSE connection broke");
                            st.body = None;
                        }
                        None => st.body = None,
                    }
                    continue;
                }
                // The connection is gone: resume if the stream can be named.
                let last = st.last_id.clone()?;
                st.reconnects += 1;
                if st.reconnects > MAX_RECONNECTS {
                    tracing::warn!(upstream = %st.up.name, "upstream SSE stream abandoned after repeated reconnects");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(st.retry_ms.min(MAX_RETRY_MS))).await;
                match st
                    .up
                    .resume(
                        st.session.as_deref(),
                        st.version.as_deref(),
                        &last,
                        st.subject.as_deref(),
                    )
                    .await
                {
                    Ok(resp) => st.body = Some(Box::pin(resp.bytes_stream())),
                    Err(e) => {
                        tracing::debug!(upstream = %st.up.name, error = %e, "upstream SSE resumption failed");
                        return Some((Err(e), SseState { last_id: None, ..st }));
                    }
                }
            }
        }))
    }

    /// A `GET` for an SSE stream, optionally continuing after `last_id`.
    async fn get_sse(
        &self,
        session: Option<&str>,
        version: Option<&str>,
        last_id: Option<&str>,
        subject: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = self.headers(session, version, subject).await?;
        if let Some(id) = last_id {
            headers.insert(
                "last-event-id",
                HeaderValue::from_str(id).map_err(|_| UpstreamError::Protocol("bad event id".into()))?,
            );
        }
        self.client
            .get(self.url.clone())
            .headers(headers)
            .header(http::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| UpstreamError::Unavailable(redact(&e)))
    }

    /// `GET` with `Last-Event-ID` to continue a stream.
    async fn resume(
        &self,
        session: Option<&str>,
        version: Option<&str>,
        last_id: &str,
        subject: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let resp = self.get_sse(session, version, Some(last_id), subject).await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(UpstreamError::SessionExpired),
            s => Err(UpstreamError::Status(s.as_u16())),
        }
    }
}

/// Reconnections of one stream without a new event in between.
const MAX_RECONNECTS: u32 = 5;
/// Upper bound on an upstream's `retry` hint.
const MAX_RETRY_MS: u64 = 30_000;

type ByteStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

struct SseState {
    up: HttpUpstream,
    session: Option<String>,
    version: Option<String>,
    /// The caller's token for token exchange on resumption; never sent upstream itself.
    subject: Option<String>,
    body: Option<ByteStream>,
    decoder: SseDecoder,
    queue: std::collections::VecDeque<Result<Message, UpstreamError>>,
    last_id: Option<String>,
    retry_ms: u64,
    reconnects: u32,
}

impl SseState {
    fn feed(&mut self, chunk: &[u8]) {
        let mut events: Vec<SseEvent> = Vec::new();
        if let Err(e) = self.decoder.feed(chunk, &mut events) {
            self.queue.push_back(Err(UpstreamError::Protocol(e.to_string())));
            self.body = None;
            self.last_id = None;
            return;
        }
        for e in events {
            if let Some(id) = e.id {
                self.last_id = Some(id);
                self.reconnects = 0;
            }
            if let Some(r) = e.retry {
                self.retry_ms = r;
            }
            if e.data.trim().is_empty() || e.event.as_deref().is_some_and(|t| t != "message") {
                continue;
            }
            match parse_message(e.data.as_bytes(), &self.up.limits) {
                Ok(m) => self.queue.push_back(Ok(m)),
                Err(err) => {
                    tracing::warn!(upstream = %self.up.name, error = %err, "invalid SSE message from upstream dropped");
                }
            }
        }
    }
}

async fn read_limited(resp: reqwest::Response, limit: usize, timeout: Duration) -> Result<Vec<u8>, UpstreamError> {
    match tokio::time::timeout(timeout, palisade_fetch::read_limited(resp, limit)).await {
        Err(_) => Err(UpstreamError::Timeout),
        Ok(Ok(body)) => Ok(body),
        Ok(Err(palisade_fetch::BodyError::Transport(e))) => Err(UpstreamError::Unavailable(redact(&e))),
        Ok(Err(e)) => Err(UpstreamError::Protocol(e.to_string())),
    }
}

/// Error text without the URL's query (which could carry secrets).
fn redact(e: &reqwest::Error) -> String {
    palisade_fetch::describe(e)
}
