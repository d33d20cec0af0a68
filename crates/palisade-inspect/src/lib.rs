//! Content inspection: one engine, several rule packs, one prefiltered pass.
//!
//! A scan runs in this order, so clean text costs little:
//! 1. Size bound: at most [`Limits::max_scan_bytes`] are scanned; the rest is
//!    reported (`truncated`), never silently passed.
//! 2. Non-ASCII text only: hidden carriers (Unicode tags, zero-width bit
//!    strings, bidi overrides, variation selectors) are reported and decoded,
//!    and a folded view (NFKC, case folding, confusables, invisibles removed)
//!    is built for the rules that match words.
//! 3. One Aho-Corasick automaton over the literal triggers of every pack
//!    (ASCII case-insensitive) marks which rules may match.
//! 4. Each pack runs only the rules whose triggers fired, plus its
//!    trigger-less rules, which must gate themselves on a cheap feature
//!    (for example the token runs in [`Input::tokens`]).
//!
//! Only the `regex` crate is used: every rule is linear in its input.

pub mod injection;
pub mod pii;
pub mod secrets;

use std::cell::OnceCell;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use palisade_scan::text::{Folded, fold};
use serde::Serialize;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Instructions addressed to the model inside data.
    PromptInjection,
    /// Credentials, keys, tokens.
    Secret,
    /// Personal data: email, phone, card, IBAN, SSN, IP address.
    Pii,
    /// Invisible or deceptive characters that hide text from a reader.
    HiddenText,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::PromptInjection => "prompt_injection",
            Category::Secret => "secret",
            Category::Pii => "pii",
            Category::HiddenText => "hidden_text",
        }
    }

    /// Parses the names used in configuration and on the command line.
    pub fn parse(s: &str) -> Option<Category> {
        match s {
            "prompt_injection" | "injection" => Some(Category::PromptInjection),
            "secret" | "secrets" => Some(Category::Secret),
            "pii" => Some(Category::Pii),
            "hidden_text" => Some(Category::HiddenText),
            _ => None,
        }
    }
}

/// One rule that matched. Offsets are bytes into the scanned text; the
/// matched text itself is never stored, so a finding can be logged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub category: Category,
    /// Stable rule id, e.g. `injection.override`, `secret.aws-access-token`, `pii.email`.
    pub rule: Arc<str>,
    pub start: usize,
    pub end: usize,
    /// This finding's own weight, 0..1.
    pub score: f32,
}

impl Finding {
    pub fn new(category: Category, rule: &Arc<str>, start: usize, end: usize, score: f32) -> Finding {
        Finding {
            category,
            rule: Arc::clone(rule),
            start,
            end,
            score: score.clamp(0.0, 1.0),
        }
    }
}

/// What one scan sees. Packs read `text` (raw, for case-sensitive formats
/// such as keys) or [`Input::folded`] (for words and phrases).
pub struct Input<'a> {
    pub text: &'a str,
    /// Byte ranges of runs of 20 or more characters from the base64url, base64
    /// and hex alphabets (`A-Za-z0-9+/=_-`): candidate tokens and encoded
    /// payloads. Computed once, shared by the packs.
    pub tokens: Vec<(usize, usize)>,
    folded: OnceCell<Folded>,
}

impl<'a> Input<'a> {
    pub fn new(text: &'a str) -> Input<'a> {
        Input {
            text,
            tokens: token_runs(text, MIN_TOKEN_RUN),
            folded: OnceCell::new(),
        }
    }

    /// The folded view (lower case, NFKC, confusables mapped, invisible
    /// characters dropped, whitespace collapsed), built on first use.
    /// [`Folded::span`] maps folded offsets back to `text`.
    pub fn folded(&self) -> &Folded {
        self.folded.get_or_init(|| fold(self.text))
    }
}

/// Trigger positions kept per pack and scan; past it a pack scans the whole text.
const MAX_HITS: usize = 4096;

/// Shortest run reported in [`Input::tokens`].
pub const MIN_TOKEN_RUN: usize = 20;

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-')
}

/// Runs of token bytes at least `min` long. Skip search: a run of `min`
/// bytes starting anywhere in `i..=i + min - 1` must cover byte
/// `i + min - 1`, so when that byte is not a token byte the whole stretch is
/// skipped; prose is read about one byte in `min`.
pub fn token_runs(text: &str, min: usize) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let min = min.max(1);
    let mut i = 0;
    while i + min <= bytes.len() {
        let probe = i + min - 1;
        if !is_token_byte(bytes[probe]) {
            i = probe + 1;
            continue;
        }
        let mut start = probe;
        while start > i && is_token_byte(bytes[start - 1]) {
            start -= 1;
        }
        // `i` always follows a non-token byte (or is 0), so `start` is the
        // run's real start.
        let mut end = probe + 1;
        while end < bytes.len() && is_token_byte(bytes[end]) {
            end += 1;
        }
        if end - start >= min {
            out.push((start, end));
        }
        i = end + 1;
    }
    out
}

