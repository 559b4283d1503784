//! The WebGPU backend (natively on Vulkan; Mesa lavapipe on machines without a GPU) against the
//! naive reference and the CPU backend: the whole model, every weight format, forced splitting.

mod common;

use candle_core::quantized::GgmlDType;
use common::reference::*;
use common::*;
use guardreasoner::backend::Backend;
use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::backend::gpu::{GpuBackend, GpuOptions, GpuQuant, LinearKernel};
use guardreasoner::engine::Engine;
use guardreasoner::generate::{GenerateOptions, Generation, Progress, StopReason, generate};
use guardreasoner::loader::OpenedModel;

/// Same bound as the CPU tests: summation order differs, nothing else should.
const LOGIT_ATOL: f32 = 1e-3;
const LOGIT_RTOL: f32 = 1e-3;
const SEED: u64 = 0x5EED;

fn gpu(quant: GpuQuant, max_binding_bytes: Option<u64>) -> GpuBackend {
    pollster::block_on(GpuBackend::new(GpuOptions { quant, max_binding_bytes, ..GpuOptions::default() }))
        .expect("a Vulkan adapter (install mesa-vulkan-drivers for lavapipe)")
}

fn engine<B: Backend>(opened: OpenedModel, backend: B) -> Engine<B> {
    engine_of(opened, backend, MICRO_CONTEXT)
}

fn engine_of<B: Backend>(opened: OpenedModel, backend: B, context: usize) -> Engine<B> {
    let OpenedModel { mut files, .. } = opened;
    let weights = files.load(&backend, &mut |_, _| {}).unwrap();
    Engine::new(backend, files.config.clone(), weights, context, 1, 0).unwrap()
}

fn logits_of<B: Backend>(e: &mut Engine<B>, ids: &[u32]) -> Vec<f32> {
    e.reset();
    let (logits, _) = e.prefill(ids).unwrap();
    pollster::block_on(e.backend.to_host(&logits)).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: index {i}: got {g}, want {w}");
    }
}

/// Two generations agree: first logits within the float bound, greedy tokens identical.
fn assert_same_generation(got: &Generation, want: &Generation, what: &str) {
    assert_close(
        got.first_logits.as_ref().unwrap(),
        want.first_logits.as_ref().unwrap(),
        LOGIT_ATOL,
        LOGIT_RTOL,
        &format!("{what}: first logits"),
    );
    assert_eq!(got.tokens, want.tokens, "{what}: greedy tokens");
}

fn prompt(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix(seed);
    (0..len).map(|_| rng.below(256) as u32).collect()
}

#[test]
fn gpu_f32_matches_naive_reference() {
    let tensors = micro_tensors(SEED);
    let mut e =
        engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), gpu(GpuQuant::F32, None));
    // 1 token, a partial tile, and several prefill chunks' worth is beyond the micro context;
    // 40 crosses the attention kernel's 64-key blocks only with pos, tested below.
    for len in [1, 7, 40] {
        let ids = prompt(len, len as u64);
        assert_close(
            &logits_of(&mut e, &ids),
            &reference_logits(&tensors, &ids),
            LOGIT_ATOL,
            LOGIT_RTOL,
            &format!("prompt of {len}"),
        );
    }
}

