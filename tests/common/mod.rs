//! Test support: where fixtures live, and a micro Llama model written by the tests themselves in
//! both formats (safetensors + config.json, and GGUF with llama.cpp's Q/K permutation).
#![allow(dead_code)]

pub mod reference;
pub mod tiny;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use guardreasoner::format::{ByteSource, MemorySource};
use guardreasoner::loader::{OpenedModel, open_gguf, open_hf};
use std::path::PathBuf;

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Downloaded test assets (SmolLM2 GGUF, the npm Llama 3 tokenizer): `scripts/fetch-test-assets.sh`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GUARDREASONER_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_dir().join(".cache"))
}

pub fn shared_dir() -> PathBuf {
    std::env::var_os("GUARDREASONER_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_dir().join("../shared"))
}

/// A required asset; a clear failure (not a skip) when the fetch script has not run.
pub fn asset(relative: &str) -> PathBuf {
    let p = cache_dir().join(relative);
    assert!(p.exists(), "missing test asset {} -- run scripts/fetch-test-assets.sh first", p.display());
    p
}

pub fn smollm2_path() -> PathBuf {
    asset("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn llama3_tokenizer_json() -> Vec<u8> {
    std::fs::read(asset("npm/package/models/tokenizer.json")).expect("read npm tokenizer.json")
}

/// splitmix64, for seeded test data without a dependency.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A byte-level BPE tokenizer with no merges: one token per byte, then `<s>`, `</s>`.
pub fn micro_tokenizer_json() -> String {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    vocab.insert("<s>".into(), 256.into());
    vocab.insert("</s>".into(), 257.into());
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 256, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 257, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}

pub const MICRO_VOCAB: usize = 258;
pub const MICRO_HIDDEN: usize = 32;
pub const MICRO_HEADS: usize = 4;
pub const MICRO_KV_HEADS: usize = 2;
pub const MICRO_HEAD_DIM: usize = 8;
pub const MICRO_FF: usize = 64;
pub const MICRO_LAYERS: usize = 2;
pub const MICRO_CONTEXT: usize = 64;

/// The micro model's widths; other shapes (odd widths) reuse its generator.
#[derive(Clone, Copy)]
pub struct MicroShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ff: usize,
}

pub const MICRO_SHAPE: MicroShape = MicroShape {
    hidden: MICRO_HIDDEN,
    heads: MICRO_HEADS,
    kv_heads: MICRO_KV_HEADS,
    head_dim: MICRO_HEAD_DIM,
    ff: MICRO_FF,
};

pub fn micro_config_json() -> serde_json::Value {
    micro_config_json_shaped(MICRO_SHAPE)
}

pub fn micro_config_json_shaped(s: MicroShape) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": s.hidden, "intermediate_size": s.ff, "num_hidden_layers": MICRO_LAYERS,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim,
        "vocab_size": MICRO_VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        "max_position_embeddings": MICRO_CONTEXT, "tie_word_embeddings": false,
        "bos_token_id": 256, "eos_token_id": 257, "hidden_act": "silu"
    })
}

/// Seeded weights of the micro model, HF names and layout, f32 values exactly representable in bf16.
pub fn micro_tensors(seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    micro_tensors_shaped(MICRO_SHAPE, seed)
}

/// As `micro_tensors`, in another shape.
pub fn micro_tensors_shaped(shape: MicroShape, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = SplitMix(seed);
    let mut out = Vec::new();
    let mut t = |name: String, shape: Vec<usize>, offset: f32, scale: f32| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| half::bf16::from_f32(offset + scale * rng.next_f32()).to_f32()).collect();
        out.push((name, shape, v));
    };
    let (h, q, kv, ff) = (shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ff);
    t("model.embed_tokens.weight".into(), vec![MICRO_VOCAB, h], 0.0, 1.0);
    for l in 0..MICRO_LAYERS {
        let p = format!("model.layers.{l}");
        t(format!("{p}.input_layernorm.weight"), vec![h], 1.0, 0.25);
        t(format!("{p}.self_attn.q_proj.weight"), vec![q, h], 0.0, 0.5);
        t(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], 0.0, 0.5);
        t(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], 0.0, 0.5);
        t(format!("{p}.self_attn.o_proj.weight"), vec![h, q], 0.0, 0.25);
        t(format!("{p}.post_attention_layernorm.weight"), vec![h], 1.0, 0.25);
        t(format!("{p}.mlp.gate_proj.weight"), vec![ff, h], 0.0, 0.5);
        t(format!("{p}.mlp.up_proj.weight"), vec![ff, h], 0.0, 0.5);
        t(format!("{p}.mlp.down_proj.weight"), vec![h, ff], 0.0, 0.25);
    }
    t("model.norm.weight".into(), vec![h], 1.0, 0.25);
    t("lm_head.weight".into(), vec![MICRO_VOCAB, h], 0.0, 0.5);
    out
}

