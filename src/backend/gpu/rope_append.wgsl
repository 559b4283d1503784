// After the fused Q/K/V product: rotate Q into `q_out` and K into the layer's cache, and copy V
// into the cache, each token at its row of the table `rows` (its cache row, its position), in one
// dispatch. `qkv` rows are
// [q (heads * head_dim) | k (kv_heads * head_dim) | v (kv_heads * head_dim)]. Rope in the HF
// layout: in each head, element i pairs with i + head_dim/2; cos/sin tables are
// (max_seq, head_dim/2).
struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_COS) var<storage, read> cos_t: array<f32>;
@group(0) @binding(SLOT_X) var<storage, read> qkv: array<f32>;
@group(0) @binding(SLOT_SIN) var<storage, read> sin_t: array<f32>;
@group(0) @binding(SLOT_OUT) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(SLOT_K_CACHE) var<storage, read_write> kc: array<f32>;
@group(0) @binding(SLOT_V_CACHE) var<storage, read_write> vc: array<f32>;
@group(0) @binding(SLOT_ROWS) var<storage, read> rows: array<u32>; // per token: cache row, position

@compute @workgroup_size(GROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.head_dim / 2u;
    let q_width = p.heads * p.head_dim;
    let kv_width = p.kv_heads * p.head_dim;
    // Per token: the Q pairs, the K pairs, then the V elements.
    let q_pairs = p.heads * half;
    let k_pairs = p.kv_heads * half;
    let per_token = q_pairs + k_pairs + kv_width;
    let idx = gid.x + gid.y * nwg.x * GROUP;
    if (idx >= p.n_tokens * per_token) {
        return;
    }
    let t = idx / per_token;
    let j = idx % per_token;
    let row = t * (q_width + 2u * kv_width);
    let cache_row = rows[2u * t] * kv_width;
    let pos = rows[2u * t + 1u];
    if (j >= q_pairs + k_pairs) {
        let e = j - q_pairs - k_pairs;
        vc[cache_row + e] = qkv[row + q_width + kv_width + e];
        return;
    }
    let k_side = j >= q_pairs;
    let pair = select(j, j - q_pairs, k_side);
    let head = pair / half;
    let i = pair % half;
    let angle_at = pos * half + i;
    let c = cos_t[angle_at];
    let s = sin_t[angle_at];
    let a = row + select(0u, q_width, k_side) + head * p.head_dim + i;
    let x1 = qkv[a];
    let x2 = qkv[a + half];
    let y1 = x1 * c - x2 * s;
    let y2 = x2 * c + x1 * s;
    if (k_side) {
        kc[cache_row + head * p.head_dim + i] = y1;
        kc[cache_row + head * p.head_dim + i + half] = y2;
    } else {
        let o = t * q_width + head * p.head_dim + i;
        q_out[o] = y1;
        q_out[o + half] = y2;
    }
}
