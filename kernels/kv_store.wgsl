// Copies this step's K and V rows into the KV caches of their sequences: for token t of slab s in
// these buffers' slabs [first_slab, first_slab + slabs), at position pos:
// k_cache[((s - first_slab) * positions + pos) * width + i] = k[t, i], and the same for v. Tokens
// of other slabs are left to the op of the buffers that hold them.

struct Params {
  width: u32,
  first_slab: u32,
  slabs: u32,
  positions: u32, // per slab
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> k: array<f32>; // [T, width]
@group(0) @binding(3) var<storage, read> v: array<f32>; // [T, width]
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>; // [slabs, positions, width]
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>; // [slabs, positions, width]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  if (id >= step.n_tokens * p.width) {
    return;
  }
  let t = id / p.width;
  let tk = step.tokens[t];
  if (tk.x < p.first_slab || tk.x >= p.first_slab + p.slabs) {
    return;
  }
  let at = ((tk.x - p.first_slab) * p.positions + tk.y) * p.width + id % p.width;
  k_cache[at] = k[id];
  v_cache[at] = v[id];
}
