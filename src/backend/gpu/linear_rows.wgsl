// The matrix product for adapters that emulate a GPU on the CPU (SwiftShader, lavapipe); the
// contract is in linear_common.wgsl. One thread per row for 4 tokens: no workgroup memory and no
// barriers, which there cost far more than the loads linear.wgsl shares (measured in
// SwiftShader: one barrier over workgroup memory made a trivial kernel 20-60 times slower).
const ROWS: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x * ROWS + lid;
    if (row >= p.rows) {
        return;
    }
    let t0 = wg.y * 4u;
    let xs = tile_offsets(t0);
    var acc = vec4<f32>(0.0);
    let blocks = p.cols / 32u; // whole blocks, then a partial last one
    for (var b = 0u; b < blocks; b++) {
        for (var k = 0u; k < 8u; k++) {
            acc += tile_dot(row, b, k, xs);
        }
    }
    if (p.cols % 32u != 0u) {
        acc += tail_dot(row, blocks, xs);
    }
    store_tile(row, t0, acc);
}
