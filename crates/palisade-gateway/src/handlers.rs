//! The Streamable HTTP endpoints (session-based revisions 2025-06-18 and 2025-11-25).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use palisade_session::{SessionError, SessionRecord, unix};
use palisade_tls::PeerCertificate;
use palisade_upstream::stdio::{StdioConnection, StdioSpec};
use palisade_wire::version::ProtocolVersion;
use palisade_wire::{DecodeError, Kind, Message, codes, parse_message};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::{Caller, Conn, authenticate};
use crate::forward::{Plan, cancel_notice, fan_out, forward, plan, resolve_name};
use crate::gateway::{
    Gateway, UpstreamKind, answer_upstream, close_link, digest, init_http, relay_from_server, to_raw,
};
use crate::hygiene::json_error;
use crate::session::{ClientCaps, ClientRequest, Link, LiveSession, Route, Subject};
use crate::sse::{StreamGuard, respond_from_stream, sse_response};

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";

/// `POST /mcp/{server}`.
pub async fn post_single(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    uri: Uri,
    cert: Option<Extension<Arc<PeerCertificate>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post(gw, Route::Single(server), (uri, cert), headers, body).await
}

/// `POST /mcp`.
pub async fn post_aggregate(
    State(gw): State<Arc<Gateway>>,
    uri: Uri,
    cert: Option<Extension<Arc<PeerCertificate>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post(gw, Route::Aggregate, (uri, cert), headers, body).await
}

/// `GET /mcp/{server}`.
pub async fn get_single(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    uri: Uri,
    cert: Option<Extension<Arc<PeerCertificate>>>,
    headers: HeaderMap,
) -> Response {
    get(gw, Route::Single(server), (uri, cert), headers).await
}

/// `GET /mcp`.
pub async fn get_aggregate(
    State(gw): State<Arc<Gateway>>,
    uri: Uri,
    cert: Option<Extension<Arc<PeerCertificate>>>,
    headers: HeaderMap,
) -> Response {
    get(gw, Route::Aggregate, (uri, cert), headers).await
}

/// `DELETE /mcp/{server}`.
pub async fn delete_single(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    uri: Uri,
    cert: Option<Extension<Arc<PeerCertificate>>>,
    headers: HeaderMap,
) -> Response {
    delete(gw, Route::Single(server), (uri, cert), headers).await
}

/// `DELETE /mcp`.
pub async fn delete_aggregate(
    State(gw): State<Arc<Gateway>>,
    uri: Uri,
    cert: Option<Extension<Arc<PeerCertificate>>>,
    headers: HeaderMap,
) -> Response {
    delete(gw, Route::Aggregate, (uri, cert), headers).await
}

/// Any other method on an MCP endpoint.
pub async fn method_not_allowed(method: Method) -> Response {
    let mut r = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::INVALID_REQUEST,
        &format!("method {method} not allowed"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
    r
}

fn route_exists(gw: &Gateway, route: &Route) -> bool {
    match route {
        Route::Single(n) => gw.upstreams.contains_key(n),
        Route::Aggregate => gw.config.server.aggregate && !gw.route_upstreams(route).is_empty(),
    }
}

fn accepts(headers: &HeaderMap, wanted: &[&str]) -> bool {
    let values: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .collect();
    wanted.iter().all(|w| values.iter().any(|v| v == w || v == "*/*"))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A JSON-RPC message as an HTTP response.
pub fn json_message(status: StatusCode, msg: &Message) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(msg.to_bytes()),
    )
        .into_response()
}

fn decode_error_response(e: DecodeError) -> Response {
    let status = if e
        .limit
        .is_some_and(|l| matches!(l, palisade_wire::LimitError::TooLarge { .. }))
    {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    json_message(status, &Message::error(e.id, e.code, &e.message, None))
}

/// Reads and discards a refused request's body, at most 64 KiB for at most a second
/// (nothing kept), so the client's keep-alive connection stays usable for its retry with
/// a token; a larger or slower body just ends the connection.
async fn drain(body: Body) {
    let limit = 64 * 1024;
    let timeout = Duration::from_secs(1);
    let mut body = body;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > limit {
                    return;
                }
            }
        }
    })
    .await;
}

