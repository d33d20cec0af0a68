//! The scanning engine. Today it holds the tool-metadata pack (J2): hidden
//! instructions, invisible and deceptive Unicode, encoded payloads, suspicious
//! schemas and cross-server name collisions. Every finding carries a category,
//! a rule id, a severity, a JSON pointer into the scanned object, a byte span
//! within the string at that pointer and a short explanation.
//!
//! Matching runs on a folded view of each string (compatibility-normalized,
//! lower-cased, confusables mapped to Latin, invisible characters removed,
//! whitespace collapsed) that keeps a map back to the original bytes. Hidden
//! carriers (tag characters, zero-width bit strings, bidi-reversed text,
//! base64 and hex blobs) are decoded and the decoded text is scanned too.
//! Only the `regex` crate is used: matching is linear in the input.

pub mod format;
mod rules;
pub mod text;
mod tool;

use serde::Serialize;

pub use tool::{ToolScanner, collisions, scan_instructions, scan_tool, scan_value};

/// How bad a finding is on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The weight of one finding in the combined score.
    fn weight(self) -> f64 {
        match self {
            Severity::Low => 0.1,
            Severity::Medium => 0.46,
            Severity::High => 0.8,
            Severity::Critical => 0.95,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Instructions addressed to the model: tags, concealment, overrides.
    HiddenInstructions,
    /// Directions to read credentials, keys or private files.
    SensitiveAccess,
    /// Directions to send data somewhere.
    Exfiltration,
    /// Instructions that change how another tool behaves.
    Shadowing,
    /// Characters a reader does not see: tags, zero-width, variation selectors.
    InvisibleText,
    /// Text that shows something other than what it says: bidi overrides,
    /// homoglyphs, escape sequences, HTML comments.
    DeceptiveText,
    /// Base64 or hex blobs that decode to text.
    EncodedPayload,
    /// Parameters built to carry side-channel content.
    SuspiciousSchema,
    /// The same or a confusable name on two servers.
    Collision,
    /// Sizes beyond what a tool definition needs.
    Oversize,
    /// Shell commands that fetch and run remote code.
    DangerousCommand,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::HiddenInstructions => "hidden_instructions",
            Category::SensitiveAccess => "sensitive_access",
            Category::Exfiltration => "exfiltration",
            Category::Shadowing => "shadowing",
            Category::InvisibleText => "invisible_text",
            Category::DeceptiveText => "deceptive_text",
            Category::EncodedPayload => "encoded_payload",
            Category::SuspiciousSchema => "suspicious_schema",
            Category::Collision => "collision",
            Category::Oversize => "oversize",
            Category::DangerousCommand => "dangerous_command",
        }
    }
}

/// One rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub category: Category,
    pub rule: &'static str,
    pub severity: Severity,
    /// JSON pointer (RFC 6901) to the string the span is in.
    pub pointer: String,
    /// Byte offsets within that string.
    pub start: usize,
    pub end: usize,
    /// The finding's own weight, 0..1.
    pub score: f64,
    /// Short human explanation.
    pub message: String,
    /// The hidden carrier the text was decoded from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
}

/// The overall judgement of a scanned object (ordered: clean < suspicious < malicious).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Suspicious,
    Malicious,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Suspicious => "suspicious",
            Verdict::Malicious => "malicious",
        }
    }
}

/// Findings for one object, with the combined verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// 1 − Π(1 − wᵢ) over distinct rules (the strongest finding of each rule
    /// counts once, so one phrase repeated does not add up).
    pub fn score(&self) -> f64 {
        combine_rule_scores(self.findings.iter().map(|f| (f.rule, f.score)))
    }

    /// Malicious: a high finding, or medium findings from two rules.
    /// Suspicious: one medium rule. Low findings alone stay clean.
    pub fn verdict(&self) -> Verdict {
        let s = self.score();
        if s >= 0.7 {
            Verdict::Malicious
        } else if s >= 0.4 {
            Verdict::Suspicious
        } else {
            Verdict::Clean
        }
    }

    /// The most severe finding's severity.
    pub fn max_severity(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// Whether the object must be held for an admin even where first sight pins.
    pub fn high_risk(&self) -> bool {
        self.verdict() == Verdict::Malicious
    }

    pub(crate) fn push(&mut self, f: Finding) {
        // One finding per rule, pointer and span: the most severe one.
        match self
            .findings
            .iter_mut()
            .find(|g| g.rule == f.rule && g.pointer == f.pointer && g.start == f.start && g.end == f.end)
        {
            Some(g) if g.severity < f.severity => *g = f,
            Some(_) => {}
            None => self.findings.push(f),
        }
    }
}

/// 1 − Π(1 − wᵢ) over distinct rules, each rule counting with its strongest
/// weight, rounded to three decimals: the combined score of both scanners.
pub fn combine_rule_scores<'a>(weights: impl IntoIterator<Item = (&'a str, f64)>) -> f64 {
    let mut best: Vec<(&str, f64)> = Vec::new();
    for (rule, w) in weights {
        match best.iter_mut().find(|(r, _)| *r == rule) {
            Some((_, b)) => *b = b.max(w),
            None => best.push((rule, w)),
        }
    }
    let keep: f64 = best.iter().map(|(_, w)| 1.0 - w).product();
    ((1.0 - keep) * 1000.0).round() / 1000.0
}

/// Builds a finding with the severity's weight as its score.
pub(crate) fn finding(
    category: Category,
    rule: &'static str,
    severity: Severity,
    pointer: &str,
    span: (usize, usize),
    message: impl Into<String>,
) -> Finding {
    Finding {
        category,
        rule,
        severity,
        pointer: pointer.to_owned(),
        start: span.0,
        end: span.1,
        score: severity.weight(),
        message: message.into(),
        via: None,
    }
}

/// Escapes one JSON pointer reference token.
pub fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
