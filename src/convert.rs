//! `convert`: a model the loader opens (a Hugging Face folder, a GGUF file) written as one GGUF
//! file in the layout llama.cpp's `convert_hf_to_gguf.py` writes: its metadata keys in its order,
//! the Llama 3 tokenizer embedded, GGUF tensor names, Q and K rows interleaved per head, Llama 3
//! rope scaling as `rope_freqs.weight`, norms in F32 and every matrix in the chosen type. From a
//! bf16 folder to F32, F16 or Q8_0 the bytes are the ones llama.cpp's converter writes
//! (tests/convert.rs holds them to its output). It streams: one tensor, or a chunk of rows of a
//! large one, at a time (ARCHITECTURE.md §3, "Converting a model").

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::format::gguf_write::{GgufWriter, TensorPlan};
use crate::format::{ByteSource, HostTensor, StorageType, TensorEntry};
use crate::model::{GGUF_ROPE_FREQS, ModelFiles, Naming};
use crate::session::{word_name, word_value};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use std::borrow::Cow;
use std::io::Write;

/// The type a converted file's matrices take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl Target {
    /// Every word `--quant` takes (any case), the first of each its name.
    pub const WORDS: [(&'static str, Target); 7] = [
        ("f32", Target::F32),
        ("f16", Target::F16),
        ("q8_0", Target::Q8_0),
        ("q8", Target::Q8_0),
        ("q4_0", Target::Q4_0),
        ("q4", Target::Q4_0),
        ("q4_1", Target::Q4_1),
    ];

    pub fn parse(word: &str) -> Result<Self> {
        word_value(&Self::WORDS, word).ok_or_else(|| {
            let word = word.trim().to_ascii_lowercase();
            Error::Other(format!("unknown GGUF type `{word}`: expected f32, f16, q8_0, q4_0 or q4_1"))
        })
    }

    pub fn name(self) -> &'static str {
        word_name(&Self::WORDS, &self)
    }

    fn matrix_type(self) -> GgmlDType {
        match self {
            Target::F32 => GgmlDType::F32,
            Target::F16 => GgmlDType::F16,
            Target::Q8_0 => GgmlDType::Q8_0,
            Target::Q4_0 => GgmlDType::Q4_0,
            Target::Q4_1 => GgmlDType::Q4_1,
        }
    }

    /// `general.file_type`: llama.cpp's `llama_ftype` for a file mostly of this type.
    fn file_type(self) -> u32 {
        match self {
            Target::F32 => 0,
            Target::F16 => 1,
            Target::Q4_0 => 2,
            Target::Q4_1 => 3,
            Target::Q8_0 => 7,
        }
    }
}

/// Where the tokenizer comes from: an HF folder's tokenizer.json, or a GGUF file's own
/// `tokenizer.*` keys (copied as they are).
pub enum TokenizerSource {
    Json(Vec<u8>),
    Gguf(Vec<(String, Value)>),
}

/// What `convert` wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub tensors: usize,
    pub params: u64,
    /// Bytes of tensor data (the file adds its header and padding).
    pub data_bytes: u64,
    /// Matrices kept in F16 because their rows do not fill whole blocks of the chosen type (as
    /// llama.cpp's converter does).
    pub kept_f16: Vec<String>,
}

/// Where one tensor of the output comes from.
enum Origin {
    /// `rope_freqs.weight`, computed from the config.
    Values(Vec<f32>),
    /// A tensor of the source; `heads` set: HF Q/K rows to interleave per head.
    Entry { entry: TensorEntry, heads: Option<usize> },
}

/// The rows of f32 one chunk of a large tensor holds at most (32 MiB).
const CHUNK_VALUES: usize = 8 << 20;

/// llama.cpp's per-frequency divisors for Llama 3 rope scaling (`rope_freqs.weight`), computed in
/// f32 as its converter computes them with torch.
fn llama3_rope_factors(config: &LlamaConfig) -> Option<Vec<f32>> {
    if let Some(factors) = &config.rope_freq_factors {
        return Some(factors.clone());
    }
    let s = config.rope_scaling.as_ref()?;
    let dim = config.head_dim;
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    Some(
        (0..dim)
            .step_by(2)
            .map(|i| {
                let freq = 1.0 / libm::powf(config.rope_theta, i as f32 / dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    1.0 / ((1.0 - smooth) / s.factor + smooth)
                }
            })
            .collect(),
    )
}

