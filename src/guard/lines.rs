//! Classification of GuardReasoner's output lines: task, step and conclusion headings, the
//! separator, the answers heading and answer lines, and text. Reference: ARCHITECTURE.md §3
//! (output shape); the shapes seen in the real 1B outputs are listed on `ReasoningParser`.
//!
//! Two views of a line must agree: `classify_prefix` decides early from the start of a line
//! (only ever answering Step or Text when the complete line is certain to be the same), and
//! `classify_line` decides once the line is complete. Both use `match_step_heading`.

use std::sync::OnceLock;

use regex::Regex;

use super::task::Task;

/// At most this many digits in a step number (`## Reasoning Step 1234567` is text, not a step),
/// so a step number always fits a u32.
const MAX_STEP_DIGITS: usize = 6;

/// Markdown allows heading levels 1 to 6.
const MAX_HEADING_LEVEL: usize = 6;

/// A complete line, classified.
#[derive(Debug, PartialEq)]
pub enum LineClass<'a> {
    Blank,
    Text,
    TaskHeading(Task),
    /// A conclusion heading; `task` None means "the current task".
    Conclusion {
        task: Option<Task>,
        text: &'a str,
    },
    /// A step heading; its text on the same line starts at byte `body_start`.
    Step {
        number: u32,
        body_start: usize,
    },
    Separator,
    AnswersHeading,
    /// An answer line: `kind` is the task it answers, `value` the recognised value, if any.
    Verdict {
        kind: Task,
        value: Option<&'static str>,
    },
}

/// What the start of a line allows us to say before it is complete.
#[derive(Debug, PartialEq)]
pub(super) enum PrefixClass {
    Undecided,
    WholeLine,
    Step { number: u32, body_start: usize },
    Text,
}

/// How a literal keyword compares with the text at a position.
enum Literal {
    /// The keyword is there; the position after it.
    Matched(usize),
    /// The text ends inside what could still be the keyword.
    Partial,
    Mismatch,
}

fn match_literal(bytes: &[u8], at: usize, keyword: &str) -> Literal {
    let keyword = keyword.as_bytes();
    let available = bytes.len().saturating_sub(at);
    let compared = available.min(keyword.len());
    if !bytes[at..at + compared].eq_ignore_ascii_case(&keyword[..compared]) {
        return Literal::Mismatch;
    }
    if compared < keyword.len() { Literal::Partial } else { Literal::Matched(at + keyword.len()) }
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && bytes[at].is_ascii_whitespace() {
        at += 1;
    }
    at
}

enum StepMatch {
    Step { number: u32, body_start: usize },
    Partial,
    No,
}

/// `#{1,6} [Reasoning] Step N[:] body`, case-insensitive. With `complete` false the line may
/// continue, so an answer is given only when more characters cannot change it.
fn match_step_heading(line: &str, complete: bool) -> StepMatch {
    let bytes = line.as_bytes();
    let partial = if complete { StepMatch::No } else { StepMatch::Partial };
    let mut at = skip_whitespace(bytes, 0);
    let hashes = bytes[at..].iter().take_while(|&&b| b == b'#').count();
    if hashes == 0 {
        return if at == bytes.len() { partial } else { StepMatch::No };
    }
    if hashes > MAX_HEADING_LEVEL {
        return StepMatch::No;
    }
    at = skip_whitespace(bytes, at + hashes);
    if at == bytes.len() {
        return partial;
    }
    match match_literal(bytes, at, "reasoning") {
        Literal::Matched(next) => at = skip_whitespace(bytes, next),
        Literal::Partial => return partial,
        Literal::Mismatch => {}
    }
    match match_literal(bytes, at, "step") {
        Literal::Matched(next) => at = skip_whitespace(bytes, next),
        Literal::Partial => return partial,
        Literal::Mismatch => return StepMatch::No,
    }
    let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return if at == bytes.len() { partial } else { StepMatch::No };
    }
    if digits > MAX_STEP_DIGITS {
        return StepMatch::No;
    }
    let Ok(number) = line[at..at + digits].parse::<u32>() else {
        return StepMatch::No;
    };
    at += digits;
    if at == bytes.len() {
        // More digits may follow.
        return if complete { StepMatch::Step { number, body_start: at } } else { partial };
    }
    // The number is complete; the body starts after optional spaces and one optional colon.
    at = skip_whitespace(bytes, at);
    if at < bytes.len() && bytes[at] == b':' {
        at = skip_whitespace(bytes, at + 1);
    }
    if at == bytes.len() && !complete {
        return partial; // a colon or the first body character may still come
    }
    StepMatch::Step { number, body_start: at }
}

/// Words that can start a non-`#` line that is not text: the answers heading and answer lines.
const PLAIN_LINE_KEYWORDS: [&str; 5] = ["answers", "answer", "request", "completion", "response"];

