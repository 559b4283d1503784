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
