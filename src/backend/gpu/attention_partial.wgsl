// Decode attention split over the sequence (flash-decoding): one workgroup per (query head,
// chunk of CHUNK keys) runs the online softmax over its chunk and writes its running max m,
// sum l and unnormalised output to scratch; attention_combine.wgsl merges the chunks. A single
// token's attention then spreads over heads * chunks workgroups instead of heads.
struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    n_keys: u32,     // keys 0..n_keys (the query is at position n_keys - 1)
    n_chunks: u32,
    scale: f32,
}

const BLOCK: u32 = 64u;
const CHUNK: u32 = 256u;
const DIMS_PER_THREAD: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>; // (heads, n_chunks, head_dim + 2)
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;

var<workgroup> q_s: array<f32, 256>;
var<workgroup> scores: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let chunk = wg.y;
    let kv_head = head / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * p.head_dim;
    for (var d = lid; d < p.head_dim; d += BLOCK) {
        q_s[d] = q[head * p.head_dim + d];
    }
    workgroupBarrier();
    let first = chunk * CHUNK;
    let end = min(first + CHUNK, p.n_keys);
    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, 4>;
    for (var kb = first; kb < first + CHUNK; kb += BLOCK) {
        let key = kb + lid;
        var s = -3.0e38;
        if (key < end) {
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
            let kj = kb + j;
            if (kj < end) {
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
    let base = (head * p.n_chunks + chunk) * (p.head_dim + 2u);
    for (var i = 0u; i < DIMS_PER_THREAD; i++) {
        let d = lid + i * BLOCK;
        if (d < p.head_dim) {
            scratch[base + d] = acc[i];
        }
    }
    if (lid == 0u) {
        scratch[base + p.head_dim] = m;
        scratch[base + p.head_dim + 1u] = l;
    }
}
