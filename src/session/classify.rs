//! Classification: `moderate` and `classify` are one item of `classify_many`, which runs many
//! GuardReasoner prompts with continuous batching, each item's text through the guard parser.

use super::results::*;
use super::{AnyEngine, Session, VERDICT_FIRST_TOKENS};
use crate::backend::Chosen;
use crate::batch::{BatchEvent, BatchStats, Request, run_batch};
use crate::error::{Error, Result};
use crate::generate::{Detokenizer, GenerateOptions, Progress, StopReason, generate_in};
use crate::guard::{
    ANSWER_HEADER, GuardEvent, ScoredReader, Task, Thresholds, VerdictWords, checked_guard_prompt, shared_prefix,
};
use crate::tokenizer::TextTokenizer;
use web_time::Instant;

/// What an item of `classify_many` asked, kept from when it is pulled to when it starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct ItemAsk {
    verdict_first: bool,
    thresholds: Thresholds,
}

/// One item of `classify_many` in flight: its text, parser and timings.
pub(super) struct ItemRun {
    started: Instant,
    /// Seconds its prompt took before `started`.
    prefill_s: f64,
    first_token: Option<f64>,
    /// When the parser read the first verdict.
    first_verdict: Option<f64>,
    /// The last answer line (`Response: ...`) was read.
    answered: bool,
    ask: ItemAsk,
    detokenizer: Detokenizer,
    reader: ScoredReader,
    text: String,
    verdict_found: bool,
    prompt_tokens: usize,
    reused_tokens: usize,
}

impl ItemRun {
    pub(super) fn new(prompt_tokens: usize, reused_tokens: usize, prefill_s: f64, ask: ItemAsk) -> Self {
        Self {
            started: Instant::now(),
            prefill_s,
            first_token: None,
            first_verdict: None,
            answered: false,
            ask,
            detokenizer: Detokenizer::new(),
            reader: ScoredReader::new(),
            text: String::new(),
            verdict_found: false,
            prompt_tokens,
            reused_tokens,
        }
    }

