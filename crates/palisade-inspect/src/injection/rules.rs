//! The rule table of the injection pack and the rules that need more than
//! one regex.

use std::sync::{Arc, LazyLock};

use regex::Regex;

use super::{Ctx, MAX_PER_RULE};
use crate::{Category, Finding};

/// How a rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    /// Its patterns over the view.
    Regex,
    /// Its patterns over the raw text (non-Latin scripts), non-ASCII only.
    RawRegex,
    OutputDirective,
    CodePayload,
    Markdown,
    Todo,
    FakeTurn,
    RequestLine,
    RequestFirst,
    Encoded,
    Rot13,
}

/// One pattern with its weight; `need`, when set, must match the matched
/// text as well.
pub(crate) struct Pat {
    re: Regex,
    score: f32,
    need: Option<Regex>,
    /// May start inside a word when glued on with a case change or `_`
    /// ("USAIgnore your…", "External_Ignore…").
    glued: bool,
}

/// One rule: id, literal triggers (none = always runs), how it runs.
pub(crate) struct Rule {
    pub(crate) id: &'static str,
    pub(crate) triggers: &'static [&'static str],
    pub(crate) special: Special,
    pats: Vec<Pat>,
}

/// Compiles a view pattern: case-insensitive, ASCII word boundaries (the
/// lazy DFA handles them on any text).
fn re(p: &str) -> Regex {
    let p = p.replace(r"\b", r"(?-u:\b)");
    Regex::new(&format!("(?i){p}")).unwrap_or_else(|e| panic!("injection pattern {p:?}: {e}"))
}

fn pat(p: &str, score: f32) -> Pat {
    Pat {
        re: re(p),
        score,
        need: None,
        glued: false,
    }
}

fn pat_need(p: &str, score: f32, need: &str) -> Pat {
    Pat {
        re: re(p),
        score,
        need: Some(re(need)),
        glued: false,
    }
}

/// A pattern whose leading `\b` may also be a glued word start.
fn glued(mut p: Pat, src: &str) -> Pat {
    let open = src.strip_prefix(r"\b").unwrap_or(src);
    p.re = re(open);
    p.glued = true;
    p
}

/// Whether a match at `a` starts a word: after a non-word byte, after `_`,
/// or at a case change inside a glued word ("USAIgnore").
pub(crate) fn word_start(v: &str, a: usize) -> bool {
    let b = v.as_bytes();
    if a == 0 {
        return true;
    }
    let prev = b[a - 1];
    if !(prev.is_ascii_alphanumeric() || prev == b'_') || prev >= 0x80 {
        return true;
    }
    if prev == b'_' {
        return true;
    }
    let cur = b.get(a).copied().unwrap_or(b' ');
    let next = b.get(a + 1).copied().unwrap_or(b' ');
    cur.is_ascii_uppercase() && next.is_ascii_lowercase()
}

