// Copy n floats of a layer's K and V cache from one place to another within each buffer (a
// shared prefix into a sequence's rows; WebGPU copies cannot stay inside one buffer).
struct Params {
    n: u32,
    src: u32,
    dst: u32,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_K_CACHE) var<storage, read_write> kc: array<f32>;
@group(0) @binding(SLOT_V_CACHE) var<storage, read_write> vc: array<f32>;

@compute @workgroup_size(GROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * GROUP;
    if (i < p.n) {
        kc[p.dst + i] = kc[p.src + i];
        vc[p.dst + i] = vc[p.src + i];
    }
}
