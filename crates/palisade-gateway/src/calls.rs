//! The checks of one `tools/call` before it goes upstream: step-up,
//! integrity (pins), Cedar authorization with its obligations, argument
//! validation against the pinned schema, and confirmation by the user.

use std::sync::Arc;

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use palisade_policy::{Action, Resource};
use palisade_wire::{Id, Message, codes};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::controls::{Signal, Who, audit_decision, decide, principal_key};
use crate::gateway::{Gateway, ServerReply, ServerRequest, to_raw};
use crate::handlers::json_message;
use crate::integrity::{CallCheck, ToolInfo};
use crate::session::LiveSession;
use crate::stream::StreamBuf;

/// A call that the user must confirm before it runs.
#[derive(Debug)]
pub struct Confirm {
    pub id: Id,
    pub upstream: String,
    pub tool: String,
    pub arguments: Option<Value>,
    /// Why the user is asked (a policy, a toxic flow, a content finding).
    pub reasons: Vec<String>,
    /// What was asked about: the call (`false`) or its result (`true`).
    pub for_result: bool,
}

#[derive(serde::Deserialize)]
struct CallParams {
    #[serde(default)]
    arguments: Option<Value>,
}

fn error(id: &Id, code: i64, m: &str) -> Response {
    json_message(StatusCode::OK, &Message::error(Some(id.clone()), code, m, None))
}

/// An MCP tool error: the call was understood and refused (the model may retry with other arguments).
pub fn tool_error(id: &Id, text: &str) -> Message {
    let result = serde_json::json!({
        "content": [{ "type": "text", "text": text }],
        "isError": true,
    });
    Message::response(id.clone(), to_raw(&result))
}

/// What a denied caller is told: the same as for a tool that does not exist.
fn unknown_tool(tool: &str) -> String {
    format!("tool {tool:?} is not available (not in the server's reviewed tool list)")
}

/// Runs every check of a `tools/call`; `Ok(Some(_))` when the user must confirm it.
pub async fn check_call(
    gw: &Arc<Gateway>,
    sess: &Arc<LiveSession>,
    caller: &Caller,
    upstream: &str,
    tool: &str,
    msg: &mut Message,
) -> Result<Option<Confirm>, Response> {
    let Some(id) = msg.id.clone() else {
        return Err(error(&Id::number(0), codes::INVALID_REQUEST, "request without id"));
    };
    let controls = &gw.controls;
    let principal = principal_key(&caller.principal);
    if let Err(r) = crate::auth::check_tool(gw, sess, caller, upstream, tool) {
        controls.signal(&principal, Signal::AuthFailure);
        return Err(r);
    }
    // Policies and the schema must judge the arguments the upstream will read.
    if !msg
        .params
        .as_deref()
        .is_some_and(|p| palisade_wire::has_unique_keys(p.get()))
    {
        return Err(error(
            &id,
            codes::INVALID_PARAMS,
            "tools/call params must be a JSON object without duplicate keys",
        ));
    }
    let arguments = msg
        .params_as::<CallParams>()
        .and_then(|p| p.arguments)
        .filter(|a| !a.is_null());
    let who = Who::of(sess);
    let decide_call = |engine: &palisade_policy::PolicyEngine, annotations: Option<&Value>| {
        decide(
            engine,
            &who,
            sess.route.key(),
            Action::CallTool,
            Resource::Tool {
                server: upstream,
                tool,
                annotations,
            },
            arguments.as_ref(),
        )
    };
    let info = match integrity(gw, sess, upstream, tool).await {
        Ok(info) => info,
        Err(m) => {
            controls.signal(&principal, Signal::Detection);
            // A caller the policy would not let near the tool learns nothing about it.
            if let Some(engine) = &controls.policy
                && !decide_call(engine, None).allowed
            {
                return Err(error(&id, codes::INVALID_PARAMS, &unknown_tool(tool)));
            }
            return Err(error(&id, codes::INVALID_PARAMS, &m));
        }
    };
    let mut needs_confirm = false;
    if let Some(engine) = &controls.policy {
        let d = decide_call(engine, info.as_ref().and_then(|i| i.annotations.as_ref()));
        audit_decision(&who, Action::CallTool, &format!("{upstream}/{tool}"), &d);
        if !d.allowed {
            controls.metrics.denied.inc();
            controls.signal(&principal, Signal::Denied);
            return Err(error(&id, codes::INVALID_PARAMS, &unknown_tool(tool)));
        }
        let o = &d.obligations;
        if !o.step_up_scopes.is_empty() || o.mfa {
            let step = palisade_config::StepUp {
                scopes: o.step_up_scopes.clone(),
                acr: Vec::new(),
                amr: if o.mfa { vec!["mfa".to_owned()] } else { Vec::new() },
                max_age_s: None,
            };
            if let Err(r) = crate::auth::check_step(gw, sess, caller, &step) {
                controls.signal(&principal, Signal::AuthFailure);
                return Err(r);
            }
        }
        needs_confirm = o.confirm;
    }
    if let Some(ToolInfo { schemas: Ok(s), .. }) = info.as_deref()
        && let Err(e) = s.check_arguments(arguments.as_ref())
    {
        controls.metrics.invalid_arguments.inc();
        controls.signal(&principal, Signal::Detection);
        tracing::info!(
            target: "palisade::audit",
            event = "call.invalid_arguments",
            upstream,
            tool,
            error = %e,
            "arguments refused by the pinned inputSchema"
        );
        let text = format!("invalid arguments for tool {tool:?}: {e}");
        return Err(json_message(StatusCode::OK, &tool_error(&id, &text)));
    }
    let mut reasons = Vec::new();
    if needs_confirm {
        reasons.push("a policy asks for confirmation of this tool".to_owned());
    }
    let mut arguments = arguments;
    if let Some(insp) = &controls.inspect {
        let labels = insp.labels_of(upstream, tool, info.as_ref().and_then(|i| i.annotations.as_ref()));
        let flow = sess.flow.lock().map(|f| *f).unwrap_or_default();
        match insp.check_flow(flow, labels) {
            Err(why) => {
                controls.signal(&principal, Signal::Detection);
                let text = format!("Palisade blocked this call to {tool:?}: {why}");
                return Err(json_message(StatusCode::OK, &tool_error(&id, &text)));
            }
            Ok(Some(why)) => reasons.push(why),
            Ok(None) => {}
        }
        if let Some(args) = arguments.as_mut() {
            let o = insp.inspect_arguments(upstream, tool, args);
            if let Some(why) = o.block {
                controls.signal(&principal, Signal::Detection);
                let text = format!(
                    "Palisade blocked this call to {tool:?}: its arguments carry {why}, which may not be sent to server {upstream:?}"
                );
                return Err(json_message(StatusCode::OK, &tool_error(&id, &text)));
            }
            if let Some(why) = o.confirm {
                reasons.push(format!("the arguments carry {why}"));
            }
            if o.changed {
                set_arguments(msg, args);
            }
        }
    }
    Ok((!reasons.is_empty()).then(|| Confirm {
        id,
        upstream: upstream.to_owned(),
        tool: tool.to_owned(),
        arguments,
        reasons,
        for_result: false,
    }))
}

