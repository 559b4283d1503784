//! The Llama model: finding and checking its tensors, loading them one at a time into a backend,
//! and the forward pass, written once (HF `LlamaForCausalLM`; llama2.c `forward`).

use crate::backend::Backend;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::format::{ByteSource, HostTensor, TensorEntry, TensorIndex};

/// Tensor names differ between HF checkpoints and GGUF files; the roles are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    HuggingFace,
    Gguf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Embed,
    AttnNorm,
    Q,
    K,
    V,
    O,
    MlpNorm,
    Gate,
    Up,
    Down,
    FinalNorm,
    LmHead,
}

impl Naming {
    fn name(self, role: Role, layer: usize) -> String {
        use Role::*;
        match self {
            Naming::HuggingFace => match role {
                Embed => "model.embed_tokens.weight".into(),
                FinalNorm => "model.norm.weight".into(),
                LmHead => "lm_head.weight".into(),
                AttnNorm => format!("model.layers.{layer}.input_layernorm.weight"),
                MlpNorm => format!("model.layers.{layer}.post_attention_layernorm.weight"),
                Q => format!("model.layers.{layer}.self_attn.q_proj.weight"),
                K => format!("model.layers.{layer}.self_attn.k_proj.weight"),
                V => format!("model.layers.{layer}.self_attn.v_proj.weight"),
                O => format!("model.layers.{layer}.self_attn.o_proj.weight"),
                Gate => format!("model.layers.{layer}.mlp.gate_proj.weight"),
                Up => format!("model.layers.{layer}.mlp.up_proj.weight"),
                Down => format!("model.layers.{layer}.mlp.down_proj.weight"),
            },
            Naming::Gguf => match role {
                Embed => "token_embd.weight".into(),
                FinalNorm => "output_norm.weight".into(),
                LmHead => "output.weight".into(),
                AttnNorm => format!("blk.{layer}.attn_norm.weight"),
                MlpNorm => format!("blk.{layer}.ffn_norm.weight"),
                Q => format!("blk.{layer}.attn_q.weight"),
                K => format!("blk.{layer}.attn_k.weight"),
                V => format!("blk.{layer}.attn_v.weight"),
                O => format!("blk.{layer}.attn_output.weight"),
                Gate => format!("blk.{layer}.ffn_gate.weight"),
                Up => format!("blk.{layer}.ffn_up.weight"),
                Down => format!("blk.{layer}.ffn_down.weight"),
            },
        }
    }
}

/// GGUF's rotary-factor tensor (llama.cpp's form of Llama 3 rope scaling), `(head_dim / 2)`.
pub const GGUF_ROPE_FREQS: &str = "rope_freqs.weight";

pub struct LayerWeights<B: Backend> {
    pub attn_norm: B::Vector,
    pub qkv: B::Qkv,
    pub o: B::Matrix,
    pub mlp_norm: B::Vector,
    pub gate_up: B::GateUp,
    pub down: B::Matrix,
}

pub struct ModelWeights<B: Backend> {
    pub embed: B::Embedding,
    pub layers: Vec<LayerWeights<B>>,
    pub final_norm: B::Vector,
    pub lm_head: B::Matrix,
}

/// A model file set: config, tensor index and the byte sources holding the tensors.
pub struct ModelFiles {
    pub config: LlamaConfig,
    pub index: TensorIndex,
    pub naming: Naming,
    /// One source per shard (`TensorEntry::shard`).
    pub sources: Vec<Box<dyn ByteSource>>,
}

impl ModelFiles {
    /// Settle what the config cannot say alone (tied head, GGUF rope factors) and check that
    /// every tensor the model needs is present with the shape the config implies.
    pub fn new(
        mut config: LlamaConfig,
        index: TensorIndex,
        naming: Naming,
        mut sources: Vec<Box<dyn ByteSource>>,
    ) -> Result<Self> {
        let lm_head = naming.name(Role::LmHead, 0);
        if index.get(&lm_head).is_none() {
            config.tie_word_embeddings = true;
        }
        if naming == Naming::Gguf
            && let Some(entry) = index.get(GGUF_ROPE_FREQS)
        {
            let t = HostTensor::read(source_for(&mut sources, entry)?, entry)?;
            let factors = t.to_f32()?;
            if factors.len() != config.head_dim / 2 {
                return Err(Error::format(
                    GGUF_ROPE_FREQS,
                    format!("has {} values, expected head_dim/2 = {}", factors.len(), config.head_dim / 2),
                ));
            }
            config.rope_freq_factors = Some(factors);
        }
        let files = Self { config, index, naming, sources };
        files.check_shapes()?;
        Ok(files)
    }

