//! Continuous batching: up to `batch` sequences decode together, one row each per forward pass,
//! each in its own slot of the KV cache. When a sequence ends (a stop id, its token limit, a full
//! context) its slot takes the next request before the following step, so a long answer never
//! holds short ones back. A request's prompt runs into its slot as its own chunks between decode
//! steps, starting from the shared prefix (`Engine::start`), so its arithmetic is the same in any
//! slot, at any batch size, whatever ran before (ARCHITECTURE.md §5).

use crate::backend::{Backend, Chosen};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{StopReason, only};
use serde::Serialize;
use std::collections::VecDeque;

/// One sequence to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (BOS included).
    pub ids: Vec<u32>,
    pub max_new_tokens: usize,
}

/// What the caller learns as it happens; `item` is the index the request came with.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchEvent {
    /// The prompt has run in `slot`, in `prefill_s` seconds; `refill` when the slot was freed by
    /// an earlier request while others were still decoding (continuous batching at work).
    Started { item: usize, slot: usize, prompt_tokens: usize, reused_tokens: usize, prefill_s: f64, refill: bool },
    /// A new token with its watched logits (stop ids are never reported).
    Token { item: usize, chosen: Chosen },
    /// The sequence ended; its slot is free.
    Finished { item: usize, stop: StopReason, new_tokens: usize },
    /// The request could not start (its prompt: too long, empty, out of the vocabulary); the
    /// others go on.
    Failed { item: usize, error: String },
}

/// What the scheduler did, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BatchStats {
    pub items: usize,
    /// Decode steps (forward passes of one row per sequence in flight).
    pub steps: usize,
    /// Rows those steps ran, all together.
    pub decode_rows: usize,
    /// Requests started in a slot another request had freed while others were in flight.
    pub refills: usize,
    /// Most sequences in flight at once.
    pub most_in_flight: usize,
}

struct Sequence<T> {
    item: usize,
    slot: usize,
    prompt_tokens: usize,
    /// Chosen tokens the host has not read, oldest first.
    unread: VecDeque<T>,
    /// The newest chosen token: the next step feeds it.
    newest: T,
    /// Its id, once read.
    newest_id: Option<u32>,
    /// Tokens read and reported.
    new_tokens: usize,
    max_new_tokens: usize,
}

impl<T> Sequence<T> {
    /// Tokens chosen, read or not (every read token of a live sequence was reported).
    fn chosen(&self) -> usize {
        self.new_tokens + self.unread.len()
    }
}

