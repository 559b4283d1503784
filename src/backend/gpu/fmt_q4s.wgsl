// 4-bit blocks without offsets (from GGML Q4_0): per block of 32 weights an f16 scale (two to a
// u32) and 32 nibbles packed eight to a u32 (element 8k+i in nibble i of word k).
// value = scale * (q - 8): the file's size on the GPU.
@group(0) @binding(SLOT_W_DATA) var<storage, read> w_data: array<u32>;
@group(0) @binding(SLOT_W_SCALES) var<storage, read> w_scales: array<u32>;

// Weights 4k..4k+3 of block `block` (32 weights) of `row`; rows hold `cols` weights (a whole
// number of blocks: padded at upload).
fn load4(row: u32, cols: u32, block: u32, k: u32) -> vec4<f32> {
    let b = row * (cols / 32u) + block;
    let word = w_data[b * 4u + k / 2u] >> (16u * (k % 2u));
    let q = (vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
    return unpack2x16float(w_scales[b / 2u])[b % 2u] * (vec4<f32>(q) - vec4<f32>(8.0));
}
