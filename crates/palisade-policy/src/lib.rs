//! Palisade's authorization engine.
//!
//! Every MCP operation is one Cedar request: the caller is the principal
//! (`Palisade::User`), the MCP method the action, the server, tool, resource or
//! prompt the resource, and the route, time, risk score, data-flow labels and
//! arguments the context. Decisions follow Cedar: default deny, a matching
//! `forbid` beats any `permit`. Policies are `*.cedar` files validated in
//! strict mode against [`SCHEMA`]; a set that fails to parse or validate never
//! takes effect, and on reload the previous set stays active.
//!
//! Obligations ride on permit policies as annotations: `@confirm("true")`,
//! `@step_up("scope …")`, `@mfa("true")`, `@redact("pii,secret")`. A policy's
//! id is its `@id("…")` annotation, else `<file stem>:<index>`.
//!
//! See `docs/policy.md` for the model, the examples and the CLI.

mod args;
pub mod cases;
mod compile;
mod entities;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{Authorizer, Decision as CedarDecision};

pub use args::{MAX_ARG_DEPTH, MAX_ARG_KEY_BYTES, MAX_ARG_TAGS, MAX_ARG_VALUE_BYTES};
pub use compile::{MAX_POLICY_FILE_BYTES, MAX_POLICY_FILES};

use compile::Compiled;

/// The Cedar schema of Palisade's requests (human-readable Cedar schema syntax,
/// namespace `Palisade`). `palisade policy schema` prints it.
pub const SCHEMA: &str = include_str!("../schema/palisade.cedarschema");

/// An MCP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CallTool,
    ListTools,
    ReadResource,
    ListResources,
    ListResourceTemplates,
    Subscribe,
    Unsubscribe,
    GetPrompt,
    ListPrompts,
    Complete,
    SetLogLevel,
    Ping,
    Initialize,
    Other,
}

impl Action {
    /// Every action, `Other` last.
    pub const ALL: [Action; 14] = [
        Action::CallTool,
        Action::ListTools,
        Action::ReadResource,
        Action::ListResources,
        Action::ListResourceTemplates,
        Action::Subscribe,
        Action::Unsubscribe,
        Action::GetPrompt,
        Action::ListPrompts,
        Action::Complete,
        Action::SetLogLevel,
        Action::Ping,
        Action::Initialize,
        Action::Other,
    ];

    /// The action of an MCP JSON-RPC method; unknown methods are [`Action::Other`].
    pub fn from_method(method: &str) -> Action {
        match method {
            "tools/call" => Action::CallTool,
            "tools/list" => Action::ListTools,
            "resources/read" => Action::ReadResource,
            "resources/list" => Action::ListResources,
            "resources/templates/list" => Action::ListResourceTemplates,
            "resources/subscribe" => Action::Subscribe,
            "resources/unsubscribe" => Action::Unsubscribe,
            "prompts/get" => Action::GetPrompt,
            "prompts/list" => Action::ListPrompts,
            "completion/complete" => Action::Complete,
            "logging/setLevel" => Action::SetLogLevel,
            "ping" => Action::Ping,
            "initialize" => Action::Initialize,
            _ => Action::Other,
        }
    }

    /// The MCP method of the action (`None` for [`Action::Other`]).
    pub fn method(self) -> Option<&'static str> {
        Some(match self {
            Action::CallTool => "tools/call",
            Action::ListTools => "tools/list",
            Action::ReadResource => "resources/read",
            Action::ListResources => "resources/list",
            Action::ListResourceTemplates => "resources/templates/list",
            Action::Subscribe => "resources/subscribe",
            Action::Unsubscribe => "resources/unsubscribe",
            Action::GetPrompt => "prompts/get",
            Action::ListPrompts => "prompts/list",
            Action::Complete => "completion/complete",
            Action::SetLogLevel => "logging/setLevel",
            Action::Ping => "ping",
            Action::Initialize => "initialize",
            Action::Other => return None,
        })
    }

    /// The id of the action's entity: `Palisade::Action::"<cedar_id>"`.
    pub fn cedar_id(self) -> &'static str {
        match self {
            Action::CallTool => "call_tool",
            Action::ListTools => "list_tools",
            Action::ReadResource => "read_resource",
            Action::ListResources => "list_resources",
            Action::ListResourceTemplates => "list_resource_templates",
            Action::Subscribe => "subscribe",
            Action::Unsubscribe => "unsubscribe",
            Action::GetPrompt => "get_prompt",
            Action::ListPrompts => "list_prompts",
            Action::Complete => "complete",
            Action::SetLogLevel => "set_log_level",
            Action::Ping => "ping",
            Action::Initialize => "initialize",
            Action::Other => "other",
        }
    }

    /// The action whose [`Action::cedar_id`] is `id`.
    pub fn from_cedar_id(id: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.cedar_id() == id)
    }
}