/// gguf-py's size label: the parameter count in K, M, B or T with at least two digits
/// (`model_weight_count_rounded_notation`): 8282440 is "8.3M", 16498944 "16M".
fn size_label(params: u64) -> String {
    let n = params as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// The tokenizer keys of a Llama 3 tokenizer.json, as gguf-py writes them: byte-level BPE
/// (`gpt2`) with the `llama-bpe` pre-tokenizer, tokens by id (control for special added tokens,
/// user-defined for other added ones, normal otherwise), merges as "a b", BOS and the first EOS.
pub fn llama3_tokenizer_metadata(
    tokenizer_json: &[u8],
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Vec<(String, Value)>> {
    let tok: serde_json::Value =
        serde_json::from_slice(tokenizer_json).map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
    if tok["model"]["type"].as_str() != Some("BPE") || !tok["pre_tokenizer"].to_string().contains(r"\\p{N}{1,3}") {
        return Err(Error::Tokenizer(
            "convert writes Llama 3 tokenizers (byte-level BPE with Llama 3's pre-tokenizer); this tokenizer.json is another kind".into(),
        ));
    }
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| Error::Tokenizer("tokenizer.json has no model.vocab".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    for (text, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|i| tokens.get_mut(i as usize)) {
            *slot = Some(text.clone());
        }
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str())
            && let Some(slot) = tokens.get_mut(id as usize)
        {
            *slot = Some(text.to_string());
            types[id as usize] = if added["special"].as_bool() == Some(true) { 3 } else { 4 };
        }
    }
    // Ids no token has are padding, user-defined (gguf-py's `[PAD{id}]`).
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            Value::String(t.unwrap_or_else(|| {
                types[id] = 4;
                format!("[PAD{id}]")
            }))
        })
        .collect();
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
    let mut keys = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("llama-bpe".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
    ];
    keys.extend(bos.map(|id| ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(id))));
    keys.extend(eos.map(|id| ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(id))));
    keys.extend([
        ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(bos.is_some())),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_sep_token".into(), Value::Bool(false)),
    ]);
    Ok(keys)
}

/// The output's tensors in llama.cpp's order (`rope_freqs.weight` first, then the source's
/// tensors by name) and where each comes from.
fn plan(files: &ModelFiles, target: Target) -> Result<(Vec<TensorPlan>, Vec<Origin>, Vec<String>)> {
    let mut plans = Vec::new();
    let mut origins = Vec::new();
    if let Some(factors) = llama3_rope_factors(&files.config) {
        plans.push(TensorPlan { name: GGUF_ROPE_FREQS.into(), shape: vec![factors.len()], dtype: GgmlDType::F32 });
        origins.push(Origin::Values(factors));
    }
    let mut kept_f16 = Vec::new();
    let mut tensors = files.tensor_names();
    // The source's own order: by name, as safetensors and our index list them.
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, gguf_name, heads) in tensors {
        let entry = files.index.get(&name).ok_or_else(|| Error::Config(format!("tensor {name} is missing")))?.clone();
        let matrix = entry.shape.len() == 2;
        let mut dtype = if matrix { target.matrix_type() } else { GgmlDType::F32 };
        let cols = entry.shape.last().copied().unwrap_or(1);
        if !cols.is_multiple_of(dtype.block_size()) {
            dtype = GgmlDType::F16;
            kept_f16.push(gguf_name.clone());
        }
        plans.push(TensorPlan { name: gguf_name, shape: entry.shape.clone(), dtype });
        let heads = if files.naming == Naming::HuggingFace { heads } else { None };
        origins.push(Origin::Entry { entry, heads });
    }
    Ok((plans, origins, kept_f16))
}

/// Rows `r0..r1` of a tensor, read from its source, as f32.
fn read_rows(source: &mut dyn ByteSource, entry: &TensorEntry, cols: usize, r0: usize, r1: usize) -> Result<Vec<f32>> {
    let row_bytes = entry.storage.byte_len(cols as u64).ok_or_else(|| {
        Error::format(&entry.name, format!("rows of {cols} values do not fill whole {:?} blocks", entry.storage))
    })?;
    let bytes = source.read_vec(entry.offset + r0 as u64 * row_bytes, (r1 - r0) as u64 * row_bytes)?;
    match entry.storage {
        StorageType::Ggml(dtype) => {
            let storage = QStorage::from_data(Cow::Borrowed(&bytes), &candle_core::Device::Cpu, dtype)?;
            let q = QTensor::new(storage, (r1 - r0, cols))?;
            Ok(q.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
        }
        storage => HostTensor { name: entry.name.clone(), storage, shape: vec![r1 - r0, cols], bytes }.to_f32(),
    }
}

/// HF rows in GGUF's order: within each head, rows `j * half + i` (HF's rotate-half halves)
/// become `2 * i + j` (adjacent pairs), as llama.cpp's converter permutes Q and K.
fn interleave_heads(values: &[f32], rows: usize, cols: usize, heads: usize) -> Result<Vec<f32>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::Config(format!("cannot interleave {rows} rows over {heads} heads")));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let from = (h * head_dim + j * half + i) * cols;
                let to = (h * head_dim + 2 * i + j) * cols;
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            }
        }
    }
    Ok(out)
}

/// `values` (`rows` x `cols`) in `dtype`'s bytes.
fn encode(values: &[f32], rows: usize, cols: usize, dtype: GgmlDType) -> Result<Vec<u8>> {
    Ok(match dtype {
        GgmlDType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlDType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        _ => {
            let t = candle_core::Tensor::from_slice(values, (rows, cols), &candle_core::Device::Cpu)?;
            QTensor::quantize(&t, dtype)?.data()?.into_owned()
        }
    })
}

