//! Optional remote prompt-injection detector: a client for an HTTP content-safety
//! API shaped like Azure AI Content Safety `text:shieldPrompt` ("Prompt Shields").
//!
//! [`RemoteDetector::shield`] asks whether a user prompt carries a direct attack
//! and whether each document (a tool result, a fetched page) carries an indirect
//! one. Text longer than the service accepts is split into chunks spread over
//! several requests; a document is an attack if any of its chunks is. When the
//! text would need more requests than allowed the call fails with
//! [`DetectorError::TooLarge`] instead of skipping text, and every other failure
//! is an error too, so the caller decides whether to fail open or closed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), palisade_detector::DetectorError> {
//! use palisade_detector::{DetectorConfig, RemoteDetector};
//!
//! let endpoint = url::Url::parse("https://example.cognitiveservices.azure.com/").unwrap();
//! let mut cfg = DetectorConfig::new(endpoint);
//! cfg.key = Some("subscription-key".into());
//! let detector = RemoteDetector::new(cfg)?;
//! let verdict = detector.shield(None, &["tool output to check"]).await?;
//! if verdict.document_attacks[0] { /* block or flag the result */ }
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use palisade_secrets::Secret;
use serde::{Deserialize, Serialize};
use url::{Host, Url};

/// API version sent when the configuration does not name another.
pub const DEFAULT_API_VERSION: &str = "2024-09-01";

/// Largest response body read, bytes; an answer is a few dozen bytes per document.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How much of an error response body is logged (sanitized), bytes.
const EXCERPT_BYTES: usize = 200;

/// When a chunk must be cut, how far back (in units) a whitespace is looked for,
/// so that a word, and with it an attack phrase, is less often cut in two.
const SPLIT_LOOKBACK: usize = 200;

const SUBSCRIPTION_KEY: HeaderName = HeaderName::from_static("ocp-apim-subscription-key");

/// Where and how to reach the detection service.
///
/// Text sizes are counted in UTF-16 code units (what .NET services count as
/// characters); for most text this equals the number of `char`s and is never
/// fewer, so a chunk stays within the limit however the service counts characters.
#[derive(Clone)]
pub struct DetectorConfig {
    /// Service base URL, e.g. `https://<resource>.cognitiveservices.azure.com/`.
    /// Must be `https`, except for a loopback host (`127.0.0.1`, `[::1]`, `localhost`).
    pub endpoint: Url,
    /// The `api-version` query parameter; default [`DEFAULT_API_VERSION`].
    pub api_version: String,
    /// Bound on a whole [`RemoteDetector::shield`] call, all its requests included.
    pub timeout: Duration,
    /// Sent as `Ocp-Apim-Subscription-Key` when set.
    pub key: Option<Secret>,
    /// Most characters in one request, prompt and documents together; default 10 000.
    pub max_chars_per_request: usize,
    /// Most documents (chunks) in one request; default 5.
    pub max_documents_per_request: usize,
    /// Most requests one call may make; default 8.
    pub max_requests: usize,
}

impl DetectorConfig {
    /// A configuration for `endpoint` with the defaults: API version
    /// [`DEFAULT_API_VERSION`], a 5 s timeout, no key, 10 000 characters and 5
    /// documents per request, at most 8 requests per call.
    pub fn new(endpoint: Url) -> Self {
        DetectorConfig {
            endpoint,
            api_version: DEFAULT_API_VERSION.to_owned(),
            timeout: Duration::from_secs(5),
            key: None,
            max_chars_per_request: 10_000,
            max_documents_per_request: 5,
            max_requests: 8,
        }
    }
}

impl fmt::Debug for DetectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetectorConfig")
            .field("endpoint", &redacted(&self.endpoint))
            .field("api_version", &self.api_version)
            .field("timeout", &self.timeout)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("max_chars_per_request", &self.max_chars_per_request)
            .field("max_documents_per_request", &self.max_documents_per_request)
            .field("max_requests", &self.max_requests)
            .finish()
    }
}

