//! The PII pack: e-mail addresses, phone numbers, payment cards, IBANs, US
//! social security numbers and IP addresses, each confirmed by a validator
//! (Luhn, mod-97, SSA ranges, octet ranges, `Ipv6Addr` parsing); person
//! names and street addresses as opt-in heuristics.
//!
//! Cost: e-mail runs only when the `@` trigger fired. The other default
//! types share two byte passes: one over `:` and digit-run starts (IPv6,
//! IBAN), one that cuts the text into short numeric windows (digits joined
//! by single ` `, `-`, `.`, `(`, `)`); only those windows, at most
//! [`MAX_WINDOW`] bytes, reach the validators. Prose without digits costs
//! one pass of byte tests.
//!
//! Choices:
//! - E-mail needs a dotted domain with a letter TLD: `user@localhost`,
//!   `name@1.2.3`, `@scope/pkg`, `icon@2x.png` and scp-style
//!   `git@host:path` are not reported. Local parts are the practical
//!   `A-Za-z0-9._%+-` set (no quoted or non-ASCII local parts).
//! - Phones: 7–15 digits. A bare digit run counts only as a 10-digit NANP
//!   number (or `1` + NANP) or after `+`; other bare runs are ids. Dates,
//!   times, versions, IPv4, amounts, ZIP+4, unit/suite numbers, `#`
//!   numbers, numbers followed on their line by a street word (house
//!   numbers) and digits glued to letters are rejected.
//! - Cards: 12–19 digits, plain or in groups of 4 (or Amex/Diners 4-6-5,
//!   4-6-4), Luhn-valid, in a known IIN range with a length that brand uses
//!   (Maestro from 12 digits; the whole JCB `35` range). A grouped number
//!   that fails Luhn is dropped whole, not re-read as a phone.
//! - IBAN: any letter case, compact or in groups of 4, exact length from the
//!   country table, mod-97 = 1.
//! - SSN: `AAA-GG-SSSS` (or spaces) with valid SSA ranges; a bare 9-digit
//!   run only after `ssn`/`social security` in the preceding 48 bytes.
//! - IP: loopback, private, link-local and documentation addresses are
//!   reported (they leak topology in logs) with a lower score (0.3, under
//!   the default `suspicious` threshold) than public ones (0.5).
//! - ASCII digits only: fullwidth or other-script digits are not matched.

use std::net::Ipv6Addr;
use std::sync::Arc;

use regex::Regex;

use crate::{Category, Finding, Input, Pack};

/// Rule ids, by rule index.
pub const RULE_IDS: [&str; 8] = [
    "pii.email",
    "pii.phone",
    "pii.credit_card",
    "pii.iban",
    "pii.us_ssn",
    "pii.ip_address",
    "pii.person",
    "pii.street_address",
];

const EMAIL: usize = 0;
const PHONE: usize = 1;
const CARD: usize = 2;
const IBAN: usize = 3;
const SSN: usize = 4;
const IP: usize = 5;
const PERSON: usize = 6;
const ADDRESS: usize = 7;

/// Longest numeric candidate handed to the validators, in bytes.
pub const MAX_WINDOW: usize = 48;
/// Most findings one scan of this pack appends.
pub const MAX_FINDINGS: usize = 1024;

const SCORE_EMAIL: f32 = 0.6;
const SCORE_PHONE: f32 = 0.6;
const SCORE_CARD: f32 = 0.9;
const SCORE_IBAN: f32 = 0.85;
const SCORE_SSN: f32 = 0.9;
const SCORE_SSN_BARE: f32 = 0.8;
const SCORE_IP: f32 = 0.5;
const SCORE_IP_LOCAL: f32 = 0.3;
const SCORE_PERSON: f32 = 0.5;
const SCORE_ADDRESS: f32 = 0.5;

/// Optional PII types (off by default: they are heuristics with more false
/// positives than the validated types).
#[derive(Debug, Clone, Default)]
pub struct PiiOptions {
    /// `pii.person`: a title and capitalized name (`Mr. John Smith`) or a
    /// `Name:` / `my name is` field.
    pub names: bool,
    /// `pii.street_address`: house number, capitalized words, street suffix.
    pub addresses: bool,
}

/// Personal data with validators.
#[derive(Debug)]
pub struct PiiPack {
    ids: Vec<Arc<str>>,
    person: Option<Regex>,
    address: Option<Regex>,
}

impl Default for PiiPack {
    fn default() -> Self {
        PiiPack::new(&PiiOptions::default())
    }
}

const NAME: &str = r"\p{Lu}[\p{Ll}'’-]*\p{Ll}";
const PERSON_RE_TITLE: &str = r"(?i:\b(?:mr|mrs|ms|mx|dr|prof|miss|sir|madam|mister)\b\.?)[ \t]+";
const PERSON_RE_FIELD: &str = r"(?i:\bname[ \t]*:|\bmy name is)[ \t]*";
const STREET_SUFFIX: &str = "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|\
     Place|Pl|Way|Terrace|Ter|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Crescent|Close|\
     Alley|Plaza|Walk|Row|Gardens|Hill|Park";

impl PiiPack {
    /// Builds the pack; the optional heuristics are compiled only when enabled.
    pub fn new(opts: &PiiOptions) -> PiiPack {
        let ids = RULE_IDS.iter().map(|s| Arc::<str>::from(*s)).collect();
        // The patterns are constants; a failure would be a bug caught by the tests.
        let person = opts.names.then(|| {
            Regex::new(&format!(
                r"(?:{PERSON_RE_TITLE}|{PERSON_RE_FIELD})({NAME}(?:[ \t]+{NAME}){{0,3}})"
            ))
            .ok()
        });
        let address = opts.addresses.then(|| {
            Regex::new(&format!(
                r"\b\d{{1,6}}[A-Za-z]?(?:[ \t]+(?:\p{{Lu}}[\p{{L}}'’.-]*|\d{{1,4}}(?:st|nd|rd|th))){{1,5}}[ \t]+(?:{STREET_SUFFIX})\b"
            ))
            .ok()
        });
        PiiPack {
            ids,
            person: person.flatten(),
            address: address.flatten(),
        }
    }
}