/// Replaces `params.arguments` (after redaction).
fn set_arguments(msg: &mut Message, args: &Value) {
    let Some(mut params) = msg.params_as::<Map<String, Value>>() else {
        return;
    };
    params.insert("arguments".into(), args.clone());
    msg.params = Some(to_raw(&Value::Object(params)));
}

/// Held, quarantined and never-listed tools are refused before anything is sent upstream.
async fn integrity(
    gw: &Gateway,
    sess: &LiveSession,
    upstream: &str,
    tool: &str,
) -> Result<Option<Arc<ToolInfo>>, String> {
    match gw.integrity.check_call(upstream, tool) {
        CallCheck::Allowed(info) => return Ok(info),
        CallCheck::Refused(m) => return Err(m),
        CallCheck::Unknown => {}
    }
    crate::forward::relist_tools(gw, sess, upstream).await;
    match gw.integrity.check_call(upstream, tool) {
        CallCheck::Allowed(info) => Ok(info),
        CallCheck::Refused(m) => Err(m),
        CallCheck::Unknown => Err(gw.integrity.refuse_unlisted(tool)),
    }
}

/// Largest argument text shown to the user in a confirmation.
const MAX_SHOWN: usize = 2000;

fn confirmation_text(c: &Confirm) -> String {
    let mut args = match &c.arguments {
        Some(a) => serde_json::to_string_pretty(a).unwrap_or_default(),
        None => "(none)".to_owned(),
    };
    if args.len() > MAX_SHOWN {
        let mut end = MAX_SHOWN;
        while !args.is_char_boundary(end) {
            end -= 1;
        }
        args.truncate(end);
        args.push_str("\n… (truncated)");
    }
    let why = if c.reasons.is_empty() {
        String::new()
    } else {
        format!("\nWhy you are asked: {}.", c.reasons.join("; "))
    };
    if c.for_result {
        return format!(
            "Palisade: the result of tool \"{}\" on server \"{}\" was flagged. Pass it to the assistant?{}",
            c.tool, c.upstream, why
        );
    }
    format!(
        "Palisade: allow the tool \"{}\" on server \"{}\" to run with these arguments?{}\n{}",
        c.tool, c.upstream, why, args
    )
}

