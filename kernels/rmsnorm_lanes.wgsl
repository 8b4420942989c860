// RMSNorm over groups of `dim` elements, one lane per (token, group) row (rmsnorm.wgsl spends a
// workgroup of 64 on each: on llvmpipe its eight barriers a row cost more than a short row's
// arithmetic). The row's sum of squares is added in workgroup_sum.wgsl's order (64 partial sums,
// element i into partial i % 64 in increasing i, then the same halving tree), so the results equal
// rmsnorm.wgsl's bit for bit.
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
/** The partial sums of workgroup_sum.wgsl's 64 lanes. */
const PARTS: u32 = 64u;

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
  var part: array<f32, PARTS>;
  for (var i = 0u; i < p.dim; i++) {
    let v = x[base + i];
    part[i % PARTS] += v * v;
  }
  for (var stride = PARTS / 2u; stride > 0u; stride >>= 1u) {
    for (var j = 0u; j < stride; j++) {
      part[j] += part[j + stride];
    }
  }
  let inv = 1.0 / sqrt(part[0] / f32(p.dim) + p.eps);
  for (var i = 0u; i < p.dim; i++) {
    out[base + i] = x[base + i] * inv * weight[i];
  }
}
