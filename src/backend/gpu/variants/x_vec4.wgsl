@group(0) @binding(SLOT_X) var<storage, read> x: array<vec4<f32>>;
fn x4(i: u32) -> vec4<f32> { return x[i / 4u]; }
