// The matrix product for GPUs (linear_common.wgsl has the contract). A workgroup computes ROWS
// rows for 4 tokens: each row has LANES threads that walk its blocks of 32 weights, then the
// lanes' partial sums are added in workgroup memory (no subgroups: works everywhere).
// ROWS and LANES come from the Rust side.

var<workgroup> partial: array<vec4<f32>, ROWS * LANES>; // per thread: sums for the 4 tokens

// `row_total(lid, lane, v)`, the sum of `v` over the lanes of this thread's row in every lane
// (all threads call it), comes from the Rust side: a tree in workgroup memory, or with
// subgroups a butterfly of shuffles within each subgroup (or row, if the subgroup is larger)
// and, where a row spans several subgroups, one exchange in workgroup memory.

@compute @workgroup_size(ROWS * LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32 SUBGROUP_ARGS) {
    let r_local = lid / LANES;
    let lane = lid % LANES;
    let row = wg.x * ROWS + r_local;
    let t0 = wg.y * TILE;
    let xs = tile_offsets(t0);
    var s = Sums(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (row < p.rows) {
        // Lanes take whole blocks in turn; the partial last block goes to lane 0.
        s = row_sums(row, xs, lane, LANES, lane == 0u);
    }
    s.a = row_total(lid, lane, s.a SUBGROUP_PASS);
    if (PAIRED) {
        s.b = row_total(lid, lane, s.b SUBGROUP_PASS);
    }
    if (NORM) {
        s.squares = row_total(lid, lane, s.squares SUBGROUP_PASS);
    }
    if (lane == 0u && row < p.rows) {
        store_tile(row, t0, s);
    }
}
