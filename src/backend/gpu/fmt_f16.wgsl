// f16 weights packed two to a u32 (element 2i in the low half), read with unpack2x16float so
// adapters without the shader-f16 feature can use them; half the memory of f32, exact for F16.
@group(0) @binding(SLOT_W_DATA) var<storage, read> w_data: array<u32>;

// Weights 4k..4k+3 of block `block` (32 weights) of `row`; rows hold `cols` weights (a whole
// number of blocks: padded at upload).
fn load4(row: u32, cols: u32, block: u32, k: u32) -> vec4<f32> {
    let i = (row * cols + block * 32u + k * 4u) / 2u;
    return vec4<f32>(unpack2x16float(w_data[i]), unpack2x16float(w_data[i + 1u]));
}
