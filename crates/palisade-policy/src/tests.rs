use super::*;
use serde_json::{Value, json};

fn examples_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies"))
}

fn servers() -> HashMap<String, ServerInfo> {
    let s = |c: &str, tags: &[&str]| ServerInfo {
        classification: c.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    };
    HashMap::from([
        ("github".to_string(), s("internal", &[])),
        ("files".to_string(), s("confidential", &[])),
        ("docs".to_string(), s("public", &[])),
        ("vault".to_string(), s("restricted", &[])),
        ("payments".to_string(), s("confidential", &["team-payments"])),
        ("search".to_string(), s("internal", &["team-search"])),
    ])
}

fn examples() -> PolicyEngine {
    PolicyEngine::load_dir(&examples_dir(), servers()).unwrap_or_else(|e| panic!("{e}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An owned principal to borrow from.
#[derive(Default, Clone)]
struct Who {
    subject: String,
    authenticated: bool,
    groups: Vec<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    mfa: bool,
    claims: Option<serde_json::Map<String, Value>>,
}

fn who(subject: &str, groups: &[&str]) -> Who {
    Who {
        subject: subject.to_string(),
        authenticated: true,
        groups: strings(groups),
        ..Who::default()
    }
}

impl Who {
    fn principal(&self) -> Principal<'_> {
        Principal {
            issuer: "https://idp.example",
            subject: &self.subject,
            authenticated: self.authenticated,
            client_id: Some("client"),
            groups: &self.groups,
            roles: &self.roles,
            scopes: &self.scopes,
            mfa: self.mfa,
            tenant: None,
            claims: self.claims.as_ref(),
        }
    }
}

const NO_LABELS: &[String] = &[];

fn ctx<'a>(arguments: Option<&'a Value>) -> Context<'a> {
    Context {
        arguments,
        now_unix: 1_750_000_000,
        route: "aggregate",
        risk: 0,
        flow_labels: NO_LABELS,
    }
}

fn decide(e: &PolicyEngine, w: &Who, action: Action, resource: Resource<'_>, arguments: Option<&Value>) -> Decision {
    e.authorize(&Request {
        principal: w.principal(),
        action,
        resource,
        context: ctx(arguments),
    })
}

fn src(name: &str, text: &str) -> (String, String) {
    (name.to_string(), text.to_string())
}

fn engine(text: &str) -> PolicyEngine {
    PolicyEngine::from_sources(&[src("p.cedar", text)], servers()).unwrap_or_else(|e| panic!("{e}"))
}

fn reject(name: &str, text: &str) -> String {
    match PolicyEngine::from_sources(
        &[src("ok.cedar", "permit(principal, action, resource);"), src(name, text)],
        servers(),
    ) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => {
            assert!(e.is_invalid_policy(), "{e:?}");
            e.to_string()
        }
    }
}

// ---------------------------------------------------------------- actions

#[test]
fn every_action_maps_both_ways() {
    let table = [
        ("tools/call", Action::CallTool, "call_tool"),
        ("tools/list", Action::ListTools, "list_tools"),
        ("resources/read", Action::ReadResource, "read_resource"),
        ("resources/list", Action::ListResources, "list_resources"),
        (
            "resources/templates/list",
            Action::ListResourceTemplates,
            "list_resource_templates",
        ),
        ("resources/subscribe", Action::Subscribe, "subscribe"),
        ("resources/unsubscribe", Action::Unsubscribe, "unsubscribe"),
        ("prompts/get", Action::GetPrompt, "get_prompt"),
        ("prompts/list", Action::ListPrompts, "list_prompts"),
        ("completion/complete", Action::Complete, "complete"),
        ("logging/setLevel", Action::SetLogLevel, "set_log_level"),
        ("ping", Action::Ping, "ping"),
        ("initialize", Action::Initialize, "initialize"),
    ];
    assert_eq!(table.len() + 1, Action::ALL.len());
    for (method, action, id) in table {
        assert_eq!(Action::from_method(method), action, "{method}");
        assert_eq!(action.method(), Some(method));
        assert_eq!(action.cedar_id(), id);
        assert_eq!(Action::from_cedar_id(id), Some(action));
    }
    assert_eq!(Action::Other.cedar_id(), "other");
    assert_eq!(Action::Other.method(), None);
    assert_eq!(Action::from_cedar_id("other"), Some(Action::Other));
    for m in [
        "",
        "other",
        "tools/Call",
        "tools/call ",
        "notifications/initialized",
        "sampling/createMessage",
        "call_tool",
    ] {
        assert_eq!(Action::from_method(m), Action::Other, "{m:?}");
    }
    // Every cedar id is declared in the schema.
    let schema = compile::schema().unwrap();
    let declared: Vec<String> = schema.actions().map(|a| a.id().unescaped().to_string()).collect();
    for a in Action::ALL {
        assert!(
            declared.iter().any(|d| d == a.cedar_id()),
            "{} not in the schema",
            a.cedar_id()
        );
    }
}

