//! Matrix products over GGML block-quantized weights (Q8_0, Q4_0, Q4_1) on the CPU, the way
//! llama.cpp gets its speed: each op quantizes its activations once, per token and block of 32, to
//! 8 bits (llama.cpp's Q8_0 rounding: scale amax/127 kept as f16, round to nearest even), and a
//! block's contribution is an integer dot product times the two scales. Weights stay at their
//! file's size: Q4 as nibbles, scales as f16.
//!
//! Per block, with `qx` the token's 8-bit values, `dx` its scale and `sx` its f16 sum `dx * sum(qx)`:
//! - Q8_0: `dw * dx * sum(qw * qx)`
//! - Q4_0: `dw * dx * (sum(nib * qx) - 8 * sum(qx))` (value `dw * (nib - 8)`)
//! - Q4_1: `dw * dx * sum(nib * qx) + mw * sx` (value `dw * nib + mw`; llama.cpp's Q8_1)
//!
//! Kernels (`Kernel`): AVX-512 VNNI (`vpdpbusd` on 256-bit vectors), AVX2 (`vpmaddubsw`), and a
//! portable one (other CPUs, wasm), picked at run time; `set_kernel` forces one (tests, bench).
//! Each unpacks a block of weights once and uses it for up to four tokens (prefill).

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

const BLOCK: usize = 32;

/// The block types this module runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl Kind {
    /// Bytes of `qs` per block.
    fn quant_bytes(self) -> usize {
        match self {
            Kind::Q8_0 => 32,
            Kind::Q4_0 | Kind::Q4_1 => 16,
        }
    }
}

/// Which instructions the integer dot products use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Avx512Vnni,
    Avx2,
    Portable,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            // In the browser build the portable kernel is the simd128 one.
            Kernel::Portable if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) => "simd128",
            Kernel::Portable => "portable",
        }
    }

    /// The kernels this CPU can run, fastest first.
    #[allow(clippy::vec_init_then_push)] // the x86 pushes are compiled out elsewhere
    pub fn available() -> Vec<Kernel> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if avx2 && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                out.push(Kernel::Avx512Vnni);
            }
            if avx2 {
                out.push(Kernel::Avx2);
            }
        }
        out.push(Kernel::Portable);
        out
    }
}

/// 0: not chosen yet; else 1 + the index in `[Avx512Vnni, Avx2, Portable]`.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// The kernel quantized products use: the fastest available, unless `set_kernel` chose one.
pub fn kernel() -> Kernel {
    match FORCED.load(Ordering::Relaxed) {
        1 => Kernel::Avx512Vnni,
        2 => Kernel::Avx2,
        3 => Kernel::Portable,
        _ => {
            static FASTEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
            *FASTEST.get_or_init(|| Kernel::available()[0])
        }
    }
}

/// Force a kernel for every later product (it must be in `Kernel::available`), or go back to the
/// fastest with `None`.
pub fn set_kernel(k: Option<Kernel>) -> Result<(), String> {
    let code = match k {
        None => 0,
        Some(k) if !Kernel::available().contains(&k) => {
            return Err(format!("the {} kernel needs instructions this CPU does not have", k.name()));
        }
        Some(Kernel::Avx512Vnni) => 1,
        Some(Kernel::Avx2) => 2,
        Some(Kernel::Portable) => 3,
    };
    FORCED.store(code, Ordering::Relaxed);
    Ok(())
}

pub struct BlockMatrix {
    pub rows: usize,
    pub cols: usize,
    kind: Kind,
    /// Per block, row-major: the scale as f16 bits.
    d: Vec<u16>,
    /// Per block (Q4_1 only): the offset as f16 bits.
    m: Vec<u16>,
    /// Per block: Q8_0 32 signed bytes; Q4 16 bytes, element j in the low nibble of byte j and
    /// element j + 16 in its high nibble (GGML's order).
    qs: Vec<u8>,
}