/// Removes a pending confirmation however the wait ends.
struct Pending<'a> {
    gw: &'a Gateway,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.gw.server_requests.lock() {
            m.remove(&self.id);
        }
    }
}

fn record_confirmation(gw: &Gateway, c: &Confirm, text: &str, accepted: bool) {
    if accepted {
        gw.controls.metrics.confirmations_accepted.inc();
    } else {
        gw.controls.metrics.confirmations_refused.inc();
    }
    tracing::info!(
        target: "palisade::audit",
        event = if accepted { "call.confirmed" } else { "call.not_confirmed" },
        upstream = %c.upstream,
        tool = %c.tool,
        result = c.for_result,
        outcome = text,
        "confirmation"
    );
}

/// Asks the user through MCP elicitation; true on an explicit accept. On
/// anything else the request's stream is finished with a tool error.
/// Boxed as a `Send` future with one lifetime: nested in `forward`, an
/// `async fn` here trips the compiler's higher-ranked `Send` inference.
pub fn confirmed<'a>(
    gw: &'a Arc<Gateway>,
    sess: &'a Arc<LiveSession>,
    stream: &'a Arc<StreamBuf>,
    c: &'a Confirm,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
    Box::pin(async move {
        if sess.stateless || !sess.caps.elicitation {
            record_confirmation(gw, c, "client cannot elicit", false);
            let text = if c.for_result {
                format!(
                    "the result of tool {:?} needs the user's confirmation ({}), and this client does not support elicitation; it was withheld",
                    c.tool,
                    c.reasons.join("; ")
                )
            } else {
                format!(
                    "tool {:?} needs the user's confirmation, and this client does not support elicitation; the call was not made",
                    c.tool
                )
            };
            stream.finish(&tool_error(&c.id, &text));
            return false;
        }
        let gw_id = gw.next_id();
        let (tx, mut rx) = mpsc::channel::<Message>(1);
        let full = gw
            .server_requests
            .lock()
            .map(|mut m| {
                if m.len() >= crate::gateway::MAX_SERVER_REQUESTS {
                    return true;
                }
                m.insert(
                    gw_id,
                    ServerRequest {
                        sid: sess.sid.clone(),
                        upstream: String::new(),
                        reply: ServerReply::Gateway(tx),
                        original: Id::number(gw_id),
                        method: "elicitation/create".into(),
                    },
                );
                false
            })
            .unwrap_or(true);
        if full {
            record_confirmation(gw, c, "too many pending requests", false);
            stream.finish(&Message::error(
                Some(c.id.clone()),
                codes::OVERLOADED,
                "too many pending confirmations; retry later",
                None,
            ));
            return false;
        }
        let _pending = Pending { gw, id: gw_id };
        let mut schema_props = Map::new();
        schema_props.insert(
            "confirm".into(),
            serde_json::json!({ "type": "boolean", "title": "Allow this call", "default": false }),
        );
        let params = serde_json::json!({
            "message": confirmation_text(c),
            "requestedSchema": { "type": "object", "properties": schema_props, "required": ["confirm"] },
        });
        let request = Message::request(Id::number(gw_id), "elicitation/create", Some(to_raw(&params)));
        stream.push(Bytes::from(request.to_bytes()));
        let answer = tokio::time::timeout(gw.controls.confirm_timeout, rx.recv()).await;
        let outcome = match answer {
            Err(_) => Err("no answer in time"),
            Ok(None) => Err("the session ended"),
            Ok(Some(m)) => match m.result_as::<Value>() {
                None => Err("the client answered with an error"),
                Some(r) => {
                    let action = r.get("action").and_then(Value::as_str).unwrap_or("");
                    let yes = r.pointer("/content/confirm").and_then(Value::as_bool) == Some(true);
                    match (action, yes) {
                        ("accept", true) => Ok(()),
                        ("accept", false) => Err("the user did not tick the confirmation"),
                        ("decline", _) => Err("the user declined"),
                        ("cancel", _) => Err("the user cancelled"),
                        _ => Err("the client's answer could not be read"),
                    }
                }
            },
        };
        match outcome {
            Ok(()) => {
                record_confirmation(gw, c, "accepted", true);
                true
            }
            Err(why) => {
                record_confirmation(gw, c, why, false);
                let text = if c.for_result {
                    format!("the result of tool {:?} was withheld: {why}", c.tool)
                } else {
                    format!("tool {:?} was not run: {why}", c.tool)
                };
                stream.finish(&tool_error(&c.id, &text));
                false
            }
        }
    })
}
