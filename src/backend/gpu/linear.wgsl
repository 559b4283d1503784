// The matrix product for GPUs (linear_common.wgsl has the contract). A workgroup computes ROWS
// rows for 4 tokens: each row has LANES threads that walk its blocks of 32 weights, then the
// lanes' partial sums are added in workgroup memory (no subgroups: works everywhere).
// ROWS and LANES come from the Rust side.

var<workgroup> partial: array<vec4<f32>, ROWS * LANES>; // per thread: sums for the 4 tokens

// The sum of `v` over the lanes of this thread's row, in every lane. All threads call it.
fn row_total(lid: u32, lane: u32, v: vec4<f32>) -> vec4<f32> {
    workgroupBarrier();
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    return partial[lid - lane];
}

@compute @workgroup_size(ROWS * LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r_local = lid / LANES;
    let lane = lid % LANES;
    let row = wg.x * ROWS + r_local;
    let t0 = wg.y * 4u;
    let xs = tile_offsets(t0);
    var s = Sums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (row < p.rows) {
        // Lanes take whole blocks in turn; the partial last block goes to lane 0.
        s = row_sums(row, xs, lane, LANES, lane == 0u);
    }
    s.a = row_total(lid, lane, s.a);
    if (PAIRED) {
        s.b = row_total(lid, lane, s.b);
    }
    if (NORM) {
        s.squares = row_total(lid, lane, s.squares);
    }
    if (lane == 0u && row < p.rows) {
        store_tile(row, t0, s);
    }
}
