//! A [`crate::Request`] as a Cedar request and its entities, built directly
//! with the typed API (no JSON round trip).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request as CedarRequest, RestrictedExpression,
    Schema,
};
use serde_json::Value;

use crate::args::{argument_tags, claim_tags};
use crate::{Request, Resource, ServerInfo};

pub(crate) struct Names {
    user: EntityTypeName,
    group: EntityTypeName,
    server: EntityTypeName,
    tool: EntityTypeName,
    resource: EntityTypeName,
    prompt: EntityTypeName,
    args: EntityTypeName,
    action: EntityTypeName,
}

fn names() -> Result<&'static Names, String> {
    static NAMES: OnceLock<Result<Names, String>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let t = |n: &str| EntityTypeName::from_str(n).map_err(|e| format!("entity type {n}: {e}"));
            Ok(Names {
                user: t("Palisade::User")?,
                group: t("Palisade::Group")?,
                server: t("Palisade::Server")?,
                tool: t("Palisade::Tool")?,
                resource: t("Palisade::Resource")?,
                prompt: t("Palisade::Prompt")?,
                args: t("Palisade::Args")?,
                action: t("Palisade::Action")?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn uid(t: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_string())
}

fn b(v: bool) -> RestrictedExpression {
    RestrictedExpression::new_bool(v)
}

fn set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().map(|i| RestrictedExpression::new_string(i.clone())))
}

fn attr(k: &str, v: RestrictedExpression) -> (String, RestrictedExpression) {
    (k.to_string(), v)
}

/// The MCP `ToolAnnotations` hints with the specification's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hints {
    pub(crate) read_only: bool,
    pub(crate) destructive: bool,
    pub(crate) idempotent: bool,
    pub(crate) open_world: bool,
}

pub(crate) fn hints(annotations: Option<&Value>) -> Hints {
    let flag = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_bool);
    let read_only = flag("readOnlyHint").unwrap_or(false);
    Hints {
        read_only,
        // destructiveHint is meaningful only when the tool is not read-only.
        destructive: !read_only && flag("destructiveHint").unwrap_or(true),
        idempotent: flag("idempotentHint").unwrap_or(false),
        open_world: flag("openWorldHint").unwrap_or(true),
    }
}