fn rule(id: &'static str, triggers: &'static [&'static str], special: Special, pats: Vec<Pat>) -> Rule {
    Rule {
        id,
        triggers,
        special,
        pats,
    }
}

/// Verbs that drop instructions.
const OVR: &str = r"(?:ignor(?:e|r?e|ing)?|ignroe|igonre|ingore|ingnore|disregard(?:ing)?|disreguard|disregrad|dismiss|forget|forgot|foget|forgett?|overlook|override|overrule|bypass|neglect|set\s+aside|put\s+aside|stop\s+following|do\s+not\s+follow|don['’]?t\s+follow|no\s+longer\s+follow)";

/// What is dropped: instructions and their kin (misspellings included).
const INSTR: &str = r"(?:\w*(?:nstr|nstuc|nsturc|ntruc|nstrc|nsrtuc|nsruc)\w*|directions?|directives?|rules|guidelines?|commands?|orders|prompts?|prompting|assignments?|programming|training|guardrails?|constraints|restrictions|polic(?:y|ies)|moderation|guidance|context|tasks?)";

/// Words that make the object a reference to earlier instructions.
const STRONG_Q: &str = r"\b(?:all|any|every|your|previous|previously|prior|above|earlier|preceding|foregoing|former|original|initial|old|existing|given|provided|aforementioned|system|developer|safety|those|these|other|before)\b";

/// Who the text may address as the model.
const MODEL: &str = r"(?:gpt-?\d(?:\.\d)?(?:o|-?turbo)?|chat\s?gpt|claude|gemini|bard|llama|copilot|mistral|the\s+(?:ai|assistant|model|agent|llm|language\s+model|chatbot|bot)|ai(?:\s+(?:assistant|agent|model))?|assistant|agent|llm|language\s+model|chatbot)";

/// Verbs of directives aimed at the model's answer.
const OUT_VERBS: &str = r"(?:tell|ask|let|add|include|insert|integrate|incorporate|append|prepend|augment|enhance|enrich|modify|change|alter|adjust|amend|rewrite|rephrase|reword|convert|replace|substitute|swap|use|utili[sz]e|employ|provide|give|render|format|write|present|translate|start|begin|end|finish|conclude|close|mention|state|say|tease|hint|suggest|promote|recommend|advertise|encourage|invite|urge|remind|stress|emphasi[sz]e|highlight|express|scramble|shuffle|jumble|misspell|introduce|combine|merge|group|split|separate|remove|delete|omit|strip|reverse|anagram|rearrange|capitali[sz]e|uppercase|lowercase|encode|encrypt|respond|make|ensure|keep|limit|restrict|avoid|refrain|put|place|embed|attach|link|direct|redirect|point|sign|spell|reformat|structure|apply|output|print|display|show|repeat|praise|criticize|exaggerate|frame|slant|inject|weave|blend|infuse|interweave|sprinkle|pepper|tailor|compose|craft|draft|create|generate|produce|offer|disclose|reveal|summari[sz]e|consider|feature|plug|warn|endorse|pitch|cite|quote|transform|turn|mix|fill|pad|prefix|suffix|recast|mask|obfuscate|pair|accompany|complement|conclude|close|open|frame|finish)";

/// The model's own output.
const OUT_NOUN: &str = r"(?:responses?|answers?|repl(?:y|ies)|outputs?|completions?|messages?|summary|summaries)";

/// Sentence start (the match begins with it; spans are trimmed).
const SS: &str = r"(?:^|[.!?:;|>\n*•\x22“(\]]\s*|\s-\s+|\s{2,})";

/// Pre-verb words of an imperative.
const PRE: &str = r"(?:(?:please|kindly|also|now|then|and|so|finally|additionally|lastly|always|just|remember\s+to|make\s+sure\s+(?:to|that\s+you)|be\s+sure\s+to|don['’]?t\s+forget\s+to|do\s+not\s+forget\s+to|you\s+(?:must|should|need\s+to|have\s+to|will|are\s+to)|i\s+want\s+you\s+to|i\s+need\s+you\s+to|you\s+are\s+required\s+to)[\s,]+)*";

pub(crate) static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    use Special::*;
    let ovr_a = format!(r"\b{OVR}\s+(?:about\s+)?(?:[\w'’-]+[\s,]+){{0,5}}?{INSTR}\b");
    let ovr_b = format!(
        r"\b{OVR}\s+(?:about\s+)?(?:(?:all|everything|anything)(?:\s+(?:that|which|you(?:['’]ve)?|i|we|of|the|was|were|have|has|had|been|said|told|wrote|written|stated|discussed|given|received|mentioned|learned|know|seen)){{0,5}}|the|all\s+the|what\s+(?:i|you|we)\s+(?:said|told\s+you|wrote))\s+(?:above|before(?:hand)?|previously|earlier|prior|so\s+far|until\s+now|up\s+to\s+(?:now|this\s+point))\b"
    );
    let ovr_c = format!(r"\b{OVR}(?:\s+about)?\s+(?:all|everything)(?:\s*[.,!;:-]|\s+(?:and|&|then|now)\b)");
    let out_main = format!(r"{SS}{PRE}{OUT_VERBS}\b[^\n]{{0,160}}?\byour\s+(?:[\w-]+\s+)?{OUT_NOUN}(?:['’]s)?\b");
    let out_in_your = format!(
        r"\b(?:also\s+|and\s+)?(?:in|within|throughout|at\s+the\s+(?:start|end|beginning)\s+of)\s+(?:your|each|every)\s+(?:next\s+|final\s+)?{OUT_NOUN}\s*,?\s*(?:please\s+)?(?:{OUT_VERBS}|make\s+sure|be\s+sure|you\s+(?:must|should|need|have))\b"
    );
    vec![
        // 0
        rule(
            "injection.override",
            &[
                "ignor",
                "ingore",
                "igonre",
                "ignroe",
                "disregard",
                "disreg",
                "forget",
                "forgot",
                "foget",
                "overlook",
                "override",
                "overrule",
                "bypass",
                "neglect",
                "dismiss",
                "set aside",
                "put aside",
                "t follow",
                "stop following",
                "drop ",
                "erase ",
                "delete ",
                "clear ",
                "abandon",
                "discard",
                "scrap ",
                "remove ",
                "behind",
                "been told",
                "been instructed",
                "been programmed",
                "articles",
                "documents",
                "answer this question",
                "answer the question",
                "vorangegangenen",
                "obigen",
                "vergiss",
                "vergessen",
                "missacht",
                "vorherigen",
                "bisherigen",
                "abweichend",
                "olvid",
                "omite",
                "descarta",
                "oublie",
                "neglige",
                "dimentic",
                "trascura",
                "esquec",
                "esqueç",
                "desconsider",
                "zaboravi",
            ],
            Regex,
            vec![
                glued(pat_need(&ovr_a, 0.9, STRONG_Q), &ovr_a),
                glued(pat(&ovr_b, 0.85), &ovr_b),
                pat(
                    r"\b(?:ignore|disregard)\s+(?:all\s+)?(?:the\s+)?(?:above|preceding|previous|foregoing)(?:\s*[.,!;:]|\s+and\b)",
                    0.85,
                ),
                pat(&ovr_c, 0.55),
                pat_need(
                    r"\b(?:drop|erase|delete|clear|abandon|discard|scrap|remove)\s+(?:[\w'’-]+\s+){0,3}?(?:instructions|directives|guidelines|prompts?|programming)\b",
                    0.85,
                    STRONG_Q,
                ),
                pat(
                    r"\bleave\s+(?:all\s+)?(?:the\s+|your\s+)?(?:previous|prior|above|earlier)\s+(?:\w+\s+){0,2}?behind\b",
                    0.85,
                ),
                pat(
                    r"\b(?:despite|regardless\s+of|contrary\s+to)\s+what\s+you(?:['’]ve|\s+have)\s+been\s+(?:told|instructed|programmed|asked)\b",
                    0.6,
                ),
                pat(
                    r"\b(?:disregard\w*|ignor\w*)\s+(?:the\s+|all\s+|any\s+)?(?:provided\s+|given\s+)?(?:articles?|documents?|sources)\b|\bnot\s+(?:by|from|according\s+to|based\s+on)\s+the\s+(?:provided\s+)?(?:articles?|documents?)\b",
                    0.5,
                ),
                pat(
                    r"\b(?:do\s+not|don['’]?t)\s+answer\s+(?:this|the)\s+question\b[^.\n]{0,30}?\b(?:but|instead|just|only)\b",
                    0.7,
                ),
                // German
                pat(
                    r"\b(?:ignorier(?:e|en|t)?|vergiss|vergesst|vergessen\s+sie|missachte|missachten\s+sie|uberspring\w*)\s+(?:\w+\s+){0,4}?(?:anweisung(?:en)?|instruktion(?:en)?|befehle|regeln|auftr(?:a|ae)ge|vorgaben|angaben|informationen|aufgaben|alles)\b",
                    0.85,
                ),
                pat(
                    r"\b(?:vorherigen|bisherigen|obigen|vorigen|fruheren|vorangegangenen|vorhergehenden)\s+(?:\w+\s+){0,2}?(?:anweisungen|instruktionen|informationen|befehle|auftr(?:a|ae)ge|aufgaben|angaben|ausfuhrungen)\b[^.!?\n]{0,80}?\b(?:ignorier\w*|vergess\w*|vergiss|irrelevant|hinter\s+sich|nicht\s+mehr|ungultig|streichen)",
                    0.85,
                ),
                pat(
                    r"\babweichend\s+(?:zu|von)\s+(?:den\s+)?(?:vorherigen|bisherigen|obigen)\s+(?:anweisungen|instruktionen|vorgaben)",
                    0.85,
                ),
                // Spanish, French, Italian, Portuguese, Croatian
                pat(
                    r"\b(?:ignora|ignore|ignorar|ignoren|olvida|olvide|olvidate|olvidar|olviden|omite|descarta|desestima)\s+(?:\w+\s+){0,4}?(?:instrucciones|indicaciones|ordenes|reglas|todo|anteriores)\b",
                    0.85,
                ),
                pat(
                    r"\b(?:ignore[zr]?|oublie[zr]?|neglige[zr]?)\s+(?:\w+\s+){0,4}?(?:instructions|consignes|directives|regles|ordres|tout|precedentes)\b",
                    0.85,
                ),
                pat(
                    r"\b(?:ignora|ignorate|dimentica|dimenticate|trascura)\s+(?:\w+\s+){0,4}?(?:istruzioni|indicazioni|regole|ordini|tutto|precedenti)\b",
                    0.85,
                ),
                pat(
                    r"\b(?:ignore|ignora|ignorar|esqueca|esquece|esquecer|desconsidere|desconsidera)\s+(?:\w+\s+){0,4}?(?:instrucoes|orientacoes|regras|ordens|tudo|anteriores)\b",
                    0.85,
                ),
                pat(r"\bzaboravi\s+(?:sve|prethodne)\b", 0.85),
            ],
        ),
        // 1
        rule(
            "injection.override",
            &[
                "忽略",
                "无视",
                "忽视",
                "不要理会",
                "不理会",
                "忘记",
                "忘掉",
                "無視",
                "忘れ",
                "игнор",
                "забуд",
                "забыв",
                "не обращай",
                "проигнор",
                "отбрось",
                "무시",
                "Игнор",
                "ИГНОР",
                "Забуд",
                "ЗАБУД",
                "Забыв",
                "Не обращай",
                "Проигнор",
                "Отбрось",
            ],
            RawRegex,
            vec![
                pat(
                    r"(?:忽略|无视|忽视|不要理会|不理会|忘记|忘掉|丢弃|放弃)(?:掉)?(?:你)?(?:的)?(?:之前|以前|先前|上面|上述|前面|以上|所有|全部|一切|原来|原先|此前|早先)",
                    0.9,
                ),
                pat(
                    r"(?:以前|前|上記|これまで|上|先)の(?:すべての|全ての)?(?:指示|命令|指令|ルール|プロンプト)(?:を|は)?(?:すべて|全て)?(?:無視|忘れ)",
                    0.9,
                ),
                pat(r"(?:指示|命令|指令)(?:を)?(?:すべて|全て)?無視", 0.85),
                pat(
                    r"(?:игнорир\w*|забуд\w*|забыва\w*|не\s+обращай\w*|проигнорир\w*|отбрось\w*)\s+(?:\w+\s+){0,3}?(?:инструкци\w*|указани\w*|правил\w*|команд\w*|вс[её]|предыдущ\w*)",
                    0.9,
                ),
                pat(
                    r"(?:이전|앞의|위의)\s*(?:모든\s*)?(?:지시|명령|지침)\w*\s*(?:을|를)?\s*무시",
                    0.9,
                ),
            ],
        ),
        // 2
        rule(
            "injection.role_marker",
            &[
                "<|",
                "[inst]",
                "[/inst]",
                "<<sys>>",
                "system:",
                "system prompt:",
                "instruction:",
                "instructions:",
                "<system",
                "</system",
                "<sys>",
                "function_result",
                "function_call",
                "tool_call",
                "tool_result",
                "tool_response",
                "function_response",
                "<developer",
                "<admin>",
            ],
            Regex,
            vec![
                pat(
                    r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text|end_of_turn|start_of_turn)\|>",
                    0.9,
                ),
                pat(r"\[/?inst\]|<</?sys>>", 0.85),
                pat(
                    r"(?:^|\n)[ \t]*#{1,6}\s*(?:system|instructions?|assistant|response)(?:\s+(?:prompt|message|override|note))?\s*:",
                    0.8,
                ),
                pat(
                    r"</?\s*(?:system|system_prompt|sys|developer|developer_message|admin)\s*>",
                    0.6,
                ),
                pat(
                    r"(?:^|\n)[ \t]*(?:new\s+|updated\s+)?system\s*(?:prompt|message|override|note|instructions?)\s*:",
                    0.7,
                ),
                pat(r"(?:^|\n)[ \t]*system\s*:", 0.35),
                pat(
                    r"</?\s*(?:function_results?|function_calls?|tool_calls?|tool_results?|tool_response|function_response|tool_use)\b",
                    0.5,
                ),
                pat(r"\x22(?:function_call|tool_calls)\x22\s*:", 0.3),
            ],
        ),
        // 3
        rule(
            "injection.model_tag",
            &[
                "important>",
                "information>",
                "instructions>",
                "instruction>",
                "secret>",
                "hidden>",
                "critical>",
                "priority>",
                "urgent>",
                "info>",
                "override>",
                "_instructions>",
                "system_note>",
                "note_to_ai>",
            ],
            Regex,
            vec![pat(
                r"<\s*/?\s*(?:important|information|info|instructions?|secret|hidden|critical|priority|urgent|override|ai_instructions?|assistant_instructions?|agent_instructions?|system_note|note_to_ai|hidden_instructions?)\s*>",
                0.5,
            )],
        ),
        // 4
        rule(
            "injection.fake_turn",
            &[
                "assistant:",
                "user:",
                "human:",
                "ai:",
                "gpt:",
                "chatgpt:",
                "claude:",
                "bot:",
            ],
            FakeTurn,
            vec![],
        ),
        // 5
        rule(
            "injection.model_address",
            &[
                "important message",
                "urgent message",
                "to you,",
                "dear ",
                "attention",
                "attn",
                "note to",
                "message to",
                "message for",
                "if you are",
                "if you're",
                "reading this",
                "processing this",
                "hey ",
                "hello ",
                "instructions for",
                "instructions to",
            ],
            Regex,
            vec![
                pat(
                    r"\bthis\s+is\s+an?\s+(?:very\s+)?(?:important|urgent|critical|official|high[- ]priority|special|private|confidential)\s+(?:message|note|instructions?|notice|update|request|reminder)s?\s+(?:from|for|to)\b",
                    0.7,
                ),
                pat(&format!(r"\bto\s+you,?\s+{MODEL}\b"), 0.75),
                pat(
                    &format!(
                        r"\b(?:dear|hey|hi|hello|attention|attn|note\s+to|message\s+to|message\s+for|instructions?\s+(?:for|to))\s*:?\s*(?:the\s+)?(?:{MODEL})\s*[,:!.]"
                    ),
                    0.6,
                ),
                pat(
                    r"\bif\s+you(?:['’]re|\s+are)\s+(?:an?\s+)?(?:ai|a\.i\.|llm|large\s+language\s+model|language\s+model|ai\s+assistant|ai\s+agent|chatbot|automated\s+(?:agent|assistant|system)|ai\s+model|model|bot|assistant|agent)\b(?:\s+(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|that\s+is|who\s+is))?",
                    0.7,
                ),
                pat(
                    r"\b(?:ai|llm|chatbot|ai\s+assistant|language\s+model|assistants?|agents?|models?)s?\s+(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing|crawling)\s+this\s+(?:text|page|document|email|message|file|content|website|site)\b",
                    0.6,
                ),
            ],
        ),
        // 6
        rule(
            "injection.task_hijack",
            &[
                "before you",
                "following first",
                "after you do",
                "i gave you",
                "the user gave you",
                "instead of",
                "your new",
                "your real",
                "your actual",
                "your true",
                "your only",
                "your primary",
                "your next task",
                "new instruction",
                "new task",
                "new rules",
                "from now on",
                "updated instruction",
                "new directive",
                "real task",
                "actual task",
                "new task",
                "new assignment",
                "neue aufgabe",
                "instructions follow",
                "tasks follow",
                "folgen neue",
                "folgen weitere",
                "instructions are now",
                "pretend",
                "du bist",
            ],
            Regex,
            vec![
                pat(
                    r"\bbefore\s+(?:you\s+)?(?:can\s+|could\s+|do\s+|start\s+|begin\s+|are\s+able\s+to\s+|proceed\s+(?:to|with)\s+)?(?:solv|complet|answer|finish|continu|proceed|respond|summari|perform|start|begin|work|do|handl|address|reply|answer)\w*\s+(?:\w+\s+){0,3}?(?:task|request|question|query|assignment|job|instructions?|prompt)s?\b",
                    0.6,
                ),
                pat(
                    r"\b(?:please\s+)?do\s+the\s+following\s+(?:things?\s+|steps?\s+|tasks?\s+)?first\b",
                    0.8,
                ),
                pat(
                    r"\bafter\s+you\s+(?:do|have\s+done|complete|finish|have\s+completed|have\s+finished)\s+(?:that|this|it|these)\b[^.\n]{0,60}?\b(?:task|continue|proceed|solve|answer|original)",
                    0.7,
                ),
                pat(
                    r"\bthe\s+(?:task|instructions?|request|question|job)\s+(?:that\s+|which\s+)?(?:i|the\s+user)\s+(?:gave|give|have\s+given|had\s+given|assigned)\s+you\b",
                    0.8,
                ),
                pat(
                    r"\binstead\s+of\s+(?:answering|responding|replying|solving|completing|summari[sz]ing|following|translating|doing\s+(?:what|the\s+task|your\s+task))\b",
                    0.45,
                ),
                pat(
                    r"\byour\s+(?:new|real|actual|true|only|next|primary|updated|main)\s+(?:task|goal|objective|job|mission|instructions?|purpose|role|assignment)\s+(?:is|are|will\s+be|now)\b",
                    0.75,
                ),
                pat(
                    r"\b(?:new|updated|revised|real|actual)\s+(?:instructions?|tasks?|rules|directives?|system\s+prompt|orders)\s*[:-]",
                    0.7,
                ),
                pat(
                    r"\bfrom\s+now\s+on,?\s+(?:you\s+(?:are|will|must|should|shall|can|may)|act\s+as|pretend|your\s+(?:task|job|role|name))\b",
                    0.55,
                ),
                pat(
                    r"\b(?:focus|concentrate)\s+on\s+(?:your|the)\s+new\s+(?:task|assignment)\b",
                    0.8,
                ),
                pat(
                    r"\bkonzentrier\w*\s+(?:dich|sie\s+sich)\s+(?:\w+\s+){0,2}?auf\s+(?:deine|ihre|die)\s+neue\s+aufgabe\b",
                    0.8,
                ),
                pat(
                    r"\bnew\s+(?:instructions?|tasks?)\s+(?:follow|are\s+coming|come)\b|\b(?:nun|jetzt)\s+folgen\s+(?:neue|weitere)\s+(?:anweisungen|aufgaben|instruktionen)\b",
                    0.7,
                ),
                pat(r"\byour\s+(?:new\s+)?instructions\s+are\s+now\b", 0.75),
                pat(
                    r"\bpretend\s+(?:to\s+be|you\s+are|you['’]re)\s+an?\s+(?:evil|unfiltered|unrestricted|malicious|uncensored|rogue|jailbroken)\s+(?:ai|assistant|bot|chatbot|model)\b|\bdu\s+bist\s+(?:jetzt\s+|nun\s+)?eine?\s+(?:bose|boser|bosartige)\s+ki\b",
                    0.7,
                ),
            ],
        ),
        // 7
        rule(
            "injection.output_directive",
            &[
                "your response",
                "your answer",
                "your reply",
                "your output",
                "your message",
                "your summary",
                "your completion",
                "your responses",
                "your answers",
                "your replies",
                "your final",
            ],
            OutputDirective,
            vec![
                pat(&out_main, 0.8),
                pat(&out_in_your, 0.8),
                pat(
                    &format!(r"\b{OUT_VERBS}\b[^\n]{{0,120}}?\byour\s+(?:[\w-]+\s+)?{OUT_NOUN}(?:['’]s)?\b"),
                    0.3,
                ),
                pat(
                    &format!(
                        r"\byour\s+(?:final\s+)?{OUT_NOUN}\s+(?:should|must|needs?\s+to|has\s+to|shall|will\s+need\s+to)\s+(?:also\s+)?(?:include|contain|start|begin|end|mention|be\s+written|use|promote|recommend)\b"
                    ),
                    0.45,
                ),
            ],
        ),
        // 8
        rule(
            "injection.code_directive",
            &[
                "code snippet",
                "code block",
                "code excerpt",
                "code section",
                "code segment",
                "code fragment",
                "following code",
                "subsequent code",
                "below code",
                "code below",
                "your code",
                "your solution",
                "your implementation",
                "your codebase",
                "your algorithm",
                "your program",
                "your script",
            ],
            Regex,
            vec![
                pat(
                    r"\b(?:following|subsequent|below|above|next|this|these|provided|given|attached)\s+(?:python\s+|js\s+|javascript\s+|bash\s+|shell\s+)?code(?:\s+(?:snippet|block|excerpt|section|segment|fragment|sample|piece|lines?|part|chunk))?\b[^\n]{0,120}?\byour\s+(?:[\w-]+\s+){0,2}?(?:code|codebase|code\s+base|solution|implementation|algorithm|program|script|response|answer|elucidation|project|application|app|framework|function|module|logic|software|system|work|architecture)\b",
                    0.45,
                ),
                pat(
                    r"\byour\s+(?:[\w-]+\s+)?(?:code|codebase|solution|implementation|algorithm|program|script)\b[^\n]{0,100}?\b(?:following|subsequent|below)\s+code\b",
                    0.45,
                ),
                pat(
                    r"(?:^|[.!?:\n]\s*)(?:[\w'’]+\s+){0,6}?(?:the\s+)?(?:following|subsequent|below)\s+code\s+(?:snippet|block|excerpt|section|segment|fragment)\s*:",
                    0.3,
                ),
            ],
        ),
        // 9
        rule(
            "injection.code_payload",
            &[
                "requests.",
                "urllib",
                "urlopen",
                "subprocess",
                "os.system",
                "os.popen",
                "exec(",
                "eval(",
                "environ",
                "getenv",
                "cookie",
                "psutil",
                "socket",
                "smtplib",
                "sendmail",
                "yagmail",
                "ftplib",
                "paramiko",
                "wget",
                "curl ",
                "rm -rf",
                "/dev/sd",
                "systemctl",
                "nohup",
                "chmod +x",
                "miner",
                "xmrig",
                "os.remove",
                "rmtree",
                "http.client",
                "httpx",
                "invoke-webrequest",
                "downloadstring",
                "child_process",
                "mkfs",
                "/etc/passwd",
                "id_rsa",
                "keylog",
            ],
            CodePayload,
            vec![],
        ),
        // 10
        rule(
            "injection.exfil_markdown",
            &["![", "](http", "={", "=<", "=$", "=[", "=%7b"],
            Markdown,
            vec![],
        ),
        // 11
        rule(
            "injection.exfil_send",
            &["@", "http", "www."],
            Regex,
            vec![
                pat_need(
                    r"\b(?:send|forward|email|e-mail|mail|post|upload|transfer|wire|share|leak|transmit|deliver|bcc|cc|submit|exfiltrate|report|concatenate)\b[^\n]{0,150}?\b(?:to|at|into|on)\s*:?\s+(?:[\w'’-]+[\s,:]+){0,4}?(?:[\w.+-]+@[\w-]+\.[\w.]+|https?://\S+|www\.\S+)",
                    0.55,
                    r"\b(?:passwords?|passport|credit\s+card|card\s+numbers?|ssn|social\s+security|api[\s_-]?keys?|tokens?|secrets?|credentials?|all\s+(?:the\s+|my\s+|of\s+the\s+)?(?:messages|emails|files|data|contacts|conversations|documents)|messages\s+from\s+all|conversation|chat\s+history|bank\s+account|account\s+numbers?|personal\s+(?:data|information|details)|user\s+information|user_name|private\s+keys?|security\s+code)\b",
                ),
                pat(
                    r"\b(?:send|forward|email|e-mail|transfer|upload|leak|transmit|exfiltrate|concatenate)\b[^\n]{0,150}?\b(?:to|at|into)\s*:?\s+(?:[\w'’-]+[\s,:]+){0,4}?(?:[\w.+-]+@[\w-]+\.[\w.]+|https?://\S+|www\.\S+)",
                    0.3,
                ),
            ],
        ),
        // 12
        rule(
            "injection.exfil_url_data",
            &["url", "link", "query", "image", "webhook"],
            Regex,
            vec![pat(
                r"\b(?:include|append|add|put|insert|embed|encode|place|attach|pass|concatenate|send)\b[^.\n]{0,80}?\b(?:conversation|chat|history|password|passwords|api[\s_-]?keys?|secret|tokens?|credentials?|system\s+prompt|personal\s+(?:data|information)|user(?:['’]s)?\s+(?:data|information|details|messages)|e-?mail\s+address|previous\s+messages|private)\b[^.\n]{0,60}?\b(?:in|into|to|as|inside)\s+(?:the\s+|a\s+|this\s+|that\s+)?(?:url|link|query(?:\s+string|\s+parameter)?|image(?:\s+url|\s+link)?|request|parameter|webhook|address\s+bar|src)\b",
                0.8,
            )],
        ),
        // 13
        rule(
            "injection.tool_directive",
            &["tool", "function", "command", "execute", "invoke", "_"],
            Regex,
            vec![
                pat(
                    r"\b(?:call|invoke|use|run|execute|trigger|activate)\s+(?:the\s+)?[`'\x22]?(?:[a-z][a-z0-9]*_[a-z0-9_]+)[`'\x22]?(?:\s*\(\))?\s+(?:tool|function|api|endpoint|method|command|action)\b[^\n]{0,80}?\b(?:with|to|and|passing|using|on|for)\b",
                    0.45,
                ),
                pat(
                    r"\b(?:call|invoke|use|run|execute|trigger)\s+(?:the\s+)?[`'\x22]?[\w.-]+[`'\x22]?\s+(?:tool|function)\s+(?:with|passing|using)\s+(?:the\s+)?(?:arguments?|parameters?|params|inputs?)\b",
                    0.45,
                ),
                pat(
                    r"\b(?:execute|run)\s+(?:the\s+)?(?:following|this|below|next)\s+(?:shell\s+|bash\s+|terminal\s+|system\s+|powershell\s+)?(?:commands?|code|script|payload)\b",
                    0.4,
                ),
            ],
        ),
        // 14
        rule("injection.todo_directive", &["todo"], Todo, vec![]),
        // 15
        rule(
            "injection.as_ai",
            &[
                "as an ai",
                "as a language model",
                "as an llm",
                "as an assistant",
                "as a large language",
                "as an artificial",
            ],
            Regex,
            vec![pat(
                r"\bas\s+an?\s+(?:ai|a\.i\.|artificial\s+intelligence|language\s+model|large\s+language\s+model|llm|ai\s+assistant|ai\s+language\s+model|assistant|chatbot)\b[^.!?\n]{0,40}?\byou\s+(?:must|should|need\s+to|have\s+to|are\s+(?:required|obligated|supposed|expected)\s+to|will|shall|cannot|can['’]?t|are\s+not\s+allowed)\b",
                0.55,
            )],
        ),
        // 16
        rule(
            "injection.conceal",
            &[
                "tell",
                "inform",
                "mention",
                "notify",
                "reveal",
                "without",
                "let the user",
                "disclose",
                "from the user",
            ],
            Regex,
            vec![
                pat(
                    r"\b(?:do\s+not|don['’]?t|dont|never|without)\s+(?:\w+\s+){0,3}?(?:tell|telling|inform|informing|mention|mentioning|notify|notifying|alert|alerting|reveal|revealing|disclose|disclosing|let|letting|warn|warning|show|showing)\b[^.!?\n]{0,50}?\b(?:the\s+user|the\s+human|the\s+operator|the\s+customer|the\s+requester)\b",
                    0.6,
                ),
                pat(
                    r"\bwithout\s+(?:the\s+user(?:['’]s)?|them|the\s+human|the\s+owner|anyone)\s+(?:knowing|noticing|knowledge|seeing|being\s+aware|finding\s+out|consent)\b",
                    0.65,
                ),
                pat(
                    r"\b(?:do\s+not|don['’]?t|never)\s+(?:mention|reveal|disclose|say|admit|indicate|acknowledge)\s+(?:that\s+you|that\s+this|this\s+(?:instruction|message|note|request)|these\s+instructions|the\s+instructions|any\s+of\s+this)\b",
                    0.6,
                ),
                pat(r"\b(?:hide|conceal|keep)\b[^.!?\n]{0,40}\bfrom\s+the\s+user\b", 0.6),
                pat(
                    r"\bwithout\s+asking\s+(?:me|the\s+user|for\s+(?:confirmation|permission|approval))\b",
                    0.25,
                ),
            ],
        ),
        // 17
        rule(
            "injection.request_in_data",
            REQUEST_TRIGGERS.as_slice(),
            RequestLine,
            vec![],
        ),
        // 18
        rule("injection.request_in_data", &[], RequestFirst, vec![]),
        // 19
        rule("injection.encoded", &[], Encoded, vec![]),
        // 20
        rule(
            "injection.rot13",
            &[
                "rot13",
                "rot-13",
                "rot 13",
                "vtaber",
                "qvfertneq",
                "vafgehpgvba",
                "cerivbhf",
                "flfgrz cebzcg",
            ],
            Rot13,
            vec![],
        ),
        // 21
        rule(
            "injection.jailbreak",
            &[
                "do anything now",
                "dan mode",
                "developer mode",
                "jailbr",
                "no restrictions",
                "unrestricted",
                "unfiltered",
                "no limitations",
                "without any restrictions",
                "without restrictions",
                "no ethical",
                "no moral",
            ],
            Regex,
            vec![
                pat(r"\bdo\s+anything\s+now\b|\bdan\s+mode\b", 0.8),
                pat(
                    r"\b(?:developer|dev|god|unrestricted|jailbreak|jailbroken)\s+mode\s+(?:enabled|activated|on)\b|\benable\s+(?:developer|dev|god|jailbreak)\s+mode\b",
                    0.7,
                ),
                pat(
                    r"\byou\s+(?:are|have\s+been|will\s+be)\s+(?:now\s+)?(?:jailbroken|unrestricted|unfiltered|uncensored|freed|free\s+from\s+(?:all\s+)?(?:restrictions|rules|guidelines))\b",
                    0.7,
                ),
                pat(
                    r"\b(?:without|no|free\s+of|ignore\s+all)\s+(?:any\s+)?(?:ethical|moral|content|safety)\s+(?:guidelines|restrictions|constraints|filters|limitations|rules)\b",
                    0.35,
                ),
            ],
        ),
        // 22
        rule(
            "injection.prompt_leak",
            &[
                "system prompt",
                "initial prompt",
                "initial instructions",
                "original instructions",
                "prompt text",
                "your instructions",
                "your prompt",
                "pre-prompt",
                "preprompt",
                "hidden prompt",
                "instructions above",
                "previous instructions",
                "prompt texts",
                "written above",
                "beginning of this prompt",
                "what are your",
                "what were your",
            ],
            Regex,
            vec![
                pat(
                    r"\bwhat\s+(?:was|is)\s+written\s+(?:at\s+the\s+beginning\s+of\s+(?:this|the)\s+prompt|above)\b|\bwhat\s+(?:are|were)\s+your\s+(?:instructions|rules|initial\s+instructions|system\s+prompt)\b",
                    0.6,
                ),
                pat(
                    r"\b(?:reveal|show|print|output|repeat|display|tell\s+me|give\s+me|write\s+out|spell\s+out|list|dump|leak|share|return|recite)(?:ing|s)?\s+(?:me\s+|us\s+)?(?:all\s+|the\s+|your\s+|of\s+|full\s+|entire\s+|exact\s+|complete\s+)*(?:system\s+prompt|initial\s+(?:prompt|instructions)|original\s+(?:prompt|instructions)|hidden\s+(?:prompt|instructions)|prompt\s+texts?|instructions\s+above|previous\s+instructions|pre-?prompt|instructions|prompt|rules)\b",
                    0.7,
                ),
            ],
        ),
    ]
});

