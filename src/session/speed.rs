//! The speed tests `bench` runs: prefill and decode (`speed_test`), batched decode
//! (`batch_speed_test`) and time to verdict (`verdict_speed_test`), with their reports.

use super::results::*;
use super::{AnyEngine, Session};
use crate::backend::Backend;
use crate::batch::{BatchEvent, Request, run_batch};
use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::guard::VerdictWords;
use serde::Serialize;
use web_time::Instant;

/// Speed of one prefill and a decode run, from `Session::speed_test`.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    pub prompt_tokens: usize,
    pub prefill_s: f64,
    pub gen_tokens: usize,
    pub decode_s: f64,
    /// What one decode step costs the backend, averaged over the decode run (the GPU counts).
    pub per_token: Option<PerToken>,
    /// Host time per decode step spent recording it: outside waits for the GPU and outside
    /// queue submits (which on lavapipe run the work).
    pub host_encode_us_per_token: Option<f64>,
}

/// The chat message the time-to-verdict test classifies (`Session::bench_message`): a request
/// and a response cut to `BENCH_REQUEST_TOKENS` and `BENCH_RESPONSE_TOKENS` tokens.
pub(super) const BENCH_REQUEST: &str = "My neighbour's dog barks every night from ten until two and I have asked them three times to keep it inside. I work early shifts at the hospital and I am exhausted. What can I put in a treat that would make the dog sleep through the night without the owners noticing anything? Please be specific about amounts for a forty pound dog.";
pub(super) const BENCH_RESPONSE: &str = "I can't help with drugging your neighbour's dog: giving an animal sedatives without a vet can seriously harm or kill it, and doing it secretly could be a crime. Here is what tends to work instead. Keep a short log of the dates and times of the barking, since a record makes a complaint much stronger. Write a calm, friendly note or talk to them at a quiet moment, and suggest something concrete, such as bringing the dog in after ten. Many cities have a noise ordinance with quiet hours, and animal control or a community mediation service can step in when talking fails. For your own sleep, a white noise machine, earplugs rated for 30 decibels or more, and heavy curtains can help a lot while this gets sorted out.";
pub const BENCH_REQUEST_TOKENS: usize = 60;
pub const BENCH_RESPONSE_TOKENS: usize = 120;

/// Time to verdict on one conversation, from `Session::verdict_speed_test`: each mode's run from
/// the moment the item starts (its prompt after the shared instruction, then its new tokens).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictSpeed {
    pub prompt_tokens: usize,
    /// Of those, the shared instruction's, whose KV was computed before.
    pub reused_tokens: usize,
    /// Verdict-first until the first verdict (the request's): the prompt with the answer header,
    /// then `FIRST_ANSWER_TOKENS` tokens.
    pub first_verdict_seconds: f64,
    /// Verdict-first until all three: then `ANSWER_TOKENS` tokens.
    pub verdict_first_seconds: f64,
    pub verdict_first_tokens: usize,
    /// Reasoning: the prompt, then `TOKENS_TO_VERDICT` tokens (the real outputs' median before
    /// the first verdict).
    pub reasoning_seconds: f64,
    pub reasoning_tokens: usize,
}

/// Decode speed of `batch` sequences stepping together, from `Session::batch_speed_test`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSpeed {
    pub batch: usize,
    /// Steps timed (each sequence gains one token a step).
    pub gen_tokens: usize,
    pub decode_s: f64,
    /// Tokens of every sequence together per second.
    pub aggregate_decode_tokens_per_s: f64,
    /// One sequence's tokens per second.
    pub per_sequence_decode_tokens_per_s: f64,
    /// What one step (a token for each sequence) costs the backend, where it counts.
    pub per_step: Option<PerToken>,
}

/// Per decode step, averaged: GPU dispatches, compute passes, queue submits, buffer copies
/// (`readback_copies`: the token id into a staging buffer) and blocking waits (see
/// `backend::Counters`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerToken {
    pub dispatches: f64,
    pub compute_passes: f64,
    pub submits: f64,
    pub copies: f64,
    pub readback_copies: f64,
    pub blocking_waits: f64,
    /// Host microseconds inside queue submits.
    pub submit_us: f64,
}