/// Who is asking (already authenticated by the gateway).
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    /// False for the anonymous principal (`auth.mode = "none"`).
    pub authenticated: bool,
    pub client_id: Option<&'a str>,
    pub groups: &'a [String],
    pub roles: &'a [String],
    pub scopes: &'a [String],
    /// Computed by the gateway from `acr`/`amr`.
    pub mfa: bool,
    pub tenant: Option<&'a str>,
    /// String, number and boolean claims become tags of the `User` entity; others are ignored.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// What is acted on.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// `list_*`, `ping`, `initialize`, `set_log_level`, `other`.
    Server { server: &'a str },
    /// `call_tool`; `annotations` is the MCP `ToolAnnotations` object.
    Tool {
        server: &'a str,
        tool: &'a str,
        annotations: Option<&'a serde_json::Value>,
    },
    /// `read_resource`, `subscribe`, `unsubscribe`, `complete` with `ref/resource`.
    Resource { server: &'a str, uri: &'a str },
    /// `get_prompt`, `complete` with `ref/prompt`.
    Prompt { server: &'a str, prompt: &'a str },
}

/// The circumstances of the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `tools/call` or `prompts/get` arguments.
    pub arguments: Option<&'a serde_json::Value>,
    pub now_unix: u64,
    /// The endpoint: a server name or `"aggregate"`.
    pub route: &'a str,
    /// 0..=100, the principal's current threat score.
    pub risk: u32,
    /// Data-flow labels of the session.
    pub flow_labels: &'a [String],
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub principal: Principal<'a>,
    pub action: Action,
    pub resource: Resource<'a>,
    pub context: Context<'a>,
}

/// Server attributes from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    /// `"public"`, `"internal"`, `"confidential"`, `"restricted"`; `""` = unclassified.
    pub classification: String,
    pub tags: Vec<String>,
}

/// What the gateway must do before (or while) carrying out an allowed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obligations {
    /// Ask the human (MCP elicitation) before proceeding.
    pub confirm: bool,
    /// Require these scopes (step-up), sorted.
    pub step_up_scopes: Vec<String>,
    /// Require multi-factor authentication (step-up).
    pub mfa: bool,
    /// Data categories to redact in the result (e.g. `pii`, `secret`), sorted.
    pub redact: Vec<String>,
}

impl Obligations {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Obligations::default()
    }

    /// Adds `other`'s obligations (the stricter of both: or, union).
    pub fn merge(&mut self, other: &Obligations) {
        self.confirm |= other.confirm;
        self.mfa |= other.mfa;
        let union = |a: &mut Vec<String>, b: &[String]| {
            let all: BTreeSet<String> = a.drain(..).chain(b.iter().cloned()).collect();
            *a = all.into_iter().collect();
        };
        union(&mut self.step_up_scopes, &other.step_up_scopes);
        union(&mut self.redact, &other.redact);
    }

    /// The step-up scopes the caller's `scopes` lack.
    pub fn missing_scopes(&self, scopes: &[String]) -> Vec<String> {
        self.step_up_scopes
            .iter()
            .filter(|s| !scopes.contains(s))
            .cloned()
            .collect()
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the determining policies, sorted: the permits that allowed, or
    /// the forbids that denied (empty for the default deny).
    pub policies: Vec<String>,
    /// Merged from the determining permit policies (only meaningful when allowed).
    pub obligations: Obligations,
    /// Evaluation errors. Cedar skips an erroring policy; Palisade additionally
    /// denies when an erroring policy is a `forbid` (fail closed).
    pub errors: Vec<String>,
}

impl Decision {
    fn deny_with_error(error: String) -> Decision {
        Decision {
            allowed: false,
            policies: Vec::new(),
            obligations: Obligations::default(),
            errors: vec![error],
        }
    }
}

/// Why a policy set (or a cases file) was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A policy file is not valid Cedar (every syntax error of that file, with line and column).
    #[error("syntax error in {file}:\n{message}")]
    Parse { file: String, message: String },
    /// Policies do not type-check against the schema, or their annotations are
    /// wrong (one line per problem: `file:line:col: policy `id`: problem`).
    #[error("{count} problem(s) in the policies:\n{message}")]
    Validation { message: String, count: usize },
    /// The built-in schema does not parse (a bug).
    #[error("the Palisade schema is invalid: {0}")]
    Schema(String),
    /// Entities could not be built.
    #[error("entities: {0}")]
    Entities(String),
    /// A size limit was exceeded.
    #[error("{}: {message}", path.display())]
    Limit { path: PathBuf, message: String },
    /// A decision-cases file is malformed.
    #[error("cases: {0}")]
    Cases(String),
}

