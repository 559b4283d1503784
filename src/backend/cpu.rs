//! CPU backend on candle-core: f32 math, weights as f32 matrices or GGML quantized blocks (the
//! same block formats and activation quantization llama.cpp uses). Our own kernels
//! (`cpu_float`, `cpu_blocks`) take f32, Q8_0, Q4_0 and Q4_1; candle's quantized matmul the other
//! GGML types.

use super::cpu_blocks::BlockMatrix;
use super::cpu_float::{Bf16, Element, FloatMatrix};
use super::{Backend, Chosen, Span, unfused};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::format::{HostTensor, StorageType};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{D, Device, Module, Tensor};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct CpuBackend {
    device: Device,
    /// Re-quantize float matrices on load (None keeps them f32: the path the goldens check).
    quant: Option<GgmlDType>,
    /// Float tensors `quant` could not take, kept as floats: rows that are not whole blocks (as
    /// llama.cpp's converter keeps such tensors in a wider type); `describe` says how many.
    kept_float: AtomicUsize,
}

impl CpuBackend {
    pub fn new(quant: Option<GgmlDType>) -> Self {
        Self { device: Device::Cpu, quant, kept_float: AtomicUsize::new(0) }
    }

    fn float_tensor(&self, t: &HostTensor) -> Result<Tensor> {
        let values = t.to_f32()?;
        Ok(Tensor::from_vec(values, t.shape.as_slice(), &self.device)?)
    }

    /// A float weight as our float matrix, converted a row at a time (never a whole f32 copy
    /// beside the interleaved one); bf16 stays bf16 (widened exactly as the products read it).
    fn float_matrix(&self, t: &HostTensor) -> Result<Arc<FloatMatrix>> {
        let (rows, cols) = match t.shape.as_slice() {
            &[rows, cols] => (rows, cols),
            shape => return Err(Error::Other(format!("tensor {} is {shape:?}, not a matrix", t.name))),
        };
        // GGUF's F32, F16 and BF16 tensors are the same little-endian rows as safetensors'.
        let float = match t.storage {
            StorageType::F32 | StorageType::Ggml(GgmlDType::F32) => StorageType::F32,
            StorageType::F16 | StorageType::Ggml(GgmlDType::F16) => StorageType::F16,
            StorageType::BF16 | StorageType::Ggml(GgmlDType::BF16) => StorageType::BF16,
            StorageType::Ggml(dtype) => {
                return Err(Error::Other(format!("tensor {} is {dtype:?}-quantized, not plain floats", t.name)));
            }
        };
        let size = if float == StorageType::F32 { 4 } else { 2 };
        if Some(t.bytes.len()) != rows.checked_mul(cols).and_then(|n| n.checked_mul(size)) {
            return Err(Error::Other(format!("tensor {} holds {} bytes for {rows}x{cols}", t.name, t.bytes.len())));
        }
        // Row `r`'s values, each from its `size` bytes.
        fn read<E: Element>(
            t: &HostTensor,
            rows: usize,
            cols: usize,
            size: usize,
            value: fn(&[u8]) -> E,
        ) -> Result<FloatMatrix> {
            FloatMatrix::from_rows(rows, cols, |r, out| {
                let bytes = &t.bytes[r * cols * size..(r + 1) * cols * size];
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(size)) {
                    *o = value(c);
                }
                Ok(())
            })
        }
        let matrix = match float {
            StorageType::F32 => read(t, rows, cols, 4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))?,
            StorageType::F16 => read(t, rows, cols, 2, |c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())?,
            _ => read(t, rows, cols, 2, |c| Bf16(u16::from_le_bytes([c[0], c[1]])))?,
        };
        Ok(Arc::new(matrix))
    }

    fn qtensor(&self, t: &HostTensor, dtype: GgmlDType) -> Result<QTensor> {
        let storage = QStorage::from_data(Cow::Borrowed(&t.bytes), &self.device, dtype)?;
        Ok(QTensor::new(storage, t.shape.as_slice())?)
    }

    /// The weight as a quantized tensor if it is or should be one, else None.
    fn quantized(&self, t: &HostTensor) -> Result<Option<QTensor>> {
        match t.storage {
            StorageType::Ggml(dtype) => Ok(Some(self.qtensor(t, dtype)?)),
            _ => match self.quant {
                Some(dtype) if t.shape.last().is_some_and(|&cols| cols % dtype.block_size() == 0) => {
                    Ok(Some(QTensor::quantize(&self.float_tensor(t)?, dtype)?))
                }
                Some(_) => {
                    self.kept_float.fetch_add(1, Ordering::Relaxed);
                    Ok(None)
                }
                None => Ok(None),
            },
        }
    }
}

