// Merge the per-chunk softmax partials of attention_partial.wgsl: with M the largest chunk max,
// out = sum_c acc_c * exp(m_c - M) / sum_c l_c * exp(m_c - M), over the chunks of the token's own
// keys. One workgroup per (query head, token).
struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    n_chunks: u32,
    scale: f32,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_X) var<storage, read> scratch: array<f32>;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<f32>;
@group(0) @binding(SLOT_ROWS) var<storage, read> rows: array<u32>;

@compute @workgroup_size(BLOCK)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let t = wg.y;
    let chunks = (rows[2u * t + 1u] + CHUNK) / CHUNK;
    let stride = p.head_dim + 2u;
    let base = (t * p.heads + head) * p.n_chunks * stride;
    var big_m = -3.0e38;
    for (var c = 0u; c < chunks; c++) {
        big_m = max(big_m, scratch[base + c * stride + p.head_dim]);
    }
    var total = 0.0;
    for (var c = 0u; c < chunks; c++) {
        total += scratch[base + c * stride + p.head_dim + 1u] * exp(scratch[base + c * stride + p.head_dim] - big_m);
    }
    let o = (t * p.heads + head) * p.head_dim;
    for (var d = lid; d < p.head_dim; d += BLOCK) {
        var acc = 0.0;
        for (var c = 0u; c < chunks; c++) {
            acc += scratch[base + c * stride + d] * exp(scratch[base + c * stride + p.head_dim] - big_m);
        }
        out[o + d] = acc / total;
    }
}
