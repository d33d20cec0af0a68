use super::*;
use serde_json::json;

fn files_tool() -> Value {
    json!({
        "name": "read_file",
        "inputSchema": {
            "type": "object",
            "properties": {
                "path": { "type": "string", "pattern": "^/srv/data/[A-Za-z0-9_./-]*$", "not": { "pattern": "\\.\\." } },
                "limit": { "type": "integer", "minimum": 1, "maximum": 1000 },
                "note": { "type": "string", "maxLength": 64 },
                "tree": { "type": "object" }
            },
            "required": ["path"],
            "additionalProperties": false
        },
        "outputSchema": {
            "type": "object",
            "properties": { "text": { "type": "string" } },
            "required": ["text"]
        }
    })
}

fn schemas() -> ToolSchemas {
    ToolSchemas::compile(&files_tool()).expect("compiles")
}

#[test]
fn valid_arguments_pass() {
    let s = schemas();
    s.check_arguments(Some(&json!({ "path": "/srv/data/a.txt", "limit": 3 })))
        .expect("valid");
}

#[test]
fn wrong_types_missing_and_extra_fields_are_refused() {
    let s = schemas();
    for (args, expect) in [
        (json!({ "path": 7 }), "/path"),
        (json!({ "path": "/srv/data/a", "limit": "3" }), "/limit"),
        (json!({ "path": "/srv/data/a", "limit": 1.5 }), "/limit"),
        (json!({ "path": "/srv/data/a", "limit": 100000 }), "/limit"),
        (json!({}), "path"),
        (json!({ "path": "/srv/data/a", "shell": "rm -rf /" }), "shell"),
    ] {
        let e = s.check_arguments(Some(&args)).expect_err("must be refused");
        assert!(e.0.contains(expect), "{args}: {e}");
    }
}

#[test]
fn arguments_must_be_an_object() {
    let s = schemas();
    for args in [json!([1, 2]), json!("x"), json!(null), json!(3)] {
        assert!(s.check_arguments(Some(&args)).is_err(), "{args}");
    }
    // No arguments at all are checked as {} (here: `path` is required).
    assert!(s.check_arguments(None).is_err());
}

#[test]
fn path_traversal_against_a_pattern_is_refused() {
    let s = schemas();
    for p in [
        "/srv/data/../../etc/passwd",
        "/etc/passwd",
        "/srv/data/\u{0}x",
        "/srv/data/a\nb",
        "/srv/dat",
        "/srv/data/%2e%2e/etc",
    ] {
        assert!(
            s.check_arguments(Some(&json!({ "path": p }))).is_err(),
            "{p:?} accepted"
        );
    }
}

#[test]
fn huge_strings_are_refused_without_echoing_them() {
    let s = schemas();
    let secret = format!("sk-live-{}", "A".repeat(1_000_000));
    let e = s
        .check_arguments(Some(&json!({ "path": "/srv/data/a", "note": secret })))
        .expect_err("too long");
    assert!(e.0.contains("/note"), "{e}");
    assert!(!e.0.contains("sk-live"), "the value leaked into the message");
    assert!(e.0.len() < 2_000, "message of {} bytes", e.0.len());
}

#[test]
fn deep_nesting_is_checked_without_overflow() {
    let s = schemas();
    let mut deep = json!({});
    for _ in 0..2_000 {
        deep = json!({ "a": deep });
    }
    // The schema says `tree` is any object: deep but valid.
    s.check_arguments(Some(&json!({ "path": "/srv/data/a", "tree": deep })))
        .expect("valid");
}

#[test]
fn many_errors_are_summarised() {
    let tool = json!({ "inputSchema": {
        "type": "object",
        "additionalProperties": { "type": "integer" }
    }});
    let s = ToolSchemas::compile(&tool).expect("compiles");
    let args: serde_json::Map<String, Value> = (0..50).map(|i| (format!("k{i}"), json!("x"))).collect();
    let e = s.check_arguments(Some(&Value::Object(args))).expect_err("invalid");
    assert!(e.0.contains("and 45 more"), "{e}");
}

#[test]
fn structured_content_is_checked_against_the_output_schema() {
    let s = schemas();
    assert!(s.has_output());
    s.check_result(&json!({ "content": [], "structuredContent": { "text": "hi" } }))
        .expect("valid");
    assert!(
        s.check_result(&json!({ "content": [], "structuredContent": { "text": 1 } }))
            .is_err()
    );
    assert!(s.check_result(&json!({ "content": [] })).is_err());
    // Tool errors are not held to the output schema.
    s.check_result(&json!({ "content": [], "isError": true }))
        .expect("error results pass");
}

