//! Decision cases for `palisade policy test`: a YAML file of requests and the
//! decisions the policies must give them.
//!
//! ```yaml
//! policies: .                 # optional: the policy directory, relative to this file
//! servers:                    # optional: server attributes, as in the configuration
//!   github: { classification: internal, tags: [team-a] }
//! cases:
//!   - name: reader may read
//!     principal: { subject: alice, groups: [readers], scopes: [mcp:read] }
//!     action: call_tool       # a Cedar action id, or an MCP method (tools/call)
//!     resource: { server: github, tool: get_issue, annotations: { readOnlyHint: true } }
//!     context: { arguments: { owner: acme } }
//!     expect: allow           # or deny
//!     policies: [readers-read]                # optional: the determining policies
//!     obligations: { confirm: false }         # optional: each field checked when present
//! ```
//!
//! Unknown fields are errors.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{Action, Context, Decision, PolicyEngine, PolicyError, Principal, Request, Resource, ServerInfo};

/// Cases files larger than this are refused.
pub const MAX_CASES_BYTES: usize = 4 * 1024 * 1024;

/// A whole cases file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// The policy directory, relative to the cases file.
    #[serde(default)]
    pub policies: Option<String>,
    /// Server attributes by server name.
    #[serde(default)]
    pub servers: HashMap<String, ServerSpec>,
    pub cases: Vec<Case>,
}

/// Attributes of one server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(default)]
    pub classification: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One decision case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub principal: PrincipalSpec,
    pub action: String,
    pub resource: ResourceSpec,
    #[serde(default)]
    pub context: ContextSpec,
    pub expect: Expect,
    /// The determining policies (compared as a set), when present.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// Expected obligations; each field is checked when present.
    #[serde(default)]
    pub obligations: Option<ObligationsSpec>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        })
    }
}

fn yes() -> bool {
    true
}

/// The caller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    #[serde(default)]
    pub issuer: String,
    pub subject: String,
    #[serde(default = "yes")]
    pub authenticated: bool,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub mfa: bool,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub claims: Option<Map<String, Value>>,
}

/// The resource: a server alone, or one of `tool`, `uri`, `prompt` in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    pub server: String,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub annotations: Option<Value>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
}

/// The context; `route` defaults to the resource's server, `now` to the current time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    #[serde(default)]
    pub arguments: Option<Value>,
    #[serde(default)]
    pub now: Option<u64>,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub risk: u32,
    #[serde(default)]
    pub flow_labels: Vec<String>,
}

/// Expected obligations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObligationsSpec {
    #[serde(default)]
    pub confirm: Option<bool>,
    #[serde(default)]
    pub mfa: Option<bool>,
    #[serde(default)]
    pub step_up: Option<Vec<String>>,
    #[serde(default)]
    pub redact: Option<Vec<String>>,
}

impl CasesFile {
    /// Parses a cases file (at most [`MAX_CASES_BYTES`]; unknown fields are errors)
    /// and checks every case's action and resource.
    pub fn parse(yaml: &str) -> Result<CasesFile, PolicyError> {
        if yaml.len() > MAX_CASES_BYTES {
            return Err(PolicyError::Cases(format!(
                "the file is larger than {MAX_CASES_BYTES} bytes"
            )));
        }
        let file: CasesFile = serde_saphyr::from_str(yaml).map_err(|e| PolicyError::Cases(e.to_string()))?;
        for (i, case) in file.cases.iter().enumerate() {
            let action = case_action(&case.action).map_err(|e| case_error(i, case, &e))?;
            case.resource.check(action).map_err(|e| case_error(i, case, &e))?;
        }
        Ok(file)
    }

    /// The server attributes for [`PolicyEngine::load_dir`].
    pub fn server_infos(&self) -> HashMap<String, ServerInfo> {
        self.servers
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    ServerInfo {
                        classification: s.classification.clone(),
                        tags: s.tags.clone(),
                    },
                )
            })
            .collect()
    }
}

fn case_error(i: usize, case: &Case, e: &str) -> PolicyError {
    PolicyError::Cases(format!("case {} ({:?}): {e}", i + 1, case.name))
}

/// A Cedar action id (`call_tool`) or an MCP method (`tools/call`).
fn case_action(s: &str) -> Result<Action, String> {
    if let Some(a) = Action::from_cedar_id(s) {
        return Ok(a);
    }
    match Action::from_method(s) {
        Action::Other => Err(format!("unknown action {s:?}")),
        a => Ok(a),
    }
}