impl BlockMatrix {
    /// From GGML blocks; None for other types or inconsistent sizes.
    pub fn from_ggml(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let (kind, size) = match dtype {
            GgmlDType::Q8_0 => (Kind::Q8_0, 34),
            GgmlDType::Q4_0 => (Kind::Q4_0, 18),
            GgmlDType::Q4_1 => (Kind::Q4_1, 20),
            _ => return None,
        };
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * size {
            return None;
        }
        let n = bytes.len() / size;
        let mut d = Vec::with_capacity(n);
        let mut m = Vec::with_capacity(if kind == Kind::Q4_1 { n } else { 0 });
        let mut qs = Vec::with_capacity(n * kind.quant_bytes());
        for b in bytes.chunks_exact(size) {
            d.push(u16::from_le_bytes([b[0], b[1]]));
            let at = if kind == Kind::Q4_1 {
                m.push(u16::from_le_bytes([b[2], b[3]]));
                4
            } else {
                2
            };
            qs.extend_from_slice(&b[at..]);
        }
        Some(Self { rows, cols, kind, d, m, qs })
    }

    /// Bytes held (the file's block size, rearranged).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len())
    }

    /// Row `r` as f32 (an embedding lookup from the same blocks the LM head multiplies with).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let blocks = self.cols / BLOCK;
        let mut out = Vec::with_capacity(self.cols);
        for b in r * blocks..(r + 1) * blocks {
            let d = f16(self.d[b]);
            let q = &self.qs[b * self.kind.quant_bytes()..(b + 1) * self.kind.quant_bytes()];
            match self.kind {
                Kind::Q8_0 => out.extend(q.iter().map(|&v| d * (v as i8) as f32)),
                Kind::Q4_0 | Kind::Q4_1 => {
                    let (scale, offset) = if self.kind == Kind::Q4_0 { (d, -8.0 * d) } else { (d, f16(self.m[b])) };
                    let nib = |e: usize| if e < 16 { q[e] & 15 } else { q[e - 16] >> 4 };
                    // As GGML dequantizes: (nib - 8) * d for Q4_0, nib * d + m for Q4_1.
                    out.extend((0..BLOCK).map(|e| match self.kind {
                        Kind::Q4_0 => (nib(e) as i32 - 8) as f32 * d,
                        _ => nib(e) as f32 * scale + offset,
                    }));
                }
            }
        }
        out
    }

    /// `x` is `(seq, cols)` row-major; returns `(seq, rows)`.
    pub fn forward(&self, x: &[f32], seq: usize) -> Vec<f32> {
        let blocks = self.cols / BLOCK;
        let kernel = kernel();
        let qx = QuantizedActs::new(x, seq, self.cols, self.kind, kernel);
        let toks: Vec<Token> = (0..seq).map(|t| qx.token(t)).collect();
        // Rows in parallel; each task writes its rows for every token into a (rows, seq) buffer.
        let mut by_row = vec![0f32; self.rows * seq];
        let rows_per_task = (self.rows / (4 * rayon::current_num_threads().max(1))).clamp(1, 64);
        by_row.par_chunks_mut(rows_per_task * seq).enumerate().for_each(|(task, out)| {
            for (i, row_out) in out.chunks_mut(seq).enumerate() {
                let r = task * rows_per_task + i;
                let w = RowBlocks {
                    kind: self.kind,
                    d: &self.d[r * blocks..(r + 1) * blocks],
                    m: if self.kind == Kind::Q4_1 { &self.m[r * blocks..(r + 1) * blocks] } else { &[] },
                    qs: &self.qs[r * blocks * self.kind.quant_bytes()..(r + 1) * blocks * self.kind.quant_bytes()],
                };
                // Four tokens at a time share each block's unpacked weights (prefill); the rest
                // one at a time.
                let mut t = 0;
                while t + 4 <= seq {
                    let tokens: [Token; 4] = [toks[t], toks[t + 1], toks[t + 2], toks[t + 3]];
                    row_out[t..t + 4].copy_from_slice(&row_dots(kernel, &w, &tokens));
                    t += 4;
                }
                for t in t..seq {
                    row_out[t] = row_dots(kernel, &w, &[toks[t]])[0];
                }
            }
        });
        if seq == 1 {
            return by_row;
        }
        let mut out = vec![0f32; seq * self.rows];
        for r in 0..self.rows {
            for t in 0..seq {
                out[t * self.rows + r] = by_row[r * seq + t];
            }
        }
        out
    }
}