/// The verdict of one [`RemoteDetector::shield`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShieldResult {
    /// The user prompt carries a direct attack (`false` when there was none).
    pub prompt_attack: bool,
    /// One per input document, in order: it carries an indirect attack.
    pub document_attacks: Vec<bool>,
}

impl ShieldResult {
    /// Whether anything was flagged.
    pub fn any_attack(&self) -> bool {
        self.prompt_attack || self.document_attacks.iter().any(|&a| a)
    }
}

/// Why a call gave no verdict. Messages never carry the key and at most a short
/// sanitized excerpt of what the service sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DetectorError {
    /// The call took longer than [`DetectorConfig::timeout`].
    #[error("prompt shield call timed out")]
    Timeout,
    /// The service answered with this non-success HTTP status (redirects included).
    #[error("prompt shield service answered HTTP {0}")]
    Status(u16),
    /// The answer was not the expected JSON, had the wrong number of results, or was too large.
    #[error("malformed prompt shield response: {0}")]
    Malformed(String),
    /// Connecting, sending or reading failed.
    #[error("prompt shield request failed: {0}")]
    Transport(String),
    /// The text (`chars` in total) would need more than `max_requests` requests.
    #[error("{chars} characters of text need more prompt shield requests than allowed")]
    TooLarge {
        /// Total size of the prompt and documents, in the units of [`DetectorConfig`].
        chars: usize,
    },
    /// The configuration is unusable.
    #[error("invalid detector configuration: {0}")]
    Config(String),
}

/// A client for the detection service. Cloning is cheap and shares one connection pool.
#[derive(Clone)]
pub struct RemoteDetector {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// The full request URL, path and `api-version` included.
    url: Url,
    /// Checked once at construction and marked sensitive, so HTTP/2 never indexes it.
    key: Option<HeaderValue>,
    timeout: Duration,
    limits: Limits,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_chars: usize,
    max_docs: usize,
    max_requests: usize,
}

impl fmt::Debug for RemoteDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RemoteDetector")
            .field("url", &i.url.as_str())
            .field("timeout", &i.timeout)
            .field("key", &i.key.as_ref().map(|_| "***"))
            .field("max_chars_per_request", &i.limits.max_chars)
            .field("max_documents_per_request", &i.limits.max_docs)
            .field("max_requests", &i.limits.max_requests)
            .finish()
    }
}

