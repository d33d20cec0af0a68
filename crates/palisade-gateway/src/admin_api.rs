//! The admin API (L5) on the admin listener: sessions, blocked principals,
//! quarantine, the kill switch and audit queries.
//!
//! Every call needs a bearer token accepted by `[auth]` for the `/admin`
//! resource, with the admin scope and (by default) an MFA claim; every
//! action, allowed or refused, is audited. Without `[auth]` the API is off:
//! an unauthenticated switch that stops all traffic is not a feature.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::{StatusCode, header};
use palisade_auth::{Endpoint, Identity};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::gateway::Gateway;

/// Factors that count as a second factor in `amr` (RFC 8176).
const MFA_AMR: [&str; 6] = ["mfa", "otp", "hwk", "swk", "sms", "fpt"];

const ADMIN_PATH: &str = "/admin";

/// The authenticated admin, for audit events.
#[derive(Clone)]
struct AdminCaller(Arc<Identity>);

fn error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": msg }).to_string(),
    )
        .into_response()
}

fn ok_json(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn has_mfa(id: &Identity) -> bool {
    id.amr.iter().any(|m| MFA_AMR.contains(&m.as_str()))
        || id
            .acr
            .as_deref()
            .is_some_and(|a| a.to_ascii_lowercase().contains("mfa"))
}

/// Authenticates and authorizes every admin call.
async fn guard(State(gw): State<Arc<Gateway>>, mut req: Request, next: Next) -> Response {
    let Some(auth) = &gw.auth else {
        tracing::warn!(target: "palisade::audit", event = "admin.denied", path = %req.uri().path(), reason = "no_auth_configured", "admin call refused");
        return error(StatusCode::FORBIDDEN, "the admin API needs [auth] to be configured");
    };
    let admin = gw.config.admin.as_ref();
    let scope = admin.map_or_else(|| "palisade:admin".to_owned(), |a| a.api_scope.clone());
    let scopes = [scope];
    let ep = Endpoint {
        path: ADMIN_PATH,
        scopes: &scopes,
        require_dpop: false,
    };
    let path = req.uri().path().to_owned();
    let areq = palisade_auth::Request {
        method: req.method().as_str(),
        path: ADMIN_PATH,
        query: None,
        headers: req.headers(),
    };
    let id = match auth
        .authenticate(&areq, &ep, palisade_session::unix(SystemTime::now()))
        .await
    {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(target: "palisade::audit", event = "admin.denied", path = %path, reason = e.reason.as_str(), "admin call refused");
            let status = e.reason.status();
            return error(status, e.description);
        }
    };
    if admin.is_none_or(|a| a.require_mfa) && !has_mfa(&id) {
        tracing::warn!(target: "palisade::audit", event = "admin.denied", path = %path, reason = "mfa_required", issuer = id.principal.issuer(), subject = id.principal.subject(), "admin call refused: no MFA claim");
        return error(
            StatusCode::FORBIDDEN,
            "the admin API requires a token with an MFA claim (amr)",
        );
    }
    req.extensions_mut().insert(AdminCaller(id));
    next.run(req).await
}

fn audit_action(who: &AdminCaller, action: &str, target: &str, outcome: &str) {
    tracing::warn!(
        target: "palisade::audit",
        event = "admin.action",
        action,
        target,
        outcome,
        issuer = who.0.principal.issuer(),
        subject = who.0.principal.subject(),
        "admin action"
    );
}

/// Reads a JSON body (64 KiB at most); a refusal is audited under `action`.
async fn body<T: for<'de> Deserialize<'de>>(who: &AdminCaller, action: &str, req: Request) -> Result<T, Response> {
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        audit_action(who, action, "", "invalid");
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"));
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        audit_action(who, action, "", "invalid");
        error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"))
    })
}

/// Handlers take the admin the guard authenticated; without one (a route
/// outside the guard) the call is refused.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AdminCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AdminCaller>()
            .cloned()
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unauthenticated"))
    }
}

