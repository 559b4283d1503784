@group(0) @binding(SLOT_GAIN) var<storage, read> gain: array<vec4<f32>>;
fn g4(c: u32) -> vec4<f32> { return gain[c / 4u]; }
