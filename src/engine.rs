//! An engine is a loaded model plus its KV cache. The cache holds `slots` sequences of
//! `max_seq` positions each and a shared prefix: a prompt runs into a slot in chunks, and one
//! decode step advances any set of slots together, a row each (ARCHITECTURE.md §5). Slot 0 also
//! serves single runs, which reuse the longest prefix they share with the slot's last prompt.

use crate::backend::{Backend, Span};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::{ModelWeights, forward};

/// Prompt tokens per forward pass while prefilling: bounds activation memory
/// (`chunk x intermediate` floats) while keeping matrix products large enough to be efficient.
pub const PREFILL_CHUNK: usize = 128;

/// Most positions of the shared prefix (GuardReasoner's instruction is about 180 tokens).
pub const PREFIX_MAX: usize = 512;

pub struct Engine<B: Backend> {
    pub backend: B,
    pub config: LlamaConfig,
    weights: ModelWeights<B>,
    rope: B::Rope,
    cache: B::Cache,
    /// Per slot, the tokens whose K/V are in its rows, in order.
    cached: Vec<Vec<u32>>,
    /// The shared prefix's tokens, whose K/V sit after the slots' rows.
    prefix: Vec<u32>,
    prefix_cap: usize,
    max_seq: usize,
    /// Ids whose logits every choice keeps beside its token (`Engine::choose`).
    watch: Vec<u32>,
}

impl<B: Backend> Engine<B> {
    /// `max_seq`: the context (prompt + generated tokens) of one sequence; `slots`: sequences
    /// the cache holds at once (the batch); `prefix`: positions kept for the shared prefix (at
    /// most `max_seq`; 0 for none).
    pub fn new(
        backend: B,
        config: LlamaConfig,
        weights: ModelWeights<B>,
        max_seq: usize,
        slots: usize,
        prefix: usize,
    ) -> Result<Self> {
        let max_seq = max_seq.min(config.max_position_embeddings).max(1);
        let slots = slots.max(1);
        let prefix_cap = max_seq.min(prefix);
        let rope = backend.rope_table(&config.rope_inv_freq(), max_seq)?;
        let cache = backend.new_cache(&config, slots * max_seq + prefix_cap)?;
        Ok(Self {
            backend,
            config,
            weights,
            rope,
            cache,
            cached: vec![Vec::new(); slots],
            prefix: Vec::new(),
            prefix_cap,
            max_seq,
            watch: Vec::new(),
        })
    }

    /// KV cache bytes for `slots` sequences of `max_seq` positions and a shared prefix of
    /// `prefix` (f32 K and V of every layer), for budgeting before anything is allocated. In
    /// u64, saturating: on wasm32 a usize product would wrap (131072 positions of the 1B model
    /// are 8.6 GB) and pass a budget it fails.
    pub fn cache_bytes(config: &LlamaConfig, max_seq: usize, slots: usize, prefix: usize) -> u64 {
        let max_seq = max_seq.min(config.max_position_embeddings).max(1) as u64;
        let positions = (slots.max(1) as u64).saturating_mul(max_seq).saturating_add(max_seq.min(prefix as u64));
        [config.num_layers, 2, config.num_kv_heads, config.head_dim, 4]
            .iter()
            .fold(positions, |bytes, &n| bytes.saturating_mul(n as u64))
    }

    /// The context of one sequence.
    pub fn context_len(&self) -> usize {
        self.max_seq
    }

    /// Sequences the cache holds at once.
    pub fn slots(&self) -> usize {
        self.cached.len()
    }

    /// Tokens in slot 0 now.
    pub fn position(&self) -> usize {
        self.cached[0].len()
    }

    /// Tokens in `slot` now.
    pub fn position_in(&self, slot: usize) -> usize {
        self.cached[slot].len()
    }

    /// Forget every slot's contents (the memory stays allocated; the shared prefix stays).
    pub fn reset(&mut self) {
        self.cached.iter_mut().for_each(Vec::clear);
    }

