// 8-bit blocks (from GGML Q8_0 or quantized on load): per block of 32 weights one f32 scale and
// 32 signed bytes packed four to a u32 (element 4k+i in byte i of word k). value = scale * q.
@group(0) @binding(3) var<storage, read> w_data: array<u32>;
@group(0) @binding(4) var<storage, read> w_scales: array<f32>;

fn load_block(row: u32, cols: u32, block: u32) -> array<f32, 32> {
    var out: array<f32, 32>;
    let blocks_per_row = cols / 32u;
    let b = row * blocks_per_row + block;
    let d = w_scales[b];
    for (var k = 0u; k < 8u; k++) {
        let word = w_data[b * 8u + k];
        for (var i = 0u; i < 4u; i++) {
            // Sign-extend byte i.
            let q = (i32(word << (24u - 8u * i))) >> 24u;
            out[k * 4u + i] = d * f32(q);
        }
    }
    return out;
}
