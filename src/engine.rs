//! An engine is a loaded model plus its KV cache: it runs prompts in chunks and decodes one token
//! at a time. It remembers which tokens its cache holds, so a new prompt that shares a prefix
//! with the last (GuardReasoner's long fixed instruction) starts after that prefix.

use crate::backend::Backend;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::{ModelWeights, forward};

/// Prompt tokens per forward pass while prefilling: bounds activation memory
/// (`chunk x intermediate` floats) while keeping matrix products large enough to be efficient.
pub const PREFILL_CHUNK: usize = 128;

pub struct Engine<B: Backend> {
    pub backend: B,
    pub config: LlamaConfig,
    weights: ModelWeights<B>,
    rope: B::Rope,
    cache: B::Cache,
    /// The tokens whose K/V are in the cache, in order.
    cached: Vec<u32>,
    max_seq: usize,
}

impl<B: Backend> Engine<B> {
    /// `max_seq`: the context (prompt + generated tokens) the KV cache is allocated for.
    pub fn new(backend: B, config: LlamaConfig, weights: ModelWeights<B>, max_seq: usize) -> Result<Self> {
        let max_seq = max_seq.min(config.max_position_embeddings).max(1);
        let rope = backend.rope_table(&config.rope_inv_freq(), max_seq)?;
        let cache = backend.new_cache(&config, max_seq)?;
        Ok(Self { backend, config, weights, rope, cache, cached: Vec::new(), max_seq })
    }

    pub fn context_len(&self) -> usize {
        self.max_seq
    }

    /// Tokens in the cache now.
    pub fn position(&self) -> usize {
        self.cached.len()
    }

    /// Forget the cache contents (the memory stays allocated).
    pub fn reset(&mut self) {
        self.cached.clear();
    }

    /// Run a whole prompt, reusing the longest cached prefix; returns the logits `(1, vocab)`
    /// after its last token and how many prompt tokens were reused.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<(B::Act, usize)> {
        if ids.is_empty() {
            return Err(Error::Prompt("the prompt is empty (no tokens)".into()));
        }
        if ids.len() > self.max_seq {
            return Err(Error::Prompt(format!(
                "the prompt has {} tokens but the context holds {}; shorten it or raise the context size",
                ids.len(),
                self.max_seq
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::Prompt(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                self.config.vocab_size
            )));
        }
        let common = self.cached.iter().zip(ids).take_while(|(a, b)| a == b).count();
        // At least the last token must run to produce logits.
        let reuse = common.min(ids.len() - 1);
        self.cached.truncate(reuse);
        let mut logits = None;
        for chunk in ids[reuse..].chunks(PREFILL_CHUNK) {
            logits = Some(self.feed(chunk)?);
        }
        let logits = logits.ok_or_else(|| Error::Prompt("nothing to run".into()))?;
        Ok((logits, reuse))
    }

    /// Append one token; returns the logits that predict the next.
    pub fn step(&mut self, id: u32) -> Result<B::Act> {
        self.check_room()?;
        if id as usize >= self.config.vocab_size {
            return Err(Error::Prompt(format!("token id {id} is outside the vocabulary")));
        }
        self.feed(&[id])
    }

    /// Append a token the device chose (`Backend::choose`), which the host may not know yet:
    /// `known` is its id if the host has read it, else the cache records it as unsettled until
    /// `settle`. Returns the logits that predict the next token.
    pub fn step_token(&mut self, token: &B::Token, known: Option<u32>) -> Result<B::Act> {
        self.check_room()?;
        let pos = self.cached.len();
        let x = self.backend.embed_token(&self.weights.embed, token)?;
        self.run(x, pos, &[known.unwrap_or(UNSETTLED)])
    }

    /// Record the id of the token at cache position `pos` once it is known.
    pub fn settle(&mut self, pos: usize, id: u32) {
        if let Some(slot) = self.cached.get_mut(pos) {
            *slot = id;
        }
    }

    /// Keep only the first `len` cached positions (a decode that ran ahead past its end).
    pub fn truncate(&mut self, len: usize) {
        self.cached.truncate(len);
        debug_assert!(!self.cached.contains(&UNSETTLED), "every kept position is settled");
    }

    fn check_room(&self) -> Result<()> {
        if self.cached.len() >= self.max_seq {
            return Err(Error::Prompt(format!("the context of {} tokens is full", self.max_seq)));
        }
        Ok(())
    }

    fn feed(&mut self, ids: &[u32]) -> Result<B::Act> {
        let pos = self.cached.len();
        let x = self.backend.embed(&self.weights.embed, ids)?;
        self.run(x, pos, ids)
    }

    fn run(&mut self, x: B::Act, pos: usize, ids: &[u32]) -> Result<B::Act> {
        // On failure the cache past `pos` is garbage: forget it rather than trust it later.
        let out = forward(&self.backend, &self.weights, &self.rope, &self.config, &mut self.cache, x, pos);
        match out {
            Ok(logits) => {
                self.cached.extend_from_slice(ids);
                Ok(logits)
            }
            Err(e) => {
                self.cached.truncate(pos);
                Err(e)
            }
        }
    }
}

/// A cache position whose token the host does not know yet (never a vocabulary id, so a prompt
/// never reuses it).
const UNSETTLED: u32 = u32::MAX;
