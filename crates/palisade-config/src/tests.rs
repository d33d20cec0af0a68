use super::*;

const MINIMAL: &str = r#"
[upstreams.demo]
transport = "stdio"
command = "demo-server"
"#;

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert!(c.server.listen.ip().is_loopback());
    assert_eq!(c.server.protocol_versions.len(), 3);
    assert!(!c.server.protocol_versions.iter().any(|v| v == "2025-03-26"));
    let up = c.upstreams["demo"].get_ref();
    let Transport::Stdio(s) = &up.transport else {
        panic!("stdio")
    };
    assert_eq!(s.mode, StdioMode::Shared);
    assert!(s.env.is_empty());
}

#[test]
fn unknown_key_is_an_error_with_line() {
    let text = "[server]\nlisten = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n";
    let err = Config::from_toml(text).unwrap_err();
    let e = &err.0[0];
    assert_eq!(e.line, Some(3), "{err}");
    assert!(e.message.contains("listen_addr"), "{err}");
}

#[test]
fn semantic_errors_name_key_and_line() {
    let text = r#"
[server]
protocol_versions = ["2024-11-05"]

[upstreams.ok]
transport = "stdio"
command = "x"

[upstreams.remote]
transport = "http"
url = "http://example.com/mcp"
"#;
    let err = Config::from_toml(text).unwrap_err();
    let msgs = err.to_string();
    assert!(msgs.contains("server.protocol_versions"), "{msgs}");
    let url = err.0.iter().find(|e| e.key == "upstreams.remote.url").expect(&msgs);
    assert_eq!(url.line, Some(9), "{msgs}");
    assert!(url.message.contains("plain http"), "{msgs}");
}

#[test]
fn bad_names_and_urls_are_refused() {
    for (text, key) in [
        (
            "[upstreams.\"Bad Name\"]\ntransport=\"stdio\"\ncommand=\"x\"",
            "upstreams.Bad Name",
        ),
        ("[upstreams.a__b]\ntransport=\"stdio\"\ncommand=\"x\"", "upstreams.a__b"),
        (
            "[upstreams.a]\ntransport=\"stdio\"\ncommand=\"  \"",
            "upstreams.a.command",
        ),
        (
            "[upstreams.a]\ntransport=\"http\"\nurl=\"ftp://x/mcp\"",
            "upstreams.a.url",
        ),
        (
            "[upstreams.a]\ntransport=\"http\"\nurl=\"https://u:p@x/mcp\"",
            "upstreams.a.url",
        ),
        (
            "[upstreams.a]\ntransport=\"http\"\nurl=\"not a url\"",
            "upstreams.a.url",
        ),
    ] {
        let err = Config::from_toml(text).unwrap_err();
        assert!(err.0.iter().any(|e| e.key == key), "{text}: {err}");
    }
}

#[test]
fn unknown_transport_is_an_error() {
    let err = Config::from_toml("[upstreams.a]\ntransport=\"carrier-pigeon\"\n").unwrap_err();
    assert!(err.to_string().contains("carrier-pigeon"), "{err}");
}

#[test]
fn no_upstreams_is_an_error() {
    let err = Config::from_toml("").unwrap_err();
    assert!(err.to_string().contains("at least one upstream"));
}

#[test]
fn loopback_http_is_fine() {
    let c = Config::from_toml("[upstreams.a]\ntransport=\"http\"\nurl=\"http://127.0.0.1:9/mcp\"").unwrap();
    assert!(matches!(c.upstreams["a"].get_ref().transport, Transport::Http(_)));
}

#[test]
fn env_overrides_apply() {
    let env = vec![
        ("PALISADE__SERVER__LISTEN".to_owned(), "127.0.0.1:9999".to_owned()),
        ("PALISADE__SERVER__MAX_BODY_BYTES".to_owned(), "2048".to_owned()),
    ];
    let c = Config::from_toml_with_env(MINIMAL, &env).unwrap();
    assert_eq!(c.server.listen.port(), 9999);
    assert_eq!(c.server.max_body_bytes, 2048);
    let bad = vec![("PALISADE__SERVER__MAX_BODY_BYTES".to_owned(), "lots".to_owned())];
    let err = Config::from_toml_with_env(MINIMAL, &bad).unwrap_err();
    assert!(err.to_string().contains("after environment overrides"), "{err}");
    // Names without the prefix (found by fuzz/config_from_toml) are errors, not panics.
    for name in ["X", "PALISADE_é_", ""] {
        let odd = vec![(name.to_owned(), "1".to_owned())];
        assert!(Config::from_toml_with_env(MINIMAL, &odd).is_err(), "{name:?}");
    }
}

