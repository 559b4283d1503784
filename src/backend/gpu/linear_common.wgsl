// Shared by the two matrix kernels (linear.wgsl, linear_rows.wgsl): parameters, activations in
// and out, and the 4-token tile. out[t, row_offset + r] = sum_c x[t, c] * W[r, c] for one part
// (a row range) of W; the weight format file supplies load4. Any input width: weight rows are
// stored padded to whole blocks of 32 (w_stride), full blocks run unchecked, and the one partial
// block at the end of a row reads x only below `cols`.
struct Params {
    rows: u32,        // rows in this part
    cols: u32,        // input width
    n_tokens: u32,
    row_offset: u32,  // where this part's rows go in the output
    out_stride: u32,  // output width (all parts)
    w_stride: u32,    // weights per stored row: cols rounded up to a multiple of 32
}

@group(0) @binding(0) var<uniform> p: Params;
// Binding 1, the activations `x`, and `x4(i)` (x[i..i+4]) come from the Rust side: a vec4 view
// when the width is a multiple of 4 (every real model; one load per four), scalars otherwise.
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// Where tokens t0..t0+3 start in x. Tokens past the end read the last token (their results are
// discarded) so no load is out of range.
fn tile_offsets(t0: u32) -> vec4<u32> {
    let last = p.n_tokens - 1u;
    return vec4<u32>(min(t0, last), min(t0 + 1u, last), min(t0 + 2u, last), min(t0 + 3u, last)) * p.cols;
}

// x[i..i+4] for columns c..c+4, zero at and past `cols` (the padding of the last block).
fn x4_masked(i: u32, c: u32) -> vec4<f32> {
    let inside = vec4<u32>(c, c + 1u, c + 2u, c + 3u) < vec4<u32>(p.cols);
    let v = x4(i);
    return select(vec4<f32>(0.0), v, inside);
}

// Weights 4k..4k+3 of block b of `row` against the 4 tokens of the tile: one dequantization
// serves all four.
fn tile_dot(row: u32, b: u32, k: u32, xs: vec4<u32>) -> vec4<f32> {
    let w = load4(row, p.w_stride, b, k);
    let c = b * 32u + k * 4u;
    return vec4<f32>(dot(w, x4(xs.x + c)), dot(w, x4(xs.y + c)), dot(w, x4(xs.z + c)), dot(w, x4(xs.w + c)));
}

// The partial block `b` at the end of a row (cols not a multiple of 32), against the tile.
fn tail_dot(row: u32, b: u32, xs: vec4<u32>) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < 8u; k++) {
        let c = b * 32u + k * 4u;
        if (c < p.cols) {
            let w = load4(row, p.w_stride, b, k);
            acc += vec4<f32>(
                dot(w, x4_masked(xs.x + c, c)),
                dot(w, x4_masked(xs.y + c, c)),
                dot(w, x4_masked(xs.z + c, c)),
                dot(w, x4_masked(xs.w + c, c)),
            );
        }
    }
    return acc;
}

// The tile's sums for `row`, tokens past the end left out.
fn store_tile(row: u32, t0: u32, sums: vec4<f32>) {
    for (var t = 0u; t < 4u; t++) {
        if (t0 + t < p.n_tokens) {
            out[(t0 + t) * p.out_stride + p.row_offset + row] = sums[t];
        }
    }
}