async fn read_body(gw: &Gateway, body: Body) -> Result<Bytes, Response> {
    let limit = gw.limits.max_bytes;
    let timeout = Duration::from_millis(gw.config.server.body_timeout_ms);
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            codes::INVALID_REQUEST,
            "request body timed out",
        )),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::INVALID_REQUEST,
                    &format!("request body exceeds {limit} bytes"),
                ))
            } else {
                Err(json_error(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_REQUEST,
                    "could not read request body",
                ))
            }
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

async fn post(gw: Arc<Gateway>, route: Route, conn: Conn, headers: HeaderMap, body: Body) -> Response {
    // Authenticate before reading the body: unauthenticated callers cost nothing more.
    // Endpoint names are public (Protected Resource Metadata lists them); checking the
    // route first keeps unknown paths out of authentication and its audit events.
    if !route_exists(&gw, &route) {
        return json_error(StatusCode::NOT_FOUND, codes::INVALID_REQUEST, "no such MCP endpoint");
    }
    let caller = match authenticate(&gw, &route, &Method::POST, &conn, &headers).await {
        Ok(c) => c,
        Err(r) => {
            // Drained in the background (small and short), so the refusal is immediate
            // and holds no request slot, yet a small body leaves the connection reusable.
            tokio::spawn(drain(body));
            return r;
        }
    };
    let ctype = header_str(&headers, "content-type").unwrap_or("");
    if !ctype.to_ascii_lowercase().starts_with("application/json") {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::INVALID_REQUEST,
            "Content-Type must be application/json",
        );
    }
    if !accepts(&headers, &["application/json", "text/event-stream"]) {
        return json_error(
            StatusCode::NOT_ACCEPTABLE,
            codes::INVALID_REQUEST,
            "Accept must list application/json and text/event-stream",
        );
    }
    let bytes = match read_body(&gw, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let msg = match parse_message(&bytes, &gw.limits) {
        Ok(m) => m,
        Err(e) => return decode_error_response(e),
    };
    crate::audit::record_request(None, &msg);
    if crate::stateless::is_stateless(&headers, &msg) {
        return crate::stateless::handle(gw, route, caller, headers, msg).await;
    }
    if msg.method() == "initialize" {
        if headers.contains_key(SESSION_HEADER) {
            return json_error(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                "initialize must not carry a session id",
            );
        }
        if msg.kind() != Kind::Request {
            return json_error(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                "initialize must be a request",
            );
        }
        return initialize(gw, route, caller, msg).await;
    }
    let sess = match open_session(&gw, &route, &caller, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    crate::audit::record_request(Some(&sess.audit_tag()), &msg);
    sess.touch();
    match msg.kind() {
        Kind::Request => handle_request(gw, sess, &caller, msg).await,
        Kind::Notification => {
            client_notification(&sess, msg);
            accepted()
        }
        Kind::Response | Kind::Error => client_response(&gw, &sess, msg),
    }
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// A rate-limit refusal: 429 with `Retry-After` and a JSON-RPC error body
/// (503 when the limiter's state is unavailable and the control fails closed).
fn limited(id: &palisade_wire::Id, l: crate::controls::Limited) -> Response {
    use crate::controls::Limited;
    match l {
        Limited::Rate { level, retry_after } => {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let msg = Message::error(
                Some(id.clone()),
                codes::RATE_LIMITED,
                &format!("rate limit exceeded ({level}); retry after {secs} s"),
                Some(serde_json::json!({ "retryAfterSeconds": secs, "limit": level })),
            );
            let mut r = json_message(StatusCode::TOO_MANY_REQUESTS, &msg);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Limited::Unavailable => state_unavailable(),
    }
}

/// The shared state cannot answer and the control fails closed: retry later.
pub fn state_unavailable() -> Response {
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::OVERLOADED,
        "security state unavailable; retry later",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

fn session_not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, codes::UPSTREAM_UNAVAILABLE, "session not found")
}

/// Opens and checks the session of a non-initialize request.
async fn open_session(
    gw: &Arc<Gateway>,
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Arc<LiveSession>, Response> {
    let principal = &caller.principal;
    let Some(token) = header_str(headers, SESSION_HEADER) else {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            "missing Mcp-Session-Id header",
        ));
    };
    let record = match gw.sealer.open(token, principal, route.key(), SystemTime::now()) {
        Ok(r) => r,
        Err(SessionError::WrongPrincipal) => {
            crate::auth::audit_session_mismatch(route, caller);
            return Err(session_not_found());
        }
        Err(e) => {
            tracing::info!(reason = %e, "session refused");
            return Err(session_not_found());
        }
    };
    match gw.controls.is_revoked(&record.sid).await {
        Ok(false) => {}
        Ok(true) => {
            tracing::info!(reason = %SessionError::Revoked, session = %digest(&record.sid), "session refused");
            return Err(session_not_found());
        }
        Err(_) => return Err(state_unavailable()),
    }
    check_version_header(gw, headers, &record)?;
    let live = match gw.session(&record.sid) {
        Some(s) => s,
        None => match rebuild(gw, route, caller, &record) {
            Some(s) => s,
            None => return Err(session_not_found()),
        },
    };
    if &live.principal != principal {
        crate::auth::audit_session_mismatch(route, caller);
        return Err(session_not_found());
    }
    // The client may have refreshed its token: exchanges use the latest one.
    live.set_identity(caller.identity.as_ref());
    Ok(live)
}

fn check_version_header(gw: &Gateway, headers: &HeaderMap, record: &SessionRecord) -> Result<(), Response> {
    let bad = |m: &str| Err(json_error(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, m));
    let Some(v) = header_str(headers, VERSION_HEADER) else {
        // Without the header the spec says to assume 2025-03-26, which is off unless configured.
        if gw.supports(ProtocolVersion::V2025_03_26) && record.version == "2025-03-26" {
            return Ok(());
        }
        return bad("missing MCP-Protocol-Version header");
    };
    let strict = gw.config.server.require_negotiated_version;
    match ProtocolVersion::parse(v) {
        Some(p) if gw.supports(p) && p.as_str() == record.version => Ok(()),
        Some(p) if gw.supports(p) && !strict && !p.is_stateless() => Ok(()),
        Some(p) if gw.supports(p) => bad("MCP-Protocol-Version does not match the negotiated version"),
        _ => bad("unsupported MCP-Protocol-Version"),
    }
}

/// Recreates live state from a valid token this process does not hold
/// (another replica issued it, or this process restarted with the same keys).
fn rebuild(gw: &Arc<Gateway>, route: &Route, caller: &Caller, record: &SessionRecord) -> Option<Arc<LiveSession>> {
    let principal = &caller.principal;
    let version = ProtocolVersion::parse(&record.version)?;
    let subject = crate::session::subject(caller.identity.as_ref());
    let mut links = HashMap::new();
    for name in gw.route_upstreams(route) {
        let h = gw.upstreams.get(&name)?;
        let link = match &h.kind {
            UpstreamKind::Stdio { shared: Some(conn), .. } => Link::Stdio {
                conn: conn.clone(),
                dedicated: false,
            },
            UpstreamKind::Stdio { shared: None, .. } => return None,
            UpstreamKind::Http { client, .. } => Link::Http {
                up: client.clone(),
                session: Some(record.upstreams.get(&name)?.clone()),
                version: record.version.clone(),
                subject: subject.clone(),
            },
        };
        links.insert(name, link);
    }
    let sess = Arc::new(
        LiveSession::new(
            record.sid.clone(),
            route.clone(),
            version,
            principal.clone(),
            ClientCaps::from_bits(record.caps),
            record.exp,
            links,
            gw.config.server.sse_replay_events,
            false,
        )
        .with_identity(subject),
    );
    register(gw, &sess).ok()?;
    tracing::info!(session = %digest(&sess.sid), "session restored from token");
    Some(sess)
}

fn register(gw: &Arc<Gateway>, sess: &Arc<LiveSession>) -> Result<(), ()> {
    {
        let mut m = gw.sessions.lock().map_err(|_| ())?;
        if m.len() >= gw.config.sessions.max_sessions {
            return Err(());
        }
        m.insert(sess.sid.clone(), sess.clone());
    }
    spawn_listeners(gw, sess);
    Ok(())
}

/// Opens the upstream GET streams of HTTP links and relays what they carry.
fn spawn_listeners(gw: &Arc<Gateway>, sess: &Arc<LiveSession>) {
    for (name, link) in &sess.links {
        let Link::Http {
            up,
            session,
            version,
            subject,
        } = link
        else {
            continue;
        };
        let subject = subject.clone();
        let (gw2, sess2, name, link, up, session, version) = (
            Arc::downgrade(gw),
            Arc::downgrade(sess),
            name.clone(),
            link.clone(),
            up.clone(),
            session.clone(),
            version.clone(),
        );
        let task = tokio::spawn(async move {
            use futures_util::StreamExt;
            let token = crate::session::subject_token(&subject);
            let mut stream = match up.listen(session.as_deref(), Some(&version), token.as_deref()).await {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(upstream = %name, error = %e, "upstream GET stream unavailable");
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                let (Some(gw), Some(sess)) = (gw2.upgrade(), sess2.upgrade()) else {
                    return;
                };
                match item {
                    Ok(m) => relay_from_server(&gw, &name, &link, m, None, Some(&sess)),
                    Err(e) => {
                        tracing::debug!(upstream = %name, error = %e, "upstream GET stream ended");
                        return;
                    }
                }
            }
        });
        if let Ok(mut t) = sess.tasks.lock() {
            t.push(task.abort_handle());
        }
    }
}

#[derive(serde::Deserialize)]
struct InitParams {
    #[serde(rename = "protocolVersion")]
    protocol_version: String,
    #[serde(default)]
    capabilities: Value,
    #[serde(rename = "clientInfo", default)]
    client_info: Value,
}

async fn initialize(gw: Arc<Gateway>, route: Route, caller: Caller, msg: Message) -> Response {
    let principal = caller.principal.clone();
    let Some(client_id) = msg.id.clone() else {
        return json_error(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, "initialize without id");
    };
    let fail =
        |code: i64, m: &str| json_message(StatusCode::OK, &Message::error(Some(client_id.clone()), code, m, None));
    let Some(params) = msg.params_as::<InitParams>() else {
        return fail(
            codes::INVALID_PARAMS,
            "initialize needs protocolVersion, capabilities and clientInfo",
        );
    };
    if gw.session_count() >= gw.config.sessions.max_sessions {
        let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, codes::OVERLOADED, "too many sessions");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }
    let requested = ProtocolVersion::parse(&params.protocol_version);
    let version = match requested {
        Some(v) if gw.supports(v) && !v.is_stateless() => v,
        _ => gw.latest_stateful(),
    };
    let caps = ClientCaps::from_json(Some(&params.capabilities));
    let Ok(sid) = gw.sealer.new_sid() else {
        return fail(codes::INTERNAL_ERROR, "cannot create session");
    };
    // The client's own parameters, at the negotiated version, for upstreams that see this client alone.
    let mut client_params = Map::new();
    client_params.insert("protocolVersion".into(), Value::from(version.as_str()));
    client_params.insert("capabilities".into(), params.capabilities.clone());
    client_params.insert("clientInfo".into(), params.client_info.clone());
    let client_params = to_raw(&Value::Object(client_params));

    let subject = crate::session::subject(caller.identity.as_ref());
    let mut links = HashMap::new();
    let mut results: Vec<(String, Value)> = Vec::new();
    let mut client_version = version;
    let mut names = gw.route_upstreams(&route);
    if let Some(engine) = &gw.controls.policy {
        // Upstreams the caller may not open a session with are left out (refused on a single route).
        let who = crate::controls::Who::of_caller(&caller);
        names.retain(|n| {
            let d = crate::controls::decide(
                engine,
                &who,
                route.key(),
                palisade_policy::Action::Initialize,
                palisade_policy::Resource::Server { server: n },
                None,
            );
            crate::controls::audit_decision(&who, palisade_policy::Action::Initialize, n, &d);
            d.allowed
        });
        if names.is_empty() {
            gw.controls.metrics.denied.inc();
            return fail(codes::FORBIDDEN, "not authorized to use this endpoint");
        }
    }
    if let Err(l) = gw
        .controls
        .check_rates(&crate::controls::principal_key(&principal), None, None, None)
        .await
    {
        return limited(&client_id, l);
    }
    for name in &names {
        let Some(h) = gw.upstreams.get(name).cloned() else {
            continue;
        };
        match connect(&gw, &h.kind, name, &sid, &client_params, version, &subject).await {
            Ok((link, mut result)) => {
                if let Some(o) = result.as_object_mut() {
                    gw.integrity.filter_instructions(name, o).await;
                }
                if let (Route::Single(_), Link::Http { version: v, .. }) = (&route, &link) {
                    match ProtocolVersion::parse(v) {
                        Some(p) if gw.supports(p) && !p.is_stateless() => client_version = p,
                        _ => {
                            close_links(&HashMap::from([(name.clone(), link)])).await;
                            return fail(
                                codes::UPSTREAM_UNAVAILABLE,
                                "upstream chose an unsupported protocol version",
                            );
                        }
                    }
                }
                links.insert(name.clone(), link);
                results.push((name.clone(), result));
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "upstream initialize failed");
                if matches!(route, Route::Single(_)) {
                    return fail(codes::UPSTREAM_UNAVAILABLE, &format!("upstream unavailable: {e}"));
                }
            }
        }
    }
    if links.is_empty() {
        return fail(codes::UPSTREAM_UNAVAILABLE, "no upstream available");
    }
    let now = unix(SystemTime::now());
    let exp = now + gw.config.sessions.max_lifetime_s;
    let sess = Arc::new(
        LiveSession::new(
            sid,
            route.clone(),
            client_version,
            principal.clone(),
            caps,
            exp,
            links,
            gw.config.server.sse_replay_events,
            false,
        )
        .with_identity(subject),
    );
    let token = match gw.sealer.seal(&sess.record(now), &principal) {
        Ok(t) => t,
        Err(e) => {
            close_links(&sess.links).await;
            return fail(codes::INTERNAL_ERROR, &format!("cannot seal session: {e}"));
        }
    };
    if register(&gw, &sess).is_err() {
        close_links(&sess.links).await;
        return fail(codes::OVERLOADED, "too many sessions");
    }
    let result = match &route {
        Route::Single(_) => {
            let mut r = results.pop().map(|(_, v)| v).unwrap_or_default();
            if let Some(o) = r.as_object_mut() {
                o.insert("protocolVersion".into(), Value::from(client_version.as_str()));
            }
            r
        }
        Route::Aggregate => merge_results(&results, Some(client_version)),
    };
    let _ = sess.tag.set(digest(&token));
    tracing::Span::current().record("session", sess.audit_tag().as_str());
    tracing::info!(target: "palisade::audit", event = "session.open", route = route.key(), version = %client_version, upstreams = sess.links.len(), "session opened");
    let mut resp = json_message(StatusCode::OK, &Message::response(client_id, to_raw(&result)));
    if let Ok(v) = HeaderValue::from_str(&token) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