    /// Run a whole prompt in slot 0, reusing the longest prefix it shares with what the slot
    /// holds; returns the logits `(1, vocab)` after its last token and how many prompt tokens
    /// were reused.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<(B::Act, usize)> {
        self.prefill_unless(ids, &|| false)
    }

    /// As `prefill`, polling `is_cancelled` before each chunk (`Error::Cancelled`): a long prompt
    /// can be stopped while it is read. The chunks already run stay cached and are reused.
    pub fn prefill_unless(&mut self, ids: &[u32], is_cancelled: &dyn Fn() -> bool) -> Result<(B::Act, usize)> {
        self.check_prompt(ids)?;
        let common = common_prefix(&self.cached[0], ids);
        // At least the last token must run to produce logits.
        let reuse = common.min(ids.len() - 1);
        self.cached[0].truncate(reuse);
        self.run_prompt(0, ids, is_cancelled)
    }

    /// Make `ids` (at most `PREFIX_MAX` of them) the shared prefix every `start` may begin from;
    /// nothing runs when it already is.
    pub fn share_prefix(&mut self, ids: &[u32]) -> Result<()> {
        let ids = &ids[..ids.len().min(self.prefix_cap)];
        if ids == self.prefix.as_slice() {
            return Ok(());
        }
        self.prefix.clear();
        if ids.is_empty() {
            return Ok(());
        }
        self.check_prompt(ids)?;
        let base = self.prefix_base();
        for (i, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
            let span = Span { base, pos: i * PREFILL_CHUNK, len: chunk.len() };
            let rows = self.backend.rows(&[span])?;
            let x = self.backend.embed(&self.weights.embed, chunk)?;
            forward(&self.backend, &self.weights, &self.rope, &self.config, &mut self.cache, x, &rows)?;
        }
        self.prefix = ids.to_vec();
        Ok(())
    }

    /// Start a prompt in `slot`, whatever the slot held: the positions it shares with the shared
    /// prefix are copied from there, the rest runs in chunks. So a prompt's arithmetic never
    /// depends on which slot it lands in or what ran before (batch invariance). Returns the
    /// logits `(1, vocab)` after its last token and how many prompt tokens came from the prefix.
    pub fn start(&mut self, slot: usize, ids: &[u32]) -> Result<(B::Act, usize)> {
        self.start_unless(slot, ids, &|| false)
    }

    /// As `start`, polling `is_cancelled` before each chunk (`Error::Cancelled`; the slot then
    /// holds part of the prompt, and the next `start` clears it).
    pub fn start_unless(
        &mut self,
        slot: usize,
        ids: &[u32],
        is_cancelled: &dyn Fn() -> bool,
    ) -> Result<(B::Act, usize)> {
        self.check_slot(slot)?;
        self.check_prompt(ids)?;
        let reuse = common_prefix(&self.prefix, ids).min(ids.len() - 1);
        self.cached[slot].clear();
        if reuse > 0 {
            let from = self.prefix_base();
            self.backend.copy_rows(&mut self.cache, from, slot * self.max_seq, reuse)?;
        }
        self.cached[slot].extend_from_slice(&ids[..reuse]);
        self.run_prompt(slot, ids, is_cancelled)
    }

    /// Ids whose logits every later choice keeps beside its token (the verdict words' first
    /// tokens, for scores); none by default.
    pub fn watch(&mut self, ids: &[u32]) -> Result<()> {
        if ids.len() > crate::backend::MAX_WATCH {
            return Err(Error::Backend(format!("{} ids watched, at most {}", ids.len(), crate::backend::MAX_WATCH)));
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::Backend(format!("watched id {id} is outside the vocabulary")));
        }
        self.watch = ids.to_vec();
        Ok(())
    }

    /// Queue the choice of each row's next token (`Backend::choose`), with the watched logits.
    pub fn choose(&self, logits: &B::Act) -> Result<Vec<B::Token>> {
        self.backend.choose(logits, &self.watch)
    }

    /// Append one token to slot 0; returns the logits that predict the next.
    pub fn step(&mut self, id: u32) -> Result<B::Act> {
        self.check_room(0)?;
        if id as usize >= self.config.vocab_size {
            return Err(Error::Prompt(format!("token id {id} is outside the vocabulary")));
        }
        self.run(&[(0, id)], |b, w| b.embed(w, &[id]))
    }

    /// Append a token the device chose (`Backend::choose`) to slot 0, which the host may not
    /// know yet: `known` is its id if the host has read it, else the cache records it as
    /// unsettled until `settle`. Returns the logits that predict the next token.
    pub fn step_token(&mut self, token: &B::Token, known: Option<u32>) -> Result<B::Act> {
        self.step_many(&[(0, token.clone(), known)])
    }

    /// One decode step of several slots together, a row each, in the order given: each
    /// `(slot, token, known id)` appends the token to its slot. Returns the logits `(rows,
    /// vocab)`, row `i` predicting slot `i`'s next token.
    pub fn step_many(&mut self, steps: &[(usize, B::Token, Option<u32>)]) -> Result<B::Act> {
        for (slot, _, _) in steps {
            self.check_slot(*slot)?;
            self.check_room(*slot)?;
        }
        let tokens: Vec<B::Token> = steps.iter().map(|(_, t, _)| t.clone()).collect();
        let ids: Vec<(usize, u32)> = steps.iter().map(|(slot, _, known)| (*slot, known.unwrap_or(UNSETTLED))).collect();
        self.run(&ids, |b, w| b.embed_tokens(w, &tokens))
    }

    /// Record the id of the token at slot 0's position `pos` once it is known.
    pub fn settle(&mut self, pos: usize, id: u32) {
        if let Some(slot) = self.cached[0].get_mut(pos) {
            *slot = id;
        }
    }

    /// Keep only the first `len` positions of slot 0 (a decode that ran ahead past its end).
    pub fn truncate(&mut self, len: usize) {
        self.truncate_in(0, len);
    }

    /// Keep only the first `len` positions of `slot`.
    pub fn truncate_in(&mut self, slot: usize, len: usize) {
        if let Some(c) = self.cached.get_mut(slot) {
            c.truncate(len);
            debug_assert!(!c.contains(&UNSETTLED), "every kept position is settled");
        }
    }

    fn prefix_base(&self) -> usize {
        self.slots() * self.max_seq
    }

    fn check_slot(&self, slot: usize) -> Result<()> {
        if slot >= self.slots() {
            return Err(Error::Backend(format!("slot {slot} of a cache of {} sequences", self.slots())));
        }
        Ok(())
    }

    fn check_prompt(&self, ids: &[u32]) -> Result<()> {
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
        Ok(())
    }

    fn check_room(&self, slot: usize) -> Result<()> {
        if self.cached[slot].len() >= self.max_seq {
            return Err(Error::Prompt(format!("the context of {} tokens is full", self.max_seq)));
        }
        Ok(())
    }

    /// Run `ids` past what `slot` holds, in chunks, polling `is_cancelled` before each; the
    /// logits after the last. (On the GPU the chunks are only queued here, so a cancel stops
    /// what is not queued yet.)
    fn run_prompt(&mut self, slot: usize, ids: &[u32], is_cancelled: &dyn Fn() -> bool) -> Result<(B::Act, usize)> {
        let reuse = self.cached[slot].len();
        let mut logits = None;
        for chunk in ids[reuse..].chunks(PREFILL_CHUNK) {
            if is_cancelled() {
                return Err(Error::Cancelled);
            }
            let ids: Vec<(usize, u32)> = chunk.iter().map(|&id| (slot, id)).collect();
            logits = Some(self.run(&ids, |b, w| b.embed(w, chunk))?);
        }
        let logits = logits.ok_or_else(|| Error::Prompt("nothing to run".into()))?;
        Ok((logits, reuse))
    }

    /// A forward pass whose rows append `(slot, id)` in order (consecutive rows of one slot form
    /// one span), over the embeddings `embed` makes (after the rows are set up: on the GPU both
    /// write the device before the pass, and this order keeps it to one submit).
    fn run(&mut self, ids: &[(usize, u32)], embed: impl FnOnce(&B, &B::Embedding) -> Result<B::Act>) -> Result<B::Act> {
        let mut spans: Vec<Span> = Vec::new();
        let mut extra = vec![0usize; self.slots()];
        let mut last_slot = None;
        for &(slot, _) in ids {
            let pos = self.cached[slot].len() + extra[slot];
            match spans.last_mut() {
                Some(s) if last_slot == Some(slot) => s.len += 1,
                _ => spans.push(Span { base: slot * self.max_seq, pos, len: 1 }),
            }
            extra[slot] += 1;
            last_slot = Some(slot);
        }
        if let Some(slot) = (0..self.slots()).find(|&s| self.cached[s].len() + extra[s] > self.max_seq) {
            return Err(Error::Prompt(format!(
                "sequence of {} tokens exceeds the context of {}",
                self.cached[slot].len() + extra[slot],
                self.max_seq
            )));
        }
        let rows = self.backend.rows(&spans)?;
        let x = embed(&self.backend, &self.weights.embed)?;
        // On failure the cache past each slot's position is garbage: forget it rather than
        // trust it later.
        let out = forward(&self.backend, &self.weights, &self.rope, &self.config, &mut self.cache, x, &rows);
        match out {
            Ok(logits) => {
                for &(slot, id) in ids {
                    self.cached[slot].push(id);
                }
                Ok(logits)
            }
            Err(e) => Err(e),
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A cache position whose token the host does not know yet (never a vocabulary id, so a prompt
/// never reuses it).
const UNSETTLED: u32 = u32::MAX;
