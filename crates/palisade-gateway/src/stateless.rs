//! The stateless revision (2026-07-28): no session, no `initialize`; the
//! version and client capabilities ride in every request's `_meta`, and the
//! `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers must mirror the
//! body (checked here, so policy keyed on headers can trust them).
//!
//! Upstreams that speak an older revision are reached through a session the
//! gateway opens for itself; server-to-client requests cannot be relayed to a
//! stateless client and are answered with an error (the input-required
//! round trip of 2026-07-28 is not translated yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, StatusCode};
use palisade_session::unix;

use crate::auth::Caller;
use palisade_wire::version::ProtocolVersion;
use palisade_wire::{Id, Kind, Message, codes};
use serde_json::{Map, Value};

use crate::gateway::{Gateway, UpstreamKind, gateway_init_params, init_http, to_raw};
use crate::handlers::{VERSION_HEADER, handle_request, json_message, merge_results};
use crate::hygiene::json_error;
use crate::session::{ClientCaps, Link, LiveSession, Route, Subject};

/// Error codes of 2026-07-28.
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNSUPPORTED_VERSION: i64 = -32022;

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";

/// Whether a POST follows the stateless revision.
pub fn is_stateless(headers: &HeaderMap, msg: &Message) -> bool {
    if msg.method() == "initialize" {
        return false;
    }
    let header_says = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(ProtocolVersion::parse)
        .is_some_and(ProtocolVersion::is_stateless);
    header_says || meta(msg).is_some_and(|m| m.contains_key(META_VERSION))
}

fn meta(msg: &Message) -> Option<Map<String, Value>> {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "_meta")]
        meta: Option<Map<String, Value>>,
    }
    msg.params_as::<P>().and_then(|p| p.meta)
}

fn mismatch(id: Option<Id>, what: &str) -> Response {
    json_message(
        StatusCode::BAD_REQUEST,
        &Message::error(id, HEADER_MISMATCH, &format!("Header mismatch: {what}"), None),
    )
}

/// Decodes a header value that may use the `=?base64?…?=` form.
pub fn decode_header_value(v: &str) -> Option<String> {
    if let Some(inner) = v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(inner).ok()?;
        return String::from_utf8(bytes).ok();
    }
    Some(v.to_owned())
}

/// Validates the mirrored headers and `_meta`; `Err` is the response to send.
fn validate(gw: &Gateway, headers: &HeaderMap, msg: &Message) -> Result<(), Response> {
    let id = msg.id.clone();
    let Some(meta) = meta(msg) else {
        return Err(json_message(
            StatusCode::BAD_REQUEST,
            &Message::error(
                id,
                codes::INVALID_PARAMS,
                "params._meta with the protocol version and client capabilities is required",
                None,
            ),
        ));
    };
    let (Some(version), Some(_caps)) = (meta.get(META_VERSION).and_then(Value::as_str), meta.get(META_CAPS)) else {
        return Err(json_message(
            StatusCode::BAD_REQUEST,
            &Message::error(
                id,
                codes::INVALID_PARAMS,
                "params._meta must carry protocolVersion and clientCapabilities",
                None,
            ),
        ));
    };
    let supported: Vec<&str> = gw.versions.iter().map(|v| v.as_str()).collect();
    match ProtocolVersion::parse(version) {
        Some(v) if v.is_stateless() && gw.supports(v) => {}
        _ => {
            let data = serde_json::json!({ "supported": supported, "requested": version });
            return Err(json_message(
                StatusCode::BAD_REQUEST,
                &Message::error(id, UNSUPPORTED_VERSION, "Unsupported protocol version", Some(data)),
            ));
        }
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header(VERSION_HEADER) {
        Some(h) if h == version => {}
        Some(h) => {
            return Err(mismatch(
                id,
                &format!("MCP-Protocol-Version {h:?} does not match _meta {version:?}"),
            ));
        }
        None => return Err(mismatch(id, "MCP-Protocol-Version header is required")),
    }
    if msg.kind() != Kind::Request {
        return Ok(());
    }
    match header("mcp-method") {
        Some(h) if h == msg.method() => {}
        Some(h) => {
            return Err(mismatch(
                id,
                &format!("Mcp-Method {h:?} does not match body {:?}", msg.method()),
            ));
        }
        None => return Err(mismatch(id, "Mcp-Method header is required")),
    }
    let body_name = match msg.method() {
        "tools/call" | "prompts/get" => Some(param_str(msg, "name")),
        "resources/read" => Some(param_str(msg, "uri")),
        _ => None,
    };
    if let Some(body_name) = body_name {
        let Some(body_name) = body_name else {
            return Err(json_message(
                StatusCode::BAD_REQUEST,
                &Message::error(id, codes::INVALID_PARAMS, "params.name or params.uri is required", None),
            ));
        };
        match header("mcp-name").map(decode_header_value) {
            Some(Some(h)) if h == body_name => {}
            Some(Some(h)) => {
                return Err(mismatch(
                    id,
                    &format!("Mcp-Name {h:?} does not match body {body_name:?}"),
                ));
            }
            Some(None) => return Err(mismatch(id, "Mcp-Name is not valid")),
            None => return Err(mismatch(id, "Mcp-Name header is required")),
        }
    }
    Ok(())
}

fn param_str(msg: &Message, key: &str) -> Option<String> {
    msg.params_as::<Map<String, Value>>()?
        .get(key)?
        .as_str()
        .map(str::to_owned)
}

/// Serves one stateless POST.
pub async fn handle(gw: Arc<Gateway>, route: Route, caller: Caller, headers: HeaderMap, msg: Message) -> Response {
    if let Err(r) = validate(&gw, &headers, &msg) {
        return r;
    }
    match msg.kind() {
        Kind::Notification => return StatusCode::ACCEPTED.into_response(),
        Kind::Response | Kind::Error => {
            return json_error(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                "clients must not send responses in this revision",
            );
        }
        Kind::Request => {}
    }
    if msg.method() == "server/discover" {
        return discover(&gw, &route, &caller, msg).await;
    }
    let subject = crate::session::subject(caller.identity.as_ref());
    let links = match stateless_links(&gw, &route, &subject).await {
        Ok(l) => l,
        Err(e) => {
            return json_message(
                StatusCode::OK,
                &Message::error(msg.id.clone(), codes::UPSTREAM_UNAVAILABLE, &e, None),
            );
        }
    };
    let Ok(sid) = gw.sealer.new_sid() else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL_ERROR,
            "cannot create request context",
        );
    };
    let sess = Arc::new(
        LiveSession::new(
            sid,
            route,
            ProtocolVersion::V2026_07_28,
            caller.principal.clone(),
            ClientCaps::default(),
            unix(SystemTime::now()) + 3600,
            links
                .into_iter()
                .map(|(n, (l, _))| (n, l.with_subject(&subject)))
                .collect(),
            gw.config.server.sse_replay_events,
            true,
        )
        .with_identity(subject),
    );
    handle_request(gw, sess, &caller, msg).await
}

