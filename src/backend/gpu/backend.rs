//! The `Backend` trait on the GPU: each op of the forward pass (ARCHITECTURE.md) as the
//! dispatches of `encode`, uploads through `weights`, choices through `readback`.

use super::buffers::{GpuAct, GpuCache, GpuGateUp, GpuQkv, GpuRope, GpuRows, GpuVector};
use super::device::GpuBackend;
use super::encode::{Product, groups_1d, params};
use super::kernels::{Kernel, shared, slot};
use super::readback::{Choice, GpuToken, map_for_read};
use super::weights::{self, GpuMatrix};
use crate::backend::{Backend, Chosen, Counters, MAX_WATCH, Span, unfused};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::format::HostTensor;
use std::cell::RefCell;
use std::rc::Rc;

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
                &[(slot::K_CACHE, k), (slot::V_CACHE, v)],
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
        self.dispatch(
            Kernel::RmsNorm,
            &p,
            &[(slot::X, x.buffer()), (slot::OUT, out.buffer()), (slot::GAIN, &w.buffer)],
            (x.rows as u32, 1),
        )?;
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
            &[
                (slot::COS, &rope.cos),
                (slot::X, x.buffer()),
                (slot::SIN, &rope.sin),
                (slot::OUT, out.buffer()),
                (slot::ROWS, rows.table.buffer()),
            ],
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
            &[
                (slot::X, k.buffer()),
                (slot::Y, v.buffer()),
                (slot::K_CACHE, kc),
                (slot::V_CACHE, vc),
                (slot::ROWS, rows.table.buffer()),
            ],
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
            &[
                (slot::COS, &rope.cos),
                (slot::X, all.buffer()),
                (slot::SIN, &rope.sin),
                (slot::OUT, q.buffer()),
                (slot::K_CACHE, kc),
                (slot::V_CACHE, vc),
                (slot::ROWS, rows.table.buffer()),
            ],
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
            &[(slot::X, gate.buffer()), (slot::OUT, out.buffer()), (slot::Y, up.buffer())],
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
            &[(slot::X, a.buffer()), (slot::OUT, out.buffer()), (slot::Y, b.buffer())],
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
        self.dispatch(
            Kernel::CopyRows,
            &p,
            &[(slot::X, x.buffer()), (slot::OUT, out.buffer())],
            groups_1d(x.cols, shared::GROUP),
        )?;
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
            &[(slot::X, logits.buffer()), (slot::OUT, &self.token_buffer), (slot::WATCHED, &self.watch_buffer)],
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
