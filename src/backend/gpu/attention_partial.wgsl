// Decode attention split over the sequence (flash-decoding): one workgroup per (query head,
// token and chunk of CHUNK keys, from the Rust side) runs attend() over its chunk and writes its
// running max m, sum l and unnormalised output to scratch; attention_combine.wgsl merges the
// chunks. Every decode token takes this path, alone or in a batch, so a token's arithmetic never
// depends on the others (batch invariance). Token t sits at cache row rows[2t], position
// rows[2t + 1]; its sequence's keys start at row rows[2t] - rows[2t + 1].
struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    n_chunks: u32,   // chunks of the longest token's keys: the scratch stride
    scale: f32,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_OUT) var<storage, read_write> scratch: array<f32>; // (tokens, heads, n_chunks, head_dim + 2)
@group(0) @binding(SLOT_ROWS) var<storage, read> rows: array<u32>;

@compute @workgroup_size(BLOCK)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32 SUBGROUP_ARGS) {
    let head = wg.x;
    let t = wg.y / p.n_chunks;
    let chunk = wg.y % p.n_chunks;
    let end = rows[2u * t] + 1u;
    let n_keys = rows[2u * t + 1u] + 1u;
    if (chunk * CHUNK >= n_keys) {
        return; // past this token's keys (uniform across the workgroup)
    }
    let first = end - n_keys + chunk * CHUNK;
    let q_base = t * p.heads * p.head_dim + head * p.head_dim;
    let r = attend(lid, q_base, head / (p.heads / p.kv_heads), p.kv_heads * p.head_dim, p.head_dim, p.scale, first, min(first + CHUNK, end), CHUNK / BLOCK SUBGROUP_PASS);
    let base = ((t * p.heads + head) * p.n_chunks + chunk) * (p.head_dim + 2u);
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
