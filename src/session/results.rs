//! What a run asks (`RunOptions`, `ClassifyItem`) and what it returns (`Generated`,
//! `Classification`, their `Stop` and `Timings`), as every front door reports them.

use crate::generate::StopReason;
use crate::guard::{GuardEvent, Scores, TaskReasoning, Thresholds};
use serde::Serialize;

/// New tokens a classification may write unless told otherwise: the paper's cap (the model's
/// answers run to about 250). The JS API's `DEFAULTS.maxNewTokens` is checked against it.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 2048;

/// How a classification answers, by the JS API's word: `reasoning` (the model's reasoning, then
/// its verdicts) or `verdict-first` (the verdicts at once, `RunOptions::verdict_first`).
pub const MODES: [&str; 2] = ["reasoning", "verdict-first"];

/// Whether a mode word (`MODES`) asks for verdict-first.
pub fn verdict_first_mode(word: &str) -> Result<bool, String> {
    match MODES.iter().position(|&m| m == word) {
        Some(i) => Ok(i == 1),
        None => Err(format!("mode {word:?} is not one of {}", MODES.join(", "))),
    }
}

/// What a run asks beyond its prompt.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub max_new_tokens: usize,
    /// Generate `max_new_tokens` whatever the model says (speed tests, goldens).
    pub ignore_eos: bool,
    /// Keep the logits that predict the first new token (`generate --logits-out`, tests).
    pub keep_first_logits: bool,
    /// Classifications: read each verdict's score (`guard::scores`). On by default; off only to
    /// measure what scores cost.
    pub scores: bool,
    /// Classifications: turn scores into verdicts (`Thresholds::apply`); none by default, which
    /// keeps the model's own verdicts.
    pub thresholds: Thresholds,
    /// Classifications: verdict-first mode. The answer section's opening (`ANSWER_HEADER`) is
    /// put after the prompt, so the model writes its three verdicts at once, without reasoning,
    /// in at most `VERDICT_FIRST_TOKENS` tokens.
    pub verdict_first: bool,
}

impl RunOptions {
    pub fn new(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ignore_eos: false,
            keep_first_logits: false,
            scores: true,
            thresholds: Thresholds::default(),
            verdict_first: false,
        }
    }
}

/// Why generation ended, as every front door reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    Eos,
    MaxTokens,
    ContextFull,
    /// The caller's cancel flag was raised; the output is what came before.
    Cancelled,
    /// Verdict-first mode: the last answer line (`Response: ...`) was read, so nothing more is
    /// written.
    Answered,
}

impl From<StopReason> for Stop {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Eos => Stop::Eos,
            StopReason::MaxTokens => Stop::MaxTokens,
            StopReason::ContextFull => Stop::ContextFull,
            StopReason::Cancelled => Stop::Cancelled,
        }
    }
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Eos => "eos",
            Stop::MaxTokens => "max_tokens",
            Stop::ContextFull => "context_full",
            Stop::Cancelled => "cancelled",
            Stop::Answered => "answered",
        }
    }
}

/// Timings of one run, measured in the core so every front door reports the same numbers (and
/// none counts time spent waiting in a queue).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    pub total_seconds: f64,
    /// Until the first new token: the prompt's prefill plus one argmax.
    pub time_to_first_token_seconds: Option<f64>,
    /// Prompt tokens that ran (not reused from the cache) over the time to the first token.
    pub prefill_tokens_per_second: Option<f64>,
    /// Decode speed: the tokens after the first over the time after it.
    pub tokens_per_second: Option<f64>,
    /// Classifications: until the parser read the first verdict (the prompt's prefill
    /// included); None for a run without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_verdict_seconds: Option<f64>,
}

impl Timings {
    /// `total` seconds, the first token at `first_token` seconds.
    pub(super) fn measure(total: f64, first_token: Option<f64>, ran_prompt_tokens: usize, new_tokens: usize) -> Self {
        let decode = first_token.map(|first| total - first).filter(|s| *s > 0.0 && new_tokens > 1);
        Timings {
            total_seconds: total,
            time_to_first_token_seconds: first_token,
            prefill_tokens_per_second: first_token.filter(|s| *s > 0.0).map(|s| ran_prompt_tokens as f64 / s),
            tokens_per_second: decode.map(|s| (new_tokens - 1) as f64 / s),
            time_to_verdict_seconds: None,
        }
    }