/// Connects a new session to one upstream; returns the link and its InitializeResult.
async fn connect(
    gw: &Arc<Gateway>,
    kind: &UpstreamKind,
    name: &str,
    sid: &str,
    client_params: &RawValue,
    version: ProtocolVersion,
    subject: &Subject,
) -> Result<(Link, Value), String> {
    match kind {
        UpstreamKind::Stdio { shared: Some(conn), .. } => {
            let ready = conn
                .wait_ready(Duration::from_secs(15))
                .await
                .map_err(|e| e.to_string())?;
            let v = serde_json::from_str(ready.result.get()).map_err(|e| e.to_string())?;
            Ok((
                Link::Stdio {
                    conn: conn.clone(),
                    dedicated: false,
                },
                v,
            ))
        }
        UpstreamKind::Stdio { shared: None, spec } => {
            let spec = StdioSpec {
                init_params: client_params.to_owned(),
                ..spec.clone()
            };
            let (conn, events) = StdioConnection::start(spec);
            crate::gateway::spawn_stdio_dispatcher(
                Arc::downgrade(gw),
                name.to_owned(),
                conn.clone(),
                events,
                Some(sid.to_owned()),
            );
            match conn.wait_ready(Duration::from_secs(30)).await {
                Ok(ready) => {
                    let v = serde_json::from_str(ready.result.get()).map_err(|e| e.to_string())?;
                    Ok((Link::Stdio { conn, dedicated: true }, v))
                }
                Err(e) => {
                    conn.shutdown().await;
                    Err(e.to_string())
                }
            }
        }
        UpstreamKind::Http { client, .. } => init_http(gw, client, client_params.to_owned(), version, subject).await,
    }
}

