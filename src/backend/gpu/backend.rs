//! The WebGPU backend itself (wgpu): device and limits, buffers, the WGSL kernels and their
//! pipelines, step encoding and token readback. Compiled with the `gpu` feature.

use super::weights;
use super::{GpuOptions, LinearKernel};
use crate::backend::Counters;
use crate::backend::{Backend, Chosen, MAX_WATCH, Span, unfused};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::format::HostTensor;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
pub use weights::{GpuMatrix, WeightFormat};

/// Per-dispatch parameters live in one uniform buffer, each at this alignment (WebGPU's
/// largest `minUniformBufferOffsetAlignment`).
const PARAM_ALIGN: usize = 256;
/// Dispatches per submission before the parameter buffer is flushed.
const PARAM_SLOTS: usize = 2048;
/// Workgroups per dimension (WebGPU's minimum `maxComputeWorkgroupsPerDimension`).
const MAX_GROUPS: u32 = 65535;

/// How the matrix kernels read activations: as vec4s when the width is a multiple of 4, else as
/// scalars (linear_common.wgsl uses `x4`). On lavapipe the scalar reads halve decode speed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Activations {
    Vec4,
    Scalar,
}

impl Activations {
    fn of_width(cols: usize) -> Self {
        if cols.is_multiple_of(4) { Activations::Vec4 } else { Activations::Scalar }
    }

    fn wgsl(self) -> &'static str {
        match self {
            Activations::Vec4 => {
                "@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;\nfn x4(i: u32) -> vec4<f32> { return x[i / 4u]; }\n"
            }
            Activations::Scalar => {
                "@group(0) @binding(1) var<storage, read> x: array<f32>;\nfn x4(i: u32) -> vec4<f32> { return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]); }\n"
            }
        }
    }

    /// The RMSNorm gain at binding 6, viewed as `x` is.
    fn gain_wgsl(self) -> &'static str {
        match self {
            Activations::Vec4 => {
                "@group(0) @binding(6) var<storage, read> gain: array<vec4<f32>>;\nfn g4(c: u32) -> vec4<f32> { return gain[c / 4u]; }\n"
            }
            Activations::Scalar => {
                "@group(0) @binding(6) var<storage, read> gain: array<f32>;\nfn g4(c: u32) -> vec4<f32> { return vec4<f32>(gain[c], gain[c + 1u], gain[c + 2u], gain[c + 3u]); }\n"
            }
        }
    }
}

/// How the cooperative matrix kernel adds its lanes' sums (linear.wgsl's `row_total`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Reduce {
    /// A tree in workgroup memory: five barriers per sum.
    Workgroup,
    /// Shuffles within subgroups, then one exchange in workgroup memory: two barriers.
    Subgroup,
}

impl Reduce {
    /// `source` with its placeholders for the subgroup size filled in: `SUBGROUP_ARGS` (the
    /// entry point's builtin), `SUBGROUP_PARAM` (a function's parameter) and `SUBGROUP_PASS`
    /// (passing it on); empty without subgroups.
    fn fill(self, source: &str) -> String {
        let subgroup = self == Reduce::Subgroup;
        [
            ("SUBGROUP_ARGS", ", @builtin(subgroup_size) sg: u32"),
            ("SUBGROUP_PARAM", ", sg: u32"),
            ("SUBGROUP_PASS", ", sg"),
        ]
        .iter()
        .fold(source.to_string(), |src, (name, text)| src.replace(name, if subgroup { text } else { "" }))
    }

    /// linear.wgsl's `row_total`.
    fn row_total(self) -> &'static str {
        match self {
            Reduce::Workgroup => {
                "fn row_total(lid: u32, lane: u32, v: vec4<f32>) -> vec4<f32> {
    workgroupBarrier();
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    return partial[lid - lane];
}
"
            }
            Reduce::Subgroup => {
                "fn row_total(lid: u32, lane: u32, v: vec4<f32>, sg: u32) -> vec4<f32> {
    // Lane i of a subgroup is invocation i % sg (checked at startup), rows are LANES-aligned:
    // a butterfly over offsets below min(sg, LANES) sums each aligned cluster of that many lanes.
    let cluster = min(sg, LANES);
    var s = v;
    for (var o = 1u; o < cluster; o *= 2u) {
        s += subgroupShuffleXor(s, o);
    }
    workgroupBarrier();
    if (lid % cluster == 0u) {
        partial[lid / cluster] = s;
    }
    workgroupBarrier();
    var t = vec4<f32>(0.0);
    let first = (lid - lane) / cluster;
    for (var c = 0u; c < LANES / cluster; c++) {
        t += partial[first + c];
    }
    return t;
}
"
            }
        }
    }
}

/// The arithmetic of the cooperative matrix kernel's products (linear_common.wgsl's `tile_dot`;
/// ARCHITECTURE.md, "f16 math").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Math {
    /// Weights dequantized and multiplied in f32: the f32 bound of the CPU.
    F32,
    /// With `shader-f16`, for block formats and f16 weights: a group of four weights dequantized
    /// in f16 and dotted with the activations rounded to f16, the group's sum added in f32.
    F16,
}

impl Math {
    /// `tile_dot` for this arithmetic, and for F16 the format's `load4h` (the f16 view of
    /// `load4`).
    fn wgsl(self, format: WeightFormat) -> String {
        match self {
            Math::F32 => include_str!("dot_f32.wgsl").to_string(),
            Math::F16 => {
                let load4h = match format {
                    WeightFormat::F32 => "",
                    WeightFormat::F16 => {
                        "fn load4h(row: u32, cols: u32, block: u32, k: u32) -> vec4<f16> {
    let i = (row * cols + block * 32u + k * 4u) / 2u;
    return vec4<f16>(vec2<f16>(unpack2x16float(w_data[i])), vec2<f16>(unpack2x16float(w_data[i + 1u])));
}
"
                    }
                    WeightFormat::Q8 => {
                        "fn load4h(row: u32, cols: u32, block: u32, k: u32) -> vec4<f16> {
    let b = row * (cols / 32u) + block;
    let word = w_data[b * 8u + k];
    let q = vec4<i32>(i32(word << 24u), i32(word << 16u), i32(word << 8u), i32(word)) >> vec4<u32>(24u);
    return f16(unpack2x16float(w_scales[b / 2u])[b % 2u]) * vec4<f16>(q);
}
"
                    }
                    WeightFormat::Q4 => {
                        "fn load4h(row: u32, cols: u32, block: u32, k: u32) -> vec4<f16> {
    let b = row * (cols / 32u) + block;
    let word = w_data[b * 4u + k / 2u] >> (16u * (k % 2u));
    let q = (vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
    let m = f16(unpack2x16float(w_mins[b / 2u])[b % 2u]);
    return f16(unpack2x16float(w_scales[b / 2u])[b % 2u]) * vec4<f16>(q) + vec4<f16>(m);
}
"
                    }
                    WeightFormat::Q4Sym => {
                        "fn load4h(row: u32, cols: u32, block: u32, k: u32) -> vec4<f16> {
    let b = row * (cols / 32u) + block;
    let word = w_data[b * 4u + k / 2u] >> (16u * (k % 2u));
    let q = (vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
    return f16(unpack2x16float(w_scales[b / 2u])[b % 2u]) * (vec4<f16>(q) - vec4<f16>(8.0h));
}
"
                    }
                };
                format!("{load4h}{}", include_str!("dot_f16.wgsl"))
            }
        }
    }
}

impl Reduce {
    /// attention_common.wgsl's `block_max_of`.
    fn block_max_of(self) -> &'static str {
        match self {
            Reduce::Workgroup => {
                "fn block_max_of(lid: u32, s: f32) -> f32 {
    workgroupBarrier();
    var m = -3.0e38;
    for (var j = 0u; j < BLOCK; j++) {
        m = max(m, scores[j]);
    }
    return m;
}
"
            }
            Reduce::Subgroup => {
                "var<workgroup> group_max: array<f32, BLOCK>;

fn block_max_of(lid: u32, s: f32, sg: u32) -> f32 {
    // Subgroups are runs of sg consecutive invocations (checked at startup).
    let m = subgroupMax(s);
    if (lid % sg == 0u) {
        group_max[lid / sg] = m;
    }
    workgroupBarrier();
    var t = -3.0e38;
    for (var g = 0u; g < (BLOCK + sg - 1u) / sg; g++) {
        t = max(t, group_max[g]);
    }
    return t;
}
"
            }
        }
    }

    /// An attention kernel (`main`) with attention_common.wgsl and `block_max_of`.
    fn attention_source(self, main: &str) -> String {
        self.fill(&format!("{}\n{}\n{main}", include_str!("attention_common.wgsl"), self.block_max_of()))
    }
}

/// What a matrix kernel fuses around the product (linear_common.wgsl): the RMSNorm of its input,
/// the residual add, SwiGLU over paired gate/up rows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
struct Fusion {
    norm: bool,
    residual: bool,
    paired: bool,
}

