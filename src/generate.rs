//! Greedy generation: run the prompt, then take the most likely token until an EOS id, the token
//! limit, a full context, or cancellation; and a detokenizer that turns the ids into text deltas
//! without ever emitting a broken UTF-8 sequence.

use crate::backend::{Backend, Chosen};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use serde::Serialize;
use std::collections::VecDeque;

/// What each request asks of generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Any of these ends generation (not included in the output).
    pub stop_ids: Vec<u32>,
    /// Copy out the logits that predict the first new token (for tests and `--logits-out`).
    pub keep_first_logits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    ContextFull,
    /// Batched runs only (`batch::run_batch`): the caller cancelled while it was in flight.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids, stop id excluded.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the cache of an earlier request.
    pub reused_tokens: usize,
    pub first_logits: Option<Vec<f32>>,
}

/// Things the caller learns as they happen.
pub enum Progress {
    /// The prompt has run (the time to here is the prefill time).
    PromptDone { prompt_tokens: usize, reused_tokens: usize },
    /// A new token, with its watched logits (`Engine::watch`).
    Token(Chosen),
}

/// Greedy decoding with the device ahead of the host. Each step's token is chosen on the device
/// (`Backend::choose`) and fed to the next step from there, so the next steps are recorded and
/// submitted before the host reads the token (`Backend::steps_ahead` of them). The host reads
/// the tokens in order, a step or more behind; when it finds a stop it drops the steps that ran
/// past it from the cache, and their tokens never reach any output.
pub struct Pipeline<B: Backend> {
    /// Chosen tokens the host has not read, oldest first.
    unread: VecDeque<B::Token>,
    /// The newest chosen token: the next step feeds it.
    newest: B::Token,
    /// Ids read so far, in order.
    read: Vec<u32>,
    /// The cache position of the first chosen token.
    start: usize,
}

impl<B: Backend> Pipeline<B> {
    /// Start from the logits of a prompt's last token (`Engine::prefill`).
    pub fn new(engine: &Engine<B>, logits: &B::Act) -> Result<Self> {
        let first = only(engine.choose(logits)?)?;
        Ok(Self { unread: VecDeque::from([first.clone()]), newest: first, read: Vec::new(), start: engine.position() })
    }

    /// Queue steps until `steps_ahead` tokens wait behind the next unread one, without choosing
    /// more than `limit` tokens in all or running past the context.
    pub fn fill(&mut self, engine: &mut Engine<B>, limit: usize) -> Result<()> {
        let ahead = engine.backend.steps_ahead();
        while self.unread.len() <= ahead && self.chosen() < limit && engine.position() < engine.context_len() {
            // The step feeds the newest token: known if the host has read it.
            let known = self.read.get(self.chosen() - 1).copied();
            let logits = engine.step_token(&self.newest, known)?;
            self.newest = only(engine.choose(&logits)?)?;
            self.unread.push_back(self.newest.clone());
        }
        Ok(())
    }

    /// Tokens chosen so far, read or not.
    fn chosen(&self) -> usize {
        self.read.len() + self.unread.len()
    }

    /// The next token, in order; `None` when no token is left to read (nothing more could be
    /// queued).
    pub async fn next(&mut self, engine: &mut Engine<B>) -> Result<Option<Chosen>> {
        let Some(token) = self.unread.pop_front() else {
            return Ok(None);
        };
        let chosen = engine.backend.read_token(&token).await?;
        engine.settle(self.start + self.read.len(), chosen.id);
        self.read.push(chosen.id);
        Ok(Some(chosen))
    }

    /// Keep in the cache only the first `kept` tokens of the generation (what steps ran past
    /// the stop appended is forgotten).
    pub fn finish(self, engine: &mut Engine<B>, kept: usize) {
        engine.truncate((self.start + kept).min(engine.position()));
    }
}

/// The one token of a one-row choice.
pub fn only<T>(tokens: Vec<T>) -> Result<T> {
    let n = tokens.len();
    let mut tokens = tokens.into_iter();
    match (tokens.next(), n) {
        (Some(t), 1) => Ok(t),
        _ => Err(Error::Backend(format!("{n} tokens chosen where one row was expected"))),
    }
}