    fn expected(&self) -> Vec<(String, Vec<usize>)> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let mut out = vec![
            (self.naming.name(Role::Embed, 0), vec![c.vocab_size, h]),
            (self.naming.name(Role::FinalNorm, 0), vec![h]),
        ];
        if !c.tie_word_embeddings {
            out.push((self.naming.name(Role::LmHead, 0), vec![c.vocab_size, h]));
        }
        for l in 0..c.num_layers {
            let n = |r| self.naming.name(r, l);
            out.extend([
                (n(Role::AttnNorm), vec![h]),
                (n(Role::Q), vec![c.num_heads * hd, h]),
                (n(Role::K), vec![c.num_kv_heads * hd, h]),
                (n(Role::V), vec![c.num_kv_heads * hd, h]),
                (n(Role::O), vec![h, c.num_heads * hd]),
                (n(Role::MlpNorm), vec![h]),
                (n(Role::Gate), vec![c.intermediate_size, h]),
                (n(Role::Up), vec![c.intermediate_size, h]),
                (n(Role::Down), vec![h, c.intermediate_size]),
            ]);
        }
        out
    }

    fn check_shapes(&self) -> Result<()> {
        for (name, shape) in self.expected() {
            let entry = self
                .index
                .get(&name)
                .ok_or_else(|| Error::Config(format!("tensor {name} is missing from the model file")))?;
            if entry.shape != shape {
                return Err(Error::Config(format!(
                    "tensor {name} has shape {:?} but the config implies {shape:?}",
                    entry.shape
                )));
            }
        }
        Ok(())
    }

    /// Every tensor the model uses, for `convert`: its name in these files, its GGUF name, and
    /// for Q and K the heads over which GGUF interleaves their rows (Q: the heads; K: the KV
    /// heads).
    pub fn tensor_names(&self) -> Vec<(String, String, Option<usize>)> {
        use Role::*;
        let c = &self.config;
        let mut roles = vec![(Embed, 0), (FinalNorm, 0)];
        if !c.tie_word_embeddings {
            roles.push((LmHead, 0));
        }
        for l in 0..c.num_layers {
            roles.extend([AttnNorm, Q, K, V, O, MlpNorm, Gate, Up, Down].map(|r| (r, l)));
        }
        roles
            .into_iter()
            .map(|(role, l)| {
                let heads = match role {
                    Q => Some(c.num_heads),
                    K => Some(c.num_kv_heads),
                    _ => None,
                };
                (self.naming.name(role, l), Naming::Gguf.name(role, l), heads)
            })
            .collect()
    }

    /// Total bytes of the tensors the model uses, for progress reporting.
    pub fn weight_bytes(&self) -> u64 {
        self.expected().iter().filter_map(|(n, _)| self.index.get(n)).map(|e| e.byte_len).sum()
    }

    fn read(&mut self, role: Role, layer: usize) -> Result<HostTensor> {
        let name = self.naming.name(role, layer);
        let entry = self.index.get(&name).ok_or_else(|| Error::Config(format!("tensor {name} is missing")))?.clone();
        let mut t = HostTensor::read(source_for(&mut self.sources, &entry)?, &entry)?;
        if self.naming == Naming::Gguf && matches!(role, Role::Q | Role::K) {
            let heads = if role == Role::Q { self.config.num_heads } else { self.config.num_kv_heads };
            unpermute_gguf_rows(&mut t, heads)?;
        }
        Ok(t)
    }

    /// Stream every tensor into the backend, one at a time; `progress(done_bytes, total_bytes)`.
    pub fn load<B: Backend>(&mut self, backend: &B, progress: &mut dyn FnMut(u64, u64)) -> Result<ModelWeights<B>> {
        let total = self.weight_bytes();
        let mut done = 0u64;
        let mut tick = |t: &HostTensor, done: &mut u64| {
            *done += t.bytes.len() as u64;
            progress(*done, total);
        };
        let t = self.read(Role::Embed, 0)?;
        tick(&t, &mut done);
        let embed = backend.embedding(t)?;
        let mut layers = Vec::with_capacity(self.config.num_layers);
        let (heads, kv_heads) = (self.config.num_heads, self.config.num_kv_heads);
        for l in 0..self.config.num_layers {
            let mut read = |role| -> Result<HostTensor> {
                let t = self.read(role, l)?;
                tick(&t, &mut done);
                Ok(t)
            };
            let qkv = backend.qkv(read(Role::Q)?, read(Role::K)?, read(Role::V)?, heads, kv_heads)?;
            let o = backend.matrix(read(Role::O)?)?;
            let gate_up = backend.gate_up(read(Role::Gate)?, read(Role::Up)?)?;
            let down = backend.matrix(read(Role::Down)?)?;
            let attn_norm = backend.vector(self.read(Role::AttnNorm, l)?)?;
            let mlp_norm = backend.vector(self.read(Role::MlpNorm, l)?)?;
            layers.push(LayerWeights { attn_norm, qkv, o, mlp_norm, gate_up, down });
        }
        let final_norm = backend.vector(self.read(Role::FinalNorm, 0)?)?;
        let lm_head = if self.config.tie_word_embeddings {
            backend.tied_head(&embed)?
        } else {
            let t = self.read(Role::LmHead, 0)?;
            tick(&t, &mut done);
            backend.matrix(t)?
        };
        Ok(ModelWeights { embed, layers, final_norm, lm_head })
    }
}

