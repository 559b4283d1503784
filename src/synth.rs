//! A model of exactly GuardReasoner-1B's shape with seeded random weights, written as GGUF with
//! the real Llama 3 tokenizer, for speed and memory benchmarks (speed does not depend on weight
//! values). llama.cpp loads the same file, so both engines can be timed on it.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// GuardReasoner-1B (Llama-3.2-1B): ARCHITECTURE.md §3.
pub const HIDDEN: usize = 2048;
pub const LAYERS: usize = 16;
pub const HEADS: usize = 32;
pub const KV_HEADS: usize = 8;
pub const HEAD_DIM: usize = 64;
pub const INTERMEDIATE: usize = 8192;
pub const VOCAB: usize = 128256;
pub const CONTEXT: usize = 131072;

fn random_tensor(seed: u64, rows: usize, cols: usize, scale: f32) -> Result<Tensor> {
    let mut state = seed;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    let shape: Vec<usize> = if rows == 1 { vec![cols] } else { vec![rows, cols] };
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Write the synthetic model to `out`. `tokenizer_json` is a Llama 3 tokenizer.json (its BPE
/// vocabulary and merges go into the GGUF metadata). `progress(done, total)` counts tensors.
/// GGUF tokenizer metadata (`tokenizer.ggml.*`, byte-level BPE, pre-tokenizer `llama-bpe`) from
/// a Llama 3 tokenizer.json, laid out as llama.cpp's convert_hf_to_gguf.py writes it: tokens by
/// id, type 3 (control) for added special tokens, 1 otherwise, merges as "a b".
pub fn llama3_tokenizer_metadata(tokenizer_json: &[u8], vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let tok: serde_json::Value =
        serde_json::from_slice(tokenizer_json).map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| Error::Tokenizer("tokenizer.json has no model.vocab".into()))?;
    let mut tokens = vec![String::new(); vocab_size];
    let mut types = vec![Value::I32(1); vocab_size];
    for (text, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
            *slot = text.clone();
        }
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str())
            && let Some(slot) = tokens.get_mut(id as usize)
        {
            *slot = text.to_string();
            types[id as usize] = Value::I32(3);
        }
    }
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .map(Value::String)
        .collect();

    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("llama-bpe".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(128000)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(128001)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ])
}

pub fn write_synthetic_gguf(
    out: &mut (impl std::io::Write + std::io::Seek),
    quant: GgmlDType,
    tokenizer_json: &[u8],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    // (name, rows, cols, scale): weight scales keep activations in a sane range.
    let mut specs: Vec<(String, usize, usize, f32)> = vec![("token_embd.weight".into(), VOCAB, HIDDEN, 0.02)];
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        specs.extend([
            (format!("{p}.attn_norm.weight"), 1, HIDDEN, 1.0),
            (format!("{p}.attn_q.weight"), HEADS * HEAD_DIM, HIDDEN, 0.02),
            (format!("{p}.attn_k.weight"), KV_HEADS * HEAD_DIM, HIDDEN, 0.02),
            (format!("{p}.attn_v.weight"), KV_HEADS * HEAD_DIM, HIDDEN, 0.02),
            (format!("{p}.attn_output.weight"), HIDDEN, HEADS * HEAD_DIM, 0.02),
            (format!("{p}.ffn_norm.weight"), 1, HIDDEN, 1.0),
            (format!("{p}.ffn_gate.weight"), INTERMEDIATE, HIDDEN, 0.02),
            (format!("{p}.ffn_up.weight"), INTERMEDIATE, HIDDEN, 0.02),
            (format!("{p}.ffn_down.weight"), HIDDEN, INTERMEDIATE, 0.02),
        ]);
    }
    specs.push(("output_norm.weight".into(), 1, HIDDEN, 1.0));
    let total = specs.len() + 1;
    let mut tensors = Vec::with_capacity(total);
    for (i, (name, rows, cols, scale)) in specs.into_iter().enumerate() {
        let t = random_tensor(i as u64 + 1, rows, cols, scale)?;
        // Norm gains stay F32 (as llama.cpp's converter writes them); |x| < 1 so use 1 - |x|/2.
        let q = if rows == 1 {
            QTensor::quantize(&((t.abs()? * -0.5)? + 1.0)?, GgmlDType::F32)?
        } else {
            QTensor::quantize(&t, quant)?
        };
        tensors.push((name, q));
        progress(i + 1, total);
    }
    // Llama 3 rope scaling (32, 1, 4, 8192) as llama.cpp's rope_freqs.weight.
    let factors: Vec<f32> = (0..HEAD_DIM / 2)
        .map(|i| {
            let freq = 1.0 / 500_000f64.powf((2 * i) as f64 / HEAD_DIM as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let (factor, low, high, orig) = (32.0, 1.0, 4.0, 8192.0);
            if wavelen < orig / high {
                1.0
            } else if wavelen > orig / low {
                factor as f32
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect();
    tensors.push((
        "rope_freqs.weight".into(),
        QTensor::quantize(&Tensor::from_vec(factors, HEAD_DIM / 2, &Device::Cpu)?, GgmlDType::F32)?,
    ));
    progress(total, total);

    let u32v = |v: usize| Value::U32(v as u32);
    let file_type = if quant == GgmlDType::Q8_0 { 7 } else { 2 };
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("GuardReasoner-1B-shaped synthetic (random weights)".into())),
        ("general.file_type", Value::U32(file_type)),
        ("llama.context_length", u32v(CONTEXT)),
        ("llama.embedding_length", u32v(HIDDEN)),
        ("llama.block_count", u32v(LAYERS)),
        ("llama.feed_forward_length", u32v(INTERMEDIATE)),
        ("llama.attention.head_count", u32v(HEADS)),
        ("llama.attention.head_count_kv", u32v(KV_HEADS)),
        ("llama.rope.freq_base", Value::F32(500_000.0)),
        ("llama.rope.dimension_count", u32v(HEAD_DIM)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", u32v(VOCAB)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    metadata.extend(llama3_tokenizer_metadata(tokenizer_json, VOCAB)?);
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(out, &meta, &refs)?;
    Ok(())
}
