// RMSNorm over groups of `dim` elements: one workgroup per (token, group) row.
// out[t, g*dim + i] = x[t, g*dim + i] / sqrt(mean_i(x[t,g,:]^2) + eps) * weight[i].
// x and out are both read_write so that the in-place case binds one buffer once.

struct Params {
  dim: u32,
  groups: u32,
  eps: f32,
  _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> weight: array<f32>; // [dim]
@group(0) @binding(3) var<storage, read_write> x: array<f32>; // [T, groups*dim]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, groups*dim]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row = group_index(wid, nwg);
  if (row >= step.n_tokens * p.groups) {
    return;
  }
  let base = row * p.dim;
  var ss = 0.0;
  for (var i = lid; i < p.dim; i += WG) {
    let v = x[base + i];
    ss += v * v;
  }
  let inv = 1.0 / sqrt(workgroup_sum(lid, ss) / f32(p.dim) + p.eps);
  for (var i = lid; i < p.dim; i += WG) {
    out[base + i] = x[base + i] * inv * weight[i];
  }
}
