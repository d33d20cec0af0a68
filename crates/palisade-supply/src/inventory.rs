//! The inventory (P2): the servers of a configuration with their commands,
//! versions, pins (and whether they verify now), sandbox profiles and tools,
//! as JSON or as a CycloneDX 1.6 BOM. No secret leaves: environment variables
//! and headers by name only, URLs without credentials or query, and values
//! of secret-looking arguments replaced.

use std::collections::BTreeMap;
use std::path::Path;

use palisade_config::{Config, SandboxConfig, StdioMode, Transport};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{PinError, verify_launch};

/// The whole inventory.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub generated_at: String,
    pub palisade_version: String,
    pub config: String,
    pub require_launch_pins: bool,
    /// Where tool pins were read from, or why they were not.
    pub tool_store: String,
    pub upstreams: Vec<Upstream>,
}

/// One upstream server.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    pub name: String,
    pub transport: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Names of the variables given to the process (values are never listed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_passthrough: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_mode: Option<&'static str>,
    /// The endpoint without credentials, query or fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Names of the headers the gateway sends as its own credential.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_names: Vec<String>,
    pub aggregate: bool,
    pub classification: String,
    pub tags: Vec<String>,
    pub capabilities: Vec<String>,
    pub packages: Vec<Package>,
    pub pin: PinStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    pub tools: Vec<Tool>,
}

/// A pinned package.
#[derive(Debug, Clone, Serialize)]
pub struct Package {
    pub ecosystem: &'static str,
    pub name: String,
    pub version: String,
    pub purl: String,
    /// npm: the registry integrity (`sha512-…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<String>,
    /// PyPI: `sha256:` of the wheel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wheel: Option<String>,
    pub tree: String,
    pub location: String,
}

/// The launch pin of an upstream and the result of checking it now.
#[derive(Debug, Clone, Serialize)]
pub struct PinStatus {
    /// `verified`, `mismatch`, `error`, `unpinned`, `not_checked` or `not_applicable` (HTTP).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The sandbox profile of a launched server.
#[derive(Debug, Clone, Serialize)]
pub struct Sandbox {
    pub mode: &'static str,
    pub network: &'static str,
    pub egress: Vec<String>,
    pub read_only: Vec<String>,
    pub read_write: Vec<String>,
    pub auto_paths: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub seccomp: &'static str,
    pub limits: BTreeMap<&'static str, u64>,
}

/// A tool (or the server instructions) with its pin and approval.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub kind: String,
    pub name: String,
    pub state: String,
    /// SHA-256 of the definition last served.
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_at_unix: Option<i64>,
    pub quarantined: bool,
    pub high_risk: bool,
}

