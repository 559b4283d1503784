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
//! Weights are held with rows interleaved eight by eight (`BlockMatrix`), so the vector lanes are
//! rows: one load of weights serves eight rows (sixteen, two groups, in AVX-512's 512 bits), and
//! a tile of up to four tokens (eight with AVX-512 VNNI, `Kernel::tile_tokens`) shares it
//! (prefill and batched decode run as matrix-matrix products). Kernels (`Kernel`): AVX-512 VNNI
//! (`vpdpbusd` on 512-bit vectors), AVX2 (`vpmaddubsw`), and a portable one (other CPUs; in the
//! browser wasm `simd128`), picked at run time; `set_kernel` forces one (tests, bench).
//!
//! Every kernel gives the same bits: the integer sums are exact in any order, and the float part
//! is the same operations in the same order everywhere, block after block: `acc + sum * (dw * dx)`,
//! then for Q4_1 `+ mw * sx`, each a separate multiply and add (no fused multiply-add: wasm has
//! none, and fusing rounds once where the others round twice).

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;
use std::ops::Range;
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
            // In the browser builds the portable kernel is the simd128 one (with relaxed-SIMD dot
            // products in the build for browsers that have them).
            Kernel::Portable if cfg!(all(target_arch = "wasm32", target_feature = "relaxed-simd")) => "simd128+relaxed",
            Kernel::Portable if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) => "simd128",
            Kernel::Portable => "portable",
        }
    }

    /// Tokens per tile: as many as the kernel's accumulators keep in registers. AVX-512 VNNI
    /// has 32 vector registers: eight tokens' sums (two chains each) and accumulators fit (24),
    /// and a batch of eight decodes in one pass over the weights. AVX2 (16 registers) and wasm
    /// (compiled to 16 on x86) take four.
    pub fn tile_tokens(self) -> usize {
        match self {
            Kernel::Avx512Vnni => TILE,
            Kernel::Avx2 | Kernel::Portable => 4,
        }
    }

    /// Groups of eight rows one vector holds: AVX-512's 512 bits take two groups' 32-byte
    /// chunks, so one `vpdpbusd` serves sixteen rows; the others take one group.
    pub fn groups_per_tile(self) -> usize {
        match self {
            Kernel::Avx512Vnni => 2,
            Kernel::Avx2 | Kernel::Portable => 1,
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
            let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            if avx2 && avx512 && is_x86_feature_detected!("avx512vnni") {
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

/// Rows interleaved in a group: the SIMD kernels' vector lanes are a group's rows.
const GROUP: usize = 8;

/// A quantized matrix with its rows interleaved in groups of `GROUP` (the last group padded with
/// zero rows), so one vector load holds the same four elements of eight rows and a token's four
/// activations, broadcast, multiply all eight at once (llama.cpp's repacked "Q4_0x8" idea).
///
/// Per group and block of 32 columns: the eight rows' scales (f16 bits), then their quants in
/// chunks of 32 bytes, chunk `c` holding bytes `4c..4c+4` of each row's GGML block in row order.
/// For Q8_0 a chunk is elements `4c..4c+4` of the eight rows; for Q4 (GGML puts element `j` in
/// the low nibble of byte `j` and element `j + 16` in its high nibble) a chunk's low nibbles are
/// elements `4c..4c+4` and its high nibbles elements `16+4c..16+4c+4`.
pub struct BlockMatrix {
    pub rows: usize,
    pub cols: usize,
    kind: Kind,
    /// Blocks per row.
    blocks: usize,
    /// Per group, block and row: the scale as f16 bits.
    d: Vec<u16>,
    /// The same for Q4_1's offsets (empty otherwise).
    m: Vec<u16>,
    /// Per group and block: `quant_bytes / 4` chunks of 32 bytes.
    qs: Vec<u8>,
}

impl BlockMatrix {
    /// From GGML blocks; None for other types or inconsistent sizes. The re-laid-out copy is
    /// allocated with `try_zeroed`: a matrix that cannot be had is an error, not an abort.
    pub fn from_ggml(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> crate::error::Result<Option<Self>> {
        let (kind, size) = match dtype {
            GgmlDType::Q8_0 => (Kind::Q8_0, 34),
            GgmlDType::Q4_0 => (Kind::Q4_0, 18),
            GgmlDType::Q4_1 => (Kind::Q4_1, 20),
            _ => return Ok(None),
        };
        if !cols.is_multiple_of(BLOCK) || Some(bytes.len()) != rows.checked_mul(cols / BLOCK * size) {
            return Ok(None);
        }
        let blocks = cols / BLOCK;
        let groups = rows.div_ceil(GROUP);
        let qb = kind.quant_bytes();
        let slots = groups * blocks * GROUP;
        let what = || format!("the {rows}x{cols} {dtype:?} matrix's blocks");
        let mut d: Vec<u16> = crate::error::try_zeroed(slots, what)?;
        let mut m: Vec<u16> = crate::error::try_zeroed(if kind == Kind::Q4_1 { slots } else { 0 }, what)?;
        let mut qs: Vec<u8> = crate::error::try_zeroed(slots * qb, what)?;
        for (i, b) in bytes.chunks_exact(size).enumerate() {
            let (row, block) = (i / blocks, i % blocks);
            let (group, lane) = (row / GROUP, row % GROUP);
            let slot = (group * blocks + block) * GROUP;
            d[slot + lane] = u16::from_le_bytes([b[0], b[1]]);
            let at = if kind == Kind::Q4_1 {
                m[slot + lane] = u16::from_le_bytes([b[2], b[3]]);
                4
            } else {
                2
            };
            for (c, four) in b[at..].chunks_exact(4).enumerate() {
                let to = slot * qb + c * 32 + lane * 4;
                qs[to..to + 4].copy_from_slice(four);
            }
        }
        Ok(Some(Self { rows, cols, kind, blocks, d, m, qs }))
    }

    /// Bytes held (the file's block size, rearranged, plus the last group's padding rows).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len())
    }

    /// Row `r` as f32 (an embedding lookup from the same blocks the LM head multiplies with).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (group, lane) = (r / GROUP, r % GROUP);
        let qb = self.kind.quant_bytes();
        let mut out = Vec::with_capacity(self.cols);
        let mut q = [0u8; 32];
        for block in 0..self.blocks {
            let slot = (group * self.blocks + block) * GROUP;
            for c in 0..qb / 4 {
                let from = slot * qb + c * 32 + lane * 4;
                q[c * 4..c * 4 + 4].copy_from_slice(&self.qs[from..from + 4]);
            }
            let d = f16(self.d[slot + lane]);
            match self.kind {
                Kind::Q8_0 => out.extend(q.iter().map(|&v| d * (v as i8) as f32)),
                Kind::Q4_0 | Kind::Q4_1 => {
                    let nib = |e: usize| if e < 16 { q[e] & 15 } else { q[e - 16] >> 4 };
                    // As GGML dequantizes: (nib - 8) * d for Q4_0, nib * d + m for Q4_1.
                    if self.kind == Kind::Q4_0 {
                        out.extend((0..BLOCK).map(|e| (nib(e) as i32 - 8) as f32 * d));
                    } else {
                        let m = f16(self.m[slot + lane]);
                        out.extend((0..BLOCK).map(|e| nib(e) as f32 * d + m));
                    }
                }
            }
        }
        out
    }

    /// Group `g`'s blocks.
    fn group(&self, g: usize) -> Group<'_> {
        let (s0, s1) = (g * self.blocks * GROUP, (g + 1) * self.blocks * GROUP);
        let qb = self.kind.quant_bytes();
        Group {
            d: &self.d[s0..s1],
            m: if self.m.is_empty() { &[] } else { &self.m[s0..s1] },
            qs: &self.qs[s0 * qb..s1 * qb],
        }
    }

    /// `x` is `(seq, cols)` row-major; returns `(seq, rows)`.
    ///
    /// Tasks take panels of consecutive groups (sized to stay in a core's L2 cache); a panel runs
    /// the tokens in tiles of up to `Kernel::tile_tokens`, each tile over every group of the
    /// panel, so a tile's activations stay in L1 while the panel's weights are read from L2 once
    /// per tile. A token's arithmetic is the same in every tile size: its results do not depend
    /// on what it is batched with.
    pub fn forward(&self, x: &[f32], seq: usize) -> Vec<f32> {
        let kernel = kernel();
        let acts = QuantizedActs::new(x, seq, self.cols, self.kind, kernel);
        let groups = self.rows.div_ceil(GROUP);
        let group_bytes = self.blocks * GROUP * (self.kind.quant_bytes() + if self.m.is_empty() { 2 } else { 4 });
        let threads = rayon::current_num_threads().max(1);
        // Whole tiles' worth of groups per task, so no task ends on a tile's first group.
        let span = kernel.groups_per_tile();
        let per_task = (PANEL_BYTES / group_bytes).clamp(1, groups.div_ceil(4 * threads).max(1)).next_multiple_of(span);
        let mut out = vec![0f32; seq * self.rows];
        let shared = Out(out.as_mut_ptr());
        let run = |task: usize| {
            let panel = task * per_task..((task + 1) * per_task).min(groups);
            let mut t = 0;
            while t < seq {
                let n = (seq - t).min(kernel.tile_tokens());
                // Each kernel is compiled for 1..=TILE tokens (`N`), so its per-token
                // accumulators stay in registers.
                let at = (panel.clone(), t, shared);
                match n {
                    1 => self.tile::<1>(kernel, &acts, at),
                    2 => self.tile::<2>(kernel, &acts, at),
                    3 => self.tile::<3>(kernel, &acts, at),
                    4 => self.tile::<4>(kernel, &acts, at),
                    5 => self.tile::<5>(kernel, &acts, at),
                    6 => self.tile::<6>(kernel, &acts, at),
                    7 => self.tile::<7>(kernel, &acts, at),
                    _ => self.tile::<8>(kernel, &acts, at),
                }
                t += n;
            }
        };
        let tasks = 0..groups.div_ceil(per_task);
        if threads > 1 && seq * self.rows * self.cols >= PARALLEL_MIN_MACS {
            tasks.into_par_iter().for_each(run);
        } else {
            tasks.for_each(run);
        }
        out
    }

    /// Tokens `t..t + N` (N <= TILE) times the panel's groups, into `out`'s rows of those tokens
    /// (`seq` rows of `self.rows`), at the panel's columns.
    fn tile<const N: usize>(&self, kernel: Kernel, acts: &QuantizedActs, (panel, t, out): (Range<usize>, usize, Out)) {
        let toks: &[Token; N] = &std::array::from_fn(|i| acts.token(t + i));
        // Per token, `sums` holds `stride` rows' values from group `g` on. Panels are whole
        // tiles of groups but the last, so a lone group's copy only ever lies past `rows`.
        let put = |g: usize, sums: &[f32], stride: usize| {
            let lanes = (self.rows - g * GROUP).min(stride);
            for (i, s) in sums.chunks_exact(stride).enumerate() {
                // SAFETY: a task writes only its panel's columns `g*8..g*8+lanes` (clipped to
                // `rows`) of the rows of tokens `t..t + N` (< seq), inside the output, which
                // outlives the parallel loop.
                unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), out.at((t + i) * self.rows + g * GROUP), lanes) };
            }
        };
        let span = kernel.groups_per_tile();
        for g in panel.clone().step_by(span) {
            let one = self.group(g);
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => {
                    // A lone last group is paired with itself; its copy's sums fall past `rows`.
                    let two = self.group((g + 1).min(panel.end - 1));
                    // SAFETY: `Kernel::available` checked the instructions when the kernel was
                    // chosen, and the activations' `start` was made for it.
                    let sums = unsafe { x86::tile_vnni::<N>(self.kind, [&one, &two], toks) };
                    put(g, sums.as_flattened(), 2 * GROUP)
                }
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => put(g, unsafe { x86::tile_avx2::<N>(self.kind, &one, toks) }.as_flattened(), GROUP),
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                _ => put(g, wasm::tile::<N>(self.kind, &one, toks).as_flattened(), GROUP),
                #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
                _ => put(g, portable_tile::<N>(self.kind, &one, toks).as_flattened(), GROUP),
            }
        }
    }
}