#[test]
fn gpu_decode_steps_match_cpu_with_forced_splitting() {
    let tensors = micro_tensors(SEED);
    let mut cpu =
        engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), CpuBackend::new(None));
    // 4 KiB per binding (one layer's K cache): the 258 x 32 f32 embedding and LM head (33 KiB
    // each) split into 9 parts, with a last part of 2 rows.
    let mut g = engine(
        open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(),
        gpu(GpuQuant::F32, Some(4096)),
    );
    let ids = prompt(6, 4);
    let opts = GenerateOptions { max_new_tokens: 50, stop_ids: vec![], keep_first_logits: true };
    let a = pollster::block_on(generate(&mut cpu, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
    let b = pollster::block_on(generate(&mut g, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
    // 50 steps cross the attention kernel's 64-key blocks.
    assert_same_generation(&b, &a, "forced splitting");
}

/// The tensors as a GGUF of `dtype` holds them: each matrix quantized and dequantized.
fn as_stored(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: GgmlDType) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    use candle_core::{Device, Tensor, quantized::QTensor};
    tensors
        .iter()
        .map(|(name, shape, values)| {
            if shape.len() == 1 {
                return (name.clone(), shape.clone(), values.clone());
            }
            let t = Tensor::from_vec(values.clone(), shape.as_slice(), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, dtype).unwrap();
            let v = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (name.clone(), shape.clone(), v)
        })
        .collect()
}

#[test]
fn gpu_quantized_formats_match_the_reference() {
    let tensors = micro_tensors(SEED);
    let freqs = gguf_rope_freqs();
    let ids = prompt(20, 8);
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        let bytes = micro_gguf(&tensors, dtype, &freqs);
        let want = reference_logits(&as_stored(&tensors, dtype), &ids);
        // The GPU multiplies the file's blocks, dequantized exactly, by f32 activations: the f32
        // bound (measured: about 1e-6 of the logit range), not a percentage.
        let mut g = engine(open_micro_gguf(bytes.clone()).unwrap(), gpu(GpuQuant::F32, None));
        assert_close(&logits_of(&mut g, &ids), &want, LOGIT_ATOL, LOGIT_RTOL, &format!("GPU {dtype:?}"));
        // The CPU rounds activations to 8 bits for its integer products (as llama.cpp does):
        // within 3 % of the logit range.
        let mut cpu = engine(open_micro_gguf(bytes).unwrap(), CpuBackend::new(None));
        let range = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_close(&logits_of(&mut cpu, &ids), &want, 0.03 * range, 0.0, &format!("CPU {dtype:?}"));
    }
}

/// The GPU's on-load quantization, emulated on the host: blocks of 32, 8-bit symmetric
/// (scale amax/127) or 4-bit asymmetric (min + 15 steps), scale and min held as f16 as the GPU
/// holds them. Gains (1-D) stay f32.
fn f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

fn fake_quantize(tensors: &[(String, Vec<usize>, Vec<f32>)], bits: u32) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    tensors
        .iter()
        .map(|(name, shape, values)| {
            if shape.len() == 1 {
                return (name.clone(), shape.clone(), values.clone());
            }
            let mut out = Vec::with_capacity(values.len());
            for block in values.chunks(32) {
                if bits == 8 {
                    let d = f16(block.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0);
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(block.iter().map(|x| d * (x * inv).round().clamp(-127.0, 127.0)));
                } else {
                    let lo = f16(block.iter().fold(f32::INFINITY, |m, x| m.min(*x)));
                    let hi = block.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
                    let d = f16((hi - lo) / 15.0);
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.extend(block.iter().map(|x| d * ((x - lo) * inv).round().clamp(0.0, 15.0) + lo));
                }
            }
            (name.clone(), shape.clone(), out)
        })
        .collect()
}

#[test]
fn gpu_quantize_on_load_matches_the_quantized_reference() {
    let tensors = micro_tensors(SEED);
    let ids = prompt(20, 9);
    for (quant, bits) in [(GpuQuant::Q8, 8), (GpuQuant::Q4, 4)] {
        let mut e = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), gpu(quant, None));
        let want = reference_logits(&fake_quantize(&tensors, bits), &ids);
        assert_close(&logits_of(&mut e, &ids), &want, LOGIT_ATOL, LOGIT_RTOL, &format!("{quant:?}"));
    }
}

#[test]
fn gpu_f16_weights_stay_f16_and_exact() {
    // GGUF F16 weights are stored as packed f16 pairs (no shader-f16 needed) and must give the
    // CPU's f32 result on the same values.
    let tensors = micro_tensors(SEED);
    let bytes = micro_gguf(&tensors, GgmlDType::F16, &gguf_rope_freqs());
    let ids = prompt(20, 12);
    let mut cpu = engine(open_micro_gguf(bytes.clone()).unwrap(), CpuBackend::new(None));
    let mut g = engine(open_micro_gguf(bytes).unwrap(), gpu(GpuQuant::F32, None));
    assert_close(&logits_of(&mut g, &ids), &logits_of(&mut cpu, &ids), LOGIT_ATOL, LOGIT_RTOL, "F16");
}

