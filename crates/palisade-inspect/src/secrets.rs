//! The secrets pack: credentials, keys and tokens.
//!
//! Two kinds of rules share one pack:
//! - built-in rules, written for this project: a regex finds a candidate and
//!   a validator (charset, length, entropy, checksum, JSON header, placeholder
//!   filters) decides whether it is a secret;
//! - optionally, the rules of a gitleaks-format TOML file
//!   ([`SecretsPack::with_gitleaks`]), run with gitleaks' own semantics
//!   (secret group, entropy, per-rule and global allowlists).
//!
//! Every rule has literal triggers, so clean text runs no regex at all.
//! Findings cover the secret itself (not the `key = ` around it), so a
//! redactor replaces only the secret. The matched text is never stored.

use std::sync::Arc;

use base64::Engine as _;
use regex::Regex;

use crate::{Category, Finding, Input, Pack};

/// Why a rule file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(pub String);

/// Longest secret reported (PEM blocks excepted).
const MAX_SECRET: usize = 4096;
/// Longest PEM private key block reported.
const MAX_PEM: usize = 16 * 1024;
/// Most findings one rule reports for one text.
const MAX_PER_RULE: usize = 64;
/// Compiled size bound for one gitleaks regex.
const REGEX_SIZE_LIMIT: usize = 8 << 20;

/// Credentials, keys and tokens.
#[derive(Debug)]
pub struct SecretsPack {
    rules: Vec<Rule>,
    /// Global allowlists of a gitleaks file; they apply to every rule.
    global: Vec<Allowlist>,
    skipped: Vec<String>,
}

impl Default for SecretsPack {
    fn default() -> Self {
        SecretsPack::builtin()
    }
}

#[derive(Debug)]
struct Rule {
    id: Arc<str>,
    triggers: Vec<String>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Builtin(Builtin),
    Gitleaks(GlRule),
}

/// How a built-in candidate is validated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Check {
    PrivateKey,
    AwsKeyId,
    AwsSecret,
    GitHub,
    /// A provider token with a fixed prefix: `prefix_len` bytes of prefix,
    /// then a random body with at least this entropy (bits per char).
    Prefixed {
        prefix_len: usize,
        min_entropy: f64,
    },
    OpenAi,
    SlackToken,
    SlackWebhook,
    Stripe,
    AzureKey,
    Jwt,
    UriPassword,
    AuthHeader,
    CurlUser,
    Generic,
}

#[derive(Debug)]
struct Builtin {
    re: Regex,
    check: Check,
    score: f32,
}

/// A built-in rule definition: id, triggers, regex (the secret is group 1,
/// or the first group that matched), check, score.
struct Def {
    id: &'static str,
    triggers: &'static [&'static str],
    re: &'static str,
    check: Check,
    score: f32,
}

const fn prefixed(prefix_len: usize, min_entropy: f64) -> Check {
    Check::Prefixed {
        prefix_len,
        min_entropy,
    }
}

/// The built-in rules. Patterns are our own, from the published token formats.
const DEFS: &[Def] = &[
    Def {
        id: "private-key",
        triggers: &["-----begin"],
        re: r"-----BEGIN[ A-Z0-9]{0,32} PRIVATE KEY(?: BLOCK)?-----",
        check: Check::PrivateKey,
        score: 0.95,
    },
    Def {
        id: "aws-access-key-id",
        triggers: &["akia", "asia", "abia", "acca"],
        re: r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16})\b",
        check: Check::AwsKeyId,
        score: 0.9,
    },
    Def {
        id: "aws-secret-access-key",
        triggers: &[
            "aws_secret",
            "aws-secret",
            "awssecret",
            "secret_access_key",
            "secretaccesskey",
            "secret-access-key",
        ],
        re: r#"(?:^|[^A-Za-z0-9+/])([A-Za-z0-9+/]{40})(?:[^A-Za-z0-9+/=]|$)"#,
        check: Check::AwsSecret,
        score: 0.9,
    },
    Def {
        id: "github-token",
        triggers: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        re: r"\b(gh[pousr]_[A-Za-z0-9]{36,251})\b",
        check: Check::GitHub,
        score: 0.9,
    },
    Def {
        id: "github-fine-grained-pat",
        triggers: &["github_pat_"],
        re: r"\b(github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b",
        check: prefixed(11, 4.0),
        score: 0.95,
    },
    Def {
        id: "gitlab-token",
        triggers: &["glpat-", "glptt-", "glrt-", "gldt-", "glsoat-", "glft-"],
        re: r"\b(gl(?:pat|ptt|rt|dt|soat|ft)-[A-Za-z0-9_-]{20,64}(?:\.[0-9a-z]{2}\.[0-9a-z]{7,9})?)(?:[^A-Za-z0-9_.-]|$)",
        check: prefixed(5, 3.3),
        score: 0.92,
    },
    Def {
        id: "slack-token",
        triggers: &["xoxb-", "xoxp-", "xoxa-", "xoxo-", "xoxs-", "xoxr-", "xoxe"],
        re: r"\b(xox(?:[abposr]|e(?:\.xox[bp])?)-[0-9A-Za-z-]{10,250})",
        check: Check::SlackToken,
        score: 0.92,
    },
    Def {
        id: "slack-webhook-url",
        triggers: &["hooks.slack.com"],
        re: r"(https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,160})",
        check: Check::SlackWebhook,
        score: 0.9,
    },
    Def {
        id: "stripe-key",
        triggers: &["sk_live_", "rk_live_", "sk_test_", "rk_test_", "sk_prod_", "rk_prod_"],
        re: r"\b([sr]k_(?:live|test|prod)_[0-9A-Za-z]{20,247})\b",
        check: Check::Stripe,
        score: 0.93,
    },
    Def {
        id: "google-api-key",
        triggers: &["aiza"],
        re: r"\b(AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)",
        check: prefixed(4, 3.6),
        score: 0.9,
    },
    Def {
        id: "openai-api-key",
        triggers: &["t3blbkfj", "sk-proj-", "sk-svcacct-", "sk-admin-"],
        re: r"\b(sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,250})(?:[^A-Za-z0-9_-]|$)",
        check: Check::OpenAi,
        score: 0.93,
    },
    Def {
        id: "anthropic-api-key",
        triggers: &["sk-ant-"],
        re: r"\b(sk-ant-(?:api|admin|sid|oat|ort)[0-9]{2}-[A-Za-z0-9_-]{80,120}AA)(?:[^A-Za-z0-9_-]|$)",
        check: prefixed(13, 4.0),
        score: 0.95,
    },
    Def {
        id: "npm-token",
        triggers: &["npm_"],
        re: r"\b(npm_[A-Za-z0-9]{36})\b",
        check: prefixed(4, 4.0),
        score: 0.92,
    },
    Def {
        id: "pypi-token",
        triggers: &["pypi-age"],
        re: r"\b(pypi-AgE[A-Za-z0-9_-]{50,1000})",
        check: prefixed(8, 4.0),
        score: 0.95,
    },
    Def {
        id: "sendgrid-api-key",
        triggers: &["sg."],
        re: r"\b(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})(?:[^A-Za-z0-9_.-]|$)",
        check: prefixed(3, 4.0),
        score: 0.93,
    },
    Def {
        id: "twilio-api-key",
        triggers: &["twilio"],
        re: r"\b(SK[0-9a-f]{32})\b",
        check: prefixed(2, 3.0),
        score: 0.88,
    },
    Def {
        id: "twilio-auth-token",
        triggers: &["twilio"],
        re: r#"(?i)twilio[\w.-]{0,20}?(?:auth)?[_.-]?token["']?\s{0,3}(?:=|:|=>)\s{0,3}["']?([0-9a-f]{32})\b"#,
        check: prefixed(0, 3.0),
        score: 0.88,
    },
    Def {
        id: "azure-storage-key",
        triggers: &["accountkey=", "sharedaccesskey="],
        re: r"(?i:AccountKey|SharedAccessKey)=([A-Za-z0-9+/]{30,100}={0,2})",
        check: Check::AzureKey,
        score: 0.93,
    },
    Def {
        id: "huggingface-token",
        triggers: &["hf_"],
        re: r"\b(hf_[A-Za-z]{34})\b",
        check: prefixed(3, 3.8),
        score: 0.88,
    },
    Def {
        id: "digitalocean-token",
        triggers: &["dop_v1_", "doo_v1_", "dor_v1_"],
        re: r"\b(do[opr]_v1_[a-f0-9]{64})\b",
        check: prefixed(7, 3.0),
        score: 0.93,
    },
    Def {
        id: "shopify-token",
        triggers: &["shpat_", "shpss_", "shpca_", "shppa_"],
        re: r"\b(shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32})\b",
        check: prefixed(6, 3.0),
        score: 0.93,
    },
    Def {
        id: "hashicorp-vault-token",
        triggers: &["hvs.", "hvb."],
        re: r"\b(hv[sb]\.[A-Za-z0-9_-]{90,250})",
        check: prefixed(4, 4.0),
        score: 0.92,
    },
    Def {
        id: "age-secret-key",
        triggers: &["age-secret-key-1"],
        re: r"\b(AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58})\b",
        check: prefixed(16, 3.5),
        score: 0.95,
    },
    Def {
        id: "azure-ad-client-secret",
        triggers: &["q~"],
        re: r"(?:^|[^A-Za-z0-9_~.-])([A-Za-z0-9_~.-]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34})(?:[^A-Za-z0-9_~.-]|$)",
        check: prefixed(6, 3.8),
        score: 0.85,
    },
    Def {
        id: "curl-basic-auth",
        triggers: &["curl"],
        re: r#"\bcurl\b(?:[^\n]|\\\n){0,512}?\s(?:-u|--user)(?:=|[ \t]{1,5})["']?([^\s"':$]{2,64}:[^\s"']{3,128})["']?(?:\s|$)"#,
        check: Check::CurlUser,
        score: 0.8,
    },
    Def {
        id: "jwt",
        triggers: &["eyj"],
        re: r"\b(eyJ[A-Za-z0-9_-]{10,}={0,2}\.[A-Za-z0-9_-]{2,}={0,2}\.[A-Za-z0-9_-]*={0,2})",
        check: Check::Jwt,
        score: 0.85,
    },
    Def {
        id: "uri-password",
        triggers: &["://"],
        re: r#"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|ftps?|sftp|smtps?|imaps?|ldaps?|https?|jdbc:[a-z]+)://([^\s:/@'"`<>]{1,128}):([^\s@/'"`<>]{1,256})@[A-Za-z0-9.\[_-]"#,
        check: Check::UriPassword,
        score: 0.8,
    },
    Def {
        id: "authorization-header",
        triggers: &["authorization", "bearer"],
        re: r#"(?i)(?:authorization["']?\s{0,3}[:=]\s{0,3}["']?(?:bearer|basic|token)|\bbearer)\s+([A-Za-z0-9._~+/-]{16,2048}={0,2})(?:[^A-Za-z0-9._~+/=-]|$)"#,
        check: Check::AuthHeader,
        score: 0.8,
    },
    Def {
        id: "generic-assignment",
        triggers: &[
            "password",
            "passwd",
            "pwd",
            "secret",
            "token",
            "api_key",
            "api-key",
            "apikey",
            "access_key",
            "access-key",
            "accesskey",
            "auth",
        ],
        re: r#"(?i)([A-Za-z0-9_.-]{0,40}?(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth)[A-Za-z0-9_.-]{0,30})["']?[ \t]{0,3}(?::=|=>|\?=|=|:)[ \t]{0,3}(?:"([^"\r\n]{1,512})"|'([^'\r\n]{1,512})'|`([^`\r\n]{1,512})`|([^\s"'`,;(){}\[\]<>\\]{1,512})(?:[\s"'`,;]|\\[nrt]|$))"#,
        check: Check::Generic,
        score: 0.7,
    },
];

