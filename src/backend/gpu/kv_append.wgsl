// K and V of the new tokens into the layer's cache, each token at its cache row from the table
// `rows` (cache row, position), in one dispatch (no buffer copies inside a step).
struct Params {
    n: u32,      // floats of K (and of V): tokens * width
    width: u32,  // kv_heads * head_dim
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_X) var<storage, read> k: array<f32>;
@group(0) @binding(SLOT_Y) var<storage, read> v: array<f32>;
@group(0) @binding(SLOT_K_CACHE) var<storage, read_write> kc: array<f32>;
@group(0) @binding(SLOT_V_CACHE) var<storage, read_write> vc: array<f32>;
@group(0) @binding(SLOT_ROWS) var<storage, read> rows: array<u32>;

@compute @workgroup_size(GROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * GROUP;
    if (i < p.n) {
        let t = i / p.width;
        let at = rows[2u * t] * p.width + i % p.width;
        kc[at] = k[i];
        vc[at] = v[i];
    }
}
