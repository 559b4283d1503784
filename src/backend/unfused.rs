//! The fused layer ops of `Backend`, spelled out once in its primitive ops: what the CPU runs,
//! what the GPU falls back to where it cannot fuse (differently stored Q/K/V, `GpuOptions::fused`
//! off), and so the reference its fused kernels are tested against.

use super::Backend;
use crate::error::Result;

/// A layer's Q, K and V projections as three matrices, and their head counts.
pub struct Qkv<M> {
    pub q: M,
    pub k: M,
    pub v: M,
    pub heads: usize,
    pub kv_heads: usize,
}

/// A layer's gate and up projections as two matrices.
pub struct GateUp<M> {
    pub gate: M,
    pub up: M,
}

/// `Backend::self_attention`.
#[allow(clippy::too_many_arguments)]
pub fn self_attention<B: Backend>(
    b: &B,
    x: &B::Act,
    norm: &B::Vector,
    eps: f32,
    w: &Qkv<B::Matrix>,
    rope: &B::Rope,
    cache: &mut B::Cache,
    layer: usize,
    rows: &B::Rows,
) -> Result<B::Act> {
    let h = b.rms_norm(x, norm, eps)?;
    let q = b.rope(&b.linear(&h, &w.q)?, rope, w.heads, rows)?; // (seq, heads * hd)
    let k = b.rope(&b.linear(&h, &w.k)?, rope, w.kv_heads, rows)?; // (seq, kv_heads * hd)
    let v = b.linear(&h, &w.v)?; // (seq, kv_heads * hd)
    b.attention(cache, layer, &q, &k, &v, rows)
}

/// `Backend::linear_residual`.
pub fn linear_residual<B: Backend>(b: &B, a: &B::Act, w: &B::Matrix, x: &B::Act) -> Result<B::Act> {
    b.add(x, &b.linear(a, w)?)
}

/// `Backend::norm_swiglu`.
pub fn norm_swiglu<B: Backend>(b: &B, x: &B::Act, norm: &B::Vector, eps: f32, w: &GateUp<B::Matrix>) -> Result<B::Act> {
    let h = b.rms_norm(x, norm, eps)?;
    b.swiglu(&b.linear(&h, &w.gate)?, &b.linear(&h, &w.up)?)
}

/// `Backend::logits`.
pub fn logits<B: Backend>(
    b: &B,
    x: &B::Act,
    norm: &B::Vector,
    eps: f32,
    head: &B::Matrix,
    rows: &B::Rows,
) -> Result<B::Act> {
    b.linear(&b.rms_norm(&b.last_rows(x, rows)?, norm, eps)?, head)
}
