// Shared by attention.wgsl and attention_partial.wgsl: one workgroup of 64 threads runs an online
// softmax (flash-attention style) of one query head over a range of keys in blocks of 64, so any
// context length works without a scores buffer. Cache layout: (max_seq, kv_heads * head_dim).
// BLOCK (keys per block, threads per workgroup) and MAX_HEAD_DIM come from the Rust side, and so
// does `block_max_of(lid, s)`: a barrier, then the largest of the block's 64 scores in every
// thread, read from workgroup memory, or with subgroups a subgroupMax and one exchange (the same
// value either way: a maximum does not round).
const DIMS_PER_THREAD: u32 = MAX_HEAD_DIM / BLOCK;

@group(0) @binding(SLOT_X) var<storage, read> q: array<f32>;
@group(0) @binding(SLOT_K_CACHE) var<storage, read> k_cache: array<f32>;
@group(0) @binding(SLOT_V_CACHE) var<storage, read> v_cache: array<f32>;

var<workgroup> q_s: array<f32, MAX_HEAD_DIM>;
var<workgroup> scores: array<f32, BLOCK>;

// Running max m, sum l and unnormalised output (this thread's dims lid + i * BLOCK).
struct Partial {
    m: f32,
    l: f32,
    acc: array<f32, DIMS_PER_THREAD>,
}

// Attend the query at q[q_base..] to keys first..end (exclusive), walking `blocks` blocks of 64
// from `first`; `blocks` must be the same for the whole workgroup (it holds barriers).
fn attend(lid: u32, q_base: u32, kv_head: u32, kv_stride: u32, head_dim: u32, scale: f32, first: u32, end: u32, blocks: u32 SUBGROUP_PARAM) -> Partial {
    for (var d = lid; d < head_dim; d += BLOCK) {
        q_s[d] = q[q_base + d];
    }
    workgroupBarrier();
    var r: Partial;
    r.m = -3.0e38;
    for (var b = 0u; b < blocks; b++) {
        let kb = first + b * BLOCK;
        let key = kb + lid;
        var s = -3.0e38;
        if (key < end) {
            let k_base = key * kv_stride + kv_head * head_dim;
            var dot = 0.0;
            for (var d = 0u; d < head_dim; d++) {
                dot += q_s[d] * k_cache[k_base + d];
            }
            s = dot * scale;
        }
        scores[lid] = s;
        let block_max = block_max_of(lid, s SUBGROUP_PASS); // after a barrier: scores complete
        let m_new = max(r.m, block_max);
        let correction = exp(r.m - m_new);
        r.l *= correction;
        for (var i = 0u; i < DIMS_PER_THREAD; i++) {
            r.acc[i] *= correction;
        }
        for (var j = 0u; j < BLOCK; j++) {
            let kj = kb + j;
            if (kj < end) {
                let pj = exp(scores[j] - m_new);
                r.l += pj;
                let v_base = kj * kv_stride + kv_head * head_dim;
                for (var i = 0u; i < DIMS_PER_THREAD; i++) {
                    let d = lid + i * BLOCK;
                    if (d < head_dim) {
                        r.acc[i] += pj * v_cache[v_base + d];
                    }
                }
            }
        }
        r.m = m_new;
        workgroupBarrier();
    }
    return r;
}
