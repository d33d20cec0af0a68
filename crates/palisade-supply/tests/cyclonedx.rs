//! The inventory's CycloneDX output validated against the official CycloneDX
//! 1.6 JSON schema. The schema is not copied into the repository: the test
//! fetches the npm package `@cyclonedx/cyclonedx-library` (exact version,
//! integrity checked) with `npm pack` (npm's cache makes later runs offline)
//! and reads the schema files from the tarball. Set
//! `PALISADE_CYCLONEDX_SCHEMA_DIR` to a folder holding
//! `bom-1.6.SNAPSHOT.schema.json`, `spdx.SNAPSHOT.schema.json` and
//! `jsf-0.82.SNAPSHOT.schema.json` to use those instead.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_config::Config;
use palisade_supply::inventory::{self, Tool};
use serde_json::Value;

const LIB: &str = "@cyclonedx/cyclonedx-library@10.3.0";
const LIB_INTEGRITY: &str =
    "sha512-RIT28sp1U0PCHaaeF3yNRwk6Jig/XJ8UsYAVOMYaHQ+0VVOvsjcp0PTWQFLUqJFF8XMud+Kdq6G+wtDAh+QJFA==";
const FILES: [&str; 3] = [
    "bom-1.6.SNAPSHOT.schema.json",
    "spdx.SNAPSHOT.schema.json",
    "jsf-0.82.SNAPSHOT.schema.json",
];

fn schemas() -> BTreeMap<String, Value> {
    if let Some(dir) = std::env::var_os("PALISADE_CYCLONEDX_SCHEMA_DIR") {
        return FILES
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(Path::new(&dir).join(f)).expect("schema file");
                (f.to_string(), serde_json::from_str(&text).expect("schema JSON"))
            })
            .collect();
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("npm")
        .args(["pack", LIB, "--silent", "--pack-destination"])
        .arg(tmp.path())
        .current_dir(tmp.path())
        .output()
        .expect("npm is needed to fetch the CycloneDX schema (or set PALISADE_CYCLONEDX_SCHEMA_DIR)");
    assert!(
        out.status.success(),
        "npm pack {LIB} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tgz: PathBuf = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .expect("a tarball");
    let bytes = std::fs::read(&tgz).unwrap();
    let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &bytes);
    assert_eq!(
        palisade_supply::npm::integrity_string(sha.as_ref()),
        LIB_INTEGRITY,
        "the schema package does not have the pinned integrity"
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut out = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
        if path.starts_with("package/res/schema") && FILES.contains(&name.as_str()) {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            out.insert(name, serde_json::from_str(&s).unwrap());
        }
    }
    assert_eq!(out.len(), 3, "schema files missing from {LIB}");
    out
}

fn validator(schemas: &BTreeMap<String, Value>) -> jsonschema::Validator {
    // The BOM schema refers to the others relative to its $id.
    let mut registry = jsonschema::Registry::new();
    for f in &FILES[1..] {
        registry = registry
            .add(format!("http://cyclonedx.org/schema/{f}"), schemas[*f].clone())
            .expect("resource");
    }
    let registry = registry.prepare().expect("registry");
    jsonschema::options()
        .with_registry(&registry)
        .build(&schemas[FILES[0]])
        .expect("the CycloneDX schema compiles")
}