/// A weight matrix: f32 or Q8_0/Q4_0/Q4_1 blocks (our kernels, the same bits on every target),
/// or another GGML type (candle's quantized matmul).
pub enum CpuMatrix {
    Float(Arc<FloatMatrix>),
    Blocks(Arc<BlockMatrix>),
    Candle(QMatMul),
}

/// A GGUF tensor of plain floats (F32, F16, BF16): kept as floats whatever the quant says, as
/// GGUF block types keep their blocks.
fn is_ggml_float(t: &HostTensor) -> bool {
    matches!(t.storage, StorageType::Ggml(GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16))
}

fn block_matrix(q: &QTensor) -> Result<Option<CpuMatrix>> {
    let (rows, cols) = q.shape().dims2()?;
    Ok(BlockMatrix::from_ggml(q.dtype(), &q.data()?, rows, cols)?.map(|m| CpuMatrix::Blocks(Arc::new(m))))
}

pub enum CpuEmbedding {
    /// Rows read from the f32 matrix a tied LM head multiplies with (held once).
    Float(Arc<FloatMatrix>),
    /// Q8_0/Q4_0/Q4_1: rows dequantized on lookup from the blocks a tied LM head multiplies
    /// with (held once).
    Blocks(Arc<BlockMatrix>),
    /// Other GGML types (candle).
    Quantized(Arc<QTensor>),
}

pub struct CpuCache {
    /// Per layer: K and V, each `(kv_heads, max_seq, head_dim)`.
    layers: Vec<(Tensor, Tensor)>,
    kv_heads: usize,
    head_dim: usize,
    max_seq: usize,
}

pub struct CpuRope {
    /// `(max_seq, head_dim)`: each half-table repeated twice, as HF builds `cos`/`sin`.
    cos: Tensor,
    sin: Tensor,
}

impl Backend for CpuBackend {
    type Matrix = CpuMatrix;
    type Embedding = CpuEmbedding;
    type Vector = Tensor;
    type Act = Tensor;
    type Cache = CpuCache;
    type Rope = CpuRope;
    type Token = Chosen;
    type Rows = Vec<Span>;
    type Qkv = unfused::Qkv<CpuMatrix>;
    type GateUp = unfused::GateUp<CpuMatrix>;

    fn describe(&self) -> String {
        let kept = match self.kept_float.load(Ordering::Relaxed) {
            0 => String::new(),
            n => {
                let block = self.quant.map_or(0, |d| d.block_size());
                format!("; {n} tensors kept as floats, their rows not whole {block}-weight blocks")
            }
        };
        format!(
            "cpu (candle, {} threads, {} quantized kernel{kept})",
            rayon::current_num_threads(),
            super::cpu_blocks::kernel().name()
        )
    }

    fn matrix(&self, t: HostTensor) -> Result<CpuMatrix> {
        if is_ggml_float(&t) {
            return Ok(CpuMatrix::Float(self.float_matrix(&t)?));
        }
        match self.quantized(&t)? {
            Some(q) => match block_matrix(&q)? {
                Some(m) => Ok(m),
                None => Ok(CpuMatrix::Candle(QMatMul::from_qtensor(q)?)),
            },
            None => Ok(CpuMatrix::Float(self.float_matrix(&t)?)),
        }
    }

