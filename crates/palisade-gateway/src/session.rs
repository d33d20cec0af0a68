//! Live session state: the in-process half of a sealed session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use palisade_session::{Principal, SessionRecord, unix};
use palisade_upstream::http::HttpUpstream;
use palisade_upstream::stdio::StdioConnection;
use palisade_wire::version::ProtocolVersion;
use tokio::task::AbortHandle;

use crate::stream::StreamBuf;

/// Which upstreams an endpoint reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/mcp/<name>`.
    Single(String),
    /// `/mcp`: every upstream with `aggregate = true`.
    Aggregate,
}

impl Route {
    /// The route name bound into session tokens.
    pub fn key(&self) -> &str {
        match self {
            Route::Single(n) => n,
            Route::Aggregate => "*",
        }
    }
}

/// How a session reaches one upstream.
#[derive(Debug, Clone)]
pub enum Link {
    Stdio {
        conn: Arc<StdioConnection>,
        /// Started for this session alone (`mode = "per_session"`).
        dedicated: bool,
    },
    Http {
        up: Arc<HttpUpstream>,
        /// The upstream's own session id; never shown to the client.
        session: Option<String>,
        version: String,
        /// The session user's latest token, the subject of RFC 8693 token exchange.
        subject: Subject,
    },
}

/// A slot with the latest verified identity of a session's user, shared by the session
/// and its upstream links (replaced as the client refreshes its token).
pub type Subject = Arc<Mutex<Option<Arc<palisade_auth::Identity>>>>;

/// A subject slot holding `id`.
pub fn subject(id: Option<&Arc<palisade_auth::Identity>>) -> Subject {
    Arc::new(Mutex::new(id.cloned()))
}

/// The access token in a subject slot.
pub fn subject_token(s: &Subject) -> Option<String> {
    s.lock()
        .ok()
        .and_then(|g| g.as_ref().map(|i| i.subject_token().to_owned()))
}

impl Link {
    /// The same link with another subject slot (an HTTP link shared between users).
    pub fn with_subject(&self, s: &Subject) -> Link {
        match self {
            Link::Http {
                up, session, version, ..
            } => Link::Http {
                up: up.clone(),
                session: session.clone(),
                version: version.clone(),
                subject: s.clone(),
            },
            other => other.clone(),
        }
    }
}

/// Client capabilities that decide which server requests may be relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCaps {
    pub sampling: bool,
    pub elicitation: bool,
    pub roots: bool,
}

impl ClientCaps {
    pub fn from_json(caps: Option<&serde_json::Value>) -> Self {
        let has = |k: &str| caps.and_then(|c| c.get(k)).is_some_and(|v| !v.is_null());
        ClientCaps {
            sampling: has("sampling"),
            elicitation: has("elicitation"),
            roots: has("roots"),
        }
    }

    pub fn bits(self) -> u8 {
        u8::from(self.sampling) | (u8::from(self.elicitation) << 1) | (u8::from(self.roots) << 2)
    }

    pub fn from_bits(b: u8) -> Self {
        ClientCaps {
            sampling: b & 1 != 0,
            elicitation: b & 2 != 0,
            roots: b & 4 != 0,
        }
    }

    /// Whether a server-to-client request of `method` may be sent to this client.
    pub fn allows(self, method: &str) -> bool {
        match method {
            "sampling/createMessage" => self.sampling,
            "elicitation/create" => self.elicitation,
            "roots/list" => self.roots,
            _ => true,
        }
    }
}

/// A client request in flight, for cancellation.
#[derive(Debug)]
pub struct ClientRequest {
    pub gw_id: u64,
    pub upstream: String,
    pub stream: Arc<StreamBuf>,
    pub task: Option<AbortHandle>,
}

