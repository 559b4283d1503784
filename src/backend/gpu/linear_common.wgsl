// Shared by the two matrix kernels (linear.wgsl, linear_rows.wgsl): parameters, activations in
// and out, the 4-token tile and the fused epilogues. For one part (a row range) of W:
//   out[t, row_offset + r] = sum_c n(x)[t, c] * W[r, c]            (plain)
//   ... + res[t, row_offset + r]                                    (RESIDUAL: the residual add)
//   silu(gate row r . n(x)) * (up row r . n(x))                     (PAIRED: SwiGLU; W's rows are
//                                                                    gate 0, up 0, gate 1, up 1, ...)
// where n(x) is x itself, or with NORM its RMSNorm with `gain`: inv_rms(x_t) * (x_t * gain), the
// token's sum of squares gathered in the same walk over x as the products. The Rust side injects
// NORM, RESIDUAL and PAIRED, the activation view `x4`, the gain view `g4` and `residual`, with
// their bindings (SLOT_X, SLOT_GAIN, SLOT_RESIDUAL) where the variant uses them (ARCHITECTURE.md,
// "Fused kernels"). The weight format file supplies load4; dot_f32.wgsl or dot_f16.wgsl
// supplies `tile_dot(row, b, k, xs)`, weights 4k..4k+3 of whole block b of `row` against the 4
// tokens of the tile. Any input width: weight rows are
// stored padded to whole blocks of 32 (w_stride), full blocks run unchecked, and the one partial
// block at the end of a row reads x only below `cols`.
struct Params {
    rows: u32,        // output rows from this part (PAIRED: half its stored rows)
    cols: u32,        // input width
    n_tokens: u32,
    row_offset: u32,  // where this part's rows go in the output
    out_stride: u32,  // output width (all parts)
    w_stride: u32,    // weights per stored row: cols rounded up to a multiple of 32
    x_first: u32,     // the first token row of x to use (the logits use only the last)
    eps: f32,         // RMSNorm epsilon (NORM)
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<f32>;

// Where tokens t0..t0+3 start in x. Tokens past the end read the last token (their results are
// discarded) so no load is out of range.
fn tile_offsets(t0: u32) -> vec4<u32> {
    let last = p.n_tokens - 1u;
    let t = vec4<u32>(min(t0, last), min(t0 + 1u, last), min(t0 + 2u, last), min(t0 + 3u, last));
    return (t + vec4<u32>(p.x_first)) * p.cols;
}

// x[i..i+4] as the products see it: times the gain of columns c..c+4 with NORM.
fn xg(i: u32, c: u32) -> vec4<f32> {
    if (NORM) {
        return x4(i) * g4(c);
    }
    return x4(i);
}

// xg, zero at and past `cols` (the padding of the last block).
fn xg_masked(i: u32, c: u32) -> vec4<f32> {
    let inside = vec4<u32>(c, c + 1u, c + 2u, c + 3u) < vec4<u32>(p.cols);
    return select(vec4<f32>(0.0), xg(i, c), inside);
}

// The tile's sums of squares of x over columns 4k..4k+3 of block b (NORM).
fn tile_squares(b: u32, k: u32, xs: vec4<u32>) -> vec4<f32> {
    let c = b * 32u + k * 4u;
    let x0 = x4(xs.x + c);
    let x1 = x4(xs.y + c);
    let x2 = x4(xs.z + c);
    let x3 = x4(xs.w + c);
    return vec4<f32>(dot(x0, x0), dot(x1, x1), dot(x2, x2), dot(x3, x3));
}

// The partial block `b` at the end of a row (cols not a multiple of 32), against the tile.
fn tail_dot(row: u32, b: u32, xs: vec4<u32>) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < 8u; k++) {
        let c = b * 32u + k * 4u;
        if (c < p.cols) {
            let w = load4(row, p.w_stride, b, k);
            acc += vec4<f32>(
                dot(w, xg_masked(xs.x + c, c)),
                dot(w, xg_masked(xs.y + c, c)),
                dot(w, xg_masked(xs.z + c, c)),
                dot(w, xg_masked(xs.w + c, c)),
            );
        }
    }
    return acc;
}

// tile_squares over the partial block `b`.
fn tail_squares(b: u32, xs: vec4<u32>) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < 8u; k++) {
        let c = b * 32u + k * 4u;
        if (c < p.cols) {
            let inside = vec4<u32>(c, c + 1u, c + 2u, c + 3u) < vec4<u32>(p.cols);
            let x0 = select(vec4<f32>(0.0), x4(xs.x + c), inside);
            let x1 = select(vec4<f32>(0.0), x4(xs.y + c), inside);
            let x2 = select(vec4<f32>(0.0), x4(xs.z + c), inside);
            let x3 = select(vec4<f32>(0.0), x4(xs.w + c), inside);
            acc += vec4<f32>(dot(x0, x0), dot(x1, x1), dot(x2, x2), dot(x3, x3));
        }
    }
    return acc;
}

// One thread's share of output row `row` for the tile: the products with its stored row (and,
// PAIRED, the up row after it) over blocks first, first + step, ... (and the partial last block
// when `tail`), and the tokens' sums of squares over the same blocks (NORM).
struct Sums {
    a: vec4<f32>,
    b: vec4<f32>,
    squares: vec4<f32>,
}

fn row_sums(row: u32, xs: vec4<u32>, first: u32, step: u32, tail: bool) -> Sums {
    var s = Sums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let wrow = select(row, 2u * row, PAIRED);
    let blocks = p.cols / 32u; // whole blocks
    for (var b = first; b < blocks; b += step) {
        for (var k = 0u; k < 8u; k++) {
            s.a += tile_dot(wrow, b, k, xs);
            if (PAIRED) {
                s.b += tile_dot(wrow + 1u, b, k, xs);
            }
            if (NORM) {
                s.squares += tile_squares(b, k, xs);
            }
        }
    }
    if (tail && p.cols % 32u != 0u) {
        s.a += tail_dot(wrow, blocks, xs);
        if (PAIRED) {
            s.b += tail_dot(wrow + 1u, blocks, xs);
        }
        if (NORM) {
            s.squares += tail_squares(blocks, xs);
        }
    }
    return s;
}

// The tile's results for `row`, tokens past the end left out: the norm's scale, SwiGLU, the
// residual.
fn store_tile(row: u32, t0: u32, s: Sums) {
    for (var t = 0u; t < TILE; t++) {
        if (t0 + t < p.n_tokens) {
            var scale = 1.0;
            if (NORM) {
                scale = inverseSqrt(s.squares[t] / f32(p.cols) + p.eps);
            }
            var v = s.a[t] * scale;
            if (PAIRED) {
                v = v / (1.0 + exp(-v)) * (s.b[t] * scale);
            }
            let at = (t0 + t) * p.out_stride + p.row_offset + row;
            if (RESIDUAL) {
                v += residual(at);
            }
            out[at] = v;
        }
    }
}