#[test]
fn malformed_toml_is_an_error_not_a_panic() {
    for text in ["[server", "x = ", "\u{0}", "[upstreams.a]\ntransport = 5"] {
        assert!(Config::from_toml(text).is_err(), "{text:?}");
    }
}

#[test]
fn unknown_upstream_keys_are_errors() {
    let err = Config::from_toml("[upstreams.a]\ntransport=\"stdio\"\ncommand=\"x\"\ncomand_args=[]\n").unwrap_err();
    assert!(err.to_string().contains("comand_args"), "{err}");
    let err = Config::from_toml("[upstreams.a]\ntransport=\"http\"\nurl=\"https://x/mcp\"\nheader={}\n").unwrap_err();
    assert!(err.to_string().contains("header"), "{err}");
}

#[test]
fn auth_settings_are_checked() {
    let up = "[upstreams.a]\ntransport = \"stdio\"\ncommand = \"x\"\n";
    let bad = [
        ("[auth]\nmode = \"oauth\"\n", "needs [[auth.issuers]]"),
        (
            "[auth]\nmode = \"oauth\"\n[[auth.issuers]]\nissuer = \"https://i\"\nalgorithms = [\"HS256\"]\n",
            "not an accepted public-key algorithm",
        ),
        (
            "[auth]\nmode = \"oauth\"\n[[auth.issuers]]\nissuer = \"https://i\"\nalgorithms = [\"none\"]\n",
            "not an accepted public-key algorithm",
        ),
        ("[auth]\nmode = \"sometimes\"\n", "unknown variant"),
        ("[auth]\npublic_url = \"ftp://x\"\n", "auth.public_url"),
        ("[auth]\nmax_token_bytes = 10\n", "auth.max_token_bytes"),
    ];
    for (auth, want) in bad {
        let e = Config::from_toml(&format!("{auth}{up}")).unwrap_err().to_string();
        assert!(e.contains(want), "{auth}: {e}");
    }
    let exchange = "[upstreams.h]\ntransport = \"http\"\nurl = \"https://h/mcp\"\n[upstreams.h.oauth]\ngrant = \"token_exchange\"\ntoken_endpoint = \"https://as/token\"\nclient_id = \"c\"\nclient_secret = { secret = \"s\" }\n";
    let e = Config::from_toml(exchange).unwrap_err().to_string();
    assert!(e.contains("token_exchange needs the caller's token"), "{e}");
    let ok = format!(
        "[auth]\nmode = \"oauth\"\n[[auth.issuers]]\nissuer = \"https://i\"\nalgorithms = [\"ES256\"]\n{exchange}"
    );
    assert!(Config::from_toml(&ok).is_ok());
}