/// Builds the inventory of `config`. With `check_pins`, every pinned server's
/// pins are verified now (reads the installs). `tools` maps upstream names to
/// their tools from the pin store.
pub fn build(
    config: &Config,
    config_path: &Path,
    check_pins: bool,
    tool_store: String,
    mut tools: BTreeMap<String, Vec<Tool>>,
) -> Inventory {
    let mut upstreams = Vec::new();
    for (name, up) in &config.upstreams {
        let up = up.get_ref();
        let mut u = Upstream {
            name: name.clone(),
            transport: "stdio",
            command: None,
            args: Vec::new(),
            env_keys: Vec::new(),
            env_passthrough: Vec::new(),
            cwd: None,
            process_mode: None,
            url: None,
            header_names: Vec::new(),
            aggregate: up.aggregate,
            classification: up.classification.clone(),
            tags: up.tags.clone(),
            capabilities: up.capabilities.clone(),
            packages: Vec::new(),
            pin: PinStatus {
                status: "not_applicable",
                executable: None,
                verified: Vec::new(),
                detail: None,
            },
            sandbox: None,
            tools: tools.remove(name).unwrap_or_default(),
        };
        match &up.transport {
            Transport::Stdio(s) => {
                u.command = Some(s.command.clone());
                u.args = redact_args(&s.args);
                u.env_keys = s.env.keys().cloned().collect();
                u.env_passthrough = s.env_passthrough.clone();
                u.cwd = s.cwd.as_ref().map(|c| c.display().to_string());
                u.process_mode = Some(match s.mode {
                    StdioMode::Shared => "shared",
                    StdioMode::PerSession => "per_session",
                });
                u.sandbox = Some(sandbox(&s.sandbox));
                u.pin = match &s.pin {
                    None => PinStatus {
                        status: "unpinned",
                        executable: None,
                        verified: Vec::new(),
                        detail: config
                            .integrity
                            .require_launch_pins
                            .then(|| "integrity.require_launch_pins is set: this server will not start".into()),
                    },
                    Some(p) => {
                        if let Some(n) = &p.npm {
                            u.packages.push(Package {
                                ecosystem: "npm",
                                name: n.package.clone(),
                                version: n.version.clone(),
                                purl: npm_purl(&n.package, &n.version),
                                integrity: Some(n.integrity.clone()),
                                wheel: None,
                                tree: n.tree.clone(),
                                location: n.prefix.display().to_string(),
                            });
                        }
                        if let Some(y) = &p.pypi {
                            u.packages.push(Package {
                                ecosystem: "pypi",
                                name: y.package.clone(),
                                version: y.version.clone(),
                                purl: pypi_purl(&y.package, &y.version),
                                integrity: None,
                                wheel: Some(y.wheel.clone()),
                                tree: y.tree.clone(),
                                location: y.venv.display().to_string(),
                            });
                        }
                        let mut st = PinStatus {
                            status: "not_checked",
                            executable: p.executable.clone(),
                            verified: Vec::new(),
                            detail: None,
                        };
                        if check_pins {
                            match verify_launch(s) {
                                Ok(v) => {
                                    st.status = "verified";
                                    st.verified = v.map(|v| v.items).unwrap_or_default();
                                }
                                Err(e) => {
                                    st.status = if matches!(e, PinError::Mismatch(_)) {
                                        "mismatch"
                                    } else {
                                        "error"
                                    };
                                    st.detail = Some(e.to_string());
                                }
                            }
                        }
                        st
                    }
                };
            }
            Transport::Http(h) => {
                u.transport = "http";
                u.url = Some(sanitize_url(&h.url));
                u.header_names = h.headers.keys().cloned().collect();
            }
        }
        upstreams.push(u);
    }
    Inventory {
        generated_at: now_rfc3339(),
        palisade_version: env!("CARGO_PKG_VERSION").to_owned(),
        config: config_path.display().to_string(),
        require_launch_pins: config.integrity.require_launch_pins,
        tool_store,
        upstreams,
    }
}

fn sandbox(s: &SandboxConfig) -> Sandbox {
    let l = &s.limits;
    Sandbox {
        mode: s.mode.as_str(),
        network: s.network.as_str(),
        egress: s.egress.clone(),
        read_only: s.read_only.iter().map(|p| p.display().to_string()).collect(),
        read_write: s.read_write.iter().map(|p| p.display().to_string()).collect(),
        auto_paths: s.auto_paths,
        user: s.user.clone(),
        group: s.group.clone(),
        seccomp: match s.seccomp {
            palisade_config::SeccompProfile::Default => "default",
            palisade_config::SeccompProfile::Off => "off",
        },
        limits: BTreeMap::from([
            ("address_space_mb", l.address_space_mb),
            ("memory_mb", l.memory_mb),
            ("cpu_seconds", l.cpu_seconds),
            ("open_files", l.open_files),
            ("processes", l.processes),
            ("file_size_mb", l.file_size_mb),
        ]),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `pkg:npm/%40scope/name@version`.
pub fn npm_purl(package: &str, version: &str) -> String {
    let name = match package.strip_prefix('@') {
        Some(rest) => format!("%40{rest}"),
        None => package.to_owned(),
    };
    format!("pkg:npm/{name}@{}", pct(version))
}

/// `pkg:pypi/name@version` (name normalized as PyPI does).
pub fn pypi_purl(package: &str, version: &str) -> String {
    format!("pkg:pypi/{}@{}", crate::pypi::normalize(package), pct(version))
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Drops credentials, query and fragment from a URL.
pub fn sanitize_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..cut];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            let (auth, path) = rest.split_at(end);
            let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api-key",
    "api_key",
    "key",
    "auth",
    "credential",
    "bearer",
    "cookie",
    "session",
];

fn secretish(name: &str) -> bool {
    let n = name.trim_start_matches('-').to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| n.contains(w))
}

