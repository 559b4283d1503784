//! Weights in GPU buffers: conversion from file storage (f32/f16/bf16, GGML Q8_0/Q4_0/Q4_1,
//! other GGML types via dequantization) to the GPU block layouts of `fmt_*.wgsl`, and splitting
//! by rows so no buffer exceeds the binding limit (the 128256 x 2048 embedding is the big one).

use super::GpuBackend;
use super::kernels::slot;
use crate::error::{Error, Result};
use crate::format::{HostTensor, StorageType};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use half::f16;
use std::borrow::Cow;

/// Elements per quantization block (all GPU formats).
const BLOCK: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WeightFormat {
    F32,
    /// f16 pairs packed in u32s (for F16 files kept as they are).
    F16,
    Q8,
    /// 4-bit blocks with a scale and a per-block offset (GGML Q4_1, and 4-bit on load).
    Q4,
    /// 4-bit blocks with a scale only, value `scale * (q - 8)` (GGML Q4_0): no offsets to store.
    Q4Sym,
}

impl WeightFormat {
    /// Bytes of the data buffer per row of `cols` weights.
    fn data_bytes_per_row(self, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => cols * 4,
            WeightFormat::F16 => cols * 2,
            WeightFormat::Q8 => cols,
            WeightFormat::Q4 | WeightFormat::Q4Sym => cols / 2,
        }
    }
}

/// One row range of a matrix, in its own buffers.
pub struct MatrixPart {
    pub row_start: usize,
    pub rows: usize,
    data: wgpu::Buffer,
    scales: Option<wgpu::Buffer>,
    mins: Option<wgpu::Buffer>,
}

impl MatrixPart {
    /// The part's buffers at their slots of the `fmt_*.wgsl` layouts.
    pub fn buffers(&self) -> Vec<(u32, &wgpu::Buffer)> {
        let scales = self.scales.as_ref().map(|b| (slot::W_SCALES, b));
        let mins = self.mins.as_ref().map(|b| (slot::W_MINS, b));
        std::iter::once((slot::W_DATA, &self.data)).chain(scales).chain(mins).collect()
    }
}

/// A weight matrix `(rows, cols)` on the GPU, each row stored as `stride` weights: `cols` rounded
/// up to whole blocks, the padding zero (the kernels never use it).
pub struct GpuMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
    pub parts: Vec<MatrixPart>,
}