fn f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Activations quantized per token and block of 32, as llama.cpp's `quantize_row_q8_0/q8_1`
/// do on x86: `id = 127 / amax`, `q = round_ties_even(x * id)`, scale `amax / 127` and sum
/// `scale * sum(q)` rounded to f16.
struct QuantizedActs {
    blocks: usize,
    q: Vec<i8>,
    /// Per token and block: scale, f16 sum (`sx`), and the integer sum of q.
    d: Vec<f32>,
    s: Vec<f32>,
    isum: Vec<i32>,
    /// For Q4 weights: per token, blocks in pairs (an odd last one with a zero block) laid out
    /// as the nibbles are, `[A 0..16, B 0..16, A 16..32, B 16..32]`, so one 32-byte load of a
    /// pair's packed weights serves two blocks (`x86`).
    paired: Vec<i8>,
    /// Per token and pair: what the integer sums start from, `offset * sum(q)` of block A in lane
    /// 0 and of block B in lane 4 (Q4_0: -8; VNNI's Q8_0, per block in lane 0: -128).
    start: Vec<[i32; 8]>,
    /// For Q4 weights, per token and pair: the scales spread as the sums are, `[dA x4, dB x4]`.
    scales: Vec<[f32; 8]>,
}

impl QuantizedActs {
    fn new(x: &[f32], seq: usize, cols: usize, kind: Kind, kernel: Kernel) -> Self {
        let blocks = cols / BLOCK;
        let n = seq * blocks;
        let (mut q, mut d, mut s, mut isum) = (vec![0i8; seq * cols], vec![0f32; n], vec![0f32; n], vec![0i32; n]);
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (o, v) in q[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xb) {
                let v = round_even(v * id);
                *o = v as i8;
                sum += v;
            }
            d[b] = half::f16::from_f32(scale).to_f32();
            s[b] = half::f16::from_f32(scale * sum as f32).to_f32();
            isum[b] = sum;
        }
        let mut acts = Self { blocks, q, d, s, isum, paired: Vec::new(), start: Vec::new(), scales: Vec::new() };
        if kernel != Kernel::Portable {
            acts.arrange(seq, kind, kernel);
        }
        acts
    }

    /// The SIMD kernels' layouts (`paired`, `start`).
    fn arrange(&mut self, seq: usize, kind: Kind, kernel: Kernel) {
        let blocks = self.blocks;
        match kind {
            Kind::Q8_0 => {
                let offset = if kernel == Kernel::Avx512Vnni { -128 } else { 0 };
                self.start = self.isum.iter().map(|&i| [offset * i, 0, 0, 0, 0, 0, 0, 0]).collect();
            }
            Kind::Q4_0 | Kind::Q4_1 => {
                let offset = if kind == Kind::Q4_0 { -8 } else { 0 };
                let pairs = blocks.div_ceil(2);
                self.paired = vec![0i8; seq * pairs * 64];
                self.start = vec![[0; 8]; seq * pairs];
                self.scales = vec![[0.0; 8]; seq * pairs];
                for t in 0..seq {
                    for p in 0..pairs {
                        let out = &mut self.paired[(t * pairs + p) * 64..(t * pairs + p + 1) * 64];
                        let mut start = [0i32; 8];
                        for (half, b) in [2 * p, 2 * p + 1].into_iter().enumerate() {
                            if b >= blocks {
                                continue;
                            }
                            let src = &self.q[(t * blocks + b) * BLOCK..(t * blocks + b + 1) * BLOCK];
                            out[half * 16..half * 16 + 16].copy_from_slice(&src[..16]);
                            out[32 + half * 16..32 + half * 16 + 16].copy_from_slice(&src[16..]);
                            start[half * 4] = offset * self.isum[t * blocks + b];
                            self.scales[t * pairs + p][half * 4..half * 4 + 4].fill(self.d[t * blocks + b]);
                        }
                        self.start[t * pairs + p] = start;
                    }
                }
            }
        }
    }

    fn token(&self, t: usize) -> Token<'_> {
        let (b0, b1) = (t * self.blocks, (t + 1) * self.blocks);
        let pairs = self.blocks.div_ceil(2);
        let (paired, start, scales) = if self.paired.is_empty() {
            (&[][..], if self.start.is_empty() { &[][..] } else { &self.start[b0..b1] }, &[][..])
        } else {
            let (p0, p1) = (t * pairs, (t + 1) * pairs);
            (&self.paired[p0 * 64..p1 * 64], &self.start[p0..p1], &self.scales[p0..p1])
        };
        Token {
            q: &self.q[b0 * BLOCK..b1 * BLOCK],
            d: &self.d[b0..b1],
            s: &self.s[b0..b1],
            isum: &self.isum[b0..b1],
            paired,
            start,
            scales,
        }
    }
}