#[test]
fn schema_text_is_the_palisade_namespace() {
    assert!(SCHEMA.contains("namespace Palisade"));
    assert!(compile::schema().is_ok());
}

// ---------------------------------------------------------------- decisions

#[test]
fn default_deny_without_a_matching_permit() {
    let e = engine(r#"permit (principal in Palisade::Group::"admins", action, resource);"#);
    let d = decide(
        &e,
        &who("bob", &["users"]),
        Action::Ping,
        Resource::Server { server: "github" },
        None,
    );
    assert!(!d.allowed);
    assert!(d.policies.is_empty() && d.errors.is_empty(), "{d:?}");
    // No policies at all: deny everything.
    let none = PolicyEngine::from_sources(&[], servers()).unwrap();
    assert_eq!(none.policy_count(), 0);
    let d = decide(
        &none,
        &who("root", &["admins"]),
        Action::Ping,
        Resource::Server { server: "x" },
        None,
    );
    assert!(!d.allowed);
    let d = decide(
        &e,
        &who("root", &["admins"]),
        Action::Ping,
        Resource::Server { server: "x" },
        None,
    );
    assert!(d.allowed);
    assert_eq!(d.policies, vec!["p:0"]);
}

#[test]
fn decisions_for_every_action_against_the_examples() {
    let e = examples();
    assert_eq!(e.dir(), Some(examples_dir().as_path()));
    let reader = who("alice", &["readers"]);
    let nobody = who("erin", &[]);
    let admin = Who {
        mfa: true,
        ..who("root", &["admins"])
    };
    let ro = json!({"readOnlyHint": true});
    let read_only_tool = Resource::Tool {
        server: "github",
        tool: "get_issue",
        annotations: Some(&ro),
    };
    let plain_tool = Resource::Tool {
        server: "github",
        tool: "create_issue",
        annotations: None,
    };
    let doc = Resource::Resource {
        server: "docs",
        uri: "file:///srv/docs/a.md",
    };
    let prompt = Resource::Prompt {
        server: "github",
        prompt: "summarize",
    };
    let server = Resource::Server { server: "github" };
    let args = json!({"owner": "acme"});

    // (action, resource, reader allowed, nobody allowed, admin allowed)
    let table: Vec<(Action, Resource<'_>, bool, bool, bool)> = vec![
        (Action::Ping, server, true, true, true),
        (Action::Initialize, server, true, true, true),
        (Action::ListTools, server, true, true, true),
        (Action::ListResources, server, true, true, true),
        (Action::ListResourceTemplates, server, true, true, true),
        (Action::ListPrompts, server, true, true, true),
        (Action::ReadResource, doc, true, false, true),
        (Action::Subscribe, doc, true, false, true),
        (Action::Unsubscribe, doc, true, false, true),
        (Action::GetPrompt, prompt, true, false, true),
        (Action::Complete, prompt, true, false, true),
        (Action::Complete, doc, true, false, true),
        (Action::CallTool, read_only_tool, true, false, true),
        (Action::CallTool, plain_tool, false, false, true),
        (Action::SetLogLevel, server, false, false, true),
        (Action::Other, server, false, false, true),
    ];
    for (action, resource, r, n, a) in table {
        for (w, want) in [(&reader, r), (&nobody, n), (&admin, a)] {
            let d = decide(&e, w, action, resource, Some(&args));
            assert_eq!(
                d.allowed,
                want,
                "{} {:?} for {}: {d:?}",
                action.cedar_id(),
                resource,
                w.subject
            );
            assert!(d.errors.is_empty(), "{d:?}");
            if want {
                assert!(!d.policies.is_empty());
            }
        }
    }
    // The anonymous principal gets nothing from the examples.
    let anon = Who {
        authenticated: false,
        ..who("anonymous", &[])
    };
    assert!(!decide(&e, &anon, Action::Ping, server, None).allowed);
}

#[test]
fn a_request_that_does_not_fit_the_schema_is_denied_with_an_error() {
    let e = engine("permit (principal, action, resource);");
    let w = who("a", &[]);
    let d = decide(&e, &w, Action::CallTool, Resource::Server { server: "github" }, None);
    assert!(!d.allowed);
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert!(d.errors[0].contains("call_tool"), "{d:?}");
    let d = decide(
        &e,
        &w,
        Action::ListTools,
        Resource::Prompt {
            server: "s",
            prompt: "p",
        },
        None,
    );
    assert!(!d.allowed && !d.errors.is_empty());
    // Unknown servers are unclassified, not an error.
    let d = decide(&e, &w, Action::ListTools, Resource::Server { server: "nowhere" }, None);
    assert!(d.allowed, "{d:?}");
}

#[test]
fn principal_attributes_claims_and_context_reach_the_policies() {
    let e = engine(
        r#"
        @id("all")
        permit (principal, action == Palisade::Action::"call_tool", resource)
        when {
            principal.issuer == "https://idp.example" && principal.subject == "carol" &&
            principal.client_id == "client" && principal.tenant == "" &&
            principal.scopes.contains("s1") && principal.roles.contains("r1") &&
            principal.groups.contains("g1") && principal in Palisade::Group::"g1" &&
            principal.hasTag("dept") && principal.getTag("dept") == "sales" &&
            principal.hasTag("level") && principal.getTag("level") == "3" &&
            !principal.hasTag("nested") && !principal.claims_truncated &&
            resource == Palisade::Tool::"github/t" && resource in Palisade::Server::"github" &&
            resource.name == "t" && resource.server == "github" && resource.classification == "internal" &&
            !resource.read_only && resource.destructive && !resource.idempotent && resource.open_world &&
            context.route == "aggregate" && context.now == 1750000000 && context.risk == 0 &&
            context.flow_labels.isEmpty() && !context.args_truncated &&
            context.args.hasTag("n") && context.args.getTag("n") == "5"
        };
        "#,
    );
    let w = Who {
        scopes: strings(&["s1"]),
        roles: strings(&["r1"]),
        claims: json!({"dept": "sales", "level": 3, "nested": {"x": 1}})
            .as_object()
            .cloned(),
        ..who("carol", &["g1"])
    };
    let tool = Resource::Tool {
        server: "github",
        tool: "t",
        annotations: None,
    };
    let args = json!({"n": 5});
    let d = decide(&e, &w, Action::CallTool, tool, Some(&args));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policies, vec!["all"]);
    let d = decide(&e, &w, Action::CallTool, tool, Some(&json!({"n": 6})));
    assert!(!d.allowed);
}