/// Line-start openers of a request (imperative tasks and questions).
const REQ_IMPERATIVE: &str = "write|compose|draft|develop|create|generate|produce|craft|explain|describe|summari[sz]e|translate|provide|give|list|outline|break down|compare|contrast|define|tell me|tell us|show me|name|suggest|recommend|calculate|compute|solve|teach me|help me|share|discuss|elaborate on|illustrate|analy[sz]e|evaluate|brainstorm|design|convert|recite|replace|substitute|rewrite|rephrase|paraphrase|identify|classify|predict|imagine|pretend|act as|respond|answer|repeat|say|print|output|introduce|combine|group|scramble|misspell|render|modify|augment|enhance|integrate|insert|add|include|remove|jumble|anagram|rearrange|offer|compile|invent|sing|spell|count|find|recount|narrate|review|critique|plan|prepare|propose|formulate|construct|demonstrate|clarify|interpret|simplify|sketch|summar";
const REQ_QUESTION: &str = "what|what's|whats|who|whom|whose|how|why|when|where|which|can you|could you|would you|will you|is there|are there|is it|do you|does|did|should i|can i|could i|is|are|do";

/// `\n` + every opener word, as triggers.
static REQUEST_TRIGGERS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut v = Vec::new();
    for w in REQ_IMPERATIVE.split('|').chain(REQ_QUESTION.split('|')) {
        let first = w.split(' ').next().unwrap_or(w);
        let first = first.replace("[sz]", "s");
        let t: &'static str = Box::leak(format!("\n{first} ").into_boxed_str());
        if !v.contains(&t) {
            v.push(t);
        }
        if w.contains("[sz]") {
            let t: &'static str = Box::leak(format!("\n{} ", w.replace("[sz]", "z")).into_boxed_str());
            v.push(t);
        }
    }
    v
});