/// A set of rules of one kind.
pub trait Pack: Send + Sync {
    /// `injection`, `secrets`, `pii`.
    fn name(&self) -> &'static str;
    /// How many rules the pack has; rule indexes are `0..rules()`.
    fn rules(&self) -> usize;
    /// Literal triggers, matched ASCII case-insensitively over the raw text
    /// (and over the folded text when the input is not ASCII), with the index
    /// of the rule each one enables. A rule with no trigger always runs.
    fn triggers(&self) -> Vec<(String, usize)>;
    /// Runs the enabled rules (`enabled[i]`) and appends findings.
    fn scan(&self, input: &Input<'_>, enabled: &[bool], out: &mut Vec<Finding>);
    /// Like [`Pack::scan`], with where each trigger matched: `(rule, byte
    /// offset)` in `input.text` (`None` when positions are not known, e.g. for
    /// non-ASCII text matched through its folded view). A pack whose rules are
    /// local may run them only around the hits of large texts.
    fn scan_hits(&self, input: &Input<'_>, enabled: &[bool], hits: Option<&[(usize, usize)]>, out: &mut Vec<Finding>) {
        let _ = hits;
        self.scan(input, enabled, out);
    }
}

/// Bounds on one scan.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest text scanned; the rest is reported as not scanned.
    pub max_scan_bytes: usize,
    /// Most findings kept per scan.
    pub max_findings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_scan_bytes: 16 << 20,
            max_findings: 1024,
        }
    }
}

/// The packs with one trigger automaton over all of them.
pub struct Engine {
    packs: Vec<Box<dyn Pack>>,
    /// Trigger pattern id → (pack, rule).
    targets: Vec<(u16, u32)>,
    /// Every pack's rules in one flat list (pack `p` starts at `starts[p]`):
    /// which have no trigger (always enabled). One copy per scan.
    always: Vec<bool>,
    starts: Vec<usize>,
    ac: Option<AhoCorasick>,
    limits: Limits,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("packs", &self.packs.iter().map(|p| p.name()).collect::<Vec<_>>())
            .field("triggers", &self.targets.len())
            .finish()
    }
}

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("trigger automaton: {0}")]
    Automaton(String),
    #[error("too many packs")]
    TooManyPacks,
    #[error("{0}")]
    Rules(String),
}

impl Engine {
    pub fn new(packs: Vec<Box<dyn Pack>>, limits: Limits) -> Result<Engine, BuildError> {
        if packs.len() > u16::MAX as usize {
            return Err(BuildError::TooManyPacks);
        }
        let mut literals = Vec::new();
        let mut targets = Vec::new();
        let mut always = Vec::new();
        let mut starts = Vec::new();
        for (p, pack) in packs.iter().enumerate() {
            let mut a = vec![true; pack.rules()];
            for (lit, rule) in pack.triggers() {
                if rule >= a.len() || lit.is_empty() {
                    return Err(BuildError::Rules(format!(
                        "pack {} has a trigger {lit:?} for rule {rule} of {}",
                        pack.name(),
                        a.len()
                    )));
                }
                a[rule] = false;
                literals.push(lit);
                targets.push((p as u16, rule as u32));
            }
            starts.push(always.len());
            always.extend(a);
        }
        let ac = if literals.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&literals)
                    .map_err(|e| BuildError::Automaton(e.to_string()))?,
            )
        };
        Ok(Engine {
            packs,
            targets,
            always,
            starts,
            ac,
            limits,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn pack_names(&self) -> Vec<&'static str> {
        self.packs.iter().map(|p| p.name()).collect()
    }

    /// Scans one text.
    pub fn scan(&self, text: &str) -> Report {
        let mut report = Report::default();
        let text = if text.len() > self.limits.max_scan_bytes {
            let mut end = self.limits.max_scan_bytes;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            report.unscanned_bytes = text.len() - end;
            &text[..end]
        } else {
            text
        };
        if !text.is_ascii() {
            hidden_text(text, &mut report.findings, &mut report.decoded);
        }
        self.run_packs(text, &mut report.findings);
        // Decoded carriers (tags, zero-width bits, bidi-reversed text) are
        // scanned too; their findings cover the carrier's span.
        let decoded = std::mem::take(&mut report.decoded);
        for (span, inner) in &decoded {
            let sub = self.scan_plain(inner);
            for mut f in sub {
                f.start = span.0;
                f.end = span.1;
                report.findings.push(f);
            }
        }
        report.decoded = decoded;
        report.findings.sort_by_key(|f| (f.start, f.end));
        report.findings.truncate(self.limits.max_findings);
        report
    }

    /// A scan without carrier decoding (for text that was itself decoded).
    fn scan_plain(&self, text: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        self.run_packs(text, &mut out);
        out
    }

    /// The trigger pass (over the folded view too when the text is not
    /// ASCII), then each pack with the rules its triggers enabled and, for
    /// ASCII text, where they matched.
    fn run_packs(&self, text: &str, out: &mut Vec<Finding>) {
        let input = Input::new(text);
        let mut enabled = self.always.clone();
        let mut hits: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.packs.len()];
        let ascii = text.is_ascii();
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(text) {
                let (p, r) = self.targets[m.pattern().as_usize()];
                enabled[self.starts[p as usize] + r as usize] = true;
                if let Some(h) = hits.get_mut(p as usize)
                    && h.len() < MAX_HITS
                {
                    h.push((r as usize, m.start()));
                }
            }
            if !ascii {
                for m in ac.find_overlapping_iter(&input.folded().text) {
                    let (p, r) = self.targets[m.pattern().as_usize()];
                    enabled[self.starts[p as usize] + r as usize] = true;
                }
            }
        }
        for ((pack, start), h) in self.packs.iter().zip(&self.starts).zip(&hits) {
            let en = &enabled[*start..*start + pack.rules()];
            if en.iter().any(|e| *e) {
                let positions = (ascii && h.len() < MAX_HITS).then_some(h.as_slice());
                pack.scan_hits(&input, en, positions, out);
            }
        }
    }
}