/// `v` rounded to the nearest integer, ties to even (as `_mm256_round_ps` does), without a libm
/// call: adding and subtracting 1.5 * 2^23 rounds an f32 below 2^22 in magnitude to an integer
/// in the current (nearest-even) mode. Quantized values are at most 127.
#[inline(always)]
fn round_even(v: f32) -> i32 {
    const MAGIC: f32 = 12582912.0;
    ((v + MAGIC) - MAGIC) as i32
}

/// One token's quantized activations (all its blocks).
#[derive(Clone, Copy)]
struct Token<'a> {
    q: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    isum: &'a [i32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    paired: &'a [i8],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    start: &'a [[i32; 8]],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    scales: &'a [[f32; 8]],
}

/// One row's blocks.
struct RowBlocks<'a> {
    kind: Kind,
    d: &'a [u16],
    m: &'a [u16],
    qs: &'a [u8],
}

impl RowBlocks<'_> {
    /// What a block adds besides `dw * dx * sum(w * qx)` with `w` as the kernels take it (Q4 as
    /// unsigned nibbles): Q4_0's `-8 * sum(qx)`, Q4_1's offset term.
    #[inline(always)]
    fn correction(&self, b: usize, dw: f32, t: &Token) -> f32 {
        match self.kind {
            Kind::Q8_0 => 0.0,
            Kind::Q4_0 => dw * t.d[b] * (-8 * t.isum[b]) as f32,
            Kind::Q4_1 => f16(self.m[b]) * t.s[b],
        }
    }
}

/// The row's dot products with `N` tokens (1 or 4).
fn row_dots<const N: usize>(kernel: Kernel, w: &RowBlocks, tokens: &[Token; N]) -> [f32; N] {
    #[cfg(target_arch = "x86_64")]
    {
        match kernel {
            // SAFETY: `Kernel::available` checked the instructions when the kernel was chosen.
            Kernel::Avx512Vnni => return unsafe { x86::row_dots::<true, N>(w, tokens) },
            Kernel::Avx2 => return unsafe { x86::row_dots::<false, N>(w, tokens) },
            Kernel::Portable => {}
        }
    }
    let _ = kernel;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        tokens.map(|t| wasm::row_dot(w, &t))
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    tokens.map(|t| row_dot_portable(w, &t))
}

