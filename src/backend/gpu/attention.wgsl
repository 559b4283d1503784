// Causal grouped-query attention over the KV cache, one workgroup per (query head, token), for
// prefill and short contexts (attend() is in attention_common.wgsl).
struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    pos: u32,     // position of the first query token
    scale: f32,   // 1 / sqrt(head_dim)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(BLOCK)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let t = wg.y;
    let q_base = t * p.heads * p.head_dim + head * p.head_dim;
    // Every token of the chunk walks the same (uniform) number of blocks; its keys end at pos + t.
    let blocks = (p.pos + p.n_tokens + BLOCK - 1u) / BLOCK;
    let r = attend(lid, q_base, head / (p.heads / p.kv_heads), p.kv_heads * p.head_dim, p.head_dim, p.scale, 0u, p.pos + t + 1u, blocks);
    for (var i = 0u; i < DIMS_PER_THREAD; i++) {
        let d = lid + i * BLOCK;
        if (d < p.head_dim) {
            out[q_base + d] = r.acc[i] / r.l;
        }
    }
}
