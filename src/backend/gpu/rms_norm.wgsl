// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w   (HF LlamaRMSNorm), one workgroup per row.
struct Params {
    cols: u32,
    eps: f32,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_X) var<storage, read> x: array<f32>;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<f32>;
@group(0) @binding(SLOT_GAIN) var<storage, read> w: array<f32>;

var<workgroup> sums: array<f32, GROUP>;

@compute @workgroup_size(GROUP)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wg.x * p.cols;
    var s = 0.0;
    for (var i = lid; i < p.cols; i += GROUP) {
        let v = x[base + i];
        s += v * v;
    }
    sums[lid] = s;
    workgroupBarrier();
    for (var stride = GROUP / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            sums[lid] += sums[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(sums[0] / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += GROUP) {
        out[base + i] = x[base + i] * inv * w[i];
    }
}
