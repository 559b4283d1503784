//! The Llama configuration the engine needs, from a Hugging Face `config.json` (+
//! `generation_config.json`) or from GGUF metadata (`llama.*` keys). Reference: HF
//! `transformers` `LlamaConfig` and `modeling_rope_utils._compute_llama3_parameters`.

use crate::error::{Error, Result};
use crate::format::gguf::GgufFile;
use serde::Deserialize;

/// Llama 3 rotary scaling (`rope_type: "llama3"`): long wavelengths are slowed by `factor`,
/// short ones kept, the band between smoothly interpolated.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency divisors from GGUF's `rope_freqs.weight` (llama.cpp's form of llama3
    /// scaling); when set they replace `rope_scaling`.
    pub rope_freq_factors: Option<Vec<f32>>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Every id that ends generation (config.json and generation_config.json together).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct HfRopeScaling {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<f32>,
}

#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f32,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    /// transformers 5 moved rope_theta/rope_scaling here.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
}

#[derive(Deserialize)]
struct HfGenerationConfig {
    eos_token_id: Option<OneOrMany>,
}

impl LlamaConfig {
    /// Parse `config.json`, adding EOS ids from `generation_config.json` when given.
    pub fn from_hf_json(config_json: &str, generation_config_json: Option<&str>) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(config_json).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        if let Some(t) = &hf.model_type
            && t != "llama"
        {
            return Err(Error::Config(format!("model_type is {t:?}; only Llama models are supported")));
        }
        if let Some(archs) = &hf.architectures
            && !archs.iter().any(|a| a == "LlamaForCausalLM")
        {
            return Err(Error::Config(format!("architectures {archs:?}; only LlamaForCausalLM is supported")));
        }
        if hf.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return Err(Error::Config(format!("hidden_act {:?}; only silu is supported", hf.hidden_act)));
        }
        if hf.attention_bias == Some(true) || hf.mlp_bias == Some(true) {
            return Err(Error::Config("attention or MLP biases are not supported".into()));
        }
        // transformers 5 writes `rope_parameters` instead of rope_theta/rope_scaling.
        let mut rope_theta = hf.rope_theta;
        let mut rope_scaling = hf.rope_scaling;
        if let Some(params) = hf.rope_parameters {
            let bad = |e: String| Error::Config(format!("config.json: rope_parameters: {e}"));
            if !params.is_object() {
                return Err(bad(format!("expected an object, found {params}")));
            }
            if rope_theta.is_none()
                && let Some(theta) = params.get("rope_theta")
            {
                let theta = theta.as_f64().ok_or_else(|| bad(format!("rope_theta {theta} is not a number")))?;
                rope_theta = Some(theta as f32);
            }
            if rope_scaling.is_none() {
                rope_scaling = Some(serde_json::from_value(params).map_err(|e| bad(e.to_string()))?);
            }
        }
        let rope_scaling = match rope_scaling {
            None => None,
            Some(s) => match s.rope_type.as_deref() {
                None | Some("default") => None,
                Some("llama3") => {
                    let need = |v: Option<f32>, what: &str| {
                        v.ok_or_else(|| Error::Config(format!("rope_scaling llama3 lacks {what}")))
                    };
                    let scaling = Llama3RopeScaling {
                        factor: need(s.factor, "factor")?,
                        low_freq_factor: need(s.low_freq_factor, "low_freq_factor")?,
                        high_freq_factor: need(s.high_freq_factor, "high_freq_factor")?,
                        original_max_position_embeddings: need(
                            s.original_max_position_embeddings,
                            "original_max_position_embeddings",
                        )?,
                    };
                    let positive = [
                        scaling.factor,
                        scaling.low_freq_factor,
                        scaling.high_freq_factor,
                        scaling.original_max_position_embeddings,
                    ]
                    .iter()
                    .all(|v| v.is_finite() && *v > 0.0);
                    if !positive || scaling.high_freq_factor <= scaling.low_freq_factor {
                        return Err(Error::Config(format!(
                            "rope_scaling llama3 needs positive factors and high_freq_factor > low_freq_factor; \
                             found {scaling:?}"
                        )));
                    }
                    Some(scaling)
                }
                Some(other) => {
                    return Err(Error::Config(format!("rope_scaling type {other:?} is not supported (only llama3)")));
                }
            },
        };
        let mut eos = hf.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default();
        if let Some(generation) = generation_config_json {
            let generation: HfGenerationConfig =
                serde_json::from_str(generation).map_err(|e| Error::Config(format!("generation_config.json: {e}")))?;
            for id in generation.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default() {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        let cfg = LlamaConfig {
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size.checked_div(hf.num_attention_heads).unwrap_or(0)),
            vocab_size: hf.vocab_size,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rope_freq_factors: None,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bos_token_id: hf.bos_token_id,
            eos_token_ids: eos,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read `llama.*` GGUF metadata. The rope factors tensor and tied-ness are filled in by the
    /// loader, which sees the tensors.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.get_str("general.architecture").unwrap_or("");
        if arch != "llama" {
            return Err(Error::Config(format!("GGUF architecture is {arch:?}; only \"llama\" is supported")));
        }
        let need = |key: &str| -> Result<usize> {
            gguf.get_u64(key).map(|v| v as usize).ok_or_else(|| Error::Config(format!("GGUF metadata lacks {key}")))
        };
        let hidden_size = need("llama.embedding_length")?;
        let num_heads = need("llama.attention.head_count")?;
        let vocab_size = match gguf.get_u64("llama.vocab_size") {
            Some(v) => v as usize,
            None => gguf
                .get_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .ok_or_else(|| Error::Config("GGUF has neither llama.vocab_size nor tokenizer.ggml.tokens".into()))?,
        };
        let eos = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|k| gguf.get_u64(k).map(|v| v as u32))
            .fold(Vec::new(), |mut acc, id| {
                if !acc.contains(&id) {
                    acc.push(id);
                }
                acc
            });
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: need("llama.feed_forward_length")?,
            num_layers: need("llama.block_count")?,
            num_heads,
            num_kv_heads: gguf.get_u64("llama.attention.head_count_kv").map(|v| v as usize).unwrap_or(num_heads),
            head_dim: gguf
                .get_u64("llama.attention.key_length")
                .map(|v| v as usize)
                .unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0)),
            vocab_size,
            rms_norm_eps: gguf.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: gguf.get_f32("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            rope_freq_factors: None,
            max_position_embeddings: need("llama.context_length")?,
            tie_word_embeddings: false,
            bos_token_id: gguf.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
            eos_token_ids: eos,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.num_layers == 0
            || self.hidden_size == 0
            || self.num_heads == 0
            || self.num_kv_heads == 0
            || self.vocab_size == 0
        {
            return bad("a dimension of the model is zero".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!("{} heads is not a multiple of {} KV heads", self.num_heads, self.num_kv_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even and non-zero", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("rms_norm_eps and rope_theta must be finite".into());
        }
        Ok(())
    }

    /// Rotary inverse frequencies, one per pair of dimensions (head_dim / 2), in f32 as
    /// transformers computes them (`_compute_default_rope_parameters` then the llama3 rule);
    /// `libm`'s `powf`, the same bits on every target.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base: Vec<f32> =
            (0..dim).step_by(2).map(|i| 1.0 / libm::powf(self.rope_theta, i as f32 / dim as f32)).collect();
        if let Some(factors) = &self.rope_freq_factors {
            return base.iter().zip(factors).map(|(f, d)| f / d).collect();
        }
        let Some(s) = &self.rope_scaling else { return base };
        let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        base.iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_freq_wavelen {
                    f
                } else if wavelen > low_freq_wavelen {
                    f / s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}
