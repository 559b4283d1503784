//! The CPU engine on a micro Llama model the test writes itself: against a naive f32 reference
//! written from the HF modeling code, across formats (safetensors vs GGUF with llama.cpp's Q/K
//! permutation and rope_freqs), chunked prefill vs token-by-token, and prefix reuse.

mod common;

use candle_core::quantized::GgmlDType;
use common::reference::*;
use common::*;
use guardreasoner::backend::Backend;
use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::engine::Engine;
use guardreasoner::generate::{GenerateOptions, generate};
use guardreasoner::loader::OpenedModel;

/// f32 sums in a different order (candle's gemm vs the naive loops) differ by a few ulps per
/// dot product; logits here are O(10), so 1e-3 absolute + relative is far above that noise and
/// far below any real error (a wrong rope or mask moves logits by O(1)).
const LOGIT_ATOL: f32 = 1e-3;
const LOGIT_RTOL: f32 = 1e-3;
const SEED: u64 = 0x5EED;

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= LOGIT_ATOL + LOGIT_RTOL * w.abs(), "{what}: index {i}: got {g}, want {w}");
    }
}

fn engine(opened: OpenedModel, quant: Option<GgmlDType>) -> Engine<CpuBackend> {
    let OpenedModel { mut files, .. } = opened;
    let backend = CpuBackend::new(quant);
    let weights = files.load(&backend, &mut |_, _| {}).unwrap();
    Engine::new(backend, files.config.clone(), weights, MICRO_CONTEXT, 1, 0).unwrap()
}

fn prompt(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix(seed);
    (0..len).map(|_| rng.below(256) as u32).collect()
}

fn logits_of(e: &mut Engine<CpuBackend>, ids: &[u32]) -> Vec<f32> {
    e.reset();
    let (logits, _) = e.prefill(ids).unwrap();
    pollster::block_on(e.backend.to_host(&logits)).unwrap()
}

#[test]
fn hf_folder_matches_naive_reference() {
    let tensors = micro_tensors(SEED);
    let mut e = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), None);
    for len in [1, 7, 40] {
        let ids = prompt(len, len as u64);
        assert_close(&logits_of(&mut e, &ids), &reference_logits(&tensors, &ids), &format!("prompt of {len}"));
    }
}

#[test]
fn gguf_with_permuted_qk_and_rope_freqs_matches_hf() {
    let tensors = micro_tensors(SEED);
    let mut hf = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), None);
    for dtype in [GgmlDType::F32, GgmlDType::F16] {
        let mut gguf = engine(open_micro_gguf(micro_gguf(&tensors, dtype, &gguf_rope_freqs())).unwrap(), None);
        let ids = prompt(30, 3);
        assert_close(&logits_of(&mut gguf, &ids), &logits_of(&mut hf, &ids), &format!("GGUF {dtype:?} vs HF"));
    }
}

#[test]
fn chunked_prefill_equals_token_by_token() {
    let tensors = micro_tensors(SEED);
    let mut e = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), None);
    let ids = prompt(50, 9);
    let whole = logits_of(&mut e, &ids);
    e.reset();
    let (mut logits, _) = e.prefill(&ids[..1]).unwrap();
    for &id in &ids[1..] {
        logits = e.step(id).unwrap();
    }
    assert_close(&pollster::block_on(e.backend.to_host(&logits)).unwrap(), &whole, "token by token");
}

#[test]
fn prefix_reuse_gives_the_same_logits_as_a_fresh_cache() {
    let tensors = micro_tensors(SEED);
    let mut e = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), None);
    let shared = prompt(20, 1);
    let mut a = shared.clone();
    a.extend(prompt(10, 2));
    let mut b = shared.clone();
    b.extend(prompt(12, 3));
    let fresh_b = logits_of(&mut e, &b);
    e.reset();
    e.prefill(&a).unwrap();
    let (logits, reused) = e.prefill(&b).unwrap();
    assert_eq!(reused, shared.len(), "the shared prefix is reused");
    assert_close(&pollster::block_on(e.backend.to_host(&logits)).unwrap(), &fresh_b, "after reuse");
    // The same prompt twice reuses all but its last token.
    let (_, reused) = e.prefill(&b).unwrap();
    assert_eq!(reused, b.len() - 1);
}

