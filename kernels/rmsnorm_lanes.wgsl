// RMSNorm over groups of `dim` elements, one lane per (token, group) row (rmsnorm.wgsl spends a
// workgroup of 64 on each: on llvmpipe its eight barriers a row cost more than a short row's
// arithmetic). The row's sum of squares is added in workgroup_sum.wgsl's order (lane_sum.wgsl),
// so the results equal rmsnorm.wgsl's bit for bit.
// out[t, g*dim + i] = x[t, g*dim + i] / sqrt(mean_i(x[t,g,:]^2) + eps) * weight[i].

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
  let row = group_index(wid, nwg) * WG + lid;
  if (row >= step.n_tokens * p.groups) {
    return;
  }
  let base = row * p.dim;
  var part: array<f32, LANE_PARTS>;
  for (var i = 0u; i < p.dim; i++) {
    let v = x[base + i];
    part[i % LANE_PARTS] += v * v;
  }
  let inv = 1.0 / sqrt(lane_sum_total(part) / f32(p.dim) + p.eps);
  for (var i = 0u; i < p.dim; i++) {
    out[base + i] = x[base + i] * inv * weight[i];
  }
}
