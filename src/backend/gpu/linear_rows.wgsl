// The matrix product for adapters that emulate a GPU on the CPU (SwiftShader, lavapipe); the
// contract is in linear_common.wgsl. One thread per row for 4 tokens: no workgroup memory and no
// barriers, which there cost far more than the loads linear.wgsl shares (measured in
// SwiftShader: one barrier over workgroup memory made a trivial kernel 20-60 times slower).
// ROWS_PER_THREAD_GROUP (rows, threads per workgroup) comes from the Rust side.

@compute @workgroup_size(ROWS_PER_THREAD_GROUP)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x * ROWS_PER_THREAD_GROUP + lid;
    if (row >= p.rows) {
        return;
    }
    let t0 = wg.y * TILE;
    store_tile(row, t0, row_sums(row, tile_offsets(t0), 0u, 1u, true));
}
