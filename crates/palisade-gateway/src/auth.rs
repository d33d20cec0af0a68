//! Authentication on every MCP request (M2), Protected Resource Metadata (Z5) and
//! step-up challenges (Z4). The verified identity feeds the session binding (M4).

use std::sync::Arc;
use std::time::SystemTime;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use palisade_auth::{AuthError, Endpoint, Identity, Reason, Request};
use palisade_session::{Principal, unix};
use palisade_tls::PeerCertificate;
use palisade_wire::Message;

use crate::gateway::Gateway;
use crate::hygiene::json_error;
use crate::session::{LiveSession, Route};

/// Who is calling: the principal sessions are bound to, the verified token (absent
/// when authentication is off), and the verified client certificate of a mutual-TLS
/// connection (an attribute for policy, e.g. service-to-service callers).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub identity: Option<Arc<Identity>>,
    pub client_cert: Option<Arc<PeerCertificate>>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller {
            principal: Principal::anonymous(),
            identity: None,
            client_cert: None,
        }
    }
}

/// What the connection tells about a request: its URI and the client certificate.
pub type Conn = (Uri, Option<Extension<Arc<PeerCertificate>>>);

/// The URL path of a route.
pub fn route_path(route: &Route) -> String {
    match route {
        Route::Single(n) => format!("/mcp/{n}"),
        Route::Aggregate => "/mcp".to_owned(),
    }
}

const NO_SCOPES: &[String] = &[];

/// What an endpoint demands, from its upstream's `auth` table. The aggregated
/// endpoint demands what every upstream in it demands (fail closed: it reaches them all).
fn endpoint<'a>(gw: &'a Gateway, route: &Route, path: &'a str) -> Endpoint<'a> {
    match route {
        Route::Single(n) => {
            let cfg = gw.upstreams.get(n).map(|h| &h.config.auth);
            Endpoint {
                path,
                scopes: cfg.map_or(NO_SCOPES, |c| c.required_scopes.as_slice()),
                require_dpop: cfg.is_some_and(|c| c.require_dpop),
            }
        }
        Route::Aggregate => Endpoint {
            path,
            scopes: &gw.aggregate_auth.0,
            require_dpop: gw.aggregate_auth.1,
        },
    }
}

/// Scopes and DPoP requirement of the aggregated endpoint: the union over its upstreams.
pub fn aggregate_requirements(config: &palisade_config::Config) -> (Vec<String>, bool) {
    let mut scopes: Vec<String> = Vec::new();
    let mut dpop = false;
    for (_, up) in config.aggregate_upstreams() {
        dpop |= up.auth.require_dpop;
        for s in &up.auth.required_scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
    }
    (scopes, dpop)
}

/// Authenticates a request to an MCP endpoint, or answers with the challenge.
pub async fn authenticate(
    gw: &Gateway,
    route: &Route,
    method: &Method,
    conn: &Conn,
    headers: &HeaderMap,
) -> Result<Caller, Response> {
    if gw.containment.killed() {
        return Err(killed());
    }
    let (uri, cert) = conn;
    let client_cert = cert.as_ref().map(|Extension(c)| c.clone());
    let Some(auth) = &gw.auth else {
        return admit(
            gw,
            Caller {
                client_cert,
                ..Caller::anonymous()
            },
        );
    };
    let path = route_path(route);
    let ep = endpoint(gw, route, &path);
    let req = Request {
        method: method.as_str(),
        path: &path,
        query: uri.query(),
        headers,
    };
    let started = std::time::Instant::now();
    let verified = auth.authenticate(&req, &ep, unix(SystemTime::now())).await;
    gw.controls
        .metrics
        .stages
        .observe(crate::controls::Stage::Auth, started);
    match verified {
        Ok(identity) => {
            if let Err(e) = shared_replay_check(gw, &identity, headers).await {
                audit_failure(&e, &path, Some(&identity.principal));
                return Err(refusal(gw, &e, &ep));
            }
            admit(
                gw,
                Caller {
                    principal: identity.principal.clone(),
                    identity: Some(identity),
                    client_cert,
                },
            )
        }
        Err(e) => {
            audit_failure(&e, &path, None);
            Err(refusal(gw, &e, &ep))
        }
    }
}

