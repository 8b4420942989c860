// Copies this step's K or V rows into the cache: cache[(pos0 + t) * width + i] = x[t, i].

struct Params {
  width: u32,
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>; // [T, width]
@group(0) @binding(3) var<storage, read_write> cache: array<f32>; // [maxCtx, width]

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
  cache[step.pos0 * p.width + id] = x[id];
}
