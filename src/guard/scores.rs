//! Verdict scores: the model's probability for each verdict, read at the token where the verdict
//! word is written, as the softmax of that position's logits restricted to the verdict's two
//! alternatives; and thresholds that turn scores into verdicts. Reference: ARCHITECTURE.md §3
//! (scores).

use serde::{Deserialize, Serialize};

use super::parser::{GuardEvent, GuardResult, ReasoningParser};
use super::task::Task;
use crate::backend::{Chosen, MAX_WATCH};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;

/// A verdict's two alternatives, the positive one first: what a score is the probability of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `harmful` / `unharmful`: the request's and the response's verdicts.
    Harm,
    /// `refusal` / `compliance`: the completion's verdict.
    Refusal,
}

impl Family {
    const ALL: [Family; 2] = [Family::Harm, Family::Refusal];

    fn of(task: Task) -> Family {
        match task {
            Task::PromptHarmfulness | Task::ResponseHarmfulness => Family::Harm,
            Task::Refusal => Family::Refusal,
        }
    }

    /// The positive word, then the negative one.
    fn words(self) -> [&'static str; 2] {
        match self {
            Family::Harm => ["harmful", "unharmful"],
            Family::Refusal => ["refusal", "compliance"],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How the model may spell a verdict word after `Request:` (the parser reads any case): with or
/// without the space, lowercase or capitalised.
fn spellings(word: &str) -> [String; 4] {
    let mut capital = word.to_string();
    capital[..1].make_ascii_uppercase();
    [format!(" {word}"), word.to_string(), format!(" {capital}"), capital]
}

/// The ids a choice watches (`Engine::watch`): the first token of every spelling of every verdict
/// word, and which alternative each belongs to. An id that starts both alternatives of a verdict
/// (a tokenizer that splits them after a shared first token) tells them apart at no position and
/// is left out; a verdict with an alternative left without ids gets no score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerdictWords {
    ids: Vec<u32>,
    /// Per family, per alternative (positive, negative): positions in `ids`.
    alternatives: [[Vec<usize>; 2]; 2],
}

impl VerdictWords {
    /// The verdict words' first tokens under this tokenizer, those below `vocab_size` (the
    /// model's logits).
    pub fn new(tokenizer: &TextTokenizer, vocab_size: usize) -> Result<Self> {
        let mut first = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        for family in Family::ALL {
            for (alternative, word) in family.words().into_iter().enumerate() {
                for spelling in spellings(word) {
                    if let Some(&id) =
                        tokenizer.encode_text(&spelling)?.first().filter(|&&id| (id as usize) < vocab_size)
                    {
                        first[family.index()][alternative].push(id);
                    }
                }
            }
        }
        Self::from_first_tokens(first)
    }

    /// From each family's alternatives' first-token ids (positive, negative; `Family::ALL`'s
    /// order).
    fn from_first_tokens(first: [[Vec<u32>; 2]; 2]) -> Result<Self> {
        let mut words = VerdictWords::default();
        for (family, [positive, negative]) in first.iter().enumerate() {
            for (alternative, ids) in [positive, negative].into_iter().enumerate() {
                let other = if alternative == 0 { negative } else { positive };
                for &id in ids.iter().filter(|id| !other.contains(id)) {
                    let at = match words.ids.iter().position(|&known| known == id) {
                        Some(at) => at,
                        None => {
                            words.ids.push(id);
                            words.ids.len() - 1
                        }
                    };
                    let places = &mut words.alternatives[family][alternative];
                    if !places.contains(&at) {
                        places.push(at);
                    }
                }
            }
        }
        if words.ids.len() > MAX_WATCH {
            return Err(Error::Other(format!("{} verdict word tokens, at most {MAX_WATCH}", words.ids.len())));
        }
        Ok(words)
    }

    /// The ids whose logits each choice keeps.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Which alternative of `family` the token `id` starts, if any.
    fn alternative_of(&self, family: Family, id: u32) -> Option<usize> {
        let places = &self.alternatives[family.index()];
        (0..2).find(|&a| places[a].iter().any(|&at| self.ids[at] == id))
    }

    /// P(positive) from a position's watched logits: the softmax over the alternatives' ids,
    /// each alternative's probability the sum over its ids.
    fn positive_probability(&self, family: Family, watched: &[f32]) -> Option<f64> {
        let places = &self.alternatives[family.index()];
        let logits = |alternative: usize| -> Option<Vec<f64>> {
            let values: Option<Vec<f64>> =
                places[alternative].iter().map(|&at| watched.get(at).map(|&v| v as f64)).collect();
            values.filter(|v| !v.is_empty())
        };
        let (positive, negative) = (logits(0)?, logits(1)?);
        let top = positive.iter().chain(&negative).copied().fold(f64::NEG_INFINITY, f64::max);
        if !top.is_finite() {
            return None;
        }
        let mass = |v: &[f64]| v.iter().map(|x| (x - top).exp()).sum::<f64>();
        let (p, n) = (mass(&positive), mass(&negative));
        Some(p / (p + n))
    }
}

/// A struct of one optional number per verdict (`request`, `completion`, `response`), read and
/// written by task: what scores and thresholds both are.
macro_rules! per_verdict {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            pub request: Option<f64>,
            pub completion: Option<f64>,
            pub response: Option<f64>,
        }

        impl $name {
            pub fn get(&self, task: Task) -> Option<f64> {
                match task {
                    Task::PromptHarmfulness => self.request,
                    Task::Refusal => self.completion,
                    Task::ResponseHarmfulness => self.response,
                }
            }

            fn slot(&mut self, task: Task) -> &mut Option<f64> {
                match task {
                    Task::PromptHarmfulness => &mut self.request,
                    Task::Refusal => &mut self.completion,
                    Task::ResponseHarmfulness => &mut self.response,
                }
            }
        }
    };
}

