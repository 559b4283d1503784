@group(0) @binding(SLOT_RESIDUAL) var<storage, read> res: array<f32>;
fn residual(i: u32) -> f32 { return res[i]; }
