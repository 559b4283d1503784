//! f32 matrix products on the CPU with one order of operations on every target, so that f32
//! weights (`--quant none`, and tensors kept in f32 because their rows are not whole blocks) give
//! the browser's wasm CPU path the CLI's bits, as the block kernels do (ARCHITECTURE §4).
//!
//! Each output is the plain sequential sum over the columns, `((0 + w0*x0) + w1*x1) + ...`, every
//! step a separate multiply and add (no fused multiply-add: wasm has none). The vector lanes are
//! rows, not columns: weights are held with rows interleaved sixteen by sixteen, so one load holds
//! the same column of sixteen rows, a token's activation is broadcast to all of them, and no lane
//! ever has to be summed with another. Which instructions run the lanes (AVX-512, AVX2, wasm
//! `simd128` or scalar code) cannot change a lane's result.
//!
//! bf16 weights (the checkpoint's own type) are held as bf16 and widened on load, which is exact
//! (a bf16 is the upper half of an f32): the same products at half the memory, and half the bytes
//! a decode step reads.

use super::cpu_blocks::{Kernel, Out, PANEL_BYTES, PARALLEL_MIN_MACS, kernel};
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// Rows interleaved in a group: one AVX-512 vector, two AVX2 ones, four wasm ones.
const LANES: usize = 16;

/// Columns a pass takes at a time: a group's slice of them (128 KiB) stays in L2 while every tile
/// of tokens reads it. Carrying on from the stored partial sums is the same sequential sum, so
/// splitting the columns changes no bit.
const CHUNK_COLS: usize = 2048;

/// A bf16 value's bits: the upper half of an f32.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

// SAFETY: a `u16` of zero bits is a valid `Bf16` (+0.0).
unsafe impl bytemuck::Zeroable for Bf16 {}

/// A weight as the matrix holds it, widened to f32 exactly on every load.
pub trait Element: Copy + Default + Send + Sync + bytemuck::Zeroable + 'static {
    fn f32(self) -> f32;
    /// Interleaved weights of this type, as the matrix keeps them.
    fn held(w: Vec<Self>) -> Held;
}

impl Element for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
    fn held(w: Vec<f32>) -> Held {
        Held::F32(w)
    }
}

impl Element for Bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    fn held(w: Vec<Bf16>) -> Held {
        Held::Bf16(w)
    }
}

/// A float matrix with its rows interleaved in groups of `LANES` (the last group padded with zero
/// rows): element `(row, col)` lies at `(group * cols + col) * LANES + lane`.
pub struct FloatMatrix {
    pub rows: usize,
    pub cols: usize,
    w: Held,
}

/// The weights, interleaved, in the type they are held in.
pub enum Held {
    F32(Vec<f32>),
    Bf16(Vec<Bf16>),
}

/// `rows` rows of `cols` values, each written by `fill(row, out)`, interleaved. The copy is
/// allocated with `try_zeroed` (a matrix that cannot be had is an error, not an abort), and only
/// one row at a time is held beside it.
fn interleave<E: Element>(
    rows: usize,
    cols: usize,
    mut fill: impl FnMut(usize, &mut [E]) -> crate::error::Result<()>,
) -> crate::error::Result<Vec<E>> {
    let groups = rows.div_ceil(LANES);
    let len = groups.checked_mul(cols).and_then(|n| n.checked_mul(LANES));
    let len = len.ok_or_else(|| crate::error::Error::Other(format!("a {rows}x{cols} matrix is too large")))?;
    let mut w: Vec<E> = crate::error::try_zeroed(len, || format!("the {rows}x{cols} float matrix"))?;
    let mut row = vec![E::default(); cols];
    for r in 0..rows {
        fill(r, &mut row)?;
        let (group, lane) = (r / LANES, r % LANES);
        let base = group * cols * LANES + lane;
        for (c, &v) in row.iter().enumerate() {
            w[base + c * LANES] = v;
        }
    }
    Ok(w)
}

impl FloatMatrix {
    /// From `rows` rows of `cols` values (f32, or bf16 held as bf16), each written by
    /// `fill(row, out)`.
    pub fn from_rows<E: Element>(
        rows: usize,
        cols: usize,
        fill: impl FnMut(usize, &mut [E]) -> crate::error::Result<()>,
    ) -> crate::error::Result<Self> {
        Ok(Self { rows, cols, w: E::held(interleave(rows, cols, fill)?) })
    }