    fn embedding(&self, t: HostTensor) -> Result<CpuEmbedding> {
        if is_ggml_float(&t) {
            return Ok(CpuEmbedding::Float(self.float_matrix(&t)?));
        }
        match self.quantized(&t)? {
            Some(q) => Ok(match block_matrix(&q)? {
                Some(CpuMatrix::Blocks(m)) => CpuEmbedding::Blocks(m),
                _ => CpuEmbedding::Quantized(Arc::new(q)),
            }),
            None => Ok(CpuEmbedding::Float(self.float_matrix(&t)?)),
        }
    }

    fn tied_head(&self, e: &CpuEmbedding) -> Result<CpuMatrix> {
        Ok(match e {
            CpuEmbedding::Float(m) => CpuMatrix::Float(m.clone()),
            CpuEmbedding::Blocks(m) => CpuMatrix::Blocks(m.clone()),
            CpuEmbedding::Quantized(q) => CpuMatrix::Candle(QMatMul::from_arc(q.clone())?),
        })
    }

    fn vector(&self, t: HostTensor) -> Result<Tensor> {
        self.float_tensor(&t)
    }

    fn rope_table(&self, inv_freq: &[f32], max_seq: usize) -> Result<CpuRope> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_seq * half * 2);
        let mut sin = Vec::with_capacity(max_seq * half * 2);
        for pos in 0..max_seq {
            // f32 product then f32 cos/sin, as transformers' LlamaRotaryEmbedding does; `libm`'s,
            // the same code on every target (the system's differ in the last bit between them).
            let angles: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|&a| libm::cosf(a)));
                sin.extend(angles.iter().map(|&a| libm::sinf(a)));
            }
        }
        Ok(CpuRope {
            cos: Tensor::from_vec(cos, (max_seq, half * 2), &self.device)?,
            sin: Tensor::from_vec(sin, (max_seq, half * 2), &self.device)?,
        })
    }

    fn new_cache(&self, cfg: &LlamaConfig, max_seq: usize) -> Result<CpuCache> {
        let layers = (0..cfg.num_layers)
            .map(|_| {
                let z = || {
                    let len = cfg.num_kv_heads.checked_mul(max_seq).and_then(|n| n.checked_mul(cfg.head_dim));
                    let len =
                        len.ok_or_else(|| Error::Other(format!("a KV cache of {max_seq} positions is too large")))?;
                    let zeros =
                        crate::error::try_zeroed::<f32>(len, || format!("the KV cache of {max_seq} positions"))?;
                    Ok::<_, Error>(Tensor::from_vec(zeros, (cfg.num_kv_heads, max_seq, cfg.head_dim), &self.device)?)
                };
                Ok((z()?, z()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuCache { layers, kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim, max_seq })
    }

    fn copy_rows(&self, cache: &mut CpuCache, from: usize, to: usize, len: usize) -> Result<()> {
        if from.max(to) + len > cache.max_seq {
            return Err(Error::Backend(format!("copy of cache rows past its {} rows", cache.max_seq)));
        }
        for (k, v) in &cache.layers {
            for t in [k, v] {
                // A copy of its own: with one KV head the rows are already contiguous, and
                // `contiguous` would hand back the cache's own storage, which `slice_set` refuses.
                let rows = t.narrow(1, from, len)?.force_contiguous()?;
                t.slice_set(&rows, 1, to)?;
            }
        }
        Ok(())
    }

    fn rows(&self, spans: &[Span]) -> Result<Vec<Span>> {
        Ok(spans.to_vec())
    }

    fn activation_from(&self, data: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
        Ok(Tensor::from_vec(data.to_vec(), (rows, cols), &self.device)?)
    }

    fn embed(&self, table: &CpuEmbedding, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        // Rows by id, each checked against the vocabulary.
        let lookup = |rows: usize, cols: usize, row: &dyn Fn(usize) -> Vec<f32>| -> Result<Tensor> {
            let mut values = Vec::with_capacity(ids.dim(0)? * cols);
            for id in ids.to_vec1::<u32>()? {
                if id as usize >= rows {
                    return Err(Error::Prompt(format!("token id {id} is outside the vocabulary")));
                }
                values.extend(row(id as usize));
            }
            Ok(Tensor::from_vec(values, (ids.dim(0)?, cols), &self.device)?)
        };
        Ok(match table {
            CpuEmbedding::Float(m) => lookup(m.rows, m.cols, &|r| m.row(r))?,
            CpuEmbedding::Blocks(m) => lookup(m.rows, m.cols, &|r| m.row(r))?,
            CpuEmbedding::Quantized(q) => q.embedding(&ids)?,
        })
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        // By hand rather than candle's mean: its sum's vector width (and so its order of
        // additions) is the target's, which would give the browser other bits than the CLI.
        let x = x.contiguous()?;
        let out = with_f32(&x, |x| with_f32(w, |w| rms_norm_rows(x, w, eps)))?;
        Ok(Tensor::from_vec(out, x.shape(), &self.device)?)
    }

    fn linear(&self, x: &Tensor, w: &CpuMatrix) -> Result<Tensor> {
        let (seq, width) = x.dims2()?;
        let values = |cols: usize| {
            if width != cols {
                return Err(Error::Backend(format!("a product of {width}-wide rows with a {cols}-wide matrix")));
            }
            Ok(x.flatten_all()?.to_vec1::<f32>()?)
        };
        match w {
            CpuMatrix::Float(m) => Ok(Tensor::from_vec(m.forward(&values(m.cols)?, seq), (seq, m.rows), &self.device)?),
            CpuMatrix::Blocks(m) => {
                Ok(Tensor::from_vec(m.forward(&values(m.cols)?, seq), (seq, m.rows), &self.device)?)
            }
            CpuMatrix::Candle(m) => Ok(m.forward(x)?),
        }
    }

    fn rope(&self, x: &Tensor, rope: &CpuRope, heads: usize, rows: &Vec<Span>) -> Result<Tensor> {
        let (seq, width) = x.dims2()?;
        let head_dim = width / heads;
        let half = head_dim / 2;
        let x = x.reshape((seq, heads, head_dim))?;
        let (cos, sin) = match rows.as_slice() {
            [one] => (rope.cos.narrow(0, one.pos, seq)?, rope.sin.narrow(0, one.pos, seq)?),
            spans => {
                let positions: Vec<u32> = spans.iter().flat_map(|s| (s.pos..s.pos + s.len).map(|p| p as u32)).collect();
                let positions = Tensor::new(positions, &self.device)?;
                (rope.cos.index_select(&positions, 0)?, rope.sin.index_select(&positions, 0)?)
            }
        };
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let out = (x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        Ok(out.reshape((seq, width))?)
    }

    fn attention(
        &self,
        cache: &mut CpuCache,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rows: &Vec<Span>,
    ) -> Result<Tensor> {
        let (seq, q_width) = q.dims2()?;
        let (kv_heads, head_dim) = (cache.kv_heads, cache.head_dim);
        let heads = q_width / head_dim;
        if Span::rows(rows) != seq {
            return Err(Error::Backend(format!("attention: {seq} rows for spans of {}", Span::rows(rows))));
        }
        if let Some(s) = rows.iter().find(|s| s.base + s.pos + s.len > cache.max_seq) {
            return Err(Error::Prompt(format!(
                "sequence of {} tokens exceeds the KV cache of {}",
                s.pos + s.len,
                cache.max_seq
            )));
        }
        let (k_cache, v_cache) =
            cache.layers.get(layer).ok_or_else(|| Error::Backend(format!("no cache for layer {layer}")))?;
        // (n, kv_heads * hd) -> (kv_heads, n, hd), written at the span's rows.
        let to_heads = |t: &Tensor, n: usize, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((n, heads, head_dim))?.transpose(0, 1)?.contiguous()?)
        };
        // Where each span's rows start in q, k and v.
        let starts: Vec<usize> = rows
            .iter()
            .scan(0, |next, s| {
                let start = *next;
                *next += s.len;
                Some(start)
            })
            .collect();
        // Each span appends its K/V, then attends over its own sequence's rows (which no other
        // span writes).
        for (span, &first) in rows.iter().zip(&starts) {
            let at = span.base + span.pos;
            k_cache.slice_set(&to_heads(&k.narrow(0, first, span.len)?, span.len, kv_heads)?, 1, at)?;
            v_cache.slice_set(&to_heads(&v.narrow(0, first, span.len)?, span.len, kv_heads)?, 1, at)?;
        }
        // Every row, a prompt's or a decode step's, attends straight over the cache with the
        // same arithmetic (`attend_block`): a position's output is the same bits whether it is read
        // in a prompt, decoded alone or decoded in a batch, and the same on every target.
        let q_host = q.flatten_all()?.to_vec1::<f32>()?;
        let shapes: Vec<RowShape> = rows
            .iter()
            .flat_map(|s| (0..s.len).map(move |i| RowShape { first: s.base, total: s.pos + i + 1 }))
            .collect();
        let dims = AttendDims { heads, kv_heads, head_dim, max_seq: cache.max_seq };
        let out = with_f32(k_cache, |kc| with_f32(v_cache, |vc| Ok(attend(&q_host, kc, vc, dims, &shapes))))?;
        Ok(Tensor::from_vec(out, (seq, heads * head_dim), &self.device)?)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        // On our thread pool, not candle's: candle shares large element-wise ops (a batch's
        // 8 x 8192 gate) with its own workers, which then spin for a millisecond on the cores the
        // next matrix product needs. The same formula as candle's `silu`, element by element.
        if gate.shape() != up.shape() {
            return Err(Error::Backend(format!("swiglu of {:?} and {:?}", gate.shape(), up.shape())));
        }
        let (gate, up) = (gate.contiguous()?, up.contiguous()?);
        let out = with_f32(&gate, |g| with_f32(&up, |u| Ok(silu_mul(g, u))))?;
        Ok(Tensor::from_vec(out, gate.shape(), &self.device)?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }

    fn last_rows(&self, x: &Tensor, rows: &Vec<Span>) -> Result<Tensor> {
        if let [one] = rows.as_slice() {
            return Ok(x.narrow(0, one.len - 1, 1)?);
        }
        if Span::all_single(rows) {
            return Ok(x.clone());
        }
        let mut end = 0u32;
        let last: Vec<u32> = rows
            .iter()
            .map(|s| {
                end += s.len as u32;
                end - 1
            })
            .collect();
        Ok(x.index_select(&Tensor::new(last, &self.device)?, 0)?)
    }

    fn qkv(&self, q: HostTensor, k: HostTensor, v: HostTensor, heads: usize, kv_heads: usize) -> Result<Self::Qkv> {
        Ok(unfused::Qkv { q: self.matrix(q)?, k: self.matrix(k)?, v: self.matrix(v)?, heads, kv_heads })
    }

    fn gate_up(&self, gate: HostTensor, up: HostTensor) -> Result<Self::GateUp> {
        Ok(unfused::GateUp { gate: self.matrix(gate)?, up: self.matrix(up)? })
    }

    fn self_attention(
        &self,
        x: &Tensor,
        norm: &Tensor,
        eps: f32,
        qkv: &Self::Qkv,
        rope: &CpuRope,
        cache: &mut CpuCache,
        layer: usize,
        rows: &Vec<Span>,
    ) -> Result<Tensor> {
        unfused::self_attention(self, x, norm, eps, qkv, rope, cache, layer, rows)
    }

    fn linear_residual(&self, a: &Tensor, w: &CpuMatrix, x: &Tensor) -> Result<Tensor> {
        unfused::linear_residual(self, a, w, x)
    }

    fn norm_swiglu(&self, x: &Tensor, norm: &Tensor, eps: f32, gate_up: &Self::GateUp) -> Result<Tensor> {
        unfused::norm_swiglu(self, x, norm, eps, gate_up)
    }

    fn logits(&self, x: &Tensor, norm: &Tensor, eps: f32, head: &CpuMatrix, rows: &Vec<Span>) -> Result<Tensor> {
        unfused::logits(self, x, norm, eps, head, rows)
    }

    fn choose(&self, logits: &Tensor, watch: &[u32]) -> Result<Vec<Chosen>> {
        logits
            .to_vec2::<f32>()?
            .iter()
            .map(|row| {
                let watched = watch
                    .iter()
                    .map(|&id| {
                        let value = row.get(id as usize).copied();
                        value.ok_or_else(|| Error::Backend(format!("watched id {id} is outside the logits")))
                    })
                    .collect::<Result<Vec<f32>>>()?;
                let id = argmax_first(row).ok_or_else(|| {
                    if row.is_empty() {
                        return Error::Backend("argmax of an empty row".into());
                    }
                    // Only NaN: weights that overflow or are not numbers (a corrupt or badly
                    // converted file), never a property of the prompt.
                    Error::Other(
                        "every logit the model computed is NaN: its weights are broken (a corrupt or badly converted model file?)"
                            .into(),
                    )
                })?;
                Ok(Chosen { id, watched })
            })
            .collect()
    }

    fn embed_tokens(&self, table: &CpuEmbedding, tokens: &[Chosen]) -> Result<Tensor> {
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        self.embed(table, &ids)
    }

    async fn read_token(&self, token: &Chosen) -> Result<Chosen> {
        Ok(token.clone())
    }

    async fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// The working memory one forward pass may need beside the weights and the KV cache, at its
/// worst: a prompt chunk of `chunk` rows attending over `context` positions (its queries and
/// outputs on the host, and a block of rows' scores over the context per thread), the chunk's layer
/// activations, and one row of logits per sequence. f32 throughout.
pub fn forward_scratch_bytes(config: &crate::config::LlamaConfig, context: u64, chunk: u64, batch: u64) -> u64 {
    let c = config;
    let (width, kv_width, hidden, ff, vocab) = (
        (c.num_heads * c.head_dim) as u64,
        (c.num_kv_heads * c.head_dim) as u64,
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let threads = rayon::current_num_threads() as u64;
    let attention = (3 * chunk * width).saturating_add((threads * ATTEND_ROWS as u64).saturating_mul(context));
    let layer = chunk * (3 * ff + 8 * hidden + 2 * kv_width);
    let logits = 2 * batch.max(1) * vocab;
    attention.saturating_add(layer).saturating_add(logits).saturating_mul(4)
}

/// The sizes every row's attention shares.
#[derive(Clone, Copy)]
struct AttendDims {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Rows of the cache `(kv_heads, max_seq, head_dim)`.
    max_seq: usize,
}

/// One query row's place (row i of `q` is `rows[i]`): the cached positions it attends to.
#[derive(Clone, Copy)]
struct RowShape {
    /// The cache row of the sequence's position 0.
    first: usize,
    /// Cached positions to attend to (the row's own included).
    total: usize,
}

/// A contiguous f32 tensor's values, borrowed.
fn with_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| Error::Backend("a tensor is not contiguous".into()))?;
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(&cpu.as_slice::<f32>()?[start..end]),
        _ => Err(Error::Backend("a tensor is not in host memory".into())),
    }
}

/// `silu(gate) * up`, element by element; large inputs in parallel (each element's arithmetic
/// is the same either way).
fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    const CHUNK: usize = 8192;
    let mut out = vec![0f32; gate.len()];
    let run = |((o, g), u): ((&mut [f32], &[f32]), &[f32])| {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + libm::expf(-g)) * u;
        }
    };
    if gate.len() >= 4 * CHUNK && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(run);
    } else {
        out.chunks_mut(CHUNK).zip(gate.chunks(CHUNK)).zip(up.chunks(CHUNK)).for_each(run);
    }
    out
}

