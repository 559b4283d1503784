fn load4h(row: u32, cols: u32, block: u32, k: u32) -> vec4<f16> {
    let b = row * (cols / 32u) + block;
    let word = w_data[b * 8u + k];
    let q = vec4<i32>(i32(word << 24u), i32(word << 16u), i32(word << 8u), i32(word)) >> vec4<u32>(24u);
    return f16(unpack2x16float(w_scales[b / 2u])[b % 2u]) * vec4<f16>(q);
}
