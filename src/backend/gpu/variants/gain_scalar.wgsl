@group(0) @binding(SLOT_GAIN) var<storage, read> gain: array<f32>;
fn g4(c: u32) -> vec4<f32> { return vec4<f32>(gain[c], gain[c + 1u], gain[c + 2u], gain[c + 3u]); }
