// Weights as plain f32, row-major (rows, cols), read as vec4s.
@group(0) @binding(SLOT_W_DATA) var<storage, read> w_data: array<vec4<f32>>;

// Weights 4k..4k+3 of block `block` (32 weights) of `row`; rows hold `cols` weights (a whole
// number of blocks: padded at upload).
fn load4(row: u32, cols: u32, block: u32, k: u32) -> vec4<f32> {
    return w_data[(row * cols + block * 32u) / 4u + k];
}
