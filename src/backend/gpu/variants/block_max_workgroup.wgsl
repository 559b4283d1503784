fn block_max_of(lid: u32, s: f32) -> f32 {
    workgroupBarrier();
    var m = -3.0e38;
    for (var j = 0u; j < BLOCK; j++) {
        m = max(m, scores[j]);
    }
    return m;
}