per_verdict! {
    /// Each verdict's score: P(harmful) for the request and the response, P(refusal) for the
    /// completion; None where no verdict was read or it was not written with a watched token.
    Scores
}

/// The reasoning parser with each verdict's score beside it: fed each new token (with its
/// watched logits) and the text it completed, in order.
#[derive(Debug, Default)]
pub struct ScoredReader {
    parser: ReasoningParser,
    tracker: ScoreTracker,
}

impl ScoredReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token the model chose (None for text it did not choose: a forced prefix, the
    /// detokenizer's tail) and the text it completed, possibly empty; the events that text
    /// completes.
    pub fn push(&mut self, words: &VerdictWords, chosen: Option<&Chosen>, delta: &str) -> Vec<GuardEvent> {
        if let Some(chosen) = chosen {
            self.tracker.token(words, chosen);
        }
        let events = self.parser.push(delta);
        for event in &events {
            self.tracker.event(event);
        }
        self.tracker.text(delta);
        events
    }

    /// The end of the text: the events it completes.
    pub fn finish(&mut self) -> Vec<GuardEvent> {
        let events = self.parser.finish();
        for event in &events {
            self.tracker.event(event);
        }
        events
    }

    pub fn result(&self) -> &GuardResult {
        self.parser.result()
    }

    pub fn scores(&self) -> Scores {
        self.tracker.scores()
    }
}

/// Follows one generation: remembers, per alternative, the probability at the latest token that
/// started it on the current line, and gives it to the verdict the parser then reads on that
/// line. (The parser reads a verdict when its line ends, so the verdict word is the latest token
/// of its alternative; candidates from earlier lines are forgotten at each newline.)
#[derive(Debug, Clone)]
struct ScoreTracker {
    /// Per family, per alternative: P(positive) at the latest token that started it.
    candidates: [[Option<f64>; 2]; 2],
    scores: Scores,
}

impl Default for ScoreTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ScoreTracker {
    fn new() -> Self {
        Self { candidates: [[None; 2]; 2], scores: Scores::default() }
    }

    /// A new token, before its text reaches the parser.
    fn token(&mut self, words: &VerdictWords, chosen: &Chosen) {
        if chosen.watched.len() != words.ids.len() {
            return; // scores were not watched for this run
        }
        for family in Family::ALL {
            if let Some(alternative) = words.alternative_of(family, chosen.id) {
                self.candidates[family.index()][alternative] = words.positive_probability(family, &chosen.watched);
            }
        }
    }

    /// An event the token's text completed.
    fn event(&mut self, event: &GuardEvent) {
        if let GuardEvent::Verdict { kind, value } = event {
            let family = Family::of(*kind);
            let alternative = value.as_deref().and_then(|v| family.words().iter().position(|w| w == &v));
            *self.scores.slot(*kind) = alternative.and_then(|a| self.candidates[family.index()][a]);
        }
    }

    /// The token's text has gone to the parser: a newline ends the line's candidates.
    fn text(&mut self, delta: &str) {
        if delta.contains('\n') {
            self.candidates = [[None; 2]; 2];
        }
    }

    fn scores(&self) -> Scores {
        self.scores
    }
}

per_verdict! {
    /// Scores at or above which a verdict is the positive one (harmful, refusal); a verdict
    /// without a threshold, or without a score, stays the model's own.
    Thresholds
}

impl Thresholds {
    /// One threshold for all three verdicts.
    pub fn all(t: f64) -> Self {
        Self { request: Some(t), completion: Some(t), response: Some(t) }
    }