impl Pack for PiiPack {
    fn name(&self) -> &'static str {
        "pii"
    }

    fn rules(&self) -> usize {
        RULE_IDS.len()
    }

    fn triggers(&self) -> Vec<(String, usize)> {
        let mut t = vec![("@".to_string(), EMAIL)];
        // When names are off the rule has no trigger and `scan` skips it.
        if self.person.is_some() {
            for w in ["mr", "ms", "mx", "dr", "prof", "miss", "sir", "madam", "name"] {
                t.push((w.to_string(), PERSON));
            }
        }
        t
    }

    fn scan(&self, input: &Input<'_>, enabled: &[bool], out: &mut Vec<Finding>) {
        let on = |i: usize| enabled.get(i).copied().unwrap_or(false);
        let mut sink = Sink {
            ids: &self.ids,
            found: Vec::new(),
            blocked: Vec::new(),
            claims: Vec::new(),
        };
        let text = input.text;
        if on(EMAIL) {
            emails(text, &mut sink);
        }
        sink.seal();
        if on(PHONE) || on(CARD) || on(IBAN) || on(SSN) || on(IP) {
            structured(text, enabled, &mut sink);
        }
        if on(PERSON)
            && let Some(re) = &self.person
        {
            for c in re.captures_iter(text) {
                if let Some(m) = c.get(1) {
                    sink.push(PERSON, m.start(), m.end(), SCORE_PERSON);
                }
            }
        }
        if on(ADDRESS)
            && let Some(re) = &self.address
            && text.bytes().any(|b| b.is_ascii_digit())
        {
            for m in re.find_iter(text) {
                sink.push(ADDRESS, m.start(), m.end(), SCORE_ADDRESS);
            }
        }
        out.extend(sink.found);
    }
}

/// Collects findings, bounded, and remembers the spans of earlier passes so
/// that a later pass does not report the same bytes again.
struct Sink<'a> {
    ids: &'a [Arc<str>],
    found: Vec<Finding>,
    /// Spans that had a type's full shape but failed its check (an IBAN
    /// with a bad checksum): not reported, and not to be reported as parts.
    blocked: Vec<(usize, usize)>,
    /// Sorted spans of earlier passes, see [`Sink::seal`].
    claims: Vec<(usize, usize)>,
}

impl Sink<'_> {
    fn full(&self) -> bool {
        self.found.len() >= MAX_FINDINGS
    }

    fn push(&mut self, rule: usize, start: usize, end: usize, score: f32) {
        if self.full() {
            return;
        }
        self.found
            .push(Finding::new(Category::Pii, &self.ids[rule], start, end, score));
    }

    /// Ends a pass: its spans become claims for the next ones.
    fn seal(&mut self) {
        self.claims = self.found.iter().map(|f| (f.start, f.end)).collect();
        self.claims.extend_from_slice(&self.blocked);
        self.claims.sort_unstable();
    }

    /// Whether `[start, end)` overlaps a span of an earlier pass.
    fn claimed(&self, start: usize, end: usize) -> bool {
        let i = self.claims.partition_point(|c| c.0 < end);
        // Claims hardly nest; looking a few back covers the rest.
        self.claims[..i].iter().rev().take(4).any(|c| start < c.1)
    }
}

// ---------------------------------------------------------------- helpers

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The character before byte `i` (a char boundary), if any.
fn char_before(text: &str, i: usize) -> Option<char> {
    text.get(..i).and_then(|s| s.chars().next_back())
}