/// Writes `files` as a GGUF file of `target` to `out`. `name`: `general.name`. `progress(done,
/// total)` after every chunk, in bytes of the output's tensor data; an error it returns (a
/// cancelled run) stops the conversion.
pub fn convert(
    files: &mut ModelFiles,
    tokenizer: TokenizerSource,
    name: &str,
    target: Target,
    out: impl Write,
    progress: &mut dyn FnMut(u64, u64) -> Result<()>,
) -> Result<Converted> {
    let (plans, origins, kept_f16) = plan(files, target)?;
    let params: u64 = plans.iter().map(|p| p.shape.iter().map(|&d| d as u64).product::<u64>()).sum();
    let data_bytes = plans.iter().map(|p| p.byte_len()).sum::<Result<u64>>()?;
    let c = &files.config;
    let u32v = |v: usize| -> Result<Value> {
        u32::try_from(v).map(Value::U32).map_err(|_| Error::Config(format!("{v} does not fit a GGUF u32")))
    };
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.size_label".into(), Value::String(size_label(params))),
        ("llama.block_count".into(), u32v(c.num_layers)?),
        ("llama.context_length".into(), u32v(c.max_position_embeddings)?),
        ("llama.embedding_length".into(), u32v(c.hidden_size)?),
        ("llama.feed_forward_length".into(), u32v(c.intermediate_size)?),
        ("llama.attention.head_count".into(), u32v(c.num_heads)?),
        ("llama.attention.head_count_kv".into(), u32v(c.num_kv_heads)?),
        ("llama.rope.freq_base".into(), Value::F32(c.rope_theta)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(c.rms_norm_eps)),
        ("llama.attention.key_length".into(), u32v(c.head_dim)?),
        ("llama.attention.value_length".into(), u32v(c.head_dim)?),
        ("general.file_type".into(), Value::U32(target.file_type())),
        ("llama.vocab_size".into(), u32v(c.vocab_size)?),
        ("llama.rope.dimension_count".into(), u32v(c.head_dim)?),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    metadata.extend(match tokenizer {
        TokenizerSource::Json(json) => {
            llama3_tokenizer_metadata(&json, c.vocab_size, c.bos_token_id, c.eos_token_ids.first().copied())?
        }
        TokenizerSource::Gguf(keys) => keys,
    });
    let mut writer = GgufWriter::new(out, &metadata, &plans)?;
    let mut done = 0u64;
    for (plan, origin) in plans.iter().zip(origins) {
        let cols = plan.shape.last().copied().unwrap_or(1);
        let rows = plan.shape.iter().rev().skip(1).product::<usize>().max(1);
        match origin {
            Origin::Values(values) => writer.write(&encode(&values, rows, cols, plan.dtype)?)?,
            Origin::Entry { entry, heads: Some(heads) } => {
                let source = source_for(files, &entry)?;
                let values = interleave_heads(&read_rows(source, &entry, cols, 0, rows)?, rows, cols, heads)?;
                writer.write(&encode(&values, rows, cols, plan.dtype)?)?;
            }
            Origin::Entry { entry, heads: None } => {
                let chunk = (CHUNK_VALUES / cols).max(1);
                for r0 in (0..rows).step_by(chunk) {
                    let r1 = (r0 + chunk).min(rows);
                    let values = read_rows(source_for(files, &entry)?, &entry, cols, r0, r1)?;
                    let bytes = encode(&values, r1 - r0, cols, plan.dtype)?;
                    done += bytes.len() as u64;
                    writer.write(&bytes)?;
                    progress(done, data_bytes)?;
                }
                continue;
            }
        }
        done += plan.byte_len()?;
        progress(done, data_bytes)?;
    }
    writer.finish()?;
    Ok(Converted { tensors: plans.len(), params, data_bytes, kept_f16 })
}

fn source_for<'a>(files: &'a mut ModelFiles, entry: &TensorEntry) -> Result<&'a mut dyn ByteSource> {
    match files.sources.get_mut(entry.shard) {
        Some(s) => Ok(s.as_mut()),
        None => Err(Error::Config(format!("tensor {} is in shard {} which was not opened", entry.name, entry.shard))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_round_as_gguf_py_does() {
        assert_eq!(size_label(8_282_440), "8.3M");
        assert_eq!(size_label(16_498_944), "16M");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(134_515_008), "135M");
    }

    #[test]
    fn interleaving_puts_each_heads_halves_in_adjacent_pairs() {
        // One head of 4 rows (halves [0, 1] and [2, 3]) of one column: pairs (0, 2), (1, 3).
        let out = interleave_heads(&[0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0], 8, 1, 2).unwrap();
        assert_eq!(out, [0.0, 2.0, 1.0, 3.0, 10.0, 12.0, 11.0, 13.0]);
    }
}