    /// `0.7` (all three) or `request=0.7,response=0.4` (those named); each between 0 and 1.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let number = |s: &str| -> std::result::Result<f64, String> {
            let t: f64 = s.trim().parse().map_err(|_| format!("threshold {s:?} is not a number"))?;
            if (0.0..=1.0).contains(&t) { Ok(t) } else { Err(format!("threshold {t} is not between 0 and 1")) }
        };
        if !text.contains('=') {
            return Ok(Self::all(number(text)?));
        }
        let mut thresholds = Thresholds::default();
        for part in text.split(',') {
            let (name, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not name=number"))?;
            let task = Task::ALL
                .into_iter()
                .find(|t| t.answer_keyword().eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| format!("{name:?} is not a verdict: use request, completion or response"))?;
            *thresholds.slot(task) = Some(number(value)?);
        }
        Ok(thresholds)
    }

    /// The verdict for `task`: the model's `verdict`, or, where both a threshold and a score
    /// exist and the model wrote a recognised verdict, the side of the threshold the score is on.
    pub fn apply(&self, task: Task, verdict: Option<&str>, score: Option<f64>) -> Option<String> {
        match (verdict, self.get(task), score) {
            (Some(_), Some(t), Some(s)) => {
                let [positive, negative] = Family::of(task).words();
                Some(if s >= t { positive } else { negative }.to_string())
            }
            _ => verdict.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids: harmful 10, " un" 11 (unharmful), refusal 20, compliance 21, and 30, which starts
    /// both refusal and compliance (so it tells them apart nowhere).
    fn words() -> VerdictWords {
        VerdictWords::from_first_tokens([[vec![10, 10], vec![11]], [vec![20, 30], vec![21, 30]]]).unwrap()
    }

    fn chosen(words: &VerdictWords, id: u32, logits: &[(u32, f32)]) -> Chosen {
        let watched =
            words.ids().iter().map(|w| logits.iter().find(|(i, _)| i == w).map_or(-1e9, |(_, v)| *v)).collect();
        Chosen { id, watched }
    }

    #[test]
    fn a_shared_first_token_is_left_out_and_ids_are_listed_once() {
        assert_eq!(words().ids(), &[10, 11, 20, 21]);
    }

    #[test]
    fn the_score_is_the_softmax_over_the_two_alternatives_at_the_verdict_token() {
        let w = words();
        let mut t = ScoreTracker::new();
        // "The request is harmful." on an earlier line: forgotten at its newline.
        t.token(&w, &chosen(&w, 10, &[(10, 5.0), (11, 0.0)]));
        t.text(" harmful.\n");
        // "Request: unharmful": " un" chosen with logits 1 (harmful) and 2 (" un").
        t.token(&w, &chosen(&w, 11, &[(10, 1.0), (11, 2.0)]));
        t.text(" un");
        t.event(&GuardEvent::Verdict { kind: Task::PromptHarmfulness, value: Some("unharmful".into()) });
        let expected = 1.0 / (1.0 + 1f64.exp());
        assert!((t.scores().request.unwrap() - expected).abs() < 1e-12, "{:?}", t.scores());
        // A verdict whose word was not seen on its line has no score.
        t.text("\n");
        t.event(&GuardEvent::Verdict { kind: Task::ResponseHarmfulness, value: Some("harmful".into()) });
        assert_eq!(t.scores().response, None);
        // `None` has none either.
        t.event(&GuardEvent::Verdict { kind: Task::Refusal, value: None });
        assert_eq!(t.scores().completion, None);
    }

    #[test]
    fn thresholds_parse_and_only_move_verdicts_that_have_scores() {
        let t = Thresholds::parse("request=0.9, Response=0.2").unwrap();
        assert_eq!((t.request, t.completion, t.response), (Some(0.9), None, Some(0.2)));
        assert_eq!(Thresholds::parse("0.5").unwrap(), Thresholds::all(0.5));
        assert!(Thresholds::parse("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(Thresholds::parse("answer=0.5").unwrap_err().contains("not a verdict"));
        let req = Task::PromptHarmfulness;
        assert_eq!(t.apply(req, Some("harmful"), Some(0.8)).as_deref(), Some("unharmful"));
        assert_eq!(t.apply(req, Some("unharmful"), Some(0.95)).as_deref(), Some("harmful"));
        assert_eq!(t.apply(req, Some("harmful"), None).as_deref(), Some("harmful"));
        assert_eq!(t.apply(req, None, Some(0.95)), None);
        assert_eq!(t.apply(Task::Refusal, Some("refusal"), Some(0.1)).as_deref(), Some("refusal"));
        let none = Thresholds::default();
        assert_eq!(none.apply(req, Some("harmful"), Some(0.1)).as_deref(), Some("harmful"));
    }
}
