// Shared by the two matrix kernels (linear.wgsl, linear_rows.wgsl): parameters, activations in
// and out, and the 4-token tile. out[t, row_offset + r] = sum_c x[t, c] * W[r, c] for one part
// (a row range) of W; the weight format file supplies load4.
struct Params {
    rows: u32,        // rows in this part
    cols: u32,        // input width (a multiple of 32)
    n_tokens: u32,
    row_offset: u32,  // where this part's rows go in the output
    out_stride: u32,  // output width (all parts)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// Where tokens t0..t0+3 start in x (in vec4s). Tokens past the end read the last token (their
// results are discarded) so no load is out of range.
fn tile_offsets(t0: u32) -> vec4<u32> {
    let last = p.n_tokens - 1u;
    let cols4 = p.cols / 4u;
    return vec4<u32>(min(t0, last), min(t0 + 1u, last), min(t0 + 2u, last), min(t0 + 3u, last)) * cols4;
}

// Weights 4k..4k+3 of block b of `row` against the 4 tokens of the tile: one dequantization
// serves all four.
fn tile_dot(row: u32, b: u32, k: u32, xs: vec4<u32>) -> vec4<f32> {
    let w = load4(row, p.cols, b, k);
    let c = b * 8u + k;
    return vec4<f32>(dot(w, x[xs.x + c]), dot(w, x[xs.y + c]), dot(w, x[xs.z + c]), dot(w, x[xs.w + c]));
}

// The tile's sums for `row`, tokens past the end left out.
fn store_tile(row: u32, t0: u32, sums: vec4<f32>) {
    for (var t = 0u; t < 4u; t++) {
        if (t0 + t < p.n_tokens) {
            out[(t0 + t) * p.out_stride + p.row_offset + row] = sums[t];
        }
    }
}
