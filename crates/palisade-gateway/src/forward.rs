//! Serving one client request: choose the upstream, rewrite ids, relay the
//! answer onto the request's stream. On the aggregated endpoint, list methods
//! fan out to every upstream and names are prefixed (`<server>__<tool>`) or
//! aliased; a collision removes the colliding tools rather than shadowing one.

use palisade_export::Attr;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use palisade_upstream::UpstreamError;
use palisade_upstream::http::Reply;
use palisade_wire::{Id, Kind, Message, codes};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::gateway::{
    Gateway, Inflight, ProgressRoute, call_link, empty_object, relay_from_server, replace_field, to_raw, upstream_error,
};
use crate::session::{Link, LiveSession, Route};
use crate::stream::StreamBuf;

/// Separator between server and tool names on the aggregated endpoint.
pub const SEP: &str = "__";

/// What to do with a client request.
#[derive(Debug)]
pub enum Plan {
    /// Send to one upstream (the message may have been rewritten).
    Forward { upstream: String, msg: Message },
    /// Merge a list from every upstream.
    FanOut { method: &'static str, key: &'static str },
    /// Answer locally with this result.
    Local(Box<RawValue>),
    /// Refuse with a JSON-RPC error.
    Refuse(i64, String),
}

#[derive(serde::Deserialize)]
struct NamedParams {
    name: Option<String>,
    uri: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<RefParam>,
}

#[derive(serde::Deserialize)]
struct RefParam {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    uri: Option<String>,
}

/// Decides where a request goes.
pub fn plan(gw: &Gateway, sess: &LiveSession, msg: Message) -> Plan {
    if let Route::Single(n) = &sess.route {
        return Plan::Forward {
            upstream: n.clone(),
            msg,
        };
    }
    let method = msg.method().to_owned();
    match method.as_str() {
        "ping" => Plan::Local(empty_object()),
        "tools/list" => Plan::FanOut {
            method: "tools/list",
            key: "tools",
        },
        "prompts/list" => Plan::FanOut {
            method: "prompts/list",
            key: "prompts",
        },
        "resources/list" => Plan::FanOut {
            method: "resources/list",
            key: "resources",
        },
        "resources/templates/list" => Plan::FanOut {
            method: "resources/templates/list",
            key: "resourceTemplates",
        },
        "tools/call" | "prompts/get" => {
            let Some(name) = msg.params_as::<NamedParams>().and_then(|p| p.name) else {
                return Plan::Refuse(codes::INVALID_PARAMS, "params.name is required".into());
            };
            match resolve_name(gw, &name) {
                Some((up, original)) => {
                    let name_raw = to_raw(&Value::String(original));
                    match replace_field(msg.params.as_deref(), "name", &name_raw) {
                        Some(params) => Plan::Forward {
                            upstream: up,
                            msg: Message {
                                params: Some(params),
                                ..msg
                            },
                        },
                        None => Plan::Refuse(codes::INVALID_PARAMS, "invalid params".into()),
                    }
                }
                None => Plan::Refuse(codes::INVALID_PARAMS, format!("unknown name {name:?}")),
            }
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let Some(uri) = msg.params_as::<NamedParams>().and_then(|p| p.uri) else {
                return Plan::Refuse(codes::INVALID_PARAMS, "params.uri is required".into());
            };
            match resource_upstream(sess, &uri) {
                Some(up) => Plan::Forward { upstream: up, msg },
                None => Plan::Refuse(
                    codes::INVALID_PARAMS,
                    format!("unknown resource {uri:?}: list resources first"),
                ),
            }
        }
        "completion/complete" => {
            let Some(r) = msg.params_as::<NamedParams>().and_then(|p| p.reference) else {
                return Plan::Refuse(codes::INVALID_PARAMS, "params.ref is required".into());
            };
            match (r.kind.as_str(), r.name, r.uri) {
                ("ref/prompt", Some(name), _) => match resolve_name(gw, &name) {
                    Some((up, original)) => {
                        let mut reference = Map::new();
                        reference.insert("type".into(), Value::from("ref/prompt"));
                        reference.insert("name".into(), Value::from(original));
                        match replace_field(msg.params.as_deref(), "ref", &to_raw(&Value::Object(reference))) {
                            Some(params) => Plan::Forward {
                                upstream: up,
                                msg: Message {
                                    params: Some(params),
                                    ..msg
                                },
                            },
                            None => Plan::Refuse(codes::INVALID_PARAMS, "invalid params".into()),
                        }
                    }
                    None => Plan::Refuse(codes::INVALID_PARAMS, format!("unknown prompt {name:?}")),
                },
                ("ref/resource", _, Some(uri)) => match resource_upstream(sess, &uri) {
                    Some(up) => Plan::Forward { upstream: up, msg },
                    None => Plan::Refuse(codes::INVALID_PARAMS, format!("unknown resource {uri:?}")),
                },
                _ => Plan::Refuse(codes::INVALID_PARAMS, "unsupported completion reference".into()),
            }
        }
        "logging/setLevel" => Plan::FanOut {
            method: "logging/setLevel",
            key: "",
        },
        _ => Plan::Refuse(
            codes::METHOD_NOT_FOUND,
            format!("method {method:?} is not available on the aggregated endpoint"),
        ),
    }
}

