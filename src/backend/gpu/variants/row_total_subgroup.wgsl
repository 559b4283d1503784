fn row_total(lid: u32, lane: u32, v: vec4<f32>, sg: u32) -> vec4<f32> {
    // Lane i of a subgroup is invocation i % sg (checked at startup), rows are LANES-aligned:
    // a butterfly over offsets below min(sg, LANES) sums each aligned cluster of that many lanes.
    let cluster = min(sg, LANES);
    var s = v;
    for (var o = 1u; o < cluster; o *= 2u) {
        s += subgroupShuffleXor(s, o);
    }
    workgroupBarrier();
    if (lid % cluster == 0u) {
        partial[lid / cluster] = s;
    }
    workgroupBarrier();
    var t = vec4<f32>(0.0);
    let first = (lid - lane) / cluster;
    for (var c = 0u; c < LANES / cluster; c++) {
        t += partial[first + c];
    }
    return t;
}