/// Rows of one sequence attended together in one task: one pass over a head's cached keys and
/// values serves them all (a prompt's rows would otherwise each read them from memory again).
const ATTEND_ROWS: usize = 8;

/// Attention of each row in `rows` over the cache, `(rows, heads * head_dim)`. Tasks are (block,
/// query head) pairs, a block being up to `ATTEND_ROWS` consecutive rows of one sequence
/// (`attend_block`), run in parallel where there is enough work to share (as the block products
/// decide). Each row's arithmetic is the same whatever block, task or thread it is in.
fn attend(q: &[f32], kc: &[f32], vc: &[f32], d: AttendDims, rows: &[RowShape]) -> Vec<f32> {
    use rayon::prelude::*;
    let hd = d.head_dim;
    let width = d.heads * hd;
    let mut blocks: Vec<Range<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match blocks.last_mut() {
            Some(b)
                if b.len() < ATTEND_ROWS
                    && rows[b.end - 1].first == row.first
                    && rows[b.end - 1].total + 1 == row.total =>
            {
                b.end = i + 1
            }
            _ => blocks.push(i..i + 1),
        }
    }
    let tasks: Vec<(Range<usize>, usize)> =
        blocks.iter().flat_map(|b| (0..d.heads).map(move |h| (b.clone(), h))).collect();
    let task = |(block, h): &(Range<usize>, usize)| {
        let base = ((h / (d.heads / d.kv_heads)) * d.max_seq + rows[block.start].first) * hd;
        let longest = rows[block.end - 1].total * hd;
        let queries: Vec<&[f32]> = block.clone().map(|i| &q[i * width + h * hd..][..hd]).collect();
        attend_block(&queries, &kc[base..base + longest], &vc[base..base + longest])
    };
    let work: usize = rows.iter().map(|r| d.heads * r.total * hd * 2).sum();
    let outs: Vec<Vec<f32>> = if work >= super::cpu_blocks::PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        tasks.par_iter().map(task).collect()
    } else {
        tasks.iter().map(task).collect()
    };
    let mut out = vec![0f32; rows.len() * width];
    for ((block, h), o) in tasks.iter().zip(outs) {
        for (i, o) in block.clone().zip(o.chunks_exact(hd)) {
            let at = i * width + h * hd;
            out[at..at + hd].copy_from_slice(o);
        }
    }
    out
}

