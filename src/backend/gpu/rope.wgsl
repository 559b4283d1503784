// Rotary embeddings, HF layout: in each head, element i pairs with i + head_dim/2. Reads x and
// writes out (no copy first). cos/sin tables are (max_seq, head_dim/2), computed on the host once;
// each token's position is in the table `rows` (cache row, position).
struct Params {
    n_tokens: u32,
    heads: u32,
    head_dim: u32,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_COS) var<storage, read> cos_t: array<f32>;
@group(0) @binding(SLOT_X) var<storage, read> x: array<f32>;
@group(0) @binding(SLOT_SIN) var<storage, read> sin_t: array<f32>;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<f32>;
@group(0) @binding(SLOT_ROWS) var<storage, read> rows: array<u32>;

@compute @workgroup_size(GROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.head_dim / 2u;
    let idx = gid.x + gid.y * nwg.x * GROUP;
    if (idx >= p.n_tokens * p.heads * half) {
        return;
    }
    let i = idx % half;
    let head = (idx / half) % p.heads;
    let t = idx / (half * p.heads);
    let angle_at = rows[2u * t + 1u] * half + i;
    let c = cos_t[angle_at];
    let s = sin_t[angle_at];
    let a = t * p.heads * p.head_dim + head * p.head_dim + i;
    let x1 = x[a];
    let x2 = x[a + half];
    out[a] = x1 * c - x2 * s;
    out[a + half] = x2 * c + x1 * s;
}
