//! The gateway's shared state and the message relay between clients and upstreams.
//!
//! Ids: every request the gateway sends upstream carries a process-wide unique
//! id it minted; the client's id is restored on the way back. Server-to-client
//! requests get fresh gateway ids too, so ids never collide across clients or
//! upstreams, and a client can only answer requests that were sent to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use palisade_config::{Config, Transport, UpstreamConfig};
use palisade_session::{SessionSealer, unix};
use palisade_upstream::UpstreamError;
use palisade_upstream::http::{HttpUpstream, Reply};
use palisade_upstream::stdio::{Event as StdioEvent, StdioConnection, StdioSpec};
use palisade_wire::version::ProtocolVersion;
use palisade_wire::{Id, Kind, Limits, Message, codes};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc};

use crate::session::{Link, LiveSession, Route};
use crate::stream::StreamBuf;

/// One configured upstream.
#[derive(Debug)]
pub struct UpstreamHandle {
    pub name: String,
    pub config: UpstreamConfig,
    pub kind: UpstreamKind,
    pub permits: Arc<Semaphore>,
}

#[derive(Debug)]
// Built once per upstream at start; the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum UpstreamKind {
    Stdio {
        spec: StdioSpec,
        /// The process shared by all sessions (`mode = "shared"`).
        shared: Option<Arc<StdioConnection>>,
    },
    Http {
        client: Arc<HttpUpstream>,
        /// The gateway's own upstream session used for stateless clients.
        stateless: tokio::sync::Mutex<Option<(Link, serde_json::Value)>>,
    },
}

impl UpstreamHandle {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }
}

/// A request of a client being served upstream.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub session: Arc<LiveSession>,
    pub upstream: String,
    pub stream: Arc<StreamBuf>,
}

/// Where progress for a rewritten token goes.
#[derive(Debug, Clone)]
pub struct ProgressRoute {
    pub original: Box<RawValue>,
    pub stream: Arc<StreamBuf>,
}

/// Where the client's answer to a server-to-client request goes.
#[derive(Debug, Clone)]
pub enum ServerReply {
    /// Back to the upstream that asked, with its own id restored.
    Upstream(Link),
    /// To the gateway itself (a confirmation it asked for).
    Gateway(tokio::sync::mpsc::Sender<Message>),
}

/// A server-to-client request awaiting the client's answer.
#[derive(Debug, Clone)]
pub struct ServerRequest {
    pub sid: String,
    pub upstream: String,
    pub reply: ServerReply,
    pub original: Id,
    pub method: String,
}

/// Server-to-client requests awaiting an answer, across all sessions.
pub const MAX_SERVER_REQUESTS: usize = 10_000;

/// Everything the gateway shares between requests.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub limits: Limits,
    pub versions: Vec<ProtocolVersion>,
    pub sealer: SessionSealer,
    /// The resource server; `None` when `auth.mode = "none"`.
    pub auth: Option<Arc<palisade_auth::Authenticator>>,
    /// Scopes and DPoP requirement of the aggregated endpoint (union over its upstreams).
    pub aggregate_auth: (Vec<String>, bool),
    /// Authorization, limits, quotas and the shared-state backend.
    pub controls: Arc<crate::controls::Controls>,
    pub sessions: Mutex<HashMap<String, Arc<LiveSession>>>,
    pub upstreams: BTreeMap<String, Arc<UpstreamHandle>>,
    next_id: AtomicU64,
    pub inflight: Mutex<HashMap<u64, Inflight>>,
    pub progress: Mutex<HashMap<String, ProgressRoute>>,
    pub server_requests: Mutex<HashMap<u64, ServerRequest>>,
    /// Tool pins, holds and the poisoning scan.
    pub integrity: Arc<crate::integrity::Integrity>,
    /// Kill switch and blocked principals (L5).
    pub containment: crate::containment::Containment,
}