/// Arguments with the values of secret-looking options replaced by
/// `<redacted>` and URLs without credentials or query.
pub fn redact_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("<redacted>".to_owned());
            hide_next = false;
            continue;
        }
        if let Some((k, _)) = a.split_once('=')
            && secretish(k)
        {
            out.push(format!("{k}=<redacted>"));
            continue;
        }
        if a.starts_with('-') && secretish(a) {
            hide_next = true;
            out.push(a.clone());
            continue;
        }
        if a.contains("://") {
            out.push(sanitize_url(a));
            continue;
        }
        out.push(a.clone());
    }
    out
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // Never expected; a time-based fallback keeps the serial unique enough.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        b.copy_from_slice(&t);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn prop(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

fn hash_from_pin(alg: &str, pin: &str) -> Option<Value> {
    pin.strip_prefix("sha256:").map(|h| json!({ "alg": alg, "content": h }))
}

/// The inventory as a CycloneDX 1.6 JSON BOM.
pub fn cyclonedx(inv: &Inventory) -> Value {
    let gateway_ref = "palisade-gateway";
    let mut components = Vec::new();
    let mut services = Vec::new();
    let mut dependencies = Vec::new();
    let mut gateway_deps = Vec::new();
    for u in &inv.upstreams {
        let bom_ref = format!("upstream:{}", u.name);
        gateway_deps.push(json!(bom_ref));
        let mut props = vec![prop("palisade:transport", u.transport)];
        if !u.classification.is_empty() {
            props.push(prop("palisade:classification", u.classification.clone()));
        }
        for t in &u.tags {
            props.push(prop("palisade:tag", t.clone()));
        }
        for c in &u.capabilities {
            props.push(prop("palisade:capability", c.clone()));
        }
        for t in &u.tools {
            let mut v = format!("{} {} {}", t.kind, t.state, t.digest);
            if let Some(a) = &t.approved_digest {
                v.push_str(&format!(" approved={a}"));
            }
            if let Some(b) = &t.approved_by {
                v.push_str(&format!(" by={b}"));
            }
            props.push(prop(&format!("palisade:tool:{}", t.name), v));
        }
        if u.transport == "http" {
            let mut s = json!({
                "bom-ref": bom_ref,
                "name": u.name,
                "endpoints": u.url.iter().collect::<Vec<_>>(),
                "authenticated": !u.header_names.is_empty(),
                "x-trust-boundary": true,
                "properties": props,
            });
            if !u.header_names.is_empty()
                && let Some(a) = s["properties"].as_array_mut()
            {
                a.push(prop("palisade:header_names", u.header_names.join(",")));
            }
            services.push(s);
            continue;
        }
        if let Some(c) = &u.command {
            props.push(prop("palisade:command", c.clone()));
        }
        if !u.args.is_empty() {
            props.push(prop(
                "palisade:args",
                serde_json::to_string(&u.args).unwrap_or_default(),
            ));
        }
        if !u.env_keys.is_empty() {
            props.push(prop("palisade:env_keys", u.env_keys.join(",")));
        }
        if let Some(m) = u.process_mode {
            props.push(prop("palisade:process_mode", m));
        }
        props.push(prop("palisade:pin.status", u.pin.status));
        if let Some(d) = &u.pin.detail {
            props.push(prop("palisade:pin.detail", d.clone()));
        }
        if let Some(sb) = &u.sandbox {
            props.push(prop("palisade:sandbox.mode", sb.mode));
            props.push(prop("palisade:sandbox.network", sb.network));
            props.push(prop("palisade:sandbox.seccomp", sb.seccomp));
            props.push(prop("palisade:sandbox.auto_paths", sb.auto_paths.to_string()));
            for e in &sb.egress {
                props.push(prop("palisade:sandbox.egress", e.clone()));
            }
            for p in &sb.read_only {
                props.push(prop("palisade:sandbox.read_only", p.clone()));
            }
            for p in &sb.read_write {
                props.push(prop("palisade:sandbox.read_write", p.clone()));
            }
            if let Some(user) = &sb.user {
                props.push(prop("palisade:sandbox.user", user.clone()));
            }
            for (k, v) in &sb.limits {
                props.push(prop(&format!("palisade:sandbox.limits.{k}"), v.to_string()));
            }
        }
        let mut nested = Vec::new();
        let mut deps = Vec::new();
        for p in &u.packages {
            let pref = format!("{}:{}", u.name, p.purl);
            deps.push(json!(pref));
            let mut hashes = Vec::new();
            if let Some(i) = &p.integrity
                && let Ok(b) = crate::npm::integrity_bytes(i)
            {
                hashes.push(json!({ "alg": "SHA-512", "content": hex::encode(b) }));
            }
            if let Some(w) = &p.wheel
                && let Some(h) = hash_from_pin("SHA-256", w)
            {
                hashes.push(h);
            }
            nested.push(json!({
                "type": "library",
                "bom-ref": pref,
                "name": p.name,
                "version": p.version,
                "purl": p.purl,
                "hashes": hashes,
                "properties": [
                    prop("palisade:ecosystem", p.ecosystem),
                    prop("palisade:tree", p.tree.clone()),
                    prop("palisade:location", p.location.clone()),
                ],
            }));
            dependencies.push(json!({ "ref": pref, "dependsOn": [] }));
        }
        let mut comp = json!({
            "type": "application",
            "bom-ref": bom_ref,
            "name": u.name,
            "description": "MCP server launched over stdio by the Palisade gateway",
            "properties": props,
        });
        if let Some(v) = u.packages.first() {
            comp["version"] = json!(v.version);
        }
        if let Some(h) = u.pin.executable.as_deref().and_then(|e| hash_from_pin("SHA-256", e)) {
            comp["hashes"] = json!([h]);
        }
        if !nested.is_empty() {
            comp["components"] = json!(nested);
        }
        components.push(comp);
        dependencies.push(json!({ "ref": bom_ref, "dependsOn": deps }));
    }
    for s in &services {
        dependencies.push(json!({ "ref": s["bom-ref"], "dependsOn": [] }));
    }
    dependencies.insert(0, json!({ "ref": gateway_ref, "dependsOn": gateway_deps }));
    let mut bom = json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": random_uuid(),
        "version": 1,
        "metadata": {
            "timestamp": inv.generated_at,
            "tools": { "components": [ {
                "type": "application",
                "name": "palisade",
                "version": inv.palisade_version,
                "description": "palisade inventory",
            } ] },
            "component": {
                "type": "application",
                "bom-ref": gateway_ref,
                "name": "palisade-gateway",
                "version": inv.palisade_version,
                "properties": [
                    prop("palisade:config", inv.config.clone()),
                    prop("palisade:require_launch_pins", inv.require_launch_pins.to_string()),
                    prop("palisade:tool_store", inv.tool_store.clone()),
                ],
            },
        },
        "components": components,
        "dependencies": dependencies,
    });
    if !services.is_empty() {
        bom["services"] = json!(services);
    }
    bom
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_args_lose_their_secrets() {
        assert_eq!(
            sanitize_url("https://user:pw@api.example.com:8443/mcp?token=abc#frag"),
            "https://api.example.com:8443/mcp"
        );
        assert_eq!(sanitize_url("http://h/p"), "http://h/p");
        let args: Vec<String> = [
            "--token",
            "s3cr3t",
            "--api-key=abc",
            "API_KEY=xyz",
            "--root",
            "/data",
            "https://u:p@h/x?sig=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = redact_args(&args).join(" ");
        for leak in ["s3cr3t", "abc", "xyz", "u:p", "sig=1"] {
            assert!(!out.contains(leak), "{leak} in {out}");
        }
        assert!(out.contains("--root /data"), "{out}");
    }

    #[test]
    fn purls() {
        assert_eq!(
            npm_purl("@modelcontextprotocol/server-filesystem", "2026.8.31"),
            "pkg:npm/%40modelcontextprotocol/server-filesystem@2026.8.31"
        );
        assert_eq!(npm_purl("left-pad", "1.0.0+b"), "pkg:npm/left-pad@1.0.0%2Bb");
        assert_eq!(pypi_purl("MCP_Server.Fetch", "1.0"), "pkg:pypi/mcp-server-fetch@1.0");
    }

    #[test]
    fn uuid_shape() {
        let u = random_uuid();
        assert_eq!(u.len(), 45);
        assert_eq!(&u[23..24], "4");
        assert_ne!(u, random_uuid());
    }
}
