//! The small interface the forward pass is written against. Each backend owns how weights and
//! activations are stored (candle tensors on the CPU, wgpu buffers on the GPU). The forward pass
//! (`model::forward`) is written in four fused layer ops (`self_attention`, `linear_residual`,
//! `norm_swiglu`, `logits`); `unfused` spells each out once in the primitive ops, which is what
//! the CPU runs and what the GPU's fused kernels are tested against.

pub mod unfused;

pub mod cpu;
pub mod cpu_blocks;
pub mod cpu_float;
pub mod gpu;

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::format::HostTensor;

/// Work a backend has done since it was made, for `bench`'s per-token figures: GPU dispatches,
/// compute passes, queue submits, buffer copies, waits for the GPU and the time spent in them
/// (host microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Counters {
    pub dispatches: u64,
    pub compute_passes: u64,
    pub submits: u64,
    /// Buffer copies other than token readbacks (a forward pass has none).
    pub copies: u64,
    /// Copies of a chosen token id (4 bytes) into a mappable staging buffer, one per token.
    pub readback_copies: u64,
    /// Waits for the newest submission: the GPU has nothing queued behind it, so it idles
    /// while the host reacts. Waits for older work, with later steps queued, are not counted
    /// here (their time is in `wait_us`).
    pub blocking_waits: u64,
    pub wait_us: f64,
    /// Host time inside queue submits (a driver's cost; lavapipe runs the work right there).
    pub submit_us: f64,
}

/// Most logits a choice gathers beside its token (`Backend::choose`'s `watch`): the verdict
/// words' first tokens (`guard::scores`) need at most 16.
pub const MAX_WATCH: usize = 16;

/// A chosen token as the host reads it: its id and, in the order asked for, the logits of the
/// watched ids at the position that chose it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chosen {
    pub id: u32,
    pub watched: Vec<f32>,
}

/// Where rows of activations sit in the KV cache: a run of consecutive positions of one
/// sequence. A forward pass's rows are its spans' rows, in order: one span for a prompt chunk,
/// one single-row span per sequence for a batched decode step (ARCHITECTURE.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The cache row of the sequence's position 0 (each sequence owns its own rows).
    pub base: usize,
    /// The sequence position of the span's first token (rope, causal mask).
    pub pos: usize,
    pub len: usize,
}

impl Span {
    /// Rows of `spans` together.
    pub fn rows(spans: &[Span]) -> usize {
        spans.iter().map(|s| s.len).sum()
    }

    /// True when every span is one row (a decode step): each row its own sequence.
    pub fn all_single(spans: &[Span]) -> bool {
        spans.iter().all(|s| s.len == 1)
    }
}

impl Counters {
    /// The work counted between `earlier` and this reading (never below zero).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            dispatches: self.dispatches.saturating_sub(earlier.dispatches),
            compute_passes: self.compute_passes.saturating_sub(earlier.compute_passes),
            submits: self.submits.saturating_sub(earlier.submits),
            copies: self.copies.saturating_sub(earlier.copies),
            readback_copies: self.readback_copies.saturating_sub(earlier.readback_copies),
            blocking_waits: self.blocking_waits.saturating_sub(earlier.blocking_waits),
            wait_us: (self.wait_us - earlier.wait_us).max(0.0),
            submit_us: (self.submit_us - earlier.submit_us).max(0.0),
        }
    }
}

pub trait Backend {
    /// A weight matrix `(out, in)`, stored however the backend likes (f32, quantized blocks).
    type Matrix;
    /// A token embedding table `(vocab, hidden)`.
    type Embedding;
    /// A per-channel gain `(dim)`.
    type Vector;
    /// Activations `(seq, width)`.
    type Act;
    /// The KV cache of every layer, K and V, preallocated for `max_seq` positions; each backend
    /// picks its layout (CPU: `(kv_heads, max_seq, head_dim)` per layer; GPU: `(max_seq, kv_heads *
    /// head_dim)` per layer).
    type Cache;
    /// Rotary cos/sin tables `(max_seq, head_dim / 2)`.
    type Rope;
    /// A layer's Q, K and V projections, kept as the backend likes (the GPU: one stacked matrix).
    type Qkv;
    /// A layer's gate and up projections (the GPU: one matrix, their rows interleaved).
    type GateUp;
    /// A token chosen by `choose` that the host may not know yet (the GPU: a slot argmax wrote,
    /// read back later; the CPU: the id). Decoding feeds it to the next step without waiting.
    type Token: Clone;
    /// Where a forward pass's rows sit (`Span`s), as the backend's kernels read it (the GPU: a
    /// table on the device).
    type Rows: AsRef<[Span]>;

    /// A short description for logs and `--json` output ("cpu (candle, 2 threads)").
    fn describe(&self) -> String;

    /// Bytes held in device buffers (weights, cache, activations), where there is a device.
    fn device_bytes(&self) -> Option<u64> {
        None
    }

    /// Work counted since the backend was made, where the backend counts (the GPU).
    fn counters(&self) -> Option<Counters> {
        None
    }