async fn list_sessions(State(gw): State<Arc<Gateway>>, who: AdminCaller) -> Response {
    let now = palisade_session::unix(SystemTime::now());
    let list: Vec<Value> = gw
        .sessions
        .lock()
        .map(|m| {
            m.values()
                .map(|s| {
                    json!({
                        "session": s.audit_tag(),
                        "principal": {"iss": s.principal.issuer(), "sub": s.principal.subject()},
                        "route": s.route.key(),
                        "version": s.version.as_str(),
                        "expires_in_s": s.exp.saturating_sub(now),
                        "idle_s": now.saturating_sub(s.last_seen.load(std::sync::atomic::Ordering::Relaxed)),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    audit_action(&who, "sessions.list", "", "done");
    ok_json(json!({ "sessions": list }))
}

async fn revoke_session(State(gw): State<Arc<Gateway>>, who: AdminCaller, Path(d): Path<String>) -> Response {
    if gw.revoke_tagged(&d, "admin").await == 0 {
        audit_action(&who, "sessions.revoke", &d, "not_found");
        return error(
            StatusCode::NOT_FOUND,
            "no live session with this digest on this replica",
        );
    }
    audit_action(&who, "sessions.revoke", &d, "done");
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalBody {
    iss: String,
    sub: String,
    #[serde(default)]
    for_s: Option<u64>,
}

async fn block(State(gw): State<Arc<Gateway>>, who: AdminCaller, req: Request) -> Response {
    let p: PrincipalBody = match body(&who, "principals.block", req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let secs = p.for_s.unwrap_or(3600);
    if p.sub.is_empty() || !(1..=31_536_000).contains(&secs) {
        audit_action(&who, "principals.block", &p.sub, "invalid");
        return error(StatusCode::BAD_REQUEST, "sub must be set and for_s 1 to 31536000");
    }
    crate::containment::block(
        &gw,
        &crate::containment::principal_key(&p.iss, &p.sub),
        std::time::Duration::from_secs(secs),
    )
    .await;
    audit_action(&who, "principals.block", &format!("{} {}", p.iss, p.sub), "done");
    StatusCode::NO_CONTENT.into_response()
}

async fn unblock(State(gw): State<Arc<Gateway>>, who: AdminCaller, req: Request) -> Response {
    let p: PrincipalBody = match body(&who, "principals.unblock", req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let target = format!("{} {}", p.iss, p.sub);
    if crate::containment::unblock(&gw, &crate::containment::principal_key(&p.iss, &p.sub)).await {
        audit_action(&who, "principals.unblock", &target, "done");
        StatusCode::NO_CONTENT.into_response()
    } else {
        audit_action(&who, "principals.unblock", &target, "not_found");
        error(StatusCode::NOT_FOUND, "not blocked")
    }
}

async fn blocked(State(gw): State<Arc<Gateway>>, who: AdminCaller) -> Response {
    let list: Vec<Value> = gw
        .containment
        .blocks()
        .into_iter()
        .map(|(k, left)| {
            let (iss, sub) = k.split_once('\u{0}').unwrap_or(("", &k));
            json!({"iss": iss, "sub": sub, "seconds_left": left})
        })
        .collect();
    audit_action(&who, "principals.list", "", "done");
    ok_json(json!({ "blocked": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineBody {
    server: String,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn quarantine(State(gw): State<Arc<Gateway>>, who: AdminCaller, req: Request) -> Response {
    let q: QuarantineBody = match body(&who, "quarantine", req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !gw.upstreams.contains_key(&q.server) {
        audit_action(&who, "quarantine", &q.server, "not_found");
        return error(StatusCode::NOT_FOUND, "no such server");
    }
    let target = q
        .tool
        .as_ref()
        .map_or(q.server.clone(), |t| format!("{}/{t}", q.server));
    let by = format!("admin:{}", who.0.principal.subject());
    let reason = q.reason.as_deref().unwrap_or("admin API");
    match gw.integrity.quarantine(&q.server, q.tool.as_deref(), &by, reason).await {
        Ok(()) => {
            audit_action(&who, "quarantine", &target, "done");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            audit_action(&who, "quarantine", &target, "failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    engaged: bool,
}

async fn kill_state(State(gw): State<Arc<Gateway>>, who: AdminCaller) -> Response {
    audit_action(&who, "killswitch.get", "", "done");
    ok_json(json!({ "engaged": gw.containment.killed() }))
}

async fn kill_set(State(gw): State<Arc<Gateway>>, who: AdminCaller, req: Request) -> Response {
    let k: KillBody = match body(&who, "killswitch.set", req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    crate::containment::set_kill(&gw, k.engaged).await;
    audit_action(
        &who,
        if k.engaged {
            "killswitch.engage"
        } else {
            "killswitch.lift"
        },
        "all MCP traffic",
        "done",
    );
    ok_json(json!({ "engaged": k.engaged }))
}

/// `GET /admin/audit?principal=…&server=…&tool=…&decision=…&category=…&event=…&session=…&since=…&until=…&limit=…`
async fn audit_query(State(gw): State<Arc<Gateway>>, who: AdminCaller, Query(q): Query<AuditParams>) -> Response {
    let Some(audit) = &gw.controls.audit else {
        return error(StatusCode::NOT_FOUND, "the audit chain is off");
    };
    let dir = audit.log.dir().to_path_buf();
    let filter = palisade_audit::index::Filter {
        since: q.since,
        until: q.until,
        principal: q.principal,
        server: q.server,
        tool: q.tool,
        decision: q.decision,
        category: q.category,
        event: q.event,
        session: q.session,
        request_id: None,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
        newest_first: true,
    };
    audit_action(&who, "audit.query", "", "done");
    let found = tokio::task::spawn_blocking(move || {
        let mut ix = palisade_audit::index::Index::open(&dir)?;
        ix.catch_up()?;
        ix.query(&filter)
    })
    .await;
    match found {
        Ok(Ok(lines)) => {
            let mut body = lines.join("\n");
            body.push('\n');
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "query failed"),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    since: Option<String>,
    until: Option<String>,
    principal: Option<String>,
    server: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    category: Option<String>,
    event: Option<String>,
    session: Option<String>,
    limit: Option<u64>,
}

/// The `/admin` routes, guarded.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/admin/sessions", get(list_sessions))
        .route("/admin/sessions/{digest}", delete(revoke_session))
        .route("/admin/principals/blocked", get(blocked))
        .route("/admin/principals/block", post(block))
        .route("/admin/principals/unblock", post(unblock))
        .route("/admin/quarantine", post(quarantine))
        .route("/admin/killswitch", get(kill_state).post(kill_set))
        .route("/admin/audit", get(audit_query))
        .layer(axum::middleware::from_fn_with_state(gw.clone(), guard))
        .with_state(gw)
}
