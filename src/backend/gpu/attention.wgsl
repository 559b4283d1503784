// Causal grouped-query attention over the KV cache, one workgroup per (query head, token), for
// prompt chunks (attend() is in attention_common.wgsl). Token t sits at cache row rows[2t],
// position rows[2t + 1]: it sees its sequence's keys from row rows[2t] - rows[2t + 1] to its own.
struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale: f32,   // 1 / sqrt(head_dim)
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<f32>;
@group(0) @binding(SLOT_ROWS) var<storage, read> rows: array<u32>;

@compute @workgroup_size(BLOCK)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32 SUBGROUP_ARGS) {
    let head = wg.x;
    let t = wg.y;
    let q_base = t * p.heads * p.head_dim + head * p.head_dim;
    let end = rows[2u * t] + 1u;
    let pos = rows[2u * t + 1u];
    // The whole workgroup walks the same blocks (one token per workgroup).
    let blocks = (pos + BLOCK) / BLOCK;
    let r = attend(lid, q_base, head / (p.heads / p.kv_heads), p.kv_heads * p.head_dim, p.head_dim, p.scale, end - 1u - pos, end, blocks SUBGROUP_PASS);
    for (var i = 0u; i < DIMS_PER_THREAD; i++) {
        let d = lid + i * BLOCK;
        if (d < p.head_dim) {
            out[q_base + d] = r.acc[i] / r.l;
        }
    }
}