impl RemoteDetector {
    /// Checks `cfg` and builds the HTTP client (no redirects, no proxy).
    pub fn new(cfg: DetectorConfig) -> Result<RemoteDetector, DetectorError> {
        let config = |m: &str| DetectorError::Config(m.to_owned());
        let endpoint = &cfg.endpoint;
        match endpoint.scheme() {
            "https" if endpoint.host().is_some() => {}
            "http" if endpoint.host().is_some_and(is_loopback) => {}
            "http" => return Err(config("endpoint must use https unless its host is loopback")),
            _ => return Err(config("endpoint must be an https URL")),
        }
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(config("endpoint must not carry credentials; set `key`"));
        }
        if endpoint.query().is_some() || endpoint.fragment().is_some() {
            return Err(config("endpoint must not have a query or fragment"));
        }
        let version_ok = !cfg.api_version.is_empty()
            && cfg.api_version.len() <= 32
            && cfg
                .api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !version_ok {
            return Err(config("api_version must be 1-32 characters of A-Z a-z 0-9 - ."));
        }
        if cfg.timeout.is_zero() {
            return Err(config("timeout must be positive"));
        }
        // Two units so that any char (a surrogate pair at most) fits in a chunk.
        if cfg.max_chars_per_request < 2 {
            return Err(config("max_chars_per_request must be at least 2"));
        }
        if cfg.max_documents_per_request == 0 || cfg.max_requests == 0 {
            return Err(config("max_documents_per_request and max_requests must be at least 1"));
        }
        let key = match &cfg.key {
            None => None,
            Some(k) => {
                let text = k
                    .expose_str()
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()));
                let mut value = text
                    .and_then(|t| HeaderValue::from_str(t).ok())
                    .ok_or_else(|| config("key must be non-empty printable ASCII"))?;
                value.set_sensitive(true);
                Some(value)
            }
        };

        let mut url = endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| config("endpoint cannot be a base URL"))?
            .pop_if_empty()
            .push("contentsafety")
            .push("text:shieldPrompt");
        url.query_pairs_mut().append_pair("api-version", &cfg.api_version);

        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(endpoint.scheme() == "https")
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .map_err(|e| DetectorError::Config(format!("HTTP client: {}", palisade_fetch::describe(&e))))?;

        Ok(RemoteDetector {
            inner: Arc::new(Inner {
                client,
                url,
                key,
                timeout: cfg.timeout,
                limits: Limits {
                    max_chars: cfg.max_chars_per_request,
                    max_docs: cfg.max_documents_per_request,
                    max_requests: cfg.max_requests,
                },
            }),
        })
    }

    /// Asks whether `user_prompt` (direct attack) and/or each document
    /// (indirect attack) carries an attack.
    ///
    /// Empty text is not sent and counts as clean; with nothing to send no
    /// request is made. Any failure, including [`DetectorError::TooLarge`]
    /// (checked before anything is sent), fails the whole call.
    pub async fn shield(&self, user_prompt: Option<&str>, documents: &[&str]) -> Result<ShieldResult, DetectorError> {
        let prompt = user_prompt.unwrap_or("");
        let plan = plan(prompt, documents, self.inner.limits)?;
        let mut result = ShieldResult {
            prompt_attack: false,
            document_attacks: vec![false; documents.len()],
        };
        if plan.is_empty() {
            return Ok(result);
        }
        // All requests at once (at most `max_requests`); the futures are
        // built eagerly so no closure is part of this future's type (that
        // keeps it `Send` when nested in the gateway's request futures).
        let sends: Vec<_> = plan.iter().map(|r| self.send(r)).collect();
        let calls = futures_util::future::try_join_all(sends);
        let answers = tokio::time::timeout(self.inner.timeout, calls)
            .await
            .map_err(|_| DetectorError::Timeout)??;
        for (req, answer) in plan.iter().zip(answers) {
            result.prompt_attack |= answer.prompt;
            for (&(doc, _), hit) in req.docs.iter().zip(answer.docs) {
                if hit {
                    result.document_attacks[doc] = true;
                }
            }
        }
        Ok(result)
    }

    /// Sends one request and checks its answer against what was sent.
    async fn send(&self, req: &Request<'_>) -> Result<Answer, DetectorError> {
        let inner = &self.inner;
        let body = serde_json::to_vec(&WireRequest {
            user_prompt: req.prompt.unwrap_or(""),
            documents: req.docs.iter().map(|&(_, text)| text).collect(),
        })
        .map_err(|e| DetectorError::Malformed(format!("cannot encode request: {e}")))?;
        let mut builder = inner
            .client
            .post(inner.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(key) = &inner.key {
            builder = builder.header(SUBSCRIPTION_KEY, key.clone());
        }
        let resp = builder.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let excerpt = excerpt(resp, inner.key.as_ref()).await;
            tracing::debug!(status = status.as_u16(), body = %excerpt, "prompt shield request refused");
            return Err(DetectorError::Status(status.as_u16()));
        }
        let bytes = palisade_fetch::read_limited(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                palisade_fetch::BodyError::TooLarge(n) => {
                    DetectorError::Malformed(format!("response larger than {n} bytes"))
                }
                palisade_fetch::BodyError::Transport(e) => transport(e),
            })?;
        parse_answer(&bytes, req.prompt.is_some(), req.docs.len())
    }
}