/// The character at byte `i` (a char boundary), if any.
fn char_at(text: &str, i: usize) -> Option<char> {
    text.get(i..).and_then(|s| s.chars().next())
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn digits_value(b: &[u8]) -> u32 {
    b.iter()
        .fold(0u32, |v, d| v.saturating_mul(10).saturating_add(u32::from(d - b'0')))
}

/// The last alphabetic word in the `max` bytes before `i`, lower-cased,
/// skipping spaces and `.:#` between it and `i`.
fn word_before(bytes: &[u8], i: usize, max: usize) -> String {
    let lo = i.saturating_sub(max);
    let mut j = i;
    while j > lo && matches!(bytes[j - 1], b' ' | b'.' | b':' | b'#' | b'\t') {
        j -= 1;
    }
    let end = j;
    while j > lo && bytes[j - 1].is_ascii_alphabetic() {
        j -= 1;
    }
    String::from_utf8_lossy(&bytes[j..end]).to_ascii_lowercase()
}

/// Whether one of `words` occurs (ASCII case-insensitively) in the `max`
/// bytes before `i`.
fn keyword_before(bytes: &[u8], i: usize, max: usize, words: &[&str]) -> bool {
    let hay: Vec<u8> = bytes[i.saturating_sub(max)..i].to_ascii_lowercase();
    words.iter().any(|w| hay.windows(w.len()).any(|x| x == w.as_bytes()))
}

// ------------------------------------------------------------------ email

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// File extensions that follow `@` in asset names (`icon@2x.png`).
const FILE_TLDS: [&str; 17] = [
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "js", "mjs", "ts", "css", "map", "json",
    "lock",
];

fn emails(text: &str, sink: &mut Sink<'_>) {
    let bytes = text.as_bytes();
    let mut floor = 0;
    for (at, _) in text.match_indices('@') {
        if sink.full() {
            return;
        }
        // Local part: never reaches back past the previous '@'.
        let mut s = at;
        while s > floor && at - s <= 64 && is_local_byte(bytes[s - 1]) {
            s -= 1;
        }
        floor = at + 1;
        if at - s > 64 {
            continue;
        }
        // Leading punctuation belongs to the surrounding text.
        while s < at && !bytes[s].is_ascii_alphanumeric() && bytes[s] != b'_' {
            s += 1;
        }
        if s == at || char_before(text, s).is_some_and(is_word_char) {
            continue;
        }
        let local = &bytes[s..at];
        if local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
            continue;
        }
        // Domain.
        let mut e = at + 1;
        while e < bytes.len() && e - at <= 254 && is_domain_byte(bytes[e]) {
            e += 1;
        }
        while e > at + 1 && matches!(bytes[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if e - at > 254 || !valid_domain(&bytes[at + 1..e]) {
            continue;
        }
        match char_at(text, e) {
            Some(c) if is_word_char(c) || c == '@' => continue,
            // scp-style `git@host:path`, not a mailbox.
            Some(':') if bytes.get(e + 1).is_some_and(|b| !b.is_ascii_whitespace()) => continue,
            _ => {}
        }
        sink.push(EMAIL, s, e, SCORE_EMAIL);
    }
}

fn valid_domain(d: &[u8]) -> bool {
    let labels: Vec<&[u8]> = d.split(|b| *b == b'.').collect();
    if labels.len() < 2 {
        return false;
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 || l.starts_with(b"-") || l.ends_with(b"-") {
            return false;
        }
    }
    let tld = labels[labels.len() - 1];
    let letters = tld.len() >= 2 && tld.len() <= 24 && tld.iter().all(u8::is_ascii_alphabetic);
    let puny = tld.starts_with(b"xn--") && tld.len() > 4;
    if !(letters || puny) {
        return false;
    }
    let lower = tld.to_ascii_lowercase();
    !FILE_TLDS.iter().any(|f| f.as_bytes() == lower.as_slice())
}

// ------------------------------------------------- digit-based structures

/// IPv6, IBAN, then the numeric windows (which skip spans already taken).
fn structured(text: &str, enabled: &[bool], sink: &mut Sink<'_>) {
    let on = |i: usize| enabled.get(i).copied().unwrap_or(false);
    let bytes = text.as_bytes();
    let mut any_digit = false;
    let mut i = 0;
    let mut v6_floor = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_digit() {
            any_digit = true;
            let run_start = i == 0 || !bytes[i - 1].is_ascii_digit();
            if run_start && on(IBAN) && i >= 2 && !sink.full() {
                iban_at(text, i - 2, sink);
            }
        } else if b == b':' && on(IP) && i >= v6_floor && !sink.full() {
            v6_floor = ipv6_at(text, i, v6_floor, sink);
        }
        i += 1;
    }
    if !any_digit {
        return;
    }
    sink.seal();
    numeric_windows(text, enabled, sink);
}

// ------------------------------------------------------------------- IPv6

fn is_v6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// Checks the run of hex/colon/dot bytes around `colon`; returns where the
/// next search may start (past the run), so every byte is read at most twice.
fn ipv6_at(text: &str, colon: usize, floor: usize, sink: &mut Sink<'_>) -> usize {
    let bytes = text.as_bytes();
    let mut s = colon;
    while s > floor && is_v6_byte(bytes[s - 1]) {
        s -= 1;
    }
    let mut e = colon;
    while e < bytes.len() && is_v6_byte(bytes[e]) {
        e += 1;
    }
    let next = e;
    // Trailing sentence punctuation; a lone trailing ':' is a label colon.
    while e > s && bytes[e - 1] == b'.' {
        e -= 1;
    }
    if e >= s + 2 && bytes[e - 1] == b':' && bytes[e - 2] != b':' {
        e -= 1;
    }
    if e - s > 45 || e - s < 3 {
        return next;
    }
    if char_before(text, s).is_some_and(|c| is_word_char(c) || c == ':')
        || char_at(text, e).is_some_and(|c| is_word_char(c) || c == '%')
    {
        return next;
    }
    let w = &text[s..e];
    let groups = w.split(':').filter(|g| !g.is_empty()).count();
    let compressed = w.contains("::");
    let has_digit = w.bytes().any(|b| b.is_ascii_digit());
    if !has_digit || !(w.split(':').count() == 8 || compressed) || (groups < 2 && w != "::1") {
        return next;
    }
    if let Ok(addr) = w.parse::<Ipv6Addr>() {
        let seg0 = addr.segments()[0];
        let local = addr.is_loopback()
            || addr.is_unspecified()
            || (seg0 & 0xfe00) == 0xfc00
            || (seg0 & 0xffc0) == 0xfe80
            || seg0 == 0x2001 && addr.segments()[1] == 0x0db8;
        let score = if local { SCORE_IP_LOCAL } else { SCORE_IP };
        sink.push(IP, s, e, score);
    }
    next
}

// ------------------------------------------------------------------- IBAN

/// IBAN length by country (SWIFT registry).
const IBAN_LENGTHS: [(&[u8; 2], usize); 88] = [
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

fn iban_length(cc: [u8; 2]) -> Option<usize> {
    let cc = cc.map(|b| b.to_ascii_uppercase());
    IBAN_LENGTHS.iter().find(|(c, _)| **c == cc).map(|(_, n)| *n)
}

/// Tries an IBAN starting at `s` (two letters, then digits at `s + 2`).
fn iban_at(text: &str, s: usize, sink: &mut Sink<'_>) {
    let bytes = text.as_bytes();
    if !bytes[s].is_ascii_alphabetic()
        || !bytes[s + 1].is_ascii_alphabetic()
        || !bytes.get(s + 3).is_some_and(u8::is_ascii_digit)
        || char_before(text, s).is_some_and(is_word_char)
    {
        return;
    }
    let Some(len) = iban_length([bytes[s], bytes[s + 1]]) else {
        return;
    };
    // Compact, or printed in groups of four separated by single spaces.
    let mut chars: Vec<u8> = Vec::with_capacity(len);
    let mut i = s;
    while chars.len() < len {
        match bytes.get(i) {
            Some(b) if b.is_ascii_alphanumeric() => chars.push(b.to_ascii_uppercase()),
            Some(b' ') if chars.len().is_multiple_of(4) && bytes.get(i + 1).is_some_and(u8::is_ascii_alphanumeric) => {}
            _ => return,
        }
        i += 1;
    }
    if char_at(text, i).is_some_and(is_word_char) {
        return;
    }
    if sink.claimed(s, i) {
        return;
    }
    if iban_mod97(&chars) == 1 {
        sink.push(IBAN, s, i, SCORE_IBAN);
    } else {
        sink.blocked.push((s, i));
    }
}

fn iban_mod97(chars: &[u8]) -> u32 {
    let rotated = chars[4..].iter().chain(&chars[..4]);
    let mut r = 0u32;
    for &c in rotated {
        if c.is_ascii_digit() {
            r = (r * 10 + u32::from(c - b'0')) % 97;
        } else {
            r = (r * 100 + u32::from(c - b'A') + 10) % 97;
        }
    }
    r
}

// --------------------------------------------------------- numeric windows

fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'-' | b'.' | b'(' | b')')
}