/// With state shared between replicas, a DPoP proof's `jti` is also recorded
/// there: a proof replayed to another replica is refused too. (Each replica's
/// own cache already refused replays to itself.)
async fn shared_replay_check(gw: &Gateway, identity: &Identity, headers: &HeaderMap) -> Result<(), AuthError> {
    use base64::Engine;
    if gw.controls.state.name() == "local" {
        return Ok(());
    }
    let Some(jkt) = identity.jkt.as_deref() else {
        return Ok(());
    };
    // The proof was verified by the authenticator; only its jti is read here.
    let jti = headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .and_then(|p| p.split('.').nth(1))
        .and_then(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c.get("jti")?.as_str().map(str::to_owned))
        .ok_or_else(|| AuthError::new(Reason::DpopInvalid, "DPoP proof has no jti"))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(jkt.as_bytes());
    ctx.update(&[0]);
    ctx.update(jti.as_bytes());
    let key = format!(
        "dpop:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.finish())
    );
    let a = &gw.config.auth;
    let ttl = std::time::Duration::from_secs(a.dpop_max_age_s + 2 * a.leeway_s + 5);
    if gw.controls.first_use(&key, ttl).await {
        Ok(())
    } else {
        Err(AuthError::new(
            Reason::DpopReplay,
            "DPoP proof was already used (or the replay cache is unavailable)",
        ))
    }
}