/// Exposed aggregated name → (upstream, upstream's own name).
pub fn resolve_name(gw: &Gateway, exposed: &str) -> Option<(String, String)> {
    for (name, up) in gw.config.aggregate_upstreams() {
        if let Some((orig, _)) = up.aliases.iter().find(|(_, to)| to.as_str() == exposed) {
            return Some((name.clone(), orig.clone()));
        }
    }
    let (server, original) = exposed.split_once(SEP)?;
    let up = gw.upstreams.get(server)?;
    (up.config.aggregate && !original.is_empty()).then(|| (server.to_owned(), original.to_owned()))
}

/// The exposed aggregated name of an upstream's tool or prompt.
pub fn exposed_name(gw: &Gateway, upstream: &str, original: &str) -> String {
    gw.upstreams
        .get(upstream)
        .and_then(|u| u.config.aliases.get(original).cloned())
        .unwrap_or_else(|| format!("{upstream}{SEP}{original}"))
}

fn resource_upstream(sess: &LiveSession, uri: &str) -> Option<String> {
    let routes = sess.resource_routes.lock().ok()?;
    if let Some(up) = routes.get(uri) {
        return Some(up.clone());
    }
    // Templates are recorded by their literal prefix (`file:///{path}` → `file:///`).
    routes
        .iter()
        .filter(|(k, _)| k.starts_with("template:"))
        .filter_map(|(k, up)| {
            let prefix = k.trim_start_matches("template:");
            (!prefix.is_empty() && uri.starts_with(prefix)).then_some((prefix.len(), up))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, up)| up.clone())
}

/// Removes the bookkeeping of one forwarded request, even if its task is aborted.
struct InflightGuard {
    gw: Arc<Gateway>,
    sess: Arc<LiveSession>,
    gw_id: u64,
    client_id: String,
    token: Option<String>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.gw.inflight.lock() {
            m.remove(&self.gw_id);
        }
        if let Some(t) = &self.token
            && let Ok(mut m) = self.gw.progress.lock()
        {
            m.remove(t);
        }
        if let Ok(mut m) = self.sess.requests.lock()
            && m.get(&self.client_id).is_some_and(|r| r.gw_id == self.gw_id)
        {
            m.remove(&self.client_id);
        }
    }
}

#[derive(serde::Deserialize)]
struct MetaParams<'a> {
    #[serde(borrow, rename = "_meta")]
    meta: Option<MetaToken<'a>>,
}

#[derive(serde::Deserialize)]
struct MetaToken<'a> {
    #[serde(borrow, rename = "progressToken")]
    token: Option<&'a RawValue>,
}

