//! Matrix products over GGML block-quantized weights (Q8_0, Q4_0, Q4_1) on the CPU with f32
//! activations: each block is `value = d * q + m`, so a block's contribution to a dot product is
//! `d * sum(q * x) + m * sum(x)`. This tracks llama.cpp's greedy outputs far more closely than
//! candle's path (measured on SmolLM2: 33 and 40 agreeing tokens where candle's gave 4 and 4),
//! which also rounds the Q8_1 block sum through f16 twice and has no SIMD path for Q4_1.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

const BLOCK: usize = 32;

pub struct BlockMatrix {
    pub rows: usize,
    pub cols: usize,
    /// Per block: scale d and offset m.
    scales: Vec<[f32; 2]>,
    /// One signed byte per weight, element order.
    quants: Vec<i8>,
}

impl BlockMatrix {
    /// From GGML blocks; None for other types or inconsistent sizes.
    pub fn from_ggml(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let size = match dtype {
            GgmlDType::Q8_0 => 34,
            GgmlDType::Q4_0 => 18,
            GgmlDType::Q4_1 => 20,
            _ => return None,
        };
        if cols % BLOCK != 0 || bytes.len() != rows * cols / BLOCK * size {
            return None;
        }
        let mut scales = Vec::with_capacity(bytes.len() / size);
        let mut quants = Vec::with_capacity(rows * cols);
        for b in bytes.chunks_exact(size) {
            let h = |i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
            let d = h(0);
            match dtype {
                GgmlDType::Q8_0 => {
                    scales.push([d, 0.0]);
                    quants.extend(b[2..].iter().map(|&q| q as i8));
                }
                GgmlDType::Q4_0 => {
                    scales.push([d, -8.0 * d]);
                    quants.extend((0..BLOCK).map(|e| (if e < 16 { b[2 + e] & 15 } else { b[2 + e - 16] >> 4 }) as i8));
                }
                _ => {
                    scales.push([d, h(2)]);
                    quants.extend((0..BLOCK).map(|e| (if e < 16 { b[4 + e] & 15 } else { b[4 + e - 16] >> 4 }) as i8));
                }
            }
        }
        Some(Self { rows, cols, scales, quants })
    }

    /// `x` is `(seq, cols)` row-major; returns `(seq, rows)`.
    pub fn forward(&self, x: &[f32], seq: usize) -> Vec<f32> {
        let blocks = self.cols / BLOCK;
        // Per token and block: sum(x), used by the offset term.
        let block_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|c| c.iter().sum()).collect();
        let mut out = vec![0f32; seq * self.rows];
        let per_row: Vec<Vec<f32>> = (0..self.rows)
            .into_par_iter()
            .map(|r| {
                let scales = &self.scales[r * blocks..(r + 1) * blocks];
                let quants = &self.quants[r * self.cols..(r + 1) * self.cols];
                (0..seq)
                    .map(|t| {
                        let xr = &x[t * self.cols..(t + 1) * self.cols];
                        let sums = &block_sums[t * blocks..(t + 1) * blocks];
                        let mut acc = 0f32;
                        for b in 0..blocks {
                            let q = &quants[b * BLOCK..(b + 1) * BLOCK];
                            let xb = &xr[b * BLOCK..(b + 1) * BLOCK];
                            let dot: f32 = q.iter().zip(xb).map(|(&q, &v)| q as f32 * v).sum();
                            let [d, m] = scales[b];
                            acc += d * dot + m * sums[b];
                        }
                        acc
                    })
                    .collect()
            })
            .collect();
        for (r, values) in per_row.into_iter().enumerate() {
            for (t, v) in values.into_iter().enumerate() {
                out[t * self.rows + r] = v;
            }
        }
        out
    }
}
