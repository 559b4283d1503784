//! Every backend op against a naive reference on seeded inputs at awkward sizes (rows not a
//! multiple of the workgroup's 8, token counts not a multiple of the 4-token tile, more keys
//! than one 64-key attention block), the same test body on the CPU and the GPU backends.

mod common;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::SplitMix;
use guardreasoner::backend::cpu::CpuBackend;
use guardreasoner::backend::cpu_blocks;
use guardreasoner::backend::gpu::{GpuBackend, GpuOptions, GpuQuant, LinearKernel};
use guardreasoner::backend::{Backend, Span};
use guardreasoner::config::LlamaConfig;
use guardreasoner::format::{HostTensor, StorageType};

/// f32 sums in another order: a few ulps of the row's magnitude.
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| rng.next_f32()).collect()
}

fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: index {i}: got {g}, want {w}");
    }
}

fn host<B: Backend>(b: &B, x: &B::Act) -> Vec<f32> {
    pollster::block_on(b.to_host(x)).unwrap()
}

/// A weight in a given storage type, and the exact values it stands for.
fn weight(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> (HostTensor, Vec<f32>) {
    let values = random(rows * cols, seed);
    let t = Tensor::from_vec(values.clone(), (rows, cols), &Device::Cpu).unwrap();
    if dtype == GgmlDType::F32 {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        return (HostTensor { name: "w".into(), storage: StorageType::F32, shape: vec![rows, cols], bytes }, values);
    }
    let q = QTensor::quantize(&t, dtype).unwrap();
    let exact = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (
        HostTensor {
            name: "w".into(),
            storage: StorageType::Ggml(dtype),
            shape: vec![rows, cols],
            bytes: q.data().unwrap().to_vec(),
        },
        exact,
    )
}

fn naive_linear(x: &[f32], w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let seq = x.len() / cols;
    (0..seq)
        .flat_map(|t| {
            (0..rows)
                .map(move |r| (0..cols).map(|c| x[t * cols + c] as f64 * w[r * cols + c] as f64).sum::<f64>() as f32)
        })
        .collect()
}

/// How exactly a backend computes products with each weight type.
#[derive(Clone, Copy)]
enum Exactness {
    /// Exact dequantized weights, f32 activations.
    Exact,
    /// Exact dequantized weights, activations rounded to 8 bits per block of 32 as llama.cpp
    /// rounds them (`q8_activations`): equal to that up to f32 summation order, and within
    /// `ACT8` of the largest output from the f32 product.
    Q8Activations,
    /// Within this fraction of the largest output (activation quantization or re-quantization).
    Approximate(f32),
}

/// What 8-bit activations may move a product by, as a fraction of the largest output.
const ACT8: f32 = 0.02;
/// The GPU's f16 math against the exact product, as a fraction of the largest output: about
/// three f16 roundings (unit 2^-11) of each four-term sum, measured below 1e-3.
const F16_MATH: f32 = 0.003;

/// Activations as the CPU's integer kernels see them: per block of 32, `q = round_ties_even(x *
/// 127 / amax)` times the scale `amax / 127` rounded to f16 (llama.cpp's `quantize_row_q8_0`).
fn q8_activations(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let d = half::f16::from_f32(amax / 127.0).to_f32();
            b.iter().map(move |v| (v * id).round_ties_even() * d).collect::<Vec<_>>()
        })
        .collect()
}

/// The CPU: Q8_0, Q4_0 and Q4_1 through the integer kernels; Q4_K and Q6_K through candle, which
/// rounds activations to 8 bits its own way.
fn cpu_exactness(d: GgmlDType) -> Exactness {
    match d {
        GgmlDType::Q4K | GgmlDType::Q6K => Exactness::Approximate(0.02),
        GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1 => Exactness::Q8Activations,
        _ => Exactness::Exact,
    }
}