fn source_for<'a>(sources: &'a mut [Box<dyn ByteSource>], entry: &TensorEntry) -> Result<&'a mut dyn ByteSource> {
    match sources.get_mut(entry.shard) {
        Some(s) => Ok(s.as_mut()),
        None => Err(Error::Config(format!("tensor {} is in shard {} which was not opened", entry.name, entry.shard))),
    }
}

/// GGUF converters reorder Q/K rows so llama.cpp can rotate adjacent pairs: within each head,
/// HF row `j * half + i` is stored at row `2 * i + j`. Undo it so one rope (halves) serves both.
/// Rows are whole runs of bytes in every storage type (blocks never cross rows), so quantized
/// tensors are reordered exactly.
fn unpermute_gguf_rows(t: &mut HostTensor, heads: usize) -> Result<()> {
    let rows = t.shape[0];
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || !t.bytes.len().is_multiple_of(rows)
    {
        return Err(Error::format(
            &t.name,
            format!("cannot undo the Q/K permutation of shape {:?} for {heads} heads", t.shape),
        ));
    }
    let row_bytes = t.bytes.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = crate::error::try_zeroed(t.bytes.len(), || format!("tensor {}", t.name))?;
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let hf_row = h * head_dim + j * half + i;
                let gguf_row = h * head_dim + 2 * i + j;
                out[hf_row * row_bytes..(hf_row + 1) * row_bytes]
                    .copy_from_slice(&t.bytes[gguf_row * row_bytes..(gguf_row + 1) * row_bytes]);
            }
        }
    }
    t.bytes = out;
    Ok(())
}

/// One forward pass over the embedded tokens `x` `(seq, hidden)`, each row at its place in `rows`
/// (a prompt chunk, or one row per sequence of a batch), appending to the KV cache; returns the
/// logits `(spans, vocab)` that predict the token after each span's last.
pub fn forward<B: Backend>(
    b: &B,
    w: &ModelWeights<B>,
    rope: &B::Rope,
    c: &LlamaConfig,
    cache: &mut B::Cache,
    mut x: B::Act,
    rows: &B::Rows,
) -> Result<B::Act> {
    let eps = c.rms_norm_eps;
    for (l, layer) in w.layers.iter().enumerate() {
        let attn = b.self_attention(&x, &layer.attn_norm, eps, &layer.qkv, rope, cache, l, rows)?; // (seq, heads * hd)
        x = b.linear_residual(&attn, &layer.o, &x)?;
        let mlp = b.norm_swiglu(&x, &layer.mlp_norm, eps, &layer.gate_up)?; // (seq, intermediate)
        x = b.linear_residual(&mlp, &layer.down, &x)?;
    }
    b.logits(&x, &w.final_norm, eps, &w.lm_head, rows) // (spans, vocab)
}