// ---------------------------------------------------------------- obligations

#[test]
fn obligations_merge_from_every_determining_permit() {
    let mut a = Obligations {
        confirm: false,
        step_up_scopes: strings(&["b", "a"]),
        mfa: false,
        redact: strings(&["pii"]),
    };
    a.merge(&Obligations {
        confirm: true,
        step_up_scopes: strings(&["a", "c"]),
        mfa: true,
        redact: strings(&["secret", "pii"]),
    });
    assert!(a.confirm && a.mfa);
    assert_eq!(a.step_up_scopes, strings(&["a", "b", "c"]));
    assert_eq!(a.redact, strings(&["pii", "secret"]));
    assert_eq!(a.missing_scopes(&strings(&["b"])), strings(&["a", "c"]));
    assert!(Obligations::default().is_empty() && !a.is_empty());

    let e = engine(
        r#"
        @id("one") @confirm("true") @redact("pii")
        permit (principal, action == Palisade::Action::"call_tool", resource);
        @id("two") @step_up("files:write admin") @redact("secret,pii")
        permit (principal, action == Palisade::Action::"call_tool", resource) when { resource.destructive };
        @id("three") @mfa("true")
        permit (principal, action == Palisade::Action::"call_tool", resource) when { resource.read_only };
        @id("four") @mfa("true")
        permit (principal, action == Palisade::Action::"ping", resource);
        "#,
    );
    let w = who("u", &[]);
    let tool = Resource::Tool {
        server: "files",
        tool: "rm",
        annotations: None,
    };
    let d = decide(&e, &w, Action::CallTool, tool, None);
    assert!(d.allowed);
    assert_eq!(d.policies, strings(&["one", "two"]));
    assert_eq!(
        d.obligations,
        Obligations {
            confirm: true,
            step_up_scopes: strings(&["admin", "files:write"]),
            mfa: false,
            redact: strings(&["pii", "secret"]),
        }
    );
    // A denied request carries no obligations.
    let d = decide(&e, &w, Action::ListTools, Resource::Server { server: "files" }, None);
    assert!(!d.allowed && d.obligations.is_empty());

    // The examples: an admin's destructive call needs mfa, confirmation and the admin scope.
    let ex = examples();
    let admin = Who {
        mfa: true,
        ..who("root", &["admins"])
    };
    let d = decide(&ex, &admin, Action::CallTool, tool, Some(&json!({"path": "/tmp/x"})));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policies, strings(&["admins-all", "admins-destructive"]));
    assert!(d.obligations.confirm && d.obligations.mfa);
    assert_eq!(d.obligations.step_up_scopes, strings(&["mcp:admin"]));
}