/// Chunks of text for one request.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    prompt: Option<&'a str>,
    /// Input document index and the chunk of it.
    docs: Vec<(usize, &'a str)>,
    units: usize,
}

/// What one request found.
struct Answer {
    prompt: bool,
    docs: Vec<bool>,
}

/// Spreads the prompt and documents over requests within `lim`, or `TooLarge`.
fn plan<'a>(prompt: &'a str, documents: &[&'a str], lim: Limits) -> Result<Vec<Request<'a>>, DetectorError> {
    let too_large = || DetectorError::TooLarge {
        chars: units(prompt) + documents.iter().map(|d| units(d)).sum::<usize>(),
    };
    let mut reqs: Vec<Request<'a>> = Vec::new();
    // One prompt chunk per request: the field holds a single string.
    for (text, n) in chunks(prompt, lim.max_chars) {
        if reqs.len() == lim.max_requests {
            return Err(too_large());
        }
        reqs.push(Request {
            prompt: Some(text),
            docs: Vec::new(),
            units: n,
        });
    }
    for (i, doc) in documents.iter().enumerate() {
        for (text, n) in chunks(doc, lim.max_chars) {
            // First fit, so room left beside the prompt or a short chunk is used.
            let slot = reqs
                .iter()
                .position(|r| r.docs.len() < lim.max_docs && r.units + n <= lim.max_chars);
            match slot {
                Some(at) => {
                    reqs[at].docs.push((i, text));
                    reqs[at].units += n;
                }
                None if reqs.len() == lim.max_requests => return Err(too_large()),
                None => reqs.push(Request {
                    prompt: None,
                    docs: vec![(i, text)],
                    units: n,
                }),
            }
        }
    }
    Ok(reqs)
}

/// Size of `text` in UTF-16 code units.
fn units(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// Splits `text` on char boundaries into pieces of at most `max` units (`max >= 2`),
/// preferring to cut after a whitespace near the limit. Yields each piece and its size.
fn chunks(text: &str, max: usize) -> impl Iterator<Item = (&str, usize)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut n = 0;
        let mut cut = None;
        // Last whitespace seen: byte offset just after it, and units up to there.
        let mut space = None;
        for (i, c) in rest.char_indices() {
            let w = c.len_utf16();
            if n + w > max {
                cut = Some((i, n));
                break;
            }
            n += w;
            if c.is_whitespace() {
                space = Some((i + c.len_utf8(), n));
            }
        }
        let (end, size) = match cut {
            None => (rest.len(), n),
            Some((i, n)) => match space {
                Some((s, m)) if n - m <= SPLIT_LOOKBACK => (s, m),
                _ => (i, n),
            },
        };
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some((head, size))
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    user_prompt: &'a str,
    documents: Vec<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    user_prompt_analysis: Option<WireAnalysis>,
    documents_analysis: Option<Vec<WireAnalysis>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAnalysis {
    attack_detected: bool,
}

/// Parses a 2xx body. An analysis may be missing only for input that was not
/// sent (no prompt text, no documents); extra fields are ignored.
fn parse_answer(body: &[u8], sent_prompt: bool, sent_docs: usize) -> Result<Answer, DetectorError> {
    let malformed = |m: String| DetectorError::Malformed(m);
    // serde would also read a struct from a JSON array; only an object is an answer.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed("not a JSON object".into()));
    }
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| malformed(sanitize(&e.to_string())))?;
    let prompt = match wire.user_prompt_analysis {
        Some(a) => sent_prompt && a.attack_detected,
        None if sent_prompt => return Err(malformed("missing userPromptAnalysis".into())),
        None => false,
    };
    let docs = match wire.documents_analysis {
        Some(list) if list.len() == sent_docs => list.into_iter().map(|a| a.attack_detected).collect(),
        Some(list) => {
            return Err(malformed(format!(
                "{} documentsAnalysis entries for {sent_docs} documents",
                list.len()
            )));
        }
        None if sent_docs == 0 => Vec::new(),
        None => return Err(malformed("missing documentsAnalysis".into())),
    };
    Ok(Answer { prompt, docs })
}

