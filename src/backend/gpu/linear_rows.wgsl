// out[t, row_offset + r] = sum_c x[t, c] * W[r, c] for one part (a row range) of W, one thread
// per row for 4 tokens: no workgroup memory and no barriers. For adapters that emulate a GPU on
// the CPU (SwiftShader, lavapipe), where workgroup memory and barriers cost far more than the
// loads the cooperative kernel (linear.wgsl) shares; measured in SwiftShader, one barrier over
// workgroup memory made a trivial kernel 20-60 times slower.
const ROWS: u32 = 64u;

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

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x * ROWS + lid;
    if (row >= p.rows) {
        return;
    }
    let t0 = wg.y * 4u;
    // Tokens past the end read the last token (results discarded) so no load is out of range.
    let last = p.n_tokens - 1u;
    let cols4 = p.cols / 4u;
    let x0 = min(t0, last) * cols4;
    let x1 = min(t0 + 1u, last) * cols4;
    let x2 = min(t0 + 2u, last) * cols4;
    let x3 = min(t0 + 3u, last) * cols4;
    var acc = vec4<f32>(0.0);
    let blocks = p.cols / 32u;
    for (var b = 0u; b < blocks; b++) {
        for (var k = 0u; k < 8u; k++) {
            let w = load4(row, p.cols, b, k);
            let c = b * 8u + k;
            acc += vec4<f32>(dot(w, x[x0 + c]), dot(w, x[x1 + c]), dot(w, x[x2 + c]), dot(w, x[x3 + c]));
        }
    }
    for (var t = 0u; t < 4u; t++) {
        if (t0 + t < p.n_tokens) {
            out[(t0 + t) * p.out_stride + p.row_offset + row] = acc[t];
        }
    }
}