    /// From a row-major `(rows, cols)` slice.
    pub fn from_slice(values: &[f32], rows: usize, cols: usize) -> crate::error::Result<Self> {
        Self::from_rows(rows, cols, |r, out| {
            out.copy_from_slice(&values[r * cols..(r + 1) * cols]);
            Ok(())
        })
    }

    /// Row `r` (an embedding lookup from the matrix a tied LM head multiplies with).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let (group, lane) = (r / LANES, r % LANES);
        let base = group * self.cols * LANES + lane;
        let at = (0..self.cols).map(|c| base + c * LANES);
        match &self.w {
            Held::F32(w) => at.map(|i| w[i]).collect(),
            Held::Bf16(w) => at.map(|i| w[i].f32()).collect(),
        }
    }

    /// `x` is `(seq, cols)` row-major; returns `(seq, rows)`.
    ///
    /// Tasks take panels of consecutive groups; a panel runs the columns in chunks and, for each
    /// chunk, the tokens in tiles of up to `Kernel::tile_tokens`, each tile over every group of the
    /// panel, so the panel's slice of weights is read from L2 once per tile. A token's arithmetic
    /// is the same in every tile, chunk and panel: its results do not depend on what it is batched
    /// with.
    pub fn forward(&self, x: &[f32], seq: usize) -> Vec<f32> {
        let kernel = kernel();
        let (rows, cols) = (self.rows, self.cols);
        if cols == 0 || rows == 0 || seq == 0 {
            return vec![0f32; seq * rows]; // sums of nothing
        }
        let groups = rows.div_ceil(LANES);
        let chunk = CHUNK_COLS.min(cols).max(1);
        let threads = rayon::current_num_threads().max(1);
        let per_task = (PANEL_BYTES / (4 * LANES * chunk)).clamp(1, groups.div_ceil(4 * threads).max(1));
        // The activations tile by tile, each tile column by column (the tile's tokens side by
        // side), so a kernel reads one column's activations with one load. Tiles are whole but
        // the last: the tile at token `t` starts at `t * cols`. One token is already that.
        let tile = kernel.tile_tokens().min(8); // the largest tile compiled below
        let xt: Cow<[f32]> = if seq == 1 {
            Cow::Borrowed(x)
        } else {
            let mut xt = vec![0f32; seq * cols];
            for t in (0..seq).step_by(tile) {
                let n = tile.min(seq - t);
                let block = &mut xt[t * cols..(t + n) * cols];
                for (i, token) in x[t * cols..(t + n) * cols].chunks_exact(cols).enumerate() {
                    for (c, &v) in token.iter().enumerate() {
                        block[c * n + i] = v;
                    }
                }
            }
            Cow::Owned(xt)
        };
        let mut out = vec![0f32; seq * rows];
        let shared = Out(out.as_mut_ptr());
        let run = |task: usize| {
            let panel = task * per_task..((task + 1) * per_task).min(groups);
            let mut widened: Vec<f32> = Vec::new();
            for c0 in (0..cols).step_by(chunk) {
                let c1 = (c0 + chunk).min(cols);
                // bf16 weights that more than one tile of tokens reads (a prompt) are widened
                // once per chunk, into a copy that stays in L2, so the tiles run the f32 kernel;
                // one tile (a decode step) reads them as they are, at half the bytes.
                let wide = match &self.w {
                    Held::Bf16(w) if seq > tile => {
                        widened.clear();
                        for g in panel.clone() {
                            let slice = &w[(g * cols + c0) * LANES..(g * cols + c1) * LANES];
                            widened.extend(slice.iter().map(|b| b.f32()));
                        }
                        Some(&widened[..])
                    }
                    _ => None,
                };
                let mut t = 0;
                while t < seq {
                    let n = (seq - t).min(tile);
                    let at = Tile {
                        xt: &xt[t * cols + c0 * n..t * cols + c1 * n],
                        columns: c0..c1,
                        first: t,
                        out: shared,
                        rows,
                    };
                    // Compiled for each tile size, so the accumulators stay in registers.
                    match n {
                        1 => self.tile::<1>(kernel, &at, panel.clone(), wide),
                        2 => self.tile::<2>(kernel, &at, panel.clone(), wide),
                        3 => self.tile::<3>(kernel, &at, panel.clone(), wide),
                        4 => self.tile::<4>(kernel, &at, panel.clone(), wide),
                        5 => self.tile::<5>(kernel, &at, panel.clone(), wide),
                        6 => self.tile::<6>(kernel, &at, panel.clone(), wide),
                        7 => self.tile::<7>(kernel, &at, panel.clone(), wide),
                        _ => self.tile::<8>(kernel, &at, panel.clone(), wide),
                    }
                    t += n;
                }
            }
        };
        let tasks = 0..groups.div_ceil(per_task);
        if threads > 1 && seq * rows * cols >= PARALLEL_MIN_MACS {
            tasks.into_par_iter().for_each(run);
        } else {
            tasks.for_each(run);
        }
        out
    }

    /// Tokens `at.first..at.first + N` over the panel's groups, for the columns `at.columns`:
    /// each group carries on from its stored partial sums (zero before the first chunk) and
    /// stores them back. `wide`: the panel's weights for these columns widened to f32, group
    /// after group, when the chunk made them.
    fn tile<const N: usize>(&self, kernel: Kernel, at: &Tile, panel: Range<usize>, wide: Option<&[f32]>) {
        let (c0, c1) = (at.columns.start, at.columns.end);
        let cols = self.cols;
        match (&self.w, wide) {
            (_, Some(w)) => {
                let len = (c1 - c0) * LANES;
                let first = panel.start;
                self.tile_of::<N, f32>(|g| &w[(g - first) * len..(g - first + 1) * len], kernel, at, panel)
            }
            (Held::F32(w), None) => {
                self.tile_of::<N, f32>(|g| &w[(g * cols + c0) * LANES..(g * cols + c1) * LANES], kernel, at, panel)
            }
            (Held::Bf16(w), None) => {
                self.tile_of::<N, Bf16>(|g| &w[(g * cols + c0) * LANES..(g * cols + c1) * LANES], kernel, at, panel)
            }
        }
    }

    /// `tile`, with group `g`'s weights for the columns at `weights(g)`.
    fn tile_of<'w, const N: usize, E: Element + Load>(
        &self,
        weights: impl Fn(usize) -> &'w [E],
        kernel: Kernel,
        at: &Tile,
        panel: Range<usize>,
    ) {
        let (c0, c1) = (at.columns.start, at.columns.end);
        let (xt, rest) = at.xt.as_chunks::<N>();
        debug_assert!(rest.is_empty() && xt.len() == c1 - c0);
        for g in panel {
            let w = weights(g);
            let lanes = (at.rows - g * LANES).min(LANES);
            // SAFETY: a task writes only its panel's columns `g*16..g*16+lanes` (clipped to
            // `rows`) of the rows of tokens `first..first + N` (< seq), inside the output, which
            // outlives the parallel loop.
            let sums = |i: usize| unsafe { at.out.at((at.first + i) * at.rows + g * LANES) };
            let mut acc = [[0f32; LANES]; N];
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(sums(i), a.as_mut_ptr(), lanes) };
            }
            match kernel {
                // SAFETY: `Kernel::available` checked the instructions when the kernel was chosen.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => unsafe { x86::sums_avx512::<N, E>(w, xt, &mut acc) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => unsafe { x86::sums_avx2::<N, E>(w, xt, &mut acc) },
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                _ => sums_simd128::<N, E>(w, xt, &mut acc),
                #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
                _ => sums_portable::<N, E>(w, xt, &mut acc),
            }
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), sums(i), lanes) };
            }
        }
    }
}