/// Builds the Cedar request and entities, checked against the schema.
pub(crate) fn build(
    req: &Request<'_>,
    servers: &HashMap<String, ServerInfo>,
    schema: &Schema,
) -> Result<(CedarRequest, Entities), String> {
    let n = names()?;
    let p = &req.principal;
    let mut entities: Vec<Entity> = Vec::with_capacity(4);

    // The principal, a member of its groups. Group entities have no
    // attributes and no parents: the membership edges are all Cedar needs.
    let user_uid = uid(&n.user, p.subject);
    let mut seen = HashSet::with_capacity(p.groups.len());
    let mut parents = Vec::with_capacity(p.groups.len());
    for g in p.groups {
        if seen.insert(g.as_str()) {
            parents.push(uid(&n.group, g));
        }
    }
    let claims = claim_tags(p.claims);
    let user = Entity::new_with_tags(
        user_uid.clone(),
        [
            attr("issuer", s(p.issuer)),
            attr("subject", s(p.subject)),
            attr("authenticated", b(p.authenticated)),
            attr("client_id", s(p.client_id.unwrap_or(""))),
            attr("groups", set(p.groups)),
            attr("roles", set(p.roles)),
            attr("scopes", set(p.scopes)),
            attr("mfa", b(p.mfa)),
            attr("tenant", s(p.tenant.unwrap_or(""))),
            attr("claims_truncated", b(claims.truncated)),
        ],
        parents,
        claims
            .tags
            .into_iter()
            .map(|(k, v)| (k, RestrictedExpression::new_string(v))),
    )
    .map_err(|e| format!("principal: {e}"))?;
    entities.push(user);

    // The server, and the tool, resource or prompt in it.
    let server_name = match &req.resource {
        Resource::Server { server }
        | Resource::Tool { server, .. }
        | Resource::Resource { server, .. }
        | Resource::Prompt { server, .. } => *server,
    };
    let info = servers.get(server_name);
    let classification = info.map_or("", |i| i.classification.as_str());
    let tags: &[String] = info.map_or(&[], |i| i.tags.as_slice());
    let server_uid = uid(&n.server, server_name);
    entities.push(
        Entity::new(
            server_uid.clone(),
            HashMap::from([
                attr("name", s(server_name)),
                attr("server", s(server_name)),
                attr("classification", s(classification)),
                attr("tags", set(tags)),
                attr("server_tags", set(tags)),
            ]),
            HashSet::new(),
        )
        .map_err(|e| format!("server: {e}"))?,
    );
    let common = || {
        [
            attr("server", s(server_name)),
            attr("classification", s(classification)),
            attr("server_tags", set(tags)),
        ]
    };
    let resource_uid = match &req.resource {
        Resource::Server { .. } => server_uid,
        Resource::Tool { tool, annotations, .. } => {
            let h = hints(*annotations);
            // The id names the server too: tools of different servers are different entities.
            let id = uid(&n.tool, &format!("{server_name}/{tool}"));
            let mut attrs: Vec<_> = common().into();
            attrs.extend([
                attr("name", s(tool)),
                attr("read_only", b(h.read_only)),
                attr("destructive", b(h.destructive)),
                attr("idempotent", b(h.idempotent)),
                attr("open_world", b(h.open_world)),
            ]);
            entities
                .push(Entity::new_with_tags(id.clone(), attrs, [server_uid], []).map_err(|e| format!("tool: {e}"))?);
            id
        }
        Resource::Resource { uri, .. } => {
            let id = uid(&n.resource, &format!("{server_name}/{uri}"));
            let mut attrs: Vec<_> = common().into();
            attrs.push(attr("uri", s(uri)));
            entities.push(
                Entity::new_with_tags(id.clone(), attrs, [server_uid], []).map_err(|e| format!("resource: {e}"))?,
            );
            id
        }
        Resource::Prompt { prompt, .. } => {
            let id = uid(&n.prompt, &format!("{server_name}/{prompt}"));
            let mut attrs: Vec<_> = common().into();
            attrs.push(attr("name", s(prompt)));
            entities
                .push(Entity::new_with_tags(id.clone(), attrs, [server_uid], []).map_err(|e| format!("prompt: {e}"))?);
            id
        }
    };

    // The arguments as tags of the Args entity.
    let c = &req.context;
    let args = argument_tags(c.arguments);
    let args_uid = uid(&n.args, "");
    entities.push(
        Entity::new_with_tags(
            args_uid.clone(),
            [],
            [],
            args.tags
                .into_iter()
                .map(|(k, v)| (k, RestrictedExpression::new_string(v))),
        )
        .map_err(|e| format!("arguments: {e}"))?,
    );

    let context = Context::from_pairs([
        attr("route", s(c.route)),
        attr(
            "now",
            RestrictedExpression::new_long(i64::try_from(c.now_unix).unwrap_or(i64::MAX)),
        ),
        attr("risk", RestrictedExpression::new_long(i64::from(c.risk))),
        attr("flow_labels", set(c.flow_labels)),
        attr("args", RestrictedExpression::new_entity_uid(args_uid)),
        attr("args_truncated", b(args.truncated)),
    ])
    .map_err(|e| format!("context: {e}"))?;

    let action = uid(&n.action, req.action.cedar_id());
    let request = CedarRequest::new(user_uid, action, resource_uid, context, Some(schema)).map_err(|e| {
        format!(
            "request does not fit the schema ({} on this resource?): {e}",
            req.action.cedar_id()
        )
    })?;
    let entities = Entities::from_entities(entities, Some(schema)).map_err(|e| format!("entities: {e}"))?;
    Ok((request, entities))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_hint_defaults_follow_the_mcp_specification() {
        let d = hints(None);
        assert_eq!(
            d,
            Hints {
                read_only: false,
                destructive: true,
                idempotent: false,
                open_world: true
            }
        );
        let r = hints(Some(&json!({"readOnlyHint": true, "destructiveHint": true})));
        assert!(r.read_only && !r.destructive);
        let w = hints(Some(
            &json!({"destructiveHint": false, "idempotentHint": true, "openWorldHint": false}),
        ));
        assert!(!w.read_only && !w.destructive && w.idempotent && !w.open_world);
        // Wrong types count as absent.
        let x = hints(Some(&json!({"readOnlyHint": "true"})));
        assert!(!x.read_only && x.destructive);
    }
}