static REQ_OPENER: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"^(?:[-*•>]\s*|\d{{1,2}}[.)]\s+)?(?:please\s+)?(?:(?P<imp>{REQ_IMPERATIVE})|(?P<q>{REQ_QUESTION}))\b"
    ))
});

/// Lines that speak to the reader (mail, marketing), point at the text
/// around them, or look like code or table cells.
static ADDRESSEE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\b(?:your|yours|our|ours|we|us|http|https|www|this|these|those|here|above)\b|\w@\w|\||\w\(|[{};`\t]|\S\s*=\s*\S*\s*$",
    )
});
/// A second sentence on the line.
static SECOND_SENTENCE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[.!?]\s+[A-Z]").expect("static regex"));

/// Runs a regex rule over the view.
pub(crate) fn run_patterns(rule: &Rule, ctx: &Ctx<'_>, emit: &mut dyn FnMut(usize, usize, f32)) {
    let v = ctx.view();
    for p in &rule.pats {
        let mut n = 0;
        for m in p.re.find_iter(v) {
            if n >= MAX_PER_RULE {
                break;
            }
            if p.glued && !word_start(v, m.start()) {
                continue;
            }
            if let Some(need) = &p.need
                && !need.is_match(m.as_str())
            {
                continue;
            }
            n += 1;
            let (a, b) = trim_span(v, m.start(), m.end());
            let score = if quoted_mention(v, m.start(), m.end()) {
                p.score.min(0.3)
            } else {
                p.score
            };
            emit(a, b, score);
        }
    }
}

/// Runs a rule's patterns over the raw text (only non-ASCII text can match).
pub(crate) fn run_raw_patterns(rule: &Rule, raw: &str, out: &mut Vec<Finding>, id: &Arc<str>) {
    if raw.is_ascii() {
        return;
    }
    for p in &rule.pats {
        for m in p.re.find_iter(raw).take(MAX_PER_RULE) {
            out.push(Finding::new(Category::PromptInjection, id, m.start(), m.end(), p.score));
        }
    }
}

/// A phrase quoted as an example ("text such as 'ignore previous
/// instructions'"): a quote right before and right after the match.
fn quoted_mention(v: &str, a: usize, b: usize) -> bool {
    const Q: &[char] = &['"', '\'', '“', '”', '‘', '’', '`', '«', '»'];
    let before = v[..a].chars().next_back().is_some_and(|c| Q.contains(&c));
    let after = v[b..].chars().take(2).any(|c| Q.contains(&c));
    before && after
}

/// Drops leading punctuation and spaces that a sentence-start prefix matched.
fn trim_span(v: &str, mut a: usize, b: usize) -> (usize, usize) {
    let bytes = v.as_bytes();
    while a < b && a < bytes.len() && (bytes[a].is_ascii_whitespace() || bytes[a].is_ascii_punctuation()) {
        a += 1;
    }
    if a >= b { (b, b) } else { (a, b) }
}

/// `s` with double-quoted passages blanked out.
fn unquoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut quoted = false;
    for c in s.chars() {
        if matches!(c, '"' | '“' | '”') {
            quoted = !quoted;
            out.push(c);
        } else if quoted {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

/// True when `s` holds no sentence end (`.`, `!`, `?` followed by a space)
/// outside quotes.
fn one_sentence(s: &str) -> bool {
    let mut quoted = false;
    let mut prev_end = false;
    for c in s.chars() {
        match c {
            '"' | '“' | '”' => quoted = !quoted,
            _ => {}
        }
        if prev_end && c.is_whitespace() && !quoted {
            return false;
        }
        prev_end = matches!(c, '.' | '!' | '?');
    }
    true
}

static YOUR_OUT: LazyLock<Regex> = LazyLock::new(|| re(&format!(r"\byour\s+(?:[\w-]+\s+)?{OUT_NOUN}")));
static YOUR_ANY: LazyLock<Regex> = LazyLock::new(|| re(r"\byour\b"));
static HUMAN_REPLY: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\b(?:when|if|before|after)\s+you\s+(?:reply|respond|answer|write\s+back)\b|\b(?:reply|respond)\s+to\s+(?:this|the)\s+(?:e-?mail|message|letter)\b|\bthank\w*\b|\bsend\s+your\b|\bsubmit\b",
    )
});