/// Where a tile reads and writes: the activations `xt` of tokens from `first` for the columns
/// `columns`, column by column, into `out` (`rows` wide).
struct Tile<'a> {
    xt: &'a [f32],
    columns: Range<usize>,
    first: usize,
    out: Out,
    rows: usize,
}

/// The kernel: for each column in order, each lane adds its row's weight times the token's
/// activation (`xt`: per column, the tile's tokens), `acc + w * x` with a separate multiply and
/// add. Element-wise over the lanes, so every instruction set gives the same bits. Scalar code is
/// the reference (and the kernel of CPUs without the others' instructions); the vector kernels
/// are written out, because left to the compiler the loops get vectorized across tokens, through
/// gathers.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
fn sums_portable<const N: usize, E: Element>(w: &[E], xt: &[[f32; N]], acc: &mut [[f32; LANES]; N]) {
    for (wc, xc) in w.chunks_exact(LANES).zip(xt) {
        for (a, &x) in acc.iter_mut().zip(xc) {
            for (a, &w) in a.iter_mut().zip(wc) {
                *a += w.f32() * x;
            }
        }
    }
}

/// Sixteen weights (a group's column) widened to f32 vectors, per instruction set.
///
/// # Safety
/// `p` must point at sixteen readable values, and the CPU must have the instructions of the
/// function's name.
pub trait Load: Sized {
    /// # Safety
    /// As the trait's: sixteen values at `p`, AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn zmm(p: *const Self) -> std::arch::x86_64::__m512;
    /// # Safety
    /// As the trait's: sixteen values at `p`, AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn ymm(p: *const Self) -> [std::arch::x86_64::__m256; 2];
    /// # Safety
    /// As the trait's: sixteen values at `p`.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    unsafe fn v128(p: *const Self) -> [std::arch::wasm32::v128; 4];
}