/// Rewrites `params._meta.progressToken` to a gateway token; returns the original.
fn rewrite_progress(msg: &mut Message, new_token: &str) -> Option<Box<RawValue>> {
    let original = msg
        .params_as::<MetaParams>()
        .and_then(|p| p.meta)
        .and_then(|m| m.token)
        .map(|t| t.to_owned())?;
    let mut params: Map<String, Value> = serde_json::from_str(msg.params.as_deref()?.get()).ok()?;
    let meta = params.get_mut("_meta")?.as_object_mut()?;
    meta.insert("progressToken".into(), Value::String(new_token.to_owned()));
    msg.params = serde_json::value::to_raw_value(&params).ok();
    Some(original)
}

/// Serves one request from `sess` on `upstream`, writing the answer to `stream`.
/// The client's id is restored on everything written.
pub async fn forward(
    gw: Arc<Gateway>,
    sess: Arc<LiveSession>,
    upstream: String,
    mut msg: Message,
    stream: Arc<StreamBuf>,
) {
    let Some(client_id) = msg.id.clone() else { return };
    let Some(handle) = gw.upstreams.get(&upstream).cloned() else {
        stream.finish(&error_message(&client_id, codes::INTERNAL_ERROR, "unknown upstream"));
        return;
    };
    let Some(link) = sess.links.get(&upstream).cloned() else {
        stream.finish(&error_message(
            &client_id,
            codes::INTERNAL_ERROR,
            "upstream not connected",
        ));
        return;
    };
    if let Err(refusal) = authorize_forward(&gw, &sess, &upstream, &msg) {
        stream.finish(&error_message(&client_id, codes::INVALID_PARAMS, &refusal));
        return;
    }
    let Ok(_permit) = handle.permits.clone().try_acquire_owned() else {
        stream.finish(&error_message(
            &client_id,
            codes::OVERLOADED,
            "upstream overloaded, retry later",
        ));
        return;
    };
    let gw_id = gw.next_id();
    if let Ok(mut m) = sess.requests.lock()
        && let Some(r) = m.get_mut(client_id.as_str())
    {
        r.gw_id = gw_id;
    }
    let gw_token = format!("palisade-{gw_id}");
    let original_token = rewrite_progress(&mut msg, &gw_token);
    if let Some(original) = &original_token
        && let Ok(mut m) = gw.progress.lock()
    {
        m.insert(
            format!("\"{gw_token}\""),
            ProgressRoute {
                original: original.clone(),
                stream: stream.clone(),
            },
        );
    }
    let inflight = Inflight {
        session: sess.clone(),
        upstream: upstream.clone(),
        stream: stream.clone(),
    };
    if let Ok(mut m) = gw.inflight.lock() {
        m.insert(gw_id, inflight.clone());
    }
    let _guard = InflightGuard {
        gw: gw.clone(),
        sess: sess.clone(),
        gw_id,
        client_id: client_id.as_str().to_owned(),
        token: original_token.as_ref().map(|_| format!("\"{gw_token}\"")),
    };
    let gw_msg_id = Id::number(gw_id);
    msg.id = Some(gw_msg_id.clone());
    let method = msg.method().to_owned();
    let called = (method == "tools/call")
        .then(|| msg.params_as::<NamedParams>().and_then(|p| p.name))
        .flatten();
    let record = CallRecord::start(&gw, &upstream, &msg);
    crate::trace::annotate(|| {
        let mut a = vec![("palisade.upstream", Attr::Str(upstream.clone()))];
        if let Some(t) = &called {
            a.push(("gen_ai.tool.name", Attr::Str(t.clone())));
        }
        a
    });
    let timeout = called
        .as_deref()
        .and_then(|t| handle.config.tool_timeouts_ms.get(t))
        .map_or_else(|| handle.timeout(), |ms| std::time::Duration::from_millis(*ms));
    // A first-page tools/list that comes back without nextCursor is the whole list.
    let listing = (method == "tools/list").then(|| (gw.integrity.listing_started(), !has_cursor(&msg)));
    let upstream_started = std::time::Instant::now();
    let up_span = crate::trace::upstream_call(&upstream, &method);
    let result = match &link {
        Link::Stdio { conn, .. } => conn.request(msg, timeout).await,
        Link::Http {
            up,
            session,
            version,
            subject,
        } => {
            let subject = crate::session::subject_token(subject);
            let traceparent = up_span.traceparent();
            match up
                .post(
                    &msg,
                    session.as_deref(),
                    Some(version),
                    traceparent.as_slice(),
                    timeout,
                    subject.as_deref(),
                )
                .await
            {
                Ok(answer) => match answer.reply {
                    Reply::Message(m) => Ok(m),
                    Reply::Accepted => Err(UpstreamError::Protocol("request answered with 202".into())),
                    Reply::Stream(mut s) => {
                        let pump = async {
                            while let Some(item) = s.next().await {
                                let m = item?;
                                match m.kind() {
                                    Kind::Response | Kind::Error if m.id.as_ref() == Some(&gw_msg_id) => return Ok(m),
                                    Kind::Response | Kind::Error => {}
                                    _ => relay_from_server(&gw, &upstream, &link, m, Some(&inflight), None),
                                }
                            }
                            Err(UpstreamError::Protocol(
                                "upstream stream ended without a response".into(),
                            ))
                        };
                        tokio::time::timeout(timeout, pump)
                            .await
                            .unwrap_or(Err(UpstreamError::Timeout))
                    }
                },
                Err(e) => Err(e),
            }
        }
    };
    gw.controls
        .metrics
        .stages
        .observe(crate::controls::Stage::Upstream, upstream_started);
    up_span.finish(result.as_ref().err().map(ToString::to_string));
    match result {
        Ok(mut resp) => {
            if let Some((started, first_page)) = listing {
                filter_list(&gw, &upstream, &mut resp, first_page.then_some(started)).await;
            }
            if let Some(key) = list_key(&method) {
                policy_filter_response(&gw, &sess, &upstream, key, &mut resp);
            }
            check_answer(&gw, &upstream, called.as_deref(), &client_id, &mut resp);
            let inspect_started = std::time::Instant::now();
            if resp.result.is_some()
                && !crate::inspect::on_answer(
                    &gw,
                    &sess,
                    &upstream,
                    &method,
                    called.as_deref(),
                    &client_id,
                    &mut resp,
                    &stream,
                )
                .await
            {
                return;
            }
            if resp.result.is_some() {
                gw.controls
                    .metrics
                    .stages
                    .observe(crate::controls::Stage::Inspect, inspect_started);
            }
            resp.id = Some(client_id);
            if sess.stateless {
                ensure_result_type(&mut resp);
            }
            record.finish(&gw, &upstream, &method, called.as_deref(), Ok(&resp));
            stream.finish(&resp);
        }
        Err(e) => {
            tracing::warn!(upstream = %upstream, method = %method, error = %e, "upstream request failed");
            if e == UpstreamError::SessionExpired {
                if sess.stateless {
                    // The gateway's own upstream session is gone: open a new one next time.
                    if let crate::gateway::UpstreamKind::Http { stateless, .. } = &handle.kind {
                        *stateless.lock().await = None;
                    }
                } else {
                    let gw2 = gw.clone();
                    let s2 = sess.clone();
                    tokio::spawn(async move { gw2.end_session(&s2).await });
                }
            }
            if let UpstreamError::Timeout = e {
                // The upstream stops working on it (R3: per-tool timeout).
                crate::gateway::answer_upstream(&link, cancel_notice(gw_id));
            }
            record.finish(&gw, &upstream, &method, called.as_deref(), Err(&e));
            stream.finish(&upstream_error(Some(client_id), &e));
        }
    }
}

