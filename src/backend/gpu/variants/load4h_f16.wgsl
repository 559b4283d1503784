fn load4h(row: u32, cols: u32, block: u32, k: u32) -> vec4<f16> {
    let i = (row * cols + block * 32u + k * 4u) / 2u;
    return vec4<f16>(vec2<f16>(unpack2x16float(w_data[i])), vec2<f16>(unpack2x16float(w_data[i + 1u])));
}