/// Hidden carriers in non-ASCII text, as findings, plus the decoded text.
fn hidden_text(text: &str, out: &mut Vec<Finding>, decoded: &mut Vec<((usize, usize), String)>) {
    use palisade_scan::Severity;
    let mut found = Vec::new();
    let mut dec = Vec::new();
    palisade_scan::text::unicode_findings(text, "", &mut found, &mut dec);
    for f in found {
        let score = match f.severity {
            Severity::Low => continue,
            Severity::Medium => 0.3,
            Severity::High => 0.6,
            Severity::Critical => 0.9,
        };
        let rule: Arc<str> = Arc::from(format!("hidden.{}", f.rule.rsplit('.').next().unwrap_or(f.rule)));
        out.push(Finding::new(Category::HiddenText, &rule, f.start, f.end, score));
    }
    for d in dec {
        decoded.push((d.span, d.text));
    }
}

/// The overall judgement of a text: the same scale as the tool scanner's.
pub use palisade_scan::Verdict;

/// Score thresholds for the verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub suspicious: f32,
    pub malicious: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            suspicious: 0.5,
            malicious: 0.8,
        }
    }
}

/// Findings for one text.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Bytes past [`Limits::max_scan_bytes`] that were not scanned.
    pub unscanned_bytes: usize,
    /// Text recovered from hidden carriers, with the carrier's span.
    pub decoded: Vec<((usize, usize), String)>,
}

impl Report {
    /// 1 − Π(1 − wᵢ) over distinct rules of one category: the strongest
    /// finding of each rule counts once, so one phrase repeated does not add
    /// up. The text's score is the highest category score.
    pub fn score(&self) -> f32 {
        [
            Category::PromptInjection,
            Category::Secret,
            Category::Pii,
            Category::HiddenText,
        ]
        .into_iter()
        .map(|c| self.category_score(c))
        .fold(0.0, f32::max)
    }

    /// The combined score of one category.
    pub fn category_score(&self, category: Category) -> f32 {
        let weights = self
            .findings
            .iter()
            .filter(|f| f.category == category)
            .map(|f| (&*f.rule, f64::from(f.score)));
        palisade_scan::combine_rule_scores(weights) as f32
    }

    pub fn verdict(&self, t: Thresholds) -> Verdict {
        let s = self.score();
        if s >= t.malicious {
            Verdict::Malicious
        } else if s >= t.suspicious {
            Verdict::Suspicious
        } else {
            Verdict::Clean
        }
    }

    pub fn has(&self, category: Category) -> bool {
        self.findings.iter().any(|f| f.category == category)
    }
}

/// The packs selected by name (`injection`, `secrets`, `pii`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSet {
    pub injection: bool,
    pub secrets: bool,
    pub pii: bool,
}

impl Default for PackSet {
    fn default() -> Self {
        PackSet {
            injection: true,
            secrets: true,
            pii: true,
        }
    }
}