// ---------------------------------------------------------------- invalid policies

#[test]
fn invalid_policies_are_rejected_naming_the_file() {
    // Type error: no such attribute.
    let m = reject(
        "typo.cedar",
        "permit (principal, action, resource) when { principal.no_such_attr == 1 };",
    );
    assert!(m.contains("typo.cedar:1:"), "{m}");
    assert!(m.contains("typo:0"), "{m}");
    // Unknown action.
    let m = reject(
        "act.cedar",
        "\n@id(\"x\")\npermit (principal, action == Palisade::Action::\"delete_everything\", resource);",
    );
    assert!(m.contains("act.cedar:3:"), "{m}");
    assert!(m.contains("`x`"), "{m}");
    // Syntax error.
    let e = PolicyEngine::from_sources(&[src("syntax.cedar", "permit (principal, action, resource")], servers())
        .unwrap_err();
    assert!(
        matches!(&e, PolicyError::Parse { file, .. } if file == "syntax.cedar"),
        "{e:?}"
    );
    assert!(e.to_string().contains("syntax.cedar:1:"), "{e}");
    // Unknown entity type, wrong attribute type, tag without hasTag, getTag on an untagged type.
    reject(
        "t1.cedar",
        r#"permit (principal in Palisade::Team::"x", action, resource);"#,
    );
    reject(
        "t2.cedar",
        "permit (principal, action, resource) when { principal.mfa == \"yes\" };",
    );
    reject(
        "t3.cedar",
        "permit (principal, action, resource) when { context.args.getTag(\"p\") == \"x\" };",
    );
    reject(
        "t4.cedar",
        "permit (principal, action, resource) when { resource.uri == \"x\" };",
    );
    // A policy that can never apply.
    reject(
        "t5.cedar",
        r#"permit (principal, action == Palisade::Action::"call_tool", resource is Palisade::Prompt);"#,
    );
    // Templates are not supported.
    reject("t6.cedar", "permit (principal == ?principal, action, resource);");
    // Obligation annotations: bad values, and on a forbid.
    let m = reject("o1.cedar", "@confirm(\"yes\")\npermit (principal, action, resource);");
    assert!(m.contains("o1.cedar") && m.contains("@confirm"), "{m}");
    reject("o2.cedar", "@mfa(\"true\")\nforbid (principal, action, resource);");
    reject("o3.cedar", "@step_up(\"\")\npermit (principal, action, resource);");
    reject("o4.cedar", "@redact(\"PII!\")\npermit (principal, action, resource);");
    // Ids: duplicates (also across files), white space.
    let m = reject("d1.cedar", "@id(\"ok:0\")\npermit (principal, action, resource);");
    assert!(m.contains("also used in ok.cedar"), "{m}");
    reject(
        "d2.cedar",
        "@id(\"a\") permit (principal, action, resource);\n@id(\"a\") permit (principal, action, resource);",
    );
    reject("d3.cedar", "@id(\"a b\") permit (principal, action, resource);");
    // Two files with the same name.
    assert!(
        PolicyEngine::from_sources(
            &[
                src("a/x.cedar", "permit (principal, action, resource);"),
                src("b/x.cedar", "")
            ],
            servers()
        )
        .is_err()
    );
    // Every problem is listed.
    let m = reject(
        "many.cedar",
        "permit (principal, action, resource) when { principal.a == 1 };\npermit (principal, action, resource) when { principal.b == 1 };",
    );
    assert!(m.contains("many:0") && m.contains("many:1"), "{m}");
}

