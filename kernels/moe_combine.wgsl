// out[t, d] += sum_{j<K} weights[t, j] * y[t*K + j, d], the sum taken in order j = 0..K-1 before it
// is added. One invocation per (t, d).

struct Params {
  k: u32,
  hidden: u32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> y: array<f32>; // [T*K, D]
@group(0) @binding(3) var<storage, read> weights: array<f32>; // [T, K]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, D]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  if (id >= step.n_tokens * p.hidden) {
    return;
  }
  let t = id / p.hidden;
  let d = id % p.hidden;
  var s = 0.0;
  for (var j = 0u; j < p.k; j++) {
    let pair = t * p.k + j;
    s += weights[pair] * y[pair * p.hidden + d];
  }
  out[id] += s;
}