fn check_linear<B: Backend>(b: &B, label: &str, exactness: impl Fn(GgmlDType) -> Exactness) {
    // Block types at 96 and 320 columns: 3 and 10 blocks of 32, so kernels that take blocks in
    // pairs or fours meet both their whole groups and a short last one (a 320-wide f32 row would
    // not fit the split tests' 1 KiB bindings).
    let cases = [GgmlDType::F32, GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q6K]
        .into_iter()
        .flat_map(|d| match d {
            GgmlDType::Q4K | GgmlDType::Q6K => vec![(d, 512)],
            GgmlDType::F32 => vec![(d, 96)],
            _ => vec![(d, 96), (d, 320)],
        });
    for (dtype, cols) in cases {
        let rows = 37;
        let (host_w, exact) = weight(dtype, rows, cols, 7);
        let w = b.matrix(host_w).unwrap();
        for seq in [1, 5, 7, 13] {
            let xs = random(seq * cols, seq as u64);
            let x = b.activation_from(&xs, seq, cols).unwrap();
            let got = host(b, &b.linear(&x, &w).unwrap());
            let want = naive_linear(&xs, &exact, rows, cols);
            let what = format!("{label}: linear {dtype:?} ({rows}x{cols}) x {seq} tokens");
            match exactness(dtype) {
                Exactness::Exact => assert_close(&got, &want, ATOL * cols as f32, RTOL, &what),
                Exactness::Q8Activations => {
                    let exact_q8 = naive_linear(&q8_activations(&xs), &exact, rows, cols);
                    assert_close(&got, &exact_q8, ATOL * cols as f32, RTOL, &format!("{what}, 8-bit activations"));
                    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert_close(&got, &want, ACT8 * max, 0.0, &format!("{what}, against f32 activations"));
                }
                Exactness::Approximate(f) => {
                    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert_close(&got, &want, f * max, 0.0, &what)
                }
            }
        }
    }
}

/// A matrix product's rows are each token's own: a token's outputs are the same, bit for bit,
/// computed alone or among others, wherever the tiles of several tokens cut (batch invariance,
/// and prefill equal to decode). 203 rows: many groups of eight rows and a short last one, split
/// into several parallel panels.
fn check_linear_tokens_alone<B: Backend>(b: &B, label: &str) {
    let (rows, cols, seq) = (203, 320, 13);
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        let (host_w, exact) = weight(dtype, rows, cols, 8);
        let w = b.matrix(host_w).unwrap();
        let xs = random(seq * cols, 30);
        let all = host(b, &b.linear(&b.activation_from(&xs, seq, cols).unwrap(), &w).unwrap());
        for t in 0..seq {
            let x = b.activation_from(&xs[t * cols..(t + 1) * cols], 1, cols).unwrap();
            let alone = host(b, &b.linear(&x, &w).unwrap());
            assert_eq!(all[t * rows..(t + 1) * rows], alone[..], "{label}: {dtype:?} token {t} of {seq} vs alone");
        }
        let want = naive_linear(&q8_activations(&xs), &exact, rows, cols);
        assert_close(
            &all,
            &want,
            ATOL * cols as f32,
            RTOL,
            &format!("{label}: {dtype:?} {rows}x{cols} x {seq} tokens"),
        );
    }
}

/// Widths that are not whole blocks of 32 (and not even multiples of 4), for float weights in
/// each float storage type, and an embedding table of such a width.
const ODD_WIDTHS: [usize; 5] = [7, 40, 83, 100, 131];