/// A cancel raised while a long prompt is read stops it between chunks; what ran stays cached
/// and is reused, and the answer is the same as an uninterrupted prefill's.
#[test]
fn prefill_stops_between_chunks_when_cancelled() {
    use guardreasoner::engine::PREFILL_CHUNK;
    use std::cell::Cell;
    let tensors = micro_tensors(SEED);
    let context = PREFILL_CHUNK * 3;
    let mut config = micro_config_json();
    config["max_position_embeddings"] = serde_json::json!(context);
    let OpenedModel { mut files, .. } = open_micro_hf(safetensors_bf16(&tensors), &config).unwrap();
    let backend = CpuBackend::new(None);
    let weights = files.load(&backend, &mut |_, _| {}).unwrap();
    let mut e = Engine::new(backend, files.config.clone(), weights, context, 1, 0).unwrap();
    let ids = prompt(PREFILL_CHUNK * 2 + 5, 21);
    let whole = logits_of(&mut e, &ids);
    e.reset();
    let polls = Cell::new(0);
    let cancel_on_second = || {
        polls.set(polls.get() + 1);
        polls.get() >= 2
    };
    let Err(err) = e.prefill_unless(&ids, &cancel_on_second) else { panic!("the prefill was not cancelled") };
    assert!(matches!(err, guardreasoner::Error::Cancelled), "{err}");
    assert_eq!(e.position_in(0), PREFILL_CHUNK, "one chunk ran before the cancel");
    let (logits, reused) = e.prefill(&ids).unwrap();
    assert_eq!(reused, PREFILL_CHUNK);
    assert_close(&pollster::block_on(e.backend.to_host(&logits)).unwrap(), &whole, "after a cancelled prefill");
    // A cancel before the first chunk runs nothing.
    e.reset();
    assert!(matches!(e.prefill_unless(&ids, &|| true), Err(guardreasoner::Error::Cancelled)));
    assert_eq!(e.position_in(0), 0);
}

#[test]
fn greedy_generation_is_argmax_of_reference_and_stops_at_eos() {
    let tensors = micro_tensors(SEED);
    let mut e = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), None);
    let mut ids = prompt(5, 11);
    let opts = GenerateOptions { max_new_tokens: 8, stop_ids: vec![], keep_first_logits: true };
    let out = pollster::block_on(generate(&mut e, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
    assert_eq!(out.tokens.len(), 8);
    for &t in &out.tokens {
        let reference = reference_logits(&tensors, &ids);
        let best = reference.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        assert_eq!(t, best, "greedy token after {} ids", ids.len());
        ids.push(t);
    }
    // Make the third token a stop id: generation ends before it.
    let opts = GenerateOptions { max_new_tokens: 8, stop_ids: vec![out.tokens[2]], keep_first_logits: false };
    let stopped = pollster::block_on(generate(&mut e, &ids[..5], &opts, &|| false, &mut |_| Ok(()))).unwrap();
    let first_stop = out.tokens.iter().position(|t| *t == out.tokens[2]).unwrap();
    assert_eq!(stopped.tokens, out.tokens[..first_stop]);
    assert_eq!(stopped.stop, guardreasoner::generate::StopReason::Eos);
}

#[test]
fn cancellation_stops_within_one_token() {
    let tensors = micro_tensors(SEED);
    let mut e = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), None);
    let seen = std::cell::Cell::new(0);
    let opts = GenerateOptions { max_new_tokens: 20, stop_ids: vec![], keep_first_logits: false };
    let r = pollster::block_on(generate(&mut e, &prompt(4, 1), &opts, &|| seen.get() >= 3, &mut |p| {
        if let guardreasoner::generate::Progress::Token(_) = p {
            seen.set(seen.get() + 1);
        }
        Ok(())
    }));
    assert!(matches!(r, Err(guardreasoner::Error::Cancelled)), "got {:?}", r.map(|g| g.tokens));
    assert_eq!(seen.get(), 3, "no token after the cancel");
    // The engine is still usable afterwards.
    assert!(e.prefill(&prompt(4, 2)).is_ok());
}