pub(super) fn classify_prefix(line: &str) -> PrefixClass {
    let trimmed = line.trim_start();
    if trimmed.is_empty() {
        return PrefixClass::Undecided;
    }
    if trimmed.starts_with('#') {
        return match match_step_heading(line, false) {
            StepMatch::Step { number, body_start } => PrefixClass::Step { number, body_start },
            StepMatch::Partial => PrefixClass::Undecided,
            // Task, conclusion and answers headings need the whole line; so do odd `#` lines.
            StepMatch::No => PrefixClass::WholeLine,
        };
    }
    if trimmed.starts_with('-') {
        // Only a line of dashes is a separator.
        let only_dashes = trimmed.chars().all(|c| c == '-' || c.is_whitespace());
        return if only_dashes { PrefixClass::Undecided } else { PrefixClass::Text };
    }
    let bytes = trimmed.as_bytes();
    for keyword in PLAIN_LINE_KEYWORDS {
        match match_literal(bytes, 0, keyword) {
            Literal::Partial => return PrefixClass::Undecided,
            Literal::Matched(next) => {
                // Unicode whitespace here, as `\s` in the answer-line patterns.
                let after = trimmed[next..].trim_start();
                if after.is_empty() {
                    return PrefixClass::Undecided;
                }
                if after.starts_with(':') {
                    return PrefixClass::WholeLine;
                }
            }
            Literal::Mismatch => {}
        }
    }
    PrefixClass::Text
}

struct LinePatterns {
    task: Regex,
    conclusion: Regex,
    separator: Regex,
    answers: Regex,
    verdict: Regex,
}

fn line_patterns() -> &'static LinePatterns {
    static PATTERNS: OnceLock<LinePatterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let compile = |pattern: &str| Regex::new(pattern).expect("constant pattern compiles");
        LinePatterns {
            // `# Task 2`, `# Task 2: title`, `# Task 2 Conclusion[: text]`, `# Task 1: harmful`
            task: compile(r"(?i)^\s*#{1,6}\s*task\s*(\d{1,6})\b\s*(conclusion\b)?\s*:?\s*(.*?)\s*$"),
            // `## Conclusion[: text]`, `# Conclusion for Task 3[: text]`
            // (`# Conclusion for the request: text` drops its short qualifier too)
            conclusion: compile(
                r"(?i)^\s*#{1,6}\s*conclusion\b(?:\s+for\s+(?:task\s*(\d{1,6})\b|[^:]{1,40}:))?\s*:?\s*(.*?)\s*$",
            ),
            separator: compile(r"^\s*-{3,}\s*$"),
            answers: compile(r"(?i)^\s*(?:#{1,6}\s*)?answers?\s*:?\s*$"),
            verdict: compile(r"(?i)^\s*(?:#{1,6}\s*)?(request|completion|response)\s*:\s*(.*?)\s*$"),
        }
    })
}

/// Reads an answer value the way the paper's scorer does: by its first word, case-insensitively,
/// and by prefix (`harmful.` and `**harmful**` are harmful).
fn recognise_value(task: Task, value: &str) -> Option<&'static str> {
    let word = value
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    task.answer_values().into_iter().find(|known| word.starts_with(known))
}

/// Classifies a complete line (without its newline).
pub fn classify_line(line: &str) -> LineClass<'_> {
    if line.trim().is_empty() {
        return LineClass::Blank;
    }
    let patterns = line_patterns();
    if line.trim_start().starts_with('#') {
        if let Some(captures) = patterns.task.captures(line) {
            let Some(task) = captures.get(1).and_then(|n| n.as_str().parse().ok()).and_then(Task::from_number) else {
                return LineClass::Text; // `# Task 29`: runaway text
            };
            let text = captures.get(3).map_or("", |m| m.as_str());
            let is_conclusion = captures.get(2).is_some();
            // `# Task 1: harmful` concludes; `# Task 1: Determine whether ...` is a title.
            let text_is_verdict = text.split_whitespace().count() == 1
                && (Task::ALL.into_iter().any(|kind| recognise_value(kind, text).is_some())
                    || text.trim_end_matches('.').eq_ignore_ascii_case("none"));
            if is_conclusion || text_is_verdict {
                return LineClass::Conclusion { task: Some(task), text };
            }
            return LineClass::TaskHeading(task);
        }
        if let Some(captures) = patterns.conclusion.captures(line) {
            let task = captures.get(1).and_then(|n| n.as_str().parse().ok()).and_then(Task::from_number);
            let text = captures.get(2).map_or("", |m| m.as_str());
            return LineClass::Conclusion { task, text };
        }
    }
    if patterns.separator.is_match(line) {
        return LineClass::Separator;
    }
    if patterns.answers.is_match(line) {
        return LineClass::AnswersHeading;
    }
    if let Some(captures) = patterns.verdict.captures(line) {
        let keyword = captures.get(1).map_or("", |m| m.as_str());
        let value = captures.get(2).map_or("", |m| m.as_str());
        if let Some(kind) = Task::ALL.into_iter().find(|k| k.answer_keyword().eq_ignore_ascii_case(keyword)) {
            let recognised = recognise_value(kind, value);
            // One word (`None`, `non-compliance`) is an answer line even when unrecognised;
            // a sentence is an answer line only if it starts with a recognised value.
            if recognised.is_some() || value.split_whitespace().count() <= 1 {
                return LineClass::Verdict { kind, value: recognised };
            }
        }
    }
    if let StepMatch::Step { number, body_start } = match_step_heading(line, true) {
        return LineClass::Step { number, body_start };
    }
    LineClass::Text
}