impl PolicyError {
    /// True for errors in the policies themselves (not reading them).
    pub fn is_invalid_policy(&self) -> bool {
        matches!(self, PolicyError::Parse { .. } | PolicyError::Validation { .. })
    }
}

/// What the directory looked like when last read: names, sizes, times.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Fingerprint(Vec<(String, u64, i128, i128, u64)>);

fn fingerprint(dir: &Path) -> Result<Fingerprint, PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".cedar") {
            continue;
        }
        // Follows symbolic links, as reading does.
        let meta = match std::fs::metadata(entry.path()) {
            Ok(m) => m,
            // Vanished between listing and stat: part of the change.
            Err(_) => continue,
        };
        out.push((name.to_string(), meta.len(), mtime(&meta), ctime(&meta), inode(&meta)));
    }
    out.sort();
    Ok(Fingerprint(out))
}

fn mtime(m: &std::fs::Metadata) -> i128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

#[cfg(unix)]
fn ctime(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

#[cfg(not(unix))]
fn ctime(_: &std::fs::Metadata) -> i128 {
    0
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino()
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

fn content_hash(sources: &[(String, String)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sources.hash(&mut h);
    h.finish()
}

#[derive(Debug, Default)]
struct ReloadState {
    /// The files as last seen (valid or not).
    seen: Fingerprint,
    /// Hash of the contents as last read.
    content: u64,
    /// Hash of the contents of the active set.
    active: u64,
    /// The error of the last attempt, while the files stay the same.
    last_error: Option<String>,
}

/// The active policy set and how to reload it.
///
/// [`PolicyEngine::authorize`] takes the active set (an `Arc`) under a short
/// read lock and evaluates without any lock held; a reload swaps the `Arc`.
pub struct PolicyEngine {
    dir: Option<PathBuf>,
    active: RwLock<Arc<Compiled>>,
    servers: RwLock<Arc<HashMap<String, ServerInfo>>>,
    reload: Mutex<ReloadState>,
    authorizer: Authorizer,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("policies", &self.policy_count())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    fn new(dir: Option<PathBuf>, compiled: Compiled, servers: HashMap<String, ServerInfo>, state: ReloadState) -> Self {
        PolicyEngine {
            dir,
            active: RwLock::new(Arc::new(compiled)),
            servers: RwLock::new(Arc::new(servers)),
            reload: Mutex::new(state),
            authorizer: Authorizer::new(),
        }
    }

    /// Loads and validates every `*.cedar` file of `dir` (not recursive; names
    /// starting with `.` are ignored).
    pub fn load_dir(dir: &Path, servers: HashMap<String, ServerInfo>) -> Result<PolicyEngine, PolicyError> {
        let seen = fingerprint(dir)?;
        let sources = compile::read_dir_sources(dir)?;
        let compiled = compile::compile(&sources)?;
        let hash = content_hash(&sources);
        let state = ReloadState {
            seen,
            content: hash,
            active: hash,
            last_error: None,
        };
        Ok(PolicyEngine::new(Some(dir.to_path_buf()), compiled, servers, state))
    }

    /// Builds an engine from `(file name, text)` pairs ([`PolicyEngine::reload_if_changed`]
    /// then never changes anything).
    pub fn from_sources(
        sources: &[(String, String)],
        servers: HashMap<String, ServerInfo>,
    ) -> Result<PolicyEngine, PolicyError> {
        let compiled = compile::compile(sources)?;
        Ok(PolicyEngine::new(None, compiled, servers, ReloadState::default()))
    }

    /// The directory the policies come from (`None` for [`PolicyEngine::from_sources`]).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Replaces the server attributes (after a configuration reload).
    pub fn set_servers(&self, servers: HashMap<String, ServerInfo>) {
        let servers = Arc::new(servers);
        match self.servers.write() {
            Ok(mut g) => *g = servers,
            Err(poisoned) => *poisoned.into_inner() = servers,
        }
    }

    fn snapshot(&self) -> (Arc<Compiled>, Arc<HashMap<String, ServerInfo>>) {
        let active = match self.active.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let servers = match self.servers.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        (active, servers)
    }

    /// Decides `req` against the active policy set. Default deny; a request
    /// that cannot be built (for example an action with the wrong kind of
    /// resource) is denied with an error.
    pub fn authorize(&self, req: &Request<'_>) -> Decision {
        let (active, servers) = self.snapshot();
        let schema = match compile::schema() {
            Ok(s) => s,
            Err(e) => return Decision::deny_with_error(e.to_string()),
        };
        let (request, entities) = match entities::build(req, &servers, schema) {
            Ok(x) => x,
            Err(e) => return Decision::deny_with_error(e),
        };
        let response = self.authorizer.is_authorized(&request, &active.set, &entities);
        let diagnostics = response.diagnostics();
        let mut errors = Vec::new();
        let mut failed_forbids = Vec::new();
        for e in diagnostics.errors() {
            errors.push(e.to_string());
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            let id = compile::pid(pe.policy_id());
            if active.meta.get(id).is_some_and(|m| m.forbid) {
                failed_forbids.push(id.to_string());
            }
        }
        let mut policies: Vec<String> = diagnostics.reason().map(|id| compile::pid(id).to_string()).collect();
        policies.sort();
        let allowed = response.decision() == CedarDecision::Allow;
        if allowed && !failed_forbids.is_empty() {
            // Fail closed: a forbid that could not be evaluated might have applied.
            failed_forbids.sort();
            return Decision {
                allowed: false,
                policies: failed_forbids,
                obligations: Obligations::default(),
                errors,
            };
        }
        let mut obligations = Obligations::default();
        if allowed {
            for id in &policies {
                if let Some(m) = active.meta.get(id) {
                    obligations.merge(&m.obligations);
                }
            }
        }
        Decision {
            allowed,
            policies,
            obligations,
            errors,
        }
    }

    /// Re-reads the directory if a `*.cedar` file was added, removed or
    /// changed (names, sizes, modification and change times, inodes; then the
    /// contents). `Ok(None)`: unchanged (also: still the same invalid files as
    /// the last failed attempt); `Ok(Some(n))`: a new set of `n` policies is
    /// active; `Err`: the new files are invalid and the previous set stays
    /// active. Audited as `policy.reloaded` / `policy.reload_failed`.
    pub fn reload_if_changed(&self) -> Result<Option<usize>, PolicyError> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let mut state = match self.reload.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fail = |state: &mut ReloadState, e: PolicyError| {
            tracing::error!(
                target: "palisade::audit",
                event = "policy.reload_failed",
                dir = %dir.display(),
                error = %e,
                "policy reload failed; the previous policies stay active"
            );
            state.last_error = Some(e.to_string());
            Err(e)
        };
        let seen = match fingerprint(dir) {
            Ok(f) => f,
            Err(e) => {
                if state.last_error.is_some() {
                    return Ok(None);
                }
                return fail(&mut state, e);
            }
        };
        if seen == state.seen {
            return Ok(None);
        }
        let sources = match compile::read_dir_sources(dir) {
            Ok(s) => s,
            Err(e) => {
                state.seen = seen;
                return fail(&mut state, e);
            }
        };
        state.seen = seen;
        let hash = content_hash(&sources);
        if hash == state.active {
            // Back to (or still) the active contents: nothing to load, nothing wrong.
            state.content = hash;
            state.last_error = None;
            return Ok(None);
        }
        if hash == state.content {
            return Ok(None);
        }
        state.content = hash;
        match compile::compile(&sources) {
            Ok(compiled) => {
                let n = compiled.len();
                let compiled = Arc::new(compiled);
                match self.active.write() {
                    Ok(mut g) => *g = compiled,
                    Err(poisoned) => *poisoned.into_inner() = compiled,
                }
                state.active = hash;
                state.last_error = None;
                tracing::info!(
                    target: "palisade::audit",
                    event = "policy.reloaded",
                    dir = %dir.display(),
                    policies = n,
                    files = sources.len(),
                    "policies reloaded"
                );
                Ok(Some(n))
            }
            Err(e) => fail(&mut state, e),
        }
    }

    /// The error of the last failed reload while the files have not changed since.
    pub fn last_reload_error(&self) -> Option<String> {
        match self.reload.lock() {
            Ok(g) => g.last_error.clone(),
            Err(poisoned) => poisoned.into_inner().last_error.clone(),
        }
    }

    /// The number of policies in the active set.
    pub fn policy_count(&self) -> usize {
        self.snapshot().0.len()
    }

    /// The ids of the policies in the active set, sorted.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.snapshot().0.meta.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// Validates the policy files of `dir` without activating anything; the number of policies.
pub fn check_dir(dir: &Path) -> Result<usize, PolicyError> {
    let sources = compile::read_dir_sources(dir)?;
    Ok(compile::compile(&sources)?.len())
}

#[cfg(test)]
mod tests;