/// One client session as held in memory by this process.
#[derive(Debug)]
pub struct LiveSession {
    pub sid: String,
    pub route: Route,
    pub version: ProtocolVersion,
    pub principal: Principal,
    pub caps: ClientCaps,
    /// Absolute expiry (unix seconds).
    pub exp: u64,
    pub last_seen: AtomicU64,
    pub links: HashMap<String, Link>,
    /// The standalone GET stream (id 0).
    pub standalone: Arc<StreamBuf>,
    pub standalone_attached: AtomicBool,
    /// Next standalone event not yet delivered to any GET.
    pub standalone_cursor: AtomicU64,
    pub streams: Mutex<HashMap<u64, Arc<StreamBuf>>>,
    next_stream: AtomicU64,
    /// Client request id (JSON text) → in-flight request.
    pub requests: Mutex<HashMap<String, ClientRequest>>,
    /// Aggregate endpoint: resource URI → upstream, learned from list results.
    pub resource_routes: Mutex<HashMap<String, String>>,
    /// Resource URIs this session subscribed to (for updates from shared processes).
    pub subscriptions: Mutex<std::collections::HashSet<String>>,
    /// Background tasks (upstream GET streams) ended with the session.
    pub tasks: Mutex<Vec<AbortHandle>>,
    /// A transient session for one stateless (2026-07-28) request.
    pub stateless: bool,
    /// The digest of the session id the client holds (the sealed token), the
    /// session's name in audit records; set once the token exists.
    pub tag: std::sync::OnceLock<String>,
    /// The latest verified token of the session's user, for RFC 8693 token exchange
    /// towards upstreams (never forwarded itself). Replaced on every request.
    pub identity: Subject,
    replay_cap: usize,
    /// Flow labels touched, injection seen and bytes relayed (J4, J5).
    pub flow: Mutex<crate::inspect::FlowState>,
}

impl LiveSession {
    /// The session's name in audit records and the admin API: the digest of
    /// the id the client holds (its sealed token), else of the internal id.
    pub fn audit_tag(&self) -> String {
        self.tag
            .get()
            .cloned()
            .unwrap_or_else(|| palisade_audit::session_digest(&self.sid))
    }

    /// Shares `s` as the session's identity slot (the one its links read).
    pub fn with_identity(mut self, s: Subject) -> Self {
        self.identity = s;
        self
    }

    /// Records the caller's current token (after authentication of a request).
    pub fn set_identity(&self, id: Option<&Arc<palisade_auth::Identity>>) {
        if let (Some(id), Ok(mut slot)) = (id, self.identity.lock()) {
            *slot = Some(id.clone());
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sid: String,
        route: Route,
        version: ProtocolVersion,
        principal: Principal,
        caps: ClientCaps,
        exp: u64,
        links: HashMap<String, Link>,
        replay_cap: usize,
        stateless: bool,
    ) -> Self {
        LiveSession {
            sid,
            route,
            version,
            principal,
            caps,
            exp,
            last_seen: AtomicU64::new(unix(SystemTime::now())),
            links,
            standalone: Arc::new(StreamBuf::new(0, replay_cap)),
            standalone_attached: AtomicBool::new(false),
            standalone_cursor: AtomicU64::new(1),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            requests: Mutex::new(HashMap::new()),
            resource_routes: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(std::collections::HashSet::new()),
            tasks: Mutex::new(Vec::new()),
            stateless,
            identity: subject(None),
            replay_cap,
            flow: Mutex::new(crate::inspect::FlowState::default()),
            tag: std::sync::OnceLock::new(),
        }
    }

    pub fn touch(&self) {
        self.last_seen.store(unix(SystemTime::now()), Ordering::Relaxed);
    }

    /// A new request stream, kept for resumption until pruned.
    pub fn new_stream(&self) -> Arc<StreamBuf> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(StreamBuf::new(id, self.replay_cap));
        if !self.stateless
            && let Ok(mut m) = self.streams.lock()
        {
            // Keep a bounded number of finished streams for Last-Event-ID.
            if m.len() >= 64 {
                let done: Vec<u64> = m.iter().filter(|(_, s)| s.is_done()).map(|(k, _)| *k).collect();
                for k in done.into_iter().take(32) {
                    m.remove(&k);
                }
            }
            m.insert(id, s.clone());
        }
        s
    }

    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions.lock().map(|s| s.contains(uri)).unwrap_or(false)
    }

    pub fn stream(&self, id: u64) -> Option<Arc<StreamBuf>> {
        if id == 0 {
            return Some(self.standalone.clone());
        }
        self.streams.lock().ok()?.get(&id).cloned()
    }

    /// The record sealed into the client's token.
    pub fn record(&self, iat: u64) -> SessionRecord {
        let upstreams = self
            .links
            .iter()
            .filter_map(|(name, l)| match l {
                Link::Http { session: Some(s), .. } => Some((name.clone(), s.clone())),
                _ => None,
            })
            .collect();
        SessionRecord {
            sid: self.sid.clone(),
            route: self.route.key().to_owned(),
            version: self.version.as_str().to_owned(),
            upstreams,
            caps: self.caps.bits(),
            iat,
            exp: self.exp,
        }
    }

    /// Ends background work and closes streams. Upstream sessions are closed by the caller.
    pub fn close_local(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
        if let Ok(mut r) = self.requests.lock() {
            for (_, req) in r.drain() {
                if let Some(t) = req.task {
                    t.abort();
                }
                req.stream.close();
            }
        }
        self.standalone.close();
    }
}