impl PackSet {
    /// Parses `injection,secrets,pii` (any subset, any order).
    pub fn parse(s: &str) -> Result<PackSet, String> {
        let mut set = PackSet {
            injection: false,
            secrets: false,
            pii: false,
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "injection" | "prompt_injection" => set.injection = true,
                "secrets" | "secret" => set.secrets = true,
                "pii" => set.pii = true,
                other => return Err(format!("unknown pack {other:?} (known: injection, secrets, pii)")),
            }
        }
        Ok(set)
    }
}

/// Everything that shapes the default engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub packs: PackSet,
    pub limits: Limits,
    pub pii: pii::PiiOptions,
    /// A gitleaks-format rule file (TOML text) added to the built-in secret rules.
    pub gitleaks_rules: Option<String>,
}

/// Builds an engine with the built-in packs.
pub fn build(opts: &EngineOptions) -> Result<Engine, BuildError> {
    let mut packs: Vec<Box<dyn Pack>> = Vec::new();
    if opts.packs.injection {
        packs.push(Box::new(injection::InjectionPack::new()));
    }
    if opts.packs.secrets {
        let pack = match &opts.gitleaks_rules {
            Some(toml) => secrets::SecretsPack::with_gitleaks(toml).map_err(|e| BuildError::Rules(e.to_string()))?,
            None => secrets::SecretsPack::builtin(),
        };
        packs.push(Box::new(pack));
    }
    if opts.packs.pii {
        packs.push(Box::new(pii::PiiPack::new(&opts.pii)));
    }
    Engine::new(packs, opts.limits)
}

/// `text` with every finding of `cats` replaced by `[REDACTED:<category>:<kind>]`;
/// `None` when nothing was found. Findings in decoded (hidden) text have no
/// span in `text` and are left to the caller's block decision.
pub fn redact(engine: &Engine, text: &str, cats: &[Category]) -> Option<String> {
    let report = engine.scan(text);
    let mut spans: Vec<(usize, usize, String)> = report
        .findings
        .iter()
        .filter(|f| cats.contains(&f.category) && f.start < f.end && f.end <= text.len())
        .map(|f| {
            let kind = f.rule.split_once('.').map_or(&*f.rule, |(_, k)| k);
            (f.start, f.end, format!("[REDACTED:{}:{kind}]", f.category.as_str()))
        })
        .collect();
    if spans.is_empty() {
        return None;
    }
    spans.sort_by_key(|s| (s.0, s.1));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (a, b, p) in spans {
        if a < at || !text.is_char_boundary(a) || !text.is_char_boundary(b) {
            // Overlaps the previous span: extend that one instead.
            if b > at && text.is_char_boundary(b) {
                at = b;
            }
            continue;
        }
        out.push_str(&text[at..a]);
        out.push_str(&p);
        at = b;
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_runs_find_long_runs_only() {
        let t = "short words here AKIAIOSFODNN7EXAMPLE1234 and x";
        let r = token_runs(t, 20);
        assert_eq!(r.len(), 1);
        assert_eq!(&t[r[0].0..r[0].1], "AKIAIOSFODNN7EXAMPLE1234");
        assert_eq!(token_runs("abcdefghijklmnopqrstuvwxyz", 20), vec![(0, 26)]);
        assert!(token_runs("", 20).is_empty());
    }

    /// The plain definition the skip search must agree with.
    fn naive_runs(text: &str, min: usize) -> Vec<(usize, usize)> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if is_token_byte(b[i]) {
                let s = i;
                while i < b.len() && is_token_byte(b[i]) {
                    i += 1;
                }
                if i - s >= min {
                    out.push((s, i));
                }
            } else {
                i += 1;
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn token_runs_match_the_plain_definition(s in "[a-c =/\\.-]{0,300}", min in 1usize..30) {
            proptest::prop_assert_eq!(token_runs(&s, min), naive_runs(&s, min));
        }
    }

    #[test]
    fn oversized_input_is_reported_not_dropped() {
        let engine = Engine::new(
            Vec::new(),
            Limits {
                max_scan_bytes: 10,
                max_findings: 8,
            },
        )
        .unwrap();
        let r = engine.scan("ééééééééé");
        assert_eq!(r.unscanned_bytes, 18 - 10);
    }

    #[test]
    fn pack_set_parses_and_rejects() {
        assert_eq!(
            PackSet::parse("pii, secrets").unwrap(),
            PackSet {
                injection: false,
                secrets: true,
                pii: true
            }
        );
        assert!(PackSet::parse("injection,bogus").is_err());
    }
}