/// Imperatives aimed at the model's answer, with a check that the verb and
/// "your response" are in one sentence and that the object is not the
/// reader's own data ("include your order number in your reply").
pub(crate) fn output_directive(rule: &Rule, ctx: &Ctx<'_>, emit: &mut dyn FnMut(usize, usize, f32)) {
    let v = ctx.view();
    let mut emitted = 0;
    // "<verb> … your response": found from each "your <output>" and checked
    // in a window before it, so the costly patterns read short slices only.
    for y in YOUR_OUT.find_iter(v).take(64) {
        if emitted >= MAX_PER_RULE {
            break;
        }
        let mut ws = y.end().saturating_sub(240);
        while !v.is_char_boundary(ws) {
            ws += 1;
        }
        let win = &v[ws..y.end()];
        let mut best: Option<(usize, usize, f32)> = None;
        for (i, p) in rule.pats.iter().enumerate().filter(|(i, _)| *i == 0 || *i == 2) {
            for m in p.re.find_iter(win) {
                if m.end() != win.len() {
                    continue;
                }
                if i == 0 && m.start() == 0 && ws > 0 {
                    continue;
                }
                let (a, b) = trim_span(win, m.start(), m.end());
                let text = &win[a..b];
                let gap = unquoted(&text[..y.start() - ws - a.min(y.start() - ws)]);
                if !one_sentence(&gap) {
                    continue;
                }
                let mut score = p.score;
                if YOUR_ANY.is_match(&gap) && !gap.trim_start().to_ascii_lowercase().starts_with("your") {
                    score = score.min(0.3);
                }
                if HUMAN_REPLY.is_match(text) {
                    score = score.min(0.2);
                }
                let lower = text.to_ascii_lowercase();
                if i == 0 && lower.contains("message") && !lower.contains("response") {
                    score = score.min(0.6);
                }
                if best.is_none_or(|(_, _, s)| score > s) {
                    best = Some((ws + a, ws + b, score));
                }
                break;
            }
        }
        if let Some((a, b, score)) = best {
            emit(a, b, score);
            emitted += 1;
        }
    }
    // "In your response, <verb> …" at a sentence start; "your response
    // must include …".
    for (i, p) in rule.pats.iter().enumerate().filter(|(i, _)| *i == 1 || *i == 3) {
        for m in p.re.find_iter(v).take(MAX_PER_RULE) {
            if i == 1 && !sentence_start(v, m.start()) {
                continue;
            }
            emit(m.start(), m.end(), p.score);
        }
    }
}

