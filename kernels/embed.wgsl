// Embedding gather on the GPU: out[t, :] = table[id - first, :] as f32 with id the token at token
// t's position in its sequence's ids (ids[slab * ids_stride + pos], Step.tokens), for the tokens
// whose id lies in this chunk of the table's rows [first, first + rows) (the table is split into
// chunks that fit one storage binding; each chunk has its own op). One invocation per (token, 4
// columns); widening bf16/f16 to f32 is exact, so rows equal the CPU's conversion bit for bit.

struct Params {
  hidden: u32, // D, a multiple of 4
  first: u32, // first row of the table held by this chunk
  rows: u32, // rows in this chunk
  w_offset: u32, // element [first, 0] inside the bound weights, in elements of the dtype
  ids_stride: u32, // ids per slab
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> ids: array<u32>; // [slabs, ids_stride] tokens by position
@group(0) @binding(3) var<storage, read> weights: array<WeightWord>; // table rows [rows, D]
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>; // [T, D/4]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  let d4 = p.hidden / 4u;
  let t = id / d4;
  if (t >= step.n_tokens) {
    return;
  }
  let tk = step.tokens[t];
  let token = ids[tk.x * p.ids_stride + tk.y];
  if (token < p.first || token >= p.first + p.rows) {
    return; // another chunk's row
  }
  let c = id % d4;
  out[id] = load_w4(p.w_offset + (token - p.first) * p.hidden + c * 4u);
}
