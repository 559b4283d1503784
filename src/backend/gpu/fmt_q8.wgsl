// 8-bit blocks (from GGML Q8_0 or quantized on load): per block of 32 weights one f16 scale
// (two to a u32) and 32 signed bytes packed four to a u32 (element 4k+i in byte i of word k).
// value = scale * q.
@group(0) @binding(SLOT_W_DATA) var<storage, read> w_data: array<u32>;
@group(0) @binding(SLOT_W_SCALES) var<storage, read> w_scales: array<u32>;

// Weights 4k..4k+3 of block `block` (32 weights) of `row`; rows hold `cols` weights (a whole
// number of blocks: padded at upload).
fn load4(row: u32, cols: u32, block: u32, k: u32) -> vec4<f32> {
    let b = row * (cols / 32u) + block;
    let word = w_data[b * 8u + k];
    // Sign-extend each byte.
    let q = vec4<i32>(i32(word << 24u), i32(word << 16u), i32(word << 8u), i32(word)) >> vec4<u32>(24u);
    return unpack2x16float(w_scales[b / 2u])[b % 2u] * vec4<f32>(q);
}