/// What the audit trail keeps of one forwarded request (L1, L3): a keyed
/// digest of the parameters always; the arguments and result only as the
/// upstream's data class allows (`[audit.payloads]`).
struct CallRecord {
    started: std::time::Instant,
    params_digest: Option<String>,
    arguments: Option<Value>,
}

impl CallRecord {
    fn start(gw: &Gateway, upstream: &str, msg: &Message) -> CallRecord {
        let audit = gw.controls.audit.as_deref();
        let params = msg.params.as_deref().map(RawValue::get);
        let arguments = match (audit, params) {
            (Some(a), Some(p)) if msg.method() == "tools/call" && a.logs_payload(upstream, false) => {
                serde_json::from_str::<Value>(p)
                    .ok()
                    .and_then(|v| v.get("arguments").cloned())
                    .and_then(|args| a.payload(upstream, false, &args))
            }
            _ => None,
        };
        CallRecord {
            started: std::time::Instant::now(),
            params_digest: audit.zip(params).map(|(a, p)| a.digest(p.as_bytes())),
            arguments,
        }
    }

    /// One `tool.call` (or `mcp.request`) event, before the answer is released.
    fn finish(
        &self,
        gw: &Gateway,
        upstream: &str,
        method: &str,
        tool: Option<&str>,
        answer: Result<&Message, &UpstreamError>,
    ) {
        let Some(audit) = gw.controls.audit.as_deref() else {
            return;
        };
        let outcome = match answer {
            Ok(m) if m.error.is_some() => "error",
            Ok(m) if m.result.as_deref().is_some_and(is_tool_error) => "tool_error",
            Ok(_) => "ok",
            Err(UpstreamError::Timeout) => "timeout",
            Err(_) => "upstream_error",
        };
        let result = match answer {
            Ok(m) if audit.logs_payload(upstream, true) => m
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
                .and_then(|v| audit.payload(upstream, true, &v)),
            _ => None,
        };
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "palisade::audit",
            event = if tool.is_some() { "tool.call" } else { "mcp.request" },
            upstream,
            tool,
            rpc_method = method,
            outcome,
            duration_ms,
            params_digest = self.params_digest.as_deref(),
            arguments_json = self.arguments.as_ref().map(tracing::field::display),
            result_json = result.as_ref().map(tracing::field::display),
            "request forwarded"
        );
    }
}