impl Fusion {
    /// The constants and bindings linear_common.wgsl expects for this variant.
    fn wgsl(self, x: Activations) -> String {
        let mut src = format!(
            "const NORM: bool = {};\nconst RESIDUAL: bool = {};\nconst PAIRED: bool = {};\n{}",
            self.norm,
            self.residual,
            self.paired,
            x.wgsl()
        );
        src.push_str(if self.norm { x.gain_wgsl() } else { "fn g4(c: u32) -> vec4<f32> { return vec4<f32>(1.0); }\n" });
        src.push_str(if self.residual {
            "@group(0) @binding(7) var<storage, read> res: array<f32>;\nfn residual(i: u32) -> f32 { return res[i]; }\n"
        } else {
            "fn residual(i: u32) -> f32 { return 0.0; }\n"
        });
        src
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kernel {
    Linear(WeightFormat, Activations, Fusion, Reduce, Math),
    LinearRows(WeightFormat, Activations, Fusion),
    Embed(WeightFormat),
    RmsNorm,
    Rope,
    RopeAppend,
    Attention(Reduce),
    AttentionPartial(Reduce),
    AttentionCombine,
    Swiglu,
    Add,
    CopyRows,
    KvAppend,
    CacheCopy,
    Argmax,
    SubgroupProbe,
}

impl Kernel {
    /// The shader: the shared constants, then the kernel's own source.
    fn source(self) -> String {
        // `enable` directives come before any declaration.
        let enable = if matches!(self, Kernel::Linear(.., Math::F16)) { "enable f16;\n" } else { "" };
        format!("{enable}{}\n{}", shared_wgsl(), self.own_source())
    }

    fn own_source(self) -> String {
        let fmt = |f: WeightFormat| match f {
            WeightFormat::F32 => include_str!("fmt_f32.wgsl"),
            WeightFormat::F16 => include_str!("fmt_f16.wgsl"),
            WeightFormat::Q8 => include_str!("fmt_q8.wgsl"),
            WeightFormat::Q4 => include_str!("fmt_q4.wgsl"),
            WeightFormat::Q4Sym => include_str!("fmt_q4s.wgsl"),
        };
        match self {
            Kernel::Linear(f, x, fusion, reduce, math) => reduce.fill(&format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                fmt(f),
                fusion.wgsl(x),
                include_str!("linear_common.wgsl"),
                math.wgsl(f),
                include_str!("linear.wgsl"),
                reduce.row_total()
            )),
            Kernel::LinearRows(f, x, fusion) => format!(
                "{}\n{}\n{}\n{}\n{}",
                fmt(f),
                fusion.wgsl(x),
                include_str!("linear_common.wgsl"),
                Math::F32.wgsl(f),
                include_str!("linear_rows.wgsl")
            ),
            Kernel::Embed(f) => format!("{}\n{}", fmt(f), include_str!("embed.wgsl")),
            Kernel::RmsNorm => include_str!("rms_norm.wgsl").into(),
            Kernel::Rope => include_str!("rope.wgsl").into(),
            Kernel::RopeAppend => include_str!("rope_append.wgsl").into(),
            Kernel::Attention(reduce) => reduce.attention_source(include_str!("attention.wgsl")),
            Kernel::AttentionPartial(reduce) => reduce.attention_source(include_str!("attention_partial.wgsl")),
            Kernel::AttentionCombine => include_str!("attention_combine.wgsl").into(),
            Kernel::Swiglu | Kernel::Add | Kernel::CopyRows => include_str!("elementwise.wgsl").into(),
            Kernel::KvAppend => include_str!("kv_append.wgsl").into(),
            Kernel::CacheCopy => include_str!("cache_copy.wgsl").into(),
            Kernel::Argmax => include_str!("argmax.wgsl").into(),
            Kernel::SubgroupProbe => include_str!("subgroup_probe.wgsl").into(),
        }
    }
    fn entry(self) -> &'static str {
        match self {
            Kernel::Swiglu => "swiglu",
            Kernel::Add => "add",
            Kernel::CopyRows => "copy",
            _ => "main",
        }
    }
}

/// Activation buffers are recycled by (width, rows they hold): one row for decode steps and the
/// logits, `GpuOptions::max_rows` for prefill chunks, so a 128256-wide logits row does not hold
/// 128 rows of memory.
struct Pool {
    free: HashMap<(usize, usize), Vec<wgpu::Buffer>>,
}

/// A bind group's identity: its kernel, its parameter offset and the buffers it binds.
type BindGroupKey = (Kernel, u64, Vec<wgpu::Buffer>);

pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    width: usize,
    /// Rows the buffer holds.
    capacity: usize,
    pool: Rc<RefCell<Pool>>,
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.borrow_mut().free.entry((self.width, self.capacity)).or_default().push(b);
        }
    }
}

/// Activations `(rows, cols)` in a pooled buffer.
#[derive(Clone)]
pub struct GpuAct {
    buf: Rc<GpuBuffer>,
    rows: usize,
    cols: usize,
}

impl GpuAct {
    fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer.as_ref().expect("pooled buffer present until drop")
    }
}

pub struct GpuVector {
    buffer: wgpu::Buffer,
    len: usize,
}

pub struct GpuRope {
    cos: wgpu::Buffer,
    sin: wgpu::Buffer,
}

/// A layer's Q, K and V on the GPU: one matrix with the rows of Q, then K, then V, run as one
/// product with the RMSNorm folded in and followed by one rope-and-append kernel; or, where the
/// three are stored differently (or fusing is off), three matrices run one by one.
pub enum GpuQkv {
    Stacked { w: Rc<GpuMatrix>, heads: usize, kv_heads: usize },
    Separate(unfused::Qkv<Rc<GpuMatrix>>),
}

/// A layer's gate and up on the GPU: one matrix whose rows alternate gate 0, up 0, gate 1, ...,
/// run as one product with the RMSNorm and SwiGLU folded in; or two matrices run one by one.
pub enum GpuGateUp {
    Paired(Rc<GpuMatrix>),
    Separate(unfused::GateUp<Rc<GpuMatrix>>),
}

/// One matrix product and what it fuses: `x` rows `x_first..x_first + n_tokens` times `w`,
/// with `gain` the input's RMSNorm (and epsilon), `residual` added to the result, and `paired`
/// SwiGLU over a `GpuGateUp::Paired` matrix.
struct Product<'a> {
    x: &'a GpuAct,
    w: &'a GpuMatrix,
    gain: Option<(&'a GpuVector, f32)>,
    residual: Option<&'a GpuAct>,
    paired: bool,
    x_first: usize,
    n_tokens: usize,
}

impl<'a> Product<'a> {
    fn new(x: &'a GpuAct, w: &'a GpuMatrix) -> Self {
        Self { x, w, gain: None, residual: None, paired: false, x_first: 0, n_tokens: x.rows }
    }
}

/// Sizes the Rust side and the shaders must agree on, written once here and put at the top of
/// every shader (`shared_wgsl`).
mod shared {
    /// Threads per workgroup of the one-dimensional kernels (elementwise, rope, K/V append,
    /// RMSNorm, argmax).
    pub const GROUP: usize = 256;
    /// Threads per workgroup of the embedding lookup (each copies 4 values at a time).
    pub const EMBED_GROUP: usize = 64;
    /// linear.wgsl: rows per workgroup, and threads sharing a row.
    pub const ROWS: usize = 8;
    pub const LANES: usize = 32;
    /// linear_rows.wgsl: rows (threads) per workgroup.
    pub const ROWS_PER_THREAD_GROUP: usize = 64;
    /// Tokens per tile of the matrix kernels (vec4 sums: not a free choice).
    pub const TILE: usize = 4;
    /// Attention: keys per block (threads per workgroup), keys per split-decode chunk, and the
    /// largest head the workgroup arrays hold.
    pub const BLOCK: usize = 64;
    pub const CHUNK: usize = 256;
    pub const MAX_HEAD_DIM: usize = 256;
}

/// `shared` as WGSL constants.
fn shared_wgsl() -> String {
    use shared::*;
    [
        ("GROUP", GROUP),
        ("EMBED_GROUP", EMBED_GROUP),
        ("ROWS", ROWS),
        ("LANES", LANES),
        ("ROWS_PER_THREAD_GROUP", ROWS_PER_THREAD_GROUP),
        ("BLOCK", BLOCK),
        ("CHUNK", CHUNK),
        ("MAX_HEAD_DIM", MAX_HEAD_DIM),
        ("MAX_WATCH", crate::backend::MAX_WATCH),
    ]
    .iter()
    .map(|(name, value)| format!("const {name}: u32 = {value}u;\n"))
    .collect()
}

/// Keys per workgroup in split decode attention.
const ATTENTION_CHUNK: usize = shared::CHUNK;

pub struct GpuCache {
    /// Per layer: K and V, each `(max_seq, kv_heads * head_dim)`.
    layers: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// Split decode attention partials `(tokens, heads, chunks, head_dim + 2)`, grown on demand.
    scratch: RefCell<Option<(wgpu::Buffer, u64)>>,
    kv_heads: usize,
    head_dim: usize,
    max_seq: usize,
}