/// Greedy decoding. `is_cancelled` is polled before every token, so a cancel takes effect within
/// one token (plus the steps already queued on the device); `on_progress` sees the prompt finish
/// and every new token. The prompt reuses what slot 0 holds (`Engine::prefill`).
pub async fn generate<B: Backend>(
    engine: &mut Engine<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    is_cancelled: &dyn Fn() -> bool,
    on_progress: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<Generation> {
    generate_in(engine, prompt, false, opts, is_cancelled, on_progress).await
}

/// As `generate`, the prompt starting from the shared prefix when `shared` (`Engine::start` in
/// slot 0: the arithmetic of one item of a batch, whatever ran before).
pub async fn generate_in<B: Backend>(
    engine: &mut Engine<B>,
    prompt: &[u32],
    shared: bool,
    opts: &GenerateOptions,
    is_cancelled: &dyn Fn() -> bool,
    on_progress: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<Generation> {
    let (logits, reused) = if shared {
        engine.start_unless(0, prompt, is_cancelled)?
    } else {
        engine.prefill_unless(prompt, is_cancelled)?
    };
    on_progress(Progress::PromptDone { prompt_tokens: prompt.len(), reused_tokens: reused })?;
    let first_logits = if opts.keep_first_logits { Some(engine.backend.to_host(&logits).await?) } else { None };
    let mut pipe = Pipeline::new(engine, &logits)?;
    drop(logits);
    let mut tokens = Vec::new();
    let stop = async {
        loop {
            pipe.fill(engine, opts.max_new_tokens)?;
            let Some(next) = pipe.next(engine).await? else {
                // Nothing more could be queued below the token limit: the context is full.
                return Ok(StopReason::ContextFull);
            };
            if opts.stop_ids.contains(&next.id) {
                return Ok(StopReason::Eos);
            }
            if tokens.len() >= opts.max_new_tokens {
                return Ok(StopReason::MaxTokens);
            }
            if is_cancelled() {
                return Err(Error::Cancelled);
            }
            tokens.push(next.id);
            on_progress(Progress::Token(next))?;
            if tokens.len() >= opts.max_new_tokens {
                return Ok(StopReason::MaxTokens);
            }
        }
    }
    .await;
    pipe.finish(engine, tokens.len());
    Ok(Generation { tokens, stop: stop?, prompt_tokens: prompt.len(), reused_tokens: reused, first_logits })
}

/// Greedy generation that also decodes: `on_delta` sees each new piece of text as it becomes
/// certain (the last one at the end); resolves to the whole generated text and the generation.
pub async fn generate_text<B: Backend>(
    engine: &mut Engine<B>,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    is_cancelled: &dyn Fn() -> bool,
    on_delta: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<(String, Generation)> {
    let mut detok = Detokenizer::new();
    let mut text = String::new();
    let mut take = |delta: String, text: &mut String| -> Result<()> {
        if delta.is_empty() {
            return Ok(());
        }
        text.push_str(&delta);
        on_delta(&delta)
    };
    let generation = generate(engine, prompt, opts, is_cancelled, &mut |p| match p {
        Progress::PromptDone { .. } => Ok(()),
        Progress::Token(chosen) => take(detok.push(tokenizer, chosen.id)?, &mut text),
    })
    .await?;
    take(detok.finish(tokenizer)?, &mut text)?;
    Ok((text, generation))
}

/// Ids in, text deltas out. Text is released only when the tokens so far decode to whole
/// characters; a multi-byte character split across tokens waits for its last byte (the
/// prefix/read offset scheme of HF text-generation-inference).
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

const REPLACEMENT: char = '\u{FFFD}';

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one id; returns the newly certain text (possibly empty).
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let now = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if now.ends_with(REPLACEMENT) || !now.starts_with(&before) || now.len() <= before.len() {
            return Ok(String::new());
        }
        let delta = now[before.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Whatever is left at the end (an unfinished character shows as U+FFFD).
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let now = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(now.strip_prefix(before.as_str()).unwrap_or("").to_string())
    }
}
