//! The prompt-injection pack: instructions addressed to the model hidden in
//! data (tool results, e-mails, documents, code, tables) and in prompts.
//!
//! The rules look for the *structure* of an instruction aimed at the
//! assistant rather than for known attack sentences:
//! - overrides ("ignore your previous instructions", also misspelt and in
//!   German, Spanish, French, Italian, Portuguese, Chinese, Japanese and
//!   Russian);
//! - chat-template role markers, fake turns, tags and greetings addressed to
//!   the model, "before you can solve the task … do the following first";
//! - imperatives aimed at "your response / answer / reply" and at "your code
//!   / solution" (with a check of what the injected code does);
//! - exfiltration (markdown images carrying data, "send … to <address>"),
//!   tool-call directives, concealment;
//! - a standalone request line (an imperative task or a question) inside an
//!   otherwise data-like document (a table, an e-mail);
//! - base64 / hex blobs and rot13 text, decoded and rescanned.
//!
//! Strong, specific evidence scores 0.6–0.9; weak cues 0.2–0.45, so that only
//! a combination crosses the 0.5 "suspicious" line. Every rule is a `regex`
//! (linear) or a linear pass, runs only when one of its literal triggers
//! fired, and keeps at most [`MAX_PER_RULE`] findings.

mod rules;

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;

use crate::{Category, Finding, Input, Pack};

use rules::{RULES, Special};

/// Most findings kept per rule and pattern.
pub const MAX_PER_RULE: usize = 8;
/// Most encoded blobs decoded per scan.
const MAX_BLOBS: usize = 16;
/// Longest blob (in encoded bytes) that is decoded; longer ones are cut.
const MAX_BLOB_BYTES: usize = 64 * 1024;
/// Longest text decoded as rot13.
const MAX_ROT13_BYTES: usize = 256 * 1024;

/// Instructions addressed to the model inside data.
pub struct InjectionPack {
    ids: Vec<Arc<str>>,
    /// All triggers of the pack, for rescanning decoded payloads.
    ac: Option<AhoCorasick>,
    ac_targets: Vec<usize>,
}

impl std::fmt::Debug for InjectionPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectionPack").field("rules", &self.ids.len()).finish()
    }
}

impl Default for InjectionPack {
    fn default() -> Self {
        InjectionPack::new()
    }
}

impl InjectionPack {
    /// The built-in rule set.
    pub fn new() -> InjectionPack {
        let ids = RULES.iter().map(|r| Arc::<str>::from(r.id)).collect();
        let mut lits = Vec::new();
        let mut ac_targets = Vec::new();
        for (i, r) in RULES.iter().enumerate() {
            for t in r.triggers {
                lits.push(*t);
                ac_targets.push(i);
            }
        }
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&lits)
            .ok();
        InjectionPack { ids, ac, ac_targets }
    }

    /// Which rules a text enables (for decoded payloads, which the engine's
    /// automaton never saw).
    fn enabled_for(&self, input: &Input<'_>) -> Vec<bool> {
        let mut en: Vec<bool> = RULES.iter().map(|r| r.triggers.is_empty()).collect();
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(input.text) {
                en[self.ac_targets[m.pattern().as_usize()]] = true;
            }
            if !input.text.is_ascii() {
                for m in ac.find_overlapping_iter(&input.folded().text) {
                    en[self.ac_targets[m.pattern().as_usize()]] = true;
                }
            }
        }
        en
    }

    fn scan_depth(&self, input: &Input<'_>, enabled: &[bool], depth: u8, out: &mut Vec<Finding>) {
        let first = out.len();
        self.scan_rules(input, enabled, depth, out);
        soften(input.text, &mut out[first..]);
    }

    /// Runs the enabled rules without the prompt-like softening.
    fn scan_rules(&self, input: &Input<'_>, enabled: &[bool], depth: u8, out: &mut Vec<Finding>) {
        let ctx = Ctx::new(input);
        for (i, rule) in RULES.iter().enumerate() {
            if !enabled.get(i).copied().unwrap_or(false) {
                continue;
            }
            let id = &self.ids[i];
            let mut emit = |a: usize, b: usize, score: f32| {
                let (s, e) = ctx.span(a, b);
                out.push(Finding::new(Category::PromptInjection, id, s, e, score));
            };
            match rule.special {
                Special::Regex => rules::run_patterns(rule, &ctx, &mut emit),
                Special::OutputDirective => rules::output_directive(rule, &ctx, &mut emit),
                Special::CodePayload => rules::code_payload(&ctx, &mut emit),
                Special::Markdown => rules::markdown_exfil(&ctx, &mut emit),
                Special::Todo => rules::todo_directive(&ctx, &mut emit),
                Special::FakeTurn => rules::fake_turn(&ctx, &mut emit),
                Special::RequestLine | Special::RequestFirst => {
                    let first = rule.special == Special::RequestFirst;
                    rules::request_lines(input.text, first, &mut |a, b, score| {
                        out.push(Finding::new(Category::PromptInjection, id, a, b, score));
                    });
                }
                Special::RawRegex => rules::run_raw_patterns(rule, input.text, out, id),
                Special::Encoded => {
                    if depth == 0 {
                        self.encoded(input, id, out);
                    }
                }
                Special::Rot13 => {
                    if depth == 0 {
                        self.rot13(input, id, out);
                    }
                }
            }
        }
    }

    /// Base64 and hex blobs that decode to text: the text is rescanned and
    /// its findings cover the blob.
    fn encoded(&self, input: &Input<'_>, id: &Arc<str>, out: &mut Vec<Finding>) {
        let mut tried = 0;
        for &(a, b) in &input.tokens {
            if tried >= MAX_BLOBS {
                break;
            }
            let blob = &input.text[a..b];
            let Some(text) = decode_blob(blob) else {
                continue;
            };
            tried += 1;
            let inner = Input::new(&text);
            let en = self.enabled_for(&inner);
            let mut found = Vec::new();
            self.scan_depth(&inner, &en, 1, &mut found);
            if found.is_empty() {
                continue;
            }
            let mut best = 0.0f32;
            for mut f in found.into_iter().take(MAX_PER_RULE * 4) {
                best = best.max(f.score);
                f.start = a;
                f.end = b;
                out.push(f);
            }
            out.push(Finding::new(Category::PromptInjection, id, a, b, 0.3 + best * 0.3));
        }
    }

    /// rot13 text (named, or recognised by encoded keywords): rot13 keeps
    /// byte offsets, so the decoded findings point at the raw text.
    fn rot13(&self, input: &Input<'_>, id: &Arc<str>, out: &mut Vec<Finding>) {
        let mut end = input.text.len().min(MAX_ROT13_BYTES);
        while !input.text.is_char_boundary(end) {
            end -= 1;
        }
        let decoded: String = input.text[..end].chars().map(rot13_char).collect();
        let inner = Input::new(&decoded);
        let en = self.enabled_for(&inner);
        let mut found = Vec::new();
        self.scan_depth(&inner, &en, 1, &mut found);
        // Plain text that merely mentions rot13 decodes to noise; what the
        // plain text already says is not counted twice.
        let mut best = 0.0f32;
        let mut first = None;
        for f in found.into_iter().take(MAX_PER_RULE * 4) {
            best = best.max(f.score);
            first.get_or_insert((f.start, f.end));
            out.push(f);
        }
        if let Some((a, b)) = first {
            out.push(Finding::new(Category::PromptInjection, id, a, b, 0.3 + best * 0.3));
        }
    }
}