/// Choices (argmax dispatches, one token per row) the token ring remembers besides one per
/// possible batch row: more than a batched run ever leaves unread (a prompt's first token for
/// each slot refilled, plus `GpuBackend::steps_ahead` + 1 steps), so a choice is read before
/// argmax writes its slots again. Each choice owns `max_rows` slots of the ring.
const SPARE_CHOICES: usize = 16;

/// A token chosen on the GPU: its slot in the token ring, and which choice it was (a choice's
/// slots are reused after every other choice's; a stale token is refused, never misread).
#[derive(Clone, Debug)]
pub struct GpuToken {
    /// The ring slot: `choice * max_rows + row`.
    slot: usize,
    row: usize,
    issued: u64,
}

/// The host side of one choice: a mappable copy of its ids, mapped as soon as the step that
/// wrote them is submitted, and read when the host gets to the first of them.
struct Choice {
    staging: wgpu::Buffer,
    issued: u64,
    rows: usize,
    /// Watched logits per row (`Backend::choose`'s `watch`), copied after the ids.
    watched: usize,
    map: Option<MapReceiver>,
    /// The submit that writes it (`Counters::submits` after it) and its index for waiting.
    submit: u64,
    index: Option<wgpu::SubmissionIndex>,
    /// What was read: the ids, then each row's watched logits.
    values: Option<Vec<u32>>,
}

/// Where a forward pass's rows sit (`Backend::Rows`): the spans, and per row its cache row and
/// position as u32 pairs on the device (the table rope, K/V append and attention read).
pub struct GpuRows {
    spans: Vec<Span>,
    table: GpuAct,
}

impl AsRef<[Span]> for GpuRows {
    fn as_ref(&self) -> &[Span] {
        &self.spans
    }
}

/// Work recorded but not submitted: one encoder, and the compute pass every dispatch goes into
/// until something must end it (a buffer copy for a readback, or a submit).
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u8>,
}

/// The error scopes a model load runs in (`GpuBackend::load_scopes`): out of memory and
/// validation. A browser reports a refused allocation asynchronously, after the synchronous load
/// has gone on as if the buffer existed, so the load waits for the scopes' verdict before it
/// calls itself done; natively the verdict is ready at once. Popped in reverse order of pushing,
/// as wgpu requires.
pub struct LoadScopes {
    validation: wgpu::ErrorScopeGuard,
    memory: wgpu::ErrorScopeGuard,
}

impl LoadScopes {
    /// What the device refused while the scopes were open; `what`: the model, for the message.
    pub async fn finish(self, what: &str) -> Result<()> {
        // wgpu's errors span lines ("Caused by: ..."): one line here.
        let line = |e: wgpu::Error| e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        let validation = self.validation.pop().await.map(line);
        let memory = self.memory.pop().await.map(line);
        let knobs = "try a smaller quantization, context or batch (--quant q4, --context, --batch) or the CPU backend (--backend cpu)";
        if let Some(e) = memory {
            return Err(Error::Other(format!("the GPU ran out of memory loading {what} ({e}): {knobs}")));
        }
        if let Some(e) = validation {
            return Err(Error::Other(format!("the GPU refused a buffer of {what} ({e}): {knobs}")));
        }
        Ok(())
    }
}

pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: String,
    /// The adapter runs on the CPU (lavapipe, the browser's SwiftShader fallback).
    emulated: bool,
    opts: GpuOptions,
    /// The linear kernel `opts.linear` resolved for this adapter.
    row_per_thread: bool,
    /// `Backend::steps_ahead` for this adapter.
    steps_ahead: usize,
    /// The subgroup size the kernels were checked with, when subgroups are in use.
    subgroup_size: Option<u32>,
    /// The cooperative matrix kernel multiplies block formats in f16 (`Math::F16`).
    f16_math: bool,
    max_binding: u64,
    pipelines: RefCell<HashMap<Kernel, Rc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>>>,
    /// Bind groups by (kernel, parameter offset, buffers): the same few hundred recur every
    /// decode step, so after the first step none is created.
    bind_groups: RefCell<HashMap<BindGroupKey, wgpu::BindGroup>>,
    /// Bytes of every GPU buffer this backend created (weights, cache, activations).
    allocated: std::cell::Cell<u64>,
    pool: Rc<RefCell<Pool>>,
    pending: RefCell<Pending>,
    param_buffer: wgpu::Buffer,
    /// The token ring: `(max_rows + SPARE_CHOICES) * max_rows` u32s written by argmax, read by the next step's
    /// embedding.
    token_buffer: wgpu::Buffer,
    /// Beside the token ring, `MAX_WATCH` f32s per slot: the watched logits argmax copies out.
    watch_buffer: wgpu::Buffer,
    choices: RefCell<Vec<Choice>>,
    /// `0, 1, 2, ...` (`max_rows` of them): the embedding's index table for consecutive ids.
    identity: wgpu::Buffer,
    tokens_issued: std::cell::Cell<u64>,
    readback: RefCell<Option<(wgpu::Buffer, u64)>>,
    /// Errors wgpu reports out of band (validation, out of memory, device lost).
    errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it is: every later operation fails with `Error::GpuLost`.
    lost: Arc<Mutex<Option<String>>>,
    /// Work counted since creation (`Backend::counters`).
    counters: std::cell::Cell<Counters>,
    /// Debug mode's outputs, by op name, in order.
    trace: RefCell<Vec<(String, Vec<f32>)>>,
}