/// A safetensors file (bf16) of these tensors.
pub fn safetensors_bf16(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for v in values {
            data.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

pub fn open_micro_hf(safetensors: Vec<u8>, config: &serde_json::Value) -> guardreasoner::Result<OpenedModel> {
    let shards: Vec<Box<dyn ByteSource>> = vec![Box::new(MemorySource::new("micro.safetensors", safetensors))];
    open_hf(&config.to_string(), None, micro_tokenizer_json().as_bytes(), shards)
}

/// llama.cpp's convert_hf_to_gguf permutation of Q/K rows (HF halves -> interleaved pairs).
fn permute_for_gguf(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * head_dim + j * half + i;
                let dst = h * head_dim + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The micro model as a GGUF file with llama.cpp's names and permutation, weights in `dtype`
/// (norms always F32), llama3 rope scaling as `rope_freqs.weight`.
pub fn micro_gguf(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: GgmlDType, rope_freqs: &[f32]) -> Vec<u8> {
    let rename = |n: &str| -> String {
        n.replace("model.embed_tokens.weight", "token_embd.weight")
            .replace("model.norm.weight", "output_norm.weight")
            .replace("lm_head.weight", "output.weight")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
    };
    let mut qtensors = Vec::new();
    for (name, shape, values) in tensors {
        let mut values = values.clone();
        if name.contains("q_proj") {
            values = permute_for_gguf(&values, shape[0], shape[1], MICRO_HEADS);
        }
        if name.contains("k_proj") {
            values = permute_for_gguf(&values, shape[0], shape[1], MICRO_KV_HEADS);
        }
        let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap();
        let ty = if shape.len() == 1 { GgmlDType::F32 } else { dtype };
        qtensors.push((rename(name), QTensor::quantize(&t, ty).unwrap()));
    }
    let freqs = Tensor::from_vec(rope_freqs.to_vec(), rope_freqs.len(), &Device::Cpu).unwrap();
    qtensors.push(("rope_freqs.weight".into(), QTensor::quantize(&freqs, GgmlDType::F32).unwrap()));

    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort();
    let mut tokens: Vec<Value> = chars.iter().map(|c| Value::String(c.to_string())).collect();
    tokens.push(Value::String("<s>".into()));
    tokens.push(Value::String("</s>".into()));
    let mut types: Vec<Value> = vec![Value::I32(1); 256];
    types.extend([Value::I32(3), Value::I32(3)]);
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.context_length", Value::U32(MICRO_CONTEXT as u32)),
        ("llama.embedding_length", Value::U32(MICRO_HIDDEN as u32)),
        ("llama.block_count", Value::U32(MICRO_LAYERS as u32)),
        ("llama.feed_forward_length", Value::U32(MICRO_FF as u32)),
        ("llama.attention.head_count", Value::U32(MICRO_HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(MICRO_KV_HEADS as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id", Value::U32(256)),
        ("tokenizer.ggml.eos_token_id", Value::U32(257)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
    out.into_inner()
}

pub fn open_micro_gguf(bytes: Vec<u8>) -> guardreasoner::Result<OpenedModel> {
    open_gguf(Box::new(MemorySource::new("micro.gguf", bytes)))
}

/// GuardReasoner-1B's own tokenizer.json differs from the npm file in two ways that matter
/// here: Llama 3.2 names for three reserved tokens, and a post-processor that adds BOS.
pub fn guardreasoner_style_tokenizer_json(npm: &[u8]) -> Vec<u8> {
    let mut t: serde_json::Value = serde_json::from_slice(npm).unwrap();
    let renames = [(128004u64, "<|finetune_right_pad_id|>"), (128008, "<|eom_id|>"), (128010, "<|python_tag|>")];
    for tok in t["added_tokens"].as_array_mut().unwrap() {
        if let Some((_, name)) = renames.iter().find(|(id, _)| tok["id"].as_u64() == Some(*id)) {
            tok["content"] = serde_json::json!(name);
        }
    }
    t["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000u32], "tokens": ["<|begin_of_text|>"]}}
    });
    serde_json::to_vec(&t).unwrap()
}
