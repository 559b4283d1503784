// Elementwise ops over n floats: SwiGLU's silu(gate) * up, the residual add, and a copy of n
// floats from `offset` (a row of a batch) that keeps a step free of buffer copies.
struct Params {
    n: u32,
    offset: u32,  // copy only
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_X) var<storage, read> a: array<f32>;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<f32>;
@group(0) @binding(SLOT_Y) var<storage, read> b: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * GROUP;
}

@compute @workgroup_size(GROUP)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.n) {
        let g = a[i];
        out[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

@compute @workgroup_size(GROUP)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.n) {
        out[i] = a[i] + b[i];
    }
}

@compute @workgroup_size(GROUP)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i < p.n) {
        out[i] = a[p.offset + i];
    }
}