#[test]
fn check_dir_counts_and_refuses() {
    assert_eq!(check_dir(&examples_dir()).unwrap(), examples().policy_count());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.cedar"), "permit (principal, action, resource);").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    std::fs::write(dir.path().join(".#a.cedar"), "editor junk").unwrap();
    assert_eq!(check_dir(dir.path()).unwrap(), 1);
    std::fs::write(
        dir.path().join("b.cedar"),
        "permit (principal, action, resource) when { nope };",
    )
    .unwrap();
    let e = check_dir(dir.path()).unwrap_err();
    assert!(e.is_invalid_policy() && e.to_string().contains("b.cedar"), "{e}");
    let e = check_dir(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(e, PolicyError::Io { .. }) && !e.is_invalid_policy(), "{e:?}");
    std::fs::remove_file(dir.path().join("b.cedar")).unwrap();
    let big = format!(
        "// {}\npermit (principal, action, resource);",
        "x".repeat(MAX_POLICY_FILE_BYTES as usize)
    );
    std::fs::write(dir.path().join("big.cedar"), big).unwrap();
    assert!(matches!(check_dir(dir.path()), Err(PolicyError::Limit { .. })));
}

// ---------------------------------------------------------------- reload

#[test]
fn reload_keeps_the_previous_set_on_invalid_files_and_picks_up_valid_changes() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "a.cedar",
        r#"@id("ping") permit (principal, action == Palisade::Action::"ping", resource);"#,
    );
    let e = PolicyEngine::load_dir(dir.path(), servers()).unwrap();
    let w = who("u", &[]);
    let server = Resource::Server { server: "github" };
    let pings = |e: &PolicyEngine| decide(e, &w, Action::Ping, server, None).allowed;
    let lists = |e: &PolicyEngine| decide(e, &w, Action::ListTools, server, None).allowed;
    assert!(pings(&e) && !lists(&e));
    assert_eq!(e.reload_if_changed().unwrap(), None);

    // An invalid new file: error, the previous set stays.
    write(
        "b.cedar",
        r#"permit (principal, action == Palisade::Action::"list_tools", resource) when { principal.nope };"#,
    );
    let err = e.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("b.cedar"), "{err}");
    assert!(pings(&e) && !lists(&e));
    assert_eq!(e.policy_count(), 1);
    assert!(e.last_reload_error().is_some());
    // Same invalid files: nothing new to report.
    assert_eq!(e.reload_if_changed().unwrap(), None);
    assert!(pings(&e));

    // A syntax error in the file that was valid: still the previous set.
    write("a.cedar", "permit (principal, action, ");
    assert!(e.reload_if_changed().is_err());
    assert!(pings(&e) && !lists(&e));

    // Back to the active contents: nothing to load, and no error any more.
    std::fs::remove_file(dir.path().join("b.cedar")).unwrap();
    write(
        "a.cedar",
        r#"@id("ping") permit (principal, action == Palisade::Action::"ping", resource);"#,
    );
    assert_eq!(e.reload_if_changed().unwrap(), None);
    assert!(e.last_reload_error().is_none());
    write("a.cedar", "permit (principal, action, ");
    assert!(e.reload_if_changed().is_err());
    assert!(pings(&e) && !lists(&e));

    // Both fixed: the new set is active.
    write(
        "a.cedar",
        r#"@id("ping") permit (principal, action == Palisade::Action::"ping", resource);"#,
    );
    write(
        "b.cedar",
        r#"@id("list") permit (principal, action == Palisade::Action::"list_tools", resource);"#,
    );
    assert_eq!(e.reload_if_changed().unwrap(), Some(2));
    assert!(pings(&e) && lists(&e));
    assert!(e.last_reload_error().is_none());
    assert_eq!(e.policy_ids(), strings(&["list", "ping"]));
    assert_eq!(e.reload_if_changed().unwrap(), None);

    // A removed file is picked up too.
    std::fs::remove_file(dir.path().join("a.cedar")).unwrap();
    assert_eq!(e.reload_if_changed().unwrap(), Some(1));
    assert!(!pings(&e) && lists(&e));

    // A touched but unchanged file is not a new set.
    let b = std::fs::read_to_string(dir.path().join("b.cedar")).unwrap();
    write("b.cedar", &b);
    assert_eq!(e.reload_if_changed().unwrap(), None);

    // The directory vanishing is an error; the set stays.
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(e.reload_if_changed().is_err());
    assert!(lists(&e));
    assert!(!path.exists());

    // Engines from sources never reload.
    let s = engine("permit (principal, action, resource);");
    assert_eq!(s.reload_if_changed().unwrap(), None);
}