fn is_tool_error(r: &RawValue) -> bool {
    #[derive(serde::Deserialize)]
    struct Flag {
        #[serde(rename = "isError", default)]
        is_error: bool,
    }
    r.get().contains("isError") && serde_json::from_str::<Flag>(r.get()).is_ok_and(|f| f.is_error)
}

/// The result key of a list method.
fn list_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/list" => Some("tools"),
        "resources/list" => Some("resources"),
        "resources/templates/list" => Some("resourceTemplates"),
        "prompts/list" => Some("prompts"),
        _ => None,
    }
}

/// The Cedar decision for a request other than `tools/call` (checked before)
/// and the list methods (filtered after). `Err` carries the refusal, worded
/// like the answer for something that does not exist.
fn authorize_forward(gw: &Arc<Gateway>, sess: &LiveSession, upstream: &str, msg: &Message) -> Result<(), String> {
    use palisade_policy::{Action, Resource};
    let Some(engine) = &gw.controls.policy else {
        return Ok(());
    };
    let method = msg.method();
    let action = Action::from_method(method);
    if matches!(action, Action::CallTool) || list_key(method).is_some() {
        return Ok(());
    }
    let named = msg.params_as::<NamedParams>();
    let (resource, refusal) = match action {
        Action::ReadResource | Action::Subscribe | Action::Unsubscribe => {
            let uri = named.as_ref().and_then(|p| p.uri.clone()).unwrap_or_default();
            let m = format!("unknown resource {uri:?}");
            (ResourceRef::Uri(uri), m)
        }
        Action::GetPrompt => {
            let name = named.as_ref().and_then(|p| p.name.clone()).unwrap_or_default();
            let m = format!("unknown prompt {name:?}");
            (ResourceRef::Prompt(name), m)
        }
        Action::Complete => match named.as_ref().and_then(|p| p.reference.as_ref()) {
            Some(RefParam {
                kind, name: Some(n), ..
            }) if kind == "ref/prompt" => (ResourceRef::Prompt(n.clone()), format!("unknown prompt {n:?}")),
            Some(RefParam { uri: Some(u), .. }) => (ResourceRef::Uri(u.clone()), format!("unknown resource {u:?}")),
            _ => (ResourceRef::Server, "completion is not available".to_owned()),
        },
        _ => (ResourceRef::Server, format!("method {method:?} is not available")),
    };
    let resource = match &resource {
        ResourceRef::Uri(uri) => Resource::Resource { server: upstream, uri },
        ResourceRef::Prompt(prompt) => Resource::Prompt {
            server: upstream,
            prompt,
        },
        ResourceRef::Server => Resource::Server { server: upstream },
    };
    let who = crate::controls::Who::of(sess);
    let arguments = (action == Action::GetPrompt)
        .then(|| msg.params_as::<Map<String, Value>>())
        .flatten()
        .and_then(|mut p| p.remove("arguments"));
    let d = crate::controls::decide(engine, &who, sess.route.key(), action, resource, arguments.as_ref());
    crate::controls::audit_decision(&who, action, upstream, &d);
    if d.allowed && action == Action::Ping {
        // Connecting is never held to obligations (nothing is read or run).
        return Ok(());
    }
    if d.allowed {
        return crate::controls::obligations_met(&who, &d.obligations)
            .map_err(|why| format!("{method:?} on {upstream:?} {why}"));
    }
    gw.controls.metrics.denied.inc();
    gw.controls.signal(
        &crate::controls::principal_key(&sess.principal),
        crate::controls::Signal::Denied,
    );
    Err(refusal)
}