/// One query head's attention for consecutive rows of a sequence (`queries`, each `head_dim`
/// values; row r attends to the first `keys.len() / head_dim - (rows - 1 - r)` cached positions),
/// over its KV head's cached keys and values; `(rows, head_dim)`. Per row: the scaled scores
/// (`dot`), a softmax (`libm`'s `expf`, the same code on every target; the sum in position
/// order), and the weighted sum of the values in position order: the same operations in the
/// same order as the row alone. f32 throughout, without candle: its matrix products and sums
/// take the target's vector width, so the order of additions, and with it the bits, would differ
/// between the CLI and the browser.
fn attend_block(queries: &[&[f32]], keys: &[f32], values: &[f32]) -> Vec<f32> {
    // The same code compiled for AVX2 where the block kernels run on it: its wider registers
    // hold `dot`'s eight lanes at once, and element-wise arithmetic (no fused multiply-add) gives
    // the same bits at any vector width.
    #[cfg(target_arch = "x86_64")]
    if super::cpu_blocks::kernel() != super::cpu_blocks::Kernel::Portable {
        // SAFETY: the AVX2 and AVX-512 kernels are only chosen on CPUs with AVX2
        // (`Kernel::available`).
        return unsafe { attend_block_avx2(queries, keys, values) };
    }
    attend_block_in(queries, keys, values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_block_avx2(queries: &[&[f32]], keys: &[f32], values: &[f32]) -> Vec<f32> {
    attend_block_in(queries, keys, values)
}

/// `attend_block`'s body, inlined into each instruction set's copy.
#[inline(always)]
fn attend_block_in(queries: &[&[f32]], keys: &[f32], values: &[f32]) -> Vec<f32> {
    // Positions a tile: a tile of keys or values (16 KiB at head_dim 64) stays in L1 while each
    // row of the block reads it.
    const TILE: usize = 64;
    let (n, hd) = (queries.len(), queries[0].len());
    let longest = keys.len() / hd;
    let total = |r: usize| longest - (n - 1 - r);
    let scale = 1.0 / (hd as f32).sqrt();
    // Row r's scores at r * longest, then its probabilities in their place.
    let mut p = vec![0f32; n * longest];
    for j0 in (0..longest).step_by(TILE) {
        for (r, q) in queries.iter().enumerate() {
            let end = total(r).min(j0 + TILE);
            if end > j0 {
                let scores = &mut p[r * longest + j0..r * longest + end];
                for (s, k) in scores.iter_mut().zip(keys[j0 * hd..end * hd].chunks_exact(hd)) {
                    *s = dot(k, q) * scale;
                }
            }
        }
    }
    for r in 0..n {
        let row = &mut p[r * longest..r * longest + total(r)];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = libm::expf(*v - max);
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    let mut out = vec![0f32; n * hd];
    for j0 in (0..longest).step_by(TILE) {
        for (r, o) in out.chunks_exact_mut(hd).enumerate() {
            let end = total(r).min(j0 + TILE);
            for (&w, v) in p[r * longest + j0..r * longest + end.max(j0)].iter().zip(values[j0 * hd..].chunks_exact(hd))
            {
                for (o, x) in o.iter_mut().zip(v) {
                    *o += w * x;
                }
            }
        }
    }
    out
}

/// RMS norm of each row of `x` (rows of `w.len()` values): `x / sqrt(mean(x^2) + eps) * w`, the
/// sum of squares in `dot`'s fixed order.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>> {
    let cols = w.len();
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(Error::Backend(format!("rms_norm of {} values in rows of {cols}", x.len())));
    }
    let scale = 1.0 / cols as f32;
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(cols) {
        let inv = 1.0 / (dot(row, row) * scale + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &g)| v * inv * g));
    }
    Ok(out)
}

