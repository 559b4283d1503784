@group(0) @binding(7) var<storage, read> res: array<f32>;
fn residual(i: u32) -> f32 { return res[i]; }
