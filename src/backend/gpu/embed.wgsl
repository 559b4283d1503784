// out[t, :] = table[ids[t], :] for the tokens whose id falls in this part's row range.
struct Params {
    row_start: u32,
    row_count: u32,
    cols: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    let id = ids[t];
    if (t >= p.n_tokens || id < p.row_start || id >= p.row_start + p.row_count) {
        return;
    }
    let row = id - p.row_start;
    for (var b = lid; b < p.cols / 32u; b += 32u) {
        let w = load_block(row, p.cols, b);
        for (var j = 0u; j < 32u; j++) {
            out[t * p.cols + b * 32u + j] = w[j];
        }
    }
}
