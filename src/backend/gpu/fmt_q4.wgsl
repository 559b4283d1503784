// 4-bit blocks (from GGML Q4_0 / Q4_1 or quantized on load): per block of 32 weights an f32
// scale and an f32 offset, and 32 nibbles packed eight to a u32 (element 8k+i in nibble i of
// word k). value = scale * q + offset (Q4_0's `(q - 8) * d` is offset = -8d).
@group(0) @binding(3) var<storage, read> w_data: array<u32>;
@group(0) @binding(4) var<storage, read> w_scales: array<f32>;
@group(0) @binding(5) var<storage, read> w_mins: array<f32>;

fn load_block(row: u32, cols: u32, block: u32) -> array<f32, 32> {
    var out: array<f32, 32>;
    let blocks_per_row = cols / 32u;
    let b = row * blocks_per_row + block;
    let d = w_scales[b];
    let m = w_mins[b];
    for (var k = 0u; k < 4u; k++) {
        let word = w_data[b * 4u + k];
        for (var i = 0u; i < 8u; i++) {
            out[k * 8u + i] = d * f32((word >> (4u * i)) & 15u) + m;
        }
    }
    return out;
}
