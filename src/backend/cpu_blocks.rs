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
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * size {
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
        // Rows in parallel; each task writes its rows for every token into a (rows, seq) buffer.
        let mut by_row = vec![0f32; self.rows * seq];
        let rows_per_task = (self.rows / (4 * rayon::current_num_threads().max(1))).clamp(1, 64);
        by_row.par_chunks_mut(rows_per_task * seq).enumerate().for_each(|(task, out)| {
            for (i, row_out) in out.chunks_mut(seq).enumerate() {
                let r = task * rows_per_task + i;
                let scales = &self.scales[r * blocks..(r + 1) * blocks];
                let quants = &self.quants[r * self.cols..(r + 1) * self.cols];
                let token =
                    |t: usize| (&x[t * self.cols..(t + 1) * self.cols], &block_sums[t * blocks..(t + 1) * blocks]);
                let mut t = 0;
                // Four tokens at a time share each block's dequantized weights (prefill).
                while t + 4 <= seq {
                    let dots = row_dot4(scales, quants, [token(t), token(t + 1), token(t + 2), token(t + 3)]);
                    row_out[t..t + 4].copy_from_slice(&dots);
                    t += 4;
                }
                for (t, o) in row_out.iter_mut().enumerate().skip(t) {
                    let (xt, st) = token(t);
                    *o = row_dot(scales, quants, xt, st);
                }
            }
        });
        let mut out = vec![0f32; seq * self.rows];
        for r in 0..self.rows {
            for t in 0..seq {
                out[t * self.rows + r] = by_row[r * seq + t];
            }
        }
        out
    }
}

/// One output: sum over blocks of `d * sum(q * x) + m * sum(x)`.
fn row_dot(scales: &[[f32; 2]], quants: &[i8], x: &[f32], sums: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { row_dot_avx2(scales, quants, x, sums) };
        }
    }
    row_dot_portable(scales, quants, x, sums)
}

/// Four tokens' dots with one row: `row_dot` for each, sharing the weight conversion on AVX2.
fn row_dot4(scales: &[[f32; 2]], quants: &[i8], tokens: [(&[f32], &[f32]); 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { row_dot4_avx2(scales, quants, tokens) };
        }
    }
    tokens.map(|(x, s)| row_dot_portable(scales, quants, x, s))
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot4_avx2(scales: &[[f32; 2]], quants: &[i8], tokens: [(&[f32], &[f32]); 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offset = [0f32; 4];
    for (b, [d, m]) in scales.iter().enumerate() {
        // SAFETY: as in row_dot_avx2; every token slice holds scales.len() whole blocks.
        unsafe {
            for (k, wf) in block_weights_avx2(quants, b, *d).into_iter().enumerate() {
                for (a, (x, _)) in acc.iter_mut().zip(&tokens) {
                    *a = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x.as_ptr().add(b * BLOCK + k * 8)), *a);
                }
            }
        }
        for (o, (_, sums)) in offset.iter_mut().zip(&tokens) {
            *o += m * sums[b];
        }
    }
    let mut out = [0f32; 4];
    for (i, a) in acc.into_iter().enumerate() {
        let mut lanes = [0f32; 8];
        // SAFETY: lanes holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        out[i] = lanes.iter().sum::<f32>() + offset[i];
    }
    out
}

/// Block `b`'s 32 weights times its scale `d`, as four vectors of 8 f32.
///
/// # Safety
/// AVX2 must be available and `quants` must hold block `b` (32 bytes at `b * 32`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_weights_avx2(quants: &[i8], b: usize, d: f32) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    debug_assert!(quants.len() >= (b + 1) * BLOCK);
    // SAFETY: the caller guarantees 32 bytes at b * 32.
    unsafe {
        let qp = quants.as_ptr().add(b * BLOCK) as *const __m128i;
        let (lo, hi) = (_mm_loadu_si128(qp), _mm_loadu_si128(qp.add(1)));
        let dv = _mm256_set1_ps(d);
        [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
            .map(|w| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w)), dv))
    }
}

/// AVX2/FMA: 32 weights per block widened i8 -> i32 -> f32, scaled by d, multiplied into an
/// 8-lane accumulator; the offset term stays scalar.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_avx2(scales: &[[f32; 2]], quants: &[i8], x: &[f32], sums: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(quants.len() == scales.len() * BLOCK && x.len() == quants.len() && sums.len() == scales.len());
    let mut acc = _mm256_setzero_ps();
    let mut offset = 0f32;
    for (b, [d, m]) in scales.iter().enumerate() {
        // SAFETY: block b covers quants[b*32..b*32+32] and x[b*32..b*32+32], both in bounds
        // because every slice holds scales.len() whole blocks (checked by the caller's shapes).
        unsafe {
            let xp = x.as_ptr().add(b * BLOCK);
            for (k, wf) in block_weights_avx2(quants, b, *d).into_iter().enumerate() {
                acc = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xp.add(k * 8)), acc);
            }
        }
        offset += m * sums[b];
    }
    let mut lanes = [0f32; 8];
    // SAFETY: lanes holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes.iter().sum::<f32>() + offset
}

#[inline(always)]
fn row_dot_portable(scales: &[[f32; 2]], quants: &[i8], x: &[f32], sums: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (((q, xb), [d, m]), s) in quants.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(scales).zip(sums) {
        // Eight partial sums in a fixed order: vectorizable without reassociating floats.
        let mut lanes = [0f32; 8];
        for j in 0..BLOCK {
            lanes[j % 8] += q[j] as f32 * xb[j];
        }
        let dot = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        acc += d * dot + m * s;
    }
    acc
}