enum ResourceRef {
    Uri(String),
    Prompt(String),
    Server,
}

/// Keeps in a list answer only what the session's user may use.
fn policy_filter_response(gw: &Gateway, sess: &LiveSession, upstream: &str, key: &str, resp: &mut Message) {
    let Some(engine) = &gw.controls.policy else { return };
    let Some(mut result) = resp.result_as::<Map<String, Value>>() else {
        return;
    };
    if let Some(Value::Array(items)) = result.get_mut(key) {
        let who = crate::controls::Who::of(sess);
        crate::controls::filter_list_items(engine, &who, sess.route.key(), upstream, key, items);
    }
    if let Ok(raw) = serde_json::value::to_raw_value(&result) {
        resp.result = Some(raw);
    }
}

/// Quotas and output checks on an upstream's answer: the size cap (R3), and
/// a tool result's `structuredContent` against the pinned `outputSchema` (V2).
fn check_answer(gw: &Gateway, upstream: &str, tool: Option<&str>, client_id: &Id, resp: &mut Message) {
    let size = resp.result.as_ref().map_or(0, |r| r.get().len());
    let cap = gw.config.limits.max_response_bytes;
    if size > cap {
        tracing::warn!(upstream, size, cap, "upstream answer over the size cap refused");
        *resp = Message::error(
            resp.id.clone(),
            codes::UPSTREAM_UNAVAILABLE,
            &format!("the server's answer ({size} bytes) exceeds the gateway's limit of {cap} bytes"),
            None,
        );
        return;
    }
    let Some(tool) = tool else { return };
    let Some(info) = gw.integrity.tool_info(upstream, tool) else {
        return;
    };
    let (Ok(schemas), Some(result)) = (&info.schemas, resp.result_as::<Value>()) else {
        return;
    };
    if let Err(e) = schemas.check_result(&result) {
        gw.controls.metrics.invalid_results.inc();
        tracing::warn!(
            target: "palisade::audit",
            event = "call.invalid_result",
            upstream,
            tool,
            error = %e,
            "tool result refused by the pinned outputSchema"
        );
        *resp = crate::calls::tool_error(
            client_id,
            &format!("the server's result for tool {tool:?} does not match its declared outputSchema: {e}"),
        );
    }
}

/// Whether a request carries a (non-null) `params.cursor`.
fn has_cursor(msg: &Message) -> bool {
    msg.params_as::<Map<String, Value>>()
        .is_some_and(|p| p.get("cursor").is_some_and(|c| !c.is_null()))
}

/// The `nextCursor` of a list result: `Ok(None)` on the last page, `Err` if
/// it is neither absent, null nor a string.
/// Pages read per upstream for one list.
const MAX_PAGES: usize = 50;