/// Cuts the text into windows of digit groups joined by at most three
/// separator bytes, then validates each window (or, if the whole window is
/// not one entity, runs of its space-separated pieces).
fn numeric_windows(text: &str, enabled: &[bool], sink: &mut Sink<'_>) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut i = 0;
    while i < n {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        if sink.full() {
            return;
        }
        let mut start = i;
        if start > 0 && bytes[start - 1] == b'(' {
            start -= 1;
        }
        if start > 0 && bytes[start - 1] == b'+' {
            start -= 1;
        }
        let mut j = i;
        let end;
        let mut digits = 0;
        let mut dot = false;
        loop {
            let d0 = j;
            while j < n && bytes[j].is_ascii_digit() {
                j += 1;
            }
            digits += j - d0;
            let mut k = j;
            while k < n && k - j < 3 && is_sep(bytes[k]) {
                dot |= bytes[k] == b'.';
                k += 1;
            }
            if k > j && k < n && bytes[k].is_ascii_digit() {
                j = k;
            } else {
                end = if j < n && bytes[j] == b')' { j + 1 } else { j };
                break;
            }
        }
        // Nothing we report has fewer digits (IPv4: 4, the others: 7).
        if digits >= 7 || (dot && digits >= 4) {
            window(text, start, end, enabled, sink);
        }
        i = end.max(i + 1);
    }
}

fn window(text: &str, start: usize, end: usize, enabled: &[bool], sink: &mut Sink<'_>) {
    if end - start <= MAX_WINDOW && try_emit(text, start, end, enabled, sink) {
        return;
    }
    // Pieces split at spaces, read lazily (a window may be megabytes): from
    // each piece, the longest run of up to six pieces that is one entity.
    let bytes = text.as_bytes();
    let mut p = start;
    let mut next_piece = move || {
        while p < end && bytes[p] == b' ' {
            p += 1;
        }
        let q = p;
        while p < end && bytes[p] != b' ' {
            p += 1;
        }
        (p > q).then_some((q, p))
    };
    let mut buf: std::collections::VecDeque<(usize, usize)> = std::collections::VecDeque::new();
    loop {
        while buf.len() < 6 {
            match next_piece() {
                Some(x) => buf.push_back(x),
                None => break,
            }
        }
        if buf.is_empty() || sink.full() {
            return;
        }
        let mut used = 1;
        for b in (0..buf.len()).rev() {
            let (s, e) = (buf[0].0, buf[b].1);
            if e - s <= MAX_WINDOW && (s, e) != (start, end) && try_emit(text, s, e, enabled, sink) {
                used = b + 1;
                break;
            }
        }
        buf.drain(..used);
    }
}

/// A candidate parsed into digit groups.
struct Num {
    plus: bool,
    /// Byte ranges of the digit groups.
    groups: Vec<(usize, usize)>,
    /// Index of the group in parentheses.
    paren: Option<usize>,
    /// Separator kinds used outside parentheses: 1 = space, 2 = dash, 4 = dot.
    kinds: u8,
    digits: usize,
}

const K_SPACE: u8 = 1;
const K_DASH: u8 = 2;
const K_DOT: u8 = 4;

fn parse_num(b: &[u8], s: usize, e: usize) -> Option<Num> {
    let mut i = s;
    let plus = b[i] == b'+';
    if plus {
        i += 1;
    }
    let mut num = Num {
        plus,
        groups: Vec::new(),
        paren: None,
        kinds: 0,
        digits: 0,
    };
    loop {
        let open = i < e && b[i] == b'(';
        if open {
            if num.paren.is_some() {
                return None;
            }
            i += 1;
        }
        let g = i;
        while i < e && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == g {
            return None;
        }
        num.groups.push((g, i));
        num.digits += i - g;
        let closed = open && i < e && b[i] == b')';
        if open && !closed {
            return None;
        }
        if closed {
            num.paren = Some(num.groups.len() - 1);
            i += 1;
        }
        if i >= e {
            break;
        }
        let sep = i;
        let mut kind = 0;
        while i < e && matches!(b[i], b' ' | b'-' | b'.') {
            kind |= match b[i] {
                b' ' => K_SPACE,
                b'-' => K_DASH,
                _ => K_DOT,
            };
            i += 1;
        }
        let n = i - sep;
        let next_open = i < e && b[i] == b'(';
        if n > 1 || (n == 0 && !closed && !next_open) {
            return None;
        }
        // The separators around a parenthesized group are free (`8 (495) 123-45-67`).
        if !closed && !next_open {
            num.kinds |= kind;
        }
    }
    Some(num)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ip(f32),
    Ssn(f32),
    Card,
    Phone,
    /// Decided: the whole window has a type's shape but fails its check
    /// (a grouped card number with a bad Luhn digit); do not split it.
    Nothing,
}

/// Validates `[s, e)` and emits it; `true` when the window was decided
/// (found, or known to be something that must not be split further).
fn try_emit(text: &str, s: usize, e: usize, enabled: &[bool], sink: &mut Sink<'_>) -> bool {
    let on = |i: usize| enabled.get(i).copied().unwrap_or(false);
    let b = text.as_bytes();
    let Some(num) = parse_num(b, s, e) else {
        return false;
    };
    let Some((kind, end)) = classify(text, &num, s, e) else {
        return false;
    };
    let (rule, score) = match kind {
        Kind::Ip(sc) => (IP, sc),
        Kind::Ssn(sc) => (SSN, sc),
        Kind::Card => (CARD, SCORE_CARD),
        Kind::Phone => (PHONE, SCORE_PHONE),
        Kind::Nothing => return true,
    };
    if !on(rule) || sink.claimed(s, end) {
        return true;
    }
    sink.push(rule, s, end, score);
    true
}

fn group(b: &[u8], g: (usize, usize)) -> &[u8] {
    &b[g.0..g.1]
}