impl Load for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn zmm(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's promise.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ymm(p: *const f32) -> [std::arch::x86_64::__m256; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise.
        unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    unsafe fn v128(p: *const f32) -> [std::arch::wasm32::v128; 4] {
        use std::arch::wasm32::*;
        // SAFETY: the caller's promise.
        std::array::from_fn(|q| unsafe { v128_load(p.add(4 * q) as *const v128) })
    }
}

impl Load for Bf16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn zmm(p: *const Bf16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise: 16 x 2 bytes.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i))))
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ymm(p: *const Bf16) -> [std::arch::x86_64::__m256; 2] {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise: two loads of 8 x 2 bytes.
        let half = |q: usize| unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                p.add(8 * q) as *const __m128i
            ))))
        };
        [half(0), half(1)]
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    unsafe fn v128(p: *const Bf16) -> [std::arch::wasm32::v128; 4] {
        use std::arch::wasm32::*;
        // SAFETY: the caller's promise: two loads of 8 x 2 bytes.
        let (lo, hi) = unsafe { (v128_load(p as *const v128), v128_load(p.add(8) as *const v128)) };
        [
            i32x4_shl(u32x4_extend_low_u16x8(lo), 16),
            i32x4_shl(u32x4_extend_high_u16x8(lo), 16),
            i32x4_shl(u32x4_extend_low_u16x8(hi), 16),
            i32x4_shl(u32x4_extend_high_u16x8(hi), 16),
        ]
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LANES, Load};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sums_avx512<const N: usize, E: Load>(w: &[E], xt: &[[f32; N]], acc: &mut [[f32; LANES]; N]) {
        // SAFETY: every load and store is of 16 values inside a `[f32; 16]` or a whole chunk of
        // `w`; the target feature is the caller's promise.
        unsafe {
            let mut a: [__m512; N] = std::array::from_fn(|t| _mm512_loadu_ps(acc[t].as_ptr()));
            for (wc, xc) in w.chunks_exact(LANES).zip(xt) {
                let wv = E::zmm(wc.as_ptr());
                for t in 0..N {
                    a[t] = _mm512_add_ps(a[t], _mm512_mul_ps(wv, _mm512_set1_ps(xc[t])));
                }
            }
            for t in 0..N {
                _mm512_storeu_ps(acc[t].as_mut_ptr(), a[t]);
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sums_avx2<const N: usize, E: Load>(w: &[E], xt: &[[f32; N]], acc: &mut [[f32; LANES]; N]) {
        // SAFETY: as in `sums_avx512`, in halves of 8 floats.
        unsafe {
            let mut a: [[__m256; 2]; N] =
                std::array::from_fn(|t| [_mm256_loadu_ps(acc[t].as_ptr()), _mm256_loadu_ps(acc[t].as_ptr().add(8))]);
            for (wc, xc) in w.chunks_exact(LANES).zip(xt) {
                let [w0, w1] = E::ymm(wc.as_ptr());
                for t in 0..N {
                    let x = _mm256_set1_ps(xc[t]);
                    a[t][0] = _mm256_add_ps(a[t][0], _mm256_mul_ps(w0, x));
                    a[t][1] = _mm256_add_ps(a[t][1], _mm256_mul_ps(w1, x));
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(acc[t].as_mut_ptr(), a[t][0]);
                _mm256_storeu_ps(acc[t].as_mut_ptr().add(8), a[t][1]);
            }
        }
    }
}

/// The browser's kernel: `simd128`, a group's sixteen lanes in four vectors.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn sums_simd128<const N: usize, E: Load>(w: &[E], xt: &[[f32; N]], acc: &mut [[f32; LANES]; N]) {
    use std::arch::wasm32::*;
    // SAFETY: each `acc[t]` and each chunk of `w` holds sixteen values; simd128 is this build's.
    let mut a: [[v128; 4]; N] = std::array::from_fn(|t| unsafe { f32::v128(acc[t].as_ptr()) });
    for (wc, xc) in w.chunks_exact(LANES).zip(xt) {
        // SAFETY: as above.
        let wv = unsafe { E::v128(wc.as_ptr()) };
        for t in 0..N {
            let x = f32x4_splat(xc[t]);
            for q in 0..4 {
                a[t][q] = f32x4_add(a[t][q], f32x4_mul(wv[q], x));
            }
        }
    }
    for t in 0..N {
        for q in 0..4 {
            // SAFETY: as above, 4 floats inside the token's 16.
            unsafe { v128_store(acc[t][4 * q..4 * q + 4].as_mut_ptr() as *mut v128, a[t][q]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output is the sequential sum of its products (bf16 weights widened), the same bits
    /// in every kernel and batch: the definition the browser and the CLI share. Every tile size,
    /// whole and padded groups, one chunk, three chunks, and nothing at all.
    #[test]
    fn every_output_is_the_sequential_sum_in_every_kernel_and_batch() {
        for rows in [32, 37] {
            for cols in [0, 40, 2 * CHUNK_COLS + 40] {
                for seq in 0..=17 {
                    sequential_sums(rows, cols, seq);
                }
            }
        }
    }

    fn sequential_sums(rows: usize, cols: usize, seq: usize) {
        let values = crate::synth::random_values(7, rows * cols, 1.0);
        let bf16: Vec<Bf16> = values.iter().map(|v| Bf16((v.to_bits() >> 16) as u16)).collect();
        let x = crate::synth::random_values(8, seq * cols, 1.0);
        let f32s = FloatMatrix::from_slice(&values, rows, cols).unwrap();
        let halves = FloatMatrix::from_rows(rows, cols, |r, out| {
            out.copy_from_slice(&bf16[r * cols..(r + 1) * cols]);
            Ok(())
        })
        .unwrap();
        let widened: Vec<f32> = bf16.iter().map(|b| b.f32()).collect();
        for (name, m, w) in [("f32", &f32s, &values), ("bf16", &halves, &widened)] {
            let expected: Vec<f32> = (0..seq)
                .flat_map(|t| {
                    let x = &x;
                    (0..rows).map(move |r| (0..cols).fold(0f32, |acc, c| acc + w[r * cols + c] * x[t * cols + c]))
                })
                .collect();
            assert_eq!(m.row(rows - 1), w[(rows - 1) * cols..], "{name}: a row reads back");
            for k in Kernel::available() {
                super::super::cpu_blocks::set_kernel(Some(k)).unwrap();
                let whole = m.forward(&x, seq);
                let alone: Vec<f32> = (0..seq).flat_map(|t| m.forward(&x[t * cols..(t + 1) * cols], 1)).collect();
                super::super::cpu_blocks::set_kernel(None).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let at = format!("{name} {rows}x{cols}, {} kernel", k.name());
                assert_eq!(bits(&whole), bits(&expected), "{at}, a batch of {seq}");
                assert_eq!(bits(&alone), bits(&expected), "{at}, one token at a time");
            }
        }
    }
}