    pub(super) fn with_verdict_at(self, seconds: Option<f64>) -> Self {
        Timings { time_to_verdict_seconds: seconds, ..self }
    }
}

/// The result of `Session::generate`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub stop: Stop,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the previous run (a shared prefix).
    pub reused_tokens: usize,
    pub timings: Timings,
    #[serde(skip)]
    pub first_logits: Option<Vec<f32>>,
}

/// What `classify` streams: each text delta, then the reasoning events it completes.
#[derive(Debug, Clone, Copy)]
pub enum ClassifyEvent<'a> {
    Token(&'a str),
    Guard(&'a GuardEvent),
}

impl ClassifyEvent<'_> {
    /// The wire form shared by the CLI's `--json` lines and the browser's events:
    /// `{"type":"token","text":...}` or the guard event's own tagged form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ClassifyEvent::Token(text) => serde_json::json!({"type": "token", "text": text}),
            ClassifyEvent::Guard(event) => serde_json::to_value(event).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The result of `Session::classify`: the JS API's `ModerationResult` and the CLI's `done` event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Classification {
    /// The verdicts: the model's own, or where `RunOptions::thresholds` set one, the side of it
    /// the verdict's score is on.
    pub request: Option<String>,
    pub completion: Option<String>,
    pub response: Option<String>,
    /// The model's probability of each verdict's positive side at the token that wrote it:
    /// P(harmful) for the request and response, P(refusal) for the completion.
    pub scores: Scores,
    /// False when the output held no verdict line at all (`Request: ...` and the like): the
    /// answer was cut off, or the model wandered. Verdicts of `None` written by the model count
    /// as found.
    pub verdict_found: bool,
    /// Set when `verdict_found` is false: what happened and what to try.
    pub problem: Option<String>,
    pub tasks: Vec<TaskReasoning>,
    /// The generated text, whole.
    pub text: String,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub new_tokens: usize,
    pub stop: Stop,
    /// Verdict-first mode (`RunOptions::verdict_first`): `text` starts with `ANSWER_HEADER`,
    /// which the model was given, and holds no reasoning.
    pub verdict_first: bool,
    pub timings: Timings,
}

/// Why no verdict was found, with what to try.
pub(super) fn no_verdict_problem(stop: Stop, new_tokens: usize) -> String {
    let why = match stop {
        Stop::MaxTokens => format!(
            "the answer was cut off at the new-token limit ({new_tokens} tokens); raise it (--max-new-tokens, maxNewTokens)"
        ),
        Stop::ContextFull => {
            "the context filled up before the answer ended; raise the context size (--context, context)".to_string()
        }
        Stop::Cancelled => "the run was cancelled before the answer".to_string(),
        Stop::Eos | Stop::Answered => "the model ended its answer without a verdict line".to_string(),
    };
    format!("no verdict found: {why}")
}

/// One prompt of `Session::classify_many`: its index (events and results carry it), the whole
/// GuardReasoner prompt text, and what it asks beyond the run's options (each None: the run's).
#[derive(Debug, Clone)]
pub struct ClassifyItem {
    pub index: usize,
    pub text: String,
    pub max_new_tokens: Option<usize>,
    pub verdict_first: Option<bool>,
    pub thresholds: Option<Thresholds>,
}

impl ClassifyItem {
    /// An item that asks only what the run's options say.
    pub fn new(index: usize, text: String) -> Self {
        Self { index, text, max_new_tokens: None, verdict_first: None, thresholds: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_missing_verdict_names_the_stop_and_the_knob() {
        assert!(no_verdict_problem(Stop::MaxTokens, 48).contains("raise it (--max-new-tokens"));
        assert!(no_verdict_problem(Stop::ContextFull, 10).contains("--context"));
        assert!(no_verdict_problem(Stop::Eos, 10).contains("without a verdict line"));
    }
}