/// A text that opens as a request to the model (a user prompt) may address
/// the model and shape its answer; inside data the same wording is an
/// injection. So in prompt-like text those rules count less after the
/// opening sentence (which is judged as it stands: an injection placed at the
/// start of a document).
fn soften(text: &str, found: &mut [Finding]) {
    let soft = |f: &Finding| {
        matches!(
            &*f.rule,
            "injection.output_directive" | "injection.model_address" | "injection.as_ai" | "injection.fake_turn"
        )
    };
    if found.iter().any(soft) && rules::prompt_like(text) {
        let opening = rules::first_sentence_end(text);
        for f in found.iter_mut().filter(|f| soft(f) && f.start >= opening) {
            f.score = f.score.min(0.4);
        }
    }
}

/// Texts longer than this are scanned in windows around trigger hits.
const WINDOWED_ABOVE: usize = 8 * 1024;
/// Bytes of context on each side of a hit (rules are sentence-local).
const RADIUS: usize = 256;

impl InjectionPack {
    /// Large ASCII texts: rules without triggers run over the whole text,
    /// triggered rules only in windows around their hits, so a long clean
    /// document where a common trigger word appears costs little more than
    /// the prefilter.
    fn scan_windows(&self, input: &Input<'_>, enabled: &[bool], hits: &[(usize, usize)], out: &mut Vec<Finding>) {
        let text = input.text;
        let first = out.len();
        // Rules that judge the whole text (counts of request lines, turns of
        // both roles, decoded payloads) run over all of it.
        let whole = |r: &rules::Rule| {
            r.triggers.is_empty()
                || matches!(
                    r.special,
                    Special::RequestLine
                        | Special::RequestFirst
                        | Special::FakeTurn
                        | Special::Encoded
                        | Special::Rot13
                )
        };
        let always: Vec<bool> = RULES.iter().zip(enabled).map(|(r, e)| *e && whole(r)).collect();
        if always.iter().any(|a| *a) {
            self.scan_rules(input, &always, 0, out);
        }
        let mut hits = hits.to_vec();
        hits.sort_unstable_by_key(|h| h.1);
        let mut i = 0;
        while i < hits.len() {
            let mut en = vec![false; RULES.len()];
            let start = hits[i].1;
            let mut end = hits[i].1;
            while i < hits.len() && hits[i].1 <= end + 2 * RADIUS {
                end = hits[i].1;
                if let (Some(e), Some(r)) = (en.get_mut(hits[i].0), RULES.get(hits[i].0)) {
                    *e = !whole(r);
                }
                i += 1;
            }
            let a = line_start(text, start.saturating_sub(RADIUS));
            let b = line_end(text, (end + RADIUS).min(text.len()));
            let sub = Input::new(&text[a..b]);
            let mut found = Vec::new();
            self.scan_rules(&sub, &en, 0, &mut found);
            for mut f in found {
                f.start += a;
                f.end += a;
                out.push(f);
            }
        }
        soften(text, &mut out[first..]);
    }
}