/// The answer while the kill switch is engaged.
pub fn killed() -> Response {
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        palisade_wire::codes::OVERLOADED,
        "MCP traffic is suspended (kill switch engaged)",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

/// Records the authenticated caller on the request span and refuses a
/// blocked principal (L5) or traffic while the audit trail fails closed.
fn admit(gw: &Gateway, caller: Caller) -> Result<Caller, Response> {
    crate::audit::record_caller(&caller);
    let p = &caller.principal;
    let blocked = gw
        .containment
        .any_blocked()
        .then(|| {
            gw.containment
                .blocked_for(&crate::containment::principal_key(p.issuer(), p.subject()))
        })
        .flatten();
    if let Some(left) = blocked {
        tracing::warn!(target: "palisade::audit", event = "access.blocked", seconds_left = left, "request of a blocked principal refused");
        let mut r = json_error(
            StatusCode::FORBIDDEN,
            -32001,
            "access suspended by an incident response rule; contact an administrator",
        );
        if let Ok(v) = HeaderValue::from_str(&left.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Err(r);
    }
    if let Some(a) = &gw.controls.audit
        && a.log.fail_closed()
        && !a.log.healthy()
    {
        tracing::error!(
            event = "audit.unavailable",
            "request refused: the audit trail cannot be written"
        );
        let mut r = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            palisade_wire::codes::OVERLOADED,
            "audit trail unavailable; retry later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Err(r);
    }
    Ok(caller)
}

/// Logs a refusal as an audit event. Never the token: only the reason.
pub fn audit_failure(e: &AuthError, path: &str, principal: Option<&Principal>) {
    tracing::warn!(
        target: "palisade::audit",
        event = "auth.failure",
        reason = e.reason.as_str(),
        endpoint = path,
        issuer = principal.map(|p| p.issuer()),
        subject = principal.map(|p| p.subject()),
        "request refused: {}",
        e.description
    );
}

/// The HTTP answer to a refusal: status, `WWW-Authenticate`, and a JSON-RPC error body.
fn refusal(gw: &Gateway, e: &AuthError, ep: &Endpoint<'_>) -> Response {
    let Some(auth) = &gw.auth else {
        return json_error(StatusCode::UNAUTHORIZED, -32001, e.description);
    };
    let status = e.reason.status();
    let body = Message::error(None, -32001, e.description, None).to_bytes();
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], Body::from(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&auth.www_authenticate(e, ep)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Step-up for `tools/call` (Z4): the tool's `step_up` entry, on whichever endpoint
/// the tool is reached through.
pub fn check_tool(
    gw: &Gateway,
    sess: &LiveSession,
    caller: &Caller,
    upstream: &str,
    tool: &str,
) -> Result<(), Response> {
    let (Some(auth), Some(id)) = (&gw.auth, &caller.identity) else {
        return Ok(());
    };
    let Some(h) = gw.upstreams.get(upstream) else {
        return Ok(());
    };
    let Some(step) = h.config.auth.step_up.get(tool) else {
        return Ok(());
    };
    let path = route_path(&sess.route);
    let ep = endpoint(gw, &sess.route, &path);
    auth.check_step_up(id, &ep, step, unix(SystemTime::now())).map_err(|e| {
        audit_failure(&e, &path, Some(&caller.principal));
        refusal(gw, &e, &endpoint(gw, &sess.route, &path))
    })
}

/// A step-up required by a policy obligation (scopes, MFA).
pub fn check_step(
    gw: &Gateway,
    sess: &LiveSession,
    caller: &Caller,
    step: &palisade_config::StepUp,
) -> Result<(), Response> {
    let Some(auth) = &gw.auth else {
        // Fail closed: the policy asks for a stronger authentication than exists here.
        return Err(crate::hygiene::json_error(
            StatusCode::FORBIDDEN,
            palisade_wire::codes::FORBIDDEN,
            "this call requires step-up authentication, and authentication is off",
        ));
    };
    let path = route_path(&sess.route);
    let ep = endpoint(gw, &sess.route, &path);
    let Some(id) = &caller.identity else {
        // A policy asks for more than an anonymous caller can ever show.
        let e = AuthError::new(Reason::InsufficientAuthentication, "authentication is required");
        return Err(refusal(gw, &e, &ep));
    };
    auth.check_step_up(id, &ep, step, unix(SystemTime::now())).map_err(|e| {
        audit_failure(&e, &path, Some(&caller.principal));
        refusal(gw, &e, &endpoint(gw, &sess.route, &path))
    })
}

/// An audit event for a session presented by someone else (M4).
pub fn audit_session_mismatch(route: &Route, caller: &Caller) {
    let e = AuthError::new(Reason::SessionPrincipalMismatch, "session belongs to another user");
    audit_failure(&e, &route_path(route), Some(&caller.principal));
}

/// `GET /.well-known/oauth-protected-resource[/mcp[/{server}]]` (RFC 9728).
pub async fn metadata_root(State(gw): State<Arc<Gateway>>) -> Response {
    metadata(&gw, None)
}

pub async fn metadata_aggregate(State(gw): State<Arc<Gateway>>) -> Response {
    metadata(&gw, Some(Route::Aggregate))
}

pub async fn metadata_single(State(gw): State<Arc<Gateway>>, Path(server): Path<String>) -> Response {
    if !gw.upstreams.contains_key(&server) {
        return json_error(StatusCode::NOT_FOUND, -32600, "no such MCP endpoint");
    }
    metadata(&gw, Some(Route::Single(server)))
}

fn metadata(gw: &Gateway, route: Option<Route>) -> Response {
    let Some(auth) = &gw.auth else {
        return json_error(StatusCode::NOT_FOUND, -32600, "authentication is not enabled");
    };
    let path = route.as_ref().map(route_path).unwrap_or_default();
    let ep = match &route {
        Some(r) => endpoint(gw, r, &path),
        None => Endpoint {
            path: "",
            scopes: NO_SCOPES,
            require_dpop: false,
        },
    };
    let doc = auth.resource_metadata(&ep);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        Body::from(doc.to_string()),
    )
        .into_response()
}

/// `GET /dev-issuer/jwks.json` and its RFC 8414 metadata (development issuer only).
pub async fn dev_jwks(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.auth.as_ref().and_then(|a| a.dev_issuer()) {
        Some(d) => json_ok(d.jwks()),
        None => json_error(StatusCode::NOT_FOUND, -32600, "not found"),
    }
}

pub async fn dev_metadata(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.auth.as_ref().and_then(|a| a.dev_issuer()) {
        Some(d) => json_ok(d.metadata()),
        None => json_error(StatusCode::NOT_FOUND, -32600, "not found"),
    }
}

fn json_ok(v: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(v.to_string()),
    )
        .into_response()
}