/// Products smaller than this (multiply-adds) run on the calling thread: handing them to the pool
/// costs more than it saves (a decode step's small matrices). Wasm workers wake slowly, so the
/// browser's threaded build shares only larger ones.
pub const PARALLEL_MIN_MACS: usize = if cfg!(target_arch = "wasm32") { 1 << 22 } else { 1 << 20 };

/// Tokens per tile at most (`Kernel::tile_tokens`).
const TILE: usize = 8;

/// A panel's weights at most (a core's L2 holds it alongside a tile's activations).
pub(super) const PANEL_BYTES: usize = 256 * 1024;

/// The output, written by the parallel tasks at disjoint places.
#[derive(Clone, Copy)]
pub(super) struct Out(pub(super) *mut f32);
// SAFETY: the tasks write disjoint elements (see `BlockMatrix::forward`, `FloatMatrix::forward`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// `i` must be inside the output (a method, so closures capture the whole `Out`).
    pub(super) unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: passed on to the caller.
        unsafe { self.0.add(i) }
    }
}

/// One group of rows: scales, offsets and quants of each of its blocks.
struct Group<'a> {
    d: &'a [u16],
    m: &'a [u16],
    qs: &'a [u8],
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
    /// Per token and block: the scale, and the f16 sum (`sx`, Q4_1's offset term).
    d: Vec<f32>,
    s: Vec<f32>,
    /// Per token and block: what the block's integer sum starts from: Q4_0's `-8 * sum(q)` (its
    /// kernels take the nibbles unsigned), and with VNNI Q8_0's `-128 * sum(q)` (it takes the
    /// weights plus 128, unsigned); else 0.
    start: Vec<i32>,
}