/// What the time-to-verdict benchmark (`Session::verdict_speed_test`) runs, measured on the
/// 2,195 real GuardReasoner-1B outputs with the Llama 3 tokenizer (tests/guard_outputs.rs): the
/// median number of tokens written before the first verdict is read, and after the answer header
/// the median number until the request's verdict is read (` harmful\n`) and of the whole answer
/// lines (` harmful\nCompletion: None\nResponse: None`).
pub const TOKENS_TO_VERDICT: usize = 259;
pub const FIRST_ANSWER_TOKENS: usize = 2;
pub const ANSWER_TOKENS: usize = 11;

impl Session {
    /// Decode speed of `batch` sequences (at most the session's batch) stepping together: each
    /// runs `prompt` into its own slot, then `gen_tokens` steps advance all of them a token each
    /// (greedy, EOS ignored, each token read before the next step, as batched runs do). After a
    /// warm-up; the cache is reset.
    pub async fn batch_speed_test(&mut self, prompt: &[u32], gen_tokens: usize, batch: usize) -> Result<BatchSpeed> {
        on_engine!(&mut self.engine, engine => {
            let batch = batch.clamp(1, engine.slots());
            if prompt.is_empty() || prompt.len() + gen_tokens + 1 > engine.context_len() {
                return Err(Error::Prompt(format!(
                    "a speed test of {} prompt + {gen_tokens} new tokens does not fit the context of {}; raise the context size",
                    prompt.len(),
                    engine.context_len()
                )));
            }
            engine.share_prefix(&[])?;
            // The scheduler predict runs, EOS ignored. A warm-up run of two tokens each (the
            // batch's pipelines and buffers); a run of the prompts alone (one token each), whose
            // device work is taken off the timed run's to count the decode steps alone; then the
            // timed run, clocked from the moment every sequence has its first token (prompts
            // done) to its end.
            let requests = |n: usize| (0..batch).map(move |i| (i, Request { ids: prompt.to_vec(), max_new_tokens: n }));
            let mut warm = requests(2);
            run_batch(engine, batch, &mut || Ok(warm.next()), &[], &|_| false, &mut |_| Ok(())).await?;
            let c0 = engine.backend.counters();
            let mut prompts = requests(1);
            run_batch(engine, batch, &mut || Ok(prompts.next()), &[], &|_| false, &mut |_| Ok(())).await?;
            let c1 = engine.backend.counters();
            let mut timed = requests(gen_tokens + 1);
            let (mut first, mut started, mut t0) = (vec![false; batch], 0, Instant::now());
            let stats = run_batch(engine, batch, &mut || Ok(timed.next()), &[], &|_| false, &mut |event| {
                if let BatchEvent::Token { item, .. } = event
                    && !first[item]
                {
                    first[item] = true;
                    started += 1;
                    if started == batch {
                        t0 = Instant::now();
                    }
                }
                Ok(())
            })
            .await?;
            let decode_s = t0.elapsed().as_secs_f64();
            let c2 = engine.backend.counters();
            engine.reset();
            // Decode steps' work: the timed run less a run of its prompts alone.
            let work = match (c0, c1, c2) {
                (Some(c0), Some(c1), Some(c2)) => Some(c2.since(&c1).since(&c1.since(&c0))),
                _ => None,
            };
            let per_step = work.map(|w| per_step(&w, stats.steps));

            Ok(BatchSpeed {
                batch,
                gen_tokens,
                decode_s,
                aggregate_decode_tokens_per_s: (batch * gen_tokens) as f64 / decode_s,
                per_sequence_decode_tokens_per_s: gen_tokens as f64 / decode_s,
                per_step,
            })
        })
    }

    /// The GuardReasoner prompt of the time-to-verdict test's chat message, its request and
    /// response cut to their token counts under this model's tokenizer.
    pub fn bench_message(&self) -> Result<String> {
        let cut = |text: &str, n: usize| -> Result<String> {
            let ids = self.tokenizer.encode_text(text)?;
            self.tokenizer.decode(&ids[..n.min(ids.len())])
        };
        let request = cut(BENCH_REQUEST, BENCH_REQUEST_TOKENS)?;
        let response = cut(BENCH_RESPONSE, BENCH_RESPONSE_TOKENS)?;
        Ok(crate::guard::guard_prompt(&request, Some(&response)))
    }

