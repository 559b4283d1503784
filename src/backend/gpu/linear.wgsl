// out[t, row_offset + r] = sum_c x[t, c] * W[r, c] for one part (a row range) of W.
// A workgroup computes ROWS rows for TOKENS tokens: each row has LANES threads that walk its
// blocks of 32 weights, dequantize each block once and use it for every token of the tile, then
// the lanes' partial sums are added in workgroup memory (no subgroups: works everywhere).
const ROWS: u32 = 8u;
const LANES: u32 = 32u;
const TOKENS: u32 = 4u;

struct Params {
    rows: u32,        // rows in this part
    cols: u32,        // input width (a multiple of 32)
    n_tokens: u32,
    row_offset: u32,  // where this part's rows go in the output
    out_stride: u32,  // output width (all parts)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 1024>; // TOKENS * ROWS * LANES

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r_local = lid / LANES;
    let lane = lid % LANES;
    let row = wg.x * ROWS + r_local;
    let t0 = wg.y * TOKENS;
    var acc: array<f32, 4>;
    if (row < p.rows) {
        let blocks = p.cols / 32u;
        for (var b = lane; b < blocks; b += LANES) {
            let w = load_block(row, p.cols, b);
            for (var t = 0u; t < TOKENS; t++) {
                if (t0 + t < p.n_tokens) {
                    let xb = (t0 + t) * p.cols + b * 32u;
                    var s = 0.0;
                    for (var j = 0u; j < 32u; j++) {
                        s += w[j] * x[xb + j];
                    }
                    acc[t] += s;
                }
            }
        }
    }
    for (var t = 0u; t < TOKENS; t++) {
        partial[t * 256u + lid] = acc[t];
    }
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            for (var t = 0u; t < TOKENS; t++) {
                partial[t * 256u + lid] += partial[t * 256u + lid + stride];
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        for (var t = 0u; t < TOKENS; t++) {
            if (t0 + t < p.n_tokens) {
                out[(t0 + t) * p.out_stride + p.row_offset + row] = partial[t * 256u + lid];
            }
        }
    }
}