async fn close_links(links: &HashMap<String, Link>) {
    for link in links.values() {
        close_link(link).await;
    }
}

/// Merges InitializeResults of several upstreams for the aggregated endpoint.
pub fn merge_results(results: &[(String, Value)], version: Option<ProtocolVersion>) -> Value {
    let mut caps = Map::new();
    let mut instructions = Vec::new();
    for (name, r) in results {
        if let Some(c) = r.get("capabilities").and_then(Value::as_object) {
            for (k, v) in c {
                if k == "experimental" {
                    continue;
                }
                let entry = caps.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if let (Some(dst), Some(src)) = (entry.as_object_mut(), v.as_object()) {
                    for (fk, fv) in src {
                        if fv == &Value::Bool(true) || !dst.contains_key(fk) {
                            dst.insert(fk.clone(), fv.clone());
                        }
                    }
                }
            }
        }
        if let Some(i) = r.get("instructions").and_then(Value::as_str) {
            instructions.push(format!("[{name}] {i}"));
        }
    }
    // The aggregated endpoint answers ping and list methods itself.
    caps.entry("tools").or_insert_with(|| Value::Object(Map::new()));
    let mut out = Map::new();
    if let Some(v) = version {
        out.insert("protocolVersion".into(), Value::from(v.as_str()));
    }
    out.insert("capabilities".into(), Value::Object(caps));
    out.insert(
        "serverInfo".into(),
        serde_json::json!({ "name": "palisade", "version": env!("CARGO_PKG_VERSION") }),
    );
    if !instructions.is_empty() {
        out.insert("instructions".into(), Value::from(instructions.join("\n")));
    }
    Value::Object(out)
}