fn classify(text: &str, num: &Num, s: usize, e: usize) -> Option<(Kind, usize)> {
    let b = text.as_bytes();
    let lens: Vec<usize> = num.groups.iter().map(|g| g.1 - g.0).collect();
    let plain = !num.plus && num.paren.is_none();
    let prev = char_before(text, s);
    let prev2 = prev.and_then(|c| char_before(text, s - c.len_utf8()));
    let next = char_at(text, e);
    let next2 = next.and_then(|c| char_at(text, e + c.len_utf8()));
    let glued_before = prev
        .is_some_and(|c| is_word_char(c) || matches!(c, '@' | '/' | '\\' | '$' | '€' | '£' | '¥' | '+'))
        || (prev.is_some_and(|c| matches!(c, '.' | '-' | ',')) && prev2.is_some_and(is_word_char))
        || (prev == Some(':') && prev2.is_some_and(|c| c.is_ascii_digit()));

    // IPv4: four dotted groups of 1–3 digits; it may be followed by `:port`.
    if plain && num.kinds == K_DOT && lens.len() == 4 && lens.iter().all(|l| *l <= 3) {
        let glued_after = next.is_some_and(|c| is_word_char(c) || c == '@')
            || (next == Some('.') && next2.is_some_and(|c| c.is_ascii_digit()));
        let mut oct = [0u8; 4];
        for (k, g) in num.groups.iter().enumerate() {
            let d = group(b, *g);
            let v = digits_value(d);
            if v > 255 || (d.len() > 1 && d[0] == b'0') {
                return None;
            }
            oct[k] = v as u8;
        }
        let glued_v = prev.is_some_and(|c| c == 'v' || c == 'V');
        if glued_before || glued_v || glued_after || keyword_before(b, s, 12, &["version", "ver."]) {
            return None;
        }
        let local = oct[0] == 10
            || oct[0] == 127
            || oct[0] == 0
            || (oct[0] == 172 && (16..32).contains(&oct[1]))
            || (oct[0] == 192 && oct[1] == 168)
            || (oct[0] == 169 && oct[1] == 254);
        return Some((Kind::Ip(if local { SCORE_IP_LOCAL } else { SCORE_IP }), e));
    }
    if plain && num.kinds == K_DOT && lens.len() >= 4 && lens.iter().all(|l| *l <= 3) && !lens.iter().all(|l| *l == 2) {
        return None; // version-like dotted number
    }

    // Everything else must stand alone: not glued to words, times, paths.
    let mut end = e;
    let ext = extension(b, e);
    let glued_after = |end: usize| {
        let next = char_at(text, end);
        let next2 = next.and_then(|c| char_at(text, end + c.len_utf8()));
        match next {
            None => false,
            Some(c) if is_word_char(c) || matches!(c, '@' | '%' | '/' | '\\' | '€' | '$') => true,
            Some('.' | ':' | ',') => next2.is_some_and(|c| c.is_ascii_digit()),
            Some('-') => !dash_word(&b[end + 1..]),
            _ => false,
        }
    };
    if glued_before {
        return None;
    }

    // SSN with separators.
    if plain && lens == [3, 2, 4] && (num.kinds == K_DASH || num.kinds == K_SPACE) {
        if glued_after(e) || unit_number(b, s) {
            return None;
        }
        let g: Vec<&[u8]> = num.groups.iter().map(|g| group(b, *g)).collect();
        return ssn_valid(g[0], g[1], g[2]).then_some((Kind::Ssn(SCORE_SSN), e));
    }

    // Payment cards.
    if plain
        && (12..=19).contains(&num.digits)
        && (num.kinds == 0 || num.kinds == K_DASH || num.kinds == K_SPACE)
        && card_grouping(&lens)
        && !glued_after(e)
    {
        let digits: Vec<u8> = num.groups.iter().flat_map(|g| group(b, *g).iter().copied()).collect();
        if luhn(&digits) && card_brand_ok(&digits) {
            return Some((Kind::Card, e));
        }
        if lens.len() >= 3 {
            return Some((Kind::Nothing, e));
        }
    }

    // A bare nine-digit SSN, only with a keyword before it.
    if plain && lens == [9] && !glued_after(e) {
        let d = group(b, num.groups[0]);
        if ssn_valid(&d[..3], &d[3..5], &d[5..]) && keyword_before(b, s, 48, &["ssn", "social security", "ss#", "ss #"])
        {
            return Some((Kind::Ssn(SCORE_SSN_BARE), e));
        }
        return None;
    }

    // Phones.
    if let Some(x) = ext {
        end = x;
    }
    if glued_after(end) {
        if ext.is_none() || glued_after(e) {
            return None;
        }
        end = e;
    }
    if phone_ok(text, num, &lens, s, end) {
        return Some((Kind::Phone, end));
    }
    None
}

/// After a number, `-office` style words are fine; `-a716` (UUID) or
/// `-2` (ranges, ids) are not.
fn dash_word(rest: &[u8]) -> bool {
    let w: Vec<u8> = rest.iter().copied().take_while(u8::is_ascii_alphanumeric).collect();
    !w.is_empty() && w.iter().all(u8::is_ascii_alphabetic) && w.iter().any(|c| !c.is_ascii_hexdigit())
}

/// `x123`, ` ext. 123`, `ext123` right after a number: its end.
fn extension(b: &[u8], e: usize) -> Option<usize> {
    let mut i = e;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let rest = &b[i.min(b.len())..];
    let lower: Vec<u8> = rest.iter().take(10).map(u8::to_ascii_lowercase).collect();
    let skip = if lower.starts_with(b"extension") {
        9
    } else if lower.starts_with(b"ext") {
        3
    } else if lower.starts_with(b"x") {
        1
    } else {
        return None;
    };
    i += skip;
    if b.get(i) == Some(&b'.') {
        i += 1;
    }
    if b.get(i) == Some(&b' ') && skip > 1 {
        i += 1;
    }
    let d = i;
    while i < b.len() && b[i].is_ascii_digit() && i - d < 7 {
        i += 1;
    }
    (i > d && i - d <= 6 && !b.get(i).is_some_and(|c| is_word_byte(*c))).then_some(i)
}

fn ssn_valid(area: &[u8], grp: &[u8], serial: &[u8]) -> bool {
    let a = digits_value(area);
    a != 0 && a != 666 && a < 900 && digits_value(grp) != 0 && digits_value(serial) != 0
}

fn card_grouping(lens: &[usize]) -> bool {
    match lens {
        [_] => true,
        [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] if init.len() >= 2 => init.iter().all(|l| *l == 4) && (1..=4).contains(last),
        _ => false,
    }
}

fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, c) in d.iter().rev().enumerate() {
        let mut v = u32::from(c - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Known issuer ranges and the lengths each brand issues.
fn card_brand_ok(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| digits_value(&d[..k]);
    let in_range = |k: usize, lo: u32, hi: u32| (lo..=hi).contains(&p(k));
    // Visa
    (d[0] == b'4' && matches!(n, 13 | 16 | 19))
        // Mastercard
        || ((in_range(2, 51, 55) || in_range(4, 2221, 2720)) && n == 16)
        // Amex
        || ((p(2) == 34 || p(2) == 37) && n == 15)
        // Discover
        || ((p(4) == 6011 || in_range(3, 644, 649) || p(2) == 65) && (16..=19).contains(&n))
        // Diners Club
        || ((in_range(3, 300, 305) || p(4) == 3095 || p(2) == 36 || p(2) == 38 || p(2) == 39)
            && (14..=19).contains(&n))
        // JCB: 3528–3589 is issued; the rest of 35 is accepted too. 2131
        // and 1800 are its legacy 15-digit ranges.
        || (p(2) == 35 && (16..=19).contains(&n))
        || ((p(4) == 2131 || p(4) == 1800) && n == 15)
        // UnionPay
        || (p(2) == 62 && (16..=19).contains(&n))
        // Maestro
        || ((p(2) == 50 || in_range(2, 56, 69)) && (12..=19).contains(&n))
        // Mir
        || (in_range(4, 2200, 2204) && (16..=19).contains(&n))
}

/// Street words: a number followed on its line by one of these within a few
/// words is a house and street number (`370 3911 Fourth Avenue`).
const STREET_WORDS: [&str; 45] = [
    "street",
    "st",
    "avenue",
    "ave",
    "av",
    "road",
    "rd",
    "drive",
    "dr",
    "lane",
    "ln",
    "boulevard",
    "blvd",
    "way",
    "court",
    "ct",
    "place",
    "pl",
    "terrace",
    "parkway",
    "pkwy",
    "circle",
    "cir",
    "highway",
    "hwy",
    "square",
    "sq",
    "trail",
    "crescent",
    "close",
    "alley",
    "plaza",
    "rue",
    "via",
    "calle",
    "straat",
    "strasse",
    "str",
    "weg",
    "gasse",
    "allee",
    "avenida",
    "rua",
    "route",
    "chemin",
];

fn street_follows(b: &[u8], end: usize) -> bool {
    if b.get(end) != Some(&b' ') || b.get(end + 1).is_none_or(|c| c.is_ascii_digit() || *c == b' ') {
        return false;
    }
    let rest = &b[end + 1..(end + 64).min(b.len())];
    let line = rest.split(|c| *c == b'\n').next().unwrap_or_default();
    line.split(|c| *c == b' ').take(5).any(|w| {
        let w = w.trim_ascii_end();
        let w = w.strip_suffix(b",").unwrap_or(w);
        let w = w.strip_suffix(b".").unwrap_or(w).to_ascii_lowercase();
        STREET_WORDS.iter().any(|s| s.as_bytes() == w.as_slice())
    })
}

/// Prefix words after which a number is a unit, order or version, not a phone.
const NOT_PHONE_WORDS: [&str; 14] = [
    "apt",
    "apartment",
    "suite",
    "ste",
    "unit",
    "room",
    "rm",
    "box",
    "order",
    "invoice",
    "ref",
    "version",
    "ver",
    "v",
];

/// `#123 4567`, `Apt. 722 20 40`, `Suite 680 36 4022`, `ver 10 1234567`.
fn unit_number(b: &[u8], s: usize) -> bool {
    let mut k = s;
    while k > 0 && b[k - 1] == b' ' {
        k -= 1;
    }
    if k > 0 && b[k - 1] == b'#' {
        return true;
    }
    let w = word_before(b, s, 16);
    NOT_PHONE_WORDS.contains(&w.as_str())
}

fn phone_ok(text: &str, num: &Num, lens: &[usize], s: usize, end: usize) -> bool {
    let b = text.as_bytes();
    if !(7..=15).contains(&num.digits) {
        return false;
    }
    let g = lens.len();
    if num.plus {
        // At most two separator kinds; the country code may be written
        // together with the area code (`+447700 900 123`).
        return num.kinds.count_ones() <= 2 && (g == 1 || lens.iter().all(|l| *l <= 8));
    }
    if street_follows(b, end) {
        return false;
    }
    if unit_number(b, s) {
        return false;
    }
    if g == 1 {
        // Bare runs: NANP only (optionally with a leading 1).
        let d = group(b, num.groups[0]);
        return match d.len() {
            10 => nanp(d),
            11 => d[0] == b'1' && nanp(&d[1..]),
            _ => false,
        };
    }
    if num.kinds.count_ones() > 1 || lens.iter().any(|l| *l > 8) || lens[g - 1] < 2 {
        return false;
    }
    // Two groups: an area code and a subscriber number, not two ids.
    if g == 2 && (lens[0] > 5 || lens[1] < 4) {
        return false;
    }
    // US ZIP+4.
    if lens == [5, 4] && num.kinds == K_DASH && num.paren.is_none() {
        return false;
    }
    match num.paren {
        Some(0) => {
            if !(1..=5).contains(&lens[0]) {
                return false;
            }
        }
        // A trunk or country digit before the area code: `8 (495) 123-45-67`.
        Some(1) => {
            if lens[0] != 1 || !(2..=5).contains(&lens[1]) {
                return false;
            }
        }
        Some(_) => return false,
        None => {
            let nanp_long = lens == [1, 3, 3, 4] && group(b, num.groups[0]) == b"1";
            if lens[0] < 2 && !nanp_long {
                return false;
            }
        }
    }
    if num.kinds == K_DOT && (g < 3 || lens.iter().any(|l| *l < 2 || *l > 4)) {
        return false;
    }
    !looks_like_date(b, num, lens)
}

fn nanp(d: &[u8]) -> bool {
    d.len() == 10 && d[0] >= b'2' && d[3] >= b'2' && !(d[1] == b'1' && d[2] == b'1')
}

fn looks_like_date(b: &[u8], num: &Num, lens: &[usize]) -> bool {
    if lens.len() != 3 || num.paren.is_some() {
        return false;
    }
    let v: Vec<u32> = num.groups.iter().map(|g| digits_value(group(b, *g))).collect();
    let year = |y: u32| (1900..=2099).contains(&y);
    let dm = |a: u32, c: u32| (1..=31).contains(&a) && (1..=12).contains(&c);
    match lens {
        [4, 2, 2] => year(v[0]) && (1..=12).contains(&v[1]) && (1..=31).contains(&v[2]),
        [1 | 2, 1 | 2, 4] => year(v[2]) && (dm(v[0], v[1]) || dm(v[1], v[0])),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, Limits};

    fn engine(opts: &PiiOptions) -> Engine {
        Engine::new(vec![Box::new(PiiPack::new(opts))], Limits::default()).expect("engine")
    }

    /// (rule, matched text) for every finding.
    fn found(text: &str) -> Vec<(String, String)> {
        found_with(text, &PiiOptions::default())
    }

    fn found_with(text: &str, opts: &PiiOptions) -> Vec<(String, String)> {
        engine(opts)
            .scan(text)
            .findings
            .iter()
            .filter(|f| f.category == Category::Pii)
            .map(|f| (f.rule.to_string(), text[f.start..f.end].to_string()))
            .collect()
    }

    fn one(text: &str, rule: &str, want: &str) {
        let f = found(text);
        assert_eq!(f, vec![(rule.to_string(), want.to_string())], "in {text:?}");
    }

    fn none(text: &str) {
        assert_eq!(found(text), Vec::<(String, String)>::new(), "in {text:?}");
    }

    fn with_luhn(prefix: &str) -> String {
        (0..10)
            .map(|c| format!("{prefix}{c}"))
            .find(|s| luhn(s.as_bytes()))
            .unwrap_or_default()
    }

    #[test]
    fn emails() {
        one(
            "mail john.doe+tag@example.co.uk.",
            "pii.email",
            "john.doe+tag@example.co.uk",
        );
        one("<Jane_O@sub.example.com>", "pii.email", "Jane_O@sub.example.com");
        one("write to a@b.io, thanks", "pii.email", "a@b.io");
        one(
            "mailto:x.y@xn--bcher-kva.example",
            "pii.email",
            "x.y@xn--bcher-kva.example",
        );
        none("npm i @scope/pkg lodash@4.17.21 react@^18.2 foo@latest");
        none("ssh user@localhost and root@127.0.0.1");
        none("git clone git@github.com:org/repo.git");
        none("<img src=icon@2x.png>");
        none("a..b@example.com and a.@example.com");
        none("user@example.c0m user@-bad.com");
    }

    #[test]
    fn phones() {
        one("call +1-202-555-0143 now", "pii.phone", "+1-202-555-0143");
        one("call (415) 555-2671 x123.", "pii.phone", "(415) 555-2671 x123");
        one("tel 020 7946 0958", "pii.phone", "020 7946 0958");
        one("tel: 06 12 34 56 78", "pii.phone", "06 12 34 56 78");
        one("fax 555.123.4567", "pii.phone", "555.123.4567");
        one("at +44 (0) 20 7946 0958.", "pii.phone", "+44 (0) 20 7946 0958");
        one("(227)664-8546x506", "pii.phone", "(227)664-8546x506");
        one("1-800-555-0199", "pii.phone", "1-800-555-0199");
        one("ring 4155552671", "pii.phone", "4155552671");
        one("+14155552671", "pii.phone", "+14155552671");
        one("02.27.96.63.08 work", "pii.phone", "02.27.96.63.08");
        one("555-123-4567-office", "pii.phone", "555-123-4567");
        one("Phone:0431 19 97 94", "pii.phone", "0431 19 97 94");
        one("Tel. +49(0)5287 65345", "pii.phone", "+49(0)5287 65345");
        one("+33 (0)1 23 45 67 89", "pii.phone", "+33 (0)1 23 45 67 89");
        one("(07662) 123456", "pii.phone", "(07662) 123456");
        one("8 (495) 123-45-67", "pii.phone", "8 (495) 123-45-67");
        one("+55 (011) 2345-6789", "pii.phone", "+55 (011) 2345-6789");
        one("01632 960 123", "pii.phone", "01632 960 123");
        one("Desk: +447700 900 123", "pii.phone", "+447700 900 123");
    }

    #[test]
    fn phone_look_alikes() {
        none("on 2023-10-15 at 12:30:45");
        none("When: 1993-01-04 14:56:41");
        none("born 12/25/1990, 25.12.1990, 1990-12-25");
        none("build 10.0.19041.1 and 1.2.3.4.5 and v1.2.3.4");
        none("order #12345678 and ORD-1234567 and id 12345678901234");
        none("uuid 123e4567-e89b-12d3-a456-426614174000 and 12345678-1234-a456");
        none("commit 3f786850e387550fdab836ed7e6dc881de23001b 1234567ab");
        none("Apt. 722 20 40 rue Victor");
        none("at 370 3911 Fourth Avenue and 3536 1659 Hoog St. and 636 1812 Rue De La Paix");
        none("Suite 680 36 4022 Oakridge Lane, unit 123-45-6789");
        none("price $1 234 567 and 1 234 567 people");
        none("range 1234567-1234568, Springfield, IL 62704-1234");
        none("184th 2914 184th Street");
        none("license 425700624 and 1700000000");
        none("12345678 units, 3.14159265 pi");
    }

    #[test]
    fn cards() {
        one("card 4111 1111 1111 1111 ok", "pii.credit_card", "4111 1111 1111 1111");
        one("card 4111-1111-1111-1111", "pii.credit_card", "4111-1111-1111-1111");
        one("amex 3782 822463 10005", "pii.credit_card", "3782 822463 10005");
        for n in [
            "378282246310005",
            "6011111111111117",
            "5555555555554444",
            "2223003122003222",
            "3530111333300000",
            "30569309025904",
            "6200000000000005",
            "4222222222222",
            "6304000000000000",
            "501800000009",
            "213100000000001",
        ] {
            one(&format!("n {n}."), "pii.credit_card", n);
        }
    }

    #[test]
    fn card_look_alikes() {
        none("card 4111 1111 1111 1112");
        none("card 4111111111111112");
        let unknown_iin = with_luhn("911111111111111");
        assert!(luhn(unknown_iin.as_bytes()));
        none(&format!("id {unknown_iin}"));
        // Visa with a length Visa does not issue.
        let odd = with_luhn("41111111111111");
        none(&format!("id {odd}"));
        none("x4111111111111111 4111111111111111z");
    }

    #[test]
    fn ibans() {
        one(
            "IBAN GB82 WEST 1234 5698 7654 32.",
            "pii.iban",
            "GB82 WEST 1234 5698 7654 32",
        );
        one("DE89370400440532013000", "pii.iban", "DE89370400440532013000");
        one("iban: de89370400440532013000", "pii.iban", "de89370400440532013000");
        one("(NL91ABNA0417164300)", "pii.iban", "NL91ABNA0417164300");
        none("GB82WEST12345698765433");
        none("DE8937040044053201300 DE893704004405320130000");
        none("XDE89370400440532013000 GB82 WE ST");
        // A bad checksum hides its digit groups from the phone and card rules.
        none("IBAN GB83 WEST 1234 5698 7654 32");
        none("ZZ89370400440532013000");
    }

    #[test]
    fn ssns() {
        one("SSN 123-45-6789", "pii.us_ssn", "123-45-6789");
        one("is 536 32 3065.", "pii.us_ssn", "536 32 3065");
        one("my ssn: 536323065", "pii.us_ssn", "536323065");
        one("Social Security number 078051121", "pii.us_ssn", "078051121");
        for bad in [
            "666-12-3456",
            "000-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            none(&format!("ssn {bad}"));
        }
        none("ssn 666123456");
        none("number 536323065");
    }

    #[test]
    fn ips() {
        one("from 8.8.8.8:53", "pii.ip_address", "8.8.8.8");
        one("host 10.0.0.1.", "pii.ip_address", "10.0.0.1");
        one("addr 2001:db8::1", "pii.ip_address", "2001:db8::1");
        one(
            "at 3b20:9a3a:1b2f:7ce:9ef1:4787:85fc:261e.",
            "pii.ip_address",
            "3b20:9a3a:1b2f:7ce:9ef1:4787:85fc:261e",
        );
        one(
            "ll fe80::1ff:fe23:4567:890a",
            "pii.ip_address",
            "fe80::1ff:fe23:4567:890a",
        );
        one("mapped ::ffff:192.0.2.1", "pii.ip_address", "::ffff:192.0.2.1");
        none("999.1.1.1 and 256.1.1.1 and 01.2.3.4");
        none("1.2.3.4.5 and v1.2.3.4 and version 1.2.3.4");
        none("at 12:30:45 in std::net::Ipv6Addr, mac 00:1a:2b:3c:4d:5e");
        none("dead::beef and a::b");
    }

    #[test]
    fn ip_scores_mark_local_ranges() {
        let r = engine(&PiiOptions::default()).scan("a 192.168.1.1 b 1.1.1.1 c ::1");
        let scores: Vec<f32> = r.findings.iter().map(|f| f.score).collect();
        assert_eq!(scores, vec![SCORE_IP_LOCAL, SCORE_IP, SCORE_IP_LOCAL]);
    }

    #[test]
    fn mixed_text_spans_are_exact() {
        let t = "Jo <jo@ex.org> 4111 1111 1111 1111, +1 415 555 2671; 10.1.2.3 and 078-05-1121";
        let f = found(t);
        let want = [
            ("pii.email", "jo@ex.org"),
            ("pii.credit_card", "4111 1111 1111 1111"),
            ("pii.phone", "+1 415 555 2671"),
            ("pii.ip_address", "10.1.2.3"),
            ("pii.us_ssn", "078-05-1121"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(f, want);
    }

    #[test]
    fn clean_prose_and_odd_digits() {
        none("The quick brown fox jumps over the lazy dog. Nothing to see: here.");
        // Fullwidth, Arabic-Indic and Devanagari digits are not ASCII digits.
        none("call ４１５-５５５-２６７１ or ٤١٥٥٥٥٢٦٧١ or ४१५५५५२६७१");
        none("é4155552671 ٤4155552671");
        one("é 4155552671 é", "pii.phone", "4155552671");
    }

    #[test]
    fn hostile_inputs_are_bounded() {
        let e = engine(&PiiOptions::default());
        for t in [
            "1".repeat(2 << 20),
            "@".repeat(1 << 20),
            "a@".repeat(1 << 19),
            ":".repeat(1 << 20),
            "1 ".repeat(1 << 19),
            "1.".repeat(1 << 19),
            "(1".repeat(1 << 19),
            "ab12".repeat(1 << 18),
        ] {
            let r = e.scan(&t);
            assert!(r.findings.len() <= Limits::default().max_findings);
        }
        // Many valid phones: capped, not unbounded.
        let many = "555-123-4567 ".repeat(5000);
        let r = e.scan(&many);
        assert_eq!(r.findings.len(), Limits::default().max_findings);
    }

    #[test]
    fn optional_types_are_off_by_default() {
        let t = "Mr. John Smith lives at 221 Baker Street.";
        none(t);
        let opts = PiiOptions {
            names: true,
            addresses: true,
        };
        let f = found_with(t, &opts);
        assert_eq!(
            f,
            vec![
                ("pii.person".to_string(), "John Smith".to_string()),
                ("pii.street_address".to_string(), "221 Baker Street".to_string()),
            ]
        );
        let f = found_with("Name: Ana María López\nmy name is Li", &opts);
        assert_eq!(
            f,
            vec![
                ("pii.person".to_string(), "Ana María López".to_string()),
                ("pii.person".to_string(), "Li".to_string()),
            ]
        );
    }

    #[test]
    fn rule_table_is_consistent() {
        let p = PiiPack::default();
        assert_eq!(p.rules(), RULE_IDS.len());
        assert!(p.triggers().iter().all(|(t, r)| !t.is_empty() && *r < p.rules()));
        let on = PiiPack::new(&PiiOptions {
            names: true,
            addresses: true,
        });
        assert!(on.person.is_some() && on.address.is_some());
    }
}
