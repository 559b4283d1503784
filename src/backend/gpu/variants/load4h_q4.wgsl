fn load4h(row: u32, cols: u32, block: u32, k: u32) -> vec4<f16> {
    let b = row * (cols / 32u) + block;
    let word = w_data[b * 4u + k / 2u] >> (16u * (k % 2u));
    let q = (vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
    let m = f16(unpack2x16float(w_mins[b / 2u])[b % 2u]);
    return f16(unpack2x16float(w_scales[b / 2u])[b % 2u]) * vec4<f16>(q) + vec4<f16>(m);
}