/// Serves a request within a session: plan, spawn, answer with JSON or SSE.
pub async fn handle_request(gw: Arc<Gateway>, sess: Arc<LiveSession>, caller: &Caller, mut msg: Message) -> Response {
    let Some(client_id) = msg.id.clone() else {
        return json_error(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, "request without id");
    };
    let mut confirm: Option<crate::calls::Confirm> = None;
    let principal = crate::controls::principal_key(&caller.principal);
    match tool_target(&gw, &sess, &msg) {
        Err(()) => {
            // Fail closed: a name the gateway cannot read unambiguously (duplicate keys,
            // not a string) is never forwarded, or step-up could check one tool while
            // the upstream runs another.
            return json_message(
                StatusCode::OK,
                &Message::error(
                    Some(client_id),
                    codes::INVALID_PARAMS,
                    "tools/call needs params.name as a single string (no duplicate keys)",
                    None,
                ),
            );
        }
        Ok(target) => {
            let upstream = match (&target, &sess.route) {
                (Some((u, _)), _) => Some(u.as_str()),
                (None, Route::Single(u)) => Some(u.as_str()),
                (None, Route::Aggregate) => None,
            };
            let tool = target.as_ref().map(|(_, t)| t.as_str());
            let stages = &gw.controls.metrics.stages;
            let started = std::time::Instant::now();
            let rated = gw
                .controls
                .check_rates(&principal, Some(&sess.sid), upstream, tool)
                .await;
            stages.observe(crate::controls::Stage::RateLimit, started);
            if let Err(l) = rated {
                return limited(&client_id, l);
            }
            if let Some((upstream, tool)) = &target {
                let started = std::time::Instant::now();
                let checked = crate::calls::check_call(&gw, &sess, caller, upstream, tool, &mut msg).await;
                stages.observe(crate::controls::Stage::CallChecks, started);
                match checked {
                    Ok(c) => confirm = c,
                    Err(r) => return r,
                }
            }
        }
    }
    let stream = sess.new_stream();
    let key = client_id.as_str().to_owned();
    let duplicate = sess.requests.lock().map(|m| m.contains_key(&key)).unwrap_or(true);
    if duplicate {
        stream.finish(&Message::error(
            Some(client_id),
            codes::INVALID_REQUEST,
            "a request with this id is already in flight",
            None,
        ));
        return respond_from_stream(&gw, &sess, stream, None).await;
    }
    let params = msg.params.clone();
    record_subscription(&sess, &msg);
    let plan = plan(&gw, &sess, msg);
    let busy = match &plan {
        Plan::Forward { .. } | Plan::FanOut { .. } => match gw.controls.acquire(&principal) {
            Some(b) => Some(b),
            None => {
                stream.finish(&Message::error(
                    Some(client_id),
                    codes::OVERLOADED,
                    "too many calls in flight for this user; retry later",
                    None,
                ));
                return respond_from_stream(&gw, &sess, stream, None).await;
            }
        },
        _ => None,
    };
    match plan {
        Plan::Forward { upstream, msg } => {
            if let Ok(mut m) = sess.requests.lock() {
                m.insert(
                    key.clone(),
                    ClientRequest {
                        gw_id: 0,
                        upstream: upstream.clone(),
                        stream: stream.clone(),
                        task: None,
                    },
                );
            }
            let (gw2, sess2, stream2) = (gw.clone(), sess.clone(), stream.clone());
            let task = tokio::spawn(crate::trace::carry(
                async move {
                    let _busy = busy;
                    if let Some(c) = confirm
                        && !crate::calls::confirmed(&gw2, &sess2, &stream2, &c).await
                    {
                        return;
                    }
                    forward(gw2, sess2, upstream, msg, stream2).await;
                }
                .in_current_span(),
            ));
            // The forward task records its upstream id in the in-flight map; keep the handle for cancellation.
            if let Ok(mut m) = sess.requests.lock()
                && let Some(r) = m.get_mut(&key)
            {
                r.task = Some(task.abort_handle());
            }
        }
        Plan::FanOut { method, key } => {
            let fan = fan_out(gw.clone(), sess.clone(), client_id, method, key, params, stream.clone());
            tokio::spawn(crate::trace::carry(
                async move {
                    let _busy = busy;
                    fan.await;
                }
                .in_current_span(),
            ));
        }
        Plan::Local(result) => {
            stream.finish(&Message::response(client_id, result));
        }
        Plan::Refuse(code, m) => {
            stream.finish(&Message::error(Some(client_id), code, &m, None));
        }
    }
    let guard = if sess.stateless {
        Some(StreamGuard::cancel_on_drop(&sess, &key))
    } else {
        None
    };
    respond_from_stream(&gw, &sess, stream, guard).await
}