#[test]
fn gpu_limits_give_clear_errors_not_panics() {
    let tensors = micro_tensors(SEED);
    // A binding smaller than one weight row (32 f32 = 128 bytes) cannot hold the model.
    let tiny = gpu(GpuQuant::F32, Some(64));
    let OpenedModel { mut files, .. } = open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap();
    let err = files.load(&tiny, &mut |_, _| {}).err().expect("a weight row over the binding limit is refused");
    assert!(err.to_string().contains("binding limit"), "{err}");
    // A context whose rope tables and KV cache exceed a binding is refused, not attempted.
    let small = gpu(GpuQuant::F32, Some(4096));
    let OpenedModel { mut files, .. } = open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap();
    let weights = files.load(&small, &mut |_, _| {}).unwrap();
    let mut config = files.config.clone();
    config.max_position_embeddings = 4096;
    let err =
        Engine::new(small, config, weights, 4096, 1, 0).err().expect("a 4096-position cache needs 64 KiB per layer");
    assert!(err.to_string().contains("binding limit"), "{err}");
    // So is a batch whose sequences together exceed it, naming both knobs.
    let small = gpu(GpuQuant::F32, Some(16 << 10));
    let OpenedModel { mut files, .. } = open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap();
    let weights = files.load(&small, &mut |_, _| {}).unwrap();
    let err = Engine::new(small, files.config.clone(), weights, 64, 8, 16).err().expect("8 x 64 positions over 16 KiB");
    assert!(err.to_string().contains("--batch") && err.to_string().contains("--context"), "{err}");
}

/// A micro model whose widths are no whole number of 32-weight blocks (hidden 40, head_dim 10,
/// intermediate 72): every matrix has a partial last block on the GPU.
const ODD_SHAPE: MicroShape = MicroShape { hidden: 40, heads: 4, kv_heads: 2, head_dim: 10, ff: 72 };