#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
fn row_dot_portable(w: &RowBlocks, t: &Token) -> f32 {
    let mut acc = 0f32;
    let qb = w.kind.quant_bytes();
    for (b, (q, qx)) in w.qs.chunks_exact(qb).zip(t.q.chunks_exact(BLOCK)).enumerate() {
        // Fixed-size views: no bounds checks inside, and loops the compiler can vectorize.
        let qx: &[i8; BLOCK] = qx.try_into().expect("whole blocks");
        let sumi: i32 = match w.kind {
            Kind::Q8_0 => {
                let q: &[u8; 32] = q.try_into().expect("whole blocks");
                let mut sum = 0i32;
                for j in 0..32 {
                    sum += (q[j] as i8) as i32 * qx[j] as i32;
                }
                sum
            }
            Kind::Q4_0 | Kind::Q4_1 => {
                let q: &[u8; 16] = q.try_into().expect("whole blocks");
                let mut sum = 0i32;
                for j in 0..16 {
                    sum += (q[j] & 15) as i32 * qx[j] as i32 + (q[j] >> 4) as i32 * qx[j + 16] as i32;
                }
                sum
            }
        };
        let dw = f16(w.d[b]);
        acc += dw * t.d[b] * sumi as f32 + w.correction(b, dw, t);
    }
    acc
}