/// Tracks `resources/subscribe` so updates from a shared process reach only subscribers.
fn record_subscription(sess: &LiveSession, msg: &Message) {
    let (subscribe, unsubscribe) = (
        msg.method() == "resources/subscribe",
        msg.method() == "resources/unsubscribe",
    );
    if !(subscribe || unsubscribe) {
        return;
    }
    let Some(uri) = msg
        .params_as::<Map<String, Value>>()
        .and_then(|p| p.get("uri")?.as_str().map(str::to_owned))
    else {
        return;
    };
    if let Ok(mut s) = sess.subscriptions.lock() {
        if subscribe {
            if s.len() < 1024 {
                s.insert(uri);
            }
        } else {
            s.remove(&uri);
        }
    }
}

#[derive(serde::Deserialize)]
struct CancelParams<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: &'a RawValue,
}

/// Cancels a client request: stop waiting, tell the upstream, close its stream.
pub fn cancel_request(sess: &LiveSession, client_key: &str) {
    let Some(req) = sess.requests.lock().ok().and_then(|mut m| m.remove(client_key)) else {
        return;
    };
    if let Some(t) = &req.task {
        t.abort();
    }
    req.stream.close();
    // gw_id is 0 until the forward task has minted the upstream id (then nothing was sent).
    if let (true, Some(link)) = (req.gw_id != 0, sess.links.get(&req.upstream)) {
        answer_upstream(link, cancel_notice(req.gw_id));
    }
}