    pub(super) fn pass_on(
        &mut self,
        events: Vec<GuardEvent>,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<()> {
        for event in events.iter().filter(|e| !matches!(e, GuardEvent::Done)) {
            if let GuardEvent::Verdict { kind, .. } = event {
                self.answered |= *kind == Task::ResponseHarmfulness;
                self.verdict_found = true;
                self.first_verdict.get_or_insert(self.prefill_s + self.started.elapsed().as_secs_f64());
            }
            on_event(ClassifyEvent::Guard(event))?;
        }
        Ok(())
    }

    /// Text the model wrote (`chosen`: the token that completed it) or was given.
    pub(super) fn text(
        &mut self,
        words: &VerdictWords,
        chosen: Option<&Chosen>,
        delta: &str,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<()> {
        if !delta.is_empty() {
            self.text.push_str(delta);
            on_event(ClassifyEvent::Token(delta))?;
        }
        let events = self.reader.push(words, chosen, delta);
        self.pass_on(events, on_event)
    }

    pub(super) fn token(
        &mut self,
        tokenizer: &TextTokenizer,
        words: &VerdictWords,
        chosen: &Chosen,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<()> {
        let at = self.prefill_s + self.started.elapsed().as_secs_f64();
        self.first_token.get_or_insert(at);
        let delta = self.detokenizer.push(tokenizer, chosen.id)?;
        self.text(words, Some(chosen), &delta, on_event)
    }

    pub(super) fn finish(
        mut self,
        tokenizer: &TextTokenizer,
        stop: Stop,
        new_tokens: usize,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<Classification> {
        let tail = self.detokenizer.finish(tokenizer)?;
        self.text(&VerdictWords::default(), None, &tail, on_event)?;
        let events = self.reader.finish();
        self.pass_on(events, on_event)?;
        let result = self.reader.result();
        let ran = self.prompt_tokens - self.reused_tokens.min(self.prompt_tokens);
        let scores = self.reader.scores();
        let thresholds = self.ask.thresholds;
        let verdict = |task: Task| thresholds.apply(task, result.verdict(task), scores.get(task));
        Ok(Classification {
            request: verdict(Task::PromptHarmfulness),
            completion: verdict(Task::Refusal),
            response: verdict(Task::ResponseHarmfulness),
            scores,
            verdict_found: self.verdict_found,
            problem: (!self.verdict_found).then(|| no_verdict_problem(stop, new_tokens)),
            tasks: result.tasks.clone(),
            text: self.text,
            prompt_tokens: self.prompt_tokens,
            reused_tokens: self.reused_tokens,
            new_tokens,
            stop,
            verdict_first: self.ask.verdict_first,
            timings: Timings::measure(
                self.prefill_s + self.started.elapsed().as_secs_f64(),
                self.first_token,
                ran,
                new_tokens,
            )
            .with_verdict_at(self.first_verdict),
        })
    }
}

impl Session {
    /// Classifies a conversation: the GuardReasoner prompt of `prompt` and `response` (the model
    /// sees `None` without one), then as `classify`.
    pub async fn moderate(
        &mut self,
        prompt: &str,
        response: Option<&str>,
        options: &RunOptions,
        is_cancelled: &dyn Fn() -> bool,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<Classification> {
        let text = checked_guard_prompt(prompt, response).map_err(Error::Prompt)?;
        self.classify(&text, options, is_cancelled, on_event).await
    }

    /// Runs a complete GuardReasoner prompt text (instruction and conversation, as the benchmark
    /// files hold it; BOS is added here), streaming each text delta and the reasoning events it
    /// completes, and returns the verdicts, the reasoning, the text and the counts. The same
    /// path as one item of `classify_many`, so the answer is the same byte for byte.
    pub async fn classify(
        &mut self,
        text: &str,
        options: &RunOptions,
        is_cancelled: &dyn Fn() -> bool,
        on_event: &mut dyn FnMut(ClassifyEvent) -> Result<()>,
    ) -> Result<Classification> {
        let mut item = Some(ClassifyItem::new(0, text.to_string()));
        let mut result = None;
        self.classify_many(
            1,
            &mut || Ok(item.take()),
            options,
            &|_| is_cancelled(),
            &mut |_, event| on_event(event),
            &mut |_, classification| {
                result = Some(classification);
                Ok(())
            },
        )
        .await?;
        result.ok_or(Error::Cancelled)?
    }

    /// Classifies many GuardReasoner prompt texts, up to `batch` at once (at most the batch the
    /// session was loaded for), decoded together with continuous batching (`batch::run_batch`):
    /// `next` gives an item whenever a slot is free, `on_event(item, event)` streams each
    /// item's deltas and reasoning events, `on_done(item, result)` gives each result as its item
    /// finishes (not in order), or the error that kept it from starting (`Error::Prompt`: too
    /// long for the context, ...; the others go on). Every item's answer is the one `classify`
    /// gives it alone. `is_cancelled(item)` is polled before every step: a cancelled item ends as
    /// `Stop::Cancelled` (passed to `on_done`) and the others go on.
    pub async fn classify_many(
        &mut self,
        batch: usize,
        next: &mut dyn FnMut() -> Result<Option<ClassifyItem>>,
        options: &RunOptions,
        is_cancelled: &dyn Fn(usize) -> bool,
        on_event: &mut dyn FnMut(usize, ClassifyEvent) -> Result<()>,
        on_done: &mut dyn FnMut(usize, Result<Classification>) -> Result<()>,
    ) -> Result<BatchStats> {
        let prefix = self.tokenizer.encode_prompt(&shared_prefix())?;
        let tokenizer = &self.tokenizer;
        let vocab = on_engine!(&self.engine, e => e.config.vocab_size);
        let words = if options.scores { VerdictWords::new(tokenizer, vocab)? } else { VerdictWords::default() };
        let mut items: std::collections::HashMap<usize, ItemRun> = std::collections::HashMap::new();
        let asks: std::cell::RefCell<std::collections::HashMap<usize, ItemAsk>> = Default::default();
        let run_ask = ItemAsk { verdict_first: options.verdict_first, thresholds: options.thresholds };
        let mut pull = || -> Result<Option<(usize, Request)>> {
            let Some(item) = next()? else { return Ok(None) };
            let ask = ItemAsk {
                verdict_first: item.verdict_first.unwrap_or(options.verdict_first),
                thresholds: item.thresholds.unwrap_or(options.thresholds),
            };
            let mut max_new_tokens = item.max_new_tokens.unwrap_or(options.max_new_tokens);
            let ids = if ask.verdict_first {
                max_new_tokens = max_new_tokens.min(VERDICT_FIRST_TOKENS);
                tokenizer.encode_prompt(&format!("{}{ANSWER_HEADER}", item.text))?
            } else {
                tokenizer.encode_prompt(&item.text)?
            };
            asks.borrow_mut().insert(item.index, ask);
            Ok(Some((item.index, Request { ids, max_new_tokens })))
        };
        // Verdict-first items whose last answer line was read: ended like a cancel, reported as
        // `Stop::Answered` (not when EOS is ignored: speed tests run their full count).
        let answered: std::cell::RefCell<std::collections::HashSet<usize>> = Default::default();
        let stop_early = |item: usize| is_cancelled(item) || answered.borrow().contains(&item);
        let mut handle = |event: BatchEvent| -> Result<()> {
            match event {
                BatchEvent::Started { item, prompt_tokens, reused_tokens, prefill_s, .. } => {
                    let ask = asks.borrow_mut().remove(&item).unwrap_or(run_ask);
                    let mut run = ItemRun::new(prompt_tokens, reused_tokens, prefill_s, ask);
                    if ask.verdict_first {
                        // The header the model was given reads as if it had written it.
                        run.text(&words, None, ANSWER_HEADER, &mut |e| on_event(item, e))?;
                    }
                    items.insert(item, run);
                }
                BatchEvent::Token { item, chosen } => {
                    if let Some(run) = items.get_mut(&item) {
                        run.token(tokenizer, &words, &chosen, &mut |e| on_event(item, e))?;
                        if run.answered && run.ask.verdict_first && !options.ignore_eos {
                            answered.borrow_mut().insert(item);
                        }
                    }
                }
                BatchEvent::Finished { item, stop, new_tokens } => {
                    // An item cancelled before its prompt ran has no run yet: an empty one.
                    let ask = asks.borrow_mut().remove(&item).unwrap_or(run_ask);
                    let run = items.remove(&item).unwrap_or_else(|| ItemRun::new(0, 0, 0.0, ask));
                    let stop = match (answered.borrow_mut().remove(&item), Stop::from(stop)) {
                        (true, Stop::Cancelled) => Stop::Answered,
                        (_, stop) => stop,
                    };
                    on_done(item, Ok(run.finish(tokenizer, stop, new_tokens, &mut |e| on_event(item, e))?))?;
                }
                BatchEvent::Failed { item, error } => {
                    asks.borrow_mut().remove(&item);
                    on_done(item, Err(Error::Prompt(error)))?
                }
            }
            Ok(())
        };
        on_engine!(&mut self.engine, engine => {
            let stop_ids = if options.ignore_eos { Vec::new() } else { engine.config.eos_token_ids.clone() };
            engine.share_prefix(&prefix)?;
            engine.watch(words.ids())?;
            if batch > 1 && engine.slots() > 1 {
                return run_batch(engine, batch, &mut pull, &stop_ids, &stop_early, &mut handle).await;
            }
            // One at a time: the same arithmetic, with the device running ahead of the host
            // (`generate::Pipeline`).
            let mut stats = BatchStats::default();
            while let Some((item, request)) = pull()? {
                let opts = GenerateOptions {
                    max_new_tokens: request.max_new_tokens,
                    stop_ids: stop_ids.clone(),
                    keep_first_logits: false,
                };
                stats.items += 1;
                let began = Instant::now();
                let mut new_tokens = 0usize;
                let outcome = generate_in(engine, &request.ids, true, &opts, &|| stop_early(item), &mut |p| match p {
                    Progress::PromptDone { prompt_tokens, reused_tokens } => handle(BatchEvent::Started {
                        item,
                        slot: 0,
                        prompt_tokens,
                        reused_tokens,
                        prefill_s: began.elapsed().as_secs_f64(),
                        refill: false,
                    }),
                    Progress::Token(chosen) => {
                        new_tokens += 1;
                        handle(BatchEvent::Token { item, chosen })
                    }
                })
                .await;
                let stop = match outcome {
                    Ok(generation) => generation.stop,
                    Err(Error::Cancelled) => StopReason::Cancelled,
                    Err(Error::Prompt(error)) => {
                        handle(BatchEvent::Failed { item, error })?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                stats.steps += new_tokens.saturating_sub(1);
                stats.decode_rows += new_tokens.saturating_sub(1);
                stats.most_in_flight = 1;
                handle(BatchEvent::Finished { item, stop, new_tokens })?;
            }
            Ok(stats)
        })
    }
}
