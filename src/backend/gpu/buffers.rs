//! Buffers: pooled activation buffers, the vectors, rope tables and KV cache on the device, the
//! row table of a forward pass, and uploads of host data.

use super::device::GpuBackend;
use super::weights::GpuMatrix;
use crate::backend::{Span, unfused};
use crate::error::{Error, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Activation buffers are recycled by (width, rows they hold): one row for decode steps and the
/// logits, `GpuOptions::max_rows` for prefill chunks, so a 128256-wide logits row does not hold
/// 128 rows of memory.
pub(super) struct Pool {
    pub(super) free: HashMap<(usize, usize), Vec<wgpu::Buffer>>,
}

pub struct GpuBuffer {
    pub(super) buffer: Option<wgpu::Buffer>,
    pub(super) width: usize,
    /// Rows the buffer holds.
    pub(super) capacity: usize,
    pub(super) pool: Rc<RefCell<Pool>>,
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
    pub(super) buf: Rc<GpuBuffer>,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl GpuAct {
    pub(super) fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer.as_ref().expect("pooled buffer present until drop")
    }
}

pub struct GpuVector {
    pub(super) buffer: wgpu::Buffer,
    pub(super) len: usize,
}

pub struct GpuRope {
    pub(super) cos: wgpu::Buffer,
    pub(super) sin: wgpu::Buffer,
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

pub struct GpuCache {
    /// Per layer: K and V, each `(max_seq, kv_heads * head_dim)`.
    pub(super) layers: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// Split decode attention partials `(tokens, heads, chunks, head_dim + 2)`, grown on demand.
    pub(super) scratch: RefCell<Option<(wgpu::Buffer, u64)>>,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) max_seq: usize,
}

/// Where a forward pass's rows sit (`Backend::Rows`): the spans, and per row its cache row and
/// position as u32 pairs on the device (the table rope, K/V append and attention read).
pub struct GpuRows {
    pub(super) spans: Vec<Span>,
    pub(super) table: GpuAct,
}

impl AsRef<[Span]> for GpuRows {
    fn as_ref(&self) -> &[Span] {
        &self.spans
    }
}

impl GpuBackend {
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

    pub(super) fn activation(&self, rows: usize, cols: usize) -> Result<GpuAct> {
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
}
