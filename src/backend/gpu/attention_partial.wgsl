// Decode attention split over the sequence (flash-decoding): one workgroup per (query head,
// chunk of CHUNK keys, from the Rust side) runs attend() over its chunk and writes its running max m, sum l and
// unnormalised output to scratch; attention_combine.wgsl merges the chunks. One token's
// attention then spreads over heads * chunks workgroups instead of heads.
struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    n_keys: u32,     // keys 0..n_keys (the query is at position n_keys - 1)
    n_chunks: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>; // (heads, n_chunks, head_dim + 2)

@compute @workgroup_size(BLOCK)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let chunk = wg.y;
    let first = chunk * CHUNK;
    let r = attend(lid, head * p.head_dim, head / (p.heads / p.kv_heads), p.kv_heads * p.head_dim, p.head_dim, p.scale, first, min(first + CHUNK, p.n_keys), CHUNK / BLOCK);
    let base = (head * p.n_chunks + chunk) * (p.head_dim + 2u);
    for (var i = 0u; i < DIMS_PER_THREAD; i++) {
        let d = lid + i * BLOCK;
        if (d < p.head_dim) {
            scratch[base + d] = r.acc[i];
        }
    }
    if (lid == 0u) {
        scratch[base + p.head_dim] = r.m;
        scratch[base + p.head_dim + 1u] = r.l;
    }
}