/// Parameters the gateway itself sends when it initializes an upstream.
pub fn gateway_init_params(version: ProtocolVersion) -> Box<RawValue> {
    let v = serde_json::json!({
        "protocolVersion": version.as_str(),
        "capabilities": {
            "sampling": {},
            "elicitation": {},
            "roots": { "listChanged": true }
        },
        "clientInfo": { "name": "palisade", "version": env!("CARGO_PKG_VERSION") }
    });
    to_raw(&v)
}

pub fn to_raw(v: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| empty_object())
}

pub fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("literal JSON object"))
}

impl Gateway {
    /// Builds the gateway and starts shared stdio upstreams.
    pub fn new(
        config: Config,
        sealer: SessionSealer,
        auth: Option<Arc<palisade_auth::Authenticator>>,
        mut creds: BTreeMap<String, palisade_upstream::http::UpstreamCredentials>,
        integrity: Option<Arc<crate::integrity::Integrity>>,
        controls: Option<Arc<crate::controls::Controls>>,
    ) -> Result<Arc<Gateway>, String> {
        let controls = controls.unwrap_or_else(|| Arc::new(crate::controls::Controls::local(&config)));
        let integrity = match integrity {
            Some(i) => i,
            None => crate::integrity::Integrity::in_memory(&config)?,
        };
        let s = &config.server;
        let limits = Limits {
            max_bytes: s.max_body_bytes,
            max_depth: s.max_json_depth,
            max_string: s.max_string_bytes,
            max_items: s.max_items,
        };
        let versions: Vec<ProtocolVersion> = s
            .protocol_versions
            .iter()
            .filter_map(|v| ProtocolVersion::parse(v))
            .collect();
        let stateful = versions
            .iter()
            .copied()
            .filter(|v| !v.is_stateless())
            .max()
            .unwrap_or(ProtocolVersion::LATEST_STATEFUL);
        check_aliases(&config)?;
        let aggregate_auth = crate::auth::aggregate_requirements(&config);
        let mut upstreams = BTreeMap::new();
        let mut pending_stdio = Vec::new();
        for (name, up) in &config.upstreams {
            let up = up.get_ref().clone();
            let kind = match &up.transport {
                Transport::Stdio(sc) => {
                    let spec = StdioSpec {
                        name: name.clone(),
                        config: sc.clone(),
                        limits,
                        init_params: gateway_init_params(stateful),
                        require_launch_pins: config.integrity.require_launch_pins,
                    };
                    let shared = if sc.mode == palisade_config::StdioMode::Shared {
                        let (conn, events) = StdioConnection::start(spec.clone());
                        pending_stdio.push((name.clone(), conn.clone(), events));
                        Some(conn)
                    } else {
                        None
                    };
                    UpstreamKind::Stdio { spec, shared }
                }
                Transport::Http(hc) => UpstreamKind::Http {
                    client: Arc::new(HttpUpstream::new(
                        name,
                        hc,
                        limits,
                        creds.remove(name).unwrap_or_default(),
                    )?),
                    stateless: tokio::sync::Mutex::new(None),
                },
            };
            let permits = Arc::new(Semaphore::new(up.max_in_flight));
            upstreams.insert(
                name.clone(),
                Arc::new(UpstreamHandle {
                    name: name.clone(),
                    config: up,
                    kind,
                    permits,
                }),
            );
        }
        let gw = Arc::new(Gateway {
            config,
            limits,
            versions,
            sealer,
            aggregate_auth,
            auth,
            controls,
            sessions: Mutex::new(HashMap::new()),
            upstreams,
            next_id: AtomicU64::new(1),
            inflight: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            server_requests: Mutex::new(HashMap::new()),
            integrity,
            containment: Default::default(),
        });
        for (name, conn, events) in pending_stdio {
            spawn_stdio_dispatcher(Arc::downgrade(&gw), name, conn, events, None);
        }
        Ok(gw)
    }

    /// The request timeout of an upstream (30 s for a name not configured).
    pub fn upstream_timeout(&self, name: &str) -> Duration {
        self.upstreams
            .get(name)
            .map_or(Duration::from_secs(30), |h| h.timeout())
    }

