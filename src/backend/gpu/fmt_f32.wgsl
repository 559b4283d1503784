// Weights as plain f32, row-major (rows, cols). Blocks of 32 along a row, like the quantized formats.
@group(0) @binding(3) var<storage, read> w_data: array<f32>;

fn load_block(row: u32, cols: u32, block: u32) -> array<f32, 32> {
    var out: array<f32, 32>;
    let base = row * cols + block * 32u;
    for (var j = 0u; j < 32u; j++) {
        out[j] = w_data[base + j];
    }
    return out;
}
