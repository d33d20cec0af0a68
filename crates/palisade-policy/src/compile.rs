//! Policy files to an active, validated policy set.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Effect, PolicyId, PolicySet, Schema, ValidationMode, ValidationWarning, Validator};
use miette::Diagnostic;

use crate::{Obligations, PolicyError, SCHEMA};

/// Policy files larger than this are refused.
pub const MAX_POLICY_FILE_BYTES: u64 = 1024 * 1024;
/// A policy directory with more `*.cedar` files than this is refused.
pub const MAX_POLICY_FILES: usize = 1000;
/// Longest accepted `@id`.
const MAX_ID_LEN: usize = 128;

/// The annotations Palisade gives a meaning to.
const OBLIGATION_KEYS: [&str; 4] = ["confirm", "step_up", "mfa", "redact"];

/// What is known about one policy of the active set.
#[derive(Debug, Clone)]
pub(crate) struct PolicyMeta {
    pub(crate) forbid: bool,
    pub(crate) obligations: Obligations,
}

/// A parsed and validated policy set.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) set: PolicySet,
    pub(crate) meta: HashMap<String, PolicyMeta>,
}

impl Compiled {
    pub(crate) fn len(&self) -> usize {
        self.meta.len()
    }
}

/// The schema, parsed once per process.
pub(crate) fn schema() -> Result<&'static Arc<Schema>, PolicyError> {
    static PARSED: OnceLock<Result<Arc<Schema>, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| match Schema::from_cedarschema_str(SCHEMA) {
            Ok((schema, _warnings)) => Ok(Arc::new(schema)),
            Err(e) => Err(render_diagnostic(&e)),
        })
        .as_ref()
        .map_err(|e| PolicyError::Schema(e.clone()))
}

/// `text` at byte `offset` as 1-based line and column.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One diagnostic as text: the message, its help, and nested causes.
fn render_diagnostic(d: &dyn Diagnostic) -> String {
    let mut s = d.to_string();
    if let Some(help) = d.help() {
        let _ = write!(s, " (help: {help})");
    }
    s
}

/// `file:line:col` of the first label of a diagnostic whose source is `text`.
fn location(file: &str, text: Option<&str>, d: &dyn Diagnostic) -> String {
    let first = d.labels().and_then(|mut l| l.next());
    match (first, text) {
        (Some(label), Some(text)) => {
            let (line, col) = line_col(text, label.offset());
            format!("{file}:{line}:{col}")
        }
        _ => file.to_string(),
    }
}

fn file_stem(name: &str) -> &str {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    base.strip_suffix(".cedar").unwrap_or(base)
}

fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        Err("is empty")
    } else if id.len() > MAX_ID_LEN {
        Err("is longer than 128 bytes")
    } else if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Err("contains white space or control characters")
    } else {
        Ok(())
    }
}

fn parse_flag(v: &str) -> Result<bool, String> {
    match v {
        "" | "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("must be \"true\" or \"false\", not {other:?}")),
    }
}

/// An OAuth scope token (RFC 6749 §3.3).
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn is_category(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The obligations of one policy from its annotations.
fn obligations_of<'a>(
    annotations: impl Iterator<Item = (&'a str, &'a str)>,
    forbid: bool,
) -> Result<Obligations, Vec<String>> {
    let mut o = Obligations::default();
    let mut errors = Vec::new();
    for (key, value) in annotations {
        if !OBLIGATION_KEYS.contains(&key) {
            continue;
        }
        if forbid {
            errors.push(format!("@{key} is an obligation and only applies to permit policies"));
            continue;
        }
        match key {
            "confirm" => match parse_flag(value) {
                Ok(b) => o.confirm = b,
                Err(e) => errors.push(format!("@confirm {e}")),
            },
            "mfa" => match parse_flag(value) {
                Ok(b) => o.mfa = b,
                Err(e) => errors.push(format!("@mfa {e}")),
            },
            "step_up" => {
                let scopes: BTreeSet<&str> = value.split_ascii_whitespace().collect();
                if scopes.is_empty() {
                    errors.push("@step_up needs at least one scope".to_string());
                } else if let Some(bad) = scopes.iter().find(|s| !is_scope_token(s)) {
                    errors.push(format!("@step_up: {bad:?} is not a valid scope"));
                } else {
                    o.step_up_scopes = scopes.into_iter().map(str::to_string).collect();
                }
            }
            "redact" => {
                let cats: BTreeSet<&str> = value
                    .split(|c: char| c == ',' || c.is_ascii_whitespace())
                    .filter(|s| !s.is_empty())
                    .collect();
                if cats.is_empty() {
                    errors.push("@redact needs at least one data category".to_string());
                } else if let Some(bad) = cats.iter().find(|s| !is_category(s)) {
                    errors.push(format!(
                        "@redact: {bad:?} is not a data category (lower-case letters, digits, '_' and '-')"
                    ));
                } else {
                    o.redact = cats.into_iter().map(str::to_string).collect();
                }
            }
            _ => {}
        }
    }
    if errors.is_empty() { Ok(o) } else { Err(errors) }
}

/// A policy id as text.
pub(crate) fn pid(id: &PolicyId) -> &str {
    AsRef::<str>::as_ref(id)
}