/// Host-side blocks for a row range, before upload. Scales and offsets are f16 values (GGML's
/// own, or rounded before quantizing on load), uploaded two to a u32: the GPU holds a block
/// format at its file size.
#[derive(Default)]
struct Blocks {
    data: Vec<u8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

/// f16 values packed two to a little-endian u32 (element 2i in the low half), as
/// `unpack2x16float` reads them; an odd count is padded.
fn pack_f16(values: &[f32]) -> Vec<u8> {
    let mut out: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
    if values.len() % 2 == 1 {
        out.extend_from_slice(&[0, 0]);
    }
    out
}

/// A value as the GPU will hold it (f16).
fn as_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Whether matrices can be stored as one (`stack_rows`): one storage type, one width.
pub fn stackable(ts: &[&HostTensor]) -> bool {
    let first = ts[0];
    ts.iter().all(|t| t.storage == first.storage && t.shape.len() == 2 && t.shape[1] == first.shape[1])
}

/// Matrices of one storage type and width as one matrix: their rows one after another, or with
/// `interleave` (matrices of equal height) row 0 of each, then row 1 of each, and so on. Rows are
/// whole runs of bytes in every storage type (blocks never cross rows).
pub fn stack_rows(ts: Vec<HostTensor>, interleave: bool) -> Result<HostTensor> {
    let refs: Vec<&HostTensor> = ts.iter().collect();
    if !stackable(&refs) || (interleave && ts.iter().any(|t| t.shape[0] != ts[0].shape[0])) {
        return Err(Error::Backend(format!("{}: cannot be stacked with its neighbours", ts[0].name)));
    }
    let cols = ts[0].shape[1];
    let rows: usize = ts.iter().map(|t| t.shape[0]).sum();
    let name = ts.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(" + ");
    let bytes = if interleave {
        let row_bytes = ts[0].bytes.len() / ts[0].shape[0];
        let mut out = Vec::with_capacity(rows * row_bytes);
        for r in 0..ts[0].shape[0] {
            for t in &ts {
                out.extend_from_slice(&t.bytes[r * row_bytes..(r + 1) * row_bytes]);
            }
        }
        out
    } else {
        ts.iter().flat_map(|t| t.bytes.iter().copied()).collect()
    };
    Ok(HostTensor { name, storage: ts[0].storage, shape: vec![rows, cols], bytes })
}

/// Upload a matrix in the GPU layout its storage and `quant` call for, split by rows into parts
/// that each fit a binding; a part holds a multiple of `row_multiple` rows (2 keeps a paired
/// gate/up row together).
pub fn upload(
    gpu: &GpuBackend,
    t: HostTensor,
    quant: super::GpuQuant,
    max_binding: u64,
    row_multiple: usize,
) -> Result<GpuMatrix> {
    let (rows, cols) = match t.shape.as_slice() {
        [r, c] => (*r, *c),
        other => return Err(Error::Backend(format!("{}: expected a matrix, got shape {other:?}", t.name))),
    };
    let stride = cols.next_multiple_of(BLOCK);
    // A width that is not a whole number of blocks: float weights are padded with zeros to one
    // (GGML block formats always are one).
    let t = if stride != cols { pad_columns(t, rows, cols, stride)? } else { t };
    // GGML types with no direct GPU layout are dequantized first, then stored as 8-bit blocks.
    let (t, format) = match t.storage {
        StorageType::Ggml(GgmlDType::Q8_0) => (t, WeightFormat::Q8),
        StorageType::Ggml(GgmlDType::Q4_0) => (t, WeightFormat::Q4Sym),
        StorageType::Ggml(GgmlDType::Q4_1) => (t, WeightFormat::Q4),
        StorageType::Ggml(dtype) => (dequantize(t, dtype)?, WeightFormat::Q8),
        StorageType::F16 if quant == super::GpuQuant::F32 => (t, WeightFormat::F16),
        _ => {
            let f = match quant {
                super::GpuQuant::F32 => WeightFormat::F32,
                super::GpuQuant::Q8 => WeightFormat::Q8,
                super::GpuQuant::Q4 => WeightFormat::Q4,
            };
            (t, f)
        }
    };
    let row_bytes = format.data_bytes_per_row(stride).max((stride / BLOCK) * 2);
    let rows_per_part = ((max_binding as usize) / row_bytes / row_multiple).max(1) * row_multiple;
    let mut parts = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + rows_per_part).min(rows);
        let blocks = convert(&t, format, stride, r0, r1)?;
        let label = |what: &str| format!("{} rows {r0}..{r1} {what}", t.name);
        let scales = if matches!(format, WeightFormat::F32 | WeightFormat::F16) {
            None
        } else {
            Some(gpu.storage_buffer(&label("scales"), &pack_f16(&blocks.scales))?)
        };
        let mins = if format == WeightFormat::Q4 {
            Some(gpu.storage_buffer(&label("mins"), &pack_f16(&blocks.mins))?)
        } else {
            None
        };
        let data = gpu.storage_buffer(&label("data"), &blocks.data)?;
        parts.push(MatrixPart { row_start: r0, rows: r1 - r0, data, scales, mins });
        r0 = r1;
    }
    Ok(GpuMatrix { format, rows, cols, stride, parts })
}

/// A float tensor `(rows, cols)` with each row padded with zeros to `stride` values, as f32 (f16
/// files stay f16).
fn pad_columns(t: HostTensor, rows: usize, cols: usize, stride: usize) -> Result<HostTensor> {
    let bytes = match t.storage {
        StorageType::F16 => {
            let mut out = vec![0u8; rows * stride * 2];
            for (r, row) in t.bytes.chunks_exact(cols * 2).enumerate() {
                out[r * stride * 2..r * stride * 2 + cols * 2].copy_from_slice(row);
            }
            out
        }
        StorageType::F32 | StorageType::BF16 => {
            let values = float_rows(&t, cols, 0, rows)?;
            let mut out = vec![0f32; rows * stride];
            for (r, row) in values.chunks_exact(cols).enumerate() {
                out[r * stride..r * stride + cols].copy_from_slice(row);
            }
            bytemuck::cast_slice(&out).to_vec()
        }
        StorageType::Ggml(dtype) => {
            return Err(Error::Backend(format!("{}: width {cols} is not a whole number of {dtype:?} blocks", t.name)));
        }
    };
    let storage = if t.storage == StorageType::F16 { StorageType::F16 } else { StorageType::F32 };
    Ok(HostTensor { name: t.name, storage, shape: vec![rows, stride], bytes })
}

fn dequantize(t: HostTensor, dtype: GgmlDType) -> Result<HostTensor> {
    let storage = QStorage::from_data(Cow::Borrowed(&t.bytes), &candle_core::Device::Cpu, dtype)?;
    let q = QTensor::new(storage, t.shape.as_slice())?;
    let values = q.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(HostTensor {
        name: t.name,
        storage: StorageType::F32,
        shape: t.shape,
        bytes: bytemuck::cast_slice(&values).to_vec(),
    })
}