impl SecretsPack {
    /// The built-in rules.
    pub fn builtin() -> SecretsPack {
        let rules = DEFS
            .iter()
            .map(|d| Rule {
                id: Arc::from(format!("secret.{}", d.id)),
                triggers: d.triggers.iter().map(|t| t.to_string()).collect(),
                kind: Kind::Builtin(Builtin {
                    re: Regex::new(d.re).expect("built-in secret regex"),
                    check: d.check,
                    score: d.score,
                }),
            })
            .collect();
        SecretsPack {
            rules,
            global: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// The built-in rules plus the rules of a gitleaks-format TOML file.
    ///
    /// Rules whose regex the `regex` crate cannot compile, and path-only
    /// rules, are skipped ([`SecretsPack::skipped_rules`]); a file that is
    /// not valid TOML, or has no `[[rules]]` array of tables, is an error.
    /// A rule's `path` cannot be checked on content, so rules with both a
    /// path and a regex run on the regex alone.
    pub fn with_gitleaks(toml_text: &str) -> Result<SecretsPack, RulesError> {
        let mut pack = SecretsPack::builtin();
        let doc: toml::Table = toml::from_str(toml_text).map_err(|e| RulesError(format!("gitleaks rules: {e}")))?;
        // Global allowlists: `[allowlist]` (old) and `[[allowlists]]` (new,
        // optionally aimed at some rules with `targetRules`).
        let mut targeted: Vec<(Vec<String>, Allowlist)> = Vec::new();
        if let Some(v) = doc.get("allowlist") {
            let t = v
                .as_table()
                .ok_or_else(|| RulesError("gitleaks rules: [allowlist] is not a table".into()))?;
            if let Some(a) = Allowlist::parse(t)? {
                pack.global.push(a);
            }
        }
        if let Some(v) = doc.get("allowlists") {
            for t in tables(v, "allowlists")? {
                let targets = strings(t.get("targetRules"));
                if let Some(a) = Allowlist::parse(t)? {
                    if targets.is_empty() {
                        pack.global.push(a);
                    } else {
                        targeted.push((targets, a));
                    }
                }
            }
        }
        let rules = match doc.get("rules") {
            Some(v) => tables(v, "rules")?,
            None => Vec::new(),
        };
        for (i, t) in rules.into_iter().enumerate() {
            let id = t
                .get("id")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("rule-{i}"));
            let Some(pattern) = t.get("regex").and_then(|v| v.as_str()) else {
                pack.skipped.push(id);
                continue;
            };
            let Some(re) = compile_gitleaks(pattern) else {
                pack.skipped.push(id);
                continue;
            };
            let secret_group = t
                .get("secretGroup")
                .and_then(|v| v.as_integer())
                .filter(|g| *g > 0)
                .map(|g| g as usize);
            let secret_group = match secret_group {
                Some(g) if g >= re.captures_len() => {
                    pack.skipped.push(id);
                    continue;
                }
                g => g,
            };
            let entropy = t
                .get("entropy")
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
                .filter(|e| *e > 0.0);
            let mut allowlists = Vec::new();
            for key in ["allowlist", "allowlists"] {
                if let Some(v) = t.get(key) {
                    for a in tables(v, key)? {
                        if let Some(a) = Allowlist::parse(a)? {
                            allowlists.push(a);
                        }
                    }
                }
            }
            for (targets, a) in &targeted {
                if targets.contains(&id) {
                    allowlists.push(a.clone());
                }
            }
            let mut triggers: Vec<String> = strings(t.get("keywords"))
                .into_iter()
                .map(|k| k.to_ascii_lowercase())
                .filter(|k| !k.is_empty())
                .collect();
            triggers.sort();
            triggers.dedup();
            pack.rules.push(Rule {
                id: Arc::from(format!("secret.{id}")),
                triggers,
                kind: Kind::Gitleaks(GlRule {
                    re,
                    secret_group,
                    entropy,
                    generic: id.starts_with("generic"),
                    allowlists,
                    score: if id.starts_with("generic") { 0.7 } else { 0.85 },
                }),
            });
        }
        Ok(pack)
    }

    /// Ids of the gitleaks rules that were not loaded: path-only rules and
    /// regexes the `regex` crate cannot compile (or too large).
    pub fn skipped_rules(&self) -> &[String] {
        &self.skipped
    }

    /// Rule ids, in rule-index order (`secret.<id>`).
    pub fn rule_ids(&self) -> Vec<Arc<str>> {
        self.rules.iter().map(|r| Arc::clone(&r.id)).collect()
    }
}

/// `[[x]]` (array of tables) or `[x]` (one table).
fn tables<'a>(v: &'a toml::Value, what: &str) -> Result<Vec<&'a toml::Table>, RulesError> {
    match v {
        toml::Value::Table(t) => Ok(vec![t]),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_table()
                    .ok_or_else(|| RulesError(format!("gitleaks rules: {what} holds a non-table")))
            })
            .collect(),
        _ => Err(RulesError(format!("gitleaks rules: {what} is not a table"))),
    }
}