#[test]
fn authorize_is_usable_from_many_threads_during_reloads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.cedar"), "permit (principal, action, resource);").unwrap();
    let e = Arc::new(PolicyEngine::load_dir(dir.path(), servers()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                let w = who("u", &[]);
                for _ in 0..200 {
                    let d = decide(&e, &w, Action::Ping, Resource::Server { server: "s" }, None);
                    assert!(d.errors.is_empty());
                }
            })
        })
        .collect();
    for i in 0..20 {
        let text = if i % 2 == 0 {
            "forbid (principal, action, resource);\npermit (principal, action, resource);"
        } else {
            "permit (principal, action, resource);"
        };
        std::fs::write(dir.path().join("a.cedar"), text).unwrap();
        let _ = e.reload_if_changed();
    }
    for h in handles {
        h.join().unwrap();
    }
}

// ---------------------------------------------------------------- hostile inputs

fn call(e: &PolicyEngine, args: &Value) -> Decision {
    let w = who("u", &["developers"]);
    let ro = json!({"readOnlyHint": true});
    decide(
        e,
        &w,
        Action::CallTool,
        Resource::Tool {
            server: "github",
            tool: "get_issue",
            annotations: Some(&ro),
        },
        Some(args),
    )
}

#[test]
fn hostile_arguments_are_bounded_and_denied_by_the_truncation_guard() {
    let open = engine("permit (principal, action, resource);");
    let guarded = engine(
        r#"permit (principal, action, resource);
           @id("guard") forbid (principal, action, resource) when { context.args_truncated };"#,
    );

    let mut many = serde_json::Map::new();
    for i in 0..10_000 {
        many.insert(format!("k{i}"), json!(i));
    }
    let mut deep = json!("bottom");
    for _ in 0..200 {
        deep = json!({ "a": deep });
    }
    let mut deep_array = json!(1);
    for _ in 0..200 {
        deep_array = json!([deep_array]);
    }
    let huge = "x".repeat(10 * 1024 * 1024);
    let hostile = [
        Value::Object(many),
        deep,
        json!({ "d": deep_array }),
        json!({ "s": huge }),
        json!({ "list": vec![huge.as_str(); 3] }),
        json!({ "k".repeat(10_000): "v" }),
        json!("not an object"),
        json!({"a.b": "x", "a": {"b": "y"}}),
    ];
    for (i, args) in hostile.iter().enumerate() {
        let started = std::time::Instant::now();
        let d = call(&open, args);
        assert!(d.allowed, "case {i}: {d:?}");
        let d = call(&guarded, args);
        assert!(!d.allowed, "case {i}: {d:?}");
        assert_eq!(d.policies, vec!["guard"], "case {i}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "case {i} too slow"
        );
    }

    // Awkward but representable arguments: no panic, no truncation, exact values.
    let awkward = json!({
        "quote\"key": "v\"al",
        "new\nline": "a\nb",
        "\u{0}nul": "\u{0}",
        "bidi\u{202e}": "\u{202e}evil",
        "emoji": "\u{1F600}",
        "escaped": "\\u0000 \\x00 %2e%2e",
        "": "empty key",
        "n": -0.0,
        "big": 18446744073709551615u64,
    });
    let e = engine(
        r#"permit (principal, action, resource) when {
            context.args.hasTag("quote\"key") && context.args.getTag("quote\"key") == "v\"al" &&
            context.args.hasTag("new\nline") && context.args.getTag("new\nline") == "a\nb" &&
            context.args.hasTag("") && context.args.getTag("") == "empty key" &&
            context.args.hasTag("big") && context.args.getTag("big") == "18446744073709551615" &&
            !context.args_truncated
        };"#,
    );
    let d = call(&e, &awkward);
    assert!(d.allowed, "{d:?}");
    let d = call(&guarded, &awkward);
    assert!(d.allowed, "{d:?}");

    // Hostile principals: odd subject and group names, many groups, odd claims.
    let claims = json!({"k\"\n": "v", "huge": huge, "n": 1}).as_object().cloned();
    let w = Who {
        claims,
        ..who("\"quoted\"\n::\\", &["\"", "a\nb", "", "::"])
    };
    let many_groups: Vec<String> = (0..5000).map(|i| format!("g{i}")).collect();
    let w2 = Who {
        groups: many_groups,
        ..who("x", &[])
    };
    let e = engine(
        r#"permit (principal, action, resource) when { principal.claims_truncated };
           permit (principal in Palisade::Group::"g4999", action, resource);"#,
    );
    assert!(decide(&e, &w, Action::Ping, Resource::Server { server: "\"\n" }, None).allowed);
    assert!(decide(&e, &w2, Action::Ping, Resource::Server { server: "s" }, None).allowed);
}