/// Whether offset `a` of `v` begins a sentence.
fn sentence_start(v: &str, a: usize) -> bool {
    let before = &v[..a];
    let trimmed = before.trim_end_matches([' ', '\t']);
    if before.len() - trimmed.len() >= 2 {
        return true;
    }
    match trimmed.chars().next_back() {
        None => true,
        Some(c) => matches!(
            c,
            '.' | '!' | '?' | ':' | ';' | '|' | '>' | '\n' | '*' | '•' | '"' | '“' | '(' | ']' | '-'
        ),
    }
}

static CP_DOWNLOAD: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"requests\.get|urlretrieve|urlopen|\bwget\b|\bcurl\b|urllib3|httpx\.get|session\.get|invoke-webrequest|\biwr\b|downloadstring|downloadfile|http\.request\(\s*[\x22']get",
    )
});
static CP_EXEC: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\bexec\s*\(|\beval\s*\(|os\.system|os\.popen|subprocess\.|\bpopen\s*\(|\bnohup\b|chmod\s+\+x|\|\s*(?:ba|z)?sh\b|\biex\b|invoke-expression|start-process|getruntime\(\)\.exec|child_process",
    )
});
static CP_SEND: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"requests\.(?:post|put)|\.sendall\s*\(|\.sendto\s*\(|\.send\s*\(|storbinary|smtplib|\.sendmail\s*\(|yagmail|publish\.single|httpconnection|\.connect\s*\(\s*\(|scpclient|ftplib|\bftp\s*\(|curl\s+-[fdt]\b|file=@|\bmqtt\b|webhook",
    )
});
static CP_SENSITIVE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"os\.environ|getenv|\bcookies?\b|cookiejar|psutil|virtual_memory|disk_partitions|net_if_addrs|query_devices|usb\.core|driverquery|contacts|/etc/passwd|/etc/shadow|id_rsa|\.ssh/|keychain|\btrash\b|wallet|browser_cookie|login\s+data|keylog|pynput|clipboard|imagegrab",
    )
});
static CP_DESTRUCT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"rm\s+-rf\s+/|\bdd\s+if=\S+\s+of=/dev/|of=/dev/sd|systemctl\s+(?:stop|disable)|os\.remove\(\s*[\x22']/(?:lib|usr|etc|bin|boot|sys)|shutil\.rmtree\(\s*[\x22']/|rc\.local|\bmkfs\b|:\(\)\s*\{|format\s+c:|/etc/init\.d",
    )
});
static CP_MINER: LazyLock<Regex> =
    LazyLock::new(|| re(r"crypto-?min|\bminer\b|xmrig|cryptonight|stratum\+tcp|coinhive"));

