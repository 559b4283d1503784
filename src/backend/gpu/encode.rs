//! Encoding: every op is a dispatch recorded into one compute pass with its parameters in one
//! uniform buffer; a submit sends the lot. The matrix product and attention choose their kernel
//! variant and dispatches here.

use super::buffers::{GpuAct, GpuCache, GpuRows, GpuVector};
use super::device::GpuBackend;
use super::kernels::{Activations, Fusion, Kernel, Math, shared, slot};
use super::weights::{GpuMatrix, WeightFormat};
use crate::backend::{Counters, Span};
use crate::error::{Error, Result};

/// Per-dispatch parameters live in one uniform buffer, each at this alignment (WebGPU's
/// largest `minUniformBufferOffsetAlignment`).
pub(super) const PARAM_ALIGN: usize = 256;
/// Dispatches per submission before the parameter buffer is flushed.
pub(super) const PARAM_SLOTS: usize = 2048;
/// Workgroups per dimension (WebGPU's minimum `maxComputeWorkgroupsPerDimension`).
pub(super) const MAX_GROUPS: u32 = 65535;

/// A bind group's identity: its kernel, its parameter offset and the buffers it binds.
pub(super) type BindGroupKey = (Kernel, u64, Vec<wgpu::Buffer>);

/// One matrix product and what it fuses: `x` rows `x_first..x_first + n_tokens` times `w`,
/// with `gain` the input's RMSNorm (and epsilon), `residual` added to the result, and `paired`
/// SwiGLU over a `GpuGateUp::Paired` matrix.
pub(super) struct Product<'a> {
    pub(super) x: &'a GpuAct,
    pub(super) w: &'a GpuMatrix,
    pub(super) gain: Option<(&'a GpuVector, f32)>,
    pub(super) residual: Option<&'a GpuAct>,
    pub(super) paired: bool,
    pub(super) x_first: usize,
    pub(super) n_tokens: usize,
}

impl<'a> Product<'a> {
    pub(super) fn new(x: &'a GpuAct, w: &'a GpuMatrix) -> Self {
        Self { x, w, gain: None, residual: None, paired: false, x_first: 0, n_tokens: x.rows }
    }
}

/// Keys per workgroup in split decode attention.
pub(super) const ATTENTION_CHUNK: usize = shared::CHUNK;

/// Work recorded but not submitted: one encoder, and the compute pass every dispatch goes into
/// until something must end it (a buffer copy for a readback, or a submit).
pub(super) struct Pending {
    pub(super) encoder: Option<wgpu::CommandEncoder>,
    pub(super) pass: Option<wgpu::ComputePass<'static>>,
    pub(super) params: Vec<u8>,
}

impl GpuBackend {
    /// A matrix product with whatever it fuses (linear_common.wgsl), one dispatch per part.
    pub(super) fn product(&self, p: Product) -> Result<GpuAct> {
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
            let mut buffers = vec![(slot::X, x.buffer()), (slot::OUT, out.buffer())];
            buffers.extend(part.buffers());
            if let Some((g, _)) = p.gain {
                buffers.push((slot::GAIN, &g.buffer));
            }
            if let Some(r) = p.residual {
                buffers.push((slot::RESIDUAL, r.buffer()));
            }
            self.dispatch(
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
    pub(super) fn lookup(
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
            let mut buffers =
                vec![(slot::X, ids), (slot::OUT, out.buffer()), (slot::INDEX, index.unwrap_or(&self.identity))];
            buffers.extend(part.buffers());
            self.dispatch(Kernel::Embed(table.format), &p, &buffers, (out.rows as u32, 1))?;
        }
        Ok(())
    }

    pub(super) fn check_attention(&self, cache: &GpuCache, layer: usize, seq: usize, rows: &GpuRows) -> Result<()> {
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
    pub(super) fn attend(&self, cache: &GpuCache, layer: usize, q: &GpuAct, rows: &GpuRows) -> Result<GpuAct> {
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
            self.dispatch(
                Kernel::AttentionPartial(self.reduce()),
                &p,
                &[
                    (slot::X, q.buffer()),
                    (slot::OUT, &scratch),
                    (slot::K_CACHE, kc),
                    (slot::V_CACHE, vc),
                    (slot::ROWS, rows.table.buffer()),
                ],
                (heads as u32, (seq * chunks) as u32),
            )?;
            self.dispatch(
                Kernel::AttentionCombine,
                &p,
                &[(slot::X, &scratch), (slot::OUT, out.buffer()), (slot::ROWS, rows.table.buffer())],
                (heads as u32, seq as u32),
            )?;
        } else {
            let mut p = params(&[seq as u32, heads as u32, cache.kv_heads as u32, cache.head_dim as u32]);
            p.extend_from_slice(&scale);
            self.dispatch(
                Kernel::Attention(self.reduce()),
                &p,
                &[
                    (slot::X, q.buffer()),
                    (slot::OUT, out.buffer()),
                    (slot::K_CACHE, kc),
                    (slot::V_CACHE, vc),
                    (slot::ROWS, rows.table.buffer()),
                ],
                (heads as u32, seq as u32),
            )?;
        }
        Ok(out)
    }

    /// The end of an op: in debug mode, run it alone, report GPU errors under its name and keep
    /// its output; otherwise nothing.
    pub(super) fn op_done(&self, name: &str, out: GpuAct) -> Result<GpuAct> {
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
            let values = pollster::block_on(crate::backend::Backend::to_host(self, &out))?;
            self.trace.borrow_mut().push((name.to_string(), values));
        }
        Ok(out)
    }

    /// Debug mode's record since the last call: each op's name and output, in order.
    pub fn take_trace(&self) -> Vec<(String, Vec<f32>)> {
        std::mem::take(&mut *self.trace.borrow_mut())
    }

    /// Queue one dispatch: `params` goes to the uniform at `slot::PARAMS`, each buffer to its
    /// slot.
    pub(super) fn dispatch(
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
                binding: slot::PARAMS,
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

    pub(super) fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
    }

    /// Submit everything queued so far; the submission's index, if there was anything.
    pub(super) fn flush(&self) -> Option<wgpu::SubmissionIndex> {
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
}

pub(super) fn params(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(super) fn groups_1d(n: usize, per_group: usize) -> (u32, u32) {
    let total = n.div_ceil(per_group) as u32;
    // The kernels find their index as gid.x + gid.y * groups.x * GROUP.
    debug_assert_eq!(per_group, shared::GROUP);
    if total <= MAX_GROUPS { (total, 1) } else { (MAX_GROUPS, total.div_ceil(MAX_GROUPS)) }
}