#[test]
fn remote_references_are_refused_at_pin_time() {
    for r in [
        "https://evil.example/schema.json",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "other.json#/defs/a",
        "urn:x",
    ] {
        let tool = json!({ "inputSchema": { "type": "object", "properties": { "a": { "$ref": r } } } });
        match ToolSchemas::compile(&tool) {
            Err(SchemaError::RemoteReference { .. }) => {}
            other => panic!("{r}: {other:?}"),
        }
    }
    let dynamic = json!({ "inputSchema": { "$dynamicRef": "https://x.example/s#meta" } });
    assert!(matches!(
        ToolSchemas::compile(&dynamic),
        Err(SchemaError::RemoteReference { .. })
    ));
}

#[test]
fn local_and_recursive_references_work() {
    let tool = json!({ "inputSchema": {
        "type": "object",
        "$defs": { "node": { "type": "object", "properties": { "next": { "$ref": "#/$defs/node" }, "v": { "type": "integer" } } } },
        "properties": { "list": { "$ref": "#/$defs/node" } }
    }});
    let s = ToolSchemas::compile(&tool).expect("compiles");
    s.check_arguments(Some(&json!({ "list": { "v": 1, "next": { "v": 2 } } })))
        .expect("valid");
    assert!(
        s.check_arguments(Some(&json!({ "list": { "v": 1, "next": { "v": "x" } } })))
            .is_err()
    );
}

#[test]
fn absurd_schemas_are_refused() {
    // Too large.
    let props: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| {
            (
                format!("p{i}"),
                json!({ "type": "string", "description": "x".repeat(8) }),
            )
        })
        .collect();
    let big = json!({ "inputSchema": { "type": "object", "properties": props } });
    assert!(matches!(ToolSchemas::compile(&big), Err(SchemaError::TooLarge { .. })));
    // Too deep.
    let mut deep = json!({ "type": "object" });
    for _ in 0..100 {
        deep = json!({ "type": "object", "properties": { "a": deep } });
    }
    assert!(matches!(
        ToolSchemas::compile(&json!({ "inputSchema": deep })),
        Err(SchemaError::TooDeep { .. })
    ));
    // Not an object, invalid keyword values, a pattern the linear engine cannot compile.
    for schema in [
        json!("object"),
        json!(true),
        json!({ "type": "objekt" }),
        json!({ "type": "object", "minProperties": -1 }),
        json!({ "type": "string", "pattern": "(?<=a)b" }),
        json!({ "type": "string", "pattern": "(" }),
    ] {
        assert!(
            ToolSchemas::compile(&json!({ "inputSchema": schema })).is_err(),
            "{schema} compiled"
        );
    }
}

#[test]
fn drafts_are_recognised_and_unknown_ones_refused() {
    let d7 = json!({ "inputSchema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": { "n": { "type": "integer", "exclusiveMaximum": 5 } }
    }});
    let s = ToolSchemas::compile(&d7).expect("draft-07 compiles");
    assert!(s.check_arguments(Some(&json!({ "n": 5 }))).is_err());
    s.check_arguments(Some(&json!({ "n": 4 }))).expect("valid");
    let d2020 =
        json!({ "inputSchema": { "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object" } });
    ToolSchemas::compile(&d2020).expect("2020-12 compiles");
    let unknown = json!({ "inputSchema": { "$schema": "https://evil.example/meta", "type": "object" } });
    assert!(matches!(
        ToolSchemas::compile(&unknown),
        Err(SchemaError::UnsupportedDraft { .. })
    ));
}

#[test]
fn hostile_patterns_run_in_linear_time() {
    // A classic catastrophic-backtracking pattern: linear in the regex crate.
    let tool = json!({ "inputSchema": { "type": "object", "properties": {
        "s": { "type": "string", "pattern": "^(a+)+$" }
    }}});
    let s = ToolSchemas::compile(&tool).expect("compiles");
    let evil = format!("{}!", "a".repeat(100_000));
    assert!(s.check_arguments(Some(&json!({ "s": evil }))).is_err());
}

#[test]
fn formats_are_not_a_way_to_fetch() {
    // `format: uri-reference` and friends are annotations; nothing is resolved.
    let tool = json!({ "inputSchema": { "type": "object", "properties": {
        "u": { "type": "string", "format": "uri" }
    }}});
    let s = ToolSchemas::compile(&tool).expect("compiles");
    let _ = s.check_arguments(Some(&json!({ "u": "http://127.0.0.1:1/x" })));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_arguments_never_panic(key in ".{0,40}", value in ".{0,200}", n in any::<i64>()) {
            let s = schemas();
            let mut args = serde_json::Map::new();
            args.insert(key, Value::String(value));
            args.insert("limit".into(), json!(n));
            let _ = s.check_arguments(Some(&Value::Object(args)));
        }
    }
}