#[test]
fn quantized_on_load_stays_close() {
    let tensors = micro_tensors(SEED);
    let mut f32e = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), None);
    let mut q8 =
        engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), Some(GgmlDType::Q8_0));
    let ids = prompt(20, 5);
    let (a, b) = (logits_of(&mut f32e, &ids), logits_of(&mut q8, &ids));
    let max_abs = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    // Q8_0 keeps ~8 bits per weight: errors of a few percent of the logit range at most.
    assert!(err < 0.05 * max_abs, "q8_0 error {err} vs logit range {max_abs}");
}

/// Continuous batching on the micro model: one long answer among short ones. Each request's
/// tokens must be what it gets alone, at batch 1 and 3, in any slot; the short ones' slots must be
/// refilled while the long one is still decoding, and it must finish last.
fn scheduler_refills_slots_and_matches_one_at_a_time<B: Backend>(make: impl Fn() -> B) {
    use guardreasoner::batch::{BatchEvent, Request, run_batch};
    use guardreasoner::generate::StopReason;
    let tensors = micro_tensors(SEED);
    let run = |batch: usize, cancel: Option<usize>| {
        let OpenedModel { mut files, .. } = open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap();
        let backend = make();
        let weights = files.load(&backend, &mut |_, _| {}).unwrap();
        let mut e = Engine::new(backend, files.config.clone(), weights, MICRO_CONTEXT, batch, 16).unwrap();
        // A shared prefix of 6 tokens that every prompt starts with.
        let shared = prompt(6, 99);
        e.share_prefix(&shared).unwrap();
        let mut requests = (0..7usize).map(|i| {
            let mut ids = shared.clone();
            ids.extend(prompt(3 + 2 * i, i as u64));
            (i, Request { ids, max_new_tokens: if i == 0 { 30 } else { 2 + i % 3 } })
        });
        let mut tokens = vec![Vec::new(); 7];
        let mut order = Vec::new();
        let mut reused = vec![0; 7];
        let stats = pollster::block_on(run_batch(
            &mut e,
            batch,
            &mut || Ok(requests.next()),
            &[],
            &|item| Some(item) == cancel,
            &mut |event| {
                match event {
                    BatchEvent::Token { item, chosen } => tokens[item].push(chosen.id),
                    BatchEvent::Finished { item, stop, .. } => {
                        assert_eq!(stop == StopReason::Cancelled, Some(item) == cancel, "item {item}: {stop:?}");
                        order.push(item)
                    }
                    BatchEvent::Started { item, reused_tokens, .. } => reused[item] = reused_tokens,
                    BatchEvent::Failed { error, .. } => panic!("{error}"),
                }
                Ok(())
            },
        ))
        .unwrap();
        (tokens, order, reused, stats)
    };
    let (alone, _, reused, _) = run(1, None);
    assert!(reused.iter().all(|&r| r == 6), "every prompt starts from the 6 shared tokens: {reused:?}");
    let (together, order, _, stats) = run(3, None);
    assert_eq!(together, alone, "batch of 3 vs one at a time");
    assert_eq!(together[0].len(), 30);
    assert!(stats.refills >= 3, "slots refilled while the long answer ran: {stats:?}");
    assert_eq!(order.last(), Some(&0), "the long answer finishes last: {order:?}");
    assert_eq!(stats.most_in_flight, 3);
    // Cancelling one request ends it alone: the others' tokens do not change.
    let (cancelled, order, _, _) = run(3, Some(2));
    assert!(cancelled[2].is_empty() && order.contains(&2), "{:?}", cancelled[2]);
    for i in (0..7).filter(|&i| i != 2) {
        assert_eq!(cancelled[i], alone[i], "request {i} beside a cancelled one");
    }
}

