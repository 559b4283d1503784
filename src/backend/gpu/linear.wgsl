// out[t, row_offset + r] = sum_c x[t, c] * W[r, c] for one part (a row range) of W.
// A workgroup computes ROWS rows for 4 tokens: each row has LANES threads that walk its blocks
// of 32 weights, dequantize each 4 weights once and use them for all 4 tokens, then the lanes'
// partial sums are added in workgroup memory (no subgroups: works everywhere).
const ROWS: u32 = 8u;
const LANES: u32 = 32u;

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

var<workgroup> partial: array<vec4<f32>, 256>; // per thread: sums for the 4 tokens

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r_local = lid / LANES;
    let lane = lid % LANES;
    let row = wg.x * ROWS + r_local;
    let t0 = wg.y * 4u;
    // Tokens past the end read the last token (results discarded) so no load is out of range.
    let last = p.n_tokens - 1u;
    let cols4 = p.cols / 4u;
    let x0 = min(t0, last) * cols4;
    let x1 = min(t0 + 1u, last) * cols4;
    let x2 = min(t0 + 2u, last) * cols4;
    let x3 = min(t0 + 3u, last) * cols4;
    var acc = vec4<f32>(0.0);
    if (row < p.rows) {
        let blocks = p.cols / 32u;
        for (var b = lane; b < blocks; b += LANES) {
            for (var k = 0u; k < 8u; k++) {
                let w = load4(row, p.cols, b, k);
                let c = b * 8u + k;
                acc += vec4<f32>(dot(w, x[x0 + c]), dot(w, x[x1 + c]), dot(w, x[x2 + c]), dot(w, x[x3 + c]));
            }
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        let sums = partial[lid];
        for (var t = 0u; t < 4u; t++) {
            if (t0 + t < p.n_tokens) {
                out[(t0 + t) * p.out_stride + p.row_offset + row] = sums[t];
            }
        }
    }
}