impl ResourceSpec {
    fn check(&self, action: Action) -> Result<(), String> {
        let given = [self.tool.is_some(), self.uri.is_some(), self.prompt.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given > 1 {
            return Err("resource: give at most one of tool, uri, prompt".into());
        }
        if self.annotations.is_some() && self.tool.is_none() {
            return Err("resource: annotations need a tool".into());
        }
        let kind = if self.tool.is_some() {
            "tool"
        } else if self.uri.is_some() {
            "uri"
        } else if self.prompt.is_some() {
            "prompt"
        } else {
            "server"
        };
        let fits = match action {
            Action::CallTool => kind == "tool",
            Action::ReadResource | Action::Subscribe | Action::Unsubscribe => kind == "uri",
            Action::GetPrompt => kind == "prompt",
            Action::Complete => kind == "uri" || kind == "prompt",
            _ => kind == "server",
        };
        if fits {
            Ok(())
        } else {
            let need = match action {
                Action::CallTool => "a tool",
                Action::ReadResource | Action::Subscribe | Action::Unsubscribe => "a uri",
                Action::GetPrompt => "a prompt",
                Action::Complete => "a uri or a prompt",
                _ => "only a server",
            };
            Err(format!("resource: {} needs {need}", action.cedar_id()))
        }
    }

    fn resource(&self) -> Resource<'_> {
        let server = self.server.as_str();
        if let Some(tool) = &self.tool {
            Resource::Tool {
                server,
                tool,
                annotations: self.annotations.as_ref(),
            }
        } else if let Some(uri) = &self.uri {
            Resource::Resource { server, uri }
        } else if let Some(prompt) = &self.prompt {
            Resource::Prompt { server, prompt }
        } else {
            Resource::Server { server }
        }
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub expected: Expect,
    pub actual: Decision,
    /// What differed (empty when passed).
    pub mismatches: Vec<String>,
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let got = if self.actual.allowed { "allow" } else { "deny" };
        write!(
            f,
            "{} {}: expected {}, got {} [{}]",
            if self.passed { "PASS" } else { "FAIL" },
            self.name,
            self.expected,
            got,
            self.actual.policies.join(", ")
        )?;
        let o = &self.actual.obligations;
        if self.actual.allowed && !o.is_empty() {
            let mut parts = Vec::new();
            if o.confirm {
                parts.push("confirm".to_string());
            }
            if o.mfa {
                parts.push("mfa".to_string());
            }
            if !o.step_up_scopes.is_empty() {
                parts.push(format!("step_up={}", o.step_up_scopes.join(" ")));
            }
            if !o.redact.is_empty() {
                parts.push(format!("redact={}", o.redact.join(",")));
            }
            write!(f, " obligations: {}", parts.join("; "))?;
        }
        for m in &self.mismatches {
            write!(f, "\n    {m}")?;
        }
        for e in &self.actual.errors {
            write!(f, "\n    error: {e}")?;
        }
        Ok(())
    }
}

/// Every case's outcome, in file order.
#[derive(Debug, Clone, Default)]
pub struct CaseReport {
    pub results: Vec<CaseResult>,
}

impl CaseReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    pub fn all_passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            writeln!(f, "{r}")?;
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the cases of `yaml` against `engine` (whose servers should come from
/// [`CasesFile::server_infos`]).
pub fn run_cases(engine: &PolicyEngine, yaml: &str) -> Result<CaseReport, PolicyError> {
    let file = CasesFile::parse(yaml)?;
    let mut report = CaseReport::default();
    for case in &file.cases {
        report.results.push(run_case(engine, case)?);
    }
    Ok(report)
}

fn run_case(engine: &PolicyEngine, case: &Case) -> Result<CaseResult, PolicyError> {
    let action = case_action(&case.action).map_err(PolicyError::Cases)?;
    let p = &case.principal;
    let c = &case.context;
    let req = Request {
        principal: Principal {
            issuer: &p.issuer,
            subject: &p.subject,
            authenticated: p.authenticated,
            client_id: p.client_id.as_deref(),
            groups: &p.groups,
            roles: &p.roles,
            scopes: &p.scopes,
            mfa: p.mfa,
            tenant: p.tenant.as_deref(),
            claims: p.claims.as_ref(),
        },
        action,
        resource: case.resource.resource(),
        context: Context {
            arguments: c.arguments.as_ref(),
            now_unix: c.now.unwrap_or_else(now),
            route: c.route.as_deref().unwrap_or(&case.resource.server),
            risk: c.risk,
            flow_labels: &c.flow_labels,
        },
    };
    let actual = engine.authorize(&req);
    let mut mismatches = Vec::new();
    if actual.allowed != (case.expect == Expect::Allow) {
        mismatches.push(format!(
            "decision: expected {}, got {}",
            case.expect,
            if actual.allowed { "allow" } else { "deny" }
        ));
    }
    if let Some(want) = &case.policies {
        let mut want = want.clone();
        want.sort();
        want.dedup();
        if want != actual.policies {
            mismatches.push(format!(
                "policies: expected [{}], got [{}]",
                want.join(", "),
                actual.policies.join(", ")
            ));
        }
    }
    if let Some(o) = &case.obligations {
        let got = &actual.obligations;
        let mut check = |what: &str, want: String, got: String| {
            if want != got {
                mismatches.push(format!("obligations.{what}: expected {want}, got {got}"));
            }
        };
        if let Some(w) = o.confirm {
            check("confirm", w.to_string(), got.confirm.to_string());
        }
        if let Some(w) = o.mfa {
            check("mfa", w.to_string(), got.mfa.to_string());
        }
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            format!("[{}]", v.join(", "))
        };
        if let Some(w) = &o.step_up {
            check("step_up", sorted(w), sorted(&got.step_up_scopes));
        }
        if let Some(w) = &o.redact {
            check("redact", sorted(w), sorted(&got.redact));
        }
    }
    Ok(CaseResult {
        name: case.name.clone(),
        passed: mismatches.is_empty(),
        expected: case.expect,
        actual,
        mismatches,
    })
}