/// The browser's kernel: wasm `simd128` (every current browser has it; the build enables it in
/// .cargo/config.toml). Bytes widen to i16 and `i32x4.dot_i16x8_s` adds pairs of products.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::{BLOCK, Kind, RowBlocks, Token, f16};
    use core::arch::wasm32::*;

    /// Sum of the 16 products of unsigned bytes `w` and signed bytes `x`, in four i32 lanes.
    #[inline(always)]
    fn dot16_u8_i8(w: v128, x: v128) -> v128 {
        let lo = i32x4_dot_i16x8(u16x8_extend_low_u8x16(w), i16x8_extend_low_i8x16(x));
        let hi = i32x4_dot_i16x8(u16x8_extend_high_u8x16(w), i16x8_extend_high_i8x16(x));
        i32x4_add(lo, hi)
    }

    /// The same with signed `w` (Q8_0).
    #[inline(always)]
    fn dot16_i8_i8(w: v128, x: v128) -> v128 {
        let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(w), i16x8_extend_low_i8x16(x));
        let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(w), i16x8_extend_high_i8x16(x));
        i32x4_add(lo, hi)
    }

    pub fn row_dot(w: &RowBlocks, t: &Token) -> f32 {
        let qb = w.kind.quant_bytes();
        let mut acc = 0f32;
        for (b, (q, qx)) in w.qs.chunks_exact(qb).zip(t.q.chunks_exact(BLOCK)).enumerate() {
            // SAFETY: `q` holds `qb` bytes and `qx` 32 (chunks_exact); unaligned loads.
            let sums = unsafe {
                let x0 = v128_load(qx.as_ptr() as *const v128);
                let x1 = v128_load(qx.as_ptr().add(16) as *const v128);
                match w.kind {
                    Kind::Q8_0 => i32x4_add(
                        dot16_i8_i8(v128_load(q.as_ptr() as *const v128), x0),
                        dot16_i8_i8(v128_load(q.as_ptr().add(16) as *const v128), x1),
                    ),
                    Kind::Q4_0 | Kind::Q4_1 => {
                        let packed = v128_load(q.as_ptr() as *const v128);
                        let lo = v128_and(packed, u8x16_splat(15));
                        let hi = u8x16_shr(packed, 4);
                        i32x4_add(dot16_u8_i8(lo, x0), dot16_u8_i8(hi, x1))
                    }
                }
            };
            let sumi = i32x4_extract_lane::<0>(sums)
                + i32x4_extract_lane::<1>(sums)
                + i32x4_extract_lane::<2>(sums)
                + i32x4_extract_lane::<3>(sums);
            let dw = f16(w.d[b]);
            acc += dw * t.d[b] * sumi as f32 + w.correction(b, dw, t);
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Q4 runs blocks in pairs: one 32-byte load holds a pair's nibbles, `& 15` gives elements
    //! 0..16 of both blocks and `>> 4 & 15` elements 16..32, against activations laid out the
    //! same way (`QuantizedActs::paired`); the integer sums of block A land in lanes 0..4 and of
    //! block B in lanes 4..8, start from the offset term (`start`), and take the pair's two
    //! scales in one multiply. Q8_0 runs block by block.
    use super::{BLOCK, Kind, RowBlocks, Token};
    use std::arch::x86_64::*;

    /// How far ahead of the pair being read to prefetch its row's nibbles, in bytes.
    const PREFETCH: usize = 4096;

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn row_dots_vnni<const N: usize>(w: &RowBlocks, tokens: &[Token; N]) -> [f32; N] {
        unsafe { body::<true, N>(w, tokens) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_dots_avx2<const N: usize>(w: &RowBlocks, tokens: &[Token; N]) -> [f32; N] {
        unsafe { body::<false, N>(w, tokens) }
    }

    /// # Safety
    /// The CPU must have the instructions of the chosen kernel (`Kernel::available`), and the
    /// tokens' activations must be arranged for it (`QuantizedActs::arrange`).
    pub unsafe fn row_dots<const VNNI: bool, const N: usize>(w: &RowBlocks, tokens: &[Token; N]) -> [f32; N] {
        // SAFETY: passed on to the caller.
        unsafe { if VNNI { row_dots_vnni(w, tokens) } else { row_dots_avx2(w, tokens) } }
    }

    /// `start + sum(w * x)` in eight i32 lanes (each lane four adjacent products): unsigned `w`
    /// by signed `x`.
    #[inline(always)]
    unsafe fn dot_u8<const VNNI: bool>(start: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: the callers' target features cover these instructions.
        unsafe {
            if VNNI {
                _mm256_dpbusd_epi32(start, w, x)
            } else {
                _mm256_add_epi32(start, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
            }
        }
    }

    #[inline(always)]
    unsafe fn body<const VNNI: bool, const N: usize>(w: &RowBlocks, tokens: &[Token; N]) -> [f32; N] {
        // SAFETY: every slice holds the row's blocks (`d.len()` of them) and the tokens hold the
        // matching arranged activations; the target features come from the callers above.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let blocks = w.d.len();
            debug_assert!(tokens.iter().all(|t| t.d.len() == blocks && t.q.len() == blocks * BLOCK));
            if w.kind == Kind::Q8_0 {
                let lane = |k: i32| _mm256_set1_epi32(k);
                for b in 0..blocks {
                    _mm_prefetch::<_MM_HINT_T0>(w.qs.as_ptr().wrapping_add(b * 32 + PREFETCH) as *const i8);
                    if b % 32 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(w.d.as_ptr().wrapping_add(b + PREFETCH / 16) as *const i8);
                    }
                    // Scales four blocks at a time.
                    let (group, k) = (b / 4 * 4, (b % 4) as i32);
                    let dw4 = if group + 4 <= blocks {
                        _mm_cvtph_ps(_mm_loadl_epi64(w.d.as_ptr().add(group) as *const __m128i))
                    } else {
                        _mm_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(*w.d.get_unchecked(b) as i32))))
                    };
                    let k = if group + 4 <= blocks { k } else { 0 };
                    let v = _mm256_loadu_si256(w.qs.as_ptr().add(b * 32) as *const __m256i);
                    for (i, t) in tokens.iter().enumerate() {
                        let x = _mm256_loadu_si256(t.q.as_ptr().add(b * BLOCK) as *const __m256i);
                        let start = _mm256_loadu_si256(t.start.as_ptr().add(b) as *const __m256i);
                        let sums = if VNNI {
                            // Unsigned w + 128 by x, less 128 * sum(x) from `start`.
                            _mm256_dpbusd_epi32(start, _mm256_xor_si256(v, _mm256_set1_epi8(-128)), x)
                        } else {
                            // |w| by x with w's sign.
                            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(x, v));
                            _mm256_madd_epi16(p, _mm256_set1_epi16(1))
                        };
                        let dx = _mm_set1_ps(*t.d.get_unchecked(b));
                        let scale = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_mul_ps(dw4, dx)), lane(k));
                        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[i]);
                    }
                }
                return std::array::from_fn(|i| hsum(acc[i]));
            }
            let mut offsets = [_mm_setzero_ps(); N];
            let halves = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
            let pairs = blocks.div_ceil(2);
            for p in 0..pairs {
                let b = 2 * p;
                let whole = b + 1 < blocks;
                // The pair's packed nibbles (an odd last block alone, its partner zero), and
                // its two scales (and Q4_1 offsets) from f16.
                // The weights stream through once: ask for them well ahead (the next row's
                // follow this one's in memory; a prefetch past the end is harmless).
                _mm_prefetch::<_MM_HINT_T0>(w.qs.as_ptr().wrapping_add(b * 16 + PREFETCH) as *const i8);
                if p % 16 == 0 {
                    // The scales: 2 bytes a block, one line per 32 blocks.
                    _mm_prefetch::<_MM_HINT_T0>(w.d.as_ptr().wrapping_add(b + PREFETCH / 16) as *const i8);
                }
                let packed = if whole {
                    _mm256_loadu_si256(w.qs.as_ptr().add(b * 16) as *const __m256i)
                } else {
                    _mm256_castsi128_si256(_mm_loadu_si128(w.qs.as_ptr().add(b * 16) as *const __m128i))
                };
                let lo = _mm256_and_si256(packed, _mm256_set1_epi8(15));
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), _mm256_set1_epi8(15));
                let pick = |v: &[u16]| -> i32 {
                    if whole { (v.as_ptr().add(b) as *const i32).read_unaligned() } else { *v.get_unchecked(b) as i32 }
                };
                let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(pick(w.d)));
                let dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dw), halves);
                let mw =
                    if w.kind == Kind::Q4_1 { _mm_cvtph_ps(_mm_cvtsi32_si128(pick(w.m))) } else { _mm_setzero_ps() };
                for (i, t) in tokens.iter().enumerate() {
                    let x = t.paired.as_ptr().add(p * 64);
                    let start = _mm256_loadu_si256(t.start.as_ptr().add(p) as *const __m256i);
                    let sums = dot_u8::<VNNI>(start, lo, _mm256_loadu_si256(x as *const __m256i));
                    let sums = dot_u8::<VNNI>(sums, hi, _mm256_loadu_si256(x.add(32) as *const __m256i));
                    // (dxA, dxB) and, for Q4_1, (sxA, sxB); a lone last block reads only its own.
                    let two = |v: &[f32]| {
                        if whole {
                            _mm_castpd_ps(_mm_load_sd(v.as_ptr().add(b) as *const f64))
                        } else {
                            _mm_set_ss(*v.get_unchecked(b))
                        }
                    };
                    let scales = _mm256_mul_ps(dw, _mm256_loadu_ps(t.scales.as_ptr().add(p) as *const f32));
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scales, acc[i]);
                    if w.kind == Kind::Q4_1 {
                        offsets[i] = _mm_fmadd_ps(mw, two(t.s), offsets[i]);
                    }
                }
            }
            std::array::from_fn(|i| {
                let o = offsets[i];
                hsum(acc[i]) + _mm_cvtss_f32(o) + _mm_cvtss_f32(_mm_shuffle_ps::<1>(o, o))
            })
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX is implied by the callers' features.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
            _mm_cvtss_f32(s)
        }
    }
}