    fn matrix(&self, t: HostTensor) -> Result<Self::Matrix>;
    fn embedding(&self, t: HostTensor) -> Result<Self::Embedding>;
    /// The LM head of a model with tied embeddings: the embedding table, shared, not copied.
    fn tied_head(&self, e: &Self::Embedding) -> Result<Self::Matrix>;
    fn vector(&self, t: HostTensor) -> Result<Self::Vector>;
    /// Q `(heads * hd, hidden)`, K and V `(kv_heads * hd, hidden)`.
    fn qkv(&self, q: HostTensor, k: HostTensor, v: HostTensor, heads: usize, kv_heads: usize) -> Result<Self::Qkv>;
    /// Gate and up, each `(intermediate, hidden)`.
    fn gate_up(&self, gate: HostTensor, up: HostTensor) -> Result<Self::GateUp>;
    fn rope_table(&self, inv_freq: &[f32], max_seq: usize) -> Result<Self::Rope>;
    /// A cache of `max_seq` rows (positions of every sequence together: `Span::base` picks a
    /// sequence's rows).
    fn new_cache(&self, cfg: &LlamaConfig, max_seq: usize) -> Result<Self::Cache>;
    /// Copy cache rows `from..from+len` of every layer, K and V, to `to..to+len` (a shared
    /// prefix into a sequence's rows).
    fn copy_rows(&self, cache: &mut Self::Cache, from: usize, to: usize, len: usize) -> Result<()>;
    /// The rows of a forward pass over `spans`.
    fn rows(&self, spans: &[Span]) -> Result<Self::Rows>;

    /// Activations from host values (tests, debugging).
    fn activation_from(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Act>;
    /// Rows of the table for `ids`: `(seq, hidden)`.
    fn embed(&self, table: &Self::Embedding, ids: &[u32]) -> Result<Self::Act>;
    /// `x / rms(x) * w`, per row.
    fn rms_norm(&self, x: &Self::Act, w: &Self::Vector, eps: f32) -> Result<Self::Act>;
    /// `x · wᵀ`: `(seq, in) -> (seq, out)`.
    fn linear(&self, x: &Self::Act, w: &Self::Matrix) -> Result<Self::Act>;
    /// Rotate each head of `x` `(seq, heads * head_dim)` for its row's position, HF layout (the
    /// two halves of a head are the pair).
    fn rope(&self, x: &Self::Act, rope: &Self::Rope, heads: usize, rows: &Self::Rows) -> Result<Self::Act>;
    /// Append `k`, `v` `(seq, kv_heads * head_dim)` to `layer`'s cache at their rows, then causal
    /// grouped-query attention of each row of `q` `(seq, heads * head_dim)` over its sequence's
    /// positions up to its own.
    fn attention(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        rows: &Self::Rows,
    ) -> Result<Self::Act>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Act, up: &Self::Act) -> Result<Self::Act>;
    fn add(&self, a: &Self::Act, b: &Self::Act) -> Result<Self::Act>;

    /// The attention half of a layer before its output projection: RMSNorm of `x` with `norm`,
    /// Q/K/V, rope on Q and K, K and V appended to `layer`'s cache, attention, each row at its
    /// place in `rows`: `(seq, hidden) -> (seq, heads * head_dim)`.
    #[allow(clippy::too_many_arguments)]
    fn self_attention(
        &self,
        x: &Self::Act,
        norm: &Self::Vector,
        eps: f32,
        qkv: &Self::Qkv,
        rope: &Self::Rope,
        cache: &mut Self::Cache,
        layer: usize,
        rows: &Self::Rows,
    ) -> Result<Self::Act>;
    /// `x + a · wᵀ`: a projection and the residual add.
    fn linear_residual(&self, a: &Self::Act, w: &Self::Matrix, x: &Self::Act) -> Result<Self::Act>;
    /// `silu(n · gateᵀ) * (n · upᵀ)` with `n` the RMSNorm of `x`: `(seq, hidden) -> (seq,
    /// intermediate)`.
    fn norm_swiglu(&self, x: &Self::Act, norm: &Self::Vector, eps: f32, gate_up: &Self::GateUp) -> Result<Self::Act>;
    /// The logits `(spans, vocab)`: the RMSNorm of the last row of each span of `rows`, times
    /// the head.
    fn logits(
        &self,
        x: &Self::Act,
        norm: &Self::Vector,
        eps: f32,
        head: &Self::Matrix,
        rows: &Self::Rows,
    ) -> Result<Self::Act>;

    /// The last row of each span `(spans, width)`.
    fn last_rows(&self, x: &Self::Act, rows: &Self::Rows) -> Result<Self::Act>;
    /// Queue the choice of the largest value of each row of `(rows, n)` logits (first on ties),
    /// without copying the rows out: one token per row. Each row also keeps its logits at the
    /// `watch` ids (at most `MAX_WATCH`, each below `n`), read back with the token.
    fn choose(&self, logits: &Self::Act, watch: &[u32]) -> Result<Vec<Self::Token>>;
    /// The embeddings `(tokens, hidden)` of chosen tokens, read on the device.
    fn embed_tokens(&self, table: &Self::Embedding, tokens: &[Self::Token]) -> Result<Self::Act>;
    /// The id of a chosen token and its watched logits, once the device has them. Async because
    /// a GPU readback on the web can only be awaited, never waited for.
    fn read_token(&self, token: &Self::Token) -> impl std::future::Future<Output = Result<Chosen>>;
    /// Decode steps worth queueing past the token the host is reading (`generate::Pipeline`):
    /// 0 where a step runs on the host's own thread (the CPU), more where the device works
    /// while the host waits (the GPU).
    fn steps_ahead(&self) -> usize {
        0
    }
    /// Index of the largest value of a `(1, n)` row (first on ties): `choose` and read it.
    fn argmax(&self, x: &Self::Act) -> impl std::future::Future<Output = Result<u32>> {
        async move {
            let token = self.choose(x, &[])?.into_iter().next();
            let token = token.ok_or_else(|| crate::error::Error::Backend("argmax of no rows".into()))?;
            Ok(self.read_token(&token).await?.id)
        }
    }
    /// Copy a `(1, n)` row to the host.
    fn to_host(&self, x: &Self::Act) -> impl std::future::Future<Output = Result<Vec<f32>>>;
}
