// Where each invocation of a 1-D workgroup sits in its subgroup: the subgroup kernels assume the
// subgroups of a workgroup are runs of consecutive invocations (invocation i is lane
// i % subgroup_size), which the host checks with this once before using them.
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(GROUP)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sid: u32, @builtin(subgroup_size) sg: u32) {
    out[2u * lid] = sid;
    out[2u * lid + 1u] = sg;
}