/// The policy number `N` of Cedar's default id `policyN` (file order).
fn default_index(id: &PolicyId) -> usize {
    pid(id)
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Parses and validates `(file name, text)` pairs into one policy set.
pub(crate) fn compile(sources: &[(String, String)]) -> Result<Compiled, PolicyError> {
    let schema = schema()?;
    let mut set = PolicySet::new();
    let mut meta: HashMap<String, PolicyMeta> = HashMap::new();
    // Policy id -> (file name, file text) for error locations.
    let mut origin: HashMap<String, (&str, &str)> = HashMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut files = BTreeSet::new();

    for (name, text) in sources {
        if !files.insert(file_stem(name)) {
            return Err(PolicyError::Parse {
                file: name.clone(),
                message: format!("{name}: another file has the same name"),
            });
        }
        let parsed = match PolicySet::from_str(text) {
            Ok(p) => p,
            Err(errs) => {
                let mut message = String::new();
                for e in errs.iter() {
                    let _ = writeln!(message, "{}: {}", location(name, Some(text), e), render_diagnostic(e));
                }
                return Err(PolicyError::Parse {
                    file: name.clone(),
                    message: message.trim_end().to_string(),
                });
            }
        };
        if let Some(t) = parsed.templates().next() {
            let loc = match t.annotation("id") {
                Some(id) => format!("{name}: template `{id}`"),
                None => name.clone(),
            };
            return Err(PolicyError::Parse {
                file: name.clone(),
                message: format!("{loc}: templates (?principal, ?resource) are not supported"),
            });
        }
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| default_index(p.id()));
        for (index, policy) in policies.into_iter().enumerate() {
            let id = match policy.annotation("id") {
                Some(id) => id.to_string(),
                None => format!("{}:{index}", file_stem(name)),
            };
            if let Err(why) = check_id(&id) {
                problems.push(format!("{name}: policy #{index}: @id {why}"));
                continue;
            }
            if let Some((other, _)) = origin.get(&id) {
                problems.push(format!("{name}: policy `{id}`: the id is also used in {other}"));
                continue;
            }
            let forbid = policy.effect() == Effect::Forbid;
            match obligations_of(policy.annotations(), forbid) {
                Ok(obligations) => {
                    meta.insert(id.clone(), PolicyMeta { forbid, obligations });
                }
                Err(errs) => {
                    for e in errs {
                        problems.push(format!("{name}: policy `{id}`: {e}"));
                    }
                }
            }
            origin.insert(id.clone(), (name.as_str(), text.as_str()));
            if let Err(e) = set.add(policy.new_id(PolicyId::new(&id))) {
                problems.push(format!("{name}: policy `{id}`: {e}"));
            }
        }
    }

    let validator = Validator::new(Schema::clone(schema));
    let result = validator.validate(&set, ValidationMode::Strict);
    // `file:line:col: policy `id`: message` (Cedar's messages often name the policy already).
    let place = |id: &PolicyId, d: &dyn Diagnostic| -> String {
        let message = render_diagnostic(d);
        let message = message
            .strip_prefix(&format!("for policy `{}`, ", pid(id)))
            .unwrap_or(&message);
        match origin.get(pid(id)) {
            Some((file, text)) => format!("{}: policy `{id}`: {message}", location(file, Some(text), d)),
            None => format!("policy `{id}`: {message}"),
        }
    };
    for e in result.validation_errors() {
        problems.push(place(e.policy_id(), e));
    }
    for w in result.validation_warnings() {
        // A policy that can never apply is a mistake (a forbid that never applies
        // is a silent hole); bidirectional controls hide what a policy says.
        let fatal = matches!(
            w,
            ValidationWarning::ImpossiblePolicy(_)
                | ValidationWarning::InvalidActionApplication(_)
                | ValidationWarning::BidiCharsInString(_)
                | ValidationWarning::BidiCharsInIdentifier(_)
        );
        let text = place(w.policy_id(), w);
        if fatal {
            problems.push(text);
        } else {
            tracing::warn!(target: "palisade::policy", warning = %text, "policy validation warning");
        }
    }
    if !problems.is_empty() {
        return Err(PolicyError::Validation {
            message: problems.join("\n"),
            count: problems.len(),
        });
    }
    Ok(Compiled { set, meta })
}

/// Reads every `*.cedar` file of `dir` (not recursive, hidden files ignored),
/// sorted by name, as (path, text).
pub(crate) fn read_dir_sources(dir: &Path) -> Result<Vec<(String, String)>, PolicyError> {
    let io = |path: &Path, source: std::io::Error| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".cedar") {
            continue;
        }
        names.push(name.to_string());
    }
    if names.len() > MAX_POLICY_FILES {
        return Err(PolicyError::Limit {
            path: dir.to_path_buf(),
            message: format!("more than {MAX_POLICY_FILES} policy files"),
        });
    }
    names.sort();
    let mut sources = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let meta = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_POLICY_FILE_BYTES {
            return Err(PolicyError::Limit {
                path,
                message: format!("larger than {MAX_POLICY_FILE_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        // Messages name the file by its path.
        sources.push((path.display().to_string(), text));
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4));
        assert_eq!(line_col(t, 999), (3, 2));
    }

    #[test]
    fn obligation_annotations() {
        let ok = obligations_of(
            [
                ("confirm", "true"),
                ("step_up", "b a a"),
                ("redact", "pii, secret"),
                ("mfa", ""),
            ]
            .into_iter(),
            false,
        )
        .unwrap();
        assert!(ok.confirm && ok.mfa);
        assert_eq!(ok.step_up_scopes, vec!["a", "b"]);
        assert_eq!(ok.redact, vec!["pii", "secret"]);
        assert!(obligations_of([("confirm", "yes")].into_iter(), false).is_err());
        assert!(obligations_of([("step_up", "  ")].into_iter(), false).is_err());
        assert!(obligations_of([("step_up", "a\"b")].into_iter(), false).is_err());
        assert!(obligations_of([("redact", "PII")].into_iter(), false).is_err());
        assert!(obligations_of([("confirm", "true")].into_iter(), true).is_err());
        assert!(obligations_of([("description", "x")].into_iter(), true).is_ok());
    }
}