#[test]
fn path_traversal_in_the_examples_is_denied() {
    let e = examples();
    let w = who("dev", &["developers"]);
    let ro = json!({"readOnlyHint": true});
    let tool = Resource::Tool {
        server: "files",
        tool: "read_file",
        annotations: Some(&ro),
    };
    let ok = decide(
        &e,
        &w,
        Action::CallTool,
        tool,
        Some(&json!({"path": "/srv/repos/web/a.md"})),
    );
    assert!(ok.allowed, "{ok:?}");
    for path in [
        "/srv/repos/../../etc/passwd",
        "/srv/repos/..",
        "/srv/repos/web/../../../root/.ssh/id_rsa",
        "/srv/repos/web\\..\\secret",
        "/srv/repos/a\\b",
    ] {
        let d = decide(&e, &w, Action::CallTool, tool, Some(&json!({ "path": path })));
        assert!(!d.allowed, "{path}: {d:?}");
        assert_eq!(d.policies, vec!["files-no-traversal"], "{path}");
    }
    for path in ["/etc/passwd", "/srv/repository/x", "srv/repos/x", ""] {
        let d = decide(&e, &w, Action::CallTool, tool, Some(&json!({ "path": path })));
        assert!(!d.allowed && d.policies.is_empty(), "{path}: {d:?}");
    }
    // The path nested one level down, or ambiguous, does not count as "path".
    let d = decide(
        &e,
        &w,
        Action::CallTool,
        tool,
        Some(&json!({"p": {"path": "/srv/repos/x"}})),
    );
    assert!(!d.allowed);
}

#[test]
fn an_erroring_forbid_fails_closed() {
    // 2 * i64::MAX overflows at run time (the validator cannot know).
    let e = engine(
        r#"@id("allow") permit (principal, action, resource);
           @id("overflow") forbid (principal, action, resource) when { context.risk * 9223372036854775807 > 0 };"#,
    );
    let w = who("u", &[]);
    let mut c = ctx(None);
    c.risk = 2;
    let d = e.authorize(&Request {
        principal: w.principal(),
        action: Action::Ping,
        resource: Resource::Server { server: "s" },
        context: c,
    });
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.policies, vec!["overflow"]);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].contains("overflow"), "{d:?}");
    // An erroring permit is only skipped.
    let e = engine(r#"@id("p") permit (principal, action, resource) when { context.risk * 9223372036854775807 > 0 };"#);
    let d = e.authorize(&Request {
        principal: w.principal(),
        action: Action::Ping,
        resource: Resource::Server { server: "s" },
        context: c,
    });
    assert!(!d.allowed && d.policies.is_empty() && d.errors.len() == 1, "{d:?}");
}

// ---------------------------------------------------------------- cases