/// `a . b` in eight lanes (element i into lane i % 8), the lanes then added in a fixed tree: a
/// vector register's worth of independent sums instead of one serial chain, in the same order
/// for every call (so for every batch).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for j in 0..8 {
            lanes[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ta.iter().zip(tb).enumerate() {
        lanes[j] += x * y;
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// Index of the largest value, the first one on ties (as `torch.argmax` and llama.cpp do).
/// NaN never wins.
pub fn argmax_first(values: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row's attention is the same bits in a block of eight (a prompt's rows) as alone (a
    /// decode step), and compiled for AVX2 as in portable code (the browser's).
    #[test]
    fn a_rows_attention_is_the_same_bits_in_a_block_and_in_every_instruction_set() {
        let hd = 64;
        let longest = 150; // past two 64-position tiles, and not a multiple of one
        let values = |n, seed| crate::synth::random_values(seed, n, 1.0);
        let (keys, vals) = (values(longest * hd, 1), values(longest * hd, 2));
        let q = values(ATTEND_ROWS * hd, 3);
        let queries: Vec<&[f32]> = q.chunks_exact(hd).collect();
        let block = attend_block_in(&queries, &keys, &vals);
        for (r, query) in queries.iter().enumerate() {
            let total = longest - (ATTEND_ROWS - 1 - r);
            let alone = attend_block_in(&[query], &keys[..total * hd], &vals[..total * hd]);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&block[r * hd..][..hd]), bits(&alone), "row {r}: blocked vs alone");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is there.
            let avx2 = unsafe { attend_block_avx2(&queries, &keys, &vals) };
            assert!(avx2.iter().zip(&block).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX2 vs portable");
        }
    }
}
