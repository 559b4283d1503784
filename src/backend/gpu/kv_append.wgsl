// K and V of the new tokens into the layer's cache at their positions, in one dispatch (no buffer
// copies inside a step): kc[offset + i] = k[i], vc[offset + i] = v[i].
struct Params {
    n: u32,       // floats of K (and of V): tokens * kv_heads * head_dim
    offset: u32,  // where they go: pos * kv_heads * head_dim
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<f32>;
@group(0) @binding(4) var<storage, read_write> vc: array<f32>;

@compute @workgroup_size(GROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * GROUP;
    if (i < p.n) {
        kc[p.offset + i] = k[i];
        vc[p.offset + i] = v[i];
    }
}