/// What injected code does: downloads and runs, reads secrets and sends
/// them, destroys, mines, relays. Weak alone (normal code does some of
/// this); strong with a directive to add the code to "your code".
pub(crate) fn code_payload(ctx: &Ctx<'_>, emit: &mut dyn FnMut(usize, usize, f32)) {
    let v = ctx.view();
    let first = |r: &Regex| r.find(v).map(|m| (m.start(), m.end()));
    let down = first(&CP_DOWNLOAD);
    let exec = first(&CP_EXEC);
    let send = first(&CP_SEND);
    let sens = first(&CP_SENSITIVE);
    let mut hits: Vec<((usize, usize), (usize, usize))> = Vec::new();
    if let (Some(a), Some(b)) = (down, exec) {
        hits.push((a, b));
    }
    if let (Some(a), Some(b)) = (sens, send.or(down)) {
        hits.push((a, b));
    }
    if let (Some(a), Some(b)) = (down, send) {
        hits.push((a, b));
    }
    if let Some(a) = first(&CP_DESTRUCT) {
        hits.push((a, a));
    }
    if let Some(a) = first(&CP_MINER) {
        hits.push((a, a));
    }
    if let Some((x, y)) = hits.first() {
        let a = x.0.min(y.0);
        let b = x.1.max(y.1);
        emit(a, b.min(a + 4096), 0.45);
    }
}

static MD_IMAGE: LazyLock<Regex> = LazyLock::new(|| re(r"!\[[^\]\n]*\]\(\s*<?(https?://[^)\s>]+)"));
static MD_LINK: LazyLock<Regex> = LazyLock::new(|| re(r"\[[^\]\n]*\]\(\s*<?(https?://[^)\s>]+)"));
static URL: LazyLock<Regex> = LazyLock::new(|| re(r"https?://[^\s)\x22'<>]+"));
static URL_TEMPLATE: LazyLock<Regex> = LazyLock::new(|| re(r"[?&][\w.-]{1,32}=(?:\{|<|\$\{?|\[|%7b)"));

fn url_carries_data(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if lower.contains('{') || lower.contains("%7b") || lower.contains('$') || lower.contains('<') || lower.contains('[')
    {
        return true;
    }
    let Some(q) = url.split_once('?').map(|(_, q)| q) else {
        // Data in the path: a long opaque segment.
        return url.split('/').skip(3).any(|seg| seg.len() >= 40);
    };
    q.split('&')
        .any(|kv| kv.split_once('=').is_some_and(|(_, v)| v.len() >= 24))
}

/// Markdown images (fetched when rendered) and links whose URL carries data,
/// and URLs with placeholders for data.
pub(crate) fn markdown_exfil(ctx: &Ctx<'_>, emit: &mut dyn FnMut(usize, usize, f32)) {
    let v = ctx.view();
    for c in MD_IMAGE.captures_iter(v).take(MAX_PER_RULE) {
        let (Some(m), Some(u)) = (c.get(0), c.get(1)) else {
            continue;
        };
        let url = u.as_str();
        let score = if url_carries_data(url) {
            0.85
        } else if url.contains('?') {
            0.45
        } else {
            continue;
        };
        emit(m.start(), m.end(), score);
    }
    for c in MD_LINK.captures_iter(v).take(MAX_PER_RULE) {
        let (Some(m), Some(u)) = (c.get(0), c.get(1)) else {
            continue;
        };
        if m.start() > 0 && v.as_bytes()[m.start() - 1] == b'!' {
            continue;
        }
        let url = u.as_str();
        let lower = url.to_ascii_lowercase();
        if lower.contains('{') || lower.contains("%7b") || lower.contains('$') || lower.contains('<') {
            emit(m.start(), m.end(), 0.6);
        }
    }
    let mut n = 0;
    for m in URL.find_iter(v) {
        if n >= MAX_PER_RULE {
            break;
        }
        if URL_TEMPLATE.is_match(m.as_str()) {
            emit(m.start(), m.end(), 0.35);
            n += 1;
        }
    }
}