impl GpuBackend {
    /// Open the best adapter the platform offers, with its maximum limits.
    pub async fn new(opts: GpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::Other(format!("no WebGPU/Vulkan adapter available ({e}); use the CPU backend")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let subgroups = opts.subgroups && adapter.features().contains(wgpu::Features::SUBGROUP);
        let f16 = opts.f16 && adapter.features().contains(wgpu::Features::SHADER_F16);
        let mut features = wgpu::Features::empty();
        features.set(wgpu::Features::SUBGROUP, subgroups);
        features.set(wgpu::Features::SHADER_F16, f16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("guardreasoner"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Other(format!("could not open the GPU device: {e}")))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut v) = errors.lock() {
                    v.push(e.to_string());
                }
            }));
        }
        let lost = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut l) = lost.lock() {
                    let reason = format!("{reason:?}").to_lowercase();
                    *l = Some(if message.is_empty() { reason } else { format!("{reason}: {message}") });
                }
            });
        }
        let max_binding = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        let max_binding = opts.max_binding_bytes.map_or(max_binding, |m| m.min(max_binding));
        let param_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (PARAM_ALIGN * PARAM_SLOTS) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let max_rows = opts.max_rows.max(1);
        let token_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token ring"),
            size: ((max_rows + SPARE_CHOICES) * max_rows * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let watch_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("watched logits"),
            size: ((max_rows + SPARE_CHOICES) * max_rows * MAX_WATCH * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let choices = (0..max_rows + SPARE_CHOICES)
            .map(|_| Choice {
                staging: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("token readback"),
                    size: (max_rows * (1 + MAX_WATCH) * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                issued: 0,
                rows: 0,
                watched: 0,
                map: None,
                submit: 0,
                index: None,
                values: None,
            })
            .collect();
        let identity = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("identity index"),
            size: (max_rows * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let counting: Vec<u32> = (0..max_rows as u32).collect();
        queue.write_buffer(&identity, 0, bytemuck::cast_slice(&counting));
        let on_cpu = info.device_type == wgpu::DeviceType::Cpu;
        let adapter = match (info.name.is_empty(), info.backend) {
            // Browsers may withhold adapter names; say at least that it is WebGPU, and whether
            // it is the browser's CPU fallback (SwiftShader).
            (true, wgpu::Backend::BrowserWebGpu) if on_cpu => {
                "browser WebGPU fallback adapter, CPU emulation".to_string()
            }
            (true, wgpu::Backend::BrowserWebGpu) => "browser WebGPU adapter".to_string(),
            _ => format!("{} ({:?}, {})", info.name, info.backend, info.driver),
        };
        let row_per_thread = match opts.linear {
            LinearKernel::Auto => on_cpu,
            LinearKernel::Cooperative => false,
            LinearKernel::RowPerThread => true,
        };
        let mut gpu = Self {
            device,
            queue,
            adapter,
            emulated: on_cpu,
            opts,
            row_per_thread,
            // The row-per-thread kernel is for CPU emulations, where f16 is emulated in f32.
            f16_math: f16 && !row_per_thread,
            steps_ahead: if on_cpu { STEPS_AHEAD_ON_CPU } else { STEPS_AHEAD },
            subgroup_size: None,
            max_binding,
            pipelines: RefCell::new(HashMap::new()),
            bind_groups: RefCell::new(HashMap::new()),
            allocated: std::cell::Cell::new(0),
            pool: Rc::new(RefCell::new(Pool { free: HashMap::new() })),
            pending: RefCell::new(Pending { encoder: None, pass: None, params: Vec::new() }),
            counters: std::cell::Cell::new(Counters::default()),
            trace: RefCell::new(Vec::new()),
            param_buffer,
            token_buffer,
            watch_buffer,
            choices: RefCell::new(choices),
            identity,
            tokens_issued: std::cell::Cell::new(0),
            readback: RefCell::new(None),
            errors,
            lost,
        };
        if subgroups {
            gpu.subgroup_size = gpu.probe_subgroups().await?;
        }
        Ok(gpu)
    }

    pub fn adapter_name(&self) -> &str {
        &self.adapter
    }

    /// Whether the adapter is a CPU emulation of a GPU (lavapipe, the browser's SwiftShader
    /// fallback): slower than the CPU backend, so `auto` passes it over.
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    /// Run `subgroup_probe.wgsl` once: the subgroup size if every invocation of a workgroup is
    /// lane `i % size` of its subgroup with one power-of-two size (what the subgroup kernels
    /// assume), else None (they are not used).
    async fn probe_subgroups(&self) -> Result<Option<u32>> {
        let out = self.create_buffer(&wgpu::BufferDescriptor {
            label: Some("subgroup probe"),
            size: (shared::GROUP * 8) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let pipeline = self.pipeline(Kernel::SubgroupProbe);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.1,
            entries: &[wgpu::BindGroupEntry { binding: 0, resource: out.as_entire_binding() }],
        });
        {
            let mut pending = self.pending.borrow_mut();
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("probe") })
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline.0);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        let bytes = self.read(&out, (shared::GROUP * 8) as u64).await?;
        let words: &[u32] = bytemuck::cast_slice(&bytes);
        let size = words[1];
        let consistent = size.is_power_of_two()
            && (4..=128).contains(&size)
            && words.chunks_exact(2).enumerate().all(|(i, w)| w[1] == size && w[0] == i as u32 % size);
        Ok(consistent.then_some(size))
    }

    /// The subgroup size the matrix kernels use, if they use subgroups.
    pub fn subgroup_size(&self) -> Option<u32> {
        self.subgroup_size
    }

    /// How the kernels add or compare across threads: with subgroups when they are in use.
    fn reduce(&self) -> Reduce {
        if self.subgroup_size.is_some() { Reduce::Subgroup } else { Reduce::Workgroup }
    }

    /// Whether the matrix kernels multiply block-format and f16 weights in f16 (`shader-f16`).
    pub fn f16_math(&self) -> bool {
        self.f16_math
    }

    /// A matrix product with whatever it fuses (linear_common.wgsl), one dispatch per part.
    fn product(&self, p: Product) -> Result<GpuAct> {
        let (x, w) = (p.x, p.w);
        if x.cols != w.cols {
            return Err(Error::Backend(format!("linear: input width {} vs weight ({}, {})", x.cols, w.rows, w.cols)));
        }
        if p.x_first + p.n_tokens > x.rows || p.n_tokens == 0 {
            return Err(Error::Backend(format!("linear: rows {}..+{} of {}", p.x_first, p.n_tokens, x.rows)));
        }
        if let Some((g, _)) = p.gain
            && g.len != x.cols
        {
            return Err(Error::Backend(format!("linear: RMSNorm gain of {} for width {}", g.len, x.cols)));
        }
        let out_cols = if p.paired { w.rows / 2 } else { w.rows };
        if let Some(r) = p.residual
            && (r.rows, r.cols) != (p.n_tokens, out_cols)
        {
            return Err(Error::Backend(format!(
                "linear: residual ({}, {}) for output ({}, {out_cols})",
                r.rows, r.cols, p.n_tokens
            )));
        }
        let fusion = Fusion { norm: p.gain.is_some(), residual: p.residual.is_some(), paired: p.paired };
        let x_layout = Activations::of_width(w.cols);
        let (kernel, rows_per_group) = if self.row_per_thread {
            (Kernel::LinearRows(w.format, x_layout, fusion), shared::ROWS_PER_THREAD_GROUP)
        } else {
            let reduce = self.reduce();
            let math = if self.f16_math && w.format != WeightFormat::F32 { Math::F16 } else { Math::F32 };
            (Kernel::Linear(w.format, x_layout, fusion, reduce, math), shared::ROWS)
        };
        let out = self.activation(p.n_tokens, out_cols)?;
        let eps = p.gain.map_or(0.0, |(_, eps)| eps);
        for part in &w.parts {
            let (rows, row_offset) =
                if p.paired { (part.rows / 2, part.row_start / 2) } else { (part.rows, part.row_start) };
            let mut values = params(&[
                rows as u32,
                w.cols as u32,
                p.n_tokens as u32,
                row_offset as u32,
                out_cols as u32,
                w.stride as u32,
                p.x_first as u32,
            ]);
            values.extend_from_slice(&eps.to_le_bytes());
            let mut buffers = vec![(1, x.buffer()), (2, out.buffer())];
            buffers.extend(part.buffers().into_iter().enumerate().map(|(i, b)| (i as u32 + 3, b)));
            if let Some((g, _)) = p.gain {
                buffers.push((6, &g.buffer));
            }
            if let Some(r) = p.residual {
                buffers.push((7, r.buffer()));
            }
            self.dispatch_at(
                kernel,
                &values,
                &buffers,
                (rows.div_ceil(rows_per_group) as u32, p.n_tokens.div_ceil(shared::TILE) as u32),
            )?;
        }
        Ok(out)
    }

    /// Rows of `table` into `out` for the `out.rows` ids at `ids[first + index[t]]` (embed.wgsl;
    /// `index` the identity unless given), one dispatch per part of the table.
    fn lookup(
        &self,
        table: &GpuMatrix,
        ids: &wgpu::Buffer,
        first: usize,
        index: Option<&wgpu::Buffer>,
        out: &GpuAct,
    ) -> Result<()> {
        for part in &table.parts {
            let p = params(&[
                part.row_start as u32,
                part.rows as u32,
                table.cols as u32,
                out.rows as u32,
                table.stride as u32,
                first as u32,
            ]);
            let mut buffers = vec![(1, ids), (2, out.buffer()), (6, index.unwrap_or(&self.identity))];
            buffers.extend(part.buffers().into_iter().enumerate().map(|(i, b)| (i as u32 + 3, b)));
            self.dispatch_at(Kernel::Embed(table.format), &p, &buffers, (out.rows as u32, 1))?;
        }
        Ok(())
    }

    fn check_attention(&self, cache: &GpuCache, layer: usize, seq: usize, rows: &GpuRows) -> Result<()> {
        if Span::rows(&rows.spans) != seq {
            return Err(Error::Backend(format!("attention: {seq} rows for spans of {}", Span::rows(&rows.spans))));
        }
        if let Some(s) = rows.spans.iter().find(|s| s.base + s.pos + s.len > cache.max_seq) {
            return Err(Error::Prompt(format!(
                "sequence of {} tokens exceeds the KV cache of {}",
                s.pos + s.len,
                cache.max_seq
            )));
        }
        if cache.head_dim > shared::MAX_HEAD_DIM {
            return Err(Error::Backend(format!(
                "head_dim {} is over {}, the most the attention kernel holds",
                cache.head_dim,
                shared::MAX_HEAD_DIM
            )));
        }
        if layer >= cache.layers.len() {
            return Err(Error::Backend(format!("no cache for layer {layer}")));
        }
        Ok(())
    }

    /// Causal attention of each row of `q` `(seq, heads * head_dim)` over its sequence's keys in
    /// `layer`'s cache (the new keys already appended). Decode rows (every span one row) always
    /// take the split kernels, alone or batched, so a row's sums never depend on the others.
    fn attend(&self, cache: &GpuCache, layer: usize, q: &GpuAct, rows: &GpuRows) -> Result<GpuAct> {
        let seq = q.rows;
        let (kc, vc) = &cache.layers[layer];
        let heads = q.cols / cache.head_dim;
        let out = self.activation(seq, q.cols)?;
        let scale = (1.0 / (cache.head_dim as f32).sqrt()).to_le_bytes();
        if Span::all_single(&rows.spans) {
            let longest = rows.spans.iter().map(|s| s.pos + 1).max().unwrap_or(1);
            let chunks = longest.div_ceil(ATTENTION_CHUNK);
            let bytes = (seq * heads * chunks * (cache.head_dim + 2) * 4) as u64;
            let scratch = {
                let mut slot = cache.scratch.borrow_mut();
                match &*slot {
                    Some((b, size)) if *size >= bytes => b.clone(),
                    _ => {
                        let b = self.create_buffer(&wgpu::BufferDescriptor {
                            label: Some("attention partials"),
                            size: bytes.max(256),
                            usage: wgpu::BufferUsages::STORAGE,
                            mapped_at_creation: false,
                        });
                        *slot = Some((b.clone(), bytes.max(256)));
                        b
                    }
                }
            };
            if (seq * chunks) as u32 > MAX_GROUPS {
                return Err(Error::Backend(format!(
                    "{seq} decode rows of {chunks} key chunks are too many workgroups"
                )));
            }
            let mut p = params(&[heads as u32, cache.kv_heads as u32, cache.head_dim as u32, chunks as u32]);
            p.extend_from_slice(&scale);
            self.dispatch_at(
                Kernel::AttentionPartial(self.reduce()),
                &p,
                &[(1, q.buffer()), (2, &scratch), (3, kc), (4, vc), (5, rows.table.buffer())],
                (heads as u32, (seq * chunks) as u32),
            )?;
            self.dispatch_at(
                Kernel::AttentionCombine,
                &p,
                &[(1, &scratch), (2, out.buffer()), (5, rows.table.buffer())],
                (heads as u32, seq as u32),
            )?;
        } else {
            let mut p = params(&[seq as u32, heads as u32, cache.kv_heads as u32, cache.head_dim as u32]);
            p.extend_from_slice(&scale);
            self.dispatch_at(
                Kernel::Attention(self.reduce()),
                &p,
                &[(1, q.buffer()), (2, out.buffer()), (3, kc), (4, vc), (5, rows.table.buffer())],
                (heads as u32, seq as u32),
            )?;
        }
        Ok(out)
    }

    /// The end of an op: in debug mode, run it alone, report GPU errors under its name and keep
    /// its output; otherwise nothing.
    fn op_done(&self, name: &str, out: GpuAct) -> Result<GpuAct> {
        if !self.opts.debug {
            return Ok(out);
        }
        let index = self.flush();
        let _ = self.device.poll(wgpu::PollType::Wait { submission_index: index, timeout: None });
        self.check_errors().map_err(|e| Error::Backend(format!("{name}: {e}")))?;
        // Natively a readback completes inside the poll, so it can be waited for here; on the
        // web it can only be awaited, so the trace stays empty there.
        #[cfg(not(target_arch = "wasm32"))]
        {
            let values = pollster::block_on(self.to_host(&out))?;
            self.trace.borrow_mut().push((name.to_string(), values));
        }
        Ok(out)
    }

    /// Debug mode's record since the last call: each op's name and output, in order.
    pub fn take_trace(&self) -> Vec<(String, Vec<f32>)> {
        std::mem::take(&mut *self.trace.borrow_mut())
    }

    /// A token whose slot has not been reused since it was chosen.
    fn check_token(&self, token: &GpuToken) -> Result<()> {
        let choices = self.choices.borrow();
        if choices[(token.issued % choices.len() as u64) as usize].issued != token.issued {
            return Err(Error::Backend(format!(
                "token of choice {} was overwritten: more than {} choices were made after it",
                token.issued,
                choices.len()
            )));
        }
        Ok(())
    }

    /// The device-lost error once the device is lost, else `otherwise` (a failed readback of a
    /// lost device is reported as the loss, whichever the browser told first).
    fn lost_or(&self, otherwise: Error) -> Error {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(why) => Error::GpuLost(why),
            None => otherwise,
        }
    }

    /// A function that destroys the device, as a driver reset would: for tests of what follows
    /// a lost GPU (the JS API's and the evaluator's recovery), callable while a run holds the
    /// backend. Every later operation fails with `GpuLost`.
    pub fn device_destroyer(&self) -> impl Fn() + 'static {
        let (device, lost) = (self.device.clone(), self.lost.clone());
        move || {
            device.destroy();
            // Natively the lost callback runs at a later poll; make the loss known now.
            if let Ok(mut l) = lost.lock() {
                l.get_or_insert_with(|| "destroyed".into());
            }
        }
    }

    fn check_errors(&self) -> Result<()> {
        if let Some(why) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::GpuLost(why));
        }
        let mut errors = self.errors.lock().map_err(|_| Error::Backend("GPU error log poisoned".into()))?;
        if errors.is_empty() {
            return Ok(());
        }
        let all = errors.drain(..).collect::<Vec<_>>().join("; ");
        let hint = if all.contains("memory") || all.contains("Memory") {
            " (not enough GPU memory: try a smaller quantization or the CPU backend)"
        } else {
            ""
        };
        Err(Error::Backend(format!("GPU error: {all}{hint}")))
    }

    /// Bytes of GPU buffers allocated so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.get()
    }

    /// Opens the error scopes a model load runs in (`LoadScopes`).
    pub fn load_scopes(&self) -> LoadScopes {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        LoadScopes { validation, memory }
    }

    /// Test hook: asks for one buffer over the device's size limit, which the device refuses as
    /// it would one it has no memory for, and reports the same way (in a browser, later).
    pub fn request_refused_buffer(&self) {
        let size = (self.device.limits().max_buffer_size / 4 + 1) * 4;
        drop(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("refused on purpose (test hook)"),
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        }));
    }

    fn create_buffer(&self, desc: &wgpu::BufferDescriptor) -> wgpu::Buffer {
        self.allocated.set(self.allocated.get() + desc.size);
        self.device.create_buffer(desc)
    }

    fn pipeline(&self, kernel: Kernel) -> Rc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        if let Some(p) = self.pipelines.borrow().get(&kernel) {
            return p.clone();
        }
        let label = format!("{kernel:?}");
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry()),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let pipeline = Rc::new((pipeline, layout));
        self.pipelines.borrow_mut().insert(kernel, pipeline.clone());
        pipeline
    }

    pub(crate) fn storage_buffer(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        if bytes.len() as u64 > self.max_binding {
            return Err(Error::Backend(format!(
                "{label}: {} bytes exceed the GPU's binding limit of {}",
                bytes.len(),
                self.max_binding
            )));
        }
        let size = (bytes.len().max(4) as u64).div_ceil(4) * 4;
        let buffer = self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytes);
        Ok(buffer)
    }

    fn activation(&self, rows: usize, cols: usize) -> Result<GpuAct> {
        let max_rows = self.opts.max_rows;
        if rows > max_rows {
            return Err(Error::Backend(format!("{rows} rows exceed the activation buffers' {max_rows}")));
        }
        let capacity = if rows == 1 { 1 } else { max_rows };
        let buffer = self.pool.borrow_mut().free.get_mut(&(cols, capacity)).and_then(|v| v.pop());
        let buffer = match buffer {
            Some(b) => b,
            None => self.create_buffer(&wgpu::BufferDescriptor {
                label: Some("activation"),
                size: (capacity * cols * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
        };
        Ok(GpuAct {
            buf: Rc::new(GpuBuffer { buffer: Some(buffer), width: cols, capacity, pool: self.pool.clone() }),
            rows,
            cols,
        })
    }

    /// Queue one dispatch: `params` goes to the uniform at binding 0, `buffers` to bindings 1...
    fn dispatch(&self, kernel: Kernel, params: &[u8], buffers: &[&wgpu::Buffer], groups: (u32, u32)) -> Result<()> {
        let bindings: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, b)| (i as u32 + 1, *b)).collect();
        self.dispatch_at(kernel, params, &bindings, groups)
    }

    /// Queue one dispatch with buffers at the given binding numbers.
    fn dispatch_at(
        &self,
        kernel: Kernel,
        params: &[u8],
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) -> Result<()> {
        if groups.0 == 0 || groups.1 == 0 {
            return Ok(());
        }
        if groups.0 > MAX_GROUPS || groups.1 > MAX_GROUPS {
            return Err(Error::Backend(format!(
                "dispatch of {groups:?} workgroups exceeds {MAX_GROUPS} per dimension"
            )));
        }
        if self.pending.borrow().params.len() / PARAM_ALIGN >= PARAM_SLOTS {
            self.flush();
        }
        let pipeline = self.pipeline(kernel);
        let mut pending = self.pending.borrow_mut();
        let offset = pending.params.len();
        pending.params.extend_from_slice(params);
        pending.params.resize(offset + PARAM_ALIGN, 0);
        let key = (kernel, offset as u64, buffers.iter().map(|(_, b)| (*b).clone()).collect::<Vec<_>>());
        let mut cache = self.bind_groups.borrow_mut();
        let bind_group = cache.entry(key).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.param_buffer,
                    offset: offset as u64,
                    size: std::num::NonZeroU64::new(params.len().div_ceil(16) as u64 * 16),
                }),
            }];
            for (binding, b) in buffers {
                entries.push(wgpu::BindGroupEntry { binding: *binding, resource: b.as_entire_binding() });
            }
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.1,
                entries: &entries,
            })
        });
        let device = &self.device;
        let Pending { encoder, pass, .. } = &mut *pending;
        let encoder = encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") })
        });
        let pass = pass.get_or_insert_with(|| {
            self.count(|c| c.compute_passes += 1);
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None })
                .forget_lifetime()
        });
        pass.set_pipeline(&pipeline.0);
        pass.set_bind_group(0, &*bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
        self.count(|c| c.dispatches += 1);
        Ok(())
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// A copy into a mappable buffer for a readback: it ends the open compute pass (a step has
    /// no other copy).
    fn copy_for_readback(&self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, bytes: u64) {
        let mut pending = self.pending.borrow_mut();
        pending.pass = None;
        self.count(|c| c.readback_copies += 1);
        let device = &self.device;
        let encoder = pending.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") })
        });
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Submit everything queued so far; the submission's index, if there was anything.
    fn flush(&self) -> Option<wgpu::SubmissionIndex> {
        let mut pending = self.pending.borrow_mut();
        pending.pass = None;
        if !pending.params.is_empty() {
            self.queue.write_buffer(&self.param_buffer, 0, &pending.params);
            pending.params.clear();
        }
        let encoder = pending.encoder.take()?;
        let commands = encoder.finish();
        let submitted = web_time::Instant::now();
        let index = self.queue.submit([commands]);
        let submit_us = submitted.elapsed().as_secs_f64() * 1e6;
        self.count(|c| {
            c.submits += 1;
            c.submit_us += submit_us;
        });
        Some(index)
    }

    /// Submit, then copy `bytes` from `src` to the host.
    async fn read(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let staging = {
            let mut slot = self.readback.borrow_mut();
            match slot.take() {
                Some((b, size)) if size >= bytes => b,
                _ => self.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
            }
        };
        self.copy_for_readback(src, 0, &staging, 0, bytes);
        self.flush();
        let rx = map_for_read(&staging, bytes);
        // Natively this drives the GPU to completion; on the web it does nothing and the
        // browser resolves the map when the work is done.
        let waited = web_time::Instant::now();
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        let mapped =
            rx.await.map_err(|_| self.lost_or(Error::Backend("GPU readback was dropped (device lost?)".into())))?;
        let wait_us = waited.elapsed().as_secs_f64() * 1e6;
        self.count(|c| {
            c.blocking_waits += 1;
            c.wait_us += wait_us;
        });
        self.check_errors()?;
        mapped.map_err(|e| self.lost_or(Error::Backend(format!("GPU readback failed: {e}"))))?;
        let data = staging
            .get_mapped_range(0..bytes)
            .map_err(|e| Error::Backend(format!("GPU readback failed: {e}")))?
            .to_vec();
        staging.unmap();
        let size = staging.size();
        *self.readback.borrow_mut() = Some((staging, size));
        Ok(data)
    }
}

