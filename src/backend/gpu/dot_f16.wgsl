// tile_dot with shader-f16 (linear_common.wgsl; ARCHITECTURE.md, "f16 math"): the four weights
// dequantized in f16 (`load4h`, from the format's own f16 scale), each token's four activations
// rounded to f16, the four products and their sum in f16; the caller adds these sums in f32, so
// a row's rounding is that of 4-term f16 dot products, not of a long f16 sum. Activations are
// clamped to f16's finite range first (converting a larger value is undefined in WGSL); the
// residual stream of the models we run stays far below it.
fn h4(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}

fn tile_dot(row: u32, b: u32, k: u32, xs: vec4<u32>) -> vec4<f32> {
    let w = load4h(row, p.w_stride, b, k);
    let c = b * 32u + k * 4u;
    return vec4<f32>(
        f32(dot(w, h4(xg(xs.x + c, c)))),
        f32(dot(w, h4(xg(xs.y + c, c)))),
        f32(dot(w, h4(xg(xs.z + c, c)))),
        f32(dot(w, h4(xg(xs.w + c, c)))),
    );
}
