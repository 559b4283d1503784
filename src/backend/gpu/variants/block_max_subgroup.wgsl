var<workgroup> group_max: array<f32, BLOCK>;

fn block_max_of(lid: u32, s: f32, sg: u32) -> f32 {
    // Subgroups are runs of sg consecutive invocations (checked at startup).
    let m = subgroupMax(s);
    if (lid % sg == 0u) {
        group_max[lid / sg] = m;
    }
    workgroupBarrier();
    var t = -3.0e38;
    for (var g = 0u; g < (BLOCK + sg - 1u) / sg; g++) {
        t = max(t, group_max[g]);
    }
    return t;
}
