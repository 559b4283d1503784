// The matrix product for GPUs (linear_common.wgsl has the contract). A workgroup computes ROWS
// rows for 4 tokens: each row has LANES threads that walk its blocks of 32 weights, then the
// lanes' partial sums are added in workgroup memory (no subgroups: works everywhere).
const ROWS: u32 = 8u;
const LANES: u32 = 32u;

var<workgroup> partial: array<vec4<f32>, 256>; // per thread: sums for the 4 tokens

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r_local = lid / LANES;
    let lane = lid % LANES;
    let row = wg.x * ROWS + r_local;
    let t0 = wg.y * 4u;
    let xs = tile_offsets(t0);
    var acc = vec4<f32>(0.0);
    if (row < p.rows) {
        let blocks = p.cols / 32u; // whole blocks; a partial last one goes to lane 0
        for (var b = lane; b < blocks; b += LANES) {
            for (var k = 0u; k < 8u; k++) {
                acc += tile_dot(row, b, k, xs);
            }
        }
        if (lane == 0u && p.cols % 32u != 0u) {
            acc += tail_dot(row, blocks, xs);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        store_tile(row, t0, partial[lid]);
    }
}