#[test]
fn tls_settings_are_checked() {
    let up = "[upstreams.a]\ntransport = \"stdio\"\ncommand = \"x\"\n";
    let tls = "[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
    let bad = [
        (format!("{tls}min_version = \"1.1\"\n"), "server.tls.min_version"),
        (format!("{tls}client_auth = \"required\"\n"), "needs client_ca_file"),
        (format!("{tls}client_ca_file = \"ca.pem\"\n"), "client_auth = \"none\""),
        (format!("{tls}client_auth = \"sometimes\"\n"), "unknown variant"),
        (format!("{tls}certfile = \"x\"\n"), "unknown field"),
    ];
    for (t, want) in bad {
        let e = Config::from_toml(&format!("{t}{up}")).unwrap_err().to_string();
        assert!(e.contains(want), "{t}: {e}");
    }
    assert!(Config::from_toml(&format!("{tls}{up}")).is_ok());
    let h = "[upstreams.h]\ntransport = \"http\"\nurl = \"URL\"\n";
    let bad_up = [
        ("https://h/mcp", "client_cert_file = \"c\"\n", "go together"),
        (
            "https://h/mcp",
            "pinned_spki_sha256 = [\"aa\"]\npinned_cert_sha256 = [\"bb\"]\n",
            "not both",
        ),
        (
            "http://127.0.0.1:1/mcp",
            "pinned_spki_sha256 = [\"aa\"]\n",
            "pinning needs an https url",
        ),
        ("https://h/mcp", "only_custom_ca = true\n", "needs ca_file"),
    ];
    for (url, extra, want) in bad_up {
        let text = format!("{}{extra}", h.replace("URL", url));
        let e = Config::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn inspect_settings_are_checked() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert!(c.inspect.enabled, "inspection is on by default");
    let ok = "[inspect]\nsecret = 1\n";
    assert!(
        Config::from_toml(&format!("{ok}{MINIMAL}")).is_err(),
        "unknown keys are errors"
    );
    let good = r#"
[inspect]
packs = ["injection", "pii"]
spotlight = "datamark"
[inspect.results]
prompt_injection = { suspicious = "annotate", malicious = "block" }
secret = "redact"
[inspect.classes.public.arguments]
pii = "confirm"
[inspect.remote]
endpoint = "https://shield.example"
key = { env = "SHIELD_KEY" }
"#;
    let c = Config::from_toml(&format!("{good}{MINIMAL}")).unwrap();
    assert_eq!(
        c.inspect.results.secret,
        Some(LevelActions::both(InspectAction::Redact))
    );
    let bad = [
        ("[inspect]\npacks = [\"injection\", \"malware\"]\n", "unknown pack"),
        ("[inspect]\nsuspicious = 0.9\nmalicious = 0.5\n", "thresholds"),
        ("[inspect]\nmax_scan_bytes = 10\n", "at least 1024"),
        ("[inspect.classes.secret]\n", "must be public"),
        ("[inspect.results]\npii = \"shred\"\n", "unknown action \"shred\""),
        (
            "[inspect.results]\nsecret = { suspicious = \"block\" }\n",
            "both suspicious and malicious",
        ),
        ("[inspect.toxic_flow]\naction = \"redact\"\n", "allow, confirm or block"),
        ("[inspect.remote]\nendpoint = \"http://shield.example\"\n", "https"),
        (
            "[inspect.remote]\nendpoint = \"https://s.example\"\ntimeout_ms = 0\n",
            "positive",
        ),
        (
            "[inspect.remote]\nendpoint = \"https://s.example\"\n[inspect.remote.on_error_upstreams]\nnope = \"open\"\n",
            "no configured upstream",
        ),
    ];
    for (t, want) in bad {
        let e = Config::from_toml(&format!("{t}{MINIMAL}")).unwrap_err().to_string();
        assert!(e.contains(want), "{t}: {e}");
    }
    let e = Config::from_toml(&format!("{MINIMAL}capabilities = [\"telepathy\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown label"), "{e}");
}

#[test]
fn audit_settings_are_checked() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert!(c.audit.enabled, "the audit chain is on by default");
    assert_eq!(c.audit.fsync, FsyncPolicy::Interval);
    let good = r#"
[audit]
fsync = "always"
key = { env = "AUDIT_KEY" }
[audit.payloads.confidential]
arguments = "hash"
results = "redacted"
[[audit.sinks]]
name = "siem"
type = "syslog"
address = "siem.example:6514"
protocol = "tcp"
[[audit.sinks]]
name = "soc"
type = "webhook"
url = "https://soc.example/hook"
secret = { env = "HOOK_SECRET" }
events = ["alert.*"]
[[alerts]]
name = "burst"
on = ["auth.failure"]
threshold = 5
window_s = 60
group_by = "principal.sub"
actions = [{ type = "notify", sink = "soc" }, { type = "block_principal", for_s = 600 }]
"#;
    let c = Config::from_toml(&format!("{good}{MINIMAL}")).unwrap();
    assert_eq!(c.audit.sinks.len(), 2);
    assert_eq!(c.alerts[0].threshold, 5);
    assert_eq!(c.audit.payloads["confidential"].results, PayloadMode::Redacted);
    let bad = [
        ("[audit]\nfsync = \"sometimes\"\n", "unknown variant"),
        ("[audit]\nfsync_interval_ms = 0\n", "1 to 60000"),
        ("[audit]\nsegment_max_bytes = 10\n", "at least 4096"),
        ("[audit]\nqueue = 1\n", "16 to 10000000"),
        ("[audit]\nkey = \"plain-text-key\"\n", "expected `env` or `secret`"),
        (
            "[audit.payloads.public]\narguments = \"everything\"\n",
            "unknown variant",
        ),
        (
            "[[audit.sinks]]\nname = \"s\"\ntype = \"syslog\"\nadress = \"h:1\"\n",
            "unknown field `adress`",
        ),
        (
            "[[audit.sinks]]\nname = \"s\"\ntype = \"carrier_pigeon\"\n",
            "unknown variant",
        ),
        (
            "[[audit.sinks]]\nname = \"s\"\ntype = \"syslog\"\naddress = \"nohost\"\n",
            "host:port",
        ),
        (
            "[[audit.sinks]]\nname = \"s\"\ntype = \"webhook\"\nurl = \"http://soc.example/x\"\n",
            "audit.sinks[0].url",
        ),
        (
            "[[audit.sinks]]\nname = \"s\"\ntype = \"file\"\npath = \"a\"\n[[audit.sinks]]\nname = \"s\"\ntype = \"file\"\npath = \"b\"\n",
            "unique",
        ),
        (
            "[[audit.sinks]]\nname = \"s\"\ntype = \"file\"\npath = \"a\"\nevents = [\"Bad Name\"]\n",
            "not an event name",
        ),
        (
            "[[alerts]]\nname = \"a\"\non = []\nactions = [{ type = \"kill_switch\" }]\n",
            "at least one event",
        ),
        (
            "[[alerts]]\nname = \"a\"\non = [\"x.y\"]\nactions = []\n",
            "at least one action",
        ),
        (
            "[[alerts]]\nname = \"a\"\non = [\"x.y\"]\nthreshold = 0\nactions = [{ type = \"kill_switch\" }]\n",
            "at least 1",
        ),
        (
            "[[alerts]]\nname = \"a\"\non = [\"x.y\"]\nactions = [{ type = \"notify\", sink = \"nope\" }]\n",
            "no sink named",
        ),
        (
            "[[alerts]]\nname = \"a\"\non = [\"x.y\"]\nactions = [{ type = \"launch_missiles\" }]\n",
            "unknown variant",
        ),
        (
            "[[alerts]]\nname = \"a\"\non = [\"x.y\"]\nwhere = { a = { b = 1 } }\nactions = [{ type = \"kill_switch\" }]\n",
            "string, number, bool",
        ),
    ];
    for (text, want) in bad {
        let e = Config::from_toml(&format!("{text}{MINIMAL}")).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn trace_settings_are_checked() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert!(c.traces.endpoint.is_none(), "no export unless an endpoint is set");
    assert!(c.traces.propagate && c.traces.trust_incoming);
    let good = "[traces]\nendpoint = \"https://otel.example/v1/traces\"\nsample_ratio = 0.25\nheaders = { x-api-key = { env = \"OTEL_KEY\" } }\n";
    let c = Config::from_toml(&format!("{good}{MINIMAL}")).unwrap();
    assert_eq!(c.traces.sample_ratio, 0.25);
    let bad = [
        (
            "[traces]\nendpoint = \"http://otel.example/v1/traces\"\n",
            "traces.endpoint",
        ),
        ("[traces]\nendpoint = \"https://u:p@otel.example/\"\n", "credentials"),
        ("[traces]\nsample_ratio = 1.5\n", "0.0 to 1.0"),
        ("[traces]\nsample_ratio = -0.1\n", "0.0 to 1.0"),
        ("[traces]\nsample_ratio = nan\n", "0.0 to 1.0"),
        ("[traces]\nqueue = 0\n", "1 to 1000000"),
        ("[traces]\nservice_name = \"\"\n", "1 to 256"),
        (
            "[traces]\nheaders = { \"bad name\" = { env = \"X\" } }\n",
            "header name",
        ),
        (
            "[traces]\nheaders = { k = \"inline-secret\" }\n",
            "expected `env` or `secret`",
        ),
        ("[traces]\nsampel_ratio = 1.0\n", "unknown field `sampel_ratio`"),
    ];
    for (text, want) in bad {
        let e = Config::from_toml(&format!("{text}{MINIMAL}")).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn sandbox_defaults_are_strict_and_bad_sandbox_settings_name_their_key() {
    let c = Config::from_toml(MINIMAL).unwrap();
    let Transport::Stdio(s) = &c.upstreams["demo"].get_ref().transport else {
        panic!("stdio");
    };
    assert_eq!(s.sandbox.mode, SandboxMode::Strict);
    assert_eq!(s.sandbox.network, NetworkMode::None);
    assert!(s.sandbox.auto_paths);
    assert_eq!(s.sandbox.limits.processes, 256);
    for (extra, key) in [
        (
            "sandbox = { read_write = [\"relative/dir\"] }",
            "upstreams.demo.sandbox",
        ),
        (
            "sandbox = { egress = [\"api.example.com:443\"] }",
            "upstreams.demo.sandbox.egress",
        ),
        (
            "sandbox = { network = \"egress\", egress = [\"no-port\"] }",
            "upstreams.demo.sandbox.egress",
        ),
        (
            "sandbox = { limits = { processes = 1 } }",
            "upstreams.demo.sandbox.limits.processes",
        ),
        (
            "sandbox = { limits = { open_files = 3 } }",
            "upstreams.demo.sandbox.limits.open_files",
        ),
    ] {
        let err = Config::from_toml(&format!("{MINIMAL}{extra}\n")).unwrap_err();
        assert!(err.0.iter().any(|e| e.key == key), "{extra}: {err}");
    }
    for bad in ["sandbox = { mode = \"lenient\" }", "sandbox = { netwrok = \"host\" }"] {
        assert!(Config::from_toml(&format!("{MINIMAL}{bad}\n")).is_err(), "{bad}");
    }
}