static TODO: LazyLock<Regex> = LazyLock::new(|| re(r"todo\s*:\s*(?:please\s+)?([a-z]+)\b"));
static AGENT_VERB: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^(?:send|transfer|change|modify|update|delete|remove|invite|add|create|make|book|reserve|visit|go|open|click|get|fetch|read|post|share|forward|email|e-mail|call|pay|tell|say|concatenate|summari[sz]e|write|download|upload|run|execute|install|grant|give|set|reset|cancel|buy|order|schedule|please|publish|reply|respond|invoke|use|find|retrieve|collect|list|print|include|insert|append|copy|move|rename|follow|navigate|browse|sign|log|subscribe|unsubscribe|approve|accept|disable|enable|export|leak|reveal|show|display)$",
    )
});

/// "TODO: <imperative>" outside a code comment: a task left for whoever
/// reads the text, which in a tool result is the agent.
pub(crate) fn todo_directive(ctx: &Ctx<'_>, emit: &mut dyn FnMut(usize, usize, f32)) {
    let v = ctx.view();
    for c in TODO.captures_iter(v).take(MAX_PER_RULE) {
        let (Some(m), Some(verb)) = (c.get(0), c.get(1)) else {
            continue;
        };
        if !AGENT_VERB.is_match(verb.as_str()) {
            continue;
        }
        let a = m.start();
        let glued_ok = a == 0
            || !v.as_bytes()[a - 1].is_ascii_alphanumeric()
            || v.as_bytes()[a - 1] == b'_'
            || v.get(a..a + 4) == Some("TODO");
        if !glued_ok {
            continue;
        }
        let line_start = v[..m.start()].rfind('\n').map_or(0, |i| i + 1);
        let prefix = v[line_start..m.start()].trim_start();
        let comment = prefix.contains("//")
            || prefix.contains('#')
            || prefix.contains("/*")
            || prefix.contains("--")
            || prefix.contains("<!--")
            || prefix.starts_with('*')
            || prefix.starts_with(';')
            || prefix.starts_with('%');
        if comment {
            continue;
        }
        let end = v[m.end()..].find(['\n', '.']).map_or(v.len(), |i| m.end() + i);
        emit(m.start(), end.min(m.end() + 400), 0.5);
    }
}

static TURN: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?:^|\n)[ \t>*-]*(?:\*\*)?(assistant|ai|gpt|chatgpt|claude|bot|user|human)(?:\*\*)?\s*:"));

/// Fake conversation turns ("User: … Assistant: …") inside data.
pub(crate) fn fake_turn(ctx: &Ctx<'_>, emit: &mut dyn FnMut(usize, usize, f32)) {
    let v = ctx.view();
    let mut user = None;
    let mut model = None;
    for c in TURN.captures_iter(v).take(64) {
        let (Some(m), Some(who)) = (c.get(0), c.get(1)) else {
            continue;
        };
        let span = (m.start(), m.end());
        if matches!(who.as_str().to_ascii_lowercase().as_str(), "user" | "human") {
            user.get_or_insert(span);
        } else {
            model.get_or_insert(span);
        }
    }
    match (user, model) {
        (Some(u), Some(a)) => emit(u.0.min(a.0), u.1.max(a.1), 0.45),
        (None, Some(a)) => emit(a.0, a.1, 0.25),
        _ => {}
    }
}

/// A request line: an imperative task or a question standing alone.
fn request_line(line: &str) -> bool {
    let t = line.trim();
    let n = t.chars().count();
    if !(12..=300).contains(&n) || t.split_whitespace().count() < 3 {
        return false;
    }
    let Some(c) = REQ_OPENER.captures(t) else {
        return false;
    };
    if ADDRESSEE.is_match(t) || line.starts_with("    ") || SECOND_SENTENCE.is_match(&unquoted(t)) {
        return false;
    }
    let last = t.chars().last().unwrap_or(' ');
    if c.name("q").is_some() {
        last == '?' && t.split_whitespace().count() >= 4
    } else {
        matches!(last, '.' | '?' | '!' | '"' | '\'' | ')' | '”' | '’' | ':')
    }
}

/// Standalone request lines in a document that is otherwise data: a task or
/// a question inserted into an e-mail, a table, a page. Frequent question
/// lines (a FAQ, a list of prompts) weigh little; a text that is only the
/// request (a user prompt) is not judged here. Spans are raw offsets.
pub(crate) fn request_lines(raw: &str, first_only: bool, emit: &mut dyn FnMut(usize, usize, f32)) {
    let first_end = raw.find('\n').unwrap_or(raw.len());
    if first_only && (first_end > 400 || first_end == raw.len() || !request_line(&raw[..first_end])) {
        return;
    }
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut count = 0usize;
    let mut other_lines = 0usize;
    let mut other_bytes = 0usize;
    let mut start = 0;
    for line in raw.split('\n') {
        let a = start;
        start += line.len() + 1;
        if line.trim().is_empty() {
            continue;
        }
        if request_line(line) {
            count += 1;
            let is_first = a == 0;
            if found.len() < MAX_PER_RULE && (is_first == first_only) {
                let lead = line.len() - line.trim_start().len();
                found.push((a + lead, a + line.trim_end().len()));
            }
        } else {
            other_lines += 1;
            other_bytes += line.len();
        }
    }
    if found.is_empty() || other_lines == 0 || other_bytes < 150 {
        return;
    }
    let score = if count > 3 { 0.2 } else { 0.5 };
    for (a, b) in found {
        emit(a, b, score);
    }
}

static PROMPT_OPENER: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"^\s*(?:(?:hi|hello|hey|dear)\b[^.,!\n]{0,40}[,.!:]\s*)?(?:please\s+|okay[,.]?\s+|ok[,.]?\s+|now[,.]?\s+)?(?:you\s+are|you['’]re|imagine|as\s+an?\b|in\s+the\s+(?:role|position|context|capacity)|can\s+you|could\s+you|would\s+you|will\s+you|i\s+(?:want|need|would\s+like)\s+you|i\s+(?:want|need|would\s+like)\s+to|i['’]?m\s+(?:an?|working|writing\s+an?|conducting|looking\s+for|currently|doing|trying)\b|i\s+am\s+(?:an?|working|writing\s+an?|conducting|looking\s+for|currently|doing|trying)\b|let['’]?s|suppose|pretend|act\s+as|write|create|generate|compose|describe|explain|provide|help\s+me|from\s+the\s+perspective|try\s+to|in\s+(?:a|an|the|this)\s+(?:world|fictional|alternate|hypothetical|universe|year|future|parallel|dystopian|fantasy)|consider|assume|picture|envision|take\s+on|play\s+the\s+role|roleplay|role-play|for\s+(?:a|an|my)\s+(?:story|novel|research|project|article|screenplay|game|class))\b",
    )
});

/// Whether a text opens as a request to the model (a user prompt rather than
/// data): its first words set a role, ask, or task the model.
pub(crate) fn prompt_like(raw: &str) -> bool {
    let mut end = raw.len().min(300);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    PROMPT_OPENER.is_match(&raw[..end])
}

/// Byte offset where the first sentence or line of `raw` ends.
pub(crate) fn first_sentence_end(raw: &str) -> usize {
    let b = raw.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'\n' => return i,
            b'.' | b'!' | b'?' if b.get(i + 1).is_none_or(|c| c.is_ascii_whitespace()) => return i + 1,
            _ => {}
        }
    }
    b.len()
}
