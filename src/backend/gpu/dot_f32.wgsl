// tile_dot in f32 (linear_common.wgsl): one dequantization of the four weights serves the
// tile's four tokens.
fn tile_dot(row: u32, b: u32, k: u32, xs: vec4<u32>) -> vec4<f32> {
    let w = load4(row, p.w_stride, b, k);
    let c = b * 32u + k * 4u;
    return vec4<f32>(dot(w, xg(xs.x + c, c)), dot(w, xg(xs.y + c, c)), dot(w, xg(xs.z + c, c)), dot(w, xg(xs.w + c, c)));
}
