// out[t, :] = table[ids[first + idx[t]], :] for the tokens whose id falls in this part's row
// range. `ids` is a prompt's ids (first = 0, idx the identity) or the ring of token slots argmax
// writes (first = a choice's first slot with idx the identity, or idx the slots of chosen tokens
// from several choices), so a decode step reads the tokens earlier steps chose without the host. Any width: table
// rows are stored padded to whole blocks of 32 (stride); out rows are `cols` wide.
struct Params {
    row_start: u32,
    row_count: u32,
    cols: u32,
    n_tokens: u32,
    stride: u32,
    first: u32,
}

@group(0) @binding(SLOT_PARAMS) var<uniform> p: Params;
@group(0) @binding(SLOT_X) var<storage, read> ids: array<u32>;
@group(0) @binding(SLOT_OUT) var<storage, read_write> out: array<f32>;
@group(0) @binding(SLOT_INDEX) var<storage, read> idx: array<u32>;

@compute @workgroup_size(EMBED_GROUP)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    if (t >= p.n_tokens) {
        return;
    }
    let id = ids[p.first + idx[t]];
    if (id < p.row_start || id >= p.row_start + p.row_count) {
        return;
    }
    let row = id - p.row_start;
    // Four weights per load: each thread writes the ones of its group of four.
    for (var c4 = lid * 4u; c4 < p.cols; c4 += 4u * EMBED_GROUP) {
        let w = load4(row, p.stride, c4 / 32u, (c4 % 32u) / 4u);
        for (var i = 0u; i < 4u; i++) {
            if (c4 + i < p.cols) {
                out[t * p.cols + c4 + i] = w[i];
            }
        }
    }
}