impl QuantizedActs {
    fn new(x: &[f32], seq: usize, cols: usize, kind: Kind, kernel: Kernel) -> Self {
        let blocks = cols / BLOCK;
        let n = seq * blocks;
        let (mut q, mut d, mut s, mut start) = (vec![0i8; seq * cols], vec![0f32; n], vec![0f32; n], vec![0i32; n]);
        let offset = match (kind, kernel) {
            (Kind::Q4_0, _) => -8,
            (Kind::Q8_0, Kernel::Avx512Vnni) => -128,
            _ => 0,
        };
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            // The largest magnitude, in eight lanes first so that it compiles to vector maxima
            // (a maximum is exact in any order).
            let mut lanes = [0f32; 8];
            for part in xb.chunks_exact(8) {
                for (m, v) in lanes.iter_mut().zip(part) {
                    *m = m.max(v.abs());
                }
            }
            let amax = lanes.into_iter().fold(0f32, f32::max);
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
            start[b] = offset * sum;
        }
        Self { blocks, q, d, s, start }
    }

    fn token(&self, t: usize) -> Token<'_> {
        let (b0, b1) = (t * self.blocks, (t + 1) * self.blocks);
        Token { q: &self.q[b0 * BLOCK..b1 * BLOCK], d: &self.d[b0..b1], s: &self.s[b0..b1], start: &self.start[b0..b1] }
    }
}