/// The gateway's own upstream links for stateless clients, with each InitializeResult.
async fn stateless_links(
    gw: &Arc<Gateway>,
    route: &Route,
    subject: &Subject,
) -> Result<HashMap<String, (Link, Value)>, String> {
    let mut out = HashMap::new();
    for name in gw.route_upstreams(route) {
        let Some(h) = gw.upstreams.get(&name) else { continue };
        let entry = match &h.kind {
            UpstreamKind::Stdio { shared: Some(conn), .. } => {
                let ready = conn
                    .wait_ready(Duration::from_secs(15))
                    .await
                    .map_err(|e| e.to_string())?;
                let v: Value = serde_json::from_str(ready.result.get()).unwrap_or_default();
                (
                    Link::Stdio {
                        conn: conn.clone(),
                        dedicated: false,
                    },
                    v,
                )
            }
            UpstreamKind::Stdio { shared: None, .. } => {
                if matches!(route, Route::Single(_)) {
                    return Err(format!(
                        "{name} runs one process per session; stateless clients need mode = \"shared\""
                    ));
                }
                continue;
            }
            UpstreamKind::Http { client, stateless } => {
                // One upstream session serves every stateless client: it cannot carry a
                // per-user exchanged identity, so such upstreams need a session (fail closed).
                let exchange = matches!(
                    &h.config.transport,
                    palisade_config::Transport::Http(c)
                        if c.oauth.as_ref().is_some_and(|o| o.grant == palisade_config::OAuthGrant::TokenExchange)
                );
                if exchange {
                    if matches!(route, Route::Single(_)) {
                        return Err(format!(
                            "{name} acts for each user (token exchange); stateless clients need a session"
                        ));
                    }
                    continue;
                }
                let mut slot = stateless.lock().await;
                if let Some((link, v)) = slot.as_ref() {
                    (link.clone(), v.clone())
                } else {
                    let version = gw.latest_stateful();
                    // The shared link keeps no user; each request lends it its caller below.
                    let (link, v) = init_http(gw, client, gateway_init_params(version), version, subject).await?;
                    let link = link.with_subject(&crate::session::subject(None));
                    *slot = Some((link.clone(), v.clone()));
                    (link, v)
                }
            }
        };
        out.insert(name, entry);
    }
    if out.is_empty() {
        return Err("no upstream available".into());
    }
    Ok(out)
}

async fn discover(gw: &Arc<Gateway>, route: &Route, caller: &Caller, msg: Message) -> Response {
    let subject = crate::session::subject(caller.identity.as_ref());
    let links = match stateless_links(gw, route, &subject).await {
        Ok(l) => l,
        Err(e) => {
            return json_message(
                StatusCode::OK,
                &Message::error(msg.id.clone(), codes::UPSTREAM_UNAVAILABLE, &e, None),
            );
        }
    };
    let mut results: Vec<(String, Value)> = links.into_iter().map(|(n, (_, v))| (n, v)).collect();
    for (name, result) in &mut results {
        if let Some(o) = result.as_object_mut() {
            gw.integrity.filter_instructions(name, o).await;
        }
    }
    let merged = match route {
        Route::Single(_) => results.first().map(|(_, v)| v.clone()).unwrap_or_default(),
        Route::Aggregate => merge_results(&results, None),
    };
    let mut out = Map::new();
    out.insert("resultType".into(), Value::from("complete"));
    out.insert(
        "supportedVersions".into(),
        Value::from(gw.versions.iter().map(|v| v.as_str()).collect::<Vec<_>>()),
    );
    out.insert(
        "capabilities".into(),
        merged
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
    );
    if let Some(i) = merged.get("instructions") {
        out.insert("instructions".into(), i.clone());
    }
    let server_info = merged
        .get("serverInfo")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({ "name": "palisade", "version": env!("CARGO_PKG_VERSION") }));
    out.insert(
        "_meta".into(),
        serde_json::json!({ "io.modelcontextprotocol/serverInfo": server_info }),
    );
    out.insert("ttlMs".into(), Value::from(0));
    out.insert("cacheScope".into(), Value::from("private"));
    let Some(id) = msg.id else {
        return json_error(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, "request without id");
    };
    json_message(StatusCode::OK, &Message::response(id, to_raw(&Value::Object(out))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64_header_values() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(decode_header_value("=?base64?w6lsYW4=?=").as_deref(), Some("élan"));
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }
}