#[test]
fn the_example_cases_pass() {
    let yaml = std::fs::read_to_string(examples_dir().join("cases.yaml")).unwrap();
    let file = cases::CasesFile::parse(&yaml).unwrap();
    assert!(file.cases.len() >= 25);
    let e = PolicyEngine::load_dir(&examples_dir(), file.server_infos()).unwrap();
    let report = cases::run_cases(&e, &yaml).unwrap();
    assert!(report.all_passed(), "{report}");
    assert_eq!(report.failed(), 0);
    // Every action and every example policy is exercised.
    for a in Action::ALL {
        assert!(
            file.cases
                .iter()
                .any(|c| Action::from_cedar_id(&c.action).or(Some(Action::from_method(&c.action))) == Some(a)),
            "no case for {}",
            a.cedar_id()
        );
    }
    for id in e.policy_ids() {
        assert!(
            report.results.iter().any(|r| r.actual.policies.contains(&id)),
            "no case determined by {id}"
        );
    }
}

#[test]
fn cases_report_failures_and_refuse_bad_input() {
    let e = engine(r#"@id("pings") permit (principal, action == Palisade::Action::"ping", resource);"#);
    let yaml = r#"
cases:
  - name: ok
    principal: { subject: a }
    action: ping
    resource: { server: s }
    expect: allow
    policies: [pings]
    obligations: { confirm: false }
  - name: wrong
    principal: { subject: a }
    action: ping
    resource: { server: s }
    expect: deny
  - name: wrong obligation
    principal: { subject: a }
    action: ping
    resource: { server: s }
    expect: allow
    obligations: { confirm: true, step_up: [x] }
"#;
    let r = cases::run_cases(&e, yaml).unwrap();
    assert_eq!((r.passed(), r.failed()), (1, 2));
    let text = r.to_string();
    assert!(text.contains("PASS ok: expected allow, got allow [pings]"), "{text}");
    assert!(text.contains("FAIL wrong: expected deny, got allow"), "{text}");
    assert!(text.contains("obligations.confirm: expected true, got false"), "{text}");
    assert!(text.ends_with("1 passed, 2 failed"), "{text}");

    let bad = [
        "cases: [",
        "cases:\n  - name: x\n    principal: { subject: a }\n    action: ping\n    resource: { server: s }\n    expect: allow\n    surprise: 1\n",
        "cases:\n  - name: x\n    principal: { subject: a, admin: true }\n    action: ping\n    resource: { server: s }\n    expect: allow\n",
        "cases:\n  - name: x\n    principal: { subject: a }\n    action: ping\n    resource: { server: s }\n    expect: maybe\n",
        "cases:\n  - name: x\n    principal: { subject: a }\n    action: fly\n    resource: { server: s }\n    expect: allow\n",
        "cases:\n  - name: x\n    principal: { subject: a }\n    action: call_tool\n    resource: { server: s }\n    expect: allow\n",
        "cases:\n  - name: x\n    principal: { subject: a }\n    action: ping\n    resource: { server: s, tool: t, uri: u }\n    expect: allow\n",
        "top: 1\ncases: []\n",
        "",
    ];
    for y in bad {
        let err = cases::run_cases(&e, y).unwrap_err();
        assert!(matches!(err, PolicyError::Cases(_)), "{y}: {err:?}");
    }
    let big = format!("cases: []\n# {}", "x".repeat(cases::MAX_CASES_BYTES));
    assert!(cases::run_cases(&e, &big).is_err());
    // An alias bomb is refused by the parser's budget.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("cases: []\n");
    assert!(cases::run_cases(&e, &bomb).is_err());
}

#[test]
#[ignore = "timing: cargo test --release -p palisade-policy --lib decision_timing -- --ignored --nocapture"]
fn decision_timing() {
    let e = examples();
    let w = who("dev", &["developers", "readers", "team-search"]);
    let ro = json!({"readOnlyHint": true});
    let args = json!({"owner": "acme", "repo": "web", "issue_number": 7, "filter": {"state": "open"}});
    let tool = Resource::Tool {
        server: "github",
        tool: "get_issue",
        annotations: Some(&ro),
    };
    let n = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        assert!(decide(&e, &w, Action::CallTool, tool, Some(&args)).allowed);
    }
    println!("{:?} per decision", t.elapsed() / n);
    let servers = servers();
    let schema = compile::schema().unwrap();
    let req = Request {
        principal: w.principal(),
        action: Action::CallTool,
        resource: tool,
        context: ctx(Some(&args)),
    };
    let t = std::time::Instant::now();
    for _ in 0..n {
        entities::build(&req, &servers, schema).unwrap();
    }
    println!("{:?} per request and entities", t.elapsed() / n);
}