/// Float values of rows `r0..r1` of a float-stored tensor.
fn float_rows(t: &HostTensor, cols: usize, r0: usize, r1: usize) -> Result<Vec<f32>> {
    let size = match t.storage {
        StorageType::F32 => 4,
        StorageType::F16 | StorageType::BF16 => 2,
        StorageType::Ggml(d) => return Err(Error::Backend(format!("{}: {d:?} is not a float type", t.name))),
    };
    let bytes = &t.bytes[r0 * cols * size..r1 * cols * size];
    Ok(match t.storage {
        StorageType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        StorageType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    })
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn convert(t: &HostTensor, format: WeightFormat, cols: usize, r0: usize, r1: usize) -> Result<Blocks> {
    let blocks_per_row = cols / BLOCK;
    let n_blocks = (r1 - r0) * blocks_per_row;
    let mut out = Blocks::default();
    match (t.storage, format) {
        (StorageType::Ggml(GgmlDType::Q8_0), WeightFormat::Q8) => {
            // GGML block_q8_0: f16 d, 32 x i8. The bytes are already in our order.
            const SIZE: usize = 34;
            let raw = &t.bytes[r0 * blocks_per_row * SIZE..r1 * blocks_per_row * SIZE];
            for b in raw.chunks_exact(SIZE) {
                out.scales.push(f16_at(b, 0));
                out.data.extend_from_slice(&b[2..SIZE]);
            }
        }
        (StorageType::Ggml(dtype @ (GgmlDType::Q4_0 | GgmlDType::Q4_1)), WeightFormat::Q4 | WeightFormat::Q4Sym) => {
            // GGML block_q4_0: f16 d, 16 bytes (element j low nibble, j + 16 high nibble),
            // value (q - 8) d (Q4Sym: no offset stored). block_q4_1: f16 d, f16 m, same
            // nibbles, value q d + m.
            let (size, qs_at) = if dtype == GgmlDType::Q4_0 { (18, 2) } else { (20, 4) };
            let raw = &t.bytes[r0 * blocks_per_row * size..r1 * blocks_per_row * size];
            for b in raw.chunks_exact(size) {
                let d = f16_at(b, 0);
                out.scales.push(d);
                if dtype == GgmlDType::Q4_1 {
                    out.mins.push(f16_at(b, 2));
                }
                let q = |e: usize| if e < 16 { b[qs_at + e] & 15 } else { b[qs_at + e - 16] >> 4 };
                pack_nibbles(&mut out.data, q);
            }
        }
        (StorageType::F16, WeightFormat::F16) => {
            out.data = t.bytes[r0 * cols * 2..r1 * cols * 2].to_vec();
        }
        (_, WeightFormat::F16) => return Err(Error::Backend(format!("{}: only F16 files are stored as f16", t.name))),
        (_, WeightFormat::Q4Sym) => {
            return Err(Error::Backend(format!("{}: only Q4_0 files are stored as Q4Sym", t.name)));
        }
        (_, WeightFormat::F32) => {
            let v = float_rows(t, cols, r0, r1)?;
            out.data = bytemuck::cast_slice(&v).to_vec();
        }
        (_, WeightFormat::Q8) => {
            let v = float_rows(t, cols, r0, r1)?;
            for block in v.chunks_exact(BLOCK) {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = as_f16(amax / 127.0);
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.scales.push(d);
                out.data.extend(block.iter().map(|x| ((x * inv).round().clamp(-127.0, 127.0) as i8) as u8));
            }
        }
        (_, WeightFormat::Q4) => {
            let v = float_rows(t, cols, r0, r1)?;
            for block in v.chunks_exact(BLOCK) {
                let lo = as_f16(block.iter().fold(f32::INFINITY, |m, x| m.min(*x)));
                let hi = block.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
                let d = as_f16((hi - lo) / 15.0);
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.scales.push(d);
                out.mins.push(lo);
                pack_nibbles(&mut out.data, |e| ((block[e] - lo) * inv).round().clamp(0.0, 15.0) as u8);
            }
        }
    }
    debug_assert_eq!(out.data.len(), n_blocks * format.data_bytes_per_row(BLOCK));
    Ok(out)
}

/// 32 nibbles of one block, element 8k + i in nibble i of little-endian word k.
fn pack_nibbles(data: &mut Vec<u8>, q: impl Fn(usize) -> u8) {
    for k in 0..4 {
        let mut word = 0u32;
        for i in 0..8 {
            word |= (q(8 * k + i) as u32 & 15) << (4 * i);
        }
        data.extend_from_slice(&word.to_le_bytes());
    }
}