#[test]
fn cpu_scheduler_refills_slots_and_matches_one_at_a_time() {
    scheduler_refills_slots_and_matches_one_at_a_time(|| CpuBackend::new(None));
}

/// A GPU backend (lavapipe without a GPU) whose batches reach 64 rows.
fn gpu() -> guardreasoner::backend::gpu::GpuBackend {
    use guardreasoner::backend::gpu::{GpuBackend, GpuOptions};
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: set before any thread reads the environment for Vulkan.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    pollster::block_on(GpuBackend::new(GpuOptions { max_rows: 64, ..GpuOptions::default() })).unwrap()
}

#[test]
fn gpu_scheduler_refills_slots_and_matches_one_at_a_time() {
    scheduler_refills_slots_and_matches_one_at_a_time(gpu);
}

/// Scores read the verdict words' logits beside each chosen token (`Engine::watch`): the values
/// read back must be the logits at those ids, bit for bit, for a prompt's token and for every row
/// of a batched step, and a choice without watched ids reads none.
fn watched_logits_are_the_logits_at_the_watched_ids<B: Backend>(make: impl Fn() -> B) {
    let tensors = micro_tensors(SEED);
    let OpenedModel { mut files, .. } = open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap();
    let backend = make();
    let weights = files.load(&backend, &mut |_, _| {}).unwrap();
    let mut e = Engine::new(backend, files.config.clone(), weights, MICRO_CONTEXT, 2, 0).unwrap();
    // Ids out of order, the first and the last of the vocabulary among them.
    let last = files.config.vocab_size as u32 - 1;
    let watch = [200u32, 0, 17, last, 3];
    e.watch(&watch).unwrap();
    let at = |row: &[f32]| -> Vec<f32> { watch.iter().map(|&id| row[id as usize]).collect() };
    let mut firsts = Vec::new();
    for slot in 0..2 {
        let (logits, _) = e.start(slot, &prompt(5 + slot, slot as u64)).unwrap();
        let full = pollster::block_on(e.backend.to_host(&logits)).unwrap();
        let token = e.choose(&logits).unwrap().remove(0);
        let chosen = pollster::block_on(e.backend.read_token(&token)).unwrap();
        assert_eq!(chosen.watched, at(&full), "slot {slot}: the prompt's watched logits");
        assert_eq!(Some(chosen.id), guardreasoner::backend::cpu::argmax_first(&full));
        firsts.push((slot, token, Some(chosen.id)));
    }
    let logits = e.step_many(&firsts).unwrap();
    let full = pollster::block_on(e.backend.to_host(&logits)).unwrap();
    let vocab = full.len() / 2;
    for (row, token) in e.choose(&logits).unwrap().iter().enumerate() {
        let chosen = pollster::block_on(e.backend.read_token(token)).unwrap();
        assert_eq!(chosen.watched, at(&full[row * vocab..(row + 1) * vocab]), "row {row} of a batched step");
    }
    e.watch(&[]).unwrap();
    let logits = e.step_many(&[(0, e.choose(&logits).unwrap().remove(0), None)]).unwrap();
    let token = e.choose(&logits).unwrap().remove(0);
    assert!(pollster::block_on(e.backend.read_token(&token)).unwrap().watched.is_empty());
    let vocab = e.config.vocab_size as u32;
    assert!(e.watch(&[vocab]).is_err(), "an id outside the vocabulary is refused");
}

#[test]
fn cpu_watched_logits_are_the_logits_at_the_watched_ids() {
    watched_logits_are_the_logits_at_the_watched_ids(|| CpuBackend::new(None));
}

#[test]
fn gpu_watched_logits_are_the_logits_at_the_watched_ids() {
    watched_logits_are_the_logits_at_the_watched_ids(gpu);
}
