// Index of the largest of each row of n floats (the first on ties, as torch.argmax), one workgroup
// per row, written to slot `slot + row` of the token ring: the next step's embedding reads it
// there, and the host reads 4 bytes a row back when it gets to it, instead of the logits. The row's
// logits at the `count` watched ids (the verdict words' first tokens, for scores) are copied to
// the slot's MAX_WATCH places in `watched`, read back with the id when there are any.
struct Params {
    n: u32,
    slot: u32,
    count: u32,
    _pad: u32,
    ids: array<vec4<u32>, MAX_WATCH / 4u>,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_X) var<storage, read> x: array<f32>;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<u32>;
@group(0) @binding(SLOT_WATCHED) var<storage, read_write> watched: array<f32>;

var<workgroup> best_v: array<f32, GROUP>;
var<workgroup> best_i: array<u32, GROUP>;

@compute @workgroup_size(GROUP)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x;
    if (lid < p.count) {
        let id = p.ids[lid / 4u][lid % 4u];
        watched[(p.slot + row) * MAX_WATCH + lid] = x[row * p.n + id];
    }
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.n; i += GROUP) {
        let v = x[row * p.n + i];
        if (v > bv) { // strictly greater: the first index wins within a thread
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var stride = GROUP / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let ov = best_v[lid + stride];
            let oi = best_i[lid + stride];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[p.slot + row] = best_i[0];
    }
}