/// One page of a list method from `link`: the result object, or the transport
/// error (`None`: the answer had no result object, e.g. the capability is absent).
async fn list_page(
    gw: &Gateway,
    link: &Link,
    method: &str,
    cursor: Option<&str>,
    timeout: std::time::Duration,
) -> Result<Map<String, Value>, Option<UpstreamError>> {
    let params = cursor.map(|c| to_raw(&serde_json::json!({ "cursor": c })));
    let msg = Message::request(Id::number(gw.next_id()), method, params);
    let (resp, _) = call_link(link, &msg, timeout).await.map_err(Some)?;
    resp.result_as::<Map<String, Value>>().ok_or(None)
}

fn next_cursor(result: &Map<String, Value>) -> Result<Option<String>, ()> {
    match result.get("nextCursor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(c)) => Ok(Some(c.clone())),
        Some(_) => Err(()),
    }
}

/// Pins, scans and filters a `tools/list` answer from `upstream` in place.
/// A result the gateway cannot read (not an object, nested deeper than the
/// JSON reader allows) becomes an error: a client's reader might see tools in
/// it. `first_page`: the listing ticket of a request without a cursor.
async fn filter_list(gw: &Gateway, upstream: &str, resp: &mut Message, first_page: Option<u64>) {
    if resp.result.is_none() {
        return;
    }
    let checked = match resp.result_as::<Map<String, Value>>() {
        Some(mut result) => {
            let checked = gw.integrity.filter_tools(upstream, &mut result).await;
            if let (true, Some(started), Ok(None)) = (checked, first_page, next_cursor(&result)) {
                gw.integrity.listed_all(upstream, started);
            }
            serde_json::value::to_raw_value(&result).ok()
        }
        None => None,
    };
    match checked {
        Some(raw) => resp.result = Some(raw),
        None => {
            tracing::warn!(upstream, "tools/list result could not be read; refused");
            *resp = Message::error(
                resp.id.clone(),
                codes::UPSTREAM_UNAVAILABLE,
                "the server's tool list could not be checked",
                None,
            );
        }
    }
}

/// Lists `upstream`'s tools through the session's link so that their pins
/// are checked (a call for a tool the gateway has not seen, or after
/// `notifications/tools/list_changed`). The answers go nowhere else.
pub async fn relist_tools(gw: &Gateway, sess: &LiveSession, upstream: &str) {
    let Some(link) = sess.links.get(upstream) else { return };
    let timeout = gw.upstream_timeout(upstream);
    let started = gw.integrity.listing_started();
    let mut cursor: Option<String> = None;
    for _page in 0..MAX_PAGES {
        let mut result = match list_page(gw, link, "tools/list", cursor.as_deref(), timeout).await {
            Ok(r) => r,
            Err(Some(e)) => {
                tracing::warn!(upstream, error = %e, "re-listing tools for a pin check failed");
                return;
            }
            Err(None) => return,
        };
        if !gw.integrity.filter_tools(upstream, &mut result).await {
            return;
        }
        match next_cursor(&result) {
            Ok(Some(c)) => cursor = Some(c),
            Ok(None) => {
                gw.integrity.listed_all(upstream, started);
                return;
            }
            Err(()) => return,
        }
    }
}

/// `notifications/cancelled` for a request the gateway sent upstream.
pub fn cancel_notice(gw_id: u64) -> Message {
    let params = serde_json::json!({ "requestId": gw_id, "reason": "cancelled by the client" });
    Message::notification("notifications/cancelled", serde_json::value::to_raw_value(&params).ok())
}

fn error_message(id: &Id, code: i64, message: &str) -> Message {
    Message::error(Some(id.clone()), code, message, None)
}

/// Adds `resultType: "complete"` for stateless clients when an older upstream omits it.
pub fn ensure_result_type(resp: &mut Message) {
    let Some(result) = resp.result.as_deref() else { return };
    let Ok(mut map) = serde_json::from_str::<Map<String, Value>>(result.get()) else {
        return;
    };
    if !map.contains_key("resultType") {
        map.insert("resultType".into(), Value::from("complete"));
        if let Ok(raw) = serde_json::value::to_raw_value(&map) {
            resp.result = Some(raw);
        }
    }
}