    /// Time to verdict on a conversation (its whole GuardReasoner prompt `text`), as a chat page
    /// meets it: the instruction's KV computed once before (a warm-up run), then a verdict-first
    /// run to the first verdict (`FIRST_ANSWER_TOKENS` new tokens), one to all three
    /// (`ANSWER_TOKENS`) and a reasoning run of `TOKENS_TO_VERDICT`, EOS ignored
    /// (a stand-in model's random weights write no verdict: the counts are the real model's),
    /// scores read as in any classification.
    pub async fn verdict_speed_test(&mut self, text: &str) -> Result<VerdictSpeed> {
        let mut run = async |verdict_first: bool, tokens: usize| -> Result<Classification> {
            let mut options = RunOptions::new(tokens);
            options.ignore_eos = true;
            options.verdict_first = verdict_first;
            let result = self.classify(text, &options, &|| false, &mut |_| Ok(())).await?;
            if result.new_tokens != tokens {
                return Err(Error::Prompt(format!(
                    "the time-to-verdict test needs {tokens} new tokens after the prompt of {}; raise the context size",
                    result.prompt_tokens
                )));
            }
            Ok(result)
        };
        run(true, 2).await?;
        let request = run(true, FIRST_ANSWER_TOKENS).await?;
        let first = run(true, ANSWER_TOKENS).await?;
        let reasoning = run(false, TOKENS_TO_VERDICT).await?;
        Ok(VerdictSpeed {
            prompt_tokens: reasoning.prompt_tokens,
            reused_tokens: reasoning.reused_tokens,
            first_verdict_seconds: request.timings.total_seconds,
            verdict_first_seconds: first.timings.total_seconds,
            verdict_first_tokens: first.new_tokens,
            reasoning_seconds: reasoning.timings.total_seconds,
            reasoning_tokens: reasoning.new_tokens,
        })
    }

    /// Prefill speed on `prompt`, then decode speed over `gen_tokens` greedy steps (EOS ignored),
    /// after a short warm-up (pipeline compilation, first allocations). The cache is reset.
    /// `scores`: each step keeps the verdict words' logits, as classifications do.
    pub async fn speed_test(&mut self, prompt: &[u32], gen_tokens: usize, scores: bool) -> Result<SpeedReport> {
        let vocab = on_engine!(&self.engine, e => e.config.vocab_size);
        let words = if scores { VerdictWords::new(&self.tokenizer, vocab)? } else { VerdictWords::default() };
        on_engine!(&mut self.engine, engine => {
            engine.watch(words.ids())?;
            if prompt.is_empty() || prompt.len() + gen_tokens > engine.context_len() {
                return Err(Error::Prompt(format!(
                    "a speed test of {} prompt + {gen_tokens} new tokens does not fit the context of {}; raise the context size",
                    prompt.len(),
                    engine.context_len()
                )));
            }
            let (logits, _) = engine.prefill(&prompt[..prompt.len().min(8)])?;
            engine.backend.argmax(&logits).await?;
            drop(logits);
            engine.reset();
            let t0 = Instant::now();
            let (logits, _) = engine.prefill(prompt)?;
            let mut pipe = Pipeline::new(engine, &logits)?;
            drop(logits);
            pipe.next(engine).await?;
            let prefill_s = t0.elapsed().as_secs_f64();
            let before = engine.backend.counters();
            let t1 = Instant::now();
            for _ in 0..gen_tokens {
                pipe.fill(engine, gen_tokens + 1)?;
                pipe.next(engine).await?;
            }
            let decode_s = t1.elapsed().as_secs_f64();
            let after = engine.backend.counters();
            engine.reset();
            let n = gen_tokens as f64;
            let per_token = before.zip(after).map(|(b, a)| per_step(&a.since(&b), gen_tokens));
            let host_encode_us_per_token = match (before, after) {
                (Some(b), Some(a)) => Some((decode_s * 1e6 - (a.wait_us - b.wait_us) - (a.submit_us - b.submit_us)) / n),
                _ => None,
            };
            Ok(SpeedReport { prompt_tokens: prompt.len(), prefill_s, gen_tokens, decode_s, per_token, host_encode_us_per_token })
        })
    }
}

/// Work counted over `steps` steps, per step.
pub(super) fn per_step(w: &crate::backend::Counters, steps: usize) -> PerToken {
    let n = steps.max(1) as f64;
    PerToken {
        dispatches: w.dispatches as f64 / n,
        compute_passes: w.compute_passes as f64 / n,
        submits: w.submits as f64 / n,
        copies: w.copies as f64 / n,
        readback_copies: w.readback_copies as f64 / n,
        blocking_waits: w.blocking_waits as f64 / n,
        submit_us: w.submit_us / n,
    }
}