fn client_notification(sess: &Arc<LiveSession>, msg: Message) {
    match msg.method() {
        "notifications/initialized" => {}
        "notifications/cancelled" => {
            if let Some(p) = msg.params_as::<CancelParams>() {
                let key = p.request_id.get().to_owned();
                cancel_request(sess, &key);
            }
        }
        m if m.starts_with("notifications/") => {
            // roots/list_changed and the like concern every upstream of the session.
            for link in sess.links.values() {
                answer_upstream(link, msg.clone());
            }
        }
        m => {
            // A request method sent without an id would reach upstreams past every
            // per-request check (step-up, later policy): dropped.
            tracing::info!(method = %m, "client notification with a request method dropped");
        }
    }
}

fn client_response(gw: &Arc<Gateway>, sess: &Arc<LiveSession>, mut msg: Message) -> Response {
    let gw_id = msg.id.as_ref().and_then(|i| i.as_str().parse::<u64>().ok());
    let entry = gw_id.and_then(|k| {
        let mut m = gw.server_requests.lock().ok()?;
        // Only the session the request was sent to may answer it.
        match m.get(&k) {
            Some(r) if r.sid == sess.sid => m.remove(&k),
            _ => None,
        }
    });
    let Some(entry) = entry else {
        return json_error(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            "response to an unknown request",
        );
    };
    msg.id = Some(entry.original.clone());
    tracing::debug!(upstream = %entry.upstream, method = %entry.method, "client answered server request");
    match &entry.reply {
        crate::gateway::ServerReply::Upstream(link) => answer_upstream(link, msg),
        crate::gateway::ServerReply::Gateway(tx) => {
            let _ = tx.try_send(msg);
        }
    }
    accepted()
}