/// Runs every request `next` gives (`(item, request)`, pulled whenever a slot is free), at most
/// `batch` at once (and no more than the engine's slots), greedy, stopping each at any of
/// `stop_ids`, its limit or a full context. `is_cancelled(item)` is polled for every sequence in
/// flight before every step: a cancelled one ends with `StopReason::Cancelled` and frees its slot
/// (the others go on; `next` decides whether more come).
///
/// The device runs ahead of the host as in single runs (`generate::Pipeline`): up to
/// `Backend::steps_ahead` steps are queued past the tokens being read, each feeding the tokens the
/// step before chose, on the device. When a read token ends a sequence, the rows it had queued
/// past its end are ignored (its slot's rows past the end are never read: the next request
/// starts the slot afresh).
pub async fn run_batch<B: Backend>(
    engine: &mut Engine<B>,
    batch: usize,
    next: &mut dyn FnMut() -> Result<Option<(usize, Request)>>,
    stop_ids: &[u32],
    is_cancelled: &dyn Fn(usize) -> bool,
    on_event: &mut dyn FnMut(BatchEvent) -> Result<()>,
) -> Result<BatchStats> {
    let batch = batch.clamp(1, engine.slots());
    let ahead = engine.backend.steps_ahead();
    let mut slots: Vec<Option<Sequence<B::Token>>> = (0..batch).map(|_| None).collect();
    let mut stats = BatchStats::default();
    let mut used = vec![false; batch];
    loop {
        // `next` is asked again every step a slot is free: requests may arrive while the batch
        // runs (the browser's worker takes them from its event loop while a step is awaited).
        let mut exhausted = false;
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|seq| is_cancelled(seq.item))
                && let Some(seq) = slot.take()
            {
                on_event(BatchEvent::Finished {
                    item: seq.item,
                    stop: StopReason::Cancelled,
                    new_tokens: seq.new_tokens,
                })?;
            }
        }
        // Refill free slots, lowest first.
        for slot in 0..batch {
            while slots[slot].is_none() && !exhausted {
                let Some((item, request)) = next()? else {
                    exhausted = true;
                    break;
                };
                let refill = used[slot] && slots.iter().any(Option::is_some);
                used[slot] = true;
                stats.items += 1;
                stats.refills += refill as usize;
                let began = web_time::Instant::now();
                let (logits, reused) = match engine.start_unless(slot, &request.ids, &|| is_cancelled(item)) {
                    Ok(started) => started,
                    Err(Error::Prompt(error)) => {
                        on_event(BatchEvent::Failed { item, error })?;
                        continue;
                    }
                    Err(Error::Cancelled) => {
                        on_event(BatchEvent::Finished { item, stop: StopReason::Cancelled, new_tokens: 0 })?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                on_event(BatchEvent::Started {
                    item,
                    slot,
                    prompt_tokens: request.ids.len(),
                    reused_tokens: reused,
                    prefill_s: began.elapsed().as_secs_f64(),
                    refill,
                })?;
                let token = only(engine.choose(&logits)?)?;
                slots[slot] = Some(Sequence {
                    item,
                    slot,
                    prompt_tokens: request.ids.len(),
                    unread: VecDeque::from([token.clone()]),
                    newest: token,
                    newest_id: None,
                    new_tokens: 0,
                    max_new_tokens: request.max_new_tokens,
                });
            }
        }
        if slots.iter().all(Option::is_none) {
            return Ok(stats);
        }
        // Queue steps while no sequence has more than `ahead` tokens unread; a sequence that has
        // chosen all it may (its limit, a full context) only waits for its reads.
        loop {
            let can_step = |q: &Sequence<B::Token>| {
                q.chosen() < q.max_new_tokens && engine.position_in(q.slot) < engine.context_len()
            };
            let live: Vec<&Sequence<B::Token>> = slots.iter().flatten().collect();
            if live.iter().any(|q| q.unread.len() > ahead) {
                break;
            }
            let rows: Vec<usize> = live.iter().filter(|q| can_step(q)).map(|q| q.slot).collect();
            if rows.is_empty() {
                break;
            }
            let steps: Vec<(usize, B::Token, Option<u32>)> =
                rows.iter().filter_map(|&s| slots[s].as_ref().map(|q| (s, q.newest.clone(), q.newest_id))).collect();
            let logits = engine.step_many(&steps)?;
            let tokens = engine.choose(&logits)?;
            drop(logits);
            stats.steps += 1;
            stats.decode_rows += rows.len();
            stats.most_in_flight = stats.most_in_flight.max(rows.len());
            for (&slot, token) in rows.iter().zip(tokens) {
                if let Some(q) = slots[slot].as_mut() {
                    q.unread.push_back(token.clone());
                    q.newest = token;
                    q.newest_id = None;
                }
            }
        }
        // Read the oldest unread token of every sequence, in slot order.
        for place in slots.iter_mut() {
            let Some(mut seq) = place.take() else { continue };
            let Some(token) = seq.unread.pop_front() else {
                *place = Some(seq);
                continue;
            };
            let chosen = engine.backend.read_token(&token).await?;
            if seq.unread.is_empty() {
                seq.newest_id = Some(chosen.id);
            }
            *place = accept(engine, seq, chosen, stop_ids, is_cancelled, on_event)?;
        }
    }
}

/// Take the token a sequence just chose: report it, or end the sequence. Returns the sequence
/// if it goes on.
fn accept<B: Backend>(
    engine: &Engine<B>,
    mut seq: Sequence<B::Token>,
    chosen: Chosen,
    stop_ids: &[u32],
    is_cancelled: &dyn Fn(usize) -> bool,
    on_event: &mut dyn FnMut(BatchEvent) -> Result<()>,
) -> Result<Option<Sequence<B::Token>>> {
    let stop = if is_cancelled(seq.item) {
        Some(StopReason::Cancelled)
    } else if stop_ids.contains(&chosen.id) {
        Some(StopReason::Eos)
    } else if seq.new_tokens >= seq.max_new_tokens {
        Some(StopReason::MaxTokens)
    } else {
        seq.new_tokens += 1;
        on_event(BatchEvent::Token { item: seq.item, chosen })?;
        if seq.new_tokens >= seq.max_new_tokens {
            Some(StopReason::MaxTokens)
        } else if seq.prompt_tokens + seq.new_tokens > engine.context_len() {
            // This token would be fed at position prompt + new - 1: past the context.
            Some(StopReason::ContextFull)
        } else {
            None
        }
    };
    match stop {
        Some(stop) => {
            on_event(BatchEvent::Finished { item: seq.item, stop, new_tokens: seq.new_tokens })?;
            Ok(None)
        }
        None => Ok(Some(seq)),
    }
}