    /// A fresh process-wide unique id for a message sent by the gateway.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The newest configured session-based version.
    pub fn latest_stateful(&self) -> ProtocolVersion {
        self.versions
            .iter()
            .copied()
            .filter(|v| !v.is_stateless())
            .max()
            .unwrap_or(ProtocolVersion::LATEST_STATEFUL)
    }

    pub fn supports(&self, v: ProtocolVersion) -> bool {
        self.versions.contains(&v)
    }

    /// Upstream names reached by a route.
    pub fn route_upstreams(&self, route: &Route) -> Vec<String> {
        match route {
            Route::Single(n) => vec![n.clone()],
            Route::Aggregate => self
                .upstreams
                .values()
                .filter(|u| u.config.aggregate)
                .map(|u| u.name.clone())
                .collect(),
        }
    }

    pub fn session(&self, sid: &str) -> Option<Arc<LiveSession>> {
        self.sessions.lock().ok()?.get(sid).cloned()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(usize::MAX)
    }

    /// Whether every upstream has started (for `/readyz`).
    pub fn ready(&self) -> bool {
        self.upstreams.values().all(|u| match &u.kind {
            UpstreamKind::Stdio { shared: Some(c), .. } => c.ready().is_some(),
            _ => true,
        })
    }

    /// Ends a session: revokes its token, closes streams and upstream sessions.
    pub async fn end_session(&self, sess: &Arc<LiveSession>) {
        self.close_session(sess, true).await;
    }

    /// Ends a session's live state here; `revoke` also refuses its token on
    /// every replica. Idle sweeps with shared state do not revoke: the
    /// session may be busy on another replica.
    pub async fn close_session(&self, sess: &Arc<LiveSession>, revoke: bool) {
        if sess.stateless {
            // A per-request context: its links are the gateway's own, shared ones.
            sess.close_local();
            return;
        }
        if revoke && !self.controls.revoke(&sess.sid, sess.exp).await {
            tracing::error!(session = %digest(&sess.sid), "session revocation could not be recorded in the shared state");
        }
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(&sess.sid);
        }
        sess.close_local();
        if let Ok(mut s) = self.server_requests.lock() {
            s.retain(|_, r| r.sid != sess.sid);
        }
        for link in sess.links.values() {
            close_link(link).await;
        }
    }

    /// Revokes every live session whose audit tag is `tag` (incident
    /// response); each is audited as `session.revoke` by `by`. Returns how many.
    pub async fn revoke_tagged(&self, tag: &str, by: &str) -> usize {
        let found: Vec<Arc<LiveSession>> = self
            .sessions
            .lock()
            .map(|m| m.values().filter(|s| s.audit_tag() == tag).cloned().collect())
            .unwrap_or_default();
        for s in &found {
            self.close_session(s, true).await;
            tracing::warn!(target: "palisade::audit", event = "session.revoke", session = tag, by, "session revoked");
        }
        found.len()
    }

    /// Drops sessions idle too long or past expiry, and stale revocations.
    pub async fn sweep(&self) {
        let now = unix(SystemTime::now());
        let idle = self.config.sessions.idle_timeout_s;
        let stale: Vec<Arc<LiveSession>> = self
            .sessions
            .lock()
            .map(|m| {
                m.values()
                    .filter(|s| now >= s.exp || now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) > idle)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for s in stale {
            tracing::info!(target: "palisade::audit", event = "session.close", reason = "expired", session = %s.audit_tag(), "session expired");
            let local = self.controls.state.name() == "local";
            self.close_session(&s, local).await;
        }
    }

    /// Stops every stdio upstream.
    pub async fn shutdown(&self) {
        let sessions: Vec<Arc<LiveSession>> = self
            .sessions
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for s in sessions {
            self.close_session(&s, false).await;
        }
        for u in self.upstreams.values() {
            if let UpstreamKind::Stdio { shared: Some(c), .. } = &u.kind {
                c.shutdown().await;
            }
        }
    }
}

