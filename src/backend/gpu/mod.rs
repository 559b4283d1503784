//! WebGPU backend through wgpu: the same ops as the CPU backend, as WGSL compute shaders.
//! Weights live in GPU buffers in a GPU-friendly block layout (f32, 8-bit or 4-bit blocks of
//! 32), split by rows wherever one binding cannot hold a tensor. Activations come from a pool of
//! buffers sized once, so decoding allocates nothing after the first step. Each decode step is
//! one compute pass in one submit; the token it chooses stays on the GPU for the next step and
//! comes back to the host (4 bytes) a step or more later (ARCHITECTURE.md, "Decode on the GPU").

// The GPU backend needs wgpu, behind the `gpu` feature (on by default); the options below are
// plain data every front door names, so they exist without it (the fuzz build leaves wgpu out).
#[cfg(feature = "gpu")]
mod backend;
#[cfg(feature = "gpu")]
mod buffers;
#[cfg(feature = "gpu")]
mod device;
#[cfg(feature = "gpu")]
mod encode;
#[cfg(feature = "gpu")]
mod kernels;
#[cfg(feature = "gpu")]
mod readback;
#[cfg(feature = "gpu")]
mod weights;
#[cfg(feature = "gpu")]
pub use {
    buffers::{GpuAct, GpuCache, GpuGateUp, GpuQkv, GpuRope, GpuRows, GpuVector},
    device::{GpuBackend, LoadScopes},
    readback::GpuToken,
    weights::{GpuMatrix, WeightFormat},
};

/// Which GPU weight layout float weights are converted to while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuQuant {
    /// Keep f32 (exact; 4 bytes per weight).
    F32,
    /// 8-bit blocks of 32 with an f16 scale (1.0625 bytes per weight).
    Q8,
    /// 4-bit blocks of 32 with an f16 scale and offset (0.625 bytes per weight).
    Q4,
}

#[derive(Debug, Clone)]
pub struct GpuOptions {
    pub quant: GpuQuant,
    /// Use at most this many bytes per storage binding (tests force splitting with it).
    pub max_binding_bytes: Option<u64>,
    pub linear: LinearKernel,
    /// Rows (tokens) one activation buffer holds: the most a forward pass may run at once. The
    /// engine's prefill chunk must fit (the session passes it).
    pub max_rows: usize,
    /// Run the fused layer kernels (the default); off, every layer runs the primitive ops one
    /// by one (`backend::unfused`), to compare against or to find a fault.
    pub fused: bool,
    /// Debug mode: every op is submitted and waited for on its own, GPU errors name the op that
    /// raised them, and (natively) every op's output is kept, by name and in order, for
    /// `GpuBackend::take_trace`. Slow; for finding a fault.
    pub debug: bool,
    /// Use subgroup operations where the adapter offers them (natively; wgpu has no subgroups on
    /// the web yet) and they pass a startup check: the cooperative matrix kernel then adds its
    /// lanes' sums with shuffles instead of a tree of barriers.
    pub subgroups: bool,
    /// Use the adapter's `shader-f16` where it offers it: the cooperative matrix kernel then
    /// multiplies block-format weights and activations in f16, four products at a time, and adds
    /// those in f32 (`Math::F16`). Off, or on adapters without it, every product is f32.
    pub f16: bool,
}

/// `GpuOptions::max_rows` unless told otherwise: the engine's prefill chunk today.
pub const DEFAULT_MAX_ROWS: usize = 128;

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            quant: GpuQuant::Q8,
            max_binding_bytes: None,
            linear: LinearKernel::Auto,
            max_rows: DEFAULT_MAX_ROWS,
            fused: true,
            debug: false,
            subgroups: true,
            f16: true,
        }
    }
}

/// How matrix products split a row's dot product among threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKernel {
    /// `RowPerThread` on adapters that say they run on the CPU (lavapipe, SwiftShader), else
    /// `Cooperative`.
    Auto,
    /// 32 threads share a row and add their sums in workgroup memory (linear.wgsl): GPUs.
    Cooperative,
    /// One thread per row, no workgroup memory (linear_rows.wgsl): CPU emulations.
    RowPerThread,
}