fn transport(e: reqwest::Error) -> DetectorError {
    DetectorError::Transport(palisade_fetch::describe(&e))
}

/// The start of an error body, for the log: printable ASCII only, key removed.
async fn excerpt(mut resp: reqwest::Response, key: Option<&HeaderValue>) -> String {
    let mut buf = Vec::new();
    while buf.len() < EXCERPT_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(EXCERPT_BYTES);
    let mut text = sanitize(&String::from_utf8_lossy(&buf));
    if let Some(k) = key.and_then(|k| k.to_str().ok()) {
        text = text.replace(k, "***");
    }
    text
}

/// At most 160 characters, control and non-ASCII characters replaced by `?`.
fn sanitize(text: &str) -> String {
    text.chars()
        .take(160)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

fn is_loopback(host: Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// `url` without any password, for Debug output.
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        max_chars: 10,
        max_docs: 2,
        max_requests: 3,
    };

    #[test]
    fn chunks_respect_limit_and_char_boundaries() {
        let text = "ééé😀😀abc";
        let parts: Vec<_> = chunks(text, 3).collect();
        assert_eq!(parts.iter().map(|p| p.0).collect::<String>(), text);
        for (p, n) in &parts {
            assert!(*n <= 3 && units(p) == *n, "{parts:?}");
        }
        // A surrogate pair never straddles a cut.
        assert_eq!(parts[1].0, "😀");
    }

    #[test]
    fn chunks_prefer_whitespace() {
        let parts: Vec<_> = chunks("hello world again", 8).map(|p| p.0).collect();
        assert_eq!(parts, ["hello ", "world ", "again"]);
        let parts: Vec<_> = chunks("abcdefghij", 4).map(|p| p.0).collect();
        assert_eq!(parts, ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn plan_packs_first_fit() {
        let p = plan("hi", &["abcdefghijkl", "", "xyz"], LIM).unwrap();
        let want = [
            Request {
                prompt: Some("hi"),
                docs: vec![(0, "kl"), (2, "xyz")],
                units: 7,
            },
            Request {
                prompt: None,
                docs: vec![(0, "abcdefghij")],
                units: 10,
            },
        ];
        assert_eq!(p, want);
        // Empty prompt and documents are not sent.
        assert!(plan("", &["", ""], LIM).unwrap().is_empty());
    }

    #[test]
    fn plan_refuses_too_large() {
        let doc = "x".repeat(31);
        assert_eq!(plan("", &[&doc], LIM), Err(DetectorError::TooLarge { chars: 31 }));
        assert_eq!(plan("", &[&doc[..30]], LIM).map(|p| p.len()), Ok(3));
        // The documents-per-request limit counts too.
        assert_eq!(
            plan("", &["a", "b", "c", "d", "e", "f", "g"], LIM),
            Err(DetectorError::TooLarge { chars: 7 })
        );
    }

    #[test]
    fn parse_is_strict() {
        let ok =
            br#"{"userPromptAnalysis":{"attackDetected":true},"documentsAnalysis":[{"attackDetected":false}],"x":1}"#;
        let a = parse_answer(ok, true, 1).unwrap();
        assert!(a.prompt && a.docs == [false]);
        assert!(parse_answer(ok, true, 2).is_err());
        let bad_type = br#"{"userPromptAnalysis":{"attackDetected":"yes"},"documentsAnalysis":[]}"#;
        assert!(parse_answer(bad_type, true, 0).is_err());
        let no_docs = br#"{"userPromptAnalysis":{"attackDetected":false}}"#;
        assert!(parse_answer(no_docs, true, 0).is_ok());
        assert!(parse_answer(no_docs, true, 1).is_err());
        assert!(parse_answer(b"[]", false, 0).is_err());
    }
}