/// Releases what a link holds for one session: its own process or upstream session.
pub async fn close_link(link: &Link) {
    match link {
        Link::Stdio { conn, dedicated: true } => conn.shutdown().await,
        Link::Http {
            up,
            session: Some(s),
            version,
            subject,
        } => {
            let subject = crate::session::subject_token(subject);
            if let Err(e) = up.delete(s, Some(version), subject.as_deref()).await {
                tracing::debug!(upstream = up.name(), error = %e, "upstream DELETE failed");
            }
        }
        _ => {}
    }
}

/// Opens an upstream session on an HTTP upstream: `initialize` with `params`,
/// then `notifications/initialized`. Returns the link and the InitializeResult.
pub async fn init_http(
    gw: &Gateway,
    client: &Arc<HttpUpstream>,
    params: Box<RawValue>,
    version: ProtocolVersion,
    subject: &crate::session::Subject,
) -> Result<(Link, Value), String> {
    let init = Message::request(Id::number(gw.next_id()), "initialize", Some(params));
    let probe = Link::Http {
        up: client.clone(),
        session: None,
        version: version.as_str().to_owned(),
        subject: subject.clone(),
    };
    let (resp, upstream_sid) = call_link(&probe, &init, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(err) = resp.error_object() {
        return Err(format!("initialize refused: {}", err.message));
    }
    let result: Value = resp.result_as().ok_or("initialize without result")?;
    let upstream_version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or(version.as_str())
        .to_owned();
    let note = Message::notification("notifications/initialized", None);
    client
        .post(
            &note,
            upstream_sid.as_deref(),
            Some(&upstream_version),
            &[],
            Duration::from_secs(10),
            crate::session::subject_token(subject).as_deref(),
        )
        .await
        .map_err(|e| format!("initialized notification: {e}"))?;
    let link = Link::Http {
        up: client.clone(),
        session: upstream_sid,
        version: upstream_version,
        subject: subject.clone(),
    };
    Ok((link, result))
}

/// A short, non-reversible tag for a session id in logs.
pub fn digest(sid: &str) -> String {
    palisade_audit::session_digest(sid)
}

/// Aliases must not collide with each other or with prefixed names.
fn check_aliases(config: &Config) -> Result<(), String> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (name, up) in config.aggregate_upstreams() {
        for to in up.aliases.values() {
            if let Some(other) = seen.insert(to.as_str(), name.as_str()) {
                return Err(format!(
                    "aggregated tool name collision: alias {to:?} is used by upstreams {other} and {name}"
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Server → client relay

/// Delivers a request or notification from an upstream to the right client stream.
///
/// `via`: the client request whose stream this arrived on, if any (HTTP SSE);
/// otherwise the session is inferred (stdio) or given (`session`).
pub fn relay_from_server(
    gw: &Arc<Gateway>,
    upstream: &str,
    link: &Link,
    msg: Message,
    via: Option<&Inflight>,
    session: Option<&Arc<LiveSession>>,
) {
    match msg.kind() {
        Kind::Notification => relay_notification(gw, upstream, msg, via, session),
        Kind::Request => relay_server_request(gw, upstream, link, msg, via, session),
        Kind::Response | Kind::Error => {
            tracing::debug!(upstream, "unexpected response from upstream dropped");
        }
    }
}

#[derive(serde::Deserialize)]
struct ProgressParams<'a> {
    #[serde(borrow, rename = "progressToken")]
    token: &'a RawValue,
}

#[derive(serde::Deserialize)]
struct CancelParams<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: &'a RawValue,
}

fn relay_notification(
    gw: &Arc<Gateway>,
    upstream: &str,
    mut msg: Message,
    via: Option<&Inflight>,
    session: Option<&Arc<LiveSession>>,
) {
    let method = msg.method().to_owned();
    match method.as_str() {
        "notifications/progress" => {
            let Some(p) = msg.params_as::<ProgressParams>() else {
                return;
            };
            let token = p.token.get().to_owned();
            let route = gw.progress.lock().ok().and_then(|m| m.get(&token).cloned());
            let Some(route) = route else {
                tracing::debug!(upstream, "progress for unknown token dropped");
                return;
            };
            if let Some(params) = replace_field(msg.params.as_deref(), "progressToken", &route.original) {
                msg.params = Some(params);
                route.stream.push(Bytes::from(msg.to_bytes()));
            }
        }
        "notifications/cancelled" => {
            // The server withdraws one of its own requests to a client.
            let Some(p) = msg.params_as::<CancelParams>() else {
                return;
            };
            let target = gw.server_requests.lock().ok().and_then(|m| {
                m.iter()
                    .find(|(_, r)| r.upstream == upstream && r.original.as_str() == p.request_id.get())
                    .map(|(k, r)| (*k, r.sid.clone()))
            });
            let Some((gw_id, sid)) = target else { return };
            if let Ok(mut m) = gw.server_requests.lock() {
                m.remove(&gw_id);
            }
            let Some(sess) = gw.session(&sid) else { return };
            let id = to_raw(&Value::from(gw_id));
            if let Some(params) = replace_field(msg.params.as_deref(), "requestId", &id) {
                msg.params = Some(params);
                sess.standalone.push(Bytes::from(msg.to_bytes()));
            }
        }
        _ => {
            if method == "notifications/tools/list_changed" {
                // Never trust "nothing else changed": re-check pins before the next call.
                gw.integrity.mark_stale(upstream);
            }
            let bytes = Bytes::from(msg.to_bytes());
            if let Some(v) = via {
                v.stream.push(bytes);
            } else if let Some(s) = session {
                s.standalone.push(bytes);
            } else if method == "notifications/message" {
                // A log line from a shared process goes to the one session it is
                // serving; when several are in flight nobody can tell, so it is dropped.
                match sole_inflight(gw, upstream) {
                    Some(f) => {
                        f.stream.push(bytes);
                    }
                    None => tracing::debug!(upstream, "log notification with no unambiguous session dropped"),
                }
            } else if method == "notifications/resources/updated" {
                // Only to sessions that subscribed to that resource.
                let uri = msg
                    .params_as::<serde_json::Map<String, Value>>()
                    .and_then(|p| p.get("uri").and_then(Value::as_str).map(str::to_owned));
                let Some(uri) = uri else { return };
                for s in sessions_on(gw, upstream) {
                    if s.is_subscribed(&uri) {
                        s.standalone.push(bytes.clone());
                    }
                }
            } else {
                // Server-wide news (list_changed): every session on it.
                for s in sessions_on(gw, upstream) {
                    s.standalone.push(bytes.clone());
                }
            }
        }
    }
}

fn relay_server_request(
    gw: &Arc<Gateway>,
    upstream: &str,
    link: &Link,
    mut msg: Message,
    via: Option<&Inflight>,
    session: Option<&Arc<LiveSession>>,
) {
    let Some(original) = msg.id.clone() else { return };
    let method = msg.method().to_owned();
    if method == "ping" {
        answer_upstream(link, Message::response(original, empty_object()));
        return;
    }
    let inferred;
    let (sess, stream) = match (via, session) {
        (Some(v), _) => (v.session.clone(), v.stream.clone()),
        (None, Some(s)) => (s.clone(), s.standalone.clone()),
        (None, None) => match sole_inflight(gw, upstream) {
            Some(f) => {
                inferred = f;
                (inferred.session.clone(), inferred.stream.clone())
            }
            None => {
                // Fail closed: never guess which user a shared process is asking.
                answer_upstream(
                    link,
                    Message::error(
                        Some(original),
                        codes::INTERNAL_ERROR,
                        "no single client session to relay this request to (shared stdio process)",
                        None,
                    ),
                );
                return;
            }
        },
    };
    if sess.stateless {
        answer_upstream(
            link,
            Message::error(
                Some(original),
                codes::METHOD_NOT_FOUND,
                "the client uses the stateless protocol; server-to-client requests are not relayed",
                None,
            ),
        );
        return;
    }
    if !sess.caps.allows(&method) {
        answer_upstream(
            link,
            Message::error(
                Some(original),
                codes::METHOD_NOT_FOUND,
                &format!("the client did not declare the capability for {method}"),
                None,
            ),
        );
        return;
    }
    if let Some(insp) = &gw.controls.inspect
        && let Err(why) = crate::inspect::on_server_request(insp, &sess.sid, upstream, &mut msg)
    {
        tracing::warn!(target: "palisade::audit", event = "inspect.server_request_refused", upstream, method = %method, reason = %why, "server request refused");
        answer_upstream(link, Message::error(Some(original), codes::FORBIDDEN, &why, None));
        return;
    }
    let gw_id = gw.next_id();
    let full = gw
        .server_requests
        .lock()
        .map(|m| m.len() >= MAX_SERVER_REQUESTS)
        .unwrap_or(true);
    if full {
        // An upstream flooding clients with requests nobody answers must not grow memory.
        answer_upstream(
            link,
            Message::error(
                Some(original),
                codes::OVERLOADED,
                "too many unanswered server requests",
                None,
            ),
        );
        return;
    }
    if let Ok(mut m) = gw.server_requests.lock() {
        m.insert(
            gw_id,
            ServerRequest {
                sid: sess.sid.clone(),
                upstream: upstream.to_owned(),
                reply: ServerReply::Upstream(link.clone()),
                original,
                method,
            },
        );
    }
    msg.id = Some(Id::number(gw_id));
    stream.push(Bytes::from(msg.to_bytes()));
}

/// Sends a message to an upstream without waiting for an answer.
pub fn answer_upstream(link: &Link, msg: Message) {
    match link {
        Link::Stdio { conn, .. } => {
            if let Err(e) = conn.send(&msg) {
                tracing::warn!(upstream = conn.name(), error = %e, "could not answer upstream");
            }
        }
        Link::Http {
            up,
            session,
            version,
            subject,
        } => {
            let up = up.clone();
            let session = session.clone();
            let version = version.clone();
            let subject = crate::session::subject_token(subject);
            tokio::spawn(async move {
                let r = up
                    .post(
                        &msg,
                        session.as_deref(),
                        Some(&version),
                        &[],
                        Duration::from_secs(30),
                        subject.as_deref(),
                    )
                    .await;
                if let Err(e) = r {
                    tracing::warn!(upstream = up.name(), error = %e, "could not answer upstream");
                }
            });
        }
    }
}

/// The latest request in flight on a shared upstream, if every request in
/// flight there belongs to one session; `None` when it is ambiguous or idle.
fn sole_inflight(gw: &Gateway, upstream: &str) -> Option<Inflight> {
    let m = gw.inflight.lock().ok()?;
    let mut candidates = m.iter().filter(|(_, f)| f.upstream == upstream);
    let (first_id, first) = candidates.next()?;
    let mut best = (*first_id, first);
    for (id, f) in candidates {
        if f.session.sid != first.session.sid {
            return None;
        }
        if *id > best.0 {
            best = (*id, f);
        }
    }
    (!best.1.session.stateless).then(|| best.1.clone())
}

fn sessions_on(gw: &Gateway, upstream: &str) -> Vec<Arc<LiveSession>> {
    gw.sessions
        .lock()
        .map(|m| m.values().filter(|s| s.links.contains_key(upstream)).cloned().collect())
        .unwrap_or_default()
}

/// Replaces one top-level field of a JSON object, keeping the rest.
pub fn replace_field(obj: Option<&RawValue>, key: &str, value: &RawValue) -> Option<Box<RawValue>> {
    let mut map: serde_json::Map<String, Value> = serde_json::from_str(obj?.get()).ok()?;
    map.insert(key.to_owned(), serde_json::from_str(value.get()).ok()?);
    serde_json::value::to_raw_value(&map).ok()
}

/// Reads `stdio` events and relays them to client sessions.
pub fn spawn_stdio_dispatcher(
    gw: Weak<Gateway>,
    upstream: String,
    conn: Arc<StdioConnection>,
    mut events: mpsc::Receiver<StdioEvent>,
    dedicated: Option<String>,
) {
    tokio::spawn(async move {
        let link = Link::Stdio {
            conn: conn.clone(),
            dedicated: dedicated.is_some(),
        };
        while let Some(ev) = events.recv().await {
            if let StdioEvent::Response(msg) = ev {
                conn.resolve(msg);
                continue;
            }
            let Some(gw) = gw.upgrade() else { return };
            match ev {
                StdioEvent::Response(_) => {}
                StdioEvent::Message(msg) => {
                    let session = dedicated.as_deref().and_then(|sid| gw.session(sid));
                    if dedicated.is_some() && session.is_none() {
                        continue;
                    }
                    // For a dedicated process, related messages go on the latest request stream.
                    let via = session.as_ref().and_then(|s| {
                        gw.inflight.lock().ok().and_then(|m| {
                            m.iter()
                                .filter(|(_, f)| f.session.sid == s.sid)
                                .max_by_key(|(k, _)| **k)
                                .map(|(_, f)| f.clone())
                        })
                    });
                    relay_from_server(&gw, &upstream, &link, msg, via.as_ref(), session.as_ref());
                }
                StdioEvent::Down { reason } => {
                    tracing::warn!(upstream = %upstream, %reason, "stdio upstream down; in-flight requests failed");
                    if let Ok(mut m) = gw.server_requests.lock() {
                        m.retain(|_, r| r.upstream != upstream);
                    }
                }
                StdioEvent::Up { generation } => {
                    tracing::info!(upstream = %upstream, generation, "stdio upstream ready");
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Client → server

/// Sends one request over a link and waits for its response, ignoring
/// anything else on the way (used for fan-out and handshakes).
pub async fn call_link(
    link: &Link,
    msg: &Message,
    timeout: Duration,
) -> Result<(Message, Option<String>), UpstreamError> {
    match link {
        Link::Stdio { conn, .. } => conn.request(msg.clone(), timeout).await.map(|m| (m, None)),
        Link::Http {
            up,
            session,
            version,
            subject,
        } => {
            let subject = crate::session::subject_token(subject);
            let span = crate::trace::upstream_call(up.name(), msg.method());
            let traceparent = span.traceparent();
            let answer = up
                .post(
                    msg,
                    session.as_deref(),
                    Some(version),
                    traceparent.as_slice(),
                    timeout,
                    subject.as_deref(),
                )
                .await;
            span.finish(answer.as_ref().err().map(ToString::to_string));
            let answer = answer?;
            let sid = answer.session_id;
            match answer.reply {
                Reply::Message(m) => Ok((m, sid)),
                Reply::Accepted => Err(UpstreamError::Protocol("request answered with 202".into())),
                Reply::Stream(mut s) => {
                    use futures_util::StreamExt;
                    let want = msg.id.clone();
                    let read = async {
                        while let Some(item) = s.next().await {
                            let m = item?;
                            if matches!(m.kind(), Kind::Response | Kind::Error) && m.id == want {
                                return Ok((m, sid.clone()));
                            }
                        }
                        Err(UpstreamError::Protocol("stream ended without a response".into()))
                    };
                    tokio::time::timeout(timeout, read)
                        .await
                        .map_err(|_| UpstreamError::Timeout)?
                }
            }
        }
    }
}

/// An error response for a failed upstream call.
pub fn upstream_error(id: Option<Id>, e: &UpstreamError) -> Message {
    let code = match e {
        UpstreamError::Overloaded => codes::OVERLOADED,
        _ => codes::UPSTREAM_UNAVAILABLE,
    };
    Message::error(id, code, &e.to_string(), None)
}
