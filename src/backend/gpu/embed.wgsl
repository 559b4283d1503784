// out[t, :] = table[ids[t], :] for the tokens whose id falls in this part's row range.
struct Params {
    row_start: u32,
    row_count: u32,
    cols: u32,
    n_tokens: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    let id = ids[t];
    if (t >= p.n_tokens || id < p.row_start || id >= p.row_start + p.row_count) {
        return;
    }
    let row = id - p.row_start;
    let cols4 = p.cols / 4u;
    for (var c = lid; c < cols4; c += 64u) {
        out[t * cols4 + c] = load4(row, p.cols, c / 8u, c % 8u);
    }
}
