// Causal grouped-query attention over the KV cache, one workgroup per (query head, token):
// single pass with an online softmax over blocks of 64 keys (flash-attention style), so any
// context length works without a scores buffer. Cache layout: (max_seq, kv_heads * head_dim).
struct Params {
    n_tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    pos: u32,     // position of the first query token
    scale: f32,   // 1 / sqrt(head_dim)
}

const BLOCK: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
const DIMS_PER_THREAD: u32 = 4u; // MAX_HEAD_DIM / BLOCK

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;

var<workgroup> q_s: array<f32, 256>;
var<workgroup> scores: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let t = wg.y;
    let kv_head = head / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * p.head_dim;
    let q_base = t * p.heads * p.head_dim + head * p.head_dim;
    for (var d = lid; d < p.head_dim; d += BLOCK) {
        q_s[d] = q[q_base + d];
    }
    workgroupBarrier();
    let n_keys = p.pos + t + 1u;
    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, 4>;
    let n_blocks = (p.pos + p.n_tokens + BLOCK - 1u) / BLOCK; // uniform across the workgroup
    for (var kb = 0u; kb < n_blocks; kb++) {
        let key = kb * BLOCK + lid;
        var s = -3.0e38;
        if (key < n_keys) {
            let k_base = key * kv_stride + kv_head * p.head_dim;
            var dot = 0.0;
            for (var d = 0u; d < p.head_dim; d++) {
                dot += q_s[d] * k_cache[k_base + d];
            }
            s = dot * p.scale;
        }
        scores[lid] = s;
        workgroupBarrier();
        var block_max = -3.0e38;
        for (var j = 0u; j < BLOCK; j++) {
            block_max = max(block_max, scores[j]);
        }
        let m_new = max(m, block_max);
        let correction = exp(m - m_new);
        l *= correction;
        for (var i = 0u; i < DIMS_PER_THREAD; i++) {
            acc[i] *= correction;
        }
        for (var j = 0u; j < BLOCK; j++) {
            let kj = kb * BLOCK + j;
            if (kj < n_keys) {
                let pj = exp(scores[j] - m_new);
                l += pj;
                let v_base = kj * kv_stride + kv_head * p.head_dim;
                for (var i = 0u; i < DIMS_PER_THREAD; i++) {
                    let d = lid + i * BLOCK;
                    if (d < p.head_dim) {
                        acc[i] += pj * v_cache[v_base + d];
                    }
                }
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var i = 0u; i < DIMS_PER_THREAD; i++) {
        let d = lid + i * BLOCK;
        if (d < p.head_dim) {
            out[q_base + d] = acc[i] / l;
        }
    }
}