/// A float weight stored as `storage` (F32, F16 or BF16), and the exact values it stands for.
fn float_weight(storage: StorageType, rows: usize, cols: usize, seed: u64) -> (HostTensor, Vec<f32>) {
    let values = random(rows * cols, seed);
    let (bytes, exact): (Vec<u8>, Vec<f32>) = match storage {
        StorageType::F16 => {
            let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        StorageType::BF16 => {
            let h: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        _ => (values.iter().flat_map(|v| v.to_le_bytes()).collect(), values),
    };
    (HostTensor { name: "w".into(), storage, shape: vec![rows, cols], bytes }, exact)
}

fn check_any_width<B: Backend>(b: &B, label: &str) {
    for storage in [StorageType::F32, StorageType::F16, StorageType::BF16] {
        for cols in ODD_WIDTHS {
            let rows = 37;
            let (host_w, exact) = float_weight(storage, rows, cols, cols as u64);
            let w = b.matrix(host_w).unwrap();
            for seq in [1, 5] {
                let xs = random(seq * cols, 100 + seq as u64);
                let x = b.activation_from(&xs, seq, cols).unwrap();
                let got = host(b, &b.linear(&x, &w).unwrap());
                let want = naive_linear(&xs, &exact, rows, cols);
                assert_close(
                    &got,
                    &want,
                    ATOL * cols as f32,
                    RTOL,
                    &format!("{label}: linear {storage:?} ({rows}x{cols}) x {seq} tokens"),
                );
            }
        }
    }
    let (rows, cols) = (300, 42);
    let (table, exact) = float_weight(StorageType::BF16, rows, cols, 22);
    let table = b.embedding(table).unwrap();
    let ids = [0u32, 299, 17, 150];
    let got = host(b, &b.embed(&table, &ids).unwrap());
    let want: Vec<f32> = ids.iter().flat_map(|&i| exact[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect();
    assert_close(&got, &want, ATOL, RTOL, &format!("{label}: embed of width {cols}"));
}

fn check_elementwise<B: Backend>(b: &B, label: &str) {
    let (seq, width) = (7, 37 * 3);
    let (a, c) = (random(seq * width, 1), random(seq * width, 2));
    let (xa, xc) = (b.activation_from(&a, seq, width).unwrap(), b.activation_from(&c, seq, width).unwrap());
    let sum: Vec<f32> = a.iter().zip(&c).map(|(x, y)| x + y).collect();
    assert_close(&host(b, &b.add(&xa, &xc).unwrap()), &sum, ATOL, RTOL, &format!("{label}: add"));
    let swiglu: Vec<f32> = a.iter().zip(&c).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
    assert_close(&host(b, &b.swiglu(&xa, &xc).unwrap()), &swiglu, ATOL, RTOL, &format!("{label}: swiglu"));
    let last = host(b, &b.last_rows(&xa, &b.rows(&[Span { base: 0, pos: 0, len: seq }]).unwrap()).unwrap());
    assert_eq!(last, a[(seq - 1) * width..], "{label}: last_rows");
}

fn check_rms_norm<B: Backend>(b: &B, label: &str) {
    let (seq, width) = (3, 300);
    let x = random(seq * width, 3);
    let g = random(width, 4);
    let gain = b
        .vector(HostTensor {
            name: "g".into(),
            storage: StorageType::F32,
            shape: vec![width],
            bytes: g.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .unwrap();
    let got = host(b, &b.rms_norm(&b.activation_from(&x, seq, width).unwrap(), &gain, 1e-5).unwrap());
    let want: Vec<f32> = x
        .chunks(width)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / width as f32 + 1e-5).sqrt();
            row.iter().zip(&g).map(move |(v, g)| v * inv * g).collect::<Vec<_>>()
        })
        .collect();
    assert_close(&got, &want, ATOL, RTOL, &format!("{label}: rms_norm"));
}

fn check_rope<B: Backend>(b: &B, label: &str) {
    let (seq, heads, head_dim, pos) = (5, 3, 8, 7);
    let inv_freq: Vec<f32> = (0..head_dim / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32)).collect();
    let table = b.rope_table(&inv_freq, 32).unwrap();
    let x = random(seq * heads * head_dim, 5);
    let x_act = b.activation_from(&x, seq, heads * head_dim).unwrap();
    let got = host(b, &b.rope(&x_act, &table, heads, &b.rows(&[Span { base: 64, pos, len: seq }]).unwrap()).unwrap());
    // The same rows as a decode batch: each its own sequence, at its own position.
    let positions = [9, 3, 0, 20, 9];
    let spans: Vec<Span> = positions.iter().enumerate().map(|(i, &p)| Span { base: i * 32, pos: p, len: 1 }).collect();
    let batched = host(b, &b.rope(&x_act, &table, heads, &b.rows(&spans).unwrap()).unwrap());
    let mut want = x.clone();
    let mut want_batched = x.clone();
    for (t, &p) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = t * heads * head_dim + h * head_dim;
            for i in 0..head_dim / 2 {
                let a = p as f32 * inv_freq[i];
                let (x1, x2) = (x[base + i], x[base + i + head_dim / 2]);
                want_batched[base + i] = x1 * a.cos() - x2 * a.sin();
                want_batched[base + i + head_dim / 2] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
    assert_close(&batched, &want_batched, ATOL, RTOL, &format!("{label}: rope, a position per row"));
    for t in 0..seq {
        for h in 0..heads {
            let base = t * heads * head_dim + h * head_dim;
            for i in 0..head_dim / 2 {
                let a = (pos + t) as f32 * inv_freq[i];
                let (x1, x2) = (x[base + i], x[base + i + head_dim / 2]);
                want[base + i] = x1 * a.cos() - x2 * a.sin();
                want[base + i + head_dim / 2] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
    assert_close(&got, &want, ATOL, RTOL, &format!("{label}: rope"));
}

fn attention_config(heads: usize, kv_heads: usize, head_dim: usize) -> LlamaConfig {
    LlamaConfig {
        hidden_size: heads * head_dim,
        intermediate_size: 32,
        num_layers: 1,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        vocab_size: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        rope_freq_factors: None,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

fn naive_attention(q: &[f32], k: &[f32], v: &[f32], heads: usize, kv_heads: usize, hd: usize, pos: usize) -> Vec<f32> {
    let seq = q.len() / (heads * hd);
    let mut out = vec![0f32; q.len()];
    for t in 0..seq {
        for h in 0..heads {
            let kvh = h / (heads / kv_heads);
            let qv = &q[(t * heads + h) * hd..(t * heads + h + 1) * hd];
            let scores: Vec<f64> = (0..=pos + t)
                .map(|s| {
                    qv.iter().zip(&k[(s * kv_heads + kvh) * hd..]).map(|(a, b)| (a * b) as f64).sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            for d in 0..hd {
                out[(t * heads + h) * hd + d] = exps
                    .iter()
                    .enumerate()
                    .map(|(s, e)| e / total * v[(s * kv_heads + kvh) * hd + d] as f64)
                    .sum::<f64>() as f32;
            }
        }
    }
    out
}

fn check_attention<B: Backend>(b: &B, label: &str) {
    // 6 query heads over 2 KV heads; 300 prompt tokens (several 64-key blocks), then 3 decode
    // steps past 256 keys, where the GPU splits decode attention over the sequence.
    let (heads, kv_heads, hd, prompt) = (6, 2, 16, 300);
    // Two sequences' rows: the first at 0..320, the second at 320..640.
    let mut cache = b.new_cache(&attention_config(heads, kv_heads, hd), 640).unwrap();
    let at = |base: usize, pos: usize, len: usize| b.rows(&[Span { base, pos, len }]).unwrap();
    let total = prompt + 3;
    let (q, k, v) =
        (random(total * heads * hd, 10), random(total * kv_heads * hd, 11), random(total * kv_heads * hd, 12));
    let rows = |x: &[f32], w: usize, a: usize, n: usize| x[a * w..(a + n) * w].to_vec();
    // The prompt in chunks of 128, as the engine prefills.
    for (start, n) in [(0, 128), (128, 128), (256, prompt - 256)] {
        let act = |x: &[f32], w: usize| b.activation_from(&rows(x, w, start, n), n, w).unwrap();
        let got = host(
            b,
            &b.attention(
                &mut cache,
                0,
                &act(&q, heads * hd),
                &act(&k, kv_heads * hd),
                &act(&v, kv_heads * hd),
                &at(0, start, n),
            )
            .unwrap(),
        );
        let want = naive_attention(
            &rows(&q, heads * hd, start, n),
            &k[..(start + n) * kv_heads * hd],
            &v[..(start + n) * kv_heads * hd],
            heads,
            kv_heads,
            hd,
            start,
        );
        assert_close(&got, &want, ATOL, RTOL, &format!("{label}: attention prefill at {start}"));
    }
    for pos in prompt..total {
        let act = |x: &[f32], w: usize| b.activation_from(&rows(x, w, pos, 1), 1, w).unwrap();
        let got = host(
            b,
            &b.attention(
                &mut cache,
                0,
                &act(&q, heads * hd),
                &act(&k, kv_heads * hd),
                &act(&v, kv_heads * hd),
                &at(0, pos, 1),
            )
            .unwrap(),
        );
        let want = naive_attention(
            &rows(&q, heads * hd, pos, 1),
            &k[..(pos + 1) * kv_heads * hd],
            &v[..(pos + 1) * kv_heads * hd],
            heads,
            kv_heads,
            hd,
            pos,
        );
        assert_close(&got, &want, ATOL, RTOL, &format!("{label}: attention decode at {pos}"));
    }
    // A second sequence: its prompt (the first 40 tokens of the same data) at rows 320..360,
    // copied there from the first sequence's rows. Then one decode step of both sequences in one
    // call: each row must be what it is alone, bit for bit (batch invariance), and right.
    b.copy_rows(&mut cache, 0, 320, 40).unwrap();
    let (w_q, w_kv) = (heads * hd, kv_heads * hd);
    let pick = |x: &[f32], w: usize, r: &[usize]| r.iter().flat_map(|&i| rows(x, w, i, 1)).collect::<Vec<f32>>();
    // Row inputs: the first sequence's position 303 reuses the data of 302, the second's
    // position 40 that of 40.
    let (r1, r2) = (302, 40);
    let two = |x: &[f32], w: usize| b.activation_from(&pick(x, w, &[r1, r2]), 2, w).unwrap();
    let spans = [Span { base: 0, pos: total, len: 1 }, Span { base: 320, pos: 40, len: 1 }];
    let batched = host(
        b,
        &b.attention(&mut cache, 0, &two(&q, w_q), &two(&k, w_kv), &two(&v, w_kv), &b.rows(&spans).unwrap()).unwrap(),
    );
    for (i, (span, r)) in spans.iter().zip([r1, r2]).enumerate() {
        let one = |x: &[f32], w: usize| b.activation_from(&rows(x, w, r, 1), 1, w).unwrap();
        let alone = host(
            b,
            &b.attention(&mut cache, 0, &one(&q, w_q), &one(&k, w_kv), &one(&v, w_kv), &b.rows(&[*span]).unwrap())
                .unwrap(),
        );
        assert_eq!(batched[i * w_q..(i + 1) * w_q], alone[..], "{label}: decode row {i} batched vs alone");
        let keys: Vec<usize> = (0..span.pos).chain([r]).collect();
        let want = naive_attention(
            &rows(&q, w_q, r, 1),
            &pick(&k, w_kv, &keys),
            &pick(&v, w_kv, &keys),
            heads,
            kv_heads,
            hd,
            span.pos,
        );
        assert_close(&alone, &want, ATOL, RTOL, &format!("{label}: batched decode row {i}"));
    }
}

fn check_embed_and_argmax<B: Backend>(b: &B, label: &str) {
    let (rows, cols) = (300, 64);
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        let (table, exact) = weight(dtype, rows, cols, 20);
        let table = b.embedding(table).unwrap();
        let ids = [0u32, 299, 17, 150, 17];
        let got = host(b, &b.embed(&table, &ids).unwrap());
        let want: Vec<f32> =
            ids.iter().flat_map(|&i| exact[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect();
        assert_close(&got, &want, ATOL, RTOL, &format!("{label}: embed {dtype:?}"));
    }
    // Ties go to the first index, as torch.argmax does.
    let mut row = random(1000, 21);
    row[613] = 5.0;
    row[911] = 5.0;
    let x = b.activation_from(&row, 1, row.len()).unwrap();
    assert_eq!(pollster::block_on(b.argmax(&x)).unwrap(), 613, "{label}: argmax");
}

fn gpu(max_binding_bytes: Option<u64>, linear: LinearKernel) -> GpuBackend {
    gpu_f16(max_binding_bytes, linear, true)
}

/// `f16`: let the cooperative kernel multiply in f16 where the adapter offers shader-f16.
fn gpu_f16(max_binding_bytes: Option<u64>, linear: LinearKernel, f16: bool) -> GpuBackend {
    pollster::block_on(GpuBackend::new(GpuOptions {
        quant: GpuQuant::F32,
        max_binding_bytes,
        linear,
        f16,
        ..GpuOptions::default()
    }))
    .expect("a Vulkan adapter (mesa-vulkan-drivers)")
}

#[test]
fn cpu_ops() {
    let b = CpuBackend::new(None);
    check_linear(&b, "cpu", cpu_exactness);
    check_elementwise(&b, "cpu");
    check_rms_norm(&b, "cpu");
    check_rope(&b, "cpu");
    check_attention(&b, "cpu");
    check_embed_and_argmax(&b, "cpu");
    check_any_width(&b, "cpu");
}

/// Each integer kernel this CPU can run, forced one by one (the default is the fastest); and
/// every kernel's products bit for bit the portable kernel's (which the browser's wasm kernels
/// follow), for each block format, so the CLI writes what the browser writes on any machine.
#[test]
fn cpu_quantized_kernels_each() {
    let b = CpuBackend::new(None);
    let kernels = cpu_blocks::Kernel::available();
    assert!(kernels.contains(&cpu_blocks::Kernel::Portable));
    let mut products = Vec::new();
    for &k in &kernels {
        cpu_blocks::set_kernel(Some(k)).unwrap();
        assert_eq!(cpu_blocks::kernel(), k);
        check_linear(&b, &format!("cpu {}", k.name()), cpu_exactness);
        check_linear_tokens_alone(&b, &format!("cpu {}", k.name()));
        check_embed_and_argmax(&b, &format!("cpu {}", k.name()));
        products.push((k, block_products(&b)));
    }
    cpu_blocks::set_kernel(None).unwrap();
    let portable = &products.iter().find(|(k, _)| *k == cpu_blocks::Kernel::Portable).unwrap().1;
    for (k, got) in &products {
        for ((dtype, got), (_, want)) in got.iter().zip(portable) {
            let differs = got.iter().zip(want).position(|(g, w)| g.to_bits() != w.to_bits());
            assert!(differs.is_none(), "{} {dtype:?}: output {differs:?} is not the portable kernel's", k.name());
        }
    }
}

/// Each block format's product of 203 rows by 13 tokens of 320 (many groups and panels, a tile's
/// every token count), on the kernel in force.
fn block_products(b: &CpuBackend) -> Vec<(GgmlDType, Vec<f32>)> {
    let (rows, cols, seq) = (203, 320, 13);
    [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1]
        .into_iter()
        .map(|dtype| {
            let w = b.matrix(weight(dtype, rows, cols, 11).0).unwrap();
            let xs = random(seq * cols, 31);
            (dtype, host(b, &b.linear(&b.activation_from(&xs, seq, cols).unwrap(), &w).unwrap()))
        })
        .collect()
}

#[test]
fn gpu_ops() {
    let b = gpu(None, LinearKernel::Auto);
    // Q4_K and Q6_K are dequantized and stored as the GPU's 8-bit blocks.
    check_linear(&b, "gpu", |d| {
        if matches!(d, GgmlDType::Q4K | GgmlDType::Q6K) { Exactness::Approximate(0.02) } else { Exactness::Exact }
    });
    check_elementwise(&b, "gpu");
    check_rms_norm(&b, "gpu");
    check_rope(&b, "gpu");
    check_attention(&b, "gpu");
    check_embed_and_argmax(&b, "gpu");
    check_any_width(&b, "gpu");
}

#[test]
fn gpu_ops_with_weights_split_across_bindings() {
    // 1 KiB per binding: every weight above splits into many row ranges, the last one short.
    let b = gpu(Some(1024), LinearKernel::Auto);
    check_linear(&b, "gpu split", |d| {
        if matches!(d, GgmlDType::Q4K | GgmlDType::Q6K) { Exactness::Approximate(0.02) } else { Exactness::Exact }
    });
    check_embed_and_argmax(&b, "gpu split");
    check_any_width(&b, "gpu split");
}

#[test]
fn gpu_linear_kernels_each() {
    // Auto picks one kernel per adapter; prove both on this one, whole and split, the
    // cooperative one with f32 and with f16 math (lavapipe offers shader-f16).
    let kernels =
        [(LinearKernel::Cooperative, false), (LinearKernel::Cooperative, true), (LinearKernel::RowPerThread, false)];
    for (linear, f16) in kernels {
        for max_binding in [None, Some(1024)] {
            let b = gpu_f16(max_binding, linear, f16);
            assert_eq!(b.f16_math(), f16, "f16 math in use");
            let label = format!("gpu {linear:?}, f16 math {f16}, binding {max_binding:?}");
            check_any_width(&b, &label);
            check_linear(&b, &label, |d| match d {
                GgmlDType::Q4K | GgmlDType::Q6K => Exactness::Approximate(0.02),
                // Weights and activations rounded to f16, four products summed in f16.
                GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1 if f16 => Exactness::Approximate(F16_MATH),
                _ => Exactness::Exact,
            });
        }
    }
}

#[test]
fn gpu_odd_widths_quantized_on_load() {
    // bf16 weights of odd widths quantized to the GPU's 8-bit and 4-bit blocks: the padded last
    // block is quantized with the row, and its padding never reaches a sum.
    for (quant, tolerance) in [(GpuQuant::Q8, 0.02), (GpuQuant::Q4, 0.2)] {
        let b = pollster::block_on(GpuBackend::new(GpuOptions { quant, ..GpuOptions::default() }))
            .expect("a Vulkan adapter");
        for cols in ODD_WIDTHS {
            let rows = 37;
            let (host_w, exact) = float_weight(StorageType::BF16, rows, cols, cols as u64);
            let w = b.matrix(host_w).unwrap();
            let xs = random(3 * cols, 5);
            let x = b.activation_from(&xs, 3, cols).unwrap();
            let got = host(&b, &b.linear(&x, &w).unwrap());
            let want = naive_linear(&xs, &exact, rows, cols);
            let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_close(&got, &want, tolerance * max, 0.0, &format!("gpu {quant:?}: linear bf16 ({rows}x{cols})"));
        }
    }
}