fn config() -> Config {
    let text = format!(
        r#"
[integrity]
require_launch_pins = false

[upstreams.fs]
transport = "stdio"
command = "node"
args = ["/opt/mcp/fs/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", "--token", "hunter2secret", "/srv/data"]
env = {{ API_TOKEN = "plain-secret-value", LOG = "debug" }}
sandbox = {{ read_write = ["/srv/data"], network = "egress", egress = ["api.github.com:443"] }}
[upstreams.fs.pin]
executable = "sha256:{exe}"
[upstreams.fs.pin.npm]
package = "@modelcontextprotocol/server-filesystem"
version = "2026.8.31"
integrity = "sha512-kKaFkyAh6oipvc9+EAbJ552JafnMnOq5nzmzWkp1jJdBhTAAGpmIpWihUG1+rfNhmEFM98gUZDdCHCDD4v6a7Q=="
prefix = "/opt/mcp/fs"
tree = "sha256:{tree}"

[upstreams.fetch]
transport = "stdio"
command = "/opt/mcp/venv/bin/mcp-server-fetch"
[upstreams.fetch.pin.pypi]
package = "mcp-server-fetch"
version = "1.2.3"
wheel = "sha256:{wheel}"
venv = "/opt/mcp/venv"
tree = "sha256:{tree}"

[upstreams.plain]
transport = "stdio"
command = "python3"
args = ["server.py"]

[upstreams.remote]
transport = "http"
url = "https://api.example.com/mcp?sig=urlsecret"
headers = {{ Authorization = {{ env = "REMOTE_TOKEN" }} }}
"#,
        exe = "1".repeat(64),
        tree = "2".repeat(64),
        wheel = "3".repeat(64)
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn tools() -> BTreeMap<String, Vec<Tool>> {
    BTreeMap::from([(
        "fs".to_string(),
        vec![Tool {
            kind: "tool".into(),
            name: "list_directory".into(),
            state: "approved".into(),
            digest: "4".repeat(64),
            approved_digest: Some("4".repeat(64)),
            approved_by: Some("ops@host".into()),
            approved_at_unix: Some(1_790_000_000),
            quarantined: false,
            high_risk: false,
        }],
    )])
}

#[test]
fn cyclonedx_output_validates_against_the_1_6_schema() {
    let schemas = schemas();
    let v = validator(&schemas);
    let inv = inventory::build(
        &config(),
        Path::new("/etc/palisade.toml"),
        true,
        "store.db".into(),
        tools(),
    );
    let bom = inventory::cyclonedx(&inv);
    let errors: Vec<String> = v
        .iter_errors(&bom)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "schema errors: {errors:#?}\n{bom:#}");

    // The validator is not vacuous: a broken BOM fails.
    let mut broken = bom.clone();
    broken["components"][0]["type"] = "spaceship".into();
    assert!(!v.is_valid(&broken));
    let mut broken = bom.clone();
    broken["components"][0]["components"][0]["hashes"][0]["content"] = "xyz".into();
    assert!(!v.is_valid(&broken));

    // What it says.
    let text = bom.to_string();
    for secret in ["plain-secret-value", "hunter2secret", "urlsecret"] {
        assert!(!text.contains(secret), "{secret} leaked into the BOM");
    }
    assert_eq!(bom["specVersion"], "1.6");
    assert!(bom["serialNumber"].as_str().unwrap().starts_with("urn:uuid:"));
    let fs = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "fs")
        .unwrap();
    let npm = &fs["components"][0];
    assert_eq!(
        npm["purl"],
        "pkg:npm/%40modelcontextprotocol/server-filesystem@2026.8.31"
    );
    assert_eq!(npm["hashes"][0]["alg"], "SHA-512");
    assert_eq!(npm["hashes"][0]["content"].as_str().unwrap().len(), 128);
    assert_eq!(fs["hashes"][0]["alg"], "SHA-256");
    let props: Vec<(String, String)> = fs["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has = |k: &str, v: &str| props.iter().any(|(a, b)| a == k && b.contains(v));
    assert!(has("palisade:sandbox.network", "egress"));
    assert!(has("palisade:sandbox.egress", "api.github.com:443"));
    assert!(has("palisade:sandbox.read_write", "/srv/data"));
    assert!(has("palisade:tool:list_directory", "approved"));
    assert!(has("palisade:env_keys", "API_TOKEN"));
    // The install is absent here: the pin is reported as not verifying.
    assert!(
        has("palisade:pin.status", "error") || has("palisade:pin.status", "mismatch"),
        "{props:?}"
    );
    let fetch = bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "fetch")
        .unwrap();
    assert_eq!(fetch["components"][0]["purl"], "pkg:pypi/mcp-server-fetch@1.2.3");
    let svc = &bom["services"][0];
    assert_eq!(svc["name"], "remote");
    assert_eq!(svc["endpoints"][0], "https://api.example.com/mcp");
    assert_eq!(svc["authenticated"], true);
    let deps = bom["dependencies"].as_array().unwrap();
    let root = deps.iter().find(|d| d["ref"] == "palisade-gateway").unwrap();
    assert_eq!(root["dependsOn"].as_array().unwrap().len(), 4);
}