fn strings(v: Option<&toml::Value>) -> Vec<String> {
    match v {
        Some(toml::Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).map(str::to_string).collect(),
        Some(toml::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Go's RE2 classes (`\w`, `\d`, `\s`, `\b`) are ASCII: compile as bytes
/// with Unicode off so they mean the same. Patterns that need Unicode
/// (`\p{..}`) fall back to a Unicode-aware byte regex.
fn compile_gitleaks(pattern: &str) -> Option<regex::bytes::Regex> {
    let pattern = go_syntax(pattern);
    let build = |unicode: bool| {
        regex::bytes::RegexBuilder::new(&pattern)
            .unicode(unicode)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .nest_limit(64)
            .build()
            .ok()
    };
    build(false).or_else(|| build(true))
}

/// Rewrites the spots where Go's RE2 syntax reads differently from the
/// `regex` crate: a `{` that does not open a repetition is a literal in Go
/// (an error here), and inside a class `[` is a literal in Go (a nested
/// class here), as are doubled `&&`, `--` and `~~` (set operators here).
fn go_syntax(p: &str) -> String {
    let chars: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.get(i + 1) {
                    out.push(*n);
                }
                i += 2;
                continue;
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` first in a class is a literal.
                if chars.get(i + 1) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
            }
            '[' if in_class => {
                if chars.get(i + 1) == Some(&':') {
                    // POSIX class `[:alpha:]`: copy through `:]`.
                    let rest: String = chars[i..].iter().collect();
                    if let Some(end) = rest.find(":]") {
                        out.push_str(&rest[..end + 2]);
                        i += rest[..end + 2].chars().count();
                        continue;
                    }
                }
                out.push_str("\\[");
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '&' | '-' | '~' if in_class && chars.get(i + 1) == Some(&c) => {
                out.push('\\');
                out.push(c);
            }
            '{' if !in_class => {
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let mut ok = j > i + 1;
                if ok && chars.get(j) == Some(&',') {
                    j += 1;
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                }
                ok = ok && chars.get(j) == Some(&'}');
                if ok {
                    out.extend(&chars[i..=j]);
                    i = j + 1;
                    continue;
                }
                out.push_str("\\{");
            }
            '}' if !in_class => out.push_str("\\}"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

#[derive(Debug)]
struct GlRule {
    re: regex::bytes::Regex,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    generic: bool,
    allowlists: Vec<Allowlist>,
    score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Secret,
    Match,
    Line,
}

/// A gitleaks allowlist. Paths and commits cannot be checked on content:
/// they count as not matching.
#[derive(Debug, Clone)]
struct Allowlist {
    regexes: Vec<regex::bytes::Regex>,
    target: Target,
    /// Lower case.
    stopwords: Vec<String>,
    and: bool,
    /// The allowlist also names paths or commits (never true here).
    has_unverifiable: bool,
}

impl Allowlist {
    fn parse(t: &toml::Table) -> Result<Option<Allowlist>, RulesError> {
        let mut regexes = Vec::new();
        for r in strings(t.get("regexes")) {
            // An allowlist regex we cannot compile is dropped: the rule
            // itself still runs (more findings, never fewer).
            if let Some(re) = compile_gitleaks(&r) {
                regexes.push(re);
            }
        }
        let target = match t.get("regexTarget").and_then(|v| v.as_str()) {
            None | Some("secret") | Some("") => Target::Secret,
            Some("match") => Target::Match,
            Some("line") => Target::Line,
            Some(other) => return Err(RulesError(format!("gitleaks rules: unknown regexTarget {other:?}"))),
        };
        let and = match t.get("condition").and_then(|v| v.as_str()) {
            None | Some("") => false,
            Some(c) if c.eq_ignore_ascii_case("or") => false,
            Some(c) if c.eq_ignore_ascii_case("and") => true,
            Some(other) => return Err(RulesError(format!("gitleaks rules: unknown condition {other:?}"))),
        };
        let stopwords: Vec<String> = strings(t.get("stopwords"))
            .into_iter()
            .map(|s| s.to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let has_unverifiable = !strings(t.get("paths")).is_empty() || !strings(t.get("commits")).is_empty();
        if regexes.is_empty() && stopwords.is_empty() {
            return Ok(None);
        }
        Ok(Some(Allowlist {
            regexes,
            target,
            stopwords,
            and,
            has_unverifiable,
        }))
    }

    fn allows(&self, secret: &[u8], whole: &[u8], line: &[u8]) -> bool {
        let regex_hit = || {
            let hay = match self.target {
                Target::Secret => secret,
                Target::Match => whole,
                Target::Line => line,
            };
            self.regexes.iter().any(|r| r.is_match(hay))
        };
        let stop_hit = || {
            let lower = String::from_utf8_lossy(secret).to_lowercase();
            self.stopwords.iter().any(|w| lower.contains(w.as_str()))
        };
        if self.and {
            !self.has_unverifiable
                && (self.regexes.is_empty() || regex_hit())
                && (self.stopwords.is_empty() || stop_hit())
        } else {
            (!self.regexes.is_empty() && regex_hit()) || (!self.stopwords.is_empty() && stop_hit())
        }
    }
}

impl Pack for SecretsPack {
    fn name(&self) -> &'static str {
        "secrets"
    }

    fn rules(&self) -> usize {
        self.rules.len()
    }

    fn triggers(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            for t in &r.triggers {
                out.push((t.clone(), i));
            }
        }
        out
    }

    fn scan(&self, input: &Input<'_>, enabled: &[bool], out: &mut Vec<Finding>) {
        let text = input.text;
        let mut found: Vec<Cand> = Vec::new();
        // Spans a loaded allowlist declared not secret.
        let mut allowed: Vec<(usize, usize)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !enabled.get(i).copied().unwrap_or(false) {
                continue;
            }
            // Trigger-less rules (gitleaks rules without keywords) run only
            // when the text has a candidate token at all.
            if rule.triggers.is_empty() && input.tokens.is_empty() {
                continue;
            }
            let before = found.len();
            match &rule.kind {
                Kind::Builtin(b) => b.scan(i, text, &mut found),
                Kind::Gitleaks(g) => g.scan(i, text, &self.global, &mut found, &mut allowed),
            }
            if found.len() - before > MAX_PER_RULE {
                found.truncate(before + MAX_PER_RULE);
            }
        }
        if found.is_empty() {
            return;
        }
        if !self.global.is_empty() || !allowed.is_empty() {
            let bytes = text.as_bytes();
            found.retain(|c| {
                if !matches!(self.rules[c.rule].kind, Kind::Builtin(_)) {
                    return true;
                }
                if allowed.iter().any(|&(s, e)| nested((s, e), (c.start, c.end))) {
                    return false;
                }
                let secret = &bytes[c.start..c.end];
                let line = line_of(bytes, c.start, c.end);
                !self.global.iter().any(|a| a.allows(secret, secret, line))
            });
        }
        for c in dedup(found) {
            out.push(Finding::new(
                Category::Secret,
                &self.rules[c.rule].id,
                c.start,
                c.end,
                c.score,
            ));
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    rule: usize,
    start: usize,
    end: usize,
    score: f32,
}

fn nested(a: (usize, usize), b: (usize, usize)) -> bool {
    (a.0 <= b.0 && b.1 <= a.1) || (b.0 <= a.0 && a.1 <= b.1)
}

/// One finding per span: when one candidate's span holds another's, the
/// higher score wins (the earlier rule, built-ins first, on a tie).
fn dedup(mut c: Vec<Cand>) -> Vec<Cand> {
    c.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)).then(a.rule.cmp(&b.rule)));
    let mut kept: Vec<Cand> = Vec::with_capacity(c.len());
    // Index in `kept` of the kept candidate reaching furthest right.
    let mut reach: Option<usize> = None;
    for f in c {
        if let Some(k) = reach {
            let cont = kept[k];
            if cont.start <= f.start && f.end <= cont.end {
                if f.score > cont.score {
                    kept[k] = f;
                }
                continue;
            }
        }
        kept.push(f);
        let last = kept.len() - 1;
        match reach {
            Some(k) if kept[k].end >= f.end => {}
            _ => reach = Some(last),
        }
    }
    kept.sort_by_key(|k| (k.start, k.end));
    kept.dedup_by(|b, a| a.start == b.start && a.end == b.end);
    kept
}

/// The line(s) holding `start..end`.
fn line_of(bytes: &[u8], start: usize, end: usize) -> &[u8] {
    let s = bytes[..start].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let e = bytes[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| end + p);
    &bytes[s..e]
}

impl GlRule {
    fn scan(
        &self,
        rule: usize,
        text: &str,
        global: &[Allowlist],
        out: &mut Vec<Cand>,
        allowed: &mut Vec<(usize, usize)>,
    ) {
        let bytes = text.as_bytes();
        let mut n = 0;
        for caps in self.re.captures_iter(bytes) {
            let Some(whole) = caps.get(0) else { continue };
            let secret = match self.secret_group {
                Some(g) => caps.get(g),
                // gitleaks: the first group that matched something, else the match.
                None => (1..caps.len())
                    .filter_map(|g| caps.get(g))
                    .find(|m| !m.is_empty())
                    .or(Some(whole)),
            };
            let Some(secret) = secret else { continue };
            let (mut s, mut e) = trim_newlines(bytes, secret.start(), secret.end());
            if s >= e || e - s > MAX_SECRET {
                continue;
            }
            let sec = &bytes[s..e];
            if let Some(min) = self.entropy {
                if entropy(sec) <= min {
                    continue;
                }
                // gitleaks: a generic match needs a digit.
                if self.generic && !sec.iter().any(u8::is_ascii_digit) {
                    continue;
                }
            }
            let line = line_of(bytes, whole.start(), whole.end());
            let wm = whole.as_bytes();
            if self.allowlists.iter().chain(global).any(|a| a.allows(sec, wm, line)) {
                allowed.push((s, e));
                continue;
            }
            // A byte regex may cut a multi-byte character: widen to boundaries.
            while s > 0 && !text.is_char_boundary(s) {
                s -= 1;
            }
            while e < text.len() && !text.is_char_boundary(e) {
                e += 1;
            }
            out.push(Cand {
                rule,
                start: s,
                end: e,
                score: self.score,
            });
            n += 1;
            if n >= MAX_PER_RULE {
                break;
            }
        }
    }
}

fn trim_newlines(bytes: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && matches!(bytes[s], b'\n' | b'\r') {
        s += 1;
    }
    while e > s && matches!(bytes[e - 1], b'\n' | b'\r') {
        e -= 1;
    }
    (s, e)
}

impl Builtin {
    fn scan(&self, rule: usize, text: &str, out: &mut Vec<Cand>) {
        let mut n = 0;
        let mut tries = 0;
        for caps in self.re.captures_iter(text) {
            // PEM candidates scan ahead up to 16 KiB each: bound the tries.
            tries += 1;
            if n >= MAX_PER_RULE || (self.check == Check::PrivateKey && tries > 4 * MAX_PER_RULE) {
                break;
            }
            let Some(whole) = caps.get(0) else { continue };
            let group = (1..caps.len()).rev().find_map(|g| caps.get(g)).unwrap_or(whole);
            let hit = match self.check {
                Check::PrivateKey => private_key(text, whole.start(), whole.end()),
                Check::UriPassword => caps.get(2).and_then(|p| {
                    let user = caps.get(1).map_or("", |u| u.as_str());
                    uri_password(user, p.as_str()).then_some((p.start(), p.end(), self.score))
                }),
                Check::Generic => {
                    let name = caps.get(1).map_or("", |m| m.as_str());
                    let quoted = caps.get(5).is_none();
                    generic(name, group.as_str(), quoted).map(|sc| (group.start(), group.end(), sc))
                }
                _ => {
                    let secret = caps.get(1).unwrap_or(whole);
                    if secret.len() > MAX_SECRET {
                        continue;
                    }
                    self.validate(text, secret.start(), secret.as_str())
                        .map(|sc| (secret.start(), secret.end(), sc))
                }
            };
            if let Some((s, e, score)) = hit {
                if e - s > MAX_SECRET && self.check != Check::PrivateKey {
                    continue;
                }
                out.push(Cand {
                    rule,
                    start: s,
                    end: e,
                    score,
                });
                n += 1;
            }
        }
    }

    /// Validates a provider-format candidate; the score, or `None`.
    fn validate(&self, text: &str, at: usize, s: &str) -> Option<f32> {
        let sc = self.score;
        match self.check {
            Check::AwsKeyId => {
                let body = &s[4..];
                // Key ids are base32 (A-Z, 2-7); the documented example ends in EXAMPLE.
                let base32 = body
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
                (base32 && !s.ends_with("EXAMPLE") && random_looking(body, 3.0)).then_some(sc)
            }
            Check::AwsSecret => {
                let b = s.as_bytes();
                let mixed = b.iter().any(u8::is_ascii_lowercase)
                    && b.iter().any(u8::is_ascii_uppercase)
                    && b.iter().any(|c| c.is_ascii_digit() || *c == b'/' || *c == b'+');
                (mixed && random_looking(s, 4.0) && !has_word(s) && near_aws(text, at, s.len())).then_some(sc)
            }
            Check::GitHub => {
                let body = &s[4..];
                if !random_looking(body, 3.5) {
                    return None;
                }
                if body.len() == 36 && github_checksum_ok(body) {
                    Some(0.95)
                } else {
                    Some(0.85)
                }
            }
            Check::Prefixed {
                prefix_len,
                min_entropy,
            } => {
                let body = s.get(prefix_len..)?;
                random_looking(body, min_entropy).then_some(sc)
            }
            Check::OpenAi => {
                if s.contains("T3BlbkFJ") {
                    let body = s.replacen("T3BlbkFJ", "", 1);
                    return random_looking(&body[3..], 3.8).then_some(0.95);
                }
                let body = s
                    .strip_prefix("sk-proj-")
                    .or_else(|| s.strip_prefix("sk-svcacct-"))
                    .or_else(|| s.strip_prefix("sk-admin-"))?;
                (body.len() >= 40 && random_looking(body, 4.0)).then_some(0.88)
            }
            Check::SlackToken => slack_token(s).then_some(sc),
            Check::SlackWebhook => {
                let last = s.rsplit('/').next().unwrap_or("");
                (last.len() >= 16 && random_looking(last, 3.0)).then_some(sc)
            }
            Check::Stripe => {
                let body = &s[8..];
                if !random_looking(body, 3.5) {
                    return None;
                }
                Some(if s.contains("_live_") { sc } else { 0.8 })
            }
            Check::AzureKey => {
                let lenient = base64::engine::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::GeneralPurposeConfig::new()
                        .with_decode_allow_trailing_bits(true)
                        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
                );
                let dec = lenient.decode(s).ok()?;
                (dec.len() >= 32 && random_looking(s, 4.2)).then_some(sc)
            }
            Check::Jwt => jwt(s).then_some(sc),
            Check::AuthHeader => auth_header(s).then_some(sc),
            Check::CurlUser => {
                let (user, pass) = s.split_once(':')?;
                uri_password(user, pass).then_some(sc)
            }
            Check::PrivateKey | Check::UriPassword | Check::Generic => None,
        }
    }
}

/// A PEM private key block starting at `at` (its BEGIN line). The span runs
/// to the END line, or to the end of the base64 body when it is cut off.
fn private_key(text: &str, at: usize, header: usize) -> Option<(usize, usize, f32)> {
    let rest = &text[at..];
    let window = &rest[..floor_boundary(rest, MAX_PEM)];
    let header_end = header - at;
    let (body_end, end) = match window[header_end..].find("-----END") {
        Some(p) => {
            let e = header_end + p;
            let close = window[e + 8..].find("-----").map_or(window.len(), |q| e + 8 + q + 5);
            (e, close)
        }
        None => {
            let body = &window[header_end..];
            let len = body
                .bytes()
                .position(|b| !(b.is_ascii_alphanumeric() || b"+/=\r\n\t \\:-,".contains(&b)))
                .unwrap_or(body.len());
            (header_end + len, header_end + len)
        }
    };
    let body = &window[header_end..body_end];
    // Count the base64 payload, skipping `Proc-Type:`-style headers and
    // escaped newlines.
    let mut payload = 0usize;
    let mut distinct = [false; 128];
    for line in body.split(['\n', '\r']).flat_map(|l| l.split("\\n")) {
        let line = line.trim();
        if line.contains(':') {
            continue;
        }
        for b in line.bytes() {
            if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' {
                payload += 1;
                distinct[b as usize] = true;
            }
        }
    }
    let kinds = distinct.iter().filter(|d| **d).count();
    let end = trim_end(text, at, at + end);
    (payload >= 64 && kinds >= 20).then_some((at, end, 0.95))
}

fn trim_end(text: &str, start: usize, mut end: usize) -> usize {
    let b = text.as_bytes();
    while end > start && b[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    end
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An AWS key id or an `aws…secret` keyword within 256 bytes.
fn near_aws(text: &str, at: usize, len: usize) -> bool {
    let lo = floor_boundary(text, at.saturating_sub(256));
    let hi = floor_boundary(text, at + len + 256);
    let win = text[lo..hi].to_ascii_lowercase();
    const KEYS: &[&str] = &[
        "aws_secret",
        "aws-secret",
        "awssecret",
        "secret_access_key",
        "secretaccesskey",
        "secret-access-key",
    ];
    if KEYS.iter().any(|k| win.contains(k)) {
        return true;
    }
    // An access key id (case kept in `text`).
    let raw = &text.as_bytes()[lo..hi];
    raw.windows(20).any(|x| {
        (x.starts_with(b"AKIA") || x.starts_with(b"ASIA"))
            && x[4..].iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

fn slack_token(s: &str) -> bool {
    let Some((_, body)) = s.split_once('-') else {
        return false;
    };
    if s.starts_with("xoxe") {
        // Configuration tokens: `xoxe.xoxp-1-<long>` and refresh `xoxe-1-<long>`.
        let tail = body.strip_prefix("1-").unwrap_or("");
        return tail.len() >= 100 && random_looking(tail, 3.5);
    }
    let parts: Vec<&str> = body.split('-').collect();
    let numeric = parts
        .iter()
        .filter(|p| p.len() >= 6 && p.bytes().all(|b| b.is_ascii_digit()))
        .count();
    let last = parts.last().copied().unwrap_or("");
    // Bot/user/app tokens carry numeric workspace and user ids, then a random tail.
    numeric >= 1
        && last.len() >= 8
        && (random_looking(last, 3.0) || numeric >= 2 && last.len() >= 24 && !placeholder(last))
}

fn jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        return false;
    };
    let sig = parts.next().unwrap_or("");
    let Some(header) = b64url_json(h) else { return false };
    let Some(alg) = header.get("alg").and_then(|a| a.as_str()) else {
        return false;
    };
    // The payload should be JSON too; `alg: none` tokens carry no signature.
    let payload_ok = b64url_json(p).is_some();
    payload_ok && (sig.len() >= 16 || alg.eq_ignore_ascii_case("none"))
}

fn b64url_json(part: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let part = part.trim_end_matches('=');
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice::<serde_json::Value>(&raw).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

fn auth_header(s: &str) -> bool {
    // Basic: base64 of `user:password`.
    if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(s)
        && let Ok(dec) = std::str::from_utf8(&raw)
        && let Some((u, p)) = dec.split_once(':')
    {
        return !u.is_empty() && uri_password(u, p);
    }
    if s.starts_with("eyJ") {
        // JWT bearer: the JWT rule reports it with its own validation.
        return jwt(s);
    }
    s.len() >= 20 && s.bytes().any(|b| b.is_ascii_digit()) && random_looking(s, 3.5)
}

/// A password embedded in a URI, not a placeholder.
fn uri_password(user: &str, pass: &str) -> bool {
    let p = pass.to_ascii_lowercase();
    const DUMMY: &[&str] = &[
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "changeme",
        "xxx",
        "yyy",
        "***",
        "...",
        "example",
        "test",
        "user",
        "username",
        "admin",
        "root",
        "guest",
        "foo",
        "bar",
        "dummy",
        "mypassword",
        "your_password",
        "yourpassword",
        "pw",
        "p",
        "x",
        "token",
        "null",
        "none",
        "1234",
        "12345",
        "123456",
    ];
    if pass.len() < 3 || DUMMY.contains(&p.as_str()) || p == user.to_ascii_lowercase() || placeholder(pass) {
        return false;
    }
    if variable_ref(pass) {
        return false;
    }
    // `%s`/`%(x)s` format strings and brackets are templates.
    !(pass.contains('%') && !pass.bytes().any(|b| b.is_ascii_hexdigit())
        || pass.starts_with('[')
        || pass.starts_with('{'))
}

/// A generic `name = value` assignment; returns the score.
fn generic(name: &str, value: &str, quoted: bool) -> Option<f32> {
    let n = name.to_ascii_lowercase();
    // Names that hold something other than the secret itself.
    const NOT_SECRET: &[&str] = &[
        "author",
        "oauth_url",
        "_id",
        "-id",
        ".id",
        "_name",
        "-name",
        ".name",
        "_url",
        "-url",
        "_uri",
        "_path",
        "_file",
        "_type",
        "_length",
        "_len",
        "_size",
        "_count",
        "_ttl",
        "expires",
        "expiry",
        "_endpoint",
        "_version",
        "_hash",
        "_field",
        "_header",
        "_prefix",
        "_label",
        "_key_id",
        "public",
        "csrf",
        "xsrf",
        "_policy",
        "_mode",
        "_format",
        "_dir",
        "_env",
        "_var",
        "_ref",
        "_arn",
        "_provider",
        "_method",
        "_scope",
        "tokenizer",
        "_enabled",
        "_required",
        "_regex",
        "_pattern",
        "_timeout",
        "secretary",
        "max_tokens",
        "_tokens",
        "tokens_",
        "_store",
        "_manager",
    ];
    // Parts of a name that mark it as not holding a secret value.
    const NOT_SECRET_PART: &[&str] = &[
        "author",
        "public",
        "csrf",
        "xsrf",
        "store",
        "jsonwebtoken",
        "tokeniz",
        "secretar",
    ];
    if NOT_SECRET
        .iter()
        .any(|w| n.ends_with(w) || (w.len() > 6 && n.contains(w)))
        || NOT_SECRET_PART.iter().any(|w| n.contains(w))
    {
        return None;
    }
    let v = value.trim();
    if v.len() < 8 || v.len() > 512 {
        return None;
    }
    let password = n.contains("pass") || n.contains("pwd");
    if placeholder(v) || variable_ref(v) || file_path(v) || is_uuid(v) {
        return None;
    }
    let b = v.as_bytes();
    let lower = v.to_ascii_lowercase();
    if matches!(lower.as_str(), "true" | "false" | "null" | "none" | "undefined" | "nil") {
        return None;
    }
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.contains("://") {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hex = b.iter().all(u8::is_ascii_hexdigit);
    if hex && b.len() < 32 {
        return None;
    }
    // Names and identifiers: only letters and `_.-`.
    if b.iter().all(|c| c.is_ascii_alphabetic() || b"_.-".contains(c)) {
        return None;
    }
    // Values that are themselves the name of a secret (`token: api_token`).
    for w in ["password", "passwd", "secret", "token", "apikey", "api_key"] {
        if lower.contains(w) {
            return None;
        }
    }
    // Unquoted `a=b` is another assignment, not a value (base64 padding aside).
    if !quoted && v.trim_end_matches('=').contains('=') {
        return None;
    }
    let e = entropy(b);
    let has_digit = b.iter().any(u8::is_ascii_digit);
    if password {
        let classes = [
            b.iter().any(u8::is_ascii_lowercase),
            b.iter().any(u8::is_ascii_uppercase),
            has_digit,
            b.iter().any(|c| !c.is_ascii_alphanumeric()),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if v.contains(' ') || classes < 2 || e < 2.8 {
            return None;
        }
        return Some(if e >= 3.5 { 0.75 } else { 0.65 });
    }
    if v.len() < 16 || !has_digit || e < 3.5 || v.contains(' ') {
        return None;
    }
    if b.iter()
        .filter(|c| !(c.is_ascii_alphanumeric() || b"+/=_-.~".contains(c)))
        .count()
        > 0
    {
        return None;
    }
    Some(if e >= 4.2 { 0.78 } else { 0.7 })
}

fn is_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn file_path(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    if l.starts_with("./") || l.starts_with("../") || l.starts_with("~/") || l.starts_with("file:") {
        return true;
    }
    if l.len() > 2 && l.as_bytes()[1] == b':' && matches!(l.as_bytes()[2], b'\\' | b'/') {
        return true;
    }
    if l.starts_with('/') && l[1..].contains('/') && l.bytes().filter(|b| *b == b'/').count() >= 2 {
        return true;
    }
    const EXT: &[&str] = &[
        ".pem",
        ".key",
        ".json",
        ".txt",
        ".yaml",
        ".yml",
        ".p12",
        ".pfx",
        ".crt",
        ".cer",
        ".env",
        ".properties",
        ".xml",
        ".conf",
        ".cfg",
        ".ini",
        ".keytab",
        ".jks",
        ".js",
        ".py",
        ".html",
        ".png",
        ".jpg",
        ".gif",
        ".svg",
        ".md",
        ".toml",
        ".lock",
    ];
    EXT.iter().any(|e| l.ends_with(e))
}

/// `$VAR`, `${VAR}`, `%VAR%`, `{{ x }}`, `process.env.X`, `os.environ[..]`,
/// `var.x`, dotted identifiers.
fn variable_ref(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    if v.starts_with('$') || v.starts_with('%') && v.ends_with('%') || v.starts_with("{{") || v.starts_with("#{") {
        return true;
    }
    const REFS: &[&str] = &[
        "${",
        "{{",
        "process.env",
        "os.environ",
        "getenv",
        "env(",
        "env[",
        "env.",
        "var.",
        "vars.",
        "secrets.",
        "config.",
        "settings.",
        "params.",
        "self.",
        "this.",
        "args.",
    ];
    if REFS.iter().any(|r| l.contains(r)) {
        return true;
    }
    // Dotted identifier chains (`aws_db_instance.default.password`).
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        })
        && parts.iter().filter(|p| p.bytes().any(|b| b.is_ascii_digit())).count() <= 1
}

/// Obvious placeholders and redactions.
fn placeholder(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "xxxx",
        "****",
        "....",
        "____",
        "----",
        "####",
        "0000000",
        "changeme",
        "change_me",
        "change-me",
        "example",
        "placeholder",
        "your_",
        "your-",
        "yourtoken",
        "yourkey",
        "yourpassword",
        "<",
        ">",
        "redacted",
        "dummy",
        "sample",
        "replace",
        "insert",
        "fixme",
        "todo",
        "_here",
        "-here",
        "enter_",
        "fake",
        "notreal",
        "not_real",
        "foobar",
        "lorem",
        "abcdef",
        "123456",
        "qwerty",
        "secret_",
        "my_",
        "test_key",
        "testkey",
        "mock",
    ];
    if WORDS.iter().any(|w| l.contains(w)) {
        return true;
    }
    low_diversity(l.as_bytes())
}

/// Few distinct characters, or one character most of the string.
fn low_diversity(b: &[u8]) -> bool {
    let mut counts = [0usize; 256];
    for &c in b {
        counts[c as usize] += 1;
    }
    let distinct = counts.iter().filter(|c| **c > 0).count();
    let max = counts.iter().copied().max().unwrap_or(0);
    distinct < 5.min(b.len()) || (b.len() >= 12 && max * 3 > b.len())
}

/// An ascending or descending run of 6 or more (`abcdef`, `123456`).
fn sequential(b: &[u8]) -> bool {
    let mut up = 1;
    let mut down = 1;
    for w in b.windows(2) {
        let (x, y) = (w[0].to_ascii_lowercase(), w[1].to_ascii_lowercase());
        up = if x.is_ascii_alphanumeric() && y == x.wrapping_add(1) {
            up + 1
        } else {
            1
        };
        down = if x.is_ascii_alphanumeric() && y == x.wrapping_sub(1) {
            down + 1
        } else {
            1
        };
        if up >= 6 || down >= 6 {
            return true;
        }
    }
    false
}

/// Random enough to be a generated token: not a placeholder, no long
/// sequential run, enough entropy.
fn random_looking(body: &str, min_entropy: f64) -> bool {
    let b = body.as_bytes();
    if b.is_empty() || placeholder(body) || sequential(b) {
        return false;
    }
    entropy(b) >= min_entropy.min(max_entropy(b.len()) * 0.85)
}

/// The highest entropy a string of `n` characters can have.
fn max_entropy(n: usize) -> f64 {
    (n.max(1) as f64).log2()
}

/// Two or more English words of 5+ letters in a row mean prose, not a key.
fn has_word(s: &str) -> bool {
    s.split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| w.len() >= 12 && w.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Shannon entropy, bits per byte.
pub fn entropy(b: &[u8]) -> f64 {
    if b.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &c in b {
        counts[c as usize] += 1;
    }
    let n = b.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

fn base62(mut n: u32, alphabet: &[u8; 62]) -> [u8; 6] {
    let mut out = [alphabet[0]; 6];
    for slot in out.iter_mut().rev() {
        *slot = alphabet[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Classic GitHub tokens end in a 6-character base62 CRC32 of the 30
/// random characters before it.
fn github_checksum_ok(body: &str) -> bool {
    const A1: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const A2: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let b = body.as_bytes();
    if b.len() != 36 {
        return false;
    }
    let (rand, check) = b.split_at(30);
    let c = crc32(rand);
    base62(c, A1) == check || base62(c, A2) == check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, Limits};

    fn engine(pack: SecretsPack) -> Engine {
        Engine::new(vec![Box::new(pack)], Limits::default()).expect("engine")
    }

    fn find(text: &str) -> Vec<(String, String)> {
        let e = engine(SecretsPack::builtin());
        e.scan(text)
            .findings
            .iter()
            .map(|f| (f.rule.to_string(), text[f.start..f.end].to_string()))
            .collect()
    }

    fn rules_of(text: &str) -> Vec<String> {
        find(text).into_iter().map(|(r, _)| r).collect()
    }

    /// A random-looking body of `n` characters from `alphabet`, seeded.
    fn rand(n: usize, alphabet: &[u8], seed: u64) -> String {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize] as char
            })
            .collect()
    }

    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const B64: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/";
    const HEX: &[u8] = b"0123456789abcdef";

    fn assert_secret(text: &str, rule: &str, secret: &str) {
        let got = find(text);
        assert!(
            got.iter().any(|(r, s)| r == rule && s == secret),
            "expected {rule} = {secret:?} in {text:?}, got {got:?}"
        );
    }

    fn assert_clean(text: &str) {
        let got = find(text);
        assert!(got.is_empty(), "expected no finding in {text:?}, got {got:?}");
    }

    #[test]
    fn private_keys() {
        let body = rand(64 * 8, B64, 1);
        let lines: Vec<&str> = (0..8).map(|i| &body[i * 64..(i + 1) * 64]).collect();
        for kind in ["RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "", "DSA "] {
            let block = format!(
                "-----BEGIN {kind}PRIVATE KEY-----\n{}\n-----END {kind}PRIVATE KEY-----",
                lines.join("\n")
            );
            let text = format!("key:\n{block}\nmore");
            assert_secret(&text, "secret.private-key", &block);
        }
        let pgp = format!(
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: x\n\n{}\n-----END PGP PRIVATE KEY BLOCK-----",
            lines.join("\n")
        );
        assert_secret(&pgp, "secret.private-key", &pgp);
        // Escaped newlines inside a JSON string.
        let json = format!(
            "{{\"k\": \"-----BEGIN RSA PRIVATE KEY-----\\n{}\\n-----END RSA PRIVATE KEY-----\\n\"}}",
            lines.join("\\n")
        );
        assert_eq!(rules_of(&json), vec!["secret.private-key"]);
        assert_clean("-----BEGIN PRIVATE KEY-----\nanything\n-----END PRIVATE KEY-----");
        assert_clean("-----BEGIN OPENSSH PRIVATE KEY----------END OPENSSH PRIVATE KEY-----");
        assert_clean(&format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            lines.join("\n")
        ));
    }

    #[test]
    fn aws() {
        let id = format!("AKIA{}", rand(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 2));
        assert_secret(&format!("aws_access_key_id = {id}\n"), "secret.aws-access-key-id", &id);
        assert_clean("key = AKIAXXXXXXXXXXXXXXXX");
        assert_clean("AKIAIOSFODNN7EXAMPLE");
        assert_clean("TODAYINASIAASACKOFRICEFELLOVER");
        let secret = rand(40, B64, 3);
        let text = format!("aws_access_key_id={id}\naws_secret_access_key={secret}\n");
        assert_secret(&text, "secret.aws-secret-access-key", &secret);
        // The same 40 characters with no AWS context are not reported by this rule.
        let got = rules_of(&format!("value {secret} here"));
        assert!(!got.contains(&"secret.aws-secret-access-key".to_string()), "{got:?}");
    }

    #[test]
    fn github() {
        let t = format!("ghp_{}", rand(36, B62, 4));
        assert_secret(&format!("token: {t}"), "secret.github-token", &t);
        assert_clean("ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        // A checksummed token scores higher.
        let r = rand(30, B62, 5);
        let c = base62(
            crc32(r.as_bytes()),
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        );
        let good = format!("ghp_{r}{}", std::str::from_utf8(&c).unwrap());
        let e = engine(SecretsPack::builtin());
        let f = &e.scan(&good).findings[0];
        assert!(f.score >= 0.95);
        let fine = format!("github_pat_{}_{}", rand(22, B62, 6), rand(59, B62, 7));
        assert_secret(&fine, "secret.github-fine-grained-pat", &fine);
        assert_clean("github_pat_xxxxxxxxxxxxxxxxxxxxxx_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    }

    #[test]
    fn provider_prefixes() {
        let cases = [
            ("secret.gitlab-token", format!("glpat-{}", rand(20, B62, 8))),
            ("secret.stripe-key", format!("sk_live_{}", rand(24, B62, 9))),
            ("secret.google-api-key", format!("AIza{}", rand(35, B62, 10))),
            (
                "secret.anthropic-api-key",
                format!("sk-ant-api03-{}AA", rand(93, B62, 11)),
            ),
            ("secret.npm-token", format!("npm_{}", rand(36, B62, 12))),
            (
                "secret.pypi-token",
                format!("pypi-AgEIcHlwaS5vcmc{}", rand(60, B62, 13)),
            ),
            (
                "secret.sendgrid-api-key",
                format!("SG.{}.{}", rand(22, B62, 14), rand(43, B62, 15)),
            ),
            (
                "secret.openai-api-key",
                format!("sk-{}T3BlbkFJ{}", rand(20, B62, 16), rand(20, B62, 17)),
            ),
            ("secret.openai-api-key", format!("sk-proj-{}", rand(100, B62, 18))),
            (
                "secret.huggingface-token",
                format!("hf_{}", rand(34, b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", 19)),
            ),
            ("secret.digitalocean-token", format!("dop_v1_{}", rand(64, HEX, 20))),
            ("secret.shopify-token", format!("shpat_{}", rand(32, HEX, 21))),
        ];
        for (rule, secret) in cases {
            assert_secret(&format!("value: \"{secret}\"\n"), rule, &secret);
        }
        for neg in [
            "glpat-XXXXXXXXXXX-XXXXXXXX",
            "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
            "AIzaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "AIzaSyabcdefghijklmnopqrstuvwxyz1234567",
            "sk-ant-api03-abc123xyz-456de-klMnopqrstuvwx-3456yza789bcde-1234fghijklmnopAA",
            "npm_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "sk-proj-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "- (id)hf_requiredCharacteristicTypesForDisplayMetadata;",
        ] {
            assert_clean(neg);
        }
    }

    #[test]
    fn azure_ad_and_curl() {
        let sec = format!("bP8{}Q~{}", 8, rand(34, B62, 38));
        assert_secret(&format!("client_secret={sec}\n"), "secret.azure-ad-client-secret", &sec);
        assert_clean("client_secret=bP88Q~xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        let pw = rand(16, B62, 39);
        let cred = format!("developer:{pw}");
        assert_secret(
            &format!("curl -X GET -u {cred} https://api.internal/x"),
            "secret.curl-basic-auth",
            &cred,
        );
        for neg in [
            "curl -u \"${username}:${password}\"",
            "curl --user \"xxx:yyy\"",
            "curl -u username:token",
            "curl -u \"$USER:$PASS\" https://x",
        ] {
            assert_clean(neg);
        }
    }

    #[test]
    fn slack() {
        let t = format!(
            "xoxb-{}-{}-{}",
            rand(12, b"0123456789", 22),
            rand(13, b"0123456789", 23),
            rand(24, B62, 24)
        );
        assert_secret(&format!("SLACK={t}"), "secret.slack-token", &t);
        let hook = format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            rand(8, B62, 25),
            rand(8, B62, 26),
            rand(24, B62, 27)
        );
        assert_secret(&format!("url: {hook}\n"), "secret.slack-webhook-url", &hook);
        for neg in [
            "xoxb-xxxxxxxxx-xxxxxxxxxx-xxxxxxxxxxxx",
            "xoxb-12345-abcd234",
            "xoxb-Slack_BOT_TOKEN",
            "https://indieweb.org/images/3/35/2018-250-xoxo-indieweb-1.jpg",
        ] {
            assert_clean(neg);
        }
    }

    #[test]
    fn twilio_and_azure() {
        let sk = format!("SK{}", rand(32, HEX, 28));
        assert_secret(&format!("TWILIO_API_KEY={sk}"), "secret.twilio-api-key", &sk);
        assert_clean(&format!("id={sk}"));
        let key = rand(86, B64, 29) + "==";
        let conn =
            format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net");
        assert_secret(&conn, "secret.azure-storage-key", &key);
        assert_clean("AccountKey=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx;");
    }

    #[test]
    fn jwt_needs_a_json_header_with_alg() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as U;
        let h = U.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = U.encode(br#"{"sub":"1234567890","name":"A","iat":1516239022}"#);
        let t = format!("{h}.{p}.{}", rand(43, B62, 30));
        assert_secret(&format!("Authorization: Bearer {t}"), "secret.jwt", &t);
        let bad = U.encode(br#"{"typ":"JWT"}"#);
        assert_clean(&format!("x {bad}.{p}.{}", rand(43, B62, 30)));
    }

    #[test]
    fn uri_passwords() {
        let pw = rand(14, B62, 31);
        for scheme in [
            "postgres",
            "postgresql",
            "mysql",
            "mongodb+srv",
            "redis",
            "rediss",
            "amqps",
            "mssql",
            "ftp",
            "smtp",
            "https",
        ] {
            let text = format!("DATABASE_URL={scheme}://app:{pw}@db.internal:5432/app");
            assert_secret(&text, "secret.uri-password", &pw);
        }
        for neg in [
            "postgres://user:password@localhost/db",
            "mysql://root:${DB_PASSWORD}@db/app",
            "redis://:changeme@cache:6379",
            "https://user:<token>@github.com/x",
            "amqp://guest:guest@rabbit:5672/",
            "see https://example.com/path for details",
        ] {
            assert_clean(neg);
        }
    }

    #[test]
    fn generic_assignment() {
        let v = rand(24, B62, 32);
        assert_secret(&format!("API_KEY = \"{v}\""), "secret.generic-assignment", &v);
        assert_secret(&format!("client_secret: {v}\n"), "secret.generic-assignment", &v);
        assert_secret(
            "db_password=Tr0ub4dor&3x\n",
            "secret.generic-assignment",
            "Tr0ub4dor&3x",
        );
        for neg in [
            "password = changeme123",
            "token: <your-token>",
            "password: ${DB_PASSWORD}",
            "api_key = \"****************\"",
            "secret = xxxxxxxxxxxxxxxxxxxx",
            "api_key = os.environ['API_KEY']",
            "password = var.db_password",
            "token_file = /etc/app/token.txt",
            "token = 550e8400-e29b-41d4-a716-446655440000",
            "secret = 3f2a9c1b",
            "auth: true",
            "max_tokens = 4096",
            "The password is required: please enter it below.",
            "tokenizer = bert-base-uncased",
        ] {
            assert_clean(neg);
        }
    }

    #[test]
    fn span_is_exactly_the_secret() {
        let v = rand(32, B62, 33);
        let text = format!("config:\n  api_key: '{v}' # prod\n");
        let e = engine(SecretsPack::builtin());
        let r = e.scan(&text);
        assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
        assert_eq!(&text[r.findings[0].start..r.findings[0].end], v);
        assert_eq!(r.findings[0].category, Category::Secret);
    }

    #[test]
    fn prose_runs_no_regex_and_finds_nothing() {
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(2000);
        assert_clean(&prose);
        let pack = SecretsPack::builtin();
        let input = Input::new(&prose);
        let mut out = Vec::new();
        pack.scan(&input, &vec![false; pack.rules()], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn hostile_input_is_bounded() {
        // A huge line of token characters next to a trigger.
        let huge = format!("password = \"{}\"", "A1b2".repeat(200_000));
        let _ = find(&huge);
        let many = format!("AKIA{}\n", rand(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 34)).repeat(1000);
        let n = find(&many).len();
        assert!(n <= MAX_PER_RULE, "{n}");
        let begin = "-----BEGIN RSA PRIVATE KEY-----\n".repeat(5000);
        let _ = find(&begin);
        let _ = find(&"ghp_".repeat(100_000));
        let _ = find(&"://:@".repeat(100_000));
        let _ = find("é-----BEGIN PRIVATE KEY-----é");
    }

    #[test]
    fn gitleaks_loader() {
        let toml = r#"
title = "t"
[allowlist]
regexes = ['''^EXAMPLE''']
stopwords = ["notsecret"]

[[rules]]
id = "acme-token"
regex = '''\b(acme_[a-z0-9]{24})\b'''
keywords = ["acme_"]
entropy = 3.0

[[rules]]
id = "bad-regex"
regex = '''(?<=x)abc'''
keywords = ["abc"]

[[rules]]
id = "path-only"
path = '''\.p12$'''

[[rules]]
id = "grouped"
regex = '''(?i)zzkey\s*=\s*(['"])([a-z0-9]{16})(['"])'''
secretGroup = 2
keywords = ["zzkey"]
[[rules.allowlists]]
regexTarget = "line"
regexes = ['''# test''']
"#;
        let pack = SecretsPack::with_gitleaks(toml).expect("loads");
        assert_eq!(pack.skipped_rules(), ["bad-regex", "path-only"]);
        let e = engine(pack);
        let tok = format!("acme_{}", rand(24, b"abcdefghijklmnopqrstuvwxyz0123456789", 35));
        let text = format!("x = {tok}\n");
        let f = e.scan(&text).findings;
        assert_eq!(f.len(), 1);
        assert_eq!(&*f[0].rule, "secret.acme-token");
        assert_eq!(&text[f[0].start..f[0].end], tok);
        assert!(e.scan("acme_aaaaaaaaaaaaaaaaaaaaaaaa").findings.is_empty(), "entropy");
        assert!(e.scan("acme_notsecret1234567890abcde").findings.is_empty(), "stopword");
        let k = rand(16, b"abcdefghijklmnopqrstuvwxyz0123456789", 36);
        let text = format!("zzkey = '{k}'\n");
        let f = e.scan(&text).findings;
        assert_eq!(f.len(), 1);
        assert_eq!(&text[f[0].start..f[0].end], k);
        assert!(
            e.scan(&format!("zzkey = '{k}' # test\n")).findings.is_empty(),
            "line allowlist"
        );

        assert!(SecretsPack::with_gitleaks("[[rules]\nid=").is_err());
        assert!(SecretsPack::with_gitleaks("rules = 3").is_err());
        // A catastrophic-looking regex compiles to a linear matcher.
        let evil = "[[rules]]\nid = \"evil\"\nregex = '''(a+)+$'''\nkeywords = [\"a\"]\n";
        let e = engine(SecretsPack::with_gitleaks(evil).expect("loads"));
        let _ = e.scan(&format!("{}!", "a".repeat(100_000)));
        // A regex over the size limit is skipped, not fatal.
        let big = "[[rules]]\nid = \"big\"\nregex = '''(?:[a-z]{1000}){1000}'''\nkeywords = [\"a\"]\n";
        let p = SecretsPack::with_gitleaks(big).expect("loads");
        assert_eq!(p.skipped_rules(), ["big"]);
    }

    #[test]
    fn builtin_and_gitleaks_same_span_is_one_finding() {
        let toml = "[[rules]]\nid = \"gh\"\nregex = '''(ghp_[A-Za-z0-9]{36})'''\nkeywords = [\"ghp_\"]\n";
        let e = engine(SecretsPack::with_gitleaks(toml).expect("loads"));
        let t = format!("ghp_{}", rand(36, B62, 37));
        let f = e.scan(&t).findings;
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(&*f[0].rule, "secret.github-token");
    }
}