/// `v` rounded to the nearest integer, ties to even (as `_mm256_round_ps` does), without a libm
/// call or a float-to-int conversion (so loops of it compile to vector code): adding 1.5 * 2^23
/// rounds an f32 below 2^22 in magnitude to an integer in the current (nearest-even) mode, and
/// that integer is then the low bits of the sum's mantissa. Quantized values are at most 127 (a
/// NaN gives some value, never undefined behaviour).
#[inline(always)]
fn round_even(v: f32) -> i32 {
    const MAGIC: f32 = 12582912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// One token's quantized activations (all its blocks).
#[derive(Clone, Copy)]
struct Token<'a> {
    q: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    start: &'a [i32],
}

/// The scalar kernel (CPUs without the x86 kernels' instructions; a reference for them).
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
fn portable_tile<const N: usize>(kind: Kind, g: &Group, toks: &[Token; N]) -> [[f32; GROUP]; N] {
    let qb = kind.quant_bytes();
    let mut acc = [[0f32; GROUP]; N];
    for (b, qs) in g.qs.chunks_exact(qb * GROUP).enumerate() {
        for (t, tok) in toks.iter().enumerate() {
            let x: &[i8; BLOCK] = tok.q[b * BLOCK..(b + 1) * BLOCK].try_into().expect("whole blocks");
            let mut sums = [tok.start[b]; GROUP];
            for (c, chunk) in qs.chunks_exact(32).enumerate() {
                for (r, sum) in sums.iter_mut().enumerate() {
                    for i in 0..4 {
                        let w = chunk[r * 4 + i];
                        *sum += match kind {
                            Kind::Q8_0 => (w as i8) as i32 * x[4 * c + i] as i32,
                            Kind::Q4_0 | Kind::Q4_1 => {
                                (w & 15) as i32 * x[4 * c + i] as i32 + (w >> 4) as i32 * x[16 + 4 * c + i] as i32
                            }
                        };
                    }
                }
            }
            for (r, a) in acc[t].iter_mut().enumerate() {
                *a += sums[r] as f32 * (f16(g.d[b * GROUP + r]) * tok.d[b]);
                if kind == Kind::Q4_1 {
                    *a += f16(g.m[b * GROUP + r]) * tok.s[b];
                }
            }
        }
    }
    acc
}