type MapReceiver = futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Ask for `buffer[0..bytes]` to be mapped for reading once the GPU is done with it.
fn map_for_read(buffer: &wgpu::Buffer, bytes: u64) -> MapReceiver {
    let (tx, rx) = futures_channel::oneshot::channel();
    buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
        let _ = tx.send(r);
    });
    rx
}

fn params(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decode steps queued past the token the host is reading: while it reads one, checks it and
/// records the next step, the GPU has this many more to run. Adapters that run on the CPU get
/// one: lavapipe runs a submit on the submitting thread, so steps ahead overlap nothing there and
/// each one past a stop is wasted time; one still keeps the pipeline tested.
const STEPS_AHEAD: usize = 2;
const STEPS_AHEAD_ON_CPU: usize = 1;

fn groups_1d(n: usize, per_group: usize) -> (u32, u32) {
    let total = n.div_ceil(per_group) as u32;
    // The kernels find their index as gid.x + gid.y * groups.x * GROUP.
    debug_assert_eq!(per_group, shared::GROUP);
    if total <= MAX_GROUPS { (total, 1) } else { (MAX_GROUPS, total.div_ceil(MAX_GROUPS)) }
}

impl Backend for GpuBackend {
    type Matrix = Rc<GpuMatrix>;
    type Embedding = Rc<GpuMatrix>;
    type Vector = GpuVector;
    type Act = GpuAct;
    type Cache = GpuCache;
    type Rope = GpuRope;
    type Token = GpuToken;
    type Rows = GpuRows;
    type Qkv = GpuQkv;
    type GateUp = GpuGateUp;

    fn describe(&self) -> String {
        let mut uses = vec![self.adapter.clone()];
        if let Some(n) = self.subgroup_size {
            uses.push(format!("subgroups of {n}"));
        }
        if self.f16_math {
            uses.push("f16 math".to_string());
        }
        format!("gpu ({})", uses.join(", "))
    }

    fn device_bytes(&self) -> Option<u64> {
        Some(self.allocated_bytes())
    }

    fn counters(&self) -> Option<Counters> {
        Some(self.counters.get())
    }

    fn matrix(&self, t: HostTensor) -> Result<Rc<GpuMatrix>> {
        let m = weights::upload(self, t, self.opts.quant, self.max_binding, 1)?;
        self.check_errors()?;
        Ok(Rc::new(m))
    }

    fn embedding(&self, t: HostTensor) -> Result<Rc<GpuMatrix>> {
        self.matrix(t)
    }

    fn tied_head(&self, e: &Rc<GpuMatrix>) -> Result<Rc<GpuMatrix>> {
        Ok(e.clone())
    }

    fn qkv(&self, q: HostTensor, k: HostTensor, v: HostTensor, heads: usize, kv_heads: usize) -> Result<GpuQkv> {
        if self.opts.fused && weights::stackable(&[&q, &k, &v]) {
            let t = weights::stack_rows(vec![q, k, v], false)?;
            let w = Rc::new(weights::upload(self, t, self.opts.quant, self.max_binding, 1)?);
            self.check_errors()?;
            return Ok(GpuQkv::Stacked { w, heads, kv_heads });
        }
        let (q, k, v) = (self.matrix(q)?, self.matrix(k)?, self.matrix(v)?);
        Ok(GpuQkv::Separate(unfused::Qkv { q, k, v, heads, kv_heads }))
    }

    fn gate_up(&self, gate: HostTensor, up: HostTensor) -> Result<GpuGateUp> {
        if self.opts.fused && weights::stackable(&[&gate, &up]) {
            let t = weights::stack_rows(vec![gate, up], true)?;
            // A gate row and its up row stay in one part.
            let w = Rc::new(weights::upload(self, t, self.opts.quant, self.max_binding, 2)?);
            self.check_errors()?;
            return Ok(GpuGateUp::Paired(w));
        }
        Ok(GpuGateUp::Separate(unfused::GateUp { gate: self.matrix(gate)?, up: self.matrix(up)? }))
    }

    fn vector(&self, t: HostTensor) -> Result<GpuVector> {
        let values = t.to_f32()?;
        Ok(GpuVector { buffer: self.storage_buffer(&t.name, bytemuck::cast_slice(&values))?, len: values.len() })
    }

    fn rope_table(&self, inv_freq: &[f32], max_seq: usize) -> Result<GpuRope> {
        let mut cos = Vec::with_capacity(max_seq * inv_freq.len());
        let mut sin = Vec::with_capacity(max_seq * inv_freq.len());
        for pos in 0..max_seq {
            for f in inv_freq {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(GpuRope {
            cos: self.storage_buffer("rope cos", bytemuck::cast_slice(&cos))?,
            sin: self.storage_buffer("rope sin", bytemuck::cast_slice(&sin))?,
        })
    }

    fn new_cache(&self, cfg: &LlamaConfig, max_seq: usize) -> Result<GpuCache> {
        let bytes = max_seq * cfg.num_kv_heads * cfg.head_dim * 4;
        if bytes as u64 > self.max_binding {
            return Err(Error::Backend(format!(
                "a KV cache of {max_seq} positions (every sequence of the batch and the shared prefix) needs {bytes} bytes per layer, over the GPU binding limit {}: use a smaller context or batch (--context, --batch)",
                self.max_binding
            )));
        }
        let layers = (0..cfg.num_layers)
            .map(|_| {
                let b = || {
                    self.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("kv cache"),
                        size: bytes as u64,
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                };
                (b(), b())
            })
            .collect();
        self.check_errors().map_err(|e| {
            Error::Backend(format!(
                "a KV cache of {max_seq} positions (every sequence of the batch and the shared prefix, {} MiB) could not be allocated: {e}; lower the batch or the context (--batch, --context)",
                (bytes * 2 * cfg.num_layers) >> 20
            ))
        })?;
        Ok(GpuCache {
            layers,
            scratch: RefCell::new(None),
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            max_seq,
        })
    }

    fn copy_rows(&self, cache: &mut GpuCache, from: usize, to: usize, len: usize) -> Result<()> {
        if from.max(to) + len > cache.max_seq {
            return Err(Error::Backend(format!("copy of cache rows past its {} rows", cache.max_seq)));
        }
        let width = cache.kv_heads * cache.head_dim;
        let n = len * width;
        for (k, v) in &cache.layers {
            self.dispatch(
                Kernel::CacheCopy,
                &params(&[n as u32, (from * width) as u32, (to * width) as u32]),
                &[k, v],
                groups_1d(n, shared::GROUP),
            )?;
        }
        Ok(())
    }

    fn rows(&self, spans: &[Span]) -> Result<GpuRows> {
        let table: Vec<u32> = spans
            .iter()
            .flat_map(|s| (s.pos..s.pos + s.len).flat_map(move |p| [(s.base + p) as u32, p as u32]))
            .collect();
        let out = self.activation(table.len() / 2, 2)?;
        // Queue writes land before the next submit: submit what reads an earlier table first.
        self.flush();
        self.queue.write_buffer(out.buffer(), 0, bytemuck::cast_slice(&table));
        Ok(GpuRows { spans: spans.to_vec(), table: out })
    }

    fn activation_from(&self, data: &[f32], rows: usize, cols: usize) -> Result<GpuAct> {
        if data.len() != rows * cols {
            return Err(Error::Backend(format!("{} values for a ({rows}, {cols}) activation", data.len())));
        }
        let out = self.activation(rows, cols)?;
        self.flush();
        self.queue.write_buffer(out.buffer(), 0, bytemuck::cast_slice(data));
        Ok(out)
    }

    fn embed(&self, table: &Rc<GpuMatrix>, ids: &[u32]) -> Result<GpuAct> {
        let out = self.activation(ids.len(), table.cols)?;
        let ids_act = self.activation(ids.len(), 1)?;
        // Queue writes land before the next submit: submit what reads earlier ids first.
        self.flush();
        self.queue.write_buffer(ids_act.buffer(), 0, bytemuck::cast_slice(ids));
        self.lookup(table, ids_act.buffer(), 0, None, &out)?;
        self.op_done("embed", out)
    }

    fn rms_norm(&self, x: &GpuAct, w: &GpuVector, eps: f32) -> Result<GpuAct> {
        if w.len != x.cols {
            return Err(Error::Backend(format!("rms_norm: width {} vs gain {}", x.cols, w.len)));
        }
        let out = self.activation(x.rows, x.cols)?;
        let mut p = params(&[x.cols as u32]);
        p.extend_from_slice(&eps.to_le_bytes());
        self.dispatch(Kernel::RmsNorm, &p, &[x.buffer(), out.buffer(), &w.buffer], (x.rows as u32, 1))?;
        self.op_done("rms_norm", out)
    }

    fn linear(&self, x: &GpuAct, w: &Rc<GpuMatrix>) -> Result<GpuAct> {
        self.op_done("linear", self.product(Product::new(x, w))?)
    }

    fn rope(&self, x: &GpuAct, rope: &GpuRope, heads: usize, rows: &GpuRows) -> Result<GpuAct> {
        let head_dim = x.cols / heads;
        let out = self.activation(x.rows, x.cols)?;
        let p = params(&[x.rows as u32, heads as u32, head_dim as u32]);
        self.dispatch(
            Kernel::Rope,
            &p,
            &[&rope.cos, x.buffer(), &rope.sin, out.buffer(), rows.table.buffer()],
            groups_1d(x.rows * heads * head_dim / 2, shared::GROUP),
        )?;
        self.op_done("rope", out)
    }

    fn attention(
        &self,
        cache: &mut GpuCache,
        layer: usize,
        q: &GpuAct,
        k: &GpuAct,
        v: &GpuAct,
        rows: &GpuRows,
    ) -> Result<GpuAct> {
        self.check_attention(cache, layer, q.rows, rows)?;
        let (kc, vc) = &cache.layers[layer];
        let width = cache.kv_heads * cache.head_dim;
        let n = q.rows * width;
        self.dispatch(
            Kernel::KvAppend,
            &params(&[n as u32, width as u32]),
            &[k.buffer(), v.buffer(), kc, vc, rows.table.buffer()],
            groups_1d(n, shared::GROUP),
        )?;
        self.op_done("attention", self.attend(cache, layer, q, rows)?)
    }

    fn self_attention(
        &self,
        x: &GpuAct,
        norm: &GpuVector,
        eps: f32,
        qkv: &GpuQkv,
        rope: &GpuRope,
        cache: &mut GpuCache,
        layer: usize,
        rows: &GpuRows,
    ) -> Result<GpuAct> {
        let (w, heads, kv_heads) = match qkv {
            GpuQkv::Separate(w) => return unfused::self_attention(self, x, norm, eps, w, rope, cache, layer, rows),
            GpuQkv::Stacked { w, heads, kv_heads } => (w, *heads, *kv_heads),
        };
        let seq = x.rows;
        self.check_attention(cache, layer, seq, rows)?;
        let head_dim = cache.head_dim;
        if kv_heads != cache.kv_heads || w.rows != (heads + 2 * kv_heads) * head_dim || !head_dim.is_multiple_of(2) {
            return Err(Error::Backend(format!(
                "self_attention: Q/K/V of {} rows for {heads} + 2 x {kv_heads} heads of {head_dim}",
                w.rows
            )));
        }
        let all = self.product(Product { gain: Some((norm, eps)), ..Product::new(x, w) })?; // (seq, q | k | v)
        let q = self.activation(seq, heads * head_dim)?;
        let (kc, vc) = &cache.layers[layer];
        let per_token = (heads + kv_heads) * head_dim / 2 + kv_heads * head_dim;
        self.dispatch(
            Kernel::RopeAppend,
            &params(&[seq as u32, heads as u32, kv_heads as u32, head_dim as u32]),
            &[&rope.cos, all.buffer(), &rope.sin, q.buffer(), kc, vc, rows.table.buffer()],
            groups_1d(seq * per_token, shared::GROUP),
        )?;
        self.op_done("self_attention", self.attend(cache, layer, &q, rows)?)
    }

    fn linear_residual(&self, a: &GpuAct, w: &Rc<GpuMatrix>, x: &GpuAct) -> Result<GpuAct> {
        if !self.opts.fused {
            return unfused::linear_residual(self, a, w, x);
        }
        self.op_done("linear_residual", self.product(Product { residual: Some(x), ..Product::new(a, w) })?)
    }

    fn norm_swiglu(&self, x: &GpuAct, norm: &GpuVector, eps: f32, gate_up: &GpuGateUp) -> Result<GpuAct> {
        match gate_up {
            GpuGateUp::Separate(w) => unfused::norm_swiglu(self, x, norm, eps, w),
            GpuGateUp::Paired(w) => self.op_done(
                "norm_swiglu",
                self.product(Product { gain: Some((norm, eps)), paired: true, ..Product::new(x, w) })?,
            ),
        }
    }

    fn logits(&self, x: &GpuAct, norm: &GpuVector, eps: f32, head: &Rc<GpuMatrix>, rows: &GpuRows) -> Result<GpuAct> {
        if !self.opts.fused {
            return unfused::logits(self, x, norm, eps, head, rows);
        }
        // The last row of a prompt chunk, or every row of a decode step.
        let (x_first, n_tokens) = match rows.spans.as_slice() {
            [one] => (one.len - 1, 1),
            spans if Span::all_single(spans) => (0, spans.len()),
            _ => return Err(Error::Backend("logits: spans of several rows in one pass".into())),
        };
        let logits = self.product(Product { gain: Some((norm, eps)), x_first, n_tokens, ..Product::new(x, head) })?;
        self.op_done("logits", logits)
    }

    fn swiglu(&self, gate: &GpuAct, up: &GpuAct) -> Result<GpuAct> {
        let out = self.activation(gate.rows, gate.cols)?;
        let n = gate.rows * gate.cols;
        self.dispatch(
            Kernel::Swiglu,
            &params(&[n as u32]),
            &[gate.buffer(), out.buffer(), up.buffer()],
            groups_1d(n, shared::GROUP),
        )?;
        self.op_done("swiglu", out)
    }

    fn add(&self, a: &GpuAct, b: &GpuAct) -> Result<GpuAct> {
        let out = self.activation(a.rows, a.cols)?;
        let n = a.rows * a.cols;
        self.dispatch(
            Kernel::Add,
            &params(&[n as u32]),
            &[a.buffer(), out.buffer(), b.buffer()],
            groups_1d(n, shared::GROUP),
        )?;
        self.op_done("add", out)
    }

    fn last_rows(&self, x: &GpuAct, rows: &GpuRows) -> Result<GpuAct> {
        if x.rows == 1 || (rows.spans.len() > 1 && Span::all_single(&rows.spans)) {
            return Ok(x.clone());
        }
        if rows.spans.len() != 1 {
            return Err(Error::Backend("last_rows: spans of several rows in one pass".into()));
        }
        let out = self.activation(1, x.cols)?;
        let p = params(&[x.cols as u32, ((x.rows - 1) * x.cols) as u32]);
        self.dispatch(Kernel::CopyRows, &p, &[x.buffer(), out.buffer()], groups_1d(x.cols, shared::GROUP))?;
        self.op_done("last_row", out)
    }

    fn choose(&self, logits: &GpuAct, watch: &[u32]) -> Result<Vec<GpuToken>> {
        let rows = logits.rows;
        if watch.len() > MAX_WATCH || watch.iter().any(|&id| id as usize >= logits.cols) {
            return Err(Error::Backend(format!(
                "watched ids {watch:?}: at most {MAX_WATCH}, each below {}",
                logits.cols
            )));
        }
        let issued = self.tokens_issued.get() + 1;
        self.tokens_issued.set(issued);
        let choice = (issued % self.choices.borrow().len() as u64) as usize;
        let first = choice * self.opts.max_rows.max(1);
        let staging = {
            let mut choices = self.choices.borrow_mut();
            let c = &mut choices[choice];
            // Tokens nobody read (the steps that ran past a stop): release the mapping so the
            // staging buffer can be written again.
            if c.map.take().is_some() {
                c.staging.unmap();
            }
            c.staging.clone()
        };
        // Argmax.wgsl's Params: n, slot, the number watched, padding, then the ids as 4 vec4s.
        let mut ids = [0u32; MAX_WATCH];
        ids[..watch.len()].copy_from_slice(watch);
        let head = [logits.cols as u32, first as u32, watch.len() as u32, 0];
        self.dispatch(
            Kernel::Argmax,
            &params(&[&head[..], &ids[..]].concat()),
            &[logits.buffer(), &self.token_buffer, &self.watch_buffer],
            (rows as u32, 1),
        )?;
        let id_bytes = (rows * 4) as u64;
        self.copy_for_readback(&self.token_buffer, (first * 4) as u64, &staging, 0, id_bytes);
        let mut bytes = id_bytes;
        if !watch.is_empty() {
            let watch_bytes = (rows * MAX_WATCH * 4) as u64;
            self.copy_for_readback(&self.watch_buffer, (first * MAX_WATCH * 4) as u64, &staging, id_bytes, watch_bytes);
            bytes += watch_bytes;
        }
        let index = self.flush();
        let rx = map_for_read(&staging, bytes);
        let submit = self.counters.get().submits;
        self.choices.borrow_mut()[choice] =
            Choice { staging, issued, rows, watched: watch.len(), map: Some(rx), submit, index, values: None };
        Ok((0..rows).map(|row| GpuToken { slot: first + row, row, issued }).collect())
    }

    fn embed_tokens(&self, table: &Rc<GpuMatrix>, tokens: &[GpuToken]) -> Result<GpuAct> {
        for t in tokens {
            self.check_token(t)?;
        }
        let out = self.activation(tokens.len(), table.cols)?;
        let first = tokens.first().map_or(0, |t| t.slot);
        if tokens.iter().enumerate().all(|(i, t)| t.slot == first + i) {
            // One choice's rows in order (a decode step's own tokens): read them in place.
            self.lookup(table, &self.token_buffer, first, None, &out)?;
        } else {
            let slots: Vec<u32> = tokens.iter().map(|t| t.slot as u32).collect();
            let index = self.activation(slots.len(), 1)?;
            self.flush();
            self.queue.write_buffer(index.buffer(), 0, bytemuck::cast_slice(&slots));
            self.lookup(table, &self.token_buffer, 0, Some(index.buffer()), &out)?;
        }
        self.op_done("embed_tokens", out)
    }

    async fn read_token(&self, token: &GpuToken) -> Result<Chosen> {
        self.check_token(token)?;
        let choice = (token.issued % self.choices.borrow().len() as u64) as usize;
        // The ids, then `MAX_WATCH` slots per row of which the first `watched` hold logits.
        let pick = |values: &[u32], rows: usize, watched: usize| -> Result<Chosen> {
            let id = values.get(token.row).copied().ok_or_else(|| Error::Backend("token row out of range".into()))?;
            let from = rows + token.row * MAX_WATCH;
            let watched = values.get(from..from + watched).unwrap_or(&[]).iter().map(|&b| f32::from_bits(b)).collect();
            Ok(Chosen { id, watched })
        };
        let (rx, index, submit, staging, rows, watched) = {
            let mut choices = self.choices.borrow_mut();
            let c = &mut choices[choice];
            if let Some(v) = &c.values {
                return pick(v, c.rows, c.watched);
            }
            let rx = c.map.take().ok_or_else(|| Error::Backend("token readback missing".into()))?;
            (rx, c.index.clone(), c.submit, c.staging.clone(), c.rows, c.watched)
        };
        let mut rx = rx;
        // Natively the map completes only when the device is polled; on the web polling does
        // nothing and the browser resolves it.
        let _ = self.device.poll(wgpu::PollType::Poll);
        let mapped = match rx.try_recv() {
            Ok(Some(r)) => r,
            Ok(None) => {
                let waited = web_time::Instant::now();
                let _ = self.device.poll(wgpu::PollType::Wait { submission_index: index, timeout: None });
                let r = rx
                    .await
                    .map_err(|_| self.lost_or(Error::Backend("GPU readback was dropped (device lost?)".into())))?;
                let wait_us = waited.elapsed().as_secs_f64() * 1e6;
                let newest = submit == self.counters.get().submits;
                self.count(|c| {
                    c.blocking_waits += newest as u64;
                    c.wait_us += wait_us;
                });
                r
            }
            Err(_) => return Err(self.lost_or(Error::Backend("GPU readback was dropped (device lost?)".into()))),
        };
        self.check_errors()?;
        mapped.map_err(|e| self.lost_or(Error::Backend(format!("GPU readback failed: {e}"))))?;
        let words = if watched > 0 { rows * (1 + MAX_WATCH) } else { rows };
        let values: Vec<u32> = {
            let view = staging
                .get_mapped_range(0..(words * 4) as u64)
                .map_err(|e| Error::Backend(format!("GPU readback failed: {e}")))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        staging.unmap();
        let chosen = pick(&values, rows, watched)?;
        self.choices.borrow_mut()[choice].values = Some(values);
        Ok(chosen)
    }

    fn steps_ahead(&self) -> usize {
        self.steps_ahead
    }

    async fn to_host(&self, x: &GpuAct) -> Result<Vec<f32>> {
        let bytes = self.read(x.buffer(), (x.rows * x.cols * 4) as u64).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invocations per workgroup every adapter offers (WebGPU's minimum; SwiftShader's limit).
    const MIN_INVOCATIONS: u32 = 256;

    /// Every kernel `GpuBackend` can build: each weight format, activation layout, fusion,
    /// reduction and arithmetic of the matrix kernels (f16 math only for formats that are not
    /// f32, as `linear` chooses), and every other kernel.
    fn every_kernel() -> Vec<Kernel> {
        use WeightFormat::*;
        let formats = [F32, F16, Q8, Q4, Q4Sym];
        let layouts = [Activations::Vec4, Activations::Scalar];
        let reduces = [Reduce::Workgroup, Reduce::Subgroup];
        let fusions: Vec<Fusion> =
            (0..8).map(|bits| Fusion { norm: bits & 1 != 0, residual: bits & 2 != 0, paired: bits & 4 != 0 }).collect();
        let mut kernels = Vec::new();
        for f in formats {
            kernels.push(Kernel::Embed(f));
            for x in layouts {
                for &fusion in &fusions {
                    kernels.push(Kernel::LinearRows(f, x, fusion));
                    for reduce in reduces {
                        kernels.push(Kernel::Linear(f, x, fusion, reduce, Math::F32));
                        if f != F32 {
                            kernels.push(Kernel::Linear(f, x, fusion, reduce, Math::F16));
                        }
                    }
                }
            }
        }
        for reduce in reduces {
            kernels.extend([Kernel::Attention(reduce), Kernel::AttentionPartial(reduce)]);
        }
        kernels.extend([
            Kernel::RmsNorm,
            Kernel::Rope,
            Kernel::RopeAppend,
            Kernel::AttentionCombine,
            Kernel::Swiglu,
            Kernel::Add,
            Kernel::CopyRows,
            Kernel::KvAppend,
            Kernel::CacheCopy,
            Kernel::Argmax,
            Kernel::SubgroupProbe,
        ]);
        kernels
    }

    /// What a kernel needs of the adapter beyond WebGPU's baseline: `shader-f16` for f16 math,
    /// subgroups for the subgroup reductions and the probe. Everything else must validate
    /// without either (the common minimum: SwiftShader in Chromium has neither).
    fn capabilities(kernel: Kernel) -> naga::valid::Capabilities {
        use naga::valid::Capabilities;
        // pack2x16float/unpack2x16float are core WebGPU: wgpu grants this to every compliant
        // adapter (its downlevel flag SHADER_F16_IN_F32).
        let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        if matches!(kernel, Kernel::Linear(.., Math::F16)) {
            caps |= Capabilities::SHADER_FLOAT16;
        }
        let subgroups = matches!(
            kernel,
            Kernel::Linear(_, _, _, Reduce::Subgroup, _)
                | Kernel::Attention(Reduce::Subgroup)
                | Kernel::AttentionPartial(Reduce::Subgroup)
                | Kernel::SubgroupProbe
        );
        if subgroups {
            caps |= Capabilities::SUBGROUP;
        }
        caps
    }

    /// Every WGSL variant the backend can build parses and validates with naga (wgpu's own shader
    /// compiler) under only the capabilities it asks the adapter for, has its entry point, and
    /// fits the common minimum of invocations per workgroup: a broken shader fails here, without
    /// a GPU or an emulator.
    #[test]
    fn every_kernel_variant_is_valid_wgsl_at_the_common_minimum() {
        let kernels = every_kernel();
        assert!(kernels.len() >= 388, "{} variants", kernels.len());
        for kernel in kernels {
            let source = kernel.source();
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{kernel:?} does not parse:\n{}", e.emit_to_string(&source)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities(kernel))
                .validate(&module)
                .unwrap_or_else(|e| panic!("{kernel:?} does not validate:\n{}", e.emit_to_string(&source)));
            let entry = module.entry_points.iter().find(|e| e.name == kernel.entry());
            let entry = entry.unwrap_or_else(|| panic!("{kernel:?} has no entry point `{}`", kernel.entry()));
            let invocations: u32 = entry.workgroup_size.iter().product();
            assert!(invocations <= MIN_INVOCATIONS, "{kernel:?}: {invocations} invocations per workgroup");
        }
    }
}
