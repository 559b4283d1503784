//! A model of exactly GuardReasoner-1B's shape with seeded random weights, written as GGUF with
//! the real Llama 3 tokenizer, for speed and memory benchmarks (speed does not depend on weight
//! values), or as the Hugging Face folder the real checkpoint is (bf16 safetensors, 2.47 GB), for
//! loading tests. llama.cpp loads the same GGUF file, so both engines can be timed on it.

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
    let values = random_values(seed, rows * cols, scale);
    let shape: Vec<usize> = if rows == 1 { vec![cols] } else { vec![rows, cols] };
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// `n` seeded values in `[-scale, scale)` (splitmix64).
pub(crate) fn random_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Write the synthetic model to `out`. `tokenizer_json` is a Llama 3 tokenizer.json (its BPE
/// vocabulary and merges go into the GGUF metadata). `progress(done, total)` counts tensors.
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
    metadata.extend(crate::convert::llama3_tokenizer_metadata(tokenizer_json, VOCAB, Some(128000), Some(128001))?);
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(out, &meta, &refs)?;
    Ok(())
}

/// A bf16 tensor whose bytes are made when the writer asks for them, so the 2.47 GB file is
/// written one tensor at a time.
struct LazyBf16 {
    shape: Vec<usize>,
    seed: u64,
    scale: f32,
    /// Norm gains: `1 - |x| / 2`, as the GGUF writer makes them.
    gain: bool,
}

impl safetensors::View for LazyBf16 {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::BF16
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let values = random_values(self.seed, self.shape.iter().product(), self.scale);
        let bytes = values
            .into_iter()
            .map(|v| if self.gain { 1.0 - v.abs() * 0.5 } else { v })
            .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        std::borrow::Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 2
    }
}

/// Llama-3.2-1B's `config.json` (GuardReasoner-1B's), bf16.
pub(crate) fn hf_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": true,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "torch_dtype": "bfloat16"
    })
}

/// Writes a GuardReasoner-1B-shaped Hugging Face folder into `dir`: `config.json`,
/// `generation_config.json`, `tokenizer.json` (`tokenizer_json` as given) and one bf16
/// `model.safetensors` with seeded random weights under the HF tensor names (2.47 GB).
/// `progress(done, total)` counts the folder's four files.
pub fn write_synthetic_hf_folder(
    dir: &std::path::Path,
    tokenizer_json: &[u8],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::io(format!("writing {what} in {}", dir.display()), e);
    std::fs::create_dir_all(dir).map_err(|e| io("the folder", e))?;
    let json = |v: &serde_json::Value| format!("{v:#}\n");
    std::fs::write(dir.join("config.json"), json(&hf_config())).map_err(|e| io("config.json", e))?;
    let generation =
        serde_json::json!({"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "do_sample": false});
    std::fs::write(dir.join("generation_config.json"), json(&generation))
        .map_err(|e| io("generation_config.json", e))?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json).map_err(|e| io("tokenizer.json", e))?;
    progress(3, 4);
    let matrix = |shape: [usize; 2], seed: u64| LazyBf16 { shape: shape.to_vec(), seed, scale: 0.02, gain: false };
    let gain = |seed: u64| LazyBf16 { shape: vec![HIDDEN], seed, scale: 1.0, gain: true };
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), matrix([VOCAB, HIDDEN], 1)),
        ("model.norm.weight".to_string(), gain(2)),
    ];
    for l in 0..LAYERS {
        let seed = 100 * (l as u64 + 1);
        let p = format!("model.layers.{l}");
        tensors.extend([
            (format!("{p}.input_layernorm.weight"), gain(seed)),
            (format!("{p}.self_attn.q_proj.weight"), matrix([HEADS * HEAD_DIM, HIDDEN], seed + 1)),
            (format!("{p}.self_attn.k_proj.weight"), matrix([KV_HEADS * HEAD_DIM, HIDDEN], seed + 2)),
            (format!("{p}.self_attn.v_proj.weight"), matrix([KV_HEADS * HEAD_DIM, HIDDEN], seed + 3)),
            (format!("{p}.self_attn.o_proj.weight"), matrix([HIDDEN, HEADS * HEAD_DIM], seed + 4)),
            (format!("{p}.post_attention_layernorm.weight"), gain(seed + 5)),
            (format!("{p}.mlp.gate_proj.weight"), matrix([INTERMEDIATE, HIDDEN], seed + 6)),
            (format!("{p}.mlp.up_proj.weight"), matrix([INTERMEDIATE, HIDDEN], seed + 7)),
            (format!("{p}.mlp.down_proj.weight"), matrix([HIDDEN, INTERMEDIATE], seed + 8)),
        ]);
    }
    let part = dir.join("model.safetensors.part");
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), &part)
        .map_err(|e| Error::Other(format!("writing {}: {e}", part.display())))?;
    std::fs::rename(&part, dir.join("model.safetensors")).map_err(|e| io("model.safetensors", e))?;
    progress(4, 4);
    Ok(())
}