/// The browser's kernel: wasm `simd128` (every current browser has it; the build enables it in
/// .cargo/config.toml). A chunk's 32 bytes are two vectors of four rows; bytes widen to i16 and
/// `i32x4.dot_i16x8_s` against a token's four activations (repeated) gives each row's sum in two
/// lanes, folded once per block. The relaxed-SIMD build (`+relaxed-simd`, for browsers that have
/// it) takes Q4 blocks with `i32x4.relaxed_dot_i8x16_i7x16_add_s`: the activations as i8, the
/// nibbles (0..15, so exact as i7), each lane four products of one row, as `vpdpbusd` does. Both
/// give the same integer sums, so the same results, bit for bit.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::{BLOCK, GROUP, Group, Kind, Token, f16};
    use core::arch::wasm32::*;

    /// Four activations `x[at..at + 4]`, repeated four times.
    #[inline(always)]
    fn four(x: &[i8], at: usize) -> v128 {
        assert!(at + 4 <= x.len());
        // SAFETY: checked above; an unaligned 4-byte load.
        unsafe { v128_load32_splat(x.as_ptr().add(at) as *const u32) }
    }

    /// A chunk's unsigned bytes (rows 0..4 in `a`, 4..8 in `z`) as i16, rows in pairs:
    /// `(0,1), (2,3), (4,5), (6,7)`.
    #[inline(always)]
    fn widen_u8(a: v128, z: v128) -> [v128; 4] {
        [u16x8_extend_low_u8x16(a), u16x8_extend_high_u8x16(a), u16x8_extend_low_u8x16(z), u16x8_extend_high_u8x16(z)]
    }

    /// Rows `(0,1), (2,3)` (or `(4,5), (6,7)`), each row's sum in two lanes, to the rows' sums.
    #[inline(always)]
    fn fold(u: v128, v: v128) -> v128 {
        i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(u, v), i32x4_shuffle::<1, 3, 5, 7>(u, v))
    }

    /// Per token, the integer sums of rows 0..4 and 4..8 over one block.
    #[inline(always)]
    fn block_sums<const N: usize>(kind: Kind, qs: &[u8], toks: &[Token; N], b: usize) -> [[v128; 2]; N] {
        let mut sums = [[i32x4_splat(0); 2]; N];
        #[cfg(target_feature = "relaxed-simd")]
        if kind != Kind::Q8_0 {
            for (c, chunk) in qs.chunks_exact(32).enumerate() {
                // SAFETY: `chunk` holds 32 bytes; unaligned loads.
                let (a, z) = unsafe {
                    (v128_load(chunk.as_ptr() as *const v128), v128_load(chunk.as_ptr().add(16) as *const v128))
                };
                let lo = [v128_and(a, u8x16_splat(15)), v128_and(z, u8x16_splat(15))];
                let hi = [u8x16_shr(a, 4), u8x16_shr(z, 4)];
                for (s, tok) in sums.iter_mut().zip(toks) {
                    let x = &tok.q[b * BLOCK..];
                    let (xl, xh) = (four(x, 4 * c), four(x, 16 + 4 * c));
                    for h in 0..2 {
                        s[h] = i32x4_relaxed_dot_i8x16_i7x16_add(xl, lo[h], s[h]);
                        s[h] = i32x4_relaxed_dot_i8x16_i7x16_add(xh, hi[h], s[h]);
                    }
                }
            }
            return sums;
        }
        // Per token, rows (0,1), (2,3), (4,5), (6,7): each row's sum in two lanes.
        let mut pairs = [[i32x4_splat(0); 4]; N];
        let wide = |v: v128| i16x8_extend_low_i8x16(v);
        for (c, chunk) in qs.chunks_exact(32).enumerate() {
            // SAFETY: `chunk` holds 32 bytes; unaligned loads.
            let (a, z) =
                unsafe { (v128_load(chunk.as_ptr() as *const v128), v128_load(chunk.as_ptr().add(16) as *const v128)) };
            match kind {
                Kind::Q8_0 => {
                    let w = [
                        i16x8_extend_low_i8x16(a),
                        i16x8_extend_high_i8x16(a),
                        i16x8_extend_low_i8x16(z),
                        i16x8_extend_high_i8x16(z),
                    ];
                    for (p, tok) in pairs.iter_mut().zip(toks) {
                        let x = wide(four(&tok.q[b * BLOCK..], 4 * c));
                        for (p, w) in p.iter_mut().zip(w) {
                            *p = i32x4_add(*p, i32x4_dot_i16x8(w, x));
                        }
                    }
                }
                Kind::Q4_0 | Kind::Q4_1 => {
                    let (lo_a, lo_z) = (v128_and(a, u8x16_splat(15)), v128_and(z, u8x16_splat(15)));
                    let (hi_a, hi_z) = (u8x16_shr(a, 4), u8x16_shr(z, 4));
                    let (lo, hi) = (widen_u8(lo_a, lo_z), widen_u8(hi_a, hi_z));
                    for (p, tok) in pairs.iter_mut().zip(toks) {
                        let x = &tok.q[b * BLOCK..];
                        let (xl, xh) = (wide(four(x, 4 * c)), wide(four(x, 16 + 4 * c)));
                        for (p, (l, h)) in p.iter_mut().zip(lo.into_iter().zip(hi)) {
                            *p = i32x4_add(*p, i32x4_add(i32x4_dot_i16x8(l, xl), i32x4_dot_i16x8(h, xh)));
                        }
                    }
                }
            }
        }
        for (s, p) in sums.iter_mut().zip(&pairs) {
            *s = [fold(p[0], p[1]), fold(p[2], p[3])];
        }
        sums
    }

    pub fn tile<const N: usize>(kind: Kind, g: &Group, toks: &[Token; N]) -> [[f32; GROUP]; N] {
        let qb = kind.quant_bytes();
        let mut acc = [[f32x4_splat(0.0); 2]; N];
        for (b, qs) in g.qs.chunks_exact(qb * GROUP).enumerate() {
            let sums = block_sums(kind, qs, toks, b);
            // 8 scales (and offsets) per block: two 4-lane halves.
            let dw = |v: &[u16], h: usize| {
                f32x4(
                    f16(v[b * GROUP + 4 * h]),
                    f16(v[b * GROUP + 4 * h + 1]),
                    f16(v[b * GROUP + 4 * h + 2]),
                    f16(v[b * GROUP + 4 * h + 3]),
                )
            };
            let scales = [dw(g.d, 0), dw(g.d, 1)];
            let offsets = if kind == Kind::Q4_1 { [dw(g.m, 0), dw(g.m, 1)] } else { [f32x4_splat(0.0); 2] };
            for (t, tok) in toks.iter().enumerate() {
                let start = i32x4_splat(tok.start[b]);
                let dx = f32x4_splat(tok.d[b]);
                for h in 0..2 {
                    let rows = f32x4_convert_i32x4(i32x4_add(sums[t][h], start));
                    acc[t][h] = f32x4_add(acc[t][h], f32x4_mul(rows, f32x4_mul(scales[h], dx)));
                    if kind == Kind::Q4_1 {
                        acc[t][h] = f32x4_add(acc[t][h], f32x4_mul(offsets[h], f32x4_splat(tok.s[b])));
                    }
                }
            }
        }
        acc.map(|[a, z]| {
            let mut out = [0f32; GROUP];
            // SAFETY: 8 floats, unaligned stores.
            unsafe {
                v128_store(out.as_mut_ptr() as *mut v128, a);
                v128_store(out.as_mut_ptr().add(4) as *mut v128, z);
            }
            out
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Lanes are rows. Per block and chunk of 32 weight bytes (four elements of each of a group's
    //! eight rows; Q4 two sets of four, in the low and high nibbles), each token's four matching
    //! activations are broadcast to every lane and multiplied in; a block's integer sums then
    //! take the rows' scales times the token's. The VNNI kernel holds two groups' chunks in one
    //! 512-bit vector, sixteen rows per `vpdpbusd`; AVX2 one group in 256 bits.
    use super::{BLOCK, GROUP, Group, Kind, Token};
    use std::arch::x86_64::*;

    /// How far ahead of the block being read to prefetch a group's quants, in bytes.
    const PREFETCH: usize = 2048;

    /// Prefetch a group's quants `PREFETCH` bytes ahead of `w` (a block of `qb` bytes a row).
    #[inline(always)]
    unsafe fn prefetch(w: *const u8, qb: usize) {
        // SAFETY: a prefetch of any address is harmless; the callers' target features include SSE.
        unsafe {
            for line in 0..qb * GROUP / 64 {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH + 64 * line) as *const i8);
            }
        }
    }

    /// Groups `pair[0]` and `pair[1]` (sixteen rows) times the tokens.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI (`Kernel::available`), and the tokens' `start`
    /// must be made for this kernel (`QuantizedActs::new`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_vnni<const N: usize>(kind: Kind, pair: [&Group; 2], toks: &[Token; N]) -> [[f32; 2 * GROUP]; N] {
        // SAFETY: passed on from the caller.
        unsafe {
            match kind {
                Kind::Q8_0 => vnni::<N, 0>(pair, toks),
                Kind::Q4_0 => vnni::<N, 1>(pair, toks),
                Kind::Q4_1 => vnni::<N, 2>(pair, toks),
            }
        }
    }

    /// Group `g` (eight rows) times the tokens.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (`Kernel::available`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_avx2<const N: usize>(kind: Kind, g: &Group, toks: &[Token; N]) -> [[f32; GROUP]; N] {
        // SAFETY: passed on from the caller.
        unsafe {
            match kind {
                Kind::Q8_0 => avx2::<N, 0>(g, toks),
                Kind::Q4_0 => avx2::<N, 1>(g, toks),
                Kind::Q4_1 => avx2::<N, 2>(g, toks),
            }
        }
    }

    /// `KIND`: 0 Q8_0, 1 Q4_0, 2 Q4_1. Lane `i` is row `i` of `pair[0]`, lane `8 + i` row `i` of
    /// `pair[1]`.
    #[inline(always)]
    unsafe fn vnni<const N: usize, const KIND: u8>(pair: [&Group; 2], toks: &[Token; N]) -> [[f32; 2 * GROUP]; N] {
        // SAFETY: both groups hold `blocks` blocks of eight rows (scales, offsets, quants) and
        // each token `blocks * 32` activations with a scale, sum and start per block; the target
        // features come from `tile_vnni`.
        unsafe {
            let qb = if KIND == 0 { 32 } else { 16 };
            let blocks = pair[0].d.len() / GROUP;
            debug_assert!(pair[1].d.len() == pair[0].d.len());
            debug_assert!(toks.iter().all(|t| t.d.len() == blocks && t.q.len() == blocks * BLOCK));
            let mut acc = [_mm512_setzero_ps(); N];
            let word = |t: &Token, at: usize| _mm512_set1_epi32((t.q.as_ptr().add(at) as *const i32).read_unaligned());
            // Eight f16 values of each group at block `b`, as sixteen f32.
            let halves = |v: [&[u16]; 2], b: usize| {
                let at = |v: &[u16]| _mm_loadu_si128(v.as_ptr().add(b * GROUP) as *const __m128i);
                _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(at(v[0])), at(v[1])))
            };
            for b in 0..blocks {
                let w = pair.map(|g| g.qs.as_ptr().add(b * GROUP * qb));
                prefetch(w[0], qb);
                prefetch(w[1], qb);
                // Chunk `c` of both groups.
                let chunk = |c: usize| {
                    let half = |w: *const u8| _mm256_loadu_si256(w.add(c * 32) as *const __m256i);
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(w[0])), half(w[1]))
                };
                let mut sums: [__m512i; N] =
                    std::array::from_fn(|i| _mm512_set1_epi32(*toks[i].start.get_unchecked(b)));
                // Each token's block sum is two chains of vpdpbusd added at the end (`more`): one
                // chain waits out each instruction's latency, two keep the multipliers busy.
                // Integer sums: the result is the same in any order.
                let mut more = [_mm512_setzero_si512(); N];
                if KIND == 0 {
                    for c in 0..8 {
                        // w + 128, unsigned (`start` took 128 * sum(x) off).
                        let u = _mm512_xor_si512(chunk(c), _mm512_set1_epi8(-128));
                        let chains = if c % 2 == 0 { &mut sums } else { &mut more };
                        for (s, t) in chains.iter_mut().zip(toks) {
                            *s = _mm512_dpbusd_epi32(*s, u, word(t, b * BLOCK + 4 * c));
                        }
                    }
                } else {
                    for c in 0..4 {
                        let v = chunk(c);
                        let lo = _mm512_and_si512(v, _mm512_set1_epi8(15));
                        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), _mm512_set1_epi8(15));
                        for ((s, m), t) in sums.iter_mut().zip(more.iter_mut()).zip(toks) {
                            *s = _mm512_dpbusd_epi32(*s, lo, word(t, b * BLOCK + 4 * c));
                            *m = _mm512_dpbusd_epi32(*m, hi, word(t, b * BLOCK + 16 + 4 * c));
                        }
                    }
                }
                let dw = halves(pair.map(|g| g.d), b);
                let mw = if KIND == 2 { halves(pair.map(|g| g.m), b) } else { _mm512_setzero_ps() };
                for (i, t) in toks.iter().enumerate() {
                    let sum = _mm512_add_epi32(sums[i], more[i]);
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*t.d.get_unchecked(b)));
                    acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(_mm512_cvtepi32_ps(sum), scale));
                    if KIND == 2 {
                        acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(mw, _mm512_set1_ps(*t.s.get_unchecked(b))));
                    }
                }
            }
            acc.map(|a| {
                let mut out = [0f32; 2 * GROUP];
                _mm512_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }

    /// `KIND`: 0 Q8_0, 1 Q4_0, 2 Q4_1. Lanes are the group's eight rows.
    #[inline(always)]
    unsafe fn avx2<const N: usize, const KIND: u8>(g: &Group, toks: &[Token; N]) -> [[f32; GROUP]; N] {
        // SAFETY: `g` holds `blocks` blocks of eight rows (scales, offsets, quants) and each token
        // `blocks * 32` activations with a scale, sum and start per block; the target features
        // come from `tile_avx2`.
        unsafe {
            let qb = if KIND == 0 { 32 } else { 16 };
            let blocks = g.d.len() / GROUP;
            debug_assert!(toks.iter().all(|t| t.d.len() == blocks && t.q.len() == blocks * BLOCK));
            let mut acc = [_mm256_setzero_ps(); N];
            let word = |t: &Token, at: usize| _mm256_set1_epi32((t.q.as_ptr().add(at) as *const i32).read_unaligned());
            // `start + sum(w * x)` in eight i32 lanes (each lane four adjacent products):
            // unsigned `w` by signed `x`.
            let dot = |s: __m256i, w: __m256i, x: __m256i| {
                _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
            };
            for b in 0..blocks {
                let w = g.qs.as_ptr().add(b * GROUP * qb);
                prefetch(w, qb);
                let mut sums: [__m256i; N] =
                    std::array::from_fn(|i| _mm256_set1_epi32(*toks[i].start.get_unchecked(b)));
                for c in 0..qb / 4 {
                    let v = _mm256_loadu_si256(w.add(c * 32) as *const __m256i);
                    if KIND == 0 {
                        // |w| by x with w's sign.
                        let a = _mm256_sign_epi8(v, v);
                        for (s, t) in sums.iter_mut().zip(toks) {
                            *s = dot(*s, a, _mm256_sign_epi8(word(t, b * BLOCK + 4 * c), v));
                        }
                    } else {
                        let lo = _mm256_and_si256(v, _mm256_set1_epi8(15));
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), _mm256_set1_epi8(15));
                        for (s, t) in sums.iter_mut().zip(toks) {
                            *s = dot(*s, lo, word(t, b * BLOCK + 4 * c));
                            *s = dot(*s, hi, word(t, b * BLOCK + 16 + 4 * c));
                        }
                    }
                }
                let half = |v: &[u16]| _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(b * GROUP) as *const __m128i));
                let dw = half(g.d);
                let mw = if KIND == 2 { half(g.m) } else { _mm256_setzero_ps() };
                for (i, t) in toks.iter().enumerate() {
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*t.d.get_unchecked(b)));
                    acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(_mm256_cvtepi32_ps(sums[i]), scale));
                    if KIND == 2 {
                        acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(mw, _mm256_set1_ps(*t.s.get_unchecked(b))));
                    }
                }
            }
            acc.map(|a| {
                let mut out = [0f32; GROUP];
                _mm256_storeu_ps(out.as_mut_ptr(), a);
                out
            })
        }
    }
}