async fn get(gw: Arc<Gateway>, route: Route, conn: Conn, headers: HeaderMap) -> Response {
    // Endpoint names are public (Protected Resource Metadata lists them); checking the
    // route first keeps unknown paths out of authentication and its audit events.
    if !route_exists(&gw, &route) {
        return json_error(StatusCode::NOT_FOUND, codes::INVALID_REQUEST, "no such MCP endpoint");
    }
    let caller = match authenticate(&gw, &route, &Method::GET, &conn, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if header_str(&headers, VERSION_HEADER)
        .and_then(ProtocolVersion::parse)
        .is_some_and(ProtocolVersion::is_stateless)
    {
        return method_not_allowed(Method::GET).await;
    }
    if !accepts(&headers, &["text/event-stream"]) {
        return json_error(
            StatusCode::NOT_ACCEPTABLE,
            codes::INVALID_REQUEST,
            "Accept must list text/event-stream",
        );
    }
    let sess = match open_session(&gw, &route, &caller, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    sess.touch();
    // Resumption: `<stream>.<seq>` names the stream and the last event seen.
    if let Some(last) = header_str(&headers, "last-event-id") {
        let parsed = last
            .split_once('.')
            .and_then(|(s, q)| Some((s.parse::<u64>().ok()?, q.parse::<u64>().ok()?)));
        if let Some((stream_id, seq)) = parsed {
            if stream_id != 0 {
                let Some(stream) = sess.stream(stream_id) else {
                    return json_error(StatusCode::NOT_FOUND, codes::INVALID_REQUEST, "unknown stream");
                };
                return sse_response(&gw, &sess, stream, seq.saturating_add(1), false, None);
            }
            return attach_standalone(&gw, &sess, seq.saturating_add(1));
        }
    }
    let from = sess.standalone_cursor.load(Ordering::Acquire);
    attach_standalone(&gw, &sess, from)
}

/// The session's one standalone GET stream, from sequence `from`; 409 if taken.
fn attach_standalone(gw: &Arc<Gateway>, sess: &Arc<LiveSession>, from: u64) -> Response {
    if sess.standalone_attached.swap(true, Ordering::AcqRel) {
        return json_error(
            StatusCode::CONFLICT,
            codes::INVALID_REQUEST,
            "a GET stream is already open for this session",
        );
    }
    let guard = StreamGuard::standalone(sess);
    sse_response(gw, sess, sess.standalone.clone(), from, true, Some(guard))
}

async fn delete(gw: Arc<Gateway>, route: Route, conn: Conn, headers: HeaderMap) -> Response {
    // Endpoint names are public (Protected Resource Metadata lists them); checking the
    // route first keeps unknown paths out of authentication and its audit events.
    if !route_exists(&gw, &route) {
        return json_error(StatusCode::NOT_FOUND, codes::INVALID_REQUEST, "no such MCP endpoint");
    }
    let caller = match authenticate(&gw, &route, &Method::DELETE, &conn, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if header_str(&headers, VERSION_HEADER)
        .and_then(ProtocolVersion::parse)
        .is_some_and(ProtocolVersion::is_stateless)
    {
        return method_not_allowed(Method::DELETE).await;
    }
    let sess = match open_session(&gw, &route, &caller, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    tracing::Span::current().record("session", sess.audit_tag().as_str());
    gw.end_session(&sess).await;
    tracing::info!(target: "palisade::audit", event = "session.close", reason = "client", "session deleted by client");
    StatusCode::NO_CONTENT.into_response()
}

/// The upstream and upstream-side tool name of a `tools/call`, for step-up checks.
/// `Err` when the name cannot be read unambiguously: serde refuses duplicate fields
/// (also when one is spelled with escapes), where upstream parsers keep the last one.
fn tool_target(gw: &Gateway, sess: &LiveSession, msg: &Message) -> Result<Option<(String, String)>, ()> {
    if msg.method() != "tools/call" {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    let name = msg.params_as::<Named>().ok_or(())?.name;
    Ok(match &sess.route {
        Route::Single(n) => Some((n.clone(), name)),
        Route::Aggregate => resolve_name(gw, &name),
    })
}