/// A char boundary at or before `at`, moved back to a line start when one is near.
fn line_start(text: &str, at: usize) -> usize {
    let mut a = at.min(text.len());
    while !text.is_char_boundary(a) {
        a -= 1;
    }
    match text[a.saturating_sub(256).min(a)..a].rfind('\n') {
        Some(p) => a.saturating_sub(256).min(a) + p + 1,
        None => a,
    }
}

/// A char boundary at or after `at`, moved on to a line end when one is near.
fn line_end(text: &str, at: usize) -> usize {
    let mut b = at.min(text.len());
    while !text.is_char_boundary(b) {
        b += 1;
    }
    let mut lim = (b + 256).min(text.len());
    while !text.is_char_boundary(lim) {
        lim += 1;
    }
    match text[b..lim].find('\n') {
        Some(p) => b + p,
        None => b,
    }
}

fn rot13_char(c: char) -> char {
    match c {
        'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
        'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
        _ => c,
    }
}

/// Decodes one token run as hex or base64 when it reads as text.
fn decode_blob(blob: &str) -> Option<String> {
    let mut end = blob.len().min(MAX_BLOB_BYTES);
    end -= end % 4;
    let blob = &blob[..end];
    if blob.len() < 24 {
        return None;
    }
    let bytes = if blob.bytes().all(|b| b.is_ascii_hexdigit()) {
        let even = &blob[..blob.len() - blob.len() % 2];
        hex::decode(even).ok()?
    } else {
        let raw = blob.trim_end_matches('=');
        let engine = if raw.contains(['-', '_']) {
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
        } else {
            &base64::engine::general_purpose::STANDARD_NO_PAD
        };
        engine.decode(raw).ok()?
    };
    let text = palisade_scan::text::printable_text(&bytes)?;
    text.contains(' ').then_some(text)
}

impl Pack for InjectionPack {
    fn name(&self) -> &'static str {
        "injection"
    }
    fn rules(&self) -> usize {
        RULES.len()
    }
    fn triggers(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (i, r) in RULES.iter().enumerate() {
            for t in r.triggers {
                out.push(((*t).to_string(), i));
            }
        }
        out
    }
    fn scan(&self, input: &Input<'_>, enabled: &[bool], out: &mut Vec<Finding>) {
        self.scan_depth(input, enabled, 0, out);
    }

    fn scan_hits(&self, input: &Input<'_>, enabled: &[bool], hits: Option<&[(usize, usize)]>, out: &mut Vec<Finding>) {
        match hits {
            Some(h) if input.text.len() > WINDOWED_ABOVE => self.scan_windows(input, enabled, h, out),
            _ => self.scan_depth(input, enabled, 0, out),
        }
    }
}

/// The text the rules read: the raw text when it is ASCII, else the folded
/// text with line breaks restored; literal `\n` escapes (as in JSON or YAML
/// dumps) read as line breaks. Offsets map back to the raw text.
pub(crate) struct Ctx<'a> {
    raw: &'a str,
    input: &'a Input<'a>,
    view: std::cell::OnceCell<Cow<'a, str>>,
}

impl<'a> Ctx<'a> {
    fn new(input: &'a Input<'a>) -> Ctx<'a> {
        Ctx {
            raw: input.text,
            input,
            view: std::cell::OnceCell::new(),
        }
    }

    /// The view (see [`Ctx`]), built once.
    pub(crate) fn view(&self) -> &str {
        self.view.get_or_init(|| {
            let base: Cow<'a, str> = if self.raw.is_ascii() {
                Cow::Borrowed(self.raw)
            } else {
                let f = self.input.folded();
                let mut bytes = f.text.clone().into_bytes();
                let raw = self.raw.as_bytes();
                for (i, b) in bytes.iter_mut().enumerate() {
                    if *b == b' ' {
                        let (s, _) = f.span(i, i + 1);
                        let nl = raw[s..]
                            .iter()
                            .take_while(|c| c.is_ascii_whitespace())
                            .take(64)
                            .any(|c| *c == b'\n');
                        if nl {
                            *b = b'\n';
                        }
                    }
                }
                Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|_| f.text.clone()))
            };
            if base.contains("\\n") || base.contains("\\t") {
                let mut s = base.into_owned();
                // Same length: offsets stay valid.
                s = s.replace("\\n", " \n").replace("\\t", "  ").replace("\\r", "  ");
                Cow::Owned(s)
            } else {
                base
            }
        })
    }

    /// Raw byte span of view bytes `a..b`.
    pub(crate) fn span(&self, a: usize, b: usize) -> (usize, usize) {
        if self.raw.is_ascii() {
            (a.min(self.raw.len()), b.min(self.raw.len()))
        } else {
            self.input.folded().span(a, b)
        }
    }
}

#[cfg(test)]
mod tests;
