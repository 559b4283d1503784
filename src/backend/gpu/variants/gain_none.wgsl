fn g4(c: u32) -> vec4<f32> { return vec4<f32>(1.0); }