/// Fetches a list from every upstream of an aggregated session and merges it.
pub async fn fan_out(
    gw: Arc<Gateway>,
    sess: Arc<LiveSession>,
    client_id: Id,
    method: &'static str,
    key: &'static str,
    params: Option<Box<RawValue>>,
    stream: Arc<StreamBuf>,
) {
    let mut merged: Vec<Value> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut routes: Vec<(String, String)> = Vec::new();
    let mut upstreams: Vec<&String> = sess.links.keys().collect();
    upstreams.sort();
    for name in upstreams {
        let Some(link) = sess.links.get(name) else { continue };
        let timeout = gw.upstream_timeout(name);
        if key.is_empty() {
            // A setting broadcast to every upstream (logging/setLevel).
            let msg = Message::request(Id::number(gw.next_id()), method, params.clone());
            if let Err(e) = call_link(link, &msg, timeout).await {
                tracing::warn!(upstream = %name, error = %e, "fan-out failed");
            }
            continue;
        }
        let started = gw.integrity.listing_started();
        let mut checked_all = true;
        let mut cursor: Option<String> = None;
        for _page in 0..MAX_PAGES {
            let mut result = match list_page(&gw, link, method, cursor.as_deref(), timeout).await {
                Ok(r) => r,
                Err(Some(e)) => {
                    tracing::warn!(upstream = %name, method, error = %e, "upstream left out of aggregated list");
                    break;
                }
                Err(None) => {
                    tracing::debug!(upstream = %name, method, "upstream has no result for list (capability absent?)");
                    break;
                }
            };
            if key == "tools" {
                checked_all &= gw.integrity.filter_tools(name, &mut result).await;
            }
            if let (Some(engine), Some(Value::Array(items))) = (&gw.controls.policy, result.get_mut(key)) {
                let who = crate::controls::Who::of(&sess);
                crate::controls::filter_list_items(engine, &who, sess.route.key(), name, key, items);
            }
            if let Some(Value::Array(items)) = result.get(key) {
                for item in items {
                    let mut item = item.clone();
                    match key {
                        "tools" | "prompts" => {
                            let Some(orig) = item.get("name").and_then(Value::as_str).map(str::to_owned) else {
                                continue;
                            };
                            let exposed = exposed_name(&gw, name, &orig);
                            item["name"] = Value::String(exposed.clone());
                            *names.entry(exposed).or_insert(0) += 1;
                        }
                        "resources" => {
                            if let Some(uri) = item.get("uri").and_then(Value::as_str) {
                                routes.push((uri.to_owned(), name.clone()));
                            }
                        }
                        "resourceTemplates" => {
                            if let Some(t) = item.get("uriTemplate").and_then(Value::as_str) {
                                let prefix = t.split('{').next().unwrap_or("");
                                routes.push((format!("template:{prefix}"), name.clone()));
                            }
                        }
                        _ => {}
                    }
                    merged.push(item);
                }
            }
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_owned);
            if cursor.is_none() {
                if key == "tools" && checked_all && next_cursor(&result) == Ok(None) {
                    gw.integrity.listed_all(name, started);
                }
                break;
            }
        }
    }
    if !routes.is_empty()
        && let Ok(mut m) = sess.resource_routes.lock()
    {
        for (uri, up) in routes {
            m.entry(uri).or_insert(up);
        }
    }
    let collisions: Vec<String> = names.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k).collect();
    if !collisions.is_empty() {
        tracing::error!(
            ?collisions,
            method,
            "aggregated name collision: colliding entries withheld"
        );
        merged.retain(|item| {
            item.get("name")
                .and_then(Value::as_str)
                .is_none_or(|n| !collisions.iter().any(|c| c == n))
        });
    }
    let mut result = Map::new();
    if !key.is_empty() {
        result.insert(key.to_owned(), Value::Array(merged));
    }
    if sess.stateless && !key.is_empty() {
        result.insert("resultType".into(), Value::from("complete"));
        result.insert("ttlMs".into(), Value::from(0));
        result.insert("cacheScope".into(), Value::from("private"));
    }
    let resp = Message::response(client_id, to_raw(&Value::Object(result)));
    stream.finish(&resp);
}