#[test]
fn gpu_runs_any_width_as_the_cpu_does() {
    let (config, tensors) = (micro_config_json_shaped(ODD_SHAPE), micro_tensors_shaped(ODD_SHAPE, SEED));
    let open = || open_micro_hf(safetensors_bf16(&tensors), &config).unwrap();
    let mut cpu = engine(open(), CpuBackend::new(None));
    let ids = prompt(6, 5);
    let opts = GenerateOptions { max_new_tokens: 40, stop_ids: vec![], keep_first_logits: true };
    let want = pollster::block_on(generate(&mut cpu, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
    // Whole, and split across bindings (5 KiB, one layer's K cache: the 258 x 40 f32 embedding
    // and LM head in 9 parts each).
    for max_binding in [None, Some(5120)] {
        let mut g = engine(open(), gpu(GpuQuant::F32, max_binding));
        let got = pollster::block_on(generate(&mut g, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
        assert_same_generation(&got, &want, &format!("odd widths, binding limit {max_binding:?}"));
    }
    // Quantized on load: the padded last block is quantized with its row and never summed.
    let mut q8 = engine(open(), gpu(GpuQuant::Q8, None));
    let logits = logits_of(&mut q8, &ids);
    let max = want.first_logits.as_ref().unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(&logits, want.first_logits.as_ref().unwrap(), 0.05 * max, 0.0, "odd widths, q8 on load");
}

/// Generate with `opts`, returning the result and the tokens `on_progress` saw; `cancel_after`
/// cancels once that many tokens were seen.
fn run_seen<B: Backend>(
    e: &mut Engine<B>,
    ids: &[u32],
    opts: &GenerateOptions,
    cancel_after: Option<usize>,
) -> (guardreasoner::error::Result<Generation>, Vec<u32>) {
    let seen = std::cell::RefCell::new(Vec::new());
    let cancelled = || cancel_after.is_some_and(|n| seen.borrow().len() >= n);
    let result = pollster::block_on(generate(e, ids, opts, &cancelled, &mut |p| {
        if let Progress::Token(t) = p {
            seen.borrow_mut().push(t.id);
        }
        Ok(())
    }));
    (result, seen.into_inner())
}

#[test]
fn gpu_decode_ahead_stops_exactly_at_eos_and_keeps_the_cache_true() {
    let tensors = micro_tensors(SEED);
    let open = || open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap();
    let mut g = engine(open(), gpu(GpuQuant::F32, None));
    assert!(g.backend.steps_ahead() >= 1, "the GPU queues steps past the token the host reads");
    let ids = prompt(5, 11);
    let free = GenerateOptions { max_new_tokens: 30, stop_ids: vec![], keep_first_logits: false };
    let all = run_seen(&mut g, &ids, &free, None).0.unwrap().tokens;
    // A stop id that first comes a few tokens in: the steps after it are already queued when
    // the host reads it.
    let (k, eos) = all
        .iter()
        .enumerate()
        .find(|&(i, t)| i >= 4 && !all[..i].contains(t))
        .map(|(i, &t)| (i, t))
        .expect("a token that first appears after the fourth");
    let opts = GenerateOptions { stop_ids: vec![eos], ..free.clone() };
    let (got, seen) = run_seen(&mut g, &ids, &opts, None);
    let got = got.unwrap();
    assert_eq!(got.stop, StopReason::Eos);
    assert_eq!(got.tokens, all[..k], "the output stops exactly at the stop id");
    assert_eq!(seen, all[..k], "no token past the stop id was streamed");
    // The cache holds the prompt and the tokens before the stop, each known: a prompt that
    // continues them reuses exactly those (not the stop id the steps ahead fed) and gives the
    // logits of a fresh run.
    let mut next = ids.clone();
    next.extend_from_slice(&all[..k]);
    next.extend_from_slice(&[eos, 7]);
    let (logits, reused) = g.prefill(&next).unwrap();
    assert_eq!(reused, ids.len() + k, "positions reused after a stop");
    let after_reuse = pollster::block_on(g.backend.to_host(&logits)).unwrap();
    let mut fresh = engine(open(), gpu(GpuQuant::F32, None));
    assert_close(&after_reuse, &logits_of(&mut fresh, &next), LOGIT_ATOL, LOGIT_RTOL, "logits after reuse");

    // Cancelled after 3 tokens: nothing past them is streamed, and the next run is unharmed.
    let (result, seen) = run_seen(&mut g, &ids, &free, Some(3));
    assert!(matches!(result, Err(guardreasoner::error::Error::Cancelled)), "{result:?}");
    assert_eq!(seen, all[..3]);
    assert_eq!(run_seen(&mut g, &ids, &free, None).0.unwrap().tokens, all, "a run after a cancel");
}

fn gpu_with(opts: GpuOptions) -> GpuBackend {
    pollster::block_on(GpuBackend::new(opts)).expect("a Vulkan adapter (install mesa-vulkan-drivers for lavapipe)")
}

/// The fused layer kernels (RMSNorm folded into the products, Q/K/V as one product with rope and
/// the cache append after it, gate/up with SwiGLU, the residual add in the O and down products,
/// the final norm in the LM head) and the primitive ops one by one give the CPU's logits and
/// tokens, with both matrix kernels, whole and split across bindings, at round and odd widths.
#[test]
fn gpu_fused_and_unfused_layers_match_the_cpu() {
    for shape in [MICRO_SHAPE, ODD_SHAPE] {
        let (config, tensors) = (micro_config_json_shaped(shape), micro_tensors_shaped(shape, SEED));
        let open = || open_micro_hf(safetensors_bf16(&tensors), &config).unwrap();
        let mut cpu = engine(open(), CpuBackend::new(None));
        let ids = prompt(9, 6);
        let opts = GenerateOptions { max_new_tokens: 20, stop_ids: vec![], keep_first_logits: true };
        let want = pollster::block_on(generate(&mut cpu, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
        // The cooperative kernel adds its lanes' sums with subgroup shuffles (lavapipe offers
        // subgroups of 8) or in workgroup memory; the row-per-thread kernel adds none.
        let kernels = [
            (LinearKernel::Cooperative, true),
            (LinearKernel::Cooperative, false),
            (LinearKernel::RowPerThread, false),
        ];
        for (linear, subgroups) in kernels {
            for fused in [true, false] {
                // 5 KiB per binding (the odd shape's K cache of a layer) splits the stacked Q/K/V
                // and paired gate/up matrices too.
                for max_binding_bytes in [None, Some(5120)] {
                    let gpu_opts = GpuOptions {
                        quant: GpuQuant::F32,
                        max_binding_bytes,
                        linear,
                        fused,
                        subgroups,
                        ..GpuOptions::default()
                    };
                    let what = format!(
                        "hidden {}: {linear:?}, subgroups {subgroups}, fused {fused}, binding {max_binding_bytes:?}",
                        shape.hidden
                    );
                    let mut g = engine(open(), gpu_with(gpu_opts));
                    assert_eq!(
                        g.backend.subgroup_size().is_some(),
                        subgroups,
                        "{what}: subgroups in use (lavapipe offers them)"
                    );
                    let got = pollster::block_on(generate(&mut g, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
                    assert_same_generation(&got, &want, &what);
                }
            }
        }
    }
}

/// One decode step, counted: one compute pass, one submit, no copies but the token's readback,
/// and at most 8 dispatches per layer plus the embedding, the LM head and argmax.
#[test]
fn gpu_decode_step_is_one_pass_of_few_dispatches() {
    let tensors = micro_tensors(SEED);
    let mut g =
        engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), gpu(GpuQuant::Q8, None));
    let (logits, _) = g.prefill(&prompt(5, 3)).unwrap();
    let first = g.backend.choose(&logits, &[]).unwrap().remove(0);
    drop(logits);
    pollster::block_on(g.backend.read_token(&first)).unwrap();
    let before = g.backend.counters().unwrap();
    let logits = g.step_token(&first, None).unwrap();
    let next = g.backend.choose(&logits, &[]).unwrap().remove(0);
    let after = g.backend.counters().unwrap();
    pollster::block_on(g.backend.read_token(&next)).unwrap();
    let dispatches = after.dispatches - before.dispatches;
    assert!(dispatches <= 8 * MICRO_LAYERS as u64 + 4, "{dispatches} dispatches in a decode step");
    assert_eq!(after.compute_passes - before.compute_passes, 1, "compute passes in a decode step");
    assert_eq!(after.submits - before.submits, 1, "submits in a decode step");
    assert_eq!(after.copies - before.copies, 0, "buffer copies in a decode step");
    assert_eq!(after.readback_copies - before.readback_copies, 1, "token readbacks in a decode step");
}

/// Debug mode runs each op on its own and keeps its output under its name: a prefill leaves the
/// embedding, four fused ops per layer and the logits, in order, with the values the ops made.
#[test]
fn gpu_debug_mode_keeps_each_op_output_by_name() {
    let tensors = micro_tensors(SEED);
    let debug = GpuOptions { quant: GpuQuant::F32, debug: true, ..GpuOptions::default() };
    let mut g = engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), gpu_with(debug));
    let ids = prompt(6, 2);
    let (logits, _) = g.prefill(&ids).unwrap();
    let logits = pollster::block_on(g.backend.to_host(&logits)).unwrap();
    let trace = g.backend.take_trace();
    let names: Vec<&str> = trace.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = vec!["embed"];
    for _ in 0..MICRO_LAYERS {
        want.extend(["self_attention", "linear_residual", "norm_swiglu", "linear_residual"]);
    }
    want.push("logits");
    assert_eq!(names, want, "ops in order");
    assert_eq!(trace.last().unwrap().1, logits, "the last op's output is the logits");
    let (_, _, table) = tensors.iter().find(|(n, _, _)| n == "model.embed_tokens.weight").unwrap();
    let rows: Vec<f32> =
        ids.iter().flat_map(|&i| table[i as usize * MICRO_HIDDEN..(i as usize + 1) * MICRO_HIDDEN].to_vec()).collect();
    // The file holds bf16: within its rounding.
    assert_close(&trace[0].1, &rows, 0.0, 1.0 / 128.0, "the embedding's output");
}

/// A device lost mid-run (a driver reset; here `device.destroy()`) ends the run with the
/// device-lost error, not a panic or a hang, and so does every later run.
#[test]
fn gpu_device_lost_mid_run_is_an_error() {
    let tensors = micro_tensors(SEED);
    let mut g =
        engine(open_micro_hf(safetensors_bf16(&tensors), &micro_config_json()).unwrap(), gpu(GpuQuant::F32, None));
    let destroy = g.backend.device_destroyer();
    let ids = prompt(5, 3);
    let opts = GenerateOptions { max_new_tokens: 20, stop_ids: vec![], keep_first_logits: false };
    let seen = std::cell::Cell::new(0);
    let result = pollster::block_on(generate(&mut g, &ids, &opts, &|| false, &mut |p| {
        if let Progress::Token(_) = p {
            seen.set(seen.get() + 1);
            if seen.get() == 3 {
                destroy();
            }
        }
        Ok(())
    }));
    let err = result.expect_err("the run fails once the device is gone");
    assert!(matches!(err, guardreasoner::error::Error::GpuLost(_)), "{err}");
    assert!(err.to_string().starts_with(guardreasoner::error::GPU_LOST_PREFIX), "{err}");
    assert!(seen.get() < 20, "the run stopped at the loss ({} tokens)", seen.get());
    let again = run_seen(&mut g, &ids, &opts, None).0.expect_err("a later run fails too");
    assert!(matches!(again, guardreasoner::error::Error::GpuLost(_)), "{again}");
}

/// With `shader-f16` (lavapipe offers it) the cooperative kernel multiplies block-format and f16
/// weights in f16, four products at a time, and adds those sums in f32: the logits move from the
/// f32 kernel's by the rounding of those short f16 dot products, and no further; the greedy
/// tokens stay the f32 kernel's. Every block format, f16 weights, and an odd width (its last
/// block runs in f32).
#[test]
fn gpu_f16_math_stays_within_f16_rounding() {
    let tensors = micro_tensors(SEED);
    let freqs = gguf_rope_freqs();
    let (odd_config, odd_tensors) = (micro_config_json_shaped(ODD_SHAPE), micro_tensors_shaped(ODD_SHAPE, SEED));
    type Open = Box<dyn Fn() -> OpenedModel>;
    let mut models: Vec<(String, Open, GpuQuant)> = Vec::new();
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::F16] {
        let bytes = micro_gguf(&tensors, dtype, &freqs);
        models.push((
            format!("GGUF {dtype:?}"),
            Box::new(move || open_micro_gguf(bytes.clone()).unwrap()),
            GpuQuant::F32,
        ));
    }
    for quant in [GpuQuant::Q8, GpuQuant::Q4] {
        let (bytes, config) = (safetensors_bf16(&odd_tensors), odd_config.clone());
        models.push((
            format!("odd widths, {quant:?} on load"),
            Box::new(move || open_micro_hf(bytes.clone(), &config).unwrap()),
            quant,
        ));
    }
    let ids = prompt(12, 13);
    let opts = GenerateOptions { max_new_tokens: 16, stop_ids: vec![], keep_first_logits: true };
    for (what, open, quant) in &models {
        let run = |f16: bool| {
            let gpu_opts =
                GpuOptions { quant: *quant, linear: LinearKernel::Cooperative, f16, ..GpuOptions::default() };
            let mut g = engine(open(), gpu_with(gpu_opts));
            assert_eq!(g.backend.f16_math(), f16, "{what}: f16 math in use (lavapipe offers shader-f16)");
            pollster::block_on(generate(&mut g, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap()
        };
        let (exact, half) = (run(false), run(true));
        let (want, got) = (exact.first_logits.as_ref().unwrap(), half.first_logits.as_ref().unwrap());
        let range = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        // Weights and activations each rounded once to f16 (unit roundoff 2^-11, about 5e-4),
        // the four products and their sum rounded in f16, through two layers and the LM head:
        // measured 1.1e-3 to 3.0e-3 of the logit range; a wrong scale, offset or element order
        // moves logits by tens of percent.
        assert!(worst <= 1e-2 * range, "{what}: f16 logits {worst} from the f32 kernel's (range {range})");
        assert!(got != want, "{what}: the f16 kernel gave the f32 kernel's logits bit for bit");
        assert_eq!(half.tokens, exact.tokens, "{what}: greedy tokens");
    }
}

/// With subgroups, attention takes each 64-key block's largest score with subgroupMax and one
/// exchange instead of every thread reading all 64: a maximum does not round, so the logits are
/// the workgroup kernel's bit for bit, in prompt chunks and in split decode attention. The
/// row-per-thread matrix kernel (which never uses subgroups) keeps attention the only difference.
#[test]
fn gpu_subgroup_attention_equals_the_workgroup_one_bit_for_bit() {
    let tensors = micro_tensors(SEED);
    let mut config = micro_config_json();
    config["max_position_embeddings"] = 128.into();
    let ids = prompt(70, 14);
    let opts = GenerateOptions { max_new_tokens: 30, stop_ids: vec![], keep_first_logits: true };
    let run = |subgroups: bool| {
        let gpu_opts =
            GpuOptions { quant: GpuQuant::F32, linear: LinearKernel::RowPerThread, subgroups, ..GpuOptions::default() };
        let open = open_micro_hf(safetensors_bf16(&tensors), &config).unwrap();
        let mut g = engine_of(open, gpu_with(gpu_opts), 128);
        assert_eq!(g.backend.subgroup_size().is_some(), subgroups, "subgroups in use (lavapipe offers them)");
        let first = pollster::block_on(generate(&mut g, &ids, &opts, &|| false, &mut |_| Ok(()))).unwrap();
        // Decode logits after 100 positions: the last step attends over two 64-key blocks.
        let mut all = ids.clone();
        all.extend(&first.tokens);
        (first, logits_of(&mut g, &all))
    };
    let ((sub, sub_last), (wg, wg_last)) = (run(true), run(false));
    assert_eq!(sub.first_logits, wg.first_logits, "prompt logits");
    assert_eq!(sub.tokens, wg.tokens, "greedy tokens");
    assert_eq!(sub_last, wg_last, "logits after 100 positions");
}
